#!/usr/bin/env python
"""The Keras zoo: which architectures load in Keras 3 after ``ckptctl convert``, proven with
the real libraries.

ckptctl promises that a converted ``<stem>.weights.h5`` labelled ``weights.layout: keras3``
loads into the architecture's Keras 3 model with ``model.load_weights()`` *without the
model's code*, and that it falls back to ``ckptctl-tensors`` (saying why) when it cannot be
sure. Hand-made fixtures only show the layouts their author thought of; this zoo builds many
real architectures with tf_keras (Keras 2) and Keras 3, saves them in every legacy form, and
checks each conversion against a Keras 3 model built here, so a wrong ``keras3`` claim
cannot hide. Used by ``tests/test_keras_zoo.py`` and ``tools/keras_zoo_report.py``.

Cases (``CASES``)
-----------------
* ``tf_keras.applications``, one per family, ``include_top=False``, ``weights=None``,
  ``pooling="avg"`` and the smallest square input each accepts (32, Xception 71, Inception
  75): small files, same variables as the full-size model minus the classifier. Families
  missing from either ``tf_keras.applications`` or ``keras.applications`` are skipped with
  the reason (``manifest["skipped_cases"]``). ``MobileNetV2+Adam`` and ``ResNet50+Adam`` take
  one Adam ``fit`` step first, so optimizer slots are in the checkpoints.
* layer families: small tf_keras models around one layer type each, nested models, a
  subclassed model and a custom layer.
* Keras 2 cases are saved three ways, one folder per form (the outputs of ``w.ckpt`` and
  ``w.h5`` would otherwise both be ``w.weights.h5``): ``tf-index`` =
  ``save_weights("w.ckpt")``, ``h5-weights`` = ``save_weights("w.h5")``, ``h5-model`` =
  ``save("m.h5")``. A form tf_keras refuses is recorded with tf_keras' reason.
* ``keras3:*`` cases: Keras 3 models inside ``tf.train.Checkpoint(model=model).save()``
  (``tf-checkpoint``) and, after one Adam step, ``tf.train.Checkpoint(model=..., optimizer=...)``
  saved by a ``CheckpointManager`` (``tf-manager``).

Every variable that starts out constant (biases, BatchNormalization statistics, …) is
perturbed with seeded noise, so a variable loaded into the wrong place changes predictions.
Each case is seeded from its name: a case builds the same whatever ran before it.

Comparability: each Keras 2 case has a Keras 3 *twin* (same builder run with ``keras``).
The build checks the twin has the same variables (shapes, in ``model.weights`` order) and,
given the Keras 2 values with ``set_weights``, predicts the same; ``twin`` in the manifest
records the result, so a pair whose architectures differ is reported, not blamed on ckptctl.

Layout on disk and manifest
---------------------------
``<root>/<folder>/input_<i>.npy`` is the fixed random input; ``<root>/<folder>/<form>/``
holds one saved form (``w.ckpt.*``, ``w.h5``, ``m.h5`` or ``ckpt-1.*``). The original model's
output on the input (inference mode) is ``<folder>/predictions.npy`` for Keras 2 cases (all
forms hold the same weights) and ``<folder>/<form>/predictions.npy`` for Keras 3 ones (the
Adam step changes them); Keras 2 cases add ``twin_predictions.npy``, the twin's output from
the same values. The manifest (JSON, paths relative to ``root``) holds per case: ``case``,
``family``, ``folder``, ``builder`` and ``kwargs`` (the Keras 3 equivalent is
``keras3_builder`` = ``keras3_<builder>(**kwargs)`` of this module, the original
``keras2_builder``), ``framework``, ``input_shapes``/``input_dtypes``/``inputs``, ``fit``
(for ``keras3:*`` cases: the ``tf-manager`` form only), ``twin``, ``twin_predictions`` and
``forms`` (``form``, ``source`` — for TF-index the prefix ``.../w.ckpt`` — and
``predictions``, or ``source: null`` and ``skipped`` with the reason). No tensors: the
check re-reads every variable from the sources with the real libraries.

Judging (``evaluate_zoo``)
--------------------------
A copy of the zoo is converted with ckptctl's convert API (``--outputs-dir``, keeping each
item's notes). Meanwhile one process reads every source back with the library that wrote it
(tf_keras ``load_weights`` into the original; ``tf.train.Checkpoint.restore`` into the Keras
3 model) and records each variable's digest. Each ``keras3`` file is then loaded with
``model.load_weights`` into ``keras3_<builder>`` in fresh processes that never import
tf_keras, as a user's would; it is verified only if every variable equals the source's bit
for bit (``model.weights`` order, which the twin check aligned) and predictions match the
twin's within ``ATOL``. Anything else is ``wrong``.

Processes: tf_keras and Keras 3 import together fine in TF 2.21 (the twin check needs both),
so one process could build everything; the build is split across ``jobs`` worker processes
only to use both cores.

Command line: ``python examples/keras_zoo.py build DIR`` builds (or reuses) a zoo and prints
the manifest path; the other sub-commands are the worker processes used by the functions
below.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Before TensorFlow is imported (it reads them once): quiet C++ logs, bit-stable CPU numerics.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
#: bump when the zoo's content changes in a way the source fingerprint would not show
ZOO_VERSION = 1
N_EVAL = 2  # rows of the fixed input batch
KERAS2_FORMS = ("tf-index", "h5-weights", "h5-model")
KERAS3_FORMS = ("tf-checkpoint", "tf-manager")
FORMS = KERAS2_FORMS + KERAS3_FORMS
#: prediction tolerance of a verified ``keras3`` load (variables must match bit for bit)
ATOL = 1e-5
#: relative tolerance between Keras 2 and Keras 3 predictions of the same weights
TWIN_RTOL = 1e-4
#: Keras 3 load processes run side by side (one per core of the 2-core machines)
LOAD_PROCESSES = 2
APPLICATION_NOTE = ("applications: include_top=False, weights=None, pooling='avg', smallest "
                    "square input each accepts (32x32x3; Xception 71, InceptionV3 and "
                    "InceptionResNetV2 75): the variables of the full model minus its classifier")


# =========================================================================== the cases


@dataclass(frozen=True)
class Case:
    """One architecture of the zoo: ``keras2_<builder>(**kwargs)`` / ``keras3_<builder>(**kwargs)``."""

    name: str
    family: str  # "application" | "layer" | "keras3"
    builder: str  # "application" | "layer"
    kwargs: dict[str, Any]
    inputs: tuple[tuple[tuple[int, ...], str], ...]  # per-sample shape and dtype of each input
    fit: bool = False  # one Adam step before saving (optimizer slots in the checkpoint)
    cost: float = 1.0  # rough build seconds, to split the build between processes

    @property
    def folder(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")

    @property
    def framework(self) -> str:
        return "keras3" if self.family == "keras3" else "tf_keras"

    @property
    def forms(self) -> tuple[str, ...]:
        return KERAS3_FORMS if self.family == "keras3" else KERAS2_FORMS


#: (family, smallest input side accepted with include_top=False, rough build+save seconds)
APPLICATIONS: dict[str, tuple[int, float]] = {
    "MobileNet": (32, 2), "MobileNetV2": (32, 3), "MobileNetV3Small": (32, 3),
    "ResNet50": (32, 5), "ResNet50V2": (32, 4), "DenseNet121": (32, 6),
    "EfficientNetB0": (32, 4), "EfficientNetV2B0": (32, 5), "ConvNeXtTiny": (32, 4),
    "Xception": (71, 3), "VGG16": (32, 2), "InceptionV3": (75, 5),
    "InceptionResNetV2": (75, 14), "NASNetMobile": (32, 11), "RegNetX002": (32, 3),
}
FITTED_APPLICATIONS = ("MobileNetV2", "ResNet50")


def _application_cases() -> list[Case]:
    cases = []
    for app, (size, cost) in APPLICATIONS.items():
        fitted = app in FITTED_APPLICATIONS
        cases.append(Case(f"{app}+Adam" if fitted else app, "application", "application",
                          {"app": app, "size": size}, (((size, size, 3), "float32"),),
                          fit=fitted, cost=cost + (4 if fitted else 0)))
    return cases


# --- layer families: one small model per layer type; ``lib`` is tf_keras or keras --------
# Layer names are left automatic (what users' checkpoints have), except where a case is about
# a user-chosen name; every build starts from clear_session(), so twins get the same names.


def _seq(lib: Any, shape: tuple[int, ...], *layers: Any, dtype: str = "float32") -> Any:
    return lib.Sequential([lib.layers.Input(shape, dtype=dtype), *layers])


def _simple_rnn(lib: Any) -> Any:
    return _seq(lib, (5, 3), lib.layers.SimpleRNN(4), lib.layers.Dense(2))


def _lstm(lib: Any) -> Any:
    return _seq(lib, (5, 3), lib.layers.LSTM(4), lib.layers.Dense(2))


def _gru(lib: Any) -> Any:
    return _seq(lib, (5, 3), lib.layers.GRU(4), lib.layers.Dense(2))


def _bidirectional_lstm(lib: Any) -> Any:
    return _seq(lib, (5, 3), lib.layers.Bidirectional(lib.layers.LSTM(4)), lib.layers.Dense(2))


def _embedding_bigru(lib: Any) -> Any:
    L = lib.layers
    return _seq(lib, (6,), L.Embedding(20, 4), L.Bidirectional(L.GRU(3)), L.Dense(2), dtype="int32")


def _time_distributed(lib: Any) -> Any:
    L = lib.layers
    return _seq(lib, (5, 3), L.TimeDistributed(L.Dense(4)), L.GlobalAveragePooling1D(), L.Dense(2))


def _multi_head_attention(lib: Any) -> Any:
    L = lib.layers
    x = L.Input((5, 8))
    y = L.MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
    return lib.Model(x, L.Dense(2)(L.GlobalAveragePooling1D()(y)))


def _attention(lib: Any) -> Any:
    L = lib.layers
    x = L.Input((5, 8))
    query, value = L.Dense(6)(x), L.Dense(6)(x)
    y = L.Attention(use_scale=True)([query, value])
    return lib.Model(x, L.Dense(2)(L.GlobalAveragePooling1D()(y)))


def _conv1d(lib: Any) -> Any:
    L = lib.layers
    return _seq(lib, (8, 3), L.Conv1D(4, 3), L.GlobalAveragePooling1D(), L.Dense(2))


def _conv3d(lib: Any) -> Any:
    L = lib.layers
    return _seq(lib, (4, 4, 4, 2), L.Conv3D(3, 2), L.GlobalAveragePooling3D(), L.Dense(2))


def _separable_conv2d(lib: Any) -> Any:
    L = lib.layers
    return _seq(lib, (8, 8, 3), L.SeparableConv2D(4, 3), L.GlobalAveragePooling2D(), L.Dense(2))


def _depthwise_named(lib: Any) -> Any:
    L = lib.layers
    return _seq(lib, (8, 8, 3), L.DepthwiseConv2D(3, name="stem_dw"), L.GlobalAveragePooling2D(),
                L.Dense(2))


def _conv2d_transpose(lib: Any) -> Any:
    L = lib.layers
    return _seq(lib, (4, 4, 3), L.Conv2DTranspose(3, 3, strides=2), L.GlobalAveragePooling2D(),
                L.Dense(2))


def _layer_normalization(lib: Any) -> Any:
    L = lib.layers
    return _seq(lib, (5,), L.Dense(6), L.LayerNormalization(), L.Dense(2))


def _group_normalization(lib: Any) -> Any:
    L = lib.layers
    return _seq(lib, (6, 6, 3), L.Conv2D(4, 3), L.GroupNormalization(groups=2),
                L.GlobalAveragePooling2D(), L.Dense(2))


def _batchnorm_no_scale(lib: Any) -> Any:
    L = lib.layers
    return _seq(lib, (5,), L.Dense(6), L.BatchNormalization(scale=False), L.Dense(2))


def _normalization(lib: Any, adapt: bool = True) -> Any:
    L = lib.layers
    norm = L.Normalization()
    if adapt:  # the Keras 3 twin gets its statistics from the loaded weights instead
        norm.adapt(np.random.default_rng(7).normal(3.0, 2.0, size=(64, 5)).astype("float32"))
    return _seq(lib, (5,), norm, L.Dense(2))


def _prelu(lib: Any) -> Any:
    L = lib.layers
    return _seq(lib, (5,), L.Dense(6), L.PReLU(), L.Dense(2))


def _nested_mobilenet(lib: Any) -> Any:
    L = lib.layers
    return lib.Sequential([
        lib.applications.MobileNetV2(include_top=False, input_shape=(32, 32, 3), weights=None),
        L.GlobalAveragePooling2D(), L.Dense(10)])


def _sequential_in_functional(lib: Any) -> Any:
    L = lib.layers
    inner = lib.Sequential([L.Dense(6, activation="relu"), L.Dense(4)])
    x = L.Input((5,))
    return lib.Model(x, L.Dense(2)(inner(x)))


_CLASSES: dict[tuple[str, str], Any] = {}


def _subclass_types(lib: Any) -> tuple[Any, Any]:
    """A ``Model`` subclass with two Dense layers and a ``Layer`` subclass with its own
    ``add_weight`` variables, defined once per library (a class must not change identity
    between builds)."""
    key = (lib.__name__, "classes")
    if key not in _CLASSES:
        class TwoDense(lib.Model):  # type: ignore[misc, name-defined]
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.hidden = lib.layers.Dense(6, activation="relu")
                self.head = lib.layers.Dense(2)

            def call(self, inputs: Any) -> Any:
                return self.head(self.hidden(inputs))

        class ScaleShift(lib.layers.Layer):  # type: ignore[misc, name-defined]
            def build(self, input_shape: Any) -> None:
                width = int(input_shape[-1])
                self.scale = self.add_weight(name="scale", shape=(width,), initializer="ones")
                self.shift = self.add_weight(name="shift", shape=(width,), initializer="zeros")

            def call(self, inputs: Any) -> Any:
                return inputs * self.scale + self.shift

        _CLASSES[key] = (TwoDense, ScaleShift)
    return _CLASSES[key]  # type: ignore[no-any-return]


def _subclassed(lib: Any) -> Any:
    model = _subclass_types(lib)[0]()
    model(np.zeros((1, 5), "float32"))  # a subclassed model has variables once called
    return model


def _custom_layer(lib: Any) -> Any:
    L = lib.layers
    return _seq(lib, (5,), _subclass_types(lib)[1](), L.Dense(2))


LayerBuilder = Callable[[Any], Any]
#: name -> (builder taking the library, inputs)
LAYER_CASES: dict[str, tuple[LayerBuilder, tuple[tuple[tuple[int, ...], str], ...]]] = {
    "SimpleRNN": (_simple_rnn, (((5, 3), "float32"),)),
    "LSTM": (_lstm, (((5, 3), "float32"),)),
    "GRU": (_gru, (((5, 3), "float32"),)),
    "Bidirectional(LSTM)": (_bidirectional_lstm, (((5, 3), "float32"),)),
    "Embedding+Bidirectional(GRU)": (_embedding_bigru, (((6,), "int32"),)),
    "TimeDistributed(Dense)": (_time_distributed, (((5, 3), "float32"),)),
    "MultiHeadAttention": (_multi_head_attention, (((5, 8), "float32"),)),
    "Attention(use_scale)": (_attention, (((5, 8), "float32"),)),
    "Conv1D": (_conv1d, (((8, 3), "float32"),)),
    "Conv3D": (_conv3d, (((4, 4, 4, 2), "float32"),)),
    "SeparableConv2D": (_separable_conv2d, (((8, 8, 3), "float32"),)),
    "DepthwiseConv2D(named)": (_depthwise_named, (((8, 8, 3), "float32"),)),
    "Conv2DTranspose": (_conv2d_transpose, (((4, 4, 3), "float32"),)),
    "LayerNormalization": (_layer_normalization, (((5,), "float32"),)),
    "GroupNormalization": (_group_normalization, (((6, 6, 3), "float32"),)),
    "BatchNormalization(scale=False)": (_batchnorm_no_scale, (((5,), "float32"),)),
    "Normalization(adapted)": (_normalization, (((5,), "float32"),)),
    "PReLU": (_prelu, (((5,), "float32"),)),
    "Nested: Sequential(MobileNetV2)": (_nested_mobilenet, (((32, 32, 3), "float32"),)),
    "Nested: Sequential in functional": (_sequential_in_functional, (((5,), "float32"),)),
    "Subclassed model": (_subclassed, (((5,), "float32"),)),
    "Custom layer": (_custom_layer, (((5,), "float32"),)),
}
_LAYER_COST = {"Nested: Sequential(MobileNetV2)": 4.0}

#: Keras 3 models saved inside tf.train.Checkpoint: (case, builder, kwargs, inputs)
KERAS3_CASES: tuple[tuple[str, str, dict[str, Any], tuple[tuple[tuple[int, ...], str], ...]], ...] = (
    ("keras3:MobileNetV2", "application", {"app": "MobileNetV2", "size": 32},
     (((32, 32, 3), "float32"),)),
    ("keras3:Sequential CNN", "layer", {"name": "Sequential CNN"}, (((8, 8, 3), "float32"),)),
    ("keras3:LSTM", "layer", {"name": "LSTM"}, (((5, 3), "float32"),)),
    ("keras3:Bidirectional(LSTM)", "layer", {"name": "Bidirectional(LSTM)"}, (((5, 3), "float32"),)),
    ("keras3:Nested: Sequential(MobileNetV2)", "layer", {"name": "Nested: Sequential(MobileNetV2)"},
     (((32, 32, 3), "float32"),)),
    ("keras3:Nested: Sequential in functional", "layer", {"name": "Nested: Sequential in functional"},
     (((5,), "float32"),)),
)


def _sequential_cnn(lib: Any) -> Any:
    L = lib.layers
    return _seq(lib, (8, 8, 3), L.Conv2D(4, 3, activation="relu"), L.BatchNormalization(),
                L.MaxPooling2D(), L.Flatten(), L.Dense(2))


_EXTRA_LAYER_BUILDERS: dict[str, LayerBuilder] = {"Sequential CNN": _sequential_cnn}


def all_cases() -> list[Case]:
    """Every case, in table order."""
    cases = _application_cases()
    cases += [Case(name, "layer", "layer", {"name": name}, inputs, cost=_LAYER_COST.get(name, 0.5))
              for name, (_, inputs) in LAYER_CASES.items()]
    cases += [Case(name, "keras3", builder, kwargs, inputs, fit=True,
                   cost=6.0 if "MobileNet" in name else 2.0)
              for name, builder, kwargs, inputs in KERAS3_CASES]
    return cases


CASES = all_cases()


# --- the builders the manifest names (``keras2_<builder>`` / ``keras3_<builder>``) ---------


def _application(lib: Any, app: str, size: int) -> Any:
    return getattr(lib.applications, app)(include_top=False, weights=None,
                                          input_shape=(size, size, 3), pooling="avg")


def _layer(lib: Any, name: str, adapt: bool) -> Any:
    if name == "Normalization(adapted)":
        return _normalization(lib, adapt=adapt)
    builder = LAYER_CASES[name][0] if name in LAYER_CASES else _EXTRA_LAYER_BUILDERS[name]
    return builder(lib)


def keras3_application(app: str, size: int) -> Any:
    """The Keras 3 model a converted application checkpoint loads into."""
    import keras

    return _application(keras, app, size)


def keras2_application(app: str, size: int) -> Any:
    """The tf_keras (Keras 2) original of an application case."""
    import tf_keras

    return _application(tf_keras, app, size)


def keras3_layer(name: str) -> Any:
    """The Keras 3 model of a layer-family case (Normalization not adapted: its statistics
    come from the loaded weights)."""
    import keras

    return _layer(keras, name, adapt=False)


def keras2_layer(name: str) -> Any:
    """The tf_keras (Keras 2) original of a layer-family case."""
    import tf_keras

    return _layer(tf_keras, name, adapt=True)


def build_model(framework: str, builder: str, kwargs: dict[str, Any]) -> Any:
    """``keras3_<builder>`` or ``keras2_<builder>`` of this module, called with ``kwargs``."""
    prefix = "keras3" if framework == "keras3" else "keras2"
    function: Callable[..., Any] = globals()[f"{prefix}_{builder}"]
    return function(**kwargs)


# =========================================================================== helpers


def _seed_of(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _short_name(variable: Any) -> str:
    """``kernel`` for tf_keras (``dense/kernel:0``) and Keras 3 (``kernel``) variables."""
    return str(variable.name).split("/")[-1].split(":")[0]


def _values(model: Any) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in model.weights]


def _perturb_constants(model: Any, rng: np.random.Generator) -> None:
    """Give every constant float variable (zero biases, unit gammas, fresh BatchNormalization
    statistics) distinct values, so a misplaced variable changes predictions. Normalization's
    adapted statistics are left alone (their layer caches them when adapted)."""
    for variable in model.weights:
        if _short_name(variable) in ("mean", "variance", "count"):
            continue
        value = np.asarray(variable.numpy())
        if value.dtype.kind != "f" or (value.size > 1 and np.ptp(value) > 0):
            continue
        noise = rng.normal(0.0, 0.05, size=value.shape)
        if "variance" in _short_name(variable):
            noise = np.abs(noise)
        variable.assign((value + noise).astype(value.dtype))


def _inputs(case: Case) -> list[np.ndarray]:
    rng = np.random.default_rng(_seed_of(case.name) + 1)
    arrays = []
    for shape, dtype in case.inputs:
        if dtype.startswith("int"):
            arrays.append(rng.integers(0, 20, size=(N_EVAL, *shape)).astype(dtype))
        else:
            arrays.append(rng.normal(size=(N_EVAL, *shape)).astype(dtype))
    return arrays


def _call(model: Any, xs: Sequence[np.ndarray]) -> np.ndarray:
    """Inference-mode output (BatchNormalization uses its moving statistics)."""
    out = model(list(xs) if len(xs) > 1 else xs[0], training=False)
    return np.asarray(out, dtype="float32")


def _first_lines(exc: BaseException, count: int = 3, limit: int = 400) -> str:
    """The first ``count`` non-empty lines of an exception on one line (Keras' loading
    errors name the failing layer on their second line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:count]
    if len(lines) > 1 and lines[-1].endswith(":"):  # the header of a list left out
        lines.pop()
    text = " ".join(lines)
    return f"{type(exc).__name__}: {text[:limit]}{'…' if len(text) > limit else ''}"


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """``Type: first sentence`` of an exception, for a table cell."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > limit and ". " in text:
        text = text[: text.index(". ") + 1]
    if len(text) > limit:
        text = text[:limit] + "…"
    return f"{type(exc).__name__}: {text}".strip()


def _quiet() -> contextlib.AbstractContextManager[None]:
    """Silence TF/absl Python logging and the expected legacy-format warnings (the same
    helper the TF example tree uses)."""
    from build_tf_tree import _quiet_tf  # examples/ is on sys.path wherever the zoo is built

    return _quiet_tf(None)


def digest(value: np.ndarray) -> str:
    """sha256 of dtype, shape and C-order bytes: equal digests mean bit-identical arrays."""
    arr = np.ascontiguousarray(value)
    head = f"{arr.dtype.str}|{arr.shape}|".encode()
    return hashlib.sha256(head + arr.tobytes()).hexdigest()


#: where the building code of this file ends (what ``fingerprint`` hashes)
_CHECKING_STARTS = "# " + "=" * 75 + " reference values"


def fingerprint() -> str:
    """What a built zoo depends on: the building part of this file, ZOO_VERSION and the
    library versions (read from package metadata, without importing TensorFlow)."""
    from importlib.metadata import PackageNotFoundError, version

    source = HERE.read_text()
    build_code = source.split(_CHECKING_STARTS, 1)[0]  # changes to the checks keep the build
    parts = [str(ZOO_VERSION), hashlib.sha256(build_code.encode()).hexdigest()]
    for package in ("tensorflow-cpu", "tensorflow", "keras", "tf-keras", "numpy", "h5py"):
        try:
            parts.append(f"{package}={version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package}=-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# =========================================================================== building


def _availability(case: Case, tf_keras: Any, keras: Any) -> str | None:
    """Why a case cannot be built here (None when it can)."""
    if case.builder != "application":
        return None
    app = case.kwargs["app"]
    missing = [name for name, lib in (("tf_keras", tf_keras), ("keras", keras))
               if not hasattr(lib.applications, app)]
    if missing:
        return f"{app} does not exist in {' and '.join(m + '.applications' for m in missing)}"
    return None


def _fit_one_step(lib: Any, model: Any, xs: list[np.ndarray], seed: int) -> None:
    """One Adam step on random targets: the checkpoint then holds optimizer slots."""
    rng = np.random.default_rng(seed)
    batch = [np.concatenate([x, x]) for x in xs]  # a batch of 4
    out_shape = _call(model, xs).shape[1:]
    target = rng.normal(size=(len(batch[0]), *out_shape)).astype("float32")
    # Eager: one step does not repay tracing (or Keras 3's XLA compilation on CPU).
    model.compile(optimizer=lib.optimizers.Adam(1e-3), loss="mse", run_eagerly=True)
    model.fit(batch if len(batch) > 1 else batch[0], target, batch_size=len(target), epochs=1,
              verbose=0, shuffle=False)


def _twin_check(case: Case, keras2_model: Any, xs: list[np.ndarray], expected: np.ndarray,
                keras: Any, twin_file: Path) -> dict[str, Any]:
    """Does ``keras3_<builder>`` build the same architecture? Same variable shapes in
    ``model.weights`` order, and the same predictions once given the Keras 2 values (saved
    to ``twin_file``: what a correctly loaded Keras 3 model must predict)."""
    keras.backend.clear_session()
    twin = build_model("keras3", case.builder, case.kwargs)
    shapes2 = [tuple(v.shape) for v in keras2_model.weights]
    shapes3 = [tuple(v.shape) for v in twin.weights]
    result: dict[str, Any] = {"equivalent": False, "problem": None, "max_abs_diff": None,
                              "variables": len(shapes2)}
    if shapes2 != shapes3:
        first = next((i for i, (a, b) in enumerate(zip(shapes2, shapes3, strict=False)) if a != b),
                     min(len(shapes2), len(shapes3)))
        result["problem"] = (f"variables differ: Keras 2 has {len(shapes2)}, Keras 3 has "
                             f"{len(shapes3)}; first difference at #{first}")
        return result
    twin.set_weights(_values(keras2_model))
    for layer in twin.layers:  # as Keras 3's load_weights does after loading Normalization
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()
    twin_predictions = _call(twin, xs)
    np.save(twin_file, twin_predictions)
    diff = float(np.max(np.abs(twin_predictions - expected)))
    result["max_abs_diff"] = diff
    # Keras 2 and Keras 3 kernels may round differently (deep nets drift by ~1e-5).
    if not np.allclose(twin_predictions, expected, rtol=TWIN_RTOL, atol=ATOL):
        result["problem"] = f"same variables but predictions differ by {diff:.3g}"
        return result
    result["equivalent"] = True
    return result


def _save_keras2(case: Case, model: Any, folder: Path, root: Path) -> list[dict[str, Any]]:
    """The three tf_keras forms, each in its own folder; a refused form says why."""
    savers: dict[str, tuple[str, Callable[[str], Any]]] = {
        "tf-index": ("w.ckpt", model.save_weights),
        "h5-weights": ("w.h5", model.save_weights),
        "h5-model": ("m.h5", model.save),
    }
    forms = []
    for form, (file_name, save) in savers.items():
        form_dir = folder / form
        form_dir.mkdir(parents=True)
        target = form_dir / file_name
        try:
            save(str(target))
        except Exception as exc:  # tf_keras refuses some forms (HDF5 of a subclassed model)
            shutil.rmtree(form_dir)
            forms.append({"form": form, "source": None, "skipped": f"tf_keras refuses: {_first_line(exc)}"})
            continue
        forms.append({"form": form, "source": target.relative_to(root).as_posix(),
                      "predictions": (folder / "predictions.npy").relative_to(root).as_posix()})
    return forms


def _save_keras3(case: Case, model: Any, folder: Path, root: Path, xs: list[np.ndarray],
                 tf: Any, keras: Any) -> list[dict[str, Any]]:
    """``tf.train.Checkpoint(model=...).save()``; then one Adam step and a CheckpointManager
    save of model, optimizer and step (the layout of a custom TF training loop)."""
    forms = []
    bare = folder / "tf-checkpoint"
    bare.mkdir(parents=True)
    prefix = tf.train.Checkpoint(model=model).save(str(bare / "ckpt"))
    np.save(bare / "predictions.npy", _call(model, xs))
    forms.append({"form": "tf-checkpoint", "source": Path(prefix).relative_to(root).as_posix(),
                  "predictions": (bare / "predictions.npy").relative_to(root).as_posix()})
    _fit_one_step(keras, model, xs, _seed_of(case.name) + 2)
    managed = folder / "tf-manager"
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                               step=tf.Variable(1, dtype=tf.int64))
    prefix = tf.train.CheckpointManager(ckpt, str(managed), max_to_keep=2).save()
    np.save(managed / "predictions.npy", _call(model, xs))
    forms.append({"form": "tf-manager", "source": Path(prefix).relative_to(root).as_posix(),
                  "predictions": (managed / "predictions.npy").relative_to(root).as_posix()})
    return forms


def _build_case(case: Case, root: Path) -> dict[str, Any]:
    import keras
    import tensorflow as tf
    import tf_keras

    started = time.perf_counter()
    folder = root / case.folder
    entry: dict[str, Any] = {
        "case": case.name, "family": case.family, "folder": case.folder,
        "builder": case.builder, "kwargs": case.kwargs, "framework": case.framework,
        "keras3_builder": f"keras3_{case.builder}", "keras2_builder":
            None if case.family == "keras3" else f"keras2_{case.builder}",
        "input_shapes": [list(shape) for shape, _ in case.inputs],
        "input_dtypes": [dtype for _, dtype in case.inputs], "fit": case.fit,
    }
    seed = _seed_of(case.name)
    lib = keras if case.family == "keras3" else tf_keras
    lib.backend.clear_session()
    lib.utils.set_random_seed(seed)
    model = build_model(case.framework, case.builder, case.kwargs)
    _perturb_constants(model, np.random.default_rng(seed))
    xs = _inputs(case)
    folder.mkdir(parents=True)
    entry["inputs"] = []
    for index, x in enumerate(xs):
        np.save(folder / f"input_{index}.npy", x)
        entry["inputs"].append(f"{case.folder}/input_{index}.npy")
    if case.family == "keras3":
        entry["forms"] = _save_keras3(case, model, folder, root, xs, tf, keras)
        entry["twin"] = {"equivalent": True, "problem": None, "max_abs_diff": 0.0,
                         "variables": len(model.weights)}
        entry["twin_predictions"] = None  # the original is Keras 3: its own predictions
    else:
        if case.fit:
            _fit_one_step(tf_keras, model, xs, seed + 2)
        expected = _call(model, xs)
        np.save(folder / "predictions.npy", expected)
        entry["forms"] = _save_keras2(case, model, folder, root)
        entry["twin"] = _twin_check(case, model, xs, expected, keras, folder / "twin_predictions.npy")
        entry["twin_predictions"] = f"{case.folder}/twin_predictions.npy"
    entry["build_seconds"] = round(time.perf_counter() - started, 2)
    return entry


def build_cases(root: Path, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Build the named cases (all by default) into ``root`` in this process; return the
    manifest part (``cases``, ``skipped_cases``). Imports TensorFlow, tf_keras and Keras 3."""
    import keras
    import tf_keras

    chosen = [c for c in CASES if names is None or c.name in names]
    cases, skipped = [], []
    with _quiet():
        for case in chosen:
            why_not = _availability(case, tf_keras, keras)
            if why_not is None:
                try:
                    cases.append(_build_case(case, root))
                    continue
                except Exception as exc:  # a family that does not build here is recorded
                    shutil.rmtree(root / case.folder, ignore_errors=True)
                    why_not = f"does not build: {_first_line(exc)}"
            skipped.append({"case": case.name, "reason": why_not})
    return {"cases": cases, "skipped_cases": skipped}


