"""Tasks of your own: a benchmark described by a small YAML file, in the spirit of
lm-evaluation-harness's task files. `--benchmark path/to/task.yaml` runs it (so does a preset
that lists the path); records and the book call it by its `name`.

    name: reviews                      # letters, digits, - _ . ; how records and the book call it
    kind: classification               # or generation
    data:                              # JSONL files, relative to this file ...
      train: reviews/train.jsonl       #   optional: without it, training rows are a disjoint part of eval
      eval: reviews/test.jsonl
    #   ... or a hub dataset:  data: {hub: org/name, config: sst2, train: train, eval: validation}
    template: "Review: {text}\\nSentiment:"   # the prompt: {field} is a row's field, {a[b]} one inside it
    # classification: the label word the model finds likeliest after the prompt is its answer
    label: label                       # the row field holding the label: its index or its word
    label_words: [negative, positive]
    metric: accuracy                   # accuracy and/or f1 (F1 of the second label word)
    # generation: greedy decoding up to `stop`, scored against `target`
    # target: "{answer}"               # the reference, a template like `template`
    # metric: exact_match              # exact_match, bleu, chrf and/or rougeL (a list for several)
    # max_new_tokens: 32               # default 32
    # stop: ["\\n"]                    # default: a newline
    # target_language: deu_Latn        # optional: chooses BLEU's tokenizer (Chinese, Japanese, Thai)
    description: one line for the book # optional

lm-eval's counterparts: task, output_type (multiple_choice / generate_until), dataset_path and
dataset_name with training_split / test_split, doc_to_text, doc_to_target, doc_to_choice,
metric_list, generation_kwargs (until, max_gen_toks); templates are Python's str.format, not Jinja.
Training: the prompt followed by " " and the answer (the label word, or the target), loss on the
answer only, as for every benchmark here. Exact match compares the generation and the reference
after stripping surrounding whitespace; BLEU, chrF++ and ROUGE-L are hupeft.benchmarks.scoring's.

Every field is checked when the file is read, before any data or model loads, and every row when
the data is: a mistake is one line that names the field. A task's data is only what its file
names (never generated stand-ins, never HUPEFT_DATA_DIR).
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from pathlib import Path

import yaml

from . import scoring
from .base import (DATA_CHOICES, Benchmark, BenchmarkError, NoSource, Split, fingerprint, hub_rows,
                   subsample)
from .glue import ClassificationBenchmark
from .translation import generate_and_score

SUFFIXES = (".yaml", ".yml")
KINDS = ("classification", "generation")
METRICS = {"classification": ("accuracy", "f1"), "generation": ("exact_match", "bleu", "chrf", "rougeL")}
COMMON_FIELDS = ("name", "kind", "data", "template", "metric", "description")
KIND_FIELDS = {"classification": ("label", "label_words"),
               "generation": ("target", "max_new_tokens", "stop", "target_language")}
DATA_FIELDS = ("train", "eval", "hub", "config")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
EXAMPLES = {"name": "name: reviews", "kind": "kind: classification", "data": "data: {train: train.jsonl, "
            "eval: test.jsonl}", "template": 'template: "Review: {text}\\nSentiment:"',
            "label_words": "label_words: [negative, positive]", "label": "label: label",
            "target": 'target: "{answer}"', "max_new_tokens": "max_new_tokens: 32", "stop": 'stop: ["\\n"]',
            "target_language": "target_language: deu_Latn", "description": "description: my reviews"}


class TaskError(BenchmarkError):
    """A task file that cannot be used; one line naming the field and the fix."""


def is_task_file(name: str) -> bool:
    return str(name).lower().endswith(SUFFIXES)


def canonical(name: str) -> str:
    """A task file's absolute path (a relative one is taken from the working folder), so that a
    run started elsewhere (a grid's notebook, a launched process) reads the same file."""
    return str(Path(name).expanduser().resolve()) if is_task_file(name) else name


def load(path: str | Path) -> Benchmark:
    """The task a YAML file describes; TaskError (one line naming the field) if it cannot be used."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TaskError(f"task file {path} not found; check the path given to --benchmark")
    text = path.read_text(encoding="utf-8")
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise TaskError(f"task file {path}: not valid YAML{where} ({getattr(e, 'problem', None) or 'syntax'}); "
                        "fix it, e.g. quote a template that holds ': '") from None
    spec = _Check(path, spec).spec()
    cls = ClassificationTask if spec["kind"] == "classification" else GenerationTask
    return cls(path.resolve(), spec, "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16])


class _Check:
    """The checks of one file's fields, each failure one TaskError naming the field."""

    def __init__(self, path: Path, raw):
        self.path, self.raw = path, raw

    def fail(self, field: str, what: str) -> TaskError:
        example = EXAMPLES.get(field.split(".")[0], "")
        return TaskError(f"task file {self.path}: field '{field}' {what}" + (f"; e.g. {example}" if example else ""))

    def spec(self) -> dict:
        if not isinstance(self.raw, dict):
            raise TaskError(f"task file {self.path}: expected fields such as name, kind, data, template; "
                            "see hupeft.benchmarks.tasks or the README's example")
        kind = self.raw.get("kind")
        if kind not in KINDS:
            raise self.fail("kind", f"must be {' or '.join(KINDS)}, not {kind!r}")
        allowed = COMMON_FIELDS + KIND_FIELDS[kind]
        unknown = sorted(set(map(str, self.raw)) - set(allowed))
        if unknown:
            raise self.fail(unknown[0], f"is not a field of a {kind} task; its fields are {', '.join(allowed)}")
        spec = {"name": self.name(), "kind": kind, "data": self.data(), "template": self.template("template"),
                "description": self.text("description", required=False)}
        if kind == "classification":
            spec["label_words"] = self.label_words()
            spec["label"] = self.text("label", required=False) or "label"
        else:
            spec["target"] = self.template("target")
            spec["max_new_tokens"] = self.positive("max_new_tokens", 32)
            spec["stop"] = self.stops()
            spec["target_language"] = self.text("target_language", required=False)
        spec["metrics"] = self.metrics(kind, spec.get("label_words"))
        return spec

    def text(self, field: str, required: bool = True) -> str | None:
        value = self.raw.get(field)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, "is missing" if value is None else f"must be text, not {value!r}")
        return value

    def name(self) -> str:
        from . import names

        name = self.text("name")
        if not NAME.fullmatch(name):
            raise self.fail("name", f"{name!r} may hold only letters, digits, '-', '_' and '.', starting with "
                                    "a letter or digit")
        if name in names() or name == "gsm8k/chat":
            raise self.fail("name", f"{name!r} is a built-in benchmark's name; pick another, so the book "
                                    "keeps them apart")
        return name

    def template(self, field: str) -> str:
        text = self.text(field)
        try:
            fields = template_fields(text)
        except ValueError as e:
            raise self.fail(field, f"is not a template ({e}); write row fields as {{name}} and literal braces "
                                   "as {{ and }}") from None
        if not fields:
            raise self.fail(field, "names no row field; put one in braces, e.g. {text}")
        return text

    def data(self) -> dict:
        data = self.raw.get("data")
        if not isinstance(data, dict):
            raise self.fail("data", "is missing" if data is None else "must be a mapping with eval (and train)")
        unknown = sorted(set(map(str, data)) - set(DATA_FIELDS))
        if unknown:
            raise self.fail(f"data.{unknown[0]}", f"is not a data field; use {', '.join(DATA_FIELDS)}")
        hub = data.get("hub")
        if hub is not None and (not isinstance(hub, str) or "/" not in hub):
            raise self.fail("data.hub", f"must be a hub dataset id like org/name, not {hub!r}")
        if data.get("config") is not None and (hub is None or not isinstance(data["config"], str)):
            raise self.fail("data.config", "names a config of a hub dataset: give data.hub too, and text")
        out = {"hub": hub, "config": data.get("config")}
        for split in ("train", "eval"):
            value = data.get(split)
            if value is None and split == "train":
                continue
            if not isinstance(value, str) or not value.strip():
                what = "is missing" if value is None else f"must be text, not {value!r}"
                raise self.fail(f"data.{split}", what + (" (a split of the hub dataset)" if hub else
                                                         " (a JSONL file, relative to the task file)"))
            if hub is None:
                file = (self.path.parent / value).resolve()
                if not file.is_file():
                    raise self.fail(f"data.{split}", f"names {file}, which does not exist; give a JSONL file "
                                                     "relative to the task file")
                value = str(file)
            out[split] = value
        return out

    def label_words(self) -> list[str]:
        words = self.raw.get("label_words")
        if not isinstance(words, list) or len(words) < 2 or not all(isinstance(w, str) and w.strip() for w in words):
            quote = " (YAML reads yes, no, on, off, true and false as truth values: quote them, e.g. ['no', 'yes'])" \
                if isinstance(words, list) and any(isinstance(w, bool) for w in words) else ""
            raise self.fail("label_words", f"must list two or more words, not {words!r}{quote}")
        words = [w.strip() for w in words]
        if len(set(words)) < len(words):
            raise self.fail("label_words", f"repeats a word ({words}); each label needs its own")
        return words

    def positive(self, field: str, default: int) -> int:
        value = self.raw.get(field, default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise self.fail(field, f"must be a whole number > 0, not {value!r}")
        return value

    def stops(self) -> list[str]:
        value = self.raw.get("stop", ["\n"])
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not value or not all(isinstance(s, str) and s for s in value):
            raise self.fail("stop", f"must be text or a list of texts, not {self.raw.get('stop')!r}")
        return value

    def metrics(self, kind: str, label_words: list[str] | None) -> list[str]:
        value = self.raw.get("metric", METRICS[kind][0])
        value = [value] if isinstance(value, str) else value
        valid = METRICS[kind]
        if not isinstance(value, list) or not value or not all(m in valid for m in value):
            raise self.fail("metric", f"must be one or more of {', '.join(valid)} for a {kind} task, "
                                      f"not {self.raw.get('metric')!r}; e.g. metric: {valid[0]}")
        if "f1" in value and len(label_words or []) != 2:
            raise self.fail("metric", "f1 is the F1 of the second label word and needs exactly two label_words; "
                                      "use metric: accuracy")
        value = list(dict.fromkeys(value))
        # The classification scorer always gives accuracy; it is listed after the chosen metric.
        return value + (["accuracy"] if kind == "classification" and "accuracy" not in value else [])


def template_fields(template: str) -> list[str]:
    """The row fields a str.format template names (`{a[b]}` names a), in order; ValueError for a
    template str.format cannot read or a field that is not a name."""
    out = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        top = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not top or top.isdigit():
            raise ValueError(f"{{{field}}} names no row field")
        out.append(top)
    return list(dict.fromkeys(out))


class _Task:
    """What both kinds share: the spec, the data (only what the file names) and its checks."""

    def __init__(self, path: Path, spec: dict, sha: str):
        self.path, self.spec, self.sha = path, spec, sha
        self.name = self.folder = spec["name"]
        self.display = spec["description"] or spec["name"]
        self.metrics = list(spec["metrics"])
        self.template = spec["template"]
        self.template_names = template_fields(self.template)
        data = spec["data"]
        self.hub_id, self.hub_config = data["hub"] or "", data["config"]
        self.files = {s: data[s] for s in ("train", "eval") if s in data}
        self.hub_splits = dict(self.files)  # our split -> the hub's split (for files: the file)
        self.splits = {"train": "train" if "train" in self.files else None, "eval": "eval"}

    @property
    def fields(self) -> str:
        return f"rows with {', '.join(self.row_fields())}"

    def row_fields(self) -> dict[str, str]:
        """Each row field the task reads -> the task file's field that names it."""
        return dict.fromkeys(self.template_names, "template")

    def fail(self, what: str) -> TaskError:
        return TaskError(f"task file {self.path}: {what}")

    def identity(self) -> dict:
        """What a record keeps to say which task it ran: its name, file and the file's hash."""
        return {"name": self.name, "kind": self.kind, "metrics": self.metrics, "file": str(self.path),
                "file_sha256": self.sha}

    def local_folder(self, data_dir=None):
        return None, ""  # a task's data is what its file names, never a data folder

    def load(self, split: str, n: int | None = None, seed: int = 0, data_dir=None, data: str = "any") -> Split:
        if split not in self.files:
            raise BenchmarkError(f"task {self.name} has no split {split!r}; its splits are {list(self.files)}")
        if data not in DATA_CHOICES:
            raise BenchmarkError(f"data={data!r}; use one of {', '.join(DATA_CHOICES)}, e.g. --set data=real")
        if data == "synthetic":
            raise BenchmarkError(f"task {self.name} has no generated data; use --set data=real or data=any")
        rows, source, where = self._rows(split)
        self.check_rows(rows, split, where)
        return Split(subsample(rows, n, seed), source, False, f"{self.display}: the {split} split of {where}",
                     None, fingerprint(rows))

    def _rows(self, split: str) -> tuple[list[dict], str, str]:
        if self.hub_id:
            try:
                rows = hub_rows(self, split)
            except ConnectionError as e:
                raise NoSource(f"task {self.name}: the hub could not supply split {self.files[split]!r} of "
                               f"{self.hub_id} ({e}); go online, cache it with datasets, or give JSONL files "
                               f"under data: in {self.path}") from None
            return rows, f"hub:{self.hub_id}" + (f":{self.hub_config}" if self.hub_config else ""), self.hub_id
        path = Path(self.files[split])
        rows = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise self.fail(f"field 'data.{split}': {path} line {i} is not JSON ({e.msg}); write one "
                                        "JSON object per line") from None
        return rows, f"local:{path}", str(path)

    def check_rows(self, rows: list, split: str, where: str) -> None:
        if not rows:
            raise self.fail(f"field 'data.{split}': {where} has no rows; add some")
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict):
                raise self.fail(f"field 'data.{split}': row {i} of {where} is not a JSON object")
            missing = [(f, by) for f, by in self.row_fields().items() if f not in row]
            if missing:
                f, by = missing[0]
                raise self.fail(f"field '{by}' names '{f}', but row {i} of data.{split} ({where}) has no such "
                                f"field (it has {', '.join(map(str, row)) or 'none'}); fix '{by}' or the data")
            self.check_row(row, i, split, where)

    def check_row(self, row: dict, i: int, split: str, where: str) -> None:
        for field, text in self.templates().items():
            try:
                text.format(**row)
            except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
                raise self.fail(f"field '{field}' does not fit row {i} of data.{split} ({where}) "
                                f"({type(e).__name__}: {e}); fix '{field}' or the data") from None

    def templates(self) -> dict[str, str]:
        return {"template": self.template}


