"""Memory and time of every cell of a preset, from the model's config on the meta device: `hupeft plan`.

Nothing is downloaded and no weight is allocated. The model is built on PyTorch's meta device
twice, with one and with two decoder layers, and the cell's method is applied to it as a run
applies it; the difference between the two is one layer, so every count (parameters by dtype,
trainable parameters, the method's buffers, the tensors autograd saves for backward) scales to
the real depth exactly, for any architecture transformers can build from a config. Counting
the saved tensors of a real forward pass, rather than a per-architecture factor, is why the
figures hold for every method's own layers too.

Per GPU, for the cell's strategy over P processes:
  ddp           every process holds the weights, gradients and optimiser states (and DDP's
                gradient buckets, a second copy of the gradients when P > 1)
  fsdp          weights, gradients and optimiser states sharded over P; the layer being run
                (and the next, prefetched) gathered whole
  fsdp_offload  as fsdp, with the shards in the node's CPU memory
A 4-bit or 8-bit base stores its decoder linears quantized (bitsandbytes NF4 with double
quantization: 0.5 B + one 8-bit constant per 64 weights + one fp32 per 256 blocks) and, as
peft's prepare_model_for_kbit_training does, keeps every other parameter in fp32.

Activations: batch_size x max_len tokens per process (the longest a micro-batch can be). With
gradient checkpointing, each layer keeps its input and one layer is recomputed at a time.
LoRA-GA and the hybrid estimate the gradient of every targeted weight first (one fp32 matrix
each, held together on every process, before the optimiser exists): that is a second peak,
`init`, beside the training peak. The cell needs the larger of the two, plus
`overhead_bytes` (CUDA context and allocator slack).

Time: training FLOPs per token are 2N forward (N parameters in matrix multiplications, plus
attention's 2 x layers x max_len x hidden), twice that again for the backward of a method that
trains every weight, once for one that only needs input gradients, and one more forward with
checkpointing; divided by the GPUs' peak FLOP/s times a stated utilisation. Evaluation and
generation are not in the estimate.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

GB = 1e9
MODELS_YAML = Path(__file__).resolve().parents[2] / "data" / "paper" / "models.yaml"
STRATEGY_NAMES = ("ddp", "fsdp", "fsdp_offload")
# NF4 with double quantization (bitsandbytes): 4 bits, an 8-bit absmax per 64 weights, and an
# fp32 constant per 256 of those.
QUANT_BYTES = {"4bit": 0.5 + 1 / 64 + 4 / (64 * 256), "8bit": 1.0 + 4 / 4096}


class PlanError(ValueError):
    """Bad plan input; the message is one line and names the fix."""


@dataclass
class Hardware:
    gpu_memory: float = 80 * GB
    gpus_per_node: int = 8
    cpu_memory: float = 1000 * GB
    """Per node (fsdp_offload keeps the shards there)."""
    gpu_flops: float = 312e12
    """Peak dense bf16 FLOP/s of one GPU (A100: 312 TFLOP/s)."""
    utilisation: float = 0.4
    overhead_bytes: float = 3 * GB
    """CUDA context, NCCL buffers and allocator slack per GPU."""
    usable: float = 0.95
    """Share of a GPU's memory a cell may plan to use."""


# --- model configs without downloads ------------------------------------------------------------


@lru_cache(maxsize=None)
def paper_models() -> dict[str, dict]:
    """data/paper/models.yaml, by hub id."""
    import yaml

    if not MODELS_YAML.exists():
        raise PlanError(f"{MODELS_YAML} not found; run from a clone of the hupeft repository")
    return {m["id"]: m for m in yaml.safe_load(MODELS_YAML.read_text())["models"]}


def model_config(name: str):
    """The transformers config of `name`: the paper's models from data/paper/models.yaml, the
    embedded and tiny ones as hupeft.models builds them, a hub id from the local cache."""
    from transformers import BloomConfig, LlamaConfig

    entry = paper_models().get(name)
    if entry is not None:
        if entry["architecture"] == "BloomForCausalLM":
            return BloomConfig(vocab_size=entry["vocab_size"], hidden_size=entry["hidden_size"],
                               n_layer=entry["num_hidden_layers"], n_head=entry["num_attention_heads"],
                               tie_word_embeddings=entry["tie_word_embeddings"])
        return LlamaConfig(vocab_size=entry["vocab_size"], hidden_size=entry["hidden_size"],
                           intermediate_size=entry["intermediate_size"],
                           num_hidden_layers=entry["num_hidden_layers"],
                           num_attention_heads=entry["num_attention_heads"],
                           num_key_value_heads=entry["num_key_value_heads"],
                           max_position_embeddings=entry["max_position_embeddings"],
                           tie_word_embeddings=entry["tie_word_embeddings"])
    from . import models

    config = models.model_config(name)
    if config is None:
        raise PlanError(f"no config for {name!r} offline; add its config.json numbers to {MODELS_YAML.name} "
                        "or download it first (huggingface-cli download)")
    return config


