"""Options of our BOFT."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import MethodError, MethodOptions


@dataclass
class BOFTOptions(MethodOptions):
    n_factors: int = 3
    """Butterfly factors m (the paper: 3). Each doubles the span a rotation can mix."""
    block_size: int = 8
    """Size b of the orthogonal blocks; must divide the rotated width, which must split into
    2^(m-1) groups of blocks."""
    side: str = "input"
    """"input": y = s * (W0 (R x)), as PEFT and the BOFT paper; "output": y = s * (R (W0 x)), as
    the hybrid paper's Algorithm 2 writes the rotation (R - I) W0."""
    scale: bool = True
    """Train PEFT's per-output magnitude s (initialised to 1)."""

    def validate(self) -> None:
        if self.side not in ("input", "output"):
            raise MethodError(f"BOFT side must be 'input' or 'output', not {self.side!r}")
        if self.n_factors <= 0 or self.block_size <= 1:
            raise MethodError(f"BOFT needs n_factors >= 1 and block_size >= 2 (got {self.n_factors}, {self.block_size})")
