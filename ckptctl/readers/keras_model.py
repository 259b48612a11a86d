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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptCheckpointError
from ..layouts.keras3 import KLayer, KVariable, Unmappable, all_variables, role_of
from .h5safe import H5_ERRORS, budget_for, confine, dataset_at, open_h5, read_dataset
from .tensor import STORAGE_NUMPY
from .tf_index import ObjectGraph, TFIndexCheckpoint

_LAYER_CHILD = re.compile(r"^layer-(\d+)$")
_LAYER_WITH_WEIGHTS = re.compile(r"^layer_with_weights-(\d+)$")
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


def _looks_like_model(graph: ObjectGraph, node: int) -> str | None:
    names = {name for name, _ in _children(graph, node)}
    if any(_LAYER_CHILD.match(n) for n in names):
        return "keras2"
    if "_functional" in names or "_operations" in names:
        return "keras3"
    return None


def _variable_nodes(graph: ObjectGraph, start: int) -> list[int]:
    """Nodes holding variables reachable from ``start``, depth first in the graph's child
    order (the order the model tracked them), never through an optimizer nor, from the
    checkpoint root, through its bookkeeping children (``save_counter``, …)."""
    found: list[int] = []
    seen = {start}
    stack = [start]
    while stack:
        node = stack.pop()
        if _variable_attr(graph, node) is not None:
            found.append(node)
        skipped = _SKIP_ROOT_CHILDREN if node == 0 else ("optimizer",)
        fresh = [child for name, child in _children(graph, node)
                 if child not in seen and not name.startswith(skipped)]
        seen.update(fresh)
        stack.extend(reversed(fresh))
    return found


def find_model_node(graph: ObjectGraph) -> tuple[int, str] | None:
    """(node id, "keras2"|"keras3") of the model in the graph: the root itself for Keras 2
    ``save_weights``, else the nearest node (breadth first, at most 3 levels down, never
    through the optimizer) that looks like a Keras model, provided it holds every variable
    of the checkpoint apart from root scalars (epoch, step): a subclassed model holding a
    Sequential, or a checkpoint with a second model (an EMA copy), has none."""
    queue = [(0, 0)]
    seen = {0}
    while queue:
        node, depth = queue.pop(0)
        flavour = _looks_like_model(graph, node)
        if flavour is not None:
            if node == 0:
                return node, flavour
            root_scalars = {child for _, child in _children(graph, 0)
                            if _variable_attr(graph, child) is not None}
            everything = set(_variable_nodes(graph, 0)) - root_scalars
            return (node, flavour) if everything <= set(_variable_nodes(graph, node)) else None
        if depth >= 3:
            continue
        for name, child in _children(graph, node):
            if child not in seen and not name.startswith(_SKIP_ROOT_CHILDREN):
                seen.add(child)
                queue.append((child, depth + 1))
    return None


def _tf_variable(ckpt: TFIndexCheckpoint, parts: list[str], attr: Any, keras3: bool) -> KVariable:
    entry = ckpt.entries.get(attr.checkpoint_key)
    if entry is None:
        raise CorruptCheckpointError(f"object graph names a missing tensor {attr.checkpoint_key}")
    if entry.dtype not in STORAGE_NUMPY:
        raise Unmappable(f"variable {attr.full_name} has dtype {entry.dtype}")
    key = attr.checkpoint_key
    raw = parts[-1]
    return KVariable(raw.lstrip("_"), entry.dtype, entry.shape, lambda: ckpt.read(key), key,
                     role=role_of(parts[:-1]), raw_name=raw)


#: object-graph children of a layer that are never part of its weights
_NOT_WEIGHTS = ("optimizer", "keras_api", "_self_saveable_object_factories", "_seed_generator",
                "seed_generator", "_tracker")
_MAX_SUBLAYER_DEPTH = 4


def _is_container_child(name: str) -> bool:
    return bool(_LAYER_CHILD.match(name) or _LAYER_WITH_WEIGHTS.match(name)) or name in (
        "_functional", "_operations", "_layers")


