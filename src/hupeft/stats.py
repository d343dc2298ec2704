"""Uncertainty for small-scale results: means over seeds with 95% t-intervals, paired
differences between methods over the same seeds, and the sampling interval of an accuracy.

With three seeds a t-interval is wide (t = 4.30 at 2 degrees of freedom); that is the honest
width. A difference is called resolved only when its paired interval excludes zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


def t_quantile(df: int, level: float = LEVEL) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df))


@dataclass
class Interval:
    mean: float
    half_width: float  # nan with fewer than two values
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool:
        return bool(np.isfinite(self.half_width) and (self.low > 0 or self.high < 0))


def mean_interval(values) -> Interval:
    """Mean of `values` and the half width of its 95% t-interval (seeds as the sample)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return Interval(float("nan"), float("nan"), 0)
    if len(x) == 1:
        return Interval(float(x[0]), float("nan"), 1)
    half = t_quantile(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return Interval(float(x.mean()), float(half), len(x))


def paired_difference(treatment: dict, baseline: dict) -> Interval:
    """treatment - baseline over the seeds both have ({seed: value} each), with its 95% interval."""
    seeds = sorted(set(treatment) & set(baseline))
    return mean_interval([treatment[s] - baseline[s] for s in seeds])


def accuracy_half_width(p: float, n: int) -> float:
    """Half width of the 95% Wilson interval of an accuracy p measured on n examples."""
    if n <= 0:
        return float("nan")
    z = 1.959963984540054  # the normal 97.5% quantile
    centre_shift = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre_shift
