"""Keras 3's own files: ``x.weights.h5`` (``save_weights``) and ``x.keras`` (``model.save``).

Keras 3 already loads them, so they are never rewritten: ``convert`` writes a sidecar that
describes the file (for ``.weights.h5`` the source *is* the weights file).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from pathlib import Path
from typing import ClassVar

from ..budgets import read_json_member
from ..errors import CorruptCheckpointError
from ..metadata import Gathered
from ..readers.keras_files import keras_zip_kind
from ..safeio import open_regular
from . import base
from .keras2_h5 import H5_SUFFIXES, _plain_enough, probe_h5_kind
from .keras_weights import KERAS3_LAYOUT, KERAS3_LAYOUT_VERSION

KERAS_SUFFIX = ".keras"


class Keras3Native(base.SourceFormat):
    ids = ("keras3-weights-h5", "keras3-keras")
    promised_suffixes: ClassVar[tuple[str, ...]] = (KERAS_SUFFIX,)
    writes_weights: ClassVar[bool] = False

    def sniff(self, probe: base.Probe) -> base.Sniffed:
        name = probe.name
        if name.endswith(KERAS_SUFFIX):
            unreadable = probe.unreadable()
            if unreadable is not None:
                return unreadable
            kind = keras_zip_kind(probe.path)
            if kind == "keras3-keras":
                return base.FoundCheckpoint(probe.path, "keras3-keras")
            if kind == "broken-keras":
                return base.FoundCheckpoint(probe.path, None, "damaged Keras .keras archive (truncated?)")
            return base.NOT_A_SOURCE  # a zip named .keras that is not Keras'
        if name.endswith(H5_SUFFIXES) and probe.unreadable() is None \
                and probe_h5_kind(probe) == "keras3-weights-h5":
            return base.FoundCheckpoint(probe.path, "keras3-weights-h5")
        return None

    def open(self, path: Path, fmt: base.FormatId) -> base.OpenedSource:
        return OpenedKeras3Native(path, fmt)


class OpenedKeras3Native(base.OpenedSource):
    def __init__(self, path: Path, fmt: base.FormatId) -> None:
        self.path = path
        self.format = fmt
        self.files = [path]

    def read_metadata(self, g: Gathered) -> None:
        g.offer("training.framework", "keras", "checkpoint")
        if self.format == "keras3-keras":
            _archive_metadata(self.path, g)
        g.offer("contents.model_weights", True, "checkpoint")

    def plan_weights(self, g: Gathered, options: base.WeightsOptions) -> base.WeightsPlan:
        if self.format != "keras3-weights-h5":
            return base.WeightsPlan()  # a .keras archive: described by its sidecar alone
        return base.WeightsPlan(native=self.path,
                           describe_native=lambda: describe_native_weights(self.path))


def _archive_metadata(path: Path, g: Gathered) -> None:
    """What ``metadata.json`` and ``config.json`` say. Both are budgeted
    (``budgets.read_json_member``): a member that inflates from 3 MB to 3 GiB, or nests
    ``[`` 100,000 deep, is refused in one line before it is expanded."""
    import zipfile

    try:
        with open_regular(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
            names = set(archive.namelist())
            meta = read_json_member(archive, "metadata.json") if "metadata.json" in names else {}
            config = read_json_member(archive, "config.json") if "config.json" in names else {}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError, NotImplementedError,
            RuntimeError, zlib.error) as exc:
        raise CorruptCheckpointError(f"unreadable .keras archive ({str(exc)[:120]})") from exc
    if isinstance(meta, dict):
        g.offer("training.framework_version", _text(meta.get("keras_version")),
                "checkpoint:metadata.json")
        g.offer("checkpointing.saved_at_text", _text(meta.get("date_saved")),
                "checkpoint:metadata.json")
    if isinstance(config, dict):
        g.offer("model.architecture", _text(config.get("class_name")), "checkpoint:config.json")
        compile_config = config.get("compile_config")
        if isinstance(compile_config, dict):
            if _plain_enough(compile_config):
                g.offer("model.training_config", compile_config, "checkpoint:config.json")
            else:
                g.notes.append("compile_config too large or deeply nested; not copied")


def _text(value: object) -> str | None:
    """A short string field, or None for anything else a hostile JSON puts there."""
    return value if isinstance(value, str) and len(value) <= 1000 else None


def describe_native_weights(path: Path) -> base.WrittenWeights:
    """The ``weights`` section for a Keras 3 ``.weights.h5`` that is its own weights file.

    Its sidecar vouches for the file Keras will load: it must be ``confine``d like any HDF5
    ckptctl reads (no other file's bytes, nothing declared that is not stored)."""
    from ..readers.h5safe import H5_ERRORS, confine, dataset_paths, open_h5

    count = elements = 0
    dtypes: dict[str, int] = defaultdict(int)
    try:
        with open_h5(path) as f:
            confine(f)
            for name in dataset_paths(f):  # not visititems: HDF5 recurses (deep files crash)
                obj = f[name]
                count += 1
                elements += int(obj.size or 0)
                dtypes[str(obj.dtype)] += 1
    except H5_ERRORS as exc:
        raise CorruptCheckpointError(f"damaged HDF5 file ({str(exc)[:120]})", path) from exc
    return base.WrittenWeights(KERAS3_LAYOUT, KERAS3_LAYOUT_VERSION, count, elements,
                          dict(sorted(dtypes.items())))


KERAS3_NATIVE = Keras3Native()
