"""A one-node Slurm cluster for tests: munged, slurmctld and slurmd started from a temporary folder.

The node has a GPU GRES with a count and no GPU behind it, so arrays that ask for GPUs are
scheduled on a machine without any. Slurm 22.05's gpu plugin drops a GPU GRES that names no
File (even with Flags=CountOnly), so empty placeholder files in the folder stand in for the
device files; slurmd logs that they are not devices and counts them. Everything (munge socket, ports, spool, state, logs) is private to the
folder, so nothing of the machine's own Slurm or munge is touched; `stop()` ends only the
daemons started here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [d for d in DAEMONS if not shutil.which(d)]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge; .ci/run does)"
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    if not Path("/etc/munge/munge.key").exists():
        return "no munge key at /etc/munge/munge.key (installing munge creates one)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, folder: Path, gpus: int = 2, memory_mb: int = 8000):
        self.folder = Path(folder)
        self.gpus = gpus
        self.memory_mb = memory_mb
        self.procs: list[subprocess.Popen] = []
        self.node = socket.gethostname().split(".")[0]

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm clients (sbatch, squeue, ...) talking to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.folder / "slurm.conf")}

    def _write_config(self) -> None:
        f = self.folder
        for d in ("state", "spool", "munge"):
            (f / d).mkdir(parents=True, exist_ok=True)
        os.chmod(f / "munge", 0o700)
        cpus = os.cpu_count() or 1
        (f / "slurm.conf").write_text(f"""ClusterName=hupeft-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={f / 'munge' / 'munge.socket'}
CredType=cred/munge
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'slurmctld.pid'}
SlurmdPidFile={f / 'slurmd.pid'}
SlurmctldLogFile={f / 'slurmctld.log'}
SlurmdLogFile={f / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=5
SchedulerParameters=sched_interval=2
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={self.memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        for i in range(self.gpus):
            (f / f"gpu{i}").touch()
        (f / "gres.conf").write_text(f"AutoDetect=off\nNodeName={self.node} Name=gpu Count={self.gpus} "
                                     f"File={f}/gpu[0-{self.gpus - 1}]\n")

    def start(self, timeout: float = 60) -> None:
        self._write_config()
        f = self.folder
        log = open(f / "daemons.out", "ab")
        self.procs.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={f / 'munge' / 'munge.socket'}",
             f"--pid-file={f / 'munge' / 'munged.pid'}", f"--log-file={f / 'munge' / 'munged.log'}",
             f"--seed-file={f / 'munge' / 'munged.seed'}", "--key-file=/etc/munge/munge.key"],
            stdout=log, stderr=log))
        time.sleep(1)
        self.procs.append(subprocess.Popen(["slurmctld", "-D", "-i"], env=self.env, stdout=log, stderr=log))
        time.sleep(2)
        self.procs.append(subprocess.Popen(["slurmd", "-D", "-N", self.node], env=self.env, stdout=log, stderr=log))
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc"):
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"the test cluster did not come up; see {f}/*.log and {f}/daemons.out")

    def jobs(self) -> list[str]:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=self.env, capture_output=True, text=True)
        return out.stdout.split("\n") if out.stdout.strip() else []

    def wait_idle(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.jobs():
                return
            time.sleep(1)
        raise TimeoutError(f"jobs still queued after {timeout:.0f} s: {self.jobs()}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
