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


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_exec():
    """hupeft.benchmarks.humaneval_exec, by file path if the package cannot be imported as a whole."""
    try:
        from hupeft.benchmarks import humaneval_exec

        return humaneval_exec
    except ImportError:
        return _load("hupeft_humaneval_exec", Path(sandbox.__file__).parent / "benchmarks" / "humaneval_exec.py")


he = _load_exec()
attacks = _load("sandbox_attacks", Path(__file__).parent / "sandbox_attacks.py")

HOSTILE_TIMEOUT = 3.0
SLACK = 2.0  # every hostile run must be over within timeout + SLACK seconds


@pytest.fixture(scope="module")
def problems():
    return he.load_problems()


def _assert_no_strays():
    marker = f"hupeft-sandbox-{os.getpid()}-"
    deadline = time.monotonic() + 2.0
    while (strays := attacks.strays(marker)) and time.monotonic() < deadline:
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
          f"isolation: {sandbox.isolation()})")


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
    assert run_program("x = 1\n") == {"passed": True, "result": "passed", "isolation": "bubblewrap"}
    res = run_program("assert 1 == 2, 'nope'\n")
    assert res == {"passed": False, "result": "failed: AssertionError: nope", "isolation": "bubblewrap"}
    assert run_program("def f(:\n")["result"].startswith("failed: SyntaxError")
    # Exiting with status 0 before the end is not passing.
    for early in ("import os\nos._exit(0)\nassert False\n", "import sys\nsys.exit(0)\n", "raise SystemExit\n"):
        res = run_program(early)
        assert not res["passed"] and res["result"].startswith("failed: "), (early, res)
    # Minimal environment: nothing of ours is inherited.
    assert run_program("import os\nassert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'LC_CTYPE', 'PWD'}, "
                       "dict(os.environ)\n")["passed"]
    if os.geteuid() == 0:  # started as a fresh uid: no one on the host
        assert run_program("import os\nassert os.getuid() != 0 and os.geteuid() != 0\n")["passed"]


def test_namespaces_hide_the_host():
    # Own /proc (PID namespace): bwrap's init and the program only.
    assert run_program("import os\nassert os.getpid() == 2\n"
                       "assert [p for p in os.listdir('/proc') if p.isdigit()] == ['1', '2'], os.listdir('/proc')\n"
                       )["passed"]
    # Own empty /tmp as working folder; what is written there stays there. Root is read-only.
    marker = f"hupeft-sandbox-probe-{os.getpid()}"
    res = run_program(f"import os\nassert os.listdir('/tmp') == [] and os.getcwd() == '/tmp'\n"
                      f"open('/tmp/{marker}', 'w').write('x')\n"
                      "assert set(os.listdir('/')) <= {'bin', 'dev', 'lib', 'lib32', 'lib64', 'libx32', 'proc', "
                      "'root', 'sbin', 'tmp', 'usr'}, os.listdir('/')\n"
                      "try:\n    open('/x', 'w')\nexcept OSError:\n    pass\nelse:\n    raise AssertionError('/ writable')\n")
    assert res["passed"], res
    assert not os.path.exists(f"/tmp/{marker}")


def test_socket_guard_fallback_blocks_connections():
    # The preamble used without isolation (opted in), exercised directly.
    res = sandbox._run("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n",
                       timeout=HOSTILE_TIMEOUT, memory_mb=1024, isolated=False)
    assert res["result"] == "failed: OSError: network access is disabled in the sandbox", res
    res = sandbox._run("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM)\n",
                       timeout=HOSTILE_TIMEOUT, memory_mb=1024, isolated=False)
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
    assert all(r["result"] for r in rows) and {r["isolation"] for r in rows} == {"bubblewrap"}


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


# --- The hostile set, as root (in this process) and as an ordinary user (under runuser) ---------

TEST_USER = "hupeft-sbx-test"  # a throwaway system account, created here when missing
SECRET_TEXT = "hupeft-secret-d41d8cd9"


