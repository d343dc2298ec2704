"""LoRA-GA's gradient initialisation and the hybrid's lambda."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import lm_batch, make_tiny
from hupeft import methods
from hupeft.methods.base import find_target_linears
from hupeft.methods.hybrid import HybridOptions, next_lambda
from hupeft.methods.loraga import estimate_gradients


def principal_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between span(a) and span(b) (columns)."""
    qa, _ = torch.linalg.qr(a.double())
    qb, _ = torch.linalg.qr(b.double())
    return torch.linalg.svdvals(qa.T @ qb)


def test_gradient_estimate_equals_autograd():
    model = make_tiny()
    names = find_target_linears(model, None)
    batches = [lm_batch(seed=s) for s in range(2)]
    est = estimate_gradients(model, names, batches, lambda m, b: m(**b).loss)
    ref = {n: torch.zeros_like(model.get_submodule(n).weight) for n in names}
    for b in batches:
        model.zero_grad()
        model(**b).loss.backward()
        for n in names:
            ref[n] += model.get_submodule(n).weight.grad / len(batches)
    for n in names:
        assert torch.allclose(est[n], ref[n], atol=1e-6, rtol=1e-4)


def test_loraga_factors_span_the_gradients_top_singular_subspaces():
    r = 4
    model = make_tiny()
    names = find_target_linears(model, None)
    batches = [lm_batch(seed=s) for s in range(3)]
    grads = estimate_gradients(copy.deepcopy(model), names, batches, lambda m, b: m(**b).loss)
    adapted = methods.apply(model, "loraga", init_batches=batches, r=r)
    for name, layer in adapted.adapter_layers().items():
        u, _, vh = torch.linalg.svd(grads[name].double())
        # A0's rows: the top-r right singular vectors; B0's columns: left singular vectors r..2r.
        assert principal_cosines(layer.A0.T, vh[:r].T).min() > 0.999
        assert principal_cosines(layer.B0, u[:, r: 2 * r]).min() > 0.999
        # and not the bottom of the spectrum (the test can fail)
        assert principal_cosines(layer.A0.T, vh[-r:].T).max() < 0.5


def one_step_drop(name: str, lr: float = 5e-3) -> float:
    torch.manual_seed(0)
    model = make_tiny(seed=1)
    batch = lm_batch(seed=42, batch=4, seq=16)
    init = [batch] if name in methods.NEEDS_INIT_BATCHES else None
    adapted = methods.apply(model, name, init_batches=init, r=8, alpha=16)
    opt = torch.optim.SGD(adapted.trainable_parameters().values(), lr=lr)
    before = adapted.model(**batch).loss
    before.backward()
    opt.step()
    with torch.no_grad():
        after = adapted.model(**batch).loss
    return before.item() - after.item()


def test_loraga_first_step_lowers_the_loss_more_than_lora():
    assert one_step_drop("loraga") > one_step_drop("lora") > -1e-6


def test_hybrid_lambda_is_logged_every_step_and_stays_in_range():
    model = make_tiny()
    adapted = methods.apply(model, "hybrid", init_batches=[lm_batch()], lambda_rule="normalized", lambda_min=0.0)
    opt = torch.optim.AdamW(adapted.trainable_parameters().values(), lr=1e-2)
    for i in range(7):
        adapted.model(**lm_batch(seed=i)).loss.backward()
        adapted.before_step()
        opt.step()
        opt.zero_grad(set_to_none=True)
        diag = adapted.diagnostics()
        assert set(diag["lambda"]) == set(adapted.adapter_layers())
        assert all(0.0 <= v <= 1.0 for v in diag["lambda"].values())
        assert diag["grad_norm_lora"] > 0 and diag["grad_norm_boft"] > 0
    assert all(len(v) == 7 for v in adapted.lambda_history.values())
    assert len({round(v[-1], 6) for v in adapted.lambda_history.values()}) > 1  # per layer, not global


@pytest.mark.parametrize("rule", ["paper", "normalized"])
@pytest.mark.parametrize("zeroed,direction", [("lora", -1), ("boft", +1)])
def test_zeroing_a_branch_moves_lambda_towards_the_other(rule, zeroed, direction):
    model = make_tiny()
    adapted = methods.apply(model, "hybrid", init_batches=[lm_batch()], lambda_rule=rule, lambda_ema=0.5)
    adapted.model(**lm_batch(seed=1)).loss.backward()
    for layer in adapted.adapter_layers().values():
        params = layer.lora_parameters() if zeroed == "lora" else layer.boft_parameters()
        for p in params:
            p.grad.zero_()
    before = adapted.lambdas()
    adapted.before_step()
    after = adapted.lambdas()
    for name in before:
        assert (after[name] - before[name]) * direction > 0.1


def test_lambda_rules_closed_form():
    paper = HybridOptions(lambda_min=0.0)
    assert next_lambda(0.5, 3.0, 1.0, paper) == pytest.approx(0.75)
    norm = HybridOptions(lambda_rule="normalized", lambda_min=0.0)
    # g_lora / 0.2 = 15, g_boft / 0.8 = 1.25 -> 15 / 16.25
    assert next_lambda(0.2, 3.0, 1.0, norm) == pytest.approx(15 / 16.25)
    ema = HybridOptions(lambda_ema=0.9, lambda_min=0.0)
    assert next_lambda(0.5, 1.0, 0.0, ema) == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)
    clamp = HybridOptions(lambda_min=0.05)
    assert next_lambda(0.5, 1.0, 0.0, clamp) == pytest.approx(0.95)
    assert next_lambda(0.3, 0.0, 0.0, paper) == pytest.approx(0.3)  # no gradient: unchanged


@pytest.mark.parametrize("lam", [0.2, 0.9])
def test_hybrid_outputs_equal_base_for_any_lambda_at_start(lam):
    base = make_tiny()
    batch = {k: v for k, v in lm_batch(seed=5).items() if k != "labels"}
    with torch.no_grad():
        ref = base(**batch).logits
    adapted = methods.apply(copy.deepcopy(base), "hybrid", init_batches=[lm_batch()], lambda_init=lam)
    with torch.no_grad():
        assert (adapted.model(**batch).logits - ref).abs().max().item() <= 1e-5


def lambda_after(rule: str, steps: int = 12) -> list[float]:
    model = make_tiny()
    adapted = methods.apply(model, "hybrid", init_batches=[lm_batch()], lambda_rule=rule, lambda_min=0.0)
    opt = torch.optim.AdamW(adapted.trainable_parameters().values(), lr=1e-2)
    for i in range(steps):
        adapted.model(**lm_batch(seed=i)).loss.backward()
        adapted.before_step()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return list(adapted.lambdas().values())


def test_printed_rule_feeds_back_to_one_branch_and_normalized_rule_does_not():
    # As printed, each branch's gradient is scaled by its own weight, so the larger branch wins
    # more each step: lambda reaches exactly 1 and the BOFT branch stops learning for good.
    assert all(v == 1.0 for v in lambda_after("paper"))
    assert all(0.05 < v < 0.995 for v in lambda_after("normalized"))
