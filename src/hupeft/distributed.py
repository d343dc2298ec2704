"""Runs over several processes: the strategy (DDP, FSDP, DeepSpeed), starting the processes through
`accelerate launch`, and the few collectives the training loop needs.

One engine, accelerate: `hupeft run --set processes=N --set strategy=fsdp` re-runs the same command
under `accelerate launch` with the repository's config for that strategy
(hupeft/accelerate_configs/), which is what a user runs by hand on GPUs:

    accelerate launch --config_file src/hupeft/accelerate_configs/fsdp.yaml --num_processes 8 \\
        -m hupeft.experiment --model ... --method ... --benchmark ... --out ... --set strategy=fsdp

Why FSDP is applied here and not by accelerate's plugin: accelerate 1.15 only switches a launch to
FSDP on GPU-class devices (state.py maps every multi-process CPU run to MULTI_CPU, and
`Accelerator(cpu=True)` then ignores the FSDP plugin), so the plugin cannot shard the runs this
repository tests. We call the primitive its FSDP2 path calls, torch's `fully_shard`, once per
decoder layer and once at the root, on CPU and GPU alike; accelerate still starts the processes,
sets up the process group, places devices and runs autocast.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

STRATEGIES = ("auto", "single", "ddp", "fsdp", "fsdp_offload", "deepspeed")
SHARDED = ("fsdp", "fsdp_offload")
CONFIGS = Path(__file__).parent / "accelerate_configs"


class LaunchError(ValueError):
    """A strategy or process count that cannot run here; one line naming the fix."""


def launched_world() -> int:
    """Processes in the running launch (1 outside `accelerate launch` / torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_rank() -> int:
    """This process's rank in the launch (0 outside one)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 of a launch, or the only process: the one that writes records and files."""
    return process_rank() == 0


def resolve(strategy: str, world: int) -> str:
    """The strategy this launch runs: an explicit one, or ("auto") what the accelerate config
    asked for (its environment variables), DDP for several processes, else a single process."""
    if strategy != "auto":
        return strategy if world > 1 or strategy == "deepspeed" else "single"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and world > 1:
        offload = os.environ.get("FSDP_OFFLOAD_PARAMS", "").lower() == "true"
        return "fsdp_offload" if offload else "fsdp"
    return "ddp" if world > 1 else "single"


def check(strategy: str, processes: int | None) -> None:
    """Refuse what cannot run, before anything loads."""
    if strategy not in STRATEGIES:
        raise LaunchError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if processes is not None and processes < 1:
        raise LaunchError(f"processes must be >= 1 or none, got {processes}; e.g. --set processes=2")
    world = launched_world()
    if strategy == "single" and max(processes or 1, world) > 1:
        raise LaunchError("strategy=single runs one process; use strategy=ddp or fsdp with several processes")
    if processes is not None and world > 1 and processes != world:
        raise LaunchError(f"processes={processes} but this launch has {world} processes; drop --set processes "
                          "or launch that many")
    if strategy == "fsdp_offload":
        import torch

        if not torch.cuda.is_available():  # torch's CPUOffloadPolicy needs an accelerator to offload from
            raise LaunchError("strategy=fsdp_offload keeps GPU shards in CPU memory and needs a GPU; "
                              "on the CPU use strategy=fsdp")
    if strategy == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise LaunchError("strategy=deepspeed needs DeepSpeed: pip install 'hupeft[deepspeed]' "
                              "(or pick strategy=fsdp)")
        if max(processes or 1, world) < 2:  # ZeRO-3 partitions over processes; alone it only adds overhead
            raise LaunchError("strategy=deepspeed partitions the model over several processes; add --set processes=2 "
                              "or more, or use strategy=single")
        if world > 1 and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
            raise LaunchError(f"strategy=deepspeed needs a DeepSpeed launch: accelerate launch --config_file "
                              f"{config_file('deepspeed')} (or let hupeft run --set processes=N launch it)")


# Methods whose step reads or rewrites gradients between backward and the optimiser step, or
# steps some parameters itself: under ZeRO-3 the engine steps inside backward, on flat partitions.
NOT_DEEPSPEED = {"urnn": "its manifold step on U needs each whole gradient",
                 "hybrid": "its lambda rule rescales each branch's whole gradient before the step"}


def check_method(strategy: str, family: str, quantization: str | None) -> None:
    """Refuse, before launching, a method or base that DeepSpeed ZeRO-3 cannot train."""
    if strategy != "deepspeed":
        return
    if family in NOT_DEEPSPEED:
        raise LaunchError(f"strategy=deepspeed cannot train {family}: {NOT_DEEPSPEED[family]}; "
                          "use strategy=fsdp or ddp")
    if quantization:
        raise LaunchError(f"strategy=deepspeed cannot partition a {quantization} base's packed weights; "
                          "use strategy=fsdp (4bit) or ddp")


def config_file(strategy: str) -> Path:
    """The repository's accelerate config for a strategy (single and auto use DDP's)."""
    name = strategy if strategy in ("ddp", "fsdp", "fsdp_offload", "deepspeed") else "ddp"
    return CONFIGS / f"{name}.yaml"


def launch_command(argv: list[str], processes: int, strategy: str) -> list[str]:
    """`accelerate launch` of `hupeft.experiment` with the same arguments, N processes. Without
    GPUs, accelerate runs them on the CPU with gloo."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file(strategy)),
           "--num_processes", str(processes), "--main_process_port", str(_free_port())]
    return cmd + ["-m", "hupeft.experiment", *argv]


def launch(argv: list[str], processes: int, strategy: str) -> int:
    """Start the processes and wait; their exit status (0 only if every process succeeded)."""
    return subprocess.run(launch_command(argv, processes, strategy), check=False, env=launch_env(strategy)).returncode


def launch_env(strategy: str) -> dict:
    """The launch's environment: DeepSpeed is told it runs on the CPU where no GPU is, rather than
    probing every accelerator it knows in each process."""
    env = dict(os.environ)
    if strategy == "deepspeed" and "DS_ACCELERATOR" not in env:
        import torch

        if not torch.cuda.is_available():
            env["DS_ACCELERATOR"] = "cpu"
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- sharding ---------------------------------------------------------------------------------


def _decoder_layers(model) -> list:
    """The blocks each get their own FSDP unit: the classes a transformers model names in
    `_no_split_modules` (what accelerate's TRANSFORMER_BASED_WRAP wraps by default)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard(model, strategy: str, device, precision: str):
    """FSDP2 over every process: each decoder layer a unit, then the root (embeddings, head).
    Parameters become DTensors sharded on dim 0; the optimiser must be built afterwards."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(torch.device(device).type, (launched_world(),))
    kw = {"mesh": mesh}
    if precision in ("bf16", "fp16"):
        # Compute in low precision, reduce gradients and keep the sharded master weights in fp32.
        low = torch.bfloat16 if precision == "bf16" else torch.float16
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
    if strategy == "fsdp_offload":
        kw["offload_policy"] = CPUOffloadPolicy()
    for layer in _decoder_layers(model):
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    if hasattr(model, "generate"):
        # A PEFT model's generate calls the inner model's forward, never the root's, so the root
        # unit (embeddings, head) would stay sharded: generate gathers it as forward does.
        register_fsdp_forward_method(model, "generate")
    return model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


@contextlib.contextmanager
def full_parameters(model):
    """Every FSDP unit gathered, so parameters are whole plain tensors inside (for diagnostics,
    movement, saving, evaluation); a no-op for an unsharded model. Collective: every rank enters."""
    from torch.distributed.fsdp import FSDPModule

    if is_deepspeed(model):  # ZeRO-3: every partitioned parameter gathered whole on every process
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield model
        return
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for u in units:
        u.set_reshard_after_forward(False)  # forwards inside (generation) reuse the gathered weights
        u.unshard()
    try:
        yield model
    finally:
        for u in units:
            u.reshard()
            u.set_reshard_after_forward(True)


def full_state(model) -> dict:
    """The whole state dict of a sharded model, in full precision, on the main process's CPU (an
    empty dict elsewhere). Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if is_deepspeed(model):
        with full_parameters(model):
            return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if is_main_process() else {}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def local(t):
    """This rank's part of a tensor: the local shard of a DTensor, else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def all_reduce_sum(t):
    """`t` summed over the processes (in place, returned); unchanged in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# --- sharded evaluation -----------------------------------------------------------------------


class _SeenRows:
    """A stand-in for hupeft.data.Truncation that keeps every `see` call, so that the calls of
    padding rows can be dropped and the rest replayed on the main process."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def see(self, n_tokens: int, limit: int) -> bool:
        self.calls.append((n_tokens, limit))
        return n_tokens > limit


class EvalShard:
    """This process's part of an evaluation: each process runs the model on a contiguous share of
    the examples (sizes differing by at most one), and the main process gets every output back in
    the examples' order to score them once.

    synced (FSDP): every forward is a collective, so the shorter shares are padded with copies of
    an example to the longest share's length (same batches everywhere; their outputs are dropped),
    and generation must keep stepping until every process is done (HF's synced_gpus).
    counts: on the main process, the examples each process ran (every pass of an evaluation, such
    as HumanEval's greedy and sampled ones, covers the same examples)."""

    def __init__(self, rank: int = 0, world: int = 1, synced: bool = False):
        self.rank, self.world, self.synced = rank, world, synced and world > 1
        self.counts = [0] * world

    @property
    def main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int, rank: int) -> tuple[int, int]:
        return n * rank // self.world, n * (rank + 1) // self.world

    def map(self, fn, items, truncation=None):
        """fn(share, truncation) -> one output per item of `share`; every item's output, in the
        order of `items`, on the main process (None on the others). `truncation` (a
        hupeft.data.Truncation) ends up counting every item once, on the main process."""
        items = list(items)
        if self.world == 1:  # exactly the single-process call
            self.counts[0] = len(items)
            return fn(items, truncation)
        lo, hi = self.bounds(len(items), self.rank)
        mine = items[lo:hi]
        longest = -(-len(items) // self.world)
        share = mine + [items[0]] * (longest - len(mine) if self.synced else 0)
        seen = _SeenRows()
        outs = fn(share, seen)
        per_row = len(seen.calls) // len(share) if share else 0
        parts = gather_object((list(outs)[:len(mine)], seen.calls[:per_row * len(mine)]))
        return None if parts is None else self._join(parts, truncation)

    def _join(self, parts: list, truncation) -> list:
        """The shares' outputs one after another (contiguous shares: the examples' order), each
        process's count, and its prompts' truncation replayed into `truncation`."""
        joined = []
        for rank, (rows, calls) in enumerate(parts):
            joined.extend(rows)
            self.counts[rank] = len(rows)
            for call in calls if truncation is not None else ():
                truncation.see(*call)
        return joined


def gather_object(obj):
    """Every process's `obj`, in rank order, on the main process (None elsewhere); [obj] in a
    single process. Collective (gloo gathers pickled objects)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


# --- DeepSpeed ZeRO-3 -------------------------------------------------------------------------


def deepspeed_process_group(cuda: bool) -> None:
    """Before the Accelerator of a DeepSpeed launch: on the CPU, start the process group on gloo.

    accelerate 1.15 finds no backend for a DeepSpeed launch without a GPU (state.py: only
    MULTI_CPU, which DeepSpeed's launch is not, gets gloo), so each process would count itself as
    the only one; naming gloo gives PartialState the launch's ranks, and DeepSpeed's CPU
    accelerator uses gloo when oneCCL is absent. DeepSpeed's torch backend also JIT-compiles a
    shared-memory all-reduce at start (a C++ compiler, ~30 s once per machine) that only its
    tensor-parallel inference calls; ZeRO's collectives do not, so it is marked unbuildable."""
    if cuda:
        return
    import deepspeed.ops
    from accelerate import PartialState

    compatible = deepspeed.ops.__compatible_ops__
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False
    if not PartialState._shared_state:
        import atexit

        import torch.distributed as dist

        PartialState(cpu=False, backend="gloo")
        # torch asks for the process group to be destroyed before exit. A process that left with
        # DeepSpeed's gloo groups alive while the main process still scored has been seen to abort
        # at exit ("terminate called without an active exception"), so the launch failed and
        # killed the main process before it wrote the record.
        atexit.register(lambda: dist.destroy_process_group() if dist.is_initialized() else None)


def build_models_whole() -> None:
    """Models built from here on are whole on each process, as under the other strategies (the
    methods' initialisations read whole weights and gradients). accelerate's DeepSpeed plugin
    registers its ZeRO-3 config with transformers, which would then build every model partitioned
    (zero.Init) at load; prepare partitions the model instead, once the method is applied."""
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def deepspeed_config(accelerator, micro_batch: int, grad_accum: int, clip_norm: float) -> None:
    """The entries of the launch's DeepSpeed config that are the run's: no dataloader goes through
    prepare, so the batch sizes are set here; clipping (0: none) is done by the engine's step."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = micro_batch
    ds["gradient_accumulation_steps"] = grad_accum
    ds["train_batch_size"] = micro_batch * grad_accum * accelerator.num_processes
    ds["gradient_clipping"] = float(clip_norm or 0.0)


def is_deepspeed(model) -> bool:
    """Whether ZeRO-3 partitions this model's parameters (DeepSpeed tags each with ds_id)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def deepspeed_backward(engine, loss, boundary: bool) -> float | None:
    """Backward through the engine, and at the end of a global batch its step (clip, AdamW, zero
    the gradients): under ZeRO-3 only the engine holds the reduced gradient partitions. The loss
    is already divided by the accumulation steps, as for the other strategies. Returns the global
    gradient norm before clipping at a boundary."""
    engine.set_gradient_accumulation_boundary(boundary)
    engine.backward(loss, scale_wrt_gas=False)
    if not boundary:
        return None
    engine.step()
    norm = engine.get_global_grad_norm()
    return float(norm)
