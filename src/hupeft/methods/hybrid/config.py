"""Options of the hybrid (the paper's Algorithm 2)."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import MethodError
from ..loraga.config import LoraGAOptions


@dataclass
class HybridOptions(LoraGAOptions):
    n_factors: int = 3
    """Butterfly factors m of the BOFT branch (the paper: 3)."""
    block_size: int = 8
    """Block size b of the BOFT branch; must divide the layer's output width."""
    lambda_init: float = 0.5
    """lambda of every layer before the first update (1 = all LoRA-GA, 0 = all BOFT)."""
    lambda_rule: str = "paper"
    """"paper": lambda = g_LoRA / (g_LoRA + g_BOFT) from the current gradient norms, as printed.
    "normalized": each branch's norm divided by its weight first (g_LoRA / lambda,
    g_BOFT / (1 - lambda)), because each branch's gradient is itself scaled by its weight, so the
    printed rule feeds back on itself and can drive lambda to 0 or 1."""
    lambda_ema: float = 0.0
    """Smoothing: lambda <- ema * lambda + (1 - ema) * new (0 = none)."""
    lambda_min: float = 0.01
    """lambda stays in [lambda_min, 1 - lambda_min], so a branch that loses is never cut off for good
    (with lambda = 0 its gradient is exactly 0 and the printed rule could never bring it back)."""

    def validate(self) -> None:
        super().validate()
        if self.lambda_rule not in ("paper", "normalized"):
            raise MethodError(f"lambda_rule must be 'paper' or 'normalized', not {self.lambda_rule!r}")
        if not 0.0 <= self.lambda_ema < 1.0:
            raise MethodError(f"lambda_ema must be in [0, 1), got {self.lambda_ema}")
        if not 0.0 <= self.lambda_min < 0.5 or not 0.0 <= self.lambda_init <= 1.0:
            raise MethodError("lambda_min must be in [0, 0.5) and lambda_init in [0, 1]")