#: nested models deeper than this are not real (and a cyclic graph must not recurse forever)
_MAX_MODEL_DEPTH = 32
#: nested models read per graph: shared sub-models (a DAG) must not expand exponentially
_MAX_MODELS_PER_GRAPH = 10_000


@dataclass
class _ModelBudget:
    """Nested models read so far in one graph."""

    read: int = 0

    def spend(self) -> None:
        self.read += 1
        if self.read > _MAX_MODELS_PER_GRAPH:
            raise Unmappable(f"the object graph nests more than {_MAX_MODELS_PER_GRAPH} models "
                             "(shared sub-models expand without bound)")


def _layer_from_node(ckpt: TFIndexCheckpoint, graph: ObjectGraph, node_id: int, flavour: str,
                     models: tuple[int, ...], budget: _ModelBudget) -> KLayer:
    children = _children(graph, node_id)
    names = {name for name, _ in children}
    if any(_LAYER_CHILD.match(n) for n in names) or "_functional" in names or "_operations" in names:
        return _model_from_node(ckpt, graph, node_id, flavour, models, budget)
    variables: list[KVariable] = []
    evidence: set[str] = {"keras3"} if flavour == "keras3" else set()
    full_names: list[tuple[str, int]] = []
    seen_keys: set[str] = set()
    visited: set[int] = {node_id}  # shared sub-objects (and cycles) are walked once

    def collect(node: int, parts: list[str], depth: int) -> None:
        for name, child in _children(graph, node):
            if child in visited:
                continue
            visited.add(child)
            if name.startswith(_NOT_WEIGHTS) or (depth > 0 and _is_container_child(name)):
                continue
            attr = _variable_attr(graph, child)
            if attr is not None:
                if attr.checkpoint_key not in seen_keys:
                    seen_keys.add(attr.checkpoint_key)
                    variables.append(_tf_variable(ckpt, [*parts, name], attr, flavour == "keras3"))
                    full_names.append((attr.full_name, len(parts) + 1))
                continue
            if _is_container_child(name):
                continue
            if depth >= _MAX_SUBLAYER_DEPTH:
                if _has_variables(graph, child, 2):
                    raise Unmappable(f"layer node {name!r} nests sub-layers too deeply")
                continue
            if _looks_like_model(graph, child) is not None and _has_variables(graph, child, 8):
                raise Unmappable(f"a layer wraps a model in {name!r}; use --keras-model")
            evidence.add(name.lstrip("_"))
            collect(child, [*parts, name], depth + 1)

    collect(node_id, [], 0)
    return KLayer(_layer_name(full_names, flavour), variables, evidence=evidence)


def _layer_name(full_names: list[tuple[str, int]], flavour: str) -> str | None:
    """The layer's name from its variables' full names, less the parts inside the layer
    (``bidirectional/forward_lstm/lstm_cell/kernel`` -> ``bidirectional``; DenseNet's
    ``conv1/conv/kernel`` -> ``conv1/conv``). Keras 3 prefixes the model's name."""
    if not full_names:
        return None
    full, inside = min(full_names, key=lambda item: item[1])
    parts = full.split("/")
    kept = parts[: max(1, len(parts) - inside)]
    return kept[-1] if flavour == "keras3" else "/".join(kept)


def _has_variables(graph: ObjectGraph, node_id: int, depth: int) -> bool:
    """Whether a variable lies within ``depth`` edges of ``node_id``: breadth first, each node
    once (a shared sub-graph walked as a tree would cost its fan-out to the power depth)."""
    seen = {node_id}
    level = [node_id]
    for remaining in range(depth, -1, -1):
        if any(_variable_attr(graph, n) is not None for n in level):
            return True
        if not remaining:
            break
        following: list[int] = []
        for n in level:
            for _, child in _children(graph, n):
                if child not in seen:
                    seen.add(child)
                    following.append(child)
        level = following
    return False


