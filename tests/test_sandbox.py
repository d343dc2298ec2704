"""The sandbox that runs HumanEval completions: real HumanEval results, pass@k, hostile programs."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import time
from pathlib import Path

import pytest

from hupeft import sandbox
from hupeft.sandbox import run_program


def _load_exec():
    """hupeft.benchmarks.humaneval_exec, by file path if the package cannot be imported as a whole."""
    try:
        from hupeft.benchmarks import humaneval_exec

        return humaneval_exec
    except ImportError:
        path = Path(sandbox.__file__).parent / "benchmarks" / "humaneval_exec.py"
        spec = importlib.util.spec_from_file_location("hupeft_humaneval_exec", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


he = _load_exec()

HOSTILE_TIMEOUT = 3.0
SLACK = 2.0  # every hostile run must be over within timeout + SLACK seconds


@pytest.fixture(scope="module")
def problems():
    return he.load_problems()


def _stray_processes() -> list[str]:
    """Processes still running a sandbox of this test process (its runner's argv names the run dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        if b"hupeft-sandbox-" not in cmdline:
            continue
        uid = int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])
        # As root every run has a uid from this process's private block; otherwise the marker
        # is all there is to go on.
        if os.geteuid() != 0 or sandbox._UID_BASE <= uid < sandbox._UID_BASE + 1000:
            state = next(ln for ln in status.splitlines() if ln.startswith("State:"))
            found.append(f"{entry} {state} {cmdline[:80]!r}")
    return found


def _assert_no_strays():
    deadline = time.monotonic() + 2.0
    while (strays := _stray_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not strays, strays


def test_canonical_solutions_pass_and_bare_prompts_fail(problems):
    assert len(problems) == 164
    t0 = time.perf_counter()
    results = he.evaluate_samples(
        problems, [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()],
        workers=2, progress=False)
    canonical_s = time.perf_counter() - t0
    failures = [(r["task_id"], r["result"]) for r in results if not r["passed"]]
    assert not failures, failures
    assert [r["task_id"] for r in results] == list(problems)  # input order kept
    passed = {r["task_id"]: int(r["passed"]) for r in results}
    assert sum(he.pass_at_k(1, c, 1) for c in passed.values()) / len(passed) == 1.0

    t0 = time.perf_counter()
    bare = he.evaluate_samples(problems, [{"task_id": t, "completion": ""} for t in problems], workers=2,
                               progress=False)
    bare_s = time.perf_counter() - t0
    assert not [r["task_id"] for r in bare if r["passed"]]
    assert all(r["result"].startswith(("failed: ", "timed out")) for r in bare)
    print(f"\n164 canonical solutions: {canonical_s:.1f} s, 164 bare prompts: {bare_s:.1f} s (workers=2, "
          f"network isolation: {sandbox.network_isolation()})")


@pytest.mark.parametrize("n,c,k", [
    (1, 0, 1), (1, 1, 1), (5, 0, 1), (5, 2, 1), (5, 5, 1), (10, 1, 1), (10, 3, 5), (10, 0, 10),
    (10, 1, 10), (20, 7, 10), (100, 13, 10), (200, 1, 100), (200, 50, 1), (7, 3, 4), (7, 3, 5),
])
def test_pass_at_k_matches_closed_form(n, c, k):
    expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    assert he.pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_pass_at_k_edges():
    assert he.pass_at_k(10, 5, 1) == pytest.approx(0.5)
    assert he.pass_at_k(10, 0, 1) == 0.0
    assert he.pass_at_k(3, 1, 3) == 1.0  # n - c < k: every draw of k contains the passing one
    with pytest.raises(ValueError):
        he.pass_at_k(3, 4, 1)


def test_run_program_basics():
    assert run_program("x = 1\n") == {"passed": True, "result": "passed"}
    res = run_program("assert 1 == 2, 'nope'\n")
    assert res == {"passed": False, "result": "failed: AssertionError: nope"}
    assert run_program("def f(:\n")["result"].startswith("failed: SyntaxError")
    # Exiting with status 0 before the end is not passing.
    for early in ("import os\nos._exit(0)\nassert False\n", "import sys\nsys.exit(0)\n", "raise SystemExit\n"):
        res = run_program(early)
        assert not res["passed"] and res["result"].startswith("failed: "), (early, res)
    # Minimal environment: nothing of ours is inherited.
    assert run_program("import os\nassert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'LC_CTYPE'}, "
                       "dict(os.environ)\n")["passed"]
    if os.geteuid() == 0:
        assert run_program("import os\nassert os.getuid() != 0 and os.geteuid() != 0\n")["passed"]
    assert sandbox.network_isolation() in ("namespace", "socket-guard")


@pytest.mark.skipif(sandbox.network_isolation() != "namespace", reason="namespaces refused here")
def test_namespaces_hide_the_host(tmp_path):
    # Own /proc (PID namespace): only the program itself, as PID 1.
    assert run_program("import os\nassert os.getpid() == 1\n"
                       "assert [p for p in os.listdir('/proc') if p.isdigit()] == ['1'], os.listdir('/proc')\n"
                       )["passed"]
    # Own /tmp: empty but for the run directory, and what is written there stays there.
    marker = f"hupeft-sandbox-probe-{os.getpid()}"
    res = run_program("import os\nassert os.listdir('/tmp') == [os.path.basename(os.getcwd())], os.listdir('/tmp')\n"
                      f"open('/tmp/{marker}', 'w').write('x')\nopen('/var/tmp/{marker}', 'w').write('x')\n")
    assert res["passed"], res
    assert not os.path.exists(f"/tmp/{marker}") and not os.path.exists(f"/var/tmp/{marker}")


def test_socket_guard_fallback_blocks_connections():
    # The preamble used when namespaces are refused, exercised directly.
    res, _ = sandbox._run("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n",
                          timeout=HOSTILE_TIMEOUT, memory_mb=1024, netns=False)
    assert res["result"] == "failed: OSError: network access is disabled in the sandbox", res
    res, _ = sandbox._run("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM)\n",
                          timeout=HOSTILE_TIMEOUT, memory_mb=1024, netns=False)
    assert not res["passed"]


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary.txt"
    path.write_text("canary\n")
    old = os.stat(path).st_mtime_ns - 10**9  # an mtime in the past, so any write would move it
    os.utime(path, ns=(old, old))
    yield path
    assert path.read_text() == "canary\n"
    assert os.stat(path).st_mtime_ns == old


@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.2)
    yield srv.getsockname()[1]
    try:
        conn, _ = srv.accept()
        conn.close()
        got = True
    except OSError:
        got = False
    srv.close()
    assert not got, "a sandboxed program reached a socket of the host"


