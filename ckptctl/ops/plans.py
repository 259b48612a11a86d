"""What converting one checkpoint means, per format: its metadata and how to write its weights.

A ``Plan`` is built from the source (read-only) and then committed by ``convert``, which owns
hashing, temporary files, renames and the sidecar. Formats:

* torch-zip / torch-legacy  -> ``ckptctl-tensors`` weights (bit-exact state dict)
* tf-index                  -> Keras 3 ``.weights.h5`` when the object graph maps onto Keras 3's
                               layout, else ``ckptctl-tensors`` (all model variables, no slots)
* keras2-h5-model/-weights  -> Keras 3 ``.weights.h5`` (else ``ckptctl-tensors``)
* keras3-weights-h5/-keras  -> never rewritten: a sidecar describing the file
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..discovery import stem_of
from ..errors import CkptError, UnsupportedCheckpointError
from ..layouts.ckptctl_tensors import (
    LAYOUT,
    LAYOUT_VERSION,
    TensorToWrite,
    verify_datasets,
    write_tensors,
)
from ..layouts.keras3 import KLayer, Unmappable, keras3_mapping, write_keras3_weights
from ..readers.tensor import LazyTensor, StorageRef
from ..readers.torch_files import TorchFile, open_torch
from ..metadata import (
    STATE_DICT_KEYS,
    Gathered,
    as_mapping,
    find_state_dict,
    gather_from_checkpoint,
    gather_from_filename,
    gather_from_hydra,
    gather_from_logs,
    unsupported_tensors,
)
from ..sources import source_files

#: key of a writer's result holding dataset -> crc32 still to verify (popped by convert)
CHECKSUMS = "_checksums"
KERAS3_LAYOUT = "keras3"
KERAS3_LAYOUT_VERSION = "1.0"
WeightsWriter = Callable[[Path], dict[str, Any]]


@dataclass
class Plan:
    format: str
    gathered: Gathered
    files: list[Path]
    write_weights: WeightsWriter | None = None
    #: Keras 3 native sources: the weights file *is* the source (described, not written)
    native_weights: Path | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class PlanOptions:
    metadata_only: bool = False
    keras_model: str | None = None


def make_plan(path: Path, fmt: str, exp_root: Path, options: PlanOptions) -> Plan:
    if fmt in ("torch-zip", "torch-legacy"):
        return _torch_plan(path, exp_root, options)
    if fmt == "tf-index":
        return _tf_plan(path, exp_root, options)
    if fmt in ("keras2-h5-model", "keras2-h5-weights"):
        return _keras_h5_plan(path, fmt, exp_root, options)
    if fmt in ("keras3-weights-h5", "keras3-keras"):
        return _native_plan(path, fmt, exp_root)
    raise UnsupportedCheckpointError(f"format {fmt} cannot be converted")


def _common_sources(path: Path, exp_root: Path, g: Gathered) -> None:
    gather_from_logs(path, exp_root, g)
    gather_from_hydra(path, exp_root, g)
    gather_from_filename(path, stem_of(path), g)


# --- torch --------------------------------------------------------------------------------


def _torch_plan(path: Path, exp_root: Path, options: PlanOptions) -> Plan:
    checkpoint = open_torch(path)
    g = Gathered()
    read_scalar = _scalar_reader(checkpoint)
    gather_from_checkpoint(checkpoint.obj, path, g, read_scalar)
    _common_sources(path, exp_root, g)
    state_key, state_dict = find_state_dict(checkpoint.obj)
    g.offer("contents.model_weights", state_dict is not None, "checkpoint")
    plan = Plan(checkpoint.format, g, [path])
    if options.metadata_only:
        return plan
    if state_dict is None:
        mapping = as_mapping(checkpoint.obj)
        nested = [mapping[k] for k in STATE_DICT_KEYS if mapping is not None and k in mapping]
        bad = unsupported_tensors(checkpoint.obj) + [b for n in nested for b in unsupported_tensors(n)]
        if bad:
            raise UnsupportedCheckpointError("cannot convert tensors: " + ", ".join(bad[:5]))
        raise UnsupportedCheckpointError(
            "no model state dict found (looked for " + ", ".join(STATE_DICT_KEYS)
            + " or a bare name->tensor mapping); use --metadata-only for a sidecar alone")
    plan.write_weights = lambda tmp: _write_torch_weights(checkpoint, state_dict, state_key, tmp)
    return plan


def _scalar_reader(checkpoint: TorchFile) -> Callable[[LazyTensor], Any]:
    def read(tensor: LazyTensor) -> Any:
        try:
            return tensor.read(checkpoint, checkpoint.big_endian).reshape(-1)[0].item()
        except CkptError:
            return None

    return read


def _write_torch_weights(checkpoint: TorchFile, state_dict: Any, state_key: str | None,
                         tmp: Path) -> dict[str, Any]:
    checked: set[str] = set()

    def loader(tensor: LazyTensor) -> Callable[[], Any]:
        def load() -> Any:
            ref: StorageRef = tensor.storage
            if ref.key not in checked:  # each storage's crc32 once, before its first use
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
    return {"layout": LAYOUT, "layout_version": LAYOUT_VERSION,
            "tensor_count": summary.tensor_count, "parameter_count": summary.parameter_count,
            "dtypes": dict(sorted(dtypes.items())), "state_dict_key": state_key,
            CHECKSUMS: summary.checksums}


# --- Keras layouts ------------------------------------------------------------------------


def _keras_writer(model: KLayer, source_format: str, options: PlanOptions) -> WeightsWriter:
    mapped = keras3_mapping(model)  # raises Unmappable before anything is written

    def write(tmp: Path) -> dict[str, Any]:
        count, elements, checksums = write_keras3_weights(
            tmp, model, mapped, {"writer": f"ckptctl {__version__}", "source_format": source_format})
        if options.keras_model:
            verify_datasets(tmp, checksums)  # before Keras reads it: a bad file must not load
            verify_with_keras_model(options.keras_model, tmp)
            checksums = {}
        dtypes: dict[str, int] = defaultdict(int)
        for item in mapped:
            dtypes[item.variable.dtype] += 1
        return {"layout": KERAS3_LAYOUT, "layout_version": KERAS3_LAYOUT_VERSION,
                "tensor_count": count, "parameter_count": elements,
                "dtypes": dict(sorted(dtypes.items())), CHECKSUMS: checksums}

    return write


def _fallback_writer(items: list[TensorToWrite], source_format: str) -> WeightsWriter:
    def write(tmp: Path) -> dict[str, Any]:
        summary = write_tensors(tmp, items, {"source_format": source_format,
                                             "writer": f"ckptctl {__version__}"})
        dtypes: dict[str, int] = defaultdict(int)
        for item in items:
            dtypes[item.dtype] += 1
        return {"layout": LAYOUT, "layout_version": LAYOUT_VERSION,
                "tensor_count": summary.tensor_count, "parameter_count": summary.parameter_count,
                "dtypes": dict(sorted(dtypes.items())), CHECKSUMS: summary.checksums}

    return write


def _choose_keras_or_fallback(plan: Plan, model: KLayer | None, why_not: str | None,
                              fallback: Callable[[], list[TensorToWrite]], options: PlanOptions) -> None:
    if model is not None:
        try:
            plan.write_weights = _keras_writer(model, plan.format, options)
            plan.gathered.offer("contents.model_weights", True, "checkpoint")
            return
        except Unmappable as exc:
            why_not = exc.message
    if options.keras_model:
        raise UnsupportedCheckpointError(f"cannot map onto a Keras 3 layout: {why_not}")
    items = fallback()
    if not items:
        raise UnsupportedCheckpointError(f"no model variables found ({why_not})")
    plan.notes.append(f"Keras 3 layout not possible ({why_not}); wrote {LAYOUT} instead")
    plan.gathered.offer("contents.model_weights", True, "checkpoint")
    plan.write_weights = _fallback_writer(items, plan.format)


# --- TF-index -----------------------------------------------------------------------------

_OPTIMIZER_KEY = re.compile(r"(^|/)(optimizer|\.OPTIMIZER_SLOT)(/|$)")


def _tf_plan(prefix: Path, exp_root: Path, options: PlanOptions) -> Plan:
    from ..readers.keras_model import keras_model_from_tf, scalar_variables
    from ..readers.tf_index import open_tf_index, read_state_file

    ckpt = open_tf_index(prefix)
    g = Gathered()
    src = "checkpoint"
    scalars = scalar_variables(ckpt)
    g.offer("training.framework", "tensorflow", src)
    for key, value in scalars.items():
        if key in ("epoch", "global_step", "save_counter", "best_epoch", "optimizer_iterations"):
            field_name = {"optimizer_iterations": "global_step"}.get(key, key)
            if field_name in ("epoch", "global_step"):
                g.offer(f"training.{field_name}", int(value), src)
        if key == "best_metric" and isinstance(value, float):
            g.offer("metrics.best_metric", value, src)
        if key == "best_epoch":
            g.offer("checkpointing.best_epoch", int(value), src)
        if key == "save_counter":
            g.offer("checkpointing.save_counter", int(value), src)
    keys = list(ckpt.entries)
    g.offer("contents.keys", keys[:200], src)
    g.offer("contents.optimizer_state", any(_OPTIMIZER_KEY.search(k) for k in keys), src)
    g.offer("contents.lr_scheduler_state", False, src)
    g.offer("contents.rng_state", any("rng" in k.lower() for k in keys), src)
    folder_name = prefix.absolute().parent.name
    role = folder_name if folder_name in ("last", "best", "latest") else None
    if role:
        g.offer("checkpointing.role", role, "folder name")
    state = read_state_file(prefix.parent)
    if state:
        paths = [Path(p).name for p in state.get("all_model_checkpoint_paths", [])]
        stamps = state.get("all_model_checkpoint_timestamps", [])
        if prefix.name in paths and len(stamps) == len(paths):
            g.offer("checkpointing.saved_at", float(stamps[paths.index(prefix.name)]), "checkpoint state file")
        g.offer("checkpointing.is_latest", Path(state.get("model_checkpoint_path") or "").name == prefix.name,
                "checkpoint state file")
    absolute = prefix.absolute()
    run_folder = absolute.parent.parent if role else absolute.parent
    if run_folder.name:
        g.offer("model.run_name", run_folder.name, "folder name")
    _common_sources(prefix, exp_root, g)
    plan = Plan("tf-index", g, source_files(prefix, "tf-index"))
    if options.metadata_only:
        return plan
    try:
        model, why_not = keras_model_from_tf(ckpt)
    except Unmappable as exc:  # e.g. an RNN cell: fall back below
        model, why_not = None, exc.message

    def fallback() -> list[TensorToWrite]:
        from ..readers.keras_model import model_variable_keys
        from ..readers.tensor import STORAGE_NUMPY

        # The model's variables by object-graph reachability (Keras 3 may key trainable
        # weights under optimizer/_trainable_variables), named by their full names.
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
                                       lambda k=key: ckpt.read(k)))
        return items

    _choose_keras_or_fallback(plan, model, why_not, fallback, options)
    return plan


# --- Keras 2 HDF5 -------------------------------------------------------------------------


def _keras_h5_plan(path: Path, fmt: str, exp_root: Path, options: PlanOptions) -> Plan:
    from ..readers.keras_model import h5_attrs, keras_model_from_h5

    g = Gathered()
    src = "checkpoint"
    try:
        info = h5_attrs(path)
    except OSError as exc:
        raise CkptError(f"unreadable HDF5 file ({exc})") from exc
    g.offer("training.framework", "keras", src)
    g.offer("training.framework_version", info.get("keras_version"), src)
    if info.get("backend"):
        g.offer("model.backend", info["backend"], src)
    training = info.get("training_config")
    if isinstance(training, dict):
        g.offer("model.training_config", training, "checkpoint:training_config")
        g.offer("contents.optimizer_state", fmt == "keras2-h5-model", src)
    config = info.get("model_config")
    if isinstance(config, dict):
        name = (config.get("config") or {}).get("name") if isinstance(config.get("config"), dict) else None
        g.offer("model.architecture", config.get("class_name"), "checkpoint:model_config")
        g.offer("model.name", name, "checkpoint:model_config")
    g.offer("contents.lr_scheduler_state", False, src)
    g.offer("contents.rng_state", False, src)
    _common_sources(path, exp_root, g)
    plan = Plan(fmt, g, [path])
    if options.metadata_only:
        return plan
    try:
        model: KLayer | None = keras_model_from_h5(path)
        why_not = None
    except Unmappable as exc:
        model, why_not = None, exc.message

    def fallback() -> list[TensorToWrite]:
        if model is None:
            return []
        return [TensorToWrite(v.source_key.lstrip("/"), v.dtype, v.shape, None, v.load)
                for layer in model.layers for v in layer.variables]

    _choose_keras_or_fallback(plan, model, why_not, fallback, options)
    return plan


# --- Keras 3 native: described, never rewritten -----------------------------------------


def _native_plan(path: Path, fmt: str, exp_root: Path) -> Plan:
    g = Gathered()
    g.offer("training.framework", "keras", "checkpoint")
    if fmt == "keras3-keras":
        _keras_archive_metadata(path, g)
    g.offer("contents.model_weights", True, "checkpoint")
    _common_sources(path, exp_root, g)
    plan = Plan(fmt, g, [path])
    if fmt == "keras3-weights-h5":
        plan.native_weights = path
    return plan


def _keras_archive_metadata(path: Path, g: Gathered) -> None:
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read("metadata.json")) if "metadata.json" in archive.namelist() else {}
            config = json.loads(archive.read("config.json")) if "config.json" in archive.namelist() else {}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise CkptError(f"unreadable .keras archive ({exc})") from exc
    if isinstance(meta, dict):
        g.offer("training.framework_version", meta.get("keras_version"), "checkpoint:metadata.json")
        g.offer("checkpointing.saved_at_text", meta.get("date_saved"), "checkpoint:metadata.json")
    if isinstance(config, dict):
        g.offer("model.architecture", config.get("class_name"), "checkpoint:config.json")
        compile_config = config.get("compile_config")
        if isinstance(compile_config, dict):
            g.offer("model.training_config", compile_config, "checkpoint:config.json")


def native_weights_info(path: Path) -> dict[str, Any]:
    import h5py

    count = elements = 0
    dtypes: dict[str, int] = defaultdict(int)

    def visit(_: str, obj: Any) -> None:
        nonlocal count, elements
        if isinstance(obj, h5py.Dataset):
            count += 1
            elements += int(obj.size)
            dtypes[str(obj.dtype)] += 1

    from ..readers.keras_model import H5_ERRORS

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except H5_ERRORS as exc:
        raise CkptError(f"damaged HDF5 file ({str(exc)[:120]})", path) from exc
    return {"layout": KERAS3_LAYOUT, "layout_version": KERAS3_LAYOUT_VERSION,
            "tensor_count": count, "parameter_count": elements, "dtypes": dict(sorted(dtypes.items()))}


# --- --keras-model ------------------------------------------------------------------------


def verify_with_keras_model(spec: str, weights: Path) -> None:
    """Build the user's Keras 3 model (``module:function``), load ``weights`` into it, and
    require the same variables at the same paths with the same shapes as Keras would save."""
    import importlib
    import sys
    import tempfile

    import h5py

    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise CkptError(f"--keras-model must be module:function, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the user's own modules are found
    try:
        builder = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise CkptError(f"--keras-model {spec}: {exc}") from exc
    model = builder()
    with tempfile.TemporaryDirectory() as scratch:
        expected_path = Path(scratch) / "expected.weights.h5"
        model.save_weights(str(expected_path))
        expected = _dataset_shapes(h5py, expected_path)
    got = _dataset_shapes(h5py, weights)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append("model variables not in the checkpoint: " + ", ".join(missing[:5]))
        if extra:
            parts.append("checkpoint variables the model lacks: " + ", ".join(extra[:5]))
        if wrong:
            parts.append("shape mismatch at " + ", ".join(f"{k} {got[k]} vs {expected[k]}" for k in wrong[:5]))
        raise CkptError("does not match --keras-model: " + "; ".join(parts))
    try:
        model.load_weights(str(weights))
    except Exception as exc:  # Keras' own check; any failure fails this checkpoint
        raise CkptError(f"--keras-model {spec} rejected the weights: {str(exc).splitlines()[0]}") from exc


def _dataset_shapes(h5py: Any, path: Path) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            shapes[name] = tuple(obj.shape)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return shapes
