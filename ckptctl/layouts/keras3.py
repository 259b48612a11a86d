"""Keras 3's ``.weights.h5`` layout, derived from a legacy checkpoint without the model code.

Keras 3 (``keras/src/saving/saving_lib.py``) stores a model's weights as

    /vars                                 attrs: name=<model name>; the model's own variables
    /layers/<key>/vars/<i>                the i-th variable of the layer, in the layer's order
    /layers/<key>/layers/<key>/vars/<i>   layers of a nested model

where ``<key>`` is the snake_case *class* name of the layer made unique per container in
``model.layers`` order (``dense``, ``dense_1``, …), not the layer's own name (which is only
the ``name`` attribute of its ``vars`` group). So the mapping needs each layer's class and
its variables in Keras 3's order. Legacy checkpoints give the layer order (Keras 2's
``layer-N`` children, Keras 3's ``_operations/N``, HDF5 ``layer_names``) and the variable
names; the class is read from Keras' automatic layer name (``conv2d_3`` -> Conv2D) or, for
layers a user named, inferred from its variables (``kernel`` of rank 2 -> Dense, …).
Layers without variables need no group: Keras 3 loads them from nothing. Anything else is
``Unmappable``; the caller then keeps the framework-neutral ``ckptctl-tensors`` layout.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CkptError, VerificationError

#: Keras 3 variable order by layer class (legacy spellings mapped to Keras 3's).
VARIABLE_ORDER: dict[str, tuple[str, ...]] = {
    "Dense": ("kernel", "bias"),
    "EinsumDense": ("kernel", "bias"),
    "Conv1D": ("kernel", "bias"), "Conv2D": ("kernel", "bias"), "Conv3D": ("kernel", "bias"),
    "Conv1DTranspose": ("kernel", "bias"), "Conv2DTranspose": ("kernel", "bias"),
    "Conv3DTranspose": ("kernel", "bias"),
    "DepthwiseConv1D": ("kernel", "bias"), "DepthwiseConv2D": ("kernel", "bias"),
    "SeparableConv1D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "LayerNormalization": ("gamma", "beta"),
    "GroupNormalization": ("gamma", "beta"),
    "Embedding": ("embeddings",),
    "PReLU": ("alpha",),
}
#: Legacy variable names Keras 3 spells differently (per class).
_RENAMES: dict[str, dict[str, str]] = {
    "DepthwiseConv1D": {"depthwise_kernel": "kernel"},
    "DepthwiseConv2D": {"depthwise_kernel": "kernel"},
}
_SNAKE: dict[str, str] = {}


def snake_case(class_name: str) -> str:
    """Keras' ``naming.to_snake_case`` for the class names above (Conv2D -> conv2d)."""
    if class_name not in _SNAKE:
        intermediate = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", class_name)
        _SNAKE[class_name] = re.sub(r"([a-z])([A-Z])", r"\1_\2", intermediate).lower()
    return _SNAKE[class_name]


_CLASS_BY_SNAKE = {snake_case(c): c for c in VARIABLE_ORDER}
_MODEL_SNAKES = {"sequential": "Sequential", "functional": "Functional", "model": "Functional"}


class Unmappable(CkptError, kind="unsupported"):
    """The checkpoint's structure has no known Keras 3 layout."""


@dataclass
class KVariable:
    name: str                      # legacy local name: kernel, gamma, moving_mean, …
    dtype: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]
    source_key: str                # where it came from (checkpoint key / HDF5 path)


@dataclass
class KLayer:
    name: str | None               # the layer's own name (Keras' ``layer.name``)
    variables: list[KVariable] = field(default_factory=list)
    layers: list[KLayer] = field(default_factory=list)   # a nested model's layers
    is_model: bool = False
    class_name: str | None = None  # when the source records it (HDF5 model_config)


@dataclass(frozen=True)
class MappedVariable:
    path: str                      # "layers/dense_1/vars/0"
    layer_name: str | None
    variable: KVariable


