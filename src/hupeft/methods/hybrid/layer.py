"""W = W0 + lambda * dW_LoRA-GA + (1 - lambda) * (R - I) W0, computed on activations.

Algorithm 2 as printed adds the mixed delta into W at every step, which would count it again at
each step; we read it as this effective weight, with W0 never modified. R (d_out x d_out) is a
butterfly rotation on the output side, as Algorithm 2 writes it, so with h = W0 x:

    y = h + lambda * s (B A - B0 A0) x + (1 - lambda) * (R h - h) + bias

Both deltas are exactly zero at step 0 (B = B0, A = A0; R = I), so outputs equal the base
model's for any lambda. lambda is a persistent buffer: saved with the adapter, restored by load.
"""

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
        # The base runs as itself (a quantized base works); R acts on W0 x only, not on the bias.
        out = self.base(x)
        h = out if self.base.bias is None else out - self.base.bias
        lam = self.lam.to(out.dtype)
        return out + lam * self.delta(x) + (1 - lam) * (self.rotation(h) - h)

    def lora_parameters(self) -> list[nn.Parameter]:
        return [self.lora_A, self.lora_B]

    def boft_parameters(self) -> list[nn.Parameter]:
        return list(self.rotation.parameters())

    def lora_step_norm(self) -> torch.Tensor:
        """|s (dB A + B dA)|_F for (dA, dB) the current gradients: how far a gradient step of the
        unmixed LoRA branch moves the weight, per unit step. From r x r products only:
        |dB A|^2 = tr(dB^T dB A A^T), |B dA|^2 = tr(B^T B dA dA^T), cross 2 tr(dB^T B dA A^T)."""
        a, b = self.lora_A.detach().float(), self.lora_B.detach().float()
        ga, gb = self.lora_A.grad.float(), self.lora_B.grad.float()
        sq = ((gb.T @ gb) * (a @ a.T)).sum() + ((b.T @ b) * (ga @ ga.T)).sum() \
            + 2 * ((gb.T @ b) * (ga @ a.T).T).sum()
        return self.scaling * sq.clamp_min(0).sqrt()

    def boft_step_norm(self) -> torch.Tensor:
        """|dR W0|_F for dR the derivative of R along the current gradient of its parameters: how
        far a gradient step of the unmixed BOFT branch moves the weight, per unit step (forward
        mode through the butterfly, applied to W0^T as a batch of d_in vectors)."""
        from torch.func import functional_call, jvp

        theta = self.rotation.theta
        w0t = self.base_weight().detach().float().T
        _, tangent = jvp(lambda t: functional_call(self.rotation, {"theta": t}, (w0t,)),
                         (theta.detach(),), (theta.grad.detach(),))
        return tangent.norm()

    @torch.no_grad()
    def branch_delta(self) -> tuple[float, float]:
        """(|dW_LoRA|_F, |(R - I) W0|_F) / |W0|_F: how far each branch, unmixed, has moved the
        layer's weight; it shows whether a branch's parameters train at all, whatever its weight."""
        w0 = self.base_weight().float()
        n0 = w0.norm()
        rot = self.rotation.matrix().float()
        return float(self.delta_weight().norm() / n0), float((rot @ w0 - w0).norm() / n0)

    def branch_change(self) -> tuple[float, float]:
        """(|lambda dW_LoRA|_F, |(1 - lambda)(R - I) W0|_F) / |W0|_F: how far each branch has moved
        the layer's weight, as mixed."""
        lam = float(self.lam)
        lora, boft = self.branch_delta()
        return lam * lora, (1 - lam) * boft

    def merged_weight(self) -> torch.Tensor:
        w = self.base_weight()
        w0 = w.float()
        rot = self.rotation.matrix().float()  # forward(h) == rot @ h for column vectors
        lam = float(self.lam)
        return (w0 + lam * self.delta_weight() + (1 - lam) * (rot @ w0 - w0)).to(w.dtype)

    def orthogonality_error(self) -> float:
        return self.rotation.orthogonality_error()
