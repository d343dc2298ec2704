"""Options of the hybrid (the paper's Algorithm 2)."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import MethodError
from ..loraga.config import LoraGAOptions

LAMBDA_RULES = ("paper", "normalized")


@dataclass
class HybridOptions(LoraGAOptions):
    """LoRA-GA's fields (r, alpha, use_rslora, stable_gamma, init_batches) for the low-rank
    branch, BOFT's (n_factors, block_size) for the output-side rotation, and lambda's rule."""

    n_factors: int = 3
    """Butterfly factors m of the BOFT branch (the paper: 3)."""
    block_size: int = 8
    """Block size b of the BOFT branch; must divide each layer's output width d_out, and
    d_out / b must split into 2^(m-1) groups."""
    lambda_init: float = 0.5
    """lambda of every layer before the first update (1 = all LoRA-GA, 0 = all BOFT)."""
    lambda_rule: str = "paper"
    """"paper": lambda = g_LoRA / (g_LoRA + g_BOFT) from the current gradient norms, as printed.
    "normalized": each norm is divided by its branch's weight first (g_LoRA / lambda,
    g_BOFT / (1 - lambda)): each branch's gradient is itself scaled by its weight, so the printed
    rule feeds back on itself (the branch ahead gets more weight, hence more gradient, hence more
    weight) and can drive lambda to 0 or 1; dividing it out compares the branches on equal terms."""
    lambda_ema: float = 0.0
    """Smoothing: lambda <- ema * lambda + (1 - ema) * rule (0 = none, the paper's)."""
    lambda_min: float = 0.01
    """lambda is clamped to [lambda_min, 1 - lambda_min]. At lambda = 0 or 1 one branch's
    gradient is exactly 0, so the printed rule would keep it there for good and that branch's
    parameters would never train again; 0.01 leaves it a gradient 1% as large, enough to come
    back, while changing the mix by at most 1%. 0 gives the printed rule unclamped."""

    def validate(self) -> None:
        super().validate()
        if self.n_factors < 1 or self.block_size < 2:
            raise MethodError(f"hybrid needs n_factors >= 1 and block_size >= 2 (got {self.n_factors}, "
                              f"{self.block_size}); pass n_factors=3, block_size=8 (the paper's)")
        if self.lambda_rule not in LAMBDA_RULES:
            raise MethodError(f"lambda_rule must be one of {LAMBDA_RULES}, not {self.lambda_rule!r}")
        if not 0.0 <= self.lambda_ema < 1.0:
            raise MethodError(f"lambda_ema must be in [0, 1), got {self.lambda_ema}; pass 0 for no smoothing")
        if not 0.0 <= self.lambda_min < 0.5:
            raise MethodError(f"lambda_min must be in [0, 0.5), got {self.lambda_min}; pass 0.01 (the default)")
        if not self.lambda_min <= self.lambda_init <= 1.0 - self.lambda_min:
            raise MethodError(f"lambda_init must be in [lambda_min, 1 - lambda_min] = [{self.lambda_min}, "
                              f"{1 - self.lambda_min}], got {self.lambda_init}; pass 0.5 (the default)")
