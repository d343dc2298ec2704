"""Properties every method must have, checked across the registry, plus full FT and LoRA specifics."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import cls_batch, lm_batch, make_tiny
from hupeft import methods
from hupeft.methods import MethodError

ALL = sorted(methods.METHODS)
ADAPTERS = [m for m in ALL if m != "full"]


def init_batches(n=2):
    return [lm_batch(seed=100 + i) for i in range(n)]


def adapt(name, model, **kw):
    batches = init_batches() if name in methods.NEEDS_INIT_BATCHES else None
    return methods.apply(model, name, init_batches=batches, **kw)


def train_steps(adapted, steps=3, lr=1e-2):
    opt = torch.optim.AdamW(adapted.trainable_parameters().values(), lr=lr)
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
