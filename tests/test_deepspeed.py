"""DeepSpeed ZeRO-3 through accelerate, two processes on the CPU (gloo), against one process with
the same global batch: the same trained weights, saved whole by the main process from the
partitioned parameters, one record; and the methods ZeRO-3 cannot train refused before launching."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed", reason="strategy=deepspeed needs DeepSpeed: pip install 'hupeft[deepspeed]'")

from conftest import TWO_PROCESS_BASE, assert_same_weights, saved_weights  # noqa: E402
from hupeft import distributed  # noqa: E402
from hupeft.experiment import run  # noqa: E402
from hupeft.records import read_record  # noqa: E402

# The methods ZeRO-3 trains (urnn and hybrid are refused, below). The settings of the DDP and FSDP
# tests: 8 examples, 2 per process and step, so 2 steps of a global batch of 4.
METHODS = ["lora", "full", "loraga", "boft"]
BASE = TWO_PROCESS_BASE
# Two micro-batches per step: 1 example per process (2 processes) or 2 in one process.
ACCUM = {**BASE, "method": "lora", "grad_accum": 2}
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600


def env() -> dict:
    src = str(ROOT / "src")
    return {**distributed.launch_env("deepspeed"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}




@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One ZeRO-3 launch of 2 processes of batch 2 running every method (a checkpoint after each
    step, as the DDP and FSDP tests do), and one process of batch 4 per method, here."""
    root = tmp_path_factory.mktemp("zero3")
    specs = [{"config": {**BASE, "method": m, "batch_size": 2, "processes": 2, "strategy": "deepspeed",
                         "checkpoint_every": 1}, "out": str(root / "zero3" / m)} for m in METHODS]
    specs.append({"config": {**ACCUM, "batch_size": 1, "processes": 2, "strategy": "deepspeed"},
                  "out": str(root / "zero3" / "accum")})
    (root / "runs.json").write_text(json.dumps(specs))
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(distributed.config_file("deepspeed")), "--num_processes", "2",
           "--main_process_port", str(distributed._free_port()),
           str(ROOT / "tests" / "distributed_runs.py"), str(root / "runs.json")]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    for m in METHODS:
        run({**BASE, "method": m, "batch_size": 4}, root / "one" / m, progress=False)
    run({**ACCUM, "batch_size": 2}, root / "one" / "accum", progress=False)
    return root


@pytest.mark.parametrize("method", METHODS)
def test_zero3_on_two_processes_trains_like_one_with_the_same_global_batch(launched, method):
    one, two = launched / "one" / method, launched / "zero3" / method
    ref, rec = read_record(one / "record.json"), read_record(two / "record.json")
    assert rec["status"] == "ok", rec["error"]
    assert rec["distributed"]["strategy"] == "deepspeed" and rec["distributed"]["world_size"] == 2
    assert rec["distributed"]["global_batch"] == ref["distributed"]["global_batch"] == 4
    assert rec["distributed"]["replica_checksums"] is None  # each process holds a partition
    assert len(rec["steps"]) == len(ref["steps"]) == 2
    for a, b in zip(rec["steps"], ref["steps"]):  # the engine's clipped step, with hupeft's schedule
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["lr"] == b["lr"]
    assert rec["epochs"][0]["val_loss"] == pytest.approx(ref["epochs"][0]["val_loss"], rel=1e-5)
    # Read from the gathered parameters (every process) at the epoch's end.
    assert rec["epochs"][0].get("weight_change", {}) == pytest.approx(ref["epochs"][0].get("weight_change", {}),
                                                                       rel=1e-3)
    assert rec["scores"] == ref["scores"]
    # One record, and the checkpoints (ZeRO-3's partitions, written by every process) removed.
    assert sorted(p.name for p in two.iterdir()) == ["adapter", "record.json"]
    assert_same_weights(saved_weights(two / "adapter"), saved_weights(one / "adapter"))


def test_zero3_accumulates_micro_batches_like_one_process(launched):
    """The engine steps once per global batch, on the gradient of the micro-batches' mean."""
    rec, ref = (read_record(launched / d / "accum" / "record.json") for d in ("zero3", "one"))
    assert rec["status"] == "ok", rec["error"]
    assert rec["distributed"]["global_batch"] == ref["distributed"]["global_batch"] == 4
    assert len(rec["steps"]) == len(ref["steps"]) == 2
    for a, b in zip(rec["steps"], ref["steps"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert_same_weights(saved_weights(launched / "zero3" / "accum" / "adapter"),
                        saved_weights(launched / "one" / "accum" / "adapter"))


def test_zero3_killed_after_a_mid_epoch_checkpoint_resumes_to_the_uninterrupted_result(launched, tmp_path):
    """`hupeft run --set processes=2` launches the processes itself; all exit after step 1's
    checkpoint (every process's ZeRO-3 partitions), as a preempted job would, and --resume
    continues from it."""
    cfg = {**BASE, "method": "lora", "batch_size": 2, "processes": 2, "strategy": "deepspeed", "checkpoint_every": 1}
    args = ["--model", "tiny-llama", "--method", "lora", "--benchmark", BASE["benchmark"], "--seed", str(BASE["seed"])]
    args += [x for k, v in cfg.items() if k not in ("model", "method", "benchmark", "seed")
             for x in ("--set", f"{k}={v}")]
    args += ["--out", str(tmp_path), "--quiet"]
    cli = [sys.executable, "-m", "hupeft", "run", *args]
    killed = subprocess.run(cli, env={**env(), "HUPEFT_EXIT_AFTER_STEP": "1"}, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert killed.returncode != 0 and not (tmp_path / "record.json").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoint" / "deepspeed" / "checkpoint").iterdir()) == [
        f"zero_pp_rank_{r}_mp_rank_00_{k}_states.pt" for r in (0, 1) for k in ("model", "optim")]
    resumed = subprocess.run(cli + ["--resume"], env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rec, whole = read_record(tmp_path / "record.json"), read_record(launched / "zero3" / "lora" / "record.json")
    assert rec["resumed_from_step"] == 1 and rec["steps"] == whole["steps"] and rec["scores"] == whole["scores"]
    assert_same_weights(saved_weights(tmp_path / "adapter"), saved_weights(launched / "zero3" / "lora" / "adapter"), rel=1e-6)


@pytest.mark.parametrize("method,sets,message", [
    ("urnn", [], "strategy=deepspeed cannot train urnn"),
    ("urnn-structured", [], "strategy=deepspeed cannot train urnn"),
    ("hybrid", [], "strategy=deepspeed cannot train hybrid"),
    ("lora", ["quantization=4bit"], "cannot partition a 4bit base"),
])
def test_what_zero3_cannot_train_exits_2_naming_a_strategy_that_can(method, sets, message, tmp_path, capsys):
    from hupeft.experiment import cli_main

    argv = ["--model", "tiny-llama", "--method", method, "--benchmark", "glue/sst2", "--out", str(tmp_path / "o"),
            "--set", "strategy=deepspeed", "--set", "processes=2"]
    assert cli_main(argv + [x for s in sets for x in ("--set", s)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "use strategy=fsdp" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_zero3_in_one_process_exits_2_asking_for_several(tmp_path, capsys):
    from hupeft.experiment import cli_main

    argv = ["--model", "tiny-llama", "--method", "lora", "--benchmark", "glue/sst2", "--out", str(tmp_path / "o"),
            "--set", "strategy=deepspeed"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--set processes=2" in err and len(err.splitlines()) == 1
