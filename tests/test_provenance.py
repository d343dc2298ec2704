"""Data provenance: which data may serve a run (data=real|synthetic|any), how the hub is reached
(datasets alone decides: its cache offline, a proxy or HF_ENDPOINT online), what the record says
about it, and the few-shot splits of XNLI and FLORES."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hupeft import benchmarks, data
from hupeft.benchmarks import BenchmarkError
from hupeft.benchmarks.base import fingerprint
from hupeft.config import ConfigError, RunConfig, validate
from hupeft.experiment import cli_main

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(benchmarks.DATA_ENV, raising=False)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# --- data=real with no source: one line, exit 2, nothing written, no model loaded --------------------


def test_real_data_with_no_source_exits_2_naming_the_sources_tried(offline, tmp_path, capsys, monkeypatch):
    from hupeft import models

    def no_weights(*a, **k):
        raise AssertionError("a model was loaded before the data was checked")
    monkeypatch.setattr(models, "load", no_weights)
    out = tmp_path / "out"
    rc = cli_main(["--model", "tiny-llama", "--method", "lora", "--benchmark", "glue/sst2", "--set", "data=real",
                   "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "no real source has split" in err
    assert "hub nyu-mll/glue (ConnectionError: Couldn't reach 'nyu-mll/glue' on the Hub" in err
    assert "offline synthetic-sst2 (generated, not real data)" in err
    assert "sst2/validation.jsonl" in err and "--set data=any" in err
    assert not out.exists()


@pytest.mark.parametrize("value,words", [("fake", "data='fake': use one of real, synthetic, any"),
                                         ("synthetic", "data=synthetic would pass over the data folder")])
def test_bad_data_settings_are_refused_before_any_work(offline, tmp_path, value, words):
    write_jsonl(tmp_path / "sst2" / "validation.jsonl", [{"sentence": "fine", "label": 1}])
    with pytest.raises(ConfigError) as e:
        validate(RunConfig(model="tiny-llama", benchmark="glue/sst2", data=value, data_dir=str(tmp_path)))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_each_setting_takes_only_the_data_it_names(offline, tmp_path):
    sst2 = benchmarks.get("glue/sst2")
    assert sst2.load("validation", data="synthetic").synthetic
    fell_back = sst2.load("validation", data="any")
    assert fell_back.synthetic and fell_back.tried and fell_back.tried[0].startswith("hub nyu-mll/glue (")
    rows = [{"sentence": f"line {i}", "label": i % 2} for i in range(6)]
    write_jsonl(tmp_path / "sst2" / "validation.jsonl", rows)
    real = sst2.load("validation", data_dir=tmp_path, data="real")
    assert not real.synthetic and real.source == f"local:{tmp_path / 'sst2' / 'validation.jsonl'}"
    assert real.fingerprint == fingerprint(rows) != fingerprint(rows[::-1])
    he = benchmarks.get("humaneval")
    assert not he.load("test", n=2, data="real").synthetic  # real data that ships offline serves data=real
    with pytest.raises(BenchmarkError, match="only offline data .* is real, not generated"):
        he.load("test", data="synthetic")


# --- the hub: datasets decides, through its cache, a proxy or HF_ENDPOINT ------------------------


def build_hub_cache(root: Path, repo: str, config: str, splits: dict[str, list[dict]]) -> None:
    """The folder `datasets.load_dataset(repo, config)` leaves in HF_DATASETS_CACHE after a download:
    <namespace>___<name>/<config>/<version>/<revision>/ with one arrow file per split and its info."""
    from datasets import Dataset, DatasetInfo, SplitDict, SplitInfo
    from datasets.arrow_writer import ArrowWriter

    namespace, name = repo.split("/")
    folder = root / f"{namespace}___{name}" / config / "0.0.0" / "0123456789abcdef"
    folder.mkdir(parents=True)
    infos, features = SplitDict(dataset_name=name), None
    for split, rows in splits.items():
        ds = Dataset.from_list(rows)
        features = ds.features
        with ArrowWriter(features=features, path=str(folder / f"{name}-{split}.arrow")) as writer:
            writer.write_table(ds.data.table)
            n, size = writer.finalize()
        infos.add(SplitInfo(name=split, num_bytes=size, num_examples=n, dataset_name=name))
    DatasetInfo(features=features, config_name=config, dataset_name=name, splits=infos).write_to_directory(str(folder))


def test_cached_hub_data_serves_a_real_run_offline_behind_an_unreachable_endpoint(tmp_path):
    """HF_DATASETS_OFFLINE=1 with the data in the datasets cache: `hupeft run --set data=real` trains
    and scores on exactly the cached rows, although HF_ENDPOINT and the proxy lead nowhere, and the
    record names the hub id and the rows' fingerprints."""
    words = ["good", "bad", "fine", "dull", "great", "awful"]
    train = [{"sentence": f"a {words[i % 6]} film number {i}", "label": int(i % 2 == 0), "idx": i} for i in range(24)]
    val = [{"sentence": f"the {words[i % 6]} plot {i}", "label": int(i % 2 == 0), "idx": i} for i in range(10)]
    build_hub_cache(tmp_path / "hf-datasets", "nyu-mll/glue", "sst2", {"train": train, "validation": val})
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"),
           "HF_ENDPOINT": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    env.pop(benchmarks.DATA_ENV, None)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "hupeft", "run", "--model", "tiny-bert", "--method", "lora",
                           "--benchmark", "glue/sst2", "--out", str(out), "--set", "data=real", "--set", "n_train=8",
                           "--set", "n_val=4", "--set", "n_eval=none", "--set", "epochs=1", "--set", "max_len=32",
                           "--set", "init_batches=1"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((out / "record.json").read_text())
    assert rec["status"] == "ok", rec["error"]
    info = rec["config"]["data"]
    assert info["requested"] == "real" and info["used"] == "real" and info["synthetic"] is False
    assert info["sources"] == {"eval": "hub:nyu-mll/glue:sst2", "train": "hub:nyu-mll/glue:sst2"}
    assert info["fingerprints"] == {"eval": fingerprint(val), "train": fingerprint(train)}
    assert info["n_eval"] == 10 and info["tried"] == {}  # the whole validation split, nothing failed first

    from hupeft import report

    df = report.records(out)
    shown = report.data_provenance(df).iloc[0]
    assert (shown["data asked"], shown["data used"], shown["runs"]) == ("real", "real", 1)
    assert shown["sources"] == (f"eval: hub:nyu-mll/glue:sst2 ({fingerprint(val)}); "
                                f"train: hub:nyu-mll/glue:sst2 ({fingerprint(train)})")
    sig = report.evaluation_signatures(df)
    assert sig[["benchmark", "metric"]].values.tolist() == [["glue/sst2", "accuracy"]]
    assert sig["computed as"][0] == "classification head: argmax of the logits|10 labelled examples"