# --- counting on the meta device ------------------------------------------------------------------


@dataclass
class Counts:
    """What one model (at its real depth) holds, in bytes unless named otherwise."""

    layers: int
    hidden: int
    params: int
    matmul_params: int
    quantizable_params: int
    """The base's linear weights but the output head: what bitsandbytes quantizes."""
    weight_bytes: float
    trainable: int
    trainable_bytes: float
    method_state_bytes: float
    activation_bytes: float
    layer_activation_bytes: float
    layer_input_bytes: float
    largest_layer_bytes: float
    estimate_bytes: float
    """LoRA-GA's gradient estimate held at once (all targets, or `estimate_layers` of them)."""
    estimate_passes: int
    trains_base: bool


def _dtype_bytes(dtype) -> int:
    import torch

    return torch.finfo(dtype).bits // 8 if dtype.is_floating_point else torch.iinfo(dtype).bits // 8


def _set_depth(config, layers: int):
    config = copy.deepcopy(config)
    config.num_hidden_layers = layers  # BloomConfig maps num_hidden_layers to n_layer
    return config


ATTENTION = "hupeft-plan-fused"


def _fused_attention():
    """An attention that holds for backward what fused kernels (FlashAttention on a GPU, PyTorch's
    flash kernel on a CPU) hold: queries, keys, values, the output and one fp32 log-sum-exp per
    query and head, never the seq x seq probabilities that the math fallback on the meta device
    would save."""
    import torch
    from transformers import AttentionInterface

    class Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = torch.empty_like(q)
            ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
            return out

        @staticmethod
        def backward(ctx, grad):  # never run: the plan only counts what forward saves
            q, k, v, _, _ = ctx.saved_tensors
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

    def attention(module, query, key, value, attention_mask, **kwargs):
        return Fused.apply(query, key, value).transpose(1, 2), None

    AttentionInterface.register(ATTENTION, attention)


def _build(auto, config, dtype):
    """The model on the meta device, with the fused-attention stand-in where the architecture
    takes pluggable attention (Llama does; BLOOM's own attention saves its probabilities, and
    so does its real run)."""
    import torch

    _fused_attention()
    with torch.device("meta"):
        try:
            return auto.from_config(config, dtype=dtype, attn_implementation=ATTENTION)
        except (ValueError, TypeError, KeyError):
            return auto.from_config(config, dtype=dtype)


