"""`hupeft export`: a trained model in the formats other tools already load.

    hupeft export results/cpu/smollm2-135m/glue-sst2/hybrid/seed0 --to merged out/hybrid-merged
    hupeft export results/cpu/smollm2-135m/glue-sst2/loraga/seed0 --to peft out/loraga-peft

`merged`: the method folded into the base weights (`Adapted.merge`) and saved by transformers'
`save_pretrained` with the tokenizer, the generation config and a model card (README.md), with no
quantization entry left in the config: `AutoModelForCausalLM.from_pretrained`, lm-eval's
`--model hf` and vLLM load it as is. Every method exports this way.

`peft`: adapter files `PeftModel.from_pretrained` loads, where PEFT has an exact equivalent:

    lora     as trained (PEFT's own format)
    loraga   a LoRA of rank 2r: A' = [A; A0], B' = [B, -B0], lora_alpha = s * 2r, so that
             (lora_alpha / 2r) B' A' = s (B A - B0 A0), LoRA-GA's update with W0 untouched
    boft     n_factors = 1 on the input side: a PEFT BOFT adapter, boft_R = the skew blocks,
             boft_s = the per-output scale (PEFT without its CUDA kernel runs one factor only)

PEFT accepts only its own method types, so the uRNN, the hybrid and BOFT with more factors are
refused with a line naming `--to merged`. Each export is checked before it is written: the exported
model's logits on a probe sequence must match the trained model's.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import benchmarks, methods, models
from .atomic import atomic_dir, atomic_write_text
from .methods.base import ADAPTER_CONFIG, MethodError
from .precision import weights_dtype
from .records import RECORD_NAME, read_record
from .stats import mean_interval

ADAPTER_DIR = "adapter"  # where `hupeft run` saves it (experiment.ADAPTER_DIR)
TARGETS = ("merged", "peft")
PEFT_FAMILIES = ("lora", "loraga", "boft")


class ExportError(ValueError):
    """Bad export input; the message is one line and names the fix."""


@dataclass
class Source:
    """What an export reads: the adapter folder, its metadata, the base model it needs, and the
    run's record when the adapter came from `hupeft run`."""

    adapter: Path
    meta: dict
    base: dict
    record: dict | None = None
    run: Path | None = None

    @property
    def method(self) -> str:
        return self.meta["method"]


def resolve(path: str | Path, base: str | None = None) -> Source:
    """A run folder (record.json + adapter/) or an adapter folder (hupeft_adapter.json), checked."""
    path = Path(path)
    run = path if (path / RECORD_NAME).exists() else path.parent if (path.parent / RECORD_NAME).exists() else None
    record = None
    adapter = path
    if run is not None:
        record = read_record(run / RECORD_NAME)
        if record["status"] != "ok":
            raise ExportError(f"{run} finished {record['status']}; export a run whose record says ok")
        if run == path:
            adapter = run / (record.get("adapter") or ADAPTER_DIR)
    if not (adapter / ADAPTER_CONFIG).exists():
        if run is not None:
            raise ExportError(f"{run} kept no adapter ({adapter} is missing); re-run it with --set save_adapter=true")
        raise ExportError(f"{path} is neither a run folder ({RECORD_NAME}) nor an adapter folder ({ADAPTER_CONFIG}); "
                          "pass one of those")
    meta = json.loads((adapter / ADAPTER_CONFIG).read_text())
    found = {"name": base} if base else meta.get("base_model") or _base_from_record(record)
    if not found:
        raise ExportError(f"{adapter} does not name its base model (saved before adapters did); pass --base NAME")
    try:
        models.check_name(found["name"])
    except models.ModelError as e:
        raise ExportError(str(e)) from None
    return Source(adapter, meta, found, record, run)


def _base_from_record(record: dict | None) -> dict | None:
    if record is None:
        return None
    cfg = record["config"]
    found = {"name": cfg["model"], "task": cfg.get("task", "causal-lm")}
    if cfg["model"] in models.TINY:
        found["seed"] = cfg["seed"]
    if found["task"] == "seq-cls":  # as the run loaded it
        found["num_labels"] = benchmarks.get(cfg["benchmark"]).num_labels or 2
    return found


