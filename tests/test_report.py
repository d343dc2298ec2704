"""Statistics and the report's frames: intervals over seeds, paired differences, the paper's
layout, failures, and no winner named within noise."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hupeft import pages, report, stats
from hupeft.records import SCHEMA_VERSION, write_record


def test_t_interval_matches_the_textbook_value():
    iv = stats.mean_interval([1.0, 2.0, 3.0])
    assert iv.mean == pytest.approx(2.0)
    assert iv.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert math.isnan(stats.mean_interval([5.0]).half_width)


def test_paired_difference_uses_the_pairing():
    # Large spread across seeds, a constant +1 within each seed: resolved only when paired.
    hybrid, base = {0: 11.0, 1: 51.0, 2: 91.0}, {0: 10.0, 1: 50.0, 2: 90.0}
    paired = stats.paired_difference(hybrid, base)
    assert paired.mean == pytest.approx(1.0) and paired.half_width == pytest.approx(0.0) and paired.excludes_zero
    noisy = stats.paired_difference({0: 11.0, 1: 49.0, 2: 92.0}, base)
    assert noisy.mean == pytest.approx(2 / 3) and not noisy.excludes_zero
    consistent = stats.paired_difference({0: 11.0, 1: 51.5, 2: 90.8}, base)
    assert consistent.excludes_zero and consistent.low > 0
    # Unpaired intervals of the same numbers overlap completely.
    assert stats.mean_interval(hybrid.values()).half_width > 40


def test_wilson_half_width_shrinks_with_n():
    assert stats.accuracy_half_width(0.75, 1000) == pytest.approx(0.0268, abs=5e-4)
    assert stats.accuracy_half_width(0.75, 100) > 3 * stats.accuracy_half_width(0.75, 1000)


def fake_record(root: Path, method: str, seed: int, acc: float | None, status: str = "ok", val: float = 1.0):
    cfg = {"model": "m", "method": method, "benchmark": "glue/sst2", "seed": seed, "preset": "p",
           "data": {"n_eval": 1000, "description": "d"}}
    rec = {"schema_version": SCHEMA_VERSION, "status": status, "error": None if status == "ok" else "Boom: it broke\nmore",
           "config": cfg, "params": {"trainable": 10, "total": 100},
           "epochs": [{"epoch": e, "train_loss": 1.0, "val_loss": val / e, "grad_norm": 0.5, "seconds": 1.0,
                       "tokens_per_second": 1.0, "peak_memory_bytes": 2**30, "memory_kind": "cpu_peak_rss"}
                      for e in (1, 2)] if status == "ok" else [],
           "scores": {"accuracy": acc} if acc is not None else {}, "hybrid_lambda": None,
           "environment": {"packages": {}}, "finished_at": 1.0}
    write_record(rec, root / method / f"seed{seed}" / "record.json")


@pytest.fixture
def frame(tmp_path):
    for seed in range(3):
        fake_record(tmp_path, "lora", seed, 0.80 + 0.01 * seed)
        fake_record(tmp_path, "boft", seed, 0.80 + 0.01 * seed)  # identical to LoRA: a tie
        fake_record(tmp_path, "hybrid", seed, 0.85 + 0.01 * seed + 0.001 * seed ** 2)
    fake_record(tmp_path, "full", 0, None, status="failed")
    return report.records(tmp_path)


def test_table1_layout_has_methods_as_rows_and_paper_columns(frame):
    t1 = report.table1(frame)
    tables = report.table1_layout(t1, report.paper_table1())
    glue = tables["glue"]
    assert list(glue["method"]) == ["Full FT", "LoRA", "LoRA-GA", "BOFT", "uRNN", "Hybrid", "Chance"]
    ours = [c for c in glue.columns if c.endswith("(ours)")]
    theirs = [c for c in glue.columns if c.endswith("(paper)")]
    assert ours == ["m (ours)"] and len(theirs) == 4
    row = glue.set_index("method").loc["LoRA"]
    assert row[ours[0]].startswith("81.0 ± ")  # percent, mean of 80, 81, 82
    assert glue.set_index("method").loc["Full FT", ours[0]] == "–"  # the failed run is not a score
    paper = pd.read_csv(report.PAPER_DIR / "table1.csv")
    printed = paper[(paper["model"] == "BloomZ-7B1") & (paper["benchmark"] == "glue") & (paper["method"] == "hybrid")
                    & (paper["run"] == "mean")]["value"].item()
    assert glue.set_index("method").loc["Hybrid", "BloomZ-7B1 (paper)"] == f"{printed:.1f}"


def test_paired_comparisons_resolve_a_consistent_gap_only(frame):
    pc = report.paired_comparisons(frame).set_index("baseline")
    assert set(pc.index) == {"lora", "boft"}  # the failed full FT run is no baseline
    assert pc.loc["lora", "resolved"] and pc.loc["lora", "difference"] == pytest.approx(5.0 + 0.1 * 5 / 3, rel=1e-3)
    tie = report.paired_comparisons(frame, treatment="lora").set_index("baseline").loc["boft"]
    assert tie["difference"] == 0 and not tie["resolved"]  # 0.0 +- 0.0 names no winner


def test_top_methods_names_no_winner_within_noise(frame, monkeypatch):
    said = []
    monkeypatch.setattr(pages, "_md", said.append)
    pages.top_methods(report.table1(frame), frame)
    assert "**Hybrid** is ahead of every other method" in said[0]
    tied = frame[frame["method"] != "hybrid"]
    said.clear()
    pages.top_methods(report.table1(tied), tied)
    assert "no single best method" in said[0] and "LoRA" in said[0] and "BOFT" in said[0]


def test_failures_are_listed_with_the_first_line_of_their_error(frame):
    bad = report.failures(frame)
    assert bad[["method", "status", "error"]].values.tolist() == [["full", "failed", "Boom: it broke"]]


def test_page_tables_show_no_none_or_nan(frame, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(getattr(obj, "data", str(obj))))
    pages.show_fig1(report.fig1_frame(frame))
    pages.show_failures(frame)
    pages.show_resources(report.resource_check())
    text = "\n".join(map(str, shown))
    assert "<table" in text
    for bad in (">None<", ">nan<", ">NaN<", "np.float64"):
        assert bad not in text


def hupeft(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "hupeft", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_a_cell_that_dies_is_failed_in_the_book_and_the_command_exits_nonzero(tmp_path):
    """A kernel killed mid-run leaves no record: the grid writes a failed one, the setup page lists
    it with its error, and reproduce exits 1 without claiming success."""
    import os

    preset = {"description": "one cell dies", "seeds": [0], "jobs": 2, "methods": ["lora", "boft"],
              "defaults": {"epochs": 2, "n_train": 8, "n_val": 4, "n_eval": 4, "max_len": 32, "checkpoint": False},
              "method_settings": {"boft": {"checkpoint": True}},
              "models": {"tiny-bert": {"benchmarks": ["glue/sst2"]}}}
    path = tmp_path / "dies.yaml"
    path.write_text(yaml.safe_dump(preset))
    env = {**os.environ, "HUPEFT_EXIT_AFTER_EPOCH": "1"}  # the checkpointing cell's kernel exits
    proc = hupeft("grid", "--preset", str(path), "--results", str(tmp_path / "results"), env=env)
    assert proc.returncode == 1 and "failed: tiny-bert glue/sst2 boft seed0" in proc.stdout
    df = report.records(tmp_path / "results", "dies")
    assert dict(zip(df["method"].astype(str), df["status"])) == {"lora": "ok", "boft": "failed"}
    err = report.failures(df)["error"].item()
    assert "DeadKernelError" in err or "exited" in err or "died" in err.lower(), err
    shown = []
    import IPython.display

    orig = IPython.display.display
    IPython.display.display = lambda obj, **kw: shown.append(getattr(obj, "data", str(obj)))
    try:
        pages.show_failures(df)
    finally:
        IPython.display.display = orig
    assert "1 of 2 runs did not finish ok" in shown[0] and "BOFT" in shown[1]


def test_fig1_says_how_many_runs_shared_the_machine_and_defers_to_the_bench(monkeypatch):
    """From the records' start and finish: the most runs at once and how many overlapped (a run
    that starts as another finishes does not; one that trains nothing is not timed), then the
    controlled bench's hybrid / LoRA ratio beside the runs' own."""
    import json

    def run(method, start, end, epochs=2):
        return {"status": "ok", "epochs": epochs, "model": "m", "method": method,
                "record": {"started_at": start, "finished_at": end}}

    df = pd.DataFrame([run("lora", 0, 10), run("hybrid", 5, 15), run("boft", 15, 20), run("full", 30, 40),
                       run("zero-shot", 0, 40, epochs=0)])
    assert report.concurrency(df) == {"runs": 4, "overlapped": 2, "most": 2}
    assert report.concurrency(df[df["method"].isin(["boft", "full"])])["most"] == 1
    f1 = pd.DataFrame({"model": ["m", "m"], "method": ["lora", "hybrid"], "seconds_per_epoch": [2.0, 3.0]})
    said = []
    monkeypatch.setattr(pages, "_md", said.append)
    pages.timing_caveat(f1, df)
    bench = json.loads((report.REPO / "data" / "bench" / "smollm2.json").read_text())
    ratio = bench["methods"]["hybrid"]["step_ratio"]["lora"]
    assert "up to 2 running at once, and 2 of the 4 shared part of their time" in said[0]
    assert f"a Hybrid step takes {ratio['mean']:.2f} ± {ratio['half_width']:.2f} times LoRA's" in said[0]
    assert "here a Hybrid epoch takes 1.50 times LoRA's on m" in said[0]
