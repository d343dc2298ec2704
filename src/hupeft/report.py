"""Records -> DataFrames for the book; `hupeft report`, which executes the result pages.

Every number the book shows is computed here from run records (or read from data/paper/ for
the paper's own claims); hupeft.pages displays them. The book's result pages are notebooks
under notebooks/report/ that call both; `hupeft report --preset P` executes them with papermill into
book/results/ (generated, not committed) and `--build` then builds the book.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from . import benchmarks
from .presets import load_preset, preset_rates
from .records import load_all

REPO = Path(__file__).resolve().parents[2]
PAPER_DIR = REPO / "data" / "paper"
REPORT_NOTEBOOKS = REPO / "notebooks" / "report"
ARCHIVE = REPO / "data" / "archive"  # archived studies' records (a results root of their own)
GENERATED = REPO / "book" / "results"

# Our benchmark -> the paper's Table I benchmark (its GLUE column is one score per run), and
# our metric that sits beside the paper's metric there.
PAPER_BENCHMARK = {"glue/mnli": "glue", "glue/qqp": "glue", "glue/sst2": "glue", "glue/qnli": "glue",
                   "gsm8k": "gsm8k", "mtbench": "mtbench", "humaneval": "humaneval"}
PAPER_METRIC = {("glue", "accuracy"): "score", ("glue", "score"): "score", ("gsm8k", "exact_match_strict"): "accuracy",
                ("mtbench", "bleu"): "bleu", ("humaneval", "pass@1"): "pass@1", ("humaneval", "pass@10"): "pass@10"}
# Fractions in records, percentages on the page (as the paper prints them).
PERCENT_METRICS = {"accuracy", "f1", "exact_match", "exact_match_strict", "exact_match_flexible", "pass@1", "pass@10"}
METHOD_LABEL = {"zero-shot": "Zero-shot", "full": "Full FT", "lora": "LoRA", "loraga": "LoRA-GA", "boft": "BOFT",
                "urnn": "uRNN", "hybrid": "Hybrid"}
METHOD_ORDER = list(METHOD_LABEL)
BASELINES = [m for m in METHOD_ORDER if m not in ("hybrid", "zero-shot")]
FLOOR = "zero-shot"  # the base model untrained, scored as the others
# Variants run under names of their own (hupeft.methods.METHODS). Table I and the figures compare
# the paper's six methods; the page on the hybrid and the uRNN shows the variants beside them.
VARIANT_LABEL = {"urnn-structured": "uRNN (structured)", "hybrid-paper": "Hybrid (λ: paper)",
                 "hybrid-normalized": "Hybrid (λ: normalized)"}
LABEL = {**METHOD_LABEL, **VARIANT_LABEL}


def records(results: str | Path, preset: str | None = None, variants: bool = False) -> pd.DataFrame:
    """The preset's runs, one row each: the paper's six methods, and with `variants` every run."""
    root = Path(results) / preset if preset else Path(results)
    df = load_all(root)
    if df.empty:
        raise FileNotFoundError(f"no record.json under {root}; run `hupeft grid --preset {preset or '...'}` first")
    order = METHOD_ORDER + list(VARIANT_LABEL)
    order += sorted(set(df["method"].dropna()) - set(order))
    if not variants:
        order = METHOD_ORDER
        df = df[df["method"].isin(order)]
    df = df.assign(method=pd.Categorical(df["method"], categories=order, ordered=True))
    return df.sort_values(["model", "benchmark", "method", "seed"]).reset_index(drop=True)


def scores_long(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run and metric, on the page's scale (percent for fractions)."""
    cols = [c for c in df.columns if c.startswith("score.")]
    long = df.melt(id_vars=["model", "benchmark", "method", "seed", "status"], value_vars=cols,
                   var_name="metric", value_name="value").dropna(subset=["value"])
    long["metric"] = long["metric"].str.removeprefix("score.")
    pct = long["metric"].isin(PERCENT_METRICS)
    long.loc[pct, "value"] = long.loc[pct, "value"] * 100
    return long


def n_eval_of(df: pd.DataFrame) -> dict:
    """(model, benchmark) -> examples scored, from the records."""
    out = {}
    for _, r in df.iterrows():
        n = ((r["record"].get("config") or {}).get("data") or {}).get("n_eval")
        if n:
            out[(r["model"], r["benchmark"])] = int(n)
    return out


