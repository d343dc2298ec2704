"""One run: a model, a method, a benchmark and a seed, trained and scored -> a record.

    from hupeft.experiment import run
    from hupeft.config import RunConfig
    record = run(RunConfig(model="smollm2-135m", method="hybrid", benchmark="gsm8k"), out_dir="out/")

The training loop below is written out in full (no Trainer): read it top to bottom. accelerate
handles device placement, mixed precision and several processes: `hupeft run ... --set
processes=N --set strategy=ddp|fsdp` or `accelerate launch -m hupeft.experiment ...` with one of
the configs in hupeft/accelerate_configs (see hupeft.distributed). `batch_size` is per process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path

from . import distributed
from .cli import ArgumentParser
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
    record["config"]["data"] = {"requested": cfg.data}  # the data setting; what served it is added on loading
    with _outlive_failed_peers(out):
        try:
            _train_and_score(cfg, record, out, resume, progress)
        except Diverged as e:
            record["status"], record["error"] = "diverged", str(e)
        except Exception as e:  # the record keeps the failure; the grid goes on
            record["status"] = "failed"
            record["error"] = f"{type(e).__name__}: {e}\n" + "".join(traceback.format_exc(limit=-6))
            if distributed.launched_world() > 1:
                _fail_launch(record, out)
        record["finished_at"] = time.time()
        if out is not None and distributed.is_main_process():  # one record per run, however many processes
            write_record(dict(record), out / RECORD_NAME)
            if record["status"] != "failed" and not cfg.keep_checkpoint:
                # The run is complete: the checkpoint (full FT: weights and optimiser) only served resume.
                import shutil

                shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return record


class Diverged(RuntimeError):
    pass


FAILED_PREFIX = ".failed-rank"  # + rank + ".json": a process's failure, for the main process's record


def _fail_launch(record: RunRecord, out: Path | None) -> None:
    """One process of a launch failed: the others wait in a collective it will never join. Another
    process leaves its error in the run folder and exits, which closes its connections, so that
    their collectives fail at once (not at the process group's timeout; closing the group is not
    enough while DDP or FSDP hold it). The main process names in its record the process that
    failed first."""
    rank, failed_at = distributed.process_rank(), time.time()
    if rank == 0:
        record["error"] = _first_failure(record, out, failed_at)
        return
    # Not when the main process has written its record already: it failed first, then exited.
    if out is not None and not _written_since(out / RECORD_NAME, record["started_at"]):
        from .atomic import atomic_write_text

        atomic_write_text(out / f"{FAILED_PREFIX}{rank}.json",
                          json.dumps({"rank": rank, "at": failed_at, "error": record["error"]}))
    print(f"hupeft run (rank {rank}): {record['error']}", file=sys.stderr, flush=True)
    os._exit(1)


def _written_since(path: Path, since: float) -> bool:
    return path.exists() and path.stat().st_mtime >= since


def _first_failure(record: RunRecord, out: Path | None, failed_at: float) -> str:
    """The main process's error, or, when another process failed before it (its own error then
    being the broken connection), that process's error, naming its rank."""
    world, first = distributed.launched_world(), None
    for f in sorted(out.glob(f"{FAILED_PREFIX}*.json")) if out is not None else ():
        peer = json.loads(f.read_text())
        if record["started_at"] <= peer["at"] < failed_at and (first is None or peer["at"] < first["at"]):
            first = peer
    if first is None:
        return f"rank 0 of {world}: {record['error']}"
    own = record["error"].splitlines()[0]
    return f"rank {first['rank']} of {world} failed first: {first['error']}\n(rank 0 then: {own})"


@contextlib.contextmanager
def _outlive_failed_peers(out: Path | None):
    """The launcher stops every process (SIGTERM) as soon as one exits with an error. While a
    peer's failure lies in the run folder the main process ignores that signal, to write the
    record naming it (the launcher's SIGKILL follows after its grace period, 30 s); any other
    SIGTERM, such as a preempted job's, still ends it at once, without a record, as before."""
    import signal

    if distributed.launched_world() == 1 or not distributed.is_main_process() or out is None:
        yield
        return

    def on_term(signum, frame):
        if not any(out.glob(f"{FAILED_PREFIX}*.json")):
            signal.signal(signal.SIGTERM, previous)
            os.kill(os.getpid(), signal.SIGTERM)

    for stale in out.glob(f"{FAILED_PREFIX}*.json"):  # an earlier attempt's
        stale.unlink(missing_ok=True)
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        for f in out.glob(f"{FAILED_PREFIX}*.json"):
            f.unlink(missing_ok=True)


