"""Translation benchmarks: "mtbench" (English -> German, WMT14) and FLORES pairs.

About the name "mtbench": the real MT-Bench is a judged, multi-turn chat benchmark (an LLM
grades answers to 80 two-turn questions). It is NOT that here. The paper uses the name for
machine translation scored by BLEU and ROUGE-L, and this benchmark follows the paper's usage:
English -> German on WMT14 newstest2014 (FLORES-style parallel data), scored by BLEU, chrF++
and ROUGE-L (all 0-100; BLEU with sacrebleu's tokenizer for the target language, ROUGE-L with
tokens of any script; see hupeft.benchmarks.scoring).

FLORES trains on its `dev` split and is scored on `devtest` (the paper's few-shot setting: a
few training sentences per language, never drawn from the split scored). WMT14's training
split is not a few-shot set, so "mtbench" trains on a seeded part of newstest2014 disjoint from
the part it scores.
"""

from __future__ import annotations

from . import scoring, synthetic
from ..distributed import EvalShard
from .base import Benchmark, BenchmarkError, Offline, Scores

LANGUAGES = {
    "eng_Latn": "English", "deu_Latn": "German", "fra_Latn": "French", "spa_Latn": "Spanish",
    "swh_Latn": "Swahili", "arb_Arab": "Arabic", "urd_Arab": "Urdu", "zho_Hans": "Chinese",
    "hau_Latn": "Hausa", "hin_Deva": "Hindi", "por_Latn": "Portuguese", "ita_Latn": "Italian",
    "rus_Cyrl": "Russian", "jpn_Jpan": "Japanese", "kor_Hang": "Korean", "tur_Latn": "Turkish",
    "vie_Latn": "Vietnamese", "ben_Beng": "Bengali", "yor_Latn": "Yoruba", "amh_Ethi": "Amharic",
    "tha_Thai": "Thai", "ell_Grek": "Greek", "bul_Cyrl": "Bulgarian",
}
# The pairs names() lists: English into each language the multilingual study uses, and back.
LISTED = ("deu_Latn", "fra_Latn", "spa_Latn", "swh_Latn", "arb_Arab", "urd_Arab", "zho_Hans", "hau_Latn")


class Translation(Benchmark):
    kind = "generation"
    metrics = ["bleu", "chrf", "rougeL"]
    stop = ("\n",)
    default_max_new_tokens = 128
    src: str
    tgt: str

    def source_text(self, example: dict) -> str:
        raise NotImplementedError

    def target_text(self, example: dict) -> str:
        raise NotImplementedError

    def format_causal(self, example):
        s, t = LANGUAGES[self.src], LANGUAGES[self.tgt]
        return f"Translate {s} to {t}:\n{self.source_text(example)}\n{t}:", f" {self.target_text(example)}"

    def evaluate(self, model, tokenizer, examples, *, task="causal-lm", batch_size=8, max_new_tokens=None,
                 n_samples=None, temperature=None, progress=True, truncation=None, shard=None):
        return generate_and_score(self, model, tokenizer, examples, [self.target_text(e) for e in examples],
                                  lambda hyps, refs: scoring.score_translations(hyps, refs, target=self.tgt),
                                  batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress,
                                  truncation=truncation, shard=shard)


def generate_and_score(bench, model, tokenizer, examples, refs, score, *, batch_size=8, max_new_tokens=None,
                       progress=True, truncation=None, shard=None):
    """Greedy generations for `bench`'s prompts (each process its share), scored on the main
    process by `score(hyps, refs) -> (scores, signatures)`; None on the other processes."""
    from hupeft.generation import generate

    prompts = [bench.format_causal(e)[0] for e in examples]
    budget, shard = max_new_tokens or bench.default_max_new_tokens, shard or EvalShard()
    outs = shard.map(lambda part, cut: generate(model, tokenizer, part, budget, batch_size=batch_size,
                                                stop=bench.stop, progress=progress, strip_leading=True,
                                                truncation=cut, synced=shard.synced), prompts, truncation)
    if outs is None:  # another process of a launch: the main one scores
        return None
    hyps = [o[0].strip() for o in outs]
    scores, signatures = score(hyps, refs)
    rows = [{"prompt": p, "generation": h, "reference": r} for p, h, r in zip(prompts, hyps, refs)]
    return Scores(scores, signatures, rows)


