"""The book's cost page: each method's step time and peak memory as layer width and sequence length
grow, from the JSON of `hupeft bench --scale` (data/bench/scale.json), and the methods against
PEFT's layers on SmolLM2 with the speed targets, from `hupeft bench --json` (data/bench/smollm2.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .report import METHOD_LABEL

SCALE_JSON = Path(__file__).resolve().parents[2] / "data" / "bench" / "scale.json"
MODEL_JSON = SCALE_JSON.with_name("smollm2.json")
PAIRS_JSON = SCALE_JSON.with_name("smollm2-pairs.json")  # the closest comparisons, more rounds
IDENTICAL_JSON = SCALE_JSON.with_name("smollm2-identical.json")  # PEFT's LoRA against itself, 40 rounds
LAYER_JSON = SCALE_JSON.with_name("layer576.json")  # the butterfly against PEFT's OFT on one 576 x 576 layer
LABEL = {**METHOD_LABEL, "frozen": "frozen (floor)", "boft_m1": "BOFT m=1", "peft_lora": "PEFT LoRA",
         "peft_loraga": "PEFT LoRA-GA", "peft_oft": "PEFT OFT", "peft_oft_exact": "PEFT OFT (exact Cayley)",
         "peft_boft_m1": "PEFT BOFT m=1"}


def load(path: str | Path = SCALE_JSON) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; write it with `hupeft bench --scale --json {path}`")
    return json.loads(path.read_text())


def frame(result: dict) -> pd.DataFrame:
    """One row per sweep point x method: step time and peak memory with their 95% half widths."""
    rows = []
    for pt in result["points"]:
        for method, r in pt["methods"].items():
            if "step_seconds" not in r:
                continue
            rows.append({"sweep": pt["sweep"], "width": pt["width"], "seq_len": pt["seq_len"],
                         "tokens": pt["batch"] * pt["seq_len"], "method": method,
                         "label": LABEL.get(method, method),
                         "step_ms": 1e3 * r["step_seconds"]["mean"],
                         "step_ms_half": 1e3 * r["step_seconds"]["half_width"],
                         "memory_mib": r["peak_memory_bytes"]["mean"] / 2 ** 20,
                         "memory_mib_half": r["peak_memory_bytes"]["half_width"] / 2 ** 20,
                         "x_floor": r["step_ratio"].get("floor", {}).get("mean", math.nan)})
    return pd.DataFrame(rows)


def growth(f: pd.DataFrame) -> pd.DataFrame:
    """Per method and sweep, the exponent k of cost ~ size^k: the least-squares slope of
    log(step time) and of log(peak memory) against log(width) or log(sequence length)."""
    out = []
    for (sweep, method), g in f.groupby(["sweep", "method"], sort=False):
        x = np.log(g["width" if sweep == "width" else "seq_len"].to_numpy(float))
        if len(set(x)) < 2:
            continue
        row = {"sweep": "width d" if sweep == "width" else "sequence length", "method": LABEL.get(method, method)}
        for col, name in (("step_ms", "time exponent"), ("memory_mib", "memory exponent")):
            y = g[col].to_numpy(float)
            keep = y > 0
            row[name] = float(np.polyfit(x[keep], np.log(y[keep]), 1)[0]) if keep.sum() >= 2 else math.nan
        out.append(row)
    return pd.DataFrame(out)


def plot(f: pd.DataFrame):
    """Step time and peak memory against width and against sequence length, log-log, one line per
    method, with 95% intervals as error bars."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    methods = list(dict.fromkeys(f["method"]))
    palette = dict(zip(methods, sns.color_palette("tab20", len(methods))))
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, (sweep, x, xlabel) in enumerate((("width", "width", "layer width d"),
                                              ("seq_len", "seq_len", "sequence length"))):
        part = f[f["sweep"] == sweep]
        for row, (y, half, ylabel) in enumerate((("step_ms", "step_ms_half", "step time (ms)"),
                                                 ("memory_mib", "memory_mib_half", "peak memory (MiB)"))):
            ax = axes[row, col]
            for method in methods:
                g = part[part["method"] == method].sort_values(x)
                if g.empty:
                    continue
                ax.errorbar(g[x], g[y], yerr=g[half].fillna(0), label=LABEL.get(method, method),
                            color=palette[method], ecolor=(*palette[method], 0.35), elinewidth=0.8,
                            marker="o", markersize=3, linewidth=1, capsize=2)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            fixed = (f"{int(part['tokens'].iloc[0] // part['seq_len'].iloc[0])} x {int(part['seq_len'].iloc[0])} tokens"
                     if sweep == "width" else f"width {int(part['width'].iloc[0])}") if not part.empty else ""
            ax.set_title(f"{ylabel.split(' (')[0]} vs {xlabel} ({fixed})", fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def skipped_rows(result: dict) -> dict[str, str]:
    """Row -> why it was left out of the costlier points (`--row-budget`), as the JSON first says so."""
    out: dict[str, str] = {}
    for pt in result["points"]:
        for row, r in pt["methods"].items():
            if "skipped" in r:
                out.setdefault(row, r["skipped"])
    return out


def show(path: str | Path = SCALE_JSON) -> None:
    """The page: where the figures come from, the plot, and the growth exponents."""
    from IPython.display import Markdown, display

    from .pages import _html, _show

    result = load(path)
    f = frame(result)
    prov = result.get("provenance", {})
    display(Markdown(
        f"Measured with `{result.get('command', '?')}` on {prov.get('machine', '?')} (torch {prov.get('torch', '?')}, "
        f"{result.get('threads') or 'default'} thread(s)"
        + (f"; {prov['cpus']} CPUs, load average {prov['load_average']:.1f} when it started" if "cpus" in prov else "")
        + f"), {prov.get('created_utc', '?')} UTC; "
        f"{result['rounds']} interleaved rounds per point, each a median of {result['steps']} steps after "
        f"{result['warmup']} warm-up; {result['interval']}. Every method adapts one d x d projection under "
        f"a squared-error loss; blocks of BOFT, PEFT's OFT and the hybrid are 8 wide."
        + ("" if result.get("complete", True) else
           f" The sweep was cut short: {len(result['points'])} of its {result['points_planned']} points "
           "were measured, the cheapest first.")
        + "".join(f" {LABEL.get(row, row)}: {why}." for row, why in skipped_rows(result).items())))
    _show(plot(f))
    display(Markdown("How each cost grows: the exponent k of a power law size^k fitted to the points "
                     "(1 = linear; the floor's exponent is the base layer's own)."))
    _html(growth(f), digits=2)


def model_frame(result: dict) -> pd.DataFrame:
    """One row per bench row: step time, its ratios and peak memory, each 'mean ± 95% half-width'."""
    from .bench import fmt

    rows = []
    for name, r in result["methods"].items():
        if "step_seconds" not in r:
            rows.append({"method": LABEL.get(name, name), "step s": f"failed: {r.get('error', '?')}"})
            continue
        ratio, mem = r["step_ratio"], r["memory_ratio"]
        rows.append({"method": LABEL.get(name, name), "step s": fmt(r["step_seconds"], 3),
                     "x LoRA": fmt(ratio.get("lora")), "x PEFT OFT": fmt(ratio.get("oft")),
                     "x frozen": fmt(ratio.get("floor")), "peak MiB": fmt(r["peak_memory_bytes"], 0, 2 ** -20),
                     "memory x LoRA": fmt(mem.get("lora")), "trainable": f"{r['trainable_params']:,}"})
    return pd.DataFrame(rows)


# What each bench JSON's `memory_kind` measured, in words for the page.
MEMORY_KINDS = {
    "cpu_tensor_bytes_allocated": "tensor bytes, counted exactly as CUDA's max_memory_allocated counts them "
                                  "(alive at the step's start plus the highest net allocation during it), so "
                                  "the same in every round",
    "cpu_live_rss_above_baseline": "the process's resident set above its baseline, sampled, once malloc returns "
                                   "freed blocks (a few percent of noise between rounds)",
    "cuda_max_allocated": "torch.cuda.max_memory_allocated",
}


def _memory_kind(result: dict) -> str:
    kinds = {r.get("memory_kind") for r in result.get("methods", {}).values()} - {None, "not measured"}
    return ", ".join(sorted(kinds)) or "not measured"


def show_model_bench(path: str | Path = MODEL_JSON) -> None:
    """The SmolLM2 bench against PEFT's layers, and the speed and memory targets it meets or not."""
    from IPython.display import Markdown, display

    from .bench import check_targets, fmt
    from .pages import _html

    path = Path(path)
    if not path.exists():
        display(Markdown(f"No model bench yet: `hupeft bench --json {path}` writes one."))
        return
    result = json.loads(path.read_text())
    prov = result.get("provenance", {})
    kind = _memory_kind(result)
    display(Markdown(
        f"Measured with `{result.get('command', '?')}` on {prov.get('machine', '?')} (torch {prov.get('torch', '?')}"
        + (f"; {prov['cpus']} CPUs, load average {prov['load_average']:.1f} when it started" if "cpus" in prov else "")
        + f"), {prov.get('created_utc', '?')} UTC: {result['model']}, batch {result['batch']} x {result['seq_len']}, "
        f"adapters on {', '.join(result['targets'])}; {result.get('rounds_done', result['rounds'])} interleaved "
        f"rounds, each a median of {result['steps']} steps after {result['warmup']} warm-up; "
        f"{result['interval']}. "
        + ("`lora` and `peft_lora` run the same code (PEFT's LoRA): how far apart they come out is the bench's "
           "own noise. " if {"lora", "peft_lora"} <= set(result["methods"]) else "")
        + "Peak memory: "
        + MEMORY_KINDS.get(kind, f"`{kind}`") + "."))
    _html(model_frame(result))
    targets = pd.DataFrame([{"target": t["target"], "measured": fmt(t), "bound": t["bound"], "verdict": t["verdict"]}
                            for t in check_targets(result)])
    if not targets.empty:
        display(Markdown("The targets: a ratio's 95% interval inside its bound meets it, outside misses it, "
                         "across it is not resolved by this many rounds."))
        _html(targets)
