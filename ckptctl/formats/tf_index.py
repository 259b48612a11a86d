"""TensorFlow "TF-index" checkpoints (TensorBundle): ``prefix.index`` plus its
``prefix.data-NNNNN-of-NNNNN`` shards, named by the prefix; read without TensorFlow.

Keras models inside (Keras 2 ``save_weights("w.ckpt")``, Keras 3 models in
``tf.train.Checkpoint``/``CheckpointManager``) become Keras 3 ``.weights.h5`` when the object
graph maps onto that layout, else every model variable in ``ckptctl-tensors`` (no slots).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..metadata import Gathered
from ..walk import glob_escape
from . import base
from .keras_weights import keras3_or_fallback

if TYPE_CHECKING:
    from ..layouts.ckptctl_tensors import TensorToWrite
    from ..layouts.keras3 import KLayer
    from ..readers.tf_index import TFIndexCheckpoint

INDEX_SUFFIX = ".index"
_SHARD = re.compile(r"^(?P<prefix>.+)\.data-\d{5}-of-\d{5}$")
_OPTIMIZER_KEY = re.compile(r"(^|/)(optimizer|\.OPTIMIZER_SLOT)(/|$)")
#: CheckpointManager sub-folders that name a checkpoint's role
_ROLE_FOLDERS = ("last", "best", "latest")


class TFIndex(base.SourceFormat):
    ids = ("tf-index",)

    def sniff(self, probe: base.Probe) -> base.Sniffed:
        name = probe.name
        if name.endswith(INDEX_SUFFIX):
            prefix = probe.path.with_name(name[: -len(INDEX_SUFFIX)])
            from ..readers.tf_index import is_tf_index  # only for a file named *.index

            if is_tf_index(probe.path):
                return base.FoundCheckpoint(prefix, "tf-index")
            if any(prefix.parent.glob(glob_escape(prefix.name) + ".data-*-of-*")):
                return base.FoundCheckpoint(prefix, "tf-index", f"index file {name} is damaged (truncated?)")
            return None
        shard = _SHARD.match(name)
        if shard is None:
            return None
        prefix = probe.path.with_name(shard.group("prefix"))
        index = prefix.with_name(prefix.name + INDEX_SUFFIX)
        if index.exists():
            return base.NOT_A_SOURCE  # a shard is found through its index
        return base.FoundCheckpoint(prefix, "tf-index", f"index file {index.name} is missing")

    def files(self, path: Path) -> list[Path]:
        index = path.with_name(path.name + INDEX_SUFFIX)
        shards = sorted(path.parent.glob(glob_escape(path.name) + ".data-*-of-*"))
        return [index, *shards]

    def check_structure(self, path: Path) -> None:
        from ..readers.tf_index import open_tf_index

        open_tf_index(path)

    def open(self, path: Path, fmt: base.FormatId) -> base.OpenedSource:
        from ..readers.tf_index import open_tf_index

        return OpenedTFIndex(path, open_tf_index(path), self.files(path))


class OpenedTFIndex(base.OpenedSource):
    format: base.FormatId = "tf-index"

    def __init__(self, prefix: Path, ckpt: TFIndexCheckpoint, files: list[Path]) -> None:
        self.prefix = prefix
        self.ckpt = ckpt
        self.files = files

    def read_metadata(self, g: Gathered) -> None:
        from ..readers.keras_model import scalar_variables

        src = "checkpoint"
        g.offer("training.framework", "tensorflow", src)
        for key, value in scalar_variables(self.ckpt).items():
            if key == "epoch":
                g.offer("training.epoch", int(value), src)
            elif key in ("global_step", "optimizer_iterations"):
                g.offer("training.global_step", int(value), src)
            elif key == "best_metric" and isinstance(value, float):
                g.offer_metric("best_metric", value, src)
            elif key == "best_epoch":
                g.offer("checkpointing.best_epoch", int(value), src)
            elif key == "save_counter":
                g.offer("checkpointing.save_counter", int(value), src)
        keys = list(self.ckpt.entries)
        g.offer("contents.keys", keys[:200], src)
        g.offer("contents.optimizer_state", any(_OPTIMIZER_KEY.search(k) for k in keys), src)
        g.offer("contents.lr_scheduler_state", False, src)
        g.offer("contents.rng_state", any("rng" in k.lower() for k in keys), src)
        self._manager_metadata(g)

    def _manager_metadata(self, g: Gathered) -> None:
        """What a CheckpointManager folder says: role, save time, latest, run name."""
        prefix = self.prefix
        folder_name = prefix.absolute().parent.name
        role = folder_name if folder_name in _ROLE_FOLDERS else None
        if role:
            g.offer("checkpointing.role", role, "folder name")
        from ..readers.tf_index import read_state_file

        state = read_state_file(prefix.parent)
        if state:
            paths = [Path(p).name for p in state.get("all_model_checkpoint_paths", [])]
            stamps = state.get("all_model_checkpoint_timestamps", [])
            if prefix.name in paths and len(stamps) == len(paths):
                g.offer("checkpointing.saved_at", float(stamps[paths.index(prefix.name)]),
                        "checkpoint state file")
            g.offer("checkpointing.is_latest",
                    Path(state.get("model_checkpoint_path") or "").name == prefix.name,
                    "checkpoint state file")
        absolute = prefix.absolute()
        run_folder = absolute.parent.parent if role else absolute.parent
        if run_folder.name:
            g.offer("model.run_name", run_folder.name, "folder name")

    def plan_weights(self, g: Gathered, options: base.WeightsOptions) -> base.WeightsPlan:
        from ..layouts.keras3 import Unmappable
        from ..readers.keras_model import keras_model_from_tf

        model: KLayer | None
        try:
            model, why_not = keras_model_from_tf(self.ckpt)
        except Unmappable as exc:  # e.g. an RNN cell: fall back below
            model, why_not = None, exc.message
        return keras3_or_fallback(self.format, g, model, why_not, self._model_variables, options)

    def _model_variables(self) -> list[TensorToWrite]:
        """The model's variables by object-graph reachability (Keras 3 may key trainable
        weights under optimizer/_trainable_variables), named by their full names."""
        from ..layouts.ckptctl_tensors import TensorToWrite
        from ..readers.keras_model import model_variable_keys
        from ..readers.tensor import STORAGE_NUMPY

        ckpt = self.ckpt
        chosen = model_variable_keys(ckpt)
        if chosen is None:
            chosen = [(name, name) for name in ckpt.entries
                      if name != "_CHECKPOINTABLE_OBJECT_GRAPH" and not _OPTIMIZER_KEY.search(name)
                      and not name.startswith("save_counter")]
        items, used = [], set()
        for name, key in chosen:
            entry = ckpt.entries.get(key)
            if entry is None or entry.dtype not in STORAGE_NUMPY:
                continue
            label = name if name not in used else key
            used.add(label)
            items.append(TensorToWrite(label, entry.dtype, entry.shape, None,
                                       functools.partial(ckpt.read, key)))
        return items


TF_INDEX = TFIndex()
