"""A real single-node Slurm cluster for the tests: Debian's ``slurm-wlm`` (slurmctld, slurmd,
munge) configured under a temporary folder, started as root and stopped by pid afterwards.

Where it cannot start (not root, no package and no way to install it) the tests that need
it skip with the reason, except under CI (``CI`` set), where that is a failure: the CI run
installs the package (``.ci/run``), so a missing cluster there is a real problem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class SlurmCluster:
    conf: Path
    env: dict[str, str]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"Slurm must run in CI: {reason}")
    pytest.skip(f"no Slurm cluster: {reason}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ensure_installed() -> None:
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged"):
        return
    if shutil.which("apt-get") is None:
        _unavailable("slurm-wlm is not installed and apt-get is missing")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm"]):
        if subprocess.run(argv, env=env, capture_output=True, check=False).returncode != 0:
            _unavailable("installing slurm-wlm failed")


def _ensure_munge() -> int | None:
    """Start munged unless it runs; its pid when this call started it."""
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True, check=False).returncode == 0:
        return None
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["mungekey", "--create"], capture_output=True, check=False)
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"], check=False,
                   capture_output=True)
    pidfile = Path("/run/munge/munged.pid")
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not pidfile.exists():
        _unavailable("munged did not start")
    return int(pidfile.read_text().strip())


def _conf(folder: Path, host: str) -> str:
    cpus = os.cpu_count() or 1
    return "\n".join([
        "ClusterName=ckptctltest", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}", "AuthType=auth/munge",
        f"StateSaveLocation={folder}/state", f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none", "SwitchType=switch/none", "MpiDefault=none",
        "SchedulerType=sched/backfill", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU", "ReturnToService=2",
        # fast turnaround for a test cluster
        "SchedulerParameters=defer_batch,sched_interval=1", "MessageTimeout=30",
        f"NodeName={host} CPUs={cpus} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""])


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    if os.geteuid() != 0:
        _unavailable("the daemons need root")
    _ensure_installed()
    munged = _ensure_munge()
    folder = tmp_path_factory.mktemp("slurm")
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_conf(folder, host))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for daemon in ("slurmctld", "slurmd"):
        started = subprocess.run([f"/usr/sbin/{daemon}", "-f", str(conf)], env=env,
                                 capture_output=True, text=True, check=False)
        if started.returncode != 0:
            _unavailable(f"{daemon} did not start: {started.stderr.strip()[-300:]}")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                   text=True, check=False).stdout.strip()
            if state.startswith("idle"):
                break
            time.sleep(0.5)
        else:
            log = (folder / "slurmctld.log").read_text(errors="replace")[-1500:]
            _unavailable(f"the node never became idle (sinfo: {state!r}); {log}")
        yield SlurmCluster(conf, env)
    finally:
        for pidfile in ("slurmd.pid", "slurmctld.pid"):
            path = folder / pidfile
            if path.exists():
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(path.read_text().strip()), 15)
        if munged is not None:
            with contextlib.suppress(OSError):
                os.kill(munged, 15)
