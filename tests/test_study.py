"""The study's machinery: zero-shot floors, held-out scoring, a train-split prefix, learning
rates chosen by the declared sweep, per-seed differences and the design's power."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from hupeft import data, pages, report, sweep
from hupeft.benchmarks import get as get_benchmark
from hupeft.benchmarks.base import fingerprint
from hupeft.config import ConfigError, RunConfig, validate
from hupeft.presets import GridError, expand, load_preset
from hupeft.records import SCHEMA_VERSION, write_record

REPO = Path(__file__).resolve().parents[1]


def fake(root: Path, method: str, seed: int, acc: float, **config):
    cfg = {"model": "m", "method": method, "benchmark": "glue/sst2", "seed": seed, "preset": "p",
           "data": {"n_eval": 872}, **config}
    rec = {"schema_version": SCHEMA_VERSION, "status": "ok", "error": None, "config": cfg,
           "params": {"trainable": 0 if method == "zero-shot" else 10, "total": 100},
           "epochs": [] if method == "zero-shot" else [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0,
                                                        "grad_norm": 1.0, "seconds": 1.0,
                                                        "peak_memory_bytes": 1, "memory_kind": "x"}],
           "scores": {"accuracy": acc}, "hybrid_lambda": None, "environment": {"packages": {}},
           "finished_at": 1.0}
    write_record(rec, root / method / f"seed{seed}" / "record.json")


@pytest.fixture
def study(tmp_path):
    diffs = [1.0, 3.0, 2.0, 4.0, 0.0, 2.0]  # hybrid - lora, in points
    for seed, d in enumerate(diffs):
        fake(tmp_path, "zero-shot", seed, 0.60)
        fake(tmp_path, "lora", seed, 0.80 + 0.01 * seed)
        fake(tmp_path, "hybrid", seed, 0.80 + 0.01 * seed + d / 100)
    return report.records(tmp_path), diffs


def test_each_method_is_compared_with_the_untrained_model(study):
    df, _ = study
    fc = report.floor_comparisons(df).set_index("comparison")
    assert set(fc.index) == {"LoRA − Zero-shot", "Hybrid − Zero-shot"}
    assert fc.loc["LoRA − Zero-shot", "difference"] == pytest.approx(100 * (0.825 - 0.60))
    assert fc.loc["LoRA − Zero-shot", "resolved"]
    # The hybrid's comparisons with its baselines leave the floor out.
    assert list(report.paired_comparisons(df)["baseline"]) == ["lora"]


def test_table1_has_a_zero_shot_row_and_chance(study):
    df, _ = study
    glue = report.table1_layout(report.table1(df), report.paper_table1())["glue"].set_index("method")
    assert glue.loc["Zero-shot", "m (ours)"] == "60.0 ± 0.0"
    assert glue.loc["Chance", "m (ours)"] == "50.0"
    assert report.chance("glue/sst2") == 50.0 and report.chance("glue/mnli") == pytest.approx(100 / 3)


def test_per_seed_differences_and_power_match_a_paired_t_test(study):
    df, diffs = study
    seeds = report.per_seed_differences(df, baselines=["lora"])
    assert seeds.sort_values("seed")["difference"].round(9).tolist() == pytest.approx(diffs)
    pc = report.paired_comparisons(df)
    pw = report.power(pc, seeds).iloc[0]
    n, sd = len(diffs), pd.Series(diffs).std(ddof=1)
    assert pw["sd"] == pytest.approx(sd)
    # The half width is the paired t-interval's; scipy's one-sample t-test gives the same interval.
    ci = sps.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    assert pw["ci95"] == pytest.approx((ci.high - ci.low) / 2)
    assert pc.iloc[0]["ci95"] == pytest.approx(pw["ci95"])
    # Minimum detectable difference: the noncentral-t power at that difference is about 80%.
    delta = pw["mdd80"]
    t_crit = sps.t.ppf(0.975, n - 1)
    achieved = 1 - sps.nct.cdf(t_crit, n - 1, delta / (sd / math.sqrt(n)))
    assert 0.75 < achieved < 0.85


def test_power_page_names_the_widest_interval(study, monkeypatch):
    df, _ = study
    said = []
    monkeypatch.setattr(pages, "_md", said.append)
    monkeypatch.setattr(pages, "_html", lambda *a, **k: None)
    seeds = report.per_seed_differences(df, baselines=["lora"])
    pages.show_power(report.power(report.paired_comparisons(df), seeds))
    assert "Hybrid − LoRA" in said[0] and "6 seeds" in said[0]


# --- the sweep ------------------------------------------------------------------------------------


def sweep_preset(rates=(1e-4, 1e-3, 1e-2)) -> dict:
    return {"name": "t", "seeds": [0], "methods": ["lora", "loraga", "boft", "hybrid"],
            "defaults": {"data": "synthetic", "epochs": 1, "n_train": 8, "n_val": 4, "n_eval": 8},
            "method_settings": {"lora": {"lr": 1e-3}, "loraga": {"lr": 1e-3}, "boft": {"lr": 1e-3},
                                "hybrid": {"method_options": {"lr_lora": 1e-3, "lr_boft": 1e-3}}},
            "sweep": {"seed": 100, "set": {"score_on": "holdout", "n_val": 16}, "extend": 1,
                      "rates": {"lora": list(rates), "loraga": list(rates), "boft": list(rates)},
                      "pairs": {"hybrid": {"lr_lora": "loraga", "lr_boft": "boft", "factors": [0.5, 1, 2]}}},
            "models": {"tiny-llama": {"benchmarks": ["glue/sst2"]}}}


def fill(preset: dict, root: Path, score) -> None:
    """A record for every cell the sweep asks for now, scored by score(method, lr, pair)."""
    todo = True
    while todo:
        todo = False
        chosen = sweep.choose(preset, root, here=False)
        sw = preset["sweep"]
        points = []
        for m, rates in sw["rates"].items():
            if m in chosen:
                continue
            rs = [float(r) for r in rates]
            points += [sweep.Point(m, r) for r in rs]
            # the extension the procedure may ask for next
            ratio = rs[1] / rs[0]
            points += [sweep.Point(m, rs[0] / ratio), sweep.Point(m, rs[-1] * ratio)]
        for m, pair in sw["pairs"].items():
            if m in chosen or any(p not in chosen for p in (pair["lr_lora"], pair["lr_boft"])):
                continue
            a0, b0 = chosen[pair["lr_lora"]]["lr"], chosen[pair["lr_boft"]]["lr"]
            points += [sweep.Point(m, pair=(("lr_lora", a0 * a), ("lr_boft", b0 * b)))
                       for a in pair["factors"] for b in pair["factors"]]
        for cell, pt in zip(sweep._cells(preset, points, root, here=False), points):
            path = cell.out_dir / "record.json"
            if path.exists():
                continue
            todo = True
            write_record({"schema_version": SCHEMA_VERSION, "status": "ok", "error": None,
                          "config": {**cell.config.to_dict(), "data": {"requested": cell.config.data}},
                          "params": {}, "epochs": [], "scores": {"accuracy": score(pt)}, "hybrid_lambda": None,
                          "steps": [], "environment": {}, "finished_at": 1.0}, path)


def test_sweep_chooses_the_best_held_out_rate_and_the_pair_from_its_parents(tmp_path):
    preset = sweep_preset()
    peak = {"lora": 1e-3, "loraga": 1e-4, "boft": 0.08}

    def score(pt):
        if pt.pair:
            a, b = dict(pt.pair)["lr_lora"], dict(pt.pair)["lr_boft"]
            return 0.9 - abs(math.log(a / 2e-4)) - abs(math.log(b / 0.05))
        return 0.9 - 0.01 * abs(math.log10(pt.lr / peak[pt.method]))

    fill(preset, tmp_path, score)
    chosen = sweep.choose(preset, tmp_path, here=False)
    assert chosen["lora"]["lr"] == pytest.approx(1e-3) and not chosen["lora"]["edge"]
    # loraga's best is the lowest rate listed: the list is extended one step down, which scores lower.
    assert [p[0] for p in chosen["loraga"]["points"]] == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2])
    assert chosen["loraga"]["lr"] == pytest.approx(1e-4)
    # boft's peak is beyond the top: extended once (extend: 1), and the extension wins, at the edge.
    assert chosen["boft"]["lr"] == pytest.approx(0.1) and chosen["boft"]["edge"]
    # The hybrid's pair: parents' rates times the factors; 2e-4 = 2 x loraga's, 0.05 = 0.5 x boft's.
    assert chosen["hybrid"]["lr_lora"] == pytest.approx(2e-4) and chosen["hybrid"]["lr_boft"] == pytest.approx(0.05)
    assert len(chosen["hybrid"]["points"]) == 9


def test_sweep_ties_go_to_the_smaller_rate(tmp_path):
    preset = sweep_preset()
    preset["sweep"]["pairs"] = {}
    preset["sweep"]["rates"] = {"lora": [1e-4, 1e-3, 1e-2]}
    fill(preset, tmp_path, lambda pt: 0.9 if pt.lr in (1e-3, 1e-2) else 0.5)
    assert sweep.choose(preset, tmp_path, here=False)["lora"]["lr"] == pytest.approx(1e-3)


def test_sweep_resumes_from_archived_records_and_runs_only_what_is_missing(tmp_path, monkeypatch):
    """Archived records have no executed notebook beside them; the sweep must not run them again."""
    preset = sweep_preset()
    preset["sweep"]["pairs"] = {}
    preset["sweep"]["rates"] = {"lora": [1e-4, 1e-3, 1e-2]}
    fill(preset, tmp_path, lambda pt: 0.9 - abs(math.log10(pt.lr / 1e-3)))
    missing = next(tmp_path.rglob("lr0.01/*/record.json"))
    missing.unlink()
    ran = []
    monkeypatch.setattr(sweep, "run_grid", lambda cells, **kw: ran.extend(c.config.lr for c in cells))
    sweep.choose(preset, tmp_path, run=True, here=False, progress=False)
    assert ran == [pytest.approx(1e-2)]


def test_sweep_check_compares_the_preset_with_its_records(tmp_path):
    preset = sweep_preset()
    preset["sweep"]["pairs"] = {}
    preset["sweep"]["rates"] = {"lora": [1e-4, 1e-3, 1e-2]}
    preset["methods"] = ["lora"]
    fill(preset, tmp_path, lambda pt: 0.9 - abs(math.log10(pt.lr / 1e-3)))
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(preset))
    run = lambda: subprocess.run([sys.executable, "-m", "hupeft", "sweep", "--preset", str(path), "--check",  # noqa: E731
                                  "--results", str(tmp_path)], capture_output=True, text=True)
    ok = run()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    preset["method_settings"]["lora"]["lr"] = 1e-4
    path.write_text(yaml.safe_dump(preset))
    bad = run()
    assert bad.returncode == 1 and "lora: {lr: 0.001}" in bad.stdout


def test_a_preset_with_a_sweep_never_runs_a_method_at_the_defaults_rate():
    preset = sweep_preset()
    no_pair = copy.deepcopy(preset)
    no_pair["method_settings"]["hybrid"] = {}
    with pytest.raises(GridError, match="lr_lora and lr_boft are unset"):
        expand(no_pair, lookups=False)
    no_lr = copy.deepcopy(preset)
    del no_lr["method_settings"]["lora"]["lr"]
    with pytest.raises(GridError, match="no lr under method_settings"):
        expand(no_lr, lookups=False)
    assert len(expand(preset, lookups=False)) == 4


@pytest.mark.parametrize("name", ["cpu", "study"])
def test_shipped_presets_use_the_rates_their_archived_sweeps_chose(name):
    """Every rate a shipped preset trains at is set and traceable to its archived sweep's records."""
    preset = load_preset(name)
    chosen = sweep.choose(preset, report.ARCHIVE, here=False)
    swept = list(preset["sweep"]["rates"]) + list(preset["sweep"].get("pairs") or {})
    unset = [m for m in swept if any(v is None for v in sweep.preset_rates(preset, m).values())
             or m not in (preset.get("method_settings") or {})]
    assert not unset and set(chosen) == set(swept)
    assert sweep.disagreements(preset, chosen) == []


