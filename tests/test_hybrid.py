"""The hybrid: identity at start for any lambda, counts, the rotation under training, lambda's rules
and log, persistence of lambda with the adapter."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from conftest import lm_batch, make_biased, make_tiny
from hupeft import methods
from hupeft.methods import MethodError
from hupeft.methods.hybrid import HybridOptions, next_lambda
from hupeft.methods.hybrid.layer import HybridLinear

D, LAYERS, TARGETS = 64, 2, 2  # tiny-llama: width 64, 2 layers, q_proj and v_proj (64 x 64)
INIT = [lm_batch(seed=100)]


@pytest.fixture(scope="module")
def base():
    return make_tiny()


def hybrid(base, **options):
    return methods.apply(copy.deepcopy(base), "hybrid", init_batches=INIT, **options)


@torch.no_grad()
def logits(model, batch):
    model.eval()
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def train(adapted, steps: int, lr: float = 1e-2, batch_size: int = 2) -> None:
    """The training loop's protocol: backward, before_step, optimizer.step, after_step."""
    adapted.model.train()
    opt = adapted.optimizer(lr)
    for i in range(steps):
        adapted.model(**lm_batch(seed=i % 5, batch=batch_size)).loss.backward()
        adapted.before_step()
        opt.step()
        adapted.after_step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.9])
def test_outputs_at_step0_equal_base_for_any_lambda(base, lam):
    batch = lm_batch(seed=5)
    adapted = hybrid(base, lambda_init=lam)
    assert all(float(l.lam) == pytest.approx(lam) for l in adapted.adapter_layers().values())
    assert (logits(adapted.model, batch) - logits(base, batch)).abs().max().item() <= 1e-5


def test_only_adapter_parameters_get_gradients_in_both_branches(base):
    adapted = hybrid(base)
    adapted.model.train()
    adapted.model(**lm_batch(seed=1)).loss.backward()
    got = {n for n, p in adapted.model.named_parameters() if p.grad is not None}
    assert got == set(adapted.trainable_parameters())
    assert all(n.endswith(("lora_A", "lora_B", "rotation.theta")) for n in got)
    for layer in adapted.adapter_layers().values():
        assert layer.rotation.theta.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0


