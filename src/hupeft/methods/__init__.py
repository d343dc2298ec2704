"""The fine-tuning methods compared in the paper, behind one registry.

    from hupeft import methods
    adapted = methods.apply(model, "boft", n_factors=3)          # options by keyword
    adapted = methods.apply(model, "loraga", init_batches=batches) # gradient-initialised
    methods.load(model, "ckpt/")                                   # re-apply saved state

| name   | what                                                        | owner   |
|--------|-------------------------------------------------------------|---------|
| zero-shot | nothing trains: the base model, scored as the others (the floor) | ours |
| full   | every parameter trains                                      | ours    |
| lora   | y = W0 x + (alpha/r) B A x                                  | PEFT    |
| loraga | LoRA initialised from the SVD of the estimated gradient     | ours    |
| boft   | butterfly orthogonal rotation, m factors, on activations    | ours    |
| urnn   | a unitary U trained on the unitary group (Algorithm 1)       | ours    |
| urnn-structured | urnn with U = D3 R2 F^-1 D2 Pi R1 F D1 under AdamW  | ours    |
| hybrid | lambda * LoRA-GA + (1 - lambda) * BOFT, lambda from grad norms | ours |
| hybrid-paper | hybrid with lambda from Algorithm 2's gradient norms as printed | ours |
| hybrid-normalized | hybrid with those norms divided by each branch's weight | ours |
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from torch import nn

from .base import (ADAPTER_CONFIG, Adapted, LossFn, MethodError, MethodOptions, default_loss)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    module: str
    """module under hupeft.methods defining OPTIONS (a MethodOptions subclass), apply(model,
    options, init_batches, loss_fn) -> Adapted, and optionally load(model, path) -> Adapted."""
    defaults: tuple[tuple[str, Any], ...] = ()
    """Option values this name sets before the caller's (a variant run under its own name)."""


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec("zero-shot", "zeroshot"),
        MethodSpec("full", "full"),
        MethodSpec("lora", "lora"),
        MethodSpec("loraga", "loraga"),
        MethodSpec("boft", "boft"),
        MethodSpec("urnn", "urnn"),
        MethodSpec("urnn-structured", "urnn", (("variant", "structured"),)),
        MethodSpec("hybrid", "hybrid"),
        MethodSpec("hybrid-paper", "hybrid", (("lambda_rule", "paper"),)),
        MethodSpec("hybrid-normalized", "hybrid", (("lambda_rule", "normalized"),)),
    ]
}


def family(name: str) -> str:
    """The method a name runs (its module): "hybrid" for every hybrid variant, and so on."""
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name].module


# Methods that read gradients of the base model before training starts.
NEEDS_INIT_BATCHES = {name for name, spec in METHODS.items() if spec.module in ("loraga", "hybrid")}


def _module(name: str):
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return importlib.import_module(f"hupeft.methods.{METHODS[name].module}")


def options_class(name: str) -> type[MethodOptions]:
    return _module(name).OPTIONS


def make_options(name: str, options: MethodOptions | dict | None = None, **overrides: Any) -> MethodOptions:
    """Options for `name` from a dataclass, a dict, and/or keyword overrides (validated)."""
    cls = options_class(name)
    if isinstance(options, MethodOptions):
        if not isinstance(options, cls):
            raise MethodError(f"{type(options).__name__} is not the options of {name!r}; use {cls.__name__}")
        base = options.to_dict()
    else:
        base = {**dict(METHODS[name].defaults), **dict(options or {})}
    base.update(overrides)
    opts = cls.from_dict(base)
    validate = getattr(opts, "validate", None)
    if validate:
        validate()
    return opts


def apply(model: nn.Module, name: str, options: MethodOptions | dict | None = None, *,
          init_batches: Iterable[dict] | None = None, loss_fn: LossFn = default_loss,
          **overrides: Any) -> Adapted:
    """Apply method `name` to `model` (in place) and return its handle."""
    mod = _module(name)
    opts = make_options(name, options, **overrides)
    return mod.apply(model, opts, init_batches=init_batches, loss_fn=loss_fn)


def check_fits(model: nn.Module, name: str, options: MethodOptions) -> None:
    """Raise MethodError if `name` with `options` cannot be applied to `model`'s layers.

    Works on a model built on the meta device, so a run can refuse bad input before loading
    any weights."""
    if name in ("full", "zero-shot"):
        return
    from .base import find_target_linears

    for layer_name in find_target_linears(model, options.target_modules):
        lin = model.get_submodule(layer_name)
        d_in, d_out = lin.in_features, lin.out_features
        if family(name) in ("boft", "hybrid"):
            from .boft.butterfly import check_butterfly_shape

            side = getattr(options, "side", "output")
            dim = d_in if side == "input" else d_out
            try:
                check_butterfly_shape(dim, options.block_size, options.n_factors)
            except MethodError as e:
                raise MethodError(f"{layer_name}: {e}") from None
        if family(name) == "urnn":
            from .urnn import check_width

            check_width(layer_name, d_in if options.side == "input" else d_out, options)


def load(model: nn.Module, path: str | Path) -> Adapted:
    """Re-apply a saved method to a fresh copy of the base model and restore its state."""
    path = Path(path)
    cfg_file = path / ADAPTER_CONFIG
    if not cfg_file.exists():
        raise MethodError(f"{cfg_file} not found; pass the folder written by Adapted.save()")
    meta = json.loads(cfg_file.read_text())
    mod = _module(meta["method"])
    if hasattr(mod, "load"):
        return mod.load(model, path, meta)
    from safetensors.torch import load_file

    from .base import ADAPTER_WEIGHTS

    opts = make_options(meta["method"], meta["options"])
    # The saved state holds LoRA-GA's start (A0, B0) as well as its factors: build from a plain
    # start, restore, and keep the options as they were saved.
    build = dataclasses.replace(opts, init="lora") if hasattr(opts, "init") else opts
    adapted = mod.apply(model, build, init_batches=None, loss_fn=default_loss)
    adapted.options = opts
    adapted.load_adapter_state(load_file(str(path / ADAPTER_WEIGHTS)))
    return adapted


__all__ = ["METHODS", "NEEDS_INIT_BATCHES", "Adapted", "MethodError", "MethodOptions",
           "apply", "check_fits", "family", "load", "make_options", "options_class"]
