"""A hupeft method inside transformers' `Trainer` and TRL's trainers (`SFTTrainer`, ...).

    from hupeft import integrations, methods
    adapted = methods.apply(model, "hybrid", init_batches=batches)
    trainer = SFTTrainer(model=adapted.model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         **integrations.trainer_kwargs(adapted, args))
    trainer.train()
    trainer.save_model("out")          # hupeft's adapter: methods.load(fresh_base, "out")

What the method needs from a trainer, and where transformers' Trainer gives it:
- its hooks in hupeft's own order (hupeft.experiment): gradients clipped, `before_step()` (the
  hybrid's lambda update reads them), `optimizer.step()`, `after_step()`. The Trainer calls
  `on_pre_optimizer_step` after clipping and `on_optimizer_step` after the step.
- its own optimiser where it has one: the uRNN's manifold step (`UnitaryAdamW`), the hybrid's two
  learning rates. `trainer_kwargs` passes `adapted.optimizer(lr)` to the Trainer, whose schedule then
  scales every group alike; a run that reaches the first step with another optimiser stops there.
- its own save: `trainer.save_model` and every checkpoint end in the model's `save_pretrained`,
  which would write the raw state dict (`q_proj.base.weight`, `rotation.theta`); a plain model
  loaded from that silently drops the adapter's keys and runs those layers at random. The callback
  routes `save_pretrained` to `Adapted.save` (or, with save="merged", to a merged plain model), so
  a save is either what `methods.load` (or `from_pretrained`) restores exactly, or an error.
"""

from __future__ import annotations

import copy
from pathlib import Path

from transformers import TrainerCallback

from .export import save_plain
from .methods.base import Adapted, MethodError

SAVES = ("adapter", "merged")


def trainer_kwargs(adapted: Adapted, args, save: str = "adapter") -> dict:
    """`optimizers` and `callbacks` for a Trainer (or a TRL trainer) built on `adapted.model`: the
    method's own optimiser at the arguments' learning rate and weight decay, and `HupeftCallback`."""
    optimizer = adapted.optimizer(args.learning_rate, weight_decay=args.weight_decay)
    return {"optimizers": (optimizer, None), "callbacks": [HupeftCallback(adapted, save=save, optimizer=optimizer)]}


def has_own_optimizer(adapted: Adapted) -> bool:
    """True where the method builds something other than one AdamW group (the uRNN, the hybrid)."""
    kind = type(adapted)
    return kind.optimizer is not Adapted.optimizer or kind.param_groups is not Adapted.param_groups


class HupeftCallback(TrainerCallback):
    """Calls the method's hooks where hupeft's loop does, checks the optimiser, and makes the
    model's `save_pretrained` write hupeft's adapter (save="adapter") or a merged model ("merged").

    optimizer: the one `adapted.optimizer(...)` built and the Trainer was given (`trainer_kwargs`
    passes it); a method with its own optimiser refuses to train under any other."""

    def __init__(self, adapted: Adapted, save: str = "adapter", optimizer=None):
        if save not in SAVES:
            raise MethodError(f"save must be one of {SAVES}, not {save!r}")
        self.adapted, self.save, self.optimizer = adapted, save, optimizer
        route_saves(adapted, save)

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        given = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the one it was given
        if has_own_optimizer(self.adapted) and (self.optimizer is None or given is not self.optimizer):
            raise MethodError(f"{self.adapted.method} trains with its own optimiser; build the Trainer with "
                              "**integrations.trainer_kwargs(adapted, args) (or optimizers=(adapted.optimizer(lr), "
                              "None) and HupeftCallback(adapted, optimizer=that optimiser))")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.adapted.before_step()  # gradients are clipped by now, as in hupeft's loop

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.adapted.after_step()


def route_saves(adapted: Adapted, save: str = "adapter") -> None:
    """Make `adapted.model.save_pretrained` (what Trainer.save_model and its checkpoints call) write
    through the method. An instance attribute, so the class's method stays reachable (Adapted.save
    of full and lora calls it) and nothing else about the model changes."""

    def save_pretrained(save_directory, *args, state_dict=None, is_main_process=True, **kwargs):
        if not is_main_process:
            return
        if save == "merged":
            save_merged(adapted, save_directory)
        else:
            adapted.save(save_directory, state=state_dict)

    adapted.model.save_pretrained = save_pretrained


def save_merged(adapted: Adapted, folder: str | Path) -> Path:
    """A plain transformers model of the method folded into a copy (training goes on unmerged)."""
    clone = copy.copy(adapted)
    clone.model = copy.deepcopy(adapted.model)
    model = clone.merge()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_plain(model, None, folder)
    return folder
