"""Walking output trees: light (no numpy, no framework), shared by every command."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

WEIGHTS_SUFFIX = ".weights.h5"
SIDECAR_SUFFIX = ".metadata.yaml"
#: Temporary outputs carry this marker; every command ignores them.
TEMP_MARKER = ".ckptctl-tmp"
#: Per-checkpoint lock files (``.<stem>.ckptctl-lock``), ignored too; removed by their holder
#: when it releases them (``atomic.CheckpointLock``), left only by a killed process.
LOCK_SUFFIX = ".ckptctl-lock"
_SKIP_DIRS = frozenset({".git", "__pycache__", ".hydra", "wandb", ".ipynb_checkpoints"})


def iter_files(roots: Iterable[Path], recursive: bool, warnings: list[str],
               follow_symlinks: bool = True) -> Iterator[Path]:
    """Files below ``roots``; follows directory symlinks once (loops are cut), skips VCS dirs.
    With ``follow_symlinks=False`` (``clean``) symlinks are neither followed nor listed."""
    visited: set[tuple[int, int]] = set()
    for root in roots:
        if root.is_file():
            yield root
            continue
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                info = folder.stat()
            except OSError as exc:
                warnings.append(f"{folder}: cannot read folder ({exc.strerror})")
                continue
            ident = (info.st_dev, info.st_ino)
            if ident in visited:
                continue  # a symlink loop or a second path to the same folder
            visited.add(ident)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                warnings.append(f"{folder}: cannot read folder ({exc.strerror})")
                continue
            subdirs = []
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=follow_symlinks):
                        if recursive and entry.name not in _SKIP_DIRS:
                            subdirs.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=follow_symlinks):
                        yield Path(entry.path)
                except OSError:
                    continue
            stack.extend(reversed(subdirs))


def find_sidecars(paths: Iterable[Path], recursive: bool, warnings: list[str]) -> list[Path]:
    return [p for p in iter_files(paths, recursive, warnings)
            if p.name.endswith(SIDECAR_SUFFIX) and TEMP_MARKER not in p.name]


def glob_escape(name: str) -> str:
    """``name`` as a glob pattern matching only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
