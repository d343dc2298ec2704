"""A frozen linear layer with a butterfly rotation on its input or output side."""

from __future__ import annotations

import torch
from torch import nn

from ..base import AdapterLayer
from .butterfly import Butterfly


class BOFTLinear(AdapterLayer):
    def __init__(self, base: nn.Linear, n_factors: int, block_size: int, side: str, scale: bool):
        super().__init__(base)
        self.side = side
        dim = base.in_features if side == "input" else base.out_features
        self.rotation = Butterfly(dim, block_size, n_factors).to(base.weight.device)
        self.scale = nn.Parameter(torch.ones(base.out_features, device=base.weight.device)) if scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.base.weight, self.base.bias
        if self.side == "input":
            y = nn.functional.linear(self.rotation(x), w)
        else:
            y = self.rotation(nn.functional.linear(x, w))
        if self.scale is not None:
            y = y * self.scale.to(y.dtype)
        return y if b is None else y + b

    def merged_weight(self) -> torch.Tensor:
        r = self.rotation.matrix().to(self.base.weight.dtype)
        w = self.base.weight @ r if self.side == "input" else r @ self.base.weight
        return w if self.scale is None else self.scale.to(w.dtype)[:, None] * w

    def orthogonality_error(self) -> float:
        return self.rotation.orthogonality_error()
