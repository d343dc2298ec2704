"""The hybrid's handle: lambda per layer from its branches' gradients, logged every step; the
two learning rates of Algorithm 2 as optimiser groups."""

from __future__ import annotations

import math

import torch

from ..base import Adapted
from .config import HybridOptions
from .layer import HybridLinear, boft_step_norms

EPS = 1e-12
# |grad_Q L|_F of the skew matrix Q is sqrt(2) |grad_theta L| for theta its strict upper triangle:
# Algorithm 2's G = grad_Q - grad_Q^T holds each triangle entry's gradient twice (+ and -).
SKEW = math.sqrt(2.0)


def next_lambda(lam: float, g_lora: float, g_boft: float, opts: HybridOptions) -> float:
    """One update of a layer's lambda from what its rule measured of the branches (see
    HybridOptions.lambda_rule; "normalized" divides the mixed model's norms by the weights here)."""
    if opts.lambda_rule == "normalized":
        g_lora, g_boft = g_lora / max(lam, EPS), g_boft / max(1.0 - lam, EPS)
    total = g_lora + g_boft
    target = lam if total <= EPS else g_lora / total  # no gradient at all: nothing to go by
    new = opts.lambda_ema * lam + (1.0 - opts.lambda_ema) * target
    return min(max(new, opts.lambda_min), 1.0 - opts.lambda_min)


def _sharded(layers: dict[str, HybridLinear]) -> bool:
    return any(hasattr(l.lora_A.grad, "to_local") for l in layers.values())


def _local_sq(params) -> torch.Tensor:
    """Sum of squares of this process's part of the parameters' gradients (fp32, on the CPU)."""
    sq = [(g.to_local() if hasattr(g, "to_local") else g).detach().float().pow(2).sum().cpu()
          for g in (p.grad for p in params) if g is not None]
    return torch.stack(sq).sum() if sq else torch.zeros(())


def _norm(params) -> torch.Tensor:
    sq = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
    return torch.stack(sq).sum().sqrt() if sq else torch.zeros(())


