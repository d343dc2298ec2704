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


# (completion, the whole reference answer, strict correct, flexible correct). lm-eval compares the
# reference as it is after its ignore patterns, whitespace included: a reference ending in a space
# or a newline matches no extracted number (the regexes never capture whitespace).
RAW_REFERENCE_CASES = [
    ("#### 72", "steps\n#### 72 ", False, False),
    ("#### 72", "steps\n#### 72\n", False, False),
    ("The answer is 72", "#### 72\n", False, False),
    ("#### 72", "#### 72 \t", False, False),
    ("#### 72 ", "#### 72", True, True),  # the completion's whitespace is never captured
    ("#### 72\n\n", "#### 72", True, True),
    ("#### 72.", "#### 72.", True, True),  # the final "." goes on both sides
    ("#### 5,000", "#### 5000", True, True),
    ("#### 0.5", "#### .5", False, False),
    ("The price is $5.", "#### 5", False, True),
    ("Total: 12 dollars.\n", "#### 12", False, True),
    ("He has 3 apples and 4 pears, 7 in all.", "#### 7", False, True),
    ("#### 1.000", "#### 1", False, False),
    ("#### 15\n#### 16", "#### 16", False, True),
    ("answer: -3", "#### -3", False, True),
    ("#### - 3", "#### -3", False, False),
    ("We get 2.5. So 5", "#### 5", False, True),
    ("#### 72</s>", "#### 72", True, True),
    ("", "#### 1", False, False),
    ("#### abc", "#### 1", False, False),
    ("#### 1,2", "#### 12", True, True),
    ("It is 1,234,567.", "#### 1234567", False, True),
    ("Steps 5 + 3 = 8\n#### 72", "Steps 5 + 3 = 8\n#### 72", True, True),
    ("#### 72", "#### #### 72", True, True),  # everything up to the last "#### " goes
]


@pytest.mark.parametrize("completion,gold,strict,flexible", CASES)
def test_gsm8k_extraction(completion, gold, strict, flexible):
    s = scoring.gsm8k_scores([completion], [f"some steps\n#### {gold}"])
    assert s == {"exact_match_strict": float(strict), "exact_match_flexible": float(flexible)}


@pytest.mark.parametrize("completion,reference,strict,flexible", RAW_REFERENCE_CASES)
def test_gsm8k_matching_keeps_whitespace_as_lm_eval_does(completion, reference, strict, flexible):
    assert len(CASES) + len(RAW_REFERENCE_CASES) >= 30
    s = scoring.gsm8k_scores([completion], [reference])
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


# ROUGE-L F-measure is 2 * LCS / (hypothesis tokens + reference tokens); each case gives the
# tokens, the longest common subsequence counted by hand, and so the exact score.
ROUGE_CASES = [
    # German: umlauts and sharp s stay inside their words ("für" is one token, not "f" "r").
    ("Die Grüße der Tor für Mäller", "Die Größe der Tür für Müller",
     ["die", "größe", "der", "tür", "für", "müller"], 3, 6, 6),  # die der für
    # Hausa: hooked letters and the glottal apostrophe (U+02BC, a letter) belong to the word.
    ("Ƙasar tana da ʼyan arziƙi sosai", "Ƙasar tana da ɗimbin ʼyan arziƙi",
     ["ƙasar", "tana", "da", "ɗimbin", "ʼyan", "arziƙi"], 5, 6, 6),  # ƙasar tana da ʼyan arziƙi
    # Urdu: Arabic script, with a zer (a combining mark) kept inside کِتاب.
    ("یہ کِتاب اچھی ہے", "یہ ایک اچھی کِتاب ہے",
     ["یہ", "ایک", "اچھی", "کِتاب", "ہے"], 3, 4, 5),  # یہ اچھی ہے (or یہ کِتاب ہے)
    # Chinese: one token per character; the full stop is no token.
    ("我今天不高兴。", "我今天很高兴。", ["我", "今", "天", "很", "高", "兴"], 5, 6, 6),  # 我今天高兴
]


