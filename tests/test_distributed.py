"""Two processes on gloo through accelerate (DDP and FSDP2) against one process with the same global
batch: the same trained weights, one record, a divergence on one process stopping both, and a
sharded mid-epoch checkpoint resumed to the uninterrupted result; FSDP2 over a 4-bit base."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TWO_PROCESS_BASE, assert_same_weights, saved_weights
from hupeft import distributed
from hupeft.experiment import run
from hupeft.records import read_record

METHODS = ["full", "lora", "loraga", "boft", "urnn", "urnn-structured", "hybrid"]
# Each trained run by name: the method and its options (the hybrid's default lambda rule gathers
# whole weights under FSDP; the paper's rule sums squared gradient shards over the processes).
RUNS = {**{m: (m, {}) for m in METHODS}, "hybrid-paper": ("hybrid", {"lambda_rule": "paper"})}
STRATEGIES = ["ddp", "fsdp"]
# 8 examples, 2 per process and step: 2 steps of a global batch of 4; a checkpoint after step 1.
BASE = TWO_PROCESS_BASE
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600


def env() -> dict:
    src = str(ROOT / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def cli(args: list[str], extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """`hupeft run` as a user types it (it launches the processes itself)."""
    return subprocess.run([sys.executable, "-m", "hupeft", "run", *args, "--quiet"], env={**env(), **(extra_env or {})},
                          capture_output=True, text=True, timeout=TIMEOUT)


def as_args(cfg: dict) -> list[str]:
    out = ["--model", cfg["model"], "--method", cfg["method"], "--benchmark", cfg["benchmark"],
           "--seed", str(cfg["seed"])]
    for k, v in cfg.items():
        if k not in ("model", "method", "benchmark", "seed"):
            out += ["--set", f"{k}={v}"]
    return out




def trained(a: dict, start: dict) -> bool:
    return any(not torch.equal(a[k], start[k]) for k in a)


# 9 examples, 2 processes of 2: the last global batch has one example, so process 1 runs a
# stand-in row weighted 0.
UNEVEN = {**BASE, "method": "lora", "n_train": 9}
# A generation benchmark on generated data, 5 examples over 2 processes (2 and 3): FSDP pads the
# first process's share with a row whose completion is dropped. Short completions, cut at "O":
# the tiny model writes one early in examples 0 and 1 (process 0's batch) but not in example 2
# (in process 1's first batch), so under FSDP process 0 would run out of forwards first, were
# generation not kept in step.
GEN = {**BASE, "method": "lora", "benchmark": "mtbench", "data": "synthetic", "n_eval": 5, "max_len": 144,
       "max_new_tokens": 6, "eval_batch_size": 2, "checkpoint_every": 1}
GEN_STOP = ["O"]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """In one launch of 2 processes of batch 2: every method under DDP and FSDP, the uneven
    case, and a NaN on process 1 only; and one process of batch 4 (the same global batch) per
    method and for the uneven case, in this process."""
    root = tmp_path_factory.mktemp("dist")
    two = {"batch_size": 2, "processes": 2}
    specs = [{"config": {**BASE, **two, "method": m, "method_options": o, "strategy": s, "checkpoint_every": 1},
              "out": str(root / s / name)} for s in STRATEGIES for name, (m, o) in RUNS.items()]
    specs.append({"config": {**UNEVEN, **two, "strategy": "ddp"}, "out": str(root / "uneven")})
    specs.append({"config": {**BASE, **two, "method": "boft", "strategy": "fsdp"}, "out": str(root / "nan"),
                  "env": {"HUPEFT_INJECT_NAN": "1:2"}})  # process 1, optimiser step 2
    specs += [{"config": {**GEN, **two, "strategy": s}, "out": str(root / "gen" / s), "spy": True, "stop": GEN_STOP}
              for s in STRATEGIES]
    (root / "runs.json").write_text(json.dumps(specs))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(distributed.config_file("ddp")),
           "--num_processes", "2", "--main_process_port", str(distributed._free_port()),
           str(ROOT / "tests" / "distributed_runs.py"), str(root / "runs.json")]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    for name, (m, o) in RUNS.items():
        run({**BASE, "method": m, "method_options": o, "batch_size": 4}, root / "one" / name, progress=False)
    run({**UNEVEN, "batch_size": 4}, root / "one" / "uneven", progress=False)
    from hupeft.benchmarks.translation import Translation

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Translation, "stop", tuple(GEN_STOP))
        run({**GEN, "batch_size": 4}, root / "one" / "gen", progress=False)
    return root


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("method", RUNS)
def test_two_processes_train_like_one_with_the_same_global_batch(launched, method, strategy):
    one, two = launched / "one" / method, launched / strategy / method
    ref, rec = read_record(one / "record.json"), read_record(two / "record.json")
    assert rec["status"] == "ok", rec["error"]
    assert rec["distributed"]["world_size"] == 2 and rec["distributed"]["strategy"] == strategy
    assert rec["distributed"]["per_device_batch"] == 2 and rec["distributed"]["global_batch"] == 4
    assert ref["distributed"]["world_size"] == 1 and ref["distributed"]["global_batch"] == 4
    assert len(rec["steps"]) == len(ref["steps"]) == 2
    for a, b in zip(rec["steps"], ref["steps"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    if method.startswith("hybrid"):  # lambda from globally reduced gradient norms: the one process's values
        for layer, lams in ref["hybrid_lambda"].items():
            assert rec["hybrid_lambda"][layer] == pytest.approx(lams, abs=1e-5)
    if strategy == "ddp":  # every replica ended with the same weights
        rows = rec["distributed"]["replica_checksums"]
        assert len(rows) == 2 and rows[0] == rows[1]
    assert rec["epochs"][0]["val_loss"] == pytest.approx(ref["epochs"][0]["val_loss"], rel=1e-5)
    assert rec["scores"] == ref["scores"]
    assert not (two / "checkpoint").exists() and not (two / ".checkpoint-partial").exists()
    assert_same_weights(saved_weights(two / "adapter"), saved_weights(one / "adapter"))


def test_saved_adapter_loads_back_and_scores_the_same(launched):
    """FSDP's adapter, saved by the main process from the gathered state, on a fresh base model."""
    from hupeft import benchmarks, data, methods, models
    from hupeft.config import RunConfig, validate

    rec = read_record(launched / "fsdp" / "hybrid" / "record.json")
    cfg = validate(RunConfig.from_dict({**BASE, "method": "hybrid"}))
    loaded = models.load("tiny-llama", task=cfg.task, seed=cfg.seed)
    before = saved_weights(launched / "fsdp" / "hybrid" / "adapter")
    adapted = methods.load(loaded.model, launched / "fsdp" / "hybrid" / "adapter")
    assert_same_weights({k: v for k, v in adapted.adapter_state().items() if k in before}, before, rel=0)
    bench = benchmarks.get(cfg.benchmark)
    scores = bench.evaluate(adapted.model.eval(), loaded.tokenizer, data.load_splits(bench, cfg).eval,
                            task=cfg.task, batch_size=cfg.eval_batch_size, progress=False)
    assert scores == rec["scores"]


