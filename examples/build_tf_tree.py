#!/usr/bin/env python
"""Build a tree of legacy TensorFlow / Keras checkpoints with the real libraries.

Used by the test suite (``tests/conftest.py``: ``tf_tree`` / ``fresh_tf_tree``) and by hand
(``python examples/build_tf_tree.py DIR``). Every file is written by its real producer
(tf_keras ``save_weights`` / ``save`` / ``ModelCheckpoint``, ``tf.train.CheckpointManager``,
Keras 3 ``save_weights`` / ``save``); nothing is hand-assembled. The Keras 3 twin of every
model lives in ``examples/keras_models.py``.

Public API
----------
``build_tf_tree(root) -> dict``
    Writes the tree and returns a JSON-serialisable manifest of ground truth read back from
    the real objects / written files (never hand-typed numbers).

Tree
----
``keras2_sequential/model.ckpt.*``  tf_keras Sequential, ``save_weights`` (TF format).
``keras2_functional/model.ckpt.*``  tf_keras two-input Functional, ``save_weights``.
``keras2_h5/model_NN_valloss_X.XXXX.h5``  written by tf_keras ``ModelCheckpoint``
    (``save_weights_only``, one per epoch), plus ``full_model.h5`` (``model.save``).
``tf_manager/<fingerprint>/{last,best}/ckpt-N.*``  a Keras 3 model, its optimizer and
    ``epoch``/``global_step``/``best_metric``/``best_epoch`` variables in one
    ``tf.train.Checkpoint`` saved by two ``CheckpointManager``s (the layout of a custom TF training loop); the state
    file ``best/checkpoint`` is deleted afterwards (stale-state case), ``last/checkpoint`` kept.
``keras3_native/native.weights.h5`` and ``native.keras``  Keras 3 ``save_weights`` / ``save``.

Manifest (all paths POSIX, relative to ``root``)
------------------------------------------------
``checkpoints[path]``: ``path`` is the TF prefix (``.../model.ckpt``, ``.../ckpt-777``) or the
file. Every entry has ``kind`` (``tf-index-keras2`` | ``tf-index-tf-checkpoint`` |
``keras2-h5-weights`` | ``keras2-h5-model`` | ``keras3-weights-h5`` | ``keras3-keras``),
``run``, ``files`` (the files on disk), ``framework`` of the writer, ``keras3_builder`` (name in
``examples.keras_models``) and ``keras3_entry_point``, ``keras2_builder`` (legacy only, else
``None``), ``input_names``, ``inputs`` (name -> nested list, float32 values), ``predictions``
(the *original* model's output on ``inputs``, inference mode), ``layers`` (the original's
layers that own weights: name, class, weight names/shapes, in ``model.layers`` order),
``tensors`` (every stored tensor: dtype, shape, sha256 of its little-endian C-order bytes) and
``keras3_weights_h5``: the ``.weights.h5`` layout Keras 3 itself writes for the twin model once
it holds this checkpoint's weights: ``datasets[path]`` = shape/dtype/sha256 plus the ``source``
legacy tensor it comes from, and ``vars_names[group]`` = the group's ``name`` attribute.
Model variables only (the twin is saved uncompiled: no ``optimizer`` group).

Per kind: ``tf-index-*`` add ``full_names`` (checkpoint key -> object-graph ``full_name``) and
``state_file`` (the directory's ``checkpoint`` file as parsed by TF, or ``None`` if absent);
``tf-index-tf-checkpoint`` adds ``role`` (``last``/``best``), ``checkpoint_number``, ``values``
(``epoch``, ``global_step``, ``best_metric``, ``best_epoch``, ``save_counter`` read back with
``tf.train.load_checkpoint``) and ``state_file_timestamp``; ``keras2-h5-*`` add
``keras_version``, ``backend``, ``training_config`` (parsed JSON or ``None``), ``h5_root``,
``layer_names`` and ``weight_names``; the ``ModelCheckpoint`` files add ``epoch`` (1-based, as
in the name), ``history_index`` and ``val_loss``; ``keras3-keras`` adds ``members`` and
``metadata``.

``runs[dir]``: how each directory was produced (training history, fingerprint...).
``non_checkpoint_files``: state files; ``deleted``: files the build removed on purpose.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

# Before TensorFlow is imported (it reads them once). oneDNN off: bit-stable CPU numerics and
# no "oneDNN custom operations are on" banner.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

SEED = 1234
N_EVAL = 3  # rows of the recorded input batch
KERAS2_EPOCHS = 2
H5_EPOCHS = 3
BATCH = 8
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
ENTRY_MODULE = "examples.keras_models"
MANAGER_STEPS = (776, 777)  # global steps of the two CheckpointManager saves
MANAGER_STEPS_PER_EPOCH = 8
MANAGER_SCALE = 20.0

# A TF research project's config, reduced to what its run-directory fingerprint reads.
MANAGER_CONFIG: dict[str, Any] = {
    "model": {"name": "mlp", "backbone": "mlp", "num_classes": 3, "priors": {}},
    "data": {"dataset_name": "voc", "input_size": [224, 224],
             "augment": {"random_flip": True, "random_flip_prob": 0.5},
             "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}},
    "train": {"batch_size": BATCH, "epochs": 120,
              "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
              "scheduler": {"name": "cosine", "warmup_epochs": 2}},
    "checkpoint": {"keep_last_k": 2, "save_last": True, "save_best": True,
                   "monitor": "val_score", "mode": "max"},
}


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _native_stderr_swallowed() -> Iterator[None]:
    """Hide what TF's C++ runtime prints on fd 2 while loading (before any log level applies).

    On failure the captured text is replayed, so a broken install still explains itself.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _libs() -> SimpleNamespace:
    """Import TF, both Keras versions and the model zoo lazily (importing this module is cheap)."""
    quiet = "tensorflow" not in sys.modules
    with _native_stderr_swallowed() if quiet else contextlib.nullcontext():
        import keras
        import tensorflow as tf
        import tf_keras
        from tensorflow.core.protobuf import trackable_object_graph_pb2

        try:  # run as a script / from tests: examples/ is on sys.path
            import keras_models as km
        except ModuleNotFoundError:  # imported as examples.build_tf_tree from the repo root
            from examples import keras_models as km
    return SimpleNamespace(tf=tf, keras=keras, tf_keras=tf_keras, km=km,
                           graph_pb2=trackable_object_graph_pb2)


