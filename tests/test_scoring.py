"""Scorers: GSM8K answer extraction as lm-evaluation-harness does it, and the translation
metrics equal to sacrebleu's and rouge-score's own values."""

from __future__ import annotations

import pytest

from hupeft.benchmarks import scoring

GOLD = "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72"

# (completion, gold number, strict correct, flexible correct)
CASES = [
    ("She sold 72 clips.\n#### 72", "72", True, True),
    ("#### 1,234", "1234", True, True),
    ("The total is $1,234.", "1234", False, True),
    ("#### $72", "72", False, True),  # strict wants a digit right after "#### "
    ("#### -5", "-5", True, True),
    ("The temperature fell to -5 degrees.", "-5", False, True),
    ("#### 3.5", "3.5", True, True),
    ("It costs 3.50 dollars", "3.5", False, False),  # "3.50" != "3.5": strings, as in the harness
    ("#### 18.0", "18", False, False),
    ("The answer is 42.", "42", False, True),  # trailing period dropped
    ("#### 42.", "42", True, True),
    ("First 10, then 20, so 30 in all", "30", False, True),  # the last number wins
    ("30 apples and then 12", "30", False, False),
    ("#### 7\nThe answer is 8", "7", True, False),  # strict takes the first ####, flexible the last number
    ("no number here", "5", False, False),
    ("#### 1000000", "1,000,000", True, True),  # commas dropped on the gold side too
    ("So she has 5 left", "5", False, True),  # single digits match the second alternative
    ("-", "5", False, False),
]


@pytest.mark.parametrize("completion,gold,strict,flexible", CASES)
def test_gsm8k_extraction(completion, gold, strict, flexible):
    s = scoring.gsm8k_scores([completion], [f"some steps\n#### {gold}"])
    assert s == {"exact_match_strict": float(strict), "exact_match_flexible": float(flexible)}


def test_gsm8k_helpers():
    assert scoring.gold_answer(GOLD) == "72"
    assert scoring.extract_strict("x #### 5 and #### 6") == "5"
    assert scoring.extract_flexible("1 then 2,000.") == "2,000."
    assert scoring.extract_strict("nothing") == scoring.INVALID
    assert scoring.gsm8k_scores(["#### 72", "#### 71"], [GOLD, GOLD]) == {
        "exact_match_strict": 0.5, "exact_match_flexible": 0.5}


HYPS = ["The cat sat on the mat.", "Die Kinder kaufen heute Äpfel.", "It rains a lot here"]
REFS = ["The cat is sitting on the mat.", "Die Kinder kaufen die Äpfel heute.", "It is raining a lot here."]


def test_translation_metrics_match_the_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer

    assert scoring.bleu(HYPS, REFS) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert scoring.chrf(HYPS, REFS) == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS], word_order=2).score)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    want = 100 * sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(HYPS, REFS)) / len(REFS)
    assert scoring.rouge_l(HYPS, REFS) == pytest.approx(want)
    assert scoring.translation_scores(REFS, REFS) == pytest.approx({"bleu": 100.0, "chrf": 100.0, "rougeL": 100.0})
    assert 0 < scoring.bleu(HYPS, REFS) < 100


def test_rouge_non_latin_scripts_are_not_zero():
    ref, hyp = ["یہ ایک کتاب ہے"], ["یہ کتاب ہے"]
    assert scoring.rouge_l(hyp, ref, latin=True) == 0.0  # rouge-score's default tokenizer drops the script
    assert scoring.rouge_l(hyp, ref, latin=False) == pytest.approx(100 * 2 * 3 / (3 + 4))


def test_classification_metrics():
    assert scoring.accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == 0.75
    # tp=2, fp=1, fn=1 -> F1 = 4 / 6
    assert scoring.f1_binary([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(2 / 3)
    assert scoring.f1_binary([0, 0], [1, 0]) == 0.0