@pytest.mark.parametrize("r,m,b", [(16, 3, 8), (4, 1, 4), (8, 2, 16)])
def test_trainable_count_closed_form(base, r, m, b):
    adapted = hybrid(base, r=r, n_factors=m, block_size=b)
    d_in = d_out = D
    lora = r * (d_in + d_out)
    butterfly = m * (d_out // b) * (b * (b - 1) // 2)  # one skew triangle per block per factor
    assert adapted.num_trainable() == LAYERS * TARGETS * (lora + butterfly)


def test_hundred_large_steps_keep_rotation_orthogonal_and_lambda_logged(base):
    steps = 100
    adapted = hybrid(base)
    train(adapted, steps, lr=0.5)
    names = set(adapted.adapter_layers())
    for name, layer in adapted.adapter_layers().items():
        assert layer.rotation.theta.abs().max() > 0.5  # the rotation really moved
        assert layer.orthogonality_error() <= 1e-5
        r = layer.rotation.matrix().double()
        assert (r.T @ r - torch.eye(D, dtype=r.dtype)).abs().max().item() <= 1e-5
    assert set(adapted.lambda_history) == names
    assert all(len(v) == steps for v in adapted.lambda_history.values())
    diag = adapted.diagnostics()
    assert set(diag["lambda"]) == names
    assert diag["lambda"] == {n: v[-1] for n, v in adapted.lambda_history.items()}
    assert diag["orthogonality_error"] <= 1e-5
    assert diag["grad_norm_lora"] > 0 and diag["grad_norm_boft"] > 0


def slopes(layer: HybridLinear, lam: float) -> tuple[float, float]:
    """Reference for the "slope" rule, from dense matrices and finite differences: the loss's
    decrease per unit of weight change along each unmixed branch's own gradient step."""
    # The unmixed branches' gradients: autograd's are scaled by each branch's weight.
    ga, gb = layer.lora_A.grad.double() / lam, layer.lora_B.grad.double() / lam
    gt = layer.rotation.theta.grad.double() / (1 - lam)
    a, b = layer.lora_A.detach().double(), layer.lora_B.detach().double()
    step_lora = layer.scaling * (gb @ a + b @ ga)  # d/de of s (B + e gB)(A + e gA) at e = 0
    w0 = layer.base.weight.double()
    rot = copy.deepcopy(layer.rotation).double()  # in double: a tiny step off R != I survives rounding
    theta = rot.theta.detach().clone()
    eps = 1e-4 / gt.abs().max().item()  # a step of 1e-4 in the largest angle

    def r_at(t):
        with torch.no_grad():
            rot.theta.copy_(t)
            return rot.matrix()

    step_boft = (r_at(theta + eps * gt) - r_at(theta - eps * gt)) @ w0 / (2 * eps)
    lora = (ga.pow(2).sum() + gb.pow(2).sum()) / step_lora.norm()
    boft = gt.pow(2).sum() / step_boft.norm()
    return lora.item(), boft.item()


@pytest.mark.parametrize("rule", ["paper", "normalized", "slope"])
@pytest.mark.parametrize("ema", [0.0, 0.5])
@pytest.mark.parametrize("rotated", [False, True], ids=["at-start", "rotated"])
def test_before_step_applies_the_rule_to_each_layers_gradients(rule, ema, rotated):
    # lambda_min=0: the LoRA-GA branch's gradient dominates here, and a clamp would hide the rule.
    base = make_biased()
    adapted = methods.apply(copy.deepcopy(base), "hybrid", init_batches=INIT, lambda_rule=rule, lambda_ema=ema,
                            lambda_init=0.3, lambda_min=0.0)
    if rotated:  # R = I makes R's derivative skew, which hides a transposed convention: move R off I
        with torch.no_grad():
            for i, layer in enumerate(adapted.adapter_layers().values()):
                layer.rotation.theta.copy_(0.3 * torch.randn(layer.rotation.theta.shape,
                                                             generator=torch.Generator().manual_seed(i)))
    adapted.model(**lm_batch(seed=1)).loss.backward()
    expected, sq = {}, [0.0, 0.0]
    for name, layer in adapted.adapter_layers().items():
        g_lora = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in layer.lora_parameters()))
        # |grad_Q L| of the skew matrix Q = theta_upper - theta_upper^T: both triangles count.
        g_boft = math.sqrt(2) * layer.rotation.theta.grad.norm().item()
        sq = [sq[0] + g_lora ** 2, sq[1] + g_boft ** 2]
        if rule == "paper":
            g = [g_lora, g_boft]
        elif rule == "normalized":
            g = [g_lora / 0.3, g_boft / 0.7]
        else:
            g = list(slopes(layer, 0.3))
        expected[name] = ema * 0.3 + (1 - ema) * g[0] / (g[0] + g[1])
    adapted.before_step()
    got = adapted.diagnostics()
    assert got["lambda"] == pytest.approx(expected, rel=1e-3 if rule == "slope" else 1e-5)
    assert len(set(round(v, 6) for v in got["lambda"].values())) > 1  # per layer, not one global
    assert got["grad_norm_lora"] == pytest.approx(math.sqrt(sq[0]), rel=1e-5)
    assert got["grad_norm_boft"] == pytest.approx(math.sqrt(sq[1]), rel=1e-5)


def test_grad_q_is_the_gradient_of_the_skew_matrix():
    """The sqrt(2): the gradient w.r.t. the skew matrix Q (entries tied in pairs, Q_ji = -Q_ij)
    is Algorithm 2's G = grad - grad^T of an unconstrained Q, whose norm is sqrt(2) |grad_theta|."""
    layer = HybridLinear(torch.nn.Linear(16, 16), 2, 1.0, 1, 4, 0.5)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.rotation.theta.normal_()
    layer(x).pow(2).sum().backward()
    free = layer.rotation.skew().detach().requires_grad_(True)  # Q as an unconstrained matrix
    from hupeft.methods.boft.butterfly import cayley
    blocks = cayley(free[0])
    h = torch.nn.functional.linear(x, layer.base.weight)
    rh = torch.einsum("tgs,gsc->tgc", h.reshape(5, 4, 4), blocks).reshape(5, 16)
    (h + 0.5 * layer.delta(x) + 0.5 * (rh - h) + layer.base.bias).pow(2).sum().backward()
    g = free.grad - free.grad.transpose(-1, -2)
    assert g.norm().item() == pytest.approx(math.sqrt(2) * layer.rotation.theta.grad.norm().item(), rel=1e-4)


def test_slope_rule_is_set_by_the_data_not_by_scale_constants():
    """Scaling the LoRA branch (alpha), its start (gamma) or the starting lambda leaves the slope
    rule's first lambda unchanged; the printed rule moves with each of them."""
    base = make_biased()
    batch = lm_batch(seed=1)

    def first(rule, **opts):
        a = methods.apply(copy.deepcopy(base), "hybrid", init_batches=INIT, lambda_rule=rule, lambda_min=0.0, **opts)
        a.model(**batch).loss.backward()
        a.before_step()
        return a.lambdas()

    for rule, invariant in (("slope", True), ("paper", False)):
        ref = first(rule)
        for opts in ({"alpha": 8.0}, {"stable_gamma": 64.0}, {"lambda_init": 0.2}):
            other = first(rule, **opts)
            same = all(other[k] == pytest.approx(v, rel=1e-3) for k, v in ref.items())
            assert same == invariant, (rule, opts, ref, other)


