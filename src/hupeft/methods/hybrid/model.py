"""The hybrid's handle: lambda per layer from the branches' gradient norms, logged every step."""

from __future__ import annotations

import math


from ..base import Adapted
from .config import HybridOptions
from .layer import HybridLinear


def _norm(params) -> float:
    sq = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
    return math.sqrt(float(sum(sq))) if sq else 0.0


def next_lambda(lam: float, g_lora: float, g_boft: float, opts: HybridOptions) -> float:
    """One update of a layer's lambda (see HybridOptions for the rules)."""
    eps = 1e-12
    if opts.lambda_rule == "normalized":
        g_lora, g_boft = g_lora / max(lam, eps), g_boft / max(1 - lam, eps)
    total = g_lora + g_boft
    new = lam if total <= eps else g_lora / total  # no gradient at all: keep lambda
    new = opts.lambda_ema * lam + (1 - opts.lambda_ema) * new
    return min(max(new, opts.lambda_min), 1 - opts.lambda_min)


class HybridAdapted(Adapted):
    def __init__(self, model, method, options):
        super().__init__(model, method, options)
        self.lambda_history: dict[str, list[float]] = {n: [] for n in self.adapter_layers()}
        self._last = {"grad_norm_lora": 0.0, "grad_norm_boft": 0.0}

    def before_step(self) -> None:
        sq_lora = sq_boft = 0.0
        for name, layer in self.adapter_layers().items():
            if not isinstance(layer, HybridLinear):
                continue
            g_l, g_b = _norm(layer.lora_parameters()), _norm(layer.boft_parameters())
            sq_lora, sq_boft = sq_lora + g_l ** 2, sq_boft + g_b ** 2
            lam = next_lambda(float(layer.lam), g_l, g_b, self.options)
            layer.lam.fill_(lam)
            self.lambda_history[name].append(lam)
        self._last = {"grad_norm_lora": math.sqrt(sq_lora), "grad_norm_boft": math.sqrt(sq_boft)}

    def lambdas(self) -> dict[str, float]:
        return {n: float(l.lam) for n, l in self.adapter_layers().items()}

    def diagnostics(self) -> dict:
        return {**super().diagnostics(), "lambda": self.lambdas(), **self._last}

