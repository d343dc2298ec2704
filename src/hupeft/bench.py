"""`hupeft bench`: training-step time and peak memory of every method on one model.

Each method runs in its own child processes, so that its peak memory is its own. Step time is
the median over `--steps` timed steps after `--warmup` untimed ones (forward, backward, the
method's hooks and the optimiser step), with the default allocator. Initialisation that happens
once (LoRA-GA's gradient estimate) is not timed.

Peak memory on GPU is torch.cuda.max_memory_allocated. On CPU there is no such counter, so a
second child repeats a few steps with glibc told to return every block above 64 KiB to the OS
(MALLOC_MMAP_THRESHOLD_): its resident set then follows the live tensors, as CUDA's "allocated"
figure does, instead of also counting the free blocks malloc keeps (that second figure, as
CUDA's "reserved" would, is in the JSON as `rss_with_cached_bytes`). That child is slower, which
is why it is not the one timed. Both figures are the peak resident set sampled during the steps
minus the resident set before the model was loaded: weights, training state and activations,
without the Python runtime (see hupeft.memory).

Rows:
  full, lora, boft (m=3), boft_m1, loraga, urnn, hybrid   hupeft's methods
  peft_lora, peft_boft_m1                               PEFT's own layers, as references
  frozen                                                forward+backward through the frozen
                                                        model (inputs require grad): the floor
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROWS = ["frozen", "full", "lora", "peft_lora", "loraga", "boft", "boft_m1", "peft_boft_m1",
        "urnn", "hybrid"]


def _batch(vocab: int, batch: int, seq: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _prepare(row: str, model, targets, batch_fn):
    """Apply the row's method; return (model to call, trainable params, before_step, after_step,
    optimiser factory lr -> optimiser: the method's own, as a run builds it)."""
    import torch

    from hupeft import methods

    noop = lambda: None  # noqa: E731
    if row == "frozen":
        for p in model.parameters():
            p.requires_grad_(False)
        model.enable_input_require_grads()  # backward runs through every layer, no weight grads
        return model, [], noop, noop, None
    if row == "peft_lora":
        from peft import LoraConfig, get_peft_model

        m = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=list(targets)))
        params = [p for p in m.parameters() if p.requires_grad]
        return m, params, noop, noop, lambda lr: torch.optim.AdamW(params, lr=lr)
    if row == "peft_boft_m1":
        from peft import BOFTConfig, get_peft_model

        m = get_peft_model(model, BOFTConfig(boft_block_size=8, boft_n_butterfly_factor=1,
                                             target_modules=list(targets)))
        params = [p for p in m.parameters() if p.requires_grad]
        return m, params, noop, noop, lambda lr: torch.optim.AdamW(params, lr=lr)
    name, opts = {"boft_m1": ("boft", {"n_factors": 1})}.get(row, (row, {}))
    if name != "full":
        opts["target_modules"] = tuple(targets)
    init = [batch_fn(1000 + i) for i in range(2)] if name in methods.NEEDS_INIT_BATCHES else None
    adapted = methods.apply(model, name, init_batches=init, **opts)
    return (adapted.model, list(adapted.trainable_parameters().values()), adapted.before_step, adapted.after_step,
            adapted.optimizer)


PRECISIONS = ("fp32", "bf16-mixed", "bf16")


def measure_one(row: str, model_name: str, targets, batch: int, seq: int, warmup: int, steps: int,
                precision: str = "fp32") -> dict:
    import contextlib

    import torch

    from hupeft import models
    from hupeft.memory import PeakRSS, current_rss, trim

    trim()
    baseline = current_rss()
    loaded = models.load(model_name, dtype=torch.bfloat16 if precision == "bf16" else None)
    model = loaded.model
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    # bf16-mixed is what `hupeft run` does on a GPU: fp32 weights, bf16 autocast (accelerate).
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if precision == "bf16-mixed" \
        else contextlib.nullcontext
    model.to(device)
    vocab = model.config.vocab_size
    batch_fn = lambda s: {k: v.to(device) for k, v in _batch(vocab, batch, seq, s).items()}  # noqa: E731
    model.train()
    call, params, before, after, make_opt = _prepare(row, model, targets, batch_fn)
    opt = make_opt(1e-5) if params else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    sampler = PeakRSS()
    for i in range(warmup + steps):
        if i == warmup and not cuda:
            sampler.__enter__()
        b = batch_fn(i)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast():
            loss = call(**b).loss
        loss.float().backward()
        before()
        if opt:
            opt.step()
            opt.zero_grad(set_to_none=True)
        after()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    else:
        sampler.__exit__(None, None, None)
        peak, kind = sampler.peak - baseline, "cpu_rss_above_baseline"
    return {"step_seconds": statistics.median(times), "step_seconds_all": times,
            "peak_memory_bytes": int(peak), "memory_kind": kind,
            "trainable_params": int(sum(p.numel() for p in params)), "device": _device_name()}


