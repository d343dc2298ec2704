"""A frozen linear layer with a unitary map on its input (y = W0 (U x) + b, the paper's placement)
or on its output (y = U (W0 x) + b)."""

from __future__ import annotations

import torch
from torch import nn

from ..base import AdapterLayer
from .unitary import BlockUnitary, StructuredUnitary, to_complex, to_real, unitarity_error

# Weight dtypes precise enough to hold W0 M0^T without changing the layer's outputs.
FOLDABLE = (torch.float32, torch.float64)


class URNNLinear(AdapterLayer):
    """The structured variant's effective unitary U_eff is U(theta) composed with the fixed
    inverse of its start, U0^H = U(theta_0)^H, so it is the identity at step 0 (StructuredUnitary):
    U_eff = U0^H U(theta) on the input side, U(theta) U0^H on the output side. Applying both
    factors to every activation would double the adapter's cost and stored activations, so where
    the base weight is a plain float tensor the frozen factor is folded into it once, at wrapping:

        input side:  y = W0 U0^H U(theta) x      with W0' = W0 M0^T stored in base.weight
        output side: y = U(theta) U0^H W0 x + b  with W0' = M0^T W0

    (M0 the real orthogonal matrix of U(theta_0)). Only U(theta) then runs per step. The fold is
    reproducible from the seed, so saved adapters hold theta only and load onto the original base
    model; merging gives W0 U_eff as usual. Only an fp32 (or fp64) weight is folded: in bf16 or
    fp16 the product W0 M0^T would be rounded to the weight's precision and the outputs at step 0
    would no longer be the base model's; those bases, and quantized ones, apply both factors to
    activations. (The map is `_unitary_map`, not `_apply`: nn.Module._apply is what .to() calls.)
    """

    def __init__(self, base: nn.Linear, variant: str, block_size: int, seed: int, side: str = "input",
                 recompute: bool = False, fold: bool = True):
        super().__init__(base)
        self.side = side
        self.recompute = recompute and variant == "structured"
        n = (base.in_features if side == "input" else base.out_features) // 2
        unitary = StructuredUnitary(n, seed) if variant == "structured" else BlockUnitary(n, block_size)
        self.unitary = unitary.to(base.weight.device)
        self.folded = fold and variant == "structured" and base.weight.dtype in FOLDABLE
        if self.folded:
            self._fold_initial_inverse()

    @torch.no_grad()
    def _fold_initial_inverse(self) -> None:
        w = self.base.weight
        a = self._real_matrix(self.unitary.initial_inverse)  # M0^T
        w.copy_((w.float() @ a if self.side == "input" else a @ w.float()).to(w.dtype))

    def _real_matrix(self, fn) -> torch.Tensor:
        """The real 2n x 2n matrix of a complex-linear map fn on C^n (pairs = real, imaginary)."""
        eye = torch.eye(self.width, device=self.base.weight.device)
        return to_real(fn(to_complex(eye)), eye).T

    @property
    def width(self) -> int:
        """The real width the unitary acts on (2n)."""
        return 2 * self.unitary.n

    def _unitary_map(self, z: torch.Tensor) -> torch.Tensor:
        u = self.unitary
        if isinstance(u, BlockUnitary):
            return u(z)
        if self.folded:
            return u.current(z)
        # Unfolded, the same U_eff as folded: U0^H U(theta) on the input side, U(theta) U0^H on the output side.
        return u.initial_inverse(u.current(z)) if self.side == "input" else u.current(u.initial_inverse(z))

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """The real orthogonal map applied to activations on the last dimension: U(theta) when
        folded, U_eff otherwise."""
        if self.recompute and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self._rotate, x, use_reentrant=False)
        return self._rotate(x)

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        return to_real(self._unitary_map(to_complex(x)), x)

    def _fold_pays(self, x: torch.Tensor) -> bool:
        """Whether multiplying the full variant's one U into W0 this step costs fewer multiply-adds
        than applying it to the activations. For U on width d, the other width e and T tokens:
        on activations, U x, its input gradient and its own gradient are 3 T d^2; folded, W0 U,
        the folded weight's gradient and U's gradient from it are e d (2 d + T), while the base's
        own matmul is replaced. So a layer narrower than its input (v_proj under grouped-query
        attention: e = d / 3) folds, a square one at a few hundred tokens does not."""
        u = self.unitary
        if not isinstance(u, BlockUnitary) or u.blocks != 1 or type(self.base) is not nn.Linear \
                or self.base.weight.dtype not in FOLDABLE or not torch.is_grad_enabled():
            return False
        d = self.width
        e = self.base.out_features if self.side == "input" else self.base.in_features
        tokens = x.numel() // x.shape[-1]
        return e * (2 * d + tokens) < 3 * tokens * d

    def _folded_forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = (W0 Q) x + b on the input side, (Q W0) x + b on the output side (Q: U's real form)."""
        q = self.unitary.real_blocks()[0]
        w = self.base.weight
        w = w @ q if self.side == "input" else q @ w
        return torch.nn.functional.linear(x, w, self.base.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fold_pays(x):
            return self._folded_forward(x)
        if self.side == "input":
            return self.base(self.rotate(x))
        # U acts on W0 x, not on the bias (merging gives U W0 with the bias unchanged). The base
        # runs as itself (a quantized base works), and U's change is added to its output.
        out = self.base(x)
        h = out if self.base.bias is None else out - self.base.bias
        return out + (self.rotate(h) - h)

    def dense(self) -> torch.Tensor:
        """The real 2n x 2n matrix of the effective unitary U_eff (identity at step 0)."""
        m = self._real_matrix(self._unitary_map)
        if not self.folded:
            return m
        a = self._real_matrix(self.unitary.initial_inverse)
        return a @ m if self.side == "input" else m @ a

    def original_weight(self) -> torch.Tensor:
        if not self.folded:
            return self.base_weight()
        a = self._real_matrix(self.unitary.initial_inverse)  # the fold: W0' = W0 a or a W0, a orthogonal
        w = self.base.weight.float()
        return w @ a.T if self.side == "input" else a.T @ w

    def merged_weight(self) -> torch.Tensor:
        # base.weight is W0' when folded, and rotate() is then U(theta) alone: W0' M = W0 U_eff.
        w = self.base_weight()
        m = self._real_matrix(self._unitary_map).to(w.dtype)
        return w @ m if self.side == "input" else m @ w

    @torch.no_grad()
    def orthogonality_error(self) -> float:
        """max |U^H U - I| over the complex n x n matrix (half the real width: 8x cheaper than the
        real Gram); the full variant's blocks are checked blockwise."""
        if isinstance(self.unitary, BlockUnitary):
            return unitarity_error(self.unitary.unitary())
        eye = torch.eye(self.unitary.n, dtype=torch.complex64, device=self.base.weight.device)
        return unitarity_error(self.unitary.current(eye).T)  # row j is U e_j: transpose gives U
