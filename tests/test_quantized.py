"""Adapters on 4-bit and 8-bit bitsandbytes bases, on the CPU: identity at step 0, training,
merging, and what is refused (full fine-tuning, missing or too old bitsandbytes, an 8-bit base
under FSDP)."""

from __future__ import annotations

import warnings

import pytest
import torch

from hupeft import methods, models, quantization
from hupeft.experiment import cli_main

KINDS = ["4bit", "8bit"]
# Every adapter method and side: BOFT with the paper's m = 3, both uRNN variants.
CASES = [("lora", {}), ("loraga", {}), ("boft", {"side": "input", "n_factors": 3}),
         ("boft", {"side": "output", "n_factors": 3}), ("urnn", {"side": "input"}), ("urnn", {"side": "output"}),
         ("urnn-structured", {"side": "input"}), ("urnn-structured", {"side": "output"}), ("hybrid", {})]
CASE_IDS = [f"{name}-{opts.get('side', '')}".rstrip("-") for name, opts in CASES]
# The structured uRNN's U_eff = U0^H U(theta) is the identity up to fp32 rounding (unitary.py);
# every other adapter adds an exact zero at step 0.
STEP0_TOL = {"urnn-structured": 1e-5}

IDS = torch.randint(3, 128, (4, 24), generator=torch.Generator().manual_seed(0))
BATCHES = [{"input_ids": IDS[i:i + 2], "labels": IDS[i:i + 2]} for i in (0, 2)]


@pytest.fixture(autouse=True)
def _quiet():
    # bitsandbytes' 8-bit CPU path warns on every forward that fp32 inputs are cast.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def mean_loss(model) -> float:
    model.eval()
    with torch.no_grad():
        return sum(model(**b).loss.item() for b in BATCHES) / len(BATCHES)


def test_quantized_base_has_packed_layers_and_trains_through_them():
    """The load really quantizes (a packed weight per projection), and after a forward without
    gradients (validation) gradients still reach the input: the CPU repacking trap is disarmed."""
    for kind, cls in (("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")):
        model = models.load("tiny-llama", quantization=kind).model
        q = model.model.layers[0].self_attn.q_proj
        assert type(q).__name__ == cls and quantization.quantized_kind(q) == kind
        assert type(model.lm_head).__name__ == "Linear"  # output layers stay float
        with torch.no_grad():
            model(IDS)
        x = torch.randn(3, q.in_features, requires_grad=True)
        q(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, kind
        w = quantization.dense_weight(q)
        ref = models.load("tiny-llama").model.model.layers[0].self_attn.q_proj.weight
        assert w.shape == ref.shape
        # NF4 keeps ~3 bits of a weight, int8 ~7: the dequantized W0 is close to the original, not equal.
        err = float((w - ref).abs().max() / ref.abs().max())
        assert 0 < err < (0.2 if kind == "4bit" else 0.01), (kind, err)
        q.train()  # in eval mode the 8-bit path also quantizes the activations
        torch.testing.assert_close(q(x.detach()), x.detach() @ w.T, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_adapter_on_quantized_base_is_identity_then_trains(kind, name, opts):
    model = models.load("tiny-llama", quantization=kind).model
    model.eval()
    with torch.no_grad():
        base = model(IDS).logits
    init = BATCHES if name in methods.NEEDS_INIT_BATCHES else None
    adapted = methods.apply(model, name, opts, init_batches=init)
    assert all(p.dtype == torch.float32 for p in adapted.trainable_parameters().values())
    adapted.model.eval()
    with torch.no_grad():
        out = adapted.model(IDS).logits
    assert float((out - base).abs().max()) <= STEP0_TOL.get(name, 0.0)

    before = mean_loss(adapted.model)  # also a no-grad forward before training, as validation is
    opt = adapted.optimizer(lr=1e-2)
    adapted.model.train()
    for step in range(20):
        adapted.model(**BATCHES[step % 2]).loss.backward()
        adapted.before_step()
        opt.step()
        adapted.after_step()
        opt.zero_grad(set_to_none=True)
    after = mean_loss(adapted.model)
    assert after < before - 0.02, (before, after)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["loraga", "boft", "urnn", "hybrid"])
def test_merge_on_quantized_base_dequantizes_and_says_so(kind, name):
    model = models.load("tiny-llama", quantization=kind).model
    init = BATCHES if name in methods.NEEDS_INIT_BATCHES else None
    adapted = methods.apply(model, name, {"side": "output"} if name in ("boft", "urnn") else {}, init_batches=init)
    opt = adapted.optimizer(lr=1e-2)
    for _ in range(3):
        adapted.model(**BATCHES[0]).loss.backward()
        adapted.before_step()
        opt.step()
        opt.zero_grad(set_to_none=True)
    # Training mode: bitsandbytes' 8-bit CPU path then multiplies by the dequantized weight, as the
    # merged dense layer does (in eval mode it also quantizes the activations).
    adapted.model.train()
    with torch.no_grad():
        expected = adapted.model(IDS).logits
    with pytest.warns(UserWarning, match="dequantized"):
        merged = adapted.merge()
    q = merged.model.layers[0].self_attn.q_proj
    assert type(q) is torch.nn.Linear and q.weight.dtype == torch.float32
    assert type(merged.model.layers[0].self_attn.k_proj).__name__ != "Linear"  # the rest stays packed
    with torch.no_grad():
        got = merged(IDS).logits
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)


