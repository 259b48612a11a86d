"""Keras 3's ``.weights.h5`` layout, derived from a legacy checkpoint without the model code.

Keras 3 (``keras/src/saving/saving_lib.py``) walks a model and stores each object's own
variables under the path that leads to it:

    /layers/<key>/vars/<i>                      a layer's own variables, in creation order
    /layers/<key>/cell/vars/<i>                 an RNN's cell (LSTM, GRU, SimpleRNN)
    /layers/<key>/forward_layer/cell/vars/<i>   Bidirectional: forward_layer, backward_layer
    /layers/<key>/layer/vars/<i>                TimeDistributed: the wrapped layer
    /layers/<key>/query_dense/vars/<i>          MultiHeadAttention: query/key/value/output_dense
    /layers/<key>/layers/<key>/vars/<i>         layers of a nested model

where ``<key>`` is the snake_case *class* name of the object, made unique per container in
``model.layers`` order (``dense``, ``dense_1``, …), never the layer's own name. So a layer
maps only when its class is certain. ``CLASS_SLOTS`` is the per-class table (checked
against Keras 3 itself by ``tests/test_keras3_classes.py``); the class comes from the
source's ``model_config`` when it has one, from the structure (an RNN ``cell``, a
``forward_layer``, a wrapped ``layer``, MultiHeadAttention's four projections), from Keras'
automatic layer names (``conv2d_3`` -> Conv2D), or from a variable signature that only one
class has. When signals disagree or stay ambiguous (``gamma`` alone: LayerScale or a
LayerNormalization without ``beta``; a Keras 3 ``kernel`` that may be Conv2D or
DepthwiseConv2D) the layer is ``Unmappable`` with the reason, and the caller keeps the
framework-neutral ``ckptctl-tensors`` layout: a wrong ``keras3`` label is never written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..budgets import spend_output
from ..errors import CkptError, VerificationError

if TYPE_CHECKING:  # numpy is imported only when weights are written: scan never needs it
    import numpy as np

_RNN = ("kernel", "recurrent_kernel", "bias")
_DENSE = ("kernel", "bias")


@dataclass(frozen=True)
class Slot:
    """One Keras 3 variable group of a class: the path under the layer's group, the role
    its variables have in legacy sources, and their order (missing ones are skipped:
    ``use_bias=False``, ``BatchNormalization(scale=False)``)."""

    prefix: str
    role: str
    names: tuple[str, ...]


def _own(*names: str) -> tuple[Slot, ...]:
    return (Slot("", "", names),)


#: Keras 3 layout of every built-in layer class that has variables.
CLASS_SLOTS: dict[str, tuple[Slot, ...]] = {
    "Dense": _own(*_DENSE), "EinsumDense": _own(*_DENSE),
    "Conv1D": _own(*_DENSE), "Conv2D": _own(*_DENSE), "Conv3D": _own(*_DENSE),
    "Conv1DTranspose": _own(*_DENSE), "Conv2DTranspose": _own(*_DENSE),
    "Conv3DTranspose": _own(*_DENSE),
    "DepthwiseConv1D": _own(*_DENSE), "DepthwiseConv2D": _own(*_DENSE),
    "SeparableConv1D": _own("depthwise_kernel", "pointwise_kernel", "bias"),
    "SeparableConv2D": _own("depthwise_kernel", "pointwise_kernel", "bias"),
    "BatchNormalization": _own("gamma", "beta", "moving_mean", "moving_variance"),
    "LayerNormalization": _own("gamma", "beta"),
    "GroupNormalization": _own("gamma", "beta"),
    "LayerScale": _own("gamma"),
    "Normalization": _own("mean", "variance", "count"),
    "Embedding": _own("embeddings"),
    "PReLU": _own("alpha"),
    "Attention": _own("scale", "concat_score_weight"),
    "AdditiveAttention": _own("scale"),
    "SimpleRNN": (Slot("cell/", "", _RNN),),
    "LSTM": (Slot("cell/", "", _RNN),),
    "GRU": (Slot("cell/", "", _RNN),),
    "RNN": (Slot("cell/", "", _RNN),),
    "Bidirectional": (Slot("forward_layer/cell/", "forward", _RNN),
                      Slot("backward_layer/cell/", "backward", _RNN)),
    "MultiHeadAttention": (Slot("query_dense/", "query", _DENSE), Slot("key_dense/", "key", _DENSE),
                           Slot("value_dense/", "value", _DENSE),
                           Slot("output_dense/", "output", _DENSE)),
}
#: Wrappers whose single wrapped layer sits under ``<prefix>`` with its own class's layout.
WRAPPERS: dict[str, str] = {"TimeDistributed": "layer/"}
#: Legacy variable names Keras 3 spells differently (per class).
_RENAMES: dict[str, dict[str, str]] = {
    "DepthwiseConv1D": {"depthwise_kernel": "kernel"},
    "DepthwiseConv2D": {"depthwise_kernel": "kernel"},
    "Normalization": {"adapt_mean": "mean", "adapt_variance": "variance"},  # Keras 3 TF graphs
}
#: The names ``tf_keras.applications`` give their models (all Functional), matched whole:
#: their sub-blocks (``convnext_tiny_stem``, a Sequential) share the prefix.
_APPLICATION_NAME = re.compile(
    r"^(mobilenet_\d\.\d\d_\d+|mobilenetv2_\d\.\d\d_\d+|mobilenetv3(small|large)|"
    r"resnet(50|101|152)(v2)?|resnet-rs-\d+|densenet(121|169|201)|efficientnetb[0-7]|"
    r"efficientnetv2-(b[0-3]|s|m|l)|convnext_(tiny|small|base|large|xlarge)|xception|"
    r"vgg(16|19)|inception_v3|inception_resnet_v2|nasnet|regnet[xy]\d{3})$", re.IGNORECASE)
#: Sub-blocks ``tf_keras.applications`` build as Sequential models (ConvNeXt's stem and
#: downsampling blocks), matched whole.
_APPLICATION_SEQUENTIAL = re.compile(
    r"^convnext_(tiny|small|base|large|xlarge)_(stem|downsampling_block_\d+)$", re.IGNORECASE)
_SNAKE: dict[str, str] = {}


def snake_case(class_name: str) -> str:
    """Keras' ``naming.to_snake_case`` (Conv2D -> conv2d, MultiHeadAttention ->
    multi_head_attention)."""
    if class_name not in _SNAKE:
        intermediate = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", class_name)
        _SNAKE[class_name] = re.sub(r"([a-z])([A-Z])", r"\1_\2", intermediate).lower()
    return _SNAKE[class_name]


_CLASS_BY_SNAKE = {snake_case(c): c for c in (*CLASS_SLOTS, *WRAPPERS)}
_MODEL_CLASSES = {"sequential": "Sequential", "functional": "Functional", "model": "Functional"}


class Unmappable(CkptError, kind="unsupported"):
    """The checkpoint's structure has no certain Keras 3 layout."""