@pytest.fixture(scope="module")
def world():
    """Host-side targets in a folder every uid can search: a root-only secret, a project folder
    with a record, a home with a token, and a world-writable drop folder."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="hupeft-world-"))
    base.chmod(0o755)
    w = {"base": base, "secret": base / "root-only-secret", "project": base / "project", "home": base / "home",
         "drop": base / "drop", "nonce": os.urandom(4).hex()}
    w["secret"].write_text(SECRET_TEXT + "\n")
    w["secret"].chmod(0o600)
    w["project"].mkdir()
    (w["project"] / "record.json").write_text('{"scores": {}}\n')
    token = w["home"] / ".cache" / "huggingface" / "token"
    token.parent.mkdir(parents=True)
    token.write_text(SECRET_TEXT + "\n")
    w["home_secret"] = token
    w["drop"].mkdir()
    w["drop"].chmod(0o1777)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    w["listener"], w["port"] = srv, srv.getsockname()[1]
    yield w
    srv.close()
    shutil.rmtree(base, ignore_errors=True)


def _attack_sources(w: dict, secret: Path, harness_pid) -> dict:
    consts = {"HOME_SECRET": str(w["home_secret"]), "SECRET": str(secret), "PROJECT": str(w["project"]),
              "DROP": str(w["drop"]), "NONCE": w["nonce"]}
    sources = {name: attacks.fill(src, consts).replace("PORT", str(w["port"])) for name, src in attacks.ATTACKS.items()}
    return {name: src.replace("HARNESS_PID", str(harness_pid)) if harness_pid else src for name, src in sources.items()}


def _assert_contained(name: str, r: dict, w: dict) -> None:
    assert not r["hung"], f"{name}: the harness never returned"
    assert r["seconds"] < attacks.TIMEOUT + SLACK, (name, r)
    assert r["strays"] == [] and r["leftover_dirs"] == [], (name, r)
    assert r.get("isolation") == "bubblewrap", (name, r)
    if name in attacks.MUST_NOT_PASS:
        assert not r["passed"], (name, r)
    assert SECRET_TEXT not in r["result"], (name, r)
    if name == "daemon writes later":
        time.sleep(1.5 - min(r["seconds"], 1.5) + 0.3)  # past the moment the daemon would write
    assert sorted(p.name for p in w["project"].iterdir()) == ["record.json"], name
    assert (w["project"] / "record.json").read_text() == '{"scores": {}}\n', name
    assert list(w["drop"].iterdir()) == [], name
    assert not Path(f"/run/lock/hupeft-probe-{w['nonce']}").exists(), name
    with pytest.raises(BlockingIOError):  # nothing reached the loopback listener
        w["listener"].accept()


@pytest.mark.parametrize("name", list(attacks.ATTACKS))
def test_attack_contained_as_root(name, world):
    if os.geteuid() != 0:
        pytest.skip("runs as root; test_attack_contained_as_ordinary_user covers this user")
    src = _attack_sources(world, world["secret"], os.getpid())[name]
    _assert_contained(name, attacks.run_one(sandbox, src), world)


def _unprivileged_python() -> str | None:
    import sys

    for exe in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        if os.path.exists(exe) and sandbox._readable_by_others(exe) and sandbox._readable_by_others(
                os.path.dirname(os.__file__) if exe == os.path.realpath(sys.executable) else exe):
            return exe
    return None


@pytest.fixture(scope="module")
def as_user(world):
    """Run tests/sandbox_attacks.py as TEST_USER on a copy of the sandbox's two files: (mode, data, env) ->
    CompletedProcess. Needs root (to create the user); the CI runs as root."""
    import json
    import shutil
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("not root: every other test here already runs as an ordinary user")
    if not (shutil.which("runuser") and shutil.which("useradd")):
        pytest.skip("runuser/useradd missing (util-linux, passwd), so no ordinary user can be made")
    python = _unprivileged_python()
    if python is None:
        pytest.skip("no Python interpreter an ordinary user can run (install python3)")
    if subprocess.run(["id", TEST_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                       check=True, capture_output=True)
    code = world["base"] / "code"
    (code / "hupeft" / "benchmarks").mkdir(parents=True)
    src = Path(sandbox.__file__).parent
    for rel in ("sandbox.py", "benchmarks/humaneval_exec.py"):
        shutil.copy(src / rel, code / "hupeft" / rel)
    for rel in ("__init__.py", "benchmarks/__init__.py"):
        (code / "hupeft" / rel).write_text("")
    shutil.copy(Path(__file__).parent / "sandbox_attacks.py", code)
    shutil.chown(world["project"], TEST_USER)  # the user's own project and home
    for p in (world["home"], *world["home"].rglob("*")):
        shutil.chown(p, TEST_USER)
    world["home"].chmod(0o700)

    def run(mode, data, path="/usr/bin:/bin"):
        inp = world["base"] / f"{mode}.json"
        inp.write_text(json.dumps(data))
        env = ["env", "-i", f"PATH={path}", f"HOME={world['home']}", "TMPDIR=/tmp", "LANG=C.UTF-8"]
        return subprocess.run(["runuser", "-u", TEST_USER, "--", *env, python, "-E", "-s",
                               str(code / "sandbox_attacks.py"), mode, str(inp)],
                              capture_output=True, text=True, timeout=600)
    return run


@pytest.fixture(scope="module")
def user_attack_results(as_user, world):
    import json

    proc = as_user("attacks", _attack_sources(world, world["home_secret"], None))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", list(attacks.ATTACKS))
def test_attack_contained_as_ordinary_user(name, user_attack_results, world):
    r = user_attack_results[name]
    if name == "daemon writes later":
        r = {**r, "seconds": 0.0}  # the driver ran the later cases meanwhile; wait the full delay
    _assert_contained(name, r, world)
    assert world["home_secret"].read_text() == SECRET_TEXT + "\n"


def test_canonical_solutions_pass_as_ordinary_user(as_user, problems):
    import json

    proc = as_user("canonical", problems)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    failures = [(r["task_id"], r["result"]) for r in out["results"] if not r["passed"]]
    assert not failures and len(out["results"]) == 164, failures
    assert {r["isolation"] for r in out["results"]} == {"bubblewrap"}
    print(f"\n164 canonical solutions as {TEST_USER}: {out['seconds']:.1f} s (workers=2), pass@1 = 1.0")


def test_refuses_without_bubblewrap_as_ordinary_user(as_user):
    proc = as_user("refuse", {}, path="/nonexistent")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and "apt-get install bubblewrap" in proc.stderr
    assert sandbox.ALLOW_FLAG in proc.stderr


@pytest.fixture
def no_bwrap(monkeypatch):
    """This process as if bubblewrap were not installed (the probe is redone, then restored)."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    monkeypatch.setattr(sandbox, "_probe_result", None)
    monkeypatch.setattr(sandbox, "_allowed", False)


def test_refuses_without_isolation_unless_allowed(no_bwrap, tmp_path, problems, capsys):
    import json

    from hupeft.benchmarks.humaneval import cli_main

    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap"):
        run_program("pass\n")
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": problems["HumanEval/0"]["canonical_solution"]}))
    assert cli_main([str(samples)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and sandbox.ALLOW_FLAG in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]
    # Opted in: it runs, and every record says that nothing isolated it.
    assert cli_main([str(samples), "--k", "1", sandbox.ALLOW_FLAG]) == 0
    rows = [json.loads(l) for l in (tmp_path / "s.jsonl_results.jsonl").read_text().splitlines()]
    assert rows[0]["passed"] and rows[0]["isolation"] == "none"
    assert "isolation: none" in capsys.readouterr().out
