"""bf16 base weights: fp32 master weights for full fine-tuning, fp32 adapters, and every method's
outputs at step 0 equal to the bf16 base's."""

from __future__ import annotations

import pytest
import torch

from hupeft import methods, models, precision
from hupeft.experiment import cli_main

CASES = [("lora", {}), ("loraga", {}), ("boft", {"side": "input", "n_factors": 3}),
         ("boft", {"side": "output", "n_factors": 3}), ("urnn", {"side": "input"}), ("urnn", {"side": "output"}),
         ("urnn-structured", {"side": "input"}), ("urnn-structured", {"side": "output"}), ("hybrid", {})]
# Causal LMs for every case; a sequence classifier (a fresh fp32 head on the bf16 base) for three.
PARAMS = [pytest.param(name, opts, "causal-lm", id=f"{name}-{opts.get('side', '')}".rstrip("-"))
          for name, opts in CASES]
PARAMS += [pytest.param(name, opts, "seq-cls", id=f"{name}-seq-cls") for name, opts in CASES
           if (name, opts.get("side")) in (("boft", "output"), ("urnn-structured", "input"), ("hybrid", None))]

IDS = torch.randint(3, 128, (4, 24), generator=torch.Generator().manual_seed(0))
# Every token of the vocabulary appears, so every embedding row has a gradient.
ALL_TOKENS = torch.randperm(128, generator=torch.Generator().manual_seed(1)).reshape(4, 32)


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def logits(model, ids, mixed: bool) -> torch.Tensor:
    model.eval()
    with torch.no_grad(), (autocast() if mixed else torch.autocast("cpu", enabled=False)):
        return model(ids).logits


@pytest.mark.parametrize("name,opts,task", PARAMS)
def test_adapter_on_bf16_base_is_fp32_and_exactly_the_base_at_step0(name, opts, task):
    model = models.load("tiny-llama", task=task, dtype=torch.bfloat16).model
    # As loaded, and under the bf16 autocast a run uses over bf16 weights; a fresh (fp32) head
    # needs the autocast, as a run always has it there.
    modes = (False, True) if task == "causal-lm" else (True,)
    base = {mixed: logits(model, IDS, mixed) for mixed in modes}
    labels = IDS[:2] if task == "causal-lm" else torch.tensor([0, 1])
    init = [{"input_ids": IDS[:2], "labels": labels}] if name in methods.NEEDS_INIT_BATCHES else None
    adapted = methods.apply(model, name, opts, init_batches=init)
    precision.keep_fp32_master(adapted.model)
    trainable = adapted.trainable_parameters()
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    frozen = [p for p in adapted.model.parameters() if not p.requires_grad and p.is_floating_point()]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # the base is not copied to fp32
    for mixed in modes:
        assert torch.equal(logits(adapted.model, IDS, mixed), base[mixed]), f"autocast={mixed}"


def _train_full(model, steps: int, lr: float) -> None:
    adapted = methods.apply(model, "full")
    opt = adapted.optimizer(lr=lr)
    model.train()
    for _ in range(steps):
        with autocast():
            model(input_ids=ALL_TOKENS, labels=ALL_TOKENS).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _changed(model, before: dict[str, torch.Tensor]) -> float:
    changed = sum(int((p.detach().float() != before[n].float()).sum()) for n, p in model.named_parameters())
    return changed / sum(p.numel() for p in model.parameters())


def test_full_fine_tuning_on_bf16_base_keeps_fp32_master_weights():
    model = models.load("tiny-llama", dtype=torch.bfloat16).model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad(), autocast():
        base = model(IDS).logits
    assert precision.keep_fp32_master(methods.apply(model, "full").model) == len(before)
    # The master copy holds the bf16 values exactly (an upcast loses nothing) ...
    assert all(p.dtype == torch.float32 and torch.equal(p.detach(), before[n].float())
               for n, p in model.named_parameters())
    # ... and its outputs at step 0 are the base's at bf16 resolution: under autocast the matmuls
    # see the same bf16 operands, while norms and residual sums now run in fp32 instead of bf16.
    with torch.no_grad(), autocast():
        out = model(IDS).logits
    assert float((out.float() - base.float()).abs().max()) <= 2 ** -7 * float(base.abs().max())

    _train_full(model, steps=5, lr=1e-5)
    assert _changed(model, before) > 0.99

    # The same 5 steps on the bf16 weights themselves lose most updates to rounding: the check
    # above tells the two apart.
    pure = models.load("tiny-llama", dtype=torch.bfloat16).model
    _train_full(pure, steps=5, lr=1e-5)
    assert _changed(pure, before) < 0.5


def test_run_on_bf16_base_trains_fp32_master_weights(tmp_path, monkeypatch):
    """`hupeft run --set dtype=bf16`: bf16 autocast, and full fine-tuning moves > 99% of the
    weight entries in 5 steps at lr 1e-5 (embedding rows of tokens no batch contains have no
    gradient at all, so the count is over the other parameters)."""
    seen = {}
    real_apply = methods.apply

    def spy(model, name, *a, **k):
        seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen["adapted"] = real_apply(model, name, *a, **k)
        return seen["adapted"]

    monkeypatch.setattr(methods, "apply", spy)
    out = tmp_path / "run"
    argv = ["--model", "tiny-llama", "--method", "full", "--benchmark", "glue/sst2", "--out", str(out), "--quiet",
            "--set", "dtype=bf16", "--set", "lr=1e-5", "--set", "n_train=20", "--set", "batch_size=4",
            "--set", "warmup_ratio=0", "--set", "n_val=4", "--set", "n_eval=4", "--set", "checkpoint=false"]
    assert cli_main(argv) == 0
    import json

    record = json.loads((out / "record.json").read_text())
    assert record["config"]["precision"] == "bf16" and len(record["steps"]) == 5
    before = seen["before"]
    assert all(p.dtype == torch.bfloat16 for p in before.values())
    params = dict(seen["adapted"].model.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    names = [n for n in params if "embed_tokens" not in n]
    changed = sum(int((params[n].detach() != before[n].float()).sum()) for n in names)
    assert changed / sum(params[n].numel() for n in names) > 0.99


@pytest.mark.parametrize("sets,message", [
    (["dtype=bf16", "mixed_precision=no"], "use mixed_precision=bf16 or auto"),
    (["dtype=fp16"], "dtype must be auto, fp32 or bf16"),
])
def test_bad_precision_settings_exit_2(sets, message, tmp_path, capsys):
    argv = ["--model", "tiny-llama", "--method", "lora", "--benchmark", "glue/sst2", "--out", str(tmp_path / "o")]
    for s in sets:
        argv += ["--set", s]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "o").exists()
