"""A run's figure: its lines are the record's numbers, and drawing it imports neither seaborn,
pandas nor scipy.stats (seconds of start-up in every grid cell)."""

from __future__ import annotations

import json
import subprocess
import sys

RECORD = {"epochs": [{"epoch": 1, "train_loss": 2.0, "val_loss": 2.5},
                     {"epoch": 2, "train_loss": 1.5, "val_loss": None}],
          "steps": [{"step": 1, "grad_norm": 0.3}, {"step": 2, "grad_norm": 0.2}],
          "hybrid_lambda": {"layer.q": [0.5, 0.6], "layer.v": [0.5, 0.4]}}

DRAW = f"""
import json, math, sys
import matplotlib
matplotlib.use("Agg")
from hupeft.plots import run_curves
fig = run_curves({RECORD!r})
lines = [[[None if math.isnan(v) else v for v in l.get_ydata()] for l in ax.get_lines()] for ax in fig.axes]
print(json.dumps({{"lines": lines, "heavy": [m for m in ("seaborn", "pandas", "scipy.stats") if m in sys.modules]}}))
"""


def test_run_curves_draw_the_records_numbers_without_heavy_imports():
    proc = subprocess.run([sys.executable, "-c", DRAW], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    loss, norm, lam = out["lines"]
    assert loss == [[2.0, 1.5], [2.5, None]]  # a missing validation loss is a gap, not a zero
    assert norm == [[0.3, 0.2]]
    assert lam == [[0.5, 0.6], [0.5, 0.4]]
