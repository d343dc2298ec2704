"""What the book's result pages display: tables, figures and sentences built from hupeft.report's
frames. Each figure is displayed once and closed; no `None` or `nan` reaches a reader; a
difference is named only when its 95% interval excludes zero.
"""

from __future__ import annotations

import contextlib
import re
import time
from html import escape

import pandas as pd

from . import report
from .report import METHOD_LABEL, METHOD_ORDER

DASH = "–"

# One colour per method on every figure (the Okabe-Ito palette, told apart with colour blindness
# too), and figures drawn at the width of the page's column (6.5 in) with text that stays legible there.
COLOR = {"zero-shot": "#999999", "full": "#000000", "lora": "#E69F00", "loraga": "#56B4E9", "boft": "#009E73",
         "urnn": "#D55E00", "hybrid": "#0072B2", "urnn-structured": "#CC79A7", "hybrid-paper": "#882255",
         "hybrid-normalized": "#44AA99"}
WIDTH = 6.5
STYLE = {"font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "legend.fontsize": 8.5, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
         "svg.hashsalt": "hupeft"}  # the same figure gives the same SVG


def _label(method) -> str:
    """The one name a method goes by on every page (report.LABEL)."""
    return report.LABEL.get(str(method), str(method))


def _color(method, i: int = 0) -> str:
    return COLOR.get(str(method), f"C{i % 10}")


def _figure(*args, **kwargs):
    """plt.subplots in the book's style, laid out by matplotlib's constrained layout (which, unlike
    tight_layout, makes room for a shared legend and suptitle without warnings)."""
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt.subplots(*args, layout="constrained", **kwargs)


# --- display primitives ------------------------------------------------------------------------


def _md(text: str) -> None:
    from IPython.display import Markdown, display

    display(Markdown(text))


def _glue(key: str, value) -> None:
    try:
        from myst_nb import glue
    except ImportError:
        return
    glue(key, float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value,
         display=False)


def _cell(x, digits: int | None) -> str:
    """One table value as text; digits=None prints floats in their shortest form (settings)."""
    if x is None or (isinstance(x, float) and pd.isna(x)):
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:g}" if digits is None else f"{x:,.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


class Link:
    """A table value shown as a link (its text) to `href`, a path relative to the result page.
    (Not a str: pandas would turn a column of those into its string dtype and drop the href.)"""

    def __init__(self, text: str, href: str):
        self.text, self.href = text, href

    def __str__(self) -> str:
        return self.text


# A cell of prose (three words in a row) may wrap; a number, a name, a symbol or a key such as
# "model · benchmark · metric" never does, so a value is not split across lines.
_PROSE = re.compile(r"(?:^|\s)[^\s·]+ [^\s·]+ [^\s·]+")


def _cell_html(x: str) -> str:
    text = escape(str(x))
    if isinstance(x, Link):
        text = f' <a href="{escape(x.href)}">{text}</a> '
    return f'<td class="prose">{text}</td>' if _PROSE.search(str(x)) and len(str(x)) > 24 else f"<td>{text}</td>"


def _table_html(shown: pd.DataFrame, classes: str) -> str:
    """A table of text values; tags are kept apart by newlines (no "><" for a check to trip on)."""
    head = "\n".join(f"<th>{escape(str(c))}</th>" for c in shown.columns)
    body = "\n".join("<tr>\n" + "\n".join(_cell_html(x) for x in row) + "\n</tr>"
                     for row in shown.itertuples(index=False))
    return (f'<table class="{classes}">\n<thead>\n<tr>\n{head}\n</tr>\n</thead>\n'
            f"<tbody>\n{body}\n</tbody>\n</table>")


def _csv_href(frame: pd.DataFrame) -> str:
    """Write the table as CSV under the generated book's files/tables/ (named by its content, so
    the same table gets the same file) and return its path relative to the result pages."""
    import hashlib

    out = frame.astype(object).apply(lambda col: col.map(
        lambda x: "" if x is None or (isinstance(x, float) and pd.isna(x))
        else ("yes" if x else "no") if isinstance(x, bool) else x.href if isinstance(x, Link) else str(x)))
    text = out.to_csv(index=False)
    name = hashlib.sha1(text.encode()).hexdigest()[:12] + ".csv"
    folder = report.GENERATED / "files" / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return f"files/tables/{name}"


def _html(frame: pd.DataFrame, digits: int | None = 3, wrap: bool = False, *, key: list[str] | None = None,
          fold: list[str] | None = None, rows=None, rows_label: str = "") -> None:
    """A table with every value as text: numbers at `digits`, missing values as a dash, prose
    cells wrapping, and a link to the whole table as CSV beside it.

    A table too wide or too long for the page leads with what a reader needs and folds the rest
    behind a dropdown: `fold` columns are shown there beside the `key` columns; with `rows` (a
    boolean mask) only those rows are shown open (`rows_label` says which), without the `fold`
    columns, and the whole table folds below them."""
    from IPython.display import HTML, display

    shown = frame.astype(object).apply(lambda col: col.map(lambda x: x if isinstance(x, Link) else _cell(x, digits)))
    classes = "hupeft-table hupeft-wrap" if wrap else "hupeft-table"
    fold = [c for c in (fold or []) if c in shown.columns]
    key = [c for c in (key or []) if c in shown.columns]
    parts = []
    if rows is not None:
        mask = pd.Series(list(rows), index=shown.index).astype(bool)
        if mask.any():
            parts.append(_table_html(shown[mask].drop(columns=fold), classes))
        parts.append(f"<details class=\"hupeft-fold\">\n<summary>All {len(shown)} rows</summary>\n"
                     + _table_html(shown, classes) + "\n</details>")
        if rows_label:
            parts.insert(0, f'<p class="hupeft-caption">{escape(rows_label)}</p>')
    else:
        parts.append(_table_html(shown.drop(columns=fold), classes))
    if fold and rows is None:
        parts.append(f"<details class=\"hupeft-fold\">\n<summary>More columns: {escape(', '.join(fold))}</summary>\n"
                     + _table_html(shown[key + fold], classes) + "\n</details>")
    parts.append(f'<p class="hupeft-csv">\n<a href="{_csv_href(frame)}" download="">Download this table (CSV)</a>\n</p>')
    display(HTML('<div class="hupeft-table-block">\n' + "\n".join(parts) + "\n</div>"))


def _show(fig) -> None:
    """Display a figure once, as SVG (sharp at any zoom), with its "Reproduce" box below it; the
    inline backend would show a returned figure a second time, so it is closed here.

    The box lists the page's records, or those in `fig.hupeft_runs` where the figure shows some of
    them; a figure drawn from something else sets `fig.hupeft_reproduce` to the function that shows
    its own box."""
    import io

    import matplotlib.pyplot as plt
    from IPython.display import SVG, display

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    display(SVG(buf.getvalue()))
    own = getattr(fig, "hupeft_reproduce", None)
    own() if own else reproduce(getattr(fig, "hupeft_runs", None))


@contextlib.contextmanager
def quiet():
    """Run library code whose warnings and progress messages are about this machine's packages (and
    print their paths), not about the results: none of it reaches the page."""
    import io
    import logging
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# --- every page ----------------------------------------------------------------------------------


# The preset and records of the page being built, as `provenance` (every page's first cell) sees
# them: the figures' "Reproduce" boxes name them.
_PAGE: dict = {}


def context(preset: str, df: pd.DataFrame | None = None) -> None:
    """Name the page's preset and records for its "Reproduce" boxes (provenance does so too)."""
    _PAGE.update(preset=preset, df=df)


def provenance(df: pd.DataFrame, preset: str) -> None:
    """Which preset produced this page, from how many runs, finished when; failures named."""
    context(preset, df)
    finished = max((r.get("finished_at") or 0) for r in df["record"])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(finished)) if finished else "unknown"
    ok = int((df["status"] == "ok").sum())
    _glue("preset", preset)
    _glue("runs", len(df))
    _md(f"*Computed from {len(df)} run records of preset `{preset}` ({ok} ok), the last finished {when}.*")
    if ok < len(df):
        _md(f"**{len(df) - ok} of {len(df)} runs did not finish ok** and are left out of the tables and "
            "figures; the setup page lists them with their errors.")


def report_command(preset: str, df: pd.DataFrame | None = None) -> tuple[str, bool]:
    """`hupeft report` as it rebuilds this preset's pages from these records, and whether its
    results folder had to be written as DIR (a folder outside the project, which a page does not name)."""
    from pathlib import Path

    paths = [Path(x) for x in df["path"]] if df is not None and len(df) else []
    results = next((up.parent for up in paths[0].parents if up.name == preset), None) if paths else None
    repo = report.REPO.resolve()
    if results is None or results.resolve() == repo / "results":
        opt = ""
    elif results.resolve().is_relative_to(repo):
        opt = f" --results {results.resolve().relative_to(repo).as_posix()}"
    else:
        opt = " --results DIR"
    return f"hupeft report --preset {preset}{opt} --build", opt.endswith("DIR")