def test_uneven_last_batch_completes_with_the_weights_of_one_process(launched):
    rec = read_record(launched / "uneven" / "record.json")
    assert rec["status"] == "ok" and rec["distributed"]["world_size"] == 2 and len(rec["steps"]) == 3
    rows = rec["distributed"]["replica_checksums"]
    assert len(rows) == 2 and rows[0] == rows[1]
    ref = read_record(launched / "one" / "uneven" / "record.json")
    for a, b in zip(rec["steps"], ref["steps"], strict=True):  # the stand-in row adds nothing
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert_same_weights(saved_weights(launched / "uneven" / "adapter"), saved_weights(launched / "one" / "uneven" / "adapter"))


def test_nan_on_one_process_stops_both_and_records_diverged(launched):
    """Both processes left the run together (the launch went on to its end and exited 0)."""
    out = launched / "nan"
    rec = read_record(out / "record.json")
    assert rec["status"] == "diverged" and "1 of 2 processes" in rec["error"], rec["error"]
    assert len(rec["steps"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["record.json"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_evaluation_is_sharded_and_gives_one_process_scores_and_generations(launched, strategy):
    """Each process ran its share of the eval examples; the main process scored the outputs
    gathered back into the examples' order: the one process's scores, completions and counts."""
    for name, counts in (("lora", [2, 2]), ("gen", [2, 3])):  # glue/sst2 (4 examples), mtbench (5)
        two = launched / strategy / "lora" if name == "lora" else launched / "gen" / strategy
        rec, ref = read_record(two / "record.json"), read_record(launched / "one" / name / "record.json")
        assert rec["status"] == "ok", rec["error"]
        assert rec["distributed"]["eval_examples"] == counts and "eval_examples" not in ref["distributed"]
        assert sum(counts) == rec["config"]["n_eval"] == rec["config"]["data"]["n_eval"]
        assert rec["scores"] == ref["scores"] and rec["metric_signatures"] == ref["metric_signatures"]
        assert rec["config"]["data"]["truncated"] == ref["config"]["data"]["truncated"]
        assert rec["config"]["data"]["longest_tokens"] == ref["config"]["data"]["longest_tokens"]
    gen, ref_gen = read_jsonl(launched / "gen" / strategy / "generations.jsonl"), read_jsonl(
        launched / "one" / "gen" / "generations.jsonl")
    assert len(gen) == 5 and gen == ref_gen  # prompts, completions and references, in order
    assert len({len(row["generation"]) for row in gen}) > 1  # completions cut at different steps


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_only_the_main_process_writes_the_record_outputs_adapter_and_checkpoint(launched, strategy):
    """Process 1 noted every such write it made (tests/distributed_runs.py), and a record it wrote
    would have landed a second after the main process's, without the scores it does not compute."""
    out = launched / "gen" / strategy
    spy_log = out.parent / f"{strategy}.spy-rank1.jsonl"
    writes = [json.loads(line) for line in spy_log.read_text().splitlines()] if spy_log.exists() else []
    own = [w for w in writes if Path(w["path"]).name == "rng1.pt"]
    assert writes == own, writes  # under FSDP, its own RNG state in the checkpoint only
    assert bool(own) == (strategy == "fsdp")  # the spy does see that process's writes
    rec = read_record(out / "record.json")
    assert rec["scores"] and rec["distributed"]["eval_examples"] == [2, 3]
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "generations.jsonl", "record.json"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def launch_runs(specs: list[dict], folder: Path, strategy: str = "ddp",
                timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """tests/distributed_runs.py over `specs` in one launch of 2 processes."""
    (folder / "runs.json").write_text(json.dumps(specs))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(distributed.config_file(strategy)),
           "--num_processes", "2", "--main_process_port", str(distributed._free_port()),
           str(ROOT / "tests" / "distributed_runs.py"), str(folder / "runs.json")]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("strategy,rank", [("ddp", 1), ("fsdp", 1), ("fsdp", 0)])
def test_an_exception_on_one_process_ends_the_launch_with_one_failed_record_naming_it(tmp_path, strategy, rank):
    """The failing process leaves its error and exits; the other's collective then fails at once
    (not at the process group's timeout, 30 minutes), and the main process's record names the
    process that failed first and its exception. The main process is kept busy over each batch
    when process 1 fails: the launcher's SIGTERM reaches it before its collective fails."""
    out = tmp_path / "run"
    spec = {"config": {**BASE, "method": "lora", "batch_size": 2, "processes": 2, "strategy": strategy,
                       "checkpoint": False}, "out": str(out), "env": {"HUPEFT_INJECT_ERROR": f"{rank}:2"},
            "slow_main": 1.0 if rank == 1 else 0}
    done = launch_runs([spec], tmp_path, strategy, timeout=120)  # a hang would last the group's 30 minutes
    assert done.returncode != 0
    rec = read_record(out / "record.json")
    assert rec["status"] == "failed" and len(rec["steps"]) == 1
    first = rec["error"].splitlines()[0]
    named = "rank 1 of 2 failed first: " if rank == 1 else "rank 0 of 2: "
    assert first == named + "RuntimeError: injected error at step 2 (HUPEFT_INJECT_ERROR)", rec["error"]
    assert sorted(p.name for p in out.iterdir()) == ["record.json"]  # no process's error file is left


def test_fsdp_killed_after_a_mid_epoch_checkpoint_resumes_to_the_uninterrupted_result(launched, tmp_path):
    """`hupeft run --set processes=2` launches the processes itself; all exit after step 1's
    checkpoint, as a preempted job would, and --resume continues from it."""
    cfg = {**BASE, "method": "hybrid", "batch_size": 2, "processes": 2, "strategy": "fsdp", "checkpoint_every": 1}
    args = as_args(cfg) + ["--out", str(tmp_path)]
    killed = cli(args, {"HUPEFT_EXIT_AFTER_STEP": "1"})
    assert killed.returncode != 0 and not (tmp_path / "record.json").exists()
    assert (tmp_path / "checkpoint" / "state.pt").exists() and (tmp_path / "checkpoint" / "sharded").is_dir()
    resumed = cli(args + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rec, whole = read_record(tmp_path / "record.json"), read_record(launched / "fsdp" / "hybrid" / "record.json")
    assert rec["resumed_from_step"] == 1 and rec["resumed_from_epoch"] == 0
    assert rec["steps"] == whole["steps"] and rec["hybrid_lambda"] == whole["hybrid_lambda"]
    assert rec["scores"] == whole["scores"]
    assert_same_weights(saved_weights(tmp_path / "adapter"), saved_weights(launched / "fsdp" / "hybrid" / "adapter"), rel=1e-6)


# Every adapter method on a 4-bit NF4 base (full fine-tuning refuses one), QLoRA-style FSDP.
QUANTIZED = ["lora", "loraga", "boft", "urnn", "urnn-structured", "hybrid"]


def test_fsdp_on_a_4bit_base_trains_like_one_process(tmp_path):
    """The packed weights stored as bf16 are sharded with the rest; every adapter ends with one
    process's weights (that process stores them as uint8: the same NF4 codes)."""
    q = {**BASE, "quantization": "4bit"}
    specs = [{"config": {**q, "method": m, "batch_size": 2, "processes": 2, "strategy": "fsdp", "checkpoint": False},
              "out": str(tmp_path / "fsdp" / m)} for m in QUANTIZED]
    (tmp_path / "runs.json").write_text(json.dumps(specs))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(distributed.config_file("fsdp")),
           "--num_processes", "2", "--main_process_port", str(distributed._free_port()),
           str(ROOT / "tests" / "distributed_runs.py"), str(tmp_path / "runs.json")]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    for m in QUANTIZED:
        ref = run({**q, "method": m, "batch_size": 4, "checkpoint": False}, tmp_path / "one" / m, progress=False)
        rec = read_record(tmp_path / "fsdp" / m / "record.json")
        assert rec["status"] == "ok", f"{m}: {rec['error']}"
        assert rec["distributed"]["strategy"] == "fsdp" and rec["distributed"]["world_size"] == 2
        assert ref["status"] == "ok" and ref["distributed"]["world_size"] == 1
        for a, b in zip(rec["steps"], ref["steps"], strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), m
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), m
        assert rec["scores"] == ref["scores"], m
        # Measured against W0 dequantized from the gathered packed weights (their state kept by the layer).
        moved, ref_moved = rec["epochs"][0]["weight_change"], ref["epochs"][0]["weight_change"]
        assert moved.keys() == ref_moved.keys() and all(v > 0 for v in ref_moved.values()), m
        assert moved == pytest.approx(ref_moved, rel=1e-3), m
        assert_same_weights(saved_weights(tmp_path / "fsdp" / m / "adapter"), saved_weights(tmp_path / "one" / m / "adapter"))


def test_a_failure_on_another_process_reaches_stderr(tmp_path, capsys, monkeypatch):
    """Only the main process writes the record, whose error is then just a broken connection: the
    process that failed first prints its own error, with its rank."""
    from hupeft import experiment

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(experiment, "run", lambda *a, **k: {"status": "failed", "error": "ValueError: bad shard\nTraceback"})
    argv = ["--model", "tiny-llama", "--method", "lora", "--benchmark", "glue/sst2", "--out", str(tmp_path / "o")]
    assert experiment.cli_main(argv) == 1
    assert "hupeft run (rank 1): ValueError: bad shard" in capsys.readouterr().err


@pytest.mark.parametrize("sets,message", [
    (["strategy=zero"], "strategy must be one of"),
    (["processes=0"], "processes must be >= 1"),
    (["strategy=single", "processes=2"], "strategy=single runs one process"),
    pytest.param(["strategy=fsdp_offload"], "needs a GPU", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="a GPU is here")),
])
def test_bad_strategy_or_processes_exit_2_before_launching(sets, message, tmp_path, capsys):
    from hupeft.experiment import cli_main

    argv = ["--model", "tiny-llama", "--method", "lora", "--benchmark", "glue/sst2", "--out", str(tmp_path / "o")]
    assert cli_main(argv + [x for s in sets for x in ("--set", s)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_deepspeed_without_the_extra_names_it(tmp_path, capsys, monkeypatch):
    import importlib.util

    from hupeft.experiment import cli_main

    find = importlib.util.find_spec  # the test extra installs DeepSpeed: hide it
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find(name, *a))
    argv = ["--model", "tiny-llama", "--method", "lora", "--benchmark", "glue/sst2", "--out", str(tmp_path / "o"),
            "--set", "strategy=deepspeed"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'hupeft[deepspeed]'" in err and len(err.splitlines()) == 1


def test_notebook_launch_arguments_give_back_the_config(tmp_path):
    """What notebook.run hands to `accelerate launch -m hupeft.experiment` parses to the same config."""
    from hupeft import notebook
    from hupeft.config import RunConfig, apply_overrides, validate
    from hupeft.experiment import parser

    cfg = validate(RunConfig(model="tiny-llama", method="hybrid", benchmark="glue/sst2", seed=2, strategy="fsdp",
                             checkpoint_every=3, lr=3e-4, keep_checkpoint=True, data_dir=None,
                             method_options={"lambda_rule": "paper", "r": 4}))
    args = parser().parse_args(notebook.command_line(cfg, tmp_path))
    back = RunConfig(model=args.model, method=args.method, benchmark=args.benchmark, seed=args.seed)
    assert validate(apply_overrides(back, args.sets)) == cfg


def test_humaneval_runs_the_completions_on_the_main_process_only(monkeypatch):
    """On process 1 of 2 (its share's completions gathered by the main process: None here), the
    benchmark generates its share and returns no scores, and nothing runs in the sandbox."""
    from hupeft import models
    from hupeft.benchmarks import HumanEval, humaneval_exec

    ran, shared = [], []
    monkeypatch.setattr(humaneval_exec, "evaluate_samples", lambda *a, **k: ran.append(a) or [])
    monkeypatch.setattr(distributed, "gather_object", lambda obj: shared.append(obj))  # not the main process
    loaded = models.load("tiny-llama")
    examples = HumanEval().load("test", n=3).examples
    got = HumanEval().evaluate(loaded.model, loaded.tokenizer, examples, max_new_tokens=2, n_samples=10,
                               progress=False, shard=distributed.EvalShard(rank=1, world=2))
    assert got is None and ran == []
    assert [len(rows) for rows, _ in shared] == [2, 2]  # its share (examples 1 and 2), greedy then sampled


def _race_to_build(cache: str, barrier, results) -> None:
    """One of two processes building the same cache folder at once (forked: the monkeypatched
    build is inherited): each builds its own copy, and both publish once both have built."""
    from hupeft import models

    def build(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_text(str(os.getpid()))
        barrier.wait(timeout=60)

    os.environ["HUPEFT_CACHE"] = cache
    models._build_smollm2 = build
    got = models.smollm2_checkpoint()
    first = (got / "model.safetensors").read_text()
    barrier.wait(timeout=60)  # the other process has published (or given up) too
    results.put((first, (got / "model.safetensors").read_text()))


def test_two_processes_building_one_cache_folder_at_once_share_the_first_build(tmp_path):
    """An empty HUPEFT_CACHE: the loser of the race keeps the winner's folder (never deleting
    what the winner may be reading) and drops its own copy."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_to_build, args=(str(tmp_path), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    seen = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len({stamp for pair in seen for stamp in pair}) == 1, seen  # one build, in place throughout
    assert sorted(os.listdir(tmp_path / "models")) == ["smollm2-135m-fp32"]
