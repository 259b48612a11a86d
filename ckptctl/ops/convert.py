"""``convert``: write ``<stem>.weights.h5`` and ``<stem>.metadata.yaml`` next to each checkpoint.

Never modifies a source. Each checkpoint succeeds or fails on its own; a failure leaves no
output behind (weights and sidecar are written to temporary files and renamed into place,
the sidecar last, so a sidecar always describes complete weights).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import threading
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from .. import __version__
from ..discovery import (
    LOCK_SUFFIX,
    NATIVE_FORMATS,
    SIDECAR_SUFFIX,
    TEMP_MARKER,
    FoundCheckpoint,
    classify_target,
    discover,
    outputs_for,
    stem_of,
)
from ..errors import CkptError, OutputConflictError, describe_error
from ..layouts.ckptctl_tensors import verify_datasets
from ..schema import SCHEMA_VERSION, Sidecar
from ..sidecars import (
    fsync_dir,
    parse_sidecar,
    sidecar_yaml,
    source_is_stale,
    temp_path_for,
    write_atomic,
)
from ..sources import Fingerprint, fingerprint, sha256_files, source_files
from .plans import CHECKSUMS, Plan, PlanOptions, make_plan, native_weights_info

Status = Literal["converted", "skipped", "failed", "would convert"]


@dataclass
class ConvertOptions:
    force: bool = False
    dry_run: bool = False
    metadata_only: bool = False
    recursive: bool = True
    verbose: bool = False
    keras_model: str | None = None
    output_dir: Path | None = None


@dataclass
class Target:
    """One checkpoint to convert and the experiment it belongs to."""

    found: FoundCheckpoint
    exp_root: Path
    exp_name: str
    #: the folder the source tree is mirrored from under ``--output-dir``
    source_root: Path | None = None


@dataclass
class ItemResult:
    source: Path
    status: Status
    reason: str | None = None
    weights: Path | None = None
    sidecar: Path | None = None
    detail: str | None = None  # a traceback, only for unexpected errors


@dataclass
class ConvertReport:
    items: list[ItemResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def failed(self) -> bool:
        return self.count("failed") > 0


# --- choosing what to convert ------------------------------------------------------------


def experiment_of_file(path: Path) -> Path:
    """For a lone ``--checkpoint``: the nearest folder with a Hydra config, else the parent
    of a ``checkpoints/`` folder, else the file's own folder."""
    for parent in path.parents:
        if (parent / ".hydra").is_dir():
            return parent
        if parent.parent == parent:
            break
    if path.parent.name in ("checkpoints", "ckpt", "ckpts") and path.parent.parent != path.parent:
        return path.parent.parent
    return path.parent


def targets_for_checkpoint(path: Path) -> tuple[list[Target], list[str]]:
    found = classify_target(path) or FoundCheckpoint(path, None, "not a checkpoint (unrecognised content)")
    exp_root = experiment_of_file(path.absolute())
    return [Target(found, exp_root, exp_root.name, path.parent)], []


def targets_for_exp_dir(exp_dir: Path, recursive: bool) -> tuple[list[Target], list[str]]:
    found = discover([exp_dir], recursive)
    name = exp_dir.absolute().name  # `--exp-dir .` names the current folder
    return [Target(f, exp_dir, name, exp_dir) for f in found.checkpoints], found.warnings


def targets_for_outputs_dir(outputs_dir: Path, recursive: bool) -> tuple[list[Target], list[str]]:
    found = discover([outputs_dir], recursive)
    targets = []
    for item in found.checkpoints:
        relative = item.path.relative_to(outputs_dir)
        exp_root = outputs_dir / relative.parts[0] if len(relative.parts) > 1 else outputs_dir
        targets.append(Target(item, exp_root, exp_root.absolute().name, outputs_dir))
    return targets, found.warnings


# --- converting ---------------------------------------------------------------------------


def convert(
    targets: Iterable[Target],
    options: ConvertOptions,
    on_item: Callable[[ItemResult], None] | None = None,
) -> ConvertReport:
    report = ConvertReport()
    targets = list(targets)
    clashes = _name_clashes(targets, options)
    for target in targets:
        clash = clashes.get(target.found.path)
        if clash is not None:
            item = ItemResult(target.found.path, "failed",
                              f"output name clash with {clash.name} (both would write "
                              f"{stem_of(clash)}.weights.h5); rename one of them")
        else:
            item = _convert_one(target, options)
        report.items.append(item)
        if on_item is not None:
            on_item(item)
    return report


def _name_clashes(targets: list[Target], options: ConvertOptions) -> dict[Path, Path]:
    groups: dict[Path, list[Path]] = defaultdict(list)
    for target in targets:
        groups[output_paths(target, options)[1]].append(target.found.path)
    clashes: dict[Path, Path] = {}
    for paths in groups.values():
        if len(paths) > 1:
            for path in paths:
                clashes[path] = next(p for p in paths if p != path)
    return clashes


