"""The paper against itself: Table I's printed means against its own runs, the text's claims
against Table I and the models' sizes, our GLUE number as the paper computes it, and the claims
page executed from run records."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from hupeft import pages, report
from hupeft.records import SCHEMA_VERSION, write_record

# The eight cells of Table I whose printed mean is not the mean of its three printed runs, as
# printed: (model, benchmark, metric, method) -> (printed mean, runs).
DISAGREEING = {
    ("Llama3.3-70B", "mtbench", "bleu", "loraga"): (27.7, (27.2, 27.8, 27.7)),
    ("Wizard-Vicuna-30B", "mtbench", "bleu", "boft"): (26.0, (25.6, 26.2, 26.0)),
    ("Wizard-Vicuna-30B", "humaneval", "pass@10", "urnn"): (68.8, (68.3, 69.1, 68.8)),
    ("Wizard-Vicuna-30B", "humaneval", "pass@10", "hybrid"): (70.1, (70.0, 70.6, 70.1)),
    ("BloomZ-7B1", "humaneval", "pass@1", "lora"): (39.5, (39.0, 39.7, 39.5)),
    ("BloomZ-7B1", "humaneval", "pass@10", "lora"): (57.3, (56.8, 57.4, 57.3)),
    ("BloomZ-7B1", "humaneval", "pass@10", "loraga"): (57.6, (57.5, 58.0, 57.6)),
    ("BloomZ-7B1", "humaneval", "pass@10", "hybrid"): (58.3, (57.9, 58.5, 58.3)),
}


@pytest.fixture(scope="module")
def audit():
    return report.paper_audit(report.paper_table1())


def test_exactly_eight_printed_means_disagree_with_their_runs(audit):
    assert len(audit) == 108 and audit[["run 1", "run 2", "run 3", "printed"]].notna().all().all()
    bad = audit[audit["disagrees"]].set_index(report.CELL_KEYS)
    assert set(bad.index) == set(DISAGREEING)
    for key, (printed, runs) in DISAGREEING.items():
        row = bad.loc[key]
        assert [row["printed"], row["run 1"], row["run 2"], row["run 3"]] == pytest.approx([printed, *runs])
        assert row["mean of runs"] == pytest.approx(sum(runs) / 3)


def test_a_mean_a_third_of_a_tenth_off_is_rounding(audit):
    # 61.4 printed for runs 61.3, 61.6, 61.4 (mean 61.433): within half of the printed decimal.
    row = audit.set_index(report.CELL_KEYS).loc[("Llama3.1-405B", "humaneval", "pass@1", "boft")]
    assert abs(row["printed − mean"]) == pytest.approx(1 / 30) and not row["disagrees"]


@pytest.fixture(scope="module")
def text_claims():
    text, _ = report.paper_claims()
    return report.check_text_claims(text, report.paper_table1()).set_index("id")


def test_mt_bench_average_over_lora_is_contradicted(text_claims):
    row = text_claims.loc["conc-mt-hybrid-lora-avg"]
    assert row["status"] == "contradicted" and row["claimed"] == "2.4"
    assert row["table value"] == pytest.approx((1.1 + 0.7 + 0.8 + 0.9) / 4)
    assert "largest +1.1 (BloomZ-7B1)" in row["Table I"]


def test_hybrid_best_on_gsm8k_fails_at_70b_only(text_claims):
    row = text_claims.loc["gsm-hybrid-best-all"]
    assert row["status"] == "contradicted" and row["table value"] == 1
    assert row["Table I"] == "Llama3.3-70B: Full FT 53.1 > Hybrid 53.0"
    assert text_claims.loc["glue-hybrid-best-peft", "status"] == report.CONSISTENT
    assert text_claims.loc["mt-hybrid-best-all", "status"] == report.CONSISTENT


def test_closing_the_gap_on_bloomz_humaneval_is_contradicted(text_claims):
    row = text_claims.loc["he-7b-hybrid-closes-gap"]
    assert row["status"] == "contradicted" and row["table value"] == pytest.approx(40.5 - 41.3)
    assert "Hybrid 40.5, Full FT 41.3" in row["Table I"]


def test_values_and_differences_that_match_the_table_are_supported(text_claims):
    assert text_claims.loc["glue-405b-hybrid", ["status", "table value"]].tolist() == [report.CONSISTENT, 92.3]
    assert text_claims.loc["glue-7b-hybrid-lora", "status"] == report.CONSISTENT  # 85.1 - 84.0
    # 1.5 stated; printed means give 40.5 - 39.5 = 1.0 and the runs' means 1.1.
    row = text_claims.loc["he-7b-hybrid-lora-p1"]
    assert row["status"] == "contradicted" and row["table value"] == pytest.approx(1.0)
    assert set(text_claims["status"]) == {report.CONSISTENT, "contradicted"}


def test_every_claims_status_against_table1(text_claims):
    contradicted = set(text_claims.index[text_claims["status"] == "contradicted"])
    assert contradicted == {"gsm-70b-hybrid-loraga", "gsm-hybrid-best-all", "mt-70b-hybrid-loraga",
                            "he-7b-hybrid-boft-p1", "he-7b-hybrid-lora-p1", "he-7b-hybrid-closes-gap",
                            "conc-405b-he-hybrid-lora", "conc-mt-hybrid-lora-avg"}
    # 0.9 stated: the printed means give 26.7 - 25.8 = 0.9, the runs' means 0.97.
    assert text_claims.loc["mt-30b-hybrid-lora", "status"] == report.CONSISTENT


def test_a_difference_may_match_the_runs_means_and_an_average_is_a_mean():
    text, _ = report.paper_claims()
    claims = text.set_index("id").loc[["he-7b-hybrid-lora-p1", "conc-mt-hybrid-lora-avg"]].reset_index()
    claims["claimed"] = ["1.1", "0.9"]  # runs' means 40.50 - 39.40; mean of +1.1, +0.7, +0.8, +0.9
    checked = report.check_text_claims(claims, report.paper_table1())
    assert list(checked["status"]) == [report.CONSISTENT, report.CONSISTENT]


def test_405b_in_30_gb_cannot_hold_its_4_bit_weights():
    _, resources = report.paper_claims()
    checked = report.check_resource_claims(resources).set_index("id")
    n = report.paper_model_params("Llama3.1-405B")
    assert n == 405_853_388_800  # models.yaml's derived count, recomputed from the config
    row = checked.loc["memory-405b-hybrid"]
    assert row["status"] == "contradicted" and "4-bit weights alone take 202.9 GB" in row["check"]
    assert checked.loc["speedup-hybrid-full", "status"] == report.NOT_CHECKABLE
    assert "2.18x" in checked.loc["speedup-hybrid-full", "check"]  # the text's own 120 / 55 min


def record(root: Path, model: str, bench: str, method: str, seed: int, acc: float, seconds: float = 1.0,
           memory: int = 2**30) -> None:
    cfg = {"model": model, "method": method, "benchmark": bench, "seed": seed, "preset": "p",
           "data": {"n_eval": 100, "description": "d"}}
    rec = {"schema_version": SCHEMA_VERSION, "status": "ok", "error": None, "config": cfg,
           "params": {"trainable": 10, "total": 100},
           "epochs": [{"epoch": e, "train_loss": 1.0, "val_loss": 1.0 / e, "grad_norm": 2.0 / e, "seconds": seconds,
                       "tokens_per_second": 1.0, "peak_memory_bytes": memory, "memory_kind": "cpu_peak_rss"}
                      for e in (1, 2)],
           "scores": {"accuracy": acc}, "hybrid_lambda": None, "environment": {"packages": {}}, "finished_at": 1.0}
    write_record(rec, root / model / bench.replace("/", "_") / method / f"seed{seed}" / "record.json")


@pytest.fixture
def glue_runs(tmp_path):
    """Model `a` ran all four GLUE tasks on seeds 0 and 1 (seed 2 lacks QQP); `b` only SST-2."""
    for seed in range(3):
        for i, task in enumerate(report.GLUE_TASKS):
            if seed == 2 and task == "glue/qqp":
                continue
            for method, base in (("full", 0.80), ("hybrid", 0.70)):
                record(tmp_path, "a", task, method, seed, base + 0.02 * i + 0.01 * seed,
                       seconds=4.0 if method == "full" else 2.0, memory=3 * 2**30 if method == "full" else 2**30)
        record(tmp_path, "b", "glue/sst2", "hybrid", seed, 0.5)
    return report.records(tmp_path)


def test_glue_score_is_the_mean_of_four_tasks_on_seeds_that_ran_all_four(glue_runs):
    glue = report.glue_score(glue_runs).set_index(["model", "method"])
    assert list(glue.index) == [("a", "full"), ("a", "hybrid")]  # b never ran all four
    # Tasks add 0, 2, 4, 6 points: mean +3; seeds 0 and 1 add 0 and 1 point.
    assert glue.loc[("a", "full"), "runs"] == "83.0, 84.0" and glue.loc[("a", "full"), "n"] == 2
    assert glue.loc[("a", "hybrid"), "mean"] == pytest.approx(73.5)
    layout = report.table1_layout(report.table1(glue_runs), report.paper_table1(), report.glue_score(glue_runs))
    frame = layout["glue"].set_index("method")
    assert frame.loc["Hybrid", "a · GLUE mean (ours)"].startswith("73.5 ± ")
    assert frame.loc["LoRA", "a · GLUE mean (ours)"] == "–"


def test_table1_page_shows_the_glue_mean_column(glue_runs, monkeypatch):
    shown = []
    monkeypatch.setattr(pages, "_md", shown.append)
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(getattr(obj, "data", str(obj))))
    pages.show_table1(report.table1(glue_runs), report.paper_table1(), report.glue_score(glue_runs))
    text = "\n".join(map(str, shown))
    assert "<th>a · GLUE mean (ours)</th>" in text and "MNLI, QQP, SST2, QNLI" in text


def test_our_time_and_memory_ratios_sit_beside_the_papers(glue_runs):
    _, resources = report.paper_claims()
    checked = report.check_resource_claims(resources, report.fig1_frame(glue_runs),
                                           report.epochs_long(glue_runs)).set_index("id")
    assert checked.loc["speedup-hybrid-full", "ours"] == "a: full / hybrid time per epoch 2.00x"
    assert checked.loc["memory-hybrid-full", "ours"] == "a: hybrid peak memory 66.7% below full"
    assert report._below(-4.5) == "4.5% above"  # a hybrid that needs more is not "-4.5% below"
    assert checked.loc["gradnorm-hybrid-epoch10", "ours"] == "Hybrid · a: epoch 1–2 2 → 1; Hybrid · b: epoch 1–2 2 → 1"


def test_claims_page_executes_from_records_and_shows_every_status(glue_runs, tmp_path):
    from hupeft.executor import execute_notebook

    root = Path(glue_runs["path"].iloc[0]).parents[4]
    out = tmp_path / "02-claims.ipynb"
    error = execute_notebook(report.REPORT_NOTEBOOKS / "02-claims.ipynb", out,
                             {"preset": root.name, "results": str(root.parent)}, cwd=tmp_path)
    assert error == ""
    text = out.read_text()
    for needle in ("contradicted", "consistent with the", "our runs", report.NOT_CHECKABLE, "202.9 GB",
                   "Llama3.3-70B: Full FT 53.1 &gt; Hybrid 53.0", "2.00x"):
        assert needle in text, needle
    for bad in (">None<", ">nan<", ">NaN<"):
        assert bad not in text


def test_audit_tables_mark_the_disagreeing_means(audit, monkeypatch):
    said, shown = [], []
    monkeypatch.setattr(pages, "_md", said.append)
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(getattr(obj, "data", str(obj))))
    pages.show_paper_audit(audit)
    assert "**8** differ" in said[0] and "Of its 108 printed means" in said[0]
    html = "\n".join(str(x) for x in shown if "<table" in str(x))
    # The 8 disagreeing means open, then all 108 folded below them, ≠ marking the 8 there.
    opened, folded = html.split('<details class="hupeft-fold">')
    assert opened.count("<tr>") == 1 + 8 and folded.count("<tr>") == 1 + 108
    assert folded.count("<td>≠</td>") == 8 and "≠" not in opened.split("</thead>")[1]
    assert "<td>-0.00</td>" not in html
    row = opened[opened.index("<td>Llama3.3-70B</td>"):].split("</tr>")[0]
    for cell in ("mtbench · bleu", "LoRA-GA", "27.7", "27.57", "+0.13"):
        assert f"<td>{cell}</td>" in row, cell
    assert "8 of those 8 are the median of the three runs" in said[0]
