"""What every fine-tuning method shares: options, target selection, the adapted-model handle.

A method is applied with `hupeft.methods.apply(model, name, options, init_batches=...)` and
returns an `Adapted` handle. The training loop only ever talks to that handle:

    adapted = apply(model, "hybrid", HybridOptions(), init_batches=batches)
    opt = adapted.optimizer(lr=..., weight_decay=...)  # AdamW, or the method's own groups/steps
    loss.backward()
    adapted.before_step()   # reads gradients: the hybrid's lambda update
    opt.step()              # the uRNN's manifold step happens here (UnitaryAdamW)
    adapted.after_step()
    adapted.step_diagnostics()  # every step: the hybrid's lambda per layer, branch norms
    adapted.diagnostics()   # lambda per layer, orthogonality error, ... (whole parameters)
    adapted.movement()      # how far each layer's effective weight moved (dense: once an epoch)

Our own adapters (boft, urnn, hybrid, loraga) replace each targeted `nn.Linear` by an
`AdapterLayer` that keeps the frozen linear as `.base`, so save, load and merge are written once
here. PEFT-owned methods (lora) override those with PEFT's own format.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..atomic import atomic_write
from ..models import base_model_of
from ..quantization import dense_weight, quantized_kind

# Default targets per architecture family (config.model_type): the paper adapts attention
# projections; q and v is the usual LoRA choice (PEFT's defaults for these families) and what
# `hupeft bench` measures. Where q, k and v are one fused linear, that one.
_QV = ("q_proj", "v_proj")
DEFAULT_TARGETS = {
    **dict.fromkeys(("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
                     "gemma3_text", "phi", "olmo", "olmo2", "granite", "starcoder2", "stablelm", "cohere", "opt",
                     "gptj", "gpt_neo"), _QV),
    "phi3": ("qkv_proj",),
    "gpt_neox": ("query_key_value",),
    "falcon": ("query_key_value",),
    "bert": ("query", "value"),
    "bloom": ("query_key_value",),
    "gpt2": ("c_attn",),
}
# target_modules=all-linear: every nn.Linear but the output head (and the fresh classification
# heads, which train whole), as PEFT means it.
ALL_LINEAR = "all-linear"

# Heads that sequence-classification models create fresh: they must train with any method.
HEAD_NAMES = ("classifier", "score")

ADAPTER_CONFIG = "hupeft_adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"


class MethodError(ValueError):
    """Bad method input; the message is one line and names the fix."""


@dataclass
class MethodOptions:
    """Fields every method has."""

    target_modules: tuple[str, ...] | None = None
    """Names (last dotted component) of the nn.Linear layers to adapt, or all-linear (every
    linear layer but the output head); None: the architecture's default (see DEFAULT_TARGETS)."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out.get("target_modules") is not None:
            out["target_modules"] = list(out["target_modules"])
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MethodOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise MethodError(
                f"unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(names)}"
            )
        d = dict(d)
        targets = d.get("target_modules")
        if isinstance(targets, str):  # "all-linear", "q_proj,v_proj": the command line's form
            d["target_modules"] = tuple(t.strip() for t in targets.split(",") if t.strip())
        elif targets is not None:
            d["target_modules"] = tuple(targets)
        return cls(**d)


def model_type(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "model_type", "") or ""


def is_all_linear(target_modules: Iterable[str] | None) -> bool:
    """True for target_modules=all-linear, given as a string or as a one-item list."""
    if target_modules is None:
        return False
    items = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if ALL_LINEAR in items and len(items) > 1:
        raise MethodError(f"target_modules={','.join(items)}: {ALL_LINEAR} already takes every linear layer; "
                          f"use --set method.target_modules={ALL_LINEAR} alone, or name the layers")
    return items == [ALL_LINEAR]


def _linear_names(model: nn.Module) -> list[str]:
    """Last name components of the model's adaptable nn.Linear layers, each once: for errors."""
    return sorted({name.rsplit(".", 1)[-1] for name in _all_linears(model)})


