"""Every method inside transformers' Trainer and TRL's SFTTrainer: hooks in hupeft's order, the
method's own optimiser, and saves that reload exactly or fail loudly."""

from __future__ import annotations

import pytest
import torch
from conftest import lm_batch
from datasets import Dataset
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from hupeft import integrations, methods, models
from hupeft.methods.base import MethodError

SEED = 1
PROBE = lm_batch(99, batch=2, seq=16)
ROWS = Dataset.from_list([{k: v[0].tolist() for k, v in lm_batch(s, batch=1, seq=12).items()} for s in range(8)])


def adapted_tiny(name: str, **options) -> methods.Adapted:
    init = [lm_batch(s) for s in range(2)] if name in methods.NEEDS_INIT_BATCHES else None
    return methods.apply(models.load("tiny-llama", seed=SEED).model, name, init_batches=init, **options)


def args(out, **kw) -> TrainingArguments:
    base = dict(output_dir=str(out), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-2, warmup_steps=0,
                report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, disable_tqdm=True)
    return TrainingArguments(**{**base, **kw})


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model.eval()(**PROBE).logits


def reloaded(folder) -> methods.Adapted:
    return methods.load(models.load("tiny-llama", seed=SEED).model, folder)


@pytest.mark.parametrize("name", ["full", "lora", "loraga", "boft", "urnn", "hybrid"])
def test_trainer_trains_each_method_and_its_save_reloads_exactly(name, tmp_path):
    adapted = adapted_tiny(name)
    before = logits(adapted.model)
    training = args(tmp_path, save_strategy="steps", save_steps=2)
    trainer = Trainer(model=adapted.model, args=training, train_dataset=ROWS,
                      **integrations.trainer_kwargs(adapted, training))
    trainer.train()
    trainer.save_model(tmp_path / "final")
    after = logits(adapted.model)
    assert (after - before).abs().max() > 1e-3  # it trained
    assert (logits(reloaded(tmp_path / "final").model) - after).abs().max() <= 1e-6
    reloaded(tmp_path / "checkpoint-2")  # every checkpoint is hupeft's adapter too
    if name not in ("full", "lora"):  # no raw keys a plain model would half-load at random
        with pytest.raises((OSError, ValueError), match="config.json"):
            AutoModelForCausalLM.from_pretrained(tmp_path / "final")


def test_hooks_run_where_hupefts_loop_runs_them(tmp_path):
    """before_step sees clipped gradients and the parameters before the step; after_step sees them after."""
    adapted = adapted_tiny("boft")
    seen = []
    param = next(iter(adapted.trainable_parameters().values()))

    def snapshot(what):
        grads = [p.grad for p in adapted.trainable_parameters().values() if p.grad is not None]
        norm = float(torch.stack([g.norm() for g in grads]).norm()) if grads else None
        seen.append((what, norm, param.detach().clone()))

    adapted.before_step = lambda: snapshot("before")
    adapted.after_step = lambda: snapshot("after")
    training = args(tmp_path, max_steps=1, max_grad_norm=1e-3)
    Trainer(model=adapted.model, args=training, train_dataset=ROWS,
            **integrations.trainer_kwargs(adapted, training)).train()
    assert [s[0] for s in seen] == ["before", "after"]
    assert seen[0][1] == pytest.approx(1e-3, rel=1e-3)  # clipped already
    assert not torch.equal(seen[0][2], seen[1][2])  # the step happened in between


@pytest.mark.parametrize("name", ["urnn", "hybrid"])
def test_a_method_with_its_own_optimiser_refuses_the_trainers(name, tmp_path):
    adapted = adapted_tiny(name)
    trainer = Trainer(model=adapted.model, args=args(tmp_path), train_dataset=ROWS,
                      callbacks=[integrations.HupeftCallback(adapted)])
    with pytest.raises(MethodError, match="trains with its own optimiser.*trainer_kwargs"):
        trainer.train()


def test_merged_saves_are_plain_models(tmp_path):
    adapted = adapted_tiny("hybrid")
    training = args(tmp_path)
    trainer = Trainer(model=adapted.model, args=training, train_dataset=ROWS,
                      **integrations.trainer_kwargs(adapted, training, save="merged"))
    trainer.train()
    trainer.save_model(tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert (logits(plain) - logits(adapted.model)).abs().max() <= 1e-5
    assert adapted.adapter_layers()  # the trained model itself stays unmerged


def char_tokenizer():
    """A transformers tokenizer for tiny-llama's 128 ids: one token per printable ASCII character."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{chr(c): c - 28 for c in range(32, 127)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def test_sft_trainer_moves_the_hybrids_lambda_and_saves_what_reloads_exactly(tmp_path):
    from trl import SFTConfig, SFTTrainer

    adapted = adapted_tiny("hybrid")
    start = dict(adapted.lambdas())
    texts = [f"the review {i} was {'good' if i % 2 else 'bad'}." for i in range(8)]
    config = SFTConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2,
                       warmup_steps=0, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, bf16=False,
                       gradient_checkpointing=False, max_length=32, disable_tqdm=True)
    trainer = SFTTrainer(model=adapted.model, args=config, train_dataset=Dataset.from_dict({"text": texts}),
                         processing_class=char_tokenizer(), **integrations.trainer_kwargs(adapted, config))
    trainer.train()
    assert all(len(h) == 4 for h in adapted.lambda_history.values())  # one update per optimiser step
    assert all(adapted.lambdas()[n] != start[n] for n in start)
    trainer.save_model(tmp_path / "out")
    back = reloaded(tmp_path / "out")
    assert back.lambdas() == adapted.lambdas()
    assert (logits(back.model) - logits(adapted.model)).abs().max() <= 1e-6
