"""``--keras-model`` never runs code planted in the tree, and a bad spec is one usage error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import REPO, run_process

pytestmark = pytest.mark.slow

USER_MODULE = """
import keras

def build():
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))
"""


def test_a_keras_py_in_the_tree_does_not_shadow_keras(tmp_path: Path) -> None:
    """Stops: a keras.py (or numpy.py) lying in a downloaded checkpoint tree running when the user's --keras-model module imports keras. Found: hostile review, round 2."""
    import tf_keras

    marker = tmp_path / "PWNED"
    for name in ("keras.py", "numpy.py", "tensorflow.py"):
        (tmp_path / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (tmp_path / "mymodel.py").write_text(USER_MODULE)
    inputs = tf_keras.Input((3,))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(inputs))
    model.save_weights(str(tmp_path / "w.ckpt"))
    for runner in ([sys.executable, "-m", "ckptctl"], [str(Path(sys.executable).parent / "ckptctl")]):
        done = run_process("convert", "--checkpoint", "w.ckpt", "--keras-model", "mymodel:build",
                           "--force", cwd=tmp_path, command=runner)
        assert done.returncode == 0, done.stderr[-2000:]
        assert not marker.exists(), runner


@pytest.mark.parametrize(("spec", "says"), [
    ("badformat", "must be module:function"),
    ("no_such_module_xyz:build", "cannot import no_such_module_xyz"),
    ("examples.keras_models:no_such_function", "has no function no_such_function"),
    ("os:system; rm -rf /", "must be module:function"),
])
def test_a_bad_spec_is_one_usage_error(tmp_path: Path, spec: str, says: str) -> None:
    """Stops: a malformed --keras-model failing every checkpoint (or being passed on unchecked). Found: hostile review, round 2."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "w.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    done = run_process("convert", "--outputs-dir", tmp_path, "--keras-model", spec, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.count(says) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_ctrl_c_during_a_lazy_import_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """Stops: Ctrl-C while --keras-model imports TensorFlow printing a traceback (or 'Aborted!' with exit 1). Found: hostile review, round 2."""
    import signal
    import subprocess
    import time

    (tmp_path / "w.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "ckptctl", "convert", "--outputs-dir", str(tmp_path),
         "--keras-model", "examples.keras_models:build_sequential"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # inside the TensorFlow import that --keras-model triggers
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.rstrip().splitlines()[-1].startswith("interrupted: ")