def infer_class(layer: KLayer) -> str:
    if layer.class_name in VARIABLE_ORDER:
        return layer.class_name
    if layer.name:
        base = re.sub(r"_\d+$", "", layer.name)
        if base in _CLASS_BY_SNAKE:
            return _CLASS_BY_SNAKE[base]
    names = {v.name for v in layer.variables}
    kernel = next((v for v in layer.variables if v.name == "kernel"), None)
    if names <= {"kernel", "bias"} and kernel is not None:
        return {2: "Dense", 3: "Conv1D", 4: "Conv2D", 5: "Conv3D"}.get(len(kernel.shape), "")
    if {"moving_mean", "moving_variance"} <= names <= set(VARIABLE_ORDER["BatchNormalization"]):
        return "BatchNormalization"  # gamma/beta are absent with scale/center=False
    if names <= {"gamma", "beta"} and names:
        return "LayerNormalization"
    if names == {"embeddings"}:
        return "Embedding"
    if "pointwise_kernel" in names:
        return "SeparableConv2D"
    if names <= {"depthwise_kernel", "bias"} and "depthwise_kernel" in names:
        return "DepthwiseConv2D"
    return ""


def keras3_mapping(model: KLayer) -> list[MappedVariable]:
    """Every variable of ``model`` placed at its Keras 3 path; raises ``Unmappable``."""
    mapped: list[MappedVariable] = []
    _map_container(model, "", mapped)
    if not mapped:
        raise Unmappable("no model variables found")
    return mapped


def _map_container(container: KLayer, prefix: str, out: list[MappedVariable]) -> None:
    used: dict[str, int] = {}
    for layer in container.layers:
        if layer.is_model or layer.layers:
            snake = _MODEL_SNAKES.get(re.sub(r"_\d+$", "", layer.name or ""), "functional")
            key = _unique(snake_case(snake) if snake[0].isupper() else snake, used)
            if layer.variables:
                raise Unmappable(f"nested model {layer.name!r} has variables of its own")
            _map_container(layer, f"{prefix}layers/{key}/", out)
            continue
        if not layer.variables:
            continue  # weightless (Input, Concatenate, Dropout, …): nothing to store
        class_name = infer_class(layer)
        if not class_name:
            names = ", ".join(v.name for v in layer.variables)
            raise Unmappable(f"layer {layer.name!r} with variables ({names}) has no known Keras class")
        order = VARIABLE_ORDER[class_name]
        renames = _RENAMES.get(class_name, {})
        by_name = {renames.get(v.name, v.name): v for v in layer.variables}
        unknown = set(by_name) - set(order)
        if unknown:
            raise Unmappable(f"layer {layer.name!r} ({class_name}) has unexpected variables "
                             + ", ".join(sorted(unknown)))
        key = _unique(snake_case(class_name), used)
        for index, var_name in enumerate(n for n in order if n in by_name):
            out.append(MappedVariable(f"{prefix}layers/{key}/vars/{index}", layer.name, by_name[var_name]))


def _unique(base: str, used: dict[str, int]) -> str:
    count = used.get(base, 0)
    used[base] = count + 1
    return base if count == 0 else f"{base}_{count}"


def write_keras3_weights(dest: Path, model: KLayer, mapped: list[MappedVariable],
                         root_attrs: dict[str, Any]) -> tuple[int, int, dict[str, int]]:
    """Write ``mapped`` in Keras 3's layout. Returns (tensor count, elements, checksums)."""
    import h5py

    from .ckptctl_tensors import checksum

    count = elements = 0
    checksums: dict[str, int] = {}
    with h5py.File(dest, "w") as f:
        for key, value in root_attrs.items():
            f.attrs[key] = value  # Keras ignores root attributes; ckptctl marks its files
        root_vars = f.create_group("vars")
        if model.name:
            root_vars.attrs["name"] = model.name
        for item in mapped:
            group_path = item.path.rsplit("/", 1)[0]
            group = f.require_group(group_path)
            if item.layer_name and "name" not in group.attrs:
                group.attrs["name"] = item.layer_name
            values = item.variable.load()
            if tuple(values.shape) != item.variable.shape:
                raise VerificationError(f"variable {item.variable.source_key} read back with shape {values.shape}")
            f.create_dataset(item.path, data=values)
            checksums["/" + item.path] = checksum(values)
            count += 1
            elements += int(values.size)
    return count, elements, checksums
