"""Properties every method must have, checked across the registry, plus full FT and LoRA specifics."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import cls_batch, lm_batch, make_biased, make_tiny
from hupeft import methods
from hupeft.methods import MethodError

# The hybrid's lambda-rule variants are the hybrid with one option set: test_hybrid covers each rule.
# zero-shot trains nothing: tests/test_study.py covers it.
ALL = sorted(m for m in methods.METHODS if m not in ("hybrid-paper", "hybrid-normalized", "zero-shot"))
ADAPTERS = [m for m in ALL if m != "full"]


def init_batches(n=2):
    return [lm_batch(seed=100 + i) for i in range(n)]


def adapt(name, model, **kw):
    batches = init_batches() if name in methods.NEEDS_INIT_BATCHES else None
    return methods.apply(model, name, init_batches=batches, **kw)


def train_steps(adapted, steps=3, lr=1e-2):
    opt = adapted.optimizer(lr)
    for i in range(steps):
        loss = adapted.model(**lm_batch(seed=i)).loss
        loss.backward()
        adapted.before_step()
        opt.step()
        adapted.after_step()
        opt.zero_grad(set_to_none=True)


@torch.no_grad()
def logits(model, batch):
    model.eval()
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_unknown_method_is_one_line_error(tiny_llama):
    with pytest.raises(MethodError, match=r"unknown method 'dora'; choose one of"):
        methods.apply(tiny_llama, "dora")


def test_unknown_option_names_valid_ones(tiny_llama):
    with pytest.raises(MethodError, match="valid:"):
        methods.apply(tiny_llama, "lora", rank=4)


def test_lora_rank_must_be_positive(tiny_llama):
    with pytest.raises(MethodError, match="r must be > 0"):
        methods.apply(tiny_llama, "lora", r=0)


@pytest.mark.parametrize("name", ADAPTERS)
def test_identity_at_init_and_only_adapter_grads(name):
    base = make_tiny()
    batch = lm_batch()
    ref = logits(base, batch)
    adapted = adapt(name, copy.deepcopy(base))
    assert (logits(adapted.model, batch) - ref).abs().max().item() <= 1e-5
    adapted.model.train()
    adapted.model(**batch).loss.backward()
    trainable = set(adapted.trainable_parameters())
    got_grad = {n for n, p in adapted.model.named_parameters() if p.grad is not None}
    assert got_grad and got_grad <= trainable
    # The frozen base: no weight of the original model is trainable.
    assert not any(n.endswith(("embed_tokens.weight", "lm_head.weight", "o_proj.weight")) for n in trainable)


@pytest.mark.parametrize("name", ALL)
def test_save_load_and_merge_round_trip(name, tmp_path):
    base = make_tiny()
    adapted = adapt(name, copy.deepcopy(base))
    train_steps(adapted)
    batch = lm_batch(seed=7)
    trained = logits(adapted.model, batch)
    adapted.save(tmp_path / "ckpt")
    reloaded = methods.load(copy.deepcopy(base), tmp_path / "ckpt")
    assert torch.equal(logits(reloaded.model, batch), trained)
    merged = adapted.merge()
    got = logits(merged, batch)
    assert ((got - trained).norm() / trained.norm()).item() <= 1e-4
    # Merged models are plain transformers models: no adapter module remains.
    assert all(type(m).__module__.startswith(("transformers", "torch")) for m in merged.modules())


def test_full_trains_everything(tiny_llama):
    adapted = methods.apply(tiny_llama, "full")
    assert adapted.num_trainable() == sum(p.numel() for p in tiny_llama.parameters())


def test_lora_trainable_count_closed_form(tiny_llama):
    r, d = 16, 64  # tiny-llama: hidden 64, 2 layers, q_proj and v_proj are 64 x 64
    adapted = methods.apply(tiny_llama, "lora")
    assert adapted.num_trainable() == 2 * 2 * r * (d + d)


def test_lora_on_classifier_trains_the_head(tiny_bert):
    r, d, labels = 16, 64, 2
    adapted = methods.apply(tiny_bert, "lora")
    head = d * labels + labels
    assert adapted.num_trainable() == 2 * 2 * r * (d + d) + head
    out = adapted.model(**cls_batch())
    out.loss.backward()
    names = [n for n, p in adapted.model.named_parameters() if p.grad is not None]
    assert any("classifier" in n for n in names)


# Layers with a bias and a non-square v_proj (64 -> 32), in fp32 and bf16: a bias that is
# rotated, or d_in taken for d_out, shows up here in every method.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ADAPTERS)
def test_biased_non_square_layers_identity_at_step_0_then_merge(name, dtype):
    base = make_biased().to(dtype)
    layers = [base.model.layers[0].self_attn.v_proj]
    assert layers[0].bias is not None and layers[0].in_features != layers[0].out_features
    batch = lm_batch(seed=3)
    ref = logits(base, batch)
    adapted = adapt(name, copy.deepcopy(base))
    got = logits(adapted.model, batch)
    if dtype == torch.float32:
        assert (got - ref).abs().max().item() <= 1e-5
    else:
        # bf16 rounds differently where a method reorders the layer's operations (a bias taken
        # off and added back around the adapter): about 2^-8.
        assert ((got - ref).norm() / ref.norm()).item() <= 1e-2
    train_steps(adapted, steps=3, lr=3e-2)
    trained = logits(adapted.model, batch)
    assert ((trained - ref).norm() / ref.norm()).item() > 1e-2, "training did not move the outputs"
    merged = logits(adapted.merge(), batch)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert ((merged - trained).norm() / trained.norm()).item() <= tol


@pytest.mark.parametrize("name", ADAPTERS)
def test_movement_is_the_relative_change_of_each_layers_weight(name):
    base = make_biased()
    adapted = adapt(name, copy.deepcopy(base))
    start = adapted.movement()["weight_change"]
    assert start and all(v <= 1e-6 for v in start.values())  # fp32 rounding of a folded start
    train_steps(adapted, steps=2)
    moved = adapted.movement()["weight_change"]
    merged = adapted.merge()
    for layer, value in moved.items():
        key = layer.removeprefix("base_model.model.")
        w0 = base.get_submodule(key).weight
        w = merged.get_submodule(key).weight
        assert value == pytest.approx(((w - w0).norm() / w0.norm()).item(), rel=1e-3)
        assert value > 0


@pytest.mark.parametrize("name,opts,bad", [
    ("urnn", {"side": "input"}, (7, 4)), ("urnn", {"side": "output"}, (4, 7)),
    ("urnn-structured", {"side": "output"}, (4, 7)), ("boft", {"side": "output", "block_size": 2, "n_factors": 1},
                                                       (4, 7)),
])
def test_check_fits_follows_the_side_and_agrees_with_apply(name, opts, bad):
    from torch import nn

    class One(nn.Module):
        def __init__(self, d_in, d_out):
            super().__init__()
            self.q_proj = nn.Linear(d_in, d_out)

    options = methods.make_options(name, opts, target_modules=("q_proj",))
    good = tuple(reversed(bad))  # the rotated side even (or divisible), the other side odd
    methods.check_fits(One(*good), name, options)
    methods.apply(One(*good), name, options)
    for check in (lambda: methods.check_fits(One(*bad), name, options), lambda: methods.apply(One(*bad), name, options)):
        with pytest.raises(MethodError):
            check()


@pytest.mark.parametrize("name,key,value", [("hybrid-paper", "lambda_rule", "paper"),
                                            ("hybrid-normalized", "lambda_rule", "normalized"),
                                            ("hybrid", "lambda_rule", "slope"),
                                            ("urnn-structured", "variant", "structured"), ("urnn", "variant", "full")])
def test_named_variants_set_their_option_and_run_as_their_family(name, key, value):
    family = name.split("-")[0]
    assert methods.family(name) == family
    assert getattr(methods.make_options(name), key) == value
    # The caller's options still win over the name's.
    other = {"lambda_rule": "slope", "variant": "full"}[key] if name != "hybrid" else "paper"
    assert getattr(methods.make_options(name, {key: other}), key) == other
    assert (name in methods.NEEDS_INIT_BATCHES) == (family == "hybrid")


def test_check_fits_applies_the_hybrids_shape_rule_to_its_variants():
    from torch import nn

    lin = nn.Module()
    lin.q_proj = nn.Linear(8, 12)  # 12 = 8 x 1.5: no block size 8 tiles the rotated width d_out
    for name in ("hybrid", "hybrid-paper", "hybrid-normalized"):
        with pytest.raises(MethodError, match="block"):
            methods.check_fits(lin, name, methods.make_options(name, target_modules=("q_proj",)))


def test_zero_shot_leaves_the_model_as_it_is_and_saves_nothing_to_train(tmp_path):
    base = make_tiny()
    batch = lm_batch()
    adapted = adapt("zero-shot", copy.deepcopy(base))
    assert adapted.num_trainable() == 0 and adapted.adapter_state() == {}
    assert torch.equal(logits(adapted.model, batch), logits(base, batch))
    adapted.save(tmp_path / "ckpt")
    reloaded = methods.load(copy.deepcopy(base), tmp_path / "ckpt")
    assert reloaded.method == "zero-shot" and torch.equal(logits(reloaded.model, batch), logits(base, batch))
