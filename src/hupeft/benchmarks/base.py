"""What every benchmark shares: the Split it loads, the three data sources, subsampling.

A split is looked for in this order, and the first source that has it wins:
  1. a local folder: `<data_dir or $HUPEFT_DATA_DIR>/<folder>/<split>.jsonl` (hub field names);
  2. the Hugging Face hub through `datasets.load_dataset`: with HF_DATASETS_OFFLINE=1 (or
     HF_HUB_OFFLINE=1) it reads its own cache, and a proxy or HF_ENDPOINT is honoured as datasets
     honours it; where one short request finds the hub unreachable (hupeft.hub), datasets reads
     its cache only, at once, instead of retrying for tens of seconds;
  3. data that ships offline (real HumanEval; generated stand-ins, labelled as such).
Which of them may serve a run is its `data` setting (DATA_CHOICES): `real` takes only real data
and fails, naming every source tried, when none has it; `synthetic` takes only generated data;
`any` prefers real data and falls back to generated data, keeping what it tried and why it failed.
A given local folder is never silently passed over: one that does not exist, or holds none of
the benchmark's splits, is an error. A real split is never silently paired with generated data:
when the local folder holds some splits of a benchmark but not the one asked for, and the hub
cannot supply it, loading fails and says which splits the folder has.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

from .. import hub

DATA_ENV = "HUPEFT_DATA_DIR"
DATA_CHOICES = ("real", "synthetic", "any")


class BenchmarkError(ValueError):
    """Bad benchmark input or no data; the message is one line and names the fix."""


class NoSource(BenchmarkError):
    """No source here has the data the run asks for (another machine, e.g. a cluster's compute
    node with the data or the hub, may have it)."""


@dataclass
class Split:
    examples: list[dict]
    source: str  # "local:<path>", "hub:<id>" or "offline:<what>"
    synthetic: bool
    description: str
    stands_in_for: str | None = None  # the benchmark this data takes the place of (GSM-Symbolic: GSM8K)
    fingerprint: str = ""  # "sha256:<16 hex>" of the whole split's rows, whatever their source
    tried: tuple[str, ...] = ()  # sources that could not serve the split before this one did


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
    stands_in_for: str | None = None  # e.g. "GSM8K": the benchmark this data takes the place of


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


def fingerprint(rows: list[dict]) -> str:
    """A content hash of a split: the same rows in the same order give the same value, from any source."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()[:16]


_HUB_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT", "HF_HOME", "HF_DATASETS_CACHE",
            "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
_hub_failures: dict[tuple, str] = {}


def hub_rows(bench: "Benchmark", split: str) -> list[dict]:
    """The split from the hub through `datasets`; a failure is remembered for this process and these
    HF settings, so that a run that loads a split twice (checking, then training) waits once for it."""
    key = (type(bench).__name__, bench.hub_id, bench.hub_config, getattr(bench, "src", None),
           getattr(bench, "tgt", None), split, tuple(os.environ.get(v) for v in _HUB_ENV))
    if key in _hub_failures:
        raise ConnectionError(_hub_failures[key])
    hub.decide()  # one short request; unreachable: datasets reads its cache only, no retries
    try:
        return bench.from_hub(split)
    except Exception as e:  # gated, renamed, not cached offline, or a network error
        why = hub.probed_unreachable()  # datasets would only say its offline mode is on
        _hub_failures[key] = (f"unreachable: {why}; not in the datasets cache" if why else
                              f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}")
        raise ConnectionError(_hub_failures[key]) from e


def say(message: str) -> None:
    """A warning on the `hupeft` logger, except while a run's input is checked (`unsaid`): a run
    loads its data twice, checking and then training, and says what it must once."""
    if not _hushed:
        logging.getLogger("hupeft").warning("%s", message)


@contextlib.contextmanager
def unsaid():
    """Inside, say() says nothing: checking a run's input loads its data too, and a run refused
    there gets its one line; the run that goes on says what it must when it loads the data itself."""
    global _hushed
    before, _hushed = _hushed, True
    try:
        yield
    finally:
        _hushed = before


