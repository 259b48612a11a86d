"""Source formats: one module per format behind one protocol (``base.SourceFormat``), and
the registry the operations iterate. Adding a format means adding a module here, an entry
in ``REGISTRY`` and its ids in ``base.FormatId``; nothing in ``ckptctl.ops`` changes.

``classify(path)`` asks each entry in order whether a file is one of its checkpoints; the
first to claim it (as a checkpoint, or as a non-source part of one) decides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from ..walk import LOCK_SUFFIX, SIDECAR_SUFFIX, TEMP_MARKER
from .base import (
    FORMAT_IDS,
    NOT_A_SOURCE,
    FormatId,
    FoundCheckpoint,
    OpenedSource,
    Probe,
    SourceFormat,
    WeightsOptions,
    WeightsPlan,
    WrittenWeights,
)
from .huggingface import HF_SHARDED, HF_TRAINER
from .keras2_h5 import KERAS2_H5
from .keras3_native import KERAS3_NATIVE
from .pytorch import TORCH_LEGACY, TORCH_ZIP
from .safetensors import SAFETENSORS
from .tf_index import TF_INDEX

#: In asking order: a Trainer folder first (it claims every file in it), then formats
#: recognised by name (TF shards, HDF5, .keras, HF shard indexes and their shards), then by
#: content (safetensors, torch).
REGISTRY: Final[tuple[SourceFormat, ...]] = (HF_TRAINER, TF_INDEX, KERAS2_H5, KERAS3_NATIVE,
                                             HF_SHARDED, SAFETENSORS, TORCH_ZIP, TORCH_LEGACY)

_BY_ID: Final[dict[str, SourceFormat]] = {fmt: entry for entry in REGISTRY for fmt in entry.ids}
#: extensions that promise a checkpoint: a file named so that no format claims is reported
PROMISED_SUFFIXES: Final[tuple[str, ...]] = tuple(
    dict.fromkeys(s for entry in REGISTRY for s in entry.promised_suffixes))


def _check_registry() -> None:
    """Every id has exactly one entry: checked once, at import."""
    claimed = [fmt for entry in REGISTRY for fmt in entry.ids]
    if sorted(claimed) != sorted(FORMAT_IDS):
        raise ImportError(f"format registry {sorted(claimed)} does not match FormatId {sorted(FORMAT_IDS)}")


_check_registry()


def format_for(fmt: FormatId | str) -> SourceFormat:
    """The entry for a format id (KeyError for an id no entry has)."""
    return _BY_ID[fmt]


def is_known_format(fmt: str) -> bool:
    return fmt in _BY_ID


def source_files(path: Path, fmt: FormatId | str | None) -> list[Path]:
    """The files of the checkpoint ``path`` in format ``fmt`` (just ``path`` when unknown)."""
    entry = _BY_ID.get(fmt) if fmt is not None else None
    return entry.files(path) if entry is not None else [path]


def is_output_or_temp(name: str) -> bool:
    return name.endswith((SIDECAR_SUFFIX, LOCK_SUFFIX)) or TEMP_MARKER in name


def classify(path: Path) -> FoundCheckpoint | None:
    """What ``path`` is: a checkpoint, a broken would-be checkpoint, or nothing (None).

    A multi-file checkpoint is found through one of its files and named by the entry (a
    TF-index checkpoint by its prefix); its other files are never sources themselves.
    """
    if is_output_or_temp(path.name):
        return None
    probe = Probe(path)
    for entry in REGISTRY:
        try:
            verdict = entry.sniff(probe)
        except OSError as exc:  # vanished or unreadable while being looked at
            return FoundCheckpoint(path, None, f"cannot read ({exc.strerror})", "os")
        if verdict is NOT_A_SOURCE:
            return None
        if isinstance(verdict, FoundCheckpoint):
            return verdict
    if not path.name.endswith(PROMISED_SUFFIXES):
        return None
    unreadable = probe.unreadable()
    if unreadable is not None:
        return unreadable
    if not probe.head():
        return FoundCheckpoint(path, None, "empty file", "unrecognised")
    return FoundCheckpoint(path, None, "not a checkpoint (unrecognised content)", "unrecognised")


def classify_target(path: Path) -> FoundCheckpoint | None:
    """Like ``classify`` for a path a user named: also a TF prefix, which is not a file."""
    index = path.with_name(path.name + ".index")
    if not path.exists() and index.exists():
        return classify(index)
    return classify(path)


__all__ = [
    "FORMAT_IDS", "NOT_A_SOURCE", "PROMISED_SUFFIXES", "REGISTRY", "FormatId", "FoundCheckpoint",
    "OpenedSource", "Probe", "SourceFormat", "WeightsOptions", "WeightsPlan", "WrittenWeights",
    "classify", "classify_target", "format_for", "is_known_format", "source_files",
]
