"""Exports users load with their own tools: a merged transformers folder for every method, PEFT
adapter files where PEFT has an exact equivalent, and the refusals for the rest."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import lm_batch
from transformers import AutoModelForCausalLM

from hupeft import export, methods, models
from hupeft.cli import main as hupeft_main
from hupeft.experiment import run

SEED = 1  # the random tiny base: an export must name it, or the base it rebuilds is another one
PROBE = lm_batch(99, batch=2, seq=16)


def trained(name: str, **options) -> methods.Adapted:
    """`name` on tiny-llama after three optimiser steps at a rate large enough to move every adapter."""
    loaded = models.load("tiny-llama", seed=SEED)
    init = [lm_batch(s) for s in range(2)] if name in methods.NEEDS_INIT_BATCHES else None
    adapted = methods.apply(loaded.model, name, init_batches=init, **options)
    optimizer = adapted.optimizer(1e-2)
    for step in range(3):
        adapted.model(**lm_batch(10 + step)).loss.backward()
        adapted.before_step()
        optimizer.step()
        adapted.after_step()
        optimizer.zero_grad()
    adapted.model.eval()
    return adapted


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model.eval()(**PROBE).logits


def assert_moved(adapted) -> None:
    """The comparison below means something only if training changed the outputs."""
    base = models.load("tiny-llama", seed=SEED).model
    assert (logits(adapted.model) - logits(base)).abs().max() > 1e-3


@pytest.mark.parametrize("name,options", [("full", {}), ("lora", {}), ("loraga", {}), ("boft", {}), ("urnn", {}),
                                          ("hybrid", {})])
def test_merged_export_reloads_with_the_same_logits(name, options, tmp_path):
    adapted = trained(name, **options)
    assert_moved(adapted)
    adapted.save(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "hupeft_adapter.json").read_text())["base_model"] == \
        {"name": "tiny-llama", "task": "causal-lm", "seed": SEED}
    assert hupeft_main(["export", str(tmp_path / "adapter"), "--to", "merged", str(tmp_path / "merged")]) == 0
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    assert {"generation_config.json", "model.safetensors", "README.md"} <= {p.name for p in (tmp_path / "merged").iterdir()}
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert (logits(reloaded) - logits(adapted.model)).abs().max() <= 1e-5


@pytest.mark.parametrize("name,options", [("lora", {}), ("loraga", {}), ("boft", {"n_factors": 1}),
                                          ("boft", {"n_factors": 1, "scale": False})])
def test_peft_export_reloads_with_the_same_logits(name, options, tmp_path):
    from peft import PeftModel

    adapted = trained(name, **options)
    assert_moved(adapted)
    adapted.save(tmp_path / "adapter")
    export.export(tmp_path / "adapter", "peft", tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama"
    if name == "loraga":  # rank 2r, and alpha such that alpha / 2r is LoRA-GA's scale s = 32 / sqrt(16)
        assert config["r"] == 32 and config["lora_alpha"] == pytest.approx(8.0 * 32)
    reloaded = PeftModel.from_pretrained(models.load("tiny-llama", seed=SEED).model, tmp_path / "peft")
    assert (logits(reloaded) - logits(adapted.model)).abs().max() <= 1e-5


@pytest.mark.parametrize("name,options,message", [
    ("urnn", {}, "urnn has no exact PEFT equivalent.*--to merged"),
    ("hybrid", {}, "hybrid has no exact PEFT equivalent.*--to merged"),
    ("boft", {"n_factors": 2}, "n_factors=2.*--to merged"),
    ("boft", {"n_factors": 1, "side": "output"}, "side='output'.*--to merged"),
])
def test_peft_export_refuses_what_peft_cannot_hold_in_one_line(name, options, message, tmp_path, capsys):
    adapted = methods.apply(models.load("tiny-llama", seed=SEED).model, name, init_batches=[lm_batch(0)], **options)
    adapted.save(tmp_path / "adapter")
    assert hupeft_main(["export", str(tmp_path / "adapter"), "--to", "peft", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_bad_sources_are_refused_before_any_loading(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert hupeft_main(["export", str(tmp_path / "empty"), "--to", "merged", str(tmp_path / "o")]) == 2
    assert "neither a run folder" in capsys.readouterr().err
    adapted = methods.apply(models.load("tiny-llama").model, "boft")
    adapted.save(tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert hupeft_main(["export", str(tmp_path / "a"), "--to", "merged", str(tmp_path / "full")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    meta = json.loads((tmp_path / "a" / "hupeft_adapter.json").read_text())
    del meta["base_model"]  # as an adapter saved before adapters named their base
    (tmp_path / "a" / "hupeft_adapter.json").write_text(json.dumps(meta))
    assert hupeft_main(["export", str(tmp_path / "a"), "--to", "merged", str(tmp_path / "o")]) == 2
    assert "pass --base NAME" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """A grid cell's seed folders: loraga on tiny-llama, seeds 0 and 1."""
    root = tmp_path_factory.mktemp("cell")
    cfg = dict(model="tiny-llama", method="loraga", benchmark="glue/sst2", epochs=1, n_train=8, n_val=2, n_eval=4,
               batch_size=4, max_len=48, lr=1e-3, init_batches=1, checkpoint=False)
    for seed in (0, 1):
        rec = run(dict(cfg, seed=seed), root / f"seed{seed}", progress=False)
        assert rec["status"] == "ok", rec["error"]
    return root


def test_a_run_folder_exports_with_a_model_card_of_its_record(two_seeds, tmp_path):
    out = export.export(two_seeds / "seed0", "peft", tmp_path / "peft")
    card = (out / "README.md").read_text()
    rec = json.loads((two_seeds / "seed0" / "record.json").read_text())
    assert rec["config"]["data"]["fingerprints"]["train"] in card
    assert rec["environment"]["git_commit"] is None or rec["environment"]["git_commit"] in card
    assert "over seeds [0, 1]" in card and "95% t-interval" in card
    assert "- r: 16" in card and "seed 0" in card
    # `hupeft run`'s adapter names the base it needs, the random one's seed included.
    meta = json.loads((two_seeds / "seed0" / "adapter" / "hupeft_adapter.json").read_text())
    assert meta["base_model"] == {"name": "tiny-llama", "task": "causal-lm", "seed": 0}


def test_eval_refuses_a_model_without_a_tokenizer_before_any_work(two_seeds, capsys):
    pytest.importorskip("lm_eval")
    assert hupeft_main(["eval", str(two_seeds / "seed0"), "--tasks", "arc_easy"]) == 2
    assert "tiny-llama has no transformers tokenizer" in capsys.readouterr().err
    assert not (two_seeds / "seed0" / "merged").exists()


@pytest.mark.parametrize("name", ["loraga", "hybrid"])
def test_gradient_initialised_methods_need_batches_or_an_explicit_plain_start(name):
    with pytest.raises(methods.MethodError, match=r"pass init_batches=\[batch, \.\.\.\].*or init='lora'"):
        methods.apply(models.load("tiny-llama").model, name)
    adapted = methods.apply(models.load("tiny-llama").model, name, init="lora")
    assert adapted.options.init == "lora"
    assert all(float(layer.B0.abs().max()) == 0.0 for layer in adapted.adapter_layers().values())
