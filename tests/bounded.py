"""One way to run ckptctl on hostile input and check how it failed.

``run_bounded`` runs the real CLI in a child process under an address-space cap and a
timeout (a hang or an unbounded allocation fails the test instead of the machine);
``assert_refused`` checks what every hostile-input test must hold: the exit code, exactly one
line naming each refused file, no traceback, no outputs for what was refused, and the rest of
the batch converted.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from helpers import REPO, outputs_for

#: Enough for the torch/TF imports a conversion may need, far below what a bomb would take.
DEFAULT_MEMORY = 6 << 30
DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class BoundedRun:
    args: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def lines(self) -> list[str]:
        return [line for line in (self.stdout + self.stderr).splitlines() if line.strip()]


def run_bounded(*args: str | Path, cwd: Path | None = None, memory: int = DEFAULT_MEMORY,
                timeout: float = DEFAULT_TIMEOUT) -> BoundedRun:
    """``python -m ckptctl *args`` with ``RLIMIT_AS = memory`` and a wall-clock timeout."""

    def limit() -> None:  # runs in the child before exec
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONFAULTHANDLER": ""}
    argv = [sys.executable, "-m", "ckptctl", *map(str, args)]
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=limit, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        def text(value: str | bytes | None) -> str:
            return value.decode(errors="replace") if isinstance(value, bytes) else value or ""
        return BoundedRun(tuple(map(str, args)), -1, text(exc.stdout), text(exc.stderr), True)
    return BoundedRun(tuple(map(str, args)), done.returncode, done.stdout, done.stderr, False)


def assert_refused(run: BoundedRun, refused: Iterable[Path], converted: Iterable[Path] = (),
                   *, exit_code: int = 1, reason: str | None = None) -> None:
    """The batch finished in time with ``exit_code``; each refused file is named on exactly
    one line (containing ``reason`` when given) and got no outputs; each converted file got
    both outputs; nothing printed a traceback."""
    output = run.stdout + run.stderr
    assert not run.timed_out, f"ckptctl {' '.join(run.args)} did not finish in time:\n{output[-2000:]}"
    assert "Traceback" not in output, output[-4000:]
    assert "internal error" not in output, output[-4000:]
    assert run.exit_code == exit_code, f"exit {run.exit_code}, expected {exit_code}:\n{output[-4000:]}"
    for path in refused:
        naming = [line for line in run.lines if path.name in line]
        assert len(naming) == 1 and naming[0].startswith("error: "), \
            f"{path.name} should be named on one error line:\n{output}"
        if reason is not None:
            assert reason in naming[0], f"{reason!r} not in {naming[0]!r}"
        weights, sidecar = outputs_for(path)
        assert not weights.exists() and not sidecar.exists(), f"outputs written for refused {path}"
    for path in converted:
        weights, sidecar = outputs_for(path)
        assert weights.exists() and sidecar.exists(), f"{path} was not converted:\n{output}"
