"""What every benchmark shares: the Split it loads, the three data sources, subsampling.

A split is looked for in this order, and the first source that has it wins:
  1. a local folder: `<data_dir or $HUPEFT_DATA_DIR>/<folder>/<split>.jsonl` (hub field names);
  2. the Hugging Face hub (skipped at once when offline, so nothing waits on a timeout);
  3. data that ships offline (real HumanEval; generated stand-ins, labelled as such).
A given local folder is never silently passed over: one that does not exist, or holds none of
the benchmark's splits, is an error. A real split is never silently paired with generated data:
when the local folder holds some splits of a benchmark but not the one asked for, and the hub
cannot supply it, loading fails and says which splits the folder has.
"""

from __future__ import annotations

import functools
import json
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "HUPEFT_DATA_DIR"


class BenchmarkError(ValueError):
    """Bad benchmark input or no data; the message is one line and names the fix."""


@dataclass
class Split:
    examples: list[dict]
    source: str  # "local:<path>", "hub:<id>" or "offline:<what>"
    synthetic: bool
    description: str
    stand_in: str | None = None  # what the data really is when it stands in for the benchmark


class Scores(dict):
    """Scores by metric name (to every reader a plain dict), with what stands behind them.

    signatures: metric -> how it was computed (sacrebleu's signature, a harness's settings), for
        the record, so two numbers are compared only where they were computed alike;
    generations: one row per prompt, {"prompt", "generation", "reference", ...}, kept beside the
        record as generations.jsonl so that a score can be checked by eye;
    files: further JSONL files to keep beside the record, name -> rows (HumanEval's samples.jsonl)."""

    def __init__(self, values: dict[str, float], signatures: dict[str, str] | None = None,
                 generations: list[dict] | None = None, files: dict[str, list[dict]] | None = None):
        super().__init__(values)
        self.signatures = dict(signatures or {})
        self.generations = list(generations or [])
        self.files = dict(files or {})


@dataclass
class Offline:
    rows: list[dict]
    what: str  # goes into the source: "offline:<what>"
    synthetic: bool
    description: str
    stand_in: str | None = None  # e.g. "GSM-Symbolic": a different data set in the benchmark's place


def few_shot(examples: list[dict], k: int, seed: int) -> list[dict]:
    """k examples drawn without replacement, the same for the same seed (all of them if k >= len)."""
    if k >= len(examples):
        return list(examples)
    return random.Random(seed).sample(list(examples), k)


def subsample(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """The first n of a seeded shuffle; the split in its own order when n is None."""
    if n is None or n >= len(rows):
        return list(rows)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[:n]]


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def hub_offline_flag() -> bool:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() not in ("", "0", "false", "no", "off"):
            return True
    return False


@functools.lru_cache(maxsize=1)
def _can_reach_hub() -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=2.0):
            return True
    except OSError:
        return False


def hub_reachable() -> bool:
    """False at once when an offline variable is set; otherwise one 2-second connect, cached."""
    return not hub_offline_flag() and _can_reach_hub()


