"""RunConfig: everything one run needs, with validation that happens before any model loads."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from . import hub

SCORE_ON = ("eval", "holdout")


class ConfigError(ValueError):
    """Bad run input; the message is one line and names the fix."""


@dataclass
class RunConfig:
    model: str = "tiny-llama"
    """Model name: smollm2-135m, minilm-l6, tiny-llama, tiny-bert, a hub id or a local folder."""
    method: str = "lora"
    """full, lora, loraga, boft, urnn or hybrid (and their variants), or zero-shot (the base model
    untrained, scored as the others: the floor)."""
    benchmark: str = "glue/sst2"
    """A registered benchmark (hupeft.benchmarks.names()) or a task file of your own, path/to/task.yaml
    (hupeft.benchmarks.tasks; a relative path is read from the working folder)."""
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
    """Examples per micro-batch in each process; the global batch is batch_size x processes x grad_accum."""
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
    score_on: str = "eval"
    """What the run is scored on: eval (the benchmark's scored split) or holdout (the n_val
    validation rows carved from the training rows: for choosing settings such as the learning
    rate, never on the scored split; hupeft sweep)."""
    train_rows: int | None = None
    """Use only the first this many rows of the train split, in its own order, before sampling
    (None: all). A data folder holding a prefix of the split then gives the same rows as the hub;
    the record's train fingerprint is of these rows."""
    eval_batch_size: int = 8
    """Batch size of evaluation and generation."""
    max_new_tokens: int | None = None
    """Generation budget (None: the benchmark's default)."""
    n_samples: int | None = None
    """Samples per problem for pass@10 (HumanEval; >= 10; None: greedy pass@1 only, which is always run)."""
    temperature: float | None = None
    """Sampling temperature of the n_samples for pass@10 (None: the benchmark's default)."""
    data_dir: str | None = None
    """Local data folder tried first (<benchmark>/<split>.jsonl); also HUPEFT_DATA_DIR."""
    data: str = "any"
    """Which data may serve the run: real (a data folder, the hub or its datasets cache, shipped real
    data; an error naming every source tried when none has it), synthetic (generated data only) or
    any (real where a source has it, else generated; the record says which it used and why)."""
    mixed_precision: str = "auto"
    """auto (bf16 autocast on a GPU or over bf16 weights, none on CPU with fp32 weights), no, bf16 or fp16."""
    dtype: str = "auto"
    """Dtype of the base weights: auto (bf16 for a hub model on a GPU, else fp32), fp32 or bf16.
    Trainable parameters are fp32 whatever the base (full fine-tuning: an fp32 master copy)."""
    quantization: str | None = None
    """None, 4bit (NF4) or 8bit: a bitsandbytes base, on a GPU or the CPU; adapter methods only."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    init_batches: int = 4
    """Global batches (batch_size x processes training examples, the first of the seed's shuffle)
    from which LoRA-GA and the hybrid estimate the gradient at initialisation, the same on every
    process; the only such setting."""
    checkpoint: bool = True
    """Save the trainable state, optimiser, scheduler and RNG states after each epoch (for --resume)."""
    checkpoint_every: int | None = None
    """Also checkpoint every this many optimiser steps within an epoch (None: after epochs only)."""
    save_adapter: bool = True
    """Save the trained adapter (full: the whole model) to OUT/adapter at the end, in the form
    hupeft.methods.load reads back."""
    processes: int | None = None
    """Processes to train with; above 1, `hupeft run` starts them through `accelerate launch` (on
    the GPUs, or on the CPU with gloo). None: as launched (1 outside a launch)."""
    strategy: str = "auto"
    """How several processes share the work: ddp (each holds the model), fsdp (sharded, FSDP2),
    fsdp_offload (sharded, kept in CPU memory; GPU), deepspeed (ZeRO-3, 2+ processes, not urnn or
    hybrid; extra 'deepspeed'), or auto (the launch's accelerate config, else ddp)."""
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
        """A config from plain values (a preset's YAML, a JSON listing); every value type-checked."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {', '.join(sorted(names))}")
        return cls(**check_types(d))


def field_docs() -> dict[str, str]:
    """Field name -> the docstring under it (for --help)."""
    import inspect

    src = inspect.getsource(RunConfig)
    return dict(re.findall(r"\n    (\w+): [^\n]*\n    \"\"\"(.*?)\"\"\"", src, flags=re.S))


# --- value types: every key's value is checked against its annotation before any work --------

_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "text",
          tuple: "a comma-separated list", dict: "a mapping"}
_EXAMPLES = {int: 3, float: 0.5, bool: "true", str: "name", tuple: "q_proj,v_proj", dict: "{}"}


class _WrongType(ValueError):
    """A value that does not fit its annotation (turned into a ConfigError naming the key)."""


def _kind(hint: Any) -> tuple[type, bool]:
    """The plain type behind an annotation, and whether None is allowed (`int | None`)."""
    import typing

    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    return (origin if origin in _WORDS else str), optional


def _coerce(value: Any, hint: Any) -> Any:
    """`value` as the annotation's type; _WrongType when it is not one (no silent conversions
    but int -> float and list -> tuple, which YAML and JSON cannot tell apart, and comma-separated
    text -> tuple, as on the command line)."""
    import math

    kind, optional = _kind(hint)
    if value is None and optional:
        return None
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str), dict: isinstance(value, dict),
          tuple: isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value))
          }[kind]
    if not ok or (kind is float and not math.isfinite(value)):
        raise _WrongType(value)
    if kind is tuple and isinstance(value, str):  # the command line's form, e.g. target_modules: all-linear
        return tuple(x.strip() for x in value.split(",") if x.strip())
    return float(value) if kind is float else tuple(value) if kind is tuple else value


def _parse(text: str, hint: Any) -> Any:
    """Command-line text as the annotation's type; _WrongType when it does not parse."""
    import json

    kind, optional = _kind(hint)
    low = text.strip().lower()
    if low in ("none", "null"):
        if optional:
            return None
        raise _WrongType(text)
    if kind is bool:
        if low in ("1", "true", "yes"):
            return True
        if low in ("0", "false", "no"):
            return False
        raise _WrongType(text)
    if kind is int and re.fullmatch(r"[+-]?\d+", text.strip()):
        return int(text)
    if kind is float:
        try:
            return _coerce(float(text), float)
        except ValueError:
            raise _WrongType(text) from None
    if kind is tuple:
        return tuple(x.strip() for x in text.split(",") if x.strip())
    if kind is dict:
        try:
            return _coerce(json.loads(text), dict)
        except ValueError:
            raise _WrongType(text) from None
    if kind is str:
        return text
    raise _WrongType(text)


def _type_error(key: str, value: Any, hint: Any, default: Any, cli: bool) -> ConfigError:
    """One line naming the expected type and an example in the form the user wrote."""
    kind, optional = _kind(hint)
    example = default if default is not None and not isinstance(default, (dict, tuple)) else _EXAMPLES[kind]
    if isinstance(example, bool):
        example = str(example).lower()
    expected = _WORDS[kind] + (" or none" if optional else "")
    how = f"--set {key}={example}" if cli else f"{key}: {example}"
    return ConfigError(f"{'--set ' if cli else ''}{key}={value!r}: expected {expected}, e.g. {how}")


def _defaults(cls) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def check_types(d: dict[str, Any]) -> dict[str, Any]:
    """Config values as their fields' types (int -> float where a float is due); ConfigError for
    the first that is not."""
    import typing

    hints, defaults = typing.get_type_hints(RunConfig), _defaults(RunConfig)
    out = dict(d)
    for key, value in d.items():
        try:
            out[key] = _coerce(value, hints[key])
        except _WrongType:
            raise _type_error(key, value, hints[key], defaults[key], cli=False) from None
    return out


def check_method_types(method: str, options: dict[str, Any], cli: bool = False) -> dict[str, Any]:
    """Method options as their fields' types (text parsed when `cli`); unknown names are left
    for the method to refuse, so its message lists the valid ones."""
    import typing

    from hupeft import methods

    cls = methods.options_class(method)
    hints, defaults = typing.get_type_hints(cls), _defaults(cls)
    out = dict(options)
    for name, value in options.items():
        if name not in hints:
            continue
        try:
            out[name] = _parse(value, hints[name]) if cli else _coerce(value, hints[name])
        except _WrongType:
            raise _type_error(f"method.{name}", value, hints[name], defaults[name], cli) from None
    return out


def apply_overrides(cfg: RunConfig, pairs: list[str]) -> RunConfig:
    """`key=value` pairs onto a config, each value parsed as its field's type; `method.<opt>=v`
    sets a method option (parsed as that option's type when the method is known)."""
    import typing

    from hupeft import methods

    hints, defaults = typing.get_type_hints(RunConfig), _defaults(RunConfig)
    d = cfg.to_dict()
    texts: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r} is not key=value; e.g. --set lr=1e-4")
        key, _, text = pair.partition("=")
        key = key.strip()
        if key.startswith("method."):
            texts[key[7:]] = text
            continue
        if key not in hints:
            raise ConfigError(f"unknown --set key {key!r}; valid keys: {', '.join(sorted(hints))}, or method.<option>")
        try:
            d[key] = _parse(text, hints[key])
        except _WrongType:
            raise _type_error(key, text, hints[key], defaults[key], cli=True) from None
    if texts and d["method"] in methods.METHODS:
        texts = check_method_types(d["method"], texts, cli=True)
    d["method_options"] = {**d["method_options"], **texts}
    return RunConfig.from_dict(d)