def _split(cases: Sequence[Case], jobs: int) -> list[list[str]]:
    """Cases into ``jobs`` groups of similar cost (longest first, each to the lightest)."""
    groups: list[list[str]] = [[] for _ in range(jobs)]
    loads = [0.0] * jobs
    for case in sorted(cases, key=lambda c: -c.cost):
        lightest = loads.index(min(loads))
        groups[lightest].append(case.name)
        loads[lightest] += case.cost
    return [g for g in groups if g]


def _python() -> list[str]:
    return [sys.executable, str(HERE)]


def build_zoo(root: Path, jobs: int | None = None) -> dict[str, Any]:
    """Build the whole zoo into ``root`` (emptied first) with ``jobs`` worker processes
    (default: one per core, at most 2) and return the manifest. The parent never imports
    TensorFlow, so a test session stays light."""
    started = time.perf_counter()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    jobs = jobs or max(1, min(2, os.cpu_count() or 1))
    groups = _split(CASES, jobs)
    with tempfile.TemporaryDirectory(prefix="keras-zoo-") as scratch:
        procs = []
        for index, names in enumerate(groups):
            part = Path(scratch) / f"part{index}.json"
            names_file = Path(scratch) / f"names{index}.json"
            names_file.write_text(json.dumps(names))
            command = [*_python(), "_build-part", str(root), str(names_file), str(part)]
            log = open(Path(scratch) / f"log{index}.txt", "w")  # noqa: SIM115 (closed below)
            procs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), part, log))
        parts = []
        for proc, part, log in procs:
            code = proc.wait()
            log.close()
            if code != 0:
                raise RuntimeError(f"zoo build worker failed (exit {code}):\n"
                                   + Path(log.name).read_text()[-4000:])
            parts.append(json.loads(part.read_text()))
    order = {case.name: i for i, case in enumerate(CASES)}
    cases = sorted((c for p in parts for c in p["cases"]), key=lambda c: order[c["case"]])
    skipped = sorted((s for p in parts for s in p["skipped_cases"]), key=lambda s: order[s["case"]])
    return {"zoo_version": ZOO_VERSION, "fingerprint": fingerprint(), "notes": [APPLICATION_NOTE],
            "versions": parts[0]["versions"] if parts else {}, "jobs": len(groups),
            "build_seconds": round(time.perf_counter() - started, 1),
            "cases": cases, "skipped_cases": skipped}


