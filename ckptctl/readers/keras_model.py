"""Layer trees (``KLayer``) and scalar variables read from legacy Keras/TF checkpoints.

* Keras 2 ``save_weights("x.ckpt")`` and ``tf.train.Checkpoint(model=<Keras 2 model>)``: the
  object graph's ``layer-N`` children give ``model.layers`` in order; a layer's variable
  children give its variables (``dense/kernel``).
* Keras 3 models inside ``tf.train.Checkpoint`` (CheckpointManager trees): ``_functional/_operations/N`` or
  ``_operations/N``; variables are ``_kernel``/``bias``/…, full names ``sequential/dense/kernel``.
* Keras 2 HDF5 (``save`` and ``save_weights``): ``layer_names`` and each layer's
  ``weight_names``; a full model's ``model_config`` also names each layer's class.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptCheckpointError
from ..layouts.keras3 import KLayer, KVariable, Unmappable
from .tensor import STORAGE_NUMPY
from .tf_index import ObjectGraph, TFIndexCheckpoint

_LAYER_CHILD = re.compile(r"^layer-(\d+)$")
_OPERATION_CHILD = re.compile(r"^\d+$")
_SKIP_ROOT_CHILDREN = ("optimizer", "save_counter", "keras_api")


# --- TF object graphs -------------------------------------------------------------------


def _variable_attr(graph: ObjectGraph, node_id: int) -> Any:
    for attr in graph.nodes[node_id].attributes:
        if attr.name == "VARIABLE_VALUE":
            return attr
    return None


def _children(graph: ObjectGraph, node_id: int) -> list[tuple[str, int]]:
    return [(c.local_name, c.node_id) for c in graph.nodes[node_id].children]


def find_model_node(graph: ObjectGraph) -> tuple[int, str] | None:
    """(node id, "keras2"|"keras3") of the model in the graph: the root itself for Keras 2
    ``save_weights``, else the nearest node (breadth first, at most 3 levels down, never
    through the optimizer) that looks like a Keras model."""
    queue = [(0, 0)]
    seen = {0}
    while queue:
        node, depth = queue.pop(0)
        names = {name for name, _ in _children(graph, node)}
        if any(_LAYER_CHILD.match(n) for n in names):
            return node, "keras2"
        if "_functional" in names or "_operations" in names:
            return node, "keras3"
        if depth >= 3:
            continue
        for name, child in _children(graph, node):
            if child not in seen and not name.startswith(_SKIP_ROOT_CHILDREN):
                seen.add(child)
                queue.append((child, depth + 1))
    return None


def _tf_variable(ckpt: TFIndexCheckpoint, name: str, attr: Any) -> KVariable:
    entry = ckpt.entries.get(attr.checkpoint_key)
    if entry is None:
        raise CorruptCheckpointError(f"object graph names a missing tensor {attr.checkpoint_key}")
    if entry.dtype not in STORAGE_NUMPY:
        raise Unmappable(f"variable {attr.full_name} has dtype {entry.dtype}")
    key = attr.checkpoint_key
    return KVariable(name, entry.dtype, entry.shape, lambda: ckpt.read(key), key)


def _layer_from_node(ckpt: TFIndexCheckpoint, graph: ObjectGraph, node_id: int, flavour: str) -> KLayer:
    variables: list[KVariable] = []
    full_names: list[str] = []
    nested: KLayer | None = None
    for name, child in _children(graph, node_id):
        attr = _variable_attr(graph, child)
        if attr is not None:
            variables.append(_tf_variable(ckpt, name.lstrip("_"), attr))
            full_names.append(attr.full_name)
            continue
        grand = {n for n, _ in _children(graph, child)}
        if flavour == "keras2" and _LAYER_CHILD.match(name):
            continue  # handled by the container
        if name in ("_functional", "_operations") or any(_LAYER_CHILD.match(n) for n in grand):
            nested = _model_from_node(ckpt, graph, node_id, flavour)
            break
        if _has_variables(graph, child, 3):
            raise Unmappable(f"layer node {name!r} holds sub-layers with variables (RNN cell?)")
    if nested is not None:
        return nested
    layer_name = None
    if full_names:
        parts = full_names[0].split("/")
        layer_name = parts[-2] if len(parts) >= 2 else None
    return KLayer(layer_name, variables)


def _has_variables(graph: ObjectGraph, node_id: int, depth: int) -> bool:
    if _variable_attr(graph, node_id) is not None:
        return True
    return depth > 0 and any(_has_variables(graph, c, depth - 1) for _, c in _children(graph, node_id))


def _model_from_node(ckpt: TFIndexCheckpoint, graph: ObjectGraph, node_id: int, flavour: str) -> KLayer:
    children = dict(_children(graph, node_id))
    if flavour == "keras3" or "_functional" in children or "_operations" in children:
        ops_node = children.get("_operations")
        if ops_node is None and "_functional" in children:
            ops_node = dict(_children(graph, children["_functional"])).get("_operations")
        if ops_node is None:
            raise Unmappable("Keras 3 model without _operations")
        ordered = sorted(((int(n), c) for n, c in _children(graph, ops_node) if _OPERATION_CHILD.match(n)))
        layers = [_layer_from_node(ckpt, graph, c, "keras3") for _, c in ordered]
    else:
        ordered = sorted((int(m.group(1)), c) for n, c in _children(graph, node_id)
                         if (m := _LAYER_CHILD.match(n)))
        layers = [_layer_from_node(ckpt, graph, c, "keras2") for _, c in ordered]
    return KLayer(None, [], layers, is_model=True)


def keras_model_from_tf(ckpt: TFIndexCheckpoint) -> tuple[KLayer | None, str | None]:
    """The model's layer tree, or (None, reason) when the checkpoint holds no Keras model."""
    graph = ckpt.object_graph()
    if graph is None:
        return None, "no object graph (a TF1-style checkpoint)"
    found = find_model_node(graph)
    if found is None:
        return None, "no Keras model in the object graph"
    node, flavour = found
    model = _model_from_node(ckpt, graph, node, flavour)
    # Keras 3 full names are "<model name>/<layer name>/<variable>".
    for attr_node in range(len(graph.nodes)):
        attr = _variable_attr(graph, attr_node)
        if flavour == "keras3" and attr is not None and attr.full_name.count("/") >= 2:
            model.name = attr.full_name.split("/")[0]
            break
    return model, None


