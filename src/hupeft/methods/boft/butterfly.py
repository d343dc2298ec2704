"""A butterfly orthogonal matrix applied to activations, never materialised as d x d.

Conventions. PEFT's BOFT rotates row vectors, x_rot = x @ R_peft, with
R_peft = M_{m-1} ... M_1 M_0, each factor M_i = P_i B_i P_i^T, B_i block-diagonal (N = d / b
orthogonal b x b blocks) and P_i the butterfly permutation PEFT builds for factor i. Here
R = R_peft^T is the rotation of column vectors: `forward(x)` returns x @ R^T (R x for each
vector) and `matrix()` returns R, so the same parameters give PEFT's outputs exactly. Each
block is the Cayley transform Q = (I - S)(I + S)^-1 of a skew-symmetric S, stored as its strict
upper triangle (b(b-1)/2 numbers; zero at start, so R = I).

Why our own: PEFT's BOFT multiplies dense d x d matrices every forward, and without its CUDA
extension it silently sets the number of factors to 1.

How it is applied: factor i only mixes coordinates within groups of b * 2^i, so the whole
product is block-diagonal with G = d / s groups of s = b * 2^(m-1). Each forward solves the
Cayley blocks of every factor in one batched call, gathers each factor's permuted blocks into
dense (d / w, w, w) tiles (w = s, or wider where small tiles run slowly), multiplies the m tiles
of each block together, and applies the result to the activations in one batched matmul:
O(d w) per token, never d x d.
"""

from __future__ import annotations

import torch
from torch import nn

from ..base import MethodError

# Blocks narrower than this are multiplied as wider block-diagonal ones: batched matmuls with an
# inner size of 8 run at half the speed of 16 on CPU (measured at d = 576..4096), which pays for
# the extra zeros.
APPLY_WIDTH = 16


def check_butterfly_shape(dim: int, block_size: int, n_factors: int) -> None:
    """The constraints of PEFT's BOFT, as one-line errors that name the fix."""
    if block_size <= 0 or n_factors <= 0:
        raise MethodError(f"block_size and n_factors must be > 0 (got {block_size}, {n_factors})")
    if dim % block_size:
        divisors = [b for b in (2, 4, 8, 16, 32, 64) if dim % b == 0]
        fix = f"use one of {divisors}" if divisors else "target layers of an even width"
        raise MethodError(f"block_size {block_size} does not divide the layer width {dim}; {fix}")
    blocks = dim // block_size
    if n_factors > 1:
        if block_size % 2:
            raise MethodError(f"block_size must be even with n_factors > 1 (got {block_size}); use an even size")
        if blocks % (2 ** (n_factors - 1)):
            raise MethodError(f"{blocks} blocks of {block_size} (width {dim}) are not divisible by 2^(n_factors-1) = "
                              f"{2 ** (n_factors - 1)}; lower n_factors or change block_size")


