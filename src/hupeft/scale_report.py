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

REPO = Path(__file__).resolve().parents[2]
SCALE_JSON = REPO / "data" / "bench" / "scale.json"
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


# Small multiples: one panel per family of rows, each beside the frozen model's floor, so that no
# panel holds more lines than a reader can tell apart.
FAMILIES = (("LoRA and LoRA-GA", ("lora", "peft_lora", "loraga", "peft_loraga")),
            ("rotations", ("boft", "boft_m1", "peft_oft", "peft_oft_exact", "peft_boft_m1")),
            ("Full FT, uRNN and Hybrid", ("full", "urnn", "hybrid")))


# Okabe-Ito, told apart with colour blindness too; a panel holds at most five rows.
PANEL_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9")


def plot(f: pd.DataFrame):
    """Step time and peak memory against width and against sequence length, log-log: one row of
    panels per cost and sweep, one panel per family of methods (FAMILIES), each with the frozen
    model as a grey floor; 95% intervals over rounds as error bars where they stay above a tenth
    of the point."""
    from .pages import WIDTH, _figure

    sweeps = [(s, x, lab) for s, x, lab in (("width", "width", "layer width d"), ("seq_len", "seq_len", "sequence length"))
              if (f["sweep"] == s).any()]
    costs = (("step_ms", "step_ms_half", "step time (ms)"), ("memory_mib", "memory_mib_half", "peak memory (MiB)"))
    families = [(name, [m for m in ms if m in set(f["method"])]) for name, ms in FAMILIES]
    families = [(name, ms) for name, ms in families if ms]
    fig, axes = _figure(len(sweeps) * len(costs), len(families), figsize=(WIDTH, 2.2 * len(sweeps) * len(costs) + 1.2),
                        squeeze=False, sharey="row")
    for s_i, (sweep, x, xlabel) in enumerate(sweeps):
        part = f[f["sweep"] == sweep]
        fixed = (f"{int(part['tokens'].iloc[0] // part['seq_len'].iloc[0])} x {int(part['seq_len'].iloc[0])} tokens"
                 if sweep == "width" else f"width {int(part['width'].iloc[0])}")
        for c_i, (y, half, ylabel) in enumerate(costs):
            row = axes[s_i * len(costs) + c_i]
            for col, (ax, (family, methods)) in enumerate(zip(row, families)):
                floor = part[part["method"] == "frozen"].sort_values(x)
                if not floor.empty:
                    ax.plot(floor[x], floor[y], color="0.6", lw=1.2, ls=":", label=LABEL["frozen"])
                for i, method in enumerate(methods):
                    g = part[part["method"] == method].sort_values(x)
                    if g.empty:
                        continue
                    # A 95% interval that reaches zero or below cannot be drawn on a log axis, and one
                    # that nearly does would stretch the axis over decades (two rounds give t = 12.7):
                    # a point whose interval reaches below a tenth of it is drawn without its bar.
                    err = g[half].fillna(0).where(g[y] - g[half].fillna(0) > g[y] / 10, 0)
                    # PEFT's rows dashed beside hupeft's own solid ones; one colour per row of a panel.
                    ax.errorbar(g[x], g[y], yerr=err, label=LABEL.get(method, method), color=PANEL_COLORS[i],
                                ls="--" if method.startswith("peft_") else "-", marker="o", markersize=2.5,
                                linewidth=1, elinewidth=0.6, capsize=1.5)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                if s_i == 0 and c_i == 0:
                    ax.set_title(family)
                if col == 0:
                    ax.set_ylabel(f"{ylabel}\nvs {xlabel}\n({fixed})", fontsize=8)
                if c_i == len(costs) - 1:
                    ax.set_xlabel(xlabel)
    for col, (family, _) in enumerate(families):
        handles, labels = axes[0][col].get_legend_handles_labels()
        axes[-1][col].legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.45), fontsize=7.5,
                             ncol=1, frameon=False)
    return fig


def skipped_rows(result: dict) -> dict[str, str]:
    """Row -> why it was left out of the costlier points (`--row-budget`), as the JSON first says so."""
    out: dict[str, str] = {}
    for pt in result["points"]:
        for row, r in pt["methods"].items():
            if "skipped" in r:
                out.setdefault(row, r["skipped"])
    return out


