"""Keras 2 HDF5 files: ``model.save("m.h5")`` (``keras2-h5-model``) and
``model.save_weights("w.h5")`` (``keras2-h5-weights``), recognised by their root attributes.

Weights become Keras 3 ``.weights.h5`` when the layers map onto that layout, else
``ckptctl-tensors`` with the reason. Non-Keras HDF5 files and ckptctl's own outputs are
left alone; Keras 3 ``.weights.h5`` files belong to ``keras3_native``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..errors import CorruptCheckpointError
from ..metadata import Gathered
from ..readers.keras_files import HDF5_MAGIC, h5_kind
from . import base
from .keras_weights import keras3_or_fallback

if TYPE_CHECKING:
    from ..layouts.ckptctl_tensors import TensorToWrite
    from ..layouts.keras3 import KLayer

H5_SUFFIXES = (".h5", ".hdf5")


def probe_h5_kind(probe: base.Probe) -> str | None:
    """The Keras kind of an HDF5-named file (``readers.keras_files.h5_kind``), computed once
    per file for every format that asks; "broken-h5" when it is not HDF5 at all."""

    def compute() -> str | None:
        return h5_kind(probe.path) if probe.head()[:8] == HDF5_MAGIC else "broken-h5"

    kind = probe.memo("h5-kind", compute)
    assert kind is None or isinstance(kind, str)
    return kind


#: a training_config copied into a sidecar stays small and shallow (sidecars are capped)
_MAX_CONFIG_BYTES = 64 * 1024
_MAX_CONFIG_DEPTH = 20


def _plain_enough(value: object) -> bool:
    import json

    def depth(node: object, level: int) -> int:
        if level > _MAX_CONFIG_DEPTH:
            return level
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        return max((depth(c, level + 1) for c in children), default=level)

    if depth(value, 0) > _MAX_CONFIG_DEPTH:
        return False
    return len(json.dumps(value, default=str)) <= _MAX_CONFIG_BYTES


class Keras2H5(base.SourceFormat):
    ids = ("keras2-h5-model", "keras2-h5-weights")
    promised_suffixes: ClassVar[tuple[str, ...]] = H5_SUFFIXES

    def sniff(self, probe: base.Probe) -> base.Sniffed:
        if not probe.name.endswith(H5_SUFFIXES):
            return None
        unreadable = probe.unreadable()
        if unreadable is not None:
            return unreadable
        kind = probe_h5_kind(probe)
        if kind == "keras2-h5-model":
            return base.FoundCheckpoint(probe.path, "keras2-h5-model")
        if kind == "keras2-h5-weights":
            return base.FoundCheckpoint(probe.path, "keras2-h5-weights")
        if kind == "broken-h5":
            return base.FoundCheckpoint(probe.path, None, "damaged HDF5 file (truncated?)")
        if kind == "keras3-weights-h5":
            return None  # keras3_native's
        return base.NOT_A_SOURCE  # ckptctl's own output, or HDF5 that is not Keras'

    def open(self, path: Path, fmt: base.FormatId) -> base.OpenedSource:
        from ..readers.keras_model import h5_attrs

        try:
            info = h5_attrs(path)
        except OSError as exc:
            raise CorruptCheckpointError(f"unreadable HDF5 file ({exc})") from exc
        return OpenedKeras2H5(path, fmt, info)


class OpenedKeras2H5(base.OpenedSource):
    def __init__(self, path: Path, fmt: base.FormatId, info: dict[str, object]) -> None:
        self.path = path
        self.format = fmt
        self.files = [path]
        self.info = info

    def read_metadata(self, g: Gathered) -> None:
        info = self.info
        src = "checkpoint"
        g.offer("training.framework", "keras", src)
        g.offer("training.framework_version", info.get("keras_version"), src)
        if info.get("backend"):
            g.offer("model.backend", info["backend"], src)
        training = info.get("training_config")
        if isinstance(training, dict):
            if _plain_enough(training):
                g.offer("model.training_config", training, "checkpoint:training_config")
            else:
                g.notes.append("training_config too large or deeply nested; not copied")
            g.offer("contents.optimizer_state", self.format == "keras2-h5-model", src)
        config = info.get("model_config")
        if isinstance(config, dict):
            inner = config.get("config")
            name = inner.get("name") if isinstance(inner, dict) else None
            class_name = config.get("class_name")
            g.offer("model.architecture", class_name if isinstance(class_name, str) else None,
                    "checkpoint:model_config")
            g.offer("model.name", name if isinstance(name, str) else None, "checkpoint:model_config")
        g.offer("contents.lr_scheduler_state", False, src)
        g.offer("contents.rng_state", False, src)

    def plan_weights(self, g: Gathered, options: base.WeightsOptions) -> base.WeightsPlan:
        from ..layouts.keras3 import Unmappable, all_variables
        from ..readers.keras_model import keras_model_from_h5

        model: KLayer | None
        why_not: str | None
        try:
            model, why_not = keras_model_from_h5(self.path), None
        except Unmappable as exc:
            model, why_not = None, exc.message

        def every_variable() -> list[TensorToWrite]:
            from ..layouts.ckptctl_tensors import TensorToWrite
            from ..readers.keras_model import h5_every_weight

            variables = all_variables(model) if model is not None else h5_every_weight(self.path)
            return [TensorToWrite(v.source_key.lstrip("/"), v.dtype, v.shape, None, v.load)
                    for v in variables]

        return keras3_or_fallback(self.format, g, model, why_not, every_variable, options)


KERAS2_H5 = Keras2H5()
