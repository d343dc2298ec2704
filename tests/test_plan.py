"""The planner: counts from the meta device, memory per strategy, the paper preset, `hupeft plan`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hupeft import plan, presets
from hupeft.config import RunConfig

GB = 1e9
METHODS = ["full", "lora", "loraga", "boft", "urnn", "hybrid"]


@pytest.fixture(scope="module")
def paper_plans():
    cells = presets.expand(presets.load_preset("paper"), here=False, lookups=False)
    return cells, plan.plan_cells(cells, plan.Hardware())


def test_paper_preset_covers_table1(paper_plans):
    cells, _ = paper_plans
    per_model = {}
    for c in cells:
        per_model.setdefault(c.config.model, set()).add(c.config.benchmark)
    glue = {"glue/mnli", "glue/qqp", "glue/sst2", "glue/qnli"}
    assert len(per_model) == 4
    for model, benches in per_model.items():
        assert glue <= benches and {"gsm8k", "mtbench"} <= benches
        assert ("humaneval" in benches) == (model != "meta-llama/Llama-3.3-70B-Instruct")
    assert {c.config.method for c in cells} == set(METHODS)
    assert Counter(c.config.seed for c in cells) == {0: len(cells) // 3, 1: len(cells) // 3, 2: len(cells) // 3}


def test_every_paper_cell_fits_nodes_of_8x80GB(paper_plans):
    _, plans = paper_plans
    bad = [(p.model, p.benchmark, p.method, p.need.reason) for p in plans if not p.feasible]
    assert not bad
    for p in plans:
        assert p.need.peak <= 80 * GB * 0.95 and p.nodes * 8 >= p.processes and p.hours > 0
    # The 405B adapters only fit because the base is quantized and sharded; full fine-tuning of it
    # because its 3.25 TB of state is sharded over 8 nodes.
    big = {p.method: p for p in plans if p.model == "meta-llama/Llama-3.1-405B" and p.benchmark == "gsm8k"}
    assert big["lora"].quantization == "4bit" and big["lora"].strategy == "fsdp"
    assert big["full"].nodes == 8 and big["full"].quantization is None


def test_resources_page_shows_every_model_and_method(paper_plans, monkeypatch):
    from hupeft import pages, report

    df = report.preset_plan("paper")
    assert len(df) == 24 and df["fits"].all()
    assert set(df["GPUs"]) == {1, 2, 4, 8, 16, 24, 64}
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(getattr(obj, "data", str(obj))))
    pages.show_preset_plan(df, "paper")
    text = "\n".join(map(str, shown))
    assert "Every cell fits" in text and "Llama-3.1-405B" in text
    for bad in (">None<", ">nan<", ">NaN<", "np.float64"):
        assert bad not in text


def test_parameter_counts_match_the_closed_forms_of_models_yaml():
    """The meta-device counts (extrapolated from depth 1 and 2) against the formulas in
    data/paper/models.yaml, computed there independently."""
    import torch

    for model_id, entry in plan.paper_models().items():
        c = plan.counts(model_id, "causal-lm", "full", {}, torch.bfloat16, 1, 8)
        assert c.params == entry["derived"]["parameters"], model_id
        assert c.weight_bytes == entry["derived"]["bf16_weight_bytes"], model_id


@pytest.mark.parametrize("method", METHODS)
def test_extrapolated_counts_equal_a_full_depth_build(method):
    """One and two layers scaled to seven equal the seven-layer model built whole."""
    import torch

    from hupeft import models

    config = models.tiny_config("tiny-llama")
    config.num_hidden_layers = 7
    real = plan._measure(config, "causal-lm", method, {}, torch.float32, 2, 16)
    c = plan.counts_from_config(config, "causal-lm", method, {}, torch.float32, 2, 16)
    assert c.params == real["params"] and c.trainable == real["trainable"]
    assert c.trainable_bytes == real["trainable_bytes"] and c.method_state_bytes == real["state"]
    assert c.activation_bytes == real["saved"] and c.estimate_bytes == real["estimate"]


def test_gradient_estimate_is_one_fp32_matrix_per_target():
    """Wizard-Vicuna-30B, q and v projections of 60 layers, 6656 x 6656 each: 21.3 GB."""
    cfg = RunConfig(model="cognitivecomputations/Wizard-Vicuna-30B-Uncensored", method="loraga",
                    benchmark="glue/sst2", max_len=128, strategy="fsdp", processes=4, task="causal-lm")
    p = plan.plan_cell(cfg, plan.Hardware())
    n = p.need
    assert n.estimate == 60 * 2 * 6656 * 6656 * 4
    assert n.init_peak > n.train_peak  # the estimate is the cell's peak
    # Taken through hooks on each process's own forward: held whole on every GPU, not sharded.
    assert n.init_peak == pytest.approx(n.weights + n.gathered + n.estimate + n.activations + n.overhead)


def test_strategies_shard_and_offload_what_they_should():
    import torch

    hw = plan.Hardware()
    cfg = RunConfig(model="meta-llama/Llama-3.3-70B-Instruct", method="full", benchmark="gsm8k",
                    task="causal-lm", max_len=512, batch_size=1, gradient_checkpointing=True)
    c = plan.counts(cfg.model, "causal-lm", "full", {}, torch.bfloat16, 1, 512)
    ddp = plan.need(cfg, hw, "ddp", 8, 2, c)
    fsdp = plan.need(cfg, hw, "fsdp", 8, 2, c)
    off = plan.need(cfg, hw, "fsdp_offload", 8, 2, c)
    assert ddp.weights == c.weight_bytes and ddp.optimizer == 2 * c.trainable_bytes
    assert fsdp.weights == pytest.approx(c.weight_bytes / 8) and fsdp.grads == pytest.approx(c.trainable_bytes / 8)
    assert off.weights == 0 and off.cpu_per_node == pytest.approx(4 * c.weight_bytes)
    assert not ddp.fits and "over 76 GB" in ddp.reason
    assert fsdp.peak < ddp.peak and off.peak < fsdp.peak


def test_quantized_base_stores_half_a_byte_per_decoder_weight():
    import torch

    cfg = RunConfig(model="meta-llama/Llama-3.1-405B", method="lora", benchmark="gsm8k", task="causal-lm",
                    quantization="4bit", max_len=512, batch_size=1)
    c = plan.counts(cfg.model, "causal-lm", "lora", {}, torch.bfloat16, 1, 512)
    q = plan.need(cfg, plan.Hardware(), "ddp", 1, 2, c)
    assert 0.25 * c.weight_bytes < q.weights < 0.3 * c.weight_bytes  # ~0.52 of 2 bytes, plus fp32 head


def test_cli_table_json_and_bad_input(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert plan.cli_main(["--preset", "smoke", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tiny-llama" in text and "0 do not fit" in text
    data = json.loads(out.read_text())
    assert len(data["cells"]) == 14 and all(c["feasible"] for c in data["cells"])
    bad = tmp_path / "bad.json"
    assert plan.cli_main(["--preset", "smoke", "--gpu-memory", "lots", "--json", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "80GB" in err and len(err.splitlines()) == 1 and not bad.exists()
    # A GPU too small for anything: exit 1, every cell says why.
    assert plan.cli_main(["--preset", "smoke", "--gpu-memory", "1GB"]) == 1
    assert "NO: training needs" in capsys.readouterr().out


def _measured_peak(model: str, method: str, batch: int, seq: int) -> int:
    """hupeft bench's CPU measurement of one method (its child, with glibc returning freed blocks,
    peak resident set above a baseline), run once small first so that the libraries a training
    step loads on first use are in the baseline: what is left is the model's own memory."""
    code = ("import json; from hupeft.bench_rows import measure as m; "
            f"s = dict(row={method!r}, model={model!r}, targets=['q_proj', 'v_proj'], threads=1); "
            "m({**s, 'batch': 1, 'seq_len': 8, 'warmup': 0, 'steps': 1, 'memory_steps': 0}); "
            f"print(json.dumps(m({{**s, 'batch': {batch}, 'seq_len': {seq}, 'warmup': 1, 'steps': 1, 'memory_steps': 1}})))")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_memory_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("model,batch,seq", [("tiny-llama", 16, 256), ("smollm2-135m", 4, 128)])
