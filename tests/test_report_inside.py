"""The page on the hybrid and the uRNN: lambda per rule, when the hybrid is one branch, each
branch's movement, the variants' scores, and U's movement and unitarity, all from records."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest

from hupeft import pages, report
from hupeft.records import SCHEMA_VERSION, write_record

matplotlib.use("Agg")
LAYERS = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
RULE = {"hybrid": "slope", "hybrid-paper": "paper", "hybrid-normalized": "normalized"}


def write(root: Path, method: str, seed: int, acc: float, options: dict, lam=None, epochs=None):
    cfg = {"model": "m", "method": method, "benchmark": "glue/sst2", "seed": seed, "preset": "p",
           "data": {"n_eval": 500, "description": "d"}, "method_options": options}
    epochs = epochs or [{"epoch": e} for e in (1, 2)]
    for ep in epochs:
        ep.update({"train_loss": 1.0, "val_loss": 1.0, "grad_norm": 0.5, "seconds": 1.0, "tokens_per_second": 1.0,
                   "peak_memory_bytes": 2**30, "memory_kind": "cpu_peak_rss", **ep})
    rec = {"schema_version": SCHEMA_VERSION, "status": "ok", "error": None, "config": cfg,
           "params": {"trainable": 10, "total": 100}, "epochs": epochs, "scores": {"accuracy": acc},
           "hybrid_lambda": lam, "environment": {"packages": {}}, "finished_at": 1.0}
    write_record(rec, root / method / f"seed{seed}" / "record.json")


def hybrid_epochs(lora: float, boft: float, lam_end: dict) -> list[dict]:
    """Two epochs; each branch's unmixed movement grows, and the mixed one is weighted by lambda."""
    return [{"epoch": e, "orthogonality_error": 1e-7,
             "branch_delta": {n: [lora * e, boft * e] for n in LAYERS},
             "branch_change": {n: [lam_end[n] * lora * e, (1 - lam_end[n]) * boft * e] for n in LAYERS}}
            for e in (1, 2)]


@pytest.fixture
def frame(tmp_path):
    for seed in range(3):
        # paper: every layer above 0.95 at step 1, layer 1 dips at step 2, every layer above from step 3 on
        paper = {LAYERS[0]: [0.96, 0.97, 0.99, 0.99], LAYERS[1]: [0.96, 0.9, 0.99, 0.99]}
        # normalized: one layer ends above 0.95; the other stays mixed, except on seed 2 where it
        # ends below 0.05, so that no layer is mixed there (one branch per layer)
        normalized = {LAYERS[0]: [0.9, 0.96, 0.97, 0.97], LAYERS[1]: [0.9, 0.9, 0.9, 0.03 if seed == 2 else 0.9]}
        # slope (the default): on seed 2 the first layer goes all BOFT, the second stays mixed
        slope = {LAYERS[0]: [0.5, 0.6, 0.7, 0.02 if seed == 2 else 0.7], LAYERS[1]: [0.5, 0.5, 0.5, 0.5]}
        for method, lam in (("hybrid", slope), ("hybrid-paper", paper), ("hybrid-normalized", normalized)):
            end = {n: v[-1] for n, v in lam.items()}
            write(tmp_path, method, seed, 0.70 + 0.05 * seed + (0.02 if method == "hybrid-paper" else 0.0),
                  {"lambda_rule": RULE[method], "lambda_ema": 0.0}, lam, hybrid_epochs(0.1, 0.01, end))
        write(tmp_path, "loraga", seed, 0.60 + 0.05 * seed, {"r": 16})
        write(tmp_path, "boft", seed, 0.50 + 0.04 * seed, {"n_factors": 3})
        for method, variant, dist in (("urnn", "full", 0.08), ("urnn-structured", "structured", 0.02)):
            eps = [{"epoch": e, "orthogonality_error": 1e-6 * e, "renormalisations": 0 if variant == "full" else None,
                    "unitary_distance": {LAYERS[0]: dist * e, LAYERS[1]: 2 * dist * e}} for e in (1, 2)]
            write(tmp_path, method, seed, 0.6 + 0.01 * seed + (0.03 if variant == "full" else 0.0),
                  {"variant": variant}, None, eps)
    return report.records(tmp_path, variants=True)


def test_table_one_keeps_the_papers_six_methods_and_the_page_sees_every_variant(frame, tmp_path):
    six = report.records(tmp_path)
    assert set(six["method"].astype(str)) == {"hybrid", "loraga", "boft", "urnn"}
    assert set(frame["method"].astype(str)) == set(six["method"].astype(str)) | set(report.VARIANT_LABEL)
    assert not frame["method"].isna().any()


def test_lambda_long_names_each_runs_rule_from_its_record(frame):
    lam = report.lambda_long(frame)
    assert dict(lam[["method", "rule"]].drop_duplicates().values) == RULE
    assert len(lam) == 3 * 3 * len(LAYERS) * 4  # rules x seeds x layers x steps


def test_summary_says_which_rule_reduces_the_hybrid_to_one_branch(frame):
    s = report.lambda_summary(report.lambda_long(frame), report.branch_long(frame)).set_index(["rule", "seed"])
    paper = s.loc["paper"]
    assert (paper["one_branch"] == "LoRA-GA").all() and (paper["all_above_from"] == 3).all()
    assert paper["final_min"].min() == pytest.approx(0.99)
    normalized = s.loc["normalized"]
    assert list(normalized["one_branch"]) == ["", "", "per layer"] and (normalized["above"] == 0.5).all()
    assert list(normalized["mixed"]) == [0.5, 0.5, 0.0]
    assert normalized["all_above_from"].isna().all() and normalized.loc[2, "all_beyond_from"] == 4
    slope = s.loc["slope"]
    assert list(slope["one_branch"]) == ["", "", ""] and slope.loc[2, "below"] == 0.5
    # BOFT's share of the mixed movement at the last epoch, from the branch_change entries.
    lam = [0.99, 0.99]
    boft = sum((1 - x) * 0.02 for x in lam)
    assert paper["boft_share"].iloc[0] == pytest.approx(boft / (boft + sum(x * 0.2 for x in lam)))


