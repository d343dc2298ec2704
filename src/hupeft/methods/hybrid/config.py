"""Options of the hybrid (the paper's Algorithm 2)."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import MethodError
from ..loraga.config import LoraGAOptions

LAMBDA_RULES = ("slope", "normalized", "paper")


@dataclass
class HybridOptions(LoraGAOptions):
    """LoRA-GA's fields (r, alpha, use_rslora, stable_gamma) for the low-rank branch, BOFT's
    (n_factors, block_size) for the output-side rotation, the two learning rates of Algorithm 2,
    and lambda's rule."""

    n_factors: int = 3
    """Butterfly factors m of the BOFT branch (the paper: 3)."""
    block_size: int = 8
    """Block size b of the BOFT branch; must divide each layer's output width d_out, and
    d_out / b must split into 2^(m-1) groups."""
    lr_lora: float | None = None
    """eta_LoRA of Algorithm 2: peak learning rate of A and B; None: the run's learning rate.
    The run's schedule scales it like every other rate."""
    lr_boft: float | None = None
    """eta_BOFT of Algorithm 2: peak learning rate of the skew matrices Q; None: the run's."""
    lambda_init: float = 0.5
    """lambda of every layer before the first update (1 = all LoRA-GA, 0 = all BOFT)."""
    lambda_rule: str = "slope"
    """How each layer's lambda = g_LoRA / (g_LoRA + g_BOFT) measures its branches (model.py):
    "paper": g = the gradient norms as printed, |grad_{A,B} L| and |grad_Q L| (Q the skew
    matrix, the gradient Algorithm 2 applies to it), taken in the mixed model, where each
    branch's gradient is itself scaled by its weight: the printed rule feeds back on itself;
    "normalized": the same norms divided by the branch's weight (lambda, 1 - lambda), i.e. the
    gradients of the unmixed branches, which removes the feedback;
    "slope" (the default): how fast the loss falls per unit of weight change when the branch
    follows its own gradient, |grad|^2 / |dW of that gradient step|_F. Unlike the two above it
    does not depend on lambda, on the LoRA scale alpha, on gamma or on any parameter's scale:
    only on the data's gradient and on which weight directions each branch can take."""
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
        for name in ("lr_lora", "lr_boft"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise MethodError(f"hybrid {name} must be > 0 or None (the run's lr), got {getattr(self, name)}")
        if self.lambda_rule not in LAMBDA_RULES:
            raise MethodError(f"lambda_rule must be one of {LAMBDA_RULES}, not {self.lambda_rule!r}")
        if not 0.0 <= self.lambda_ema < 1.0:
            raise MethodError(f"lambda_ema must be in [0, 1), got {self.lambda_ema}; pass 0 for no smoothing")
        if not 0.0 <= self.lambda_min < 0.5:
            raise MethodError(f"lambda_min must be in [0, 0.5), got {self.lambda_min}; pass 0.01 (the default)")
        if not self.lambda_min <= self.lambda_init <= 1.0 - self.lambda_min:
            raise MethodError(f"lambda_init must be in [lambda_min, 1 - lambda_min] = [{self.lambda_min}, "
                              f"{1 - self.lambda_min}], got {self.lambda_init}; pass 0.5 (the default)")
