"""The Slurm launcher against a real scheduler: a one-node cluster started by the test itself.

The smoke preset goes in as arrays through `hupeft grid --launcher slurm`, every record comes
back ok, a second submission runs nothing, and a task killed with scancel mid-run completes
from its checkpoint once resubmitted. Skipped, with the reason, where Slurm and munge are not
installed or the test is not root (.ci/run installs them).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hupeft import launch_slurm, plan, presets
from hupeft.records import read_record

from slurm_cluster import Cluster, unavailable

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = unavailable()
    if why:
        pytest.skip(why)
    c = Cluster(tmp_path_factory.mktemp("slurm"), gpus=2)
    c.start()
    yield c
    c.stop()


def grid(cluster: Cluster, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**cluster.env, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "hupeft", "grid", "--launcher", "slurm", "--gpus-per-node", "2",
                           "--cpus-per-gpu", "1", *args], capture_output=True, text=True, env=env, cwd=cwd)


def submissions(root: Path, preset: str) -> list[Path]:
    return sorted(p for p in (root / preset / "slurm").glob("*") if p.is_dir())


def test_smoke_preset_as_arrays_then_nothing_to_rerun(cluster, tmp_path):
    results = tmp_path / "results"
    out = grid(cluster, "--preset", "smoke", "--results", str(results), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "0 of 14 cells already have a complete record; 14 to submit" in out.stdout
    [first] = submissions(results, "smoke")
    scripts = sorted(first.glob("array-*.sbatch"))
    assert scripts and len(list(first.glob("cells-*.json"))) == len(scripts)
    text = scripts[0].read_text()
    for flag in ("--gres=gpu:1", "--nodes=1", "--requeue", "--time=", "--mem=", "--cpus-per-task=1"):
        assert flag in text
    cluster.wait_idle(timeout=900)
    cells = presets.expand(presets.load_preset("smoke"), root=results)
    records = [read_record(c.out_dir / "record.json") for c in cells]
    assert [r["status"] for r in records] == ["ok"] * 14, [r.get("error") for r in records]
    assert all((c.out_dir / "run.ipynb").exists() for c in cells)

    again = grid(cluster, "--preset", "smoke", "--results", str(results), cwd=tmp_path)
    assert again.returncode == 0 and "14 of 14 cells already have a complete record; 0 to submit" in again.stdout
    assert submissions(results, "smoke") == [first] and not cluster.jobs()


def test_cancelled_task_resumes_from_its_checkpoint(cluster, tmp_path):
    preset = {"description": "one slow cell", "seeds": [0], "methods": ["lora"],
              "defaults": {"epochs": 40, "n_train": 64, "n_val": 4, "n_eval": 4, "max_len": 144, "batch_size": 4,
                           "max_new_tokens": 4, "checkpoint": True},
              "models": {"tiny-llama": {"benchmarks": ["mtbench"]}}}
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(preset))
    results = tmp_path / "results"
    out = grid(cluster, "--preset", str(path), "--results", str(results), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split()[-1]
    [cell] = presets.expand(presets.load_preset(str(path)), root=results)
    state = cell.out_dir / "checkpoint" / "state.pt"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert state.exists(), "no checkpoint within 5 minutes"
    subprocess.run(["scancel", job], env=cluster.env, check=True)
    cluster.wait_idle(timeout=60)
    assert not (cell.out_dir / "record.json").exists() or read_record(cell.out_dir / "record.json")["status"] != "ok"

    out = grid(cluster, "--preset", str(path), "--results", str(results), cwd=tmp_path)
    assert out.returncode == 0 and "1 to submit" in out.stdout, out.stdout + out.stderr
    cluster.wait_idle(timeout=600)
    record = read_record(cell.out_dir / "record.json")
    assert record["status"] == "ok" and record["resumed_from_epoch"] >= 1
    assert len(record["epochs"]) == 40
    assert len(submissions(results, "slow")) == 2  # each submission in a folder of its own


def test_dry_run_prints_one_script_per_shape_without_submitting(tmp_path, capsys):
    """Shapes from the plan: the paper preset's cells need 1, 2, 4, 8, 24 and 64 GPUs."""
    from hupeft import grid as grid_module

    code = grid_module.cli_main(["--preset", "paper", "--launcher", "slurm", "--dry-run", "--results",
                                 str(tmp_path), "--models", "meta-llama/Llama-3.1-405B", "--benchmarks", "glue/sst2",
                                 "--partition", "gpu", "--account", "lab", "--qos", "high", "--throttle", "4"])
    out = capsys.readouterr().out
    assert code == 0
    scripts = out.split("#!/bin/bash")[1:]
    nodes = sorted({s.split("--nodes=")[1].split()[0] for s in scripts})
    assert nodes == ["1", "3", "8"]
    multi = next(s for s in scripts if "--nodes=8" in s)
    assert "srun" in multi and "scontrol show hostnames" in multi
    for s in scripts:
        assert "--partition=gpu" in s and "--account=lab" in s and "--qos=high" in s and "%4" in s
        assert "--gres=gpu:8" in s and "--requeue" in s and "--time=" in s and "--mem=" in s
    assert not (tmp_path / "paper").exists()