def build_zoo_cached(root: Path, jobs: int | None = None) -> dict[str, Any]:
    """``build_zoo`` unless ``root`` already holds a complete build with the same
    ``fingerprint()``; the manifest is kept beside it as ``<root>.manifest.json``."""
    manifest_file = root.with_name(root.name + ".manifest.json")
    if manifest_file.exists() and root.is_dir():
        manifest: dict[str, Any] = json.loads(manifest_file.read_text())
        if manifest.get("fingerprint") == fingerprint():
            manifest["reused"] = True
            return manifest
        manifest_file.unlink()
    manifest = build_zoo(root, jobs)
    manifest_file.write_text(json.dumps(manifest, indent=1))  # written last: marks completion
    return manifest


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf
    import tf_keras

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "tf_keras": tf_keras.__version__}


# =========================================================================== reference values


def _load_inputs(root: Path, entry: dict[str, Any]) -> list[np.ndarray]:
    return [np.load(root / path) for path in entry["inputs"]]


def read_references(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """For every saved form: the variables as the real library reads them back from the
    source (digest, dtype, shape, name, in ``model.weights`` order), and whether that model
    reproduces the recorded predictions. Keras 2 sources are loaded into the tf_keras
    original with tf_keras itself; Keras 3 ``tf.train.Checkpoint`` sources are restored into
    the Keras 3 model with ``tf.train.Checkpoint.restore``. Run in its own process."""
    import keras
    import tensorflow as tf
    import tf_keras

    out: dict[str, Any] = {}
    with _quiet():
        for entry in manifest["cases"]:
            lib = keras if entry["framework"] == "keras3" else tf_keras
            xs = _load_inputs(root, entry)
            lib.backend.clear_session()
            model = build_model(entry["framework"], entry["builder"], entry["kwargs"])
            for form in entry["forms"]:
                if form["source"] is None:
                    continue
                key = f"{entry['case']}/{form['form']}"
                source = root / form["source"]
                try:
                    if entry["framework"] == "keras3":
                        status = tf.train.Checkpoint(model=model).restore(str(source))
                        status.expect_partial().assert_existing_objects_matched()
                    else:
                        status = model.load_weights(str(source))
                        if status is not None:
                            status.expect_partial()
                except Exception as exc:
                    out[key] = {"error": f"the real library cannot read it back: {_first_line(exc)}"}
                    continue
                expected = np.load(root / form["predictions"])
                diff = float(np.max(np.abs(_call(model, xs) - expected)))
                out[key] = {
                    "error": None,
                    "prediction_diff": diff,
                    "variables": [{"name": str(v.name), "dtype": np.asarray(v.numpy()).dtype.str,
                                   "shape": list(v.shape), "digest": digest(np.asarray(v.numpy()))}
                                  for v in model.weights],
                }
    return out


# =========================================================================== Keras 3 loading


def load_keras3(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Load each converted file into its Keras 3 model with ``model.load_weights`` and
    compare with the reference: predictions within ``ATOL`` and every variable bit for bit.
    Must run in a process that never imported tf_keras.

    A case's model is built once for all its forms (building dominates the time); before
    each load every variable is set to a sentinel (NaN, -1), so a variable the file fails to
    set can never pass with the previous form's values."""
    import keras

    results: dict[str, Any] = {}
    built: tuple[str, Any] | None = None
    with _quiet():
        for job in jobs:
            result: dict[str, Any] = {"load_error": None}
            results[job["key"]] = result
            model_key = json.dumps([job["builder"], job["kwargs"]], sort_keys=True)
            try:
                if built is None or built[0] != model_key:
                    built = None
                    keras.backend.clear_session()
                    built = (model_key, build_model("keras3", job["builder"], job["kwargs"]))
                model = built[1]
                _fill_with_sentinels(model)
            except Exception as exc:
                result["build_error"] = _first_line(exc)
                continue
            try:
                model.load_weights(job["weights"])
            except Exception as exc:
                result["load_error"] = _first_lines(exc)
                continue
            xs = [np.load(p) for p in job["inputs"]]
            got = _call(model, xs)
            # The target is Keras 3's own prediction from the source's exact values (the
            # twin's); the original's (Keras 2) prediction may differ by kernel rounding.
            target = np.load(job["twin_predictions"] or job["predictions"])
            result["prediction_diff"] = float(np.max(np.abs(got - target)))
            result["predictions_close"] = bool(np.allclose(got, target, rtol=0, atol=ATOL))
            original = np.load(job["predictions"])
            result["original_prediction_diff"] = float(np.max(np.abs(got - original)))
            result["variable_problems"] = _compare_variables(model, job["reference"])
    results["__tf_keras_imported__"] = sorted(m for m in sys.modules if m.split(".")[0] == "tf_keras")
    return results


def _fill_with_sentinels(model: Any) -> None:
    for variable in model.weights:
        value = np.asarray(variable.numpy())
        sentinel = np.nan if value.dtype.kind == "f" else -1
        variable.assign(np.full(value.shape, sentinel, dtype=value.dtype))


def _compare_variables(model: Any, reference: list[dict[str, Any]]) -> list[str]:
    """Mismatches between the loaded model's variables and the source's (same order)."""
    problems = []
    loaded = model.weights
    if len(loaded) != len(reference):
        return [f"the model has {len(loaded)} variables, the source {len(reference)}"]
    for index, (variable, ref) in enumerate(zip(loaded, reference, strict=True)):
        value = np.asarray(variable.numpy())
        ref_dtype = np.dtype(ref["dtype"])
        if value.dtype != ref_dtype:  # e.g. an int32 counter that the source stored as int64
            cast = value.astype(ref_dtype)
            if np.array_equal(cast.astype(value.dtype), value):
                value = cast
        if digest(value) != ref["digest"]:
            problems.append(f"#{index} {variable.path} != source {ref['name']}")
    return problems


# =========================================================================== evaluating


@dataclass
class Outcome:
    """What happened to one saved form of one case. ``status``: ``keras3`` (verified),
    ``fallback``, ``failed`` (convert failed), ``wrong`` (labelled keras3 but does not load or
    differs), ``skipped`` (tf_keras refused the form), ``unverified`` (keras3 but the
    reference or the twin could not be checked), ``missed`` (convert did not find it);
    ``pending`` only while its Keras 3 load runs."""

    case: str
    form: str
    status: str
    detail: str = ""
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.case}/{self.form}"


def _run_worker(args: list[str], scratch: Path, name: str) -> subprocess.Popen[bytes]:
    with open(scratch / f"{name}.log", "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen([*_python(), *args], stdout=log, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen[bytes], scratch: Path, name: str, output: Path) -> Any:
    code = proc.wait()
    if code != 0 or not output.exists():
        log = (scratch / f"{name}.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"keras zoo worker {name} failed (exit {code}):\n{log}")
    return json.loads(output.read_text())


def _split_jobs(jobs: list[dict[str, Any]], parts: int) -> list[list[dict[str, Any]]]:
    """Load jobs into ``parts`` groups of similar size (variables to build and compare),
    keeping a case's forms together so each model is built once."""
    by_case: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        by_case.setdefault(job["key"].rsplit("/", 1)[0], []).append(job)
    groups: list[list[dict[str, Any]]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for case_jobs in sorted(by_case.values(), key=lambda js: -sum(len(j["reference"]) for j in js)):
        lightest = loads.index(min(loads))
        groups[lightest] += case_jobs
        loads[lightest] += sum(len(j["reference"]) + 50 for j in case_jobs)
    return [g for g in groups if g]


def convert_zoo(converted_root: Path) -> dict[str, Any]:
    """``ckptctl convert --outputs-dir`` through the API, to keep each item's notes."""
    from ckptctl.ops.convert import ConvertOptions, convert, targets_for_outputs_dir

    targets, warnings_ = targets_for_outputs_dir(converted_root, True)
    report = convert(targets, ConvertOptions())
    return {"items": {item.source.relative_to(converted_root).as_posix(): item
                      for item in report.items}, "warnings": warnings_}


def _layout_of(sidecar: Path) -> tuple[str | None, str | None]:
    from ckptctl.sidecars import parse_sidecar

    parsed = parse_sidecar(sidecar)
    if parsed.weights_path is None or parsed.weights is None:
        return None, None
    return parsed.weights.layout, str(sidecar.parent / parsed.weights_path)


def _fallback_reason(notes: list[str]) -> str:
    """The one-line reason of a fallback, from convert's note
    ("Keras 3 layout not possible (<reason>); wrote ckptctl-tensors instead")."""
    for note in notes:
        match = re.match(r"Keras 3 layout not possible \((.*)\); wrote", note, re.S)
        if match:
            return match.group(1).strip()
    return "; ".join(notes).strip()


@dataclass
class ZooRun:
    """The judged zoo: one ``Outcome`` per case and form, in manifest order, and how long
    each step took."""

    outcomes: list[Outcome]
    timings: dict[str, float]


def evaluate_zoo(zoo_root: Path, manifest: dict[str, Any], work: Path,
                 keep_copy: bool = False) -> ZooRun:
    """Copy the zoo into ``work``, convert the copy, and judge every saved form.

    The references are read from the original zoo in one process (tf_keras + TF) while the
    copy converts in this one; then every ``keras3`` result is loaded in fresh Keras 3
    processes. The converted copy (as large as the zoo, plus its outputs) is removed
    afterwards unless ``keep_copy``."""
    work.mkdir(parents=True, exist_ok=True)
    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    manifest_file = scratch / "manifest.json"
    manifest_file.write_text(json.dumps(manifest))
    references_file = scratch / "references.json"
    reference_proc = _run_worker(["_reference", str(zoo_root), str(manifest_file),
                                  str(references_file)], scratch, "reference")
    converted = work / "converted"
    timings: dict[str, float] = {}
    try:
        if converted.exists():
            shutil.rmtree(converted)
        started = time.perf_counter()
        shutil.copytree(zoo_root, converted)
        timings["copy_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        conversion = convert_zoo(converted)
        timings["convert_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        references = _wait(reference_proc, scratch, "reference", references_file)
        timings["reference_wait_seconds"] = time.perf_counter() - started

        outcomes: list[Outcome] = []
        jobs: list[dict[str, Any]] = []
        for entry in manifest["cases"]:
            for form in entry["forms"]:
                outcome, job = _classify(entry, form, conversion, references, zoo_root)
                outcomes.append(outcome)
                if job is not None:
                    jobs.append(job)
        started = time.perf_counter()
        loaded = _load_all(jobs, scratch)
        timings["load_seconds"] = time.perf_counter() - started
    finally:
        if reference_proc.poll() is None:
            reference_proc.kill()
            reference_proc.wait()
        if not keep_copy:
            shutil.rmtree(converted, ignore_errors=True)
    for outcome in outcomes:
        if outcome.status == "pending":
            _judge(outcome, loaded.get(outcome.key, {"load_error": "no result from the load process"}))
    return ZooRun(outcomes, {k: round(v, 1) for k, v in timings.items()})


def _classify(entry: dict[str, Any], form: dict[str, Any], conversion: dict[str, Any],
              references: dict[str, Any], zoo_root: Path) -> tuple[Outcome, dict[str, Any] | None]:
    """The outcome of one form as far as convert and the reference tell; a ``keras3`` file
    stays ``pending`` and comes with its Keras 3 load job."""
    outcome = Outcome(entry["case"], form["form"], "", source=form["source"])
    if form["source"] is None:
        outcome.status, outcome.detail = "skipped", form["skipped"]
        return outcome, None
    item = conversion["items"].get(form["source"])
    if item is None:
        outcome.status, outcome.detail = "missed", "convert did not find this checkpoint"
        return outcome, None
    if item.status != "converted":
        outcome.status = "failed"
        outcome.detail = (item.reason or item.status).strip().splitlines()[0]
        return outcome, None
    layout, weights = _layout_of(item.sidecar)
    if layout != "keras3":
        outcome.status = "fallback"
        outcome.detail = _fallback_reason(item.notes) or f"layout {layout}, no reason given"
        outcome.extra["layout"] = layout
        return outcome, None
    reference = references.get(outcome.key, {})
    if reference.get("error") or not reference.get("variables"):
        outcome.status = "unverified"
        outcome.detail = reference.get("error") or "no reference values"
        return outcome, None
    if reference["prediction_diff"] > ATOL:
        outcome.status = "unverified"
        outcome.detail = (f"the source read back by the real library predicts "
                          f"{reference['prediction_diff']:.3g} off the recording")
        return outcome, None
    outcome.status = "pending"
    outcome.extra["twin"] = entry["twin"]
    twin_predictions = entry["twin_predictions"]
    return outcome, {
        "key": outcome.key, "builder": entry["builder"], "kwargs": entry["kwargs"],
        "weights": weights, "inputs": [str(zoo_root / p) for p in entry["inputs"]],
        "predictions": str(zoo_root / form["predictions"]),
        "twin_predictions": str(zoo_root / twin_predictions) if twin_predictions else None,
        "reference": reference["variables"]}


def _load_all(jobs: list[dict[str, Any]], scratch: Path) -> dict[str, Any]:
    """Run the load jobs in ``LOAD_PROCESSES`` fresh Keras 3 processes side by side."""
    workers = []
    for index, group in enumerate(_split_jobs(jobs, LOAD_PROCESSES)):
        jobs_file, loaded_file = scratch / f"jobs{index}.json", scratch / f"loaded{index}.json"
        jobs_file.write_text(json.dumps(group))
        name = f"load-keras3-{index}"
        workers.append((_run_worker(["_load-keras3", str(jobs_file), str(loaded_file)], scratch,
                                    name), name, loaded_file))
    loaded: dict[str, Any] = {}
    for proc, name, loaded_file in workers:
        part = _wait(proc, scratch, name, loaded_file)
        if part.pop("__tf_keras_imported__"):
            raise RuntimeError(f"the Keras 3 load process {name} imported tf_keras")
        loaded.update(part)
    return loaded


def _judge(outcome: Outcome, result: dict[str, Any]) -> None:
    """A ``keras3`` label is right only if Keras 3 loads it and it equals the source."""
    twin = outcome.extra.get("twin") or {}
    if result.get("build_error"):
        outcome.status = "unverified"
        outcome.detail = f"the Keras 3 twin does not build: {result['build_error']}"
    elif result.get("load_error"):
        outcome.status = "wrong"
        outcome.detail = f"Keras 3 load_weights fails: {result['load_error']}"
    elif not twin.get("equivalent"):
        # Loads, but the twin is not the same architecture: nothing to compare against.
        outcome.status = "unverified"
        outcome.detail = f"loads, but the Keras 2/3 pair differs ({twin.get('problem')})"
    elif result.get("variable_problems"):
        problems = result["variable_problems"]
        outcome.status = "wrong"
        outcome.detail = (f"{len(problems)} variable(s) differ from the source after loading "
                          f"(first: {problems[0]})")
    elif not result.get("predictions_close"):
        outcome.status = "wrong"
        outcome.detail = f"predictions differ by {result.get('prediction_diff', float('nan')):.3g}"
    else:
        outcome.status = "keras3"
        outcome.detail = (f"max |Δprediction| {result['prediction_diff']:.2g} (vs the "
                          f"original {result['original_prediction_diff']:.2g})")


# =========================================================================== reporting


def cell(outcome: Outcome | None) -> str:
    """One table cell: ``keras3 ✓`` / ``fallback: …`` / ``FAILED: …`` / ``WRONG: …``."""
    if outcome is None:
        return "—"
    text = {
        "keras3": "keras3 ✓",
        "fallback": f"fallback: {outcome.detail}",
        "failed": f"FAILED: {outcome.detail}",
        "missed": f"FAILED: {outcome.detail}",
        "wrong": f"WRONG: {outcome.detail}",
        "skipped": f"n/a: {outcome.detail}",
        "unverified": f"keras3 ? (unverified: {outcome.detail})",
    }[outcome.status]
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(outcomes: Sequence[Outcome], manifest: dict[str, Any]) -> str:
    """Architecture × form, one row per case, for the README."""
    by_key = {o.key: o for o in outcomes}
    header = "| architecture | " + " | ".join(f"`{f}`" for f in FORMS) + " |"
    lines = [header, "|" + "---|" * (len(FORMS) + 1)]
    for entry in manifest["cases"]:
        cells = [cell(by_key.get(f"{entry['case']}/{form}")) for form in FORMS]
        lines.append(f"| {entry['case']} | " + " | ".join(cells) + " |")
    for skipped in manifest.get("skipped_cases", []):
        lines.append(f"| {skipped['case']} | " + " | ".join(
            [f"not built: {skipped['reason']}"] + ["—"] * (len(FORMS) - 1)) + " |")
    return "\n".join(lines)


def summary(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return dict(sorted(counts.items()))


def twin_problems(manifest: dict[str, Any]) -> list[str]:
    """Keras 2/Keras 3 pairs whose architectures differ (their conversions cannot be checked)."""
    return [f"{c['case']}: {c['twin']['problem']}" for c in manifest["cases"]
            if not c["twin"]["equivalent"]]


# =========================================================================== command line


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or reuse) the zoo in DIR; print the manifest path")
    build.add_argument("root", type=Path)
    build.add_argument("--jobs", type=int, default=None)
    part = sub.add_parser("_build-part")
    part.add_argument("root", type=Path)
    part.add_argument("names", type=Path)
    part.add_argument("output", type=Path)
    ref = sub.add_parser("_reference")
    ref.add_argument("root", type=Path)
    ref.add_argument("manifest", type=Path)
    ref.add_argument("output", type=Path)
    load = sub.add_parser("_load-keras3")
    load.add_argument("jobs", type=Path)
    load.add_argument("output", type=Path)
    args = parser.parse_args(argv)

    if args.command == "build":
        manifest = build_zoo_cached(args.root.resolve(), args.jobs)
        print(args.root.resolve().with_name(args.root.name + ".manifest.json"))
        print(f"{len(manifest['cases'])} cases, {len(manifest['skipped_cases'])} skipped, "
              f"built in {manifest['build_seconds']} s", file=sys.stderr)
    elif args.command == "_build-part":
        result = build_cases(args.root, json.loads(args.names.read_text()))
        result["versions"] = _versions()
        args.output.write_text(json.dumps(result))
    elif args.command == "_reference":
        refs = read_references(args.root, json.loads(args.manifest.read_text()))
        args.output.write_text(json.dumps(refs))
    elif args.command == "_load-keras3":
        loaded = load_keras3(json.loads(args.jobs.read_text()))
        args.output.write_text(json.dumps(loaded))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
