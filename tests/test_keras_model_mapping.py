"""``--keras-model`` maps, not only checks: a subclassed model and a model with a custom
layer (no layout Keras 3 could derive without the code) convert onto the user's Keras 3
model, which then loads them with Keras 2's predictions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, outputs_for, run_cli, sidecar_of

pytestmark = pytest.mark.slow

CASES = {"subclassed": "examples.keras_models:build_subclassed",
         "custom_layer": "examples.keras_models:build_custom_layer"}
INPUT = np.linspace(-1, 1, 2 * 5, dtype="float32").reshape(2, 5)

LOAD = """
import sys, numpy as np
sys.path.insert(0, {repo!r})
from examples import keras_models
model = getattr(keras_models, {builder!r})()
model.load_weights({weights!r})
np.save({out!r}, np.asarray(model.predict(np.load({inp!r}), verbose=0)))
"""


def _write_keras2(case: str, folder: Path) -> np.ndarray:
    sys.path.insert(0, str(REPO))
    from examples import keras_models

    model = getattr(keras_models, f"build_{case}_keras2")()
    folder.mkdir(parents=True)
    model.save_weights(str(folder / "w.ckpt"))
    if case != "subclassed":  # tf_keras refuses HDF5 for subclassed models
        model.save_weights(str(folder / "wh.h5"))
    return np.asarray(model.predict(INPUT, verbose=0))


@pytest.mark.parametrize("case", sorted(CASES))
def test_keras_model_maps_what_has_no_certain_layout(case: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _write_keras2(case, tmp_path / case)
    sources = [p for p in (tmp_path / case / "w.ckpt", tmp_path / case / "wh.h5")
               if p.exists() or p.with_name(p.name + ".index").exists()]
    # without --keras-model: an honest fallback, never a keras3 claim
    plain = run_cli("convert", "--exp-dir", tmp_path / case, "-v")
    assert plain.exit_code == 0, plain.stderr
    for source in sources:
        assert sidecar_of(source)["weights"]["layout"] == "ckptctl-tensors", source
    monkeypatch.chdir(REPO)
    mapped = run_cli("convert", "--exp-dir", tmp_path / case, "--force", "--keras-model", CASES[case])
    assert mapped.exit_code == 0, mapped.stderr
    np.save(tmp_path / "input.npy", INPUT)
    for source in sources:
        assert sidecar_of(source)["weights"]["layout"] == "keras3", source
        out = tmp_path / f"{source.name}.pred.npy"
        code = LOAD.format(repo=str(REPO), builder=CASES[case].split(":")[1],
                           weights=str(outputs_for(source)[0]), out=str(out),
                           inp=str(tmp_path / "input.npy"))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        np.testing.assert_allclose(np.load(out), expected, rtol=0, atol=1e-6)


def test_keras_model_names_the_first_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_keras2("custom_layer", tmp_path / "custom")
    monkeypatch.chdir(REPO)
    result = run_cli("convert", "--checkpoint", tmp_path / "custom" / "wh.h5", "--keras-model",
                     "examples.keras_models:build_subclassed")
    assert result.exit_code == 1
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert "--keras-model examples.keras_models:build_subclassed" in line
    assert "first mismatch" in line or "variables" in line
    assert not outputs_for(tmp_path / "custom" / "wh.h5")[0].exists()
