"""``validate``: every sidecar parses, matches the schema and the files it names.

``deep`` re-hashes sources and weights against the recorded sha256; ``strict`` also fails on
checkpoints with no sidecar or a stale one. This is the CI pre-release check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..discovery import discover, find_sidecars, outputs_for
from ..errors import CkptError
from ..sidecars import parse_sidecar, sha256_file, source_is_stale
from ..sources import fingerprint, sha256_files, source_files


@dataclass
class Problem:
    path: str
    problem: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class ValidateReport:
    sidecars_checked: int = 0
    checkpoints_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(paths: Iterable[Path], strict: bool = False, deep: bool = False,
             recursive: bool = True) -> ValidateReport:
    paths = list(paths)
    report = ValidateReport()
    for sidecar_path in find_sidecars(paths, recursive, report.warnings):
        report.sidecars_checked += 1
        for problem in check_sidecar(sidecar_path, deep, strict):
            report.problems.append(Problem(str(sidecar_path), problem))
    if strict:
        found = discover(paths, recursive)
        for item in found.checkpoints:
            report.checkpoints_checked += 1
            _, sidecar_path = outputs_for(item.path)
            if item.problem is not None:
                report.problems.append(Problem(str(item.path), f"unreadable: {item.problem}"))
            elif not sidecar_path.exists():
                report.problems.append(Problem(str(item.path), "no sidecar (run ckptctl convert)"))
    return report


def check_sidecar(sidecar_path: Path, deep: bool, strict: bool = False) -> list[str]:
    """Problems of one sidecar. A changed size is always a problem; a source that was only
    touched (same size, new mtime) is "stale", a problem under ``strict`` (and re-hashed
    under ``deep``)."""
    try:
        sidecar = parse_sidecar(sidecar_path)
    except CkptError as exc:
        return [exc.message]
    problems = []
    folder = sidecar_path.parent
    source = folder / sidecar.checkpoint_path
    fmt = sidecar.source.format
    try:
        now = fingerprint(source, fmt)
    except OSError:
        now = None
    if now is None:
        problems.append(f"checkpoint {sidecar.checkpoint_path} is missing")
    else:
        stale = source_is_stale(sidecar, source)
        if now.size_bytes != sidecar.source.size_bytes:
            problems.append(f"checkpoint {sidecar.checkpoint_path} size differs from the sidecar "
                            "(stale: run ckptctl convert)")
        elif deep and sidecar.source.sha256 and sha256_files(source_files(source, fmt)) != sidecar.source.sha256:
            problems.append(f"checkpoint {sidecar.checkpoint_path} does not match its sha256 "
                            "(stale: run ckptctl convert)")
        elif stale and strict:
            problems.append(f"stale: {stale} (run ckptctl convert)")
    if sidecar.weights_path is not None:
        weights = folder / sidecar.weights_path
        if not weights.exists():
            problems.append(f"weights {sidecar.weights_path} are missing")
        elif sidecar.weights is None:
            problems.append("weights_path is set but the weights section is missing")
        elif weights.stat().st_size != sidecar.weights.size_bytes:
            problems.append(f"weights {sidecar.weights_path} size differs from the sidecar")
        elif deep and sha256_file(weights) != sidecar.weights.sha256:
            problems.append(f"weights {sidecar.weights_path} do not match their sha256")
    return problems
