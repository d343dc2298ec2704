"""RunConfig: everything one run needs, with validation that happens before any model loads."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """Bad run input; the message is one line and names the fix."""


@dataclass
class RunConfig:
    model: str = "tiny-llama"
    """Model name: smollm2-135m, minilm-l6, tiny-llama, tiny-bert, a hub id or a local folder."""
    method: str = "lora"
    """full, lora, loraga, boft, urnn or hybrid."""
    benchmark: str = "glue/sst2"
    """A registered benchmark (hupeft.benchmarks.names())."""
    seed: int = 0
    """Seed for data sampling, initialisation and shuffling."""
    task: str = "auto"
    """causal-lm, seq-cls, or auto (seq-cls for classification benchmarks on encoder models)."""
    preset: str | None = None
    """Name of the preset this run belongs to (recorded, not used)."""
    epochs: int = 1
    """Training epochs over the n_train examples."""
    lr: float = 2e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_size: int = 4
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    warmup_ratio: float = 0.1
    """Fraction of optimiser steps with linear warm-up; then linear decay to 0."""
    clip_norm: float = 1.0
    """Global gradient-norm clipping (0 disables)."""
    max_len: int = 256
    """Token limit of one training example (prompt + target)."""
    n_train: int | None = 64
    """Training examples (None: the whole train split)."""
    n_val: int = 16
    """Held-out examples for the validation loss each epoch."""
    n_eval: int | None = 32
    """Examples scored at the end (None: the whole eval split)."""
    eval_batch_size: int = 8
    """Batch size of evaluation and generation."""
    max_new_tokens: int | None = None
    """Generation budget (None: the benchmark's default)."""
    n_samples: int | None = None
    """Samples per problem for pass@k > 1 (HumanEval; None: greedy only)."""
    temperature: float | None = None
    """Sampling temperature when n_samples > 1 (None: the benchmark's default)."""
    data_dir: str | None = None
    """Local data folder tried first (<benchmark>/<split>.jsonl); also HUPEFT_DATA_DIR."""
    mixed_precision: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), no, bf16 or fp16."""
    quantization: str | None = None
    """None, 4bit or 8bit (bitsandbytes; GPU only)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    init_batches: int = 4
    """Batches of `batch_size` training examples (the first of the seed's shuffle) from which
    LoRA-GA and the hybrid estimate the gradient at initialisation; the only such setting."""
    checkpoint: bool = True
    """Save the trainable state, optimiser, scheduler and RNG states after each epoch (for --resume)."""
    keep_checkpoint: bool = False
    """Keep the last checkpoint after the run completes (by default it is removed then)."""
    inject_nan_step: int | None = None
    """Testing aid: make the loss NaN at this optimiser step, to exercise divergence handling."""
    method_options: dict[str, Any] = field(default_factory=dict)
    """Options of the method (see hupeft.methods.<name>.OPTIONS), e.g. {'r': 8}."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {', '.join(sorted(names))}")
        return cls(**d)


def field_docs() -> dict[str, str]:
    """Field name -> the docstring under it (for --help)."""
    import inspect

    src = inspect.getsource(RunConfig)
    return dict(re.findall(r"\n    (\w+): [^\n]*\n    \"\"\"(.*?)\"\"\"", src, flags=re.S))


def _parse_value(text: str, kind: Any) -> Any:
    import json

    if text.lower() in ("none", "null"):
        return None
    if kind in (bool, "bool"):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(text)
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(cfg: RunConfig, pairs: list[str]) -> RunConfig:
    """`key=value` pairs onto a config; `method.<opt>=v` sets a method option."""
    import typing

    hints = typing.get_type_hints(RunConfig)
    d = cfg.to_dict()
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r} is not key=value; e.g. --set lr=1e-4")
        key, _, text = pair.partition("=")
        key = key.strip()
        if key.startswith("method."):
            d["method_options"] = {**d["method_options"], key[7:]: _parse_value(text, None)}
            continue
        if key not in hints:
            raise ConfigError(f"unknown --set key {key!r}; valid keys: {', '.join(sorted(hints))}, or method.<option>")
        try:
            d[key] = _parse_value(text, bool if hints[key] is bool else None)
        except ValueError:
            raise ConfigError(f"--set {key}={text!r}: expected true/false") from None
        if hints[key] in (float, "float") and isinstance(d[key], int):
            d[key] = float(d[key])
    return RunConfig.from_dict(d)


def validate(cfg: RunConfig) -> RunConfig:
    """Check everything that can be checked without loading weights; resolve `task`."""
    import torch

    from hupeft import benchmarks, methods, models
    from hupeft.methods import MethodError

    if cfg.method not in methods.METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}; choose one of {', '.join(sorted(methods.METHODS))}")
    try:
        models.check_name(cfg.model)
    except models.ModelError as e:
        raise ConfigError(str(e)) from None
    try:
        bench = benchmarks.get(cfg.benchmark)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for name in ("epochs",):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)}; e.g. --set {name}=1")
    for name in ("batch_size", "grad_accum", "max_len", "n_val", "eval_batch_size", "init_batches"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)}")
    for name in ("n_train", "n_eval"):
        v = getattr(cfg, name)
        if v is not None and v <= 0:
            raise ConfigError(f"{name} must be > 0 or none, got {v}")
    if cfg.lr <= 0:
        raise ConfigError(f"lr must be > 0, got {cfg.lr}; e.g. --set lr=2e-4")
    if cfg.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise ConfigError(f"mixed_precision must be auto, no, bf16 or fp16, not {cfg.mixed_precision!r}")
    if cfg.quantization not in (None, "4bit", "8bit"):
        raise ConfigError(f"quantization must be none, 4bit or 8bit, not {cfg.quantization!r}")
    if cfg.quantization and not torch.cuda.is_available():
        raise ConfigError(f"quantization={cfg.quantization} needs a CUDA GPU (bitsandbytes); "
                          "run without it on this machine (--set quantization=none)")
    if cfg.quantization and cfg.method == "full":
        raise ConfigError("full fine-tuning cannot train a quantized base; drop quantization or pick an adapter")
    task = cfg.task
    if task == "auto":
        encoder = cfg.model in ("minilm-l6", "tiny-bert")
        task = "seq-cls" if (bench.kind == "classification" and encoder) else "causal-lm"
    if task not in models.TASKS:
        raise ConfigError(f"task must be auto, causal-lm or seq-cls, not {task!r}")
    if task == "seq-cls" and bench.kind != "classification":
        raise ConfigError(f"{cfg.benchmark} is a generation benchmark; it needs task=causal-lm")
    if task == "causal-lm" and cfg.model in ("minilm-l6", "tiny-bert"):
        raise ConfigError(f"{cfg.model} is an encoder and cannot generate; use smollm2-135m or tiny-llama")
    try:
        opts = methods.make_options(cfg.method, cfg.method_options)
    except (MethodError, TypeError) as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    _check_layer_shapes(cfg, task, opts)
    return dataclasses.replace(cfg, task=task)


def _check_layer_shapes(cfg: RunConfig, task: str, opts) -> None:
    """Build the model on the meta device (no weights) to check the method fits its layers."""
    import torch

    from hupeft import methods, models
    from hupeft.methods import MethodError

    config = models.model_config(cfg.model)
    if config is None:  # a hub id we cannot see offline: the load will say so
        return
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    with torch.device("meta"):
        auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
        model = auto.from_config(config)
    try:
        methods.check_fits(model, cfg.method, opts)
    except MethodError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
