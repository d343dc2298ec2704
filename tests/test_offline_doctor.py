"""Offline: one short probe decides that the hub cannot be reached, so data=any falls back in
seconds and says so once; bad input is refused in seconds, offline too. `hupeft doctor` and
`hupeft --version`."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from hupeft import doctor, hub
from hupeft.config import RunConfig, validate
from hupeft.experiment import run

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
TINY = dict(model="tiny-llama", method="lora", benchmark="glue/sst2", n_train=4, n_val=2, n_eval=2, max_len=48,
            batch_size=4, checkpoint=False, save_adapter=False)


class Silent:
    """An endpoint that accepts connections and never answers (as a host that drops packets looks
    to a client with a timeout), counting the connections made to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held, self.stop = [], False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)  # kept open, never answered

    def close(self):
        self.stop = True
        for c in self.held:
            c.close()
        self.sock.close()


@pytest.fixture
def silent():
    endpoint = Silent()
    yield endpoint
    endpoint.close()


@pytest.fixture
def unreachable_hub(silent, monkeypatch):
    """No offline variable, HF_ENDPOINT silent, and this process's hub decision not yet made."""
    for name in OFFLINE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", silent.url)
    monkeypatch.setattr(hub, "_answers", {})
    monkeypatch.setattr(hub, "_offline_since", None)
    return silent


def serve(status: int):
    class Answer(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_probe_gives_up_on_a_silent_endpoint_within_its_time(silent):
    t0 = time.perf_counter()
    why = hub.probe(silent.url, seconds=1.0)
    assert time.perf_counter() - t0 < 2.5 and why and silent.url in why


@pytest.mark.parametrize("status,answers", [(200, True), (404, True), (503, False)])
def test_the_probe_takes_an_answer_as_reachable_unless_the_hub_is_down(status, answers):
    server = serve(status)
    try:
        why = hub.probe(f"http://127.0.0.1:{server.server_port}", seconds=2.0)
    finally:
        server.shutdown()
    assert (why is None) == answers and (answers or "HTTP 503" in why)


def test_the_offline_variables_decide_without_a_request(unreachable_hub, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert hub.unreachable() == "HF_DATASETS_OFFLINE is set"
    time.sleep(0.2)
    assert unreachable_hub.held == []


def test_one_probe_per_process_switches_every_client_offline(unreachable_hub, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as imported without the variable
    assert hub.unreachable() and hub.unreachable() and hub.decide("some/model")
    assert len(unreachable_hub.held) == 1  # asked once
    assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.HF_HUB_OFFLINE is True


def test_data_any_falls_back_within_seconds_and_says_so_once(unreachable_hub, tmp_path, caplog, monkeypatch):
    probes = []

    def timed(url, seconds=hub.PROBE_SECONDS):
        t0 = time.perf_counter()
        why = probe(url, seconds)
        probes.append(time.perf_counter() - t0)
        return why

    probe = hub.probe
    monkeypatch.setattr(hub, "probe", timed)
    cfg = RunConfig(**TINY)
    with caplog.at_level(logging.WARNING, logger="hupeft"):
        validate(cfg)  # the probe, the hub's cache looked up, the fallback to generated data
        # The only wait is the probe's, once and bounded: every client then reads its cache, no retries.
        assert len(probes) == 1 and probes[0] < hub.PROBE_SECONDS + 1
        rec = run(cfg, tmp_path, progress=False)
    said = [r.getMessage() for r in caplog.records if "no real data" in r.getMessage()]
    assert rec["status"] == "ok" and rec["config"]["data"]["used"] == "synthetic"
    assert len(said) == 1 and f"unreachable: no answer from {unreachable_hub.url}" in said[0]
    assert "using generated data, as data=any allows" in said[0]
    assert all(f"unreachable: no answer from {unreachable_hub.url}" in t
               for t in rec["config"]["data"]["tried"]["eval"])
    assert len(unreachable_hub.held) == 1  # the probe; no client asked the hub after it


@pytest.mark.parametrize("args,message,asked", [
    (["--set", "max_len=1"], "max_len=1 is shorter than the longest target", 1),  # known once the data is in
    (["--set", "max_len=-1"], "max_len must be > 0, got -1", 0),
    (["--method", "nope"], "unknown method 'nope'", 0),
])
def test_bad_input_offline_exits_2_with_one_line_without_waiting_on_the_hub(args, message, asked, silent, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    env["HF_ENDPOINT"] = silent.url
    argv = ["--model", "tiny-llama", "--method", "lora", "--benchmark", "glue/sst2", "--out", str(tmp_path / "o")]
    if args[0] == "--method":
        argv[3] = args[1]
        args = []
    done = subprocess.run([sys.executable, "-m", "hupeft", "run", *argv, *args], capture_output=True, text=True,
                          env=env, timeout=900)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
    # What the cheap checks refuse asks no one; the rest asks the hub once (the probe, bounded by
    # PROBE_SECONDS), and no client retries it: seconds, not the minutes of retries.
    assert len(silent.held) == asked
    assert not (tmp_path / "o").exists()


def test_a_command_line_mistake_is_one_line_too():
    done = subprocess.run([sys.executable, "-m", "hupeft", "run", "--model", "tiny-llama", "--seed", "x"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "hupeft run: argument --seed: invalid int value: 'x'; see hupeft run --help"]


def test_version():
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", "hupeft", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"hupeft {version('hupeft')}"


def test_doctor_names_a_fix_for_every_missing_piece():
    done = subprocess.run([sys.executable, "-m", "hupeft", "doctor"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("hupeft ") and "torch" in lines[0]
    for what in ("CUDA GPU", "bitsandbytes 4bit", "bitsandbytes 8bit", "bubblewrap", "Slurm", "DeepSpeed",
                 "accelerate config", "Hugging Face hub"):
        assert any(what in line for line in lines), what
    for i, line in enumerate(lines):
        if line.lstrip().startswith("missing"):
            assert lines[i + 1].lstrip().startswith("fix: ") and len(lines[i + 1].strip()) > len("fix: ")


def test_doctor_run_checks_each_path_this_machine_has(capsys):
    assert doctor.cli_main(["--run"]) == 0
    out = capsys.readouterr().out
    checks = [line.strip() for line in out.split("end-to-end checks:")[1].splitlines() if line.strip()]
    assert not [c for c in checks if c.startswith("failed")]
    for what in ("train + score", "generation", "bf16 autocast", "FSDP, one process"):
        assert any(c.startswith("ok") and what in c for c in checks), what
    import torch

    if not torch.cuda.is_available():
        assert any(c.startswith("skipped") and "planner peak" in c for c in checks)


def test_doctor_run_fails_when_a_check_fails(monkeypatch, capsys):
    def broken():
        raise RuntimeError("no luck\nmore")

    monkeypatch.setattr(doctor, "check_fsdp", broken)
    assert doctor.cli_main(["--run", "--only", "fsdp"]) == 1
    out = capsys.readouterr().out
    assert "failed   FSDP, one process: RuntimeError: no luck (" in out and "1 passed" not in out
    assert doctor.cli_main(["--run", "--only", "nothing-like-this"]) == 2


def test_slurm_tools_without_a_cluster_are_skipped_not_failed(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.setattr(doctor, "Path", lambda *parts: tmp_path.joinpath(*[p.lstrip("/") for p in parts]))
    assert "no cluster is configured" in doctor._slurm_skip()
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    assert doctor._slurm_skip() is None
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    assert doctor._slurm_skip() == "no Slurm here"
