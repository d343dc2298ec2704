"""`hupeft eval`: score a run's model with lm-evaluation-harness, the field's common harness.

    hupeft eval results/cpu/smollm2-135m/glue-sst2/hybrid/seed0 --tasks arc_easy,hellaswag
    hupeft eval RUN --tasks my_task --include-path tasks/ --limit 100     # a local task (YAML)

The run's model is exported merged into RUN/merged (hupeft.export; done once, reused after), so
lm-eval loads it as it loads any transformers model (`--model hf`, `pretrained=RUN/merged`). Its
results go to RUN/lm_eval.json beside record.json, one entry per task (metrics, samples, shots,
task version, the settings and lm-eval's version), written atomically; evaluating other tasks
later adds theirs. Offline, a task whose data is a local file (`dataset_path: json` with
`data_files`) runs with HF_DATASETS_OFFLINE=1; hub tasks need their dataset in the cache.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

from . import models
from .atomic import atomic_write_text
from .export import ExportError, export_merged, resolve
from .methods.base import MethodError
from .records import RECORD_NAME

MERGED_DIR = "merged"
RESULTS_NAME = "lm_eval.json"


class HarnessError(ValueError):
    """Bad eval input; the message is one line and names the fix."""


def check(run: Path, tasks: list[str], include_path: str | None):
    """Everything that can be refused before exporting or loading: returns (export source, task manager)."""
    if not (run / RECORD_NAME).exists():
        raise HarnessError(f"{run} has no {RECORD_NAME}; pass a folder `hupeft run --out` wrote")
    if not tasks:
        raise HarnessError("no task given; pass --tasks NAME[,NAME...]")
    if include_path and not Path(include_path).is_dir():
        raise HarnessError(f"--include-path {include_path} is not a folder; pass the folder holding the task YAML")
    if importlib.util.find_spec("lm_eval") is None:
        raise HarnessError("lm-evaluation-harness is not installed; pip install 'hupeft[eval]'")
    src = resolve(run)
    if not hasattr(models.tokenizer(src.base["name"]), "save_pretrained"):
        raise HarnessError(f"{src.base['name']} has no transformers tokenizer for lm-eval to use; evaluate a run of "
                           "a model that has one")
    manager = task_manager(tasks, include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise HarnessError(f"unknown lm-eval task(s) {unknown}; pass --include-path DIR holding their YAML, or pick "
                           "from `lm_eval ls tasks`")
    return src, manager


def task_manager(tasks: list[str], include_path: str | None):
    """lm-eval's index of the tasks: of the local folder alone when it holds every task asked for
    (indexing lm-eval's thousands of built-in YAML files takes many seconds), else of both."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    return TaskManager(include_path=include_path)


def evaluate(run: str | Path, tasks: list[str], include_path: str | None = None, limit: float | None = None,
             num_fewshot: int | None = None, batch_size: int = 8, device: str | None = None) -> Path:
    """lm-eval on RUN's merged model; returns the results file (RUN/lm_eval.json)."""
    import torch
    from lm_eval import simple_evaluate

    run = Path(run)
    src, manager = check(run, tasks, include_path)
    merged = run / MERGED_DIR
    if not (merged / "config.json").exists():
        export_merged(src, merged)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = simple_evaluate(model="hf", model_args={"pretrained": str(merged.resolve())}, tasks=tasks,
                              num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, device=device,
                              task_manager=manager, log_samples=False)
    settings = {"limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size, "device": device,
                "include_path": str(include_path) if include_path else None}
    return store(run, results, settings)


def store(run: Path, results: dict, settings: dict) -> Path:
    """Add each task's results to RUN/lm_eval.json (atomically), keeping other tasks' entries."""
    import importlib.metadata as md

    path = run / RESULTS_NAME
    kept = json.loads(path.read_text()) if path.exists() else {}
    entries = kept.setdefault("tasks", {})
    for task, metrics in results["results"].items():
        entries[task] = {"metrics": metrics, "n_samples": (results.get("n-samples") or {}).get(task),
                         "num_fewshot": (results.get("n-shot") or {}).get(task),
                         "version": (results.get("versions") or {}).get(task),
                         "higher_is_better": (results.get("higher_is_better") or {}).get(task),
                         "settings": settings, "lm_eval": md.version("lm_eval"), "evaluated_at": time.time()}
    kept["model"] = MERGED_DIR
    atomic_write_text(path, json.dumps(kept, indent=2, default=str))
    return path


EXAMPLES = """examples:
  hupeft eval results/cpu/smollm2-135m/glue-sst2/hybrid/seed0 --tasks arc_easy --limit 200
  hupeft eval RUN --tasks polarity --include-path my_tasks/      # a local task: my_tasks/polarity.yaml

The model is RUN/merged (made by `hupeft export RUN --to merged` on first use); results go to
RUN/lm_eval.json. Install the harness with pip install 'hupeft[eval]'.
Exit codes: 0 scored, 2 bad input (nothing run)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hupeft eval", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Score a run's merged model with lm-evaluation-harness tasks.",
                                epilog=EXAMPLES)
    p.add_argument("run", metavar="RUN", help=f"a run folder ({RECORD_NAME} and its adapter/)")
    p.add_argument("--tasks", required=True, help="lm-eval task names, comma-separated")
    p.add_argument("--include-path", help="a folder of task YAML files (local tasks)")
    p.add_argument("--limit", type=float, help="examples per task (a fraction below 1); default all")
    p.add_argument("--num-fewshot", type=int, help="shots per prompt; default the task's")
    p.add_argument("--batch-size", type=int, default=8, help="batch size of the model's forward passes (default 8)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ...; default cuda where available")
    return p


def cli_main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    try:
        path = evaluate(args.run, tasks, args.include_path, limit, args.num_fewshot, args.batch_size, args.device)
    except (HarnessError, ExportError, MethodError) as e:
        print(f"hupeft eval: {e}", file=sys.stderr)
        return 2
    for task, entry in json.loads(path.read_text())["tasks"].items():
        if task in tasks:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in entry["metrics"].items() if isinstance(v, float))
            print(f"{task}: {shown}")
    print(f"wrote {path}")
    return 0