@dataclass
class KVariable:
    name: str                      # canonical local name: kernel, gamma, recurrent_kernel, …
    dtype: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]
    source_key: str                # where it came from (checkpoint key / HDF5 path)
    #: which part of a compound layer it belongs to: "", "forward", "backward", "query", …
    role: str = ""
    #: the name as the source spells it (Keras 3 TF graphs: ``_kernel`` vs ``kernel``)
    raw_name: str = ""


@dataclass
class KLayer:
    name: str | None               # the layer's own name (Keras' ``layer.name``)
    variables: list[KVariable] = field(default_factory=list)
    layers: list[KLayer] = field(default_factory=list)   # a nested model's layers
    is_model: bool = False
    class_name: str | None = None  # when the source records it (HDF5 model_config)
    #: structural facts the source shows: "cell", "forward_layer", "layer", "keras3", …
    evidence: set[str] = field(default_factory=set)
    #: a nested model's first layer has variables (so it is not Functional's InputLayer)
    first_layer_has_variables: bool | None = None


@dataclass(frozen=True)
class MappedVariable:
    path: str                      # "layers/dense_1/vars/0"
    layer_name: str | None
    variable: KVariable


def role_of(parts: list[str]) -> str:
    """The role of a variable inside a compound layer from the path parts above it
    (``forward_lstm/lstm_cell`` or ``forward_layer/cell``: forward; ``query`` or
    ``_query_dense``: query)."""
    for part in parts:
        bare = part.lstrip("_")
        if bare.startswith("forward"):
            return "forward"
        if bare.startswith("backward"):
            return "backward"
        for role in ("query", "key", "value"):
            if bare in (role, f"{role}_dense"):
                return role
        if bare in ("attention_output", "output_dense"):
            return "output"
    return ""


