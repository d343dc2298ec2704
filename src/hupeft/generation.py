"""Batched text generation for the generation benchmarks.

    from hupeft.generation import generate
    outs = generate(model, tokenizer, ["Question: ...\nAnswer:"], max_new_tokens=64)
    outs[0][0]  # the first completion of the first prompt, cut at the first stop sequence

Prompts are tokenised one by one with `tokenizer.encode` and left-padded by hand, so any
tokenizer with `encode`/`decode` works, including the tiny models' ByteTokenizer, which has no
padding of its own. Left padding keeps every prompt's last token in the last column, which is
where a decoder-only model continues from. A prompt longer than the model's positions minus
the generation budget loses its start (hupeft.data.keep_end), never its end, and is counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .data import Truncation, keep_end, special_head


class _StopOnStrings:
    """Stop a row once its new text contains a stop sequence; generation ends when all rows have."""

    def __init__(self, tokenizer, prompt_len: int, stop: Sequence[str], strip_leading: bool = False):
        self.tokenizer, self.prompt_len, self.stop = tokenizer, prompt_len, tuple(s for s in stop if s)
        self.strip_leading = strip_leading
        self.window = 8 + 2 * max((len(s) for s in self.stop), default=0)  # tokens: enough for any stop string

    def __call__(self, input_ids, scores, **kwargs):
        # Only the last few tokens need decoding (generate() keeps a row finished once it is),
        # unless leading whitespace is skipped: then the whole completion decides.
        tail = self.prompt_len if self.strip_leading else max(self.prompt_len, input_ids.shape[1] - self.window)
        texts = self.tokenizer.batch_decode(input_ids[:, tail:].tolist(), skip_special_tokens=True)
        done = [any(s in (t.lstrip() if self.strip_leading else t) for s in self.stop) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop sequence."""
    end = len(text)
    for s in stop:
        i = text.find(s) if s else -1
        if i != -1:
            end = min(end, i)
    return text[:end]


def fit_prompt(tokenizer, prompt: str, room: int | None, truncation: Truncation | None = None) -> list[int]:
    """The prompt's ids in at most `room` tokens (its special head and its end), counted when cut."""
    ids = tokenizer.encode(prompt, add_special_tokens=True)
    too_long = room is not None and len(ids) > room
    if truncation is not None:
        truncation.see(len(ids), room if room is not None else len(ids))
    return keep_end(ids, room, special_head(tokenizer, prompt, ids)) if too_long else ids


def _max_positions(model) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 8,
             stop: Sequence[str] = ("\n\n",), do_sample: bool = False, temperature: float | None = None,
             num_return_sequences: int = 1, progress: bool = True, strip_leading: bool = False,
             truncation: Truncation | None = None, synced: bool = False) -> list[list[str]]:
    """`num_return_sequences` completions per prompt (greedy unless do_sample), each cut at `stop`.

    strip_leading: drop leading whitespace before looking for stop sequences, so an answer that
    starts on a new line is not cut to nothing by a "\n" stop (not for code: indentation counts).
    truncation: counts the prompts that lost their start to fit the model.
    synced: the model is sharded over processes (FSDP), so every forward is a collective: a process
    whose rows are done keeps stepping until every process is (HF's synced_gpus)."""
    from transformers import StoppingCriteriaList
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad_id = 0 if pad_id is None else pad_id
    limit = _max_positions(model)
    room = max(1, limit - max_new_tokens) if limit else None
    was_training = model.training
    model.eval()
    outs: list[list[str]] = []
    sampling = {"do_sample": True, "temperature": temperature or 1.0, "top_k": 0, "top_p": 1.0} \
        if do_sample else {"do_sample": False}
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress, leave=False):
            encoded = [fit_prompt(tokenizer, p, room, truncation) for p in prompts[start:start + batch_size]]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(encoded), width), dtype=torch.long)
            for i, ids in enumerate(encoded):
                input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                mask[i, width - len(ids):] = 1
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                num_return_sequences=num_return_sequences, use_cache=True, pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id, synced_gpus=synced, **sampling,
                stopping_criteria=StoppingCriteriaList([_StopOnStrings(tokenizer, width, stop, strip_leading)]))
            texts = [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out.tolist()]
            texts = [cut(t.lstrip() if strip_leading else t, stop) for t in texts]
            # generate() returns the samples of one prompt next to each other.
            outs.extend(texts[i:i + num_return_sequences] for i in range(0, len(texts), num_return_sequences))
    finally:
        model.train(was_training)
    return outs