def test_no_socket_probe_decides_for_datasets(offline, monkeypatch):
    """A mirror behind HF_ENDPOINT (or a proxy) serves the hub while huggingface.co itself cannot be
    reached directly: the split comes from the hub, not from generated data."""
    import socket

    def unreachable(*a, **k):
        raise OSError("direct connections are blocked here")
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example")
    rows = [{"sentence": "from the mirror", "label": 1, "idx": 0}]
    monkeypatch.setattr(benchmarks.GLUE["glue/sst2"], "from_hub", lambda self, split: rows)
    got = benchmarks.get("glue/sst2").load("validation", data="any")
    assert got.source == "hub:nyu-mll/glue:sst2" and not got.synthetic and got.examples == rows


def test_gated_flores_never_turns_synthetic_silently(offline, monkeypatch):
    from hupeft.benchmarks.translation import Flores

    def gated(self, split):
        raise PermissionError("Access to dataset openlanguagedata/flores_plus is restricted. You must be authenticated")
    monkeypatch.setattr(Flores, "from_hub", gated)
    monkeypatch.setenv("HF_ENDPOINT", "http://gate.example")  # a fresh key: no failure remembered from other tests
    bench = benchmarks.get("flores/eng_Latn-deu_Latn")
    with pytest.raises(BenchmarkError) as e:
        bench.load("devtest", data="real")
    msg = str(e.value)
    assert "hub openlanguagedata/flores_plus (PermissionError: Access to dataset" in msg and "\n" not in msg
    cfg = RunConfig(model="tiny-llama", benchmark=bench.name, data="any", n_train=4, n_eval=4)
    splits = data.load_splits(bench, cfg)
    info = splits.provenance("any")
    assert info["used"] == "synthetic" and info["sources"]["train"] == "offline:synthetic-parallel"
    assert all("restricted" in t[0] for t in info["tried"].values()) and set(info["tried"]) == {"eval", "train"}


