"""Finding checkpoints: walk folders safely and recognise files by content, not extension
(the format registry, ``ckptctl.formats``, decides what each file is)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .formats import FoundCheckpoint, classify
from .walk import iter_files


@dataclass
class Discovery:
    checkpoints: list[FoundCheckpoint] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def discover(roots: Iterable[Path], recursive: bool = True) -> Discovery:
    result = Discovery()
    seen: set[Path] = set()
    for path in iter_files(roots, recursive, result.warnings):
        found = classify(path)
        if found is not None and found.path not in seen:  # files of one checkpoint: once
            seen.add(found.path)
            result.checkpoints.append(found)
    return result
