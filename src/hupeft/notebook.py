"""What notebooks/run.ipynb calls: build the config, run (in-process or under accelerate), show.

Kept here, not in the notebook, so it is tested and the notebook stays a parameters cell plus
three calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .config import RunConfig, validate
from .records import RECORD_NAME, read_record


def make_config(model: str, method: str, benchmark: str, seed: int = 0, preset: str | None = None,
                overrides: dict | None = None) -> RunConfig:
    return validate(RunConfig.from_dict({**(overrides or {}), "model": model, "method": method,
                                         "benchmark": benchmark, "seed": int(seed), "preset": preset}))


def run(cfg: RunConfig, out_dir: str | Path, gpus: int = 1) -> dict:
    """One run; with gpus > 1 (and that many GPUs here) under `accelerate launch`."""
    import torch

    from .experiment import run as run_in_process

    out = Path(out_dir)
    if gpus > 1 and torch.cuda.device_count() >= gpus:
        sets = [f"{k}={json.dumps(v)}" for k, v in cfg.to_dict().items()
                if k not in ("model", "method", "benchmark", "seed", "method_options")]
        sets += [f"method.{k}={json.dumps(v)}" for k, v in cfg.method_options.items()]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus),
               "-m", "hupeft.experiment", "--model", cfg.model, "--method", cfg.method,
               "--benchmark", cfg.benchmark, "--seed", str(cfg.seed), "--out", str(out), "--resume"]
        for s in sets:
            cmd += ["--set", s]
        subprocess.run(cmd, check=False)
        return read_record(out / RECORD_NAME)
    return dict(run_in_process(cfg, out, resume=True))


def show(record: dict) -> None:
    """Curves of the run (seaborn) and its key numbers, glued for the book (myst-nb)."""
    from IPython.display import Markdown, display

    from .plots import run_curves

    cfg = record["config"]
    scores = ", ".join(f"{k} = {v:.4f}" for k, v in record["scores"].items()) or "none"
    display(Markdown(
        f"**{cfg['model']} / {cfg['method']} / {cfg['benchmark']} / seed {cfg['seed']}**: "
        f"status `{record['status']}`; scores: {scores}; trainable parameters "
        f"{record['params'].get('trainable', 0):,} of {record['params'].get('total', 0):,}; "
        f"data: {cfg.get('data', {}).get('description', '?')}"))
    if record["error"]:
        display(Markdown(f"```\n{record['error']}\n```"))
    if record["epochs"]:
        run_curves(record)
    try:
        from myst_nb import glue
    except ImportError:
        return
    glue("status", record["status"], display=False)
    for k, v in record["scores"].items():
        glue(f"score_{k}", float(v), display=False)
