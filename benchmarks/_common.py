"""Helpers shared by the benchmarks: whole-process timing, medians, scratch space, tables.

Every measurement is a whole child process, reaped with ``os.wait4``: wall time is taken
around the whole process (interpreter start-up and imports included) and ``ru_maxrss`` is
its peak resident set (anonymous *and* file-backed pages, so memory-mapped reads count).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK = BENCH_DIR / "_work"
PYCACHE = WORK / "pycache"
PYTHON = sys.executable
MB = 1024 * 1024


def ckptctl_exe() -> str:
    """The ``ckptctl`` console script of the interpreter running the benchmark."""
    beside = Path(sys.executable).parent / "ckptctl"
    if beside.exists():
        return str(beside)
    found = shutil.which("ckptctl")
    if found is None:
        raise SystemExit("ckptctl is not installed in this environment (pip install -e .)")
    return found


@dataclass
class Run:
    seconds: float
    max_rss_bytes: int
    returncode: int
    cpu_seconds: float = 0.0  # user + system time of the process (and its reaped children)


# A tiny launcher, started afresh for every measurement: it forks and execs the command and
# reaps it with ``os.wait4``. The rusage of that one child gives its peak RSS. (Measured from
# this process instead, a child's ``ru_maxrss`` would start at the RSS of whatever process
# forked it: Linux carries the forking process's high-water mark across ``exec``.)
_LAUNCHER = """
import os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(out, "w") as handle:
    handle.write(f"{seconds!r} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)} "
                 f"{usage.ru_utime + usage.ru_stime!r}")
"""


def measured_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a measured process: ``env`` (default: ours) with bytecode caching.

    An installed package normally runs from cached bytecode. Where ``PYTHONDONTWRITEBYTECODE``
    is set (as in some sandboxes and CI images) every process would compile ckptctl's
    modules again, so measured processes get a bytecode cache of their own under ``_work/``
    (``PYTHONPYCACHEPREFIX``), filled by the untimed warm-up runs; the source tree is untouched.
    """
    result = dict(os.environ if env is None else env)
    result.pop("PYTHONDONTWRITEBYTECODE", None)
    result["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return result


def run_process(cmd: Sequence[str], env: Mapping[str, str] | None = None,
                stdout: IO[bytes] | int | None = subprocess.DEVNULL,
                cwd: Path | None = None, check: bool = True, measured: bool = True) -> Run:
    """Run ``cmd`` to completion in a fresh launcher; its wall time, peak RSS and exit code.

    The wall time runs from the fork to the reaping of ``cmd``'s process, so interpreter
    start-up and imports count, the launcher's own start-up does not. ``measured`` processes
    get ``measured_env``; set-up steps (``measured=False``) run in ``env`` as given.
    """
    result = WORK / f".run-{os.getpid()}.txt"
    result.parent.mkdir(parents=True, exist_ok=True)
    if measured:
        env = measured_env(env)
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", _LAUNCHER, str(result), *cmd],
                          env=None if env is None else dict(env), stdout=stdout,
                          stderr=subprocess.PIPE, cwd=cwd, check=False)
    try:
        seconds_text, rss_kib, code, cpu_text = result.read_text().split()
    except (OSError, ValueError):
        raise RuntimeError(f"launcher failed for {' '.join(cmd)}:\n"
                           f"{proc.stderr.decode(errors='replace')}") from None
    finally:
        result.unlink(missing_ok=True)
    if check and int(code) != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {code}:\n"
                           f"{proc.stderr.decode(errors='replace')}")
    return Run(float(seconds_text), int(rss_kib) * 1024, int(code),  # Linux: ru_maxrss in KiB
               float(cpu_text))


@dataclass
class Series:
    """Repeated measurements of one thing; reported by their median."""

    name: str
    runs: list[Run] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def cpu_seconds(self) -> float:
        return statistics.median(r.cpu_seconds for r in self.runs)

    def paired_ratio(self, base: Series) -> float:
        """Median over rounds of this run's time / the baseline's time in the same round
        (runs close in time share the machine's load, so this drifts less than medians)."""
        return statistics.median(a.seconds / b.seconds
                                 for a, b in zip(self.runs, base.runs, strict=True))

    @property
    def max_rss_bytes(self) -> int:
        return int(statistics.median(r.max_rss_bytes for r in self.runs))

    @property
    def all_seconds(self) -> list[float]:
        return [round(r.seconds, 4) for r in self.runs]


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def remove_work(path: Path) -> None:
    """Delete ``path``; and ``_work/`` itself once nothing but the bytecode cache is left."""
    shutil.rmtree(path, ignore_errors=True)
    if WORK.exists() and all(p == PYCACHE for p in WORK.iterdir()):
        shutil.rmtree(WORK, ignore_errors=True)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# Source of a helper for the in-process phase scripts (run with ``python -c``): the object
# a dotted "package.module.Class" name refers to, importing the longest module prefix.
RESOLVE_SOURCE = r"""
def resolve(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)
"""