def reproduce(df: pd.DataFrame | None = None, what: str = "figure") -> None:
    """Beside a figure: the command that rebuilds it, and the records it was drawn from, each
    linked to the book's copy (only runs that finished ok are drawn)."""
    from IPython.display import HTML, display

    preset = _PAGE.get("preset", "")
    df = _PAGE.get("df") if df is None else df
    if df is None or df.empty:
        return
    ok = df[df["status"] == "ok"]
    cmd, unnamed = report_command(preset, df)
    rerun = f"hupeft reproduce --preset {preset}" + (" --results DIR" if unnamed else "")
    items = []
    for (model, bench, method), g in ok.groupby(["model", "benchmark", "method"], observed=True, sort=False):
        links = ", ".join(f'<a href="{escape(h)}">seed {seed}</a>' if h else f"seed {seed}"
                          for seed, h in sorted((r["seed"], report.run_href(r)) for _, r in g.iterrows()))
        items.append(f"<li>\n{escape(str(model))} · {escape(str(bench))} · {escape(_label(method))}: {links}\n</li>")
    display(HTML(
        f'<details class="hupeft-reproduce">\n<summary>Reproduce this {escape(what)}</summary>\n<p>\n'
        f"<code>{escape(cmd)}</code> rebuilds it from the {len(ok)} run records below"
        + (f" (DIR: the folder that holds <code>{escape(preset)}/</code>)" if unnamed else "")
        + f"; <code>{escape(rerun)}</code> reruns those runs first.\n</p>\n"
        f"<ul>\n" + "\n".join(items) + "\n</ul>\n</details>"))


# --- setup -------------------------------------------------------------------------------------


def preset_rationale(preset: str) -> None:
    """The preset's description and why it is sized as it is (its `rationale` field)."""
    from .grid import GridError, load_preset

    try:
        spec = load_preset(preset)
    except GridError:
        _md(f"Preset `{preset}` is not among the shipped presets; its YAML says what it holds.")
        return
    _md(f"## The preset\n**{preset}**: {spec.get('description', '')}\n\n{spec.get('rationale', '')}")


def _setting(v) -> str:
    """A setting as a preset writes it (YAML's true/false, numbers in their shortest form)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return f"{v:g}" if isinstance(v, float) else str(v)


def setup_tables(df: pd.DataFrame) -> None:
    rows = []
    for (model, bench), g in df.groupby(["model", "benchmark"]):
        cfg = g.iloc[0]["record"]["config"]
        data = cfg.get("data", {})
        trunc = data.get("truncated") or {}
        rows.append({"model": model, "benchmark": bench, "data": data.get("description"),
                     "train / val / eval examples": " / ".join(_cell(data.get(k), 0) for k in ("n_train", "n_val", "n_eval")),
                     "seeds": ", ".join(str(s) for s in sorted(g["seed"].unique())),
                     "truncated examples": sum(v for v in trunc.values() if isinstance(v, int)) if trunc else DASH,
                     "synthetic": data.get("synthetic"), "task": cfg.get("task"), "precision": cfg.get("precision"),
                     # Which sandbox ran the model-written programs behind a HumanEval score.
                     "code execution": ", ".join(sorted({str(r.get("code_isolation")) for r in g["record"]
                                                         if r.get("code_isolation")})) or DASH})
    _md("## Models and data\nSynthetic data is generated by the project with a fixed seed; it tests the "
        "pipeline and the relative behaviour of methods, and is not comparable with the paper's benchmarks.")
    _html(pd.DataFrame(rows), key=["model", "benchmark"], fold=["synthetic", "task", "precision", "code execution"])
    keys = ["epochs", "lr", "batch_size", "grad_accum", "warmup_ratio", "clip_norm", "max_len"]
    hp = []
    for (model, bench, method), g in df.groupby(["model", "benchmark", "method"], observed=True):
        cfg = g.iloc[0]["record"]["config"]
        # An option left unset (None) takes the method's default, which `hupeft run --help` states.
        opts = {k: v for k, v in (cfg.get("method_options") or {}).items() if k != "target_modules" and v is not None}
        hp.append({"model": model, "benchmark": bench, "method": _label(method), **{k: cfg.get(k) for k in keys},
                   "method options": ", ".join(f"{k}={_setting(v)}" for k, v in opts.items()) or DASH})
    hp = pd.DataFrame(hp)
    # A setting every run shares is said once, above the table, so the table keeps what differs.
    shared = [k for k in keys if hp[k].astype(str).nunique() == 1 and hp[k].notna().all()]
    _md("## Hyperparameters, as run\n" + ("Every run: " + ", ".join(f"{k} {_setting(hp[k].iloc[0])}" for k in shared)
                                         + ". " if shared else "")
        + "Method options left unset take the method's defaults (`hupeft run --help`).")
    _html(hp.drop(columns=shared), digits=None)
    env = next((r["environment"] for r in df["record"] if r.get("environment")), {})
    if env:
        _md(f"## Hardware\n{env.get('device')} ({env.get('device_kind')}), {env.get('cpu_count')} CPUs, "
            f"{env.get('gpu_count')} GPUs; torch {env.get('packages', {}).get('torch')}.")


def data_sources(df: pd.DataFrame) -> None:
    """Which data each run asked for and which it used, from where, with the content hash of each split."""
    frame = report.data_provenance(df)
    if frame.empty:
        return
    _md("## Data sources\nEach run asks for real data, generated data, or either (`data=real`, `synthetic`, "
        "`any`); its record names the source of every split it used (a data folder, the Hugging Face hub or "
        "its local cache, or data shipped with the project) with a hash of the split's rows, and the sources "
        "that failed before a fallback to generated data.")
    _html(frame.fillna(DASH).replace("", DASH), wrap=True)


def evaluation_choices(df: pd.DataFrame) -> None:
    """How each score was computed: the signature its records keep, per benchmark and metric."""
    frame = report.evaluation_signatures(df)
    if frame.empty:
        return
    _md("## How each score was computed\nAs each record states it: sacrebleu's signature for BLEU and "
        "chrF++ (its tokenizer for the target language), the tokenizer of ROUGE-L, the prompt, decoding, stop "
        "sequences and matching of GSM8K (lm-evaluation-harness's `gsm8k` task), greedy pass@1 and sampled "
        "pass@10 of HumanEval, and the rule that turns a classifier's output into a label.")
    # A classifier's signature ends "|<n> labelled examples" (hupeft.benchmarks.glue): said in words here.
    frame = frame.assign(**{"computed as": frame["computed as"].astype(str).str.replace(
        r"\|(\d+) labelled examples$", r", over \1 labelled examples", regex=True)})
    _html(frame, wrap=True)


def show_failures(df: pd.DataFrame) -> None:
    bad = report.failures(df)
    _glue("failed_runs", len(bad))
    if bad.empty:
        _md("## Failed runs\nEvery run of this preset finished ok.")
        return
    _md(f"## Failed runs\n**{len(bad)} of {len(df)} runs did not finish ok.** They are left out of every "
        "table and figure; the reproducibility page links their records and executed notebooks.")
    _html(bad.assign(method=[_label(m) for m in bad["method"]]), wrap=True)


# --- Table I ---------------------------------------------------------------------------------------


def show_table1(t1: pd.DataFrame, paper: pd.DataFrame, glue: pd.DataFrame | None = None) -> None:
    if t1.empty:
        _md("No run finished ok, so there is nothing to tabulate.")
        return
    _md("Methods as rows, as in the paper. Our columns give the mean over seeds ± the half width of its "
        "95% t-interval (percent for accuracies and pass rates); the paper's columns give its printed "
        "means for its own models (`data/paper/table1.csv`). The paper's GLUE column is one score per "
        "run over its GLUE tasks; ours are single synthetic GLUE-style tasks. Different models and "
        "data: the paper's numbers are context, not targets.")
    if glue is not None and not glue.empty:
        tasks = ", ".join(t.split("/")[-1].upper() for t in report.GLUE_TASKS)
        _md(f"`GLUE mean (ours)`: the unweighted mean of the accuracies on {tasks} (the GLUE tasks the "
            "paper names) within one seed, the usual GLUE aggregate, for each model and method that ran "
            "all of them on the same seed; the paper does not say how it combines its tasks.")
        for _, r in glue.iterrows():
            _glue(f"t1/{r['model']}/glue/{r['method']}/score", float(r["mean"]))
    for pbench, frame in report.table1_layout(t1, paper, glue).items():
        part = t1[t1["benchmark"].map(report.PAPER_BENCHMARK).fillna(t1["benchmark"]) == pbench]
        ours = ", ".join(f"{b} {m}" for b, m in part[["benchmark", "metric"]].drop_duplicates().values)
        theirs = ", ".join(sorted({v for (b, m), v in report.PAPER_METRIC.items() if b == pbench
                                   and m in set(part["metric"])}))
        _md(f"### {pbench}\nOurs: {ours}" + (f"; the paper's: {theirs}." if theirs else ".")
            + _not_in_paper(pbench))
        _html(frame)
    for _, r in t1.iterrows():
        _glue(f"t1/{r['model']}/{r['benchmark']}/{r['method']}/{r['metric']}", float(r["mean"]))
    sampling = t1.dropna(subset=["sampling_ci95"])
    if not sampling.empty:
        lines = [f"- {m} · {b}: {int(n)} examples scored, so one run's accuracy carries ± "
                 f"{sampling[(sampling['model'] == m) & (sampling['benchmark'] == b)]['sampling_ci95'].max():.1f} "
                 "points (95% Wilson interval, at worst over methods)"
                 for (m, b, n), _ in sampling.groupby(["model", "benchmark", "n_eval"])]
        _md("Evaluation-set sampling alone:\n" + "\n".join(lines))


def _not_in_paper(bench: str) -> str:
    """For a benchmark that is not a column of the paper's Table I: say so, and what it stands in for."""
    if bench in set(report.PAPER_BENCHMARK.values()):
        return ""
    from . import benchmarks

    try:
        instead = benchmarks.get(bench).stands_in_for
    except ValueError:
        instead = None
    if instead:
        return (f" **{bench} stands in for {instead} and is not {instead}**: the paper's {instead} numbers are "
                "not set beside it.")
    return " Not a benchmark of the paper's Table I: no paper numbers beside it."