def _rnn_class(layer: KLayer, variables: list[KVariable]) -> str:
    """SimpleRNN, GRU or LSTM from the gate count: recurrent kernels are (units, gates*units)."""
    recurrent = next((v for v in variables if v.name == "recurrent_kernel"), None)
    if recurrent is None or len(recurrent.shape) != 2 or recurrent.shape[0] == 0:
        raise Unmappable(f"layer {layer.name!r}: recurrent layer without a 2-D recurrent_kernel")
    gates, rest = divmod(recurrent.shape[1], recurrent.shape[0])
    cls = {1: "SimpleRNN", 3: "GRU", 4: "LSTM"}.get(gates) if rest == 0 else None
    if cls is None:
        raise Unmappable(f"layer {layer.name!r}: recurrent_kernel {recurrent.shape} fits no "
                         "SimpleRNN/GRU/LSTM")
    return cls


def _name_base(name: str | None) -> str:
    return re.sub(r"_\d+$", "", (name or "").rsplit("/", 1)[-1])


def infer_class(layer: KLayer, private_kernels: bool = False) -> str:
    """The Keras class of a layer with variables, or raise ``Unmappable`` saying why not.

    ``private_kernels``: the source is a Keras 3 TF checkpoint whose Dense/Conv layers
    store ``_kernel``; a plain ``kernel`` then marks a DepthwiseConv layer."""
    names = {v.name for v in layer.variables}
    roles = {v.role for v in layer.variables} - {""}
    auto = _CLASS_BY_SNAKE.get(_name_base(layer.name))
    if layer.class_name:
        cls = layer.class_name.split(">")[-1]
        if cls in CLASS_SLOTS or cls in WRAPPERS:
            return cls
        # a class the table does not know (a custom layer, a Dense subclass, a layer Keras 3
        # dropped): its variables may look familiar, its Keras 3 layout is not certain
        raise Unmappable(f"layer {layer.name!r}: class {cls} has no known Keras 3 layout; "
                         "use --keras-model")
    if roles & {"forward", "backward"}:
        return "Bidirectional"
    if roles & {"query", "key", "value", "output"}:
        if roles != {"query", "key", "value", "output"}:
            raise Unmappable(f"layer {layer.name!r}: attention projections "
                             f"{sorted(roles)} are not MultiHeadAttention's four")
        return "MultiHeadAttention"
    if "layer" in layer.evidence:
        if auto == "TimeDistributed":
            return auto
        raise Unmappable(f"layer {layer.name!r} wraps a layer but its name does not say it is "
                         "TimeDistributed; use --keras-model")
    if "recurrent_kernel" in names or "cell" in layer.evidence:
        return _recurrent_class(layer, auto)
    by_signature = _class_by_signature(layer, names, private_kernels)
    if auto is not None and auto in WRAPPERS:
        return auto
    if auto is not None and by_signature is not None and auto != by_signature \
            and not _compatible(auto, by_signature):
        raise Unmappable(f"layer {layer.name!r}: its name says {auto}, its variables say "
                         f"{by_signature}")
    if auto is not None:
        return auto
    if by_signature is not None:
        return by_signature
    listed = ", ".join(f"{v.raw_name or v.name}{list(v.shape)}" for v in layer.variables)
    raise Unmappable(f"layer {layer.name!r}: class not certain from its variables ({listed}); "
                     "use --keras-model")


def _recurrent_class(layer: KLayer, auto: str | None) -> str:
    """LSTM/GRU/SimpleRNN from the gate count, when the name agrees: a generic
    ``RNN(LSTMCell)`` has the same variables but Keras 3 keys it ``rnn``."""
    by_gates = _rnn_class(layer, layer.variables)
    if auto is not None:
        if auto in ("RNN", by_gates):
            return auto
        raise Unmappable(f"layer {layer.name!r}: its name says {auto}, its gates say {by_gates}")
    if snake_case(by_gates).replace("_", "") in (layer.name or "").lower().replace("_", ""):
        return by_gates  # a user's name that still says lstm/gru/simplernn
    raise Unmappable(f"layer {layer.name!r}: a {by_gates} or an RNN({by_gates}Cell) cannot be "
                     "told apart by its variables; use --keras-model")


#: the kernel rank each kernel-shaped class has (EinsumDense: any)
_KERNEL_RANK = {"Dense": 2, "Conv1D": 3, "Conv1DTranspose": 3, "Conv2D": 4, "Conv2DTranspose": 4,
                "Conv3D": 5, "Conv3DTranspose": 5, "DepthwiseConv1D": 3, "DepthwiseConv2D": 4}