def model_variable_keys(ckpt: TFIndexCheckpoint) -> list[tuple[str, str]] | None:
    """(full name, checkpoint key) of every variable reachable from the model node without
    passing through the optimizer; None when the graph has no recognisable model."""
    graph = ckpt.object_graph()
    found = find_model_node(graph) if graph is not None else None
    if graph is None or found is None:
        return None
    result: list[tuple[str, str]] = []
    seen = {found[0]}
    queue = [found[0]]
    while queue:
        node = queue.pop(0)
        attr = _variable_attr(graph, node)
        if attr is not None:
            result.append((attr.full_name or attr.checkpoint_key, attr.checkpoint_key))
        for name, child in _children(graph, node):
            if child not in seen and not name.startswith("optimizer"):
                seen.add(child)
                queue.append(child)
    return result


def scalar_variables(ckpt: TFIndexCheckpoint) -> dict[str, float | int]:
    """Scalar ``tf.Variable``s attached directly to the checkpoint root (epoch, global_step,
    best_metric, best_epoch, save_counter) and the optimizer's iteration count."""
    graph = ckpt.object_graph()
    if graph is None:
        return {}
    values: dict[str, float | int] = {}

    def read_scalar(name: str, node: int) -> None:
        attr = _variable_attr(graph, node)
        entry = ckpt.entries.get(attr.checkpoint_key) if attr is not None else None
        if entry is None or entry.numel != 1 or entry.dtype not in STORAGE_NUMPY:
            return
        value = ckpt.read(attr.checkpoint_key).reshape(-1)[0]
        if entry.dtype.startswith(("int", "uint")):
            values[name] = int(value)
        elif entry.dtype.startswith("float") and entry.dtype != "float8":
            values[name] = float(value)

    for name, child in _children(graph, 0):
        read_scalar(name, child)
        if name == "optimizer":
            for opt_name, opt_child in _children(graph, child):
                if opt_name in ("iter", "iterations"):
                    read_scalar("optimizer_iterations", opt_child)
    return values