def top_methods(t1: pd.DataFrame, df: pd.DataFrame) -> None:
    """Per model, benchmark and metric: the top method only when it beats every other method by a
    resolved paired difference; otherwise the methods within noise of the top."""
    lines = []
    for (model, bench, metric), g in t1.groupby(["model", "benchmark", "metric"], observed=True):
        best = g.sort_values("mean", ascending=False).iloc[0]["method"]
        pc = report.paired_comparisons(df, treatment=best)
        pc = pc[(pc["model"] == model) & (pc["benchmark"] == bench) & (pc["metric"] == metric)]
        tied = [METHOD_LABEL[b] for b, res in zip(pc["baseline"], pc["resolved"]) if not res]
        if len(g) < 2:
            continue
        if not tied and len(pc) == len(g) - 1:
            lines.append(f"- {model} · {bench} · {metric}: **{METHOD_LABEL[best]}** is ahead of every other "
                         "method (each paired 95% interval excludes zero).")
        else:
            lines.append(f"- {model} · {bench} · {metric}: no single best method; "
                         f"{', '.join([METHOD_LABEL[best]] + tied)} are within noise of each other at the top.")
    if lines:
        _md("Which method is ahead, at this scale:\n" + "\n".join(lines))


# More comparisons than this and a table shows the resolved ones and folds them all below.
LONG = 12


def _long_comparisons(pc: pd.DataFrame) -> dict:
    """_html's arguments for a table of paired comparisons: a long one opens on its resolved rows."""
    if len(pc) <= LONG:
        return {}
    n = int(pc["resolved"].sum())
    return {"rows": pc["resolved"], "rows_label": f"{n} of {len(pc)} comparisons resolve"
            + (" (shown); all are folded below." if n else "; all are folded below.")}


def show_paired(pc: pd.DataFrame, what: str = "score") -> None:
    """The hybrid against each baseline: paired differences over seeds, and what they resolve."""
    if pc.empty:
        _md("No hybrid run with a baseline on the same seeds in this preset.")
        return
    metrics = sorted(set(pc["metric"]))
    label = (lambda m, b, x: f"{m} · {b} · {x}") if len(metrics) > 1 else (lambda m, b, x: f"{m} · {b}")
    shown = pd.DataFrame({
        "model · benchmark" + (" · metric" if len(metrics) > 1 else f" ({metrics[0]})"):
            [label(m, b, x) for m, b, x in pc[["model", "benchmark", "metric"]].values],
        "comparison": pc["comparison"], "seeds": pc["seeds"],
        "difference (95% interval)": [report.fmt_interval(d, h, 2) for d, h in zip(pc["difference"], pc["ci95"])],
        "resolved (excludes 0)": pc["resolved"]})
    _html(shown, **_long_comparisons(pc))
    res, unres = pc[pc["resolved"]], pc[~pc["resolved"]]
    better = "lower" if what == "val_loss" else "higher"
    words = []
    for _, r in res.iterrows():
        sign = "higher" if r["difference"] > 0 else "lower"
        verdict = "better" if sign == better else "worse"
        words.append(f"- {r['model']} · {r['benchmark']} · {r['metric']}: Hybrid is {verdict} than "
                     f"{METHOD_LABEL[r['baseline']]} ({sign} by {abs(r['difference']):.2f}, interval "
                     f"{r['low']:.2f} to {r['high']:.2f}).")
    _md("**Resolved at this scale** (the paired 95% interval excludes zero):\n"
        + ("\n".join(words) if words else "- none."))
    if not unres.empty:
        names = ", ".join(sorted({f"{METHOD_LABEL[b]}" for b in unres["baseline"]}, key=list(METHOD_LABEL.values()).index))
        _md(f"**Not resolved**: {len(unres)} of {len(pc)} comparisons (against {names} on some task) have "
            "intervals that include zero: with these seeds the data cannot tell those methods apart.")
    _glue(f"paired_{what}_resolved", int(len(res)))
    _glue(f"paired_{what}_total", int(len(pc)))


def plot_table1(t1: pd.DataFrame) -> None:
    if t1.empty:
        return
    keys = t1[["model", "benchmark", "metric"]].drop_duplicates().values.tolist()
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = _figure(rows, cols, figsize=(WIDTH, 2.5 * rows), squeeze=False)
    for ax, (model, bench, metric) in zip(axes.flat, keys):
        part = t1[(t1["model"] == model) & (t1["benchmark"] == bench) & (t1["metric"] == metric)]
        part = part.sort_values("method")
        for x, (_, r) in enumerate(part.iterrows()):
            ax.errorbar([x], [r["mean"]], yerr=[0 if pd.isna(r["ci95"]) else r["ci95"]], fmt="o", capsize=3,
                        color=_color(r["method"], x))
        ax.set_xticks(range(len(part)), [_label(m) for m in part["method"]], rotation=45, ha="right",
                      rotation_mode="anchor")
        ax.set_title(f"{model} · {bench} · {metric}")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle("mean over seeds; bars: 95% interval over seeds (none with one seed)")
    _show(fig)


# --- Fig. 1 --------------------------------------------------------------------------------------


def show_fig1(f1: pd.DataFrame, df: pd.DataFrame | None = None) -> None:
    if f1.empty:
        _md("No run finished ok.")
        return
    kind = ", ".join(sorted(set(f1["memory_kind"]) - {""})) or "unknown"
    _md(f"Seconds per training epoch and peak memory per method, mean ± 95% interval over seeds (memory: "
        f"`{kind}`; on CPU the process's peak resident set, which includes the Python runtime and the frozen "
        "weights; on GPU CUDA's maximum allocated bytes). Epochs differ between models and tasks, so "
        "compare methods within a model.")
    shown = pd.DataFrame({"model": f1["model"], "method": [_label(m) for m in f1["method"]],
                          "seconds per epoch": [report.fmt_interval(m, h, 2) for m, h in
                                                zip(f1["seconds_per_epoch"], f1["seconds_ci95"])],
                          "peak memory (GiB)": [report.fmt_interval(m, h, 3) for m, h in
                                                zip(f1["peak_memory_gib"], f1["memory_ci95"])],
                          "runs": f1["runs"]})
    _html(shown)
    for _, r in f1.iterrows():
        _glue(f"fig1/{r['model']}/{r['method']}/seconds", float(r["seconds_per_epoch"]))
        _glue(f"fig1/{r['model']}/{r['method']}/memory_gib", float(r["peak_memory_gib"]))
    if df is not None:
        timing_caveat(f1, df)


