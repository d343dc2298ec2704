"""The hybrid's handle: lambda per layer from the branches' gradient norms, logged every step."""

from __future__ import annotations

import math

import torch

from ..base import Adapted
from .config import HybridOptions
from .layer import HybridLinear

EPS = 1e-12


def next_lambda(lam: float, g_lora: float, g_boft: float, opts: HybridOptions) -> float:
    """One update of a layer's lambda from its branches' gradient norms (see HybridOptions)."""
    if opts.lambda_rule == "normalized":
        g_lora, g_boft = g_lora / max(lam, EPS), g_boft / max(1.0 - lam, EPS)
    total = g_lora + g_boft
    target = lam if total <= EPS else g_lora / total  # no gradient at all: nothing to go by
    new = opts.lambda_ema * lam + (1.0 - opts.lambda_ema) * target
    return min(max(new, opts.lambda_min), 1.0 - opts.lambda_min)


def _sq_norm(params, like: torch.Tensor) -> torch.Tensor:
    sq = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
    return torch.stack(sq).sum() if sq else like.new_zeros((), dtype=torch.float32)


class HybridAdapted(Adapted):
    """`before_step()` (after backward, before optimizer.step()) updates every layer's lambda;
    `lambda_history` {layer: [lambda after each step]}; `diagnostics()` adds `lambda`
    {layer: value} and the branches' gradient norms over all layers (`grad_norm_lora`,
    `grad_norm_boft`)."""

    def __init__(self, model, method: str, options: HybridOptions):
        super().__init__(model, method, options)
        self.lambda_history: dict[str, list[float]] = {n: [] for n in self.hybrid_layers()}
        self._norms = {"grad_norm_lora": 0.0, "grad_norm_boft": 0.0}

    def hybrid_layers(self) -> dict[str, HybridLinear]:
        return {n: m for n, m in self.adapter_layers().items() if isinstance(m, HybridLinear)}

    @torch.no_grad()
    def before_step(self) -> None:
        layers = self.hybrid_layers()
        if not layers:
            return
        # Every norm in one tensor, read back in one transfer rather than one sync per layer; the
        # pairs go to one device first, since a device map may spread layers over several GPUs.
        pairs = [torch.stack([_sq_norm(l.lora_parameters(), l.lam), _sq_norm(l.boft_parameters(), l.lam)])
                 for l in layers.values()]
        sq = torch.stack([p.to(pairs[0].device) for p in pairs]).cpu()
        for (name, layer), (sq_l, sq_b) in zip(layers.items(), sq.tolist()):
            lam = next_lambda(float(layer.lam), math.sqrt(sq_l), math.sqrt(sq_b), self.options)
            # Log the value the buffer holds (rounded to its dtype), so the history, diagnostics()
            # and a reloaded adapter all agree exactly.
            lam = torch.tensor(lam, dtype=layer.lam.dtype).item()
            layer.lam.fill_(lam)
            self.lambda_history.setdefault(name, []).append(lam)
        total = sq.sum(0).sqrt().tolist()
        self._norms = {"grad_norm_lora": total[0], "grad_norm_boft": total[1]}

    def lambdas(self) -> dict[str, float]:
        return {n: float(l.lam) for n, l in self.hybrid_layers().items()}

    def diagnostics(self) -> dict:
        return {**super().diagnostics(), "lambda": self.lambdas(), **self._norms}
