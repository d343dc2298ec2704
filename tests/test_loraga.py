"""LoRA-GA: identity at start with W0 untouched, the official ArB2r factors, the first step, persistence."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import lm_batch, make_tiny
from hupeft import methods
from hupeft.methods import MethodError
from hupeft.methods.base import find_target_linears
from hupeft.methods.loraga import LoraGAOptions, estimate_gradients, loraga_factors

D, LAYERS, TARGETS = 64, 2, 2  # tiny-llama: width 64, 2 layers, q_proj and v_proj (64 x 64)
INIT = [lm_batch(seed=100 + i) for i in range(2)]


@pytest.fixture(scope="module")
def base():
    return make_tiny()


@torch.no_grad()
def logits(model, batch):
    model.eval()
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def principal_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the column spans of a and b: svd(Q1^T Q2)."""
    q1, _ = torch.linalg.qr(a.double())
    q2, _ = torch.linalg.qr(b.double())
    return torch.linalg.svd(q1.T @ q2).S


def autograd_gradients(model, batches) -> dict[str, torch.Tensor]:
    """dL/dW of the target layers, averaged over batches, the plain way (weight.grad)."""
    model = copy.deepcopy(model)
    names = find_target_linears(model, None)
    for b in batches:
        model(**b).loss.backward()
    return {n: model.get_submodule(n).weight.grad / len(batches) for n in names}


def loss(model, batch):
    return model(**batch).loss


def test_outputs_at_step0_equal_base_and_w0_is_untouched(base):
    batch = lm_batch(seed=5)
    ref = logits(base, batch)
    w0 = {k: v.clone() for k, v in base.state_dict().items()}
    adapted = methods.apply(copy.deepcopy(base), "loraga", init_batches=INIT)
    assert (logits(adapted.model, batch) - ref).abs().max().item() <= 1e-5
    for name, layer in adapted.adapter_layers().items():
        assert torch.equal(layer.base.weight, w0[f"{name}.weight"])  # never edited, unlike PEFT's
        assert layer.delta_weight().abs().max() == 0
        assert layer.B0.abs().max() > 0  # a real gradient start, not plain LoRA's B = 0


def test_only_adapter_parameters_get_gradients(base):
    adapted = methods.apply(copy.deepcopy(base), "loraga", init_batches=INIT)
    adapted.model.train()
    adapted.model(**lm_batch(seed=1)).loss.backward()
    got = {n for n, p in adapted.model.named_parameters() if p.grad is not None}
    assert got == set(adapted.trainable_parameters())
    assert got and all(n.endswith(("lora_A", "lora_B")) for n in got)
    assert all(p.grad.abs().sum() > 0 for p in adapted.trainable_parameters().values())


@pytest.mark.parametrize("r", [16, 4])
def test_trainable_count_closed_form(base, r):
    adapted = methods.apply(copy.deepcopy(base), "loraga", init_batches=INIT, r=r)
    d_in = d_out = D
    assert adapted.num_trainable() == LAYERS * TARGETS * r * (d_in + d_out)


def test_gradient_estimate_equals_autograd(base):
    model = copy.deepcopy(base).eval()
    names = find_target_linears(model, None)
    est = estimate_gradients(model, names, INIT, loss)
    ref = autograd_gradients(base, INIT)
    for n in names:
        assert torch.allclose(est[n], ref[n], atol=1e-6, rtol=1e-4)
    # The estimate leaves the model as it found it: mode, flags, no stray gradients.
    assert not model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize("r", [4, 16])
def test_factors_span_the_official_singular_subspaces(base, r):
    gamma = 16.0
    grads = autograd_gradients(base, INIT)  # independent of the hook-based estimate
    adapted = methods.apply(copy.deepcopy(base), "loraga", init_batches=INIT, r=r, stable_gamma=gamma)
    for name, layer in adapted.adapter_layers().items():
        u, _, vh = torch.linalg.svd(grads[name].double())
        v = vh.T
        # B0: inside the top-2r left singular subspace, namely U[:, r:2r], orthogonal to U[:, :r].
        assert principal_cosines(layer.B0, u[:, : 2 * r]).min() > 0.999
        assert principal_cosines(layer.B0, u[:, r: 2 * r]).min() > 0.999
        assert principal_cosines(layer.B0, u[:, :r]).max() < 1e-2
        # A0^T: the top-r right singular vectors, not the next r.
        assert principal_cosines(layer.A0.T, v[:, :r]).min() > 0.999
        assert principal_cosines(layer.A0.T, v[:, r: 2 * r]).max() < 1e-2
        # The stable scale: orthonormal columns times d_out^(1/4) / sqrt(gamma), on both factors.
        c2 = (D ** 0.25 / gamma ** 0.5) ** 2
        assert torch.allclose(layer.B0.T @ layer.B0, c2 * torch.eye(r), atol=1e-5)
        assert torch.allclose(layer.A0 @ layer.A0.T, c2 * torch.eye(r), atol=1e-5)


