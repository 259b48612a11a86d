"""A checkpoint's fingerprint and hash. Most checkpoints are one file; a multi-file one (a
TF-index checkpoint: ``prefix.index`` plus its ``prefix.data-*`` shards) is fingerprinted
together: size is the sum, mtime the newest, sha256 is taken over the files' bytes in the
order its format lists them."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .formats import source_files
from .safeio import open_regular

_CHUNK = 8 << 20


@dataclass(frozen=True)
class Fingerprint:
    size_bytes: int
    mtime: float


def fingerprint(path: Path, fmt: str | None) -> Fingerprint:
    """Size and mtime (no hashing); raises OSError when a file is missing."""
    infos = [os.stat(p) for p in source_files(path, fmt)]
    return Fingerprint(sum(i.st_size for i in infos), max(i.st_mtime for i in infos))


def stored_bytes(paths: list[Path]) -> int:
    """The bytes the files really hold on disk: their size, less the holes of a sparse file
    (whose declared content, zeros read from nowhere, must not buy a bigger output budget)."""
    total = 0
    for path in paths:
        info = os.stat(path)
        blocks = getattr(info, "st_blocks", None)
        total += info.st_size if blocks is None else min(info.st_size, blocks * 512)
    return total


def sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    for path in paths:
        with open_regular(path, "rb") as handle:
            while True:
                count = handle.readinto(buffer)
                if not count:
                    break
                digest.update(view[:count])  # releases the GIL: hashing overlaps other work
    return digest.hexdigest()


def sha256_of(path: Path, fmt: str | None) -> str:
    """The sha256 of a checkpoint's files, in order."""
    return sha256_files(source_files(path, fmt))