def table1(df: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per model x benchmark x metric x method: per-seed values, mean and its 95% t-interval over
    seeds, and for accuracies the evaluation set's own sampling interval."""
    from .stats import accuracy_half_width, mean_interval

    long = scores_long(df[df["status"] == "ok"])
    n_eval = n_eval_of(df)
    rows = []
    for (model, bench, metric, method), g in long.groupby(["model", "benchmark", "metric", "method"], observed=True):
        iv = mean_interval(g["value"])
        n = n_eval.get((model, bench))
        sampling = (100 * accuracy_half_width(iv.mean / 100, n) if metric in PERCENT_METRICS and n
                    and metric != "f1" else float("nan"))
        rows.append({"model": model, "benchmark": bench, "metric": metric, "method": method,
                     "runs": ", ".join(f"{x:.1f}" for x in g.sort_values("seed")["value"]), "n": iv.n,
                     "mean": iv.mean, "ci95": iv.half_width, "n_eval": n, "sampling_ci95": sampling})
    out = pd.DataFrame(rows)
    if not out.empty:
        out["method"] = pd.Categorical(out["method"], categories=METHOD_ORDER, ordered=True)
    return out


def paper_table1() -> pd.DataFrame:
    path = PAPER_DIR / "table1.csv"
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def paper_means(paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's printed mean per model, benchmark, metric and method (its `mean` rows)."""
    if paper.empty:
        return paper
    printed = paper[paper["run"].astype(str) == "mean"]
    return printed[["model", "benchmark", "metric", "method", "value"]].reset_index(drop=True)


def fmt_interval(mean: float, half: float, digits: int = 1) -> str:
    """'81.2 ± 3.1', or just the mean when there is no interval (one run)."""
    if mean is None or pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f}" if pd.isna(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def table1_layout(t1: pd.DataFrame, paper: pd.DataFrame, glue: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """The paper's layout: one table per paper benchmark; methods as rows; our (model, task,
    metric) columns, our GLUE score where `glue` (from `glue_score`) has one, then the paper's
    printed mean for each of its models."""
    pm = paper_means(paper)
    tables = {}
    if t1.empty:
        return tables
    if glue is not None and not glue.empty:
        t1 = pd.concat([t1.assign(method=t1["method"].astype(str)), glue], ignore_index=True)
    t1 = t1.assign(paper_benchmark=t1["benchmark"].map(PAPER_BENCHMARK).fillna(t1["benchmark"]))
    for pbench, part in t1.groupby("paper_benchmark", sort=False):
        frame = pd.DataFrame({"method": [METHOD_LABEL[m] for m in METHOD_ORDER] + ["Chance"]}).set_index("method")
        # Short headers so the table fits the page: the section names the benchmark family.
        several = part[["benchmark", "metric"]].drop_duplicates().shape[0] > 1
        for (model, bench, metric), g in part.groupby(["model", "benchmark", "metric"], observed=True, sort=False):
            col = f"{model} · {bench.split('/')[-1]} · {metric} (ours)" if several else f"{model} (ours)"
            if bench == "glue":  # the paper's GLUE number: the mean of the four tasks
                col = f"{model} · GLUE mean (ours)"
            vals = {METHOD_LABEL[r["method"]]: fmt_interval(r["mean"], r["ci95"]) for _, r in g.iterrows()}
            floor = chance(bench) if metric == "accuracy" else None
            if floor:  # the floor a classifier's accuracy is read against
                vals["Chance"] = f"{floor:.1f}"
            frame[col] = [vals.get(m, "–") for m in frame.index]
        metrics = {PAPER_METRIC.get((pbench, m)) for m in part["metric"]} - {None}
        if not pm.empty:
            theirs = pm[(pm["benchmark"] == pbench) & pm["metric"].isin(metrics)]
            for (model, metric), g in theirs.groupby(["model", "metric"], sort=False):
                vals = {METHOD_LABEL.get(r["method"], r["method"]): f"{r['value']:.1f}" for _, r in g.iterrows()}
                frame[f"{model} (paper)" if len(metrics) == 1 else f"{model} · {metric} (paper)"] = \
                    [vals.get(m, "–") for m in frame.index]
        frame = frame[[c for c in frame.columns if (frame[c] != "–").any()]]
        frame = frame[(frame != "–").any(axis=1)] if frame.shape[1] else frame  # no row for what nobody ran
        tables[pbench] = frame.reset_index()
    return tables


def paired_comparisons(df: pd.DataFrame, treatment: str = "hybrid", value: str = "score",
                       baselines: list[str] | None = None) -> pd.DataFrame:
    """`treatment` minus each baseline (default: every other of the paper's methods) over the seeds
    both ran, per model, benchmark and metric (value="score"), or on the last epoch's validation
    loss (value="val_loss")."""
    from .stats import paired_difference

    ok = df[df["status"] == "ok"]
    if value == "score":
        long = scores_long(ok)
    else:
        long = ok.assign(metric="final validation loss", value=ok["val_loss"])[
            ["model", "benchmark", "method", "seed", "metric", "value"]].dropna(subset=["value"])
    rows = []
    for (model, bench, metric), g in long.groupby(["model", "benchmark", "metric"], observed=True):
        by = {m: dict(zip(x["seed"], x["value"])) for m, x in g.groupby("method", observed=True)}
        if treatment not in by:
            continue
        for base in [m for m in (baselines or BASELINES) if m != treatment and m in by]:
            iv = paired_difference(by[treatment], by[base])
            if iv.n == 0:
                continue
            rows.append({"model": model, "benchmark": bench, "metric": metric,
                         "comparison": f"{LABEL.get(treatment, treatment)} − {LABEL.get(base, base)}",
                         "baseline": base, "seeds": iv.n, "difference": iv.mean, "ci95": iv.half_width,
                         "low": iv.low, "high": iv.high, "resolved": iv.excludes_zero})
    return pd.DataFrame(rows)


def fig1_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Seconds per epoch and peak memory per method and model, mean and 95% interval over seeds (Fig. 1)."""
    from .stats import mean_interval

    ok = df[(df["status"] == "ok") & (df["epochs"] > 0)]  # zero-shot trains nothing: no time to show
    rows = []
    for (model, method), g in ok.groupby(["model", "method"], observed=True):
        t = mean_interval(g["seconds_per_epoch"])
        m = mean_interval(g["peak_memory_bytes"].astype(float) / 2**30)
        rows.append({"model": model, "method": method, "seconds_per_epoch": t.mean, "seconds_ci95": t.half_width,
                     "peak_memory_gib": m.mean, "memory_ci95": m.half_width,
                     "memory_kind": g["memory_kind"].dropna().iloc[0] if g["memory_kind"].notna().any() else "",
                     "runs": t.n})
    out = pd.DataFrame(rows)
    if not out.empty:
        out["method"] = pd.Categorical(out["method"], categories=METHOD_ORDER, ordered=True)
    return out


def concurrency(df: pd.DataFrame) -> dict:
    """How the timed runs (those that trained) overlapped in time, from their records' start and
    finish: `runs` timed, `overlapped` (how many shared some of their time with another run) and
    `most` (the most that were running at one moment). Runs without both times are left out."""
    ok = df[(df["status"] == "ok") & (df["epochs"] > 0)]
    spans = [(r.get("started_at"), r.get("finished_at")) for r in ok["record"]]
    spans = [(a, b) for a, b in spans if a is not None and b is not None]
    overlapped = sum(any(a2 < b and b2 > a for j, (a2, b2) in enumerate(spans) if j != i)
                     for i, (a, b) in enumerate(spans))
    # Sweep over starts (+1) and finishes (-1); at equal times a finish comes first.
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    most = running = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return {"runs": len(spans), "overlapped": int(overlapped), "most": most}


def epochs_long(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run and epoch: gradient norm and validation loss (Fig. 2)."""
    rows = []
    for _, r in df[df["status"] == "ok"].iterrows():
        for ep in r["record"]["epochs"]:
            rows.append({"model": r["model"], "benchmark": r["benchmark"], "method": r["method"], "seed": r["seed"],
                         **{k: ep.get(k) for k in ("epoch", "train_loss", "val_loss", "grad_norm", "seconds",
                                                   "orthogonality_error")}})
    out = pd.DataFrame(rows)
    if not out.empty:
        out["method"] = pd.Categorical(out["method"], categories=METHOD_ORDER, ordered=True)
    return out


# --- inside the hybrid and the uRNN ----------------------------------------------------------------

# lambda above this in every layer: the hybrid is LoRA-GA with a BOFT branch weighted below 5%
# (below 1 - DEGENERATE in every layer: BOFT with a LoRA-GA branch below 5%).
DEGENERATE = 0.95


def _options(r) -> dict:
    return (r["record"].get("config") or {}).get("method_options") or {}


def lambda_rule(r) -> str:
    """A hybrid run's lambda rule as it ran (from its record's options), EMA included."""
    opts = _options(r)
    ema = opts.get("lambda_ema") or 0.0
    return str(opts.get("lambda_rule", "?")) + (f", EMA {ema:g}" if ema else "")


def _hybrid_runs(df: pd.DataFrame):
    return [r for _, r in df[df["status"] == "ok"].iterrows() if r["record"].get("hybrid_lambda")]


def lambda_long(df: pd.DataFrame) -> pd.DataFrame:
    """One row per hybrid run (any rule), layer and optimiser step: lambda after that step."""
    rows = []
    for r in _hybrid_runs(df):
        rule = lambda_rule(r)
        for layer, values in r["record"]["hybrid_lambda"].items():
            for i, v in enumerate(values):
                rows.append({"model": r["model"], "benchmark": r["benchmark"], "method": str(r["method"]),
                             "rule": rule, "seed": r["seed"], "layer": layer, "step": i + 1, "lambda": v})
    return pd.DataFrame(rows)


def branch_long(df: pd.DataFrame) -> pd.DataFrame:
    """One row per hybrid run, epoch and layer: how far each branch moved the weight relative to
    |W0|, unmixed (`*_delta`) and as mixed by lambda (`*_change`)."""
    rows = []
    for r in _hybrid_runs(df):
        rule = lambda_rule(r)
        for ep in r["record"]["epochs"]:
            delta, change = ep.get("branch_delta") or {}, ep.get("branch_change") or {}
            for layer, (lora, boft) in change.items():
                d = delta.get(layer, (float("nan"), float("nan")))
                rows.append({"model": r["model"], "benchmark": r["benchmark"], "method": str(r["method"]),
                             "rule": rule, "seed": r["seed"], "epoch": ep["epoch"], "layer": layer,
                             "lora_delta": d[0], "boft_delta": d[1], "lora_change": lora, "boft_change": boft})
    return pd.DataFrame(rows)


def lambda_summary(lam: pd.DataFrame, branches: pd.DataFrame) -> pd.DataFrame:
    """Per hybrid run: lambda at the last step over layers (mean, min, max), the share of layers
    above DEGENERATE, below 1 - DEGENERATE and in between (`mixed`), the first step from which
    every layer stays above, below or beyond (either side of) it, which branch the run reduces to
    when no layer is mixed, and BOFT's share of the weight movement at the last epoch (sum over
    layers of the mixed |dW|)."""
    if lam.empty:
        return pd.DataFrame()
    keys = ["model", "benchmark", "method", "rule", "seed"]
    moved = dict(list(branches.groupby(keys, sort=False))) if not branches.empty else {}
    rows = []
    for key, g in lam.groupby(keys, sort=False):
        wide = g.pivot(index="step", columns="layer", values="lambda").sort_index()
        last = wide.iloc[-1]
        row = dict(zip(keys, key), layers=wide.shape[1], steps=wide.shape[0], final_mean=float(last.mean()),
                   final_min=float(last.min()), final_max=float(last.max()),
                   above=float((last > DEGENERATE).mean()), below=float((last < 1 - DEGENERATE).mean()))
        row["mixed"] = float(((last >= 1 - DEGENERATE) & (last <= DEGENERATE)).mean())  # counted: no float residue
        # Every layer past the threshold: the hybrid is one branch (the same one in every layer,
        # or "per layer" when some layers are LoRA-GA alone and others BOFT alone).
        row["one_branch"] = ("LoRA-GA" if row["above"] == 1 else "BOFT" if row["below"] == 1
                             else "per layer" if row["mixed"] == 0 else "")
        beyond = wide.gt(DEGENERATE) | wide.lt(1 - DEGENERATE)
        for side, inside in (("above", wide.gt(DEGENERATE).all(axis=1)), ("below", wide.lt(1 - DEGENERATE).all(axis=1)),
                             ("beyond", beyond.all(axis=1))):
            # The first step from which every later step has every layer past the threshold.
            stays = inside[::-1].cummin()[::-1]
            row[f"all_{side}_from"] = int(stays.idxmax()) if stays.any() else None
        b = moved.get(key)
        if b is not None:
            end = b[b["epoch"] == b["epoch"].max()]
            total = end["lora_change"].sum() + end["boft_change"].sum()
            row["boft_share"] = float(end["boft_change"].sum() / total) if total > 0 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def unitary_long(df: pd.DataFrame) -> pd.DataFrame:
    """One row per uRNN run (either variant) and epoch: how far U moved from the identity
    (|U - I|_F / sqrt(d), mean and max over layers), its unitarity error max |U^H U - I| over
    layers, and the re-projections so far."""
    rows = []
    for _, r in df[df["status"] == "ok"].iterrows():
        opts = _options(r)
        if "variant" not in opts:
            continue
        for ep in r["record"]["epochs"]:
            dist = list((ep.get("unitary_distance") or {}).values())
            if not dist:
                continue
            rows.append({"model": r["model"], "benchmark": r["benchmark"], "method": str(r["method"]),
                         "variant": opts["variant"], "seed": r["seed"], "epoch": ep["epoch"],
                         "distance_mean": sum(dist) / len(dist), "distance_max": max(dist),
                         "unitarity_error": ep.get("orthogonality_error"),
                         "renormalisations": ep.get("renormalisations")})
    return pd.DataFrame(rows)


def variant_scores(df: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Per model, benchmark, metric and method (of `methods`): mean over seeds and its 95% interval."""
    from .stats import mean_interval

    long = scores_long(df[(df["status"] == "ok") & df["method"].isin(methods)])
    rows = []
    for (model, bench, metric, method), g in long.groupby(["model", "benchmark", "metric", "method"], observed=True):
        iv = mean_interval(g["value"])
        rows.append({"model": model, "benchmark": bench, "metric": metric, "method": str(method),
                     "runs": ", ".join(f"{x:.1f}" for x in g.sort_values("seed")["value"]), "n": iv.n,
                     "mean": iv.mean, "ci95": iv.half_width})
    return pd.DataFrame(rows)