def butterfly_num_parameters(dim: int, block_size: int, n_factors: int) -> int:
    """Trainable numbers of a butterfly: a strict upper triangle per block per factor."""
    return n_factors * (dim // block_size) * (block_size * (block_size - 1) // 2)


def butterfly_permutation(dim: int, blocks: int, half_block: int, factor: int) -> torch.Tensor:
    """PEFT's `block_butterfly_perm(dim, blocks / 2^factor, half_block, ...)` as indices."""
    if factor == 0:
        return torch.arange(dim)
    groups = blocks // (2 ** factor)
    size = dim // groups  # each group interleaves its two halves at block granularity
    step = size // half_block
    order = torch.cat([torch.arange(0, step, 2), torch.arange(1, step, 2)])
    within = torch.cat([torch.arange(int(p) * half_block, int(p) * half_block + half_block) for p in order])
    return torch.cat([g * size + within for g in range(groups)])


def cayley(skew: torch.Tensor) -> torch.Tensor:
    """(I - S)(I + S)^-1 for a batch of skew-symmetric S: orthogonal, and I at S = 0."""
    eye = torch.eye(skew.shape[-1], dtype=skew.dtype, device=skew.device).expand_as(skew)
    return torch.linalg.solve(eye + skew, eye - skew, left=False)


class Butterfly(nn.Module):
    """The orthogonal R (dim x dim) of m butterfly factors of b x b Cayley blocks; R = I at start."""

    def __init__(self, dim: int, block_size: int, n_factors: int):
        super().__init__()
        check_butterfly_shape(dim, block_size, n_factors)
        self.dim, self.block_size, self.n_factors = dim, block_size, n_factors
        self.blocks = dim // block_size
        tri = block_size * (block_size - 1) // 2
        self.theta = nn.Parameter(torch.zeros(n_factors, self.blocks, tri))
        rows, cols = torch.triu_indices(block_size, block_size, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        perms = [butterfly_permutation(dim, self.blocks, block_size // 2, i) for i in range(n_factors)]
        self.register_buffer("perm", torch.stack(perms), persistent=False)
        self.register_buffer("inv_perm", torch.stack([torch.argsort(p) for p in perms]), persistent=False)
        self._indices: dict[int, torch.Tensor] = {}  # width -> gather index of the factors' entries

    def num_parameters(self) -> int:
        return butterfly_num_parameters(self.dim, self.block_size, self.n_factors)

    def skew(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """The skew-symmetric blocks of `theta` (default: the parameter), (n_factors, blocks, b, b)."""
        theta = self.theta if theta is None else theta
        b = self.block_size
        s = theta.new_zeros(self.n_factors, self.blocks, b * b)
        # Out of place, so that forward mode (torch.func.jvp) goes through it.
        s = s.index_copy(2, self.rows * b + self.cols, theta).view(self.n_factors, self.blocks, b, b)
        return s - s.transpose(-1, -2)

    def block_matrices(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """The orthogonal blocks, (n_factors, blocks, b, b), computed in fp32 for stability."""
        return cayley(self.skew(theta).float())

    @property
    def group(self) -> int:
        return self.block_size * 2 ** (self.n_factors - 1)

    @property
    def width(self) -> int:
        """Width of the diagonal blocks `forward` multiplies: the group, widened to APPLY_WIDTH when
        that divides the layer (zeros between groups, so the product is the same)."""
        w = max(self.group, APPLY_WIDTH)
        return w if self.dim % w == 0 else self.group

    def _diagonal_blocks(self, width: int, theta: torch.Tensor | None = None) -> torch.Tensor:
        """R's diagonal blocks of `width` (a multiple of the group), (dim / width, width, width), in
        the row convention: x_g @ blocks[g] = (R x)_g. Each factor i is M_i[a, c] = B_i[p(a), p(c)]
        inside every block (p its butterfly permutation, which stays inside groups), so one gather
        from the Cayley blocks plus a zero builds it; the factors multiply as (n, w, w) batches."""
        q = self.block_matrices(theta)  # (m, N, b, b): one batched solve for every factor
        n, per = self.dim // width, width // self.block_size
        zero = q.new_zeros(n, 1)
        index = self._gather_index(width)
        out = None
        for i in reversed(range(self.n_factors)):  # x @ M_{m-1} ... M_0; m - 1 small (n, w, w) products
            flat = torch.cat([q[i].reshape(n, per * self.block_size ** 2), zero], dim=1)
            m_i = flat.index_select(1, index[i]).view(n, width, width)
            out = m_i if out is None else torch.bmm(out, m_i)
        return out

    def _gather_index(self, width: int) -> torch.Tensor:
        """(m, width^2) positions in [blocks of one width-chunk, flattened; then a zero] of M_i's entries."""
        cached = self._indices.get(width)
        if cached is not None and cached.device == self.theta.device:
            return cached
        if self.theta.device.type == "meta":  # shapes only (hupeft.plan counts on the meta device)
            return torch.empty(self.n_factors, width * width, dtype=torch.long, device="meta")
        b = self.block_size
        rows = []
        for i in range(self.n_factors):
            p = self.perm[i, :width].cpu()  # the same permutation in every chunk of this width
            blk, off = p // b, p % b
            same = blk[:, None] == blk[None, :]
            pos = blk[:, None] * b * b + off[:, None] * b + off[None, :]
            rows.append(torch.where(same, pos, torch.full_like(pos, (width // b) * b * b)).reshape(-1))
        index = torch.stack(rows).to(self.theta.device)
        self._indices[width] = index
        return index

    def group_blocks(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """R's diagonal blocks, (G, s, s), in the row convention: x_g @ blocks[g] = (R x)_g; of
        `theta` in place of the parameter where given (for forward mode: torch.func.jvp)."""
        return self._diagonal_blocks(self.group, theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ R^T over the last dimension: R applied to each vector (PEFT's x @ R_peft), as one
        batched matmul over blocks of `width` (bmm, batch first: fewer copies than einsum)."""
        width = self.width
        blocks = self._diagonal_blocks(width).to(x.dtype)
        rows = x.reshape(-1, self.dim // width, width).transpose(0, 1)
        return torch.bmm(rows, blocks).transpose(0, 1).reshape(x.shape)

    def _factors(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """x @ M_{m-1} ... M_0 factor by factor (on the small probe; a reference in tests)."""
        q = q.to(x.dtype)
        shape = x.shape
        for i in reversed(range(self.n_factors)):
            # x @ P B P^T: undo P (gather by the inverse), multiply blocks, redo P.
            h = x.index_select(-1, self.inv_perm[i]).reshape(*shape[:-1], self.blocks, self.block_size)
            h = torch.einsum("...nb,nbc->...nc", h, q[i]).reshape(shape)
            x = h.index_select(-1, self.perm[i])
        return x

    def matrix(self) -> torch.Tensor:
        """R as a dense dim x dim matrix (forward(x) == x @ matrix().T); for merge and tests only."""
        eye = torch.eye(self.dim, dtype=self.theta.dtype, device=self.theta.device)
        return self.forward(eye).T

    @torch.no_grad()
    def orthogonality_error(self) -> float:
        """max |R^T R - I|, exactly and cheaply: R is block-diagonal with G blocks of s x s, and
        every off-block entry of R^T R is zero, so only the blocks' Gram matrices can deviate."""
        q = self.group_blocks().double()
        eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
        return float((q.transpose(-1, -2) @ q - eye).abs().max())
