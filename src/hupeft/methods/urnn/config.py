"""Options of the unitary (uRNN-style) adapter."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import MethodError, MethodOptions
from .optim import MANIFOLD_STEPS


@dataclass
class URNNOptions(MethodOptions):
    variant: str = "full"
    """"full" (the default): the paper's Algorithm 1, a unitary U trained on the unitary group
    by a Riemannian step (`UnitaryAdamW`, optim.py). "structured": U = D3 R2 F^-1 D2 Pi R1 F D1
    (Arjovsky et al.; O(n) parameters, unitary by construction, trained by plain AdamW); the
    method name `urnn-structured` selects it."""
    block_size: int | None = None
    """"full" variant: complex size b of U's diagonal blocks; must divide n = d/2 (d the rotated
    width). None (the default): one U over the whole width, as the paper describes. Memory per
    layer: d * b real parameters (d^2 / 2 for one U, the size of half the layer's weight when
    it is square), twice that again for Adam's moments; time per token: d * b real
    multiply-adds, plus one b x b exponential step per block per step. One U is affordable for
    the models trained here (SmolLM2-135M: d = 576, 166k parameters per layer); at d = 4096 it is
    8.4M per layer, where a block size such as 64 (262k) is the practical choice."""
    manifold_step: str = "adam"
    """"adam": Algorithm 1 with AdamW's preconditioned direction in place of the raw gradient,
    so U moves as far per step as AdamW moves other parameters at the same learning rate;
    "sgd": Algorithm 1 as printed (the raw gradient). See optim.py."""
    manifold_lr: float | None = None
    """Peak eta of the manifold step; None: the run's learning rate. The run's schedule (warm-up,
    decay) scales it either way."""
    renorm_tol: float = 1e-5
    """Re-project U to the nearest unitary when max |U^H U - I| exceeds this (Algorithm 1's
    "re-normalise on drift"). fp32 rounds one product of n x n unitaries by about sqrt(n) 2^-24
    (1e-6 at n = 288), so a tolerance at that level would re-project at almost every step; at
    1e-5 drift accumulates for some hundred steps first."""
    renorm_every: int = 10
    """Check the drift every this many manifold steps (the check is a Gram matrix in double
    precision, as costly as the step itself). Drift grows by about sqrt(n) 2^-24 per step, so it
    overshoots renorm_tol by at most about that much times this between checks."""
    side: str = "input"
    """"input": y = W0 (U x) + b, as the paper places the unitary; "output": y = U (W0 x) + b."""
    recompute: bool = True
    """Structured variant: keep only the layer's input for backward and recompute the unitary's
    intermediates there (activation checkpointing of the adapter alone). Its eight factors would
    otherwise store about ten complex copies of every targeted layer's activations, as much as
    full fine-tuning's optimiser state on a small model; the price is one more adapter forward."""
    seed: int = 0
    """Seed of the structured variant's fixed permutation Pi and initial phases/reflections."""

    def validate(self) -> None:
        if self.variant not in ("structured", "full"):
            raise MethodError(f"urnn variant must be 'structured' or 'full', not {self.variant!r}")
        if self.side not in ("input", "output"):
            raise MethodError(f"urnn side must be 'input' or 'output', not {self.side!r}")
        if self.manifold_step not in MANIFOLD_STEPS:
            raise MethodError(f"urnn manifold_step must be one of {MANIFOLD_STEPS}, not {self.manifold_step!r}")
        if (self.block_size is not None and self.block_size <= 0) or self.renorm_tol <= 0 \
                or (self.manifold_lr is not None and self.manifold_lr <= 0) or self.renorm_every < 1:
            raise MethodError("urnn block_size, manifold_lr, renorm_tol and renorm_every must be > 0 (block_size "
                              "and manifold_lr may be None); pass positive values")
