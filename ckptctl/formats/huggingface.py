"""Hugging Face layouts: sharded weight sets and ``Trainer`` checkpoint folders.

* **Sharded sets** (``save_pretrained(max_shard_size=...)``): ``model.safetensors.index.json``
  (or ``pytorch_model.bin.index.json``) and the shards its ``weight_map`` names
  (``model-00001-of-00003.safetensors`` …) are **one** checkpoint, named by the index
  (outputs ``model.weights.h5`` / ``pytorch_model.weights.h5``). Every shard is listed in
  ``source.files`` and hashed; every tensor must sit in the shard the index says, and every
  name the index lists must be found. ``.bin`` shards are read with the restricted
  unpickler; ties inside a shard are kept.
* **Trainer checkpoints** (``checkpoint-500/`` with ``trainer_state.json`` and model weights:
  ``model.safetensors``, ``pytorch_model.bin`` or a sharded set): **one** checkpoint named by
  the folder; outputs ``checkpoint-500.weights.h5`` and ``checkpoint-500.metadata.yaml``
  next to the folder. ``trainer_state.json`` gives the step, the epoch (when whole), the
  metrics logged at that step and the best checkpoint so far; ``training_args.bin`` (a
  pickle of ``TrainingArguments``) is read by the restricted unpickler as inert data: the
  metric the Trainer selected checkpoints by, its direction and a few hyper-parameters.
  ``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth`` are recorded as present (the
  checkpoint is resumable) and hashed with the rest, never loaded.

``config.json`` next to any of these (and next to a plain ``model.safetensors``) gives the
architecture and the model's configuration.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import CkptError, CorruptCheckpointError, UnsupportedCheckpointError
from ..metadata import Gathered
from ..readers.jsonfile import read_json_file
from ..readers.safetensors_file import ShardIndex, read_header, read_shard_index
from ..walk import LOCK_SUFFIX, SIDECAR_SUFFIX, TEMP_MARKER
from . import base
from .safetensors import (
    SafetensorsTensors,
    offer_header_metadata,
    torch_family_plan,
    write_tensor_items,
)

if TYPE_CHECKING:
    from ..layouts.ckptctl_tensors import TensorToWrite
    from ..readers.torch_files import TorchFile

SAFETENSORS_INDEX_SUFFIX = ".safetensors.index.json"
BIN_INDEX_SUFFIX = ".bin.index.json"
_SHARD = re.compile(r"^(?P<prefix>.+)-\d{5}-of-\d{5}\.(?P<kind>safetensors|bin)$")
TRAINER_STATE = "trainer_state.json"
TRAINING_ARGS = "training_args.bin"
#: model weights a Trainer folder may hold, in the order they are looked for
TRAINER_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json", "adapter_model.safetensors",
                   "adapter_model.bin")
#: JSON side files: small (a Trainer's log history of a long run is a few MiB)
MAX_JSON_BYTES = 32 << 20
#: ``TrainingArguments`` fields recorded as hyper-parameters (plain values only)
_ARGS_KEPT = ("learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
              "gradient_accumulation_steps", "num_train_epochs", "max_steps", "weight_decay",
              "warmup_steps", "warmup_ratio", "lr_scheduler_type", "optim", "seed", "fp16",
              "bf16", "save_total_limit", "metric_for_best_model", "greater_is_better",
              "load_best_model_at_end", "eval_strategy", "save_strategy", "eval_steps",
              "save_steps", "logging_steps", "run_name")


# --- shared: config.json -------------------------------------------------------------------

def offer_hf_config(folder: Path, g: Gathered) -> None:
    """``config.json`` of ``transformers`` (``architectures``, ``model_type``, versions)."""
    path = folder / "config.json"
    try:
        if not _plain_file(path):  # a symlink could name a file outside the tree
            return
        config = read_json_file(path, max_bytes=4 << 20, what="config.json")
    except (CkptError, OSError) as exc:
        g.notes.append(f"{path}: not read ({getattr(exc, 'message', exc)})")
        return
    if not isinstance(config, dict) or not any(k in config for k in ("architectures", "model_type")):
        return  # some other tool's config.json
    source = "config.json"
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        g.offer("model.architecture", architectures[0], source)
    elif isinstance(config.get("model_type"), str):
        g.offer("model.architecture", config["model_type"], source)
    name = config.get("_name_or_path")
    if isinstance(name, str) and name:
        g.offer("model.name", name, source)
    if isinstance(config.get("transformers_version"), str):
        g.offer("training.framework", "transformers", source)
        g.offer("training.framework_version", config["transformers_version"], source)
    g.offer("model.config", _plain_json(config), source)


def _plain_json(value: Any, depth: int = 0) -> Any:
    """JSON values as the sidecar stores them (non-finite floats as text, depth capped)."""
    if depth > 16:
        return "<nested too deeply>"
    if isinstance(value, dict):
        return {str(k): _plain_json(v, depth + 1) for k, v in list(value.items())[:500]}
    if isinstance(value, list):
        return [_plain_json(v, depth + 1) for v in value[:500]]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# --- sharded sets ----------------------------------------------------------------------------

def index_kind(name: str) -> base.FormatId | None:
    if name.endswith(SAFETENSORS_INDEX_SUFFIX) and len(name) > len(SAFETENSORS_INDEX_SUFFIX):
        return "safetensors-sharded"
    if name.endswith(BIN_INDEX_SUFFIX) and len(name) > len(BIN_INDEX_SUFFIX):
        return "torch-sharded"
    return None


def _index_of_shard(path: Path) -> Path | None:
    """The index that claims shard ``path`` by its name (``model-00001-of-00002.safetensors``
    -> ``model.safetensors.index.json``), when it exists."""
    match = _SHARD.match(path.name)
    if match is None:
        return None
    index = path.with_name(f"{match['prefix']}.{match['kind']}.index.json")
    try:
        return index if index.is_file() else None
    except OSError:
        return None


def _check_shard_names(index_path: Path, shards: list[Path]) -> None:
    """Shards named ``<prefix>-0000i-of-0000n``: the index must name all n of them, and no
    shard of that set in the folder may be left out of it (a set that lost a shard's index
    entries is not complete)."""
    numbered = [m for m in (_SHARD.match(s.name) for s in shards) if m is not None]
    counts = {int(m.group(0).rsplit("-of-", 1)[1].split(".")[0]) for m in numbered}
    if len(counts) > 1:
        raise CorruptCheckpointError(f"the index names shards of sets of {sorted(counts)} files",
                                     index_path)
    if counts and len(numbered) == len(shards) and len(shards) != next(iter(counts)):
        raise CorruptCheckpointError(f"the index names {len(shards)} of the set's "
                                     f"{next(iter(counts))} shards", index_path)
    named = {s.name for s in shards}
    prefixes = {(m["prefix"], m["kind"]) for m in numbered}
    try:
        siblings = sorted(os.listdir(index_path.parent))
    except OSError:
        return
    total = f"-of-{next(iter(counts)):05d}." if counts else None
    for name in siblings:
        match = _SHARD.match(name)
        if match and (match["prefix"], match["kind"]) in prefixes and name not in named \
                and total is not None and total in name:
            raise CorruptCheckpointError(f"shard {name} is in the folder but not in the index",
                                         index_path)


class ShardedWeights:
    """A sharded set read for conversion: the index and every shard, checked against it."""

    def __init__(self, index_path: Path, fmt: base.FormatId) -> None:
        self.index_path = index_path
        self.format = fmt
        self.index: ShardIndex = read_shard_index(index_path)
        self.shards = self.index.shard_paths()
        for shard in self.shards:
            if os.path.islink(shard):
                raise CorruptCheckpointError(f"shard {shard.name} is a symlink (not followed)",
                                             index_path)
            if not shard.is_file():
                raise CorruptCheckpointError(f"shard {shard.name} named by the index is missing",
                                             index_path)
        _check_shard_names(index_path, self.shards)
        self._safetensors: list[SafetensorsTensors] = []
        self._torch: list[tuple[TorchFile, Mapping[str, Any]]] = []
        if fmt == "safetensors-sharded":
            for shard in self.shards:
                self._safetensors.append(SafetensorsTensors(shard, read_header(shard)))
            names_by_shard = [list(t.header.tensors) for t in self._safetensors]
        else:
            from ..readers.torch_files import open_torch
            from .pytorch.metadata import find_state_dict

            for shard in self.shards:
                checkpoint = open_torch(shard)
                _, state = find_state_dict(checkpoint.obj)
                if state is None:
                    raise UnsupportedCheckpointError(f"shard {shard.name} holds no state dict",
                                                     index_path)
                self._torch.append((checkpoint, state))
            names_by_shard = [[str(k) for k in state] for _, state in self._torch]
        self._check_weight_map(names_by_shard)
        self.check_total_size()

    def check_total_size(self) -> None:
        """A safetensors index's ``total_size`` is the bytes of every tensor it lists: an
        index that lost a whole shard's entries cannot match it."""
        total = self.index.total_size
        if total is None or not self._safetensors:
            return
        stored = sum(e.nbytes for t in self._safetensors for e in t.header.tensors.values())
        if stored != total:
            raise CorruptCheckpointError(
                f"the index's total_size is {total} bytes, its shards' tensors hold {stored}",
                self.index_path)

    def _check_weight_map(self, names_by_shard: list[list[str]]) -> None:
        weight_map = self.index.weight_map
        seen: set[str] = set()
        for shard, names in zip(self.shards, names_by_shard, strict=True):
            for name in names:
                if name in seen:
                    raise CorruptCheckpointError(f"tensor {name[:120]!r} is stored in two shards",
                                                 self.index_path)
                seen.add(name)
                listed = weight_map.get(name)
                if listed != shard.name:
                    where = f"in {listed}" if listed else "nowhere"
                    raise CorruptCheckpointError(
                        f"shard {shard.name} holds {name[:120]!r}, which the index places "
                        f"{where}", self.index_path)
        missing = [name for name in weight_map if name not in seen]
        if missing:
            raise CorruptCheckpointError(
                f"the index lists {len(missing)} tensor(s) no shard holds ({missing[0][:120]!r}"
                f"{', …' if len(missing) > 1 else ''})", self.index_path)

    def check_dtypes(self) -> None:
        for tensors in self._safetensors:
            tensors.check_dtypes()

    def items(self) -> list[TensorToWrite]:
        if self._safetensors:
            return [item for tensors in self._safetensors for item in tensors.items()]
        from .pytorch import torch_items

        items: list[TensorToWrite] = []
        for number, (checkpoint, state) in enumerate(self._torch):
            # ties are kept within a shard; storages of two files are never one tensor
            items.extend(torch_items(checkpoint, state, tie_scope=number))
        return items

    def offer(self, g: Gathered) -> None:
        source = self.index_path.name
        if self._safetensors:
            offer_header_metadata(self._safetensors[0].header, g, "safetensors header")
        else:
            if g.get("training.framework") is None:
                g.offer("training.framework", "pytorch", source)
            g.offer("contents.model_weights", True, source)
        g.offer("contents.keys", ["metadata", "weight_map"], source)


