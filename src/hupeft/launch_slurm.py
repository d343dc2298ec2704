"""Slurm launcher: a preset's unfinished cells as sbatch arrays, one array per resource shape.

Each submission gets a folder of its own (results/<preset>/slurm/<time>-<id>/) holding, per
shape, the cells' listing and the array script, so a later submission never changes what the
queued tasks of an earlier one run. The shape of a cell (nodes, GPUs per node, CPUs, host
memory, time limit) comes from `hupeft plan`. A task runs its cell only if the cell has no
complete record yet, resumes from the cell's last checkpoint (`--requeue`: a preempted or
requeued task continues where it stopped), and a cell on several nodes is started with `srun`
running `accelerate launch` on every node, machine rank and main address taken from Slurm's
environment.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write_text
from .presets import Cell

MAIN_PORT = 29500


@dataclass(frozen=True)
class Shape:
    nodes: int
    gpus_per_node: int
    cpus_per_task: int
    mem_mb: int
    minutes: int

    @property
    def label(self) -> str:
        return f"{self.nodes}n{self.gpus_per_node}g-{self.mem_mb // 1024}G-{self.minutes}m"


@dataclass
class Options:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    throttle: int | None = None
    """At most this many tasks of an array at once (sbatch --array=...%N)."""
    cpus_per_gpu: int = 8
    time_factor: float = 2.0
    """The plan's time estimate times this, plus `time_margin_min`, is the --time asked for."""
    time_margin_min: int = 30
    max_minutes: int | None = None
    gpus: bool = True
    """False: ask for no GPU GRES (CPU-only clusters, tests)."""


def shape_of(cell: Cell, plan, hw, opts: Options) -> Shape:
    """The resources one cell's task asks for, from its plan."""
    nodes = plan.nodes
    per_node = plan.gpus_per_node if opts.gpus else 0
    cpus = max(1, opts.cpus_per_gpu * max(1, per_node))
    minutes = int(math.ceil(plan.hours * 60 * opts.time_factor)) + opts.time_margin_min
    if cell.cost_seconds:  # a preset's own measured cost wins over the FLOP estimate when larger
        minutes = max(minutes, int(math.ceil(cell.cost_seconds / 60 * opts.time_factor)) + opts.time_margin_min)
    if opts.max_minutes:
        minutes = min(minutes, opts.max_minutes)
    mem_mb = int(math.ceil(plan.cpu_memory_bytes / 2**20 / 1024)) * 1024
    return Shape(nodes, per_node, cpus, mem_mb, minutes)


def _time(minutes: int) -> str:
    days, rest = divmod(minutes, 24 * 60)
    return f"{days}-{rest // 60:02d}:{rest % 60:02d}:00"