def test_summary_page_states_the_degeneration_in_words(frame, monkeypatch):
    said = []
    monkeypatch.setattr(pages, "_md", said.append)
    monkeypatch.setattr(pages, "_html", lambda f, **kw: said.append(f.to_string()))
    pages.show_lambda_summary(report.lambda_summary(report.lambda_long(frame), report.branch_long(frame)))
    words = said[-1]
    assert "m · glue/sst2, **paper**: in 3 of 3 seeds every layer's λ ended above 0.95 (from step 3 on)" in words
    assert "**LoRA-GA alone**" in words
    assert "**normalized**: in 1 of 3 seeds every layer's λ ended above 0.95 or below 0.05 (from step 4 on), " \
        "50% of layers above and 50% below: each layer is **one branch alone**" in words
    assert "**normalized**: in 2 of 3 seeds some layers keep both branches in the mix" in words
    assert "**slope**: in 3 of 3 seeds some layers keep both branches in the mix (λ between 0.05 and 0.95): " \
        "83% of layers on average, λ 0.02 to 0.70 over layers." in words
    assert "nan" not in "".join(said).lower() and "None" not in "".join(said)


def test_branch_movement_keeps_unmixed_and_mixed(frame):
    br = report.branch_long(frame)
    last = br[(br["rule"] == "paper") & (br["epoch"] == 2)]
    n = len(last)
    assert n == 3 * len(LAYERS)
    assert last["lora_delta"].tolist() == pytest.approx([0.2] * n) and last["boft_delta"].tolist() == pytest.approx([0.02] * n)
    assert last["boft_change"].tolist() == pytest.approx([0.01 * 0.02] * n)


def test_rule_scores_are_paired_against_the_default_hybrid_loraga_and_boft(frame, monkeypatch):
    pc = report.paired_comparisons(frame, treatment="hybrid-paper", baselines=["hybrid", "loraga", "boft"])
    pc = pc.set_index("baseline")
    assert set(pc.index) == {"hybrid", "loraga", "boft"}
    assert pc.loc["hybrid", "difference"] == pytest.approx(2.0) and pc.loc["hybrid", "resolved"]
    assert pc.loc["hybrid", "comparison"] == "Hybrid (λ: paper) − Hybrid"
    said = []
    monkeypatch.setattr(pages, "_md", said.append)
    monkeypatch.setattr(pages, "_html", lambda f, **kw: said.append(f.to_string()))
    pages.show_rule_scores(frame)
    text = "\n".join(said)
    assert "Hybrid (λ: paper) − Hybrid = +2.00" in text
    assert "Hybrid (λ: normalized)" in text and "nan" not in text.lower()


def test_unitary_frame_and_page_show_both_variants(frame, monkeypatch):
    ul = report.unitary_long(frame)
    assert set(ul["variant"]) == {"full", "structured"}
    full = ul[(ul["variant"] == "full") & (ul["epoch"] == 2)]
    assert full["distance_mean"].tolist() == pytest.approx([0.24] * 3) and full["distance_max"].tolist() == pytest.approx([0.32] * 3)
    assert full["unitarity_error"].tolist() == pytest.approx([2e-6] * 3)
    said = []
    monkeypatch.setattr(pages, "_md", said.append)
    monkeypatch.setattr(pages, "_html", lambda f, **kw: said.append(f.to_string()))
    pages.show_urnn_variants(frame, ul)
    text = "\n".join(said)
    assert "uRNN − uRNN (structured) = +3.00" in text and "0.2400" in text and "0.0600" in text
    assert "nan" not in text.lower() and "None" not in text


def test_figures_draw_from_the_records(frame, monkeypatch):
    shown = []
    monkeypatch.setattr(pages, "_show", shown.append)
    monkeypatch.setattr(pages, "_md", lambda text: None)
    pages.plot_lambda_rules(report.lambda_long(frame))
    pages.plot_branch_movement(report.branch_long(frame))
    pages.plot_unitary(report.unitary_long(frame))
    assert len(shown) == 3
    panels = [ax.get_title() for ax in shown[0].axes if ax.get_title()]
    assert panels == ["rule: slope", "rule: normalized", "rule: paper"]  # the default first
    heat = shown[0].axes[0].collections[0].get_array()
    assert heat.max() == pytest.approx(0.7) and heat.min() == pytest.approx((0.7 + 0.7 + 0.02) / 3)  # mean over seeds


def test_sixty_layers_each_past_the_threshold_are_one_branch_per_layer():
    """59 layers at 0.99 and one at 0.01 (what the printed rule does to SmolLM2's 60 targeted
    layers): no layer mixes, whatever the float sums of the shares."""
    import pandas as pd

    rows = [{"model": "m", "benchmark": "b", "method": "hybrid-paper", "rule": "paper", "seed": 0,
             "layer": f"l{i}", "step": step, "lambda": (0.01 if i == 7 else 0.99) if step > 1 else 0.5}
            for i in range(60) for step in (1, 2)]
    s = report.lambda_summary(pd.DataFrame(rows), pd.DataFrame()).iloc[0]
    assert s["mixed"] == 0 and s["one_branch"] == "per layer" and s["all_beyond_from"] == 2
    assert s["above"] == pytest.approx(59 / 60) and s["below"] == pytest.approx(1 / 60)