def test_full_fine_tuning_refuses_a_quantized_base():
    model = models.load("tiny-llama", quantization="4bit").model
    with pytest.raises(methods.MethodError, match="quantized base"):
        methods.apply(model, "full")


def test_full_on_quantized_base_exits_2_before_loading(tmp_path, capsys, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("models.load must not be reached")

    monkeypatch.setattr(models, "load", no_load)
    out = tmp_path / "out"
    argv = ["--model", "tiny-llama", "--method", "full", "--benchmark", "glue/sst2", "--set", "quantization=4bit",
            "--out", str(out)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "quantized base" in err and "quantization=none" in err
    assert not out.exists()


def test_8bit_base_under_fsdp_exits_2_before_loading_but_plans(tmp_path, capsys, monkeypatch):
    """FSDP cannot shard LLM.int8() weights (their row scales sit on the parameter it replaces):
    refused on the machine that runs the cell, while planning a grid elsewhere still accepts it."""
    from hupeft.config import RunConfig, validate

    def no_load(*a, **k):
        raise AssertionError("models.load must not be reached")

    monkeypatch.setattr(models, "load", no_load)
    out = tmp_path / "out"
    argv = ["--model", "tiny-llama", "--method", "lora", "--benchmark", "glue/sst2", "--set", "quantization=8bit",
            "--set", "strategy=fsdp", "--set", "processes=2", "--out", str(out)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "quantization=8bit" in err and "--set strategy=ddp" in err
    assert not out.exists()
    cfg = RunConfig(model="tiny-llama", method="lora", benchmark="glue/sst2", quantization="8bit", strategy="fsdp",
                    processes=2)
    assert validate(cfg, here=False).strategy == "fsdp"
    for ok in ({"strategy": "ddp"}, {"quantization": "4bit"}, {"processes": 1}):  # one process runs unsharded
        validate(RunConfig(**{**cfg.to_dict(), **ok}))


def test_missing_or_old_bitsandbytes_is_a_one_line_error_naming_the_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(quantization.QuantizationError, match=r"not installed; run: pip install 'hupeft\[quant\]'"):
        quantization.check_supported("4bit")
    with pytest.raises(models.ModelError, match="hupeft\\[quant\\]"):
        models.load("tiny-llama", quantization="8bit")
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setattr(quantization.metadata, "version", lambda n: "0.45.5")
    with pytest.raises(quantization.QuantizationError, match=r">= 0\.49, found 0\.45\.5; run: pip install -U"):
        quantization.check_supported("4bit", cuda=False)
    quantization.check_supported("4bit", cuda=True)  # a GPU has had bitsandbytes kernels since 0.43
    with pytest.raises(quantization.QuantizationError, match="none, 4bit or 8bit"):
        quantization.check_supported("2bit")


def test_fsdp_stores_4bit_weights_as_bf16():
    """QLoRA-style FSDP shards one dtype: the packed 4-bit weights are stored as bf16 there."""
    assert quantization.storage_dtype("4bit", "fsdp") is torch.bfloat16
    assert quantization.storage_dtype("4bit", "fsdp_offload") is torch.bfloat16
    assert quantization.storage_dtype("4bit", "ddp") is None and quantization.storage_dtype("8bit", "fsdp") is None
    cfg = quantization.bnb_config("4bit", torch.bfloat16, storage=torch.bfloat16)
    assert cfg.bnb_4bit_quant_storage == torch.bfloat16 and cfg.bnb_4bit_quant_type == "nf4"
    model = models.load("tiny-llama", quantization="4bit", quant_storage=torch.bfloat16).model
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16


def test_run_on_4bit_base_keeps_training_after_validation(tmp_path):
    """`hupeft run --set quantization=4bit`: epoch 1 ends with a validation pass (a forward without
    gradients, where bitsandbytes' CPU backend would repack the weights), and in epoch 2 gradients
    still reach the adapter, whose rotation sits before the base layer (they must cross it)."""
    import json

    out = tmp_path / "run"
    argv = ["--model", "tiny-llama", "--method", "boft", "--benchmark", "glue/sst2", "--out", str(out), "--quiet",
            "--set", "quantization=4bit", "--set", "method.side=input", "--set", "method.scale=false",
            "--set", "epochs=2", "--set", "n_train=8", "--set", "batch_size=4", "--set", "n_val=4", "--set", "n_eval=4", "--set", "lr=1e-2",
            "--set", "checkpoint=false"]
    assert cli_main(argv) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["config"]["quantization"] == "4bit" and len(record["steps"]) == 4
    assert all(s["grad_norm"] > 0 for s in record["steps"]), [s["grad_norm"] for s in record["steps"]]


@pytest.mark.parametrize("kind", KINDS)
def test_lora_merge_on_quantized_base_requantizes_and_says_so(kind):
    adapted = methods.apply(models.load("tiny-llama", quantization=kind).model, "lora")
    opt = adapted.optimizer(lr=1e-2)
    for _ in range(3):
        adapted.model(**BATCHES[0]).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    adapted.model.train()
    with torch.no_grad():
        expected = adapted.model(IDS).logits
    with pytest.warns(UserWarning, match="re-quantizes"):
        merged = adapted.merge()
    assert quantization.quantized_kind(merged.model.layers[0].self_attn.q_proj) == kind
    with torch.no_grad():
        got = merged(IDS).logits
    assert float((got - expected).abs().max()) < 0.1  # the rounding of one more quantization