def _all_linears(model: nn.Module) -> list[str]:
    """Full names of every nn.Linear but the output head and the classification heads."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    return [name for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and mod is not head
            and not any(part in HEAD_NAMES for part in name.split("."))]


def resolve_targets(model: nn.Module, target_modules: Iterable[str] | None) -> tuple[str, ...]:
    """The targets as names PEFT matches: the ones given, every linear's full name for
    all-linear, or the architecture's default."""
    if is_all_linear(target_modules):
        return tuple(_all_linears(model))
    if target_modules is not None:
        return tuple(target_modules)
    mt = model_type(model)
    if mt not in DEFAULT_TARGETS:
        some = ",".join(_linear_names(model)[:2]) or "q_proj,v_proj"
        raise MethodError(f"no default target modules for model type {mt!r}; set them, e.g. --set "
                          f"method.target_modules={some} (its linear layers: {', '.join(_linear_names(model))}), "
                          f"or --set method.target_modules={ALL_LINEAR}")
    return DEFAULT_TARGETS[mt]


def find_target_linears(model: nn.Module, target_modules: Iterable[str] | None) -> list[str]:
    """Full names of the nn.Linear modules whose last name component is a target (all-linear:
    every one but the output head)."""
    if is_all_linear(target_modules):
        names = _all_linears(model)
    else:
        targets = set(resolve_targets(model, target_modules))
        names = [name for name, mod in model.named_modules()
                 if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in targets
                 and not any(part in HEAD_NAMES for part in name.split("."))]
    if not names:
        wanted = (ALL_LINEAR if is_all_linear(target_modules) else ",".join(sorted(targets))
                  if target_modules is not None else "the default")
        have = ", ".join(_linear_names(model)) or "none"
        raise MethodError(f"no nn.Linear matches target_modules={wanted} in {type(model).__name__} (its linear "
                          f"layers: {have}); set e.g. --set method.target_modules={ALL_LINEAR}")
    return names


def head_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Fresh classification heads (trained by every method), by name."""
    return {
        name: mod
        for name, mod in model.named_modules()
        if name.rsplit(".", 1)[-1] in HEAD_NAMES and name.count(".") <= 1
    }


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class AdapterLayer(nn.Module):
    """A frozen nn.Linear (`self.base`) plus a method's trainable transform.

    Subclasses implement `forward` and `merged_weight()` (the plain weight that gives the same
    outputs), and optionally `orthogonality_error()`. `forward` runs the base through its own
    forward, never its weight, so a bitsandbytes base works; `base_weight()` is W0 as a float
    tensor (dequantized from a packed base) for merging and diagnostics.
    """

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def merged_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def base_weight(self) -> torch.Tensor:
        """W0 as stored in `base`, as a float tensor (a dequantized copy for a quantized base)."""
        return dense_weight(self.base)

    def orthogonality_error(self) -> float | None:
        """max |R^T R - I| (or U^H U - I) of this layer's rotation; None if it has none."""
        return None

    def original_weight(self) -> torch.Tensor:
        """The pretrained W0 (a layer that stores a transformed copy in `base` overrides this)."""
        return self.base_weight()

    @torch.no_grad()
    def weight_change(self) -> float:
        """|W_eff - W0|_F / |W0|_F: how far training moved the layer's effective weight (dense)."""
        w0 = self.original_weight().float()
        return float((self.merged_weight().float() - w0).norm() / w0.norm())

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen base: trainable parameters and persistent buffers."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("base.")}


