"""Tasks of the user's own (a YAML file): every method runs them end to end, records and the book
call them by their name, and a broken file is refused with one line naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hupeft import benchmarks, pages, report
from hupeft.benchmarks.base import fingerprint
from hupeft.benchmarks.tasks import TaskError
from hupeft.config import ConfigError, RunConfig, validate
from hupeft.experiment import cli_main, run

METHODS = ["zero-shot", "full", "lora", "loraga", "boft", "urnn", "hybrid"]
TINY = dict(model="tiny-llama", n_train=4, n_val=2, n_eval=2, max_len=48, batch_size=4, init_batches=1, epochs=1,
            max_new_tokens=3, checkpoint=False, save_adapter=False, lr=1e-3)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def user_tasks(root: Path) -> dict[str, Path]:
    """A classification task (labels as words and as indices) and a generation task, with their data."""
    words = ["sad", "glad"]
    rows = [{"body": f"note {i}: I feel {words[i % 2]}", "mood": words[i % 2] if i % 3 else i % 2} for i in range(12)]
    write_jsonl(root / "notes" / "train.jsonl", rows[:8])
    write_jsonl(root / "notes" / "test.jsonl", rows[8:])
    (root / "mood.yaml").write_text(
        "name: my-mood\nkind: classification\ndescription: notes by mood\n"
        "data: {train: notes/train.jsonl, eval: notes/test.jsonl}\n"
        'template: "Note: {body}\\nMood:"\nlabel: mood\nlabel_words: [sad, glad]\nmetric: [accuracy, f1]\n')
    words = ["cat", "dog", "sun", "sea", "oak", "elm", "ant", "bee"]
    pairs = [{"word": w, "info": {"upper": w.upper()}} for w in words]
    write_jsonl(root / "words" / "all.jsonl", pairs)
    (root / "shout.yaml").write_text(
        "name: my-shout\nkind: generation\ndata: {eval: words/all.jsonl}\n"
        'template: "Shout {word}:"\ntarget: "{info[upper]}"\nmetric: [exact_match, bleu, chrf, rougeL]\n'
        "max_new_tokens: 3\nstop: [\"\\n\"]\n")
    return {"classification": root / "mood.yaml", "generation": root / "shout.yaml"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every method on both tasks, tiny: the records under one results folder."""
    root = tmp_path_factory.mktemp("tasks")
    tasks = user_tasks(root)
    records = {}
    for kind, path in tasks.items():
        for method in METHODS:
            out = root / "results" / kind / method / "seed0"
            records[kind, method] = run(RunConfig(method=method, benchmark=str(path), **TINY), out, progress=False)
    return root, tasks, records


@pytest.mark.parametrize("kind", ["classification", "generation"])
def test_every_method_runs_a_task_of_the_users_end_to_end(runs, kind):
    root, tasks, records = runs
    bench = benchmarks.get(str(tasks[kind]))
    for method in METHODS:
        rec = records[kind, method]
        assert rec["status"] == "ok", (method, rec["error"])
        assert set(rec["scores"]) == set(bench.metrics), method
        assert rec["benchmark"]["name"] == bench.name and rec["benchmark"]["file"] == str(tasks[kind])
        assert rec["benchmark"]["file_sha256"] == bench.sha
        data = rec["config"]["data"]
        assert data["used"] == "real" and data["fingerprints"]["eval"] == fingerprint(bench.load("eval").examples)
        if method not in ("zero-shot",):
            assert rec["params"]["trainable"] > 0 and rec["epochs"], method


def test_the_generations_kept_are_the_tasks_prompts_and_targets(runs):
    root, _, _ = runs
    shout = root / "results" / "generation" / "lora" / "seed0" / "generations.jsonl"
    rows = [json.loads(line) for line in shout.read_text().splitlines()]
    assert rows and all(r["prompt"].startswith("Shout ") and r["prompt"].endswith(":") for r in rows)
    assert {r["reference"] for r in rows} <= {"CAT", "DOG", "SUN", "SEA", "OAK", "ELM", "ANT", "BEE"}


def test_the_template_and_target_are_what_the_model_sees(tmp_path):
    tasks = user_tasks(tmp_path)
    mood = benchmarks.get(str(tasks["classification"]))
    assert mood.format_causal({"body": "I feel glad", "mood": "glad"}) == ("Note: I feel glad\nMood:", " glad")
    assert mood.format_causal({"body": "x", "mood": 0})[1] == " sad"  # a label's index names its word
    assert [mood.label({"mood": m}) for m in ("sad", "glad", 1)] == [0, 1, 1]
    shout = benchmarks.get(str(tasks["generation"]))
    assert shout.format_causal({"word": "cat", "info": {"upper": "CAT"}}) == ("Shout cat:", " CAT")
    assert shout.score(["CAT", "dog"], ["CAT", "DOG"])[0]["exact_match"] == 0.5


def test_the_book_calls_a_task_by_its_own_name(runs, monkeypatch):
    root, _, _ = runs
    df = report.records(root / "results")
    assert set(df["benchmark"]) == {"my-mood", "my-shout"}
    said = []
    monkeypatch.setattr(pages, "_md", said.append)
    monkeypatch.setattr(pages, "_html", lambda frame, *a, **k: said.append(frame.to_string()))
    monkeypatch.setattr(pages, "_glue", lambda *a, **k: None)
    pages.show_table1(report.table1(df), report.paper_table1())
    text = "\n".join(said)
    assert "### my-mood" in text and "### my-shout" in text and ".yaml" not in text


