"""GSM8K: grade-school maths word problems, scored by exact match of the final number.

Evaluation follows lm-evaluation-harness's `gsm8k` task (v3.0), the form base models are
reported in: each question is preceded by 5 solved train questions, drawn as lm-eval draws
them (one random.Random(1234) for the whole run, 5 fresh draws per question, in the order the
questions come), as "Question: ...\nAnswer: <worked solution>" blocks joined by blank lines;
greedy decoding stops at "Question:", "</s>" or "<|im_end|>"; strict and flexible matching as in
hupeft.benchmarks.scoring. "gsm8k/chat" is the zero-shot form for instruction-tuned models: the
same "Question: ...\nAnswer:" as one user turn of the tokenizer's chat template (what lm-eval
does with --apply_chat_template and no few-shot examples).

GSM8K itself has no offline source. "gsm-symbolic" is a benchmark of its own, prompted and
scored as GSM8K is: GSM-Symbolic problems generated offline by reasoning-gym from GSM-Symbolic's
templates (GSM8K-style problems with worked solutions ending "#### N"). Its data is marked
synthetic and `stands_in_for` GSM8K, and its name keeps it out of the paper's GSM8K column.
"""

from __future__ import annotations

import functools
import random
import re

from . import scoring
from ..distributed import EvalShard
from .base import Benchmark, BenchmarkError, Offline, Scores

OFFLINE_SIZE = {"train": 400, "test": 200}
OFFLINE_SEED = {"train": 1234, "test": 5678}  # different seeds: the two splits differ
N_SHOT = 5
FEWSHOT_SEED = 1234  # lm-eval's default few-shot seed
STOP = ("Question:", "</s>", "<|im_end|>")
STANDS_IN_FOR = "GSM8K"
SUFFIX = re.compile(r"\s*Give the result as your final answer\. Do not include units\.\s*$")


@functools.lru_cache(maxsize=None)
def gsm_symbolic(split: str) -> tuple:
    """The offline split, generated once per reasoning-gym version and kept in the hupeft cache:
    importing reasoning-gym and generating 600 problems costs every run cell about 2.5 s."""
    import json
    from importlib.metadata import version

    from ..atomic import atomic_write_text
    from ..models import cache_dir

    key = f"gsm_symbolic-{version('reasoning-gym')}-{split}-{OFFLINE_SIZE[split]}-{OFFLINE_SEED[split]}.json"
    cached = cache_dir() / "data" / key
    if cached.exists():
        return tuple(json.loads(cached.read_text()))
    rows = _generate(split)
    atomic_write_text(cached, json.dumps(rows))  # makes the folder too
    return tuple(rows)


def _generate(split: str) -> list[dict]:
    import reasoning_gym

    data = reasoning_gym.create_dataset("gsm_symbolic", size=OFFLINE_SIZE[split], seed=OFFLINE_SEED[split])
    rows = []
    for item in data:
        # The worked solution sometimes ends "#### 36.0" for answer "36": end it with the answer itself.
        steps = re.sub(r"\n?#### .*$", "", item["metadata"].get("answer_cot", "").strip()).strip()
        answer = f"{steps}\n#### {item['answer']}" if steps else f"#### {item['answer']}"
        rows.append({"question": SUFFIX.sub("", item["question"]), "answer": answer})
    return rows


