"""y = W0 x + s (B A - B0 A0) x: LoRA whose start (B0, A0) is held as frozen buffers.

Subtracting the frozen start instead of editing W0 keeps the base model untouched (quantized
bases, sharing the base with other adapters, the hybrid) and makes outputs at step 0 exactly
the base model's."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..base import AdapterLayer


class LoraGALinear(AdapterLayer):
    def __init__(self, base: nn.Linear, r: int, scaling: float,
                 a0: torch.Tensor | None = None, b0: torch.Tensor | None = None):
        super().__init__(base)
        dev, d_in, d_out = base.weight.device, base.in_features, base.out_features
        if a0 is None:  # plain LoRA start: used when a saved state will overwrite it
            a0 = torch.empty(r, d_in)
            nn.init.kaiming_uniform_(a0, a=math.sqrt(5))
            b0 = torch.zeros(d_out, r)
        self.scaling = scaling
        self.lora_A = nn.Parameter(a0.clone().float().to(dev))
        self.lora_B = nn.Parameter(b0.clone().float().to(dev))
        self.register_buffer("A0", a0.clone().float().to(dev))
        self.register_buffer("B0", b0.clone().float().to(dev))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """s (B A - B0 A0) x, without materialising any d_out x d_in matrix."""
        a = torch.cat([self.lora_A, self.A0]).to(x.dtype)
        h = x @ a.T
        r = self.lora_A.shape[0]
        return self.scaling * (h[..., :r] @ self.lora_B.to(x.dtype).T - h[..., r:] @ self.B0.to(x.dtype).T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta(x)

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A - self.B0 @ self.A0)

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + self.delta_weight().to(self.base.weight.dtype)
