"""BOFT, uRNN and the hybrid's rotation: structure, orthogonality under training, PEFT parity."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import cls_batch, lm_batch, make_tiny
from hupeft import methods
from hupeft.methods import MethodError
from hupeft.methods.boft.butterfly import Butterfly, butterfly_permutation

D, LAYERS, TARGETS = 64, 2, 2  # tiny-llama: width 64, 2 layers, q_proj and v_proj (64 x 64)


def hammer(adapted, steps=100, lr=0.5):
    """Many optimiser steps at a large learning rate on a random-label loss."""
    opt = torch.optim.AdamW(adapted.trainable_parameters().values(), lr=lr)
    for i in range(steps):
        adapted.model(**lm_batch(seed=i % 5)).loss.backward()
        adapted.before_step()
        opt.step()
        adapted.after_step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("m,b", [(1, 8), (3, 8), (2, 4)])
def test_boft_trainable_count_closed_form(m, b, tiny_llama):
    adapted = methods.apply(tiny_llama, "boft", n_factors=m, block_size=b)
    per_layer = m * (D // b) * (b * (b - 1) // 2) + D  # skew triangles + per-output scale
    assert adapted.num_trainable() == LAYERS * TARGETS * per_layer


@pytest.mark.parametrize("variant,per_layer", [("structured", 7 * (D // 2)), ("full", (D // 2 // 8) * 8 * 8 * 2)])
def test_urnn_trainable_count_closed_form(variant, per_layer, tiny_llama):
    adapted = methods.apply(tiny_llama, "urnn", variant=variant)
    assert adapted.num_trainable() == LAYERS * TARGETS * per_layer


def test_hybrid_trainable_count_closed_form(tiny_llama):
    adapted = methods.apply(tiny_llama, "hybrid", init_batches=[lm_batch()], r=4)
    per_layer = 4 * (D + D) + 3 * (D // 8) * (8 * 7 // 2)
    assert adapted.num_trainable() == LAYERS * TARGETS * per_layer


def test_loraga_trainable_count_closed_form(tiny_llama):
    adapted = methods.apply(tiny_llama, "loraga", init_batches=[lm_batch()])
    assert adapted.num_trainable() == LAYERS * TARGETS * 16 * (D + D)


@pytest.mark.parametrize("name,opts", [
    ("boft", {"side": "input"}), ("boft", {"side": "output", "n_factors": 2}),
    ("urnn", {"variant": "structured"}), ("urnn", {"variant": "full", "manifold_lr": 0.5}),
    ("hybrid", {"lambda_rule": "normalized"}),
])
def test_rotations_stay_orthogonal_and_keep_norms_after_100_large_steps(name, opts):
    model = make_tiny()
    init = [lm_batch(seed=50)] if name == "hybrid" else None
    adapted = methods.apply(model, name, init_batches=init, **opts)
    hammer(adapted)
    layers = adapted.adapter_layers().values()
    assert max(l.orthogonality_error() for l in layers) <= 1e-5
    moved = 0.0
    x = torch.randn(16, D)
    for layer in layers:
        with torch.no_grad():
            if name == "urnn":
                y = layer.rotate(x)
                dense = layer.dense()
            else:
                y = layer.rotation(x)
                dense = layer.rotation.matrix()
        rel = ((y.norm(dim=-1) / x.norm(dim=-1)) - 1).abs().max().item()
        assert rel <= 1e-5
        assert (dense.T.double() @ dense.double() - torch.eye(D, dtype=torch.float64)).abs().max() <= 1e-5
        moved = max(moved, (dense - torch.eye(D)).abs().max().item())
    assert moved > 1e-2, "the rotations did not train"


def test_boft_m1_matches_peft_boft_with_the_same_blocks():
    from peft import BOFTConfig, get_peft_model

    base = make_tiny()
    ours = methods.apply(copy.deepcopy(base), "boft", n_factors=1, block_size=8)
    peft_model = get_peft_model(copy.deepcopy(base), BOFTConfig(boft_block_size=8, boft_n_butterfly_factor=1,
                                                               target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(0)
    for name, layer in ours.adapter_layers().items():
        peft_layer = peft_model.base_model.model.get_submodule(name)
        raw = torch.randn(1, D // 8, 8, 8, generator=g) * 0.3
        scale = 1 + 0.1 * torch.randn(D, generator=g)
        with torch.no_grad():
            peft_layer.boft_R["default"].copy_(raw)
            peft_layer.boft_s["default"].copy_(scale[:, None])
            skew = 0.5 * (raw - raw.transpose(-1, -2))
            layer.rotation.theta.copy_(skew[..., layer.rotation.rows, layer.rotation.cols])
            layer.scale.copy_(scale)
    batch = {k: v for k, v in lm_batch(seed=3).items() if k != "labels"}
    with torch.no_grad():
        a, b = ours.model(**batch).logits, peft_model(**batch).logits
    assert (a - b).abs().max().item() <= 1e-5
    assert (a - base(**batch).logits).abs().max().item() > 1e-3  # the rotation did something


def test_butterfly_matches_peft_dense_construction_at_m3():
    from peft.tuners.boft.layer import BOFTLayer

    d, b, m = 64, 8, 3
    bf = Butterfly(d, b, m)
    with torch.no_grad():
        bf.theta.normal_()
    q = bf.block_matrices()
    mats = []
    for i in range(m):
        idx = BOFTLayer.block_butterfly_perm(None, d, int((d // b) / 2 ** i), b // 2, m - 1)
        assert torch.equal(idx, butterfly_permutation(d, d // b, b // 2, i))
        p = BOFTLayer.perm2mat(None, idx)
        mats.append(p @ torch.block_diag(*q[i]) @ p.T)
    dense = mats[2] @ mats[1] @ mats[0]  # PEFT: x_rotated = x @ R
    x = torch.randn(7, d)
    assert (bf(x) - x @ dense).abs().max().item() <= 1e-5
    assert (bf.matrix() - dense.T).abs().max().item() <= 1e-5


def test_full_urnn_manifold_step_lowers_the_loss():
    torch.manual_seed(0)
    model = make_tiny()
    adapted = methods.apply(model, "urnn", variant="full", manifold_lr=0.05)
    batch = lm_batch(seed=9)
    before = adapted.model(**batch).loss
    before.backward()
    adapted.before_step()  # Algorithm 1 consumes the gradient
    assert all(p.grad is None for n, p in adapted.trainable_parameters().items())
    with torch.no_grad():
        after = adapted.model(**batch).loss
    assert after.item() < before.item()


def test_seq_cls_heads_train_and_outputs_start_equal():
    base = make_tiny("tiny-bert", task="seq-cls")
    batch = cls_batch()
    base.eval()
    ref = base(**batch).logits
    adapted = methods.apply(copy.deepcopy(base), "boft")
    adapted.model.eval()
    assert (adapted.model(**batch).logits - ref).abs().max().item() <= 1e-5
    adapted.model(**batch).loss.backward()
    assert adapted.model.classifier.weight.grad is not None


@pytest.mark.parametrize("name,opts,message", [
    ("boft", {"block_size": 7}, "does not divide the layer width 64"),
    ("boft", {"n_factors": 5, "block_size": 8}, "not divisible by 2^(n_factors-1)"),
    ("boft", {"side": "left"}, "side must be 'input' or 'output'"),
    ("urnn", {"variant": "dense"}, "variant must be 'structured' or 'full'"),
    ("urnn", {"variant": "full", "block_size": 5}, "does not divide 32"),
    ("hybrid", {"lambda_rule": "mean"}, "lambda_rule must be"),
    ("loraga", {"r": 0}, "r must be > 0"),
])
def test_bad_options_are_one_line_errors(name, opts, message, tiny_llama):
    with pytest.raises(MethodError) as err:
        methods.apply(tiny_llama, name, init_batches=[lm_batch()], **opts)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_odd_width_is_refused_by_urnn():
    from torch import nn

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(7, 4)

    with pytest.raises(MethodError, match="even input width"):
        methods.apply(Odd(), "urnn", target_modules=("q_proj",))
