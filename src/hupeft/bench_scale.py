"""`hupeft bench --scale`: every method's step time and peak memory on single layers of growing
width and sequence length, so the growth of each method's cost can be plotted.

Two sweeps on one d x d projection under a squared-error loss: width d over `--widths` at the
bench's batch x sequence length, and sequence length over `--seq-lens` at width 1024 (or the
largest width asked for below it). Each point is a `hupeft bench` of its own: rows interleaved
over rounds, figures with 95% intervals.

`--row-budget S`: a row whose step took more than S seconds at a point is not measured at the
points at least as wide and as long (its line in the plot ends there, and the JSON says why). PEFT's BOFT
(dense d x d products) and the uRNN (d x d products in its manifold step) grow fastest; at d = 4096 on one
CPU thread each of their steps takes minutes, and the sweep would otherwise take hours.
"""

from __future__ import annotations

import json
from pathlib import Path

from .bench import provenance, run
from .bench_rows import SINGLE_LAYER

WIDTHS = [256, 512, 1024, 2048, 4096]
SEQ_LENS = [64, 128, 256, 512, 1024]
SEQ_SWEEP_WIDTH = 1024


def points(widths: list[int], seq_lens: list[int], seq: int) -> list[dict]:
    """The sweep's points, cheapest (width x sequence length) first: the width sweep at `seq` and
    the sequence sweep at one width (the point both contain is measured for each)."""
    at = max([w for w in widths if w <= SEQ_SWEEP_WIDTH] or [min(widths)])
    pts = ([{"sweep": "width", "width": w, "seq_len": seq} for w in widths]
           + [{"sweep": "seq_len", "width": at, "seq_len": s} for s in seq_lens])
    return sorted(pts, key=lambda p: (p["width"] * p["seq_len"], p["sweep"]))


def sweep(rows: list[str], widths: list[int], seq_lens: list[int], batch: int, seq: int, rounds: int,
          warmup: int, steps: int, threads: int | None, precision: str, seed: int, progress: bool = True,
          save=None, row_budget: float | None = None) -> dict:
    """Every point's bench; after each point `save(result so far)`, so a sweep cut short leaves
    the points it finished (marked `complete: false`). Rows over `row_budget` seconds a step are
    left out of the later points (see the module's docstring)."""
    from tqdm import tqdm

    from .bench import Measurer

    measure = Measurer()
    todo = points(widths, seq_lens, seq)
    result = {"kind": "scale", "batch": batch, "precision": precision, "threads": threads, "rounds": rounds,
              "warmup": warmup, "steps": steps, "seed": seed, "widths": widths, "seq_lens": seq_lens,
              "interval": "95% t-interval over rounds; ratios taken within each round", "points": [],
              "points_planned": len(todo), "complete": False, "row_budget_seconds": row_budget}
    over: dict[str, tuple[int, int, str]] = {}  # row -> (width, seq_len) where it went over budget, and why

    def skip(row: str, pt: dict) -> str | None:
        if row not in over:
            return None
        width, seq_len, why = over[row]
        return why if pt["width"] >= width and pt["seq_len"] >= seq_len else None

    for pt in tqdm(todo, desc="scale", unit="point", disable=not progress):
        todo_rows = [r for r in rows if skip(r, pt) is None]
        bench = run(f"{SINGLE_LAYER}{pt['width']}", todo_rows, ["proj"], batch, pt["seq_len"], warmup, steps,
                    threads, precision, rounds, seed, progress=False, measure=measure)
        measured = bench["methods"]
        for row, r in measured.items():
            took = r.get("step_seconds", {}).get("mean")
            if row_budget is not None and took is not None and took > row_budget and row not in over:
                over[row] = (pt["width"], pt["seq_len"],
                             f"not measured at d >= {pt['width']} and seq >= {pt['seq_len']}: its step took "
                             f"{took:.1f} s there, over --row-budget {row_budget:g} s")
        skipped = {r: {"skipped": skip(r, pt)} for r in rows if r not in measured}
        result["points"].append({**pt, **{k: bench[k] for k in ("batch", "rounds", "steps", "warmup", "order")},
                                 "methods": {**measured, **skipped}})
        result["complete"] = len(result["points"]) == len(todo)
        if save:
            save(result)
    return result


def summary_lines(result: dict) -> list[str]:
    lines = []
    for pt in result["points"]:
        cells = []
        for row, r in pt["methods"].items():
            if "step_seconds" in r:
                cells.append(f"{row} {r['step_seconds']['mean'] * 1e3:.1f} ms")
            elif "skipped" in r:
                cells.append(f"{row} over budget")
            else:
                cells.append(f"{row} failed")
        lines.append(f"{pt['sweep']:>8} d={pt['width']:<5} seq={pt['seq_len']:<5} " + ", ".join(cells))
    return lines


def cli_scale(args, argv: list[str], rows: list[str], rounds: int, warmup: int, steps: int,
              widths: list[int] | None, seq_lens: list[int] | None, row_budget: float | None = None) -> int:
    import sys

    widths, seq_lens = widths or WIDTHS, seq_lens or SEQ_LENS
    if min(widths + seq_lens) <= 0 or any(w % 64 for w in widths):
        print("hupeft bench: --widths must be positive multiples of 64 (every method's blocks divide them) "
              "and --seq-lens positive", file=sys.stderr)
        return 2
    header = {"command": "hupeft bench " + " ".join(argv), "provenance": provenance()}

    def save(result: dict) -> None:
        if args.json_path:
            from .records import atomic_write_text

            atomic_write_text(Path(args.json_path), json.dumps({**result, **header}, indent=2))

    result = sweep(rows, widths, seq_lens, args.batch, args.seq_len, rounds, warmup, steps, args.threads,
                   args.precision, args.seed, save=save, row_budget=row_budget)
    print("\n".join(summary_lines(result)))
    failed = any("error" in r for pt in result["points"] for r in pt["methods"].values())
    return 1 if failed else 0