class ClassificationTask(_Task, ClassificationBenchmark):
    """A classification task: the likeliest label word after the prompt (or a head's argmax)."""

    def __init__(self, path: Path, spec: dict, sha: str):
        super().__init__(path, spec, sha)
        self.label_words = list(spec["label_words"])
        self.label_field = spec["label"]
        self.text_fields = tuple(self.template_names)

    def row_fields(self) -> dict[str, str]:
        return {**super().row_fields(), self.label_field: "label"}

    def label(self, example: dict) -> int:
        value = example[self.label_field]
        if isinstance(value, str):
            return self.label_words.index(value.strip())
        return int(value)

    def check_row(self, row, i, split, where):
        value = row[self.label_field]
        ok = (value.strip() in self.label_words if isinstance(value, str) else
              isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.label_words))
        if not ok:
            raise self.fail(f"field 'label_words' has no label {value!r} (row {i} of data.{split}, {where}, field "
                            f"'{self.label_field}'); a label is one of {self.label_words} or its index "
                            f"0-{len(self.label_words) - 1}")
        super().check_row(row, i, split, where)

    def format_causal(self, example):
        return self.template.format(**example), " " + self.label_words[self.label(example)]

    def format_seqcls(self, example):
        return self.template.format(**example), None, self.label(example)