def test_a_preset_lists_a_task_file_and_its_cells_carry_its_path(tmp_path):
    from hupeft.presets import expand

    tasks = user_tasks(tmp_path)
    preset = {"name": "mine", "seeds": [0], "methods": ["lora"], "defaults": dict(TINY),
              "models": {"tiny-llama": {"benchmarks": [str(tasks["classification"])]}}}
    cells = expand(preset, root=tmp_path / "results")
    assert [c.config.benchmark for c in cells] == [str(tasks["classification"].resolve())]


BROKEN = [
    ("name: null\n", "'name' is missing"),
    ("name: x y\n", "'name' 'x y' may hold only"),
    ("name: glue/sst2\n", "'name' 'glue/sst2' may hold only"),
    ("name: mtbench\n", "'name' 'mtbench' is a built-in benchmark's name"),
    ("kind: regression\n", "'kind' must be classification or generation"),
    ("data: {eval: missing.jsonl}\n", "'data.eval' names"),
    ("data: {train: notes/train.jsonl}\n", "'data.eval' is missing"),
    ("data: {eval: notes/test.jsonl, test: x}\n", "'data.test' is not a data field"),
    ("data: {hub: nohub, eval: test}\n", "'data.hub' must be a hub dataset id"),
    ('template: "Note: {}"\n', "'template' is not a template"),
    ('template: "Note: {body"\n', "'template' is not a template"),
    ("template: no fields\n", "'template' names no row field"),
    ("label_words: [sad]\n", "'label_words' must list two or more words"),
    ("label_words: [no, yes]\n", "not [False, True] (YAML reads yes, no, on, off, true and false as truth values"),
    ("label_words: [sad, sad]\n", "'label_words' repeats a word"),
    ("metric: bleu\n", "'metric' must be one or more of accuracy, f1"),
    ("label_words: [a, b, c]\nmetric: f1\n", "'metric' f1 is the F1 of the second label word"),
    ("max_new_tokens: 8\n", "'max_new_tokens' is not a field of a classification task"),
    ('template: "Note: {text}"\n', "'template' names 'text', but row 1 of data.eval"),
    ("label: feeling\n", "'label' names 'feeling', but row 1"),
    ("label_words: [down, up]\n", "'label_words' has no label 'sad' (row 1 of data.eval"),
    ("name: [x\n", "not valid YAML at line"),
]


@pytest.mark.parametrize("change,message", BROKEN)
def test_a_broken_task_file_is_refused_with_one_line_naming_the_field(change, message, tmp_path, capsys):
    import yaml

    good = yaml.safe_load(user_tasks(tmp_path)["classification"].read_text())
    try:
        changed = {**good, **yaml.safe_load(change)}
        text = yaml.safe_dump(changed)
    except yaml.YAMLError:
        text = change  # not YAML at all
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    argv = ["--model", "tiny-llama", "--method", "lora", "--benchmark", str(path), "--out", str(out)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"hupeft run: task file {path}"), err
    assert message in err and not out.exists()


def test_a_generation_task_checks_its_target_against_the_rows(tmp_path):
    user_tasks(tmp_path)
    path = tmp_path / "shout.yaml"
    path.write_text(path.read_text().replace("{info[upper]}", "{info[lower]}"))
    with pytest.raises(ConfigError, match=r"field 'target' does not fit row 1 of data.eval .*KeyError"):
        validate(RunConfig(method="lora", benchmark=str(path), **TINY))


def test_a_task_has_no_generated_data_and_no_data_folder(tmp_path, monkeypatch):
    path = user_tasks(tmp_path)["classification"]
    with pytest.raises(ConfigError, match="task my-mood has no generated data"):
        validate(RunConfig(method="lora", benchmark=str(path), data="synthetic", **TINY))
    monkeypatch.setenv(benchmarks.DATA_ENV, str(tmp_path / "elsewhere"))  # not consulted for a task
    assert validate(RunConfig(method="lora", benchmark=str(path), **TINY)).benchmark == str(path.resolve())


def test_a_broken_task_file_is_refused_in_seconds_from_the_command_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: mine\nkind: classification\n")
    done = subprocess.run([sys.executable, "-m", "hupeft", "run", "--model", "tiny-llama", "--method", "lora",
                           "--benchmark", str(path), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"hupeft run: task file {path}: field 'data' is missing; e.g. data: {{train: train.jsonl, eval: test.jsonl}}"]
    # Checking a file reads the file, nothing else: no data, no model (seconds, however large they are).
    t0 = time.perf_counter()
    with pytest.raises(TaskError):
        benchmarks.get(str(path))
    assert time.perf_counter() - t0 < 5


def test_the_shipped_example_tasks_load():
    root = Path(__file__).resolve().parents[1] / "examples" / "tasks"
    for path in sorted(root.glob("*.yaml")):
        bench = benchmarks.get(str(path))
        assert bench.name == path.stem and bench.load("eval").examples and bench.load("train").examples


def test_a_hub_task_offline_names_the_hub_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "hub.yaml"
    path.write_text("name: hubbed\nkind: classification\ndata: {hub: org/none, train: train, eval: validation}\n"
                    'template: "{sentence}"\nlabel_words: ["no", "yes"]\n')
    with pytest.raises(benchmarks.BenchmarkError,
                       match=r"task hubbed: the hub could not supply split 'validation' of org/none"):
        benchmarks.get(str(path)).load("eval")
