"""Which dtypes a run keeps its weights in and computes in: bf16 autocast over fp32 trainable weights.

    weights = precision.weights_dtype("bf16")               # the base as loaded: torch.bfloat16
    mixed = precision.mixed_precision("auto", "bf16", cuda)  # "bf16": autocast, as accelerate runs it
    precision.keep_fp32_master(adapted.model)               # after methods.apply, before the optimiser

A frozen base may stay in bf16 (or be quantized): it only has to be read. Whatever trains is kept
in fp32, its "master" copy: AdamW's updates are about lr in size, and at lr 1e-5 most of them are
smaller than half a bf16 spacing of the weight they are added to, so a bf16 weight would round
them away (full fine-tuning of a bf16 model then changes only a small fraction of its entries).
The matmuls still run in bf16 under autocast, so the cost is the fp32 copy, not the compute.
"""

from __future__ import annotations

import torch
from torch import nn

WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MIXED = ("auto", "no", "bf16", "fp16")


def weights_dtype(setting: str) -> torch.dtype | None:
    """The dtype to load the base in; None for "auto" (models.load's default: bf16 for a hub model
    on a GPU, fp32 otherwise)."""
    return None if setting == "auto" else WEIGHT_DTYPES[setting]


def mixed_precision(setting: str, weights: str, cuda: bool) -> str:
    """accelerate's mixed_precision for a run: "auto" is bf16 autocast on a GPU or over bf16 weights
    (where fp32 trainable parameters meet bf16 activations), and none on the CPU with fp32 weights."""
    if setting != "auto":
        return setting
    return "bf16" if cuda or weights == "bf16" else "no"


def keep_fp32_master(model: nn.Module) -> int:
    """Cast every trainable floating-point parameter to fp32 in place (the Parameter objects stay the
    same); return how many were cast. Full fine-tuning: the whole model becomes the fp32 master copy;
    an adapter method: its adapter and any fresh head, while the frozen base keeps its dtype."""
    cast = 0
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
            cast += 1
    return cast
