"""A checkpoint's files and fingerprint. Most checkpoints are one file; a TF-index checkpoint
is ``prefix.index`` plus its ``prefix.data-*`` shards, fingerprinted together: size is the
sum, mtime the newest, sha256 is taken over the files' bytes in this order (index, shards)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 8 << 20


def source_files(path: Path, fmt: str | None) -> list[Path]:
    if fmt != "tf-index":
        return [path]
    index = path.with_name(path.name + ".index")
    shards = sorted(path.parent.glob(glob_escape(path.name) + ".data-*-of-*"))
    return [index, *shards]


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@dataclass(frozen=True)
class Fingerprint:
    size_bytes: int
    mtime: float


def fingerprint(path: Path, fmt: str | None) -> Fingerprint:
    """Size and mtime (no hashing); raises OSError when a file is missing."""
    infos = [os.stat(p) for p in source_files(path, fmt)]
    return Fingerprint(sum(i.st_size for i in infos), max(i.st_mtime for i in infos))


def sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while True:
                count = handle.readinto(buffer)
                if not count:
                    break
                digest.update(view[:count])  # releases the GIL: hashing overlaps other work
    return digest.hexdigest()