def params_frame(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["status"] == "ok"]
    out = ok.groupby(["model", "method"], observed=True).agg(trainable=("trainable", "first"),
                                                            total=("total", "first")).reset_index()
    out["percent"] = 100 * out["trainable"] / out["total"]
    return out


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish ok, with the first line of their error."""
    bad = df[df["status"] != "ok"]
    return pd.DataFrame([{"model": r["model"], "benchmark": r["benchmark"], "method": r["method"],
                          "seed": r["seed"], "status": r["status"],
                          "error": (str(r["error"] or "").strip().splitlines() or ["(no message)"])[0][:160]}
                         for _, r in bad.iterrows()])


def _data_of(record: dict) -> dict:
    d = (record.get("config") or {}).get("data") or {}
    return d if isinstance(d, dict) else {"requested": d}


def data_provenance(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and benchmark, each distinct data provenance its runs recorded: the data asked for
    and used, every source with its content hash, what it stands in for, and what failed first."""
    import json

    rows = []
    for (model, bench), g in df.groupby(["model", "benchmark"]):
        kinds: dict[str, dict] = {}
        for rec in g["record"]:
            d = _data_of(rec)
            sources = d.get("sources") or {}
            prints = d.get("fingerprints") or {}
            row = {"model": model, "benchmark": bench, "data asked": d.get("requested"),
                   "data used": d.get("used") or ({True: "synthetic", False: "real"}.get(d.get("synthetic"))),
                   "sources": "; ".join(f"{part}: {src}" + (f" ({prints[part]})" if prints.get(part) else "")
                                        for part, src in sorted(sources.items())),
                   "stands in for": d.get("stands_in_for"),
                   "tried first": "; ".join(dict.fromkeys(t for v in (d.get("tried") or {}).values() for t in v))}
            key = json.dumps(row, sort_keys=True, default=str)
            kinds.setdefault(key, {**row, "runs": 0})["runs"] += 1
        rows.extend(kinds.values())
    return pd.DataFrame(rows)