def timing_caveat(f1: pd.DataFrame, df: pd.DataFrame) -> None:
    """How the runs were timed (beside which others, from their records' start and finish) and
    how their hybrid / LoRA ratio compares with the controlled bench of the cost page."""
    import json

    from .scale_report import MODEL_JSON

    c = report.concurrency(df)
    if not c["runs"]:
        return
    if c["most"] > 1:
        when = (f"**How these times were measured.** The grid runs a preset's cells several at a time: these runs' "
                f"records show up to {c['most']} running at once, and {c['overlapped']} of the {c['runs']} shared part "
                "of their time with another. A run's time per epoch therefore depends on what ran beside it.")
    else:
        when = (f"**How these times were measured.** Their records' start and finish times show the {c['runs']} runs "
                "one at a time, none beside another.")
    wide = f1.pivot_table(index="model", columns="method", values="seconds_per_epoch", observed=True)
    here = ({m: float(v) for m, v in (wide["hybrid"] / wide["lora"]).dropna().items()}
            if {"hybrid", "lora"} <= set(wide.columns) else {})
    bench = json.loads(MODEL_JSON.read_text()) if MODEL_JSON.exists() else {}
    ratio = ((bench.get("methods") or {}).get("hybrid") or {}).get("step_ratio", {}).get("lora")
    if ratio and here:
        half = ratio.get("half_width")
        iv = f"{ratio['mean']:.2f}" + (f" ± {half:.2f}" if half is not None and half == half else "")
        ratios = [f"{v:.2f} times LoRA's on {m}" if i == 0 else f"{v:.2f} times on {m}"
                  for i, (m, v) in enumerate(here.items())]
        ours = ", ".join(ratios[:-1]) + " and " + ratios[-1] if len(ratios) > 1 else ratios[0]
        when += (f" The controlled measurement is the cost page's bench, which times each method's training step in "
                 f"turn within one process ({bench.get('model')}): there a Hybrid step takes {iv} times LoRA's (95% "
                 f"interval over rounds); here a Hybrid epoch takes {ours}. Where the two disagree, read the bench.")
    _md(when)


def plot_fig1(f1: pd.DataFrame) -> None:
    if f1.empty:
        return
    models = list(dict.fromkeys(f1["model"]))
    fig, axes = _figure(len(models), 2, figsize=(WIDTH, 2.6 * len(models)), squeeze=False)
    for row, model in zip(axes, models):
        part = f1[f1["model"] == model].sort_values("method")
        labels = [_label(m) for m in part["method"]]
        colors = [_color(m, i) for i, m in enumerate(part["method"])]
        for ax, col, ci, title in ((row[0], "seconds_per_epoch", "seconds_ci95", "time per epoch (s)"),
                                   (row[1], "peak_memory_gib", "memory_ci95", "peak memory (GiB)")):
            # One seed has no interval: no bar rather than a bar of zero.
            err = part[ci].fillna(0) if part[ci].notna().any() else None
            ax.bar(labels, part[col], yerr=err, capsize=3 if err is not None else 0, color=colors)
            ax.set_title(f"{model}: {title}")
            ax.tick_params(axis="x", rotation=45)
            for t in ax.get_xticklabels():
                t.set_horizontalalignment("right")
                t.set_rotation_mode("anchor")
    fig.suptitle("mean over seeds; bars: 95% interval over seeds (none with one seed)")
    df = _PAGE.get("df")
    fig.hupeft_runs = df[df["epochs"] > 0] if df is not None else None  # a run that trains nothing has no time
    _show(fig)


# --- Fig. 2 --------------------------------------------------------------------------------------


def plot_fig2(ep: pd.DataFrame) -> None:
    """Gradient norm and validation loss per epoch: each seed's run as a thin line, the mean over
    seeds as a thick one. (A band of mean ± t x sd runs below zero on a log axis or for a loss;
    the seeds' own lines show the spread without inventing values.)"""
    if ep.empty:
        _md("No epochs recorded.")
        return
    groups = ep[["model", "benchmark"]].drop_duplicates().values.tolist()
    fig, axes = _figure(len(groups), 2, figsize=(WIDTH, 2.7 * len(groups) + 0.5), squeeze=False)
    handles = {}
    for row, (model, bench) in zip(axes, groups):
        part = ep[(ep["model"] == model) & (ep["benchmark"] == bench)]
        for ax, col, title in ((row[0], "grad_norm", "gradient norm (mean per epoch)"),
                               (row[1], "val_loss", "validation loss")):
            for i, method in enumerate(m for m in METHOD_ORDER if m in set(part["method"])):
                g = part[part["method"] == method].dropna(subset=[col])
                if g.empty:
                    continue
                for _, run in g.groupby("seed"):
                    run = run.sort_values("epoch")
                    ax.plot(run["epoch"], run[col], color=_color(method, i), lw=0.7, alpha=0.35)
                mean = g.groupby("epoch")[col].mean()
                handles[method], = ax.plot(mean.index, mean.values, marker="o", ms=2.5, lw=1.6,
                                           color=_color(method, i), label=_label(method))
            ax.set_title(f"{model} · {bench}: {title}")
            ax.set_xlabel("epoch")
            if col == "grad_norm":  # early epochs' norms are orders of magnitude above the last
                ax.set_yscale("log")
            _integer_x(ax)
    fig.legend([handles[m] for m in METHOD_ORDER if m in handles], [_label(m) for m in METHOD_ORDER if m in handles],
               loc="outside lower center", ncol=min(7, len(handles)))
    fig.suptitle("thick: mean over seeds; thin: each seed's run")
    fig.hupeft_runs = _runs(ep)
    _show(fig)


def show_fig2(ep: pd.DataFrame) -> None:
    from .stats import mean_interval

    if ep.empty:
        return
    rows = []
    for (model, bench, method), g in ep.groupby(["model", "benchmark", "method"], observed=True):
        last = g[g["epoch"] == g["epoch"].max()]
        gn, vl = mean_interval(last["grad_norm"]), mean_interval(last["val_loss"])
        rows.append({"model · benchmark": f"{model} · {bench}", "method": _label(method),
                     "epochs": int(g["epoch"].max()), "final gradient norm": report.fmt_interval(gn.mean, gn.half_width, 3),
                     "final validation loss": report.fmt_interval(vl.mean, vl.half_width, 3), "seeds": vl.n})
    _md("The last epoch, mean ± 95% interval over seeds (gradient norm: the global norm before clipping, "
        "averaged over the epoch's optimiser steps):")
    _html(pd.DataFrame(rows))


# --- beyond the paper ------------------------------------------------------------------------------


def _short_layer(name: str) -> str:
    """A targeted layer by its block number and projection ("3 · q_proj" for
    model.layers.3.self_attn.q_proj, "0 · query" for bert.encoder.layer.0.attention.self.query)."""
    import re

    m = re.search(r"\.(\d+)\.(?:.*\.)?([^.]+)$", name)
    return f"{m.group(1)} · {m.group(2)}" if m else name


def _layer_order(name: str) -> tuple:
    """Layers in model order (2 before 10), not in the order of their names as text."""
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _rules(frame: pd.DataFrame) -> list[str]:
    """The lambda rules in the frame, the default (slope) first."""
    return sorted(set(frame["rule"]), key=lambda r: (not r.startswith("slope"), r))