class MTBench(Translation):
    name, folder, display = "mtbench", "wmt14-de-en", "WMT14 de-en (English -> German)"
    src, tgt = "eng_Latn", "deu_Latn"
    hub_id, hub_config = "wmt/wmt14", "de-en"
    hub_splits = {"train": "train", "validation": "validation", "test": "test"}
    splits = {"train": None, "eval": "test"}
    fields = 'rows {"translation": {"de": str, "en": str}}'

    def source_text(self, example):
        return example["translation"]["en"]

    def target_text(self, example):
        return example["translation"]["de"]

    def offline(self, split):
        part = "devtest" if split == "test" else "dev"
        rows = [{"translation": {"de": r["deu_Latn"], "en": r["eng_Latn"]}} for r in synthetic.parallel()[part]]
        return Offline(rows, "synthetic-parallel-en-de", True,
                       f"synthetic English-German sentence pairs ({len(rows)} from templates and a small "
                       "dictionary, fixed seed), not WMT14")


class Flores(Translation):
    folder = "flores"
    hub_id = "openlanguagedata/flores_plus"
    hub_splits = {"dev": "dev", "devtest": "devtest"}
    splits = {"train": "dev", "eval": "devtest"}

    def __init__(self, src: str, tgt: str):
        for code in (src, tgt):
            if code not in LANGUAGES:
                raise BenchmarkError(f"unknown FLORES language {code!r}; use codes like eng_Latn, one of "
                                     f"{', '.join(LANGUAGES)} (e.g. flores/eng_Latn-deu_Latn)")
        if src == tgt:
            raise BenchmarkError(f"flores/{src}-{tgt} translates a language into itself; pick two different codes")
        self.src, self.tgt = src, tgt
        self.name = f"flores/{src}-{tgt}"
        self.display = f"FLORES {LANGUAGES[src]} -> {LANGUAGES[tgt]}"
        self.fields = f'rows {{"id": ..., "{src}": str, "{tgt}": str}} (one field per FLORES code)'

    def source_text(self, example):
        return example[self.src]

    def target_text(self, example):
        return example[self.tgt]

    def load(self, split, n=None, seed=0, data_dir=None, data="any"):
        data = super().load(split, n=n, seed=seed, data_dir=data_dir, data=data)
        missing = [c for c in (self.src, self.tgt) if data.examples and c not in data.examples[0]]
        if missing:
            have = [k for k in data.examples[0] if k in LANGUAGES]
            raise BenchmarkError(f"{self.name}: {data.source} has no {', '.join(missing)} (it has {', '.join(have)}); "
                                 "add those fields or pick a pair it has")
        return data

    def from_hub(self, split):
        from datasets import load_dataset

        # flores_plus has one config per language; pair them up by sentence id.
        per_lang = {c: load_dataset(self.hub_id, c, split=split).to_list() for c in (self.src, self.tgt)}
        tgt = {r["id"]: r["text"] for r in per_lang[self.tgt]}
        return [{"id": r["id"], self.src: r["text"], self.tgt: tgt[r["id"]]} for r in per_lang[self.src]
                if r["id"] in tgt]

    def offline(self, split):
        if self.src not in synthetic.PARALLEL_LANGS or self.tgt not in synthetic.PARALLEL_LANGS:
            return None
        rows = [dict(r) for r in synthetic.parallel()[split]]
        return Offline(rows, "synthetic-parallel", True,
                       f"synthetic parallel sentences in {', '.join(synthetic.PARALLEL_LANGS)} ({len(rows)} from "
                       "templates and per-language dictionaries, fixed seed), not FLORES")