class GenerationTask(_Task, Benchmark):
    """A generation task: greedy decoding up to a stop, scored against the target."""

    kind = "generation"

    def __init__(self, path: Path, spec: dict, sha: str):
        super().__init__(path, spec, sha)
        self.target = spec["target"]
        self.stop = tuple(spec["stop"])
        self.default_max_new_tokens = spec["max_new_tokens"]
        self.target_language = spec["target_language"]

    def row_fields(self) -> dict[str, str]:
        return {**dict.fromkeys(template_fields(self.target), "target"), **super().row_fields()}

    def templates(self) -> dict[str, str]:
        return {"template": self.template, "target": self.target}

    def reference(self, example: dict) -> str:
        return self.target.format(**example).strip()

    def format_causal(self, example):
        return self.template.format(**example), " " + self.reference(example)

    def evaluate(self, model, tokenizer, examples, *, task="causal-lm", batch_size=8, max_new_tokens=None,
                 n_samples=None, temperature=None, progress=True, truncation=None, shard=None):
        return generate_and_score(self, model, tokenizer, examples, [self.reference(e) for e in examples],
                                  self.score, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                  progress=progress, truncation=truncation, shard=shard)

    def score(self, hyps: list[str], refs: list[str]) -> tuple[dict[str, float], dict[str, str]]:
        """The task's metrics, each with how it was computed."""
        scores, signatures = {}, {}
        if "exact_match" in self.metrics:
            scores["exact_match"] = scoring.accuracy(hyps, refs)
            signatures["exact_match"] = (f"generation == reference after stripping surrounding whitespace|"
                                         f"case-sensitive|stop {list(self.stop)!r}|{len(refs)} examples")
        if set(self.metrics) & {"bleu", "chrf", "rougeL"}:
            text, sigs = scoring.score_translations(hyps, refs, target=self.target_language)
            for m in ("bleu", "chrf", "rougeL"):
                if m in self.metrics:
                    scores[m], signatures[m] = text[m], sigs[m]
        return {m: scores[m] for m in self.metrics}, signatures
