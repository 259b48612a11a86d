"""Splitting one tree's checkpoints between machines: ``--shard K/N``.

A checkpoint belongs to shard ``hash(its sidecar's path relative to the root) mod N``: stable
under re-runs, independent of discovery order and of the other checkpoints, and the same
for every file of a multi-file checkpoint (a TF prefix and its shards have one sidecar).
Hashing the sidecar path rather than the source path sends two sources that would write the
same outputs (``a.ckpt`` and ``a.pt``) to the same shard, where the clash is reported instead
of two machines overwriting each other.

Without ``--shard``, a Slurm job array splits itself: ``SLURM_ARRAY_TASK_ID`` (minus
``SLURM_ARRAY_TASK_MIN``) of ``SLURM_ARRAY_TASK_COUNT``. ``--shard N`` takes the index from
the scheduler: Slurm's, or Kubernetes' ``JOB_COMPLETION_INDEX`` (an indexed Job does not
export its completion count, so it is given).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    #: where index and count came from, for the one line that says so
    origin: str

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, key: str) -> bool:
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


def shard_key(sidecar: Path, root: Path) -> str:
    """The part of a checkpoint's identity every machine agrees on: its sidecar's path
    relative to the root it was given (``/`` separated)."""
    try:
        relative = sidecar.absolute().relative_to(root.absolute())
    except ValueError:
        relative = sidecar
    return relative.as_posix()


def resolve_shard(option: str | None, environ: Mapping[str, str] = os.environ) -> Shard | None:
    """The shard this process converts: ``--shard K/N``, ``--shard N`` (index from the
    scheduler), or a Slurm job array's own; None for the whole tree."""
    if option is not None and "/" in option:
        index_text, _, count_text = option.partition("/")
        index, count = _integer(index_text, "--shard K/N"), _integer(count_text, "--shard K/N")
        return _checked(index, count, "--shard")
    slurm = _slurm_array(environ)
    if option is None:
        return slurm
    count = _integer(option, "--shard N")
    if slurm is not None:
        if slurm.count != count:
            raise UsageError(f"--shard {count} but the Slurm array has {slurm.count} tasks")
        return slurm
    if "JOB_COMPLETION_INDEX" in environ:
        index = _integer(environ["JOB_COMPLETION_INDEX"], "JOB_COMPLETION_INDEX")
        return _checked(index, count, "JOB_COMPLETION_INDEX")
    raise UsageError(f"--shard {count} needs a shard index: give --shard K/{count}, or run it "
                     "as a Slurm array task or a Kubernetes indexed Job")


def _slurm_array(environ: Mapping[str, str]) -> Shard | None:
    if "SLURM_ARRAY_TASK_ID" not in environ or "SLURM_ARRAY_TASK_COUNT" not in environ:
        return None
    task = _integer(environ["SLURM_ARRAY_TASK_ID"], "SLURM_ARRAY_TASK_ID")
    count = _integer(environ["SLURM_ARRAY_TASK_COUNT"], "SLURM_ARRAY_TASK_COUNT")
    first = _integer(environ.get("SLURM_ARRAY_TASK_MIN", "0"), "SLURM_ARRAY_TASK_MIN")
    last = _integer(environ.get("SLURM_ARRAY_TASK_MAX", str(first + count - 1)),
                    "SLURM_ARRAY_TASK_MAX")
    if last - first + 1 != count:
        # --array=0-31:2 or a list: task ids are not 0..count-1 shifted; never guess
        raise UsageError("the Slurm array's task ids are not consecutive; give --shard K/N")
    return _checked(task - first, count, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")


def _integer(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a whole number") from None


def _checked(index: int, count: int, origin: str) -> Shard:
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"shard {index}/{count} (from {origin}): need 0 <= K < N")
    return Shard(index, count, origin)
