"""The grid: preset expansion, skipping done cells, re-running only what changed, surviving SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hupeft import grid
from hupeft.records import read_record

TINY = {
    "description": "test preset",
    "seeds": [0],
    "jobs": 2,  # two cells at once, as the shipped presets run
    "methods": ["lora", "boft"],
    "defaults": {"epochs": 1, "n_train": 8, "n_val": 4, "n_eval": 4, "max_len": 32, "batch_size": 4},
    "method_settings": {"boft": {"lr": 1.0e-3}},
    "models": {"tiny-bert": {"benchmarks": ["glue/sst2"]}},
}


def write_preset(path: Path, preset: dict) -> Path:
    path.write_text(yaml.safe_dump(preset))
    return path


def hupeft(*args, cwd=None, **kw):
    return subprocess.run([sys.executable, "-m", "hupeft", *args], capture_output=True, text=True, cwd=cwd, **kw)


def test_every_preset_expands_and_smoke_covers_all_methods():
    for name in grid.preset_names():
        preset = grid.load_preset(name)
        if name.startswith("paper"):
            continue  # hub models: configs cannot be seen offline, expansion is checked below
        if name == "multilingual":
            # Some of its languages have no offline data: a local run refuses them up front, naming the fix.
            with pytest.raises(grid.GridError, match="go online"):
                grid.expand(preset, here=True)
            continue
        cells = grid.expand(preset)
        assert cells, name
    smoke = grid.expand(grid.load_preset("smoke"))
    assert {c.config.method for c in smoke} == {"zero-shot", "full", "lora", "loraga", "boft", "urnn", "hybrid"}
    assert len({c.config.benchmark for c in smoke}) == 2


def test_paper_preset_has_the_papers_gaps():
    preset = grid.load_preset("paper")
    assert "humaneval" not in preset["models"]["meta-llama/Llama-3.3-70B-Instruct"]["benchmarks"]
    assert len(preset["models"]) == 4 and preset["seeds"] == [0, 1, 2]


def test_unknown_preset_and_filters_are_one_line_errors(capsys):
    assert grid.cli_main(["--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert grid.cli_main(["--preset", "smoke", "--methods", "dora"]) == 2
    assert "not in preset smoke" in capsys.readouterr().err


def test_dry_run_lists_cells_and_estimate(capsys):
    assert grid.cli_main(["--preset", "smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "14 cells" in out and "estimated" in out


def test_method_seeds_give_a_method_its_own_seeds(tmp_path):
    preset = dict(TINY, seeds=[0, 1, 2], method_seeds={"boft": [0, 2]}, name="p")
    cells = grid.expand(preset, root=tmp_path)
    seeds = {m: sorted(c.config.seed for c in cells if c.config.method == m) for m in preset["methods"]}
    assert seeds == {"lora": [0, 1, 2], "boft": [0, 2]}
    assert len(grid.expand(preset, seeds=[1], root=tmp_path)) == 2  # --seeds replaces every method's
    for bad in ({"boft": [3]}, {"dora": [0]}):
        with pytest.raises(grid.GridError, match="method_seeds"):
            grid.expand(dict(preset, method_seeds=bad), root=tmp_path)


@pytest.fixture(scope="module")
def killed_and_rerun(tmp_path_factory):
    """A four-cell grid killed with SIGKILL once its first record exists, then run again."""
    tmp = tmp_path_factory.mktemp("grid")
    preset = write_preset(tmp / "p.yaml", dict(TINY, seeds=[0, 1]))
    results = tmp / "results"
    proc = subprocess.Popen([sys.executable, "-m", "hupeft", "grid", "--preset", str(preset), "--results",
                             str(results)], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list(results.rglob("record.json")):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the grid and its kernels, mid-grid
    proc.wait()
    done_before = len(list(results.rglob("record.json")))
    again = hupeft("grid", "--preset", str(preset), "--results", str(results))
    return preset, results, done_before, again


def test_sigkill_midway_then_rerun_leaves_no_duplicate_or_corrupt_record(killed_and_rerun):
    _, results, done_before, again = killed_and_rerun
    assert 1 <= done_before < 4
    assert again.returncode == 0, again.stderr[-2000:]
    # A cell killed between writing its record and renaming its notebook is run again.
    skipped = re.search(r"(\d+) of 4 cells already have a complete record", again.stdout)
    assert int(skipped.group(1) if skipped else 0) <= done_before
    cells = {p.parent for p in results.rglob("record.json")}
    assert len(cells) == 4
    for cell in cells:
        assert read_record(cell / "record.json")["status"] == "ok"
        assert sorted(p.name for p in cell.iterdir() if p.name != "checkpoint") == ["adapter", "record.json", "run.ipynb"]


def test_changed_parameter_reruns_only_affected_cells(killed_and_rerun):
    preset, results, _, again = killed_and_rerun
    assert again.returncode == 0, again.stderr[-2000:]
    records = sorted(results.rglob("record.json"))
    before = {(r.parent.parent.name, r.parent.name): read_record(r)["started_at"] for r in records}

    changed = json.loads(json.dumps(dict(TINY, seeds=[0, 1])))
    changed["method_settings"]["boft"]["lr"] = 5.0e-4
    write_preset(preset, changed)
    second = hupeft("grid", "--preset", str(preset), "--results", str(results))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "2 of 4 cells already have a complete record" in second.stdout
    after = {(r.parent.parent.name, r.parent.name): read_record(r) for r in sorted(results.rglob("record.json"))}
    for (method, seed), record in after.items():
        if method == "lora":
            assert record["started_at"] == before[(method, seed)]
        else:
            assert record["started_at"] != before[(method, seed)] and record["config"]["lr"] == 5.0e-4


def fresh_copy(dest: Path) -> Path:
    """What a fresh clone of this checkout holds: tracked files and new files git does not ignore."""
    repo = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = repo / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    return dest


@pytest.mark.parametrize("attempt", [1, 2])
def test_parallel_cells_with_relative_results_from_a_fresh_copy(tmp_path, attempt):
    """Two cells at a time, a relative results folder, the copy's own code and notebook: every
    cell ok and each record in its own folder (run twice: a race shows up by timing)."""
    clone = fresh_copy(tmp_path / "clone")
    env = {**os.environ, "PYTHONPATH": str(clone / "src")}
    proc = subprocess.run([sys.executable, "-m", "hupeft", "grid", "--preset", "smoke", "--jobs", "2",
                           "--results", "results"], cwd=clone, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    expected = {grid.cell_dir(Path(), "smoke", c.config) for c in grid.expand(grid.load_preset("smoke"))}
    root = clone / "results"
    found = {p.parent.relative_to(root) for p in root.rglob("record.json")}
    assert found == expected  # no record nested in another cell's folder, none missing
    for rel in found:
        rec = read_record(root / rel / "record.json")
        assert rec["status"] == "ok", rec["error"]
        assert (root / rel / "run.ipynb").exists()
    assert not list(clone.glob("src/**/results")) and not (clone / "notebooks" / "results").exists()
