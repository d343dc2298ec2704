"""uRNN adapter: a unitary map of each targeted layer's input, y = W0 (U x).

"structured" follows Arjovsky et al.'s U = D3 R2 F^-1 D2 Pi R1 F D1; "full" trains full unitary
blocks with the paper's Algorithm 1 (a Riemannian step in `before_step`).
"""

from __future__ import annotations

from torch import nn

from ..base import Adapted, MethodError, replace_targets
from .config import URNNOptions
from .layer import URNNLinear
from .unitary import BlockUnitary

OPTIONS = URNNOptions


class URNNAdapted(Adapted):
    def before_step(self) -> None:
        if self.options.variant != "full":
            return
        for layer in self.adapter_layers().values():
            layer.unitary.riemannian_step(self.options.manifold_lr, self.options.renorm_tol)

    def diagnostics(self) -> dict:
        out = super().diagnostics()
        if self.options.variant == "full":
            out["renormalisations"] = sum(l.unitary.renormalisations for l in self.adapter_layers().values())
        return out


def apply(model: nn.Module, options: URNNOptions, init_batches=None, loss_fn=None) -> Adapted:
    def make(name: str, lin: nn.Linear) -> URNNLinear:
        d = lin.in_features
        if d % 2:
            raise MethodError(f"{name}: urnn needs an even input width, got {d}; target other layers")
        if options.variant == "full" and (d // 2) % options.block_size:
            raise MethodError(f"{name}: urnn block_size {options.block_size} does not divide {d // 2} "
                              f"(half the width {d}); pick a divisor of {d // 2}")
        return URNNLinear(lin, options.variant, options.block_size, options.seed)

    replace_targets(model, options, make)
    return URNNAdapted(model, "urnn", options)


__all__ = ["BlockUnitary", "OPTIONS", "URNNLinear", "URNNOptions", "apply"]
