"""BOFT: identity at start, closed-form counts, orthogonality under training, PEFT parity at m = 1
and m = 3, save/load, merge, the shape rules PEFT enforces, and no d x d matrix in forward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import cls_batch, lm_batch, make_tiny
from hupeft import methods
from hupeft.methods import MethodError
from hupeft.methods.boft.butterfly import Butterfly, check_butterfly_shape

D, LAYERS, TARGETS = 64, 2, 2  # tiny-llama: width 64, 2 layers, q_proj and v_proj (64 x 64)
CASES = [(side, m) for side in ("input", "output") for m in (1, 3)]


def inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**inputs(batch)).logits


@torch.no_grad()
def perturb(adapted, seed: int = 0, spread: float = 0.3) -> None:
    """Random skew parameters and scales, so that R != I and s != 1 in the checks."""
    g = torch.Generator().manual_seed(seed)
    for layer in adapted.adapter_layers().values():
        layer.rotation.theta.copy_(torch.randn(layer.rotation.theta.shape, generator=g) * spread)
        layer.scale.copy_(1 + 0.1 * torch.randn(layer.scale.shape, generator=g))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("side,m", CASES)
def test_outputs_at_step_0_equal_the_base_model(side, m):
    base = make_tiny()
    batch = lm_batch(seed=1)
    adapted = methods.apply(copy.deepcopy(base), "boft", side=side, n_factors=m)
    assert (logits(adapted.model, batch) - logits(base, batch)).abs().max().item() <= 1e-5


def test_seq_cls_outputs_at_step_0_and_the_head_trains():
    base = make_tiny("tiny-bert", task="seq-cls")
    batch = cls_batch()
    adapted = methods.apply(copy.deepcopy(base), "boft")
    assert (logits(adapted.model, batch) - logits(base, batch)).abs().max().item() <= 1e-5
    adapted.model(**batch).loss.backward()
    trainable = adapted.trainable_parameters()
    assert "classifier.weight" in trainable and adapted.model.classifier.weight.grad is not None
    assert all(".rotation." in n or n.endswith(".scale") or n.startswith("classifier.") for n in trainable)


@pytest.mark.parametrize("side,m,b", [("input", 1, 8), ("input", 3, 8), ("output", 3, 4), ("input", 2, 16)])
def test_only_adapter_parameters_train_and_counts_are_closed_form(side, m, b):
    adapted = methods.apply(make_tiny(), "boft", side=side, n_factors=m, block_size=b)
    per_layer = m * (D // b) * (b * (b - 1) // 2) + D  # skew upper triangles + per-output scale
    assert adapted.num_trainable() == LAYERS * TARGETS * per_layer
    for layer in adapted.adapter_layers().values():
        assert layer.rotation.num_parameters() == layer.rotation.theta.numel() == m * (D // b) * b * (b - 1) // 2
    adapted.model(**lm_batch()).loss.backward()
    for name, p in adapted.model.named_parameters():
        is_adapter = name.endswith(".rotation.theta") or name.endswith(".scale")
        assert p.requires_grad == is_adapter, name
        assert (p.grad is not None) == is_adapter, name
        if is_adapter:
            assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("side,m", CASES)
def test_stays_orthogonal_and_keeps_norms_after_100_large_steps(side, m):
    adapted = methods.apply(make_tiny(), "boft", side=side, n_factors=m)
    opt = torch.optim.AdamW(adapted.trainable_parameters().values(), lr=0.5)
    for i in range(100):  # a random-label loss at a learning rate far above any sane one
        adapted.model(**lm_batch(seed=i % 5)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(0))
    for layer in adapted.adapter_layers().values():
        assert layer.orthogonality_error() <= 1e-5
        with torch.no_grad():
            y, r = layer.rotation(x), layer.rotation.matrix()
        assert ((y.norm(dim=-1) / x.norm(dim=-1)) - 1).abs().max().item() <= 1e-5
        assert (r.double().T @ r.double() - torch.eye(D, dtype=torch.float64)).abs().max().item() <= 1e-5
        assert (r - torch.eye(D)).abs().max().item() > 1e-2, "the rotation did not train"
    assert adapted.diagnostics()["orthogonality_error"] <= 1e-5


def _peft_model(base: nn.Module, m: int, targets: list[str], monkeypatch) -> nn.Module:
    """PEFT's BOFT with m factors. Above m = 1 PEFT needs its CUDA block-diagonal kernel; on CPU
    that kernel is replaced by torch.block_diag of each factor's blocks, which is all it does."""
    import peft.tuners.boft.layer as peft_boft
    from peft import BOFTConfig, get_peft_model

    if m > 1:
        class CPUBlockDiag:
            @staticmethod
            def apply(blocks):  # (m, N, b, b) -> (m, N b, N b)
                return torch.stack([torch.block_diag(*f.unbind(0)) for f in blocks])

        monkeypatch.setattr(peft_boft, "get_fbd_cuda", lambda: True)
        monkeypatch.setattr(peft_boft, "FastBlockDiag", CPUBlockDiag)
    cfg = BOFTConfig(boft_block_size=8, boft_n_butterfly_factor=m, target_modules=targets)
    return get_peft_model(copy.deepcopy(base), cfg)