def _compatible(auto: str, signature: str) -> bool:
    # Keras' automatic name is the stronger signal among kernel-shaped classes that share a
    # variable signature (conv2d_transpose vs conv2d; einsum_dense vs dense), never across
    # kernel ranks (a Conv2D named dense_1 is not a Dense).
    kernel_classes = {"Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
                      "Conv2DTranspose", "Conv3DTranspose"}
    if auto not in kernel_classes or signature not in kernel_classes:
        return False
    return auto == "EinsumDense" or _KERNEL_RANK.get(auto) == _KERNEL_RANK.get(signature)


def _class_by_signature(layer: KLayer, names: set[str], private_kernels: bool) -> str | None:
    kernel = next((v for v in layer.variables if v.name == "kernel"), None)
    rank = len(kernel.shape) if kernel is not None else 0
    lowered = (layer.name or "").lower()
    if names <= {"kernel", "bias"} and kernel is not None:
        if "keras3" in layer.evidence and kernel.raw_name == "kernel" and (rank in (3, 4) or private_kernels):
            # Keras 3 keeps Dense/Conv kernels private (``_kernel``): a plain ``kernel`` is a
            # DepthwiseConv or a ConvTranspose, told apart only by the layer's name.
            if "depthwise" in lowered:
                return {3: "DepthwiseConv1D", 4: "DepthwiseConv2D"}.get(rank)
            if "transpose" in lowered or "deconv" in lowered:
                return {3: "Conv1DTranspose", 4: "Conv2DTranspose", 5: "Conv3DTranspose"}.get(rank)
            return None
        return {2: "Dense", 3: "Conv1D", 4: "Conv2D", 5: "Conv3D"}.get(rank)
    if {"moving_mean", "moving_variance"} <= names <= {"gamma", "beta", "moving_mean", "moving_variance"}:
        return "BatchNormalization"  # gamma/beta are absent with scale/center=False
    if names == {"gamma", "beta"}:
        if re.search(r"layer_?norm|(^|_)ln(_|$)", lowered):
            return "LayerNormalization"
        return "GroupNormalization" if re.search(r"group_?norm|(^|_)gn(_|$)", lowered) else None
    if names == {"gamma"}:
        return "LayerScale" if re.search(r"layer_?scale", lowered) else None
    if names == {"embeddings"}:
        return "Embedding"
    if names == {"alpha"}:
        return "PReLU"
    scale = next((v for v in layer.variables if v.name == "scale"), None)
    if scale is not None and names <= {"scale", "concat_score_weight"}:
        # Attention's scale is a scalar; AdditiveAttention's has the feature size
        if len(scale.shape) == 0:
            return "Attention"
        return "AdditiveAttention" if names == {"scale"} else None
    if names in ({"mean", "variance", "count"}, {"adapt_mean", "adapt_variance", "count"}):
        return "Normalization"
    depthwise = next((v for v in layer.variables if v.name == "depthwise_kernel"), None)
    if depthwise is not None and "pointwise_kernel" in names and names <= {
            "depthwise_kernel", "pointwise_kernel", "bias"}:
        return {3: "SeparableConv1D", 4: "SeparableConv2D"}.get(len(depthwise.shape))
    if depthwise is not None and names <= {"depthwise_kernel", "bias"}:
        return {3: "DepthwiseConv1D", 4: "DepthwiseConv2D"}.get(len(depthwise.shape))
    return None


def keras3_mapping(model: KLayer) -> list[MappedVariable]:
    """Every variable of ``model`` placed at its Keras 3 path; raises ``Unmappable``."""
    private_kernels = _uses_private_kernels(model)
    mapped: list[MappedVariable] = []
    _map_container(model, "", mapped, private_kernels)
    if not mapped:
        raise Unmappable("no model variables found")
    return mapped


def _uses_private_kernels(model: KLayer) -> bool:
    return any(v.raw_name == "_kernel" for v in all_variables(model))


def all_variables(layer: KLayer) -> list[KVariable]:
    """Every variable of a layer tree, layer by layer in order (Keras 2's weight order)."""
    return [*layer.variables, *(v for child in layer.layers for v in all_variables(child))]


