"""Turn benchmark examples into token batches for training and the validation loss.

Causal LM: prompt + target (+ EOS), loss on target tokens only (prompt and padding get label
-100). Sequence classification: text (and text pair) with an integer label.

Truncation is never silent: a causal-LM example longer than max_len loses the start of its
prompt, never the prompt's end or any of its target; one whose target leaves no room for the
prompt's end is refused with the max_len that fits; and every cut is counted for the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

IGNORE = -100


@dataclass
class Splits:
    train: list[dict]
    val: list[dict]
    eval: list[dict]
    sources: dict[str, str]
    synthetic: bool
    description: str
    stands_in_for: str | None = None  # the benchmark this data takes the place of (gsm-symbolic: GSM8K)
    fingerprints: dict[str, str] = field(default_factory=dict)  # part -> content hash of its whole split
    tried: dict[str, list[str]] = field(default_factory=dict)  # part -> sources that failed before

    def provenance(self, requested: str) -> dict:
        """What a record keeps about its data: asked for, used, from where, with which content."""
        return {"requested": requested, "used": "synthetic" if self.synthetic else "real",
                "sources": self.sources, "fingerprints": self.fingerprints,
                "tried": {k: v for k, v in self.tried.items() if v}, "synthetic": self.synthetic,
                "stands_in_for": self.stands_in_for, "description": self.description,
                "n_train": len(self.train), "n_val": len(self.val), "n_eval": len(self.eval)}


def stratified(rows: list[dict], n: int, label) -> list[dict]:
    """n of `rows` spread over their labels as evenly as n allows (sizes differ by at most one; the
    labels that sort first get the extra ones), each label's rows taken in the given order."""
    by_label: dict = {}
    for r in rows:
        by_label.setdefault(label(r), []).append(r)
    out, i = [], 0
    while len(out) < n and any(i < len(v) for v in by_label.values()):
        for key in sorted(by_label):
            if i < len(by_label[key]) and len(out) < n:
                out.append(by_label[key][i])
        i += 1
    return out