def test_lora_gradient_scales_with_lambda_and_boft_with_one_minus_lambda():
    base = make_biased()
    grads = {}
    for lam in (0.2, 0.8):
        # At step 0 both deltas are zero, so the forward is the same for any lambda and only the
        # branches' weights can change their gradients.
        a = methods.apply(copy.deepcopy(base), "hybrid", init_batches=INIT, lambda_init=lam)
        a.model(**lm_batch(seed=1)).loss.backward()
        layer = a.adapter_layers()["model.layers.1.self_attn.v_proj"]
        grads[lam] = (layer.lora_B.grad.norm().item(), layer.rotation.theta.grad.norm().item())
    assert grads[0.8][0] / grads[0.2][0] == pytest.approx(4.0, rel=1e-3)
    assert grads[0.8][1] / grads[0.2][1] == pytest.approx(0.25, rel=1e-3)


def test_merged_weight_is_w0_plus_lambda_lora_plus_one_minus_lambda_boft():
    """Independently of the layer's own merge: lambda weighs the LoRA-GA delta, 1 - lambda the
    rotation, the bias is not rotated, on a non-square layer with a bias."""
    base = make_biased()
    a = methods.apply(copy.deepcopy(base), "hybrid", init_batches=INIT, lambda_init=0.2)
    train(a, 2)
    layer = a.adapter_layers()["model.layers.0.self_attn.v_proj"]
    lam = float(layer.lam)
    w0, bias = layer.base.weight.detach(), layer.base.bias.detach()
    lora = layer.scaling * (layer.lora_B @ layer.lora_A - layer.B0 @ layer.A0).detach()
    rot = layer.rotation.matrix().detach()
    want = w0 + lam * lora + (1 - lam) * (rot @ w0 - w0)
    x = torch.randn(7, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (layer(x) - (x @ want.T + bias)).abs().max().item() <= 1e-5
        assert (layer.merged_weight() - want).abs().max().item() <= 1e-5
    assert (lam * lora).norm() > 1e-3 and ((1 - lam) * (rot @ w0 - w0)).norm() > 1e-4


def test_two_learning_rates_of_algorithm_2():
    """AdamW's first step moves each parameter by its group's rate: eta_LoRA for A and B,
    eta_BOFT for Q."""
    a = hybrid(make_tiny(), lr_lora=1e-2, lr_boft=1e-4)
    opt = a.optimizer(1e-3)
    before = {n: p.detach().clone() for n, p in a.trainable_parameters().items()}
    a.model(**lm_batch(seed=1)).loss.backward()
    a.before_step()
    opt.step()
    for n, p in a.trainable_parameters().items():
        step = (p.detach() - before[n]).abs().max().item()
        assert step == pytest.approx(1e-4 if n.endswith("theta") else 1e-2, rel=0.05), n


def test_movement_reports_each_branchs_share():
    """Each branch's movement is read off the merged weight with the mix set to that branch alone
    (lambda = 1: LoRA-GA only; lambda = 0: BOFT only), so a swapped or mis-weighted branch fails."""
    a = hybrid(make_tiny())
    train(a, 2)
    moved = a.movement()
    assert moved["branch_delta"].keys() == moved["branch_change"].keys() == a.adapter_layers().keys()
    for name, (lora, boft) in moved["branch_delta"].items():
        layer = a.adapter_layers()[name]
        w0, lam = layer.base.weight, float(layer.lam)
        alone = {}
        for which, value in (("lora", 1.0), ("boft", 0.0)):
            layer.lam.fill_(value)
            alone[which] = ((layer.merged_weight() - w0).norm() / w0.norm()).item()
        layer.lam.fill_(lam)
        assert lora == pytest.approx(alone["lora"], rel=1e-4) and boft == pytest.approx(alone["boft"], rel=1e-4)
        assert lora > 0 and boft > 0
        assert moved["branch_change"][name] == pytest.approx([lam * lora, (1 - lam) * boft], rel=1e-6)
        assert moved["weight_change"][name] > 0


@pytest.mark.parametrize("rule", ["paper", "normalized"])
@pytest.mark.parametrize("ema", [0.0, 0.5])
@pytest.mark.parametrize("zeroed", ["lora", "boft"])
def test_zeroing_one_branch_moves_lambda_towards_the_other(base, rule, ema, zeroed):
    adapted = hybrid(base, lambda_rule=rule, lambda_ema=ema)
    adapted.model(**lm_batch(seed=1)).loss.backward()
    for layer in adapted.adapter_layers().values():
        for p in (layer.lora_parameters() if zeroed == "lora" else layer.boft_parameters()):
            p.grad = torch.zeros_like(p)
    before = adapted.lambdas()
    adapted.before_step()
    after = adapted.lambdas()
    # lambda weighs LoRA-GA: no LoRA gradient makes the rule's target 0 (clamped at lambda_min),
    # no BOFT gradient makes it 1 (clamped at 1 - lambda_min); EMA 0.5 goes halfway.
    lo, hi = adapted.options.lambda_min, 1 - adapted.options.lambda_min
    goal = 0.0 if zeroed == "lora" else 1.0
    for name, lam in before.items():
        assert after[name] == pytest.approx(min(max(ema * lam + (1 - ema) * goal, lo), hi), abs=1e-6)
        assert abs(after[name] - goal) < abs(lam - goal) - 0.2


def test_rules_closed_form():
    paper = HybridOptions(lambda_min=0.0)
    assert next_lambda(0.5, 3.0, 1.0, paper) == pytest.approx(0.75)
    assert next_lambda(0.2, 3.0, 1.0, paper) == pytest.approx(0.75)  # the printed rule ignores lambda
    norm = HybridOptions(lambda_rule="normalized", lambda_min=0.0)
    assert next_lambda(0.2, 3.0, 1.0, norm) == pytest.approx(15 / 16.25)  # 3/0.2 = 15, 1/0.8 = 1.25
    # Each branch's gradient is its raw strength times its weight: g_LoRA = lambda * G_L,
    # g_BOFT = (1 - lambda) * G_B. With G_L = 2 G_B the printed rule compounds the advantage
    # step after step up to 1 (its feedback); the normalized rule settles at G_L / (G_L + G_B).
    lam_p = lam_n = 0.5
    for _ in range(60):
        lam_p = next_lambda(lam_p, 2.0 * lam_p, 1.0 * (1 - lam_p), paper)
        lam_n = next_lambda(lam_n, 2.0 * lam_n, 1.0 * (1 - lam_n), norm)
    assert lam_p > 0.999 and lam_n == pytest.approx(2 / 3)
    ema = HybridOptions(lambda_ema=0.9, lambda_min=0.0)
    assert next_lambda(0.5, 1.0, 0.0, ema) == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)
    clamp = HybridOptions()  # lambda_min = 0.01
    assert next_lambda(0.5, 1.0, 0.0, clamp) == pytest.approx(0.99)
    assert next_lambda(0.5, 0.0, 1.0, clamp) == pytest.approx(0.01)
    assert next_lambda(0.3, 0.0, 0.0, paper) == pytest.approx(0.3)  # no gradient at all: unchanged


