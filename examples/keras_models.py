"""Tiny Keras models behind the TensorFlow example checkpoints (``examples/build_tf_tree.py``).

Each legacy model exists twice, with the same layer classes, order, shapes and names:

* a Keras 3 (``import keras``) builder, ``build_<model>()``: the model a converted
  ``<stem>.weights.h5`` is loaded into with ``model.load_weights(path)``, without the original
  training code. Usable as an entry point, e.g.
  ``--keras-model examples.keras_models:build_sequential`` (from the repository root);
* a Keras 2 (``tf_keras``) builder, ``build_<model>_keras2()``: what wrote the legacy file.

Models whose original already is Keras 3 (``build_manager_mlp``, ``build_conv``) have no
Keras 2 twin. Every builder takes no required argument and returns an uncompiled, built model.

Why the names are explicit: Keras hands out default names ("dense_3") from a process-wide
counter, so they would depend on what else ran in the process. The explicit names are the
ones a fresh process would have given (``dense``, ``dense_1``, ``batch_normalization``...),
except the last Dense which is deliberately called ``head``. Note that Keras 3 does *not*
use these names to load a ``.weights.h5`` file: it matches groups by position (``layers/dense``,
``layers/dense_1``... derived from each layer's class, in ``model.layers`` order); the names
only end up in the ``name`` attribute of each ``vars`` group.

Weights are deterministic without touching any global RNG: every kernel initializer gets its
own fixed seed (Keras initializers with an integer seed are stateless), biases start at zero
and BatchNormalization at gamma=1, beta=0, mean=0, variance=1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # the converted files target TF's Keras 3
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # after the environment variables above: Keras reads them on import

SEED = 1234

# Shapes shared by both twins of a model (kept tiny and pairwise different, so a layer mapped
# to the wrong model or position fails on shape instead of silently "loading").
SEQ_IN, SEQ_HIDDEN, SEQ_OUT = 4, 6, 2
FUNC_IMAGE, FUNC_META, FUNC_IMAGE_HIDDEN, FUNC_META_HIDDEN, FUNC_OUT = 8, 3, 5, 4, 2
MLP_IN, MLP_HIDDEN, MLP_OUT = 5, 7, 3
CONV_IN, CONV_FILTERS, CONV_OUT = (6, 6, 2), 3, 2


def _glorot(lib: Any, seed: int) -> Any:
    """A seeded Glorot-uniform initializer of ``lib`` (``keras`` or ``tf_keras``)."""
    return lib.initializers.GlorotUniform(seed=seed)


def _tf_keras() -> Any:
    # Imported lazily: Keras 3 entry points must not pay for (or depend on) tf_keras.
    import tf_keras

    return tf_keras


# --------------------------------------------------------------------------- Sequential MLP
# Input "features" (4,) -> Dense(6, relu) "dense" -> BatchNormalization -> Dense(2) "head".


def _sequential(lib: Any, seed: int) -> Any:
    layers = lib.layers
    return lib.Sequential(
        [
            layers.Input((SEQ_IN,), name="features"),
            layers.Dense(SEQ_HIDDEN, activation="relu", name="dense",
                         kernel_initializer=_glorot(lib, seed)),
            layers.BatchNormalization(name="batch_normalization"),
            layers.Dense(SEQ_OUT, name="head", kernel_initializer=_glorot(lib, seed + 1)),
        ],
        name="sequential",
    )


def build_sequential(seed: int = SEED) -> keras.Model:
    """Keras 3 twin of ``keras2_sequential/model.ckpt`` and of the ``keras2_h5`` files."""
    return _sequential(keras, seed)


def build_sequential_keras2(seed: int = SEED) -> Any:
    """The tf_keras (Keras 2) Sequential that wrote the legacy files."""
    return _sequential(_tf_keras(), seed)


# --------------------------------------------------------------------------- two-input Functional
# image_feats (8,) -> Dense(5, relu) "dense"  \
#                                              Concatenate -> BatchNormalization -> Dense(2) "head"
# meta (3,)        -> Dense(4, relu) "dense_1" /


def _functional(lib: Any, seed: int) -> Any:
    layers = lib.layers
    image = layers.Input((FUNC_IMAGE,), name="image_feats")
    meta = layers.Input((FUNC_META,), name="meta")
    h_image = layers.Dense(FUNC_IMAGE_HIDDEN, activation="relu", name="dense",
                           kernel_initializer=_glorot(lib, seed))(image)
    h_meta = layers.Dense(FUNC_META_HIDDEN, activation="relu", name="dense_1",
                          kernel_initializer=_glorot(lib, seed + 1))(meta)
    merged = layers.Concatenate(name="concatenate")([h_image, h_meta])
    normed = layers.BatchNormalization(name="batch_normalization")(merged)
    out = layers.Dense(FUNC_OUT, name="head", kernel_initializer=_glorot(lib, seed + 2))(normed)
    # Inputs as a list (not a dict): both Keras versions then take [image_feats, meta] in order.
    return lib.Model([image, meta], out, name="functional")


def build_functional(seed: int = SEED) -> keras.Model:
    """Keras 3 twin of ``keras2_functional/model.ckpt``; call it with ``[image_feats, meta]``."""
    return _functional(keras, seed)


def build_functional_keras2(seed: int = SEED) -> Any:
    """The tf_keras (Keras 2) two-input Functional model that wrote the legacy checkpoint."""
    return _functional(_tf_keras(), seed)


# --------------------------------------------------------------------------- Keras 3 originals


def build_manager_mlp(seed: int = SEED + 10) -> keras.Model:
    """The Keras 3 MLP saved under ``tf.train.CheckpointManager`` (``tf_manager/...``).

    Input "features" (5,) -> Dense(7, relu) "dense" -> BatchNormalization -> Dense(3) "head".
    """
    layers = keras.layers
    return keras.Sequential(
        [
            layers.Input((MLP_IN,), name="features"),
            layers.Dense(MLP_HIDDEN, activation="relu", name="dense",
                         kernel_initializer=_glorot(keras, seed)),
            layers.BatchNormalization(name="batch_normalization"),
            layers.Dense(MLP_OUT, name="head", kernel_initializer=_glorot(keras, seed + 1)),
        ],
        name="mlp",
    )


def build_conv(seed: int = SEED + 20) -> keras.Model:
    """The Keras 3 conv net of ``keras3_native/`` (``native.weights.h5``, ``native.keras``).

    Input "image" (6, 6, 2) -> Conv2D(3, 3x3, relu) "conv2d" -> Flatten -> Dense(2) "head".
    """
    layers = keras.layers
    return keras.Sequential(
        [
            layers.Input(CONV_IN, name="image"),
            layers.Conv2D(CONV_FILTERS, 3, activation="relu", name="conv2d",
                          kernel_initializer=_glorot(keras, seed)),
            layers.Flatten(name="flatten"),
            layers.Dense(CONV_OUT, name="head", kernel_initializer=_glorot(keras, seed + 1)),
        ],
        name="conv",
    )


#: Keras 3 builders by name (what the manifest's ``keras3_builder`` refers to).
KERAS3_BUILDERS: dict[str, Callable[[], keras.Model]] = {
    "build_sequential": build_sequential,
    "build_functional": build_functional,
    "build_manager_mlp": build_manager_mlp,
    "build_conv": build_conv,
}

#: tf_keras builders by name (the manifest's ``keras2_builder``; legacy checkpoints only).
KERAS2_BUILDERS: dict[str, Callable[[], Any]] = {
    "build_sequential_keras2": build_sequential_keras2,
    "build_functional_keras2": build_functional_keras2,
}


# ----------------------------------------------- subclassed model and custom layer (issue: --keras-model)
# Neither has a layout Keras 3 could derive without the code (a subclassed model's layers are
# attributes, a custom layer's class is the user's): ckptctl maps them onto the model these
# builders return, in Keras 2's weight order, with --keras-model.
SUB_IN, SUB_HIDDEN, SUB_OUT = 5, 4, 3


def _subclassed(lib: Any, seed: int) -> Any:
    class TwoLayer(lib.Model):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__(name="two_layer")
            self.hidden = lib.layers.Dense(SUB_HIDDEN, activation="relu",
                                           kernel_initializer=_glorot(lib, seed))
            self.out = lib.layers.Dense(SUB_OUT, kernel_initializer=_glorot(lib, seed + 1),
                                        bias_initializer=lib.initializers.Constant(0.5))

        def call(self, inputs: Any) -> Any:
            return self.out(self.hidden(inputs))

    model = TwoLayer()
    model(lib.ops.ones((1, SUB_IN)) if hasattr(lib, "ops") else lib.backend.ones((1, SUB_IN)))
    return model


def build_subclassed(seed: int = SEED + 30) -> keras.Model:
    return _subclassed(keras, seed)


def build_subclassed_keras2(seed: int = SEED + 30) -> Any:
    return _subclassed(_tf_keras(), seed)


def _custom_layer_model(lib: Any, seed: int) -> Any:
    class Scale(lib.layers.Layer):  # type: ignore[misc, name-defined]
        """y = x * w + b, elementwise: a layer Keras does not know."""

        def build(self, input_shape: Any) -> None:
            self.w = self.add_weight(name="w", shape=(input_shape[-1],),
                                     initializer=lib.initializers.RandomNormal(seed=seed))
            self.b = self.add_weight(name="b", shape=(input_shape[-1],), initializer="ones")

        def call(self, inputs: Any) -> Any:
            return inputs * self.w + self.b

    inputs = lib.Input((SUB_IN,))
    hidden = lib.layers.Dense(SUB_HIDDEN, kernel_initializer=_glorot(lib, seed), name="dense")(inputs)
    return lib.Model(inputs, Scale(name="scale")(hidden), name="custom")


def build_custom_layer(seed: int = SEED + 40) -> keras.Model:
    return _custom_layer_model(keras, seed)


def build_custom_layer_keras2(seed: int = SEED + 40) -> Any:
    return _custom_layer_model(_tf_keras(), seed)