@contextlib.contextmanager
def _quiet_tf(tf: Any) -> Iterator[None]:
    """Silence TF/absl Python logging and the expected legacy-format warnings, then restore."""
    import absl.logging

    tf_logger = logging.getLogger("tensorflow")
    saved_level, saved_absl = tf_logger.level, absl.logging.get_verbosity()
    tf_logger.setLevel(logging.ERROR)
    absl.logging.set_verbosity(absl.logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Writing legacy HDF5 is the whole point here.
            warnings.filterwarnings("ignore", message=r".*HDF5 file.*legacy.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        tf_logger.setLevel(saved_level)
        absl.logging.set_verbosity(saved_absl)


def _rel(path: str | os.PathLike[str], root: Path) -> str:
    """Path relative to ``root`` (POSIX); paths outside ``root`` are kept as given."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _sha256(array: Any) -> str:
    """sha256 of the raw little-endian C-order bytes (same convention as the torch tree)."""
    arr = np.asarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _describe(array: Any) -> dict[str, Any]:
    arr = np.asarray(array)
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "sha256": _sha256(arr)}


def _float(value: Any) -> float | None:
    """JSON-safe float: +-inf/nan (a fresh ``best_metric`` is -inf) become ``None``."""
    out = float(value)
    return out if math.isfinite(out) else None


def _files_of(prefix: Path, root: Path) -> list[str]:
    """The files of a TF checkpoint prefix (``.index`` and the data shards)."""
    return sorted(_rel(p, root) for p in prefix.parent.glob(prefix.name + ".*"))


def _state_file(directory: Path, root: Path, tf: Any) -> dict[str, Any] | None:
    """The directory's ``checkpoint`` state file as TF parses it (paths made root-relative)."""
    if not (directory / "checkpoint").is_file():
        return None
    state = tf.train.get_checkpoint_state(str(directory))
    return {
        "path": _rel(directory / "checkpoint", root),
        "model_checkpoint_path": _rel(state.model_checkpoint_path, root),
        "all_model_checkpoint_paths": [_rel(p, root) for p in state.all_model_checkpoint_paths],
        "all_model_checkpoint_timestamps": list(state.all_model_checkpoint_timestamps),
        "last_preserved_timestamp": state.last_preserved_timestamp,
        "text": (directory / "checkpoint").read_text(),  # as stored (relative paths there)
    }


def _data(rng: np.random.Generator, shapes: Sequence[Sequence[int]], sizes: Sequence[int],
          out_dim: int, scale: float = 1.0) -> list[tuple[list[np.ndarray], np.ndarray]]:
    """Seeded splits (one per size) of one task: a smooth nonlinear target of the inputs.

    Every split shares the target function, so validation numbers mean something.
    """
    width = sum(int(np.prod(shape)) for shape in shapes)
    proj = rng.normal(size=(width, out_dim)).astype("float32")
    splits = []
    for n in sizes:
        xs = [rng.normal(size=(n, *shape)).astype("float32") for shape in shapes]
        flat = np.concatenate([x.reshape(n, -1) for x in xs], axis=1)
        y = scale * np.tanh(flat @ proj / np.sqrt(width))
        splits.append((xs, y.astype("float32")))
    return splits


def _input_spec(model: Any) -> list[tuple[str, tuple[int, ...]]]:
    """(name, per-sample shape) of each model input, in call order, from the model itself."""
    return [(str(t.name).split(":")[0], tuple(int(d) for d in t.shape[1:]))
            for t in model.inputs]


def _eval_batch(model: Any, seed: int) -> tuple[list[str], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    spec = _input_spec(model)
    return ([name for name, _ in spec],
            [rng.normal(size=(N_EVAL, *shape)).astype("float32") for _, shape in spec])


def _predict(model: Any, xs: list[np.ndarray]) -> np.ndarray:
    # Inference mode: BatchNormalization uses its moving statistics.
    out = model(xs if len(xs) > 1 else xs[0], training=False)
    return np.asarray(out, dtype="float32")


def _weight_short_name(var: Any) -> str:
    """``kernel`` for both tf_keras (``dense/kernel:0``) and Keras 3 (``kernel``) variables."""
    return str(var.name).split("/")[-1].split(":")[0]


def _layers(model: Any) -> list[dict[str, Any]]:
    """The layers owning weights, in ``model.layers`` order, as the original model has them."""
    out = []
    for layer in model.layers:
        if not layer.weights:
            continue
        out.append({
            "name": layer.name,
            "class_name": type(layer).__name__,
            "weights": [{"name": _weight_short_name(w),
                         # tf_keras: "dense/kernel:0"; Keras 3: "mlp/dense/kernel" (var.path)
                         "variable": str(getattr(w, "path", None) or w.name),
                         "shape": [int(d) for d in w.shape],
                         "dtype": np.dtype(w.dtype.name if hasattr(w.dtype, "name")
                                           else w.dtype).name}
                        for w in layer.weights],
        })
    return out


def _layer_values(model: Any) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.array(v) for v in layer.get_weights()]
            for layer in model.layers if layer.weights}


def _graph_full_names(reader: Any, libs: SimpleNamespace) -> dict[str, str]:
    """Checkpoint key -> the variable's ``full_name`` from the TF object graph."""
    graph = libs.graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    return {attr.checkpoint_key: attr.full_name
            for node in graph.nodes for attr in node.attributes}


def _tf_tensors(prefix: Path, libs: SimpleNamespace) -> tuple[dict[str, Any], dict[str, str]]:
    """Every tensor of a TF checkpoint (read back with TF) and the object-graph full names."""
    reader = libs.tf.train.load_checkpoint(str(prefix))
    tensors = {}
    for key in sorted(reader.get_variable_to_shape_map()):
        if key == OBJECT_GRAPH_KEY:  # a serialized proto, not a weight
            continue
        tensors[key] = _describe(reader.get_tensor(key))
    return tensors, _graph_full_names(reader, libs)


def _h5_tensors(path: Path) -> dict[str, Any]:
    import h5py

    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = _describe(obj[()])
        f.visititems(visit)
    return out


def _h5_attr(value: Any) -> Any:
    """An HDF5 attribute as a JSON value (bytes/str arrays become lists of str)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_h5_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _vars_groups(path: Path) -> dict[str, str]:
    """Keras 3 ``.weights.h5``: layer name (the ``name`` attr) -> its ``layers/.../vars`` group."""
    import h5py

    out: dict[str, str] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: Any) -> None:
            if name.startswith("layers/") and isinstance(obj, h5py.Group) and "name" in obj.attrs:
                out[str(_h5_attr(obj.attrs["name"]))] = name
        f.visititems(visit)
    return out


def _keras2_h5_info(path: Path) -> dict[str, Any]:
    """What a tf_keras HDF5 file says about itself, as stored."""
    import h5py

    with h5py.File(path, "r") as f:
        h5_root = "model_weights" if "model_weights" in f else ""
        group = f[h5_root] if h5_root else f
        layer_names = [str(n) for n in _h5_attr(group.attrs["layer_names"])]
        training_config = f.attrs.get("training_config")
        model_config = f.attrs.get("model_config")
        return {
            "keras_version": _h5_attr(f.attrs.get("keras_version")),
            "backend": _h5_attr(f.attrs.get("backend")),
            "training_config": (json.loads(_h5_attr(training_config))
                                if training_config is not None else None),
            "model_config": json.loads(_h5_attr(model_config)) if model_config else None,
            "h5_root": h5_root,
            "layer_names": layer_names,
            "weight_names": {n: [str(w) for w in _h5_attr(group[n].attrs["weight_names"])]
                             for n in layer_names},
            "has_optimizer_weights": "optimizer_weights" in f,
        }


def _keras3_reference(libs: SimpleNamespace, builder: str, values: Mapping[str, list[Any]],
                      sources: Mapping[str, list[str]], xs: list[np.ndarray],
                      expected: np.ndarray) -> dict[str, Any]:
    """The ``.weights.h5`` Keras 3 writes for the twin model holding these weights.

    ``values``/``sources``: per original layer name, its weight arrays and the legacy tensor
    each came from. Also cross-checks here, loudly, that the twin really is equivalent: with
    the weights copied layer by layer (by name) it must predict what the original predicted.
    """
    import h5py

    model = libs.km.KERAS3_BUILDERS[builder]()
    for layer in model.layers:
        if layer.weights:  # by name: a layer missing from the original fails with KeyError
            layer.set_weights(values[layer.name])
    got = _predict(model, xs)
    if not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
        raise AssertionError(f"{builder} is not equivalent: {got} != {expected}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "twin.weights.h5"
        model.save_weights(str(path))
        datasets: dict[str, Any] = {}
        vars_names: dict[str, str] = {}
        with h5py.File(path, "r") as f:
            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    datasets[name] = _describe(obj[()])
                elif "name" in obj.attrs:
                    vars_names[name] = str(_h5_attr(obj.attrs["name"]))
            f.visititems(visit)
    # Which legacy tensor feeds each dataset: ``layers/<g>/vars/<i>`` is the i-th weight of the
    # layer whose name the group carries. Checked against the values, not assumed.
    for ds_path, desc in datasets.items():
        group, _, index = ds_path.rpartition("/")
        layer_name = vars_names.get(group)
        if ds_path.startswith("layers/") and layer_name in values:
            if desc["sha256"] != _sha256(values[layer_name][int(index)]):
                raise AssertionError(f"{builder}: {ds_path} is not weight {index} of {layer_name}")
            desc["layer_name"] = layer_name
            desc["source"] = sources[layer_name][int(index)]
        else:  # not a model weight (cannot happen for an uncompiled twin; kept explicit)
            desc["layer_name"], desc["source"] = layer_name, None
    return {"builder": builder, "datasets": datasets, "vars_names": vars_names}


def _entry(libs: SimpleNamespace, *, kind: str, run: str, files: list[str], framework: str,
           keras3_builder: str, keras2_builder: str | None, model: Any,
           names: list[str], xs: list[np.ndarray], predictions: np.ndarray,
           values: Mapping[str, list[Any]], sources: Mapping[str, list[str]],
           tensors: dict[str, Any]) -> dict[str, Any]:
    """The fields every checkpoint entry shares."""
    return {
        "kind": kind,
        "run": run,
        "files": files,
        "framework": framework,
        "keras3_builder": keras3_builder,
        "keras3_entry_point": f"{ENTRY_MODULE}:{keras3_builder}",
        "keras2_builder": keras2_builder,
        "input_names": names,
        "inputs": {n: x.tolist() for n, x in zip(names, xs, strict=True)},
        "predictions": predictions.tolist(),
        "layers": _layers(model),
        "tensors": tensors,
        "keras3_weights_h5": _keras3_reference(libs, keras3_builder, values, sources, xs,
                                               predictions),
    }


def _tf_sources(model: Any, full_names: Mapping[str, str]) -> dict[str, list[str]]:
    """Per layer name, the checkpoint key of each weight (found through ``full_name``)."""
    key_of = {full: key for key, full in full_names.items()}
    out: dict[str, list[str]] = {}
    for layer in model.layers:
        if layer.weights:
            out[layer.name] = [
                key_of[str(getattr(w, "path", None) or w.name).split(":")[0]]
                for w in layer.weights]
    return out


# --------------------------------------------------------------------------- tf_keras (Keras 2)


def _keras2_fit(libs: SimpleNamespace, model: Any, seed: int, epochs: int,
                validation: bool = False, callbacks: list[Any] | None = None) -> Any:
    shapes = [shape for _, shape in _input_spec(model)]
    out_dim = int(model.outputs[0].shape[-1])
    rng = np.random.default_rng(seed)
    (xs, y), (xs_val, y_val) = _data(rng, shapes, (4 * BATCH, 2 * BATCH), out_dim)
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    x, x_val = (xs, xs_val) if len(xs) > 1 else (xs[0], xs_val[0])
    # shuffle=False: no global RNG is involved, so the weights are reproducible.
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
                     validation_data=(x_val, y_val) if validation else None,
                     callbacks=callbacks or [])


def _build_keras2_tf(root: Path, libs: SimpleNamespace, run: str, keras2_builder: str,
                     keras3_builder: str, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    model = libs.km.KERAS2_BUILDERS[keras2_builder]()
    history = _keras2_fit(libs, model, seed, KERAS2_EPOCHS)
    prefix = root / run / "model.ckpt"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(prefix))  # no ".h5" suffix: TF (TensorBundle) format
    names, xs = _eval_batch(model, seed + 1)
    tensors, full_names = _tf_tensors(prefix, libs)
    entry = _entry(libs, kind="tf-index-keras2", run=run, files=_files_of(prefix, root),
                   framework="tf_keras", keras3_builder=keras3_builder,
                   keras2_builder=keras2_builder, model=model, names=names, xs=xs,
                   predictions=_predict(model, xs), values=_layer_values(model),
                   sources=_tf_sources(model, full_names), tensors=tensors)
    entry["full_names"] = full_names
    entry["state_file"] = _state_file(prefix.parent, root, libs.tf)
    run_info = {"framework": "tf_keras", "keras2_builder": keras2_builder,
                "keras3_builder": keras3_builder, "epochs": KERAS2_EPOCHS,
                "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
    return {_rel(prefix, root): entry}, run_info


def _build_keras2_h5(root: Path, libs: SimpleNamespace, seed: int
                     ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    run = "keras2_h5"
    run_dir = root / run
    run_dir.mkdir(parents=True, exist_ok=True)
    k2, k2_name, k3_name = libs.tf_keras, "build_sequential_keras2", "build_sequential"
    model = libs.km.KERAS2_BUILDERS[k2_name]()
    names, xs = _eval_batch(model, seed + 1)
    per_epoch: dict[int, dict[str, Any]] = {}

    class Recorder(k2.callbacks.Callback):
        """Captures, at each epoch end, what ModelCheckpoint sees and the weights it saves."""

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            per_epoch[epoch] = {"logs": {k: float(v) for k, v in (logs or {}).items()},
                                "values": _layer_values(self.model),
                                "predictions": _predict(self.model, xs)}

    checkpoint = k2.callbacks.ModelCheckpoint(
        filepath=str(run_dir / "model_{epoch:02d}_valloss_{val_loss:.4f}.h5"),
        save_weights_only=True, verbose=0)
    history = _keras2_fit(libs, model, seed, H5_EPOCHS, validation=True,
                          callbacks=[checkpoint, Recorder()])
    full = run_dir / "full_model.h5"
    model.save(str(full))  # legacy HDF5 full model: config + weights + optimizer

    entries: dict[str, dict[str, Any]] = {}
    written = sorted(run_dir.glob("model_*_valloss_*.h5"))
    if len(written) != H5_EPOCHS:
        raise AssertionError(f"ModelCheckpoint wrote {written}")
    for path in [*written, full]:
        info = _keras2_h5_info(path)
        if path == full:
            index = H5_EPOCHS - 1
            kind, epoch_fields = "keras2-h5-model", {}
        else:
            # The epoch is whatever the real callback put in the name (1-based).
            index = next(i for i, rec in per_epoch.items()
                         if path.name == f"model_{i + 1:02d}_valloss_"
                                         f"{rec['logs']['val_loss']:.4f}.h5")
            kind = "keras2-h5-weights"
            epoch_fields = {"epoch": index + 1, "history_index": index,
                            "val_loss": per_epoch[index]["logs"]["val_loss"],
                            "logs": per_epoch[index]["logs"]}
        rec = per_epoch[index]
        prefix = f"{info['h5_root']}/" if info["h5_root"] else ""
        sources = {layer: [f"{prefix}{layer}/{w}" for w in weight_names]
                   for layer, weight_names in info["weight_names"].items() if weight_names}
        entry = _entry(libs, kind=kind, run=run, files=[_rel(path, root)], framework="tf_keras",
                       keras3_builder=k3_name, keras2_builder=k2_name, model=model, names=names,
                       xs=xs, predictions=rec["predictions"], values=rec["values"],
                       sources=sources, tensors=_h5_tensors(path))
        entry.update(info)
        entry.update(epoch_fields)
        entries[_rel(path, root)] = entry
    run_info = {"framework": "tf_keras", "keras2_builder": k2_name, "keras3_builder": k3_name,
                "epochs": H5_EPOCHS, "monitor": "val_loss",
                "filepath_template": "model_{epoch:02d}_valloss_{val_loss:.4f}.h5",
                "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
    return entries, run_info


# --------------------------------------------------------------------------- tf.train.Checkpoint


def fingerprint_run_dir(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Seed 004's ``_create_checkpoint_directory_fingerprint`` naming, verbatim in effect."""
    model_config, dataset_config, train_config = config["model"], config["data"], config["train"]
    fingerprint_config = {
        "model_backbone": model_config.get("backbone", ""),
        "num_classes": model_config.get("num_classes", 0),
        "priors": model_config.get("priors", {}),
        "dataset_name": dataset_config.get("dataset_name", ""),
        "dataset_augmentation": dataset_config.get("augment", {}),
        "dataset_normalization": dataset_config.get("normalization", {}),
        "training_batch_size": train_config.get("batch_size", 0),
        "training_epochs": train_config.get("epochs", 0),
        "training_optimizer_name": train_config["optimizer"].get("name", ""),
        "training_optimizer_lr": train_config["optimizer"].get("lr", 0.0),
        "training_optimizer_weight_decay": train_config["optimizer"].get("weight_decay", 0.0),
        "training_scheduler_params": train_config.get("scheduler", {}),
    }
    config_json = json.dumps(fingerprint_config, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(config_json.encode("utf-8")).hexdigest()[:10]
    slug = (f"{model_config['name']}_{dataset_config['dataset_name']}"
            f"_img{dataset_config['input_size'][0]}"
            f"_bs{fingerprint_config['training_batch_size']}"
            f"_lr{fingerprint_config['training_optimizer_lr']:.2e}"
            f"_{train_config['scheduler']['name']}")
    return f"{slug}_{digest}", fingerprint_config


def _build_tf_manager(root: Path, libs: SimpleNamespace, seed: int
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[str]]:
    tf, keras = libs.tf, libs.keras
    run_name, fingerprint = fingerprint_run_dir(MANAGER_CONFIG)
    run_dir = root / "tf_manager" / run_name
    builder = "build_manager_mlp"
    model = libs.km.KERAS3_BUILDERS[builder]()
    lr = MANAGER_CONFIG["train"]["optimizer"]["lr"]
    optimizer = keras.optimizers.Adam(learning_rate=lr, name="adam")  # named: stable var names
    shapes = [shape for _, shape in _input_spec(model)]
    rng = np.random.default_rng(seed)
    # Large targets: after 777 Adam steps at lr 1e-3 the fit is still far from converged, so
    # the validation score really improves from one step to the next (best/ckpt-777).
    ((x,), y), ((x_val,), y_val) = _data(rng, shapes, (MANAGER_STEPS_PER_EPOCH * BATCH, 4 * BATCH),
                                         int(model.outputs[0].shape[-1]), scale=MANAGER_SCALE)
    names, xs = _eval_batch(model, seed + 1)

    # Seed 004's variables: int64 counters, float32 best metric starting at -inf (mode=max).
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    best_epoch = tf.Variable(-1, dtype=tf.int64, trainable=False)
    best_metric = tf.Variable(float("-inf"), dtype=tf.float32, trainable=False)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch,
                               global_step=global_step, best_metric=best_metric,
                               best_epoch=best_epoch)
    (run_dir / "last").mkdir(parents=True)
    (run_dir / "best").mkdir(parents=True)
    last = tf.train.CheckpointManager(ckpt, str(run_dir / "last"),
                                      max_to_keep=MANAGER_CONFIG["checkpoint"]["keep_last_k"])
    best = tf.train.CheckpointManager(ckpt, str(run_dir / "best"), max_to_keep=1)

    @tf.function
    def train_step(xb: Any, yb: Any) -> Any:
        # A custom training loop: no compile(), the optimizer stays separate.
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(xb, training=True) - yb))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    def val_score() -> float:
        val_loss = float(np.mean(np.square(_predict(model, [x_val]) - y_val)))
        return 1.0 / (1.0 + val_loss)  # "higher is better", like a val_map

    saved: dict[str, dict[str, Any]] = {}  # prefix -> what the objects held at save time
    scores: dict[int, float] = {}
    step = 0
    for target in MANAGER_STEPS:
        while step < target:  # real steps: optimizer.iterations ends equal to global_step
            i = step % MANAGER_STEPS_PER_EPOCH
            train_step(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH])
            step += 1
        current_epoch = (step - 1) // MANAGER_STEPS_PER_EPOCH
        snapshot = {"predictions": _predict(model, xs), "values": _layer_values(model)}
        # save_last then save_best, in a custom trainer's order: the "last" file of a step still
        # holds the previous best_metric / best_epoch.
        epoch.assign(current_epoch)
        global_step.assign(step)
        saved[last.save(checkpoint_number=step)] = {**snapshot, "role": "last"}
        score = scores[step] = val_score()
        if score > float(best_metric.numpy()):
            best_metric.assign(score)
            best_epoch.assign(current_epoch)
            saved[best.save(checkpoint_number=step)] = {**snapshot, "role": "best"}
    if int(optimizer.iterations.numpy()) != MANAGER_STEPS[-1]:
        raise AssertionError("optimizer iterations != global step")
    last_prefix = run_dir / "last" / f"ckpt-{MANAGER_STEPS[-1]}"
    best_prefix = run_dir / "best" / f"ckpt-{MANAGER_STEPS[-1]}"
    if best.latest_checkpoint != str(best_prefix):
        raise AssertionError(f"the last step must be the best one; scores {scores}")

    best_state_before = _state_file(run_dir / "best", root, tf)
    last_state = _state_file(run_dir / "last", root, tf)
    # Seed 004's stale-state case: the checkpoint files are there, the state file is not.
    (run_dir / "best" / "checkpoint").unlink()
    deleted = [_rel(run_dir / "best" / "checkpoint", root)]
    # Saved, then removed by max_to_keep (the real CheckpointManager did it).
    for prefix in saved:
        if not Path(prefix + ".index").exists():
            deleted.append(_rel(prefix, root) + ".*")

    entries: dict[str, dict[str, Any]] = {}
    for prefix_str, snap in saved.items():
        prefix = Path(prefix_str)
        if not Path(prefix_str + ".index").exists():
            continue
        reader = tf.train.load_checkpoint(prefix_str)
        tensors, full_names = _tf_tensors(prefix, libs)
        sources = _tf_sources(model, full_names)
        state = last_state if snap["role"] == "last" else None
        timestamp = None
        if state is not None:
            paths = state["all_model_checkpoint_paths"]
            if _rel(prefix, root) in paths:
                timestamp = state["all_model_checkpoint_timestamps"][paths.index(_rel(prefix,
                                                                                  root))]

        def value(name: str, reader: Any = reader) -> Any:
            return reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE").item()

        entry = _entry(libs, kind="tf-index-tf-checkpoint", run=_rel(run_dir, root),
                       files=_files_of(prefix, root), framework="keras3",
                       keras3_builder=builder, keras2_builder=None, model=model, names=names,
                       xs=xs, predictions=snap["predictions"], values=snap["values"],
                       sources=sources, tensors=tensors)
        entry.update({
            "role": snap["role"],
            "checkpoint_number": int(prefix.name.split("-")[-1]),
            "values": {"epoch": int(value("epoch")), "global_step": int(value("global_step")),
                       "best_metric": _float(value("best_metric")),
                       "best_epoch": int(value("best_epoch")),
                       "save_counter": int(value("save_counter"))},
            "full_names": full_names,
            "state_file": state,
            "state_file_timestamp": timestamp,
        })
        entries[_rel(prefix, root)] = entry
    assert _rel(last_prefix, root) in entries and _rel(best_prefix, root) in entries
    run_info = {
        "framework": "keras3",
        "keras3_builder": builder,
        "run_dir_name": run_name,
        "fingerprint_config": fingerprint,
        "config": MANAGER_CONFIG,
        "monitor": MANAGER_CONFIG["checkpoint"]["monitor"],
        "mode": MANAGER_CONFIG["checkpoint"]["mode"],
        "val_scores": {str(k): v for k, v in scores.items()},
        "steps_per_epoch": MANAGER_STEPS_PER_EPOCH,
        "last_state_file": last_state,
        "best_state_file_before_deletion": best_state_before,
    }
    return entries, run_info, deleted