def _train_and_score(cfg: RunConfig, record: RunRecord, out: Path | None, resume: bool, progress: bool) -> None:
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from . import benchmarks, data, distributed, methods, models, precision as prec, quantization

    # 1. Seeds, data, model ------------------------------------------------------------
    _seed_everything(cfg.seed)
    bench = benchmarks.get(cfg.benchmark)
    record["benchmark"] = bench.identity()  # its name (a task file's own), kind and metrics
    splits = data.load_splits(bench, cfg)
    record["config"]["data"] = splits.provenance(cfg.data)  # asked for, used, sources and their hashes
    cuda = torch.cuda.is_available()
    precision = prec.mixed_precision(cfg.mixed_precision, cfg.dtype, cuda)
    # accelerate keeps one AcceleratorState per process and refuses a second run in it (a notebook,
    # the tests) that asks for another precision; its settings are per run here, so they are cleared.
    # PartialState, which holds the process group of a launched run, is kept.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    # DeepSpeed is applied by accelerate only off its CPU mode; on the CPU it then needs gloo named.
    zero3 = distributed.resolve(cfg.strategy, distributed.launched_world()) == "deepspeed"
    if zero3:
        distributed.deepspeed_process_group(cuda)
    accelerator = Accelerator(mixed_precision=precision, cpu=not cuda and not zero3)
    if zero3:
        distributed.build_models_whole()
    rank, world = accelerator.process_index, accelerator.num_processes
    strategy = distributed.resolve(cfg.strategy, world)
    sharded = strategy in distributed.SHARDED
    record["distributed"] = {"strategy": strategy, "world_size": world, "per_device_batch": cfg.batch_size,
                             "grad_accum": cfg.grad_accum, "global_batch": cfg.batch_size * world * cfg.grad_accum,
                             "precision": precision}
    loaded = models.load(cfg.model, task=cfg.task, num_labels=bench.num_labels or 2, dtype=prec.weights_dtype(cfg.dtype),
                         quantization=cfg.quantization, seed=cfg.seed,
                         quant_storage=quantization.storage_dtype(cfg.quantization, strategy),
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
        # Whole global batches on every process: the same estimate, so the same start, everywhere.
        g = torch.Generator().manual_seed(cfg.seed)
        whole = data.batches(train_enc, cfg.batch_size * world, pad_id, cfg.task, g)
        init = [to_dev(b) for b in whole[: cfg.init_batches]]
    model.train()
    adapted = methods.apply(model, cfg.method, cfg.method_options, init_batches=init)
    prec.keep_fp32_master(adapted.model)  # trainable parameters in fp32, whatever the base's dtype
    record["config"]["method_options"] = adapted.options.to_dict()
    record["params"] = {"trainable": adapted.num_trainable(), "total": adapted.num_total()}
    adapted.model.to(accelerator.device) if not cfg.quantization else None

    # 3. Sharding, optimiser and schedule ------------------------------------------------
    if sharded:  # FSDP2 replaces the parameters by sharded ones: the optimiser comes after
        distributed.shard(adapted.model, strategy, accelerator.device, precision)
    params = adapted.trainable_parameters()
    if not params:  # zero-shot: nothing to step; scored as the trained ones are
        _score(cfg, record, out, bench, adapted.model, tok, splits, progress,
               distributed.EvalShard(rank, world, synced=sharded or strategy == "deepspeed"))
        return
    # The method builds it: AdamW, with the hybrid's per-branch rates or the uRNN's manifold step.
    optimizer = adapted.optimizer(cfg.lr, weight_decay=cfg.weight_decay)
    # Every process walks the same global batches (its own slice of each), so all take the same
    # number of steps and no process waits in a collective for another's extra batch.
    global_batch = cfg.batch_size * world
    micro = math.ceil(len(train_enc) / global_batch)
    steps_per_epoch = max(1, math.ceil(micro / cfg.grad_accum))
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    if sharded:
        train_model = adapted.model
    else:  # DDP (or DeepSpeed) through accelerate; the scheduler is stepped by hand, so not prepared.
        if zero3:
            distributed.deepspeed_config(accelerator, cfg.batch_size, cfg.grad_accum, cfg.clip_norm)
        train_model, optimizer = accelerator.prepare(adapted.model, optimizer)

    start_epoch, step, skip, partial = 1, 0, 0, None
    if resume and out is not None and (out / CHECKPOINT_DIR / "state.pt").exists():
        start_epoch, step, skip, partial = _load_checkpoint(out / CHECKPOINT_DIR, adapted, optimizer, scheduler,
                                                            record, sharded, rank, train_model if zero3 else None)

    # 4. Train ---------------------------------------------------------------------------
    lambda_log = record["hybrid_lambda"] if record["hybrid_lambda"] is not None else (
        {} if methods.family(cfg.method) == "hybrid" else None)
    record["hybrid_lambda"] = lambda_log
    nan_at = _rank_step_hook("HUPEFT_INJECT_NAN", rank)
    error_at = _rank_step_hook("HUPEFT_INJECT_ERROR", rank)
    epochs_bar = tqdm(range(start_epoch, cfg.epochs + 1), desc="epochs", disable=not progress,
                      initial=start_epoch - 1, total=cfg.epochs)
    for epoch in epochs_bar:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # order depends on epoch only
        epoch_batches = data.batches(train_enc, global_batch, pad_id, cfg.task, g)
        train_model.train()
        sampler = PeakRSS().__enter__() if not cuda else None
        t0 = time.perf_counter()
        acc = partial or {"losses": [], "norms": [], "branch": {}, "tokens": 0}
        partial = None
        bar = tqdm(epoch_batches, desc=f"epoch {epoch} steps", leave=False, disable=not progress)
        for i, whole in enumerate(bar):
            if i < skip:  # resumed mid-epoch: these batches were trained before the checkpoint
                continue
            sync = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(epoch_batches)
            batch, weight = _slice_for_process(whole, rank, world, cfg.task)
            batch = to_dev(batch)
            ctx = contextlib.nullcontext() if sync or sharded else accelerator.no_sync(train_model)
            with ctx:
                with accelerator.autocast():
                    if error_at == step + 1:
                        raise RuntimeError(f"injected error at step {step + 1} (HUPEFT_INJECT_ERROR)")
                    loss = train_model(**batch).loss
                if cfg.inject_nan_step is not None and step + 1 == cfg.inject_nan_step or nan_at == step + 1:
                    loss = loss * float("nan")
                # This process's share of the global batch's mean loss, times the processes (DDP
                # and FSDP average gradients over them): the gradient of the global-batch mean,
                # whatever the split, and 0 for a stand-in row on a process without examples.
                share = loss * (weight * world)
                bad = torch.tensor(float(not torch.isfinite(loss.detach())))
                totals = distributed.all_reduce_sum(torch.stack([share.detach().float().cpu() / world, bad]))
                if totals[1] > 0:  # non-finite on some process: every process stops here, together
                    _finish_epoch(record, epoch, acc, None, t0, sampler, adapted)
                    raise Diverged(f"non-finite loss at epoch {epoch}, step {step + 1}"
                                   + (f" (on {int(totals[1])} of {world} processes)" if world > 1 else ""))
                if zero3:  # the engine steps inside, at the end of the global batch
                    zero3_norm = distributed.deepspeed_backward(train_model, share / cfg.grad_accum, sync)
                else:
                    accelerator.backward(share / cfg.grad_accum)
            acc["losses"].append(float(totals[0]))
            acc["tokens"] += data.count_tokens(batch) if weight > 0 else 0
            if not sync:
                continue
            # Clip first: it scales every gradient alike, so the hybrid's lambda (a ratio of
            # norms) is unchanged, and the uRNN manifold step sees bounded gradients. The norm is
            # the global one (DDP: gradients already averaged; FSDP: over the shards; ZeRO-3: the
            # engine's, which clipped and stepped inside backward, then hupeft's schedule steps).
            norm = zero3_norm if zero3 else _clip(accelerator, params, cfg.clip_norm, sharded)
            acc["norms"].append(norm)
            adapted.before_step()
            optimizer.step()
            scheduler.step()
            adapted.after_step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            diag = adapted.step_diagnostics()
            for k in ("grad_norm_lora", "grad_norm_boft"):
                if k in diag:
                    acc["branch"].setdefault(k, []).append(float(diag[k]))
            if lambda_log is not None and "lambda" in diag:
                for layer, lam in diag["lambda"].items():
                    lambda_log.setdefault(layer, []).append(float(lam))
            record["steps"].append({"step": step, "epoch": epoch, "loss": acc["losses"][-1], "grad_norm": norm,
                                    "lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{acc['losses'][-1]:.3f}", gnorm=f"{norm:.2f}")
            if (cfg.checkpoint and cfg.checkpoint_every and out is not None and step % cfg.checkpoint_every == 0
                    and i + 1 < len(epoch_batches)):
                _save_checkpoint(out / CHECKPOINT_DIR, adapted, optimizer, scheduler, record, sharded, rank,
                                 {"epoch": epoch, "skip": i + 1, "step": step, "partial": acc},
                                 train_model if zero3 else None)
                _exit_hook("HUPEFT_EXIT_AFTER_STEP", step)
        skip = 0
        val_loss = _validation_loss(train_model, val_batches, to_dev, accelerator, rank, world, cfg.task)
        _finish_epoch(record, epoch, acc, val_loss, t0, sampler, adapted)
        epochs_bar.set_postfix(train=f"{record['epochs'][-1]['train_loss']:.3f}", val=f"{val_loss:.3f}")
        if cfg.checkpoint and out is not None:
            _save_checkpoint(out / CHECKPOINT_DIR, adapted, optimizer, scheduler, record, sharded, rank,
                             {"epoch": epoch + 1, "skip": 0, "step": step, "partial": None},
                             train_model if zero3 else None)
            _exit_hook("HUPEFT_EXIT_AFTER_EPOCH", epoch)
    record["distributed"]["replica_checksums"] = _replica_checksums(params, accelerator, sharded or zero3)

    # 5. Save and score ------------------------------------------------------------------
    with distributed.full_parameters(adapted.model):  # every process, under FSDP
        record["diagnostics"] = {k: v for k, v in adapted.diagnostics().items() if k != "lambda"}
    # Every process evaluates its share of the examples with the model as trained (under FSDP the
    # sharded model itself: each forward gathers one layer at a time, so no process ever holds the
    # whole model); the main process scores the gathered outputs once.
    # Kept in step where every forward is a collective: FSDP, and DeepSpeed's ZeRO-3 (which gathers
    # each layer's parameters in its forward too).
    shard = distributed.EvalShard(rank, world, synced=sharded or strategy == "deepspeed")
    if cfg.save_adapter and out is not None:
        _save_adapter(out / ADAPTER_DIR, adapted, sharded or zero3, accelerator.is_main_process)
        record["adapter"] = ADAPTER_DIR  # hupeft.methods.load(base model, OUT/adapter)
    # (ZeRO-3: the engine's module, whose forward gathers each layer's partitions.)
    _score(cfg, record, out, bench, adapted.model if sharded else accelerator.unwrap_model(train_model),
           tok, splits, progress, shard)


def _score(cfg: RunConfig, record: RunRecord, out: Path | None, bench, model, tok, splits, progress: bool,
           shard) -> None:
    """Each process runs the model on its share of the eval split (hupeft.distributed.EvalShard);
    the main process scores, keeps the outputs and fills the record."""
    from . import data

    model.eval()
    eval_cut = data.Truncation()
    scores = bench.evaluate(model, tok, splits.eval, task=cfg.task, batch_size=cfg.eval_batch_size,
                            max_new_tokens=cfg.max_new_tokens, n_samples=cfg.n_samples,
                            temperature=cfg.temperature, progress=progress, truncation=eval_cut, shard=shard)
    if not shard.main:  # its outputs went to the main process, which scores them
        return
    if shard.world > 1:
        record["distributed"]["eval_examples"] = shard.counts
    _record_truncation(record, eval=eval_cut)
    record["scores"] = {k: float(v) for k, v in scores.items()}
    record["metric_signatures"] = dict(getattr(scores, "signatures", {}))
    if out is not None:
        record["kept_files"] = _keep_outputs(out, scores)
    if getattr(bench, "runs_code", False):  # which sandbox produced these scores (hupeft.sandbox)
        from hupeft.sandbox import isolation

        record["code_isolation"] = isolation()


ADAPTER_DIR = "adapter"


def _save_adapter(folder: Path, adapted, sharded: bool, main: bool) -> None:
    """The main process saves the adapter (full FT: the model). Under FSDP from the state gathered
    onto it (a collective every process joins), not from the DTensor shards each process holds."""
    state = distributed.full_state(adapted.model) if sharded else None
    if main:
        adapted.save(folder, state=state)


def _slice_for_process(whole: dict, rank: int, world: int, task: str) -> tuple[dict, float]:
    """This process's rows of a global batch (contiguous, sizes differing by at most one) and its
    weight: its share of the batch's loss terms (target tokens, or examples for seq-cls), so that
    the shares' weighted losses add up to the global batch's mean. A process left without rows
    (a last batch smaller than the processes) runs a stand-in row with weight 0: it still takes
    part in every collective, and adds nothing."""
    n = whole["input_ids"].shape[0]
    lo, hi = n * rank // world, n * (rank + 1) // world
    if hi == lo:
        return {k: v[:1] for k, v in whole.items()}, 0.0
    part = {k: v[lo:hi] for k, v in whole.items()}
    return part, _loss_terms(part, task) / _loss_terms(whole, task)


def _loss_terms(batch: dict, task: str) -> int:
    """How many terms the model's mean loss averages: shifted target tokens, or examples."""
    from .data import IGNORE

    labels = batch["labels"]
    return int((labels[:, 1:] != IGNORE).sum()) if task == "causal-lm" else int(labels.shape[0])


def _clip(accelerator, params: dict, clip_norm: float, sharded: bool) -> float:
    import torch

    limit = clip_norm or float("inf")
    if sharded:  # DTensor gradients: torch computes the norm over every shard
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), limit)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    else:
        norm = accelerator.clip_grad_norm_(list(params.values()), limit)
    return float(norm)


