"""Records -> DataFrames -> the book's tables and figures; `hupeft report`.

Every number the book shows is computed here from run records (or read from data/paper/ for
the paper's own claims). The book's result pages are notebooks under notebooks/report/ that
call these functions; `hupeft report --preset P` executes them with papermill into
book/results/ (generated, not committed) and `--build` then builds the book.
"""

from __future__ import annotations

import argparse
import shutil
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
    else:  # the columns stay, empty, so the page shows where the paper's numbers go
        out["paper_mean"], out["paper_models"], out["difference"] = float("nan"), float("nan"), float("nan")
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


def execute_pages(preset: str, results: Path, progress: bool = True, jobs: int | None = None) -> list[Path]:
    """Run every notebook of notebooks/report/ against the preset's records, into book/results/.

    Pages are independent, and most of a page's time is its kernel starting and importing, so
    they run `jobs` at a time (default: one per core, at most 4)."""
    import os
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm.auto import tqdm

    from .executor import execute_notebook

    GENERATED.mkdir(parents=True, exist_ok=True)
    notebooks = sorted(REPORT_NOTEBOOKS.glob("*.ipynb"))
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
    return [GENERATED / nb.name for nb in notebooks]


def _hide_injected_parameters(path: Path) -> None:
    """The book shows results, not papermill's injected parameter cell."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = tags + ["remove-cell"]
    nbformat.write(nb, str(path))


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
    print(f"report: {len(pages)} pages from {root} in {time.time() - t0:.0f} s -> {GENERATED}")
    if args.build:
        code = build_book()
        print(f"book: {'built' if code == 0 else 'FAILED'}: {REPO / '_build' / 'html' / 'index.html'}")
        return code
    return 0


# --- page helpers: each shows a table or figure and glues its key numbers --------------------


def _md(text: str) -> None:
    from IPython.display import Markdown, display

    display(Markdown(text))


def _glue(key: str, value, display: bool = False) -> None:
    try:
        from myst_nb import glue
    except ImportError:
        return
    glue(key, float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value,
         display=display)


def _html(frame: pd.DataFrame, floatfmt: str = "{:.4g}") -> None:
    from IPython.display import HTML, display

    display(HTML(frame.to_html(index=False, float_format=lambda x: floatfmt.format(x), na_rep="-",
                               classes="hupeft-table", border=0, escape=True, justify="left")))


def provenance(df: pd.DataFrame, preset: str) -> None:
    """One line: which preset produced this page, from how many runs, finished when."""
    finished = max((r.get("finished_at") or 0) for r in df["record"])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(finished)) if finished else "unknown"
    ok = int((df["status"] == "ok").sum())
    _glue("preset", preset)
    _glue("runs", len(df))
    _md(f"*Computed from {len(df)} run records of preset `{preset}` ({ok} ok), the last finished {when}.*")


def setup_tables(df: pd.DataFrame) -> None:
    rows = []
    for (model, bench), g in df.groupby(["model", "benchmark"]):
        cfg = g.iloc[0]["record"]["config"]
        data = cfg.get("data", {})
        rows.append({"model": model, "model source": cfg.get("model_source"), "benchmark": bench,
                     "data": data.get("description"), "synthetic": data.get("synthetic"),
                     "train source": data.get("sources", {}).get("train"),
                     "n_train / n_val / n_eval": f"{data.get('n_train')} / {data.get('n_val')} / {data.get('n_eval')}",
                     "seeds": ", ".join(str(s) for s in sorted(g["seed"].unique())),
                     "task": cfg.get("task"), "precision": cfg.get("precision")})
    _md("## Models and data\nSynthetic data is generated by the project with a fixed seed; it tests the "
        "pipeline and the relative behaviour of methods, and is not comparable with the paper's benchmarks.")
    _html(pd.DataFrame(rows))
    keys = ["epochs", "lr", "batch_size", "grad_accum", "warmup_ratio", "clip_norm", "max_len", "weight_decay"]
    hp = []
    for (model, bench, method), g in df.groupby(["model", "benchmark", "method"], observed=True):
        cfg = g.iloc[0]["record"]["config"]
        opts = {k: v for k, v in (cfg.get("method_options") or {}).items() if k != "target_modules"}
        hp.append({"model": model, "benchmark": bench, "method": method, **{k: cfg.get(k) for k in keys},
                   "targets": ",".join(cfg.get("method_options", {}).get("target_modules") or ["(default)"]),
                   "method options": ", ".join(f"{k}={v}" for k, v in opts.items())})
    _md("## Hyperparameters, as run")
    _html(pd.DataFrame(hp))
    env = df.iloc[0]["record"]["environment"]
    _md(f"## Hardware\n{env.get('device')} ({env.get('device_kind')}), {env.get('cpu_count')} CPUs, "
        f"{env.get('gpu_count')} GPUs; torch {env['packages'].get('torch')}.")


def show_table1(t1: pd.DataFrame) -> None:
    if t1.empty:
        _md("No run finished ok, so there is nothing to tabulate.")
        return
    _md("Each cell: the per-seed values of our runs, their mean and standard deviation, and where the "
        "paper reports the same benchmark and method, the paper's mean over the models it lists "
        "(`paper_models`) and our mean minus it. The paper's numbers are its claims, read from "
        "`data/paper/table1.csv`; ours come from the records. Our models are not the paper's, so the "
        "difference is context, not a verdict.")
    if t1["paper_mean"].isna().all():
        _md("The paper's Table I values are not in `data/paper/table1.csv` yet (it holds the header only; "
            "`data/paper/README.md` says why), so its columns show `-`. Add the printed rows there and "
            "rebuild: the means and differences fill in.")
    cols = [c for c in ["benchmark", "metric", "method", "model", "runs", "n", "mean", "sd", "paper_mean",
                        "paper_models", "difference"] if c in t1.columns]
    _html(t1[cols], "{:.3f}")
    for _, r in t1.iterrows():
        _glue(f"t1/{r['model']}/{r['benchmark']}/{r['method']}/{r['metric']}", float(r["mean"]))
    best = t1.loc[t1.groupby(["benchmark", "metric", "model"], observed=True)["mean"].idxmax()]
    lines = [f"- {r['model']}, {r['benchmark']} ({r['metric']}): best mean **{r['method']}** "
             f"({r['mean']:.3f} +- {r['sd']:.3f} over {r['n']} runs)" for _, r in best.iterrows()]
    _md("Best method per benchmark in our runs:\n" + "\n".join(lines))


def plot_table1(t1: pd.DataFrame):
    import matplotlib.pyplot as plt
    import seaborn as sns

    if t1.empty:
        return None
    keys = t1[["benchmark", "metric"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.4), squeeze=False)
    for ax, (bench, metric) in zip(axes[0], keys):
        part = t1[(t1["benchmark"] == bench) & (t1["metric"] == metric)]
        sns.barplot(data=part, x="method", y="mean", hue="model", ax=ax, errorbar=None)
        for i, (_, r) in enumerate(part.iterrows()):
            ax.errorbar(i % len(part["method"].unique()), r["mean"], yerr=r["sd"], fmt="none", c="k", lw=0.8)
        if "paper_mean" in part.columns and part["paper_mean"].notna().any():
            ax.scatter(range(len(part)), part["paper_mean"], marker="x", c="crimson", zorder=3, label="paper mean")
        ax.set_title(f"{bench}: {metric}", fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def show_fig1(f1: pd.DataFrame) -> None:
    kind = ", ".join(sorted(set(f1["memory_kind"].dropna())))
    _md(f"Mean seconds per training epoch and peak memory per method (memory: `{kind}`; on CPU this is the "
        "process's peak resident set, which includes the Python runtime and the frozen weights, on GPU "
        "CUDA's maximum allocated bytes).")
    _html(f1)
    for _, r in f1.iterrows():
        _glue(f"fig1/{r['model']}/{r['method']}/seconds", float(r["seconds_per_epoch"]))
        _glue(f"fig1/{r['model']}/{r['method']}/memory_gib", float(r["peak_memory_gib"]))


def plot_fig1(f1: pd.DataFrame):
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    sns.barplot(data=f1, x="method", y="seconds_per_epoch", hue="model", ax=axes[0])
    axes[0].set_title("time per epoch (s)")
    sns.barplot(data=f1, x="method", y="peak_memory_gib", hue="model", ax=axes[1])
    axes[1].set_title("peak memory (GiB)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=45)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_fig2(ep: pd.DataFrame):
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ep.empty:
        _md("No epochs recorded.")
        return None
    groups = ep[["model", "benchmark"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(len(groups), 2, figsize=(9, 3.0 * len(groups)), squeeze=False)
    for row, (model, bench) in zip(axes, groups):
        part = ep[(ep["model"] == model) & (ep["benchmark"] == bench)]
        sns.lineplot(data=part, x="epoch", y="grad_norm", hue="method", marker="o", ax=row[0])
        row[0].set_title(f"{model} / {bench}: gradient norm", fontsize=9)
        sns.lineplot(data=part, x="epoch", y="val_loss", hue="method", marker="o", ax=row[1])
        row[1].set_title(f"{model} / {bench}: validation loss", fontsize=9)
        for ax in row:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def show_fig2(ep: pd.DataFrame) -> None:
    if ep.empty:
        return
    last = ep.sort_values("epoch").groupby(["model", "benchmark", "method"], observed=True).agg(
        epochs=("epoch", "max"), final_grad_norm=("grad_norm", "last"), final_val_loss=("val_loss", "last"))
    _md("Mean over seeds of the last epoch's mean global gradient norm (before clipping) and validation loss:")
    _html(last.reset_index())


def plot_lambda(lam: pd.DataFrame):
    import matplotlib.pyplot as plt
    import seaborn as sns

    if lam.empty:
        _md("No hybrid run in this preset.")
        return None
    _md("The hybrid's lambda per layer and optimiser step (mean over seeds): 1 means all LoRA-GA, 0 all BOFT.")
    groups = lam[["model", "benchmark"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 0.5 + 0.18 * lam["layer"].nunique() + 1.2 * len(groups)),
                             squeeze=False)
    for ax, (model, bench) in zip(axes[:, 0], groups):
        part = lam[(lam["model"] == model) & (lam["benchmark"] == bench)]
        grid = part.pivot_table(index="layer", columns="step", values="lambda", aggfunc="mean")
        grid.index = [i.replace("model.", "").replace(".self_attn", "") for i in grid.index]
        sns.heatmap(grid, vmin=0, vmax=1, cmap="vlag", ax=ax, cbar_kws={"label": "lambda"})
        ax.set_title(f"{model} / {bench}", fontsize=9)
        ax.tick_params(axis="y", labelsize=5)
    fig.tight_layout()
    stats = lam.groupby("step")["lambda"].agg(["mean", "min", "max"])
    _glue("lambda_final_mean", float(stats["mean"].iloc[-1]))
    _glue("lambda_final_min", float(stats["min"].iloc[-1]))
    _glue("lambda_final_max", float(stats["max"].iloc[-1]))
    return fig


def plot_orthogonality(ep: pd.DataFrame):
    import matplotlib.pyplot as plt
    import seaborn as sns

    part = ep.dropna(subset=["orthogonality_error"]) if "orthogonality_error" in ep else ep.iloc[0:0]
    if part.empty:
        _md("No rotation-based run (boft, urnn, hybrid) in this preset.")
        return None
    _md("Orthogonality / unitarity error max |R^T R - I| per epoch (log scale): how far the rotations "
        "drift from the manifold in floating point.")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.lineplot(data=part, x="epoch", y="orthogonality_error", hue="method", style="model", marker="o", ax=ax)
    ax.set_yscale("log")
    fig.tight_layout()
    _glue("orthogonality_error_max", float(part["orthogonality_error"].max()))
    return fig


def show_params(pf: pd.DataFrame) -> None:
    _md("Trainable parameters per method (counted from the adapted model; classification heads included).")
    _html(pf, floatfmt="{:.4g}")


def multilingual(df: pd.DataFrame) -> pd.DataFrame:
    part = df[df["benchmark"].str.startswith(("xnli/", "flores/"))]
    if part.empty:
        return pd.DataFrame()
    long = scores_long(part[part["status"] == "ok"])
    long["language"] = long["benchmark"].str.split("/").str[1]
    return long.groupby(["benchmark", "language", "metric", "method", "model"], observed=True)["value"].agg(
        mean="mean", sd="std", n="count").reset_index()


def show_multilingual(ml: pd.DataFrame) -> None:
    if ml.empty:
        _md("This preset has no XNLI or FLORES runs. Run `hupeft reproduce --preset multilingual` for the "
            "study (32 training examples per language).")
        return
    _html(ml)


def resource_check() -> pd.DataFrame:
    """For each paper model: bf16 weight memory from its config, beside the paper's reported memory."""
    import yaml

    path = PAPER_DIR / "models.yaml"
    if not path.exists():
        return pd.DataFrame()
    spec = yaml.safe_load(path.read_text())
    rows = []
    for entry in spec.get("models", spec if isinstance(spec, list) else []):
        n = param_count(entry)
        rows.append({"model": entry.get("id") or entry.get("name"), "parameters (B)": n / 1e9 if n else None,
                     "bf16 weights (GiB)": 2 * n / 2**30 if n else None,
                     "4-bit weights (GiB)": 0.5 * n / 2**30 if n else None,
                     "paper reports": entry.get("paper_memory"), "source": entry.get("source")})
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


def show_resources(rc: pd.DataFrame) -> None:
    if rc.empty:
        _md("`data/paper/models.yaml` is missing.")
        return
    _md("The memory the frozen weights alone need, computed from each model's configuration "
        "(parameters x 2 bytes in bf16, x 0.5 in 4-bit), beside what the paper reports. Training needs "
        "more: activations, adapter states and, for full fine-tuning, gradients and optimiser moments.")
    _html(rc)
    for _, r in rc.iterrows():
        if r["bf16 weights (GiB)"] is not None:
            _glue(f"bf16_gib/{r['model']}", float(r["bf16 weights (GiB)"]))


def show_environment(df: pd.DataFrame) -> None:
    envs = pd.DataFrame([{"commit": (r["environment"].get("git_commit") or "")[:12],
                          "device": r["environment"].get("device"), "python": r["environment"].get("python"),
                          **{k: v for k, v in r["environment"]["packages"].items()}} for r in df["record"]])
    _md("Environments the runs were executed in (distinct rows):")
    _html(envs.drop_duplicates())


def show_run_index(df: pd.DataFrame) -> None:
    idx = run_index(df)
    _md("Every run of this preset, with its executed notebook (in the results folder) and record:")
    _html(idx)
