"""LoRA-GA: LoRA initialised from the SVD of the gradient estimated on a few batches.

Our own implementation of the official algorithm; see init.py for the choices and why.
"""

from __future__ import annotations

from torch import nn

from ..base import Adapted, default_loss, find_target_linears, replace_targets
from .config import LoraGAOptions
from .init import estimate_gradients, loraga_factors
from .layer import LoraGALinear

OPTIONS = LoraGAOptions


def initial_factors(model: nn.Module, options, init_batches, loss_fn) -> dict[str, tuple]:
    """{layer: (A0, B0)} from the gradient estimate; {} without init batches."""
    if init_batches is None:
        return {}
    names = find_target_linears(model, options.target_modules)
    grads = estimate_gradients(model, names, init_batches, loss_fn or default_loss, options.init_batches)
    return {n: loraga_factors(grads[n], options.r, options.stable_gamma) for n in names}


def apply(model: nn.Module, options: LoraGAOptions, init_batches=None, loss_fn=default_loss) -> Adapted:
    """Without init_batches the factors start as plain LoRA (A random, B = 0): `methods.load`
    uses that path and then restores the saved state."""
    factors = initial_factors(model, options, init_batches, loss_fn)
    replace_targets(model, options, lambda name, lin: LoraGALinear(
        lin, options.r, options.scaling, *factors.get(name, (None, None))))
    return Adapted(model, "loraga", options)


__all__ = ["LoraGALinear", "LoraGAOptions", "OPTIONS", "apply", "estimate_gradients", "loraga_factors"]