def validate(cfg: RunConfig, *, here: bool = True) -> RunConfig:
    """Check everything that can be checked without loading weights; resolve `task`. With
    `here` False (expanding or planning a grid, e.g. on a login node), what only the machine
    that runs the cell can answer (a CUDA GPU or bitsandbytes for a quantized base, the data a
    real-data run asks for) is left to that machine.

    The data is loaded and tokenized here (cheap: no model weights), so a data folder that
    cannot serve the benchmark or a max_len too short for its targets is refused up front."""
    from hupeft import benchmarks, methods, models
    from hupeft.methods import MethodError

    cfg = RunConfig(**check_types(cfg.to_dict()))
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
    cfg = dataclasses.replace(cfg, benchmark=benchmarks.canonical(cfg.benchmark))  # a task file: its absolute path
    _check_ranges(cfg)
    if here:
        _check_hardware(cfg)
    task = _resolve_task(cfg, bench)
    cfg = _zero_shot_epochs(cfg)
    try:
        opts = methods.make_options(cfg.method, check_method_types(cfg.method, cfg.method_options))
    except (MethodError, TypeError) as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    if here:
        # Every cheap check is done: now one short request decides whether the hub answers, before
        # any client asks it (bitsandbytes asks at import); where it does not, all go offline.
        hub.decide()
    _check_layer_shapes(cfg, task, opts, here)
    _check_data(cfg, bench, task, here)
    return dataclasses.replace(cfg, task=task)


