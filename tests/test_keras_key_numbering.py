"""Keras 3 numbers a class's keys over *every* layer of that class, weightless ones included:
a ``TimeDistributed(Flatten)`` before a ``TimeDistributed(Dense)`` makes the latter
``time_distributed_1``. Converted in all three Keras 2 forms, each loads in Keras 3."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import outputs_for, run_cli, sidecar_of

pytestmark = pytest.mark.slow

BUILD = """
def build(lib):
    inputs = lib.Input((3, 2, 2))
    x = lib.layers.TimeDistributed(lib.layers.Flatten())(inputs)
    x = lib.layers.TimeDistributed(lib.layers.Dense(4))(x)
    return lib.Model(inputs, x)
"""
LOAD = BUILD + """
import sys, numpy as np, keras
model = build(keras)
model.load_weights(sys.argv[1])
np.save(sys.argv[2], np.asarray(model.predict(np.ones((1, 3, 2, 2), "float32"), verbose=0)))
"""


def test_weightless_layers_take_their_class_key(tmp_path: Path) -> None:
    import tf_keras

    namespace: dict[str, object] = {}
    exec(BUILD, namespace)  # the builder text is this test's own, shared with the subprocess
    model = namespace["build"](tf_keras)  # type: ignore[operator]
    expected = model.predict(np.ones((1, 3, 2, 2), "float32"), verbose=0)
    sources = {"ckpt": tmp_path / "a" / "w.ckpt", "weights_h5": tmp_path / "b" / "w.h5",
               "model_h5": tmp_path / "c" / "m.h5"}
    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
    model.save_weights(str(sources["ckpt"]))
    model.save_weights(str(sources["weights_h5"]))
    model.save(str(sources["model_h5"]))
    assert run_cli("convert", "--outputs-dir", tmp_path).exit_code == 0
    for form, source in sources.items():
        assert sidecar_of(source)["weights"]["layout"] == "keras3", form
        out = tmp_path / f"{form}.npy"
        done = subprocess.run([sys.executable, "-c", LOAD, str(outputs_for(source)[0]), str(out)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (form, done.stderr[-1500:])
        np.testing.assert_allclose(np.load(out), expected, atol=1e-6)
