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
        # y = s * (W0 R x) + b or s * (R W0 x) + b, with W0 applied by the base's own forward (a
        # quantized base works). The change is added to the base's output rather than rebuilt
        # around it, so at step 0 (R = I, s = 1) the output is the base's to the last bit.
        b = self.base.bias
        if self.side == "input":
            out = self.base(self.rotation(x))
            if self.scale is None:
                return out
            h = out if b is None else out - b
            return out + (self.scale.to(h.dtype) - 1) * h
        out = self.base(x)
        h = out if b is None else out - b
        rotated = self.rotation(h)
        if self.scale is not None:
            rotated = rotated * self.scale.to(h.dtype)
        return out + (rotated - h)

    def merged_weight(self) -> torch.Tensor:
        w0 = self.base_weight()
        r = self.rotation.matrix().to(w0.dtype)
        w = w0 @ r if self.side == "input" else r @ w0
        return w if self.scale is None else self.scale.to(w.dtype)[:, None] * w

    def orthogonality_error(self) -> float:
        return self.rotation.orthogonality_error()