def evaluation_signatures(df: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark and metric, how the runs that finished ok computed it (the signature each
    record keeps: sacrebleu's for BLEU and chrF++, the harness settings for GSM8K and HumanEval)."""
    rows: dict[tuple, int] = {}
    for _, r in df[df["status"] == "ok"].iterrows():
        for metric, sig in (r["record"].get("metric_signatures") or {}).items():
            key = (r["benchmark"], metric, sig)
            rows[key] = rows.get(key, 0) + 1
    return pd.DataFrame([{"benchmark": b, "metric": m, "computed as": sig, "runs": n}
                         for (b, m, sig), n in sorted(rows.items())],
                        columns=["benchmark", "metric", "computed as", "runs"])


def run_folder(path: str | Path, preset: str) -> str:
    """A run's folder relative to its preset's results folder (`<model>/<benchmark>/<method>/seed<k>`),
    which is also where the book keeps its copies (RUN_FILES)."""
    folder = Path(path).parent
    for up in folder.parents:
        if up.name == preset:
            return folder.relative_to(up).as_posix()
    return "/".join(folder.parts[-4:])


# Beside the result pages, what they link to: tables as CSV (hupeft.pages) and every run's record
# and executed notebook, so that the links are relative and the built book can be moved or published.
FILES = GENERATED / "files"
RUN_FILES = FILES / "runs"


def copy_runs(results: str | Path, preset: str) -> int:
    """Copy each run's record.json and executed run.ipynb under RUN_FILES; returns the runs copied."""
    shutil.rmtree(RUN_FILES, ignore_errors=True)
    n = 0
    for rec in sorted((Path(results) / preset).rglob("record.json")):
        out = RUN_FILES / run_folder(rec, preset)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("record.json", "run.ipynb"):
            if (rec.parent / name).is_file():
                shutil.copy2(rec.parent / name, out / name)
        n += 1
    return n


def run_href(row, name: str = "record.json") -> str | None:
    """A run's file as the result pages link it (relative to them), or None where the book holds no
    copy of it (copy_runs copies the reported preset's runs only)."""
    rel = f"{run_folder(row['path'], row['preset'])}/{name}"
    return f"{RUN_FILES.relative_to(GENERATED).as_posix()}/{rel}" if (RUN_FILES / rel).is_file() else None


def run_index(df: pd.DataFrame) -> pd.DataFrame:
    """Every run with its status and its record and executed notebook as the book links them."""
    rows = []
    for _, r in df.iterrows():
        rows.append({"model": r["model"], "benchmark": r["benchmark"], "method": LABEL.get(str(r["method"]), r["method"]),
                     "seed": r["seed"], "status": r["status"], "notebook": run_href(r, "run.ipynb"),
                     "record": run_href(r)})
    return pd.DataFrame(rows)


def has_content(notebook: Path, preset: str, results: str | Path) -> bool:
    """Whether a result page has anything to show for these records: the study page only where
    study records exist (fresh or archived), the XNLI/FLORES page only where the preset ran either;
    every other page always. A page without content leaves the table of contents."""
    if notebook.stem.endswith("-multilingual"):  # data/paper/ holds no XNLI/FLORES numbers to show instead
        return any(str(json.loads(p.read_text()).get("config", {}).get("benchmark", "")).startswith(("xnli/", "flores/"))
                   for p in (Path(results) / preset).rglob("record.json"))
    if notebook.stem.endswith("-study"):
        src, _ = study_source(results)
        return any((Path(src) / "study").rglob("record.json"))
    return True


def execute_pages(preset: str, results: Path, progress: bool = True, jobs: int | None = None) -> list[Path]:
    """Run every notebook of notebooks/report/ against the preset's records, into book/results/.

    Pages are independent, and most of a page's time is its kernel starting and importing, so
    they run `jobs` at a time (default: one per core, at most 4)."""
    import os
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm.auto import tqdm

    from .executor import execute_notebook

    GENERATED.mkdir(parents=True, exist_ok=True)
    notebooks = [nb for nb in sorted(REPORT_NOTEBOOKS.glob("*.ipynb")) if has_content(nb, preset, results)]
    for stale in GENERATED.glob("*.ipynb"):  # a page left from an earlier build with content then
        if stale.name not in {nb.name for nb in notebooks}:
            stale.unlink()
    copy_runs(results, preset)
    started = time.time()
    params = {"preset": preset, "results": str(Path(results).resolve())}

    def execute(nb: Path) -> Path:
        dest, tmp = GENERATED / nb.name, GENERATED / f".{nb.name}.partial"
        try:
            error = execute_notebook(nb, tmp, params, cwd=GENERATED)
            if error:
                raise RuntimeError(f"report page {nb.name} failed: {error}")
            _hide_injected_parameters(tmp)
            tmp.replace(dest)  # a page is replaced whole, never left half-written
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    # Each page runs in its own process (hupeft.executor); threads only wait on them.
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(execute, nb): nb for nb in notebooks}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="report", unit="page",
                        disable=not progress):
            fut.result()  # a failed page raises here, naming its cell
    # The pages (re)wrote every table they show; a CSV none of them wrote now is an earlier build's.
    for old in (FILES / "tables").glob("*.csv"):
        if old.stat().st_mtime < started - 1:
            old.unlink(missing_ok=True)
    return [GENERATED / nb.name for nb in notebooks]


# What a kernel's own messaging logs when a message reaches it malformed (seen now and then while
# pages run side by side): the kernel's plumbing, printed into whichever cell is running, never
# something the page's code said.
KERNEL_NOISE = "ERROR:tornado.general:Uncaught exception in ZMQStream callback"


def _hide_injected_parameters(path: Path) -> None:
    """The book shows results, not papermill's injected parameter cell nor the kernel's own
    messaging errors (KERNEL_NOISE, with their tracebacks)."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = tags + ["remove-cell"]
        if cell.cell_type == "code":
            for o in cell.outputs:
                if o.get("output_type") == "stream":
                    o["text"] = _without_kernel_noise(o.get("text", ""))
            cell.outputs = [o for o in cell.outputs if o.get("output_type") != "stream" or o["text"]]
    nbformat.write(nb, str(path))


def _without_kernel_noise(text: str) -> str:
    """A stream's text less each KERNEL_NOISE record: its line, its traceback and the exception's
    line that ends it. Anything else the stream holds stays."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith(KERNEL_NOISE):
            skipping = True
        elif skipping and line.startswith(("Traceback", " ")):
            pass
        elif skipping:
            skipping = False  # the exception's own line ends the record
        else:
            out.append(line)
    return "".join(out)


def build_book() -> int:
    import subprocess

    # jupyter_book has no __main__; its console script sits beside this interpreter.
    exe = Path(sys.executable).parent / "jupyter-book"
    if not exe.exists():
        exe = shutil.which("jupyter-book")
        if exe is None:
            print("hupeft report: jupyter-book is not installed; run `pip install -e '.[book]'`",
                  file=sys.stderr)
            return 2
    cmd = [str(exe), "build", str(REPO), "-W", "--builder", "html"]
    return subprocess.run(cmd).returncode


def cli_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hupeft report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", help="whose records to report (default: cpu)")
    p.add_argument("--results", default="results", help="results root (default: results/)")
    p.add_argument("--build", action="store_true", help="then build the book with jupyter-book (-W)")
    args = p.parse_args(argv)
    root = Path(args.results) / args.preset
    if not any(root.rglob("record.json")):
        print(f"hupeft report: no records under {root}; run `hupeft grid --preset {args.preset}` first",
              file=sys.stderr)
        return 2
    t0 = time.time()
    pages = execute_pages(args.preset, Path(args.results))
    from . import findings  # findings is built on this module's frames, so it imports this one

    findings.write(args.results, args.preset)
    print(f"report: {len(pages)} pages and the findings from {root} in {time.time() - t0:.0f} s -> {GENERATED}")
    if args.build:
        code = build_book()
        print(f"book: {'built' if code == 0 else 'FAILED'}: {REPO / '_build' / 'html' / 'index.html'}")
        return code
    return 0


# --- frames for the pages that are not runs' scores ---------------------------------------------


def multilingual(df: pd.DataFrame) -> pd.DataFrame:
    part = df[df["benchmark"].str.startswith(("xnli/", "flores/"))]
    if part.empty:
        return pd.DataFrame()
    long = scores_long(part[part["status"] == "ok"])
    long["language"] = long["benchmark"].str.split("/").str[1]
    from .stats import mean_interval

    rows = []
    for key, g in long.groupby(["benchmark", "language", "metric", "method", "model"], observed=True):
        iv = mean_interval(g["value"])
        rows.append(dict(zip(["benchmark", "language", "metric", "method", "model"], key),
                         mean=iv.mean, ci95=iv.half_width, n=iv.n))
    return pd.DataFrame(rows)