# --- zero-shot, held-out scoring, the train-split prefix --------------------------------------------


def test_zero_shot_trains_nothing_and_scores_the_base_model(tmp_path):
    from hupeft import experiment, models

    cfg = RunConfig(model="tiny-llama", method="zero-shot", benchmark="glue/sst2", data="synthetic", epochs=3,
                    n_train=8, n_val=4, n_eval=16, checkpoint=False)
    rec = experiment.run(cfg, tmp_path, progress=False)
    assert rec["status"] == "ok" and rec["config"]["epochs"] == 0 and rec["steps"] == [] and rec["epochs"] == []
    assert rec["params"]["trainable"] == 0
    # The same examples scored on a freshly loaded base model, outside the run.
    bench = get_benchmark("glue/sst2")
    splits = data.load_splits(bench, validate(cfg))
    loaded = models.load("tiny-llama", seed=0)
    loaded.model.eval()
    base = bench.evaluate(loaded.model, loaded.tokenizer, splits.eval, batch_size=8)
    assert rec["scores"]["accuracy"] == pytest.approx(base["accuracy"])


def test_holdout_scores_rows_carved_from_training_never_the_scored_split():
    cfg = validate(RunConfig(model="tiny-llama", method="lora", data="synthetic", n_train=16, n_val=12,
                             n_eval=20, score_on="holdout"))
    splits = data.load_splits(get_benchmark("glue/sst2"), cfg)
    scored = splits.eval
    assert scored == splits.val and len(scored) == 12
    key = lambda ex: json.dumps(ex, sort_keys=True)  # noqa: E731
    assert not {key(e) for e in scored} & {key(e) for e in splits.train}
    real_eval = data.load_splits(get_benchmark("glue/sst2"), validate(RunConfig(
        model="tiny-llama", method="lora", data="synthetic", n_train=16, n_val=12, n_eval=20))).eval
    assert not {key(e) for e in scored} & {key(e) for e in real_eval}
    assert splits.fingerprints["eval"] == fingerprint(scored)
    with pytest.raises(ConfigError, match="score_on must be one of eval, holdout"):
        validate(RunConfig(score_on="test"))


