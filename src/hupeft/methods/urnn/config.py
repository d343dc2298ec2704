"""Options of the unitary (uRNN-style) adapter."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import MethodError, MethodOptions


@dataclass
class URNNOptions(MethodOptions):
    variant: str = "structured"
    """"structured": U = D3 R2 F^-1 D2 Pi R1 F D1 (O(n) parameters, unitary by construction,
    trained by the ordinary optimiser); "full": block-diagonal full unitary blocks trained by the
    paper's Algorithm 1 (a Riemannian step on the unitary group)."""
    block_size: int = 8
    """Complex block size of the "full" variant; must divide d/2."""
    manifold_lr: float = 1e-2
    """eta of Algorithm 1 for the "full" variant: U <- exp(-eta (G U^H - U G^H)) U."""
    renorm_tol: float = 1e-6
    """Re-project the "full" blocks to the nearest unitary when max |U^H U - I| exceeds this."""
    seed: int = 0
    """Seed of the structured variant's fixed permutation and initial phases/reflections."""

    def validate(self) -> None:
        if self.variant not in ("structured", "full"):
            raise MethodError(f"urnn variant must be 'structured' or 'full', not {self.variant!r}")
        if self.block_size <= 0 or self.manifold_lr <= 0 or self.renorm_tol <= 0:
            raise MethodError("urnn block_size, manifold_lr and renorm_tol must be > 0")
