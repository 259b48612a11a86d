"""``CLASS_SLOTS`` (the per-class Keras 3 layout ckptctl writes without Keras) checked against
what Keras 3 itself writes: for each class, build one layer, give every variable a value of
its own, ``save_weights``, and require each slot path to hold the variable the table says."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptctl.layouts.keras3 import CLASS_SLOTS, WRAPPERS, snake_case

pytestmark = pytest.mark.slow


def _layers() -> dict[str, tuple[Callable[[], Any], tuple[int, ...]]]:
    from keras import layers
    from keras.src.applications.convnext import LayerScale

    def normalization() -> Any:
        layer = layers.Normalization()
        layer.adapt(np.arange(12, dtype="float32").reshape(4, 3))
        return layer

    return {
        "Dense": (lambda: layers.Dense(2), (3,)),
        "EinsumDense": (lambda: layers.EinsumDense("ab,bc->ac", output_shape=2, bias_axes="c"), (3,)),
        "Conv1D": (lambda: layers.Conv1D(2, 3), (5, 3)),
        "Conv2D": (lambda: layers.Conv2D(2, 3), (5, 5, 3)),
        "Conv3D": (lambda: layers.Conv3D(2, 3), (5, 5, 5, 3)),
        "Conv1DTranspose": (lambda: layers.Conv1DTranspose(2, 3), (5, 3)),
        "Conv2DTranspose": (lambda: layers.Conv2DTranspose(2, 3), (5, 5, 3)),
        "Conv3DTranspose": (lambda: layers.Conv3DTranspose(2, 3), (4, 4, 4, 3)),
        "DepthwiseConv1D": (lambda: layers.DepthwiseConv1D(3), (5, 3)),
        "DepthwiseConv2D": (lambda: layers.DepthwiseConv2D(3), (5, 5, 3)),
        "SeparableConv1D": (lambda: layers.SeparableConv1D(2, 3), (5, 3)),
        "SeparableConv2D": (lambda: layers.SeparableConv2D(2, 3), (5, 5, 3)),
        "BatchNormalization": (lambda: layers.BatchNormalization(), (3,)),
        "LayerNormalization": (lambda: layers.LayerNormalization(), (3,)),
        "GroupNormalization": (lambda: layers.GroupNormalization(groups=1), (4, 3)),
        "LayerScale": (lambda: LayerScale(1e-6, 3), (2, 3)),
        "Normalization": (normalization, (3,)),
        "Embedding": (lambda: layers.Embedding(10, 3), (4,)),
        "PReLU": (lambda: layers.PReLU(), (3,)),
        "SimpleRNN": (lambda: layers.SimpleRNN(2), (4, 3)),
        "LSTM": (lambda: layers.LSTM(2), (4, 3)),
        "GRU": (lambda: layers.GRU(2), (4, 3)),
        "RNN": (lambda: layers.RNN(layers.LSTMCell(2)), (4, 3)),
        "Bidirectional": (lambda: layers.Bidirectional(layers.LSTM(2)), (4, 3)),
        "MultiHeadAttention": (lambda: layers.MultiHeadAttention(2, 3), (4, 6)),
        "Attention": (lambda: layers.Attention(use_scale=True, score_mode="concat"), (4, 3)),
        "AdditiveAttention": (lambda: layers.AdditiveAttention(use_scale=True), (4, 3)),
        "TimeDistributed": (lambda: layers.TimeDistributed(layers.Dense(2)), (4, 3)),
    }


def _variable_role_and_name(path: str) -> tuple[str, str]:
    """A Keras 3 variable path (``bidirectional/forward_lstm/lstm_cell/kernel``) as the
    (role, name) pair the table uses."""
    from ckptctl.layouts.keras3 import role_of

    parts = path.split("/")
    return role_of(parts[1:-1]), parts[-1]


def test_the_table_covers_every_class_checked_here() -> None:
    assert set(_layers()) == set(CLASS_SLOTS) | set(WRAPPERS)


@pytest.mark.parametrize("class_name", sorted(set(CLASS_SLOTS) | set(WRAPPERS)))
def test_class_slots_match_what_keras3_writes(class_name: str, tmp_path: Path) -> None:
    import h5py
    import keras

    make, shape = _layers()[class_name]
    layer = make()
    inputs = keras.Input(shape)
    if class_name == "MultiHeadAttention":
        model = keras.Model(inputs, layer(inputs, inputs))
    elif class_name in ("Attention", "AdditiveAttention"):
        model = keras.Model(inputs, layer([inputs, inputs]))
    else:
        model = keras.Model(inputs, layer(inputs))
    # every variable gets values no other variable has: its position + 1, everywhere
    for index, variable in enumerate(layer.weights):
        variable.assign(np.full(variable.shape, index + 1, dtype=variable.dtype))
    path = tmp_path / "layer.weights.h5"
    model.save_weights(str(path))
    expected: dict[str, tuple[str, str]] = {}
    base = f"layers/{snake_case(class_name)}/"
    inner_class = "Dense" if class_name in WRAPPERS else class_name
    if class_name in WRAPPERS:
        base += WRAPPERS[class_name]
    for slot in CLASS_SLOTS[inner_class]:
        for index, name in enumerate(slot.names):
            expected[f"{base}{slot.prefix}vars/{index}"] = (slot.role, name)
    written: dict[str, Any] = {}

    def keep(name: str, obj: Any) -> None:  # visititems stops at a callback's first non-None
        if isinstance(obj, h5py.Dataset):
            written[name] = obj[()]

    with h5py.File(path, "r") as f:
        f.visititems(keep)
    assert set(written) == set(expected), class_name
    # Keras 3 spells these differently from the legacy sources the table is keyed by
    # (Normalization's adapt_* variables; ConvNeXt's LayerScale leaves its weight unnamed).
    renames = {"adapt_mean": "mean", "adapt_variance": "variance", "variable": "gamma"}
    for dataset, (role, name) in expected.items():
        marker = int(np.asarray(written[dataset]).reshape(-1)[0]) if written[dataset].size else None
        variable = layer.weights[marker - 1] if marker else None
        assert variable is not None, dataset
        got_role, got_name = _variable_role_and_name(variable.path)
        assert (got_role, renames.get(got_name, got_name)) == (role, name), dataset