def test_train_rows_take_a_prefix_so_a_shorter_source_gives_the_same_rows(tmp_path, monkeypatch):
    rows = [{"sentence": f"sentence number {i}", "label": i % 2, "idx": i} for i in range(60)]
    short, long = tmp_path / "short" / "sst2", tmp_path / "long" / "sst2"
    for folder, train in ((short, rows[:40]), (long, rows)):
        folder.mkdir(parents=True)
        for split, part in (("train", train), ("validation", rows[:10])):
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    got = []
    for folder in (short, long):
        cfg = RunConfig(model="tiny-llama", data="real", data_dir=str(folder.parent), train_rows=40, n_train=8,
                        n_val=4, seed=3)
        got.append(data.load_splits(get_benchmark("glue/sst2"), cfg))
    assert got[0].train == got[1].train and got[0].val == got[1].val
    assert got[0].fingerprints["train"] == got[1].fingerprints["train"] == fingerprint(rows[:40])
    with pytest.raises(ValueError, match="train_rows=50 but"):
        data.load_splits(get_benchmark("glue/sst2"), RunConfig(model="tiny-llama", data="real",
                                                               data_dir=str(short.parent), train_rows=50))


# --- the paper's claims against our runs -------------------------------------------------------------


def test_claims_get_a_verdict_from_our_runs(tmp_path):
    for seed in range(4):
        fake(tmp_path, "lora", seed, 0.80 + 0.01 * seed)
        fake(tmp_path, "boft", seed, 0.90 + 0.01 * seed)
        fake(tmp_path, "loraga", seed, 0.85 + 0.02 * (seed % 2))
        fake(tmp_path, "hybrid", seed, 0.85 + 0.01 * seed)
    held = {"study": report.records(tmp_path)}
    text, _ = report.paper_claims()
    ours = report.our_text_verdicts(text, held).set_index("id")
    # Hybrid - LoRA = +5 points on every seed: the claimed +1.1 is reproduced in direction.
    assert ours.loc["glue-7b-hybrid-lora", "our runs"] == "reproduced"
    assert "Hybrid − LoRA 5.0 ± 0.0" in ours.loc["glue-7b-hybrid-lora", "our numbers"]
    # Hybrid - BOFT = -5: the claimed +0.8 is contradicted; "best of every PEFT method" too.
    assert ours.loc["glue-70b-hybrid-boft", "our runs"] == "contradicted"
    assert ours.loc["glue-hybrid-best-peft", "our runs"] == "contradicted"
    # Hybrid - LoRA-GA alternates -2, 0: the interval holds zero.
    assert ours.loc["glue-70b-hybrid-loraga", "our runs"] == "unresolved"
    assert ours.loc["glue-405b-hybrid", "our runs"] == "not testable here"  # an absolute 405B score
    assert ours.loc["gsm-70b-hybrid-boft", "our runs"] == "not testable here"  # no GSM8K runs
    assert set(ours["our runs"]) <= set(report.VERDICTS)


