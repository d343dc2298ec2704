"""LoRA through PEFT: y = W0 x + (alpha / r) B A x, B = 0 at start. The paper uses r=16, alpha=32.

PEFT owns this method, so save/load use PEFT's adapter format (adapter_model.safetensors +
adapter_config.json) next to our small `hupeft_adapter.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..quantization import dense_weight, is_quantized
from .base import Adapted, MethodError, MethodOptions, head_modules, resolve_targets


@dataclass
class LoraOptions(MethodOptions):
    r: int = 16
    """Rank of the update B A (the paper: 16)."""
    alpha: float = 32.0
    """Scale numerator: the update is multiplied by alpha / r (the paper: 32)."""
    dropout: float = 0.0
    """Dropout on the adapter's input (PEFT's lora_dropout)."""

    def validate(self) -> None:
        if self.r <= 0:
            raise MethodError(f"LoRA rank r must be > 0, got {self.r}; pass r=16 (the paper's) or another positive int")
        if self.alpha <= 0:
            raise MethodError(f"LoRA alpha must be > 0, got {self.alpha}")


OPTIONS = LoraOptions


def peft_config(model: nn.Module, options: LoraOptions):
    from peft import LoraConfig

    return LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                      target_modules=list(resolve_targets(model, options.target_modules)),
                      modules_to_save=list(head_modules(model)) or None)


class PeftAdapted(Adapted):
    """A PEFT-wrapped model; `self.model` is the PeftModel the training loop calls."""

    def adapter_state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model)

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, state)

    def adapter_layers(self):
        return {}

    def num_total(self) -> int:
        return sum(p.numel() for p in self.model.base_model.model.parameters())

    def save(self, path, state=None):
        # PEFT picks the adapter's tensors out of `state` (a sharded model's gathered state dict) when given.
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # The class's method: hupeft.integrations routes the instance's save_pretrained here.
        type(self.model).save_pretrained(self.model, path, state_dict=state)
        self.write_meta(path, "peft")
        return path

    @torch.no_grad()
    def movement(self) -> dict:
        from peft.tuners.lora import LoraLayer

        out = {}
        for name, mod in self.model.named_modules():
            if isinstance(mod, LoraLayer) and "default" in mod.lora_A:
                w0 = dense_weight(mod.get_base_layer()).float()
                out[name] = float(mod.get_delta_weight("default").float().norm() / w0.norm())
        return {"weight_change": out}

    def merge(self) -> nn.Module:
        """PEFT's merge; on a quantized base PEFT dequantizes, adds B A and quantizes again, so the
        merged model's outputs differ from the adapted one's by that rounding: a warning says so."""
        if is_quantized(self.model):
            import warnings

            warnings.warn("merging LoRA into a quantized base: PEFT re-quantizes the merged weights, so outputs "
                          "change by the quantization's rounding; keep the adapter separate to avoid it", stacklevel=2)
        self.model = self.model.merge_and_unload()
        return self.model


def apply(model: nn.Module, options: LoraOptions, init_batches=None, loss_fn=None) -> Adapted:
    from peft import get_peft_model

    return PeftAdapted(get_peft_model(model, peft_config(model, options)), "lora", options)


def load(model: nn.Module, path: Path, meta: dict) -> Adapted:
    from peft import PeftModel

    opts = LoraOptions.from_dict(meta["options"])
    return PeftAdapted(PeftModel.from_pretrained(model, str(path), is_trainable=True), "lora", opts)