def paper_memory_reports() -> dict[str, str]:
    """The GPU memory the paper's text reports per model (data/paper/resources-claims.csv), in its
    words: model name as printed -> "Hybrid 30 GB, Full FT 80 GB, LoRA 25 GB"."""
    path = PAPER_DIR / "resources-claims.csv"
    if not path.exists():
        return {}
    claims = pd.read_csv(path, dtype=str, keep_default_na=False)
    out: dict[str, list[str]] = {}
    for _, c in claims[claims["quantity"] == "GPU memory"].iterrows():
        methods = ", ".join(METHOD_LABEL.get(m, m) for m in c["method"].split(","))
        out.setdefault(c["model"], []).append(f"{methods} {c['value']} {c['unit']}")
    return {model: ", ".join(said) for model, said in out.items()}


def resource_check() -> pd.DataFrame:
    """For each paper model: its parameters and the memory of its weights alone in bf16 and 4-bit,
    from its config, in GB (10^9 bytes, as the paper and the claims page write them), beside the GPU
    memory the paper's text reports for it."""
    import yaml

    path = PAPER_DIR / "models.yaml"
    if not path.exists():
        return pd.DataFrame()
    spec = yaml.safe_load(path.read_text())
    reports = paper_memory_reports()
    rows = []
    for entry in spec.get("models", spec if isinstance(spec, list) else []):
        n = param_count(entry)
        name = entry.get("name") or entry.get("id")
        # The paper prints "Llama3.1-405B" where models.yaml says "Llama-3.1-405B".
        said = next((v for k, v in reports.items() if _norm(name).startswith(_norm(k))), None)
        rows.append({"model": name, "parameters (B)": n / 1e9 if n else float("nan"),
                     "bf16 weights (GB)": 2 * n / 1e9 if n else float("nan"),
                     "4-bit weights (GB)": 0.5 * n / 1e9 if n else float("nan"),
                     "paper reports (GPU memory)": said or entry.get("paper_memory"),
                     "hub id": entry.get("id"), "source": entry.get("source")})
    return pd.DataFrame(rows)