class HFSharded(base.SourceFormat):
    ids = ("safetensors-sharded", "torch-sharded")
    pytorch_family: ClassVar[bool] = True
    promised_suffixes: ClassVar[tuple[str, ...]] = (SAFETENSORS_INDEX_SUFFIX, BIN_INDEX_SUFFIX)

    def sniff(self, probe: base.Probe) -> base.Sniffed:
        kind = index_kind(probe.name)
        if kind is not None:
            try:
                index = read_shard_index(probe.path)
            except CkptError as exc:
                return base.FoundCheckpoint(probe.path, kind, exc.message, exc.kind)
            missing = [p.name for p in index.shard_paths() if not p.is_file()]
            if missing:
                return base.FoundCheckpoint(probe.path, kind, f"shard {missing[0]} named by the "
                                            "index is missing")
            return base.FoundCheckpoint(probe.path, kind)
        if _index_of_shard(probe.path) is not None:
            return base.NOT_A_SOURCE  # a shard is found through its index
        return None

    def files(self, path: Path) -> list[Path]:
        try:
            return [path, *read_shard_index(path).shard_paths()]
        except CkptError:
            return [path]

    def check_structure(self, path: Path) -> None:
        kind = index_kind(path.name)
        assert kind is not None
        ShardedWeights(path, kind)

    def open(self, path: Path, fmt: base.FormatId) -> base.OpenedSource:
        return OpenedSharded(ShardedWeights(path, fmt), self.files(path))


