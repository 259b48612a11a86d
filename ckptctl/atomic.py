"""Writing files so that a reader sees the old version or the new one, never half of either:
a hidden temporary sibling, fsync, rename, fsync of the folder."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .walk import SIDECAR_SUFFIX, TEMP_MARKER, WEIGHTS_SUFFIX

#: compound suffixes a temporary keeps (Keras refuses a weights file named otherwise)
_KEPT_SUFFIXES = (WEIGHTS_SUFFIX, SIDECAR_SUFFIX)


def temp_path_for(path: Path) -> Path:
    """A hidden sibling every command ignores: ``.<stem>.ckptctl-tmp-<pid>-<random><suffix>``."""
    name = path.name
    suffix = next((s for s in _KEPT_SUFFIXES if name.endswith(s)), "")
    stem = name[: len(name) - len(suffix)] if suffix else name
    return path.with_name(f"{temp_prefix(stem)}{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def temp_prefix(stem: str) -> str:
    """What every temporary of the outputs named ``stem`` starts with."""
    return f".{stem}{TEMP_MARKER}-"


#: folders whose last renames are not yet fsynced (``write_atomic(..., sync_folder=False)``)
_UNSYNCED: set[Path] = set()


def write_atomic(path: Path, data: bytes, sync_folder: bool = True) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file and a rename. With
    ``sync_folder=False`` the folder's fsync (which makes the rename itself survive a power
    loss) is left to ``sync_folders``, once for many files."""
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_dir(path.parent)
    else:
        _UNSYNCED.add(path.parent)


def sync_folders() -> None:
    """fsync every folder ``write_atomic(..., sync_folder=False)`` left unsynced."""
    while _UNSYNCED:
        fsync_dir(_UNSYNCED.pop())


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
