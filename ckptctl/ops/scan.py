"""``scan``: list checkpoints below some folders, their format, size and conversion status.

Reads checkpoint structure (zip directory, pickle with the restricted unpickler) but no
tensor data, and no framework is imported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ..discovery import discover, outputs_for
from ..errors import CkptError
from ..formats.torch_formats import open_torch
from ..sidecars import parse_sidecar, source_is_stale

ScanStatus = Literal["converted", "stale", "not converted", "unreadable"]


@dataclass
class ScanRow:
    path: str
    format: str | None
    size_bytes: int
    status: ScanStatus
    reason: str | None = None
    sidecar: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class ScanReport:
    rows: list[ScanRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def scan(paths: Iterable[Path], recursive: bool = True, check_contents: bool = True) -> ScanReport:
    found = discover(paths, recursive)
    report = ScanReport(warnings=found.warnings)
    for item in found.checkpoints:
        try:
            size = item.path.stat().st_size
        except OSError:
            size = 0
        _, sidecar_path = outputs_for(item.path)
        row = ScanRow(str(item.path), item.format, size, "not converted")
        if item.problem is not None:
            row.status, row.reason = "unreadable", item.problem
        elif check_contents:
            try:
                open_torch(item.path)
            except CkptError as exc:
                row.status, row.reason = "unreadable", exc.message
        if row.status != "unreadable" and sidecar_path.exists():
            row.sidecar = str(sidecar_path)
            try:
                stale = source_is_stale(parse_sidecar(sidecar_path), item.path)
                row.status, row.reason = ("stale", stale) if stale else ("converted", None)
            except CkptError as exc:
                row.status, row.reason = "stale", f"sidecar unusable: {exc.message}"
        report.rows.append(row)
    return report
