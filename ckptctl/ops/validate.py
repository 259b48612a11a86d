"""``validate``: every sidecar parses, matches the schema and the files it names.

``deep`` re-hashes sources and weights against the recorded sha256; ``strict`` also fails on
checkpoints with no sidecar or a stale one. This is the CI pre-release check. With
``output_dir`` (as given to ``convert --output-dir``), sidecars are looked for in the mirror
of each given folder.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..discovery import discover
from ..errors import CkptError, ErrorKind, describe_error
from ..formats import FoundCheckpoint, WeightsOptions, classify, classify_target, format_for
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
    #: every sidecar, then (``strict``) every checkpoint checked, as shown in ``Problem.path``
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_one(item: tuple[Path, Path | None], deep: bool,
               strict: bool) -> tuple[Path, list[tuple[ErrorKind, str]]]:
    sidecar_path, mirrored_source = item
    return sidecar_path, list(check_sidecar(sidecar_path, deep, strict, mirrored_source))


def _worker_died(item: tuple[Path, Path | None],
                 exitcode: int | None) -> tuple[Path, list[tuple[ErrorKind, str]]]:
    return item[0], [("crashed", f"the worker checking it died (exit status {exitcode})")]


def validate(paths: Iterable[Path], strict: bool = False, deep: bool = False,
             recursive: bool = True, output_dir: Path | None = None,
             jobs: int = 1) -> ValidateReport:
    """Check sidecars (and with ``strict`` the checkpoints); with ``deep`` and ``jobs > 1``
    the re-hashing runs in that many worker processes."""
    paths = list(paths)
    report = ValidateReport()
    sidecar_roots = paths
    mirrors: list[tuple[Path, Path]] = []  # (where the sidecars are, the sources they mirror)
    if output_dir is not None:
        for given in paths:
            source_folder = given if given.is_dir() else given.parent
            mirrored = OutputLayout.for_path(given, output_dir).folder_for(source_folder)
            if mirrored.exists():
                mirrors.append((mirrored, source_folder))
        sidecar_roots = [mirrored for mirrored, _ in mirrors]
    checks: list[tuple[Path, Path | None]] = []
    sidecar_paths = find_sidecars(sidecar_roots, recursive, report.warnings)
    if output_dir is None:
        sidecar_paths += _sidecars_of_given_checkpoints(paths, sidecar_paths)
    for sidecar_path in sidecar_paths:
        report.sidecars_checked += 1
        report.checked.append(str(sidecar_path))
        mirrored_source = next((src / sidecar_path.parent.relative_to(mirror)
                                for mirror, src in mirrors if sidecar_path.parent.is_relative_to(mirror)),
                               None)
        checks.append((sidecar_path, mirrored_source))

    def record(found: tuple[Path, list[tuple[ErrorKind, str]]]) -> None:
        for kind, problem in found[1]:
            report.problems.append(Problem(str(found[0]), problem, kind))

    check = functools.partial(_check_one, deep=deep, strict=strict)
    if deep and jobs > 1 and len(checks) > 1:  # hashing gigabytes: worth worker processes
        from ..workers import run_ordered

        run_ordered(check, checks, jobs, record, _worker_died)
    else:
        for check_item in checks:
            record(check(check_item))
    if strict:
        found = discover(paths, recursive)
        for item in found.checkpoints:
            report.checkpoints_checked += 1
            report.checked.append(str(item.path))
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
                    refused = _refused_by_convert(item)
                    if refused is not None:
                        report.problems.append(Problem(str(item.path),
                                                       f"cannot be converted: {refused[1]}",
                                                       refused[0]))
                    else:
                        report.problems.append(Problem(str(item.path),
                                                       "no sidecar (run ckptctl convert)",
                                                       "not-converted"))
    return report


def _sidecars_of_given_checkpoints(paths: list[Path], found: list[Path]) -> list[Path]:
    """The sidecars of checkpoint files named on the command line (``validate run/a.ckpt``
    checks ``run/a.metadata.yaml``), those not found already."""
    extra: list[Path] = []
    for given in paths:
        if not given.is_file() or given in found:
            continue
        item = classify(given)
        if item is None or item.format is None:
            continue
        sidecar = layout_for(item.path, paths, None).outputs(item.path).sidecar
        try:
            exists = sidecar.is_file()
        except OSError:
            continue
        if exists and sidecar not in found and sidecar not in extra:
            extra.append(sidecar)
    return extra


def _refused_by_convert(item: FoundCheckpoint) -> tuple[ErrorKind, str] | None:
    """Why ``convert`` would refuse a checkpoint that has no sidecar yet (unsafe pickle,
    TorchScript, no state dict, ...), or None. The checkpoint is opened as ``convert`` opens it
    (restricted unpickler, structure only) and its weights are planned, never written: no
    tensor data is read and no framework is imported."""
    if item.format is None:
        return None
    from ..metadata import Gathered

    entry = format_for(item.format)
    try:
        opened = entry.open(item.path, item.format)
        if entry.writes_weights:
            opened.plan_weights(Gathered(), WeightsOptions())
    except CkptError as exc:
        return exc.kind, describe_error(exc, item.path)
    except OSError as exc:
        return "os", f"cannot read ({exc.strerror or exc})"
    return None



def _outside(folder: Path, relative: str, allowed: list[Path]) -> str | None:
    """Why a path a sidecar names is not followed (None when it may be): sidecar paths are
    data, so ``../../etc/passwd``, ``/dev/zero`` or a NUL byte is reported, never read."""
    if "\0" in relative or not relative:
        return "is not a path"
    if os.path.isabs(relative):
        return "is absolute"
    target = Path(os.path.normpath(folder / relative))
    if not any(target.is_relative_to(Path(os.path.normpath(root))) for root in allowed):
        return "leads outside the sidecar's folder"
    return None


def check_sidecar(sidecar_path: Path, deep: bool, strict: bool = False,
                  source_folder: Path | None = None) -> list[tuple[ErrorKind, str]]:
    """Problems of one sidecar, with their kinds. A changed size is always a problem; a
    source that was only touched (same size, new mtime) is "stale", a problem under
    ``strict`` (and re-hashed under ``deep``). The paths it names are followed only inside
    its folder (and, for the checkpoint, ``source_folder``: the ``--output-dir`` mirror's
    source)."""
    try:
        sidecar = parse_sidecar(sidecar_path)
    except CkptError as exc:
        return [(exc.kind, exc.message)]
    problems: list[tuple[ErrorKind, str]] = []
    folder = sidecar_path.parent
    checkpoint_roots = [folder] if source_folder is None else [folder, source_folder]
    named = [("checkpoint_path", sidecar.checkpoint_path, checkpoint_roots)]
    named += [("source.files", f, checkpoint_roots) for f in sidecar.source.files or []]
    if sidecar.weights_path is not None:
        named.append(("weights_path", sidecar.weights_path, [folder]))
    for field_name, relative, roots in named:
        why = _outside(folder, relative, roots)
        if why is not None:
            return [("sidecar", f"{field_name} {relative!r} {why}; not followed")]
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
        elif deep:
            problems.extend(_unconfined(weights, sidecar.weights_path))
    return problems


def _unconfined(weights: Path, shown: str) -> list[tuple[ErrorKind, str]]:
    """A weights file whose sidecar was rewritten to match it must still be one that reads
    nothing outside itself and stores what it declares (``readers.h5safe``)."""
    try:
        if weights.name.endswith(".safetensors"):
            from ..readers.safetensors_file import read_header

            read_header(weights)  # its tensors tile exactly the bytes the file holds
        else:
            from ..readers.h5safe import check_file

            check_file(weights)
    except CkptError as exc:
        return [(exc.kind, f"weights {shown}: {exc.message}")]
    return []
