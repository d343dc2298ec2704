"""The local grid: a preset's cells executed here with papermill (`hupeft grid`, `hupeft reproduce`).

A preset (YAML in hupeft/presets/, expanded by hupeft.presets) names models, their benchmarks,
methods, seeds and settings. Each cell (model x benchmark x method x seed) is one papermill
execution of notebooks/run.ipynb into results/<preset>/<model>/<benchmark>/<method>/seed<k>/,
which writes record.json beside the executed notebook. `--launcher slurm` hands the cells to
hupeft.launch_slurm instead.

Settings are merged in this order, later wins: preset defaults, benchmark_settings,
the model's settings, method_settings, the model's own method_settings, then --set on the
command line. `method_seeds` gives a method its own seeds (a subset of `seeds`, for a variant
shown beside the main comparison at less cost); --seeds replaces every method's.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import sys
import time
from pathlib import Path

from .executor import execute_notebook
from .presets import Cell, GridError, cell_dir, expand, load_preset, preset_names  # noqa: F401  (re-exported)
from .records import RECORD_NAME, read_record

NOTEBOOK_NAME = "run.ipynb"
PARTIAL_NAME = ".run.partial.ipynb"  # papermill writes here; renamed to NOTEBOOK_NAME when it ends


def is_done(cell: Cell, notebook: bool = True) -> bool:
    """A complete record (ok or diverged) written with exactly this cell's parameters, beside the
    executed notebook. The record is written before the notebook's last cells finish, so a grid
    killed in between leaves a partial notebook: that cell is not done and runs again. A cell run
    across nodes has no notebook (`accelerate launch` runs it): `notebook=False` asks for the
    record alone."""
    if notebook and ((cell.out_dir / PARTIAL_NAME).exists() or not (cell.out_dir / NOTEBOOK_NAME).exists()):
        return False
    path = cell.out_dir / RECORD_NAME
    try:
        rec = read_record(path)
    except (OSError, ValueError):
        return False
    if rec.get("status") not in ("ok", "diverged"):
        return False
    want = cell.config.to_dict()
    got = rec.get("config", {})
    for key, value in want.items():
        if key == "method_options":
            if any(got.get(key, {}).get(k) != v for k, v in value.items()):
                return False
        elif key == "data":  # a record keeps the data setting as data.requested, beside what served it
            kept = got.get(key)
            if (kept.get("requested") if isinstance(kept, dict) else kept) != value:
                return False
        elif got.get(key) != value:
            return False
    return True


def execute(cell: Cell, notebook: Path, timeout: float | None = None,
            env: dict[str, str] | None = None) -> tuple[bool, str]:
    """Run one cell's notebook with papermill, in a process of its own (hupeft.executor);
    True on a record with status ok/diverged. A cell that ends without one gets a `failed`
    record with the error, so the book lists it."""
    out_dir = cell.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Executed into a hidden temporary name, renamed when papermill is done; one left by a
    # killed grid is simply overwritten.
    partial = out_dir / PARTIAL_NAME
    # A stale record from older parameters must not survive a failed re-run.
    stale = out_dir / RECORD_NAME
    if stale.exists():
        stale.unlink()
    for leftover in out_dir.glob(".*.tmp"):  # an atomic write cut short by a kill
        leftover.unlink()
    error = execute_notebook(notebook, partial, cell.parameters(), cwd=out_dir, env=env, timeout=timeout)
    if partial.exists():
        os.replace(partial, out_dir / NOTEBOOK_NAME)
    rec_path = out_dir / RECORD_NAME
    if not error and not is_done(cell):
        error = (read_record(rec_path).get("error") or "record not ok").splitlines()[0] if rec_path.exists() \
            else "notebook finished without writing record.json"
    if error and not rec_path.exists():
        write_failed_record(cell, error)
    return not error, error


def write_failed_record(cell: Cell, error: str) -> None:
    """A record for a cell whose notebook died before writing one (import error, kernel killed)."""
    from .records import SCHEMA_VERSION, write_record

    write_record({"schema_version": SCHEMA_VERSION, "status": "failed", "error": error,
                  "config": cell.config.to_dict(), "params": {}, "epochs": [], "scores": {},
                  "metric_signatures": {}, "hybrid_lambda": None, "steps": [], "environment": {}, "started_at": None,
                  "finished_at": time.time()}, cell.out_dir / RECORD_NAME)


def run_grid(cells: list[Cell], *, jobs: int = 1, notebook: Path | None = None, progress: bool = True) -> list[tuple[Cell, str]]:
    """Execute every cell that is not done; return the failures."""
    from tqdm.auto import tqdm

    notebook = notebook or default_notebook()
    # Each cell's process gets this in its own environment: parallel cells share the cores
    # instead of oversubscribing them. A user's own setting wins.
    env = {} if (jobs <= 1 or "OMP_NUM_THREADS" in os.environ) else \
        {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    todo = [c for c in cells if not is_done(c)]
    skipped = len(cells) - len(todo)
    if skipped:
        print(f"{skipped} of {len(cells)} cells already have a complete record with these parameters; skipped")
    failures = []
    bar = tqdm(total=len(todo), desc="grid", unit="cell", disable=not progress)
    # Threads only wait on the cells' processes; nothing process-wide is changed from them.
    with cf.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(execute, c, notebook, None, env): c for c in todo}
        for fut in cf.as_completed(futures):
            cell = futures[fut]
            ok, error = fut.result()
            if not ok:
                failures.append((cell, error))
                tqdm.write(f"FAILED {cell.label}: {error}")
            bar.update(1)
            bar.set_postfix_str(cell.label)
    bar.close()
    return failures


def default_notebook() -> Path:
    """notebooks/run.ipynb of the checkout this package runs from."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        nb = parent / "notebooks" / NOTEBOOK_NAME
        if nb.exists():
            return nb
    raise GridError("notebooks/run.ipynb not found; run from a clone of the hupeft repository")