def output_paths(target: Target, options: ConvertOptions) -> tuple[Path, Path]:
    if options.output_dir is None:
        return outputs_for(target.found.path)
    return outputs_for(target.found.path, options.output_dir, target.source_root)


def _convert_one(target: Target, options: ConvertOptions) -> ItemResult:
    source = target.found.path
    weights_path, sidecar_path = output_paths(target, options)
    if target.found.problem is not None:
        return ItemResult(source, "failed", target.found.problem)
    if options.dry_run:
        return _convert_locked(target, options, weights_path, sidecar_path)
    try:
        sidecar_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path_for(sidecar_path)), timeout=0)
        lock.acquire()
    except Timeout:
        return ItemResult(source, "skipped", "busy: another ckptctl process is converting it")
    except OSError as exc:
        return ItemResult(source, "failed", _os_reason(exc))
    try:
        remove_stale_temporaries(sidecar_path)
        return _convert_locked(target, options, weights_path, sidecar_path)
    finally:
        lock.release()


def lock_path_for(sidecar_path: Path) -> Path:
    stem = sidecar_path.name[: -len(SIDECAR_SUFFIX)]
    return sidecar_path.with_name(f".{stem}{LOCK_SUFFIX}")


def remove_stale_temporaries(sidecar_path: Path) -> None:
    """Temporaries of this checkpoint left by a killed run. Called with the checkpoint's lock
    held, so no live process can own one of them."""
    stem = sidecar_path.name[: -len(SIDECAR_SUFFIX)]
    prefix = f".{stem}{TEMP_MARKER}-"
    try:
        entries = list(os.scandir(sidecar_path.parent))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(prefix):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _convert_locked(target: Target, options: ConvertOptions, weights_path: Path,
                    sidecar_path: Path) -> ItemResult:
    source = target.found.path
    if not options.force and sidecar_path.exists():
        state = _freshness(sidecar_path, source, options.metadata_only, not options.dry_run)
        if state == "fresh":
            return ItemResult(source, "skipped", "up to date", weights_path, sidecar_path)
        if state == "touched" and not options.dry_run:
            return ItemResult(source, "skipped", "content unchanged (sidecar mtime refreshed)",
                              weights_path, sidecar_path)
    if options.dry_run:
        return ItemResult(source, "would convert", None, weights_path, sidecar_path)
    try:
        return _write_outputs(target, weights_path, sidecar_path, options)
    except CkptError as exc:
        return ItemResult(source, "failed", describe_error(exc, source))
    except OSError as exc:
        return ItemResult(source, "failed", _os_reason(exc))
    except Exception as exc:  # a bug must not stop the batch; say so plainly
        return ItemResult(source, "failed", f"internal error ({type(exc).__name__}: {exc}); "
                          "please report it", detail=traceback.format_exc())


def _os_reason(exc: OSError) -> str:
    """One line saying what happened and what to do. HDF5 reports some OS errors as
    messages without an errno, so the text is consulted too."""
    import errno

    where = f" ({exc.filename})" if exc.filename else ""
    text = str(exc)
    code = exc.errno
    if code is None:
        if "No space left" in text:
            code = errno.ENOSPC
        elif "Read-only file system" in text:
            code = errno.EROFS
        elif "Permission denied" in text:
            code = errno.EACCES
    if code == errno.ENOSPC:
        return f"no space left on device{where}: free space or convert with --output-dir elsewhere"
    if code == errno.EROFS:
        return f"read-only file system{where}: convert with --output-dir DIR"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}: the folder is not writable; use --output-dir DIR"
    if code == errno.ENOENT:
        return f"file vanished during conversion{where}"
    first_line = text.splitlines()[0] if text else type(exc).__name__
    return f"{exc.strerror or first_line}{where}"


def _freshness(sidecar_path: Path, source: Path, metadata_only: bool,
               refresh: bool) -> Literal["fresh", "touched", "stale"]:
    """fresh: outputs match the source; touched: only the source's mtime moved (a copy
    without -p, a ``touch``) and its sha256 still matches, so the sidecar's mtime is
    refreshed in place of a reconversion; stale: convert again."""
    try:
        sidecar = parse_sidecar(sidecar_path)
    except CkptError:
        return "stale"
    if sidecar.weights_path is None and not metadata_only and sidecar.source.format not in NATIVE_FORMATS:
        return "stale"
    if sidecar.weights_path is not None and not (sidecar_path.parent / sidecar.weights_path).exists():
        return "stale"
    if source_is_stale(sidecar, source) is None:
        return "fresh"
    fmt = sidecar.source.format
    info = fingerprint(source, fmt)
    if info.size_bytes != sidecar.source.size_bytes or sidecar.source.sha256 is None:
        return "stale"
    if not refresh or sha256_files(source_files(source, fmt)) != sidecar.source.sha256:
        return "stale"
    refreshed = sidecar.model_copy(update={"source": sidecar.source.model_copy(
        update={"mtime": info.mtime})})
    write_atomic(sidecar_path, sidecar_yaml(refreshed))
    return "touched"