def measure(layer: HybridLinear, rule: str, boft_step_norm: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(g_LoRA, g_BOFT) as the rule reads them, then the raw gradient norms |grad_{A,B}|, |grad_Q|.

    "paper"/"normalized": the raw norms. "slope": |grad|^2 / (w |J grad|) per branch, J the map
    from the branch's parameters to its unmixed delta weight and w its weight in the mix: the
    autograd gradient is w J^T G (G = dL/dW), so this is |J^T G|^2 / |J J^T G|, the loss's rate of
    decrease per unit of weight change along the branch's own gradient step. Scaling a branch's
    parameters, its output (alpha, gamma) or its weight leaves it unchanged. `boft_step_norm`:
    the layer's `boft_step_norm()` where the caller has it already (`boft_step_norms`)."""
    g_lora = _norm(layer.lora_parameters())
    g_boft = SKEW * _norm(layer.boft_parameters())
    if rule != "slope":
        return g_lora, g_boft, g_lora, g_boft
    if layer.lora_A.grad is None or layer.rotation.theta.grad is None:
        zero = torch.zeros(())
        return zero, zero, g_lora, g_boft
    lam = float(layer.lam)
    theta_sq = layer.rotation.theta.grad.float().pow(2).sum()
    slope_l = g_lora.pow(2) / (max(lam, EPS) * layer.lora_step_norm()).clamp_min(EPS)
    step_b = layer.boft_step_norm() if boft_step_norm is None else boft_step_norm
    slope_b = theta_sq / (max(1.0 - lam, EPS) * step_b).clamp_min(EPS)
    return slope_l, slope_b, g_lora, g_boft


class HybridAdapted(Adapted):
    """`before_step()` (after backward, before optimizer.step()) updates every layer's lambda;
    `lambda_history` {layer: [lambda after each step]}; `diagnostics()` adds `lambda`
    {layer: value} and the branches' gradient norms over all layers (`grad_norm_lora` of A and
    B, `grad_norm_boft` of the skew matrices Q); `movement()` adds each branch's share."""

    def __init__(self, model, method: str, options: HybridOptions):
        super().__init__(model, method, options)
        self.lambda_history: dict[str, list[float]] = {n: [] for n in self.hybrid_layers()}
        self._norms = {"grad_norm_lora": 0.0, "grad_norm_boft": 0.0}

    def hybrid_layers(self) -> dict[str, HybridLinear]:
        return {n: m for n, m in self.adapter_layers().items() if isinstance(m, HybridLinear)}

    def param_groups(self, lr: float) -> list[dict]:
        """Algorithm 2's eta_LoRA for A and B, eta_BOFT for Q; the run's lr for anything else."""
        layers = self.hybrid_layers().values()
        lora = [p for l in layers for p in l.lora_parameters()]
        boft = [p for l in layers for p in l.boft_parameters()]
        seen = {id(p) for p in lora + boft}
        rest = [p for p in self.trainable_parameters().values() if id(p) not in seen]
        groups = [{"params": lora, "lr": self.options.lr_lora or lr},
                  {"params": boft, "lr": self.options.lr_boft or lr}]
        return groups + ([{"params": rest, "lr": lr}] if rest else [])

    @torch.no_grad()
    def before_step(self) -> None:
        layers = self.hybrid_layers()
        if not layers:
            return
        rule = self.options.lambda_rule
        if _sharded(layers):
            rows = self._measure_sharded(layers, rule)
        else:
            rows = self._measure_local(layers, rule)
        for (name, layer), (g_l, g_b, _, _) in zip(layers.items(), rows.tolist()):
            lam = next_lambda(float(layer.lam), g_l, g_b, self.options)
            # Log the value the buffer holds (rounded to its dtype), so the history, diagnostics()
            # and a reloaded adapter all agree exactly.
            lam = torch.tensor(lam, dtype=layer.lam.dtype).item()
            layer.lam.fill_(lam)
            self.lambda_history.setdefault(name, []).append(lam)
        total = rows[:, 2:].pow(2).sum(0).sqrt().tolist()
        self._norms = {"grad_norm_lora": total[0], "grad_norm_boft": total[1]}

    @staticmethod
    def _measure_local(layers: dict[str, HybridLinear], rule: str) -> torch.Tensor:
        """`measure` of every layer, the slope rule's forward-mode pass batched over layers."""
        steps: dict[str, torch.Tensor] = {}
        if rule == "slope":
            ready = [n for n, l in layers.items() if l.lora_A.grad is not None and l.rotation.theta.grad is not None]
            steps = dict(zip(ready, boft_step_norms([layers[n] for n in ready])))
        # Every number in one tensor, read back in one transfer rather than one sync per layer;
        # a device map may spread layers over several GPUs, so each row goes to the CPU first.
        return torch.stack([torch.stack([v.float().cpu() for v in measure(l, rule, steps.get(n))])
                            for n, l in layers.items()])

    def _measure_sharded(self, layers: dict[str, HybridLinear], rule: str) -> torch.Tensor:
        """`measure` of every layer when FSDP shards parameters and gradients: the same numbers on
        every process. Norms: each shard's sum of squares, summed over the processes. The slope
        rule needs whole weights and gradients, so it gathers them (every process, same order)."""
        from ... import distributed

        if rule != "slope":
            sq = torch.stack([torch.stack([_local_sq(l.lora_parameters()), _local_sq(l.boft_parameters())])
                              for l in layers.values()])
            norms = distributed.all_reduce_sum(sq).sqrt() * torch.tensor([1.0, SKEW])
            return torch.cat([norms, norms], dim=1)
        owners = [(l, n) for l in layers.values() for n in ("lora_A", "lora_B")]
        owners += [(l.rotation, "theta") for l in layers.values()]
        grads = [getattr(m, n).grad for m, n in owners]
        grads = [g.full_tensor() if g is not None else None for g in grads]
        with distributed.full_parameters(self.model):
            for (m, n), g in zip(owners, grads):  # whole gradients on the gathered parameters
                getattr(m, n).grad = g
            rows = torch.stack([torch.stack([v.float().cpu() for v in measure(l, rule)]) for l in layers.values()])
            for m, n in owners:
                getattr(m, n).grad = None
        return rows

    def step_diagnostics(self) -> dict:
        return {"lambda": self.lambdas(), **self._norms}

    def lambdas(self) -> dict[str, float]:
        return {n: float(l.lam) for n, l in self.hybrid_layers().items()}

    def diagnostics(self) -> dict:
        return {**super().diagnostics(), "lambda": self.lambdas(), **self._norms}

    @torch.no_grad()
    def movement(self) -> dict:
        """Adds, per layer, `branch_delta` [|dW_LoRA|, |(R - I) W0|] / |W0| (each branch unmixed) and
        `branch_change`, the same weighted by lambda and 1 - lambda (what the mix applies)."""
        delta = {n: l.branch_delta() for n, l in self.hybrid_layers().items()}
        lam = self.lambdas()
        return {**super().movement(), "branch_delta": {n: list(d) for n, d in delta.items()},
                "branch_change": {n: [lam[n] * d[0], (1 - lam[n]) * d[1]] for n, d in delta.items()}}