def parser() -> argparse.ArgumentParser:
    csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(prog="hupeft grid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", help=f"preset name ({', '.join(preset_names())}) or a YAML path")
    p.add_argument("--models", type=csv, help="only these models (comma-separated)")
    p.add_argument("--methods", type=csv, help="only these methods")
    p.add_argument("--benchmarks", type=csv, help="only these benchmarks")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in csv(s)], help="these seeds instead of the preset's")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run setting in every cell (see `hupeft run --help`)")
    p.add_argument("--jobs", type=int, default=None,
                   help="cells executed at once (local launcher; default: the preset's `jobs`, else 1)")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local", help="where cells run")
    p.add_argument("--results", default="results", help="results root (default: results/)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the cells and a cost estimate (with --launcher slurm, the sbatch scripts); run nothing")
    slurm = p.add_argument_group("slurm launcher (resources per cell from `hupeft plan`)")
    slurm.add_argument("--partition", help="sbatch --partition")
    slurm.add_argument("--account", help="sbatch --account")
    slurm.add_argument("--qos", help="sbatch --qos")
    slurm.add_argument("--throttle", type=int, help="at most this many tasks of each array at once")
    slurm.add_argument("--gpu-memory", default="80GB", help="memory of one GPU (default: 80GB)")
    slurm.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default: 8)")
    slurm.add_argument("--cpus-per-gpu", type=int, default=8, help="CPUs asked per GPU (default: 8)")
    slurm.add_argument("--max-time", type=int, default=None, metavar="MINUTES", help="cap on each task's --time")
    return p