# --------------------------------------------------------------------------- Keras 3 native


def _build_keras3_native(root: Path, libs: SimpleNamespace, seed: int
                         ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    keras = libs.keras
    run, builder = "keras3_native", "build_conv"
    run_dir = root / run
    run_dir.mkdir(parents=True)
    model = libs.km.KERAS3_BUILDERS[builder]()
    shapes = [shape for _, shape in _input_spec(model)]
    [((x,), y)] = _data(np.random.default_rng(seed), shapes, (4 * BATCH,),
                        int(model.outputs[0].shape[-1]))
    model.compile(optimizer=keras.optimizers.Adam(1e-3, name="adam"), loss="mse")
    history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    weights, full = run_dir / "native.weights.h5", run_dir / "native.keras"
    model.save_weights(str(weights))
    model.save(str(full))
    names, xs = _eval_batch(model, seed + 1)
    predictions = _predict(model, xs)
    values = _layer_values(model)
    # Sources: where each weight already sits in Keras 3's own layout (the group whose
    # ``name`` attribute is the layer's name).
    groups = _vars_groups(weights)
    sources = {n: [f"{groups[n]}/{i}" for i in range(len(v))] for n, v in values.items()}
    entries: dict[str, dict[str, Any]] = {}
    for path, kind in ((weights, "keras3-weights-h5"), (full, "keras3-keras")):
        if kind == "keras3-keras":
            with zipfile.ZipFile(path) as zf:
                members = sorted(zf.namelist())
                metadata = json.loads(zf.read("metadata.json"))
                with tempfile.TemporaryDirectory() as tmp:
                    inner = Path(zf.extract("model.weights.h5", tmp))
                    tensors = {f"model.weights.h5:{k}": v for k, v in _h5_tensors(inner).items()}
            extra: dict[str, Any] = {"members": members, "metadata": metadata}
            srcs = {n: [f"model.weights.h5:{s}" for s in v] for n, v in sources.items()}
        else:
            tensors, extra, srcs = _h5_tensors(path), {}, sources
        entry = _entry(libs, kind=kind, run=run, files=[_rel(path, root)], framework="keras3",
                       keras3_builder=builder, keras2_builder=None, model=model, names=names,
                       xs=xs, predictions=predictions, values=values, sources=srcs,
                       tensors=tensors)
        entry.update(extra)
        entries[_rel(path, root)] = entry
    run_info = {"framework": "keras3", "keras3_builder": builder, "epochs": 2,
                "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
    return entries, run_info


# --------------------------------------------------------------------------- tree


def build_tf_tree(root: Path) -> dict[str, Any]:
    """Write the TensorFlow example tree under ``root`` (absent or empty); return the manifest."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty")
    root.mkdir(parents=True, exist_ok=True)
    libs = _libs()
    with _quiet_tf(libs.tf):
        checkpoints: dict[str, dict[str, Any]] = {}
        runs: dict[str, dict[str, Any]] = {}
        steps: list[tuple[str, Callable[[], tuple[dict[str, Any], dict[str, Any]]]]] = [
            ("keras2_sequential", lambda: _build_keras2_tf(
                root, libs, "keras2_sequential", "build_sequential_keras2", "build_sequential",
                SEED)),
            ("keras2_functional", lambda: _build_keras2_tf(
                root, libs, "keras2_functional", "build_functional_keras2", "build_functional",
                SEED + 100)),
            ("keras2_h5", lambda: _build_keras2_h5(root, libs, SEED + 200)),
            ("keras3_native", lambda: _build_keras3_native(root, libs, SEED + 400)),
        ]
        for run, step in steps:
            entries, runs[run] = step()
            checkpoints.update(entries)
        entries, manager_run, deleted = _build_tf_manager(root, libs, SEED + 300)
        checkpoints.update(entries)
        runs[f"tf_manager/{manager_run['run_dir_name']}"] = manager_run

    claimed = {f for entry in checkpoints.values() for f in entry["files"]}
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return {
        "format_version": 1,
        "seed": SEED,
        "versions": {"tensorflow": libs.tf.__version__, "keras": libs.keras.__version__,
                     "tf_keras": libs.tf_keras.__version__},
        "checkpoints": dict(sorted(checkpoints.items())),
        "runs": runs,
        "non_checkpoint_files": [f for f in on_disk if f not in claimed],
        "deleted": deleted,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="directory to create (must be absent or empty)")
    parser.add_argument("--manifest", type=Path, help="also write the manifest JSON here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = build_tf_tree(args.root)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.manifest:
        args.manifest.write_text(json.dumps(manifest, indent=1))
    print(f"built {len(manifest['checkpoints'])} TF/Keras checkpoints in "
          f"{len(manifest['runs'])} runs under {args.root} in "
          f"{time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
