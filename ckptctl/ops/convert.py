"""``convert``: write ``<stem>.weights.h5`` and ``<stem>.metadata.yaml`` for each checkpoint.

Never modifies a source. Each checkpoint succeeds or fails on its own; a failure leaves no
output behind (weights and sidecar are written to temporary files and renamed into place,
the sidecar last, so a sidecar always describes complete weights). What a format knows is
asked through its registry entry (``ckptctl.formats``); this module owns hashing,
temporaries, locks, renames and the sidecar.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import os
import signal
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from .. import __version__
from ..atomic import (
    CheckpointLock,
    LockBusy,
    fsync_dir,
    fsync_file,
    sync_folders,
    temp_path_for,
    write_atomic,
)
from ..budgets import output_budget
from ..discovery import discover
from ..errors import (
    CkptError,
    ErrorKind,
    NewerSidecarError,
    OutputConflictError,
    SourceChangedError,
    UnsupportedCheckpointError,
    describe_error,
    kind_of,
)
from ..formats import (
    FormatId,
    FoundCheckpoint,
    OpenedSource,
    WeightsOptions,
    WeightsPlan,
    WrittenWeights,
    classify_target,
    format_for,
    is_known_format,
    is_output_or_temp,
)
from ..metadata import Gathered, gather_common, start_run
from ..migrations import SCHEMA_VERSION
from ..outputs import CheckpointOutputs, OutputLayout, ckptctl_mark, stem_of, weights_problem
from ..schema import Sidecar
from ..sharding import Shard, shard_key
from ..sidecars import parse_sidecar, sidecar_yaml, source_is_stale
from ..sources import Fingerprint, fingerprint, sha256_files, sha256_of, stored_bytes

T = TypeVar("T")
Status = Literal["converted", "skipped", "failed", "would convert"]


@dataclass
class ConvertOptions:
    force: bool = False
    dry_run: bool = False
    metadata_only: bool = False
    keras_model: str | None = None
    output_dir: Path | None = None
    #: worker processes (1: convert in this process, one checkpoint at a time)
    jobs: int = 1
    #: "h5" (``<stem>.weights.h5``) or "safetensors" (``<stem>.safetensors``, PyTorch-family
    #: sources; README: Weights formats)
    weights_format: str = "h5"


@dataclass
class Target:
    """One checkpoint to convert and the experiment it belongs to."""

    found: FoundCheckpoint
    exp_root: Path
    exp_name: str
    #: the folder the source tree is mirrored from under ``--into``
    source_root: Path


@dataclass
class ItemResult:
    source: Path
    status: Status
    #: why it failed or was skipped (None when converted)
    reason: str | None = None
    #: what failed, for machines (None unless status is "failed")
    kind: ErrorKind | None = None
    #: things worth knowing about a success (e.g. why a fallback layout was written)
    notes: list[str] = field(default_factory=list)
    weights: Path | None = None
    sidecar: Path | None = None
    detail: str | None = None  # a traceback, only for internal errors
    #: wall-clock seconds spent on it, and the source's size in bytes (0 when unknown)
    seconds: float = 0.0
    source_bytes: int = 0


def failed(source: Path, reason: str, kind: ErrorKind, detail: str | None = None) -> ItemResult:
    return ItemResult(source, "failed", reason, kind, detail=detail)


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
    found = classify_target(path) or FoundCheckpoint(
        path, None, "not a checkpoint (unrecognised content)", "unrecognised")
    exp_root = experiment_of_file(path.absolute())
    return [Target(found, exp_root, exp_root.name, path.parent)], []


#: A folder holding one of these is an experiment folder (``--outputs-dir runs/mlp``, or
#: ``--exp-dir runs/mlp/checkpoints``, one level too low, still name the experiment ``mlp``).
EXPERIMENT_MARKER_DIRS = ("checkpoints", ".hydra", "lightning_logs", "csv_logs")
EXPERIMENT_MARKER_FILES = ("hparams.yaml",)


def _is_experiment_folder(folder: Path) -> bool:
    try:
        return any((folder / name).is_dir() for name in EXPERIMENT_MARKER_DIRS) or \
            any((folder / name).is_file() for name in EXPERIMENT_MARKER_FILES)
    except OSError:
        return False


def experiment_containing(root: Path) -> Path | None:
    """The experiment folder ``root`` is, or lies inside: ``root`` itself when it holds a
    marker (``checkpoints/``, ``.hydra/``, ``lightning_logs/``, ``csv_logs/``,
    ``hparams.yaml``), else the nearest ancestor holding a marker that ``root`` lies inside
    of (``runs/mlp`` for ``runs/mlp/checkpoints`` or ``runs/mlp/lightning_logs/version_0``).
    None when ``root`` is a folder of experiments (or of loose checkpoints)."""
    if _is_experiment_folder(root):
        return root
    absolute = root.absolute()
    for ancestor in absolute.parents:
        if absolute.relative_to(ancestor).parts[0] in EXPERIMENT_MARKER_DIRS and \
                _is_experiment_folder(ancestor):
            return ancestor
    return None


def targets_for_exp_dir(exp_dir: Path, recursive: bool) -> tuple[list[Target], list[str]]:
    found = discover([exp_dir], recursive)
    exp_root = experiment_containing(exp_dir) or exp_dir
    name = exp_root.absolute().name  # `--exp-dir .` names the current folder
    return [Target(f, exp_root, name, exp_dir) for f in found.checkpoints], found.warnings


def targets_for_outputs_dir(outputs_dir: Path, recursive: bool) -> tuple[list[Target], list[str]]:
    found = discover([outputs_dir], recursive)
    inside = experiment_containing(outputs_dir)
    targets = []
    for item in found.checkpoints:
        relative = item.path.relative_to(outputs_dir)
        if inside is not None:
            exp_root = inside
        else:
            exp_root = outputs_dir / relative.parts[0] if len(relative.parts) > 1 else outputs_dir
        targets.append(Target(item, exp_root, exp_root.absolute().name, outputs_dir))
    return targets, found.warnings


def targets_for_paths(paths: Iterable[Path], recursive: bool) -> tuple[list[Target], list[str]]:
    """``convert PATHS...``: each folder as ``--outputs-dir``, anything else (a file, a TF
    prefix) as ``--checkpoint``; a checkpoint reached from two paths is converted once."""
    targets: list[Target] = []
    warnings: list[str] = []
    seen: set[Path] = set()
    for path in paths:
        more, found_warnings = (targets_for_outputs_dir(path, recursive) if path.is_dir()
                                else targets_for_checkpoint(path))
        warnings += found_warnings
        for target in more:
            key = target.found.path.absolute()
            if key not in seen:
                seen.add(key)
                targets.append(target)
    return targets, warnings


def outputs_of(target: Target, options: ConvertOptions) -> CheckpointOutputs:
    layout = OutputLayout(target.source_root, options.output_dir) if options.output_dir else OutputLayout()
    return layout.outputs(target.found.path)


def select_shard(targets: list[Target], options: ConvertOptions, shard: Shard,
                 root: Path | None = None) -> list[Target]:
    """The targets of one shard (``ckptctl.sharding``), keyed by their sidecar path relative
    to where the outputs go: ``root`` (default: the folder each target was found from), or
    ``--output-dir``."""
    def base(target: Target) -> Path:
        if options.output_dir is not None:
            return options.output_dir
        return root if root is not None else target.source_root

    return [t for t in targets if shard.holds(shard_key(outputs_of(t, options).sidecar, base(t)))]


# --- converting ---------------------------------------------------------------------------


def convert(
    targets: Iterable[Target],
    options: ConvertOptions,
    on_item: Callable[[ItemResult], None] | None = None,
) -> ConvertReport:
    """Convert every target; ``on_item`` sees each result in the targets' order as soon as
    it is known. With ``options.jobs > 1`` checkpoints are converted in that many worker
    processes (``ckptctl.workers``); a worker that dies fails only its checkpoint."""
    report = ConvertReport()
    targets = list(targets)
    # A damaged weights file of ours (truncated) looks like a broken checkpoint: it is an
    # output to rewrite, not a source to report (and not a clash with its own source).
    ours = {outputs_of(t, options).weights for t in targets if t.found.format is not None}
    targets = [t for t in targets if t.found.format is not None or t.found.path not in ours]
    clashes = _name_clashes(targets, options)
    start_run()
    _NEWEST_METADATA.clear()
    jobs = [(target, clashes.get(target.found.path)) for target in targets]

    def record(item: ItemResult) -> None:
        report.items.append(item)
        if on_item is not None:
            on_item(item)

    if options.jobs > 1 and len(jobs) > 1:
        from ..workers import run_ordered

        run_ordered(functools.partial(_convert_job, options=options), jobs, options.jobs,
                    record, _worker_died, preload=["ckptctl.ops.convert", "h5py", "numpy"],
                    finish=sync_folders)
    else:
        try:
            for job in jobs:
                record(_convert_job(job, options))
        finally:
            sync_folders()
    return report


def _convert_job(job: tuple[Target, Path | None], options: ConvertOptions) -> ItemResult:
    target, clash = job
    if clash is not None:
        return failed(target.found.path, f"output name clash with {clash.name} (both would "
                      f"write {stem_of(clash)}.weights.h5); rename one of them", "conflict")
    started = time.monotonic()
    item = _convert_one(target, options)
    item.seconds = time.monotonic() - started
    if target.found.format is not None:
        with contextlib.suppress(OSError, CkptError):
            item.source_bytes = fingerprint(target.found.path, target.found.format).size_bytes
    return item


def _worker_died(job: tuple[Target, Path | None], exitcode: int | None) -> ItemResult:
    how = (f"killed by {signal.Signals(-exitcode).name}" if exitcode is not None and exitcode < 0
           else f"exit status {exitcode}")
    return failed(job[0].found.path, f"the worker converting it died ({how}; out of memory?); "
                  "nothing was written, run again", "crashed")


def _name_clashes(targets: list[Target], options: ConvertOptions) -> dict[Path, Path]:
    groups: dict[Path, list[Path]] = defaultdict(list)
    for target in targets:
        groups[outputs_of(target, options).sidecar].append(target.found.path)
    clashes: dict[Path, Path] = {}
    for paths in groups.values():
        if len(paths) > 1:
            for path in paths:
                clashes[path] = next(p for p in paths if p != path)
    return clashes


def _convert_one(target: Target, options: ConvertOptions) -> ItemResult:
    source = target.found.path
    outputs = outputs_of(target, options)
    if target.found.problem is not None:
        return failed(source, target.found.problem, target.found.problem_kind)
    if options.dry_run:
        return _convert_locked(target, options, outputs)
    try:
        outputs.sidecar.parent.mkdir(parents=True, exist_ok=True)
        lock = CheckpointLock(outputs.lock)
        lock.acquire()
    except LockBusy:
        return ItemResult(source, "skipped", "busy: another ckptctl process is converting it")
    except OSError as exc:
        return failed(source, os_reason(exc), "os")
    try:
        outputs.remove_stale_temporaries()
        return _convert_locked(target, options, outputs)
    finally:
        lock.release()


def _convert_locked(target: Target, options: ConvertOptions, outputs: CheckpointOutputs) -> ItemResult:
    source = target.found.path
    try:
        if not options.force and outputs.sidecar.exists():
            judged = _freshness(outputs.sidecar, target.found, options.metadata_only,
                                not options.dry_run, options.weights_format)
            if judged.state != "stale":
                assert judged.sidecar is not None
                if not options.dry_run:
                    _remove_unnamed_other_format(outputs, judged.sidecar)
                why = _metadata_outdated(judged.sidecar, outputs.sidecar, target)
                if why is not None:
                    if options.dry_run:
                        return ItemResult(source, "would convert", why, None, [], outputs.weights,
                                          outputs.sidecar)
                    refreshed = _refresh_metadata(target, outputs, options, judged, why)
                    if refreshed is not None:
                        return refreshed
                    return _write_outputs(target, outputs, options)  # weights did not check out
                if judged.state == "fresh":
                    return ItemResult(source, "skipped", "up to date", None, [], outputs.weights,
                                      outputs.sidecar)
                if not options.dry_run:
                    write_atomic(outputs.sidecar, sidecar_yaml(judged.refreshed()))
                    return ItemResult(source, "skipped",
                                      "content unchanged (sidecar mtime refreshed)", None, [],
                                      outputs.weights, outputs.sidecar)
        if options.dry_run:
            return ItemResult(source, "would convert", None, None, [], outputs.weights, outputs.sidecar)
        return _write_outputs(target, outputs, options)
    except CkptError as exc:
        return failed(source, describe_error(exc, source), exc.kind)
    except OSError as exc:
        return failed(source, os_reason(exc), "os")
    except Exception as exc:  # a bug must not stop the batch; say so plainly
        return failed(source, f"internal error ({type(exc).__name__}: {exc}); please report it",
                      kind_of(exc), traceback.format_exc())


def os_reason(exc: OSError) -> str:
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
        return f"no space left on device{where}: free space or convert with --into DIR elsewhere"
    if code == errno.EROFS:
        return f"read-only file system{where}: convert with --into DIR"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}: the folder is not writable; use --into DIR"
    if code == errno.ENOENT:
        return f"file vanished during conversion{where}"
    first_line = text.splitlines()[0] if text else type(exc).__name__
    return f"{exc.strerror or first_line}{where}"


@dataclass
class _Judged:
    """What ``_freshness`` found: fresh (outputs match the source), touched (only the
    source's mtime moved, ``mtime``; its sha256 still matches) or stale (convert again)."""

    state: Literal["fresh", "touched", "stale"]
    sidecar: Sidecar | None = None
    mtime: float | None = None

    def refreshed(self) -> Sidecar:
        """The sidecar with the source's new mtime (state touched)."""
        assert self.sidecar is not None and self.mtime is not None
        return self.sidecar.model_copy(update={"source": self.sidecar.source.model_copy(
            update={"mtime": self.mtime})})


def _freshness(sidecar_path: Path, found: FoundCheckpoint, metadata_only: bool,
               refresh: bool, weights_format: str = "h5") -> _Judged:
    """fresh: outputs match the source; touched: only the source's mtime moved (a copy
    without -p, a ``touch``) and its sha256 still matches, so the sidecar's mtime is
    refreshed in place of a reconversion; stale: convert again, also when the weights it
    names are missing or of another size (their sha256 is ``validate --deep``'s). A sidecar
    from a newer ckptctl raises ``NewerSidecarError``: it is never overwritten by an older
    one."""
    stale = _Judged("stale")
    try:
        sidecar = parse_sidecar(sidecar_path)
    except NewerSidecarError:
        raise
    except CkptError:
        return stale
    source = found.path
    fmt = sidecar.source.format
    if not is_known_format(fmt) or fmt != found.format:
        return stale  # a sidecar about another format (edited, or another file's) is redone
    if sidecar.weights_path is None and not metadata_only and format_for(fmt).writes_weights:
        return stale
    if weights_problem(sidecar, sidecar_path.parent) is not None:
        return stale
    if sidecar.weights is not None and not metadata_only \
            and _is_safetensors_layout(sidecar.weights.layout) != (weights_format == "safetensors") \
            and format_for(fmt).writes_weights and format_for(fmt).pytorch_family:
        return stale  # the other weights format was asked for
    if source_is_stale(sidecar, source) is None:
        return _Judged("fresh", sidecar)
    info = fingerprint(source, fmt)
    if info.size_bytes != sidecar.source.size_bytes or sidecar.source.sha256 is None:
        return stale
    if not refresh or sha256_of(source, fmt) != sidecar.source.sha256:
        return stale
    return _Judged("touched", sidecar, info.mtime)


#: Files that may hold metadata (logger files, configs): one newer than a sidecar makes
#: ``convert`` gather the metadata again.
_METADATA_SUFFIXES = (".csv", ".yaml", ".yml", ".json", ".jsonl")
_NEWEST_METADATA: dict[Path, float] = {}


def _newest_metadata_file(exp_root: Path) -> float:
    """The newest mtime of a possible metadata file below ``exp_root`` (5 levels; symlinks
    not followed), once per run, from the experiment walk the metadata sources share."""
    from ..metadata import experiment_files

    key = exp_root.absolute()
    if key not in _NEWEST_METADATA:
        newest = 0.0
        for path, depth in experiment_files(key):
            name = path.name
            if depth <= 5 and (name.endswith(_METADATA_SUFFIXES)
                               or name.startswith("events.out.tfevents")) \
                    and not is_output_or_temp(name):
                try:
                    newest = max(newest, os.lstat(path).st_mtime)
                except OSError:
                    continue
        _NEWEST_METADATA[key] = newest
    return _NEWEST_METADATA[key]


def _metadata_outdated(old: Sidecar, sidecar_path: Path, target: Target) -> str | None:
    """Why a sidecar whose source is unchanged should still be gathered again: its
    experiment is named differently now (an earlier run was pointed one level too low), or
    a metadata file of the experiment (a logger file, a config) is newer than it."""
    if old.exp_name != target.exp_name:
        return f"exp_name {old.exp_name!r} -> {target.exp_name!r}"
    try:
        written = sidecar_path.stat().st_mtime
    except OSError:
        return None
    if _newest_metadata_file(target.exp_root) > written:
        return "a metadata file changed since conversion"
    return None


def _refresh_metadata(target: Target, outputs: CheckpointOutputs, options: ConvertOptions,
                      judged: _Judged, why: str) -> ItemResult | None:
    """Gather the metadata again and rewrite the sidecar (atomically) around the weights it
    already names, after checking them against its recorded size and sha256; None when
    they do not check out (or were not written by convert): convert fully then."""
    old = judged.sidecar
    source = target.found.path
    fmt = target.found.format
    assert old is not None and fmt is not None
    folder = outputs.sidecar.parent
    if (old.weights_path is None or old.weights is None or not format_for(fmt).writes_weights
            or folder / old.weights_path != outputs.weights):
        return None
    try:
        if outputs.weights.stat().st_size != old.weights.size_bytes or \
                sha256_files([outputs.weights]) != old.weights.sha256:
            return None
    except OSError:
        return None
    before = fingerprint(source, fmt)
    opened, gathered, plan = plan_conversion(source, fmt, target.exp_root, options)
    if fingerprint(source, fmt) != before:
        raise SourceChangedError("source changed while it was being read; run again")
    source_info = old.source.model_dump(mode="json")
    if judged.mtime is not None:
        source_info["mtime"] = judged.mtime
    sidecar = _build_sidecar(target, opened.format, opened.files, gathered, before,
                             old.source.sha256 or "", outputs.sidecar, None,
                             weights_info=old.weights.model_dump(mode="json"),
                             weights_path=old.weights_path, source_info=source_info)
    if _same_but_created_at(sidecar, old):
        os.utime(outputs.sidecar)  # newer than the metadata files now: not gathered again
        return ItemResult(source, "skipped", "up to date (metadata gathered again, unchanged)",
                          None, [], outputs.weights, outputs.sidecar)
    write_atomic(outputs.sidecar, sidecar_yaml(sidecar))
    return ItemResult(source, "converted", None, None,
                      [f"sidecar refreshed ({why}); weights kept, their sha256 checked",
                       *plan.notes], outputs.weights, outputs.sidecar)


def _same_but_created_at(a: Sidecar, b: Sidecar) -> bool:
    return a.model_copy(update={"created_at": b.created_at}) == b


def plan_conversion(source: Path, fmt: FormatId, exp_root: Path,
                    options: ConvertOptions) -> tuple[OpenedSource, Gathered, WeightsPlan]:
    """Everything convert reads from a source before writing: its structure (opened once),
    its metadata from every source in precedence order, and how its weights are written."""
    entry = format_for(fmt)
    opened = entry.open(source, fmt)
    gathered = Gathered()
    opened.read_metadata(gathered)
    gather_common(source, stem_of(source), exp_root, gathered)
    plan = WeightsPlan()
    if not options.metadata_only or not entry.writes_weights:
        plan = opened.plan_weights(gathered, WeightsOptions(keras_model=options.keras_model,
                                                            weights_format=options.weights_format))
    return opened, gathered, plan


@dataclass
class _Weights:
    """Weights described by the sidecar: written now, or the native source itself."""

    path: Path
    written: WrittenWeights
    size_bytes: int
    sha256: str


def _write_outputs(target: Target, outputs: CheckpointOutputs, options: ConvertOptions) -> ItemResult:
    source = target.found.path
    fmt = target.found.format
    if fmt is None:  # discovery gives unknown files a problem; never reached for real files
        raise CkptError("not a checkpoint (unrecognised content)")
    for path in (source, outputs.sidecar):
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            raise UnsupportedCheckpointError(
                "the path is not valid UTF-8 and a sidecar (UTF-8 text) cannot name it; rename "
                "the file or folder") from None
    before = fingerprint(source, fmt)
    opened, gathered, plan = plan_conversion(source, fmt, target.exp_root, options)
    weights_path = outputs.weights_with(plan.suffix)
    weights_tmp = temp_path_for(weights_path)
    # Hashing (hashlib releases the GIL) overlaps writing, verifying and syncing.
    pool: Executor = (ThreadPoolExecutor(max_workers=2, thread_name_prefix="ckptctl-hash")
                      if before.size_bytes >= OVERLAP_FROM_BYTES else _Inline())
    with pool:
        try:
            source_hash = pool.submit(sha256_files, opened.files)
            weights: _Weights | None = None
            if plan.write is not None:
                # bytes written ~ bytes stored (on disk: a sparse file's holes buy nothing)
                with output_budget(stored_bytes(opened.files)):
                    weights = _write_weights(plan, weights_path, weights_tmp, pool,
                                             outputs.sidecar)
            source_sha256 = source_hash.result()
            if fingerprint(source, fmt) != before:
                raise SourceChangedError("source changed while it was being converted; run again")
            if plan.native is not None and plan.describe_native is not None:
                weights = _Weights(plan.native, plan.describe_native(), before.size_bytes,
                                   source_sha256)
            sidecar = _build_sidecar(target, opened.format, opened.files, gathered, before,
                                     source_sha256, outputs.sidecar, weights)
            sidecar_bytes = sidecar_yaml(sidecar)  # before any rename: a failure leaves nothing
            replaced = _previous_weights(outputs, plan.native or weights_path)
            if plan.write is not None:
                _refuse_foreign_file(weights_path, outputs.sidecar)
                # Retire the old sidecar first: it vouches for the old weights, and a kill
                # between the two renames must never leave it describing the new ones.
                if outputs.sidecar.exists():
                    outputs.sidecar.unlink()
                    fsync_dir(outputs.sidecar.parent)
                os.replace(weights_tmp, weights_path)
                fsync_dir(weights_path.parent)
            # Last: it vouches for the weights. Its folder is fsynced once per run (sync_folders),
            # not per checkpoint: a power loss can only lose the newest sidecars, which the
            # next run writes again; the weights' own rename is synced above, before it.
            write_atomic(outputs.sidecar, sidecar_bytes, sync_folder=False)
            if replaced is not None:  # the other weights format's file, now named by nothing
                replaced.unlink(missing_ok=True)
        finally:
            weights_tmp.unlink(missing_ok=True)
    written = weights_path if plan.write is not None else None
    notes = [*plan.notes, *(f"warning: {w}" for w in gathered.warnings), *gathered.notes]
    return ItemResult(source, "converted", None, None, notes, written, outputs.sidecar)


#: Below this size a checkpoint is hashed in line: starting threads costs more than the
#: overlap of hashing with writing gains (measured on the many-small-checkpoints benchmark).
OVERLAP_FROM_BYTES = 16 << 20


class _Inline(Executor):
    """An executor that runs each call at once, in the calling thread."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def _write_weights(plan: WeightsPlan, weights_path: Path, tmp: Path, pool: Executor,
                   sidecar_path: Path) -> _Weights:
    from ..layouts.ckptctl_tensors import verify_datasets

    assert plan.write is not None
    _refuse_foreign_file(weights_path, sidecar_path)
    written = plan.write(tmp)
    # The file's sha256, its read-back verification and its fsync are independent.
    weights_hash = pool.submit(sha256_files, [tmp])
    if _is_safetensors_layout(written.layout):
        from ..layouts.safetensors_out import verify_safetensors

        verify_safetensors(tmp, written.checksums)
    else:
        verify_datasets(tmp, written.checksums)
    fsync_file(tmp)
    sha256 = weights_hash.result()
    return _Weights(weights_path, written, tmp.stat().st_size, sha256)


def _remove_unnamed_other_format(outputs: CheckpointOutputs, sidecar: Sidecar) -> None:
    """A format switch killed between the new sidecar's rename and the old file's removal
    leaves this checkpoint's other weights file (``<stem>.weights.h5`` or
    ``<stem>.safetensors``) named by no sidecar: the next run removes it when ckptctl's mark
    says it wrote it (called with the lock held)."""
    named = outputs.sidecar.parent / sidecar.weights_path if sidecar.weights_path else None
    for candidate in (outputs.weights, outputs.weights_with(".safetensors")):
        if candidate == named or candidate.is_symlink() or not candidate.is_file():
            continue
        if ckptctl_mark(candidate):
            candidate.unlink(missing_ok=True)


def _previous_weights(outputs: CheckpointOutputs, new_weights: Path) -> Path | None:
    """The weights file the existing sidecar names when it is this checkpoint's file of the
    other ``--weights-format`` (``<stem>.weights.h5`` or ``<stem>.safetensors``, nothing
    else a sidecar could name) and ckptctl's mark says it wrote it: removed once the new
    sidecar is in place, so a tree never keeps weights no sidecar names."""
    sidecar_path = outputs.sidecar
    if not sidecar_path.exists():
        return None
    try:
        old = parse_sidecar(sidecar_path)
    except CkptError:
        return None
    if old.weights_path is None or old.weights is None:
        return None
    previous = sidecar_path.parent / old.weights_path
    ours_by_name = (outputs.weights, outputs.weights_with(".safetensors"))
    if previous == new_weights or previous not in ours_by_name \
            or not previous.is_file() or previous.is_symlink():
        return None
    return previous if ckptctl_mark(previous) else None


def _refuse_foreign_file(weights_path: Path, sidecar_path: Path | None = None) -> None:
    """Never replace a weights file ckptctl did not write (e.g. a Keras 3 native one). A file
    that is no longer readable HDF5 (truncated) is replaced only when ckptctl's own sidecar
    ``sidecar_path`` names it as the weights it wrote."""
    if not weights_path.exists():
        return
    mark = ckptctl_mark(weights_path)
    # The sidecar's word counts only for a file that no longer reads as its format (ours,
    # damaged); a readable file without ckptctl's mark is someone's (a Keras 3 model).
    ours = mark or (mark is None and sidecar_path is not None
                    and _sidecar_wrote(sidecar_path, weights_path))
    if not ours:
        raise OutputConflictError(f"{weights_path.name} exists and was not written by ckptctl; "
                                  "not overwritten (move it or convert elsewhere)")


def _is_safetensors_layout(layout: str) -> bool:
    return layout in ("ckptctl-safetensors", "safetensors")


def _sidecar_wrote(sidecar_path: Path, weights_path: Path) -> bool:
    """Whether the sidecar names ``weights_path`` as weights convert wrote: never when they
    are its own source (a Keras 3 or safetensors source described as its own weights)."""
    try:
        sidecar = parse_sidecar(sidecar_path)
    except CkptError:
        return False
    if sidecar.weights_path is None or sidecar.weights is None:
        return False
    named = os.path.normpath(sidecar.weights_path)
    sources = {os.path.normpath(sidecar.checkpoint_path),
               *(os.path.normpath(f) for f in sidecar.source.files or [])}
    return (named not in sources and sidecar.weights.layout not in ("safetensors",)
            and sidecar_path.parent / named == weights_path
            and is_known_format(sidecar.source.format)
            and format_for(sidecar.source.format).writes_weights)


def _build_sidecar(target: Target, fmt: str, files: list[Path], g: Gathered, stat: Fingerprint,
                   source_sha256: str, sidecar_path: Path, weights: _Weights | None, *,
                   weights_info: dict[str, Any] | None = None, weights_path: str | None = None,
                   source_info: dict[str, Any] | None = None) -> Sidecar:
    """The sidecar; ``weights_info``/``weights_path``/``source_info`` keep an existing
    sidecar's sections (a metadata refresh) in place of ``weights`` and ``stat``."""
    contents = g.group("contents")
    contents["resumable"] = bool(contents.get("model_weights") and contents.get("optimizer_state"))
    folder = sidecar_path.parent
    if weights is not None:
        w = weights.written
        weights_info = {"layout": w.layout, "layout_version": w.layout_version,
                        "tensor_count": w.tensor_count, "parameter_count": w.parameter_count,
                        "dtypes": w.dtypes, "state_dict_key": w.state_dict_key,
                        "size_bytes": weights.size_bytes, "sha256": weights.sha256}
    doc = {
        "schema_version": SCHEMA_VERSION,
        "checkpoint_path": os.path.relpath(target.found.path, folder),
        "weights_path": os.path.relpath(weights.path, folder) if weights else weights_path,
        "exp_name": target.exp_name,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source_info or {"format": fmt, "size_bytes": stat.size_bytes,
                                  "mtime": stat.mtime, "sha256": source_sha256,
                                  "files": [os.path.relpath(f, folder) for f in files]
                                  if files != [target.found.path] else None},
        "weights": weights_info,
        "training": g.group("training"),
        "model": g.group("model"),
        "metrics": g.group("metrics"),
        "checkpointing": g.group("checkpointing"),
        "contents": contents,
        "provenance": g.provenance(),
        "conflicts": g.conflicts,
        "tool": {"name": "ckptctl", "version": __version__},
    }
    return Sidecar.model_validate(doc)
