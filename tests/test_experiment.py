"""The experiment engine: records, determinism, divergence, resume, and the CLI's refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hupeft.config import RunConfig
from hupeft.experiment import cli_main, run
from hupeft.records import EPOCH_FIELDS, REQUIRED, load_all, read_record

TIMING = {"seconds", "tokens_per_second", "peak_memory_bytes"}


def small(**kw) -> RunConfig:
    base = dict(model="tiny-bert", method="lora", benchmark="glue/sst2", seed=3, epochs=2, n_train=12,
                n_val=4, n_eval=8, batch_size=4, max_len=48, lr=1e-3, init_batches=2)
    base.update(kw)
    return RunConfig(**base)


def strip_timing(rec: dict) -> dict:
    rec = json.loads(json.dumps(rec))
    for key in ("environment", "started_at", "finished_at", "resumed_from_epoch", "resumed_from_step"):
        rec.pop(key, None)
    for ep in rec["epochs"]:
        for k in TIMING:
            ep.pop(k, None)
    return rec


@pytest.mark.parametrize("method", ["lora", "hybrid", "hybrid-paper", "urnn-structured"])
def test_record_has_every_field(method, tmp_path):
    rec = run(small(method=method), tmp_path, progress=False)
    assert rec["status"] == "ok", rec["error"]
    on_disk = read_record(tmp_path / "record.json")
    assert set(REQUIRED) <= set(on_disk)
    assert len(on_disk["epochs"]) == 2
    for ep in on_disk["epochs"]:
        assert set(EPOCH_FIELDS) <= set(ep)
        assert ep["memory_kind"] == "cpu_peak_rss" and ep["peak_memory_bytes"] > 0
    assert on_disk["params"]["trainable"] < on_disk["params"]["total"]
    assert set(on_disk["scores"]) == {"accuracy"}
    assert on_disk["config"]["data"]["sources"]["train"]
    assert on_disk["environment"]["packages"]["torch"]
    if method.startswith("hybrid"):
        # Every variant records lambda per layer per step, and each branch's movement per layer per epoch.
        assert on_disk["config"]["method_options"]["lambda_rule"] == {"hybrid": "slope"}.get(method, "paper")
        lam = on_disk["hybrid_lambda"]
        steps = len(on_disk["steps"])
        assert lam and all(len(v) == steps for v in lam.values())
        # before_step ran: every layer's lambda left its start (0.5) at the first step.
        assert all(v[0] != on_disk["config"]["method_options"]["lambda_init"] for v in lam.values())
        for ep in on_disk["epochs"]:
            assert "orthogonality_error" in ep
            assert ep["branch_delta"].keys() == ep["branch_change"].keys() == lam.keys()
    elif method.startswith("urnn"):
        assert on_disk["config"]["method_options"]["variant"] == "structured"
        assert on_disk["hybrid_lambda"] is None
        for ep in on_disk["epochs"]:  # how far U moved, and its unitarity error, every epoch
            assert ep["unitary_distance"] and ep["orthogonality_error"] < 1e-4
    else:
        assert on_disk["hybrid_lambda"] is None
    frame = load_all(tmp_path)
    assert len(frame) == 1 and frame.loc[0, "method"] == method


def test_same_seed_same_record(tmp_path):
    a = run(small(), tmp_path / "a", progress=False)
    b = run(small(), tmp_path / "b", progress=False)
    assert a["status"] == "ok"
    assert strip_timing(a) == strip_timing(b)


def test_injected_nan_diverges_and_keeps_the_record(tmp_path):
    rec = run(small(inject_nan_step=2), tmp_path, progress=False)
    assert rec["status"] == "diverged"
    assert "non-finite loss" in rec["error"]
    assert read_record(tmp_path / "record.json")["status"] == "diverged"


def test_killed_after_epoch_one_and_resumed_matches_uninterrupted(tmp_path):
    args = ["--model", "tiny-bert", "--method", "boft", "--benchmark", "glue/sst2", "--seed", "1",
            "--set", "epochs=2", "--set", "n_train=12", "--set", "n_val=4", "--set", "n_eval=8",
            "--set", "max_len=48", "--set", "lr=1e-3", "--quiet"]
    env = {**os.environ, "HUPEFT_EXIT_AFTER_EPOCH": "1"}
    cut = tmp_path / "cut"
    killed = subprocess.run([sys.executable, "-m", "hupeft", "run", *args, "--out", str(cut)], env=env,
                            capture_output=True, text=True)
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert not (cut / "record.json").exists() and (cut / "checkpoint" / "state.pt").exists()
    assert cli_main(args + ["--out", str(cut), "--resume"]) == 0
    assert cli_main(args + ["--out", str(tmp_path / "whole")]) == 0
    resumed = read_record(cut / "record.json")
    whole = read_record(tmp_path / "whole" / "record.json")
    assert resumed["resumed_from_epoch"] == 1
    assert strip_timing(resumed) == strip_timing(whole)


BAD = [
    (["--method", "dora"], "unknown method 'dora'"),
    (["--model", "no-such-model"], "unknown model"),
    (["--benchmark", "glue/nope"], "benchmark"),
    (["--set", "method.r=0"], "must be > 0"),
    (["--method", "boft", "--set", "method.block_size=7"], "block"),
    (["--set", "quantization=2bit"], "quantization must be none, 4bit or 8bit"),
    (["--set", "epochs=-1"], "epochs must be >= 0"),
    (["--set", "learning_rate=1e-4"], "unknown --set key 'learning_rate'"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(extra, message, tmp_path, capsys):
    base = {"--model": "tiny-llama", "--method": "lora", "--benchmark": "gsm8k"}
    argv = []
    for flag, value in base.items():
        if flag not in extra:
            argv += [flag, value]
    out = tmp_path / "out"
    assert cli_main(argv + extra + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_help_documents_every_set_key(capsys):
    import dataclasses

    with pytest.raises(SystemExit):
        cli_main(["--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(RunConfig):
        assert f.name in text
