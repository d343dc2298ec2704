"""y = W0 (U x): a frozen linear layer behind a unitary map of its input."""

from __future__ import annotations

import torch
from torch import nn

from ..base import AdapterLayer
from .unitary import BlockUnitary, StructuredUnitary, to_complex, to_real, unitarity_error


class URNNLinear(AdapterLayer):
    def __init__(self, base: nn.Linear, variant: str, block_size: int, seed: int):
        super().__init__(base)
        n = base.in_features // 2
        dev = base.weight.device
        self.unitary = (StructuredUnitary(n, seed) if variant == "structured" else BlockUnitary(n, block_size)).to(dev)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        return to_real(self.unitary(to_complex(x)), x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.rotate(x))

    def dense(self) -> torch.Tensor:
        """The real 2n x 2n matrix M with rotate(x) = M x."""
        eye = torch.eye(self.in_features, device=self.base.weight.device)
        return self.rotate(eye).T

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight @ self.dense().to(self.base.weight.dtype)

    @torch.no_grad()
    def orthogonality_error(self) -> float:
        if isinstance(self.unitary, BlockUnitary):
            return unitarity_error(self.unitary.unitary())
        m = self.dense().double()
        return float((m.T @ m - torch.eye(m.shape[0], dtype=m.dtype, device=m.device)).abs().max())
