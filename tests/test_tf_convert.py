"""TF-index and Keras checkpoints -> Keras 3 ``.weights.h5`` that ``load_weights`` accepts,
checked against the real libraries (TensorFlow, tf_keras, Keras 3) as references."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from helpers import (
    converted_copy,
    leftover_temporaries,
    outputs_exist,
    outputs_for,
    run_cli,
    sidecar_of,
)

import ckptctl

pytestmark = pytest.mark.slow  # every test here builds/uses the TensorFlow tree or imports TF/Keras
REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")



@pytest.fixture(scope="module")
def converted_tf(tmp_path_factory: pytest.TempPathFactory, tf_tree: tuple[Path, dict]) -> tuple[Path, dict]:
    return converted_copy(tmp_path_factory, tf_tree, "tfconv")

def keras3_model(entry: dict[str, Any]) -> Any:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    module_name, function = entry["keras3_entry_point"].split(":")
    return getattr(importlib.import_module(module_name), function)()


def model_inputs(entry: dict[str, Any]) -> Any:
    inputs = [np.asarray(entry["inputs"][name], dtype="float32") for name in entry["input_names"]]
    return inputs[0] if len(inputs) == 1 else inputs


def datasets_of(path: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name] = obj[()]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


def legacy_entries(manifest: dict) -> list[tuple[str, dict]]:
    return [(k, v) for k, v in sorted(manifest["checkpoints"].items())
            if not v["kind"].startswith("keras3")]


def test_every_legacy_checkpoint_loads_into_keras3_and_predicts_the_same(
        converted_tf: tuple[Path, dict]) -> None:
    root, manifest = converted_tf
    entries = legacy_entries(manifest)
    assert len(entries) == 9
    for rel, entry in entries:
        weights = outputs_for(root / rel)[0]
        doc = sidecar_of(root / rel)
        assert doc["weights"]["layout"] == "keras3", rel
        model = keras3_model(entry)
        model.load_weights(str(weights))  # Keras 3 itself, without the legacy model code
        got = model.predict(model_inputs(entry), verbose=0)
        np.testing.assert_allclose(got, np.asarray(entry["predictions"]), rtol=1e-5, atol=1e-6,
                                   err_msg=rel)


def test_every_tensor_equals_what_tensorflow_reads(converted_tf: tuple[Path, dict]) -> None:
    import tensorflow as tf

    root, manifest = converted_tf
    for rel, entry in legacy_entries(manifest):
        expected = entry["keras3_weights_h5"]["datasets"]  # as Keras 3 writes the twin model
        got = datasets_of(outputs_for(root / rel)[0])
        model_paths = {p for p in expected if not p.startswith("optimizer")}
        assert set(got) == model_paths, rel
        reader = tf.train.load_checkpoint(str(root / rel)) if entry["kind"].startswith("tf-index") else None
        for path, info in expected.items():
            if path.startswith("optimizer"):
                continue
            values = got[path]
            assert hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest() == info["sha256"], (rel, path)
            if reader is not None:
                np.testing.assert_array_equal(values, reader.get_tensor(info["source"]), err_msg=path)
        with h5py.File(outputs_for(root / rel)[0], "r") as f:
            for path, name in entry["keras3_weights_h5"]["vars_names"].items():
                if path in f and name and any(p.startswith(path + "/") for p in got):
                    assert f[path].attrs["name"] == name, (rel, path)


def test_optimizer_slots_are_left_out_but_recorded(converted_tf: tuple[Path, dict]) -> None:
    root, _ = converted_tf
    rel = "tf_manager/mlp_voc_img224_bs8_lr1.00e-03_cosine_cb939f2157/last/ckpt-777"
    with h5py.File(outputs_for(root / rel)[0], "r") as f:
        assert "optimizer" not in f
    assert sidecar_of(root / rel)["contents"]["optimizer_state"] is True


def test_checkpoint_manager_metadata(converted_tf: tuple[Path, dict]) -> None:
    root, manifest = converted_tf
    for rel, entry in manifest["checkpoints"].items():
        if entry["kind"] != "tf-index-tf-checkpoint":
            continue
        doc = sidecar_of(root / rel)
        values = entry["values"]
        assert doc["training"]["epoch"] == values["epoch"], rel
        assert doc["training"]["global_step"] == values["global_step"], rel
        assert doc["checkpointing"]["role"] == entry["role"], rel
        assert doc["checkpointing"]["save_counter"] == values["save_counter"], rel
        assert doc["checkpointing"]["best_epoch"] == values["best_epoch"], rel
        if values["best_metric"] is not None:
            assert doc["metrics"]["best_metric"] == pytest.approx(values["best_metric"], rel=1e-6)
        assert doc["model"]["run_name"] == Path(rel).parent.parent.name  # the fingerprint folder
        if entry.get("state_file_timestamp") is not None:
            assert doc["checkpointing"]["saved_at"] == pytest.approx(entry["state_file_timestamp"])
        assert doc["source"]["files"] == [f"{Path(rel).name}.index",
                                          f"{Path(rel).name}.data-00000-of-00001"]


def test_best_folder_without_state_file_is_still_found(tf_tree: tuple[Path, dict]) -> None:
    root, _ = tf_tree
    best = next(root.glob("tf_manager/*/best"))
    assert not (best / "checkpoint").exists()
    rows = json.loads(run_cli("scan", best, "--format", "json").stdout)
    assert [(Path(r["path"]).name, r["format"]) for r in rows] == [("ckpt-777", "tf-index")]


def test_keras_h5_metadata(converted_tf: tuple[Path, dict]) -> None:
    root, manifest = converted_tf
    for rel, entry in manifest["checkpoints"].items():
        if not entry["kind"].startswith("keras2-h5"):
            continue
        doc = sidecar_of(root / rel)
        assert doc["training"]["framework_version"] == entry["keras_version"], rel
        assert doc["model"]["backend"] == entry["backend"], rel
        if entry.get("training_config"):
            assert doc["model"]["training_config"] == entry["training_config"], rel
        if "val_loss" in entry:
            assert doc["training"]["epoch"] == entry["epoch"], rel
            assert doc["metrics"]["valloss"] == pytest.approx(entry["val_loss"], abs=5e-5), rel


def test_keras3_natives_get_a_sidecar_and_are_never_rewritten(
        fresh_tf_tree: tuple[Path, dict]) -> None:
    root, _ = fresh_tf_tree
    native = root / "keras3_native/native.weights.h5"
    archive = root / "keras3_native/native.keras"
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (native, archive)}
    assert run_cli("convert", "--exp-dir", root / "keras3_native").exit_code == 0
    for path, (data, mtime) in before.items():
        assert (path.read_bytes(), path.stat().st_mtime_ns) == (data, mtime)
    weights_doc = sidecar_of(native)
    assert weights_doc["weights_path"] == "native.weights.h5"
    assert weights_doc["source"]["format"] == "keras3-weights-h5"
    keras_doc = sidecar_of(archive)  # native.keras.metadata.yaml: no clash with the above
    assert keras_doc["weights_path"] is None
    assert keras_doc["model"]["architecture"] in ("Sequential", "Functional")
    assert run_cli("validate", "--strict", "--deep", root / "keras3_native").exit_code == 0


def test_keras_model_option_accepts_the_right_model_and_rejects_another(
        fresh_tf_tree: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = fresh_tf_tree
    monkeypatch.chdir(REPO)  # examples.keras_models is importable from the repo root
    source = root / "keras2_sequential/model.ckpt"
    good = run_cli("convert", "--checkpoint", source, "--keras-model",
                   "examples.keras_models:build_sequential")
    assert good.exit_code == 0, good.stderr
    other = root / "keras2_functional/model.ckpt"
    bad = run_cli("convert", "--checkpoint", other, "--keras-model",
                  "examples.keras_models:build_sequential")
    assert bad.exit_code == 1
    assert bad.stderr.startswith(f"error: {other}: does not match --keras-model: ")
    assert outputs_exist(other) == (False, False)
    assert leftover_temporaries(root) == []


def test_find_checkpoint_for_loading_prefers_the_converted_file(fresh_tf_tree: tuple[Path, dict]) -> None:
    root, _ = fresh_tf_tree
    prefix = root / "keras2_sequential/model.ckpt"
    assert ckptctl.find_checkpoint_for_loading(prefix) == (prefix, "tf-index")
    assert ckptctl.find_checkpoint_for_loading(root / "keras2_sequential/model.weights.h5") == (prefix, "tf-index")
    assert run_cli("convert", "--checkpoint", prefix).exit_code == 0
    weights = root / "keras2_sequential/model.weights.h5"
    assert ckptctl.find_checkpoint_for_loading(prefix) == (weights, "keras3")
    assert ckptctl.find_checkpoint_for_loading(weights) == (weights, "keras3")
    assert ckptctl.find_checkpoint_for_loading(root / "nothing/here.ckpt").kind is None


def test_changed_shard_makes_the_checkpoint_stale(fresh_tf_tree: tuple[Path, dict]) -> None:
    root, _ = fresh_tf_tree
    prefix = root / "keras2_functional/model.ckpt"
    assert run_cli("convert", "--checkpoint", prefix).exit_code == 0
    shard = root / "keras2_functional/model.ckpt.data-00000-of-00001"
    os.utime(shard, (1, 2_000_000_000))
    rows = json.loads(run_cli("scan", prefix.parent, "--format", "json").stdout)
    assert rows[0]["status"] == "stale"


@pytest.mark.parametrize("damage", ["flip", "missing shard", "truncated index"])
def test_damaged_tf_checkpoint_fails_cleanly(fresh_tf_tree: tuple[Path, dict], damage: str) -> None:
    root, _ = fresh_tf_tree
    prefix = root / "keras2_sequential/model.ckpt"
    shard = prefix.with_name("model.ckpt.data-00000-of-00001")
    index = prefix.with_name("model.ckpt.index")
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x40
        shard.write_bytes(bytes(data))
        expected_file = shard
    elif damage == "missing shard":
        shard.unlink()
        expected_file = shard
    else:
        index.write_bytes(index.read_bytes()[:-20])
        expected_file = index
    result = run_cli("convert", "--exp-dir", root / "keras2_sequential")
    assert result.exit_code == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert expected_file.name in line, line
    assert "Traceback" not in result.stderr
    assert outputs_exist(prefix) == (False, False)
    assert leftover_temporaries(root) == []


def test_tf_commands_do_not_import_tensorflow(fresh_tf_tree: tuple[Path, dict]) -> None:
    root, _ = fresh_tf_tree
    code = (
        "import sys\n"
        "from ckptctl.cli import main\n"
        f"for args in (['scan', {str(root)!r}], ['convert', '--outputs-dir', {str(root)!r}],\n"
        f"             ['validate', '--strict', '--deep', {str(root)!r}],\n"
        f"             ['catalog', {str(root)!r}, '--best', 'best_metric']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None) or args[0] == 'scan', (args, exc.code)\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf_keras', 'torch') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="
    assert all(outputs_exist(root / "keras2_sequential/model.ckpt"))


def _write_rnn_checkpoints(folder: Path) -> dict[str, np.ndarray]:
    """A Keras 2 LSTM (save_weights) and a Keras 3 LSTM saved with its optimizer inside
    tf.train.Checkpoint; returns each one's predictions on ``RNN_INPUT``."""
    import keras
    import tensorflow as tf
    import tf_keras

    k2 = tf_keras.Sequential([tf_keras.Input((3, 2)), tf_keras.layers.LSTM(4), tf_keras.layers.Dense(1)])
    k2.compile("adam", "mse")
    k2.fit(np.ones((4, 3, 2)), np.ones((4, 1)), verbose=0)
    k2.save_weights(str(folder / "k2_lstm" / "model.ckpt"))
    k3 = keras.Sequential([keras.Input((3, 2)), keras.layers.LSTM(4), keras.layers.Dense(1)])
    optimizer = keras.optimizers.Adam()
    k3.compile(optimizer, "mse")
    k3.fit(np.ones((4, 3, 2)), np.ones((4, 1)), verbose=0)
    tf.train.Checkpoint(model=k3, optimizer=optimizer).write(str(folder / "k3_lstm" / "ckpt-1"))
    return {"k2_lstm/model.ckpt": k2.predict(RNN_INPUT, verbose=0),
            "k3_lstm/ckpt-1": np.asarray(k3.predict(RNN_INPUT, verbose=0))}