class OpenedSharded(base.OpenedSource):
    def __init__(self, weights: ShardedWeights, files: list[Path]) -> None:
        self.weights = weights
        self.format = weights.format
        self.files = files

    def read_metadata(self, g: Gathered) -> None:
        offer_hf_config(self.weights.index_path.parent, g)  # first: names the framework
        self.weights.offer(g)

    def plan_weights(self, g: Gathered, options: base.WeightsOptions) -> base.WeightsPlan:
        self.weights.check_dtypes()
        return torch_family_plan(lambda tmp, fmt: write_tensor_items(
            tmp, self.weights.items(), self.format, weights_format=fmt), options)


# --- Trainer checkpoint folders ----------------------------------------------------------------

def _plain_file(path: Path) -> bool:
    """A regular file, not a symlink (a link could name a file outside the tree)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def trainer_weights(folder: Path) -> Path | None:
    """The model weights file of a Trainer checkpoint folder (a regular file, never a
    symlink), or None."""
    for name in TRAINER_WEIGHTS:
        candidate = folder / name
        if _plain_file(candidate):
            return candidate
    return None


_CHECKPOINT_FOLDER = re.compile(r"^checkpoint-\d+$")
#: what a Trainer checkpoint holds besides its model (to resume training)
_RESUME_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")


def is_trainer_folder(folder: Path) -> bool:
    """``trainer_state.json`` with model weights, in a checkpoint folder: named
    ``checkpoint-<step>`` as the Trainer names them, or holding the optimizer, scheduler or
    RNG state a checkpoint saves. A run's output folder after ``save_model()`` and
    ``save_state()`` is not one: its weights are the best model's (with
    ``load_best_model_at_end``) while its ``trainer_state.json`` is the last step's, so its
    ``model.safetensors`` is an ordinary safetensors checkpoint, without the state's metrics."""
    try:
        if not _plain_file(folder / TRAINER_STATE) or trainer_weights(folder) is None:
            return False
        return bool(_CHECKPOINT_FOLDER.match(folder.name)) or any(
            (folder / name).is_file() for name in _RESUME_FILES)
    except OSError:
        return False