def load_adapted(src: Source, keep_base: bool = False):
    """(the base as loaded, the trained method on it): the base in the run's weight dtype, never
    quantized (an adapter trained on a 4-bit base is folded into the full-precision weights).
    keep_base: apply the method to a copy, leaving `loaded.model` the untouched base."""
    dtype = weights_dtype((src.record or {}).get("config", {}).get("dtype", "auto"))
    loaded = models.load(src.base["name"], task=src.base.get("task", "causal-lm"), seed=src.base.get("seed", 0),
                         num_labels=src.base.get("num_labels", 2), dtype=dtype)
    loaded.model.eval()
    adapted = methods.load(copy.deepcopy(loaded.model) if keep_base else loaded.model, src.adapter)
    adapted.model.eval()
    return loaded, adapted


# --- checks ---------------------------------------------------------------------------------


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not empty; remove it or pass another folder")


def check_peft(src: Source) -> None:
    """Refuse, before any loading, what has no exact PEFT equivalent."""
    family = methods.family(src.method)
    if family not in PEFT_FAMILIES:
        raise ExportError(f"{src.method} has no exact PEFT equivalent (PEFT loads only its own method types); "
                          "export it with --to merged")
    opts = methods.make_options(src.method, src.meta["options"])
    if family == "boft" and (opts.n_factors != 1 or opts.side != "input"):
        raise ExportError(f"boft with n_factors={opts.n_factors}, side={opts.side!r} has no exact PEFT equivalent "
                          "(PEFT's BOFT runs one factor without its CUDA kernel, on the input side); "
                          "export it with --to merged")
    if family != "lora" and src.base.get("task") == "seq-cls":
        raise ExportError(f"{src.method} on a classifier: its fresh head has no place in a PEFT {family} export; "
                          "export it with --to merged")


@torch.no_grad()
def probe_logits(model) -> torch.Tensor:
    """Logits on a fixed probe sequence (what an export must reproduce)."""
    vocab = model.config.vocab_size if hasattr(model, "config") else 128
    ids = torch.randint(3, vocab, (1, 16), generator=torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device)).logits.float().cpu()


def check_same(reference: torch.Tensor, got: torch.Tensor, what: str, exact: bool) -> None:
    """Fails the export (nothing written yet) when `got` strays from the trained model's logits by
    more than rounding: fp32 folds agree to about 1e-6 of the logits' scale, bf16 ones to about 1e-2."""
    diff = float((reference - got).abs().max())
    scale = float(reference.abs().max()) or 1.0
    if diff > (1e-4 if exact else 3e-2) * scale:
        raise RuntimeError(f"the {what} export does not reproduce the trained model's logits (max |diff| {diff:.2e} "
                           f"of {scale:.2e}); nothing was written")


# --- merged -----------------------------------------------------------------------------------


def export_merged(src: Source, out: str | Path) -> Path:
    out = Path(out)
    check_out(out)
    loaded, adapted = load_adapted(src)
    reference = probe_logits(adapted.model)
    model = adapted.merge()
    check_same(reference, probe_logits(model), "merged", _fp32(model))
    with atomic_dir(out) as tmp:
        save_plain(model, loaded.tokenizer, tmp)
        atomic_write_text(tmp / "README.md", model_card(src, "merged"))
    return out


def save_plain(model, tokenizer, folder: Path) -> None:
    """save_pretrained of a plain model: no quantization entry (a GGUF or bitsandbytes origin would
    otherwise make loaders treat the dense weights as packed ones), the tokenizer where it has one."""
    model.config.__dict__.pop("quantization_config", None)
    type(model).save_pretrained(model, folder)  # the class's: hupeft.integrations may route the instance's
    models.strip_quantization_entry(folder / "config.json")
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(folder)


def _fp32(model) -> bool:
    return all(p.dtype == torch.float32 for p in model.parameters() if p.is_floating_point())


# --- peft -----------------------------------------------------------------------------------


def export_peft(src: Source, out: str | Path) -> Path:
    out = Path(out)
    check_peft(src)
    check_out(out)
    family = methods.family(src.method)
    loaded, adapted = load_adapted(src, keep_base=family != "lora")  # PEFT's own model goes on the base
    reference = probe_logits(adapted.model)
    peft_model = adapted.model if family == "lora" else _peft_model(adapted, loaded.model, family)
    peft_model.eval()
    check_same(reference, probe_logits(peft_model), "PEFT", _fp32(peft_model))
    peft_model.peft_config["default"].base_model_name_or_path = base_reference(src.base)
    with atomic_dir(out) as tmp:
        type(peft_model).save_pretrained(peft_model, tmp)
        if hasattr(loaded.tokenizer, "save_pretrained"):
            loaded.tokenizer.save_pretrained(tmp)
        atomic_write_text(tmp / "README.md", model_card(src, "peft"))
    return out


