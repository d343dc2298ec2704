"""Hostile programs for the sandbox, and a driver that runs them (tests/test_sandbox.py).

Imported by the tests (as root) and also copied, with hupeft/sandbox.py and
hupeft/benchmarks/humaneval_exec.py, into a folder an ordinary user can read, where it runs as
``python sandbox_attacks.py MODE INPUT.json`` under ``runuser``: it needs the standard
library only. Each program ends normally only if its attack worked, so "passed" means
"escaped"; the tests check the host side (canaries, listener, strays, timing) as well.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

# Upper-case names are filled in by the test: SECRET (a file the harness can read),
# PROJECT (a folder the caller can write), HOME_SECRET, DROP (a world-writable host folder),
# PORT (a loopback listener), HARNESS_PID, NONCE.
ATTACKS = {
    "stderr symlink": (
        "import os\nfor d in {os.getcwd(), os.environ.get('TMPDIR', '/tmp')}:\n"
        "    p = os.path.join(d, 'stderr')\n    try:\n        os.remove(p)\n    except OSError:\n        pass\n"
        "    try:\n        os.symlink(SECRET, p)\n    except OSError:\n        pass\n"
        "raise RuntimeError('stderr replaced')\n"),
    "stderr fifo": (
        "import os\nfor d in {os.getcwd(), os.environ.get('TMPDIR', '/tmp')}:\n"
        "    p = os.path.join(d, 'stderr')\n    try:\n        os.remove(p)\n    except OSError:\n        pass\n"
        "    try:\n        os.mkfifo(p)\n    except OSError:\n        pass\n"
        "raise RuntimeError('stderr replaced')\n"),
    "daemon writes later": (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(1.0)\n"
        "        open(os.path.join(DROP, 'daemon-' + NONCE), 'w').write('x')\n        time.sleep(30)\n"
        "    os._exit(0)\ntime.sleep(0.1)\n"),
    "write project": ("import os\nopen(os.path.join(PROJECT, 'record.json'), 'a').write('forged')\n"
                      "open(os.path.join(PROJECT, 'new-' + NONCE), 'w').write('x')\n"),
    "read home": "assert open(HOME_SECRET).read()\n",
    "write host tmp": "import os\nopen(os.path.join(DROP, 'tmp-' + NONCE), 'w').write('x')\n",
    "write /run/lock": "open('/run/lock/hupeft-probe-' + NONCE, 'w').write('x')\n",
    "_socket to loopback": ("import _socket\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
                            "s.settimeout(1)\ns.connect(('127.0.0.1', PORT))\n"),
    "1 GB of small files": ("import os\nfor i in range(1024):\n"
                            "    with open('f%d' % i, 'wb') as f:\n        f.write(b'x' * (1 << 20))\n"),
    "20,000 descriptors": (
        "import os, resource\nhard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\nn = 0\ntry:\n    while n < 20000:\n"
        "        os.open('/dev/null', os.O_RDONLY)\n        n += 1\nexcept OSError:\n    pass\n"
        "assert n >= 10000, n\n"),
    "3 x 400 MB at once": (  # 1.2 GB together, above the 1 GB that memory_mb allows
        "import os, time\nr, w = os.pipe()\nfor _ in range(3):\n    if os.fork() == 0:\n        try:\n"
        "            b = b'x' * (400 << 20)\n            os.write(w, b'1')\n            time.sleep(1.5)\n"
        "        finally:\n            os._exit(0)\nos.close(w)\ngot = b''\nwhile len(got) < 3:\n"
        "    c = os.read(r, 1)\n    if not c:\n        break\n    got += c\nassert got == b'111', got\n"),
    "fork bomb": "import os\nn = 0\nwhile n < 500:\n    os.fork()\n    n += 1\n",
    "kill the parent": ("import os\nos.kill(os.getppid(), 9)\nos.kill(HARNESS_PID, 9)\ntry:\n    os.kill(-1, 9)\n"
                        "except OSError:\n    pass\n"),
}
MUST_NOT_PASS = set(ATTACKS) - {"stderr symlink", "stderr fifo", "daemon writes later"}
TIMEOUT = 3.0


def fill(source: str, consts: dict) -> str:
    for key, value in consts.items():
        source = source.replace(key, repr(value))
    return source


def _leftover_dirs() -> set[str]:
    tmp = os.environ.get("TMPDIR", "/tmp")
    return {n for n in os.listdir(tmp) if n.startswith("hupeft-sandbox-")}


def strays(marker: str) -> list[str]:
    """Processes whose command line holds ``marker`` (every sandboxed process's does)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in open(f"/proc/{entry}/cmdline", "rb").read():
                found.append(entry)
        except OSError:
            continue
    return found


def run_one(sandbox, source: str, timeout: float = TIMEOUT) -> dict:
    """Run one program; the harness is timed from a second thread so a hang is reported, not waited on."""
    before = _leftover_dirs()
    box: dict = {}

    def target():
        try:
            box.update(sandbox.run_program(source, timeout=timeout))
        except BaseException as exc:  # reported, not raised, so the caller sees every case
            box.update(passed=False, result=f"harness raised {exc!r}")

    t0 = time.perf_counter()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout + 10)
    box["seconds"] = time.perf_counter() - t0
    box["hung"] = thread.is_alive()
    marker = f"hupeft-sandbox-{os.getpid()}-"
    deadline = time.monotonic() + 2.0
    while (left := strays(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    box["strays"] = left
    box["leftover_dirs"] = sorted(_leftover_dirs() - before)
    return box


def main(argv: list[str]) -> int:
    from hupeft import sandbox
    from hupeft.benchmarks import humaneval_exec as he

    mode, path = argv[0], argv[1]
    with open(path) as f:
        data = json.load(f)
    if mode == "attacks":
        out = {name: run_one(sandbox, src.replace("HARNESS_PID", str(os.getpid()))) for name, src in data.items()}
    elif mode == "canonical":
        try:
            t0 = time.perf_counter()
            res = he.evaluate_samples(data, [{"task_id": t, "completion": p["canonical_solution"]}
                                             for t, p in data.items()], workers=2, progress=False)
        except sandbox.SandboxUnavailable as exc:
            print(exc, file=sys.stderr)
            return 2
        out = {"results": res, "seconds": time.perf_counter() - t0}
    elif mode == "refuse":  # run with a PATH that holds no bwrap
        try:
            out = sandbox.run_program("pass\n")
        except sandbox.SandboxUnavailable as exc:
            print(exc, file=sys.stderr)
            return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
