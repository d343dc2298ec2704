"""Several runs inside one `accelerate launch` (for tests/test_distributed.py): each process calls
hupeft.experiment.run for every (config, out) of the JSON file given, as `hupeft run` does in a
launch, so the process group starts once for all of them. A run's "env" sets test hooks
(HUPEFT_INJECT_NAN, HUPEFT_INJECT_ERROR) for that run only; the runs go one after another in one
thread. A run with "slow_main": SECONDS has the main process take that long over each batch (so
that another process's failure finds it busy, not waiting in a collective). A run with "stop":
[...] has the translation benchmarks cut their completions there. A run with "spy": true has
every process other than the main one note in OUT.spy-rank<R>.jsonl each record, adapter, kept
output and torch.save file it writes, and write a record (if it does) a second late, so that it
would replace the main process's.

    accelerate launch --config_file src/hupeft/accelerate_configs/ddp.yaml --num_processes 2 \\
        tests/distributed_runs.py runs.json
"""

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

from hupeft import distributed, experiment, methods
from hupeft.benchmarks.translation import Translation
from hupeft.experiment import run


def _spied(log: Path, what: str, fn, delay: float = 0.0):
    def wrapper(*args, **kwargs):
        where = next((str(a) for a in args if isinstance(a, (str, os.PathLike))), None)
        if where is not None:  # not a stream: torch.distributed.checkpoint writing this process's shards
            with log.open("a") as f:
                f.write(json.dumps({"what": what, "path": where}) + "\n")
        time.sleep(delay)
        return fn(*args, **kwargs)
    return wrapper


def _adapter_classes():
    for name in methods.METHODS:  # imported, so that every Adapted subclass is there to wrap
        methods._module(name)
    todo, seen = [methods.Adapted], []
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return [c for c in seen if "save" in vars(c)]


@contextlib.contextmanager
def spy(out: Path):
    """On a process other than the main one: every writer the main process alone should call, noted."""
    if distributed.is_main_process():
        yield
        return
    log = out.parent / f"{out.name}.spy-rank{distributed.process_rank()}.jsonl"
    saved = [(experiment, "write_record"), (experiment, "_keep_outputs"), (torch, "save")]
    saved += [(c, "save") for c in _adapter_classes()]
    originals = [(owner, name, getattr(owner, name)) for owner, name in saved]
    for owner, name, fn in originals:
        setattr(owner, name, _spied(log, f"{getattr(owner, '__name__', owner)}.{name}", fn,
                                    delay=1.0 if name == "write_record" else 0.0))
    try:
        yield
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


@contextlib.contextmanager
def stop_at(stop: list[str]):
    original = Translation.stop
    Translation.stop = tuple(stop)
    try:
        yield
    finally:
        Translation.stop = original


@contextlib.contextmanager
def slow_main(seconds: float):
    if not distributed.is_main_process():
        yield
        return
    original = experiment._slice_for_process

    def slowly(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    experiment._slice_for_process = slowly
    try:
        yield
    finally:
        experiment._slice_for_process = original


for spec in json.loads(open(sys.argv[1]).read()):
    hooks = spec.get("env", {})
    os.environ.update(hooks)
    try:
        with contextlib.ExitStack() as stack:
            if spec.get("spy"):
                stack.enter_context(spy(Path(spec["out"])))
            if spec.get("stop"):
                stack.enter_context(stop_at(spec["stop"]))
            if spec.get("slow_main"):
                stack.enter_context(slow_main(spec["slow_main"]))
            run(spec["config"], spec["out"], progress=False)
    finally:
        for name in hooks:
            del os.environ[name]
