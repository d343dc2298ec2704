"""LoRA-GA: identity at start with W0 untouched, the official ArB2r factors, the first step, persistence."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import lm_batch, make_biased, make_tiny
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


def test_every_init_batch_is_used(base):
    """The run's `init_batches` is the one setting: the estimate averages all batches it is given."""
    names = find_target_linears(base, None)
    model = copy.deepcopy(base)
    one = estimate_gradients(model, names, INIT[:1], loss)
    both = estimate_gradients(model, names, INIT, loss)
    n = names[0]
    assert torch.allclose(both[n], (one[n] + estimate_gradients(model, names, INIT[1:], loss)[n]) / 2, atol=1e-7)
    assert not torch.allclose(one[n], both[n])


def test_same_gradient_and_subspaces_as_peft_loraga_up_to_the_documented_scaling():
    """PEFT's LoRA-GA (preprocess_loraga, init "lora_ga", ArB2r, stable): the same gradient
    estimate; A spans the same top-r right singular vectors and B the same next-r left ones, on
    non-square layers with biases. The documented difference: PEFT puts the singular values on
    B (B = c U[:, r:2r] S[r:2r], A unscaled); we scale both by c = d_out^(1/4) / sqrt(gamma)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.config import LoraGAConfig
    from peft.tuners.lora.loraga import preprocess_loraga

    base, r, gamma = make_biased(), 16, 16
    names = find_target_linears(base, None)
    ours = methods.apply(copy.deepcopy(base), "loraga", init_batches=INIT, r=r, stable_gamma=gamma)
    ours_grads = estimate_gradients(copy.deepcopy(base), names, INIT, loss)
    model = copy.deepcopy(base)
    cfg = LoraConfig(r=r, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights="lora_ga",
                     lora_ga_config=LoraGAConfig(stable_gamma=gamma))

    def train_step():
        for b in INIT:
            model(**b).loss.backward()

    preprocess_loraga(model, cfg, train_step)
    peft_grads = {n: model.get_submodule(n)._peft_loraga_grad.clone() for n in names}
    peft = get_peft_model(model, cfg)
    for n in names:
        assert torch.allclose(ours_grads[n], peft_grads[n], atol=1e-6, rtol=1e-4)
        mine, theirs = ours.model.get_submodule(n), peft.base_model.model.get_submodule(n)
        pa, pb = theirs.lora_A["default"].weight.detach(), theirs.lora_B["default"].weight.detach()
        assert principal_cosines(mine.A0.T, pa.T).min() > 0.999
        assert principal_cosines(mine.B0, pb).min() > 0.999
        d_out, d_in = mine.base.weight.shape
        c = d_out ** 0.25 / gamma ** 0.5
        s = torch.linalg.svdvals(peft_grads[n].double())[r: 2 * r]
        assert torch.allclose(pa.norm(dim=1).double(), torch.ones(r, dtype=torch.float64), atol=1e-4)
        assert torch.allclose(pb.norm(dim=0).double(), c * s, rtol=1e-3)
        assert torch.allclose(mine.A0.norm(dim=1), torch.full((r,), c), atol=1e-4)
        assert torch.allclose(mine.B0.norm(dim=0), torch.full((r,), c), atol=1e-4)


def test_stable_scale_uses_d_out_on_a_non_square_layer():
    base, r, gamma = make_biased(), 8, 16.0
    adapted = methods.apply(copy.deepcopy(base), "loraga", init_batches=INIT, r=r, stable_gamma=gamma)
    layer = adapted.adapter_layers()["model.layers.0.self_attn.v_proj"]
    d_out, d_in = layer.base.weight.shape
    assert (d_out, d_in) == (32, 64)
    c = d_out ** 0.25 / gamma ** 0.5
    assert torch.allclose(layer.B0.T @ layer.B0, c * c * torch.eye(r), atol=1e-5)
    assert torch.allclose(layer.A0 @ layer.A0.T, c * c * torch.eye(r), atol=1e-5)


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