def test_cells_with_a_complete_record_are_not_submitted(tmp_path, capsys):
    from hupeft.records import write_record

    cells = presets.expand(presets.load_preset("smoke"), root=tmp_path)
    done = cells[0]
    done.out_dir.mkdir(parents=True)
    (done.out_dir / "run.ipynb").write_text("{}")
    write_record({"schema_version": 1, "status": "ok", "error": None, "config": done.config.to_dict(), "params": {},
                  "epochs": [], "scores": {}, "metric_signatures": {}, "hybrid_lambda": None, "steps": [],
                  "environment": {}, "started_at": 0, "finished_at": 0}, done.out_dir / "record.json")
    hw = plan.Hardware(gpus_per_node=2)
    assert launch_slurm.submit(cells, tmp_path, "smoke", launch_slurm.Options(cpus_per_gpu=1), hw, dry_run=True) == 0
    out = capsys.readouterr().out
    assert "1 of 14 cells already have a complete record; 13 to submit" in out and "--array=0-12" in out


def test_multi_node_task_launches_accelerate_with_slurm_rank(tmp_path, monkeypatch):
    """What each node of a multi-node cell runs: accelerate launch with its machine rank and the
    first host as main address, taken from Slurm's environment."""
    cells = presets.expand(presets.load_preset("paper"), models=["meta-llama/Llama-3.1-405B"], methods=["full"],
                           benchmarks=["glue/sst2"], seeds=[0], root=tmp_path)
    listing = tmp_path / "cells.json"
    listing.write_text(json.dumps([{"parameters": c.parameters(), "out_dir": str(c.out_dir), "gpus": c.gpus,
                                    "nodes": 8} for c in cells]))
    seen = {}

    def fake_run(cmd, check=False):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setenv("SLURM_NODEID", "3")
    monkeypatch.setenv("MAIN_ADDR", "node017")
    monkeypatch.setattr(launch_slurm.subprocess, "run", fake_run)
    assert launch_slurm.run_cell(listing, 0) == 0
    cmd = seen["cmd"]
    at = {k: cmd[cmd.index(k) + 1] for k in ("--num_machines", "--machine_rank", "--main_process_ip",
                                             "--num_processes", "--out")}
    assert at == {"--num_machines": "8", "--machine_rank": "3", "--main_process_ip": "node017",
                  "--num_processes": "64", "--out": str(cells[0].out_dir)}
    assert "--resume" in cmd and "strategy=\"fsdp\"" in cmd


def test_shape_comes_from_the_plan():
    cells = presets.expand(presets.load_preset("paper"), models=["bigscience/bloomz-7b1"], methods=["lora", "full"],
                           benchmarks=["gsm8k"], seeds=[0])
    hw = plan.Hardware()
    shapes = {c.config.method: launch_slurm.shape_of(c, plan.plan_cell(c.config, hw), hw, launch_slurm.Options())
              for c in cells}
    assert shapes["lora"].gpus_per_node == 1 and shapes["full"].gpus_per_node == 2
    assert shapes["full"].cpus_per_task == 16 and shapes["full"].nodes == 1
    assert shapes["lora"].minutes > 30 and shapes["lora"].mem_mb >= 2048
