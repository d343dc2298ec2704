"""The gradient estimate and its SVD, shared by LoRA-GA and the hybrid.

Which LoRA-GA. We follow the official algorithm (Wang, Yu, Li 2024; github Outsider565/LoRA-GA,
its PEFT fork's `lora_ga_init` with the defaults of `LoraGAConfig`: direction "ArB2r", scale
"stable", stable_gamma 16), not PEFT's own `init_lora_weights="lora_ga"`:

  G = mean over the init batches of dL/dW0 (d_out x d_in, fp32);  G = U S V^T
  A0 = V[:, :r]^T    * d_out^(1/4) / sqrt(gamma)    top-r right singular vectors
  B0 = U[:, r:2r]    * d_out^(1/4) / sqrt(gamma)    the next r left singular vectors
  y  = W0 x + s (B A - B0 A0) x,   s = alpha / sqrt(r) (rsLoRA) or alpha / r

Why that split: at step 0 dL/dB = s G A0^T lies along U[:, :r] S[:r] and dL/dA = s B0^T G along
S[r:2r] V[:, r:2r]^T, so the first change of B A is made of the top 2r singular directions of G:
the best rank-2r approximation of the full fine-tuning step (the paper's gradient-approximation
argument). The factor d_out^(1/4)/sqrt(gamma) on both A0 and B0 is the paper's "stable" scale
(its scale-stability analysis: the adapter's outputs stay O(1) as the rank and widths grow).

The scale s. The paper derives its stable scale with rsLoRA's alpha/sqrt(r), so that is our
default (`use_rslora=True`); the official repository's example configs leave PEFT's
`use_rslora` off (alpha/r), which `use_rslora=False` reproduces.

PEFT's version (peft/tuners/lora/loraga.py) differs: B0 = U[:, r:2r] diag(S[r:2r]) times the
stable factor (singular values on B0, A0 unscaled), the gradient is taken through `weight.grad`
(so quantized bases are refused), and it subtracts s B0 A0 from W0 in place.

Why our own. We never modify W0: the initial factors are frozen buffers and the layer subtracts
s B0 A0 x on activations. So the base model stays the user's (a quantized or shared base works),
save/load/merge stay the generic ones of base.py (the adapter state carries A0, B0; nothing about
W0 has to be saved, unlike the official repo's "save the init, then save final - init"), and the
hybrid mixes its two branches around the same untouched W0.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..base import MethodError

# Exact SVD up to this size (milliseconds on CPU); above it the randomised SVD of the official code.
EXACT_SVD_MAX = 2048


def estimate_gradients(model: nn.Module, names: list[str], batches: Iterable[dict], loss_fn,
                       max_batches: int | None = None) -> dict[str, torch.Tensor]:
    """dL/dW (fp32, d_out x d_in) of each named linear layer, averaged over the batches.

    Computed from each layer's input x and output gradient g as sum_t g_t x_t^T, through hooks,
    so no weight needs requires_grad: the base stays frozen, and a quantized layer, whose packed
    weight cannot hold a gradient, still gets one. On a quantized base this is the gradient with
    respect to the dequantized W0 that the layer's forward multiplies by, which is the weight the
    adapter's update is added to; nothing is dequantized to get it. The model runs in train mode, as the official code
    does, and gets its mode and requires_grad flags back afterwards."""
    grads: dict[str, torch.Tensor] = {}
    was_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    for p in model.parameters():
        p.requires_grad_(False)

    def hook(name):
        def on_forward(module, inputs, out):
            x = inputs[0].detach()
            if not out.requires_grad:  # nothing upstream trains: start the graph here
                out.requires_grad_(True)

            def on_grad(g):
                gx = g.reshape(-1, g.shape[-1]).float().T @ x.reshape(-1, x.shape[-1]).float()
                grads[name] = gx if name not in grads else grads[name] + gx

            out.register_hook(on_grad)
        return on_forward

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    count = 0
    model.train()
    try:
        with torch.enable_grad():
            for batch in batches:
                if max_batches is not None and count >= max_batches:
                    break
                loss_fn(model, batch).backward()
                count += 1
    finally:
        for h in handles:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(was_grad[n])
            p.grad = None
        model.train(was_training)
    if count == 0:
        raise MethodError("LoRA-GA got no init batch to estimate the gradient from; pass init_batches=[batch, ...]")
    out = {}
    for n in names:
        lin = model.get_submodule(n)
        # A layer the loss does not reach has gradient 0; its factors then carry no information
        # but are still a valid start (B A - B0 A0 = 0). (The weight's own shape is not W0's on a
        # 4-bit base, where it is packed.)
        g = grads.get(n)
        out[n] = g / count if g is not None else torch.zeros(
            lin.out_features, lin.in_features, dtype=torch.float32, device=lin.weight.device)
    return out


def check_rank(r: int, d_out: int, d_in: int, layer: str = "") -> None:
    """The ArB2r split takes 2r singular vectors, so 2r must not exceed the layer's smaller side."""
    if 2 * r > min(d_out, d_in):
        where = f"{layer}: " if layer else ""
        raise MethodError(f"{where}LoRA-GA needs 2r <= min(d_out, d_in) = {min(d_out, d_in)} (r={r}); "
                          f"pass r <= {min(d_out, d_in) // 2}")


def loraga_factors(grad: torch.Tensor, r: int, stable_gamma: float = 16.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(A0, B0), fp32, from a gradient estimate as the official LoRA-GA ("ArB2r", "stable").

    A0: (r, d_in), rows = top-r right singular vectors of `grad`; B0: (d_out, r), columns = left
    singular vectors r..2r-1; both times d_out^(1/4) / sqrt(stable_gamma)."""
    d_out, d_in = grad.shape
    check_rank(r, d_out, d_in)
    if min(d_out, d_in) <= EXACT_SVD_MAX:
        u, _, vh = torch.linalg.svd(grad.double(), full_matrices=False)
        u, v = u.float(), vh.T.float()
    else:  # as the official code: randomised SVD with q = 4r, 4 power iterations
        u, _, v = torch.svd_lowrank(grad.float(), q=min(4 * r, min(d_out, d_in)), niter=4)
    factor = d_out ** 0.25 / stable_gamma ** 0.5
    a0 = v[:, :r].T.contiguous() * factor
    b0 = u[:, r: 2 * r].contiguous() * factor
    return a0, b0