def test_time_and_memory_claims_are_judged_by_per_seed_ratios(tmp_path):
    for seed in range(3):
        for method, seconds, mem in (("full", 4.0 + seed, 3.0), ("hybrid", 2.0 + seed / 2, 1.0)):
            fake(tmp_path, method, seed, 0.8)
            path = tmp_path / method / f"seed{seed}" / "record.json"
            rec = json.loads(path.read_text())
            rec["epochs"][0].update(seconds=seconds, peak_memory_bytes=mem * 2**30)
            write_record(rec, path)
    _, resources = report.paper_claims()
    ours = report.our_resource_verdicts(resources, {"s": report.records(tmp_path)}).set_index("id")
    # full / hybrid time is exactly 2.0 on every seed: below the claimed 2.1x.
    assert ours.loc["speedup-hybrid-full", "our runs"] == "contradicted"
    assert "2.00x" in ours.loc["speedup-hybrid-full", "our numbers"]
    # 3x less memory reaches the claimed 50% (2x).
    assert ours.loc["memory-hybrid-full", "our runs"] == "reproduced"
    assert ours.loc["memory-405b-full", "our runs"] == "not testable here"


def test_findings_lead_with_numbers_links_and_the_summary_figure(tmp_path, monkeypatch):
    from hupeft import findings

    results = tmp_path / "results"
    for seed in range(4):
        fake(results / "study", "zero-shot", seed, 0.55)
        fake(results / "study", "lora", seed, 0.80 + 0.01 * seed)
        fake(results / "study", "hybrid", seed, 0.85 + 0.01 * seed)
        if seed < 3:
            fake(results / "cpu", "lora", seed, 0.70 + 0.05 * seed)
            fake(results / "cpu", "hybrid", seed, 0.72 + 0.02 * seed)
    out = findings.write(results, "cpu", dest=tmp_path / "gen")
    text = out.read_text()
    assert text.startswith("## What we found")
    assert "**8 of the 108 means the paper prints in Table I are not the means" in text
    assert "contradict Table I itself" in text and "physically impossible" in text
    assert "real SST-2 study, **2 of 2 methods beat the untrained model**" in text
    assert "**1 of 1 hybrid-versus-baseline differences are resolved**" in text and "Hybrid − LoRA 5.0 ± 0.0" in text
    assert "synthetic cpu study (3 seeds), **0 of 1" in text
    assert "(results/" in text and ".ipynb)" in text  # every finding links its page
    for line in [x for x in text.splitlines() if x.startswith("- ")]:
        assert "](results/" in line, line
    svg = (tmp_path / "gen" / findings.SUMMARY_FIGURE).read_text()
    assert svg.lstrip().startswith("<?xml") and "Hybrid − LoRA" in svg
    assert "None" not in text and "nan" not in text


