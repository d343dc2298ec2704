"""Unitary maps on C^n, applied to real activations viewed as complex: x in R^{2n} -> z in C^n.

A unitary on C^n is an orthogonal map on R^{2n} (consecutive pairs are real and imaginary
parts), so input norms are kept exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def to_complex(x: torch.Tensor) -> torch.Tensor:
    # complex32 has little support: the unitary work happens in fp32 whatever the input dtype.
    return torch.view_as_complex(x.float().reshape(*x.shape[:-1], x.shape[-1] // 2, 2).contiguous())


def to_real(z: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(z).reshape(like.shape).to(like.dtype)


def householder(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(I - 2 v v^H / |v|^2) z for z (..., n)."""
    v = v / v.norm()
    return z - 2 * (z @ v.conj()).unsqueeze(-1) * v


class StructuredUnitary(nn.Module):
    """U = D3 R2 F^-1 D2 Pi R1 F D1 (Arjovsky et al.'s uRNN), composed with the fixed inverse of
    its initial value: U_eff = U(theta) U(theta_0)^H, so U_eff = I exactly at step 0.

    Why the composition: with a fixed random permutation Pi and Householder reflections (never
    the identity), no parameter value makes U itself the identity, and the paper's "near
    identity" would change the model's outputs at step 0. A product of unitaries is unitary, so
    U_eff is the identity at step 0 (up to fp32 rounding, ~1e-7) and unitary at every step.
    `forward` applies U_eff; `current` applies U(theta) alone and `initial_inverse` the frozen
    U(theta_0)^H, for callers that fold the frozen factor into a weight (URNNLinear does).

    Parameters are real and start at zero: theta = theta_0 + delta, with `phases` (3, n) and
    `reflections` (2, n, 2) the deltas (reflections as (re, im) pairs). Zero-start deltas mean that
    weight decay pulls U_eff towards the identity, as it pulls LoRA's B towards zero. That is
    3n + 4n = 7n trainable reals per layer.
    """

    def __init__(self, n: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n = n
        self.register_buffer("phases0", (torch.rand(3, n, generator=g) * 2 - 1) * math.pi)
        self.register_buffer("reflections0", torch.randn(2, n, 2, generator=g))
        self.register_buffer("perm", torch.randperm(n, generator=g))
        self.register_buffer("inv_perm", torch.argsort(self.perm))
        self.phases = nn.Parameter(torch.zeros(3, n))
        self.reflections = nn.Parameter(torch.zeros(2, n, 2))

    @staticmethod
    def _parts(phases: torch.Tensor, refl: torch.Tensor, sign: float):
        v1 = torch.view_as_complex(refl[0].contiguous())
        v2 = torch.view_as_complex(refl[1].contiguous())
        return torch.polar(torch.ones_like(phases), sign * phases), v1, v2

    def _unitary(self, z: torch.Tensor, phases: torch.Tensor, refl: torch.Tensor) -> torch.Tensor:
        d, v1, v2 = self._parts(phases, refl, 1.0)
        z = torch.fft.fft(z * d[0], norm="ortho")
        z = householder(z, v1)[..., self.perm] * d[1]
        z = householder(torch.fft.ifft(z, norm="ortho"), v2)
        return z * d[2]

    def _unitary_inverse(self, z: torch.Tensor, phases: torch.Tensor, refl: torch.Tensor) -> torch.Tensor:
        # U^H = D1^H F^H R1 Pi^T D2^H F R2 D3^H (reflections are Hermitian and their own inverses).
        d, v1, v2 = self._parts(phases, refl, -1.0)
        z = torch.fft.fft(householder(z * d[2], v2), norm="ortho")
        z = householder((z * d[1])[..., self.inv_perm], v1)
        return torch.fft.ifft(z, norm="ortho") * d[0]

    def current(self, z: torch.Tensor) -> torch.Tensor:
        """U(theta) z."""
        return self._unitary(z, self.phases0 + self.phases, self.reflections0 + self.reflections)

    def initial_inverse(self, z: torch.Tensor) -> torch.Tensor:
        """U(theta_0)^H z (no trainable parameter involved)."""
        return self._unitary_inverse(z, self.phases0, self.reflections0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.current(self.initial_inverse(z))


class BlockUnitary(nn.Module):
    """Block-diagonal unitary with full b x b complex blocks (one block of n x n when b = n, the
    paper's single U), stored as a real (blocks, b, b, 2) parameter so that checkpoints and
    optimisers see plain floats. Identity at start. It is moved only by `UnitaryAdamW`, which
    applies Algorithm 1's step to it (see optim.py)."""

    def __init__(self, n: int, block_size: int):
        super().__init__()
        self.n, self.blocks, self.block_size = n, n // block_size, block_size
        eye = torch.eye(block_size, dtype=torch.complex64).expand(self.blocks, -1, -1)
        self.u = nn.Parameter(torch.view_as_real(eye.clone()).contiguous())

    def unitary(self) -> torch.Tensor:
        return torch.view_as_complex(self.u)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z.reshape(*z.shape[:-1], self.blocks, self.block_size)
        return torch.einsum("...nb,ncb->...nc", h, self.unitary()).reshape(z.shape)


@torch.no_grad()
def manifold_step(u: torch.Tensor, direction: torch.Tensor, eta: float, tol: float) -> tuple[torch.Tensor, bool]:
    """Algorithm 1 on a batch of complex blocks: B = D U^H - U D^H, U <- exp(-eta B) U, then the
    nearest unitary (polar factor) if max |U^H U - I| exceeds tol. Returns (U, re-projected?).

    D is the ascent direction: the gradient of a real loss w.r.t. the real view, read as complex
    (dL/dRe + i dL/dIm = 2 dL/dU*), or a positive rescaling of it (Adam's). B is skew-Hermitian,
    so exp(-eta B) is unitary; with D the gradient the first-order change of the loss is
    -eta/2 |B|_F^2 <= 0. The paper prints exp(eta B), which descends only if its gradient is the
    negative one; the tests check the sign by the loss going down."""
    b = direction @ u.mH - u @ direction.mH
    new = torch.linalg.matrix_exp(-eta * b) @ u
    if unitarity_error(new) <= tol:
        return new, False
    w, _, vh = torch.linalg.svd(new)
    return w @ vh, True


def unitarity_error(u: torch.Tensor) -> float:
    """max |U^H U - I| of a (batch of) square complex matrices; the Gram in double precision so
    that the number measures U itself, not the rounding of the check."""
    u = u.to(torch.complex128)
    eye = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device)
    return float((u.mH @ u - eye).abs().max())