def _measure(config, task: str, method: str, options: dict, dtype, batch: int, seq: int) -> dict:
    """Build a meta model, apply the method as a run does, run one forward on meta tensors, and
    count what is held: parameters, trainable ones, buffers, saved activations."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from . import methods

    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    model = _build(auto, config, dtype)
    base_buffers = {id(b) for b in model.buffers()}
    base_params = {id(p) for p in model.parameters()}
    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta")
    # No attention mask: transformers would read it with .item(), which meta tensors refuse; a
    # full mask costs the same memory.
    sample = {"input_ids": ids, "labels": ids if task == "causal-lm" else torch.zeros(batch, dtype=torch.long, device="meta")}
    init = [sample] if method in methods.NEEDS_INIT_BATCHES else None
    model.train()
    adapted = methods.apply(model, method, dict(options), init_batches=init)
    trainable = adapted.trainable_parameters()
    tparams = list(trainable.values())
    all_params = list(adapted.model.parameters())
    added = [p for p in adapted.model.parameters() if not p.requires_grad and id(p) not in base_params]
    state = sum(b.numel() * _dtype_bytes(b.dtype) for b in adapted.model.buffers() if id(b) not in base_buffers)
    state += sum(p.numel() * _dtype_bytes(p.dtype) for p in added)
    targets = [n for n in adapted.adapter_layers()] if method in methods.NEEDS_INIT_BATCHES else []
    sizes = [adapted.model.get_submodule(n).out_features * adapted.model.get_submodule(n).in_features * 4
             for n in targets]
    matmul = sum(m.weight.numel() for m in adapted.model.modules()
                 if isinstance(m, torch.nn.Linear) and m.weight is not None)
    head = adapted.model.get_output_embeddings() if hasattr(adapted.model, "get_output_embeddings") else None
    head = head.weight.numel() if isinstance(head, torch.nn.Linear) else 0
    adapter_linear = sum(m.weight.numel() for m in adapted.model.modules()
                         if isinstance(m, torch.nn.Linear) and m.weight.requires_grad) if method != "full" else 0
    # Saved tensors, each counted once (a view counts as its base); parameters and buffers that
    # autograd saves (a linear's weight, for the input's gradient) are already counted as weights.
    held = {id(p) for p in all_params} | {id(b) for b in adapted.model.buffers()}
    seen: dict = {}

    def pack(t):
        base = t._base if t._base is not None else t
        if id(base) not in held:
            seen[id(base)] = max(seen.get(id(base), 0), base.numel() * base.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = adapted.model(**sample)
    del out
    return {"params": sum(p.numel() for p in all_params),
            "all_param_bytes": sum(p.numel() * _dtype_bytes(p.dtype) for p in all_params),
            "trainable": sum(p.numel() for p in tparams),
            "trainable_bytes": sum(p.numel() * _dtype_bytes(p.dtype) for p in tparams),
            "state": state, "estimate": sum(sizes), "targets": len(sizes), "largest_target": max(sizes, default=0),
            "matmul": matmul, "quantizable": matmul - head - adapter_linear,
            "saved": sum(seen.values())}


def counts(name: str, task: str, method: str, options: dict, dtype, batch: int, seq: int) -> Counts:
    """Counts for `name` at its real depth, from meta models of depth 1 and 2."""
    return _counts(name, task, method, json.dumps(options, sort_keys=True), str(dtype), batch, seq)


@lru_cache(maxsize=None)
def _counts(name, task, method, options_json, dtype_name, batch, seq) -> Counts:
    import torch

    dtype = getattr(torch, dtype_name.replace("torch.", ""))
    return counts_from_config(model_config(name), task, method, json.loads(options_json), dtype, batch, seq)


def counts_from_config(config, task: str, method: str, options: dict, dtype, batch: int, seq: int) -> Counts:
    depth = config.num_hidden_layers
    one = _measure(_set_depth(config, 1), task, method, options, dtype, batch, seq)
    two = _measure(_set_depth(config, 2), task, method, options, dtype, batch, seq)
    at = lambda key: one[key] + (depth - 1) * (two[key] - one[key])  # noqa: E731
    hidden = config.hidden_size
    act_bytes = _dtype_bytes(dtype)
    targets, step = int(at("targets")), options.get("estimate_layers")
    estimate = at("estimate") if not step or step >= targets else step * two["largest_target"]
    passes = math.ceil(targets / step) if step and targets else 1
    return Counts(layers=depth, hidden=hidden, params=int(at("params")), matmul_params=int(at("matmul")),
                  quantizable_params=int(at("quantizable")),
                  weight_bytes=at("all_param_bytes"), trainable=int(at("trainable")),
                  trainable_bytes=at("trainable_bytes"), method_state_bytes=at("state"),
                  activation_bytes=at("saved"), layer_activation_bytes=two["saved"] - one["saved"],
                  layer_input_bytes=batch * seq * hidden * act_bytes,
                  largest_layer_bytes=two["all_param_bytes"] - one["all_param_bytes"],
                  estimate_bytes=estimate, estimate_passes=passes, trains_base=method == "full")


# --- one cell ---------------------------------------------------------------------------------


@dataclass
class Need:
    """What one cell needs under one strategy on `gpus` GPUs; bytes per GPU."""

    strategy: str
    gpus: int
    nodes: int
    weights: float
    grads: float
    optimizer: float
    activations: float
    estimate: float
    method_state: float
    gathered: float
    overhead: float
    train_peak: float
    init_peak: float
    peak: float
    cpu_per_node: float
    fits: bool
    reason: str = ""


def _weights_bytes(c: Counts, quantization: str | None, dtype_bytes: int) -> float:
    """Weights in memory: as built, or with the base's linears but the output head (which
    transformers keeps) quantized, and every other parameter in fp32 as
    prepare_model_for_kbit_training leaves it."""
    if not quantization:
        return c.weight_bytes
    return c.quantizable_params * QUANT_BYTES[quantization] + (c.params - c.quantizable_params) * 4


def need(cfg, hw: Hardware, strategy: str, gpus: int, dtype_bytes: int, c: Counts) -> Need:
    """Memory per GPU of `cfg` under `strategy` on `gpus` GPUs."""
    weights = _weights_bytes(c, cfg.quantization, dtype_bytes)
    grads = c.trainable_bytes
    optimizer = 2 * c.trainable_bytes  # AdamW: two states, in each parameter's own dtype
    if cfg.gradient_checkpointing:
        act = c.layers * c.layer_input_bytes + c.layer_activation_bytes + \
            (c.activation_bytes - c.layers * c.layer_activation_bytes)
    else:
        act = c.activation_bytes
    nodes = math.ceil(gpus / hw.gpus_per_node)
    shard = 1 if strategy == "ddp" else gpus
    layer_bytes = c.largest_layer_bytes if not cfg.quantization else \
        c.largest_layer_bytes * QUANT_BYTES[cfg.quantization] / dtype_bytes
    gathered = 0.0 if strategy == "ddp" else 2 * layer_bytes
    buckets = grads if (strategy == "ddp" and gpus > 1) else 0.0
    on_gpu_state = 0.0 if strategy == "fsdp_offload" else (weights + grads + optimizer + c.method_state_bytes) / shard
    cpu_per_node = (weights + grads + optimizer + c.method_state_bytes) / nodes if strategy == "fsdp_offload" else 0.0
    train = on_gpu_state + buckets + gathered + act + hw.overhead_bytes
    # LoRA-GA / hybrid: the estimate is taken through hooks on each process's own forward, so
    # every process holds all of it (no sharding), before any optimiser state exists.
    init = 0.0
    if c.estimate_bytes:
        init = (0.0 if strategy == "fsdp_offload" else weights / shard) + gathered + c.estimate_bytes + act \
            + hw.overhead_bytes
    peak = max(train, init)
    limit = hw.gpu_memory * hw.usable
    reasons = []
    if peak > limit:
        part = "the gradient estimate of LoRA-GA" if init > train else "training"
        reasons.append(f"{part} needs {peak / GB:.1f} GB per GPU, over {limit / GB:.0f} GB")
    if strategy == "fsdp_offload" and cpu_per_node > hw.cpu_memory * hw.usable:
        reasons.append(f"offloaded state needs {cpu_per_node / GB:.0f} GB of CPU memory per node, "
                       f"over {hw.cpu_memory * hw.usable / GB:.0f} GB")
    if cfg.quantization and strategy == "fsdp_offload":
        reasons.append("a quantized base is not offloaded")
    return Need(strategy, gpus, nodes, weights / (1 if strategy == "ddp" else gpus) if strategy != "fsdp_offload" else 0.0,
                grads / shard if strategy != "fsdp_offload" else 0.0,
                optimizer / shard if strategy != "fsdp_offload" else 0.0, act, c.estimate_bytes,
                c.method_state_bytes / shard if strategy != "fsdp_offload" else 0.0, gathered, hw.overhead_bytes,
                train, init, peak, cpu_per_node, not reasons, "; ".join(reasons))


def gpu_counts(hw: Hardware, most: int = 1024) -> list[int]:
    """1, 2, 4, ... up to a node, then whole nodes."""
    out, g = [], 1
    while g < hw.gpus_per_node:
        out.append(g)
        g *= 2
    n = 1
    while n * hw.gpus_per_node <= most:
        out.append(n * hw.gpus_per_node)
        n += 1
    return out


@dataclass
class CellPlan:
    model: str
    benchmark: str
    method: str
    seeds: list[int]
    strategy: str
    quantization: str | None
    processes: int
    nodes: int
    gpus_per_node: int
    need: Need
    smallest: dict = field(default_factory=dict)
    """strategy -> smallest GPU count that fits (None: none up to 1024)."""
    params: int = 0
    trainable: int = 0
    tokens: float = 0.0
    flops_per_token: float = 0.0
    hours: float = 0.0
    cpu_memory_bytes: float = 0.0
    """What the launcher asks per node: the run's host memory (weights loaded on the CPU first,
    offloaded shards)."""

    @property
    def feasible(self) -> bool:
        return self.need.fits


def _train_tokens(cfg) -> float:
    if cfg.n_train is None:
        raise PlanError(f"{cfg.model} {cfg.benchmark}: n_train is none (the whole split); give a number "
                        "so the plan can estimate time, e.g. --set n_train=10000")
    return float(cfg.n_train) * cfg.max_len * cfg.epochs


def plan_cell(cfg, hw: Hardware, seeds: list[int] | None = None) -> CellPlan:
    """The plan of one cell: its configured strategy and process count, and for every strategy
    the smallest GPU count that fits."""
    import dataclasses

    import torch

    # auto and single run as DDP (one process: the same memory); ZeRO-3 shards as FSDP does.
    strategy = {"auto": "ddp", "single": "ddp", "deepspeed": "fsdp"}.get(cfg.strategy, cfg.strategy)
    cfg = dataclasses.replace(cfg, strategy=strategy, processes=cfg.processes or 1)

    from .models import KNOWN

    local = cfg.model in KNOWN  # the embedded and tiny models
    # hupeft.models loads hub models in bf16 on a GPU; the embedded and tiny ones in fp32.
    dtype = torch.float32 if local else torch.bfloat16
    c = counts(cfg.model, cfg.task, cfg.method, cfg.method_options, dtype, cfg.batch_size, cfg.max_len)
    b = _dtype_bytes(dtype)
    n = need(cfg, hw, cfg.strategy, cfg.processes, b, c)
    smallest = {}
    for s in STRATEGY_NAMES:
        smallest[s] = next((g for g in gpu_counts(hw) if need(cfg, hw, s, g, b, c).fits), None)
    attention = 2 * c.layers * cfg.max_len * c.hidden
    forward = 2 * c.matmul_params + attention
    per_token = forward * (3 if c.trains_base else 2) + (forward if cfg.gradient_checkpointing else 0)
    tokens = _train_tokens(cfg)
    init_tokens = cfg.init_batches * cfg.batch_size * cfg.max_len if c.estimate_bytes else 0
    flops = per_token * tokens + 3 * forward * init_tokens * c.estimate_passes
    hours = flops / (cfg.processes * hw.gpu_flops * hw.utilisation) / 3600
    # Host memory per node: the offloaded shards, and per process the runtime and the weights as
    # they pass through the CPU on loading (at most one shard file of a few GB at a time).
    per_node = min(cfg.processes, hw.gpus_per_node)
    host = n.cpu_per_node + per_node * (2 * GB + min(_weights_bytes(c, cfg.quantization, b), 10 * GB))
    return CellPlan(cfg.model, cfg.benchmark, cfg.method, list(seeds or [cfg.seed]), cfg.strategy,
                    cfg.quantization, cfg.processes, n.nodes, min(cfg.processes, hw.gpus_per_node), n, smallest,
                    c.params, c.trainable, tokens, per_token, hours, host)


def plan_cells(cells, hw: Hardware) -> list[CellPlan]:
    """One plan per distinct configuration; seeds that share one are listed together."""
    groups: dict[str, list] = {}
    for cell in cells:
        key = json.dumps({k: v for k, v in cell.config.to_dict().items() if k not in ("seed",)}, sort_keys=True,
                         default=str)
        groups.setdefault(key, []).append(cell)
    return [plan_cell(group[0].config, hw, [c.config.seed for c in group]) for group in groups.values()]


# --- output -------------------------------------------------------------------------------------


def _gb(x: float) -> str:
    return f"{x / GB:.1f}" if x >= 0.05 * GB else f"{x / 2**20:.0f}M" if x else "0"


def _short(model: str) -> str:
    return paper_models().get(model, {}).get("name", model) if MODELS_YAML.exists() else model


def table(plans: list[CellPlan], hw: Hardware) -> str:
    head = (f"{'model':<24}{'benchmark':<11}{'method':<8}{'seeds':>6} {'strategy':<13}{'quant':<6}{'gpus':>5}{'nodes':>6}"
            f"{'weights':>9}{'grads':>7}{'optim':>7}{'act':>7}{'GA est':>8}{'state':>7}{'peak GB':>9}"
            f"{'hours':>8}  fits")
    lines = [head, "-" * len(head)]
    for p in plans:
        n = p.need
        lines.append(f"{_short(p.model)[:23]:<24}{p.benchmark[:10]:<11}{p.method:<8}{len(p.seeds):>6} "
                     f"{p.strategy:<13}{(p.quantization or '-'):<6}{p.processes:>5}{p.nodes:>6}"
                     f"{_gb(n.weights):>9}{_gb(n.grads):>7}{_gb(n.optimizer):>7}{_gb(n.activations):>7}"
                     f"{_gb(n.estimate):>8}{_gb(n.method_state):>7}{n.peak / GB:>9.1f}{p.hours:>8.2f}  "
                     + ("yes" if p.feasible else f"NO: {n.reason}; smallest that fits: "
                        + ", ".join(f"{s} {g} GPUs" for s, g in p.smallest.items() if g) or "none"))
    bad = sum(not p.feasible for p in plans)
    lines.append(f"\n{len(plans)} configurations ({sum(len(p.seeds) for p in plans)} cells); {bad} do not fit. "
                 f"GPUs of {hw.gpu_memory / GB:.0f} GB ({hw.usable:.0%} usable, {hw.overhead_bytes / GB:.0f} GB "
                 f"overhead each), {hw.gpus_per_node} per node; hours of training at {hw.utilisation:.0%} of "
                 f"{hw.gpu_flops / 1e12:.0f} TFLOP/s per GPU, evaluation not included. Memory per GPU in GB.")
    return "\n".join(lines)


def to_json(plans: list[CellPlan], hw: Hardware) -> dict:
    return {"hardware": asdict(hw), "cells": [{**asdict(p), "feasible": p.feasible} for p in plans]}


def parse_bytes(text: str) -> float:
    """'80GB', '80G', '1TB', '512MiB' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]i?b?|b)?\s*", text.lower())
    if not m:
        raise PlanError(f"cannot read {text!r} as a size; write e.g. 80GB or 1TB")
    unit = (m.group(2) or "gb").rstrip("b") or "b"
    scale = {"b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}[unit]
    return float(m.group(1)) * scale


def parser() -> argparse.ArgumentParser:
    from .presets import preset_names

    p = argparse.ArgumentParser(prog="hupeft plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper", help=f"preset ({', '.join(preset_names())}) or a YAML path")
    p.add_argument("--gpu-memory", default="80GB", help="memory of one GPU (default: 80GB)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default: 8)")
    p.add_argument("--cpu-memory", default="1TB", help="CPU memory per node, for fsdp_offload (default: 1TB)")
    p.add_argument("--gpu-tflops", type=float, default=312.0, help="peak bf16 TFLOP/s of one GPU (default: 312, A100)")
    p.add_argument("--utilisation", type=float, default=0.4, help="share of peak FLOP/s reached (default: 0.4)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run setting in every cell (as `hupeft grid --set`)")
    p.add_argument("--json", dest="json_path", default=None, help="also write the plan as JSON to this path")
    return p


def hardware_from_args(args) -> Hardware:
    if args.gpus_per_node < 1:
        raise PlanError(f"--gpus-per-node must be >= 1, got {args.gpus_per_node}")
    if not 0 < args.utilisation <= 1:
        raise PlanError(f"--utilisation must be in (0, 1], got {args.utilisation}; e.g. --utilisation 0.4")
    if args.gpu_tflops <= 0:
        raise PlanError(f"--gpu-tflops must be > 0, got {args.gpu_tflops}")
    return Hardware(gpu_memory=parse_bytes(args.gpu_memory), gpus_per_node=args.gpus_per_node,
                    cpu_memory=parse_bytes(args.cpu_memory), gpu_flops=args.gpu_tflops * 1e12,
                    utilisation=args.utilisation)


def cli_main(argv: list[str]) -> int:
    from .presets import GridError, expand, load_preset

    args = parser().parse_args(argv)
    try:
        hw = hardware_from_args(args)
        cells = expand(load_preset(args.preset), sets=args.sets, here=False, lookups=False)
        plans = plan_cells(cells, hw)
    except (PlanError, GridError) as e:
        print(f"hupeft plan: {e}", file=sys.stderr)
        return 2
    print(table(plans, hw))
    if args.json_path:
        from .atomic import atomic_write_text

        atomic_write_text(Path(args.json_path), json.dumps(to_json(plans, hw), indent=1, default=str))
    return 0 if all(p.feasible for p in plans) else 1


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