class GSM8K(Benchmark):
    name, kind, folder, display = "gsm8k", "generation", "gsm8k", "GSM8K"
    metrics = ["exact_match_strict", "exact_match_flexible"]
    hub_id, hub_config = "openai/gsm8k", "main"
    hub_splits = {"train": "train", "test": "test"}
    splits = {"train": "train", "eval": "test"}
    fields = 'rows {"question": str, "answer": "<solution> #### <number>"}'
    stop = STOP
    default_max_new_tokens = 256  # lm-eval's max_gen_toks
    _data_dir = None

    def __init__(self, style: str = "5-shot"):
        if style not in ("5-shot", "chat"):
            raise BenchmarkError(f"unknown GSM8K prompt style {style!r}; use gsm8k (5-shot) or gsm8k/chat")
        self.style = style
        if style == "chat":
            self.name, self.display = "gsm8k/chat", "GSM8K (zero-shot, chat template)"

    def format_causal(self, example):
        return f"Question: {example['question']}\nAnswer:", f" {example['answer']}"

    _data = "any"
    elsewhere = "; gsm-symbolic (generated GSM8K-style problems, a benchmark of its own) runs offline"

    def load(self, split, n=None, seed=0, data_dir=None, data="any"):
        # The few-shot examples come from the train split of the source the questions came from.
        self._data_dir, self._data = data_dir, data
        return super().load(split, n=n, seed=seed, data_dir=data_dir, data=data)

    def prompts(self, examples, tokenizer=None) -> list[str]:
        if self.style == "chat":
            return [chat_prompt(tokenizer, self.format_causal(e)[0]) for e in examples]
        shots = self.load(self.splits["train"], data_dir=self._data_dir, data=self._data).examples
        return few_shot_prompts(examples, shots, self.format_causal)

    def evaluate(self, model, tokenizer, examples, *, task="causal-lm", batch_size=8, max_new_tokens=None,
                 n_samples=None, temperature=None, progress=True, truncation=None, shard=None):
        from hupeft.generation import generate

        prompts = self.prompts(examples, tokenizer)
        budget = max_new_tokens or self.default_max_new_tokens
        shard = shard or EvalShard()
        outs = shard.map(lambda part, cut: generate(model, tokenizer, part, budget, batch_size=batch_size,
                                                    stop=self.stop, progress=progress, truncation=cut,
                                                    synced=shard.synced), prompts, truncation)
        if outs is None:  # another process of a launch: the main one scores
            return None
        outs = [o[0] for o in outs]
        scores = scoring.gsm8k_scores(outs, [e["answer"] for e in examples])
        prompting = (f"{N_SHOT}-shot from train, random.Random({FEWSHOT_SEED})" if self.style == "5-shot"
                     else "0-shot, chat template")
        sig = f"{prompting}|greedy|max_new_tokens:{budget}|until: {', '.join(self.stop)}|{scoring.GSM8K_SIGNATURE}"
        rows = [{"prompt": p, "generation": o, "reference": e["answer"], "strict": scoring.extract_strict(o),
                 "flexible": scoring.extract_flexible(o)} for p, o, e in zip(prompts, outs, examples)]
        return Scores(scores, {m: sig for m in self.metrics}, rows)


class GSMSymbolic(GSM8K):
    """GSM-Symbolic problems generated by reasoning-gym, prompted and scored as GSM8K: a stand-in
    for GSM8K where GSM8K cannot be had, under its own name."""

    name, folder, display = "gsm-symbolic", "gsm-symbolic", "GSM-Symbolic (generated; a GSM8K stand-in)"
    hub_id, hub_config = "", None  # generated here; the hub's apple/GSM-Symbolic has other fields and splits
    stands_in_for = STANDS_IN_FOR
    elsewhere = ""

    def __init__(self):
        super().__init__("5-shot")

    def offline(self, split):
        rows = [dict(r) for r in gsm_symbolic(split)]
        return Offline(rows, "reasoning-gym/gsm_symbolic", True,
                       f"GSM-Symbolic problems generated by reasoning-gym ({len(rows)}, seed {OFFLINE_SEED[split]}), "
                       "standing in for GSM8K; not GSM8K")


def few_shot_prompts(examples: list[dict], shots: list[dict], fmt) -> list[str]:
    """lm-eval's 5-shot contexts: one Random(1234) draws 5 train examples for each question in turn
    (its ContextSampler), each shot "<question text> <answer>", all joined by blank lines."""
    if len(shots) < N_SHOT:
        raise BenchmarkError(f"gsm8k: {N_SHOT}-shot prompts need {N_SHOT} train examples, the train split has "
                             f"{len(shots)}; add train rows or use gsm8k/chat")
    rnd = random.Random(FEWSHOT_SEED)
    prompts = []
    for e in examples:
        context = "".join(f"{q}{a}\n\n" for q, a in map(fmt, rnd.sample(shots, N_SHOT)))
        prompts.append(context + fmt(e)[0])
    return prompts


def chat_prompt(tokenizer, text: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise BenchmarkError("gsm8k/chat needs a tokenizer with a chat template (an instruction-tuned model); "
                             "use gsm8k for base models")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)