def _is_ours(name: str) -> bool:
    return name.startswith(".") or name.endswith((SIDECAR_SUFFIX, LOCK_SUFFIX)) or TEMP_MARKER in name


class HFTrainer(base.SourceFormat):
    ids = ("hf-trainer",)
    pytorch_family: ClassVar[bool] = True

    def sniff(self, probe: base.Probe) -> base.Sniffed:
        folder = probe.path.parent
        if not is_trainer_folder(folder):
            if probe.name == TRAINING_ARGS and (folder / "config.json").is_file():
                return base.NOT_A_SOURCE  # a Trainer's arguments next to a saved model
            return None
        if probe.name == TRAINER_STATE:
            return base.FoundCheckpoint(folder, "hf-trainer")
        return base.NOT_A_SOURCE  # found through trainer_state.json

    def files(self, path: Path) -> list[Path]:
        """Every regular file directly in the folder, by name (sub-folders are not part of
        it). Raises OSError when the folder is gone."""
        entries = sorted(os.scandir(path), key=lambda e: e.name)
        return [Path(e.path) for e in entries
                if not _is_ours(e.name) and e.is_file(follow_symlinks=False)]

    def check_structure(self, path: Path) -> None:
        _TrainerFolder(path)

    def open(self, path: Path, fmt: base.FormatId) -> base.OpenedSource:
        return OpenedTrainer(_TrainerFolder(path), self.files(path))