# --- XNLI and FLORES: few-shot examples from another split, label-stratified ---------------------


def test_stratified_takes_labels_in_turn():
    rows = [{"i": i, "label": lab} for i, lab in enumerate([0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 2])]
    got = data.stratified(rows, 7, lambda r: r["label"])
    assert [r["i"] for r in got] == [0, 5, 6, 1, 7, 2, 8]
    assert [r["i"] for r in data.stratified(rows, 3, lambda r: r["label"])] == [0, 5, 6]
    assert len(data.stratified(rows, 50, lambda r: r["label"])) == 11


def test_xnli_few_shot_is_32_stratified_from_validation_and_scores_all_of_test(offline, tmp_path):
    # Unbalanced validation (30 / 20 / 14): a plain cut would not give 11 / 11 / 10.
    labels = [0] * 30 + [1] * 20 + [2] * 14
    valid = [{"premise": f"v{i}", "hypothesis": f"h{i}", "label": lab} for i, lab in enumerate(labels)]
    test = [{"premise": f"t{i}", "hypothesis": f"h{i}", "label": i % 3} for i in range(45)]
    write_jsonl(tmp_path / "xnli" / "sw" / "validation.jsonl", valid)
    write_jsonl(tmp_path / "xnli" / "sw" / "test.jsonl", test)
    for seed in (0, 1):
        cfg = RunConfig(model="tiny-llama", benchmark="xnli/sw", data="real", data_dir=str(tmp_path), seed=seed,
                        n_train=32, n_val=4, n_eval=None)
        s = data.load_splits(benchmarks.get("xnli/sw"), cfg)
        assert collections.Counter(e["label"] for e in s.train) == {0: 11, 1: 11, 2: 10}
        assert {e["premise"] for e in s.train + s.val} <= {e["premise"] for e in valid}
        assert not {e["premise"] for e in s.train} & {e["premise"] for e in s.val}
        assert sorted(e["premise"] for e in s.eval) == sorted(e["premise"] for e in test)  # the whole split
        assert s.sources == {"eval": f"local:{tmp_path / 'xnli/sw/test.jsonl'}",
                             "train": f"local:{tmp_path / 'xnli/sw/validation.jsonl'}"}
        assert not s.synthetic and s.fingerprints["train"] == fingerprint(valid)


def test_flores_trains_on_dev_and_scores_all_of_devtest(offline, tmp_path):
    dev = [{"id": i, "eng_Latn": f"dev {i}", "deu_Latn": f"dev-de {i}"} for i in range(40)]
    devtest = [{"id": 100 + i, "eng_Latn": f"test {i}", "deu_Latn": f"test-de {i}"} for i in range(15)]
    write_jsonl(tmp_path / "flores" / "dev.jsonl", dev)
    write_jsonl(tmp_path / "flores" / "devtest.jsonl", devtest)
    cfg = RunConfig(model="tiny-llama", benchmark="flores/eng_Latn-deu_Latn", data="real", data_dir=str(tmp_path),
                    n_train=32, n_val=4, n_eval=None)
    s = data.load_splits(benchmarks.get(cfg.benchmark), cfg)
    assert len(s.train) == 32 and {e["id"] for e in s.train + s.val} <= set(range(40))
    assert sorted(e["id"] for e in s.eval) == list(range(100, 115))


def test_generated_xnli_few_shot_split_shares_no_pair_with_test():
    from hupeft.benchmarks import synthetic

    pairs = lambda split: {(r["premise"], r["hypothesis"]) for r in synthetic.nli_split("sw", split, 300)}  # noqa: E731
    assert len(pairs("validation")) == len(pairs("test")) == 300
    assert not pairs("validation") & pairs("test")
    assert synthetic.nli_split("sw", "test", 300) == synthetic.nli("sw", "test", 300)


# --- the book: sources and signatures on the setup page, GSM-Symbolic apart from GSM8K -------------


def fake_runs(rows: list[tuple]) -> "pd.DataFrame":
    import pandas as pd

    return pd.DataFrame([{"model": "m", "benchmark": b, "method": "lora", "seed": seed, "status": status,
                          "record": {"config": {"data": d}, "metric_signatures": sigs}}
                         for b, seed, status, d, sigs in rows])


