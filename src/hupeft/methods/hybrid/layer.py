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
        far a gradient step of the unmixed BOFT branch moves the weight, per unit step.

        R is block-diagonal with G blocks D_g of s x s (rows of one butterfly group), so
        |dR W0|_F^2 = sum_g tr(dD_g M_g dD_g^T) with M_g = W0_g W0_g^T, W0_g the group's rows of
        W0. M is fixed (computed once), so each step takes forward mode through the s x s blocks
        only: O(d_out s^2), where pushing the tangent through R applied to W0 costs O(d_in d_out s)."""
        from torch.func import jvp

        rot = self.rotation
        theta = rot.theta.detach()
        _, d_blocks = jvp(rot.group_blocks, (theta,), (rot.theta.grad.detach().to(theta.dtype),))
        # group_blocks are in the row convention, d_blocks[g] = dD_g^T: tr(dD M dD^T) = sum((M dB) * dB).
        d_blocks = d_blocks.float()
        return (torch.bmm(self._group_gram(), d_blocks) * d_blocks).sum().clamp_min(0).sqrt()

    def _group_gram(self) -> torch.Tensor:
        """M_g = W0_g W0_g^T for every butterfly group g, (G, s, s) in fp32; W0 is frozen, so once.
        A plain attribute, not a buffer: derived from the base, never saved."""
        gram = getattr(self, "_gram", None)
        if gram is None:
            with torch.no_grad():
                w0 = self.base_weight().detach().float()
                s = self.rotation.group
                rows = w0.reshape(w0.shape[0] // s, s, w0.shape[1])
                gram = torch.bmm(rows, rows.transpose(1, 2))
            self._gram = gram
        return gram

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


def boft_step_norms(layers: list[HybridLinear]) -> list[torch.Tensor]:
    """`boft_step_norm` of each layer (all with gradients), layers whose rotations have one shape
    in one forward-mode pass vectorised over them (torch.func.vmap): the same numbers as one
    layer at a time, in about half the time for the 60 layers of a small model, since each
    layer's s x s blocks are too small to keep the CPU busy on their own."""
    from torch.func import jvp, vmap

    groups: dict[tuple, list[int]] = {}
    for i, layer in enumerate(layers):
        r = layer.rotation
        groups.setdefault((r.dim, r.block_size, r.n_factors, r.theta.dtype, r.theta.device), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(layers)
    for index in groups.values():
        rot = layers[index[0]].rotation  # same shape, same permutations: one function for the group
        thetas = torch.stack([layers[i].rotation.theta.detach() for i in index])
        tangents = torch.stack([layers[i].rotation.theta.grad.detach().to(thetas.dtype) for i in index])
        d_blocks = vmap(lambda th, t: jvp(rot.group_blocks, (th,), (t,))[1])(thetas, tangents).float()
        gram = torch.stack([layers[i]._group_gram() for i in index])
        sq = (torch.matmul(gram, d_blocks) * d_blocks).sum((1, 2, 3)).clamp_min(0).sqrt()
        for j, i in enumerate(index):
            out[i] = sq[j]
    return out