def _model_from_node(ckpt: TFIndexCheckpoint, graph: ObjectGraph, node_id: int, flavour: str,
                     models: tuple[int, ...], budget: _ModelBudget) -> KLayer:
    if node_id in models or len(models) >= _MAX_MODEL_DEPTH:
        raise Unmappable("the object graph nests models in a cycle or too deeply")
    budget.spend()
    models = (*models, node_id)
    children = dict(_children(graph, node_id))
    stray = next((n for n, c in children.items() if _LAYER_CHILD.match(n)
                  and _variable_attr(graph, c) is not None), None)
    if stray is not None:
        raise Unmappable(f"the object graph holds a variable where layer {stray!r} should be")
    if flavour == "keras3" or "_functional" in children or "_operations" in children:
        ops_node = children.get("_operations")
        if ops_node is None and "_functional" in children:
            ops_node = dict(_children(graph, children["_functional"])).get("_operations")
        if ops_node is None:
            raise Unmappable("Keras 3 model without _operations")
        ordered = sorted(((int(n), c) for n, c in _children(graph, ops_node) if _OPERATION_CHILD.match(n)))
        layers = [_layer_from_node(ckpt, graph, c, "keras3", models, budget) for _, c in ordered]
    else:
        ordered = sorted((int(m.group(1)), c) for n, c in _children(graph, node_id)
                         if (m := _LAYER_CHILD.match(n)))
        layers = [_layer_from_node(ckpt, graph, c, "keras2", models, budget) for _, c in ordered]
    first = layers[0] if layers else None
    first_has_variables = first is not None and bool(first.variables or first.layers)
    # Keras 3 tracks a Sequential's graph as its `_functional`; a Functional holds
    # `_operations` itself. Keras 2 graphs do not tell the two apart.
    class_name = None
    if flavour == "keras3":
        class_name = "Sequential" if "_functional" in children else "Functional"
    return KLayer(None, [], layers, is_model=True, class_name=class_name,
                  first_layer_has_variables=first_has_variables)


def keras_model_from_tf(ckpt: TFIndexCheckpoint) -> tuple[KLayer | None, str | None]:
    """The model's layer tree, or (None, reason) when the checkpoint holds no Keras model."""
    graph = ckpt.object_graph()
    if graph is None:
        return None, "no object graph (a TF1-style checkpoint)"
    found = find_model_node(graph)
    if found is None:
        return None, "no Keras model in the object graph"
    node, flavour = found
    model = _model_from_node(ckpt, graph, node, flavour, (), _ModelBudget())
    # Keras 3 full names are "<model name>/<layer name>/<variable>".
    for attr_node in range(len(graph.nodes)):
        attr = _variable_attr(graph, attr_node)
        if flavour == "keras3" and attr is not None and attr.full_name.count("/") >= 2:
            model.name = attr.full_name.split("/")[0]
            break
    return model, None


def model_variable_keys(ckpt: TFIndexCheckpoint) -> list[tuple[str, str]] | None:
    """(full name, checkpoint key) of every variable reachable from the model node (else
    from the root: a subclassed model) without passing through the optimizer, depth first
    in the graph's child order (the order the model tracked them: Keras 2's weight order);
    None when there is no object graph."""
    graph = ckpt.object_graph()
    if graph is None:
        return None
    found = find_model_node(graph)
    start = found[0] if found is not None else 0  # a subclassed model: its root attributes
    result = []
    for node in _variable_nodes(graph, start):
        attr = _variable_attr(graph, node)
        result.append((attr.full_name or attr.checkpoint_key, attr.checkpoint_key))
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
            # numpy prints a float32 with the fewest digits that read back as the same
            # float32 (0.42, not 0.41999998688697815): that is what the user logged.
            values[name] = float(str(value))

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


def h5_attrs(path: Path) -> dict[str, Any]:
    try:
        return _h5_attrs(path)
    except H5_ERRORS as exc:
        raise CorruptCheckpointError(f"damaged HDF5 file ({str(exc)[:120]})", path) from exc


def _h5_attrs(path: Path) -> dict[str, Any]:
    """keras_version, backend and training_config (parsed JSON) of a Keras 2 HDF5 file,
    which is refused first unless it is confined (``h5safe.confine``)."""
    info: dict[str, Any] = {}
    with open_h5(path) as f:
        confine(f)
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


@dataclass
class _ConfigLayer:
    """A layer as a Keras 2 ``model_config`` describes it."""

    name: str
    class_name: str
    #: a nested model's layers, in ``model.layers`` order
    layers: list[_ConfigLayer] | None = None


