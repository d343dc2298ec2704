"""Quantized bases through bitsandbytes: where they run, how they load, and dense views of their weights.

    from hupeft import quantization
    quantization.check_supported("4bit")             # one-line error naming the fix, before any load
    cfg = quantization.bnb_config("4bit", torch.bfloat16, storage=torch.bfloat16)  # QLoRA-style FSDP
    w0 = quantization.dense_weight(layer)            # W0 as a float tensor, dequantized if packed

Adapters on a quantized base call the base layer's forward (bitsandbytes' own matmul) and never
its packed weight; only merging and a few diagnostics need W0 itself, through `dense_weight`.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata

import torch
from torch import nn

KINDS = ("4bit", "8bit")
# bitsandbytes ships a CPU backend (4-bit NF4 and 8-bit matmuls with autograd) from 0.49 on.
MIN_CPU_VERSION = (0, 49)
MIN_CUDA_VERSION = (0, 43)
INSTALL = "pip install 'hupeft[quant]'"


class QuantizationError(ValueError):
    """Quantization cannot run here; the message is one line and names the fix."""


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_supported(kind: str | None, cuda: bool | None = None) -> None:
    """Raise QuantizationError unless bitsandbytes can load and train a `kind` base on this machine
    (a CUDA GPU, or the CPU backend of bitsandbytes >= 0.49). Reads the installed version only: no
    import, so a grid can validate every cell quickly."""
    if kind is None:
        return
    if kind not in KINDS:
        raise QuantizationError(f"quantization must be none, 4bit or 8bit, not {kind!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationError(f"quantization={kind} needs bitsandbytes, which is not installed; run: {INSTALL}")
    version = metadata.version("bitsandbytes")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    need = MIN_CUDA_VERSION if cuda else MIN_CPU_VERSION
    if _version(version) < need:
        where = "a CUDA GPU" if cuda else "the CPU (its CPU backend)"
        raise QuantizationError(f"quantization={kind} on {where} needs bitsandbytes >= {'.'.join(map(str, need))}, "
                                f"found {version}; run: pip install -U 'bitsandbytes>={'.'.join(map(str, need))}'")


def check_sharding(kind: str | None, strategy: str) -> None:
    """Raise QuantizationError for a base FSDP cannot shard: an 8-bit one, whose LLM.int8() row
    scales live as attributes on the packed parameter, which FSDP replaces by a plain one (the
    4-bit layers keep a copy of their state on the module, which bitsandbytes restores)."""
    if kind == "8bit" and strategy.startswith("fsdp"):
        raise QuantizationError(f"quantization=8bit cannot be sharded by strategy={strategy} (FSDP drops the int8 "
                                "row scales); use --set strategy=ddp or --set quantization=4bit")


def bnb_config(kind: str, compute_dtype: torch.dtype, storage: torch.dtype | None = None):
    """transformers' BitsAndBytesConfig: NF4 with double quantization (QLoRA's recipe), or LLM.int8().

    `storage` is the 4-bit weights' storage dtype: FSDP shards parameters of one dtype, so sharding
    a 4-bit base next to bf16 layers needs the packed weights stored as bf16 (QLoRA-style FSDP)."""
    from transformers import BitsAndBytesConfig

    # Output layers stay in floating point: the LM head as transformers keeps it by default, and
    # the fresh classification heads, which train with every method.
    skip = ["lm_head", "score", "classifier"]
    if kind == "4bit":
        extra = {"bnb_4bit_quant_storage": storage} if storage is not None else {}
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=skip, **extra)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def storage_dtype(kind: str | None, strategy: str | None) -> torch.dtype | None:
    """The 4-bit storage dtype a sharding strategy needs (bf16 under FSDP), else None (uint8)."""
    if kind == "4bit" and strategy and strategy.startswith("fsdp"):
        return torch.bfloat16
    return None


def keep_trainable_on_cpu(model: nn.Module) -> None:
    """Stop bitsandbytes' CPU backend from repacking 4-bit weights for inference.

    On a CPU with AVX512-BF16, Linear4bit rewrites its weight into a faster inference layout at
    the first forward without gradients (eval mode, e.g. a validation pass). After that the
    matmul runs a kernel without a backward, so no gradient reaches the layer's input and
    nothing before it trains. The layout is chosen per layer by this flag, so clearing it keeps
    every forward on the differentiable path."""
    for mod in model.modules():
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False


_PACKED = {"Params4bit": "4bit", "Int8Params": "8bit"}
_LAYERS = {"Linear4bit": "4bit", "Linear8bitLt": "8bit"}


def quantized_kind(layer: nn.Module) -> str | None:
    """"4bit" or "8bit" for a bitsandbytes linear layer, None for a plain one."""
    kind = _PACKED.get(type(getattr(layer, "weight", None)).__name__)
    if kind is not None:
        return kind
    # FSDP replaces the packed parameter by a plain (or DTensor) one of the storage dtype; the
    # layer itself is still bitsandbytes' and keeps the quantization state.
    for cls in type(layer).__mro__:
        if cls.__module__.startswith("bitsandbytes") and cls.__name__ in _LAYERS:
            return _LAYERS[cls.__name__]
    return None


def is_quantized(model: nn.Module) -> bool:
    """True when any layer of `model` holds bitsandbytes-packed weights."""
    return any(quantized_kind(m) for m in model.modules())


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's W0 (d_out x d_in) as a float tensor: the weight itself for a plain layer, a
    dequantized copy for a packed one, by bitsandbytes' own dequantization.

    Not PEFT's `dequantize_module_weight`: on the CPU it re-assigns an 8-bit layer's weight,
    which drops the row scales the layer's next forward needs."""
    kind = quantized_kind(layer)
    if kind is None:
        return layer.weight
    import bitsandbytes.functional as bnb_f

    w = layer.weight
    if kind == "4bit":
        # Under FSDP the gathered weight has lost its quant_state; the layer holds a copy.
        state = getattr(w, "quant_state", None) or layer.quant_state
        return bnb_f.dequantize_4bit(w.data, state).reshape(layer.out_features, layer.in_features)
    # An 8-bit layer keeps its row scales on the weight until its first forward moves them to its state.
    scales = w.SCB if getattr(w, "SCB", None) is not None else layer.state.SCB
    return bnb_f.int8_vectorwise_dequant(w.data, scales)
