"""What each `hupeft bench` row trains, and how one child process times its steps and memory."""

from __future__ import annotations

import contextlib
import statistics
import time
from types import SimpleNamespace

ROWS = ["frozen", "full", "lora", "peft_lora", "loraga", "peft_loraga", "boft", "boft_m1", "peft_oft",
        "peft_oft_exact", "peft_boft_m1", "urnn", "hybrid"]
PRECISIONS = ("fp32", "bf16-mixed", "bf16")
SINGLE_LAYER = "linear-"  # model name prefix of one d x d layer: "linear-1024"
BLOCK = 8  # block size of every butterfly and OFT row, so they compare at the same size


def _batch(vocab: int, batch: int, seq: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _layer_class():
    import torch
    from torch import nn

    class SingleLayer(nn.Module):
        """One frozen-able d x d projection under a squared-error loss: a method's cost at width d,
        without the rest of a transformer."""

        def __init__(self, width: int):
            super().__init__()
            self.proj = nn.Linear(width, width, bias=False)
            self.config = SimpleNamespace(model_type="single-layer", vocab_size=0, use_return_dict=True)
            self._input_grad = False

        def enable_input_require_grads(self) -> None:
            self._input_grad = True

        def forward(self, inputs=None, labels=None, **_):
            x = inputs.requires_grad_(True) if self._input_grad else inputs
            return SimpleNamespace(loss=torch.nn.functional.mse_loss(self.proj(x), labels))

    return SingleLayer


def load_model(name: str, precision: str):
    """(model, batch_fn seed -> batch on the model's device) for a model name or `linear-<d>`."""
    import torch

    from hupeft import models

    dtype = torch.bfloat16 if precision == "bf16" else None
    if name.startswith(SINGLE_LAYER):
        width = int(name[len(SINGLE_LAYER):])
        torch.manual_seed(0)
        model = _layer_class()(width)
        if dtype is not None:
            model.to(dtype)
    else:
        model = models.load(name, dtype=dtype).model
    return model


def batch_maker(model, name: str, batch: int, seq: int, device: str):
    import torch

    if name.startswith(SINGLE_LAYER):
        width = model.proj.in_features
        dtype = model.proj.weight.dtype

        def make(seed: int):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(batch, seq, width, generator=g).to(device, dtype)
            return {"inputs": x, "labels": torch.randn(batch, seq, width, generator=g).to(device, dtype)}
        return make
    vocab = model.config.vocab_size
    return lambda s: {k: v.to(device) for k, v in _batch(vocab, batch, seq, s).items()}


def _peft(model, config):
    import torch
    from peft import get_peft_model

    m = get_peft_model(model, config)
    params = [p for p in m.parameters() if p.requires_grad]
    return m, params, lambda lr: torch.optim.AdamW(params, lr=lr)


def prepare(row: str, model, targets, batch_fn):
    """Apply the row's method; return (model to call, trainable params, before_step, after_step,
    optimiser factory lr -> optimiser: the method's own, as a run builds it)."""
    from hupeft import methods

    noop = lambda: None  # noqa: E731
    if row == "frozen":
        for p in model.parameters():
            p.requires_grad_(False)
        model.enable_input_require_grads()  # backward runs through every layer, no weight grads
        return model, [], noop, noop, None
    if row.startswith("peft_"):
        from peft import BOFTConfig, LoraConfig, OFTConfig

        t = list(targets)
        if row == "peft_lora":
            m, params, opt = _peft(model, LoraConfig(r=16, lora_alpha=32, target_modules=t))
        elif row == "peft_loraga":
            from peft import LoraGAConfig, preprocess_loraga

            cfg = LoraConfig(r=16, lora_alpha=32, target_modules=t, init_lora_weights="lora_ga",
                             lora_ga_config=LoraGAConfig())

            def estimate():
                for i in range(2):
                    model(**batch_fn(1000 + i)).loss.backward()
            preprocess_loraga(model, cfg, estimate)
            m, params, opt = _peft(model, cfg)
        elif row in ("peft_oft", "peft_oft_exact"):
            # OFT v2: input-side blocks, as our BOFT at m = 1; Cayley-Neumann (PEFT's default) or exact.
            m, params, opt = _peft(model, OFTConfig(oft_block_size=BLOCK, r=0, target_modules=t,
                                                    use_cayley_neumann=row == "peft_oft"))
        elif row == "peft_boft_m1":
            m, params, opt = _peft(model, BOFTConfig(boft_block_size=BLOCK, boft_n_butterfly_factor=1,
                                                     target_modules=t))
        else:
            raise ValueError(f"unknown row {row!r}")
        return m, params, noop, noop, opt
    name, opts = {"boft_m1": ("boft", {"n_factors": 1})}.get(row, (row, {}))
    if name != "full":
        opts["target_modules"] = tuple(targets)
    if name in ("boft", "hybrid"):
        opts["block_size"] = BLOCK
    init = [batch_fn(1000 + i) for i in range(2)] if name in methods.NEEDS_INIT_BATCHES else None
    adapted = methods.apply(model, name, init_batches=init, **opts)
    return (adapted.model, list(adapted.trainable_parameters().values()), adapted.before_step, adapted.after_step,
            adapted.optimizer)


def _live_allocations() -> None:
    """From here on, glibc returns every freed block above 64 KiB to the OS at once, so the
    resident set follows the live tensors (as CUDA's "allocated" does), not malloc's free cache."""
    import ctypes

    from hupeft.memory import trim

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
    trim()


def measure(spec: dict) -> dict:
    """Time `steps` steps after `warmup` in this process, then (CPU) peak memory over
    `memory_steps` more; the figures of one row in one round."""
    import torch

    from hupeft.memory import PeakRSS, TensorPeak, current_rss, trim

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    precision = spec.get("precision", "fp32")
    trim()
    baseline = current_rss()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = load_model(spec["model"], precision).to(device)
    batch_fn = batch_maker(model, spec["model"], spec["batch"], spec["seq_len"], device)
    # bf16-mixed is what `hupeft run` does on a GPU: fp32 weights, bf16 autocast (accelerate).
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if precision == "bf16-mixed" \
        else contextlib.nullcontext
    model.train()
    call, params, before, after, make_opt = prepare(spec["row"], model, spec["targets"], batch_fn)
    opt = make_opt(1e-5) if params else None

    def step(i: int) -> float:
        b = batch_fn(i)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast():
            loss = call(**b).loss
        loss.float().backward()
        before()
        if opt:
            opt.step()
            opt.zero_grad(set_to_none=True)
        after()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for i in range(spec["warmup"]):
        step(i)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as cached:
        times = [step(spec["warmup"] + i) for i in range(spec["steps"])]
    out = {"step_seconds": statistics.median(times), "step_seconds_all": times,
           "trainable_params": int(sum(p.numel() for p in params)), "device": device_name()}
    if cuda:
        out.update(peak_memory_bytes=int(torch.cuda.max_memory_allocated()), memory_kind="cuda_max_allocated")
        return out
    out["rss_with_cached_bytes"] = int(cached.peak - baseline)
    if not spec.get("memory_steps", 1):  # a round that times only
        return out
    # The figure: tensor bytes, exact, as CUDA's max_memory_allocated (hupeft.memory.TensorPeak).
    with TensorPeak() as tensors:
        for i in range(spec.get("memory_steps", 1)):
            step(10_000 + i)
    # Beside it, what the process holds: the resident set once malloc returns freed blocks.
    _live_allocations()
    with PeakRSS() as live:
        for i in range(spec.get("memory_steps", 1)):
            step(20_000 + i)
    out.update(peak_memory_bytes=int(tensors.peak), memory_kind="cpu_tensor_bytes_allocated",
               rss_live_bytes=int(live.peak - baseline))
    return out


def device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
