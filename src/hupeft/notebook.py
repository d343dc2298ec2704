"""What notebooks/run.ipynb calls: build the config, run (in-process or under accelerate), show.

Kept here, not in the notebook, so it is tested and the notebook stays a parameters cell plus
three calls.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import RunConfig, validate
from .records import RECORD_NAME, read_record


def make_config(model: str, method: str, benchmark: str, seed: int = 0, preset: str | None = None,
                overrides: dict | None = None) -> RunConfig:
    return validate(RunConfig.from_dict({**(overrides or {}), "model": model, "method": method,
                                         "benchmark": benchmark, "seed": int(seed), "preset": preset}))


def run(cfg: RunConfig, out_dir: str | Path, gpus: int = 1) -> dict:
    """One run, in this process; or under `accelerate launch` (hupeft.distributed) with the
    config's `processes` above 1, or with `gpus` above 1 where that many GPUs are here."""
    import torch

    from . import distributed
    from .experiment import run as run_in_process

    out = Path(out_dir)
    processes = cfg.processes or (gpus if 1 < gpus <= torch.cuda.device_count() else 1)
    if processes > 1 and distributed.launched_world() == 1:
        distributed.launch(command_line(cfg, out) + ["--set", f"processes={processes}"], processes, cfg.strategy)
        return read_record(out / RECORD_NAME)
    return dict(run_in_process(cfg, out, resume=True))


def command_line(cfg: RunConfig, out: Path) -> list[str]:
    """The `hupeft run` arguments (without the command) that give this config."""
    def text(v) -> str:
        if v is None:
            return "none"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, (list, tuple)):
            return ",".join(map(str, v))
        return json.dumps(v) if isinstance(v, dict) else str(v)

    argv = ["--model", cfg.model, "--method", cfg.method, "--benchmark", cfg.benchmark, "--seed", str(cfg.seed),
            "--out", str(out), "--resume", "--quiet"]
    for k, v in cfg.to_dict().items():
        if k not in ("model", "method", "benchmark", "seed", "method_options", "processes"):
            argv += ["--set", f"{k}={text(v)}"]
    return argv + [x for k, v in cfg.method_options.items() for x in ("--set", f"method.{k}={text(v)}")]


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
