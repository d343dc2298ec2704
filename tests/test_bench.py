"""`hupeft bench`: the JSON it promises on a tiny model, rounds in fresh orders, ratios taken within
rounds (so drift that slows every row of a round cancels), the scale sweep and its page's frames,
and one-line errors. The speed targets are read off its table on the real model, not asserted here."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from hupeft import bench, scale_report


def hupeft_bench(*args):
    return subprocess.run([sys.executable, "-m", "hupeft", "bench", "--model", "tiny-llama", *args],
                          capture_output=True, text=True)


def test_json_keeps_every_round_with_intervals_and_trainable_counts(tmp_path):
    out = tmp_path / "bench.json"
    proc = hupeft_bench("--methods", "frozen,boft_m1,peft_oft", "--rounds", "2", "--warmup", "0", "--steps", "2",
                        "--threads", "1", "--precision", "bf16-mixed", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["model"] == "tiny-llama" and result["precision"] == "bf16-mixed"
    assert result["rounds"] == result["rounds_done"] == 2
    assert result["command"].startswith("hupeft bench --model tiny-llama")
    assert result["provenance"]["cpus"] >= 1 and result["provenance"]["load_average"] >= 0
    rows = result["methods"]
    assert list(rows) == ["frozen", "boft_m1", "peft_oft"]
    assert [sorted(o) for o in result["order"]] == [sorted(rows)] * 2
    for row in rows.values():
        assert len(row["rounds"]) == 2 and all(len(r["step_seconds_all"]) == 2 for r in row["rounds"])
        times = [r["step_seconds"] for r in row["rounds"]]
        assert row["step_seconds"]["n"] == 2 and row["step_seconds"]["mean"] == pytest.approx(sum(times) / 2)
        assert row["step_seconds"]["half_width"] > 0 and row["peak_memory_bytes"]["mean"] > 0
        assert row["memory_kind"] == "cpu_tensor_bytes_allocated"
    # tensor bytes are counted, not sampled: the same figure in both rounds
    for row in rows.values():
        mem = [r["peak_memory_bytes"] for r in row["rounds"]]
        assert mem[0] == mem[1] and all(r["rss_live_bytes"] > 0 for r in row["rounds"])
    # each row against itself: a ratio of exactly 1 in every round
    assert rows["frozen"]["step_ratio"]["floor"] == {"mean": 1.0, "half_width": 0.0, "n": 2}
    assert rows["peft_oft"]["step_ratio"]["oft"]["mean"] == 1.0
    # tiny-llama: 2 layers x (q_proj, v_proj), 64 x 64. BOFT m=1, b=8: 8 blocks of 8*7/2 skew
    # entries plus 64 scales per layer; PEFT's OFT has the same blocks and no scale.
    assert rows["frozen"]["trainable_params"] == 0
    assert rows["boft_m1"]["trainable_params"] == 4 * (8 * 28 + 64)
    assert rows["peft_oft"]["trainable_params"] == 4 * (8 * 28)
    assert "x floor" in proc.stdout and "bf16-mixed" in proc.stdout and "±" in proc.stdout


def test_each_round_runs_every_row_once_in_a_fresh_order():
    rows = bench.ROWS
    orders = [bench.round_order(rows, r, seed=0) for r in range(4)]
    assert all(sorted(o) == sorted(rows) for o in orders)
    assert len({tuple(o) for o in orders}) == 4
    assert len({o[0] for o in orders}) > 1, "the same row goes first every round"
    assert orders == [bench.round_order(rows, r, seed=0) for r in range(4)]  # fixed by the seed


def test_ratios_are_taken_within_rounds_so_drift_cancels():
    """Round k runs everything (1 + k) times slower: the rows' own times spread widely, their
    ratio (1.1 in every round) does not."""
    rounds = []
    for k in range(4):
        drift = 1.0 + k
        rounds.append({"order": ["lora", "boft"], "results": {
            "lora": {"step_seconds": 2.0 * drift, "peak_memory_bytes": 100, "trainable_params": 1,
                     "memory_kind": "m", "device": "d"},
            "boft": {"step_seconds": 2.2 * drift, "peak_memory_bytes": 105, "trainable_params": 1,
                     "memory_kind": "m", "device": "d"}}})
    summary = bench.summarise(rounds, ["lora", "boft"])
    boft = summary["boft"]
    assert boft["step_seconds"]["mean"] == pytest.approx(2.2 * 2.5)
    assert boft["step_seconds"]["half_width"] > 2.0  # the drift, seen in the raw times
    assert boft["step_ratio"]["lora"]["mean"] == pytest.approx(1.1)
    assert boft["step_ratio"]["lora"]["half_width"] == pytest.approx(0.0, abs=1e-12)
    assert boft["memory_ratio"]["lora"]["mean"] == pytest.approx(1.05)
    assert "oft" not in boft["step_ratio"]  # no peft_oft row, no column


def test_a_row_failing_in_one_round_keeps_the_others_and_says_so():
    ok = {"step_seconds": 1.0, "peak_memory_bytes": 10, "trainable_params": 0, "memory_kind": "m", "device": "d"}
    rounds = [{"order": ["lora"], "results": {"lora": ok}},
              {"order": ["lora"], "results": {"lora": {"error": "MemoryError: out"}}},
              {"order": ["lora"], "results": {"lora": {**ok, "step_seconds": 3.0}}}]
    s = bench.summarise(rounds, ["lora"])["lora"]
    assert s["error"] == "MemoryError: out" and s["step_seconds"]["n"] == 2 and s["step_seconds"]["mean"] == 2.0
    assert "failed in some rounds" in bench.table({"methods": {"lora": s}, "model": "m", "batch": 1, "seq_len": 1,
                                                   "targets": ["q"], "precision": "fp32", "rounds": 3, "steps": 1,
                                                   "warmup": 0})


def test_quick_mode_names_the_target_rows_and_a_short_schedule(monkeypatch, capsys):
    seen = {}

    def fake_run(model, rows, targets, batch, seq, warmup, steps, threads, precision, rounds, seed, save=None,
                 memory_rounds=None):
        seen.update(rows=rows, warmup=warmup, steps=steps, rounds=rounds, memory_rounds=memory_rounds)
        return {"methods": {}, "model": model, "batch": batch, "seq_len": seq, "targets": targets,
                "precision": precision, "rounds": rounds, "steps": steps, "warmup": warmup}

    monkeypatch.setattr(bench, "run", fake_run)
    assert bench.cli_main(["--quick"]) == 0
    assert seen == {"rows": bench.QUICK_ROWS, "rounds": 3, "warmup": 1, "steps": 1, "memory_rounds": 1}
    assert {"lora", "peft_lora", "boft", "boft_m1", "peft_oft", "hybrid", "frozen"} <= set(seen["rows"])
    assert bench.cli_main(["--quick", "--rounds", "7"]) == 0 and seen["rounds"] == 7
    assert bench.cli_main([]) == 0 and seen["memory_rounds"] is None and seen["steps"] == 4
    assert bench.cli_main(["--rounds", "6", "--memory-rounds", "2"]) == 0 and seen["memory_rounds"] == 2


@pytest.mark.parametrize("args,message", [
    (["--methods", "lora,dora"], "unknown method row(s) ['dora']"),
    (["--rounds", "0"], "must be > 0"),
    (["--rounds", "3", "--memory-rounds", "4"], "--memory-rounds must be between 1 and --rounds (3)"),
    (["--widths", "256"], "add --scale"),
    (["--row-budget", "5"], "add --scale"),
    (["--scale", "--row-budget", "0"], "--row-budget must be > 0"),
    (["--scale", "--widths", "100"], "multiples of 64"),
    (["--scale", "--widths", "a,b"], "comma-separated whole numbers"),
])
def test_bad_input_is_a_one_line_error_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "bench.json"
    proc = hupeft_bench(*args, "--json", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr
    assert not out.exists()


def test_json_into_a_missing_folder_is_refused_before_measuring(tmp_path):
    proc = hupeft_bench("--json", str(tmp_path / "no" / "bench.json"))
    assert proc.returncode == 2 and "does not exist; create it first" in proc.stderr


def test_scale_sweeps_width_then_sequence_and_the_page_reads_it(tmp_path):
    out = tmp_path / "scale.json"
    proc = hupeft_bench("--scale", "--methods", "frozen,lora,boft", "--widths", "64,128", "--seq-lens", "8,32",
                        "--batch", "2", "--seq-len", "8", "--rounds", "2", "--warmup", "0", "--steps", "1",
                        "--threads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    pts = [(p["sweep"], p["width"], p["seq_len"]) for p in result["points"]]
    assert pts == [("width", 64, 8), ("seq_len", 128, 8), ("width", 128, 8), ("seq_len", 128, 32)]  # cheapest first
    assert result["complete"] and result["points_planned"] == 4
    assert result["command"].startswith("hupeft bench --model tiny-llama --scale")
    assert "created_utc" in result["provenance"]
    # 64 x 64 vs 128 x 128: LoRA r=16 has 2 * 16 * d trainable numbers; BOFT m=3 b=8 3 * d/8 * 28 + d
    lora = [p["methods"]["lora"]["trainable_params"] for p in result["points"][::2]]
    boft = [p["methods"]["boft"]["trainable_params"] for p in result["points"][::2]]
    assert lora == [2 * 16 * 64, 2 * 16 * 128] and boft == [3 * 8 * 28 + 64, 3 * 16 * 28 + 128]
    f = scale_report.frame(result)
    assert len(f) == 4 * 3 and set(f["tokens"]) == {16, 64}
    g = scale_report.growth(f)
    assert set(g["sweep"]) == {"width d", "sequence length"} and len(g) == 6


def test_row_over_the_budget_is_left_out_of_costlier_points(tmp_path):
    """A budget every row exceeds: the first point measures all rows, the later ones none, and the
    JSON, the summary and the page's frame say so."""
    out = tmp_path / "scale.json"
    proc = hupeft_bench("--scale", "--methods", "frozen,lora", "--widths", "64,128", "--seq-lens", "8",
                        "--batch", "1", "--seq-len", "8", "--rounds", "1", "--warmup", "0", "--steps", "1",
                        "--threads", "1", "--row-budget", "1e-9", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    first, *later = result["points"]
    assert all("step_seconds" in r for r in first["methods"].values())
    assert later and all(set(p["methods"]) == {"frozen", "lora"} for p in later)
    assert all("over --row-budget 1e-09 s" in r["skipped"] for p in later for r in p["methods"].values())
    assert "over budget" in proc.stdout
    assert len(scale_report.frame(result)) == 2
    assert set(scale_report.skipped_rows(result)) == {"frozen", "lora"}


def test_a_row_over_budget_at_a_wide_point_is_still_measured_at_a_narrower_longer_one(monkeypatch):
    """The budget skips only points at least as wide and as long: a row slow at d = 4096 (the uRNN's
    d^3 exponential) is still measured on the sequence sweep at d = 256."""
    from hupeft import bench_scale

    def fake_run(model, rows, targets, batch, seq, *args, measure=None, **kw):
        width = int(model[len(bench_scale.SINGLE_LAYER):])
        methods = {r: {"step_seconds": {"mean": width / 1000, "half_width": 0.0}} for r in rows}
        return {"batch": batch, "rounds": 1, "steps": 1, "warmup": 0, "order": [rows], "methods": methods}

    monkeypatch.setattr(bench_scale, "run", fake_run)
    result = bench_scale.sweep(["lora"], [256, 4096], [64, 4096], 1, 128, 1, 0, 1, 1, "fp32", 0, progress=False,
                               row_budget=1.0)
    at = {(p["width"], p["seq_len"]): p["methods"]["lora"] for p in result["points"]}
    assert list(at)[-2:] == [(4096, 128), (256, 4096)]  # the wide point is measured before the long one
    assert "step_seconds" in at[(4096, 128)] and "step_seconds" in at[(256, 4096)]
    result = bench_scale.sweep(["lora"], [256, 4096], [64, 4096], 1, 128, 1, 0, 1, 1, "fp32", 0, progress=False,
                               row_budget=0.1)  # over at the first point: every later one is wider or longer
    assert [("skipped" in p["methods"]["lora"]) for p in result["points"]] == [False, True, True, True]


def test_growth_exponent_is_the_slope_of_the_power_law():
    def point(sweep, width, seq, ms, mib):
        return {"sweep": sweep, "width": width, "seq_len": seq, "batch": 1, "methods": {"full": {
            "step_seconds": {"mean": ms / 1e3, "half_width": 0.0}, "peak_memory_bytes": {"mean": mib * 2 ** 20,
                                                                                          "half_width": 0.0},
            "step_ratio": {}}}}

    result = {"points": [point("width", d, 8, 0.5 * d ** 2, 3.0 * d) for d in (64, 128, 256)]
              + [point("seq_len", 128, s, 2.0 * s, 7.0) for s in (8, 16, 64)]}
    g = scale_report.growth(scale_report.frame(result)).set_index("sweep")
    assert g.loc["width d", "time exponent"] == pytest.approx(2.0)
    assert g.loc["width d", "memory exponent"] == pytest.approx(1.0)
    assert g.loc["sequence length", "time exponent"] == pytest.approx(1.0)
    assert g.loc["sequence length", "memory exponent"] == pytest.approx(0.0, abs=1e-9)
    assert not math.isnan(g.loc["sequence length", "time exponent"])


def test_memory_is_measured_only_in_the_first_memory_rounds():
    asked = []

    def fake_measure(spec):
        asked.append(spec["memory_steps"])
        out = {"step_seconds": 1.0, "trainable_params": 0, "device": "d"}
        if spec["memory_steps"]:
            out.update(peak_memory_bytes=10, memory_kind="m")
        return out

    data = bench.run_rounds({}, ["lora", "boft"], 3, 0, fake_measure, progress=False, memory_rounds=1)
    assert asked == [1, 1, 0, 0, 0, 0]
    s = bench.summarise(data, ["lora", "boft"])["boft"]
    assert s["step_seconds"]["n"] == 3 and s["peak_memory_bytes"]["n"] == 1 and s["memory_ratio"]["lora"]["n"] == 1
    assert s["memory_kind"] == "m"


def test_targets_are_met_missed_or_unresolved_by_their_intervals():
    def row(lora=None, oft=None, mem=None):
        step = {k: {"mean": v[0], "half_width": v[1], "n": 5} for k, v in (("lora", lora), ("oft", oft)) if v}
        memory = {"lora": {"mean": mem, "half_width": float("nan"), "n": 1}} if mem else {}
        return {"step_seconds": {"mean": 1.0, "half_width": 0.1, "n": 5}, "step_ratio": step,
                "memory_ratio": memory, "peak_memory_bytes": {"mean": 2 ** 20, "half_width": 0.0, "n": 5},
                "trainable_params": 1}

    result = {"methods": {"peft_lora": row(lora=(1.01, 0.01)), "boft_m1": row(oft=(0.90, 0.05)),
                          "boft": row(oft=(1.30, 0.10), mem=1.2), "hybrid": row(lora=(1.15, 0.10), mem=1.05)}}
    got = {(t["row"], t["ratio"]): t["verdict"] for t in bench.check_targets(result)}
    assert got == {("peft_lora", "step x lora"): "met",          # 1.00..1.02 inside 0.97..1.03
                   ("boft_m1", "step x oft"): "met",             # 0.85..0.95 <= 1.0
                   ("boft", "step x oft"): "missed",             # 1.20..1.40 > 1.1
                   ("hybrid", "step x lora"): "unresolved",      # 1.05..1.25 across 1.2
                   ("boft", "memory x lora"): "missed (one round)",
                   ("hybrid", "memory x lora"): "met (one round)"}
    # on one layer only the comparisons of two adapters' layers are judged
    layer = {**result, "model": "linear-576"}
    assert {(t["row"], t["ratio"]) for t in bench.check_targets(layer)} == {("boft_m1", "step x oft"),
                                                                            ("boft", "step x oft")}
    frame = scale_report.model_frame(result)
    assert list(frame["method"]) == ["PEFT LoRA", "BOFT m=1", "BOFT", "Hybrid"]
    assert frame.loc[0, "x LoRA"] == "1.01±0.01"
