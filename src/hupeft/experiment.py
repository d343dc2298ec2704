"""One run: a model, a method, a benchmark and a seed, trained and scored -> a record.

    from hupeft.experiment import run
    from hupeft.config import RunConfig
    record = run(RunConfig(model="smollm2-135m", method="hybrid", benchmark="gsm8k"), out_dir="out/")

The training loop below is written out in full (no Trainer): read it top to bottom. accelerate
handles device placement, mixed precision and several processes (`accelerate launch -m
hupeft.experiment ...` with an FSDP or DeepSpeed accelerate config).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path

from .config import ConfigError, RunConfig, apply_overrides, field_docs, validate
from .memory import PeakRSS
from .records import RECORD_NAME, SCHEMA_VERSION, environment, write_record

CHECKPOINT_DIR = "checkpoint"


class RunRecord(dict):
    """The JSON record of one run (a dict; see hupeft.records for the schema)."""

    @property
    def status(self) -> str:
        return self["status"]

    @property
    def scores(self) -> dict:
        return self["scores"]


def run(config: RunConfig | dict, out_dir: str | os.PathLike | None = None, *, resume: bool = False,
        progress: bool = True) -> RunRecord:
    """Train and score one run; write `out_dir/record.json` if `out_dir` is given.

    Bad input raises ConfigError before anything is loaded or written. Failures after that
    are caught: the record is written with status "failed" (or "diverged" for a non-finite
    loss) and returned."""
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(dict(config))
    cfg = validate(cfg)
    out = Path(out_dir) if out_dir is not None else None
    record = RunRecord(schema_version=SCHEMA_VERSION, status="ok", error=None, config=cfg.to_dict(),
                       params={}, epochs=[], scores={}, metric_signatures={}, hybrid_lambda=None, steps=[],
                       environment=environment(), started_at=time.time(), finished_at=None)
    try:
        _train_and_score(cfg, record, out, resume, progress)
    except Diverged as e:
        record["status"], record["error"] = "diverged", str(e)
    except Exception as e:  # the record keeps the failure; the grid goes on
        record["status"] = "failed"
        record["error"] = f"{type(e).__name__}: {e}\n" + "".join(traceback.format_exc(limit=-6))
    record["finished_at"] = time.time()
    if out is not None:
        write_record(dict(record), out / RECORD_NAME)
        if record["status"] != "failed" and not cfg.keep_checkpoint:
            # The run is complete: the checkpoint (full FT: weights and optimiser) only served resume.
            import shutil

            shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return record


class Diverged(RuntimeError):
    pass


def _train_and_score(cfg: RunConfig, record: RunRecord, out: Path | None, resume: bool, progress: bool) -> None:
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from . import benchmarks, data, methods, models

    # 1. Seeds, data, model ------------------------------------------------------------
    _seed_everything(cfg.seed)
    bench = benchmarks.get(cfg.benchmark)
    splits = data.load_splits(bench, cfg)
    record["config"]["data"] = {"sources": splits.sources, "synthetic": splits.synthetic,
                                "stand_in": splits.stand_in, "description": splits.description,
                                "n_train": len(splits.train), "n_val": len(splits.val), "n_eval": len(splits.eval)}
    cuda = torch.cuda.is_available()
    precision = ("bf16" if cuda else "no") if cfg.mixed_precision == "auto" else cfg.mixed_precision
    accelerator = Accelerator(mixed_precision=precision, cpu=not cuda)
    loaded = models.load(cfg.model, task=cfg.task, num_labels=bench.num_labels or 2,
                         quantization=cfg.quantization, seed=cfg.seed,
                         device_map={"": accelerator.device} if cfg.quantization else None)
    model, tok = loaded.model, loaded.tokenizer
    record["config"]["model_source"] = loaded.source
    record["config"]["precision"] = precision
    if cfg.quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.to(accelerator.device) if not cfg.quantization else None
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    train_enc = data.encode(bench, tok, splits.train, cfg.task, cfg.max_len)
    val_enc = data.encode(bench, tok, splits.val, cfg.task, cfg.max_len)
    _record_truncation(record, train=train_enc.truncation, val=val_enc.truncation)
    val_batches = data.batches(val_enc, cfg.eval_batch_size, pad_id, cfg.task)

    # 2. The method ----------------------------------------------------------------------
    to_dev = lambda b: {k: v.to(accelerator.device) for k, v in b.items()}  # noqa: E731
    init = None
    if cfg.method in methods.NEEDS_INIT_BATCHES:
        g = torch.Generator().manual_seed(cfg.seed)
        init = [to_dev(b) for b in data.batches(train_enc, cfg.batch_size, pad_id, cfg.task, g)[: cfg.init_batches]]
    model.train()
    adapted = methods.apply(model, cfg.method, cfg.method_options, init_batches=init)
    record["config"]["method_options"] = adapted.options.to_dict()
    params = adapted.trainable_parameters()
    record["params"] = {"trainable": adapted.num_trainable(), "total": adapted.num_total()}
    adapted.model.to(accelerator.device) if not cfg.quantization else None

    # 3. Optimiser and schedule ----------------------------------------------------------
    # The method builds it: AdamW, with the hybrid's per-branch rates or the uRNN's manifold step.
    optimizer = adapted.optimizer(cfg.lr, cfg.weight_decay)
    micro = math.ceil(len(train_enc) / cfg.batch_size)
    micro_here = len(range(accelerator.process_index, micro, accelerator.num_processes))
    steps_per_epoch = max(1, math.ceil(micro_here / cfg.grad_accum))
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    # The scheduler is stepped by hand once per optimiser step, so it is not prepared.
    train_model, optimizer = accelerator.prepare(adapted.model, optimizer)

    start_epoch, step = 1, 0
    if resume and out is not None and (out / CHECKPOINT_DIR / "state.pt").exists():
        start_epoch, step = _load_checkpoint(out / CHECKPOINT_DIR, adapted, optimizer, scheduler, record)

    # 4. Train ---------------------------------------------------------------------------
    lambda_log = record["hybrid_lambda"] if record["hybrid_lambda"] is not None else (
        {} if methods.family(cfg.method) == "hybrid" else None)
    record["hybrid_lambda"] = lambda_log
    epochs_bar = tqdm(range(start_epoch, cfg.epochs + 1), desc="epochs", disable=not progress,
                      initial=start_epoch - 1, total=cfg.epochs)
    for epoch in epochs_bar:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # order depends on epoch only
        epoch_batches = data.batches(train_enc, cfg.batch_size, pad_id, cfg.task, g)
        epoch_batches = epoch_batches[accelerator.process_index:: accelerator.num_processes]
        train_model.train()
        sampler = PeakRSS().__enter__() if not cuda else None
        t0, tokens, losses, norms, branch = time.perf_counter(), 0, [], [], {}
        bar = tqdm(epoch_batches, desc=f"epoch {epoch} steps", leave=False, disable=not progress)
        for i, batch in enumerate(bar):
            sync = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(epoch_batches)
            batch = to_dev(batch)
            ctx = contextlib.nullcontext() if sync else accelerator.no_sync(train_model)
            with ctx:
                with accelerator.autocast():
                    loss = train_model(**batch).loss
                if cfg.inject_nan_step is not None and step + 1 == cfg.inject_nan_step:
                    loss = loss * float("nan")
                if not torch.isfinite(loss.detach()):
                    _finish_epoch(record, epoch, losses, None, norms, branch, t0, tokens, sampler, adapted)
                    raise Diverged(f"non-finite loss {loss.item()} at epoch {epoch}, step {step + 1}")
                accelerator.backward(loss / cfg.grad_accum)
            losses.append(loss.item())
            tokens += data.count_tokens(batch)
            if not sync:
                continue
            # Clip first: it scales every gradient alike, so the hybrid's lambda (a ratio of
            # norms) is unchanged, and the uRNN manifold step sees bounded gradients.
            norm = accelerator.clip_grad_norm_(list(params.values()), cfg.clip_norm or float("inf"))
            norms.append(float(norm))
            adapted.before_step()
            optimizer.step()
            scheduler.step()
            adapted.after_step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            diag = adapted.diagnostics()
            for k in ("grad_norm_lora", "grad_norm_boft"):
                if k in diag:
                    branch.setdefault(k, []).append(float(diag[k]))
            if lambda_log is not None and "lambda" in diag:
                for layer, lam in diag["lambda"].items():
                    lambda_log.setdefault(layer, []).append(float(lam))
            record["steps"].append({"step": step, "epoch": epoch, "loss": losses[-1], "grad_norm": norms[-1],
                                    "lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{losses[-1]:.3f}", gnorm=f"{norms[-1]:.2f}")
        val_loss = _validation_loss(train_model, val_batches, to_dev, accelerator)
        _finish_epoch(record, epoch, losses, val_loss, norms, branch, t0, tokens, sampler, adapted)
        epochs_bar.set_postfix(train=f"{record['epochs'][-1]['train_loss']:.3f}", val=f"{val_loss:.3f}")
        if cfg.checkpoint and out is not None and accelerator.is_main_process:
            _save_checkpoint(out / CHECKPOINT_DIR, adapted, optimizer, scheduler, record, epoch, step)
            if os.environ.get("HUPEFT_EXIT_AFTER_EPOCH") == str(epoch):
                os._exit(137)  # tests: behave like a process killed right after this checkpoint

    # 5. Score ---------------------------------------------------------------------------
    final = accelerator.unwrap_model(train_model)
    final.eval()
    eval_cut = data.Truncation()
    scores = bench.evaluate(final, tok, splits.eval, task=cfg.task, batch_size=cfg.eval_batch_size,
                            max_new_tokens=cfg.max_new_tokens, n_samples=cfg.n_samples,
                            temperature=cfg.temperature, progress=progress, truncation=eval_cut)
    _record_truncation(record, eval=eval_cut)
    record["scores"] = {k: float(v) for k, v in scores.items()}
    record["metric_signatures"] = dict(getattr(scores, "signatures", {}))
    if out is not None:
        record["kept_files"] = _keep_outputs(out, scores)
    if getattr(bench, "runs_code", False):  # which sandbox produced these scores (hupeft.sandbox)
        from hupeft.sandbox import isolation

        record["code_isolation"] = isolation()
    record["diagnostics"] = {k: v for k, v in adapted.diagnostics().items() if k != "lambda"}


GENERATIONS_NAME = "generations.jsonl"


def _keep_outputs(out: Path, scores) -> list[str]:
    """Write the generations behind the scores (and any further files, such as HumanEval's
    samples.jsonl) beside the record, each atomically; their names, for the record."""
    from .atomic import atomic_write_jsonl

    files = dict(getattr(scores, "files", {}))
    if getattr(scores, "generations", None):
        files = {GENERATIONS_NAME: scores.generations, **files}
    for name, rows in files.items():
        atomic_write_jsonl(out / name, rows)
    return sorted(files)


def _record_truncation(record: RunRecord, **parts) -> None:
    """Per part (train, val: cut to max_len; eval: prompts cut to the model's positions less the
    generation budget), how many examples lost tokens and the longest one's token count."""
    info = record["config"]["data"]
    for part, cut in parts.items():
        info.setdefault("truncated", {})[part] = cut.count
        info.setdefault("longest_tokens", {})[part] = cut.longest