def command(result: dict, path: Path) -> str:
    """The bench's command as recorded, writing to the file this page read (the JSON may have been
    written elsewhere and moved into data/bench/, and a page names no path of the measuring machine)."""
    import re
    import shlex

    path = Path(path).resolve()
    where = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name
    cmd = result.get("command") or f"hupeft bench --json {where}"
    return re.sub(r"--json\s+\S+", lambda _: f"--json {shlex.quote(where)}", cmd)


def reproduce(result: dict, path: Path, what: str = "figure") -> None:
    """Beside a bench's figure or table: the command that measures it and the command that redraws it,
    with the bench's JSON (copied into the book) to download."""
    import shutil
    from html import escape

    from IPython.display import HTML, display

    from . import pages, report

    dest = report.FILES / "bench" / Path(path).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, dest)
    preset = pages._PAGE.get("preset") or "PRESET"
    redraw, unnamed = pages.report_command(preset, pages._PAGE.get("df"))
    display(HTML(
        f'<details class="hupeft-reproduce">\n<summary>Reproduce this {escape(what)}</summary>\n<p>\n'
        f"<code>{escape(command(result, path))}</code> measures it into "
        f'<a href="{escape(dest.relative_to(report.GENERATED).as_posix())}">{escape(Path(path).name)}</a>; '
        f"<code>{escape(redraw)}</code> redraws this page from that file"
        + (f" (DIR: the folder that holds <code>{escape(preset)}/</code>)" if unnamed else "") + ".\n</p>\n</details>"))


def show(path: str | Path = SCALE_JSON) -> None:
    """The page: where the figures come from, the plot, and the growth exponents."""
    from IPython.display import Markdown, display

    from .pages import _html, _show

    result = load(path)
    f = frame(result)
    prov = result.get("provenance", {})
    display(Markdown(
        f"Measured with `{command(result, path)}` on {prov.get('machine', '?')} (torch {prov.get('torch', '?')}, "
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
    display(Markdown("One panel per family of methods, log-log: solid lines are hupeft's layers, dashed lines PEFT's, "
                     "the dotted grey line the frozen model (the floor); bars are 95% intervals over rounds, drawn "
                     "where their lower end stays above a tenth of the point (a log axis cannot show one that "
                     "reaches zero)."))
    fig = plot(f)
    fig.hupeft_reproduce = lambda: reproduce(result, Path(path))
    _show(fig)
    display(Markdown("How each cost grows: the exponent $k$ of a power law $\\text{cost} \\propto \\text{size}^k$ "
                     "fitted to the points (1 = linear; the floor's exponent is the base layer's own)."))
    g = growth(f)
    wide = pd.DataFrame({"method": list(dict.fromkeys(g["method"]))})
    for sweep in dict.fromkeys(g["sweep"]):
        for col, cost in (("time exponent", "time"), ("memory exponent", "memory")):
            by = dict(zip(g.loc[g["sweep"] == sweep, "method"], g.loc[g["sweep"] == sweep, col]))
            wide[f"{cost} vs {sweep}"] = [by.get(m, float("nan")) for m in wide["method"]]
    _html(wide, digits=2)


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


def _labelled(text: str) -> str:
    """A bench target's words with each row's name as the book writes it (LABEL), not as the bench does."""
    import re

    names = sorted((n for n in LABEL if n != "frozen"), key=len, reverse=True)  # "the frozen floor" reads as is
    return re.sub(r"\b(" + "|".join(map(re.escape, names)) + r")\b", lambda m: LABEL[m.group(1)], text)


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
        f"Measured with `{command(result, path)}` on {prov.get('machine', '?')} (torch {prov.get('torch', '?')}"
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
    reproduce(result, path, "table")
    targets = pd.DataFrame([{"target": _labelled(t["target"]), "measured": fmt(t), "bound": t["bound"],
                             "verdict": t["verdict"]} for t in check_targets(result)])
    if not targets.empty:
        display(Markdown("The targets: a ratio's 95% interval inside its bound meets it, outside misses it, "
                         "across it is not resolved by this many rounds."))
        _html(targets)
