"""Full fine-tuning: every parameter trains. The reference for time and memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..quantization import is_quantized
from .base import Adapted, MethodError, MethodOptions


@dataclass
class FullOptions(MethodOptions):
    """Full FT has no options of its own (target_modules is ignored)."""


OPTIONS = FullOptions


class FullAdapted(Adapted):
    def adapter_state(self) -> dict[str, torch.Tensor]:
        return dict(self.model.state_dict())

    def merge(self) -> nn.Module:
        return self.model

    def save(self, path, state=None):
        # The whole model is the "adapter": save_pretrained writes safetensors and config (from
        # `state`, a sharded model's gathered state dict, when given).
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # The class's method: hupeft.integrations routes the instance's save_pretrained here.
        type(self.model).save_pretrained(self.model, path, safe_serialization=True, state_dict=state)
        self.write_meta(path, "hupeft")
        return path


def apply(model: nn.Module, options: FullOptions, init_batches=None, loss_fn=None) -> Adapted:
    if is_quantized(model):  # packed integer weights have no gradient to follow
        raise MethodError("full fine-tuning cannot train a quantized base; load it unquantized or pick an adapter "
                          "method (lora, loraga, boft, urnn, hybrid)")
    for p in model.parameters():
        p.requires_grad_(True)
    return FullAdapted(model, "full", options)


def load(model: nn.Module, path: Path, meta: dict) -> Adapted:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(Path(path).glob("model*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (lm_head = embed_tokens) are saved once; anything else missing is an error.
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    real_missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if real_missing or unexpected:
        raise ValueError(f"checkpoint at {path} does not fit the model: missing {real_missing[:3]}, unexpected {unexpected[:3]}")
    return apply(model, FullOptions.from_dict(meta["options"]))

