"""uRNN adapter: a unitary map of each targeted layer's input, y = W0 (U x) (or output side).

"structured" follows Arjovsky et al.'s U = D3 R2 F^-1 D2 Pi R1 F D1; "full" trains full unitary
blocks with the paper's Algorithm 1 (a Riemannian step in `before_step`).
"""

from __future__ import annotations

from torch import nn

from ..base import Adapted, MethodError, replace_targets
from .config import URNNOptions
from .layer import URNNLinear
from .unitary import BlockUnitary, StructuredUnitary

OPTIONS = URNNOptions


class URNNAdapted(Adapted):
    def before_step(self) -> None:
        """Algorithm 1 for the full variant: it consumes U's gradient, so the optimiser skips U."""
        if self.options.variant != "full":
            return
        for layer in self.adapter_layers().values():
            layer.unitary.riemannian_step(self.options.manifold_lr, self.options.renorm_tol)

    def diagnostics(self) -> dict:
        out = super().diagnostics()
        if self.options.variant == "full":
            out["renormalisations"] = sum(l.unitary.renormalisations for l in self.adapter_layers().values())
        return out


def check_width(name: str, width: int, options: URNNOptions) -> None:
    """One-line errors naming the fix: C^{d/2} needs an even d, and full blocks must tile d/2."""
    which = "input" if options.side == "input" else "output"
    if width % 2:
        raise MethodError(f"{name}: urnn needs an even {which} width, got {width}; target other layers"
                          + (" or use side='output'" if which == "input" else " or use side='input'"))
    if options.variant == "full" and (width // 2) % options.block_size:
        raise MethodError(f"{name}: urnn block_size {options.block_size} does not divide {width // 2} "
                          f"(half the width {width}); pick a divisor of {width // 2}")


def apply(model: nn.Module, options: URNNOptions, init_batches=None, loss_fn=None) -> Adapted:
    def make(name: str, lin: nn.Linear) -> URNNLinear:
        check_width(name, lin.in_features if options.side == "input" else lin.out_features, options)
        return URNNLinear(lin, options.variant, options.block_size, options.seed, options.side, options.recompute)

    replace_targets(model, options, make)
    return URNNAdapted(model, "urnn", options)


__all__ = ["BlockUnitary", "OPTIONS", "StructuredUnitary", "URNNLinear", "URNNOptions", "apply", "check_width"]