def test_predicted_training_peak_is_within_25_percent_of_bench(model, batch, seq):
    hw = plan.Hardware(overhead_bytes=0)  # a CPU has no CUDA context
    ratios = {}
    for method in METHODS:
        opts = {} if method == "full" else {"target_modules": ["q_proj", "v_proj"]}
        cfg = RunConfig(model=model, method=method, benchmark="mtbench", task="causal-lm", batch_size=batch,
                        max_len=seq, method_options=opts)
        predicted = plan.plan_cell(cfg, hw).need.train_peak
        ratios[method] = predicted / _measured_peak(model, method, batch, seq)
    assert all(0.75 <= r <= 1.25 for r in ratios.values()), ratios


def test_gradient_estimate_in_passes_gives_the_same_factors():
    """`estimate_layers` (how the 405B cells fit) changes how much is held at once, not the result."""
    import torch

    from conftest import lm_batch, make_tiny
    from hupeft import methods

    batches = [lm_batch(seed=i) for i in range(2)]
    whole = methods.apply(make_tiny(), "loraga", init_batches=batches).adapter_state()
    passes = methods.apply(make_tiny(), "loraga", {"estimate_layers": 1}, init_batches=batches).adapter_state()
    assert whole.keys() == passes.keys()
    for k in whole:
        torch.testing.assert_close(passes[k], whole[k])
    assert plan.counts_from_config(make_tiny().config, "causal-lm", "loraga", {"estimate_layers": 1},
                                   torch.float32, 2, 8).estimate_passes == 4


def test_grid_dry_run_of_the_paper_preset_works_without_a_gpu(capsys, monkeypatch):
    import torch

    from hupeft import grid

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # No network from a dry run: offline, each hub lookup waits through minutes of retries.
    from transformers import AutoConfig

    from hupeft import models
    from hupeft.benchmarks import base

    def no_hub(*args, **kwargs):
        raise AssertionError(f"a dry run asked the hub for data: {args}")

    asked = []
    real_config = AutoConfig.from_pretrained

    def cache_only(name, *args, **kwargs):
        asked.append((str(name), kwargs.get("local_files_only", False)))
        return real_config(name, *args, **kwargs)

    monkeypatch.setattr(base, "hub_rows", no_hub)
    monkeypatch.setattr(AutoConfig, "from_pretrained", cache_only)
    monkeypatch.setattr(models, "_CONFIGS", {})
    assert grid.cli_main(["--preset", "paper", "--dry-run"]) == 0
    hub_ids = [(name, local) for name, local in asked if not Path(name).exists()]
    assert hub_ids and all(local for _, local in hub_ids), hub_ids
    lines = capsys.readouterr().out.splitlines()
    for model in plan.paper_models():
        tasks = {line.split()[2] for line in lines if line.startswith("todo") and f" {model} " in line}
        assert {t for t in tasks if t.startswith("glue/")} == {"glue/mnli", "glue/qqp", "glue/sst2", "glue/qnli"}
    assert "486 cells" in lines[-1]
