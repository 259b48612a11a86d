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
from ..errors import CkptError, describe_error
from ..sidecars import parse_sidecar, source_is_stale
from ..sources import fingerprint


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def check_structure(path: Path, fmt: str | None) -> None:
    """Open a checkpoint's structure (no tensor data): raises ``CkptError`` when broken."""
    if fmt in ("torch-zip", "torch-legacy"):
        from ..readers.torch_files import open_torch

        open_torch(path)
    elif fmt == "tf-index":
        from ..readers.tf_index import open_tf_index

        open_tf_index(path)

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


def scan(paths: Iterable[Path], recursive: bool = True, check_contents: bool = True,
         output_dir: Path | None = None) -> ScanReport:
    paths = list(paths)
    found = discover(paths, recursive)
    report = ScanReport(warnings=found.warnings)
    for item in found.checkpoints:
        try:
            size = fingerprint(item.path, item.format).size_bytes
        except OSError:
            size = 0
        _, sidecar_path = outputs_for(item.path)
        if output_dir is not None:
            root = next((p for p in paths if p.is_dir() and _is_within(item.path, p)), item.path.parent)
            _, sidecar_path = outputs_for(item.path, output_dir, root)
        row = ScanRow(str(item.path), item.format, size, "not converted")
        if item.problem is not None:
            row.status, row.reason = "unreadable", item.problem
        elif check_contents:
            try:
                check_structure(item.path, item.format)
            except CkptError as exc:
                row.status, row.reason = "unreadable", describe_error(exc, item.path)
        if row.status != "unreadable" and sidecar_path.exists():
            row.sidecar = str(sidecar_path)
            try:
                stale = source_is_stale(parse_sidecar(sidecar_path), item.path)
                row.status, row.reason = ("stale", stale) if stale else ("converted", None)
            except CkptError as exc:
                row.status, row.reason = "stale", f"sidecar unusable: {exc.message}"
        report.rows.append(row)
    return report
