"""`hupeft bench`: training-step time and peak memory of every method, as 95% intervals over
interleaved rounds.

A shared machine drifts: run each row once, one after the other, and the drift lands on whichever
row runs then. So every row is measured once per round, in an order shuffled afresh each round,
and each figure is a mean over rounds with its 95% t-interval. Ratios (x lora, x oft, x floor,
x full) are taken within each round, where rows ran minutes apart rather than the whole bench
apart, and then averaged with their own interval. The JSON keeps every round.

Each measurement is a fresh process, so its memory is its own, forked from a server that has
already imported torch, transformers and peft (multiprocessing's forkserver), so a measurement
does not pay some seconds of imports. Step time is the median of `--steps` timed steps after
`--warmup` untimed ones (forward, backward, the method's hooks and the optimiser step).
Initialisation that happens once (LoRA-GA's gradient estimate) is not timed.

Peak memory on GPU is torch.cuda.max_memory_allocated. On CPU the allocator keeps no such
counter, so after the timed steps the same process repeats one step under torch's profiler and
counts tensor bytes exactly: those alive at the start plus the highest net allocation the
allocator reports during the step (hupeft.memory.TensorPeak). That figure is the same in every
round, so memory ratios carry no noise. The JSON also keeps two resident-set figures, sampled
during the steps, above the resident set before the model was loaded: `rss_live_bytes` (one more
step, after glibc is told to return every block above 64 KiB to the OS, so it follows the live
tensors plus what torch and its libraries hold besides) and `rss_with_cached_bytes` (the timed
steps, with the free blocks malloc keeps, as CUDA's "reserved" would).

Rows (butterfly and OFT blocks are 8 wide in every row):
  full, lora, loraga, boft (m=3), boft_m1, urnn, hybrid   hupeft's methods (lora is PEFT's LoRA)
  peft_lora, peft_loraga, peft_oft (OFT v2, Cayley-Neumann, PEFT's default), peft_oft_exact
  (exact Cayley), peft_boft_m1                           PEFT's own layers, as references
  frozen                                                 forward+backward through the frozen
                                                         model (inputs require grad): the floor
`--quick` times the rows that the speed targets name, 3 rounds of 1 step, memory in the first;
`--scale` sweeps layer width and sequence length instead (see hupeft.bench_scale).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import sys
from pathlib import Path

from .bench_rows import PRECISIONS, ROWS

# Reference rows of the ratio columns: column -> row.
REFERENCES = {"lora": "lora", "oft": "peft_oft", "floor": "frozen", "full": "full"}
QUICK_ROWS = ["frozen", "lora", "peft_lora", "boft_m1", "boft", "peft_oft", "hybrid"]
QUICK = {"rounds": 3, "warmup": 1, "steps": 1, "memory_rounds": 1}
ADAPTERS = ["lora", "peft_lora", "loraga", "peft_loraga", "boft", "boft_m1", "peft_oft", "peft_oft_exact",
            "urnn", "hybrid"]
# The speed and memory targets hupeft holds itself to on SmolLM2 (batch 4 x 128, q/v): (what, row,
# "step" or "memory", reference column, lowest, highest). A ratio's interval decides: inside the
# bounds, met; outside, missed; across a bound, not resolved by this many rounds.
TARGETS = ([("identical code (PEFT's LoRA twice) times the same", "peft_lora", "step", "lora", 0.97, 1.03),
            ("BOFT m=1 no slower than PEFT's OFT", "boft_m1", "step", "oft", None, 1.0),
            ("BOFT m=3 within 1.1x PEFT's OFT", "boft", "step", "oft", None, 1.1),
            ("hybrid within 1.2x LoRA", "hybrid", "step", "lora", None, 1.2)]
           + [(f"{row} within 1.4x the frozen floor", row, "step", "floor", None, 1.4) for row in ADAPTERS]
           + [(f"{row} peak memory within 1.1x LoRA's", row, "memory", "lora", None, 1.1) for row in ADAPTERS
              if row != "lora"])


# On one layer (`--model linear-<d>`) only the targets that compare two adapters' layers apply: the
# floor and memory targets are about a whole model, where the frozen layers dilute each adapter.
LAYER_TARGET_COLUMNS = {"oft"}


def check_targets(result: dict) -> list[dict]:
    """Each target whose rows the bench measured: the ratio's interval and whether it meets the
    target ("met", "missed", or "unresolved" where the interval crosses a bound)."""
    from .bench_rows import SINGLE_LAYER

    out = []
    one_layer = str(result.get("model", "")).startswith(SINGLE_LAYER)
    for what, row, kind, ref, low, high in TARGETS:
        if one_layer and ref not in LAYER_TARGET_COLUMNS:
            continue
        r = result["methods"].get(row, {})
        iv = r.get("step_ratio" if kind == "step" else "memory_ratio", {}).get(ref)
        if not iv:
            continue
        lo, hi = iv["mean"] - iv["half_width"], iv["mean"] + iv["half_width"]
        one = hi != hi  # one round (--quick measures memory once): no interval, the mean is all there is
        if one:
            lo = hi = iv["mean"]
        inside = (low is None or lo >= low) and (high is None or hi <= high)
        outside = (low is not None and hi < low) or (high is not None and lo > high)
        bound = " to ".join(f"{b:g}" for b in (low, high) if b is not None) if low is not None else f"<= {high:g}"
        out.append({"target": what, "row": row, "ratio": f"{kind} x {ref}", "bound": bound,
                    "mean": iv["mean"], "half_width": iv["half_width"], "n": iv["n"],
                    "verdict": ("met" if inside else "missed" if outside else "unresolved")
                    + (" (one round)" if one else "")})
    return out


def targets_table(result: dict) -> str:
    rows = check_targets(result)
    if not rows:
        return ""
    lines = ["", f"{'target':<48}{'measured':>14}{'bound':>14}  verdict"]
    for t in rows:
        lines.append(f"{t['target']:<48}{fmt(t):>14}{t['bound']:>14}  {t['verdict']}")
    return "\n".join(lines)
PRELOAD = ["torch", "transformers", "peft", "hupeft.models", "hupeft.methods", "hupeft.bench_rows"]


# --- measuring: one fresh process per row per round ------------------------------------------------

def _child(conn, spec: dict) -> None:
    try:
        from hupeft.bench_rows import measure

        conn.send(measure(spec))
    except BaseException as e:  # the parent reports it as this row's error in this round
        conn.send({"error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"})
    finally:
        conn.close()


class Measurer:
    """Runs `bench_rows.measure(spec)` in a fresh process forked from a server that has the heavy
    imports done (multiprocessing's forkserver). Nothing here touches this process's state."""

    def __init__(self):
        import multiprocessing as mp

        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)

    def __call__(self, spec: dict) -> dict:
        parent, child = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child, args=(child, spec))
        proc.start()
        child.close()
        try:
            result = parent.recv()
        except EOFError:  # killed (out of memory, a signal) before it could answer
            result = None
        proc.join()
        if result is None:
            result = {"error": f"measuring process exited with {proc.exitcode} and no answer"}
        return result


def round_order(rows: list[str], round_index: int, seed: int) -> list[str]:
    """A fresh order per round, fixed by the seed, so no row always runs first or after another."""
    return random.Random(seed * 100_003 + round_index).sample(rows, len(rows))


def run_rounds(base: dict, rows: list[str], rounds: int, seed: int, measure, progress: bool = True,
               on_round=None, memory_rounds: int | None = None) -> list[dict]:
    """[{"order": [...], "results": {row: figures or {"error": ...}}}] for each round; peak memory
    in the first `memory_rounds` (default: all); after each round, `on_round(rounds so far)`."""
    from tqdm import tqdm

    out = []
    bar = tqdm(total=rounds * len(rows), desc="bench", unit="row", disable=not progress)
    for r in range(rounds):
        order = round_order(rows, r, seed)
        results = {}
        for row in order:
            memory = memory_rounds is None or r < memory_rounds
            results[row] = measure({**base, "row": row, "memory_steps": 1 if memory else 0})
            if "error" in results[row]:
                bar.write(f"round {r + 1}, {row}: failed: {results[row]['error']}")
            bar.update()
        out.append({"order": order, "results": results})
        if on_round:
            on_round(out)
    bar.close()
    return out


# --- summarising: means and within-round ratios with 95% intervals --------------------------------

def _interval(values) -> dict:
    from .stats import mean_interval

    iv = mean_interval(values)
    return {"mean": iv.mean, "half_width": iv.half_width, "n": iv.n}


def summarise(rounds: list[dict], rows: list[str]) -> dict:
    """Per row: step time and peak memory over rounds, and each ratio to a reference row taken
    within the rounds where both ran, each as {mean, half_width (95%), n}."""
    per_row = {}
    for row in rows:
        ok = [rd["results"][row] for rd in rounds if "error" not in rd["results"].get(row, {"error": 1})]
        errors = [rd["results"][row]["error"] for rd in rounds if "error" in rd["results"].get(row, {})]
        summary: dict = {"rounds": [rd["results"].get(row) for rd in rounds]}
        if errors:
            summary["error"] = errors[-1]
        if ok:
            with_memory = [r for r in ok if "peak_memory_bytes" in r]
            summary.update(step_seconds=_interval([r["step_seconds"] for r in ok]),
                           peak_memory_bytes=_interval([r["peak_memory_bytes"] for r in with_memory]),
                           trainable_params=ok[0]["trainable_params"],
                           memory_kind=with_memory[0]["memory_kind"] if with_memory else "not measured",
                           device=ok[0]["device"])
            ratios, memory = {}, {}
            for column, ref in REFERENCES.items():
                pairs = [(rd["results"][row], rd["results"][ref]) for rd in rounds
                         if "error" not in rd["results"].get(row, {"error": 1})
                         and "error" not in rd["results"].get(ref, {"error": 1})]
                if pairs:
                    ratios[column] = _interval([a["step_seconds"] / b["step_seconds"] for a, b in pairs])
                    mem = [(a, b) for a, b in pairs if "peak_memory_bytes" in a and "peak_memory_bytes" in b]
                    if mem:
                        memory[column] = _interval([a["peak_memory_bytes"] / b["peak_memory_bytes"] for a, b in mem])
            summary["step_ratio"], summary["memory_ratio"] = ratios, memory
        per_row[row] = summary
    return per_row


def run(model_name: str, rows: list[str], targets, batch: int, seq: int, warmup: int, steps: int,
        threads: int | None, precision: str = "fp32", rounds: int = 5, seed: int = 0, progress: bool = True,
        measure=None, save=None, memory_rounds: int | None = None) -> dict:
    """The bench's result; `save(result so far)` after every round, so a bench cut short keeps
    the rounds it finished (`rounds_done`)."""
    from . import models

    if model_name == "smollm2-135m":  # build the cached checkpoint once, so no measurement pays for it
        models.smollm2_checkpoint()
    base = {"model": model_name, "targets": list(targets), "batch": batch, "seq_len": seq, "warmup": warmup,
            "steps": steps, "precision": precision, "threads": threads}

    def result(data: list[dict]) -> dict:
        return {"model": model_name, "batch": batch, "seq_len": seq, "targets": list(targets), "warmup": warmup,
                "steps": steps, "rounds": rounds, "rounds_done": len(data), "memory_rounds": memory_rounds or rounds,
                "seed": seed, "precision": precision,
                "threads": threads, "interval": "95% t-interval over rounds; ratios taken within each round",
                "order": [rd["order"] for rd in data], "methods": summarise(data, rows)}

    data = run_rounds(base, rows, rounds, seed, measure or Measurer(), progress,
                      on_round=(lambda done: save(result(done))) if save else None, memory_rounds=memory_rounds)
    return result(data)


def provenance() -> dict:
    """When and on what the figures were taken."""
    import torch

    return {"created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.machine()}, {platform.system()}",
            "torch": torch.__version__, "cuda": torch.cuda.is_available(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0]}  # how busy the machine was: its timings depend on it


# --- presenting --------------------------------------------------------------------------------

def fmt(iv: dict | None, digits: int = 2, scale: float = 1.0) -> str:
    """mean±half-width, or the mean alone where one round gave no interval."""
    if not iv:
        return "-"
    mean, half = iv["mean"] * scale, iv["half_width"] * scale
    return f"{mean:.{digits}f}" if half != half else f"{mean:.{digits}f}±{half:.{digits}f}"


def table(result: dict) -> str:
    cols = [("step s", 15), ("x lora", 12), ("x oft", 12), ("x floor", 12), ("x full", 12), ("peak MiB", 12),
            ("mem x lora", 12), ("trainable", 12)]
    lines = [f"{'method':<15}" + "".join(f"{c:>{w}}" for c, w in cols), "-" * (15 + sum(w for _, w in cols))]
    for name, r in result["methods"].items():
        if "step_seconds" not in r:
            lines.append(f"{name:<15}  failed: {r.get('error', '?')}")
            continue
        cells = [fmt(r["step_seconds"], 3), fmt(r["step_ratio"].get("lora")), fmt(r["step_ratio"].get("oft")),
                 fmt(r["step_ratio"].get("floor")), fmt(r["step_ratio"].get("full")),
                 fmt(r["peak_memory_bytes"], 0, 2 ** -20), fmt(r["memory_ratio"].get("lora")),
                 f"{r['trainable_params']:,}"]
        line = f"{name:<15}" + "".join(f"{c:>{w}}" for c, (_, w) in zip(cells, cols))
        if "error" in r:
            line += f"  (failed in some rounds: {r['error']})"
        lines.append(line)
    first = next((r for r in result["methods"].values() if "device" in r), {})
    lines.append(f"\nmodel {result['model']}, batch {result['batch']} x {result['seq_len']}, targets "
                 f"{','.join(result['targets'])}, {result['precision']}; each figure: mean ± 95% interval over "
                 f"{result.get('rounds_done', result['rounds'])} interleaved rounds (ratios within rounds), "
                 f"a round's figure the median of "
                 f"{result['steps']} steps after {result['warmup']} warm-up; memory: {first.get('memory_kind', '?')}; "
                 f"{first.get('device', '?')}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hupeft bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model name (default: smollm2-135m)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated rows (default: all: {','.join(ROWS)}; with --quick: {','.join(QUICK_ROWS)})")
    p.add_argument("--targets", default="q_proj,v_proj", help="linear layers to adapt (default: q_proj,v_proj)")
    p.add_argument("--batch", type=int, default=4, help="batch size (default: 4)")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length (default: 128)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: 5; --quick: 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per measurement (default: 2; --quick: 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default: 4; --quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help="the rows the speed targets name, 3 rounds of 1 warm-up and 1 timed step, peak memory "
                        "in the first round (about 5 minutes on a quiet 2-core CPU)")
    p.add_argument("--memory-rounds", type=int, default=None,
                   help="measure peak memory in the first N rounds only (default: every round; --quick: 1); "
                        "counted tensor bytes are the same in every round, so 1 or 2 suffice")
    p.add_argument("--seed", type=int, default=0, help="seed of the rounds' orders (default: 0)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default); bf16-mixed: fp32 weights under bf16 autocast, as `hupeft run` "
                        "on a GPU; bf16: weights in bf16")
    p.add_argument("--threads", type=int, default=None, help="torch threads per measurement (default: torch's)")
    p.add_argument("--scale", action="store_true",
                   help="sweep single layers of growing width and sequence length instead (hupeft.bench_scale)")
    p.add_argument("--widths", default=None, help="with --scale: layer widths (default: 256,512,1024,2048,4096)")
    p.add_argument("--seq-lens", default=None, help="with --scale: sequence lengths (default: 64,128,256,512,1024)")
    p.add_argument("--row-budget", type=float, default=None,
                   help="with --scale: seconds per step above which a row is left out of costlier points")
    p.add_argument("--json", dest="json_path", default=None, help="write the figures as JSON to this path")
    return p


def _ints(text: str | None) -> list[int] | None:
    """Comma-separated whole numbers, None when not given; ValueError when not numbers."""
    return None if text is None else [int(v) for v in text.split(",") if v]


def cli_main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    rows = [r for r in (args.methods or ",".join(QUICK_ROWS if args.quick else ROWS)).split(",") if r]
    preset = QUICK if args.quick else {"rounds": 5, "warmup": 2, "steps": 4}
    rounds, warmup, steps = (preset[k] if getattr(args, k) is None else getattr(args, k)
                             for k in ("rounds", "warmup", "steps"))
    bad = [r for r in rows if r not in ROWS]
    error = None
    if bad:
        error = f"unknown method row(s) {bad}; choose from {','.join(ROWS)}"
    elif min(args.batch, args.seq_len, steps, rounds) <= 0 or warmup < 0:
        error = "--batch, --seq-len, --steps and --rounds must be > 0 and --warmup >= 0"
    elif args.memory_rounds is not None and not 1 <= args.memory_rounds <= rounds:
        error = f"--memory-rounds must be between 1 and --rounds ({rounds})"
    elif args.threads is not None and args.threads <= 0:
        error = "--threads must be > 0; leave it out for torch's default"
    elif args.json_path and not Path(args.json_path).resolve().parent.is_dir():
        folder = Path(args.json_path).resolve().parent
        error = f"--json {args.json_path}: folder {folder} does not exist; create it first"
    elif not args.scale and (args.widths or args.seq_lens or args.row_budget is not None):
        error = "--widths, --seq-lens and --row-budget belong to --scale; add --scale"
    elif args.row_budget is not None and args.row_budget <= 0:
        error = "--row-budget must be > 0 seconds; leave it out to measure every row at every point"
    else:
        try:
            widths, seq_lens = _ints(args.widths), _ints(args.seq_lens)
        except ValueError:
            error = "--widths and --seq-lens take comma-separated whole numbers, e.g. --widths 256,1024"
    if error:
        print(f"hupeft bench: {error}", file=sys.stderr)
        return 2
    if args.scale:
        from .bench_scale import cli_scale

        return cli_scale(args, argv, rows, rounds, warmup, steps, widths, seq_lens, args.row_budget)
    header = {"command": "hupeft bench " + " ".join(argv), "provenance": provenance()}

    def save(result: dict) -> None:
        if args.json_path:
            from .records import atomic_write_text

            atomic_write_text(Path(args.json_path), json.dumps({**result, **header}, indent=2))

    result = run(args.model, rows, targets, args.batch, args.seq_len, warmup, steps, args.threads, args.precision,
                 rounds, args.seed, save=save,
                 memory_rounds=args.memory_rounds or (QUICK["memory_rounds"] if args.quick else None))
    print(table(result))
    print(targets_table(result))
    return 1 if any("error" in r for r in result["methods"].values()) else 0