def _write_outputs(target: Target, weights_path: Path, sidecar_path: Path,
                   options: ConvertOptions) -> ItemResult:
    source = target.found.path
    fmt = target.found.format or ""
    before = fingerprint(source, fmt)
    plan = make_plan(source, fmt, target.exp_root,
                     PlanOptions(metadata_only=options.metadata_only, keras_model=options.keras_model))
    files = plan.files
    source_hash: dict[str, Any] = {}
    hasher = threading.Thread(target=_hash_into, args=(files, source_hash), daemon=True)
    hasher.start()  # hashing the source overlaps writing the weights (hashlib drops the GIL)
    weights_info: dict[str, Any] | None = None
    written_weights: Path | None = None
    weights_tmp = temp_path_for(weights_path)
    try:
        if plan.write_weights is not None:
            _refuse_foreign_file(weights_path)
            weights_info = plan.write_weights(weights_tmp)
            # The file's sha256, its read-back verification and its fsync are independent:
            # hash on a thread (hashlib releases the GIL) while this thread verifies and syncs.
            weights_hash: dict[str, Any] = {}
            hashing = threading.Thread(target=_hash_into, args=([weights_tmp], weights_hash))
            hashing.start()
            try:
                verify_datasets(weights_tmp, weights_info.pop(CHECKSUMS, {}))
                with open(weights_tmp, "rb") as handle:
                    os.fsync(handle.fileno())
            finally:
                hashing.join()
            if "error" in weights_hash:
                raise weights_hash["error"]
            weights_info["size_bytes"] = weights_tmp.stat().st_size
            weights_info["sha256"] = weights_hash["sha256"]
            written_weights = weights_path
        hasher.join()
        if "error" in source_hash:
            raise source_hash["error"]
        if fingerprint(source, fmt) != before:
            raise CkptError("source changed while it was being converted; run again")
        if plan.native_weights is not None:
            weights_info = native_weights_info(plan.native_weights)
            weights_info["size_bytes"] = before.size_bytes
            weights_info["sha256"] = source_hash["sha256"]
        described = written_weights or plan.native_weights
        sidecar = _build_sidecar(target, plan, before, source_hash["sha256"], described,
                                 sidecar_path, weights_info)
        if written_weights is not None:
            _refuse_foreign_file(weights_path)
            # Retire the old sidecar first: it vouches for the old weights, and a kill between
            # the two renames must never leave it describing the new ones.
            if sidecar_path.exists():
                sidecar_path.unlink()
                fsync_dir(sidecar_path.parent)
            os.replace(weights_tmp, weights_path)
            fsync_dir(weights_path.parent)
        write_atomic(sidecar_path, sidecar_yaml(sidecar))  # last: it vouches for the weights
    finally:
        weights_tmp.unlink(missing_ok=True)
    note = "; ".join(plan.notes) or None
    return ItemResult(source, "converted", note, written_weights, sidecar_path)


def _refuse_foreign_file(weights_path: Path) -> None:
    """Never replace a weights file ckptctl did not write (e.g. a Keras 3 native one)."""
    if not weights_path.exists():
        return
    from ..readers.keras_files import is_ckptctl_h5

    try:
        import h5py

        with h5py.File(weights_path, "r") as f:
            ours = is_ckptctl_h5(f.attrs)
    except OSError:
        ours = False
    if not ours:
        raise OutputConflictError(f"{weights_path.name} exists and was not written by ckptctl; "
                                  "not overwritten (move it or convert elsewhere)")


def _hash_into(paths: list[Path], out: dict[str, Any]) -> None:
    try:
        out["sha256"] = sha256_files(paths)
    except OSError as exc:
        out["error"] = exc


def _build_sidecar(target: Target, plan: Plan, stat: Fingerprint, source_sha256: str,
                   weights_path: Path | None, sidecar_path: Path,
                   weights_info: dict[str, Any] | None) -> Sidecar:
    g = plan.gathered
    contents = g.group("contents")
    contents["resumable"] = bool(contents.get("model_weights") and contents.get("optimizer_state"))
    model = g.group("model")
    folder = sidecar_path.parent
    doc = {
        "schema_version": SCHEMA_VERSION,
        "checkpoint_path": os.path.relpath(target.found.path, folder),
        "weights_path": os.path.relpath(weights_path, folder) if weights_path else None,
        "exp_name": target.exp_name,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"format": plan.format, "size_bytes": stat.size_bytes,
                   "mtime": stat.mtime, "sha256": source_sha256,
                   "files": [os.path.relpath(f, folder) for f in plan.files]
                   if plan.files != [target.found.path] else None},
        "weights": weights_info,
        "training": g.group("training"),
        "model": model,
        "metrics": g.group("metrics"),
        "checkpointing": g.group("checkpointing"),
        "contents": contents,
        "provenance": g.provenance(),
        "conflicts": g.conflicts,
        "tool": {"name": "ckptctl", "version": __version__},
    }
    return Sidecar.model_validate(doc)