def test_archive_keeps_records_only_without_the_data_folders_path(tmp_path):
    from hupeft.records import archive, read_record

    src = tmp_path / "results" / "study"
    fake(src, "lora", 0, 0.8, data={"sources": {"train": f"local:{tmp_path}/data/sst2/train.jsonl"}})
    fake(src, "boft", 0, 0.8)
    bad = json.loads((src / "boft" / "seed0" / "record.json").read_text())
    write_record({**bad, "status": "failed"}, src / "boft" / "seed0" / "record.json")
    (src / "lora" / "seed0" / "generations.jsonl").write_text('{"prompt": "a sentence of the data"}\n')
    (src / "lora" / "seed0" / "run.ipynb").write_text("{}")
    n = archive(tmp_path / "results", tmp_path / "archive", data_dir=tmp_path / "data")
    assert n == 1
    files = sorted(p.relative_to(tmp_path / "archive") for p in (tmp_path / "archive").rglob("*") if p.is_file())
    assert files == [Path("study/lora/seed0/record.json")]
    rec = read_record(tmp_path / "archive" / "study" / "lora" / "seed0" / "record.json")
    assert rec["config"]["data"]["sources"]["train"] == "local:<data folder>/sst2/train.jsonl"


def test_findings_of_a_one_seed_study_print_no_missing_interval(tmp_path):
    from hupeft import findings

    results = tmp_path / "results"
    fake(results / "smoke", "lora", 0, 0.7)
    fake(results / "smoke", "hybrid", 0, 0.8)
    text = findings.write(results, "smoke", dest=tmp_path / "gen").read_text()
    assert "(1 seed), **0 of 1" in text and "one seed gives no interval" in text
    assert "nan" not in text and "None" not in text