def _replica_checksums(params: dict, accelerator, sharded: bool) -> list[list[float]] | None:
    """Per process, (sum, sum of squares) of its trainable parameters: equal rows mean every
    replica ended with the same weights. None under FSDP or ZeRO-3, where each process holds a shard."""
    import torch

    if sharded:
        return None
    vals = [p.detach().double() for p in params.values()]
    mine = torch.stack([sum(v.sum() for v in vals), sum(v.pow(2).sum() for v in vals)]).to(accelerator.device)
    return accelerator.gather(mine[None]).cpu().tolist()


def _rank_step_hook(name: str, rank: int) -> int | None:
    """Test hooks, `name`=RANK:STEP: the optimiser step at which this process (if it is RANK)
    gets a NaN loss (HUPEFT_INJECT_NAN; the config's inject_nan_step does it on every process)
    or raises in its forward (HUPEFT_INJECT_ERROR); None otherwise."""
    spec = os.environ.get(name, "")
    if ":" not in spec:
        return None
    r, s = spec.split(":", 1)
    return int(s) if int(r) == rank else None


def _exit_hook(name: str, value: int) -> None:
    """Test hook: with the variable `name` set to `value`, every process exits right after the
    checkpoint just written, as a preempted job would (HUPEFT_EXIT_AFTER_EPOCH, ..._AFTER_STEP)."""
    if os.environ.get(name) == str(value):
        os._exit(137)


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