def _peft_model(adapted, base, family: str):
    """A PEFT model on `base` (a fresh copy of the base) holding the adapter's exact equivalent."""
    from peft import BOFTConfig, LoraConfig, get_peft_model

    layers = adapted.adapter_layers()
    names = list(layers)  # full names: PEFT then wraps exactly the layers the method adapted
    opts = adapted.options
    if family == "loraga":
        config = LoraConfig(r=2 * opts.r, lora_alpha=opts.scaling * 2 * opts.r, lora_dropout=0.0, bias="none",
                            use_rslora=False, target_modules=names)
    else:
        config = BOFTConfig(boft_block_size=opts.block_size, boft_n_butterfly_factor=1, boft_dropout=0.0,
                            bias="none", target_modules=names)
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, layer in layers.items():
            target = peft_model.base_model.model.get_submodule(name)
            if family == "loraga":
                target.lora_A["default"].weight.copy_(torch.cat([layer.lora_A, layer.A0]))
                target.lora_B["default"].weight.copy_(torch.cat([layer.lora_B, -layer.B0], dim=1))
            else:  # PEFT's Cayley takes (X - X^T) / 2, so our skew S goes in as it is
                target.boft_R["default"].copy_(layer.rotation.skew())
                if layer.scale is not None:
                    target.boft_s["default"].copy_(layer.scale[:, None])
    return peft_model


def base_reference(base: dict) -> str:
    """What transformers can load the base from: the embedded models' local folders, else the name."""
    name = base["name"]
    if name == "smollm2-135m":
        return str(models.smollm2_checkpoint())
    if name == "minilm-l6":
        return str(models.minilm_dir())
    return name


# --- model card -------------------------------------------------------------------------------


def model_card(src: Source, kind: str) -> str:
    """README.md: the base model, the method and its options, the data and its fingerprints, the
    scores (a 95% t-interval over seeds where sibling runs of the same cell exist), provenance."""
    base, ref = src.base, base_reference(src.base)
    hub_id = "/" in ref and not Path(ref).exists()
    front = ["---", f"library_name: {'peft' if kind == 'peft' else 'transformers'}",
             f"tags: [hupeft, {methods.family(src.method)}]"] + ([f"base_model: {ref}"] if hub_id else []) + ["---"]
    where = f" (random weights, seed {base['seed']}: `hupeft.models.load({base['name']!r}, seed={base['seed']})`)" \
        if "seed" in base else f", loaded from `{ref}`"
    lines = front + [f"# {src.method} on {base['name']}", "",
                     f"`hupeft export --to {kind}` of {src.run or src.adapter}.", "",
                     "## Base model", f"- {base['name']}{where}",
                     f"- task: {base.get('task', 'causal-lm')}", "",
                     "## Method", f"- {src.method}"]
    lines += [f"- {k}: {v}" for k, v in src.meta["options"].items()]
    lines += ["", "## How to load", "```python", _load_snippet(kind, ref, base.get("task")), "```"]
    if src.record is not None:
        lines += _record_sections(src)
    else:
        lines += ["", "No run record came with this adapter: no data, scores or provenance to report."]
    return "\n".join(lines) + "\n"


def _load_snippet(kind: str, ref: str, task: str | None) -> str:
    auto = "AutoModelForSequenceClassification" if task == "seq-cls" else "AutoModelForCausalLM"
    if kind == "merged":
        return f"from transformers import {auto}\nmodel = {auto}.from_pretrained(\"path/to/this/folder\")"
    return (f"from peft import PeftModel\nfrom transformers import {auto}\n"
            f"base = {auto}.from_pretrained({ref!r})\nmodel = PeftModel.from_pretrained(base, \"path/to/this/folder\")")


def _record_sections(src: Source) -> list[str]:
    rec, cfg = src.record, src.record["config"]
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    lines = ["", "## Data", f"- benchmark: {cfg['benchmark']}; data asked for: {data.get('requested')}, "
             f"used: {data.get('used')}", f"- examples: train {cfg.get('n_train')}, val {cfg.get('n_val')}, "
             f"eval {cfg.get('n_eval')}"]
    for split, source in (data.get("sources") or {}).items():
        lines.append(f"- {split}: {source}, fingerprint {(data.get('fingerprints') or {}).get(split)}")
    if data.get("description"):
        lines.append(f"- {data['description']}")
    lines += ["", "## Training", "- " + ", ".join(f"{k} {cfg.get(k)}" for k in (
        "seed", "epochs", "lr", "batch_size", "grad_accum", "warmup_ratio", "clip_norm", "max_len", "dtype",
        "quantization"))]
    if cfg.get("quantization"):
        lines.append(f"- trained on a {cfg['quantization']} base; merged into the base's full-precision weights")
    lines += ["", "## Scores"] + _score_lines(src)
    env = rec.get("environment") or {}
    packages = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v)
    lines += ["", "## Provenance", f"- record: {src.run / RECORD_NAME}", f"- commit: {env.get('git_commit')}",
              f"- packages: {packages}", f"- device: {env.get('device')} ({env.get('device_kind')}), "
              f"python {env.get('python')}"]
    return lines