def param_count(c: dict) -> int | None:
    """Parameters of a decoder-only transformer from its config (Llama or BLOOM layout)."""
    try:
        h, layers, vocab = int(c["hidden_size"]), int(c["num_hidden_layers"]), int(c["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    heads = int(c.get("num_attention_heads") or 1)
    kv = int(c.get("num_key_value_heads") or heads)
    inter = int(c.get("intermediate_size") or 4 * h)
    head_dim = h // heads
    if str(c.get("architecture", "")).lower().startswith("bloom"):
        attn = h * 3 * h + 3 * h + h * h + h
        mlp = h * inter + inter + inter * h + h
        norms = 4 * h
        emb = vocab * h + 2 * h  # word embeddings + their layer norm; the LM head is tied
        return emb + layers * (attn + mlp + norms) + 2 * h
    attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    mlp = 3 * h * inter
    emb = vocab * h * (1 if c.get("tie_word_embeddings") else 2)
    return emb + layers * (attn + mlp + 2 * h) + h


# --- the paper audited against its own Table I -----------------------------------------------------

# The paper prints one decimal, so a printed number stands for anything within half a unit of its
# last digit; the epsilon absorbs binary floating point (0.1 is not exact).
ROUNDING = 0.05 + 1e-9
GLUE_TASKS = ("glue/mnli", "glue/qqp", "glue/sst2", "glue/qnli")
CELL_KEYS = ["model", "benchmark", "metric", "method"]


def paper_audit(paper: pd.DataFrame, tolerance: float = ROUNDING) -> pd.DataFrame:
    """Per model, benchmark, metric and method of Table I: its three runs, its printed mean, the
    mean of those runs, and whether the two differ by more than the printed rounding."""
    if paper.empty:
        return pd.DataFrame()
    runs = paper[paper["run"].astype(str) != "mean"].copy()
    runs["run"] = runs["run"].astype(int)
    wide = runs.pivot_table(index=CELL_KEYS, columns="run", values="value", aggfunc="first", sort=False)
    wide.columns = [f"run {c}" for c in wide.columns]
    out = wide.reset_index().merge(paper_means(paper).rename(columns={"value": "printed"}), on=CELL_KEYS)
    run_cols = [c for c in out.columns if c.startswith("run ")]
    out["mean of runs"] = out[run_cols].mean(axis=1)
    out["printed − mean"] = out["printed"] - out["mean of runs"]
    out["disagrees"] = out["printed − mean"].abs() > tolerance
    return out


def glue_score(df: pd.DataFrame) -> pd.DataFrame:
    """Our counterpart of the paper's GLUE number: the unweighted mean of the accuracies on the four
    GLUE tasks it names, within one seed (the usual GLUE aggregate; the paper does not say how it
    combines them), for each model and method that ran all four on a seed; mean and 95% interval
    over those seeds."""
    from .stats import mean_interval

    long = scores_long(df[df["status"] == "ok"])
    acc = long[long["benchmark"].isin(GLUE_TASKS) & (long["metric"] == "accuracy")]
    rows = []
    for (model, method), g in acc.groupby(["model", "method"], observed=True):
        per_seed = g.groupby("seed")
        # A seed counts only when every task ran on it: a mean over fewer tasks is another number.
        scores = [x["value"].mean() for _, x in per_seed if set(x["benchmark"]) == set(GLUE_TASKS)]
        if not scores:
            continue
        iv = mean_interval(scores)
        rows.append({"model": model, "benchmark": "glue", "metric": "score", "method": method,
                     "runs": ", ".join(f"{x:.1f}" for x in scores), "n": iv.n, "mean": iv.mean,
                     "ci95": iv.half_width})
    return pd.DataFrame(rows)


def paper_claims() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The text's numeric claims about Table I, and its numbers for Fig. 1 and Fig. 2."""
    read = lambda name: pd.read_csv(PAPER_DIR / name, dtype=str, keep_default_na=False)  # noqa: E731
    return read("text-claims.csv"), read("resources-claims.csv")


def _label(method: str) -> str:
    return METHOD_LABEL.get(method, method)


def _claim_text(c) -> str:
    """The claim in the project's words, built from the structured columns."""
    what = f"{c['benchmark']} {c['metric']}"
    if c["kind"] == "value":
        return f"{_label(c['method'])} scores {c['claimed']} {c['unit']} ({what})"
    if c["kind"] == "difference":
        return f"{_label(c['method'])} − {_label(c['versus'])} = {c['claimed']} {c['unit']} ({what})"
    if c["kind"] == "at_least":
        return f"{_label(c['method'])} − {_label(c['versus'])} ≥ {c['claimed']} {c['unit']} ({what})"
    rivals = ", ".join(_label(m) for m in c["versus"].split(","))
    return f"{_label(c['method'])} ≥ each of {rivals}, on every model ({what})"


def _cells(paper: pd.DataFrame, c) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table I's printed means and runs' means for the claim's benchmark and metric, one row per
    model, one column per method."""
    audit = paper_audit(paper)
    part = audit[(audit["benchmark"] == c["benchmark"]) & (audit["metric"] == c["metric"])]
    return (part.pivot(index="model", columns="method", values="printed"),
            part.pivot(index="model", columns="method", values="mean of runs"))


def _check_value(c, printed, runs) -> tuple[bool, str, float]:
    value = printed.loc[c["model"], c["method"]]
    return abs(value - float(c["claimed"])) <= ROUNDING, f"Table I prints {value:.1f}", value


def _check_difference(c, printed, runs) -> tuple[bool, str, float]:
    """A stated difference agrees when it is the difference of the printed means, or that of the
    runs' means rounded to one decimal (the text may have used either)."""
    claimed = float(c["claimed"])
    if c["model"] in printed.index:
        p = printed.loc[c["model"], c["method"]] - printed.loc[c["model"], c["versus"]]
        r = runs.loc[c["model"], c["method"]] - runs.loc[c["model"], c["versus"]]
        ok = min(abs(p - claimed), abs(r - claimed)) <= ROUNDING
        return ok, (f"printed means {printed.loc[c['model'], c['method']]:.1f} − "
                    f"{printed.loc[c['model'], c['versus']]:.1f} = {p:+.1f}; runs' means give {r:+.2f}"), p
    # A claim about the average over models: Table I's per-model differences and their mean.
    d = (printed[c["method"]] - printed[c["versus"]]).dropna()
    ok = abs(d.mean() - claimed) <= ROUNDING
    return ok, (f"mean over {len(d)} models {d.mean():+.2f}; largest {d.max():+.1f} ({d.idxmax()}); "
                f"per model {', '.join(f'{m} {v:+.1f}' for m, v in d.items())}"), d.mean()


def _check_at_least(c, printed, runs) -> tuple[bool, str, float]:
    a, b = printed.loc[c["model"], c["method"]], printed.loc[c["model"], c["versus"]]
    text = f"{_label(c['method'])} {a:.1f}, {_label(c['versus'])} {b:.1f}: {a - b:+.1f}"
    return a - b >= float(c["claimed"]) - ROUNDING, text, a - b


def _check_best(c, printed, runs) -> tuple[bool, str, float]:
    """Best on every model: the method's printed mean is at least each rival's."""
    rivals = c["versus"].split(",")
    misses = []
    for model, row in printed.iterrows():
        top = row[rivals].idxmax()
        if row[top] > row[c["method"]]:
            misses.append(f"{model}: {_label(top)} {row[top]:.1f} > {_label(c['method'])} {row[c['method']]:.1f}")
    text = "; ".join(misses) if misses else f"highest on all {len(printed)} models"
    return not misses, text, float(len(misses))


CHECKS = {"value": _check_value, "difference": _check_difference, "at_least": _check_at_least,
          "best": _check_best}


def check_text_claims(claims: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Each text claim against the paper's own Table I: consistent with it or contradicted, with the
    numbers used (`table value`: the printed value, difference, mean difference or number of
    models where a `best` claim fails)."""
    rows = []
    for _, c in claims.iterrows():
        printed, runs = _cells(paper, c)
        ok, numbers, value = CHECKS[c["kind"]](c, printed, runs)
        rows.append({"id": c["id"], "section": c["section"], "model": c["model"], "claim": _claim_text(c),
                     "status": CONSISTENT if ok else "contradicted", "Table I": numbers,
                     "claimed": c["claimed"], "table value": value})
    return pd.DataFrame(rows)


NOT_CHECKABLE = "not checkable from Table I"
CONSISTENT = "consistent with the paper's Table I"  # not "reproduced": that is what our runs say


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def paper_model_params(name: str) -> int | None:
    """Parameters of a model as the paper prints its name, from data/paper/models.yaml (whose
    names may carry a suffix such as -Instruct)."""
    import yaml

    spec = yaml.safe_load((PAPER_DIR / "models.yaml").read_text())
    for entry in spec.get("models", []):
        if _norm(entry.get("name", "")).startswith(_norm(name)):
            return param_count(entry)
    return None


def _ratio_by_model(f1: pd.DataFrame, column: str) -> dict[str, float]:
    """Full fine-tuning's value over the hybrid's, per model where both ran."""
    if f1 is None or f1.empty:
        return {}
    wide = f1.pivot_table(index="model", columns="method", values=column, observed=True)
    if not {"full", "hybrid"} <= set(wide.columns):
        return {}
    ratio = (wide["full"] / wide["hybrid"]).dropna()
    return {m: float(v) for m, v in ratio.items()}


def _paper_ratio(rclaims: pd.DataFrame, quantity: str) -> dict[str, float]:
    """The text's own full / hybrid ratio of a quantity, per model where it gives both."""
    part = rclaims[rclaims["quantity"] == quantity]
    by = {(r["model"], r["method"]): float(r["value"]) for _, r in part.iterrows()}
    return {m: by[(m, "full")] / by[(m, "hybrid")] for m, meth in by if meth == "hybrid" and (m, "full") in by}


def _ours_epochs(ep: pd.DataFrame, methods: str, column: str, last_only: bool) -> str:
    """Our runs' mean of `column` at the first and last epoch (or the last only), per model."""
    if ep is None or ep.empty:
        return ""
    out = []
    for method in methods.split(","):
        part = ep[ep["method"].astype(str) == method]
        for model, g in part.groupby("model"):
            by = pd.to_numeric(g.set_index("epoch")[column], errors="coerce").groupby(level=0).mean().dropna()
            if by.empty:  # a run that records no such value says nothing about the curve
                continue
            first, last = by.index[0], by.index[-1]
            span = (f"epoch {last} {by.iloc[-1]:.3g}" if last_only
                    else f"epoch {first}–{last} {by.iloc[0]:.3g} → {by.iloc[-1]:.3g}")
            out.append(f"{_label(method)} · {model}: {span}")
    return "; ".join(out)


def _memory_vs_size(c, rclaims, f1, ep) -> tuple[str, str, str]:
    """A memory figure below what the frozen weights need even at 4 bits (0.5 byte per
    parameter, no quantisation scales) is impossible whatever else it leaves out."""
    n = paper_model_params(c["model"])
    need = 0.5 * n / 1e9
    status = "contradicted" if float(c["value"]) < need else NOT_CHECKABLE
    return (status, f"model size: {n / 1e9:.1f} B parameters, so 4-bit weights alone take {need:.1f} GB "
            f"(bf16 {4 * need:.1f} GB)", "")


def _speedup(c, rclaims, f1, ep) -> tuple[str, str, str]:
    paper = _paper_ratio(rclaims, "time per epoch")
    ours = _ratio_by_model(f1, "seconds_per_epoch")
    return (NOT_CHECKABLE, "; ".join(f"the text's own {m} times per epoch: {v:.2f}x" for m, v in paper.items()),
            "; ".join(f"{m}: full / hybrid time per epoch {v:.2f}x" for m, v in ours.items()))


def _memory_reduction(c, rclaims, f1, ep) -> tuple[str, str, str]:
    paper = _paper_ratio(rclaims, "GPU memory")
    ours = _ratio_by_model(f1, "peak_memory_gib")
    return (NOT_CHECKABLE, "; ".join(f"the text's own {m} memory: {100 * (1 - 1 / v):.1f}% less"
                                     for m, v in paper.items()),
            "; ".join(f"{m}: hybrid peak memory {_below(100 * (1 - 1 / v))} full" for m, v in ours.items()))


def _below(percent: float) -> str:
    """'12.0% below', or '4.5% above' where the hybrid needs more (a negative reduction)."""
    return f"{abs(percent):.1f}% {'below' if percent >= 0 else 'above'}"


def _curve(column: str, last_only: bool):
    return lambda c, rclaims, f1, ep: (NOT_CHECKABLE, "", _ours_epochs(ep, c["method"], column, last_only))


# Quantity (its start) -> (status, the paper-side numbers, ours); the first match applies.
RESOURCE_CHECKS = {"GPU memory": _memory_vs_size, "training time speed-up": _speedup,
                   "memory reduction": _memory_reduction, "gradient norm": _curve("grad_norm", False),
                   "validation loss": _curve("val_loss", True)}


def _check_resource(c, rclaims: pd.DataFrame, f1: pd.DataFrame, ep: pd.DataFrame) -> tuple[str, str, str]:
    """(status, the paper-side numbers, ours) for one Fig. 1 or Fig. 2 claim."""
    check = next((f for q, f in RESOURCE_CHECKS.items() if c["quantity"].startswith(q)), None)
    return check(c, rclaims, f1, ep) if check else (NOT_CHECKABLE, "", "")


# Units in resources-claims.csv that qualify the value rather than measure it.
QUALIFIERS = {"above": "above {}", "about": "about {}", "range": "{}"}


def _amount(value: str, unit: str) -> str:
    return QUALIFIERS[unit].format(value) if unit in QUALIFIERS else f"{value} {unit}"


def check_resource_claims(rclaims: pd.DataFrame, f1: pd.DataFrame | None = None,
                          ep: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each Fig. 1 / Fig. 2 number of the text: Table I cannot check it; the model's size can
    refute a memory figure; our runs (`fig1_frame`, `epochs_long`) give the comparable ratio or curve."""
    rows = []
    for _, c in rclaims.iterrows():
        status, paper, ours = _check_resource(c, rclaims, f1, ep)
        rows.append({"id": c["id"], "section": c["section"], "figure": c["figure"], "model": c["model"],
                     "claim": f"{', '.join(_label(m) for m in c['method'].split(','))}: {c['quantity']} "
                              f"{_amount(c['value'], c['unit'])}".strip(),
                     "status": status, "check": paper, "ours": ours})
    return pd.DataFrame(rows)


# --- what a GPU preset needs, from hupeft.plan ----------------------------------------------------


def preset_plan(preset: str = "paper", gpu_memory_gb: float = 80, gpus_per_node: int = 8) -> pd.DataFrame:
    """One row per model x method of `preset` as `hupeft plan` sees it (models' configs from
    data/paper/models.yaml, nothing loaded): how the cells run, the largest memory per GPU over
    their benchmarks, and GPU-hours of training summed over benchmarks and seeds."""
    from . import plan, presets

    hw = plan.Hardware(gpu_memory=gpu_memory_gb * plan.GB, gpus_per_node=gpus_per_node)
    plans = plan.plan_cells(presets.expand(presets.load_preset(preset), here=False, lookups=False), hw)
    rows = []
    for p in plans:
        n = p.need
        rows.append({"model": plan.paper_models().get(p.model, {}).get("name", p.model), "method": p.method,
                     "benchmark": p.benchmark, "strategy": p.strategy + (f" + {p.quantization} base" if p.quantization else ""),
                     "GPUs": p.processes, "nodes": p.nodes, "peak": n.peak / plan.GB,
                     "weights": n.weights / plan.GB, "gradients + optimiser": (n.grads + n.optimizer) / plan.GB,
                     "activations": n.activations / plan.GB, "gradient estimate": n.estimate / plan.GB,
                     "fits": p.feasible, "GPU-hours": p.hours * p.processes * len(p.seeds)})
    long = pd.DataFrame(rows)
    if long.empty:
        return long
    keys = ["model", "method", "strategy", "GPUs", "nodes"]
    worst = long.loc[long.groupby(["model", "method"], sort=False)["peak"].idxmax()]
    out = worst[keys + ["peak", "weights", "gradients + optimiser", "activations", "gradient estimate"]].copy()
    out = out.merge(long.groupby(["model", "method"], sort=False).agg(
        {"fits": "all", "GPU-hours": "sum", "benchmark": "count"}).reset_index(), on=["model", "method"])
    out = out.rename(columns={"peak": "peak GB per GPU", "weights": "weights GB", "gradients + optimiser":
                              "grads + optimiser GB", "activations": "activations GB",
                              "gradient estimate": "gradient estimate GB", "benchmark": "benchmarks"})
    out.attrs["hardware"] = hw
    return out.reset_index(drop=True)


# --- floors, per-seed differences, power and the learning-rate sweeps (the study) -----------------


def chance(benchmark: str) -> float | None:
    """Accuracy (percent) of guessing uniformly among a classification benchmark's labels."""
    try:
        n = benchmarks.get(benchmark).num_labels
    except ValueError:
        return None
    return 100.0 / n if n else None


def floor_comparisons(df: pd.DataFrame) -> pd.DataFrame:
    """Each trained method minus zero-shot over the same seeds (did it learn anything?)."""
    frames = [paired_comparisons(df, treatment=m, baselines=[FLOOR])
              for m in METHOD_ORDER if m != FLOOR and (df["method"] == m).any()]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def per_seed_differences(df: pd.DataFrame, treatment: str = "hybrid", baselines: list[str] | None = None
                         ) -> pd.DataFrame:
    """treatment minus each baseline, seed by seed (the values a paired interval is made of)."""
    long = scores_long(df[df["status"] == "ok"])
    rows = []
    for (model, bench, metric), g in long.groupby(["model", "benchmark", "metric"], observed=True):
        by = {m: dict(zip(x["seed"], x["value"])) for m, x in g.groupby("method", observed=True)}
        for base in [b for b in (baselines or BASELINES + [FLOOR]) if b in by and b != treatment]:
            for seed in sorted(set(by.get(treatment, {})) & set(by[base])):
                rows.append({"model": model, "benchmark": bench, "metric": metric, "baseline": base,
                             "comparison": f"{LABEL.get(treatment, treatment)} − {LABEL.get(base, base)}",
                             "seed": seed, "difference": by[treatment][seed] - by[base][seed]})
    return pd.DataFrame(rows)


def power(pc: pd.DataFrame, seeds: pd.DataFrame, level: float = 0.95, target_power: float = 0.8
          ) -> pd.DataFrame:
    """Per paired comparison: the seed-to-seed spread of the difference, the interval's half width,
    and the minimum detectable difference of the design: the true difference a paired t-test at
    this level finds with probability `target_power`, (t_(1-a/2) + t_power) * sd / sqrt(n)."""
    from .stats import t_quantile

    rows = []
    for (model, bench, metric, comp), g in seeds.groupby(["model", "benchmark", "metric", "comparison"]):
        n = len(g)
        if n < 2:
            continue
        sd = float(g["difference"].std(ddof=1))
        t_a = t_quantile(n - 1, level)
        t_b = t_quantile(n - 1, 2 * target_power - 1)  # the one-sided target_power quantile
        rows.append({"model": model, "benchmark": bench, "metric": metric, "comparison": comp, "seeds": n,
                     "sd": sd, "ci95": t_a * sd / n ** 0.5, "mdd80": (t_a + t_b) * sd / n ** 0.5})
    return pd.DataFrame(rows)


def study_source(results: str | Path, preset: str = "study") -> tuple[Path, str]:
    """Where the study's records are: a fresh run under `results` if it has any, else the archive."""
    fresh = Path(results) / preset
    if any(fresh.rglob("record.json")):
        return Path(results), "fresh"
    return ARCHIVE, "archived"


def sweep_points(root: str | Path, preset: str) -> pd.DataFrame:
    """Every sweep run of a preset (records under <root>/<preset>-sweep/): method, its rate(s),
    the held-out score (percent; diverged runs as nan) and the status."""
    base = Path(root) / f"{preset}-sweep"
    df = load_all(base) if base.exists() else pd.DataFrame()
    if df.empty:
        return pd.DataFrame(columns=["method", "lr", "lr_lora", "lr_boft", "score", "status"])
    rows = []
    for _, r in df.iterrows():
        cfg = r["record"]["config"]
        opts = cfg.get("method_options") or {}
        metric = next(iter(r["record"].get("scores") or {}), None)
        rows.append({"method": r["method"], "lr": cfg.get("lr"), "lr_lora": opts.get("lr_lora"),
                     "lr_boft": opts.get("lr_boft"), "status": r["status"], "seed": r["seed"],
                     "score": 100 * r["record"]["scores"]["accuracy"] if r["status"] == "ok" and
                     "accuracy" in (r["record"].get("scores") or {}) else float("nan"), "metric": metric})
    return pd.DataFrame(rows)


def chosen_rates(preset: str) -> dict:
    """The learning rate(s) each method of a preset runs at (what its sweep chose)."""
    p = load_preset(preset)
    return {m: preset_rates(p, m) for m in p["methods"]}


# --- the paper's claims against our runs ---------------------------------------------------------

VERDICTS = ("reproduced", "contradicted", "unresolved", "not testable here")


def studies(results: str | Path, preset: str) -> dict[str, pd.DataFrame]:
    """Every study the book holds, headline first: the real-data study (fresh or archived) and
    the preset this book was built from, each as its records (the six methods and zero-shot)."""
    out = {}
    src, _ = study_source(results)
    if any((Path(src) / "study").rglob("record.json")):
        out["study"] = records(src, "study")
    if preset != "study" and any((Path(results) / preset).rglob("record.json")):
        out[preset] = records(results, preset)
    return out


def _direction(low: float, high: float, sign: float) -> str:
    """reproduced / contradicted / unresolved for a claimed difference of this sign."""
    if pd.isna(low) or pd.isna(high):
        return "unresolved"
    if (low > 0 and sign > 0) or (high < 0 and sign < 0):
        return "reproduced"
    if (high < 0 and sign > 0) or (low > 0 and sign < 0):
        return "contradicted"
    return "unresolved"


def _our_difference(c, df: pd.DataFrame) -> tuple[str, str] | None:
    """(verdict, numbers) of a difference, at-least or best claim in one study; None if the study
    has no run of the claim's benchmark family and methods."""
    glue = df[df["benchmark"].map(PAPER_BENCHMARK) == c["benchmark"]]
    rivals = [c["versus"]] if c["kind"] != "best" else c["versus"].split(",")
    pcs = pd.concat([paired_comparisons(glue, treatment=c["method"], baselines=[r]) for r in rivals]) \
        if not glue.empty else pd.DataFrame()
    if pcs.empty:
        return None
    pcs = pcs[pcs["metric"].isin(["accuracy", "score", "exact_match_strict", "bleu", "pass@1"])]
    if pcs.empty:
        return None
    numbers = "; ".join(f"{r['comparison']} {fmt_interval(r['difference'], r['ci95'])}"
                        + (f" ({r['benchmark'].split('/')[-1]})" if pcs["benchmark"].nunique() > 1 else "")
                        for _, r in pcs.iterrows())
    each = [_direction(r["low"], r["high"], 1.0 if c["kind"] != "difference" else
                       (1.0 if float(c["claimed"]) >= 0 else -1.0)) for _, r in pcs.iterrows()]
    if "contradicted" in each:
        verdict = "contradicted"
    elif all(v == "reproduced" for v in each):
        verdict = "reproduced"
    else:
        verdict = "unresolved"
    return verdict, numbers


def our_text_verdicts(claims: pd.DataFrame, held: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Each text claim against our own runs (`held`: study name -> records): reproduced (the
    paired 95% interval excludes zero on the claimed side), contradicted (on the other side),
    unresolved (it includes zero), or not testable here (an absolute score of a 7B-405B model,
    or a benchmark none of our studies ran). The headline study decides where it tests a claim."""
    rows = []
    for _, c in claims.iterrows():
        verdict, parts = "not testable here", []
        if c["kind"] == "value":
            parts.append("an absolute score of a 7B–405B model")
        else:
            for name, df in held.items():
                got = _our_difference(c, df)
                if got is None:
                    continue
                parts.append(f"{name}: {got[0]}, {got[1]}")
                verdict = got[0] if verdict == "not testable here" else verdict
            if not parts:
                parts.append(f"no {c['benchmark']} runs of {_label(c['method'])} and its rival(s) here")
        rows.append({"id": c["id"], "our runs": verdict, "our numbers": "; ".join(parts)})
    return pd.DataFrame(rows)


def _ratio_intervals(df: pd.DataFrame, column: str) -> dict[str, tuple[float, float, float, int]]:
    """Per model: full FT's value over the hybrid's, seed by seed, as mean and 95% interval."""
    from .stats import mean_interval

    ok = df[(df["status"] == "ok") & (df["epochs"] > 0)]
    out = {}
    for model, g in ok.groupby("model"):
        wide = g.pivot_table(index="seed", columns="method", values=column, observed=True)
        if {"full", "hybrid"} <= set(wide.columns):
            iv = mean_interval((wide["full"] / wide["hybrid"]).dropna())
            if iv.n:
                out[model] = (iv.mean, iv.low, iv.high, iv.n)
    return out


def our_resource_verdicts(rclaims: pd.DataFrame, held: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The speed-up and memory-reduction claims (hybrid against full FT) against our per-seed
    ratios: reproduced where our interval reaches the claimed ratio, contradicted where it lies
    wholly below it, unresolved otherwise; the rest (a 405B model's GB or minutes, curves read off
    a figure) is not testable here."""
    rows = []
    for _, c in rclaims.iterrows():
        quantity = c["quantity"]
        column = ("seconds_per_epoch" if quantity.startswith("training time speed-up") else
                  "peak_memory_bytes" if quantity.startswith("memory reduction") else None)
        verdict, parts = "not testable here", []
        if column is None:
            parts.append("a 7B–405B model's own figure")
        else:
            # The claimed full / hybrid ratio: 2.1x faster, or 50% less memory = 2x.
            claimed = float(c["value"]) if c["unit"] == "x" else 1 / (1 - float(c["value"]) / 100)
            for name, df in held.items():
                for model, (mean, low, high, n) in _ratio_intervals(df, column).items():
                    v = "reproduced" if high >= claimed else "contradicted" if n > 1 else "unresolved"
                    span = f"95% interval {low:.2f} to {high:.2f}, {n} seeds" if n > 1 else "1 seed"
                    parts.append(f"{name} · {model}: {v}, full / hybrid {mean:.2f}x ({span}; the claim: "
                                 f"{claimed:.2f}x)")
                    verdict = v if verdict == "not testable here" else verdict
            if not parts:
                parts.append("no run of both full FT and the hybrid here")
        rows.append({"id": c["id"], "our runs": verdict, "our numbers": "; ".join(parts)})
    return pd.DataFrame(rows)


def sweep_source(results: str | Path, preset: str) -> Path:
    """The results root holding the preset's sweep: a fresh `hupeft sweep` run, else the archive."""
    fresh = Path(results) / f"{preset}-sweep"
    return Path(results) if any(fresh.rglob("record.json")) else ARCHIVE
