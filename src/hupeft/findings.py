"""The book's first page, "What we found": one sentence per finding, each with its number and
interval and a link to the page that shows it, and one summary figure of every hybrid-minus-
baseline difference in every study the book holds, beside the paper's own.

`hupeft report` writes both into book/generated/ (not committed) after the result pages, from
the same records and data/paper/ files; book/intro.md includes them. Nothing here is typed: a
finding whose records are absent is left out, never filled in.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import benchmarks, report
from .atomic import atomic_write, atomic_write_text

GENERATED = report.REPO / "book" / "generated"
SUMMARY_FIGURE = "summary.svg"
STUDY_LABEL = {"study": "real SST-2 study", "cpu": "synthetic cpu study"}


def _link(page: str, text: str) -> str:
    return f"[{text}](results/{page}.ipynb)"  # relative to book/intro.md, which includes this text


def _page(stem: str) -> str:
    """A result page's file stem (pages are numbered; the name after the number is stable)."""
    found = sorted(report.REPORT_NOTEBOOKS.glob(f"*-{stem}.ipynb"))
    return found[0].stem if found else stem


def audit_findings() -> list[str]:
    """The paper against itself: Table I's printed means, its text's claims, its memory figures."""
    out = []
    paper = report.paper_table1()
    if not paper.empty:
        audit = report.paper_audit(paper)
        bad = audit[audit["disagrees"]]
        out.append(f"**{len(bad)} of the {len(audit)} means the paper prints in Table I are not the means of "
                   f"the runs printed beside them** (largest gap {bad['printed − mean'].abs().max():.1f} points). "
                   + _link(_page("table1"), "Table I page"))
    text, resources = report.paper_claims()
    checked = report.check_text_claims(text, paper)
    contra = int((checked["status"] == "contradicted").sum())
    out.append(f"**{contra} of the text's {len(checked)} numeric claims about Table I contradict Table I "
               "itself.** " + _link(_page("claims"), "claims page"))
    rc = report.check_resource_claims(resources)
    impossible = rc[rc["status"] == "contradicted"]
    if not impossible.empty:
        first = impossible.iloc[0]
        out.append(f"**{len(impossible)} of its GPU-memory figures are physically impossible**: below what the "
                   f"model's weights need even at 4 bits (e.g. {first['claim']}; {first['check']}). "
                   + _link(_page("claims"), "claims page"))
    return out


def collapse_finding(df: pd.DataFrame, name: str) -> list[str]:
    """Under the printed lambda rule, does the hybrid become one branch, and how does it score?"""
    lam = report.lambda_long(df)
    if lam.empty or "hybrid-paper" not in set(lam["method"].astype(str)):
        return []
    summary = report.lambda_summary(lam, report.branch_long(df))
    paper_rule = summary[summary["method"].astype(str) == "hybrid-paper"]
    onto = int((paper_rule["one_branch"] == "LoRA-GA").sum())
    pc = report.paired_comparisons(df, treatment="hybrid-paper", baselines=["loraga"])
    score = ""
    if not pc.empty:
        r = pc.iloc[0]
        score = (f"; it then scores {report.fmt_interval(r['difference'], r['ci95'], 1)} points against "
                 f"LoRA-GA alone over {int(r['seeds'])} seeds")
    return [f"**Under the λ rule as printed, the hybrid collapses onto LoRA-GA** (λ above "
            f"{report.DEGENERATE} in every layer) in {onto} of {len(paper_rule)} runs of the {STUDY_LABEL.get(name, name)}"
            f"{score}. " + _link(_page("beyond"), "Beyond the paper")]