class Benchmark:
    """A benchmark: its data sources, prompt formats and scorer. Subclasses fill in the details."""

    name: str = ""
    kind: str = "generation"  # or "classification"
    metrics: list[str] = []
    label_words: list[str] | None = None
    folder: str = ""  # under the local data folder
    hub_id: str = ""
    hub_config: str | None = None
    hub_splits: dict[str, str] = {}  # our split name -> the hub's
    splits: dict[str, str | None] = {}
    fields: str = ""  # one line, for the error that explains the local layout
    display: str = ""

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    @property
    def num_labels(self) -> int | None:
        return len(self.label_words) if self.label_words else None

    @property
    def available_splits(self) -> list[str]:
        return list(self.hub_splits)

    def __repr__(self) -> str:
        return f"<benchmark {self.name} ({self.kind}, {', '.join(self.metrics)})>"

    # --- loading ------------------------------------------------------------------------

    def local_folder(self, data_dir: str | os.PathLike | None = None) -> tuple[Path | None, str]:
        """This benchmark's folder under the given data folder (`data_dir`, else $HUPEFT_DATA_DIR),
        or None when neither is set; and how to stop using it, for error messages."""
        if data_dir is not None:
            return Path(data_dir) / self.folder, "drop data_dir"
        root = os.environ.get(DATA_ENV)
        return (Path(root) / self.folder, f"unset {DATA_ENV}") if root else (None, "")

    def check_local(self, splits: list[str], data_dir: str | os.PathLike | None = None) -> None:
        """Refuse a given data folder that cannot supply `splits` (no silent fallback to other data):
        it does not exist, holds none of this benchmark's splits, or lacks one the hub cannot add."""
        folder, unset = self.local_folder(data_dir)
        if folder is None:
            return
        if not folder.parent.is_dir():
            raise BenchmarkError(f"data folder {folder.parent} does not exist; create it with "
                                 f"{self.folder}/<split>.jsonl files, fix the path, or {unset}")
        present = sorted(p.stem for p in folder.glob("*.jsonl")) if folder.is_dir() else []
        want = folder / f"{splits[0]}.jsonl"
        if not present:
            raise BenchmarkError(f"{self.name}: the data folder {folder.parent} has no {self.folder}/*.jsonl; "
                                 f"add {want} with {self.fields}, or {unset} to use the hub or offline data")
        missing = [s for s in splits if s not in present]
        if missing and not hub_reachable():
            raise BenchmarkError(
                f"{self.name}: {folder} has splits {present} but not {missing[0]!r}, and the hub is unavailable; "
                f"add {folder / (missing[0] + '.jsonl')}, go online, or {unset} to use the offline data")

    def load(self, split: str, n: int | None = None, seed: int = 0, data_dir: str | os.PathLike | None = None) -> Split:
        if split not in self.available_splits:
            raise BenchmarkError(f"{self.name} has no split {split!r}; its splits are {self.available_splits}")
        self.check_local([split], data_dir)
        tried = []
        folder, unset = self.local_folder(data_dir)
        present: list[str] = []
        if folder is not None:
            path = folder / f"{split}.jsonl"
            if path.is_file():
                return Split(subsample(read_jsonl(path), n, seed), f"local:{path}", False,
                             f"{self.display} {split} split from {path}")
            present = sorted(p.stem for p in folder.glob("*.jsonl"))
            tried.append(f"local {path}")
        if hub_reachable():
            try:
                rows = self.from_hub(split)
                return Split(subsample(rows, n, seed), f"hub:{self.hub_id}", False,
                             f"{self.display} {split} split from the Hugging Face hub ({self.hub_id})")
            except Exception as e:  # gated, renamed or a network error: say so and go on
                tried.append(f"hub {self.hub_id} ({(str(e).splitlines() or [type(e).__name__])[0][:80]})")
        else:
            tried.append(f"hub {self.hub_id} (offline)")
        if present:
            raise BenchmarkError(
                f"{self.name}: {folder} has splits {present} but not {split!r}, and the hub is unavailable; "
                f"add {folder / (split + '.jsonl')}, go online, or {unset} to use the offline data")
        off = self.offline(split)
        if off is None:
            raise BenchmarkError(
                f"{self.name}: no source has split {split!r} (tried {'; '.join(tried)}; no offline data); "
                f"put it in <{DATA_ENV}>/{self.folder}/{split}.jsonl with {self.fields}, or go online")
        return Split(subsample(off.rows, n, seed), f"offline:{off.what}", off.synthetic, off.description,
                     off.stand_in)

    def from_hub(self, split: str) -> list[dict]:
        from datasets import load_dataset

        ds = load_dataset(self.hub_id, self.hub_config, split=self.hub_splits[split])
        return ds.to_list()

    def offline(self, split: str) -> Offline | None:
        """Rows that ship with the project for `split`, or None."""
        return None

    # --- prompts and scoring (filled in by the kinds below and the benchmarks) -------------

    def format_causal(self, example: dict) -> tuple[str, str]:
        raise NotImplementedError

    def format_seqcls(self, example: dict) -> tuple[str, str | None, int]:
        raise BenchmarkError(f"{self.name} is a generation benchmark; it has no sequence-classification format")

    def evaluate(self, model, tokenizer, examples, *, task="causal-lm", batch_size=8, max_new_tokens=None,
                 n_samples=None, temperature=None, progress=True, truncation=None) -> dict[str, float]:
        """Scores by metric name (generation benchmarks return a Scores, which also keeps the
        generations). `truncation` (a hupeft.data.Truncation) counts the prompts cut to fit the
        model: they lose their start, never their end."""
        raise NotImplementedError


def model_max_positions(model, default: int = 2048) -> int:
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return int(n) if n else default


def model_device(model):
    return next(model.parameters()).device
