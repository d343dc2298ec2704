"""Metrics: accuracy, binary F1, GSM8K exact match, BLEU, chrF++ and ROUGE-L.

All translation metrics are on a 0-100 scale: BLEU and chrF++ as sacrebleu reports them,
ROUGE-L as the mean sentence-level F-measure of rouge-score times 100, so the three read alike.

GSM8K answer extraction and matching follow lm-evaluation-harness's `gsm8k` task (v3.0):
  strict:   the first `#### <number>` in the completion;
  flexible: the last number-like span in the completion;
then both sides drop ",", "$", everything up to the last "#### ", and a final "." and are
lower-cased before an exact string comparison (so "18.0" and "18" differ, as they do there).
Nothing else is stripped: a reference that ends in whitespace matches no extracted number
there, and so here.
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
    return m.group(1).strip() if m else INVALID


def extract_flexible(text: str) -> str:
    matches = FLEXIBLE.findall(text)
    if not matches:
        return INVALID
    # findall gives one tuple per match; the harness keeps the first non-empty group.
    return next(g for g in matches[-1] if g).strip()


def normalize(s: str) -> str:
    """lm-eval's exact_match with its gsm8k settings: the ignored patterns removed, lower case."""
    for pattern in IGNORE:
        s = pattern.sub("", s)
    return s.lower()


def gold_answer(answer: str) -> str:
    """The reference number of a GSM8K answer ("... #### 1,234" -> "1234")."""
    return normalize(answer)


def gsm8k_scores(completions: list[str], answers: list[str]) -> dict[str, float]:
    golds = [gold_answer(a) for a in answers]
    strict = [normalize(extract_strict(c)) == g for c, g in zip(completions, golds)]
    flexible = [normalize(extract_flexible(c)) == g for c, g in zip(completions, golds)]
    n = max(len(golds), 1)
    return {"exact_match_strict": sum(strict) / n, "exact_match_flexible": sum(flexible) / n}


GSM8K_SIGNATURE = ("lm-eval gsm8k v3.0 matching|strict: first '#### (\\-?[0-9\\.\\,]+)'|"
                   "flexible: last '(-?[$0-9.,]{2,})|(-?[0-9]+)'|ignore: ',' '\\$' '(?s).*#### ' '\\.$'|"
                   "ignore_case|no strip")


# --- translation ------------------------------------------------------------------------------
#
# BLEU and chrF++ are sacrebleu's, with the tokenizer sacrebleu provides for the target language;
# their signatures (which say tokenizer, smoothing, version) go into every record, so a number can
# be compared with another only where the signatures agree. spBLEU (tokenize="flores200") is not
# offered: it needs the sentencepiece package and a model sacrebleu downloads on first use, and the
# project must score offline.

# Languages written without spaces between words: BLEU's default 13a tokenizer would treat a whole
# clause as one word, so one wrong character would cost the whole clause.
BLEU_TOKENIZERS = {"zho": "zh", "cmn": "zh", "yue": "zh", "jpn": "ja-mecab", "tha": "char"}


def _has_mecab() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("MeCab", "ipadic"))


def bleu_tokenizer(target: str | None) -> str:
    """sacrebleu's tokenizer for a FLORES-style target code ("zho_Hans" -> "zh"): "zh" for Chinese,
    "ja-mecab" for Japanese where MeCab is installed, else "char"; "char" for Thai; "13a" otherwise."""
    tok = BLEU_TOKENIZERS.get((target or "").split("_")[0], "13a")
    return "char" if tok == "ja-mecab" and not _has_mecab() else tok


def _bleu_metric(target: str | None):
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=bleu_tokenizer(target))


def _chrf_metric():
    from sacrebleu.metrics import CHRF

    return CHRF(word_order=2)  # chrF++: character n-grams plus word uni- and bigrams


def _corpus(metric, hyps: list[str], refs: list[str]) -> tuple[float, str]:
    """The corpus score and its signature (sacrebleu fills the signature in while scoring)."""
    score = float(metric.corpus_score(hyps, [refs]).score)
    return score, str(metric.get_signature())


def bleu(hyps: list[str], refs: list[str], target: str | None = None) -> float:
    return _corpus(_bleu_metric(target), hyps, refs)[0]


def chrf(hyps: list[str], refs: list[str]) -> float:
    """chrF++ (character n-grams plus word uni- and bigrams)."""
    return _corpus(_chrf_metric(), hyps, refs)[0]


class ScriptTokenizer:
    """ROUGE tokens for any script, for rouge-score's scorer.

    rouge-score's own tokenizer keeps only [a-z0-9] runs: German "für" becomes "f" "r", and every
    Arabic, Urdu, Hindi or Chinese sentence has no tokens at all. Here a token is a run of letters,
    combining marks and digits (marks belong to their letter: Urdu zer, Devanagari vowel signs),
    lower-cased; scripts written without spaces (Han, kana, Thai) give one token per character, as
    sacrebleu's "zh" and "char" tokenizers do. On ASCII text it gives rouge-score's tokens."""

    _token = None

    def tokenize(self, text: str) -> list[str]:
        if ScriptTokenizer._token is None:
            import regex  # the re module has no Unicode script or mark classes

            ScriptTokenizer._token = regex.compile(
                r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}]\p{M}*"
                r"|(?:(?![\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}])[\p{L}\p{M}\p{N}])+")
        return ScriptTokenizer._token.findall(text.lower())


def rouge_l(hyps: list[str], refs: list[str]) -> float:
    """Mean sentence-level ROUGE-L F-measure (rouge-score's) times 100, over ScriptTokenizer tokens."""
    from rouge_score import rouge_scorer

    if not refs:
        return 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=ScriptTokenizer())
    return 100.0 * sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)) / len(refs)


def translation_scores(hyps: list[str], refs: list[str], target: str | None = None) -> dict[str, float]:
    return score_translations(hyps, refs, target)[0]


def score_translations(hyps: list[str], refs: list[str], target: str | None = None
                       ) -> tuple[dict[str, float], dict[str, str]]:
    """Scores by metric, and what produced each: sacrebleu's signatures and rouge-score's settings."""
    from importlib.metadata import version

    bleu_score, bleu_sig = _corpus(_bleu_metric(target), hyps, refs)
    chrf_score, chrf_sig = _corpus(_chrf_metric(), hyps, refs)
    scores = {"bleu": bleu_score, "chrf": chrf_score, "rougeL": rouge_l(hyps, refs)}
    signatures = {"bleu": bleu_sig, "chrf": chrf_sig,
                  "rougeL": f"rouge-score:{version('rouge-score')}|rougeL F-measure, mean of sentences|"
                            "tok:script (letters, marks, digits; Han, kana, Thai per character)|lc|no-stem"}
    return scores, signatures