def primary(frame: pd.DataFrame) -> pd.DataFrame:
    """Only each benchmark's headline metric (accuracy, BLEU, pass@1...): one finding per task."""
    if frame.empty:
        return frame
    keep = [benchmarks.get(b).primary_metric == m if b in benchmarks.names() else True
            for b, m in zip(frame["benchmark"], frame["metric"])]
    return frame[keep]


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def study_findings(name: str, df: pd.DataFrame) -> list[str]:
    """What one study resolves: the floor, and the hybrid against each baseline."""
    label = STUDY_LABEL.get(name, f"`{name}` study")
    page = _page("study") if name == "study" else _page("table1")
    out = []
    fc = primary(report.floor_comparisons(df))
    if not fc.empty:
        learned = fc[fc["low"] > 0]
        rng = f"{learned['difference'].min():.1f} to {learned['difference'].max():.1f}" if len(learned) else ""
        out.append(f"In the {label}, **{len(learned)} of {len(fc)} methods beat the untrained model**"
                   + (f" (by {rng} points, each paired 95% interval above zero)" if rng else "")
                   + ". " + _link(page, "results"))
    pc = primary(report.paired_comparisons(df))
    if pc.empty:
        return out
    seeds = int(pc["seeds"].max())
    res = pc[pc["resolved"]]
    several = pc[["model", "benchmark"]].drop_duplicates().shape[0] > 1
    parts = [f"{r['comparison']} {report.fmt_interval(r['difference'], r['ci95'], 1)}"
             + (f" ({r['model']} · {r['benchmark']})" if several else "") for _, r in pc.iterrows()]
    widest = pc["ci95"].max()
    spread = (f"; widest half width {widest:.1f}" if pd.notna(widest) else
              "; one seed gives no interval, so none can resolve")
    out.append(f"In the {label} ({_seeds(seeds)}), **{len(res)} of {len(pc)} "
               f"hybrid-versus-baseline differences are resolved** (95% interval excludes zero): "
               f"{'; '.join(parts)} points{spread}. " + _link(page, "results"))
    return out


def paper_differences() -> pd.DataFrame:
    """The paper's Table I GLUE score: hybrid minus each baseline per model (printed means)."""
    pm = report.paper_means(report.paper_table1())
    glue = pm[pm["benchmark"] == "glue"].pivot_table(index="model", columns="method", values="value")
    rows = [{"baseline": b, "model": m, "difference": glue.loc[m, "hybrid"] - glue.loc[m, b]}
            for b in report.BASELINES if b in glue.columns for m in glue.index]
    return pd.DataFrame(rows)


def summary_figure(held: dict[str, pd.DataFrame], path: Path) -> bool:
    """Every hybrid-minus-baseline difference with its 95% interval per study, the paper's per-model
    GLUE differences beside them. False when no study has a comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = {name: primary(report.paired_comparisons(df)) for name, df in held.items()}
    comps = {k: v for k, v in comps.items() if not v.empty}
    if not comps:
        return False
    paper = paper_differences()
    bases = [b for b in report.BASELINES if any((v["baseline"] == b).any() for v in comps.values())]
    fig, ax = plt.subplots(figsize=(7.2, 0.62 * len(bases) + 1.5))
    offsets = {name: 0.18 * (i - (len(comps) - 1) / 2) for i, name in enumerate(comps)}
    for i, (name, pc) in enumerate(comps.items()):
        label = f"{STUDY_LABEL.get(name, name)} ({_seeds(int(pc['seeds'].max()))})"
        for y, b in enumerate(bases):
            for _, r in pc[pc["baseline"] == b].iterrows():
                ax.errorbar(r["difference"], y + offsets[name], xerr=0 if pd.isna(r["ci95"]) else r["ci95"],
                            fmt="o", color=f"C{i}", capsize=3, ms=5, label=label)
                label = None  # one legend entry per study
    if not paper.empty:
        for y, b in enumerate(bases):
            d = paper[paper["baseline"] == b]["difference"]
            ax.scatter(d, [y - 0.32] * len(d), marker="x", color="0.35", s=22,
                       label="paper, GLUE, one per model" if y == 0 else None)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(bases)), [f"Hybrid − {report.LABEL[b]}" for b in bases])
    ax.invert_yaxis()
    ax.set_xlabel("difference in accuracy (points); bars: 95% paired interval over seeds")
    ax.grid(axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    atomic_write(path, lambda f: fig.savefig(f, format="svg"))
    plt.close(fig)
    return True


def write(results: str | Path, preset: str, dest: Path = GENERATED) -> Path:
    """book/generated/findings.md (and the summary figure) for the studies the book holds."""
    held = report.studies(results, preset)
    lines = audit_findings()
    for name, df in held.items():
        lines += study_findings(name, df)
    for name in held:
        variants = report.records(report.study_source(results)[0] if name == "study" else results, name,
                                  variants=True)
        lines += collapse_finding(variants, name)
    dest.mkdir(parents=True, exist_ok=True)
    figure = summary_figure(held, dest / SUMMARY_FIGURE)
    text = ["## What we found", ""] + [f"- {line}" for line in lines]
    if figure:
        text += ["", f"```{{figure}} generated/{SUMMARY_FIGURE}", ":name: summary-figure", ":width: 100%", "",
                 "Every hybrid-minus-baseline difference in this book, with its paired 95% interval over seeds "
                 "(one colour per study), beside the paper's own Table I GLUE differences (one cross per model, "
                 "from its printed means).", "```"]
    return atomic_write_text(dest / "findings.md", "\n".join(text) + "\n")