def model_class(layer: KLayer) -> str:
    """Sequential or Functional for a nested model, or raise ``Unmappable``."""
    if layer.class_name:
        bare = layer.class_name.split(">")[-1]
        if bare in ("Sequential", "Functional", "Model"):
            return "Functional" if bare == "Model" else bare
    base = _name_base(layer.name)
    if base in _MODEL_CLASSES:
        return _MODEL_CLASSES[base]
    if layer.first_layer_has_variables:
        return "Sequential"  # a Functional model's first layer is its weightless InputLayer
    if layer.name and _APPLICATION_NAME.match(layer.name):
        return "Functional"
    if layer.name and _APPLICATION_SEQUENTIAL.match(layer.name):
        return "Sequential"
    raise Unmappable(f"nested model {layer.name!r}: Sequential or Functional cannot be told "
                     "apart in this file; use --keras-model")


def _map_container(container: KLayer, prefix: str, out: list[MappedVariable],
                   private_kernels: bool) -> None:
    used: dict[str, int] = {}
    unknown_weightless = False
    leading_inputs = 0
    for position, layer in enumerate(container.layers):
        if layer.is_model or layer.layers:
            if layer.variables:
                raise Unmappable(f"nested model {layer.name!r} has variables of its own")
            if not all_variables(layer):
                _skip_weightless_model(layer, container.layers[position + 1:], used)
                continue
            key = _unique(snake_case(model_class(layer)), used)
            _map_container(layer, f"{prefix}layers/{key}/", out, private_kernels)
            continue
        if not layer.variables:
            # Weightless (Input, Dropout, …): nothing to store, but Keras 3 still counts it
            # in its class's keys (a TimeDistributed(Flatten) makes the next one
            # time_distributed_1).
            weightless_class = _weightless_class(layer)
            if weightless_class is not None:
                _unique(snake_case(weightless_class), used)
            elif layer.name is None and layer.class_name is None and position > leading_inputs:
                unknown_weightless = True  # a TF graph says nothing of a weightless layer
            if position == leading_inputs and layer.name is None and not layer.evidence:
                leading_inputs += 1  # a Functional model's InputLayers come first
            continue
        class_name = infer_class(layer, private_kernels)
        if unknown_weightless and class_name in _OFTEN_WEIGHTLESS:
            raise Unmappable(f"layer {layer.name!r} ({class_name}): weightless layers before it "
                             "may be of its class, so its Keras 3 key is not certain")
        key = _unique(snake_case(class_name), used)
        base = f"{prefix}layers/{key}/"
        if class_name in WRAPPERS:
            inner = KLayer(None, layer.variables, evidence=layer.evidence - {"layer"})
            inner_class = infer_class(inner, private_kernels)
            if inner_class in WRAPPERS:
                raise Unmappable(f"layer {layer.name!r}: nested wrappers")
            _place(layer, inner_class, base + WRAPPERS[class_name], out)
        else:
            _place(layer, class_name, base, out)


#: classes with weighted instances whose instances can also be weightless: a weightless one
#: still takes a key (Attention without use_scale, LayerNormalization without center/scale)
_MAYBE_WEIGHTLESS = frozenset({"TimeDistributed", "Attention", "AdditiveAttention",
                               "LayerNormalization", "GroupNormalization", "Normalization"})


#: of those, the classes whose weightless instances are common (Attention() has no scale by
#: default): a TF graph's unnamed weightless layer before a weighted one makes its key
#: uncertain. (Weightless LayerNormalization/GroupNormalization, center=scale=False, are
#: rare enough that every Dropout or Add before a LayerNormalization is not held against it.)
_OFTEN_WEIGHTLESS = frozenset({"Attention", "AdditiveAttention"})


def _weightless_class(layer: KLayer) -> str | None:
    """The class of a weightless layer when it is one whose weighted instances have keys."""
    if layer.class_name:
        bare = layer.class_name.split(">")[-1]
        return bare if bare in CLASS_SLOTS or bare in WRAPPERS else None
    if "layer" in layer.evidence:
        return "TimeDistributed"
    auto = _CLASS_BY_SNAKE.get(_name_base(layer.name))
    return auto if auto in _MAYBE_WEIGHTLESS else None  # a weightless "dense" is no Dense


def _skip_weightless_model(layer: KLayer, later: list[KLayer], used: dict[str, int]) -> None:
    """A nested model without variables still takes its class's next key."""
    try:
        _unique(snake_case(model_class(layer)), used)
    except Unmappable:
        if any((child.is_model or child.layers) and all_variables(child) for child in later):
            raise Unmappable(f"nested model {layer.name!r} has no variables and may be "
                             "Sequential or Functional: the keys of the nested models after it "
                             "are not certain") from None


