"""Hybrid: per layer, a LoRA-GA delta and an output-side BOFT delta mixed by lambda from the
current gradient norms (the paper's Algorithm 2, read as an effective weight; see layer.py for
the reading, config.py for the lambda rules, model.py for the update)."""

from __future__ import annotations

from torch import nn

from ..base import MethodError, default_loss, find_target_linears, replace_targets
from ..boft.butterfly import check_butterfly_shape
from ..loraga import initial_factors
from .config import HybridOptions
from .layer import HybridLinear
from .model import HybridAdapted, next_lambda

OPTIONS = HybridOptions


def apply(model: nn.Module, options: HybridOptions, init_batches=None, loss_fn=default_loss) -> HybridAdapted:
    # Check every layer's shape before the (costly) gradient estimate, so bad options fail fast.
    for name in find_target_linears(model, options.target_modules):
        try:
            check_butterfly_shape(model.get_submodule(name).out_features, options.block_size, options.n_factors)
        except MethodError as e:
            raise MethodError(f"{name} (rotated width d_out): {e}") from None
    factors = initial_factors(model, options, init_batches, loss_fn)
    replace_targets(model, options, lambda name, lin: HybridLinear(
        lin, options.r, options.scaling, options.n_factors, options.block_size, options.lambda_init,
        *factors.get(name, (None, None))))
    return HybridAdapted(model, "hybrid", options)


__all__ = ["HybridAdapted", "HybridLinear", "HybridOptions", "OPTIONS", "apply", "next_lambda"]
