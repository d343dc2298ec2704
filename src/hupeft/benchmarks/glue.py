"""GLUE SST-2, QNLI, MNLI and QQP, and the classification scorer they share with XNLI.

With a causal LM a prediction is the label word whose tokens have the highest summed
log-likelihood after the prompt (no free generation, so every answer is a valid label); with
a sequence-classification head it is the argmax of the logits.
"""

from __future__ import annotations

import torch

from . import scoring, synthetic
from ..data import keep_end, special_head
from ..distributed import EvalShard
from .base import Benchmark, BenchmarkError, Offline, Scores, model_device, model_max_positions


class ClassificationBenchmark(Benchmark):
    kind = "classification"
    metrics = ["accuracy"]
    text_fields: tuple[str, ...] = ()
    template = ""

    def label(self, example: dict) -> int:
        return int(example["label"])

    def format_causal(self, example):
        prompt = self.template.format(**{k: example[k] for k in self.text_fields})
        return prompt, " " + self.label_words[self.label(example)]

    def format_seqcls(self, example):
        texts = [example[k] for k in self.text_fields]
        return texts[0], (texts[1] if len(texts) > 1 else None), self.label(example)

    def evaluate(self, model, tokenizer, examples, *, task="causal-lm", batch_size=8, max_new_tokens=None,
                 n_samples=None, temperature=None, progress=True, truncation=None, shard=None):
        examples = [e for e in examples if self.label(e) >= 0]  # GLUE test rows carry label -1
        if not examples:
            raise BenchmarkError(f"{self.name}: no labelled examples to evaluate; pass a split with labels")
        predict = predict_seqcls if task == "seq-cls" else predict_causal
        preds = (shard or EvalShard()).map(
            lambda part, cut: predict(self, model, tokenizer, part, batch_size, progress, cut), examples, truncation)
        if preds is None:  # another process of a launch: the main one scores
            return None
        labels = [self.label(e) for e in examples]
        out = {"accuracy": scoring.accuracy(preds, labels)}
        if "f1" in self.metrics:
            out["f1"] = scoring.f1_binary(preds, labels, positive=1)
        if task == "seq-cls":
            how = "classification head: argmax of the logits"
        else:
            words = " / ".join(repr(" " + w) for w in self.label_words)
            how = f"zero-shot prompt, label word of highest summed log-likelihood after it ({words})"
        sig = {"accuracy": f"{how}|{len(examples)} labelled examples"}
        if "f1" in out:
            sig["f1"] = f"{how}|F1 of label 1 ({self.label_words[1]!r})"
        return Scores(out, sig)


@torch.no_grad()
def predict_causal(bench, model, tokenizer, examples, batch_size, progress, truncation=None,
                   fast: bool = True) -> list[int]:
    """Label ids by the summed log-likelihood of each label word after the prompt."""
    from tqdm.auto import tqdm

    device, limit = model_device(model), model_max_positions(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    words = [tokenizer.encode(" " + w, add_special_tokens=False) for w in bench.label_words]
    was_training = model.training
    model.eval()
    if fast and all(len(w) == 1 for w in words):
        # Every label is one token: one row per example, and the label tokens' logits at the
        # prompt's last position decide (the same argmax as summed log-likelihoods, k x cheaper).
        preds = _predict_single_token(bench, model, tokenizer, examples, batch_size, progress,
                                      [w[0] for w in words], device, limit, pad, truncation)
        model.train(was_training)
        return preds
    preds = []
    for start in tqdm(range(0, len(examples), batch_size), desc=f"score {bench.name}", disable=not progress,
                      leave=False):
        rows = []  # (prompt ids, label ids), one row per example x label word
        for ex in examples[start:start + batch_size]:
            prompt = bench.format_causal(ex)[0]
            p = tokenizer.encode(prompt, add_special_tokens=True)
            n = len(p) + max(len(w) for w in words)
            if truncation is not None:
                truncation.see(n, limit)
            head = special_head(tokenizer, prompt, p) if n > limit else 0
            for w in words:  # a prompt too long for the model loses its start, never its end
                rows.append((keep_end(p, max(1, limit - len(w)), head), w))
        width = max(len(p) + len(w) for p, w in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, w) in enumerate(rows):
            ids[i, :len(p) + len(w)] = torch.tensor(p + w)
            mask[i, :len(p) + len(w)] = 1
        # Kept in the model's dtype: only the label positions are cast, not batch x width x vocab.
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        scores = []
        for i, (p, w) in enumerate(rows):
            # Position t predicts token t+1: the label tokens are predicted from len(p)-1 on.
            pos = torch.arange(len(p) - 1, len(p) + len(w) - 1, device=logits.device)
            logp = torch.log_softmax(logits[i, pos].float(), dim=-1)
            scores.append(logp.gather(1, torch.tensor(w, device=logits.device)[:, None]).sum().item())
        k = len(words)
        preds.extend(max(range(k), key=lambda j: scores[r + j]) for r in range(0, len(scores), k))
    model.train(was_training)
    return preds


def _predict_single_token(bench, model, tokenizer, examples, batch_size, progress, label_ids, device, limit,
                          pad, truncation) -> list[int]:
    from tqdm.auto import tqdm

    preds = []
    for start in tqdm(range(0, len(examples), batch_size), desc=f"score {bench.name}", disable=not progress,
                      leave=False):
        prompts = []
        for ex in examples[start:start + batch_size]:
            prompt = bench.format_causal(ex)[0]
            p = tokenizer.encode(prompt, add_special_tokens=True)
            if truncation is not None:
                truncation.see(len(p) + 1, limit)
            head = special_head(tokenizer, prompt, p) if len(p) + 1 > limit else 0
            prompts.append(keep_end(p, limit - 1, head))  # as the general path: the prompt's end stays
        ids, mask = right_pad(prompts, pad)
        last = torch.tensor([len(p) - 1 for p in prompts], device=device)
        at = _last_logits(model, ids.to(device), mask.to(device), last)
        preds.extend(at[:, label_ids].float().argmax(-1).tolist())
    return preds


def _last_logits(model, ids, mask, last):
    """Logits at each row's position `last` (batch x vocab). Where the model takes
    `logits_to_keep` (transformers' causal LMs), only those positions go through the LM head:
    for SmolLM2 that head is a fifth of the model's compute and its full output is
    batch x width x 49152 floats."""
    try:
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=last[:, None]).logits
        if out.shape[1] == 1:
            return out[:, 0]
    except TypeError:  # a model whose forward has no such argument
        pass
    logits = model(input_ids=ids, attention_mask=mask).logits
    return logits[torch.arange(len(last), device=logits.device), last.to(logits.device)]