# Function bodies for HumanEval/0 (indented 4), or module-level code after a `pass` body.
HOSTILE = {
    "infinite loop": "    while True:\n        pass\n",
    "fork bomb": "    import os\n    while True:\n        os.fork()\n",
    "10 GB allocation": "    x = bytearray(10**10)\n    return True\n",
    "delete canary": "    import os\n    os.remove(CANARY)\n    return True\n",
    "write canary": "    open(CANARY, 'w').write('overwritten')\n    return True\n",
    "write home, then root's home": (
        "    import os\n"
        "    open(os.path.join(os.environ['HOME'], 'junk'), 'w').write('x')\n"
        "    open(os.path.expanduser('~root/.hupeft_sandbox_probe'), 'w').write('x')\n    return True\n"),
    "connect outside": "    import socket\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    return True\n",
    "connect local listener": "    import socket\n    socket.create_connection(('127.0.0.1', PORT), timeout=1)\n"
                              "    return True\n",
    "kill parent": "    import os\n    os.kill(os.getppid(), 9)\n    os.kill(PYTEST_PID, 9)\n    return True\n",
    "exit 0 before check": "    pass\nimport os\nos._exit(0)\n",
    "deep recursion": "    import sys\n    sys.setrecursionlimit(10**6)\n    def f(n):\n        return f(n + 1)\n"
                      "    return f(0)\n",
    "print 100 MB": "    import sys\n    for _ in range(100):\n        sys.stdout.write('x' * 10**6)\n    return True\n",
    "daemonized grandchild": (
        "    import os, time\n    if os.fork() == 0:\n        os.setsid()\n        if os.fork() == 0:\n"
        "            time.sleep(60)\n        os._exit(0)\n    time.sleep(0.2)\n    return True\n"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_completion_is_contained(name, problems, canary, listener):
    problem = problems["HumanEval/0"]
    completion = (HOSTILE[name].replace("CANARY", repr(str(canary))).replace("PORT", str(listener))
                  .replace("PYTEST_PID", str(os.getpid())))
    t0 = time.perf_counter()
    res = he.check(problem, completion, timeout=HOSTILE_TIMEOUT)
    elapsed = time.perf_counter() - t0
    assert not res["passed"], res
    assert res["result"] == "timed out" or res["result"].startswith("failed: "), res
    assert elapsed < HOSTILE_TIMEOUT + SLACK, (name, elapsed, res)
    assert not Path(os.path.expanduser("~root/.hupeft_sandbox_probe")).exists()
    _assert_no_strays()
    # The evaluation goes on: a correct completion right after still passes.
    assert he.check(problem, problem["canonical_solution"], timeout=HOSTILE_TIMEOUT)["passed"]


def test_parallel_hostile_and_good_runs(problems):
    """Hostile samples in a batch do not disturb the good ones running beside them."""
    p = problems["HumanEval/0"]
    samples = [{"task_id": "HumanEval/0", "completion": c} for c in (
        p["canonical_solution"], HOSTILE["fork bomb"], p["canonical_solution"], HOSTILE["infinite loop"],
        p["canonical_solution"], "    import os, signal\n    os.kill(-1, signal.SIGKILL)\n")]
    results = he.evaluate_samples(problems, samples, timeout=HOSTILE_TIMEOUT, workers=2, progress=False)
    assert [r["passed"] for r in results] == [True, False, True, False, True, False], results
    _assert_no_strays()


def test_humaneval_command_scores_a_samples_file(tmp_path, problems, capsys):
    """`hupeft humaneval`: 3 problems x 2 samples (one canonical, one bare) -> pass@1 = 0.5."""
    import json

    from hupeft.benchmarks.humaneval import cli_main

    ids = list(problems)[:3]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n"
                               for t in ids for c in (problems[t]["canonical_solution"], "")))
    assert cli_main([str(samples), "--k", "1,2,10", "--timeout", "10"]) == 0
    out = capsys.readouterr().out
    assert "pass@1: 0.5000" in out and "pass@2: 1.0000" in out and "pass@10 skipped" in out
    rows = [json.loads(l) for l in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, False] * 3
    assert all(r["result"] for r in rows)


@pytest.mark.parametrize("content, message", [
    ('{"task_id": "HumanEval/999", "completion": ""}\n', "unknown task_id"),
    ('not json\n', "is not JSON"),
    ('{"task_id": "HumanEval/0"}\n', "string \"completion\""),
    ('', "holds no samples"),
])
def test_humaneval_command_rejects_bad_input_without_writing(tmp_path, capsys, content, message):
    from hupeft.benchmarks.humaneval import cli_main

    samples = tmp_path / "s.jsonl"
    samples.write_text(content)
    assert cli_main([str(samples)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]
    assert cli_main([str(tmp_path / "missing.jsonl")]) == 2
    assert cli_main([str(samples), "--k", "0"]) == 2