def script(shape: Shape, listing: Path, n_tasks: int, job_name: str, opts: Options, log_dir: Path) -> str:
    """The sbatch array script for `n_tasks` cells of one shape."""
    throttle = f"%{opts.throttle}" if opts.throttle else ""
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={job_name}",
             f"#SBATCH --array=0-{n_tasks - 1}{throttle}",
             f"#SBATCH --nodes={shape.nodes}",
             "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --cpus-per-task={shape.cpus_per_task}",
             f"#SBATCH --mem={shape.mem_mb}M",
             f"#SBATCH --time={_time(shape.minutes)}",
             "#SBATCH --requeue",
             "#SBATCH --open-mode=append",
             f"#SBATCH --output={log_dir}/%A_%a.log"]
    if shape.gpus_per_node:
        lines.append(f"#SBATCH --gres=gpu:{shape.gpus_per_node}")
    for flag in ("partition", "account", "qos"):
        if getattr(opts, flag):
            lines.append(f"#SBATCH --{flag}={getattr(opts, flag)}")
    run_cell = f"{shlex.quote(sys.executable)} -m hupeft.launch_slurm --run-cell {shlex.quote(str(listing))} --index $SLURM_ARRAY_TASK_ID"
    lines += ["set -euo pipefail",
              "# A requeued task starts here again: the cell resumes from its last checkpoint, and a",
              "# cell that already has its record is not run again.",
              f"cd {shlex.quote(str(Path.cwd()))}"]
    if shape.nodes > 1:
        lines += ["export MAIN_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)",
                  f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 {run_cell}"]
    else:
        lines.append(run_cell)
    return "\n".join(lines) + "\n"


def submit(cells: list[Cell], root: Path, preset: str, opts: Options, hw, *, dry_run: bool = False,
           sbatch: str = "sbatch") -> int:
    """Write one folder for this submission and sbatch one array per shape (or print the scripts)."""
    from .grid import is_done
    from .plan import plan_cell

    todo = [c for c in cells if not is_done(c)]
    print(f"{len(cells) - len(todo)} of {len(cells)} cells already have a complete record; "
          f"{len(todo)} to submit")
    if not todo:
        return 0
    groups: dict[Shape, list[Cell]] = {}
    for cell in todo:
        p = plan_cell(cell.config, hw)
        if not p.feasible:
            print(f"hupeft grid: {cell.label} does not fit ({p.need.reason}); change its strategy or processes "
                  "(see `hupeft plan`)", file=sys.stderr)
            return 2
        groups.setdefault(shape_of(cell, p, hw, opts), []).append(cell)
    stamp = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
    folder = Path(root).resolve() / preset / "slurm" / stamp
    scripts = []
    for i, (shape, group) in enumerate(groups.items()):
        listing = folder / f"cells-{i}.json"
        entries = [{"parameters": c.parameters(), "out_dir": str(c.out_dir), "gpus": c.gpus,
                    "nodes": shape.nodes} for c in group]
        body = script(shape, listing, len(group), f"hupeft-{preset}-{shape.label}", opts, folder)
        if dry_run:
            print(f"# {len(group)} cells, {shape.label}\n{body}")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(listing, json.dumps(entries, indent=1))
        path = folder / f"array-{i}.sbatch"
        atomic_write_text(path, body)
        scripts.append(path)
    if dry_run:
        return 0
    code = 0
    for path in scripts:
        out = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True)
        if out.returncode:
            print(f"hupeft grid: sbatch {path} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            code = 1
        else:
            print(f"submitted {path} as job {out.stdout.strip()}")
    return code


def _main_address() -> str:
    addr = os.environ.get("MAIN_ADDR")
    if addr:
        return addr
    out = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def run_cell(listing: Path, index: int) -> int:
    """Run cell `index` of a listing, unless it already has a complete record. One node: through
    the notebook (papermill), as the local grid does. Several: `accelerate launch` on this node
    with its machine rank (`srun` starts one of these per node)."""
    from .config import RunConfig
    from .grid import default_notebook, execute, is_done

    entry = json.loads(Path(listing).read_text())[index]
    params = dict(entry["parameters"])
    cfg = RunConfig.from_dict({**params.pop("overrides"), **{k: params[k] for k in
                                                            ("model", "method", "benchmark", "seed", "preset")}})
    cell = Cell(cfg.preset or "", cfg, Path(entry["out_dir"]), entry["gpus"])
    nodes = int(entry.get("nodes", 1))
    if is_done(cell, notebook=nodes == 1):
        print(f"{cell.label}: already complete")
        return 0
    if nodes == 1:
        ok, error = execute(cell, default_notebook())
        if not ok:
            print(f"FAILED {cell.label}: {error}", file=sys.stderr)
        return 0 if ok else 1
    sets = [f"{k}={json.dumps(v)}" for k, v in cfg.to_dict().items()
            if k not in ("model", "method", "benchmark", "seed", "method_options")]
    sets += [f"method.{k}={json.dumps(v)}" for k, v in cfg.method_options.items()]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_machines", str(nodes), "--machine_rank", os.environ["SLURM_NODEID"],
           "--main_process_ip", _main_address(), "--main_process_port", str(MAIN_PORT),
           "--num_processes", str(cfg.processes),
           "-m", "hupeft.experiment", "--model", cfg.model, "--method", cfg.method,
           "--benchmark", cfg.benchmark, "--seed", str(cfg.seed), "--out", str(cell.out_dir), "--resume", "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, check=False).returncode


def cli_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m hupeft.launch_slurm",
                                description="Run one cell of a submission's listing (what an array task calls).")
    p.add_argument("--run-cell", required=True, help="a cells-<k>.json listing")
    p.add_argument("--index", type=int, required=True, help="the task's index in it")
    args = p.parse_args(argv)
    return run_cell(Path(args.run_cell), args.index)


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
