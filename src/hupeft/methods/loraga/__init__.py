"""LoRA-GA: LoRA initialised from the SVD of the gradient estimated on a few batches.

Our own implementation of the official algorithm, with W0 never modified; init.py says which
version, which singular vectors go where, the scaling, and why not PEFT's.
"""

from __future__ import annotations

from torch import nn

from ..base import Adapted, MethodError, default_loss, find_target_linears, replace_targets
from .config import LoraGAOptions
from .init import check_rank, estimate_gradients, loraga_factors
from .layer import LoraGALinear

OPTIONS = LoraGAOptions


def initial_factors(model: nn.Module, options: LoraGAOptions, init_batches, loss_fn) -> dict[str, tuple]:
    """{layer: (A0, B0)} from the gradient estimate on the (still unadapted) model; {} for
    init="lora". Checks the rank against every targeted layer either way."""
    names = find_target_linears(model, options.target_modules)
    for n in names:
        lin = model.get_submodule(n)
        check_rank(options.r, lin.out_features, lin.in_features, n)
    if options.init == "lora":
        return {}
    if init_batches is None:
        raise MethodError("LoRA-GA (loraga, the hybrid's low-rank branch) starts from the gradient on a few batches: "
                          "pass init_batches=[batch, ...] (dicts with input_ids and labels), or init='lora' for a "
                          "plain LoRA start")
    # Every batch given is used: how many is the run's `init_batches` setting, the one place it is set.
    batches = list(init_batches)  # every pass sees the same batches
    step = options.estimate_layers or len(names)
    factors = {}
    for i in range(0, len(names), step):
        grads = estimate_gradients(model, names[i:i + step], batches, loss_fn or default_loss)
        factors.update({n: loraga_factors(grads.pop(n), options.r, options.stable_gamma) for n in names[i:i + step]})
    return factors


def apply(model: nn.Module, options: LoraGAOptions, init_batches=None, loss_fn=default_loss) -> Adapted:
    """init="lora" starts the factors as plain LoRA (A random, B = B0 = 0): `methods.load` takes
    that path and then restores the saved factors and buffers."""
    factors = initial_factors(model, options, init_batches, loss_fn)
    replace_targets(model, options, lambda name, lin: LoraGALinear(
        lin, options.r, options.scaling, *factors.get(name, (None, None))))
    return Adapted(model, "loraga", options)


__all__ = ["LoraGALinear", "LoraGAOptions", "OPTIONS", "apply", "estimate_gradients", "initial_factors",
           "loraga_factors"]
