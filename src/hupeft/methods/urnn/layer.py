"""A frozen linear layer with a unitary map on its input (y = W0 (U x) + b, the paper's placement)
or on its output (y = U (W0 x) + b)."""

from __future__ import annotations

import torch
from torch import nn

from ..base import AdapterLayer
from .unitary import BlockUnitary, StructuredUnitary, to_complex, to_real, unitarity_error


class URNNLinear(AdapterLayer):
    def __init__(self, base: nn.Linear, variant: str, block_size: int, seed: int, side: str = "input"):
        super().__init__(base)
        self.side = side
        n = (base.in_features if side == "input" else base.out_features) // 2
        unitary = StructuredUnitary(n, seed) if variant == "structured" else BlockUnitary(n, block_size)
        self.unitary = unitary.to(base.weight.device)

    @property
    def width(self) -> int:
        """The real width the unitary acts on (2n)."""
        return 2 * self.unitary.n

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """The real orthogonal map of U on the last dimension (pairs = real and imaginary parts)."""
        return to_real(self.unitary(to_complex(x)), x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.side == "input":
            return self.base(self.rotate(x))
        # The bias is added after U, so that merging gives U W0 with the bias unchanged.
        y = self.rotate(nn.functional.linear(x, self.base.weight))
        return y if self.base.bias is None else y + self.base.bias

    def dense(self) -> torch.Tensor:
        """The real 2n x 2n matrix M with rotate(x) = x @ M^T (M x per vector)."""
        eye = torch.eye(self.width, device=self.base.weight.device)
        return self.rotate(eye).T

    def merged_weight(self) -> torch.Tensor:
        m = self.dense().to(self.base.weight.dtype)
        return self.base.weight @ m if self.side == "input" else m @ self.base.weight

    @torch.no_grad()
    def orthogonality_error(self) -> float:
        """max |U^H U - I| over the complex n x n matrix (half the real width: 8x cheaper than the
        real Gram); the full variant's blocks are checked blockwise."""
        if isinstance(self.unitary, BlockUnitary):
            return unitarity_error(self.unitary.unitary())
        eye = torch.eye(self.unitary.n, dtype=torch.complex64, device=self.base.weight.device)
        return unitarity_error(self.unitary(eye).T)  # row j of U(eye) is U e_j: transpose gives U