#: variables a class always has (the rest are optional: use_bias=False, center=False, …)
_REQUIRED: dict[str, tuple[tuple[str, str], ...]] = {
    **{c: (("", "kernel"),) for c in _KERNEL_RANK}, "EinsumDense": (("", "kernel"),),
    "SeparableConv1D": (("", "depthwise_kernel"), ("", "pointwise_kernel")),
    "SeparableConv2D": (("", "depthwise_kernel"), ("", "pointwise_kernel")),
    "BatchNormalization": (("", "moving_mean"), ("", "moving_variance")),
    **{c: (("", "kernel"), ("", "recurrent_kernel")) for c in ("SimpleRNN", "LSTM", "GRU", "RNN")},
    "Bidirectional": (("forward", "kernel"), ("forward", "recurrent_kernel"),
                      ("backward", "kernel"), ("backward", "recurrent_kernel")),
    "MultiHeadAttention": tuple((r, "kernel") for r in ("query", "key", "value", "output")),
    "Embedding": (("", "embeddings"),), "PReLU": (("", "alpha"),),
    "Normalization": (("", "mean"), ("", "variance"), ("", "count")),
}
#: dtypes Keras 3 stores as numbers of the same name (ckptctl keeps bfloat16/float8 as raw
#: bits, which Keras 3 would read as integers)
_KERAS3_DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                            "uint8", "uint16", "uint32", "uint64", "bool"})


def _place(layer: KLayer, class_name: str, base: str, out: list[MappedVariable]) -> None:
    renames = _RENAMES.get(class_name, {})
    slots = CLASS_SLOTS[class_name]
    present = {(v.role, renames.get(v.name, v.name)) for v in layer.variables}
    missing = [f"{r + '/' if r else ''}{n}" for r, n in _REQUIRED.get(class_name, ()) if (r, n) not in present]
    if missing:
        raise Unmappable(f"layer {layer.name!r} ({class_name}) lacks " + ", ".join(missing))
    kernel = next((v for v in layer.variables if v.name == "kernel" and not v.role), None)
    if kernel is not None and class_name in _KERNEL_RANK and len(kernel.shape) != _KERNEL_RANK[class_name]:
        raise Unmappable(f"layer {layer.name!r}: a {class_name} kernel cannot have shape "
                         f"{list(kernel.shape)}")
    odd = next((v for v in layer.variables if v.dtype not in _KERAS3_DTYPES), None)
    if odd is not None:
        raise Unmappable(f"layer {layer.name!r}: {odd.name} is {odd.dtype}, which Keras 3 "
                         "weights files store differently")
    taken: set[int] = set()
    for slot in slots:
        by_name = {renames.get(v.name, v.name): (i, v) for i, v in enumerate(layer.variables)
                   if v.role == slot.role}
        index = 0
        for var_name in slot.names:
            if var_name in by_name:
                position, variable = by_name[var_name]
                taken.add(position)
                out.append(MappedVariable(f"{base}{slot.prefix}vars/{index}", layer.name, variable))
                index += 1
    left = [v for i, v in enumerate(layer.variables) if i not in taken]
    if left:
        raise Unmappable(f"layer {layer.name!r} ({class_name}) has unexpected variables "
                         + ", ".join(sorted(f"{v.role + '/' if v.role else ''}{v.name}" for v in left)))


def _unique(base: str, used: dict[str, int]) -> str:
    count = used.get(base, 0)
    used[base] = count + 1
    return base if count == 0 else f"{base}_{count}"


def write_keras3_weights(dest: Path, model: KLayer, mapped: list[MappedVariable],
                         root_attrs: dict[str, Any]) -> tuple[int, int, dict[str, int]]:
    """Write ``mapped`` in Keras 3's layout. Returns (tensor count, elements, checksums)."""
    import h5py

    from ..readers.tensor import STORAGE_NUMPY
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
            dtype = STORAGE_NUMPY.get(item.variable.dtype)
            spend_output(math.prod(item.variable.shape) * (dtype.itemsize if dtype else 1),
                         f"variable {item.variable.source_key[:120]!r}")  # before it is read
            values = item.variable.load()
            if tuple(values.shape) != item.variable.shape:
                raise VerificationError(f"variable {item.variable.source_key} read back with shape {values.shape}")
            f.create_dataset(item.path, data=values)
            checksums["/" + item.path] = checksum(values)
            count += 1
            elements += int(values.size)
    return count, elements, checksums