class _TrainerFolder:
    """The weights of a Trainer folder (any of ``TRAINER_WEIGHTS``) and its state."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        weights = trainer_weights(folder)
        if weights is None:
            raise CorruptCheckpointError("a Trainer checkpoint folder without model weights",
                                         folder)
        self.weights_path = weights
        self.single: SafetensorsTensors | None = None
        self.sharded: ShardedWeights | None = None
        self.torch: tuple[TorchFile, Mapping[str, Any]] | None = None
        kind = index_kind(weights.name)
        if kind is not None:
            self.sharded = ShardedWeights(weights, kind)
        elif weights.suffix == ".safetensors":
            self.single = SafetensorsTensors(weights, read_header(weights))
        else:
            from ..readers.torch_files import open_torch
            from .pytorch.metadata import find_state_dict

            checkpoint = open_torch(weights)
            _, state = find_state_dict(checkpoint.obj)
            if state is None:
                raise UnsupportedCheckpointError(f"{weights.name} holds no state dict", folder)
            self.torch = (checkpoint, state)
        self.state = _read_trainer_state(folder / TRAINER_STATE)

    def check_dtypes(self) -> None:
        if self.single is not None:
            self.single.check_dtypes()
        if self.sharded is not None:
            self.sharded.check_dtypes()

    def items(self) -> list[TensorToWrite]:
        if self.single is not None:
            return self.single.items()
        if self.sharded is not None:
            return self.sharded.items()
        from .pytorch import torch_items

        assert self.torch is not None
        return torch_items(*self.torch)


def _read_trainer_state(path: Path) -> dict[str, Any]:
    state = read_json_file(path, max_bytes=MAX_JSON_BYTES, what=TRAINER_STATE,
                           allow_constants=True)
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{TRAINER_STATE} is not a JSON object", path)
    return state


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return number if math.isfinite(number) else None


def offer_trainer_state(state: Mapping[str, Any], folder: Path, g: Gathered) -> int | None:
    """Step, epoch, the metrics logged at this checkpoint's step and the best checkpoint so
    far, from ``trainer_state.json``; returns the step."""
    source = TRAINER_STATE
    step = state.get("global_step")
    step = step if isinstance(step, int) and not isinstance(step, bool) and 0 <= step < 1 << 62 \
        else None
    named = _CHECKPOINT_FOLDER.match(folder.name)
    if step is not None and named is not None and int(folder.name.split("-")[1]) != step:
        # the Trainer names every checkpoint folder checkpoint-<global_step>: this state
        # belongs to another step (a copied file?), so none of its step's values are taken
        g.notes.append(f"{TRAINER_STATE} says step {step}, but the folder is {folder.name}: "
                       "its step, epoch and metrics were not used")
        g.conflicts.append({"field": "training.global_step",
                            "kept": int(folder.name.split("-")[1]), "kept_from": "folder name",
                            "other": step, "other_from": source})
        g.offer("training.global_step", int(folder.name.split("-")[1]), "folder name")
        return None
    g.offer("training.global_step", step, source)
    epoch = _finite_number(state.get("epoch"))
    if epoch is not None and epoch.is_integer():
        g.offer("training.epoch", int(epoch), source)
    elif epoch is not None:
        g.notes.append(f"{TRAINER_STATE}: epoch {epoch:g} is not a whole epoch (not recorded)")
    g.offer("training.framework", "transformers", source)
    history = state.get("log_history")
    if step is not None and isinstance(history, list):
        merged: dict[str, float] = {}
        for entry in history:  # later entries of the step win, as later CSV rows do
            if isinstance(entry, dict) and entry.get("step") == step:
                for key, value in entry.items():
                    number = _finite_number(value)
                    if isinstance(key, str) and key not in ("step", "epoch") and number is not None:
                        merged[key] = number
        for key, value in merged.items():
            g.offer_metric(key, value, source)
    best = _finite_number(state.get("best_metric"))
    g.offer("checkpointing.best_model_score", best, source)
    best_path = state.get("best_model_checkpoint")
    if isinstance(best_path, str) and best_path:
        g.offer("checkpointing.best_when_saved", Path(best_path).name == folder.name, source)
    return step


def offer_training_args(path: Path, g: Gathered) -> None:
    """``training_args.bin``: ``TrainingArguments`` pickled by ``torch.save``, read by the
    restricted unpickler (its class is never imported, its fields stay inert data)."""
    from ..readers.torch_files import open_torch
    from .pytorch.metadata import as_mapping, to_plain

    try:
        fields = as_mapping(open_torch(path).obj)
    except CkptError as exc:
        if exc.kind == "unsafe":  # shown even without -v: the folder carries an exploit
            g.warnings.append(f"{path.name} refused: {exc.message}; the weights were "
                              "converted without it")
        else:
            g.notes.append(f"{path.name}: not read ({exc.message})")
        return
    if fields is None:
        return
    source = TRAINING_ARGS
    kept = {name: to_plain(fields[name]) for name in _ARGS_KEPT if name in fields}
    kept = {k: v for k, v in kept.items() if isinstance(v, str | int | float | bool)}
    if kept:
        g.offer("model.hyper_parameters", kept, source)
    monitor = fields.get("metric_for_best_model")
    if isinstance(monitor, str) and monitor:
        # the Trainer compares ``eval_<name>`` unless the name already starts with it
        name = monitor if monitor.startswith("eval_") else f"eval_{monitor}"
        g.offer("checkpointing.monitor", name, source)
        greater = fields.get("greater_is_better")
        if isinstance(greater, bool):
            g.offer("checkpointing.mode", "max" if greater else "min", source)
        score = g.metrics().get(name)
        g.offer("checkpointing.score", score, source)
    # save_total_limit keeps the newest N checkpoints (and the best), not the best N: it is
    # no save_top_k; it stays in hyper_parameters as what it is.


class OpenedTrainer(base.OpenedSource):
    format: base.FormatId = "hf-trainer"

    def __init__(self, folder: _TrainerFolder, files: list[Path]) -> None:
        self.trainer = folder
        self.files = files

    def read_metadata(self, g: Gathered) -> None:
        folder = self.trainer.folder
        offer_trainer_state(self.trainer.state, folder, g)
        names = [p.name for p in self.files]
        source = "folder contents"
        g.offer("contents.keys", names, source)
        g.offer("contents.model_weights", True, source)
        g.offer("contents.optimizer_state", any(n.startswith("optimizer") for n in names), source)
        g.offer("contents.lr_scheduler_state", "scheduler.pt" in names, source)
        g.offer("contents.rng_state", any(n.startswith("rng_state") for n in names), source)
        if TRAINING_ARGS in names:
            offer_training_args(folder / TRAINING_ARGS, g)
        offer_hf_config(folder, g)
        if self.trainer.single is not None:
            offer_header_metadata(self.trainer.single.header, g, "safetensors header")

    def plan_weights(self, g: Gathered, options: base.WeightsOptions) -> base.WeightsPlan:
        self.trainer.check_dtypes()
        return torch_family_plan(lambda tmp, fmt: write_tensor_items(
            tmp, self.trainer.items(), self.format, self.trainer.weights_path.name, fmt),
            options)


HF_SHARDED = HFSharded()
HF_TRAINER = HFTrainer()
