"""Execute notebooks with papermill in worker processes of their own.

papermill's `cwd=` changes the working directory of the whole process while a notebook runs,
and other process-wide state (environment, logging) is shared too. Run on threads, two
notebooks would resolve each other's relative paths. So notebooks run in worker processes, one
notebook at a time each: the caller passes absolute paths, the working directory and the full
environment for that notebook, and reads back one line of error, if any. A worker serves one
notebook after another, so a grid of many cells starts Python and imports papermill once per
worker rather than once per cell.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path


class _Worker:
    """A `python -m hupeft.executor --serve` process: one JSON spec per line in, one reply out."""

    def __init__(self):
        self.log = tempfile.TemporaryFile()  # the worker's stderr, read back if it dies
        self.proc = subprocess.Popen([sys.executable, "-m", "hupeft.executor", "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)

    def run(self, spec: dict) -> str | None:
        """The notebook's error ("" on success), or None if the worker died."""
        try:
            self.proc.stdin.write(json.dumps(spec) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:
            line = ""
        return json.loads(line)["error"] if line else None

    def death(self) -> str:
        code = self.proc.wait()
        self.log.seek(0)
        tail = [line for line in self.log.read().decode(errors="replace").splitlines() if line.strip()]
        self.log.close()
        return f"notebook process exited with {code}: {tail[-1] if tail else 'no output'}"

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # end of input: the worker exits
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.log.close()


_idle: list[_Worker] = []
_lock = threading.Lock()


@atexit.register
def _close_idle() -> None:
    with _lock:
        while _idle:
            _idle.pop().close()


def execute_notebook(notebook: Path, output: Path, parameters: dict, *, cwd: Path,
                     env: dict[str, str] | None = None, timeout: float | None = None) -> str:
    """Run `notebook` into `output` in a worker process; return "" on success, else one line of error.

    `env` entries are added to this process's environment for that notebook only. Safe to call
    from several threads: each call has a worker to itself."""
    spec = {"notebook": str(Path(notebook).resolve()), "output": str(Path(output).resolve()),
            "parameters": parameters, "timeout": timeout, "cwd": str(Path(cwd).resolve()),
            "env": {**os.environ, **(env or {})}}
    with _lock:
        worker = _idle.pop() if _idle else None
    worker = worker or _Worker()
    error = worker.run(spec)
    if error is None:
        return worker.death()
    with _lock:
        _idle.append(worker)
    return error


def _execute(spec: dict) -> str:
    import papermill as pm

    try:
        pm.execute_notebook(spec["notebook"], spec["output"], parameters=spec["parameters"], progress_bar=False,
                            kernel_name="python3", execution_timeout=spec["timeout"], cwd=spec["cwd"])
    except Exception as e:  # papermill's errors: PapermillExecutionError, CellTimeoutError, ...
        text = str(e).strip()
        return f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}"
    return ""


def _serve() -> int:
    """The worker: this process is its own, so it may set its environment for each notebook
    (the kernel papermill starts inherits it); replies go to the original stdout only."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else written to stdout lands in stderr, never among the replies
    for line in sys.stdin:
        spec = json.loads(line)
        os.environ.clear()
        os.environ.update(spec["env"])
        replies.write(json.dumps({"error": _execute(spec)}) + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    args = argparse.ArgumentParser(description="internal: a worker that runs notebooks (see hupeft.executor)")
    args.add_argument("--serve", action="store_true", help="read one JSON spec per line from stdin")
    args.parse_args()
    sys.exit(_serve())
