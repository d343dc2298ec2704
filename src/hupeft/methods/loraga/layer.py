"""y = W0 x + s (B A - B0 A0) x: LoRA whose start (A0, B0) is held as frozen buffers.

Subtracting the frozen start instead of editing W0 keeps the base model untouched (quantized
bases, a base shared with other adapters, the hybrid) and makes outputs at step 0 exactly the
base model's. A0 and B0 are persistent buffers, so they travel with the saved adapter state.
"""

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
        if a0 is None:
            # No gradient estimate (init="lora", which methods.load uses before it restores the
            # saved factors): start as plain LoRA, A random and B = B0 = 0.
            a0 = torch.empty(r, d_in)
            nn.init.kaiming_uniform_(a0, a=math.sqrt(5))
            b0 = torch.zeros(d_out, r)
        self.scaling = scaling
        # Adapter factors stay fp32 whatever the base dtype: they are small, and bf16 factors
        # would make B A - B0 A0 inexact at step 0.
        self.lora_A = nn.Parameter(a0.detach().clone().float().to(dev))
        self.lora_B = nn.Parameter(b0.detach().clone().float().to(dev))
        self.register_buffer("A0", a0.detach().clone().float().to(dev))
        self.register_buffer("B0", b0.detach().clone().float().to(dev))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """s (B A - B0 A0) x, with one (2r x d_in) product and never a d_out x d_in matrix."""
        r = self.lora_A.shape[0]
        h = x @ torch.cat([self.lora_A, self.A0]).to(x.dtype).T
        return self.scaling * (h[..., :r] @ self.lora_B.to(x.dtype).T - h[..., r:] @ self.B0.to(x.dtype).T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta(x)

    def delta_weight(self) -> torch.Tensor:
        """s (B A - B0 A0), fp32."""
        return self.scaling * (self.lora_B @ self.lora_A - self.B0 @ self.A0)

    def merged_weight(self) -> torch.Tensor:
        w = self.base_weight()
        return (w.float() + self.delta_weight()).to(w.dtype)
