"""XNLI: MNLI-style premise/hypothesis pairs in 15 languages (scored like GLUE MNLI).

The paper trains on a few examples per language (k = 32). XNLI's train split is machine-
translated MNLI, so the few-shot examples come from its human-translated `validation` split,
as many of each label as k allows (`stratify`: 11/11/10 for k = 32, hupeft.data.stratified), and
the model is scored on the `test` split, which no training example comes from.
"""

from __future__ import annotations

from . import synthetic
from .base import BenchmarkError, Offline
from .glue import ClassificationBenchmark

LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
OFFLINE_SIZE = 600  # generated pairs per language when no real data is at hand


class XNLI(ClassificationBenchmark):
    label_words = ["yes", "maybe", "no"]  # entailment, neutral, contradiction
    text_fields = ("premise", "hypothesis")
    # The instruction stays English in every language, as in the paper's cross-lingual prompts.
    template = "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis? Answer:"
    fields = 'rows {"premise": str, "hypothesis": str, "label": 0|1|2 (entailment, neutral, contradiction)}'
    hub_id = "facebook/xnli"
    hub_splits = {"train": "train", "validation": "validation", "test": "test"}
    splits = {"train": "validation", "eval": "test"}
    stratify = True  # training examples balanced over the labels

    def __init__(self, lang: str):
        if lang not in LANGUAGES:
            raise BenchmarkError(f"unknown XNLI language {lang!r}; use one of {', '.join(LANGUAGES)} (e.g. xnli/sw)")
        self.lang = lang
        self.name, self.folder, self.hub_config = f"xnli/{lang}", f"xnli/{lang}", lang
        self.display = f"XNLI ({lang})"

    def offline(self, split):
        if self.lang not in synthetic.NLI_LANGS:
            return None
        rows = [dict(r) for r in synthetic.nli_split(self.lang, split, OFFLINE_SIZE)]
        return Offline(rows, f"synthetic-nli-{self.lang}", True,
                       f"synthetic XNLI-style pairs in {self.lang} ({len(rows)} generated from templates and "
                       f"word lists, fixed seed), not the real XNLI")
