"""Records -> DataFrames -> the book's tables and figures; `hupeft report`.

Every number the book shows is computed here from run records (or read from data/paper/ for
the paper's own claims). The book's result pages are notebooks under notebooks/report/ that
call these functions; `hupeft report --preset P` executes them with papermill into
book/results/ (generated, not committed) and `--build` then builds the book.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from .records import load_all

REPO = Path(__file__).resolve().parents[2]
PAPER_DIR = REPO / "data" / "paper"
REPORT_NOTEBOOKS = REPO / "notebooks" / "report"
GENERATED = REPO / "book" / "results"

# Our benchmark names -> the names the paper's Table I uses.
PAPER_BENCHMARK = {"glue/mnli": "MNLI", "glue/qqp": "QQP", "glue/sst2": "SST-2", "glue/qnli": "QNLI",
                   "gsm8k": "GSM8K", "mtbench": "MT-Bench", "humaneval": "HumanEval"}
METHOD_LABEL = {"full": "Full FT", "lora": "LoRA", "loraga": "LoRA-GA", "boft": "BOFT",
                "urnn": "uRNN", "hybrid": "Hybrid"}
METHOD_ORDER = list(METHOD_LABEL)


def records(results: str | Path, preset: str | None = None) -> pd.DataFrame:
    root = Path(results) / preset if preset else Path(results)
    df = load_all(root)
    if df.empty:
        raise FileNotFoundError(f"no record.json under {root}; run `hupeft grid --preset {preset or '...'}` first")
    df["method"] = pd.Categorical(df["method"], categories=METHOD_ORDER, ordered=True)
    return df.sort_values(["model", "benchmark", "method", "seed"]).reset_index(drop=True)


def scores_long(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run and metric."""
    cols = [c for c in df.columns if c.startswith("score.")]
    long = df.melt(id_vars=["model", "benchmark", "method", "seed", "status"], value_vars=cols,
                   var_name="metric", value_name="value").dropna(subset=["value"])
    long["metric"] = long["metric"].str.removeprefix("score.")
    return long


def table1(df: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per benchmark x metric x method x model: the runs, mean +- sd, and the paper's mean."""
    long = scores_long(df[df["status"] == "ok"])
    g = long.groupby(["benchmark", "metric", "method", "model"], observed=True)["value"]
    out = g.agg(runs=lambda v: ", ".join(f"{x:.3f}" for x in v), n="count", mean="mean", sd="std").reset_index()
    out["sd"] = out["sd"].fillna(0.0)
    if paper is not None and not paper.empty:
        pm = paper_means(paper)
        out["paper_benchmark"] = out["benchmark"].map(PAPER_BENCHMARK)
        out["paper_method"] = out["method"].map(METHOD_LABEL)
        merged = out.merge(pm, how="left", left_on=["paper_benchmark", "paper_method"],
                           right_on=["benchmark", "method"], suffixes=("", "_paper"))
        out = merged.drop(columns=["benchmark_paper", "method_paper", "paper_benchmark", "paper_method"],
                          errors="ignore")
        out["difference"] = out["mean"] - out["paper_mean"]
    return out


def paper_table1() -> pd.DataFrame:
    path = PAPER_DIR / "table1.csv"
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def paper_means(paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's value per benchmark x method, averaged over its models and runs, with the
    models it covers (the paper trains other models than ours, so this is context, not a target)."""
    value = "value" if "value" in paper.columns else paper.select_dtypes("number").columns[0]
    g = paper.groupby(["benchmark", "method"])
    return g.agg(paper_mean=(value, "mean"),
                 paper_models=("model", lambda m: ", ".join(sorted(set(map(str, m)))))).reset_index()


def fig1_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Seconds per epoch and peak memory per method and model (Fig. 1)."""
    ok = df[df["status"] == "ok"]
    return ok.groupby(["model", "method"], observed=True).agg(
        seconds_per_epoch=("seconds_per_epoch", "mean"), peak_memory_gib=("peak_memory_bytes", lambda b: b.mean() / 2**30),
        memory_kind=("memory_kind", "first"), runs=("seed", "count")).reset_index()


def epochs_long(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run and epoch: gradient norm and validation loss (Fig. 2)."""
    rows = []
    for _, r in df.iterrows():
        for ep in r["record"]["epochs"]:
            rows.append({"model": r["model"], "benchmark": r["benchmark"], "method": r["method"], "seed": r["seed"],
                         **{k: ep.get(k) for k in ("epoch", "train_loss", "val_loss", "grad_norm", "seconds",
                                                   "orthogonality_error")}})
    return pd.DataFrame(rows)


def lambda_long(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in df[df["method"] == "hybrid"].iterrows():
        for layer, values in (r["record"].get("hybrid_lambda") or {}).items():
            for i, v in enumerate(values):
                rows.append({"model": r["model"], "benchmark": r["benchmark"], "seed": r["seed"],
                             "layer": layer, "step": i + 1, "lambda": v})
    return pd.DataFrame(rows)


def params_frame(df: pd.DataFrame) -> pd.DataFrame:
    out = df.groupby(["model", "method"], observed=True).agg(trainable=("trainable", "first"),
                                                            total=("total", "first")).reset_index()
    out["percent"] = 100 * out["trainable"] / out["total"]
    return out


def run_index(df: pd.DataFrame, book_dir: Path = GENERATED) -> pd.DataFrame:
    """Every executed run notebook with its status, for the reproducibility page."""
    rows = []
    for _, r in df.iterrows():
        nb = Path(r["path"]).parent / "run.ipynb"
        rows.append({"model": r["model"], "benchmark": r["benchmark"], "method": r["method"], "seed": r["seed"],
                     "status": r["status"], "notebook": str(nb) if nb.exists() else None})
    return pd.DataFrame(rows)


def execute_pages(preset: str, results: Path, progress: bool = True) -> list[Path]:
    """Run every notebook of notebooks/report/ against the preset's records, into book/results/."""
    import papermill as pm

    GENERATED.mkdir(parents=True, exist_ok=True)
    out = []
    for nb in sorted(REPORT_NOTEBOOKS.glob("*.ipynb")):
        dest = GENERATED / nb.name
        tmp = GENERATED / f".{nb.name}.partial"
        pm.execute_notebook(str(nb), str(tmp), parameters={"preset": preset, "results": str(Path(results).resolve())},
                            progress_bar=progress, kernel_name="python3", cwd=str(GENERATED))
        tmp.replace(dest)
        out.append(dest)
    return out


def build_book() -> int:
    import subprocess

    cmd = [sys.executable, "-m", "jupyter_book", "build", str(REPO), "-W", "--builder", "html"]
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
    print(f"report: {len(pages)} pages from {root} in {time.time() - t0:.0f} s -> {GENERATED}")
    if args.build:
        code = build_book()
        print(f"book: {'built' if code == 0 else 'FAILED'}: {REPO / '_build' / 'html' / 'index.html'}")
        return code
    return 0
