"""uRNN adapter: identity at start, closed-form counts, the structured formula, unitarity under
training, Algorithm 1's sign and first-order decrease, re-normalisation, save/load, merge, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from conftest import cls_batch, lm_batch, make_tiny
from hupeft import methods
from hupeft.methods import MethodError
from hupeft.methods.urnn import unitary as unitary_module
from hupeft.methods.urnn.layer import URNNLinear
from hupeft.methods.urnn.unitary import BlockUnitary, StructuredUnitary, manifold_step

D, LAYERS, TARGETS = 64, 2, 2  # tiny-llama: width 64, 2 layers, q_proj and v_proj (64 x 64)
N = D // 2                      # complex width
CASES = [(v, side) for v in ("structured", "full") for side in ("input", "output")]


def inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**inputs(batch)).logits


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def random_unitary(shape: tuple, g: torch.Generator) -> torch.Tensor:
    z = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    q, r = torch.linalg.qr(z)
    return q * (r.diagonal(dim1=-2, dim2=-1) / r.diagonal(dim1=-2, dim2=-1).abs()).unsqueeze(-2)


@torch.no_grad()
def perturb(adapted, seed: int = 0) -> None:
    """Move every unitary far from the identity (still exactly unitary)."""
    g = torch.Generator().manual_seed(seed)
    for layer in adapted.adapter_layers().values():
        u = layer.unitary
        if isinstance(u, BlockUnitary):
            u.u.copy_(torch.view_as_real(random_unitary((u.blocks, u.block_size, u.block_size), g)))
        else:
            u.phases.copy_(torch.randn(u.phases.shape, generator=g))
            u.reflections.copy_(torch.randn(u.reflections.shape, generator=g))


@pytest.mark.parametrize("variant", ["full", "structured"])
@pytest.mark.parametrize("side", ["input", "output"])
def test_bias_is_not_rotated_on_a_biased_non_square_layer(variant, side):
    """U acts on W0 x (or x), never on the bias: a zero input gives the bias back, and the layer is
    its merged weight plus the same bias once U is far from the identity."""
    from types import SimpleNamespace

    from hupeft.methods.urnn.layer import URNNLinear

    torch.manual_seed(0)
    lin = nn.Linear(8, 12)  # d_in 8, d_out 12: both even, not square
    with torch.no_grad():
        lin.bias.normal_()
    layer = URNNLinear(copy.deepcopy(lin), variant, 2, 0, side)
    perturb(SimpleNamespace(adapter_layers=lambda: {"q": layer}))
    with torch.no_grad():
        x = torch.randn(5, 8)
        assert (layer(x) - (x @ layer.merged_weight().T + lin.bias)).abs().max().item() <= 1e-5
        assert (layer(torch.zeros(1, 8)) - lin.bias).abs().max().item() <= 1e-6
        assert (layer(x) - lin(x)).abs().max().item() > 1e-2  # U really moved


@pytest.mark.parametrize("variant,side", CASES)
def test_outputs_at_step_0_equal_the_base_model(variant, side):
    base = make_tiny()
    batch = lm_batch(seed=1)
    adapted = methods.apply(copy.deepcopy(base), "urnn", variant=variant, side=side)
    assert (logits(adapted.model, batch) - logits(base, batch)).abs().max().item() <= 1e-5


def test_seq_cls_outputs_at_step_0_and_the_head_trains():
    base = make_tiny("tiny-bert", task="seq-cls")
    batch = cls_batch()
    adapted = methods.apply(copy.deepcopy(base), "urnn")
    assert (logits(adapted.model, batch) - logits(base, batch)).abs().max().item() <= 1e-5
    adapted.model(**batch).loss.backward()
    assert adapted.model.classifier.weight.grad is not None
    assert all(".unitary." in n or n.startswith("classifier.") for n in adapted.trainable_parameters())


@pytest.mark.parametrize("variant,block,names,per_layer", [
    ("structured", None, ("unitary.phases", "unitary.reflections"), 3 * N + 2 * N * 2),  # 3 phase vectors + 2 complex v
    ("full", None, ("unitary.u",), N * N * 2),                                          # one n x n complex U
    ("full", 8, ("unitary.u",), (N // 8) * 8 * 8 * 2),                                  # N/b blocks of b x b complex
])
def test_only_adapter_parameters_train_and_counts_are_closed_form(variant, block, names, per_layer):
    adapted = methods.apply(make_tiny(), "urnn", variant=variant, block_size=block)
    assert per_layer == (7 * N if variant == "structured" else N * (block or N) * 2)
    assert adapted.num_trainable() == LAYERS * TARGETS * per_layer
    adapted.model(**lm_batch()).loss.backward()
    for name, p in adapted.model.named_parameters():
        is_adapter = name.endswith(names)
        assert p.requires_grad == is_adapter, name
        assert (p.grad is not None) == is_adapter, name
        if is_adapter:
            assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_structured_is_the_printed_product_times_the_fixed_inverse_of_its_start():
    """U_eff = D3 R2 F^-1 D2 Pi R1 F D1 at theta, times the same product at theta_0, conjugate-transposed."""
    torch.manual_seed(0)
    su = StructuredUnitary(N, seed=3)
    with torch.no_grad():
        su.phases.normal_()
        su.reflections.normal_()
    c128 = torch.complex128
    k = torch.arange(N, dtype=torch.float64)
    f = torch.exp(-2j * math.pi * torch.outer(k, k) / N).to(c128) / math.sqrt(N)  # fft(norm="ortho")
    pi = torch.eye(N, dtype=c128)[su.perm]                                         # (Pi z)_j = z_perm[j]

    def dense(phases, refl):
        d = [torch.diag(torch.exp(1j * p.double())) for p in phases]
        r = []
        for v in torch.view_as_complex(refl.double().contiguous()):
            r.append(torch.eye(N, dtype=c128) - 2 * torch.outer(v, v.conj()) / (v.conj() @ v))
        return d[2] @ r[1] @ f.mH @ d[1] @ pi @ r[0] @ f @ d[0]

    u0 = dense(su.phases0, su.reflections0)
    want = dense(su.phases0 + su.phases, su.reflections0 + su.reflections) @ u0.mH
    with torch.no_grad():
        got = su(torch.eye(N, dtype=torch.complex64)).T  # row j of the output is U e_j
    assert (got.to(c128) - want).abs().max().item() <= 1e-5
    assert (want - torch.eye(N, dtype=c128)).abs().max().item() > 0.1  # it is not a trivial check


def hammer(adapted, steps: int = 100, lr: float = 0.5) -> None:
    opt = adapted.optimizer(lr)
    for i in range(steps):  # random-label loss, learning rates far above any sane one
        adapted.model(**lm_batch(seed=i % 5)).loss.backward()
        adapted.before_step()
        opt.step()
        adapted.after_step()
        opt.zero_grad(set_to_none=True)


def test_default_is_algorithm_1_with_one_u_over_the_width():
    adapted = methods.apply(make_tiny(), "urnn")
    assert adapted.options.variant == "full" and adapted.options.block_size is None
    for layer in adapted.adapter_layers().values():
        assert layer.unitary.u.shape == (1, N, N, 2)
    structured = methods.apply(make_tiny(), "urnn-structured")
    assert structured.options.variant == "structured"


@pytest.mark.parametrize("variant", ["structured", "full"])
def test_stays_unitary_and_keeps_norms_after_100_large_steps(variant):
    # A tolerance below the default, so that 8 x 8 blocks drift past it and are re-projected.
    adapted = methods.apply(make_tiny(), "urnn", variant=variant, block_size=8 if variant == "full" else None,
                            renorm_tol=1e-7)
    hammer(adapted)
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(0))
    for layer in adapted.adapter_layers().values():
        assert layer.orthogonality_error() <= 1e-5
        with torch.no_grad():
            y, m = layer.rotate(x), layer.dense()
        assert ((y.norm(dim=-1) / x.norm(dim=-1)) - 1).abs().max().item() <= 1e-5
        assert (m.double().T @ m.double() - torch.eye(D, dtype=torch.float64)).abs().max().item() <= 1e-5
        assert (m - torch.eye(D)).abs().max().item() > 1e-2, "the unitary did not train"
    diag = adapted.diagnostics()
    assert diag["orthogonality_error"] <= 1e-5
    if variant == "full":
        assert diag["renormalisations"] > 0, "the re-projection was never exercised"


def _loss_after_one_manifold_step(model, batch, eta: float) -> float:
    model = copy.deepcopy(model)
    model(**batch).loss.backward()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, BlockUnitary):
                new, _ = manifold_step(mod.unitary(), torch.view_as_complex(mod.u.grad), eta, tol=1e-6)
                mod.u.copy_(torch.view_as_real(new))
        return model(**batch).loss.item()


def test_algorithm_1_descends_with_the_predicted_first_order_decrease():
    adapted = methods.apply(make_tiny(), "urnn", block_size=8)
    perturb(adapted, seed=1)  # away from the identity, where U^H would hide a wrong side
    model, batch = adapted.model, lm_batch(seed=9)
    loss0 = model(**batch).loss
    loss0.backward()
    # dL = Re <G, dU> with dU = -eta B U, B = G U^H - U G^H: dL = -eta/2 |B|_F^2 (see manifold_step)
    sq = 0.0
    for layer in adapted.adapter_layers().values():
        g, u = torch.view_as_complex(layer.unitary.u.grad), layer.unitary.unitary().detach()
        sq += ((g @ u.mH - u @ g.mH).abs() ** 2).sum().item()
    model.zero_grad(set_to_none=True)
    eta = 1e-3
    predicted = -eta / 2 * sq
    down = _loss_after_one_manifold_step(model, batch, eta) - loss0.item()
    up = _loss_after_one_manifold_step(model, batch, -eta) - loss0.item()
    assert down < 0 < up
    assert down == pytest.approx(predicted, rel=0.15)


def _one_optimizer_step(adapted, lr: float, batch: dict, schedule: float = 1.0):
    """(loss before, loss after, |U - U_before|_F over all layers) for one optimiser step."""
    opt = adapted.optimizer(lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: schedule)
    before = {n: p.detach().clone() for n, p in adapted.trainable_parameters().items()}
    loss = adapted.model(**batch).loss
    loss.backward()
    adapted.before_step()
    opt.step()
    sched.step()
    with torch.no_grad():
        after = adapted.model(**batch).loss.item()
    moved = math.sqrt(sum((p.detach() - before[n]).pow(2).sum().item() for n, p in adapted.trainable_parameters().items()))
    numel = sum(p.numel() for p in before.values())
    return loss.item(), after, moved, numel


@pytest.mark.parametrize("side", ["input", "output"])
def test_the_adam_manifold_step_moves_u_like_adamw_and_lowers_the_loss(side):
    """AdamW's first step moves a free parameter by lr per entry (lr sqrt(numel) in norm); the
    manifold step moves U by the tangent part of that: between a half and all of it. The printed
    plain-gradient step at the same eta barely moves U."""
    batch = lm_batch(seed=11)
    base = make_tiny()
    lr = 1e-3
    before, after, moved, numel = _one_optimizer_step(methods.apply(copy.deepcopy(base), "urnn", side=side), lr, batch)
    assert after < before
    assert 0.5 * lr * math.sqrt(numel) <= moved <= lr * math.sqrt(numel)
    b, a, plain, _ = _one_optimizer_step(methods.apply(copy.deepcopy(base), "urnn", side=side, manifold_step="sgd"),
                                         lr, batch)
    assert a < b and plain < 0.05 * moved
    # The run's schedule scales the step (here to 0: U stays put); a manifold_lr replaces the peak.
    _, _, frozen, _ = _one_optimizer_step(methods.apply(copy.deepcopy(base), "urnn", side=side), lr, batch, 0.0)
    _, _, own, _ = _one_optimizer_step(methods.apply(copy.deepcopy(base), "urnn", side=side, manifold_lr=lr / 4),
                                       lr, batch)
    assert frozen == 0.0 and own == pytest.approx(moved / 4, rel=1e-3)


def test_a_plain_optimiser_is_refused_for_algorithm_1():
    adapted = methods.apply(make_tiny(), "urnn")
    adapted.model(**lm_batch()).loss.backward()
    with pytest.raises(MethodError, match="adapted.optimizer"):
        adapted.before_step()


def test_movement_reports_how_far_u_moved():
    adapted = methods.apply(make_tiny(), "urnn")
    assert all(v < 1e-6 for v in adapted.movement()["unitary_distance"].values())
    _, _, moved, _ = _one_optimizer_step(adapted, 1e-2, lm_batch(seed=1))
    got = adapted.movement()["unitary_distance"]
    # |U - I|_F over the real form is sqrt(2) |U - I|_F over the complex one; divided by sqrt(D).
    total = math.sqrt(sum((v * math.sqrt(D)) ** 2 / 2 for v in got.values()))
    assert total == pytest.approx(moved, rel=1e-3)


@pytest.mark.parametrize("norm", [1e-3, 0.05, 0.5, 3.0])
def test_exp_times_matches_the_exponential_in_double(norm):
    # Short Taylor series below a norm of 1, scaling and squaring above: both to fp32's precision.
    g = torch.Generator().manual_seed(1)
    m = torch.complex(torch.randn(3, 16, 16, generator=g), torch.randn(3, 16, 16, generator=g))
    a = m - m.mH
    a = a * (norm / a.abs().sum(-2).amax())
    # one block whose spectral norm is its 1-norm (the bound the series' degree is chosen by)
    a[0] = torch.diag(torch.tensor([1j, -1j] * 8, dtype=torch.complex64) * norm)
    u = random_unitary((3, 16, 16), g)
    want = torch.linalg.matrix_exp(a.to(torch.complex128)) @ u.to(torch.complex128)
    got = unitary_module.exp_times(a, u)
    assert got.dtype == torch.complex64
    assert (got.to(torch.complex128) - want).abs().max().item() <= 5e-7


def test_drift_is_checked_every_renorm_every_steps(monkeypatch):
    calls = []
    real = unitary_module.unitarity_error
    monkeypatch.setattr(unitary_module, "unitarity_error", lambda u: calls.append(1) or real(u))
    adapted = methods.apply(make_tiny(), "urnn", block_size=8, renorm_every=10)
    hammer(adapted, steps=25, lr=1e-3)
    layers = len(adapted.adapter_layers())
    assert len(calls) == 3 * layers  # steps 0, 10 and 20 of each layer's U


@pytest.mark.parametrize("side", ["input", "output"])
def test_folding_u_into_a_narrow_weight_gives_the_same_outputs_and_gradients(side):
    # 16 -> 4 on the input side (4 -> 16 on the output side) over 64 tokens: folding U into W0
    # costs less than applying it to the activations, so forward takes the folded path.
    g = torch.Generator().manual_seed(2)
    base = torch.nn.Linear(16, 4) if side == "input" else torch.nn.Linear(4, 16)
    base.requires_grad_(False)
    layer = URNNLinear(base, "full", 8, 0, side)
    with torch.no_grad():
        layer.unitary.u.copy_(torch.view_as_real(random_unitary((1, 8, 8), g)))
    x = torch.randn(4, 16, base.in_features, generator=g)
    assert layer._fold_pays(x)
    got = layer(x)
    (got * torch.arange(got.numel()).reshape(got.shape)).sum().backward()
    grad, layer.unitary.u.grad = layer.unitary.u.grad, None
    if side == "input":
        want = layer.base(layer.rotate(x))
    else:
        h = layer.base(x) - layer.base.bias
        want = layer.rotate(h) + layer.base.bias
    (want * torch.arange(want.numel()).reshape(want.shape)).sum().backward()
    assert (got - want).abs().max().item() <= 1e-5
    assert torch.allclose(grad, layer.unitary.u.grad, rtol=1e-4, atol=1e-4)
    assert not layer._fold_pays(x[:1, :1])  # one token: applying U to it is cheaper


def test_drift_is_reprojected_to_the_nearest_unitary_and_counted():
    g = torch.Generator().manual_seed(0)
    bu = BlockUnitary(16, 8)
    target = random_unitary((2, 8, 8), g)
    with torch.no_grad():
        drifted = target + 1e-3 * torch.complex(torch.randn(2, 8, 8, generator=g), torch.randn(2, 8, 8, generator=g))
        bu.u.copy_(torch.view_as_real(drifted))
    # exp(0) = I: only the re-projection can act.
    got, reprojected = manifold_step(bu.unitary().detach(), torch.zeros(2, 8, 8, dtype=torch.complex64), 0.1, 1e-6)
    eye = torch.eye(8, dtype=torch.complex64)
    assert reprojected
    assert (got.mH @ got - eye).abs().max().item() <= 1e-6
    w, _, vh = torch.linalg.svd(drifted.to(torch.complex128))
    assert (got.to(torch.complex128) - w @ vh).abs().max().item() <= 1e-5  # the polar factor
    again, reprojected = manifold_step(got, torch.zeros_like(got), 0.1, 1e-6)
    assert not reprojected and torch.equal(again, got)  # unitary already: no second projection


@pytest.mark.parametrize("variant,side", CASES)
def test_save_load_and_merge_give_the_same_outputs(variant, side, tmp_path):
    base = make_tiny()
    batch = lm_batch(seed=4)
    adapted = methods.apply(copy.deepcopy(base), "urnn", variant=variant, side=side)
    perturb(adapted, seed=2)
    want = logits(adapted.model, batch)
    assert rel(want, logits(base, batch)) > 1e-2, "the adapter did nothing"
    adapted.save(tmp_path / "ckpt")
    loaded = methods.load(copy.deepcopy(base), tmp_path / "ckpt")
    assert loaded.options == adapted.options
    assert torch.equal(logits(loaded.model, batch), want)
    merged = adapted.merge()
    assert not adapted.adapter_layers()
    assert rel(logits(merged, batch), want) <= 1e-4


@pytest.mark.parametrize("variant", ["structured", "full"])
def test_forward_never_builds_a_dense_matrix(variant):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.biggest = max(self.biggest, t.numel())
            return out

    u = StructuredUnitary(N) if variant == "structured" else BlockUnitary(N, 8)  # one U is n x n by design
    z = torch.randn(3, N, dtype=torch.complex64, requires_grad=True)
    with Largest() as seen:
        torch.view_as_real(u(z)).sum().backward()
    assert seen.biggest < N * N, f"a tensor of {seen.biggest} numbers (n*n = {N * N}) was built"


class Odd(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.q_proj = nn.Linear(d_in, d_out)


@pytest.mark.parametrize("model,opts,message,fix", [
    (Odd(7, 4), {}, "even input width, got 7", "use side='output'"),
    (Odd(4, 7), {"side": "output"}, "even output width, got 7", "target other layers"),
    (Odd(64, 4), {"variant": "full", "block_size": 5}, "does not divide 32", "pick a divisor of 32"),
    (Odd(64, 4), {"variant": "dense"}, "variant must be 'structured' or 'full'", "'structured' or 'full'"),
    (Odd(64, 4), {"side": "left"}, "side must be 'input' or 'output'", "'input' or 'output'"),
])
def test_bad_input_is_a_one_line_error_naming_the_fix(model, opts, message, fix):
    with pytest.raises(MethodError) as err:
        methods.apply(model, "urnn", target_modules=("q_proj",), **opts)
    text = str(err.value)
    assert message in text and fix in text and "\n" not in text


def test_recompute_gives_the_same_loss_and_gradients():
    """Recomputing the structured unitary in backward changes memory, not the numbers."""
    base = make_tiny()
    batch = lm_batch(seed=3)
    grads = []
    for recompute in (False, True):
        adapted = methods.apply(copy.deepcopy(base), "urnn", recompute=recompute)
        perturb(adapted)
        loss = adapted.model(**batch).loss
        loss.backward()
        grads.append((loss.item(), {k: p.grad.clone() for k, p in adapted.trainable_parameters().items()}))
    (l0, g0), (l1, g1) = grads
    assert l0 == pytest.approx(l1, rel=1e-6)
    assert g0.keys() == g1.keys()
    for k in g0:
        assert torch.allclose(g0[k], g1[k], rtol=1e-5, atol=1e-7), k


@pytest.mark.parametrize("side", ["input", "output"])
def test_folding_the_frozen_factor_into_the_weight_changes_nothing_but_cost(side):
    """Folded (U0^H in W0') and unfolded (both factors on activations) layers give the same outputs,
    gradients and merged weights after training moved theta; the folded one is W0 U_eff."""
    from hupeft.methods.urnn.layer import URNNLinear

    torch.manual_seed(0)
    base = nn.Linear(D, 48 if side == "input" else D)
    x = torch.randn(5, D)
    layers = [URNNLinear(copy.deepcopy(base), "structured", 8, 4, side, fold=f) for f in (True, False)]
    assert [l.folded for l in layers] == [True, False]
    for l in layers:
        with torch.no_grad():
            l.unitary.phases.copy_(torch.randn(3, N, generator=torch.Generator().manual_seed(1)))
            l.unitary.reflections.copy_(torch.randn(2, N, 2, generator=torch.Generator().manual_seed(2)))
    folded, plain = layers
    assert rel(folded(x), plain(x)) <= 1e-5
    assert rel(folded.merged_weight(), plain.merged_weight()) <= 1e-5
    u = folded.dense()
    want = base.weight @ u if side == "input" else u @ base.weight
    assert rel(folded.merged_weight(), want) <= 1e-5
    for l in layers:
        l(x).square().sum().backward()
    assert rel(folded.unitary.phases.grad, plain.unitary.phases.grad) <= 1e-4
    assert rel(folded.unitary.reflections.grad, plain.unitary.reflections.grad) <= 1e-4


def test_moving_the_model_keeps_the_adapter_working():
    # .to() walks every module through nn.Module._apply; the adapter must not shadow it.
    base = make_tiny()
    batch = lm_batch(seed=2)
    adapted = methods.apply(copy.deepcopy(base), "urnn")
    adapted.model.to("cpu", torch.float32)
    assert (logits(adapted.model, batch) - logits(base, batch)).abs().max().item() <= 1e-5
