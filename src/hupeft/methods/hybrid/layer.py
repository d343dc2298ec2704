"""W = W0 + lambda * dW_LoRA-GA + (1 - lambda) * (R - I) W0, computed on activations.

h0 = W0 x;  y = h0 + lambda * s (B A - B0 A0) x + (1 - lambda) * (R h0 - h0) + bias.
W0 is never modified, and both deltas are zero at step 0, so outputs equal the base model's for
any lambda."""

from __future__ import annotations

import torch
from torch import nn

from ..boft.butterfly import Butterfly
from ..loraga.layer import LoraGALinear


class HybridLinear(LoraGALinear):
    def __init__(self, base: nn.Linear, r: int, scaling: float, n_factors: int, block_size: int,
                 lambda_init: float, a0=None, b0=None):
        super().__init__(base, r, scaling, a0, b0)
        self.rotation = Butterfly(base.out_features, block_size, n_factors).to(base.weight.device)
        self.register_buffer("lam", torch.tensor(float(lambda_init), device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = nn.functional.linear(x, self.base.weight)
        lam = self.lam.to(h0.dtype)
        y = h0 + lam * self.delta(x) + (1 - lam) * (self.rotation(h0) - h0)
        return y if self.base.bias is None else y + self.base.bias

    def lora_parameters(self) -> list[nn.Parameter]:
        return [self.lora_A, self.lora_B]

    def boft_parameters(self) -> list[nn.Parameter]:
        return [self.rotation.theta]

    def merged_weight(self) -> torch.Tensor:
        w0 = self.base.weight.float()
        r = self.rotation.matrix().float()
        lam = float(self.lam)
        w = w0 + lam * self.delta_weight() + (1 - lam) * (r @ w0 - w0)
        return w.to(self.base.weight.dtype)

    def orthogonality_error(self) -> float:
        return self.rotation.orthogonality_error()