@pytest.mark.parametrize("rule,ema", [("paper", 0.0), ("normalized", 0.9)])
def test_save_load_and_merge_reproduce_outputs_and_lambda(base, tmp_path, rule, ema):
    adapted = hybrid(base, lambda_rule=rule, lambda_ema=ema)
    train(adapted, 4)
    lambdas = adapted.lambdas()
    assert all(abs(v - 0.5) > 1e-4 for v in lambdas.values())  # lambda moved off its start
    batch = lm_batch(seed=7)
    trained = logits(adapted.model, batch)
    adapted.save(tmp_path / "ckpt")
    reloaded = methods.load(copy.deepcopy(base), tmp_path / "ckpt")
    assert reloaded.options == adapted.options
    assert reloaded.lambdas() == lambdas
    assert torch.equal(logits(reloaded.model, batch), trained)
    got = logits(adapted.merge(), batch)
    assert ((got - trained).norm() / trained.norm()).item() <= 1e-4


def test_option_errors(base):
    with pytest.raises(MethodError, match="lambda_rule must be one of"):
        methods.apply(copy.deepcopy(base), "hybrid", lambda_rule="mean")
    with pytest.raises(MethodError, match=r"lambda_min must be in \[0, 0.5\)"):
        methods.apply(copy.deepcopy(base), "hybrid", lambda_min=0.5)
    with pytest.raises(MethodError, match="lambda_init must be in"):
        methods.apply(copy.deepcopy(base), "hybrid", lambda_init=1.0)
    with pytest.raises(MethodError, match="lambda_ema must be in"):
        methods.apply(copy.deepcopy(base), "hybrid", lambda_ema=1.0)
    with pytest.raises(MethodError, match=r"q_proj \(rotated width d_out\): block_size 6 does not divide"):
        methods.apply(copy.deepcopy(base), "hybrid", block_size=6)
