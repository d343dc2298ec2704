"""BOFT: butterfly orthogonal fine-tuning with m factors, applied to activations.

See butterfly.py for why hupeft has its own butterfly rather than PEFT's.
"""

from __future__ import annotations

from torch import nn

from ..base import Adapted, replace_targets
from .butterfly import Butterfly, check_butterfly_shape
from .config import BOFTOptions
from .layer import BOFTLinear

OPTIONS = BOFTOptions


def apply(model: nn.Module, options: BOFTOptions, init_batches=None, loss_fn=None) -> Adapted:
    replace_targets(model, options, lambda name, lin: BOFTLinear(
        lin, options.n_factors, options.block_size, options.side, options.scale))
    return Adapted(model, "boft", options)


__all__ = ["BOFTLinear", "BOFTOptions", "Butterfly", "OPTIONS", "apply", "check_butterfly_shape"]
