"""``convert``: write ``<stem>.weights.h5`` and ``<stem>.metadata.yaml`` next to each checkpoint.

Never modifies a source. Each checkpoint succeeds or fails on its own; a failure leaves no
output behind (weights and sidecar are written to temporary files and renamed into place,
the sidecar last, so a sidecar always describes complete weights).
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import __version__
from ..discovery import FoundCheckpoint, classify, discover, outputs_for, stem_of
from ..errors import CkptError, UnsupportedCheckpointError
from ..formats.ckptctl_h5 import LAYOUT, LAYOUT_VERSION, TensorToWrite, write_tensors
from ..formats.tensor import LazyTensor, StorageRef
from ..formats.torch_formats import TorchFile, open_torch
from ..metadata import (
    STATE_DICT_KEYS,
    Gathered,
    find_state_dict,
    gather_from_checkpoint,
    gather_from_filename,
    gather_from_hydra,
    gather_from_logs,
    unsupported_tensors,
)
from ..schema import SCHEMA_VERSION, Sidecar
from ..sidecars import (
    fsync_dir,
    parse_sidecar,
    sha256_file,
    sidecar_yaml,
    source_is_stale,
    temp_path_for,
    write_atomic,
)

Status = Literal["converted", "skipped", "failed", "would convert"]


@dataclass
class ConvertOptions:
    force: bool = False
    dry_run: bool = False
    metadata_only: bool = False
    recursive: bool = True
    verbose: bool = False


@dataclass
class Target:
    """One checkpoint to convert and the experiment it belongs to."""

    found: FoundCheckpoint
    exp_root: Path
    exp_name: str


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
    found = classify(path) or FoundCheckpoint(path, None, "not a checkpoint (unrecognised content)")
    exp_root = experiment_of_file(path)
    return [Target(found, exp_root, exp_root.name)], []


def targets_for_exp_dir(exp_dir: Path, recursive: bool) -> tuple[list[Target], list[str]]:
    found = discover([exp_dir], recursive)
    return [Target(f, exp_dir, exp_dir.name) for f in found.checkpoints], found.warnings


def targets_for_outputs_dir(outputs_dir: Path, recursive: bool) -> tuple[list[Target], list[str]]:
    found = discover([outputs_dir], recursive)
    targets = []
    for item in found.checkpoints:
        relative = item.path.relative_to(outputs_dir)
        exp_root = outputs_dir / relative.parts[0] if len(relative.parts) > 1 else outputs_dir
        targets.append(Target(item, exp_root, exp_root.name))
    return targets, found.warnings


# --- converting ---------------------------------------------------------------------------


def convert(
    targets: Iterable[Target],
    options: ConvertOptions,
    on_item: Callable[[ItemResult], None] | None = None,
) -> ConvertReport:
    report = ConvertReport()
    targets = list(targets)
    clashes = _name_clashes(targets)
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


def _name_clashes(targets: list[Target]) -> dict[Path, Path]:
    groups: dict[Path, list[Path]] = defaultdict(list)
    for target in targets:
        groups[outputs_for(target.found.path)[1]].append(target.found.path)
    clashes: dict[Path, Path] = {}
    for paths in groups.values():
        if len(paths) > 1:
            for path in paths:
                clashes[path] = next(p for p in paths if p != path)
    return clashes


def _convert_one(target: Target, options: ConvertOptions) -> ItemResult:
    source = target.found.path
    weights_path, sidecar_path = outputs_for(source)
    if target.found.problem is not None:
        return ItemResult(source, "failed", target.found.problem)
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
        return ItemResult(source, "failed", exc.message)
    except OSError as exc:
        return ItemResult(source, "failed", _os_reason(exc))
    except Exception as exc:  # a bug must not stop the batch; say so plainly
        return ItemResult(source, "failed", f"internal error ({type(exc).__name__}: {exc}); "
                          "please report it", detail=traceback.format_exc())


def _os_reason(exc: OSError) -> str:
    import errno

    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"no space left on device{where}: free space or use --output-dir elsewhere"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where}: the folder is not writable"
    if exc.errno == errno.ENOENT:
        return f"file vanished during conversion{where}"
    return f"{exc.strerror or exc}{where}"


def _freshness(sidecar_path: Path, source: Path, metadata_only: bool,
               refresh: bool) -> Literal["fresh", "touched", "stale"]:
    """fresh: outputs match the source; touched: only the source's mtime moved (a copy
    without -p, a ``touch``) and its sha256 still matches, so the sidecar's mtime is
    refreshed in place of a reconversion; stale: convert again."""
    try:
        sidecar = parse_sidecar(sidecar_path)
    except CkptError:
        return "stale"
    if sidecar.weights_path is None and not metadata_only:
        return "stale"
    if sidecar.weights_path is not None and not (sidecar_path.parent / sidecar.weights_path).exists():
        return "stale"
    if source_is_stale(sidecar, source) is None:
        return "fresh"
    info = source.stat()
    if info.st_size != sidecar.source.size_bytes or sidecar.source.sha256 is None:
        return "stale"
    if not refresh or sha256_file(source) != sidecar.source.sha256:
        return "stale"
    refreshed = sidecar.model_copy(update={"source": sidecar.source.model_copy(
        update={"mtime": info.st_mtime})})
    write_atomic(sidecar_path, sidecar_yaml(refreshed))
    return "touched"


def _write_outputs(target: Target, weights_path: Path, sidecar_path: Path,
                   options: ConvertOptions) -> ItemResult:
    source = target.found.path
    stat_before = source.stat()
    checkpoint = open_torch(source)
    g = Gathered()
    read_scalar = _scalar_reader(checkpoint)
    gather_from_checkpoint(checkpoint.obj, source, g, read_scalar)
    gather_from_logs(source, target.exp_root, g)
    gather_from_hydra(source, target.exp_root, g)
    gather_from_filename(source, stem_of(source), g)

    state_key, state_dict = find_state_dict(checkpoint.obj)
    g.offer("contents.model_weights", state_dict is not None, "checkpoint")
    if state_dict is None and not options.metadata_only:
        bad = unsupported_tensors(checkpoint.obj) or unsupported_tensors(
            _first_mapping(checkpoint.obj, STATE_DICT_KEYS))
        if bad:
            raise UnsupportedCheckpointError("cannot convert tensors: " + ", ".join(bad[:5]))
        raise UnsupportedCheckpointError(
            "no model state dict found (looked for " + ", ".join(STATE_DICT_KEYS)
            + " or a bare name->tensor mapping); use --metadata-only for a sidecar alone")

    source_hash: dict[str, Any] = {}
    hasher = threading.Thread(target=_hash_into, args=(source, source_hash), daemon=True)
    hasher.start()  # hashing the source overlaps writing the weights (hashlib drops the GIL)
    weights_info = None
    weights_tmp = temp_path_for(weights_path)
    try:
        if state_dict is not None and not options.metadata_only:
            weights_info = _write_weights(checkpoint, state_dict, state_key, weights_tmp)
        hasher.join()
        if "error" in source_hash:
            raise source_hash["error"]
        if source.stat().st_mtime != stat_before.st_mtime or source.stat().st_size != stat_before.st_size:
            raise CkptError("source changed while it was being converted; run again")
        sidecar = _build_sidecar(target, checkpoint, g, stat_before, source_hash["sha256"],
                                 weights_path if weights_info else None, sidecar_path, weights_info)
        if weights_info is not None:
            os.replace(weights_tmp, weights_path)
            fsync_dir(weights_path.parent)
        write_atomic(sidecar_path, sidecar_yaml(sidecar))  # last: it vouches for the weights
    finally:
        weights_tmp.unlink(missing_ok=True)
    return ItemResult(source, "converted", None, weights_path if weights_info else None, sidecar_path)


def _hash_into(path: Path, out: dict[str, Any]) -> None:
    try:
        out["sha256"] = sha256_file(path)
    except OSError as exc:
        out["error"] = exc


def _first_mapping(obj: Any, keys: tuple[str, ...]) -> Any:
    from ..metadata import as_mapping

    mapping = as_mapping(obj)
    for key in keys:
        if mapping is not None and key in mapping:
            return mapping[key]
    return None


def _scalar_reader(checkpoint: TorchFile) -> Callable[[LazyTensor], Any]:
    def read(tensor: LazyTensor) -> Any:
        try:
            return tensor.read(checkpoint, checkpoint.big_endian).reshape(-1)[0].item()
        except CkptError:
            return None

    return read


def _write_weights(checkpoint: TorchFile, state_dict: Any, state_key: str | None,
                   tmp: Path) -> dict[str, Any]:
    checked: set[str] = set()

    def loader(tensor: LazyTensor) -> Callable[[], Any]:
        def load() -> Any:
            ref: StorageRef = tensor.storage
            if ref.key not in checked:
                raw = checkpoint.storage_bytes(ref)
                checkpoint.check_storage(ref, raw)
                checked.add(ref.key)
                del raw
            return tensor.read(checkpoint, checkpoint.big_endian)

        return load

    dtypes: dict[str, int] = defaultdict(int)
    items = []
    for name, tensor in state_dict.items():
        dtypes[tensor.dtype] += 1
        items.append(TensorToWrite(str(name), tensor.dtype, tensor.shape, tensor.view_key, loader(tensor)))
    summary = write_tensors(tmp, items, {"source_format": checkpoint.format,
                                         "writer": f"ckptctl {__version__}"})
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    return {
        "layout": LAYOUT, "layout_version": LAYOUT_VERSION, "size_bytes": tmp.stat().st_size,
        "sha256": sha256_file(tmp), "tensor_count": summary.tensor_count,
        "parameter_count": summary.parameter_count, "dtypes": dict(sorted(dtypes.items())),
        "state_dict_key": state_key,
    }


def _build_sidecar(target: Target, checkpoint: TorchFile, g: Gathered, stat: os.stat_result,
                   source_sha256: str, weights_path: Path | None, sidecar_path: Path,
                   weights_info: dict[str, Any] | None) -> Sidecar:
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
        "source": {"format": checkpoint.format, "size_bytes": stat.st_size,
                   "mtime": stat.st_mtime, "sha256": source_sha256},
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
