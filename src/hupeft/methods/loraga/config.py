"""Options of LoRA-GA."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..base import MethodError, MethodOptions


@dataclass
class LoraGAOptions(MethodOptions):
    r: int = 16
    """Rank of the update (the paper: 16)."""
    alpha: float = 32.0
    """Scale numerator (the paper: 32); the scale is alpha/sqrt(r) with rsLoRA, else alpha/r."""
    use_rslora: bool = True
    """rsLoRA scaling alpha/sqrt(r), as the official LoRA-GA code uses."""
    stable_gamma: float = 16.0
    """gamma of the official "stable" scaling: A0 and B0 are multiplied by d_out^(1/4)/sqrt(gamma)."""
    init_batches: int = 8
    """Most batches the gradient estimate averages over (the run passes its own init batches; this
    caps how many are used)."""

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def validate(self) -> None:
        if self.r <= 0:
            raise MethodError(f"LoRA-GA rank r must be > 0, got {self.r}; pass r=16 (the paper's) or another positive int")
        if self.alpha <= 0 or self.stable_gamma <= 0 or self.init_batches <= 0:
            raise MethodError("LoRA-GA alpha, stable_gamma and init_batches must be > 0")
