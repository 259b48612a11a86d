"""``convert --submit slurm``: the same conversion as a Slurm job array.

Each array task runs ``ckptctl convert`` with the options given here; the task finds its
shard in ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT`` (``ckptctl.sharding``) and uses
``SLURM_CPUS_PER_TASK`` worker processes, so the array writes exactly the outputs one serial
run would write. Only ``sbatch`` is needed (no Python dependency); each task's JSON Lines
log lands next to the script, and the tree itself (``scan``) is the source of truth after.
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError


class SubmitError(RuntimeError):
    """sbatch refused the job (a command-level failure, not about one checkpoint)."""


@dataclass(frozen=True)
class SlurmArray:
    tasks: int
    cpus_per_task: int = 1
    partition: str | None = None
    time: str | None = None
    job_name: str = "ckptctl-convert"


def sbatch_script(array: SlurmArray, convert_args: Sequence[str], log_dir: Path,
                  python: str = sys.executable) -> str:
    """The job-array script: one ``ckptctl convert`` per task on its shard."""
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={array.job_name}",
             f"#SBATCH --array=0-{array.tasks - 1}",
             f"#SBATCH --cpus-per-task={array.cpus_per_task}",
             f"#SBATCH --output={_literal(log_dir)}/%x-%A_%a.jsonl",
             f"#SBATCH --error={_literal(log_dir)}/%x-%A_%a.err"]
    if array.partition:
        lines.append(f"#SBATCH --partition={array.partition}")
    if array.time:
        lines.append(f"#SBATCH --time={array.time}")
    command = [python, "-m", "ckptctl", "convert", *convert_args, "--format", "jsonl"]
    lines += ["# Each task converts its shard (SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT)",
              "# with one worker process per CPU it was given.",
              "exec " + " ".join(shlex.quote(c) for c in command)
              + ' --jobs "${SLURM_CPUS_PER_TASK:-1}"', ""]
    return "\n".join(lines)


def _literal(path: Path) -> str:
    """A path in an #SBATCH file name, where % starts a pattern (%x, %A …)."""
    return str(path).replace("%", "%%")


@dataclass(frozen=True)
class Submitted:
    job_id: str
    script: Path
    log_dir: Path
    #: with --wait: sbatch's exit status (non-zero when any task failed)
    status: int | None


def submit(array: SlurmArray, convert_args: Sequence[str], base_dir: Path,
           wait: bool) -> Submitted:
    """Write the script under ``base_dir/<job>-<timestamp>/`` and submit it with sbatch."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UsageError("--submit slurm needs sbatch on PATH (is this a Slurm login node?)")
    if array.tasks < 1 or array.cpus_per_task < 1:
        raise UsageError("--array and --cpus-per-task must be at least 1")
    for what, value in (("--partition", array.partition), ("--time", array.time),
                        ("the current folder", str(base_dir.absolute()))):
        # #SBATCH lines end at whitespace: a value holding any would be cut or add a line
        if value is not None and (not value.isprintable() or any(c.isspace() for c in value)):
            raise UsageError(f"{what} must not hold spaces or control characters for sbatch: "
                             f"{value!r}")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = (base_dir / f"{array.job_name}-{stamp}-{os.getpid()}").absolute()
    log_dir.mkdir(parents=True)
    script = log_dir / "convert.sbatch"
    script.write_text(sbatch_script(array, convert_args, log_dir))
    argv = [sbatch, "--parsable", *(["--wait"] if wait else []), str(script)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    job_id = done.stdout.strip().split(";")[0]
    if not job_id:
        shutil.rmtree(log_dir, ignore_errors=True)  # nothing was submitted: leave nothing
        raise SubmitError(f"sbatch refused the job: {done.stderr.strip() or done.returncode}")
    return Submitted(job_id, script, log_dir, done.returncode if wait else None)


def task_logs(log_dir: Path) -> list[dict[str, object]]:
    """Every per-checkpoint record the array's tasks wrote (their JSON Lines logs)."""
    import json

    records: list[dict[str, object]] = []
    for log in sorted(log_dir.glob("*.jsonl")):
        for line in log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "source" in record:
                record["task_log"] = log.name
                records.append(record)
    return records