RNN_INPUT = np.linspace(-1, 1, 4 * 3 * 2, dtype="float32").reshape(4, 3, 2)


def test_rnn_models_map_to_keras3_and_load(tmp_path: Path) -> None:
    """LSTM cells map to Keras 3's ``layers/lstm/cell/vars`` (they fell back before)."""
    import keras

    expected = _write_rnn_checkpoints(tmp_path)
    result = run_cli("convert", "--outputs-dir", tmp_path, "-v")
    assert result.exit_code == 0, result.stderr
    assert "Keras 3 layout not possible" not in result.stderr
    for rel, predictions in expected.items():
        prefix = tmp_path / rel
        assert sidecar_of(prefix)["weights"]["layout"] == "keras3"
        model = keras.Sequential([keras.Input((3, 2)), keras.layers.LSTM(4), keras.layers.Dense(1)])
        model.load_weights(str(outputs_for(prefix)[0]))
        np.testing.assert_array_equal(model.predict(RNN_INPUT, verbose=0), predictions)


def test_run_name_from_a_relative_prefix(fresh_tf_tree: tuple[Path, dict],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = fresh_tf_tree
    folder = next(root.glob("tf_manager/*/last"))
    monkeypatch.chdir(folder)
    assert run_cli("convert", "--checkpoint", "ckpt-777").exit_code == 0
    assert sidecar_of(folder / "ckpt-777")["model"]["run_name"] == folder.parent.name
