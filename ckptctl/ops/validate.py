"""``validate``: every sidecar parses, matches the schema and the files it names.

``deep`` re-hashes sources and weights against the recorded sha256; ``strict`` also fails on
checkpoints with no sidecar or a stale one. This is the CI pre-release check. With
``output_dir`` (as given to ``convert --output-dir``), sidecars are looked for in the mirror
of each given folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..discovery import discover
from ..errors import CkptError, ErrorKind
from ..formats import classify_target
from ..outputs import OutputLayout
from ..sidecars import parse_sidecar, sha256_file, source_is_stale
from ..sources import fingerprint, sha256_of
from ..walk import find_sidecars
from .scan import layout_for


@dataclass
class Problem:
    path: str
    problem: str
    kind: ErrorKind

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
             recursive: bool = True, output_dir: Path | None = None) -> ValidateReport:
    paths = list(paths)
    report = ValidateReport()
    sidecar_roots = paths
    if output_dir is not None:
        sidecar_roots = [OutputLayout.for_path(p, output_dir).folder_for(p if p.is_dir() else p.parent)
                         for p in paths]
        sidecar_roots = [p for p in sidecar_roots if p.exists()]
    for sidecar_path in find_sidecars(sidecar_roots, recursive, report.warnings):
        report.sidecars_checked += 1
        for kind, problem in check_sidecar(sidecar_path, deep, strict):
            report.problems.append(Problem(str(sidecar_path), problem, kind))
    if strict:
        found = discover(paths, recursive)
        for item in found.checkpoints:
            report.checkpoints_checked += 1
            sidecar_path = layout_for(item.path, paths, output_dir).outputs(item.path).sidecar
            if item.problem is not None:
                report.problems.append(Problem(str(item.path), f"unreadable: {item.problem}",
                                               item.problem_kind))
            else:
                try:
                    missing = not sidecar_path.exists()
                except OSError as exc:  # a name too long once the output suffix is added
                    report.problems.append(Problem(str(item.path), "its outputs cannot be named "
                                                   f"({exc.strerror})", "os"))
                    continue
                if missing:
                    report.problems.append(Problem(str(item.path),
                                                   "no sidecar (run ckptctl convert)",
                                                   "not-converted"))
    return report


def check_sidecar(sidecar_path: Path, deep: bool, strict: bool = False) -> list[tuple[ErrorKind, str]]:
    """Problems of one sidecar, with their kinds. A changed size is always a problem; a
    source that was only touched (same size, new mtime) is "stale", a problem under
    ``strict`` (and re-hashed under ``deep``)."""
    try:
        sidecar = parse_sidecar(sidecar_path)
    except CkptError as exc:
        return [(exc.kind, exc.message)]
    problems: list[tuple[ErrorKind, str]] = []
    folder = sidecar_path.parent
    source = folder / sidecar.checkpoint_path
    fmt = sidecar.source.format
    found = classify_target(source)
    if found is not None and found.format is not None and found.format != fmt:
        return [("stale", f"source.format says {fmt}, but {sidecar.checkpoint_path} is "
                 f"{found.format} (stale: run ckptctl convert)")]
    try:
        now = fingerprint(source, fmt)
    except OSError:
        now = None
    if now is None:
        problems.append(("missing", f"checkpoint {sidecar.checkpoint_path} is missing"))
    else:
        stale = source_is_stale(sidecar, source)
        if now.size_bytes != sidecar.source.size_bytes:
            problems.append(("stale", f"checkpoint {sidecar.checkpoint_path} size differs from "
                             "the sidecar (stale: run ckptctl convert)"))
        elif deep and sidecar.source.sha256 and sha256_of(source, fmt) != sidecar.source.sha256:
            problems.append(("stale", f"checkpoint {sidecar.checkpoint_path} does not match its "
                             "sha256 (stale: run ckptctl convert)"))
        elif stale and strict:
            problems.append(("stale", f"stale: {stale} (run ckptctl convert)"))
    if sidecar.weights_path is not None:
        weights = folder / sidecar.weights_path
        if not weights.exists():
            problems.append(("missing", f"weights {sidecar.weights_path} are missing"))
        elif sidecar.weights is None:
            problems.append(("sidecar", "weights_path is set but the weights section is missing"))
        elif weights.stat().st_size != sidecar.weights.size_bytes:
            problems.append(("corrupt", f"weights {sidecar.weights_path} size differs from the sidecar"))
        elif deep and sha256_file(weights) != sidecar.weights.sha256:
            problems.append(("corrupt", f"weights {sidecar.weights_path} do not match their sha256"))
    return problems
