"""The benchmarks: data from a local folder, the hub or offline sources, prompts and scorers.

    from hupeft import benchmarks
    b = benchmarks.get("glue/sst2")
    data = b.load(split=b.splits["eval"], n=100, seed=0)
    prompt, target = b.format_causal(data.examples[0])
    scores = b.evaluate(model, tokenizer, data.examples)   # keys: b.metrics

Names: glue/sst2, glue/mnli, glue/qqp, glue/qnli, gsm8k (5-shot; gsm8k/chat: zero-shot in the chat
template), gsm-symbolic (generated GSM8K-style problems scored as GSM8K: a stand-in, not GSM8K),
mtbench (translation; see translation.py for why the name), humaneval, xnli/<lang>,
flores/<src>-<tgt> (FLORES codes), or the path of a task file of your own (path/to/task.yaml; see
tasks.py), which records and the book call by the name it gives.
"""

from __future__ import annotations

from .base import DATA_CHOICES, DATA_ENV, Benchmark, BenchmarkError, Scores, Split, few_shot
from .glue import GLUE
from .gsm8k import GSM8K, GSMSymbolic
from .humaneval import HumanEval
from .tasks import canonical, is_task_file
from .tasks import load as load_task
from .translation import LISTED, Flores, MTBench
from .xnli import LANGUAGES as XNLI_LANGUAGES
from .xnli import XNLI

__all__ = ["Benchmark", "BenchmarkError", "DATA_CHOICES", "DATA_ENV", "Scores", "Split", "canonical", "few_shot", "get",
           "names"]


def names() -> list[str]:
    """Every listed benchmark; get() also accepts any FLORES pair of known codes."""
    fixed = list(GLUE) + ["gsm8k", "gsm-symbolic", "mtbench", "humaneval"]
    xnli = [f"xnli/{lang}" for lang in XNLI_LANGUAGES]
    flores = [f"flores/eng_Latn-{c}" for c in LISTED] + [f"flores/{c}-eng_Latn" for c in LISTED]
    return fixed + xnli + flores


def get(name: str) -> Benchmark:
    if is_task_file(name):
        return load_task(name)
    if name in GLUE:
        return GLUE[name]()
    if name == "gsm8k":
        return GSM8K()
    if name == "gsm8k/chat":
        return GSM8K("chat")
    if name == "gsm-symbolic":
        return GSMSymbolic()
    if name == "mtbench":
        return MTBench()
    if name == "humaneval":
        return HumanEval()
    family, _, rest = name.partition("/")
    if family == "xnli" and rest:
        return XNLI(rest)
    if family == "flores" and rest:
        src, sep, tgt = rest.partition("-")
        if not sep:
            raise BenchmarkError(f"bad FLORES name {name!r}; write flores/<src>-<tgt>, e.g. flores/eng_Latn-deu_Latn")
        return Flores(src, tgt)
    fixed = list(GLUE) + ["gsm8k", "gsm-symbolic", "mtbench", "humaneval"]
    raise BenchmarkError(f"unknown benchmark {name!r}; use one of {', '.join(fixed)}, gsm8k/chat, "
                         "xnli/<lang>, flores/<src>-<tgt> or a task file (path/to/task.yaml)")