def test_setup_page_frames_group_runs_by_provenance_and_signature():
    from hupeft import report

    fell = {"requested": "any", "used": "synthetic", "sources": {"eval": "offline:synthetic-sst2"},
            "fingerprints": {"eval": "sha256:aa"}, "tried": {"eval": ["hub x (gated)"], "train": ["hub x (gated)"]}}
    real = {"requested": "real", "used": "real", "sources": {"eval": "local:/d/test.jsonl"}, "fingerprints": {}}
    df = fake_runs([("glue/sst2", 0, "ok", fell, {"accuracy": "rule A"}),
                    ("glue/sst2", 1, "ok", fell, {"accuracy": "rule A"}),
                    ("glue/sst2", 2, "failed", real, {"accuracy": "rule B"}),
                    ("mtbench", 0, "ok", real, {"bleu": "nrefs:1|tok:13a", "rougeL": "script tokens"})])
    prov = report.data_provenance(df)
    assert prov[["benchmark", "data asked", "data used", "sources", "tried first", "runs"]].values.tolist() == [
        ["glue/sst2", "any", "synthetic", "eval: offline:synthetic-sst2 (sha256:aa)", "hub x (gated)", 2],
        ["glue/sst2", "real", "real", "eval: local:/d/test.jsonl", "", 1],
        ["mtbench", "real", "real", "eval: local:/d/test.jsonl", "", 1]]
    sig = report.evaluation_signatures(df)  # failed runs computed nothing
    assert sig.values.tolist() == [["glue/sst2", "accuracy", "rule A", 2], ["mtbench", "bleu", "nrefs:1|tok:13a", 1],
                                   ["mtbench", "rougeL", "script tokens", 1]]


def test_gsm_symbolic_is_never_set_beside_the_papers_gsm8k():
    import pandas as pd

    from hupeft import pages, report

    paper = report.paper_table1()
    assert not paper[paper["benchmark"] == "gsm8k"].empty
    t1 = pd.DataFrame([{"model": "m", "benchmark": b, "metric": "exact_match_strict", "method": "lora",
                        "mean": 12.0, "ci95": 1.0} for b in ("gsm-symbolic", "gsm8k")])
    layout = report.table1_layout(t1, paper)
    assert set(layout) == {"gsm-symbolic", "gsm8k"}
    assert not [c for c in layout["gsm-symbolic"].columns if "paper" in c]
    assert [c for c in layout["gsm8k"].columns if "paper" in c]
    assert "gsm-symbolic stands in for GSM8K and is not GSM8K" in pages._not_in_paper("gsm-symbolic")
    assert pages._not_in_paper("gsm8k") == ""


def test_setup_page_sections_show_no_none_or_nan(monkeypatch):
    from hupeft import pages

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(getattr(obj, "data", str(obj))))
    old_style = {"n_eval": 8, "description": "d"}  # a record without the data setting or hashes
    df = fake_runs([("glue/sst2", 0, "ok", old_style, {}), ("mtbench", 0, "ok", {"requested": "any"}, {"bleu": "s"})])
    pages.data_sources(df)
    pages.evaluation_choices(df)
    text = "\n".join(map(str, shown))
    assert text.count("<table") == 2 and "Data sources" in text and "How each score was computed" in text
    for bad in (">None<", ">nan<", ">NaN<", "><"):
        assert bad not in text


def test_real_scores_are_never_paired_with_generated_training_data(offline, monkeypatch):
    """The hub serves XNLI's test split but not its validation split: data=any does not train on
    generated pairs and score on real ones."""
    from hupeft.benchmarks.xnli import XNLI

    test = [{"premise": f"p{i}", "hypothesis": "h", "label": i % 3} for i in range(9)]

    def only_test(self, split):
        if split != "test":
            raise ConnectionError("the validation split timed out")
        return test
    monkeypatch.setattr(XNLI, "from_hub", only_test)
    monkeypatch.setenv("HF_ENDPOINT", "http://half.example")  # a fresh key: no failure remembered from other tests
    with pytest.raises(ValueError, match=r"the test split is real \(hub:facebook/xnli:sw\) but the validation split "
                                         r"is generated \(offline:synthetic-nli-sw\); provide both from one source"):
        data.load_splits(benchmarks.get("xnli/sw"), RunConfig(model="tiny-llama", benchmark="xnli/sw", data="any"))