def right_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as one right-padded batch and its attention mask."""
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return ids, mask


@torch.no_grad()
def predict_seqcls(bench, model, tokenizer, examples, batch_size, progress, truncation=None) -> list[int]:
    from tqdm.auto import tqdm

    device, limit = model_device(model), min(512, model_max_positions(model, 512))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    preds = []
    for start in tqdm(range(0, len(examples), batch_size), desc=f"score {bench.name}", disable=not progress,
                      leave=False):
        # Only input_ids, as in training (hupeft.data.encode), so both see the same inputs.
        encoded = []
        for ex in examples[start:start + batch_size]:
            text, pair, _ = bench.format_seqcls(ex)
            if truncation is not None:
                truncation.see(len(tokenizer(text, pair, truncation=False)["input_ids"]), limit)
            encoded.append(list(tokenizer(text, pair, truncation=True, max_length=limit)["input_ids"]))
        ids, mask = right_pad(encoded, pad)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        preds.extend(logits.argmax(-1).tolist())
    model.train(was_training)
    return preds


class Glue(ClassificationBenchmark):
    hub_id = "nyu-mll/glue"
    hub_splits = {"train": "train", "validation": "validation"}
    splits = {"train": "train", "eval": "validation"}

    def __init__(self, task: str):
        self.task = task
        self.name, self.folder, self.hub_config = f"glue/{task}", task, task
        self.display = f"GLUE {task.upper() if task != 'sst2' else 'SST-2'}"

    def offline(self, split):
        rows = synthetic.glue(self.task, "train" if split == "train" else "eval")
        return Offline(rows, f"synthetic-{self.task}", True,
                       f"synthetic {self.display}-style data ({len(rows)} generated rows, fixed seed; "
                       f"{synthetic.GLUE_WHAT[self.task]}), not the real {self.display}")


class SST2(Glue):
    label_words = ["negative", "positive"]
    text_fields = ("sentence",)
    template = "Review: {sentence}\nSentiment:"
    fields = 'rows {"sentence": str, "label": 0|1 (1 = positive)}'

    def __init__(self):
        super().__init__("sst2")


class QNLI(Glue):
    label_words = ["yes", "no"]  # 0 = entailment: the sentence answers the question
    text_fields = ("question", "sentence")
    template = "Question: {question}\nSentence: {sentence}\nDoes the sentence answer the question? Answer:"
    fields = 'rows {"question": str, "sentence": str, "label": 0|1 (0 = entailment)}'

    def __init__(self):
        super().__init__("qnli")


class MNLI(Glue):
    label_words = ["yes", "maybe", "no"]  # entailment, neutral, contradiction
    text_fields = ("premise", "hypothesis")
    template = "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis? Answer:"
    fields = 'rows {"premise": str, "hypothesis": str, "label": 0|1|2 (entailment, neutral, contradiction)}'
    hub_splits = {"train": "train", "validation_matched": "validation_matched",
                  "validation_mismatched": "validation_mismatched"}
    splits = {"train": "train", "eval": "validation_matched"}

    def __init__(self):
        super().__init__("mnli")


class QQP(Glue):
    label_words = ["no", "yes"]  # 1 = duplicate
    metrics = ["accuracy", "f1"]
    text_fields = ("question1", "question2")
    template = "Question 1: {question1}\nQuestion 2: {question2}\nDo both questions ask the same thing? Answer:"
    fields = 'rows {"question1": str, "question2": str, "label": 0|1 (1 = duplicate)}'

    def __init__(self):
        super().__init__("qqp")


GLUE = {"glue/sst2": SST2, "glue/mnli": MNLI, "glue/qqp": QQP, "glue/qnli": QNLI}
