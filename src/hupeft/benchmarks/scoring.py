"""Metrics: accuracy, binary F1, GSM8K exact match, BLEU, chrF++ and ROUGE-L.

All translation metrics are on a 0-100 scale: BLEU and chrF++ as sacrebleu reports them,
ROUGE-L as the mean sentence-level F-measure of rouge-score times 100, so the three read alike.

GSM8K answer extraction and matching follow lm-evaluation-harness's `gsm8k` task:
  strict:   the first `#### <number>` in the completion;
  flexible: the last number-like span in the completion;
then both sides drop ",", "$", everything up to the last "#### ", and a final "." before an
exact string comparison (so "18.0" and "18" differ, as they do there).
"""

from __future__ import annotations

import re

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = [re.compile(p) for p in (",", r"\$", r"(?s).*#### ", r"\.$")]
INVALID = "[invalid]"


def accuracy(preds, labels) -> float:
    preds, labels = list(preds), list(labels)
    return sum(int(p == y) for p, y in zip(preds, labels)) / len(labels) if labels else 0.0


def f1_binary(preds, labels, positive: int = 1) -> float:
    tp = sum(1 for p, y in zip(preds, labels) if p == positive and y == positive)
    fp = sum(1 for p, y in zip(preds, labels) if p == positive and y != positive)
    fn = sum(1 for p, y in zip(preds, labels) if p != positive and y == positive)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


# --- GSM8K ----------------------------------------------------------------------------------


def extract_strict(text: str) -> str:
    m = STRICT.search(text)
    return m.group(1) if m else INVALID


def extract_flexible(text: str) -> str:
    matches = FLEXIBLE.findall(text)
    if not matches:
        return INVALID
    # findall gives one tuple per match; the harness keeps the first non-empty group.
    return next(g for g in matches[-1] if g)


def normalize(s: str) -> str:
    for pattern in IGNORE:
        s = pattern.sub("", s)
    return s.strip().lower()


def gold_answer(answer: str) -> str:
    """The reference number of a GSM8K answer ("... #### 1,234" -> "1234")."""
    return normalize(answer)


def gsm8k_scores(completions: list[str], answers: list[str]) -> dict[str, float]:
    golds = [gold_answer(a) for a in answers]
    strict = [normalize(extract_strict(c)) == g for c, g in zip(completions, golds)]
    flexible = [normalize(extract_flexible(c)) == g for c, g in zip(completions, golds)]
    n = max(len(golds), 1)
    return {"exact_match_strict": sum(strict) / n, "exact_match_flexible": sum(flexible) / n}


# --- translation ------------------------------------------------------------------------------


def bleu(hyps: list[str], refs: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)


def chrf(hyps: list[str], refs: list[str]) -> float:
    """chrF++ (character n-grams plus word uni- and bigrams)."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score)


class UnicodeTokenizer:
    """Lower-cased word tokens of any script; rouge-score's default keeps only [a-z0-9], which
    would score every Arabic, Urdu or Chinese sentence 0."""

    _word = re.compile(r"\w+", re.UNICODE)

    def tokenize(self, text: str) -> list[str]:
        return self._word.findall(text.lower())


def rouge_l(hyps: list[str], refs: list[str], latin: bool = True) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=None if latin else UnicodeTokenizer())
    if not refs:
        return 0.0
    return 100.0 * sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)) / len(refs)


def translation_scores(hyps: list[str], refs: list[str], latin: bool = True) -> dict[str, float]:
    return {"bleu": bleu(hyps, refs), "chrf": chrf(hyps, refs), "rougeL": rouge_l(hyps, refs, latin)}