def validate_settings(cfg: RunConfig) -> RunConfig:
    """The checks of `validate` that read no model config, tokenizer or data (so they need no
    network): types, ranges, the method and its options; `task` resolved. For planning a grid."""
    from hupeft import benchmarks, methods
    from hupeft.methods import MethodError

    cfg = RunConfig(**check_types(cfg.to_dict()))
    if cfg.method not in methods.METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}; choose one of {', '.join(sorted(methods.METHODS))}")
    try:
        bench = benchmarks.get(cfg.benchmark)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cfg = dataclasses.replace(cfg, benchmark=benchmarks.canonical(cfg.benchmark))  # a task file: its absolute path
    _check_ranges(cfg)
    try:
        methods.make_options(cfg.method, check_method_types(cfg.method, cfg.method_options))
    except (MethodError, TypeError) as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    return dataclasses.replace(_zero_shot_epochs(cfg), task=_resolve_task(cfg, bench))


def _zero_shot_epochs(cfg: RunConfig) -> RunConfig:
    """Zero-shot trains nothing: whatever a preset's defaults say, it takes no epoch."""
    return dataclasses.replace(cfg, epochs=0) if cfg.method == "zero-shot" else cfg


def _check_ranges(cfg: RunConfig) -> None:
    if cfg.epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {cfg.epochs}; e.g. --set epochs=1")
    for name in ("batch_size", "grad_accum", "max_len", "n_val", "eval_batch_size", "init_batches"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)}")
    if cfg.score_on not in SCORE_ON:
        raise ConfigError(f"score_on must be one of {', '.join(SCORE_ON)}, not {cfg.score_on!r}; "
                          "e.g. --set score_on=holdout")
    for name in ("n_train", "n_eval", "train_rows", "max_new_tokens", "n_samples", "temperature", "inject_nan_step",
                 "checkpoint_every"):
        v = getattr(cfg, name)
        if v is not None and v <= 0:
            raise ConfigError(f"{name} must be > 0 or none, got {v}")
    if cfg.n_samples is not None and 1 < cfg.n_samples < 10:
        raise ConfigError(f"n_samples={cfg.n_samples} is too few for pass@10; use n_samples >= 10, or none "
                          "(pass@1 always comes from greedy decoding)")
    if cfg.lr <= 0:
        raise ConfigError(f"lr must be > 0, got {cfg.lr}; e.g. --set lr=2e-4")
    for name in ("weight_decay", "clip_norm"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if not 0 <= cfg.warmup_ratio <= 1:
        raise ConfigError(f"warmup_ratio must be between 0 and 1, got {cfg.warmup_ratio}; e.g. --set warmup_ratio=0.1")
    _check_precision(cfg)


def _check_precision(cfg: RunConfig) -> None:
    """Weights dtype, autocast and quantization: what bitsandbytes supports here, and what can train."""
    from hupeft import precision, quantization

    if cfg.mixed_precision not in precision.MIXED:
        raise ConfigError(f"mixed_precision must be auto, no, bf16 or fp16, not {cfg.mixed_precision!r}")
    if cfg.dtype != "auto" and cfg.dtype not in precision.WEIGHT_DTYPES:
        raise ConfigError(f"dtype must be auto, fp32 or bf16, not {cfg.dtype!r}")
    if cfg.dtype == "bf16" and cfg.mixed_precision in ("no", "fp16"):
        raise ConfigError(f"dtype=bf16 trains fp32 parameters on bf16 weights under bf16 autocast; "
                          f"use mixed_precision=bf16 or auto, not {cfg.mixed_precision}")
    if cfg.quantization and cfg.method == "full":
        raise ConfigError("full fine-tuning cannot train a quantized base; drop quantization (--set quantization=none) "
                          "or pick an adapter method")
    _check_strategy(cfg)


def _check_strategy(cfg: RunConfig) -> None:
    from hupeft import distributed

    from hupeft import methods

    try:
        distributed.check(cfg.strategy, cfg.processes)
        world = max(cfg.processes or 1, distributed.launched_world())
        distributed.check_method(distributed.resolve(cfg.strategy, world), methods.METHODS[cfg.method].module,
                                 cfg.quantization)
    except distributed.LaunchError as e:
        raise ConfigError(str(e)) from None


def _check_hardware(cfg: RunConfig) -> None:
    """What only the machine that runs the cell can check (bitsandbytes and what it supports here)."""
    from hupeft import distributed, quantization

    try:
        quantization.check_supported(cfg.quantization)
        world = max(cfg.processes or 1, distributed.launched_world())
        quantization.check_sharding(cfg.quantization, distributed.resolve(cfg.strategy, world))
    except quantization.QuantizationError as e:
        raise ConfigError(str(e)) from None


def _resolve_task(cfg: RunConfig, bench) -> str:
    from hupeft import models

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
    return task


def _check_data(cfg: RunConfig, bench, task: str, here: bool = True) -> None:
    """Load the run's examples (no weights) and refuse what could only be used cut or replaced:
    a data folder that cannot serve the benchmark, a max_len without room for every training and
    validation target and its prompt's end, a generation budget that leaves no room for the prompt."""
    from hupeft import data, models
    from hupeft.benchmarks import DATA_CHOICES
    from hupeft.benchmarks.base import NoSource, unsaid

    if cfg.data not in DATA_CHOICES:
        raise ConfigError(f"data={cfg.data!r}: use one of {', '.join(DATA_CHOICES)}, e.g. --set data=real")
    try:
        bench.check_local([s for s in bench.splits.values() if s], cfg.data_dir)
        if not here and cfg.data != "synthetic" and bench.local_folder(cfg.data_dir)[0] is None:
            # Planning or submitting: no data folder here, and asking the hub from a login node
            # without a network waits minutes on retries; the machine that runs the cell checks.
            return
        with unsaid():  # a data=any fallback is said by the run, once; a refusal here is one line
            splits = data.load_splits(bench, cfg)
    except NoSource as e:
        if not here:  # planning or submitting: the machine that runs the cell may have the data
            return
        raise ConfigError(str(e).splitlines()[0]) from None
    except ValueError as e:  # BenchmarkError, or no training examples left
        raise ConfigError(str(e).splitlines()[0]) from None
    tok, config = models.tokenizer(cfg.model), models.model_config(cfg.model)
    if tok is None:  # a hub id we cannot see offline: the run's own encoding will check
        return
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions and cfg.max_len > positions:
        raise ConfigError(f"max_len={cfg.max_len} exceeds the {positions} positions of {cfg.model}; "
                          f"lower it, e.g. --set max_len={positions}")
    examples = splits.train + splits.val
    try:
        if task == "seq-cls":
            data.check_seqcls_fits(bench.name, data.seqcls_lengths(bench, tok, examples), cfg.max_len,
                                   positions)
        else:
            pieces = data.tokenize_causal(bench, tok, examples)
            if positions and max(p.needed for p in pieces) > positions:
                raise ConfigError(f"the longest target of {bench.name} ({max(len(p.target) for p in pieces)} "
                                  f"tokens) does not fit the {positions} positions of {cfg.model}; "
                                  "choose a model with more positions or a benchmark with shorter answers")
            data.check_causal_fits(bench.name, pieces, cfg.max_len, positions)
    except data.TooLong as e:
        raise ConfigError(str(e)) from None
    budget = cfg.max_new_tokens or getattr(bench, "default_max_new_tokens", 0)
    if bench.kind == "generation" and positions and positions - budget < 1 + data.MIN_PROMPT_TAIL:
        raise ConfigError(f"max_new_tokens={budget} leaves no room for the prompt in the {positions} positions "
                          f"of {cfg.model}; lower it, e.g. --set max_new_tokens={positions // 2}")


def _check_layer_shapes(cfg: RunConfig, task: str, opts, here: bool = True) -> None:
    """Build the model on the meta device (no weights) to check the method fits its layers. With
    `here` False a hub model's config is read from the local cache only (no network retries)."""
    import torch

    from hupeft import methods, models
    from hupeft.methods import MethodError

    config = models.model_config(cfg.model, hub=here)
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
