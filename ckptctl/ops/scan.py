"""``scan``: list checkpoints below some folders, their format, size and conversion status.

Reads checkpoint structure (zip directory, pickle with the restricted unpickler) but no
tensor data. No framework is imported, nor numpy (no tensor values are read) or pydantic
(only to judge a sidecar, when one exists): a whole ``scan`` process of a 1 GB checkpoint
takes about as long as the interpreter's start-up (``benchmarks/bench_scan.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ..discovery import discover
from ..errors import CkptError, ErrorKind, NewerSidecarError, describe_error
from ..formats import FoundCheckpoint, format_for
from ..outputs import OutputLayout, weights_problem
from ..sources import fingerprint

#: "newer": converted by a newer ckptctl, whose sidecar this one cannot judge
ScanStatus = Literal["converted", "stale", "not converted", "unreadable", "newer"]


@dataclass
class ScanRow:
    path: str
    format: str | None
    size_bytes: int
    status: ScanStatus
    reason: str | None = None
    #: why it is unreadable or stale, for machines (None otherwise)
    kind: ErrorKind | None = None
    sidecar: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class ScanReport:
    rows: list[ScanRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)



def layout_for(item: Path, given: list[Path], output_dir: Path | None) -> OutputLayout:
    """The output layout ``convert`` used for ``item`` found below one of ``given``."""
    if output_dir is None:
        return OutputLayout()
    root = next((p for p in given if p.is_dir() and item.is_relative_to(p)), item.parent)
    return OutputLayout(root, output_dir)


def scan(paths: Iterable[Path], recursive: bool = True, output_dir: Path | None = None) -> ScanReport:
    paths = list(paths)
    found = discover(paths, recursive)
    report = ScanReport(warnings=found.warnings)
    layouts = [(item, layout_for(item.path, paths, output_dir)) for item in found.checkpoints]
    # A damaged weights file of ours is reported on its source's row (stale), not as a
    # broken checkpoint of its own.
    ours = {layout.outputs(item.path).weights for item, layout in layouts if item.format is not None}
    for item, layout in layouts:
        if item.format is None and item.path in ours:
            continue
        report.rows.append(scan_one(item, layout))
    return report


def scan_one(item: FoundCheckpoint, layout: OutputLayout) -> ScanRow:
    try:
        size = fingerprint(item.path, item.format).size_bytes
    except OSError:
        size = 0
    row = ScanRow(str(item.path), item.format, size, "not converted")
    if item.problem is not None:
        row.status, row.reason, row.kind = "unreadable", item.problem, item.problem_kind
        return row
    if item.format is not None:
        try:
            format_for(item.format).check_structure(item.path)
        except CkptError as exc:
            row.status, row.reason, row.kind = "unreadable", describe_error(exc, item.path), exc.kind
            return row
    sidecar_path = layout.outputs(item.path).sidecar
    try:
        has_sidecar = sidecar_path.exists()
    except OSError as exc:  # e.g. a name too long once the output suffix is added
        row.reason, row.kind = f"its outputs cannot be named ({exc.strerror})", "os"
        return row
    if has_sidecar:
        from ..sidecars import parse_sidecar, source_is_stale  # pydantic: only with a sidecar

        row.sidecar = str(sidecar_path)
        try:
            sidecar = parse_sidecar(sidecar_path)
            stale = source_is_stale(sidecar, item.path) or \
                weights_problem(sidecar, sidecar_path.parent)
            if stale:
                row.status, row.reason, row.kind = "stale", stale, "stale"
            else:
                row.status = "converted"
        except NewerSidecarError as exc:
            row.status, row.reason, row.kind = "newer", exc.message, exc.kind
        except CkptError as exc:
            row.status, row.reason, row.kind = "stale", f"sidecar unusable: {exc.message}", exc.kind
    return row
