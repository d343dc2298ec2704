"""The gradient estimate and its SVD, shared by LoRA-GA and the hybrid.

We follow the official LoRA-GA algorithm (Wang et al. 2024, github Outsider565/LoRA-GA) with its
defaults: direction "ArB2r" and "stable" scaling, rsLoRA.
  G = the mean gradient of the loss w.r.t. W over a few batches; G ~ U S V^T
  A0 = V[:, :r]^T * d_out^(1/4) / sqrt(gamma)        (top-r right singular vectors)
  B0 = U[:, r:2r]  * d_out^(1/4) / sqrt(gamma)        (next r left singular vectors)
so that the first step of B A moves W along the top 2r singular directions of G.
PEFT's version (init_lora_weights="lora_ga") differs: it multiplies B0 by the singular values
and scales B0 only. Why our own: PEFT subtracts s B0 A0 from W0 in place, which refuses
quantized bases and would change the base the hybrid mixes with; we keep W0 untouched.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def estimate_gradients(model: nn.Module, names: list[str], batches: Iterable[dict], loss_fn,
                       max_batches: int | None = None) -> dict[str, torch.Tensor]:
    """dL/dW (fp32, d_out x d_in) of each named linear layer, averaged over the batches.

    Computed from each layer's input x and output gradient g as sum_t g_t x_t^T, through hooks,
    so no weight needs requires_grad (and quantized layers work): only the layer outputs are
    made to require grad."""
    grads: dict[str, torch.Tensor] = {}
    was = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)

    def hook(name):
        def on_forward(module, inputs, out):
            x = inputs[0].detach()
            if not out.requires_grad:
                out.requires_grad_(True)

            def on_grad(g):
                gx = g.reshape(-1, g.shape[-1]).float().T @ x.reshape(-1, x.shape[-1]).float()
                grads[name] = gx if name not in grads else grads[name] + gx

            out.register_hook(on_grad)
        return on_forward

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    count = 0
    try:
        for batch in batches:
            if max_batches is not None and count >= max_batches:
                break
            loss_fn(model, batch).backward()
            count += 1
    finally:
        for h in handles:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(was[n])
            p.grad = None
    if count == 0:
        raise ValueError("LoRA-GA needs at least one init batch to estimate the gradient")
    return {n: g / count for n, g in grads.items()}


def loraga_factors(grad: torch.Tensor, r: int, stable_gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A0, B0) from a gradient estimate, as the official LoRA-GA ("ArB2r", "stable")."""
    d_out, d_in = grad.shape
    if 2 * r > min(d_out, d_in):
        raise ValueError(f"LoRA-GA needs 2r <= min(d_out, d_in) = {min(d_out, d_in)}; lower r")
    if min(d_out, d_in) <= 2048:
        u, _, vh = torch.linalg.svd(grad.double(), full_matrices=False)  # exact and cheap at this size
        u, v = u.float(), vh.T.float()
    else:  # as the official code: randomised SVD of the top 4r
        u, _, v = torch.svd_lowrank(grad, q=min(4 * r, min(grad.shape)), niter=4)
    factor = d_out ** 0.25 / stable_gamma ** 0.5
    a0 = v[:, :r].T.contiguous() * factor
    b0 = u[:, r: 2 * r].contiguous() * factor
    return a0, b0
