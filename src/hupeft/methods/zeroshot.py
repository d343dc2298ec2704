"""Zero-shot: the base model untrained, scored exactly as the trained ones. The floor every
method is compared against (with chance): a method that does not beat it has learned nothing.

Nothing trains, so a run of it takes no optimiser step whatever `epochs` says (hupeft.config
sets epochs to 0 for it) and saves only its `hupeft_adapter.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .base import ADAPTER_CONFIG, Adapted, MethodOptions, atomic_write


@dataclass
class ZeroShotOptions(MethodOptions):
    """Zero-shot has no options of its own (target_modules is ignored)."""


OPTIONS = ZeroShotOptions


class ZeroShotAdapted(Adapted):
    def adapter_state(self):
        return {}

    def merge(self) -> nn.Module:
        return self.model

    def save(self, path, state=None) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"method": self.method, "options": self.options.to_dict(), "format": "hupeft"}
        atomic_write(path / ADAPTER_CONFIG, lambda f: Path(f).write_text(json.dumps(meta, indent=2)))
        return path


def apply(model: nn.Module, options: ZeroShotOptions, init_batches=None, loss_fn=None) -> Adapted:
    for p in model.parameters():
        p.requires_grad_(False)
    return ZeroShotAdapted(model, "zero-shot", options)


def load(model: nn.Module, path: Path, meta: dict) -> Adapted:
    return apply(model, ZeroShotOptions.from_dict(meta["options"]))