def grid_from_args(args) -> int:
    try:
        preset = load_preset(args.preset)
        if args.jobs is None:
            args.jobs = int(preset.get("jobs", 1))
        if args.jobs < 1:
            raise GridError(f"--jobs must be >= 1, got {args.jobs}")
        # Cells that run on this machine are checked against it (GPU, bitsandbytes, data); a dry
        # run or a Slurm submission leaves that to the machine that runs each cell.
        here = args.launcher == "local" and not args.dry_run
        cells = expand(preset, models=args.models, methods=args.methods, benchmarks=args.benchmarks,
                       seeds=args.seeds, sets=args.sets, root=Path(args.results), here=here)
    except GridError as e:
        print(f"hupeft grid: {e}", file=sys.stderr)
        return 2
    if args.launcher == "slurm":
        return _slurm(args, cells, preset["name"])
    if args.dry_run:
        todo = [c for c in cells if not is_done(c)]
        for c in cells:
            print(f"{'done' if c not in todo else 'todo'}  {c.label}  gpus={c.gpus}  -> {c.out_dir}")
        est = sum(c.cost_seconds for c in todo) / max(1, args.jobs)
        print(f"{len(cells)} cells, {len(todo)} to run; estimated {est / 60:.1f} min "
              f"({args.launcher}, {args.jobs} job(s))")
        return 0
    t0 = time.time()
    failures = run_grid(cells, jobs=args.jobs)
    print(f"grid {preset['name']}: {len(cells) - len(failures)} of {len(cells)} cells ok "
          f"in {(time.time() - t0) / 60:.1f} min")
    for cell, error in failures:
        print(f"  failed: {cell.label}: {error}")
    return 1 if failures else 0


def _slurm(args, cells: list[Cell], preset: str) -> int:
    from . import launch_slurm
    from .plan import Hardware, PlanError, parse_bytes

    try:
        if args.throttle is not None and args.throttle < 1:
            raise GridError(f"--throttle must be >= 1, got {args.throttle}")
        if args.gpus_per_node < 1 or args.cpus_per_gpu < 1:
            raise GridError("--gpus-per-node and --cpus-per-gpu must be >= 1")
        hw = Hardware(gpu_memory=parse_bytes(args.gpu_memory), gpus_per_node=args.gpus_per_node)
    except (GridError, PlanError) as e:
        print(f"hupeft grid: {e}", file=sys.stderr)
        return 2
    if not args.dry_run and not shutil.which("sbatch"):
        print("hupeft grid: sbatch not found; run on a Slurm login node, add --dry-run to see the scripts, "
              "or use --launcher local", file=sys.stderr)
        return 2
    opts = launch_slurm.Options(partition=args.partition, account=args.account, qos=args.qos,
                                throttle=args.throttle, cpus_per_gpu=args.cpus_per_gpu, max_minutes=args.max_time)
    return launch_slurm.submit(cells, Path(args.results), preset, opts, hw, dry_run=args.dry_run)


def cli_main(argv: list[str]) -> int:
    return grid_from_args(parser().parse_args(argv))


def reproduce_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hupeft reproduce",
                                description="Run a preset's grid, then the report, then build the book.")
    p.add_argument("--preset", default="cpu", help="preset (default: cpu)")
    p.add_argument("--jobs", type=int, default=None, help="cells executed at once (default: the preset's)")
    p.add_argument("--results", default="results", help="results root (default: results/)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run setting in every cell")
    args = p.parse_args(argv)
    t0 = time.time()
    jobs = [] if args.jobs is None else ["--jobs", str(args.jobs)]
    grid_args = parser().parse_args(["--preset", args.preset, "--results", args.results] + jobs
                                    + sum((["--set", s] for s in args.sets), []))
    code = grid_from_args(grid_args)
    if code == 2:
        return 2
    from . import report

    report_code = report.cli_main(["--preset", load_preset(args.preset)["name"], "--results", args.results, "--build"])
    minutes = (time.time() - t0) / 60
    if code or report_code:
        # The book is still built so the failures can be read there, but nothing here says success.
        what = "some cells failed (the book's setup page lists them)" if code else "the report or book failed"
        print(f"reproduce {args.preset}: FAILED after {minutes:.1f} min: {what}", file=sys.stderr)
    else:
        print(f"reproduce {args.preset}: every cell ok, book built, {minutes:.1f} min end to end")
    return code or report_code


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))

