"""Shared fixtures: tiny random models (fp32, CPU) and batches for them."""

from __future__ import annotations

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def make_tiny(name: str = "tiny-llama", task: str = "causal-lm", seed: int = 0):
    from hupeft import models

    return models.load(name, task=task, seed=seed).model


def lm_batch(seed: int = 0, batch: int = 2, seq: int = 12, vocab: int = 128) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def cls_batch(seed: int = 0, batch: int = 4, seq: int = 12, vocab: int = 128, num_labels: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, num_labels, (batch,), generator=g)}


@pytest.fixture
def tiny_llama():
    return make_tiny("tiny-llama")


@pytest.fixture
def tiny_bert():
    return make_tiny("tiny-bert", task="seq-cls")


@pytest.fixture
def clone():
    return copy.deepcopy


def make_biased(seed: int = 0):
    """A tiny Llama whose attention projections have biases (random, not HF's zeros) and whose
    v_proj is not square (2 key-value heads: 64 -> 32), so that a method that rotates a bias,
    or swaps d_in and d_out, changes the numbers."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, attention_bias=True,
                      max_position_embeddings=256, tie_word_embeddings=False,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model


# --- multi-process runs (test_distributed, test_deepspeed) ---------------------------------------

# 8 examples, 2 per process and step: 2 steps of a global batch of 4.
TWO_PROCESS_BASE = dict(model="tiny-llama", benchmark="glue/sst2", seed=1, epochs=1, n_train=8, n_val=4,
                        n_eval=4, max_len=48, lr=1e-3, init_batches=2, warmup_ratio=0.0)


def saved_weights(folder) -> dict:
    """Every tensor of a saved adapter (or full model) folder."""
    from pathlib import Path

    from safetensors.torch import load_file

    state = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(str(f)))
    assert state, f"nothing saved in {folder}"
    return state


def assert_same_weights(a: dict, b: dict, rel: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for k in a:
        diff = (a[k].double() - b[k].double()).norm()
        assert diff <= rel * b[k].double().norm() + 1e-7, f"{k}: |a - b| = {diff:.3g} of |b| = {b[k].norm():.3g}"