_hushed = False


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
    stands_in_for: str | None = None  # the benchmark this one takes the place of, whatever the source
    elsewhere: str = ""  # for errors: another benchmark that can run where this one has no data

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

    def identity(self) -> dict:
        """What a record keeps to say which benchmark it ran (a task file adds its path and hash)."""
        return {"name": self.name, "kind": self.kind, "metrics": list(self.metrics)}

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
        it does not exist or holds none of this benchmark's splits. One that lacks a split is
        refused by load() once the hub has been tried for it."""
        folder, unset = self.local_folder(data_dir)
        if folder is None:
            return
        if not folder.parent.is_dir():
            raise BenchmarkError(f"data folder {folder.parent} does not exist; create it with "
                                 f"{self.folder}/<split>.jsonl files, fix the path, or {unset}")
        present = sorted(p.stem for p in folder.glob("*.jsonl")) if folder.is_dir() else []
        if not present:
            raise BenchmarkError(f"{self.name}: the data folder {folder.parent} has no {self.folder}/*.jsonl; "
                                 f"add {folder / (splits[0] + '.jsonl')} with {self.fields}, or {unset} to use "
                                 "the hub or offline data")

    def load(self, split: str, n: int | None = None, seed: int = 0, data_dir: str | os.PathLike | None = None,
             data: str = "any") -> Split:
        """`split` from the first source that has it and that `data` (real, synthetic, any) allows;
        BenchmarkError naming every source tried when none does."""
        if split not in self.available_splits:
            raise BenchmarkError(f"{self.name} has no split {split!r}; its splits are {self.available_splits}")
        if data not in DATA_CHOICES:
            raise BenchmarkError(f"data={data!r}; use one of {', '.join(DATA_CHOICES)}, e.g. --set data=real")
        folder, unset = self.local_folder(data_dir)
        if data == "synthetic":
            if folder is not None:
                raise BenchmarkError(f"{self.name}: data=synthetic would pass over the data folder {folder.parent}; "
                                     f"{unset}, or use data=real or data=any")
            return self._offline_split(split, n, seed, data, [])
        self.check_local([split], data_dir)
        tried: list[str] = []
        present: list[str] = []
        if folder is not None:
            path = folder / f"{split}.jsonl"
            if path.is_file():
                rows = read_jsonl(path)
                return Split(subsample(rows, n, seed), f"local:{path}", False,
                             f"{self.display} {split} split from {path}", self.stands_in_for, fingerprint(rows))
            present = sorted(p.stem for p in folder.glob("*.jsonl"))
            tried.append(f"local {path} (missing)")
        if self.hub_id:
            try:
                rows = hub_rows(self, split)
                return Split(subsample(rows, n, seed), f"hub:{self.hub_id}" + (f":{self.hub_config}" if
                             self.hub_config else ""), False,
                             f"{self.display} {split} split from the Hugging Face hub ({self.hub_id})",
                             self.stands_in_for, fingerprint(rows), tuple(tried))
            except ConnectionError as e:
                tried.append(f"hub {self.hub_id} ({e})")
        if present:
            raise BenchmarkError(
                f"{self.name}: {folder} has splits {present} but not {split!r}, and the hub could not supply it "
                f"({tried[-1]}); add {folder / (split + '.jsonl')}, go online, or {unset}")
        return self._offline_split(split, n, seed, data, tried)

    def _offline_split(self, split: str, n: int | None, seed: int, data: str, tried: list[str]) -> Split:
        """The split from the data that ships offline, if `data` allows its kind; else BenchmarkError."""
        off = self.offline(split)
        if off is not None and data == "real" and off.synthetic:
            tried.append(f"offline {off.what} (generated, not real data)")
        elif off is not None and data == "synthetic" and not off.synthetic:
            raise BenchmarkError(f"{self.name}: its only offline data ({off.what}) is real, not generated; "
                                 "use data=real or data=any")
        elif off is not None:
            return Split(subsample(off.rows, n, seed), f"offline:{off.what}", off.synthetic, off.description,
                         off.stands_in_for or self.stands_in_for, fingerprint(off.rows), tuple(tried))
        elif data == "synthetic":
            raise BenchmarkError(f"{self.name} has no generated data; use data=real or data=any with a data "
                                 f"folder or the hub{self.elsewhere}")
        fixes = [f"put it in <{DATA_ENV}>/{self.folder}/{split}.jsonl with {self.fields}"]
        if self.hub_id:
            fixes.append("go online (or cache it with datasets)")
        if data == "real" and off is not None:
            fixes.append("--set data=any to accept generated data")
        kind = "real " if data == "real" else ""
        raise NoSource(f"{self.name}: no {kind}source has split {split!r} (tried {'; '.join(tried) or 'nothing'}"
                             f"{'' if off is not None else '; no offline data'}); " + ", ".join(fixes[:-1])
                             + (" or " if len(fixes) > 1 else "") + fixes[-1] + self.elsewhere)

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
                 n_samples=None, temperature=None, progress=True, truncation=None,
                 shard=None) -> dict[str, float] | None:
        """Scores by metric name (generation benchmarks return a Scores, which also keeps the
        generations). `truncation` (a hupeft.data.Truncation) counts the prompts cut to fit the
        model: they lose their start, never their end. `shard` (a hupeft.distributed.EvalShard)
        splits the examples over the processes of a launch: each runs the model on its share,
        and only the main process scores and gets the scores (the others get None)."""
        raise NotImplementedError


def model_max_positions(model, default: int = 2048) -> int:
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return int(n) if n else default


def model_device(model):
    return next(model.parameters()).device
