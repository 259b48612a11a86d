"""``clean``: remove what ``convert`` wrote below some folders, and nothing else.

A file is removed only when ckptctl can tell it wrote it:

* a sidecar (``<stem>.metadata.yaml``) that parses as a ckptctl sidecar of this version;
* the weights file such a sidecar names, inside its folder, when it is a regular file whose
  HDF5 root attributes say ckptctl wrote it (as ``convert`` checks before replacing one), and
  it is not the checkpoint itself or one of its files: a Keras 3 source ``.weights.h5``,
  which a sidecar names as its own weights, is never removed;
* lock files (``.<stem>.ckptctl-lock``) and hidden temporaries
  (``.<stem>.ckptctl-tmp-…``), only while holding that checkpoint's lock, so nothing a
  running ``convert`` owns is touched (a busy checkpoint is left alone).

Sources are never removed; symlinks are neither followed nor removed. Without ``act`` it
only lists what it would remove.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..atomic import CheckpointLock, LockBusy
from ..errors import CkptError, NewerSidecarError
from ..outputs import ckptctl_mark
from ..walk import LOCK_SUFFIX, SIDECAR_SUFFIX, TEMP_MARKER, WEIGHTS_SUFFIX, iter_files

What = Literal["weights", "sidecar", "temporary", "lock"]
CleanStatus = Literal["would remove", "removed", "kept", "failed"]


@dataclass
class CleanItem:
    path: Path
    what: What
    status: CleanStatus
    #: why it was kept or failed (None otherwise)
    reason: str | None = None
    size_bytes: int = 0


@dataclass
class CleanReport:
    items: list[CleanItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def with_status(self, *status: CleanStatus) -> list[CleanItem]:
        return [item for item in self.items if item.status in status]


@dataclass
class _Group:
    """One checkpoint's outputs in one folder, all guarded by its lock."""

    folder: Path
    stem: str
    sidecar: Path | None = None
    others: list[tuple[Path, What]] = field(default_factory=list)


def _regular_size(path: Path) -> int | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _group_of(path: Path, groups: dict[tuple[Path, str], _Group]) -> None:
    name = path.name
    folder = path.parent
    if TEMP_MARKER in name and name.startswith("."):
        stem, what = name[1:name.rindex(TEMP_MARKER)], "temporary"
    elif name.startswith(".") and name.endswith(LOCK_SUFFIX) and len(name) > len(LOCK_SUFFIX) + 1:
        stem, what = name[1:-len(LOCK_SUFFIX)], "lock"
    elif name.endswith(SIDECAR_SUFFIX) and len(name) > len(SIDECAR_SUFFIX):
        stem, what = name[:-len(SIDECAR_SUFFIX)], "sidecar"
    else:
        return
    group = groups.setdefault((folder, stem), _Group(folder, stem))
    if what == "sidecar":
        group.sidecar = path
    elif what == "temporary":
        group.others.append((path, "temporary"))
    else:
        group.others.append((path, "lock"))


def _candidates(paths: list[Path], recursive: bool, warnings: list[str]) -> list[_Group]:
    groups: dict[tuple[Path, str], _Group] = {}
    for path in iter_files(paths, recursive, warnings, follow_symlinks=False):
        _group_of(path, groups)
    return list(groups.values())


def _weights_named(sidecar_path: Path) -> tuple[Path | None, tuple[Path, str] | None]:
    """The weights file a ckptctl sidecar names that may be removed with it, else (None,
    the file kept and why, or None when there is nothing to say). Raises ``CkptError`` when
    it is not a ckptctl sidecar."""
    from ..sidecars import parse_sidecar

    sidecar = parse_sidecar(sidecar_path)
    if sidecar.tool.name != "ckptctl":
        raise CkptError("not written by ckptctl")
    named = sidecar.weights_path
    if named is None:
        return None, None
    folder = sidecar_path.parent
    if "\0" in named or os.path.isabs(named) or os.path.normpath(named).split(os.sep)[0] == "..":
        return None, (folder / named, "the sidecar names weights outside its folder")
    weights = folder / os.path.normpath(named)
    sources = {os.path.normpath(sidecar.checkpoint_path),
               *(os.path.normpath(f) for f in sidecar.source.files or [])}
    if os.path.normpath(named) in sources:
        return None, None  # the source itself (a Keras 3 native file): never removed
    stem = sidecar_path.name[: -len(SIDECAR_SUFFIX)]
    if os.path.normpath(named) not in (f"{stem}{WEIGHTS_SUFFIX}", f"{stem}.safetensors"):
        # convert only ever writes <stem>.weights.h5 or <stem>.safetensors next to the sidecar
        return None, (weights, "not this checkpoint's output name: left in place")
    if _regular_size(weights) is None:
        return None, (weights, "not a regular file") if os.path.lexists(weights) else None
    if not ckptctl_mark(weights):
        return None, (weights, "not recognisably ckptctl's (a source, or damaged): left in place")
    return weights, None



def _plan(group: _Group, report: CleanReport) -> list[tuple[Path, What]]:
    """What of ``group`` may go, weights before their sidecar (an interrupted clean leaves a
    sidecar naming missing weights, which the next clean removes, never orphan weights)."""
    plan: list[tuple[Path, What]] = []
    if group.sidecar is not None:
        try:
            weights, kept = _weights_named(group.sidecar)
        except NewerSidecarError as exc:
            report.items.append(CleanItem(group.sidecar, "sidecar", "kept",
                                          f"{exc.message}: clean it with that version"))
        except CkptError as exc:
            report.items.append(CleanItem(group.sidecar, "sidecar", "kept",
                                          f"not a ckptctl sidecar ({exc.message})"))
        else:
            if weights is not None:
                plan.append((weights, "weights"))
            elif kept is not None:
                report.items.append(CleanItem(kept[0], "weights", "kept", kept[1]))
            plan.append((group.sidecar, "sidecar"))
    plan += sorted((item for item in group.others if item[1] == "temporary"), key=lambda i: i[0].name)
    plan += [item for item in group.others if item[1] == "lock"]
    return plan


def clean(paths: Iterable[Path], recursive: bool = True, act: bool = False) -> CleanReport:
    """List (``act`` False) or remove what ckptctl wrote below ``paths``."""
    report = CleanReport()
    for group in _candidates(list(paths), recursive, report.warnings):
        plan = _plan(group, report)
        if not plan:
            continue
        sizes = [(path, what, _regular_size(path)) for path, what in plan]
        if not act:
            report.items += [CleanItem(path, what, "would remove", None, size)
                             for path, what, size in sizes if size is not None]
            continue
        lock = CheckpointLock(group.folder / f".{group.stem}{LOCK_SUFFIX}")
        try:
            lock.acquire()
        except LockBusy:
            report.items += [CleanItem(path, what, "kept", "busy: a ckptctl process is "
                                       "converting it", size or 0) for path, what, size in sizes]
            continue
        except OSError as exc:
            report.items += [CleanItem(path, what, "failed", f"cannot lock ({exc.strerror})",
                                       size or 0) for path, what, size in sizes]
            continue
        try:
            for path, what, size in sizes:
                if what == "lock" or size is None:
                    continue  # the lock file goes when it is released, below
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    report.items.append(CleanItem(path, what, "failed",
                                                  f"cannot remove ({exc.strerror})", size))
                else:
                    report.items.append(CleanItem(path, what, "removed", None, size))
        finally:
            lock.release()
        report.items += [CleanItem(path, what, "removed", None, size)
                         for path, what, size in sizes if what == "lock" and size is not None]
    return report