def _validation_loss(model, val_batches, to_dev, accelerator, rank: int, world: int, task: str) -> float:
    """Mean over validation batches of each batch's mean loss; each process scores its slice of
    every batch, and the slices' weighted losses are summed over the processes once at the end."""
    import torch

    from . import distributed

    model.eval()
    shares = []
    with torch.no_grad():
        for b in val_batches:
            part, weight = _slice_for_process(b, rank, world, task)
            with accelerator.autocast():
                shares.append(model(**to_dev(part)).loss.float().cpu() * weight)
    model.train()
    if not shares:
        return 0.0
    return float(distributed.all_reduce_sum(torch.stack(shares)).mean())


def _finish_epoch(record, epoch, acc, val_loss, t0, sampler, adapted) -> None:
    import torch

    from . import distributed

    losses, norms, branch, tokens = acc["losses"], acc["norms"], acc["branch"], acc["tokens"]
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
    with distributed.full_parameters(adapted.model):  # whole parameters under FSDP (every process)
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


def _save_checkpoint(folder: Path, adapted, optimizer, scheduler, record, sharded: bool, rank: int,
                     position: dict, engine=None) -> None:
    """Everything needed to continue from `position` (the epoch to run, the global batches of it
    already trained, the step count and the epoch's running sums), written to a temporary folder
    then renamed. The main process writes `state.pt` (position, schedule, the record so far, and
    outside FSDP the trainable state and optimiser); under FSDP every process writes its shards
    of the trainable state and optimiser with torch.distributed.checkpoint into `sharded/`, and
    its own RNG state; under ZeRO-3 the DeepSpeed `engine` writes every process's partitions into
    `deepspeed/`."""
    import shutil

    import torch

    from . import distributed

    tmp = folder.with_name(".checkpoint-partial")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    meta = {"scheduler": scheduler.state_dict(), "rng": _rng_state(), **position,
            "record": {k: record[k] for k in ("epochs", "steps", "hybrid_lambda")}}
    if sharded:
        import torch.distributed.checkpoint as dcp

        model_state, optim_state = _sharded_state(adapted, optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / "sharded"))
        torch.save(_rng_state(), tmp / f"rng{rank}.pt")
    elif engine is not None:  # the trained weights live only in the optimiser's fp32 partitions
        engine.save_checkpoint(str(tmp / "deepspeed"), tag=CHECKPOINT_DIR, save_latest=False)
    elif rank == 0:
        meta["adapter"] = {k: v.detach().cpu().clone() for k, v in adapted.adapter_state().items()}
        meta["optimizer"] = optimizer.state_dict()
    distributed.barrier()
    if rank == 0:
        torch.save(meta, tmp / "state.pt")
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()