def _score_lines(src: Source) -> list[str]:
    """Each score of this run, and where the same cell ran with other seeds beside it, the mean over
    those seeds with its 95% t-interval (hupeft.stats)."""
    own = src.record.get("scores") or {}
    runs = sibling_seeds(src)
    lines = []
    for metric, value in own.items():
        line = f"- {metric}: {value:.4f} (seed {src.record['config']['seed']})"
        values = [r["scores"][metric] for r in runs.values() if metric in (r.get("scores") or {})]
        if len(values) > 1:
            iv = mean_interval(values)
            line += f"; over seeds {sorted(runs)}: {iv.mean:.4f} ± {iv.half_width:.4f} (95% t-interval)"
        lines.append(line)
    signatures = src.record.get("metric_signatures") or {}
    lines += [f"- {metric} is computed as: {how}" for metric, how in signatures.items()]
    return lines or ["- none recorded"]


def sibling_seeds(src: Source) -> dict[int, dict]:
    """{seed: record} of the ok runs beside this one (a grid's seed folders) of the same model,
    method, benchmark and method options, this run included."""
    cfg = src.record["config"]
    key = [cfg.get(k) for k in ("model", "method", "benchmark", "method_options", "lr", "epochs")]
    found = {cfg["seed"]: src.record}
    for path in sorted(src.run.parent.glob(f"*/{RECORD_NAME}")):
        try:
            rec = read_record(path)
        except (OSError, ValueError):
            continue
        other = rec.get("config", {})
        if rec.get("status") == "ok" and [other.get(k) for k in ("model", "method", "benchmark", "method_options",
                                                                  "lr", "epochs")] == key:
            found.setdefault(other["seed"], rec)
    return found


# --- command line ---------------------------------------------------------------------------

EXAMPLES = """examples:
  hupeft export results/cpu/smollm2-135m/glue-sst2/hybrid/seed0 --to merged out/hybrid
      a transformers folder: AutoModelForCausalLM.from_pretrained("out/hybrid"), lm-eval --model hf, vLLM
  hupeft export results/cpu/smollm2-135m/glue-sst2/loraga/seed0 --to peft out/loraga
      a PEFT LoRA of rank 2r: PeftModel.from_pretrained(base, "out/loraga")
  hupeft export ckpt/ --to merged out/m --base HuggingFaceTB/SmolLM2-135M-Instruct
      an adapter folder from Adapted.save() that does not name its base model

--to peft covers lora, loraga and boft with n_factors=1 on the input side; every method exports
--to merged. Exit codes: 0 written, 2 bad input (nothing written)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hupeft export", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Write a trained model as a merged transformers folder or as PEFT adapter files.")
    p.add_argument("source", metavar="RUN_OR_ADAPTER",
                   help=f"a run folder ({RECORD_NAME} and its adapter/) or an adapter folder ({ADAPTER_CONFIG})")
    p.add_argument("--to", required=True, choices=TARGETS, help="merged: base + method folded, a plain "
                   "transformers model; peft: PEFT adapter files where PEFT has an exact equivalent")
    p.add_argument("out", metavar="OUT", help="the folder to write (absent or empty)")
    p.add_argument("--base", help="the base model (hupeft name, hub id or folder), for an adapter that does not "
                   "name it")
    return p


def export(source: str | Path, to: str, out: str | Path, base: str | None = None) -> Path:
    """Export a run or adapter folder `to` "merged" or "peft" into `out`; returns `out`."""
    if to not in TARGETS:
        raise ExportError(f"unknown export format {to!r}; choose one of {TARGETS}")
    src = resolve(source, base)
    return export_merged(src, out) if to == "merged" else export_peft(src, out)


def cli_main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        out = export(args.source, args.to, args.out, args.base)
    except (ExportError, MethodError) as e:
        print(f"hupeft export: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.to})")
    return 0
