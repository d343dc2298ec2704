"""Execute one notebook with papermill in a process of its own.

papermill's `cwd=` changes the working directory of the whole process while a notebook runs,
and other process-wide state (environment, logging) is shared too. Run on threads, two
notebooks would resolve each other's relative paths. So every notebook the grid or the report
executes gets its own Python process: the parent passes absolute paths, the child's working
directory and environment, and reads back one line of error, if any.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ERROR_MARK = "HUPEFT-NOTEBOOK-ERROR: "


def execute_notebook(notebook: Path, output: Path, parameters: dict, *, cwd: Path,
                     env: dict[str, str] | None = None, timeout: float | None = None) -> str:
    """Run `notebook` into `output` in a child process; return "" on success, else one line of error.

    `env` entries are added to this process's environment for the child only."""
    spec = {"notebook": str(Path(notebook).resolve()), "output": str(Path(output).resolve()),
            "parameters": parameters, "timeout": timeout}
    child_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "hupeft.executor", json.dumps(spec)], cwd=str(cwd),
                          env=child_env, capture_output=True, text=True)
    if proc.returncode == 0:
        return ""
    marked = [line[len(ERROR_MARK):] for line in proc.stderr.splitlines() if line.startswith(ERROR_MARK)]
    if marked:
        return marked[-1]
    tail = [line for line in proc.stderr.splitlines() if line.strip()]
    return f"notebook process exited with {proc.returncode}: {tail[-1] if tail else 'no output'}"


def _child(spec: dict) -> int:
    import papermill as pm

    try:
        pm.execute_notebook(spec["notebook"], spec["output"], parameters=spec["parameters"], progress_bar=False,
                            kernel_name="python3", execution_timeout=spec["timeout"], cwd=os.getcwd())
    except Exception as e:  # papermill's errors: PapermillExecutionError, CellTimeoutError, ...
        text = str(e).strip()
        print(f"{ERROR_MARK}{type(e).__name__}: {text.splitlines()[-1] if text else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    args = argparse.ArgumentParser(description="internal: run one notebook (see hupeft.executor)")
    args.add_argument("spec", help="JSON: notebook, output, parameters, timeout")
    sys.exit(_child(json.loads(args.parse_args().spec)))