def _device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def run(model_name: str, rows: list[str], targets, batch: int, seq: int, warmup: int, steps: int,
        threads: int | None, precision: str = "fp32") -> dict:
    from tqdm import tqdm

    out = {"model": model_name, "batch": batch, "seq_len": seq, "targets": list(targets),
           "warmup": warmup, "steps": steps, "precision": precision, "methods": {}}
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    # Build the cached checkpoint once in this process so no child pays for it while timed.
    from hupeft import models

    if model_name == "smollm2-135m":
        models.smollm2_checkpoint()
    import torch

    live_env = None if torch.cuda.is_available() else {**env, "MALLOC_MMAP_THRESHOLD_": "65536"}

    def child(row: str, env: dict, warmup: int, steps: int) -> dict:
        cmd = [sys.executable, "-m", "hupeft.bench", "--child", row, "--model", model_name,
               "--targets", ",".join(targets), "--batch", str(batch), "--seq-len", str(seq),
               "--warmup", str(warmup), "--steps", str(steps), "--precision", precision]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        return json.loads(proc.stdout.strip().splitlines()[-1])

    for row in tqdm(rows, desc="bench", unit="method"):
        result = child(row, env, warmup, steps)
        if "error" not in result and live_env is not None:
            live = child(row, live_env, 1, 2)
            if "error" in live:
                result = live
            else:
                result["rss_with_cached_bytes"] = result["peak_memory_bytes"]
                result["peak_memory_bytes"] = live["peak_memory_bytes"]
                result["memory_kind"] = "cpu_live_rss_above_baseline"
        if "error" in result:
            tqdm.write(f"{row}: failed: {result['error']}")
        out["methods"][row] = result
    return out


def table(result: dict) -> str:
    rows = result["methods"]
    lora = rows.get("lora", {}).get("step_seconds")
    full = rows.get("full", {})
    lines = [f"{'method':<14}{'step s':>9}{'x lora':>9}{'x full':>9}{'x floor':>9}{'peak MiB':>11}"
             f"{'mem x full':>12}{'trainable':>12}", "-" * 85]
    floor = rows.get("frozen", {}).get("step_seconds")
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"{name:<14}  failed: {r['error']}")
            continue
        s, m = r["step_seconds"], r["peak_memory_bytes"]
        xl = f"{s / lora:.2f}" if lora else "-"
        xf = f"{s / full['step_seconds']:.2f}" if full.get("step_seconds") else "-"
        xo = f"{s / floor:.2f}" if floor else "-"
        mf = f"{m / full['peak_memory_bytes']:.2f}" if full.get("peak_memory_bytes") else "-"
        lines.append(f"{name:<14}{s:>9.3f}{xl:>9}{xf:>9}{xo:>9}{m / 2**20:>11.0f}{mf:>12}{r['trainable_params']:>12,}")
    kind = next((r["memory_kind"] for r in rows.values() if "memory_kind" in r), "?")
    device = next((r["device"] for r in rows.values() if "device" in r), "?")
    lines.append(f"\nmodel {result['model']}, batch {result['batch']} x {result['seq_len']}, "
                 f"targets {','.join(result['targets'])}, {result.get('precision', 'fp32')}, median of {result['steps']} steps after "
                 f"{result['warmup']} warm-up; memory: {kind}; {device}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hupeft bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model name (default: smollm2-135m)")
    p.add_argument("--methods", default=",".join(ROWS), help=f"comma-separated rows (default: all: {','.join(ROWS)})")
    p.add_argument("--targets", default="q_proj,v_proj", help="linear layers to adapt (default: q_proj,v_proj)")
    p.add_argument("--batch", type=int, default=4, help="batch size (default: 4)")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length (default: 128)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (default: 5)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default); bf16-mixed: fp32 weights under bf16 autocast, as `hupeft run` "
                        "on a GPU; bf16: weights in bf16")
    p.add_argument("--threads", type=int, default=None, help="OMP/torch threads per child (default: torch's)")
    p.add_argument("--json", dest="json_path", default=None, help="write the figures as JSON to this path")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def cli_main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if args.child:
        print(json.dumps(measure_one(args.child, args.model, targets, args.batch, args.seq_len,
                                     args.warmup, args.steps, args.precision)))
        return 0
    rows = [r for r in args.methods.split(",") if r]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        print(f"hupeft bench: unknown method row(s) {bad}; choose from {','.join(ROWS)}", file=sys.stderr)
        return 2
    if min(args.batch, args.seq_len, args.steps) <= 0 or args.warmup < 0:
        print("hupeft bench: --batch, --seq-len and --steps must be > 0 and --warmup >= 0", file=sys.stderr)
        return 2
    result = run(args.model, rows, targets, args.batch, args.seq_len, args.warmup, args.steps, args.threads,
                 args.precision)
    print(table(result))
    if args.json_path:
        from hupeft.records import atomic_write_text

        slim = {**result, "methods": {k: {kk: vv for kk, vv in v.items() if kk != "step_seconds_all"}
                                      for k, v in result["methods"].items()}}
        atomic_write_text(Path(args.json_path), json.dumps(slim, indent=2))
    return 1 if any("error" in r for r in result["methods"].values()) else 0


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