@pytest.mark.parametrize("hyp,ref,ref_tokens,lcs,n_hyp,n_ref", ROUGE_CASES)
def test_rouge_l_keeps_every_scripts_letters(hyp, ref, ref_tokens, lcs, n_hyp, n_ref):
    tok = scoring.ScriptTokenizer()
    assert tok.tokenize(ref) == ref_tokens and len(tok.tokenize(hyp)) == n_hyp and len(ref_tokens) == n_ref
    assert scoring.rouge_l([hyp], [ref]) == pytest.approx(100 * 2 * lcs / (n_hyp + n_ref))
    assert scoring.rouge_l([ref], [ref]) == pytest.approx(100.0)


def test_rouge_l_german_values():
    # By hand: 3 of 6 tokens in common -> 50.0. rouge-score's own tokenizer would read
    # "die gr e der t r f r m ller" against "die gr e der tor f r m ller": LCS 8 of 10 and 9 -> 84.2.
    from rouge_score import rouge_scorer

    hyp, ref = "Die Grüße der Tor für Mäller", "Die Größe der Tür für Müller"
    assert scoring.rouge_l([hyp], [ref]) == pytest.approx(50.0)
    ascii_only = rouge_scorer.RougeScorer(["rougeL"]).score(ref, hyp)["rougeL"].fmeasure
    assert 100 * ascii_only == pytest.approx(100 * 16 / 19)  # the score this tokenizer replaces


# Four Chinese sentences of 26 characters; each hypothesis drops its first character. With the
# "zh" tokenizer (one token per character) every hypothesis n-gram is in its reference, so BLEU is
# the brevity penalty alone: exp(1 - 104 / 100) = 96.08. The "13a" tokenizer sees each sentence as a
# handful of long "words" and all of them differ, so it scores far lower.
ZH_REFS = ["今天早上我和朋友一起去公园散步然后在湖边喝了一杯热茶",
           "这个城市的冬天非常寒冷所以大家都喜欢待在温暖的房间里",
           "我的妹妹正在学习弹钢琴她每天晚上都会认真练习一个小时",
           "图书馆里有很多关于历史和科学的书籍学生经常来这里读书"]


def test_bleu_on_chinese_uses_the_zh_tokenizer():
    import math

    assert [len(r) for r in ZH_REFS] == [26] * 4
    hyps = [r[1:] for r in ZH_REFS]
    assert scoring.bleu_tokenizer("zho_Hans") == "zh"
    assert scoring.bleu(hyps, ZH_REFS, target="zho_Hans") == pytest.approx(100 * math.exp(1 - 104 / 100))
    assert scoring.bleu(hyps, ZH_REFS, target="deu_Latn") == 0.0  # 13a: each sentence is one token, all differ
    scores, sigs = scoring.score_translations(hyps, ZH_REFS, target="zho_Hans")
    assert scores["bleu"] == pytest.approx(96.0789, abs=1e-4)
    assert "tok:zh" in sigs["bleu"] and "nw:2" in sigs["chrf"] and "tok:script" in sigs["rougeL"]


@pytest.mark.parametrize("target,tok", [("deu_Latn", "13a"), ("urd_Arab", "13a"), ("zho_Hans", "zh"),
                                        ("tha_Thai", "char"), (None, "13a")])
def test_bleu_tokenizer_per_target(target, tok):
    assert scoring.bleu_tokenizer(target) == tok


def test_japanese_falls_back_to_characters_without_mecab(monkeypatch):
    monkeypatch.setattr(scoring, "_has_mecab", lambda: False)
    assert scoring.bleu_tokenizer("jpn_Jpan") == "char"
    monkeypatch.setattr(scoring, "_has_mecab", lambda: True)
    assert scoring.bleu_tokenizer("jpn_Jpan") == "ja-mecab"


def test_classification_metrics():
    assert scoring.accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == 0.75
    # tp=2, fp=1, fn=1 -> F1 = 4 / 6
    assert scoring.f1_binary([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(2 / 3)
    assert scoring.f1_binary([0, 0], [1, 0]) == 0.0
