"""Finding checkpoints: walk folders safely and recognise files by content, not extension."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .readers.keras_files import HDF5_MAGIC, h5_kind, keras_zip_kind
from .readers.torch_files import ZIP_ERRORS, sniff_torch, torch_zip_prefix
from .sources import glob_escape
from .walk import (  # noqa: F401 - re-exported: the names every command uses
    LOCK_SUFFIX,
    SIDECAR_SUFFIX,
    TEMP_MARKER,
    WEIGHTS_SUFFIX,
    find_sidecars,
    iter_files,
)

#: Extensions that promise a torch checkpoint: such a file that is not one is *reported*.
SOURCE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")
#: Keras HDF5 sources (legacy ones are converted; Keras 3 ones only described).
H5_EXTENSIONS = (".h5", ".hdf5")
#: Formats whose files are never rewritten: ckptctl writes a sidecar only.
NATIVE_FORMATS = frozenset({"keras3-weights-h5", "keras3-keras"})
_TF_SHARD = re.compile(r"^(?P<prefix>.+)\.data-\d{5}-of-\d{5}$")


@dataclass
class FoundCheckpoint:
    path: Path
    format: str | None
    #: why a file that looks like a checkpoint cannot be read (None when it looks fine)
    problem: str | None = None


@dataclass
class Discovery:
    checkpoints: list[FoundCheckpoint] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def stem_of(path: Path) -> str:
    """``best.ckpt`` -> ``best``; ``model.ckpt`` (a TF prefix) -> ``model``; ``x.weights.h5``
    -> ``x``; ``x.keras`` keeps its name (``x.keras.metadata.yaml``: no clash with ``x.weights.h5``)."""
    name = path.name
    for ext in (WEIGHTS_SUFFIX, *SOURCE_EXTENSIONS, *H5_EXTENSIONS):
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def outputs_for(source: Path, output_root: Path | None = None, source_root: Path | None = None) -> tuple[Path, Path]:
    """(weights path, sidecar path) for a source checkpoint: next to it, by default."""
    folder = source.parent
    if output_root is not None and source_root is not None:
        folder = output_root / source.parent.relative_to(source_root)
    stem = stem_of(source)
    return folder / f"{stem}{WEIGHTS_SUFFIX}", folder / f"{stem}{SIDECAR_SUFFIX}"


def is_output_or_temp(name: str) -> bool:
    return name.endswith((SIDECAR_SUFFIX, LOCK_SUFFIX)) or TEMP_MARKER in name


def classify(path: Path) -> FoundCheckpoint | None:
    """What ``path`` is: a checkpoint, a broken would-be checkpoint, or nothing (None).

    A TF-index checkpoint is found through its ``prefix.index`` and named by its prefix; its
    data shards and the ``checkpoint`` state file are never sources themselves.
    """
    name = path.name
    if is_output_or_temp(name):
        return None
    if name.endswith(".index"):
        from .readers.tf_index import is_tf_index

        prefix = path.with_name(name[: -len(".index")])
        if is_tf_index(path):
            return FoundCheckpoint(prefix, "tf-index")
        if any(prefix.parent.glob(glob_escape(prefix.name) + ".data-*-of-*")):
            return FoundCheckpoint(prefix, "tf-index", f"index file {name} is damaged (truncated?)")
        return None
    shard = _TF_SHARD.match(name)
    if shard:
        prefix = path.with_name(shard.group("prefix"))
        index = prefix.with_name(prefix.name + ".index")
        return None if index.exists() else FoundCheckpoint(prefix, "tf-index", f"index file {index.name} is missing")
    if name.endswith((*H5_EXTENSIONS, ".keras")):
        return _classify_keras(path, name)
    promised = name.endswith(SOURCE_EXTENSIONS)
    try:
        with open(path, "rb") as handle:
            head = handle.read(32)
    except OSError as exc:
        return FoundCheckpoint(path, None, f"cannot read ({exc.strerror})") if promised else None
    kind = sniff_torch(head)
    if kind == "torch-legacy":
        return FoundCheckpoint(path, "torch-legacy")
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                if torch_zip_prefix(archive.namelist()) is not None:
                    return FoundCheckpoint(path, "torch-zip")
        except ZIP_ERRORS:
            return FoundCheckpoint(path, "torch-zip", "damaged zip archive (truncated?)") if promised else None
        return FoundCheckpoint(path, None, "zip archive without torch data") if promised else None
    if not promised:
        return None
    if not head:
        return FoundCheckpoint(path, None, "empty file")
    return FoundCheckpoint(path, None, "not a checkpoint (unrecognised content)")


def _classify_keras(path: Path, name: str) -> FoundCheckpoint | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        return FoundCheckpoint(path, None, f"cannot read ({exc.strerror})")
    if name.endswith(".keras"):
        kind = keras_zip_kind(path)
    elif head == HDF5_MAGIC:
        kind = h5_kind(path)
    else:
        kind = "broken-h5"
    if kind in (None, "ckptctl-output"):
        return None
    if kind.startswith("broken"):
        what = "Keras .keras archive" if name.endswith(".keras") else "HDF5 file"
        return FoundCheckpoint(path, None, f"damaged {what} (truncated?)")
    return FoundCheckpoint(path, kind)


def classify_target(path: Path) -> FoundCheckpoint | None:
    """Like ``classify`` for a path a user named: also a TF prefix, which is not a file."""
    if not path.exists() and path.with_name(path.name + ".index").exists():
        return classify(path.with_name(path.name + ".index"))
    return classify(path)


def discover(roots: Iterable[Path], recursive: bool = True) -> Discovery:
    result = Discovery()
    seen: set[Path] = set()
    for path in iter_files(roots, recursive, result.warnings):
        found = classify(path)
        if found is not None and found.path not in seen:  # shards of one prefix: once
            seen.add(found.path)
            result.checkpoints.append(found)
    return result
