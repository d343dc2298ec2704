"""Run records: the one JSON file per run that everything downstream reads.

A record is written atomically (temporary file in the same folder, then rename), so a reader
never sees half a record, even if the writer is killed midway.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text  # noqa: F401  (re-exported)

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "diverged")
RECORD_NAME = "record.json"

# Fields every record has (the book and load_all rely on them).
REQUIRED = ("schema_version", "status", "error", "config", "params", "epochs", "scores",
            "hybrid_lambda", "environment")
EPOCH_FIELDS = ("epoch", "train_loss", "val_loss", "grad_norm", "seconds", "tokens_per_second",
                "peak_memory_bytes", "memory_kind")


def _jsonable(x: Any) -> Any:
    """Plain JSON types: numpy / torch scalars become floats, non-finite floats become None."""
    import math

    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_record(record: dict, path: str | os.PathLike) -> Path:
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"record lacks {missing}")
    if record["status"] not in STATUSES:
        raise ValueError(f"record status must be one of {STATUSES}, not {record['status']!r}")
    return atomic_write_text(path, json.dumps(_jsonable(record), indent=2, sort_keys=False))


def read_record(path: str | os.PathLike) -> dict:
    rec = json.loads(Path(path).read_text())
    if rec.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {rec.get('schema_version')} is not {SCHEMA_VERSION}; "
                         "re-run the cell or convert the record")
    return rec


def is_complete(path: str | os.PathLike) -> bool:
    """A record that parses and has every required field (any status)."""
    try:
        rec = read_record(path)
    except (OSError, ValueError):
        return False
    return all(k in rec for k in REQUIRED)


def load_all(root: str | os.PathLike):
    """Every record under `root` as a pandas DataFrame, one row per run.

    Columns: path, status, error, model, method, benchmark, seed, preset, trainable, total,
    epochs (count), seconds_per_epoch, peak_memory_bytes, memory_kind, final train/val loss,
    final grad norm, one column per score (`score.<metric>`), and `record` (the whole dict).
    """
    import pandas as pd

    rows = []
    for path in sorted(Path(root).rglob(RECORD_NAME)):
        try:
            rec = read_record(path)
        except (OSError, ValueError):
            continue
        cfg, ep = rec["config"], rec["epochs"]
        last = ep[-1] if ep else {}
        row = {
            "path": str(path), "status": rec["status"], "error": rec["error"],
            # A task file's runs go by the name it gives, not by its path.
            "model": cfg.get("model"), "method": cfg.get("method"),
            "benchmark": (rec.get("benchmark") or {}).get("name") or cfg.get("benchmark"),
            "seed": cfg.get("seed"), "preset": cfg.get("preset"),
            "trainable": rec["params"].get("trainable"), "total": rec["params"].get("total"),
            "epochs": len(ep),
            "seconds_per_epoch": (sum(e["seconds"] for e in ep) / len(ep)) if ep else None,
            "peak_memory_bytes": max((e["peak_memory_bytes"] or 0 for e in ep), default=None),
            "memory_kind": last.get("memory_kind"),
            "train_loss": last.get("train_loss"), "val_loss": last.get("val_loss"),
            "grad_norm": last.get("grad_norm"),
            "record": rec,
        }
        for k, v in (rec.get("scores") or {}).items():
            row[f"score.{k}"] = v
        rows.append(row)
    return pd.DataFrame(rows)


def environment() -> dict:
    """Package versions, torch/CUDA, device, CPU count and the git commit, for the record."""
    import importlib.metadata as md

    import torch

    def ver(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {n: ver(n) for n in ("hupeft", "torch", "transformers", "peft", "accelerate",
                                         "datasets", "bitsandbytes", "sacrebleu", "rouge-score")},
        "torch_cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "device_kind": "cuda" if cuda else "cpu",
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def archive(src: str | os.PathLike, dest: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> int:
    """Copy every record under `src` to the same place under `dest`, records only: no executed
    notebook, prompts, generations, adapter or checkpoint, so no sentence of the data leaves
    with them. The data folder's path (`data_dir`) is written as `<data folder>`, so an archived
    record names where its rows came from, not the machine that read them. Returns the count."""
    src, dest = Path(src), Path(dest)
    count = 0
    for path in sorted(src.rglob(RECORD_NAME)):
        text = path.read_text()
        if data_dir:
            text = text.replace(str(Path(data_dir).resolve()), "<data folder>")
        rec = json.loads(text)
        if rec.get("status") not in ("ok", "diverged"):
            continue  # a failed cell is rerun, not archived; a diverged one is a result (a rate too high)
        rec.pop("kept_files", None)  # they stay behind
        write_record(rec, dest / path.relative_to(src))
        count += 1
    return count