def test_init_batches_option_caps_the_estimate(base):
    names = find_target_linears(base, None)
    model = copy.deepcopy(base)
    capped = estimate_gradients(model, names, INIT + [lm_batch(seed=9)], loss, max_batches=1)
    first = estimate_gradients(model, names, INIT[:1], loss)
    both = estimate_gradients(model, names, INIT, loss)
    n = names[0]
    assert torch.allclose(capped[n], first[n]) and not torch.allclose(capped[n], both[n])
    # Through apply: the option (passed in the options dict, since the keyword init_batches is
    # the batches themselves) limits which batches the factors come from.
    one = methods.apply(copy.deepcopy(base), "loraga", {"init_batches": 1}, init_batches=INIT)
    ref = methods.apply(copy.deepcopy(base), "loraga", init_batches=INIT[:1])
    for (_, a), (_, b) in zip(one.adapter_layers().items(), ref.adapter_layers().items()):
        assert torch.equal(a.A0, b.A0) and torch.equal(a.B0, b.B0)


def one_step_drop(base, name: str, lr: float = 1e-2, **options) -> float:
    """Loss decrease on a fixed batch after one SGD step from the same model and seed."""
    torch.manual_seed(0)
    batch = lm_batch(seed=42, batch=4, seq=16)
    init = [batch] if name == "loraga" else None
    adapted = methods.apply(copy.deepcopy(base), name, init_batches=init, **options)
    adapted.model.train()
    opt = torch.optim.SGD(adapted.trainable_parameters().values(), lr=lr)
    before = adapted.model(**batch).loss
    before.backward()
    opt.step()
    with torch.no_grad():
        after = adapted.model(**batch).loss
    return before.item() - after.item()


def test_first_step_lowers_the_loss_more_than_peft_lora(base):
    lora = one_step_drop(base, "lora")  # PEFT LoRA, r=16, alpha=32: scale alpha/r = 2
    assert lora > 0
    assert one_step_drop(base, "loraga") > 2 * lora  # default: rsLoRA scale alpha/sqrt(r) = 8
    # Not only the larger scale: at LoRA's own scale alpha/r the gradient start still wins.
    assert one_step_drop(base, "loraga", use_rslora=False) > 2 * lora


def test_save_load_and_merge_reproduce_outputs(base, tmp_path):
    adapted = methods.apply(copy.deepcopy(base), "loraga", init_batches=INIT)
    opt = torch.optim.AdamW(adapted.trainable_parameters().values(), lr=1e-2)
    for i in range(3):
        adapted.model(**lm_batch(seed=i)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    batch = lm_batch(seed=7)
    trained = logits(adapted.model, batch)
    assert (trained - logits(base, batch)).abs().max() > 1e-3  # training moved the outputs
    adapted.save(tmp_path / "ckpt")
    reloaded = methods.load(copy.deepcopy(base), tmp_path / "ckpt")
    assert reloaded.method == "loraga" and isinstance(reloaded.options, LoraGAOptions)
    assert torch.equal(logits(reloaded.model, batch), trained)
    got = logits(adapted.merge(), batch)
    assert ((got - trained).norm() / trained.norm()).item() <= 1e-4
    assert not adapted.adapter_layers()


def test_factors_function_and_option_errors(base):
    g = torch.randn(64, 32)
    a0, b0 = loraga_factors(g, 4)
    assert a0.shape == (4, 32) and b0.shape == (64, 4)
    with pytest.raises(MethodError, match=r"2r <= min\(d_out, d_in\) = 32.*pass r <= 16"):
        loraga_factors(g, 17)
    with pytest.raises(MethodError, match=r"q_proj: LoRA-GA needs 2r <= .*pass r <= 32"):
        methods.apply(copy.deepcopy(base), "loraga", r=40)  # checked before any gradient pass
    with pytest.raises(MethodError, match="r must be > 0.*pass r=16"):
        methods.apply(copy.deepcopy(base), "loraga", r=0)
    with pytest.raises(MethodError, match="no init batch"):
        methods.apply(copy.deepcopy(base), "loraga", init_batches=[])
