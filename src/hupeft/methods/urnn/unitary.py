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
    its initial value: U_eff = U(theta) U(theta_0)^H.

    Why the composition: with a fixed random permutation Pi and Householder reflections (never
    the identity), no parameter value makes U itself the identity, and the paper's "near
    identity" would change the model's outputs at step 0. A product of unitaries is unitary, so
    U_eff is exactly the identity at step 0 and exactly unitary at every step, at the price of
    applying the (frozen) initial U once more: still O(n log n)."""

    def __init__(self, n: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        phases = (torch.rand(3, n, generator=g) * 2 - 1) * math.pi
        refl = torch.randn(2, n, 2, generator=g)
        self.phases = nn.Parameter(phases.clone())
        self.reflections = nn.Parameter(refl.clone())
        self.register_buffer("phases0", phases)
        self.register_buffer("reflections0", refl)
        self.register_buffer("perm", torch.randperm(n, generator=g))
        self.register_buffer("inv_perm", torch.argsort(self.perm))
        self.n = n

    @staticmethod
    def _unitary(z, phases, refl, perm):
        v1, v2 = torch.view_as_complex(refl[0].contiguous()), torch.view_as_complex(refl[1].contiguous())
        d = torch.polar(torch.ones_like(phases), phases)
        z = z * d[0]
        z = torch.fft.fft(z, norm="ortho")
        z = householder(z, v1)
        z = z[..., perm]
        z = z * d[1]
        z = torch.fft.ifft(z, norm="ortho")
        z = householder(z, v2)
        return z * d[2]

    @staticmethod
    def _unitary_inverse(z, phases, refl, inv_perm):
        v1, v2 = torch.view_as_complex(refl[0].contiguous()), torch.view_as_complex(refl[1].contiguous())
        d = torch.polar(torch.ones_like(phases), -phases)
        z = z * d[2]
        z = householder(z, v2)  # reflections are their own inverses
        z = torch.fft.fft(z, norm="ortho")
        z = z * d[1]
        z = z[..., inv_perm]
        z = householder(z, v1)
        z = torch.fft.ifft(z, norm="ortho")
        return z * d[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self._unitary_inverse(z, self.phases0, self.reflections0, self.inv_perm)
        return self._unitary(z, self.phases, self.reflections, self.perm)


class BlockUnitary(nn.Module):
    """Block-diagonal unitary with full b x b complex blocks, stored as a real (blocks, b, b, 2)
    parameter so that checkpoints and optimisers see plain floats. Identity at start."""

    def __init__(self, n: int, block_size: int):
        super().__init__()
        self.blocks, self.block_size = n // block_size, block_size
        eye = torch.eye(block_size, dtype=torch.complex64).expand(self.blocks, -1, -1)
        self.u = nn.Parameter(torch.view_as_real(eye.clone()).contiguous())
        self.renormalisations = 0

    def unitary(self) -> torch.Tensor:
        return torch.view_as_complex(self.u)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z.reshape(*z.shape[:-1], self.blocks, self.block_size)
        return torch.einsum("...nb,ncb->...nc", h, self.unitary()).reshape(z.shape)

    @torch.no_grad()
    def riemannian_step(self, eta: float, tol: float) -> None:
        """The paper's Algorithm 1 on each block, then re-projection if the blocks drifted.

        torch's gradient of a real loss w.r.t. the real view is (dL/dRe, dL/dIm), i.e. the
        complex G = 2 dL/dU*, the direction of steepest ascent. With A = G U^H - U G^H
        (skew-Hermitian), U <- exp(-eta A) U moves along the group and lowers the loss to first
        order (the paper writes B = G U^H - U G^H and exp(eta B) with the opposite sign on G)."""
        if self.u.grad is None:
            return
        g = torch.view_as_complex(self.u.grad.contiguous())
        u = self.unitary()
        a = g @ u.mH - u @ g.mH
        new = torch.linalg.matrix_exp(-eta * a) @ u
        if unitarity_error(new) > tol:
            w, _, vh = torch.linalg.svd(new)
            new = w @ vh  # the nearest unitary (polar factor)
            self.renormalisations += 1
        self.u.copy_(torch.view_as_real(new))
        self.u.grad = None  # consumed: the optimiser must not move U off the manifold


def unitarity_error(u: torch.Tensor) -> float:
    eye = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device)
    return float((u.mH @ u - eye).abs().max())
