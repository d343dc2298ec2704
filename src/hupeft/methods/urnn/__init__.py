"""uRNN adapter: a unitary map of each targeted layer's input, y = W0 (U x) (or output side).

"full" (the default) is the paper's Algorithm 1: a unitary U (one over the whole width unless
`block_size` splits it) trained on the unitary group by `UnitaryAdamW` (optim.py). "structured"
follows Arjovsky et al.'s U = D3 R2 F^-1 D2 Pi R1 F D1 under plain AdamW.
"""

from __future__ import annotations

import torch
from torch import nn

from ..base import Adapted, MethodError, replace_targets
from .config import URNNOptions
from .layer import URNNLinear
from .optim import UnitaryAdamW
from .unitary import BlockUnitary, StructuredUnitary

OPTIONS = URNNOptions


class URNNAdapted(Adapted):
    def __init__(self, model, method: str, options: URNNOptions):
        super().__init__(model, method, options)
        self._optimizer: UnitaryAdamW | None = None

    def _unitary_parameters(self) -> list[nn.Parameter]:
        return [l.unitary.u for l in self.adapter_layers().values() if isinstance(l.unitary, BlockUnitary)]

    def optimizer(self, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
        """Structured: AdamW. Full: `UnitaryAdamW`, with U in its own group (peak eta
        `manifold_lr`, or the run's `lr`; no weight decay) and the rest under AdamW."""
        if self.options.variant != "full":
            return super().optimizer(lr, weight_decay)
        us = self._unitary_parameters()
        ids = {id(u) for u in us}
        rest = [p for p in self.trainable_parameters().values() if id(p) not in ids]
        groups = [{"params": us, "lr": self.options.manifold_lr or lr, "weight_decay": 0.0, "unitary": True,
                   "manifold_step": self.options.manifold_step, "renorm_tol": self.options.renorm_tol,
                   "renorm_every": self.options.renorm_every}]
        if rest:  # a classification head
            groups.append({"params": rest})
        self._optimizer = UnitaryAdamW(groups, lr=lr, weight_decay=weight_decay)
        return self._optimizer

    def before_step(self) -> None:
        # A plain optimiser would move U off the unitary group: refuse rather than train wrongly.
        if self._optimizer is None and any(u.grad is not None for u in self._unitary_parameters()):
            raise MethodError("urnn variant 'full' trains U on the unitary group; build the optimiser "
                              "with adapted.optimizer(lr) instead of a plain one")

    def diagnostics(self) -> dict:
        out = super().diagnostics()
        if self._optimizer is not None:
            out["renormalisations"] = self._optimizer.renormalisations()
        return out

    @torch.no_grad()
    def movement(self) -> dict:
        """Adds `unitary_distance`: per layer |U_eff - I|_F / |I|_F (real form; 0 at start)."""
        out = super().movement()
        dist = {}
        for name, layer in self.adapter_layers().items():
            m = layer.dense().double()
            dist[name] = float((m - torch.eye(m.shape[0], dtype=m.dtype, device=m.device)).norm() / m.shape[0] ** 0.5)
        out["unitary_distance"] = dist
        return out


def check_width(name: str, width: int, options: URNNOptions) -> None:
    """One-line errors naming the fix: C^{d/2} needs an even d, and full blocks must tile d/2."""
    which = "input" if options.side == "input" else "output"
    if width % 2:
        raise MethodError(f"{name}: urnn needs an even {which} width, got {width}; target other layers"
                          + (" or use side='output'" if which == "input" else " or use side='input'"))
    if options.variant == "full" and options.block_size and (width // 2) % options.block_size:
        raise MethodError(f"{name}: urnn block_size {options.block_size} does not divide {width // 2} "
                          f"(half the {which} width {width}); pick a divisor of {width // 2} or None")


def apply(model: nn.Module, options: URNNOptions, init_batches=None, loss_fn=None) -> Adapted:
    def make(name: str, lin: nn.Linear) -> URNNLinear:
        width = lin.in_features if options.side == "input" else lin.out_features
        check_width(name, width, options)
        return URNNLinear(lin, options.variant, options.block_size or width // 2, options.seed, options.side,
                          options.recompute)

    replace_targets(model, options, make)
    return URNNAdapted(model, "urnn", options)


__all__ = ["BlockUnitary", "OPTIONS", "StructuredUnitary", "URNNLinear", "URNNOptions", "UnitaryAdamW", "apply",
           "check_width"]
