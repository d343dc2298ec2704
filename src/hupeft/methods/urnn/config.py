"""Options of the unitary (uRNN-style) adapter."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import MethodError, MethodOptions


@dataclass
class URNNOptions(MethodOptions):
    variant: str = "structured"
    """"structured": U = D3 R2 F^-1 D2 Pi R1 F D1 (O(n) parameters, unitary by construction,
    trained by the ordinary optimiser); "full": block-diagonal full unitary blocks trained by the
    paper's Algorithm 1 (a Riemannian step on the unitary group, in `before_step`)."""
    block_size: int = 8
    """Complex block size b of the "full" variant; must divide n = d/2 (d the rotated width)."""
    manifold_lr: float = 1e-3
    """eta of Algorithm 1 for the "full" variant: U <- exp(-eta (G U^H - U G^H)) U."""
    renorm_tol: float = 1e-6
    """Re-project the "full" blocks to the nearest unitary when max |U^H U - I| exceeds this."""
    side: str = "input"
    """"input": y = W0 (U x) + b, as the paper places the unitary; "output": y = U (W0 x) + b."""
    recompute: bool = True
    """Structured variant: keep only the layer's input for backward and recompute the unitary's
    intermediates there (activation checkpointing of the adapter alone). Its eight factors would
    otherwise store about ten complex copies of every targeted layer's activations, as much as
    full fine-tuning's optimiser state on a small model; the price is one more adapter forward."""
    seed: int = 0
    """Seed of the structured variant's fixed permutation Pi and initial phases/reflections."""

    def validate(self) -> None:
        if self.variant not in ("structured", "full"):
            raise MethodError(f"urnn variant must be 'structured' or 'full', not {self.variant!r}")
        if self.side not in ("input", "output"):
            raise MethodError(f"urnn side must be 'input' or 'output', not {self.side!r}")
        if self.block_size <= 0 or self.manifold_lr <= 0 or self.renorm_tol <= 0:
            raise MethodError("urnn block_size, manifold_lr and renorm_tol must be > 0; pass positive values")