class Adapted:
    """Handle on a model with a fine-tuning method applied. See the module docstring."""

    def __init__(self, model: nn.Module, method: str, options: MethodOptions):
        self.model = model
        self.method = method
        self.options = options

    # --- what the training loop calls -------------------------------------------------
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The optimiser's parameter groups; one by default (the hybrid gives each branch its own)."""
        return [{"params": list(self.trainable_parameters().values()), "lr": lr}]

    def optimizer(self, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
        """The optimiser a training loop should step: AdamW over `param_groups(lr)` by default. A
        schedule attached to it scales every group's learning rate alike."""
        return torch.optim.AdamW(self.param_groups(lr), lr=lr, weight_decay=weight_decay)

    def before_step(self) -> None:
        """After backward, before optimizer.step(). Default: nothing."""

    def after_step(self) -> None:
        """After optimizer.step(). Default: nothing."""

    def step_diagnostics(self) -> dict[str, Any]:
        """What is logged after every optimiser step: cheap, no collective, nothing that needs a
        whole sharded parameter (the hybrid's lambda per layer and branch gradient norms)."""
        return {}

    def diagnostics(self) -> dict[str, Any]:
        """Flat dict of numbers (and, for the hybrid, `lambda`: {layer: value})."""
        errs = [e for e in (l.orthogonality_error() for l in self.adapter_layers().values()) if e is not None]
        return {"orthogonality_error": max(errs)} if errs else {}

    @torch.no_grad()
    def movement(self) -> dict[str, Any]:
        """`weight_change` {layer: |W_eff - W0|_F / |W0|_F}. Builds every layer's dense weight, so
        it is meant for once an epoch, not every step."""
        return {"weight_change": {n: l.weight_change() for n, l in self.adapter_layers().items()}}

    # --- structure ------------------------------------------------------------------------
    def adapter_layers(self) -> dict[str, AdapterLayer]:
        return {n: m for n, m in self.model.named_modules() if isinstance(m, AdapterLayer)}

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters().values())

    def num_total(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # --- persistence ----------------------------------------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for name, layer in self.adapter_layers().items():
            for k, v in layer.adapter_state().items():
                state[f"{name}.{k}"] = v
        for name, head in head_modules(self.model).items():
            for k, v in head.state_dict().items():
                state[f"{name}.{k}"] = v
        return state

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        own = self.adapter_state()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise MethodError(
                f"adapter state does not fit this model (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}); load it with the same model and options it was saved with"
            )
        full = self.model.state_dict()
        with torch.no_grad():
            for k, v in state.items():
                full[k].copy_(v.to(full[k].dtype))

    def save(self, path: str | os.PathLike, state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write `hupeft_adapter.json` and `adapter.safetensors` into `path`, atomically. `state`:
        the whole model's state dict to take the adapter's tensors from (a sharded model's,
        gathered by hupeft.distributed.full_state) instead of the model's own."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        own = self.adapter_state()
        state = {k: (v if state is None else state[k]).detach().cpu().contiguous() for k, v in own.items()}
        _atomic(path / ADAPTER_WEIGHTS, lambda f: save_file(state, f))
        self.write_meta(path, "hupeft")
        return path

    def write_meta(self, path: Path, fmt: str) -> None:
        """`hupeft_adapter.json`: the method, its options, the file format, and the base model the
        adapter needs (`models.base_model_of`), so an export can rebuild it without being told."""
        meta = {"method": self.method, "options": self.options.to_dict(), "format": fmt,
                "base_model": base_model_of(self.model)}
        _atomic(path / ADAPTER_CONFIG, lambda f: Path(f).write_text(json.dumps(meta, indent=2)))

    def merge(self) -> nn.Module:
        """Replace each adapter layer by a plain nn.Linear with the merged weight; return the model.

        On a quantized base the merged layers are dequantized (W0 + the method's change cannot be
        stored in the packed format without a second rounding); a warning says so."""
        layers = self.adapter_layers()
        kinds = {quantized_kind(layer.base) for layer in layers.values()} - {None}
        if kinds:
            import warnings

            warnings.warn(f"merging into a {'/'.join(sorted(kinds))} base: the {len(layers)} adapted layers become "
                          "dense (dequantized) nn.Linear layers; the rest of the base stays quantized", stacklevel=2)
        with torch.no_grad():
            for name, layer in list(layers.items()):
                base = layer.base
                w = layer.merged_weight()
                dtype = w.dtype if quantized_kind(base) else base.weight.dtype
                merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                                   device=w.device, dtype=dtype)
                merged.weight.copy_(w.to(dtype))
                if base.bias is not None:
                    merged.bias.copy_(base.bias)
                set_submodule(self.model, name, merged)
        return self.model


def freeze_all_but_heads(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for head in head_modules(model).values():
        for p in head.parameters():
            p.requires_grad_(True)


def replace_targets(model: nn.Module, options: MethodOptions,
                    factory: Callable[[str, nn.Linear], AdapterLayer]) -> dict[str, AdapterLayer]:
    """Freeze the model, then swap each targeted nn.Linear for `factory(name, linear)`."""
    names = find_target_linears(model, options.target_modules)
    freeze_all_but_heads(model)
    layers = {}
    for name in names:
        layer = factory(name, model.get_submodule(name))
        set_submodule(model, name, layer)
        layers[name] = layer
    return layers


_atomic = atomic_write

LossFn = Callable[[nn.Module, dict], torch.Tensor]


def default_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Hugging Face models return `.loss` when the batch carries labels."""
    return model(**batch).loss
