"""hupeft.executor: notebooks run in worker processes that serve one notebook after another, each
with its own working directory and environment, failures as one line, a dead worker replaced."""

from __future__ import annotations

import json
import os

import nbformat
import pytest

from hupeft import executor


def notebook(path, code: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("tag = 'x'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, str(path))
    return path


REPORT = """
import json, os
json.dump({"tag": tag, "cwd": os.getcwd(), "worker": os.getppid(), "var": os.environ.get("HUPEFT_TEST_VAR")},
          open("out.json", "w"))
"""


@pytest.fixture
def fresh_pool():
    executor._close_idle()
    yield
    executor._close_idle()


def test_one_worker_serves_notebooks_each_with_its_own_cwd_and_environment(tmp_path, fresh_pool):
    nb = notebook(tmp_path / "nb.ipynb", REPORT)
    seen = []
    for i, env in enumerate([{"HUPEFT_TEST_VAR": "first"}, None]):
        cwd = tmp_path / f"cell{i}"
        cwd.mkdir()
        assert executor.execute_notebook(nb, cwd / "out.ipynb", {"tag": f"t{i}"}, cwd=cwd, env=env) == ""
        seen.append(json.loads((cwd / "out.json").read_text()))
        assert (cwd / "out.ipynb").exists()
    assert [s["tag"] for s in seen] == ["t0", "t1"]
    assert [s["cwd"] for s in seen] == [str((tmp_path / "cell0").resolve()), str((tmp_path / "cell1").resolve())]
    assert seen[0]["var"] == "first" and seen[1]["var"] is None  # one notebook's env does not leak to the next
    assert len(executor._idle) == 1 and seen[0]["worker"] == seen[1]["worker"] == executor._idle[0].proc.pid
    assert os.getcwd() != seen[0]["cwd"]  # this process never moved


def test_a_failing_cell_is_one_line_and_a_dead_worker_is_replaced(tmp_path, fresh_pool):
    bad = notebook(tmp_path / "bad.ipynb", "raise ValueError('no such data')")
    error = executor.execute_notebook(bad, tmp_path / "bad-out.ipynb", {}, cwd=tmp_path)
    assert error.startswith("PapermillExecutionError") and "no such data" in error and "\n" not in error
    kill = notebook(tmp_path / "kill.ipynb", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    error = executor.execute_notebook(kill, tmp_path / "kill-out.ipynb", {}, cwd=tmp_path)
    assert error.startswith("notebook process exited with -9") and "\n" not in error
    assert not executor._idle  # the dead worker is not handed out again
    good = notebook(tmp_path / "good.ipynb", REPORT)
    assert executor.execute_notebook(good, tmp_path / "good-out.ipynb", {"tag": "after"}, cwd=tmp_path) == ""
    assert json.loads((tmp_path / "out.json").read_text())["tag"] == "after"