def plot_lambda_rules(lam: pd.DataFrame) -> None:
    """Heat maps of lambda per layer (rows) and optimiser step (columns), one per rule."""
    import seaborn as sns

    if lam.empty:
        _md("No hybrid run in this preset.")
        return
    _md("$\\lambda$ of every targeted layer after every optimiser step, mean over seeds, one panel per rule "
        "($\\lambda = 1$: all LoRA-GA, $\\lambda = 0$: all BOFT). `slope` is the default `hybrid` that Table I "
        "compares.")
    for (model, bench), part in lam.groupby(["model", "benchmark"], sort=False):
        rules = _rules(part)
        layers = part["layer"].nunique()
        # At most about 16 layer names per panel, so that each stays legible.
        every = max(1, -(-layers // 16))
        fig, axes = _figure(1, len(rules), figsize=(WIDTH, 1.4 + 0.07 * layers), squeeze=False, sharey=True)
        for i, (ax, rule) in enumerate(zip(axes[0], rules)):
            grid = part[part["rule"] == rule].pivot_table(index="layer", columns="step", values="lambda", aggfunc="mean")
            grid = grid.loc[sorted(grid.index, key=_layer_order)]
            grid.index = [_short_layer(n) for n in grid.index]
            sns.heatmap(grid, vmin=0, vmax=1, cmap="vlag", ax=ax, cbar=i == len(rules) - 1, yticklabels=every,
                        xticklabels="auto", cbar_kws={"label": "λ (1: LoRA-GA, 0: BOFT)"})
            ax.set_title(f"rule: {rule}")
            ax.tick_params(axis="y", labelsize=7)
            ax.tick_params(axis="x", labelsize=7, rotation=0)
            ax.set_ylabel("")
            ax.set_xlabel("optimiser step")
        axes[0][0].set_ylabel("layer · projection")
        fig.suptitle(f"{model} · {bench}")
        fig.hupeft_runs = _runs(part)
        _show(fig)


def _runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The records of the page (provenance's) behind a frame of some of its runs (model, benchmark,
    method and seed), for a figure's "Reproduce" box."""
    df = _PAGE.get("df")
    if df is None or frame.empty:
        return df
    keys = {(str(a), str(b), str(c), int(d)) for a, b, c, d in frame[["model", "benchmark", "method", "seed"]].values}
    return df[[(str(r["model"]), str(r["benchmark"]), str(r["method"]), int(r["seed"])) in keys
               for _, r in df.iterrows()]]


def _seed_lines(ax, frame: pd.DataFrame, y: str, color: str, label: str, style: str = "-"):
    """Each seed's run as a thin line and the mean over seeds as a thick one (no band: a band of
    mean ± t x sd can run below zero, which a log axis cannot show and a norm cannot be)."""
    frame = frame.dropna(subset=[y])
    if frame.empty:
        return None
    for _, run in frame.groupby("seed"):
        run = run.groupby("epoch")[y].mean()
        ax.plot(run.index, run.values, style, color=color, lw=0.7, alpha=0.35)
    mean = frame.groupby(["epoch", "seed"])[y].mean().groupby(level=0).mean()
    line, = ax.plot(mean.index, mean.values, style, marker="o", ms=2.5, lw=1.6, color=color, label=label)
    return line


def show_lambda_summary(summary: pd.DataFrame) -> None:
    """Per rule: where lambda ends, and whether the hybrid has become one branch, in words."""
    if summary.empty:
        return
    rows, lines = [], []
    for (model, bench, rule), g in summary.groupby(["model", "benchmark", "rule"], sort=False):
        one = g[g["one_branch"] != ""]
        rows.append({"model · benchmark": f"{model} · {bench}", "rule": rule, "seeds": len(g),
                     "final λ, mean over layers": report.fmt_interval(g["final_mean"].mean(), float("nan"), 3),
                     "final λ, lowest / highest layer": f"{g['final_min'].min():.3f} / {g['final_max'].max():.3f}",
                     f"layers above {report.DEGENERATE}": f"{100 * g['above'].mean():.0f}%",
                     f"layers below {1 - report.DEGENERATE:.2f}": f"{100 * g['below'].mean():.0f}%",
                     "layers mixed": f"{100 * g['mixed'].mean():.0f}%",
                     "BOFT's share of the movement": (f"{100 * g['boft_share'].mean():.1f}%"
                                                      if "boft_share" in g and g["boft_share"].notna().any() else DASH),
                     "seeds reduced to one branch": f"{len(one)} of {len(g)}"})
        _glue(f"lambda/{model}/{bench}/{rule}/final_mean", float(g["final_mean"].mean()))
        _glue(f"lambda/{model}/{bench}/{rule}/one_branch_seeds", int(len(one)))
        hi, lo = report.DEGENERATE, round(1 - report.DEGENERATE, 2)
        for branch, b in one.groupby("one_branch"):
            side = {"LoRA-GA": "above", "BOFT": "below"}.get(branch, "beyond")
            frm = b[f"all_{side}_from"].dropna()
            when = f" (from step {int(frm.min())}" + (
                f" to {int(frm.max())}, depending on the seed, on)" if frm.max() != frm.min() else " on)") if len(frm) else ""
            if side == "beyond":
                lines.append(f"- {model} · {bench}, **{rule}**: in {len(b)} of {len(g)} seeds every layer's λ ended above {hi} or "
                             f"below {lo}{when}, {100 * b['above'].mean():.0f}% of layers above and "
                             f"{100 * b['below'].mean():.0f}% below: each layer is **one branch alone** (LoRA-GA or "
                             "BOFT), the other weighted below 5%, and no layer mixes the two.")
            else:
                lines.append(f"- {model} · {bench}, **{rule}**: in {len(b)} of {len(g)} seeds every layer's λ ended {side} "
                             f"{hi if side == 'above' else lo}{when}: there the hybrid is **{branch} alone** in all "
                             "but name, with the other branch weighted below 5%.")
        rest = g[g["one_branch"] == ""]
        if len(rest):
            lines.append(f"- {model} · {bench}, **{rule}**: in {len(rest)} of {len(g)} seeds some layers keep both branches in the mix "
                         f"(λ between {lo} and {hi}): {100 * rest['mixed'].mean():.0f}% of layers on average, "
                         f"λ {rest['final_min'].min():.2f} to {rest['final_max'].max():.2f} over layers.")
    _md("At the last step, per rule, over seeds (the mean over layers is averaged over seeds; lowest and highest "
        "are over all layers and seeds). BOFT's share of the movement: the BOFT branch's mixed change of the "
        "weights, $\\lVert (1 - \\lambda)(R - I) W_0 \\rVert_F$, summed over layers, over both branches' sum, "
        "at the last epoch.")
    _html(pd.DataFrame(rows), key=["model · benchmark", "rule"],
          fold=[f"layers above {report.DEGENERATE}", f"layers below {1 - report.DEGENERATE:.2f}", "layers mixed"])
    _md("**When the hybrid is one branch**, read from the records:\n" + "\n".join(lines))


def plot_branch_movement(br: pd.DataFrame) -> None:
    """Each branch's movement of the weights per epoch and rule: unmixed and as mixed by lambda."""
    if br.empty:
        return
    _md("How far each branch moves the targeted weights, $\\lVert \\Delta W \\rVert_F / \\lVert W_0 \\rVert_F$ "
        "averaged over layers, per epoch (thick: mean over seeds; thin: each seed's run). Left: each branch on its "
        "own (whether its parameters train); right: as the mix applies it, $\\lambda\\, \\Delta W_\\text{LoRA-GA}$ "
        "and $(1 - \\lambda)(R - I) W_0$. Colour: the rule; solid: LoRA-GA, dashed: BOFT.")
    for (model, bench), part in br.groupby(["model", "benchmark"], sort=False):
        # Records written before `branch_delta` was kept have the mixed movement only.
        kinds = [(k, t) for k, t in (("delta", "each branch alone"), ("change", "as mixed"))
                 if part[[f"lora_{k}", f"boft_{k}"]].notna().any().any()]
        fig, axes = _figure(1, len(kinds), figsize=(WIDTH, 3.2), sharey=True, squeeze=False)
        axes = axes[0]
        handles = []
        for ax, (kind, title) in zip(axes, kinds):
            handles = []
            for i, rule in enumerate(_rules(part)):
                g = part[part["rule"] == rule]
                color = _color(g["method"].iloc[0], i)
                for branch, style in (("lora", "-"), ("boft", "--")):
                    line = _seed_lines(ax, g, f"{branch}_{kind}", color,
                                       f"{'LoRA-GA' if branch == 'lora' else 'BOFT'} · {rule}", style)
                    if line is not None:
                        handles.append(line)
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_title(title)
            _integer_x(ax)
        axes[0].set_ylabel(r"$\|\Delta W\|_F \,/\, \|W_0\|_F$")
        fig.legend(handles, [h.get_label() for h in handles], loc="outside lower center", ncol=min(3, len(handles)))
        fig.suptitle(f"{model} · {bench}")
        fig.hupeft_runs = _runs(part)
        _show(fig)


def _variant_table(vs: pd.DataFrame) -> None:
    _html(pd.DataFrame({"model · benchmark · metric": [f"{m} · {b} · {x}" for m, b, x in
                                                      vs[["model", "benchmark", "metric"]].values],
                        "method": [report.LABEL.get(m, m) for m in vs["method"]],
                        "mean (95% interval)": [report.fmt_interval(m, h) for m, h in zip(vs["mean"], vs["ci95"])],
                        "per seed": vs["runs"], "seeds": vs["n"]}))
    for _, r in vs.iterrows():
        _glue(f"variant/{r['model']}/{r['benchmark']}/{r['method']}/{r['metric']}", float(r["mean"]))


def _paired_table(pc: pd.DataFrame) -> None:
    """Paired differences with their intervals, and in words only those that are resolved."""
    _html(pd.DataFrame({"model · benchmark · metric": [f"{m} · {b} · {x}" for m, b, x in
                                                      pc[["model", "benchmark", "metric"]].values],
                        "comparison": pc["comparison"], "seeds": pc["seeds"],
                        "difference (95% interval)": [report.fmt_interval(d, h, 2) for d, h in
                                                      zip(pc["difference"], pc["ci95"])],
                        "resolved (excludes 0)": pc["resolved"]}), **_long_comparisons(pc))
    res = pc[pc["resolved"]]
    _md("**Resolved** (the paired 95% interval excludes zero): " + ("; ".join(
        f"{r['comparison']} = {r['difference']:+.2f} ({r['low']:.2f} to {r['high']:.2f})" for _, r in res.iterrows())
        if not res.empty else "none; with these seeds the data cannot tell these methods apart.") )


def show_rule_scores(df: pd.DataFrame) -> None:
    """Each rule's score with its interval, and paired against the default hybrid, LoRA-GA and BOFT."""
    hybrids = [m for m in ("hybrid", *report.VARIANT_LABEL) if m.startswith("hybrid") and m in set(df["method"])]
    vs = report.variant_scores(df, hybrids + ["loraga", "boft"])
    if len(hybrids) < 2 or vs.empty:
        _md("This preset runs the hybrid under one lambda rule only.")
        return
    _md("Scores of the hybrid under each rule beside its two branches run alone (mean over seeds ± 95% "
        "interval), then each rule minus the default hybrid, LoRA-GA and BOFT on the same seeds.")
    _variant_table(vs)
    pcs = [report.paired_comparisons(df, treatment=m, baselines=[b for b in ("hybrid", "loraga", "boft") if b != m])
           for m in hybrids]
    pc = pd.concat([p for p in pcs if not p.empty], ignore_index=True) if any(not p.empty for p in pcs) else pd.DataFrame()
    if not pc.empty:
        _paired_table(pc)


def plot_unitary(ul: pd.DataFrame) -> None:
    """Both uRNN variants per epoch: how far U moved from the identity, and its unitarity error."""
    if ul.empty:
        _md("No uRNN run in this preset.")
        return
    _md("The uRNN's $U$ per epoch, for each variant (thick: mean over seeds; thin: each seed's run): left, how far "
        "it moved from the identity, $\\lVert U - I \\rVert_F / \\sqrt{d}$ averaged over layers; right, the "
        "largest unitarity error $\\max \\lvert U^H U - I \\rvert$ over layers (log scale). uRNN is Algorithm 1, "
        "$U$ trained on the unitary group; uRNN (structured) is `urnn-structured`.")
    for (model, bench), part in ul.groupby(["model", "benchmark"], sort=False):
        fig, axes = _figure(1, 2, figsize=(WIDTH, 2.9))
        handles = []
        for i, (method, g) in enumerate(part.groupby("method", sort=True)):
            for ax, col in ((axes[0], "distance_mean"), (axes[1], "unitarity_error")):
                line = _seed_lines(ax, g, col, _color(method, i), _label(method))
            handles.append(line)
        axes[0].set_title(r"$\|U - I\|_F \,/\, \sqrt{d}$")
        axes[1].set_title(r"$\max\, |U^H U - I|$")
        axes[1].set_yscale("log")
        for ax in axes:
            ax.set_xlabel("epoch")
            _integer_x(ax)
        handles = [h for h in handles if h is not None]
        fig.legend(handles, [h.get_label() for h in handles], loc="outside lower center", ncol=len(handles))
        fig.suptitle(f"{model} · {bench}")
        fig.hupeft_runs = _runs(part)
        _show(fig)


def show_urnn_variants(df: pd.DataFrame, ul: pd.DataFrame) -> None:
    """Both uRNN variants: U's movement and unitarity at the last epoch, their scores, and the paired
    difference between them."""
    if ul.empty:
        return
    rows = []
    for (model, bench, method, variant), g in ul.groupby(["model", "benchmark", "method", "variant"], sort=False):
        last = g[g["epoch"] == g["epoch"].max()]
        rows.append({"model · benchmark": f"{model} · {bench}", "method": _label(method),
                     "seeds": last["seed"].nunique(),
                     "‖U − I‖ / √d, last epoch": report.fmt_interval(last["distance_mean"].mean(), float("nan"), 4),
                     "largest layer": f"{last['distance_max'].max():.4f}",
                     "max unitarity error, any epoch": f"{g['unitarity_error'].max():.1e}",
                     "re-projections": (int(last["renormalisations"].max()) if last["renormalisations"].notna().any()
                                        else DASH)})
        _glue(f"urnn/{model}/{bench}/{variant}/distance", float(last["distance_mean"].mean()))
        _glue(f"urnn/{model}/{bench}/{variant}/unitarity_error", float(g["unitarity_error"].max()))
    _md("At the last epoch, mean over seeds (re-projections: how often a block of Algorithm 1's U drifted "
        "past the tolerance and was put back on the unitary group):")
    _html(pd.DataFrame(rows))
    methods = [m for m in ("urnn", "urnn-structured") if m in set(df["method"])]
    vs = report.variant_scores(df, methods)
    if vs.empty:
        return
    _md("Scores of both variants (mean over seeds ± 95% interval):")
    _variant_table(vs)
    if len(methods) == 2:
        pc = report.paired_comparisons(df, treatment="urnn", baselines=["urnn-structured"])
        if not pc.empty:
            _paired_table(pc)


def plot_orthogonality(ep: pd.DataFrame) -> None:
    part = ep.dropna(subset=["orthogonality_error"]) if "orthogonality_error" in ep else ep.iloc[0:0]
    if part.empty:
        _md("No rotation-based run (BOFT, uRNN, Hybrid) in this preset.")
        return
    _md("Orthogonality / unitarity error $\\max \\lvert R^\\top R - I \\rvert$ per epoch (log scale; thick: "
        "mean over seeds, thin: each seed's run): how far the rotations drift from the manifold in floating point.")
    models = list(dict.fromkeys(part["model"]))
    fig, axes = _figure(1, len(models), figsize=(WIDTH, 2.9), squeeze=False, sharey=True)
    handles = {}
    for ax, model in zip(axes[0], models):
        g = part[part["model"] == model]
        present = set(g["method"].astype(str))
        for i, method in enumerate([m for m in report.LABEL if m in present] + sorted(present - set(report.LABEL))):
            line = _seed_lines(ax, g[g["method"].astype(str) == method], "orthogonality_error", _color(method, i),
                               _label(method))
            if line is not None:
                handles[str(method)] = line
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(model)
        _integer_x(ax)
    axes[0][0].set_ylabel(r"$\max\, |R^\top R - I|$")
    fig.legend(list(handles.values()), [h.get_label() for h in handles.values()], loc="outside lower center",
               ncol=min(6, len(handles)))
    _glue("orthogonality_error_max", float(part["orthogonality_error"].max()))
    fig.hupeft_runs = _runs(part)
    _show(fig)


def show_params(pf: pd.DataFrame) -> None:
    _md("Trainable parameters per method (counted from the adapted model; classification heads included). "
        "uRNN's count follows its block size (`block_size` among the method options on the setup page; unset, "
        "one unitary matrix spans a whole layer), so it differs between presets and from the cost page's bench.")
    shown = pf.assign(method=[_label(m) for m in pf["method"]], percent=pf["percent"].round(4))
    _html(shown.rename(columns={"percent": "trainable (%)"}), digits=4)


def show_multilingual(ml: pd.DataFrame) -> None:
    if ml.empty:  # hupeft report leaves this page out of the book then (report.has_content)
        _md("This preset has no XNLI or FLORES runs. Run `hupeft reproduce --preset multilingual` for the "
            "study (32 training examples per language).")
        return
    _html(pd.DataFrame({"benchmark": ml["benchmark"], "language": ml["language"], "metric": ml["metric"],
                        "model": ml["model"], "method": [_label(m) for m in ml["method"]],
                        "mean (95% interval)": [report.fmt_interval(m, h) for m, h in zip(ml["mean"], ml["ci95"])],
                        "seeds": ml["n"]}))


def show_resources(rc: pd.DataFrame) -> None:
    if rc.empty:
        _md("`data/paper/models.yaml` is missing.")
        return
    _md("The memory the frozen weights alone need, computed from each model's configuration "
        "(parameters x 2 bytes in bf16, x 0.5 in 4-bit; GB are $10^9$ bytes, as the paper and the claims page "
        "write them), beside the GPU memory the paper's text reports (`data/paper/resources-claims.csv`; the "
        "text does not say whether per GPU or in total). Training needs more: activations, adapter states and, "
        "for full fine-tuning, gradients and optimiser moments.")
    _html(rc, digits=1, key=["model"], fold=["hub id", "source"])
    for _, r in rc.iterrows():
        if r["bf16 weights (GB)"] is not None and not pd.isna(r["bf16 weights (GB)"]):
            _glue(f"bf16_gb/{r['model']}", float(r["bf16 weights (GB)"]))


def show_environment(df: pd.DataFrame) -> None:
    envs = pd.DataFrame([{"commit": (r["environment"].get("git_commit") or "")[:12],
                          "device": r["environment"].get("device"), "python": r["environment"].get("python"),
                          **{k: v for k, v in (r["environment"].get("packages") or {}).items()}}
                         for r in df["record"] if r.get("environment")]).drop_duplicates()
    _md("Environments the runs were executed in (distinct rows):")
    lead = [c for c in ("commit", "device", "python", "hupeft", "torch", "transformers", "peft") if c in envs.columns]
    _html(envs, key=lead[:2], fold=[c for c in envs.columns if c not in lead])


def show_run_index(df: pd.DataFrame) -> None:
    _md("Every run of this preset, with its record (`record.json`: configuration, data, per-epoch losses, timings "
        "and scores) and its executed notebook (`run.ipynb`), copied into this book to download:")
    index = report.run_index(df)
    index["record"] = [Link("record.json", h) if h else DASH for h in index["record"]]
    index["notebook"] = [Link("run.ipynb", h) if h else "not written" for h in index["notebook"]]
    _html(index)


# --- the paper audited against itself -------------------------------------------------------------


def show_paper_audit(audit: pd.DataFrame) -> None:
    """Table I's own numbers: each cell's three runs, printed mean and the mean of those runs; the
    disagreeing printed means shown, every one of the table's means folded below them."""
    if audit.empty:
        _md("`data/paper/table1.csv` is missing.")
        return
    bad = audit[audit["disagrees"]]
    half = report.ROUNDING
    _glue("paper_means_total", int(len(audit)))
    _glue("paper_means_disagree", int(len(bad)))
    runs = bad[[c for c in bad.columns if c.startswith("run ")]]
    medians = int((runs.median(axis=1) - bad["printed"]).abs().lt(1e-9).sum())
    _glue("paper_means_disagree_median", medians)
    _md(f"The paper's own Table I, every printed number (`data/paper/table1.csv`). Of its {len(audit)} "
        f"printed means, **{len(bad)}** differ from the mean of their own three runs by more than half a "
        f"unit of the printed decimal ({half:.2f}); they are marked ≠ and shown first. {medians} of those "
        f"{len(bad)} are the median of the three runs instead of their mean.")
    # Printed numbers keep the paper's one decimal; the computed ones get two, to show the gap.
    one = {c: audit[c].map("{:.1f}".format) for c in audit.columns if c.startswith("run ") or c == "printed"}
    shown = audit.drop(columns=["benchmark", "metric", "disagrees"]).assign(
        **one, method=[_label(m) for m in audit["method"]],
        **{"mean of runs": audit["mean of runs"].map("{:.2f}".format),
           # round first: a float difference of 7e-15 is no reason to print "-0.00"
           "printed − mean": audit["printed − mean"].map(lambda x: f"{round(x, 2) + 0.0:+.2f}"),
           "≠": ["≠" if d else "" for d in audit["disagrees"]]})
    shown.insert(1, "benchmark · metric", [f"{b} · {m}" for b, m in audit[["benchmark", "metric"]].values])
    _html(shown, rows=audit["disagrees"], fold=["≠"],
          rows_label=f"The {len(bad)} printed means that disagree with their runs; all {len(audit)} are folded below.")
    for _, r in audit.iterrows():
        _glue(f"paper/{r['model']}/{r['benchmark']}/{r['metric']}/{r['method']}/mean_of_runs", float(r["mean of runs"]))


def show_claims(text: pd.DataFrame, resources: pd.DataFrame, ours_text: pd.DataFrame | None = None,
                ours_resources: pd.DataFrame | None = None) -> None:
    """The text's claims with two verdicts each: against the paper's own Table I, and against
    our runs (`ours_*` from report.our_text_verdicts / our_resource_verdicts)."""
    counts = text["status"].value_counts()
    consistent = int(counts.get(report.CONSISTENT, 0))
    _glue("claims_consistent", consistent)
    _glue("claims_contradicted", int(counts.get("contradicted", 0)))
    _glue("claims_total", int(len(text)))
    shown = text.drop(columns=["claimed", "table value"]).rename(columns={"status": "against Table I"})
    lines = [f"Each numeric claim of the text gets two verdicts. **Against the paper's own Table I** "
             f"(printed means; a difference may also match the runs' means; one printed decimal of slack): "
             f"of {len(text)} claims, **{consistent} are consistent with the table** and "
             f"**{int(counts.get('contradicted', 0))} contradicted by it**. Consistent means only that the "
             "text agrees with the paper's own numbers, not that anyone reproduced them."]
    if ours_text is not None and not ours_text.empty:
        shown = shown.merge(ours_text, on="id", how="left")
        oc = ours_text["our runs"].value_counts()
        lines.append("**Against our runs** (the paired 95% interval of the same comparison in our studies, "
                     "headline study first): " + ", ".join(f"{int(oc.get(v, 0))} {v}" for v in report.VERDICTS)
                     + ". Reproduced: the interval excludes zero on the claimed side; contradicted: on the "
                     "other side; unresolved: it includes zero. Our models are 135M parameters, not 7B–405B.")
        for v in report.VERDICTS:
            _glue(f"ours_{v.replace(' ', '_')}", int(oc.get(v, 0)))
    _md("## Claims about Table I\n" + "\n\n".join(lines))
    lead = [c for c in ("id", "claim", "against Table I", "our runs") if c in shown.columns]
    _html(shown[lead + [c for c in shown.columns if c not in lead]], wrap=True)
    for _, r in text.iterrows():
        _glue(f"claim/{r['id']}/status", r["status"])
        _glue(f"claim/{r['id']}/table", float(r["table value"]))
    rcounts = resources["status"].value_counts()
    _md(f"## Time, memory and training curves (Fig. 1 and Fig. 2)\nTable I holds none of these quantities: "
        f"{rcounts.get(report.NOT_CHECKABLE, 0)} of {len(resources)} are {report.NOT_CHECKABLE}; "
        f"{rcounts.get('contradicted', 0)} memory figures are below what the model's weights need even at "
        "4 bits, so they are impossible. Where our runs measure the same ratio against full fine-tuning, "
        "`our runs` judges the claim by our per-seed ratio (our models, not the paper's).")
    rshown = resources.drop(columns=["section"]).rename(columns={"status": "against the paper"})
    if ours_resources is not None and not ours_resources.empty:
        rshown = rshown.merge(ours_resources, on="id", how="left")
    _html(rshown, wrap=True)
    for _, r in resources.iterrows():
        _glue(f"claim/{r['id']}/status", r["status"])


# --- what a GPU preset needs (hupeft.plan) --------------------------------------------------------


def show_preset_plan(plan_df: pd.DataFrame, preset: str = "paper") -> None:
    if plan_df.empty:
        _md(f"The `{preset}` preset has no cells.")
        return
    hw = plan_df.attrs.get("hardware")
    nodes = f"nodes of {hw.gpus_per_node} GPUs with {hw.gpu_memory / 1e9:.0f} GB each" if hw else "the stated nodes"
    bad = int((~plan_df["fits"]).sum())
    _md(f"What each model and method of the `{preset}` preset needs on {nodes}, from `hupeft plan --preset "
        f"{preset}` (counted on PyTorch's meta device from the models' configurations; nothing is loaded). "
        "Memory is per GPU, for the benchmark with the longest sequences; GPU-hours are for training only, "
        "summed over benchmarks and seeds, at the utilisation the plan states. "
        + ("Every cell fits." if not bad else f"{bad} model-method pairs do not fit."))
    shown = (plan_df.drop(columns=["fits"]) if not bad else plan_df).assign(
        method=[_label(m) for m in plan_df["method"]])
    _html(shown, digits=1, key=["model", "method"],
          fold=["weights GB", "grads + optimiser GB", "activations GB", "gradient estimate GB", "benchmarks"])
    _glue(f"plan/{preset}/pairs", len(plan_df))
    _glue(f"plan/{preset}/gpu_hours", float(plan_df["GPU-hours"].sum()))


# --- the study: floors, per-seed differences, power, learning-rate sweeps ------------------------


def show_floors(df: pd.DataFrame) -> None:
    """Each method against the untrained model and chance: did it learn anything?"""
    fc = report.floor_comparisons(df)
    benches = sorted(set(df["benchmark"]))
    chances = {b: report.chance(b) for b in benches}
    lines = [f"- {b}: chance is {c:.0f}% (uniform guessing over its labels)." for b, c in chances.items() if c]
    if fc.empty:
        _md("No zero-shot run in this preset, so no method is compared with the untrained model."
            + ("\n\n" + "\n".join(lines) if lines else ""))
        return
    _html(pd.DataFrame({"model · benchmark · metric": [f"{m} · {b} · {x}" for m, b, x in
                                                        fc[["model", "benchmark", "metric"]].values],
                        "comparison": fc["comparison"], "seeds": fc["seeds"],
                        "difference (95% interval)": [report.fmt_interval(d, h, 2)
                                                      for d, h in zip(fc["difference"], fc["ci95"])],
                        "learned (interval above 0)": fc["low"] > 0}))
    _md("\n".join(lines))
    _glue("floor_learned", int((fc["low"] > 0).sum()))
    _glue("floor_total", int(len(fc)))


def plot_seed_differences(seeds: pd.DataFrame, pc: pd.DataFrame) -> None:
    """Every seed's paired difference as a dot, the mean and its 95% interval as a bar, one
    panel per model, benchmark and metric."""
    import matplotlib.pyplot as plt

    if seeds.empty:
        return
    keys = seeds[["model", "benchmark", "metric"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(len(keys), 1, figsize=(7.5, 0.45 * seeds["comparison"].nunique() + 1.4),
                             squeeze=False)
    for ax, (model, bench, metric) in zip(axes.flat, keys):
        part = seeds[(seeds["model"] == model) & (seeds["benchmark"] == bench) & (seeds["metric"] == metric)]
        comps = list(dict.fromkeys(part["comparison"]))
        for y, comp in enumerate(comps):
            d = part[part["comparison"] == comp]["difference"]
            ax.scatter(d, [y] * len(d), s=14, color="0.55", zorder=2, label="one seed" if y == 0 else None)
            row = pc[(pc["model"] == model) & (pc["benchmark"] == bench) & (pc["metric"] == metric)
                     & (pc["comparison"] == comp)]
            if not row.empty:
                r = row.iloc[0]
                ax.errorbar(r["difference"], y + 0.25, xerr=0 if pd.isna(r["ci95"]) else r["ci95"], fmt="o",
                            color="C3" if r["resolved"] else "C0", capsize=3, zorder=3,
                            label="mean, 95% interval" if y == 0 else None)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(comps)), comps, fontsize=9)
        ax.invert_yaxis()
        ax.set_xlabel(f"difference in {metric} (points)")
        ax.set_title(f"{model} · {bench}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _show(fig)


def show_power(pw: pd.DataFrame) -> None:
    """The design's resolution, computed from the records' spread of each paired difference."""
    if pw.empty:
        _md("Fewer than two seeds per comparison: no spread, so no power can be computed.")
        return
    _html(pd.DataFrame({"comparison": pw["comparison"], "seeds": pw["seeds"],
                        "sd of the difference": pw["sd"], "95% half width": pw["ci95"],
                        "minimum detectable difference (80% power)": pw["mdd80"]}), digits=2)
    worst = pw.loc[pw["ci95"].idxmax()]
    _md(f"Over {int(pw['seeds'].max())} seeds the widest paired 95% half width is **{worst['ci95']:.2f} points** "
        f"({worst['comparison']}); the design detects a true difference of **{pw['mdd80'].max():.2f} points** "
        "or more with 80% probability in every comparison (a two-sided paired t-test at the 5% level), and "
        "smaller differences only by luck.")
    _glue("power_max_half_width", float(pw["ci95"].max()))
    _glue("power_max_mdd", float(pw["mdd80"].max()))


def plot_sweep(points: pd.DataFrame, chosen: dict) -> None:
    """Held-out score over learning rates per method, the chosen rate ringed; the hybrid's two
    branch rates as a grid of scores."""
    import matplotlib.pyplot as plt

    if points.empty:
        _md("No sweep records for this preset.")
        return
    single = points[points["lr_lora"].isna()]
    methods = [m for m in report.METHOD_ORDER + list(report.VARIANT_LABEL) if m in set(single["method"])]
    pairs = points[points["lr_lora"].notna()]
    n = len(methods) + (1 if not pairs.empty else 0)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.7 * rows), squeeze=False)
    for ax, method in zip(axes.flat, methods):
        part = single[single["method"] == method].sort_values("lr")
        ax.plot(part["lr"], part["score"], marker="o", color="C0")
        want = chosen.get(method, {}).get("lr")
        hit = part[part["lr"].apply(lambda v: want is not None and abs(v - want) <= 1e-9 * want)]
        ax.scatter(hit["lr"], hit["score"], s=160, facecolors="none", edgecolors="C3", linewidths=2)
        ax.set_xscale("log")
        ax.set_title(report.LABEL.get(method, method), fontsize=10)
        ax.set_xlabel("learning rate", fontsize=8)
        ax.set_ylabel("held-out accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3)
    if not pairs.empty:
        ax = list(axes.flat)[len(methods)]
        piv = pairs.pivot_table(index="lr_lora", columns="lr_boft", values="score")
        ax.imshow(piv.values, cmap="viridis", origin="lower", aspect="auto")
        for i, a in enumerate(piv.index):
            for j, b in enumerate(piv.columns):
                want = chosen.get("hybrid", {})
                mark = want and abs(a - want.get("lr_lora", -1)) <= 1e-9 * a and abs(b - want.get("lr_boft", -1)) <= 1e-9 * b
                ax.text(j, i, f"{piv.values[i, j]:.1f}", ha="center", va="center", fontsize=8,
                        color="w", fontweight="bold" if mark else "normal",
                        bbox=dict(boxstyle="circle", fc="none", ec="C3", lw=2) if mark else None)
        ax.set_xticks(range(len(piv.columns)), [f"{v:.2g}" for v in piv.columns], fontsize=7)
        ax.set_yticks(range(len(piv.index)), [f"{v:.2g}" for v in piv.index], fontsize=7)
        ax.set_xlabel("BOFT branch rate", fontsize=8)
        ax.set_ylabel("LoRA-GA branch rate", fontsize=8)
        ax.set_title("Hybrid (held-out %)", fontsize=10)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("held-out accuracy of each sweep run; ringed: the rate the study uses", fontsize=9)
    fig.tight_layout()
    _show(fig)


def study_header(df: pd.DataFrame, kind: str, preset: str = "study") -> None:
    """Which records this page reads: archived (with their commit, machine and packages) or
    fresh, and how much of the preset's grid they cover."""
    from .presets import expand, load_preset

    context(preset, df)  # the figures' Reproduce boxes name these records
    spec = load_preset(preset)
    planned = len(expand(spec, lookups=False, sweeping=True))  # a count: the rate checks do not matter here
    env = [r.get("environment") or {} for r in df["record"]]
    commits = sorted({(e.get("git_commit") or "")[:7] for e in env} - {""})
    devices = sorted({f"{e.get('device') or e.get('device_kind')}, {e.get('cpu_count')} cores" for e in env})
    pk = (env[0].get("packages") or {}) if env else {}
    versions = ", ".join(f"{k} {v}" for k, v in pk.items() if v and k in ("torch", "transformers", "peft"))
    source = ("**Archived records** (`data/archive/`), run once from a clean clone at commit "
              f"{', '.join(f'`{c}`' for c in commits) or 'unknown'} on {'; '.join(devices)} ({versions}); "
              f"`make reproduce PRESET={preset}` reruns them and this page then shows the fresh records."
              if kind == "archived" else f"**Fresh records** from `results/{preset}/`.")
    _md(f"{source} {len(df)} of the preset's {planned} runs are here"
        + ("." if len(df) >= planned else "; the rest have not run yet, so what follows covers those present."))


def show_study_scores(t1: pd.DataFrame) -> None:
    """Mean with its 95% interval and every seed's score, per method, beside chance."""
    if t1.empty:
        return
    for (model, bench, metric), part in t1.groupby(["model", "benchmark", "metric"], observed=True):
        part = part.sort_values("method")
        rows = pd.DataFrame({"method": [report.LABEL.get(m, m) for m in part["method"]],
                             "seeds": part["n"],
                             "mean (95% interval)": [report.fmt_interval(m, h) for m, h in
                                                     zip(part["mean"], part["ci95"])],
                             "per seed": part["runs"]})
        c = report.chance(bench) if metric == "accuracy" else None
        if c:
            rows = pd.concat([rows, pd.DataFrame([{"method": "Chance", "seeds": DASH,
                                                   "mean (95% interval)": f"{c:.1f}", "per seed": DASH}])])
        _md(f"**{model} · {bench} · {metric}**")
        _html(rows, wrap=True)