@pytest.mark.parametrize("name,m", [("tiny-llama", 1), ("tiny-llama", 3), ("tiny-bert", 1)])
def test_matches_peft_boft_given_the_same_parameters(name, m, monkeypatch):
    task = "causal-lm" if name == "tiny-llama" else "seq-cls"
    base = make_tiny(name, task=task)
    targets = ["q_proj", "v_proj"] if name == "tiny-llama" else ["query", "value"]
    batch = lm_batch(seed=3) if name == "tiny-llama" else cls_batch(seed=3)
    ours = methods.apply(copy.deepcopy(base), "boft", n_factors=m, block_size=8, side="input")
    theirs = _peft_model(base, m, targets, monkeypatch)
    g = torch.Generator().manual_seed(0)
    for layer_name, layer in ours.adapter_layers().items():
        peft_layer = theirs.base_model.model.get_submodule(layer_name)
        assert peft_layer.boft_R["default"].shape == (m, D // 8, 8, 8)  # PEFT kept m factors
        raw = torch.randn(m, D // 8, 8, 8, generator=g) * 0.3  # PEFT keeps the skew part only
        scale = 1 + 0.1 * torch.randn(D, generator=g)
        with torch.no_grad():
            peft_layer.boft_R["default"].copy_(raw)
            peft_layer.boft_s["default"].copy_(scale[:, None])
            skew = 0.5 * (raw - raw.transpose(-1, -2))
            layer.rotation.theta.copy_(skew[..., layer.rotation.rows, layer.rotation.cols])
            layer.scale.copy_(scale)
    a, b = logits(ours.model, batch), logits(theirs, batch)
    assert (a - b).abs().max().item() <= 1e-5 and rel(a, b) <= 1e-4
    assert rel(a, logits(base, batch)) > 1e-2, "the rotation did nothing"


def test_butterfly_matrix_matches_peft_permutations_and_cayley_at_m3():
    from peft.tuners.boft.layer import BOFTLayer

    d, b, m = 64, 8, 3
    bf = Butterfly(d, b, m)
    raw = torch.randn(m, d // b, b, b, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        skew = 0.5 * (raw - raw.transpose(-1, -2))
        bf.theta.copy_(skew[..., bf.rows, bf.cols])
    q = BOFTLayer.cayley_batch(None, raw.view(-1, b, b)).view(m, d // b, b, b)
    assert (q - bf.block_matrices()).abs().max().item() <= 1e-6
    r_peft = torch.eye(d)
    for i in range(m):  # PEFT: M_i = P_i B_i P_i^T, R_peft = M_{m-1} ... M_0, rows rotate as x @ R_peft
        p = BOFTLayer.perm2mat(None, BOFTLayer.block_butterfly_perm(None, d, (d // b) // 2 ** i, b // 2, m - 1))
        r_peft = p @ torch.block_diag(*q[i]) @ p.T @ r_peft
    x = torch.randn(7, d)
    with torch.no_grad():
        assert (bf(x) - x @ r_peft).abs().max().item() <= 1e-5
        assert (bf.matrix() - r_peft.T).abs().max().item() <= 1e-5
        # and the factor-by-factor application on activations agrees with the grouped one
        assert (bf._factors(x, bf.block_matrices()) - bf(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("side,m", CASES)
def test_save_load_and_merge_give_the_same_outputs(side, m, tmp_path):
    base = make_tiny()
    batch = lm_batch(seed=4)
    adapted = methods.apply(copy.deepcopy(base), "boft", side=side, n_factors=m)
    perturb(adapted, seed=m)
    want = logits(adapted.model, batch)
    adapted.save(tmp_path / "ckpt")
    loaded = methods.load(copy.deepcopy(base), tmp_path / "ckpt")
    assert loaded.options == adapted.options
    assert torch.equal(logits(loaded.model, batch), want)
    merged = adapted.merge()
    assert not adapted.adapter_layers() and all(type(mod) is not Butterfly for mod in merged.modules())
    assert rel(logits(merged, batch), want) <= 1e-4
    assert (want - logits(base, batch)).abs().max().item() > 1e-3, "the adapter did nothing"


def test_bias_is_not_rotated_or_scaled_on_either_side():
    lin = nn.Linear(16, 16)
    for side in ("input", "output"):
        from hupeft.methods.boft.layer import BOFTLinear

        layer = BOFTLinear(copy.deepcopy(lin), 1, 4, side, True)
        with torch.no_grad():
            layer.rotation.theta.normal_()
            layer.scale.mul_(3.0)
            x = torch.randn(5, 16)
            w = layer.merged_weight()
            assert (layer(x) - (x @ w.T + lin.bias)).abs().max().item() <= 1e-5
            assert (layer(torch.zeros(1, 16)) - lin.bias).abs().max().item() == 0


@pytest.mark.parametrize("m", [1, 3])
def test_forward_never_builds_a_dense_d_by_d_matrix(m):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.biggest = max(self.biggest, t.numel())
            return out

    bf = Butterfly(D, 8, m)
    x = torch.randn(3, D, requires_grad=True)
    with Largest() as seen:
        bf(x).sum().backward()
    assert seen.biggest < D * D, f"a tensor of {seen.biggest} numbers (d*d = {D * D}) was built"


@pytest.mark.parametrize("opts,message,fix", [
    ({"block_size": 7}, "does not divide the layer width 64", "use one of"),
    ({"n_factors": 5, "block_size": 8}, "not divisible by 2^(n_factors-1)", "lower n_factors"),
    ({"side": "left"}, "side must be 'input' or 'output'", "'input' or 'output'"),
    ({"n_factors": 0}, "n_factors >= 1", "n_factors >= 1"),
])
def test_bad_options_are_one_line_errors_naming_the_fix(opts, message, fix):
    with pytest.raises(MethodError) as err:
        methods.apply(make_tiny(), "boft", **opts)
    text = str(err.value)
    assert message in text and fix in text and "\n" not in text


def test_shape_rules_mirror_peft(monkeypatch):
    """Ours accepts (width, b, m) exactly when PEFT's BOFT layer does (its CUDA path, which keeps m)."""
    import peft.tuners.boft.layer as peft_boft
    from peft import BOFTConfig

    monkeypatch.setattr(peft_boft, "get_fbd_cuda", lambda: True)  # else PEFT forces m = 1 first
    for dim in (24, 48):
        for b in (2, 3, 4, 6, 8, 12):
            for m in (1, 2, 3, 4):
                try:
                    peft_boft.Linear(nn.Linear(dim, 4), "default", BOFTConfig(boft_block_size=b, boft_n_butterfly_factor=m))
                    peft_ok = True
                except ValueError:
                    peft_ok = False
                try:
                    check_butterfly_shape(dim, b, m)
                    ours_ok = True
                except MethodError as e:
                    ours_ok = False
                    assert "\n" not in str(e)
                assert ours_ok == peft_ok, (dim, b, m)
