"""Hybrid: per layer, a LoRA-GA delta and an output-side BOFT delta mixed by lambda from the
current gradient norms (the paper's Algorithm 2, read as an effective weight; see layer.py)."""

from __future__ import annotations

from torch import nn

from ..base import default_loss, replace_targets
from ..loraga import initial_factors
from .config import HybridOptions
from .layer import HybridLinear
from .model import HybridAdapted, next_lambda

OPTIONS = HybridOptions


def apply(model: nn.Module, options: HybridOptions, init_batches=None, loss_fn=default_loss) -> HybridAdapted:
    factors = initial_factors(model, options, init_batches, loss_fn)
    replace_targets(model, options, lambda name, lin: HybridLinear(
        lin, options.r, options.scaling, options.n_factors, options.block_size, options.lambda_init,
        *factors.get(name, (None, None))))
    return HybridAdapted(model, "hybrid", options)


__all__ = ["HybridAdapted", "HybridLinear", "HybridOptions", "OPTIONS", "apply", "next_lambda"]