def load_splits(bench, cfg) -> Splits:
    """Train, validation-loss and eval examples, disjoint, from the sources `cfg.data` allows.

    Where the benchmark names a train split, training and validation examples come from it (for
    XNLI, its validation split, `bench.stratify`: balanced over labels), and the whole eval split
    is scored unless n_eval says fewer. Benchmarks without one (HumanEval, mtbench) are split by
    seed into disjoint train / eval parts, and the record says so."""
    from .benchmarks.base import fingerprint, say  # hupeft.benchmarks imports this module: not at the top

    requested = getattr(cfg, "data", "any")
    load = lambda split: bench.load(split=split, seed=cfg.seed, data_dir=cfg.data_dir, data=requested)  # noqa: E731
    eval_split = load(bench.splits["eval"])
    sources, prints = {"eval": eval_split.source}, {"eval": eval_split.fingerprint}
    tried = {"eval": list(eval_split.tried)}
    pool = list(eval_split.examples)
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(pool), generator=g).tolist()
    pool = [pool[i] for i in order]
    synthetic = bool(eval_split.synthetic)
    if bench.splits.get("train"):
        train_split = load(bench.splits["train"])
        sources["train"], prints["train"] = train_split.source, train_split.fingerprint
        tried["train"] = list(train_split.tried)
        if bool(train_split.synthetic) != synthetic:  # never real scores from generated training data, or back
            kinds = {True: "generated", False: "real"}
            raise ValueError(f"{bench.name}: the {bench.splits['eval']} split is {kinds[synthetic]} "
                             f"({eval_split.source}) but the {bench.splits['train']} split is "
                             f"{kinds[bool(train_split.synthetic)]} ({train_split.source}); "
                             "provide both from one source")
        train_pool = list(train_split.examples)
        if cfg.train_rows is not None:  # a prefix, in the split's own order: any source gives the same rows
            if len(train_pool) < cfg.train_rows:
                raise ValueError(f"{bench.name}: train_rows={cfg.train_rows} but {train_split.source} has only "
                                 f"{len(train_pool)} rows; lower train_rows or use a source with the whole split")
            train_pool = train_pool[: cfg.train_rows]
            prints["train"] = fingerprint(train_pool)
        perm = torch.randperm(len(train_pool), generator=g).tolist()
        train_pool = [train_pool[i] for i in perm]
        n_val = min(cfg.n_val, max(1, len(train_pool) // 5))
        val, train = train_pool[:n_val], train_pool[n_val:]
        evals = pool
    else:
        n_eval = cfg.n_eval or len(pool) // 2
        evals, rest = pool[:n_eval], pool[n_eval:]
        n_val = min(cfg.n_val, max(1, len(rest) // 5))
        val, train = rest[:n_val], rest[n_val:]
        sources["train"] = f"{eval_split.source} (disjoint part of the eval split)"
    if cfg.n_train is not None:
        train = (stratified(train, cfg.n_train, bench.label) if getattr(bench, "stratify", False)
                 else train[: cfg.n_train])
    if cfg.n_eval is not None:
        evals = evals[: cfg.n_eval]
    if getattr(cfg, "score_on", "eval") == "holdout":  # choosing settings: never the scored split
        evals = list(val)
        sources["eval"] = f"holdout: the {len(val)} validation rows carved from {sources['train']}"
        prints["eval"] = fingerprint(val)
        description = f"{len(val)} held-out rows of the {bench.splits['train']} split (not the scored split)"
    else:
        description = eval_split.description
    if not train:
        raise ValueError(f"{bench.name}: no training examples left; raise n_train or provide a train split")
    if requested == "any" and synthetic and any(tried.values()):
        say(f"{bench.name}: no real data ({'; '.join(dict.fromkeys(t for v in tried.values() for t in v))}); "
                 "using generated data, as data=any allows")
    return Splits(train, val, evals, sources, synthetic, description, eval_split.stands_in_for,
                  prints, tried)


# --- token budgets: truncation is never silent ------------------------------------------------

MIN_PROMPT_TAIL = 16
"""Tokens of a prompt's end that a cut example keeps at least: the question's last words and the
cue to answer ("...does she have?\\nAnswer:"). Fewer, and the target is learnt without its question."""


class TooLong(ValueError):
    """An example that cannot fit its token limit without losing its target; one line naming the fix."""


@dataclass
class Truncation:
    """Examples of one part (train, val, eval) cut to a token limit, and the longest one before."""

    count: int = 0
    longest: int = 0

    def see(self, n_tokens: int, limit: int) -> bool:
        """Note one example of `n_tokens`; True when it has to be cut to `limit`."""
        self.longest = max(self.longest, n_tokens)
        cut = n_tokens > limit
        self.count += int(cut)
        return cut


class Encoded(list):
    """Encoded examples, with how many of them were cut to max_len (`truncation`)."""

    truncation: Truncation


def special_head(tokenizer, text: str, ids: list[int]) -> int:
    """How many special tokens (BOS) the tokenizer put before `text` in `ids`: a left cut keeps them."""
    plain = tokenizer.encode(text, add_special_tokens=False)
    extra = len(ids) - len(plain)
    return extra if extra > 0 and ids[extra:] == plain else 0


def keep_end(ids: list[int], room: int, head: int = 0) -> list[int]:
    """`ids` in at most `room` tokens: the first `head` (special) tokens, then as much of the end
    as fits. The end of a prompt holds the question and the cue to answer; its start is context."""
    if len(ids) <= room:
        return list(ids)
    head = min(head, max(room - 1, 0))
    return list(ids[:head]) + list(ids[len(ids) - (room - head):])


@dataclass
class Pieces:
    """One causal-LM example in tokens: prompt (with `head` special tokens in front) and target + EOS."""

    prompt: list[int]
    head: int
    target: list[int]

    @property
    def needed(self) -> int:
        """The fewest tokens this example can be cut to: its whole target and its prompt's end."""
        return len(self.target) + min(len(self.prompt), self.head + MIN_PROMPT_TAIL)


def tokenize_causal(bench, tokenizer, examples: list[dict]) -> list[Pieces]:
    out = []
    for ex in examples:
        prompt, target = bench.format_causal(ex)
        p_ids = tokenizer.encode(prompt, add_special_tokens=True)
        t_ids = tokenizer.encode(target, add_special_tokens=False) + [tokenizer.eos_token_id]
        out.append(Pieces(p_ids, special_head(tokenizer, prompt, p_ids), t_ids))
    return out


def seqcls_lengths(bench, tokenizer, examples: list[dict]) -> list[int]:
    """Untruncated token counts of sequence-classification inputs (text and pair)."""
    lengths = []
    for ex in examples:
        text, pair, _ = bench.format_seqcls(ex)
        lengths.append(len(tokenizer(text, pair, truncation=False)["input_ids"]))
    return lengths


def suggest_max_len(longest: int) -> int:
    """A max_len that cuts nothing: the longest example, rounded up to a multiple of 16."""
    return -(-longest // 16) * 16


def check_causal_fits(name: str, pieces: list[Pieces], max_len: int, positions: int | None = None) -> None:
    """TooLong unless every example keeps its whole target and its prompt's end in max_len
    (the suggested max_len cuts nothing, within the model's `positions` when given)."""
    need = max((p.needed for p in pieces), default=0)
    if max_len >= need:
        return
    target = max(len(p.target) for p in pieces)
    fix = suggest_max_len(max(len(p.prompt) + len(p.target) for p in pieces))
    fix = min(fix, positions) if positions else fix
    raise TooLong(f"max_len={max_len} is shorter than the longest target ({target} tokens) of {name} and "
                  f"the end of its question; raise it, e.g. --set max_len={fix}")


def check_seqcls_fits(name: str, lengths: list[int], max_len: int, positions: int | None = None) -> None:
    """TooLong when max_len leaves an example fewer than MIN_PROMPT_TAIL tokens to classify."""
    need = max((min(n, MIN_PROMPT_TAIL) for n in lengths), default=0)
    if max_len < need:
        fix = suggest_max_len(max(lengths))
        fix = min(fix, positions) if positions else fix
        raise TooLong(f"max_len={max_len} leaves too little of {name}'s text to classify; raise it, "
                      f"e.g. --set max_len={fix}")


def encode(bench, tokenizer, examples: list[dict], task: str, max_len: int) -> Encoded:
    """Token ids and labels within max_len. A causal-LM prompt that does not fit loses its start
    (its end and the whole target stay); an example whose target leaves no room for its
    prompt's end is refused (TooLong). `.truncation` counts the examples cut."""
    out, stats = Encoded(), Truncation()
    out.truncation = stats
    if task == "seq-cls":
        lengths = seqcls_lengths(bench, tokenizer, examples)
        check_seqcls_fits(bench.name, lengths, max_len)
        for ex, n in zip(examples, lengths):
            stats.see(n, max_len)
            text, pair, label = bench.format_seqcls(ex)
            enc = tokenizer(text, pair, truncation=True, max_length=max_len)
            out.append({"input_ids": list(enc["input_ids"]), "labels": int(label)})
        return out
    pieces = tokenize_causal(bench, tokenizer, examples)
    check_causal_fits(bench.name, pieces, max_len)
    for p in pieces:
        prompt = p.prompt
        if stats.see(len(p.prompt) + len(p.target), max_len):
            prompt = keep_end(p.prompt, max_len - len(p.target), p.head)
        out.append({"input_ids": prompt + p.target, "labels": [IGNORE] * len(prompt) + p.target})
    return out


def collate(items: list[dict], pad_id: int, task: str) -> dict:
    """Right-pad a list of encoded examples into tensors."""
    width = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, x in enumerate(items):
        n = len(x["input_ids"])
        ids[i, :n] = torch.tensor(x["input_ids"])
        mask[i, :n] = 1
    if task == "seq-cls":
        labels = torch.tensor([x["labels"] for x in items], dtype=torch.long)
    else:
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        for i, x in enumerate(items):
            labels[i, : len(x["labels"])] = torch.tensor(x["labels"])
        if bool((labels == IGNORE).all()):  # the mean loss over no tokens is 0/0 = NaN
            raise ValueError("a batch has no target tokens to learn from; every example needs a non-empty target")
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(encoded: list[dict], batch_size: int, pad_id: int, task: str, generator=None) -> list[dict]:
    order = (torch.randperm(len(encoded), generator=generator).tolist() if generator is not None
             else list(range(len(encoded))))
    return [collate([encoded[i] for i in order[s: s + batch_size]], pad_id, task)
            for s in range(0, len(order), batch_size)]


def count_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum())