def _sharded_state(adapted, optimizer):
    """The model's trainable state (frozen base weights are not checkpointed: they reload from
    the model) and the optimiser's, as DTensor shards keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(ignore_frozen_params=adapted.method != "full")
    return get_state_dict(adapted.model, optimizer, options=opts)


def _load_checkpoint(folder: Path, adapted, optimizer, scheduler, record, sharded: bool,
                     rank: int, engine=None) -> tuple[int, int, int, dict | None]:
    """Restore a checkpoint; (epoch to run, step, global batches of it to skip, its running sums)."""
    import numpy as np
    import torch

    ck = torch.load(folder / "state.pt", weights_only=False)
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        model_state, optim_state = _sharded_state(adapted, optimizer)
        dcp.load({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder / "sharded"))
        # Not strict: the frozen base is not in the checkpoint (dcp.load above already refused a
        # checkpoint that lacks any key of the trainable state).
        set_state_dict(adapted.model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(ignore_frozen_params=adapted.method != "full", strict=False))
        rng = torch.load(folder / f"rng{rank}.pt", weights_only=False)
    elif engine is not None:
        engine.load_checkpoint(str(folder / "deepspeed"), tag=CHECKPOINT_DIR)
        rng = ck["rng"]
    else:
        adapted.load_adapter_state(ck["adapter"])
        optimizer.load_state_dict(ck["optimizer"])
        rng = ck["rng"]
    scheduler.load_state_dict(ck["scheduler"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    for k, v in ck["record"].items():
        record[k] = v
    record["resumed_from_epoch"] = ck["epoch"] - 1  # epochs complete at the checkpoint
    record["resumed_from_step"] = ck["step"]
    return ck["epoch"], ck["step"], ck["skip"], ck["partial"]


# --- command line ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    docs = field_docs()
    keys = "\n".join(f"  {k:<24}{v.strip()}" for k, v in docs.items()
                     if k not in ("model", "method", "benchmark", "seed"))
    p = ArgumentParser(  # its errors: one line
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
    if (cfg.processes or 1) > 1 and distributed.launched_world() == 1:
        # Start the processes through accelerate; each runs this same command inside the launch.
        return 0 if distributed.launch(argv, cfg.processes, cfg.strategy) == 0 else 1
    record = run(cfg, args.out, resume=args.resume, progress=not args.quiet)
    if not distributed.is_main_process():
        # Only the main process writes the record; another rank's own failure would otherwise be
        # seen only as the main process's broken connection.
        if record["error"]:
            print(f"hupeft run (rank {distributed.process_rank()}): {record['error']}", file=sys.stderr)
        return 0 if record["status"] == "ok" else 1
    scores = ", ".join(f"{k}={v:.4f}" for k, v in record["scores"].items())
    print(f"{record['status']}: {args.out}/{RECORD_NAME}" + (f" ({scores})" if scores else ""))
    if record["error"]:
        print(record["error"].splitlines()[0], file=sys.stderr)
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))