# --- Keras 2 HDF5 --------------------------------------------------------------------------


def _texts(values: Any) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(values).tolist()]


#: What h5py raises on damaged files (it has no error type of its own).
H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, AttributeError, IndexError)


def h5_attrs(path: Path) -> dict[str, Any]:
    try:
        return _h5_attrs(path)
    except H5_ERRORS as exc:
        raise CorruptCheckpointError(f"damaged HDF5 file ({str(exc)[:120]})", path) from exc


def _h5_attrs(path: Path) -> dict[str, Any]:
    """keras_version, backend and training_config (parsed JSON) of a Keras 2 HDF5 file."""
    import h5py

    info: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        for key in ("keras_version", "backend"):
            if key in f.attrs:
                value = f.attrs[key]
                info[key] = value.decode() if isinstance(value, bytes) else str(value)
        for key in ("training_config", "model_config"):
            if key in f.attrs:
                raw = f.attrs[key]
                try:
                    info[key] = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
                except (ValueError, UnicodeDecodeError):
                    info[key] = None
    return info


def _classes_from_config(config: Any) -> dict[str, str]:
    """layer name -> class name from a model_config (nested models included)."""
    classes: dict[str, str] = {}
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name = (node.get("config") or {}).get("name") if isinstance(node.get("config"), dict) else None
            name = node.get("name") or name
            if isinstance(node.get("class_name"), str) and isinstance(name, str):
                classes.setdefault(name, node["class_name"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return classes


def keras_model_from_h5(path: Path) -> KLayer:
    try:
        return _keras_model_from_h5(path)
    except (Unmappable, CorruptCheckpointError):
        raise
    except H5_ERRORS as exc:
        raise CorruptCheckpointError(f"damaged HDF5 file ({str(exc)[:120]})", path) from exc


def _keras_model_from_h5(path: Path) -> KLayer:
    import h5py

    with h5py.File(path, "r") as f:
        root = f.get("model_weights", f)
        if "layer_names" not in root.attrs:
            raise Unmappable("HDF5 file without layer_names")
        classes: dict[str, str] = {}
        if "model_config" in f.attrs:
            raw = f.attrs["model_config"]
            try:
                classes = _classes_from_config(json.loads(raw.decode() if isinstance(raw, bytes) else raw))
            except (ValueError, UnicodeDecodeError):
                classes = {}
        layers: list[KLayer] = []
        for layer_name in _texts(root.attrs["layer_names"]):
            group = root[layer_name]
            weight_names = _texts(group.attrs.get("weight_names", []))
            variables = []
            for weight_name in weight_names:
                parts = weight_name.split("/")
                if len(parts) > 2:
                    raise Unmappable(f"layer {layer_name!r} is a nested model (weight {weight_name})")
                dataset = group[weight_name]
                dtype = next((k for k, v in STORAGE_NUMPY.items() if v == dataset.dtype.newbyteorder("<")
                              or v == dataset.dtype), None)
                if dtype is None:
                    raise Unmappable(f"weight {weight_name} has dtype {dataset.dtype}")
                dataset_path = dataset.name
                variables.append(KVariable(parts[-1].split(":")[0], dtype, tuple(dataset.shape),
                                           _h5_loader(path, dataset_path), dataset_path))
            layers.append(KLayer(layer_name, variables, class_name=classes.get(layer_name)))
    model = KLayer(None, [], layers, is_model=True)
    return model


def _h5_loader(path: Path, dataset_path: str) -> Any:
    def load() -> np.ndarray:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                values = f[dataset_path][()]
        except H5_ERRORS as exc:
            raise CorruptCheckpointError(f"damaged dataset {dataset_path} ({str(exc)[:80]})", path) from exc
        return np.asarray(values)

    return load
