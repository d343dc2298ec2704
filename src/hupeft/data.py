"""Turn benchmark examples into token batches for training and the validation loss.

Causal LM: prompt + target (+ EOS), loss on target tokens only (prompt and padding get label
-100). Sequence classification: text (and text pair) with an integer label.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def load_splits(bench, cfg) -> Splits:
    """Train, validation-loss and eval examples, disjoint, from the benchmark's sources.

    Benchmarks without a train split (HumanEval) are split by seed into disjoint train / eval
    parts, and the record says so."""
    eval_split = bench.load(split=bench.splits["eval"], seed=cfg.seed, data_dir=cfg.data_dir)
    sources = {"eval": eval_split.source}
    pool = list(eval_split.examples)
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(pool), generator=g).tolist()
    pool = [pool[i] for i in order]
    if bench.splits.get("train"):
        train_split = bench.load(split=bench.splits["train"], seed=cfg.seed, data_dir=cfg.data_dir)
        sources["train"] = train_split.source
        train_pool = list(train_split.examples)
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
        train = train[: cfg.n_train]
    if cfg.n_eval is not None:
        evals = evals[: cfg.n_eval]
    if not train:
        raise ValueError(f"{bench.name}: no training examples left; raise n_train or provide a train split")
    return Splits(train, val, evals, sources, bool(eval_split.synthetic), eval_split.description)


def encode(bench, tokenizer, examples: list[dict], task: str, max_len: int) -> list[dict]:
    out = []
    for ex in examples:
        if task == "seq-cls":
            text, pair, label = bench.format_seqcls(ex)
            enc = tokenizer(text, pair, truncation=True, max_length=max_len)
            out.append({"input_ids": list(enc["input_ids"]), "labels": int(label)})
            continue
        prompt, target = bench.format_causal(ex)
        p_ids = tokenizer.encode(prompt, add_special_tokens=True)
        t_ids = tokenizer.encode(target, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids = (p_ids + t_ids)[:max_len]
        labels = ([IGNORE] * len(p_ids) + t_ids)[:max_len]
        if all(l == IGNORE for l in labels):  # prompt alone fills max_len: keep the target's end
            ids = (p_ids[: max(1, max_len - len(t_ids))] + t_ids)[:max_len]
            labels = ([IGNORE] * (len(ids) - len(t_ids)) + t_ids)[:max_len]
        out.append({"input_ids": ids, "labels": labels})
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
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(encoded: list[dict], batch_size: int, pad_id: int, task: str, generator=None) -> list[dict]:
    order = (torch.randperm(len(encoded), generator=generator).tolist() if generator is not None
             else list(range(len(encoded))))
    return [collate([encoded[i] for i in order[s: s + batch_size]], pad_id, task)
            for s in range(0, len(order), batch_size)]


def count_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum())
