"""Options of LoRA-GA."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..base import MethodError, MethodOptions

INITS = ("gradient", "lora")


@dataclass
class LoraGAOptions(MethodOptions):
    r: int = 16
    """Rank of the update (the paper: 16). LoRA-GA takes 2r singular vectors, so 2r must not
    exceed min(d_out, d_in) of any targeted layer."""
    alpha: float = 32.0
    """Scale numerator (the paper: 32): the update is multiplied by alpha/sqrt(r) with rsLoRA,
    else by alpha/r."""
    use_rslora: bool = True
    """rsLoRA's scale alpha/sqrt(r), which LoRA-GA's stable-scale analysis assumes; False gives
    alpha/r, as the official repository's example configs (PEFT's default) run it."""
    stable_gamma: float = 16.0
    """gamma of the official "stable" scale: A0 and B0 are multiplied by d_out^(1/4)/sqrt(gamma)
    (the official default: 16). Larger gamma: a smaller start, closer to plain LoRA."""
    init: str = "gradient"
    """"gradient": A0 and B0 from the SVD of the gradient estimated on `init_batches` (LoRA-GA);
    "lora": plain LoRA's start (A random, B = B0 = 0), which needs no batches. Without
    batches and without "lora", applying the method is an error rather than a silent LoRA start."""
    estimate_layers: int | None = None
    """Targeted layers whose gradient is estimated per pass over the init batches (None: all in
    one pass). Each pass holds only its layers' fp32 estimates, so a model whose estimates do not
    fit at once (Llama-3.1-405B: 144 GB for q and v) is estimated in several passes; with no
    dropout the factors are the same either way."""

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def validate(self) -> None:
        if self.r <= 0:
            raise MethodError(f"LoRA-GA rank r must be > 0, got {self.r}; "
                              "pass r=16 (the paper's) or another positive int")
        if self.alpha <= 0:
            raise MethodError(f"LoRA-GA alpha must be > 0, got {self.alpha}; pass alpha=32 (the paper's)")
        if self.estimate_layers is not None and self.estimate_layers <= 0:
            raise MethodError(f"LoRA-GA estimate_layers must be > 0 or None, got {self.estimate_layers}")
        if self.init not in INITS:
            raise MethodError(f"init must be one of {INITS}, not {self.init!r}")
        if self.stable_gamma <= 0:
            raise MethodError(f"LoRA-GA stable_gamma must be > 0, got {self.stable_gamma}; "
                              "pass 16 (the official default)")