def _config_layers(config: Any, depth: int = 0) -> list[_ConfigLayer] | None:
    """The layers of a (Sequential/Functional) model config, nested models included."""
    if depth > 20 or not isinstance(config, dict):
        return None
    inner = config.get("config")
    entries = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(entries, list):
        return None
    result = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
            continue
        entry_config = entry.get("config")
        name = entry.get("name") or (entry_config.get("name") if isinstance(entry_config, dict) else None)
        if not isinstance(name, str):
            continue
        result.append(_ConfigLayer(name, entry["class_name"], _config_layers(entry, depth + 1)))
    return result


def _refuse_repeats(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise CorruptCheckpointError(f"{what} lists {name[:80]!r} more than once")
        seen.add(name)


def _chunked(attrs: Any, key: str) -> list[str]:
    """A Keras 2 HDF5 name list; lists over 64 KB are split into ``key0``, ``key1``, …"""
    if key in attrs:
        return _texts(attrs[key])
    values: list[str] = []
    index = 0
    while f"{key}{index}" in attrs:
        values.extend(_texts(attrs[f"{key}{index}"]))
        index += 1
    return values


def keras_model_from_h5(path: Path) -> KLayer:
    try:
        return _keras_model_from_h5(path)
    except (Unmappable, CorruptCheckpointError):
        raise
    except H5_ERRORS as exc:
        raise CorruptCheckpointError(f"damaged HDF5 file ({str(exc)[:120]})", path) from exc


def _keras_model_from_h5(path: Path) -> KLayer:
    with open_h5(path) as f:
        confine(f)  # every name below resolves inside the file
        root = f.get("model_weights", f)
        layer_names = _chunked(root.attrs, "layer_names")
        if not layer_names:
            raise Unmappable("HDF5 file without layer_names")
        _refuse_repeats(layer_names, "layer_names")
        config_layers: dict[str, _ConfigLayer] = {}
        if "model_config" in f.attrs:
            raw = f.attrs["model_config"]
            try:
                parsed = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            except (ValueError, UnicodeDecodeError):
                parsed = None
            config_layers = {c.name: c for c in _config_layers(parsed) or []}
        layers = []
        for layer_name in layer_names:
            group = root[layer_name]
            weight_names = _chunked(group.attrs, "weight_names")
            _refuse_repeats(weight_names, f"weight_names of {layer_name}")
            weights = [_h5_variable(path, group, name) for name in weight_names]
            layers.append(_h5_layer(layer_name, weights, config_layers.get(layer_name)))
    return KLayer(None, [], layers, is_model=True)


def h5_every_weight(path: Path) -> list[KVariable]:
    """Every weight of a Keras 2 HDF5 file in ``layer_names``/``weight_names`` order, read
    without interpreting the structure: what the ``ckptctl-tensors`` fallback writes when no
    layer tree can be built (a subclassed model's attributes, a config that lies)."""
    try:
        with open_h5(path) as f:
            confine(f)
            root = f.get("model_weights", f)
            return [_h5_variable(path, root[layer_name], weight_name).variable
                    for layer_name in _chunked(root.attrs, "layer_names")
                    for weight_name in _chunked(root[layer_name].attrs, "weight_names")]
    except (Unmappable, CorruptCheckpointError):
        raise
    except H5_ERRORS as exc:
        raise CorruptCheckpointError(f"damaged HDF5 file ({str(exc)[:120]})", path) from exc


@dataclass
class _H5Weight:
    name: str          # as stored: "bidirectional/forward_lstm/lstm_cell/kernel:0"
    variable: KVariable


def _h5_variable(path: Path, group: Any, weight_name: str) -> _H5Weight:
    dataset = group[weight_name]
    dtype = next((k for k, v in STORAGE_NUMPY.items() if v == dataset.dtype.newbyteorder("<")
                  or v == dataset.dtype), None)
    if dtype is None:
        raise Unmappable(f"weight {weight_name} has dtype {dataset.dtype}")
    local = weight_name.split("/")[-1].split(":")[0]
    variable = KVariable(local, dtype, tuple(dataset.shape), _h5_loader(path, dataset.name),
                         dataset.name, raw_name=local)
    return _H5Weight(weight_name.split(":")[0], variable)


def _h5_layer(layer_name: str, weights: list[_H5Weight], config: _ConfigLayer | None) -> KLayer:
    """One entry of ``layer_names``: a layer (its weights named ``<layer>/…``) or a nested
    model (its weights named by its own layers)."""
    nested = config is not None and config.layers is not None
    # A layer's weights are named "<layer>/…"; some (Normalization's mean:0) have no scope.
    own = all(w.name.startswith(layer_name + "/") or "/" not in w.name for w in weights)
    if not nested and own:
        for weight in weights:
            parts = weight.name[len(layer_name) + 1:].split("/") if "/" in weight.name else [weight.name]
            weight.variable.role = role_of(parts[:-1])
        return KLayer(layer_name, [w.variable for w in weights],
                      class_name=config.class_name if config else None)
    if config is not None and config.layers is not None:
        inner = [_h5_layer_from_config(c, weights) for c in config.layers]
        claimed = sum(len(all_variables(layer)) for layer in inner)
        if claimed != len(weights):
            raise Unmappable(f"nested model {layer_name!r}: its weights do not match its config")
        return KLayer(layer_name, [], inner, is_model=True, class_name=config.class_name)
    scoped = [w.name.split(f"/{layer_name}/", 1)[0] for w in weights if f"/{layer_name}/" in w.name]
    if weights and len(scoped) == len(weights):
        raise Unmappable(f"layer {layer_name!r}: its weights are named under {scoped[0]!r}/ "
                         "(a subclassed model's attribute?); use --keras-model")
    return _h5_nested_by_names(layer_name, weights)


def _h5_layer_from_config(config: _ConfigLayer, weights: list[_H5Weight]) -> KLayer:
    mine = [w for w in weights if w.name.startswith(config.name + "/")]
    if config.layers is not None:
        inner = [_h5_layer_from_config(c, weights) for c in config.layers]
        return KLayer(config.name, [], inner, is_model=True, class_name=config.class_name)
    for weight in mine:
        parts = weight.name[len(config.name) + 1:].split("/")
        weight.variable.role = role_of(parts[:-1])
    return KLayer(config.name, [w.variable for w in mine], class_name=config.class_name)


#: parts of a weight name that sit inside a compound layer (so the layer's name ends before)
_INSIDE_LAYER = re.compile(r"^(.*_cell|forward_.*|backward_.*|query|key|value|attention_output)$")


def _h5_nested_by_names(layer_name: str, weights: list[_H5Weight]) -> KLayer:
    """A nested model saved without its config: its layers from the weight names, in the
    order their first weight appears (Keras saves a model's weights layer by layer)."""
    order: list[str] = []
    grouped: dict[str, list[_H5Weight]] = {}
    for weight in weights:
        parts = weight.name.split("/")
        cut = len(parts) - 1
        while cut > 1 and _INSIDE_LAYER.match(parts[cut - 1]):
            cut -= 1
        inner_name = "/".join(parts[:cut])
        weight.variable.role = role_of(parts[cut:-1])
        if inner_name not in grouped:
            order.append(inner_name)
            grouped[inner_name] = []
        grouped[inner_name].append(weight)
    if layer_name in grouped:
        raise Unmappable(f"layer {layer_name!r}: a nested model with a layer of its own name "
                         "cannot be read without its config")
    inner = [KLayer(name, [w.variable for w in grouped[name]]) for name in order]
    return KLayer(layer_name, [], inner, is_model=True)


def _h5_loader(path: Path, dataset_path: str) -> Any:
    def load() -> np.ndarray:
        # The file is opened again for each weight (and may have changed since it was
        # confined): the dataset is resolved link by link and checked before it is read.
        try:
            with open_h5(path) as f:
                return read_dataset(dataset_at(f, dataset_path), budget_for(f))
        except H5_ERRORS as exc:
            raise CorruptCheckpointError(f"damaged dataset {dataset_path} ({str(exc)[:80]})", path) from exc

    return load