def _validation_loss(model, val_batches, to_dev, accelerator) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in val_batches:
            with accelerator.autocast():
                total += model(**to_dev(b)).loss.item()
            count += 1
    model.train()
    return total / max(count, 1)


def _finish_epoch(record, epoch, losses, val_loss, norms, branch, t0, tokens, sampler, adapted) -> None:
    import torch

    seconds = time.perf_counter() - t0
    if sampler is None:
        peak, kind = torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    else:  # the process's peak resident set during this epoch (see hupeft.memory)
        sampler.__exit__(None, None, None)
        peak, kind = sampler.peak, "cpu_peak_rss"
    entry = {"epoch": epoch, "train_loss": sum(losses) / len(losses) if losses else None,
             "val_loss": val_loss, "grad_norm": sum(norms) / len(norms) if norms else None,
             "seconds": seconds, "tokens_per_second": tokens / seconds if seconds > 0 else None,
             "peak_memory_bytes": int(peak), "memory_kind": kind}
    for k, v in branch.items():
        entry[k] = sum(v) / len(v)
    diag = adapted.diagnostics()
    for k in ("orthogonality_error", "renormalisations"):
        if diag.get(k) is not None:
            entry[k] = float(diag[k])
    # How far each layer's effective weight (and the uRNN's U, the hybrid's branches) moved.
    entry.update(adapted.movement())
    record["epochs"].append(entry)


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _save_checkpoint(folder: Path, adapted, optimizer, scheduler, record, epoch: int, step: int) -> None:
    """Everything needed to continue after `epoch`, written to a temporary folder then renamed."""
    import shutil
    import tempfile

    import torch

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".checkpoint-"))
    try:
        state = {k: v.detach().cpu().clone() for k, v in adapted.adapter_state().items()}
        torch.save({"adapter": state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(), "epoch": epoch, "step": step,
                    "record": {k: record[k] for k in ("epochs", "steps", "hybrid_lambda")}}, tmp / "state.pt")
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_checkpoint(folder: Path, adapted, optimizer, scheduler, record) -> tuple[int, int]:
    import numpy as np
    import torch

    ck = torch.load(folder / "state.pt", weights_only=False)
    adapted.load_adapter_state(ck["adapter"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    rng = ck["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    for k, v in ck["record"].items():
        record[k] = v
    record["resumed_from_epoch"] = ck["epoch"]
    return ck["epoch"] + 1, ck["step"]


# --- command line ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    docs = field_docs()
    keys = "\n".join(f"  {k:<24}{v.strip()}" for k, v in docs.items()
                     if k not in ("model", "method", "benchmark", "seed"))
    p = argparse.ArgumentParser(
        prog="hupeft run", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train and score one model x method x benchmark x seed; writes OUT/record.json.",
        epilog=f"--set keys (key=value; `none` for None):\n{keys}\n  {'method.<option>':<24}"
               "an option of the method, e.g. method.r=8 or method.n_factors=2\n\n"
               "Exit codes: 0 ok, 1 the run failed or diverged (record written), 2 bad input (nothing written).")
    p.add_argument("--model", required=True, help=docs["model"])
    p.add_argument("--method", required=True, help=docs["method"])
    p.add_argument("--benchmark", required=True, help=docs["benchmark"])
    p.add_argument("--seed", type=int, default=0, help=docs["seed"])
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable); see the list below")
    p.add_argument("--out", required=True, help="folder for record.json and the per-epoch checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint if one exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def cli_main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = RunConfig(model=args.model, method=args.method, benchmark=args.benchmark, seed=args.seed)
        cfg = validate(apply_overrides(cfg, args.sets))
    except ConfigError as e:
        print(f"hupeft run: {e}", file=sys.stderr)
        return 2
    record = run(cfg, args.out, resume=args.resume, progress=not args.quiet)
    scores = ", ".join(f"{k}={v:.4f}" for k, v in record["scores"].items())
    print(f"{record['status']}: {args.out}/{RECORD_NAME}" + (f" ({scores})" if scores else ""))
    if record["error"]:
        print(record["error"].splitlines()[0], file=sys.stderr)
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))

