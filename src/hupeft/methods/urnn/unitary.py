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

    def real_blocks(self) -> torch.Tensor:
        """The blocks as real (blocks, 2b, 2b) matrices Q_k acting on (re, im) pairs: the real
        view of U_k z is Q_k r for r the real view of z; what URNNLinear multiplies into a weight."""
        re, im = self.u[..., 0], self.u[..., 1]  # (blocks, c, b): row c, column b of U_k
        q = torch.stack([torch.stack([re, -im], -1), torch.stack([im, re], -1)], 2)  # (blocks, c, 2, b, 2)
        return q.reshape(self.blocks, 2 * self.block_size, 2 * self.block_size)


# fp32's unit roundoff: a truncated exponential series whose remainder is below it is as exact as
# fp32 arithmetic can hold (and as exact as torch.linalg.matrix_exp in fp32).
_ROUNDOFF = 2.0 ** -24


def _taylor_degree(norm: float, dtype: torch.dtype) -> int | None:
    """The least degree K whose series remainder norm^(K+1)/(K+1)! e^norm is below the dtype's
    roundoff; None when norm is too large for a short series (then scale and square instead)."""
    if norm > 1.0:
        return None
    roundoff = _ROUNDOFF if dtype in (torch.complex64, torch.float32) else 2.0 ** -53
    term, k = norm * math.exp(norm), 0
    while term > roundoff:
        k += 1
        term *= norm / (k + 1)
        if k > 18:
            return None
    return k


def exp_times(a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """exp(a) @ u for a batch of square a, to the dtype's precision.

    Why not torch.linalg.matrix_exp(a) @ u: a manifold step's eta B is small (norm ~1e-3 at the
    learning rates trained here), where the series needs only K = 2..4 terms; applied to u by
    Horner's rule, u + a(u + a/2(u + a/3 ...)), that is K products with u in place of
    matrix_exp's own products plus one more with u (2-3x faster at n = 288). Larger norms fall
    back to matrix_exp's scaling and squaring."""
    norm = float(a.abs().sum(-2).amax())  # the 1-norm bounds the spectral
    k = _taylor_degree(norm, a.dtype)
    if k is None:
        return torch.linalg.matrix_exp(a) @ u
    out = u
    for j in range(k, 0, -1):
        out = torch.baddbmm(u, a, out, alpha=1.0 / j)  # u + a @ out / j in one call
    return out


@torch.no_grad()
def manifold_step(u: torch.Tensor, direction: torch.Tensor, eta: float, tol: float,
                  check: bool = True) -> tuple[torch.Tensor, bool]:
    """Algorithm 1 on a batch of complex blocks: B = D U^H - U D^H, U <- exp(-eta B) U, then (when
    `check`) the nearest unitary (polar factor) if max |U^H U - I| exceeds tol. Returns
    (U, re-projected?).

    D is the ascent direction: the gradient of a real loss w.r.t. the real view, read as complex
    (dL/dRe + i dL/dIm = 2 dL/dU*), or a positive rescaling of it (Adam's). B is skew-Hermitian,
    so exp(-eta B) is unitary; with D the gradient the first-order change of the loss is
    -eta/2 |B|_F^2 <= 0. The paper prints exp(eta B), which descends only if its gradient is the
    negative one; the tests check the sign by the loss going down."""
    p = direction @ u.mH
    b = p - p.mH  # U D^H = (D U^H)^H: one product, not two
    new = exp_times(-eta * b, u)
    if not check or unitarity_error(new) <= tol:
        return new, False
    w, _, vh = torch.linalg.svd(new)
    return w @ vh, True


def unitarity_error(u: torch.Tensor) -> float:
    """max |U^H U - I| of a (batch of) square complex matrices; the Gram in double precision so
    that the number measures U itself, not the rounding of the check."""
    u = u.to(torch.complex128)
    eye = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device)
    return float((u.mH @ u - eye).abs().max())
