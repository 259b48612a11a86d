"""Sanity checks of the TensorFlow/Keras fixture tree itself (not of ckptctl).

If these fail, the ground truth that converter tests rely on is wrong: fix
``examples/build_tf_tree.py`` or ``examples/keras_models.py`` before looking at product tests.
TensorFlow and both Keras versions are the references here.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # every test here uses the TensorFlow tree or imports TF/Keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

Built = tuple[Path, dict[str, Any]]
REPO = Path(__file__).resolve().parent.parent
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
TF_KINDS = {"tf-index-keras2", "tf-index-tf-checkpoint"}
# Same-process CPU inference of the same weights: differences would be float noise at most.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def libs() -> SimpleNamespace:
    """TensorFlow, Keras 3, tf_keras and the model zoo, imported once per module."""
    import keras
    import tensorflow as tf
    import tf_keras

    tf.get_logger().setLevel("ERROR")
    km = importlib.import_module("keras_models")  # examples/ is on sys.path (conftest)
    return SimpleNamespace(tf=tf, keras=keras, tf_keras=tf_keras, km=km)


def _sha256(array: Any) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(array)).tobytes()).hexdigest()


def _of_kind(manifest: dict[str, Any], *kinds: str) -> dict[str, dict[str, Any]]:
    return {k: e for k, e in manifest["checkpoints"].items() if e["kind"] in kinds}


def _inputs(entry: dict[str, Any]) -> list[np.ndarray]:
    return [np.asarray(entry["inputs"][n], dtype="float32") for n in entry["input_names"]]


def _predict(model: Any, entry: dict[str, Any]) -> np.ndarray:
    xs = _inputs(entry)
    return np.asarray(model(xs if len(xs) > 1 else xs[0], training=False))


def _assert_predicts(model: Any, entry: dict[str, Any], what: str) -> None:
    got = _predict(model, entry)
    want = np.asarray(entry["predictions"], dtype="float32")
    assert got.shape == want.shape, what
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=what)


def _load_legacy(libs: SimpleNamespace, root: Path, rel: str, entry: dict[str, Any]) -> Any:
    """The legacy file loaded back into its tf_keras builder, the way Keras 2 users did it."""
    model = libs.km.KERAS2_BUILDERS[entry["keras2_builder"]]()
    if entry["kind"] == "tf-index-keras2":
        # The optimizer slots in the file have no counterpart in an uncompiled model.
        model.load_weights(str(root / rel)).expect_partial()
    else:  # legacy HDF5, weights-only or full model: load_weights reads both
        model.load_weights(str(root / rel))
    return model


def _h5_digests(path: Path) -> dict[str, str]:
    """Every dataset of an HDF5 file: path -> sha256 of its values."""
    out: dict[str, str] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            out[name] = _sha256(obj[()])

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def _weight_table(model: Any) -> list[tuple[str, str, list[tuple[str, list[int]]]]]:
    return [(layer.name, type(layer).__name__,
             [(str(w.name).split("/")[-1].split(":")[0], [int(d) for d in w.shape])
              for w in layer.weights])
            for layer in model.layers if layer.weights]


# --------------------------------------------------------------------------- files on disk


def test_tree_files(tf_tree: Built) -> None:
    root, manifest = tf_tree
    claimed = {f for e in manifest["checkpoints"].values() for f in e["files"]}
    for rel in [*claimed, *manifest["non_checkpoint_files"]]:
        assert (root / rel).is_file(), rel
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert on_disk == claimed | set(manifest["non_checkpoint_files"])
    kinds = {e["kind"] for e in manifest["checkpoints"].values()}
    assert kinds == {"tf-index-keras2", "tf-index-tf-checkpoint", "keras2-h5-weights",
                     "keras2-h5-model", "keras3-weights-h5", "keras3-keras"}
    for rel in _of_kind(manifest, *TF_KINDS):
        assert (root / f"{rel}.index").is_file(), rel
        assert (root / f"{rel}.data-00000-of-00001").is_file(), rel


def test_tf_manager_layout_reproduces_a_custom_training_loop_tree(tf_tree: Built, libs: SimpleNamespace) -> None:
    root, manifest = tf_tree
    (run,) = [r for r in manifest["runs"] if r.startswith("tf_manager/")]
    name = run.split("/", 1)[1]
    assert re.fullmatch(r"mlp_voc_img224_bs8_lr1\.00e-03_cosine_[0-9a-f]{10}", name), name
    run_dir = root / run
    assert (run_dir / "last" / "checkpoint").is_file()
    assert not (run_dir / "best" / "checkpoint").exists()  # the stale-state case
    assert f"{run}/best/checkpoint" in manifest["deleted"]
    prefixes = sorted(_of_kind(manifest, "tf-index-tf-checkpoint"))
    assert prefixes == [f"{run}/best/ckpt-777", f"{run}/last/ckpt-776", f"{run}/last/ckpt-777"]
    assert not list((run_dir / "best").glob("ckpt-776*"))  # rotated out by max_to_keep=1

    tf = libs.tf
    # What TF itself concludes from the directories: "last" is fine, "best" looks empty.
    assert tf.train.latest_checkpoint(str(run_dir / "last")) == str(run_dir / "last/ckpt-777")
    assert tf.train.latest_checkpoint(str(run_dir / "best")) is None
    state = tf.train.get_checkpoint_state(str(run_dir / "last"))
    assert list(state.all_model_checkpoint_paths) == [str(run_dir / "last/ckpt-776"),
                                                      str(run_dir / "last/ckpt-777")]
    recorded = manifest["runs"][run]["last_state_file"]
    assert list(state.all_model_checkpoint_timestamps) == (
        recorded["all_model_checkpoint_timestamps"])
    # Stored relative to its directory (what makes copies of the tree self-consistent).
    assert 'model_checkpoint_path: "ckpt-777"' in (run_dir / "last/checkpoint").read_text()


def test_keras2_h5_names_are_the_callbacks(tf_tree: Built) -> None:
    _root, manifest = tf_tree
    entries = _of_kind(manifest, "keras2-h5-weights")
    assert [e["epoch"] for e in entries.values()] == [1, 2, 3]
    history = manifest["runs"]["keras2_h5"]["history"]["val_loss"]
    for rel, entry in entries.items():
        assert Path(rel).name == f"model_{entry['epoch']:02d}_valloss_{entry['val_loss']:.4f}.h5"
        assert entry["val_loss"] == pytest.approx(history[entry["history_index"]], rel=1e-6)


# --------------------------------------------------------------------------- read back with TF


def test_tf_load_checkpoint_reads_every_prefix(tf_tree: Built, libs: SimpleNamespace) -> None:
    root, manifest = tf_tree
    for rel, entry in _of_kind(manifest, *TF_KINDS).items():
        reader = libs.tf.train.load_checkpoint(str(root / rel))
        keys = set(reader.get_variable_to_shape_map())
        assert keys == {*entry["tensors"], OBJECT_GRAPH_KEY}, rel
        for key, desc in entry["tensors"].items():
            value = reader.get_tensor(key)
            assert [value.dtype.name, list(value.shape)] == [desc["dtype"], desc["shape"]], key
            assert _sha256(value) == desc["sha256"], key


def test_tf_manager_scalars(tf_tree: Built, libs: SimpleNamespace) -> None:
    root, manifest = tf_tree
    entries = _of_kind(manifest, "tf-index-tf-checkpoint")
    by_name = {"/".join(rel.split("/")[-2:]): e for rel, e in entries.items()}
    for rel, entry in entries.items():
        reader = libs.tf.train.load_checkpoint(str(root / rel))
        for name, want in entry["values"].items():
            got = reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE").item()
            if want is None:  # the manifest stores -inf (an unset best_metric) as null
                assert got == float("-inf"), (rel, name)
            else:
                assert got == pytest.approx(want), (rel, name)
        assert entry["values"]["global_step"] == entry["checkpoint_number"]
        assert entry["role"] == rel.split("/")[-2]
    last_776, last_777, best_777 = (by_name[n] for n in ("last/ckpt-776", "last/ckpt-777",
                                                         "best/ckpt-777"))
    # One tf.train.Checkpoint behind both managers: save_counter counts every save
    # (last-776, best-776 since deleted, last-777, best-777).
    assert [e["values"]["save_counter"] for e in (last_776, last_777, best_777)] == [1, 3, 4]
    # save_last runs before save_best: "last" still holds the previous best.
    assert last_776["values"]["best_metric"] is None  # -inf: nothing was best yet
    assert best_777["values"]["best_metric"] > last_777["values"]["best_metric"]
    assert best_777["values"]["best_epoch"] == best_777["values"]["epoch"]
    assert last_777["state_file_timestamp"] > last_776["state_file_timestamp"]
    assert best_777["state_file"] is None and best_777["state_file_timestamp"] is None
    assert last_777["predictions"] == best_777["predictions"]  # same step, same weights
    assert last_776["predictions"] != last_777["predictions"]  # a training step in between


def test_h5_attributes_as_recorded(tf_tree: Built) -> None:
    import json

    root, manifest = tf_tree
    for rel, entry in _of_kind(manifest, "keras2-h5-weights", "keras2-h5-model").items():
        with h5py.File(root / rel, "r") as f:
            assert f.attrs["keras_version"] == entry["keras_version"]
            assert f.attrs["backend"] == entry["backend"] == "tensorflow"
            if entry["kind"] == "keras2-h5-model":
                assert json.loads(f.attrs["training_config"]) == entry["training_config"]
                assert "model_config" in f.attrs and "optimizer_weights" in f
                assert entry["h5_root"] == "model_weights"
            else:
                assert entry["training_config"] is None and entry["h5_root"] == ""
            group = f[entry["h5_root"]] if entry["h5_root"] else f
            assert [str(n) for n in group.attrs["layer_names"]] == entry["layer_names"]


# --------------------------------------------------------------------------- the models


def test_legacy_weights_reproduce_predictions(tf_tree: Built, libs: SimpleNamespace) -> None:
    root, manifest = tf_tree
    legacy = {k: e for k, e in manifest["checkpoints"].items() if e["keras2_builder"]}
    assert len(legacy) == 6
    for rel, entry in legacy.items():
        _assert_predicts(_load_legacy(libs, root, rel, entry), entry, rel)
    (full,) = _of_kind(manifest, "keras2-h5-model")
    model = libs.tf_keras.models.load_model(str(root / full), compile=False)
    _assert_predicts(model, manifest["checkpoints"][full], full)


def test_keras3_originals_reproduce_predictions(tf_tree: Built, libs: SimpleNamespace) -> None:
    root, manifest = tf_tree
    for rel, entry in _of_kind(manifest, "tf-index-tf-checkpoint").items():
        model = libs.km.KERAS3_BUILDERS[entry["keras3_builder"]]()
        # Only the model: the file also holds the optimizer and the counters.
        libs.tf.train.Checkpoint(model=model).restore(str(root / rel)).expect_partial()
        _assert_predicts(model, entry, rel)
    for rel, entry in _of_kind(manifest, "keras3-weights-h5").items():
        model = libs.km.KERAS3_BUILDERS[entry["keras3_builder"]]()
        model.load_weights(str(root / rel))
        _assert_predicts(model, entry, rel)
    for rel, entry in _of_kind(manifest, "keras3-keras").items():
        _assert_predicts(libs.keras.models.load_model(str(root / rel), compile=False), entry,
                         rel)


def test_keras3_builders_match_legacy_layers(tf_tree: Built, libs: SimpleNamespace) -> None:
    _root, manifest = tf_tree
    for rel, entry in manifest["checkpoints"].items():
        twin = libs.km.KERAS3_BUILDERS[entry["keras3_builder"]]()
        want = [(lyr["name"], lyr["class_name"], [(w["name"], w["shape"]) for w in lyr["weights"]])
                for lyr in entry["layers"]]
        assert _weight_table(twin) == want, rel
        if entry["keras2_builder"]:
            original = libs.km.KERAS2_BUILDERS[entry["keras2_builder"]]()
            assert _weight_table(original) == want, rel


def test_keras3_twin_takes_legacy_weights(tf_tree: Built, libs: SimpleNamespace,
                                          tmp_path: Path) -> None:
    """Legacy weights copied by layer name into the Keras 3 twin predict the same, and what
    Keras 3 then writes is exactly the manifest's ``keras3_weights_h5`` layout: the file a
    converter must produce, which ``load_weights`` accepts."""
    root, manifest = tf_tree
    for rel, entry in manifest["checkpoints"].items():
        if not entry["keras2_builder"]:
            continue
        legacy = _load_legacy(libs, root, rel, entry)
        twin = libs.km.KERAS3_BUILDERS[entry["keras3_builder"]]()
        for layer in twin.layers:
            if layer.weights:
                layer.set_weights(legacy.get_layer(layer.name).get_weights())
        _assert_predicts(twin, entry, rel)
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.weights.h5"
        twin.save_weights(str(out))
        with h5py.File(out, "r") as f:
            for group, name in entry["keras3_weights_h5"]["vars_names"].items():
                assert f[group].attrs["name"] == name, (rel, group)
        want = {p: d["sha256"] for p, d in entry["keras3_weights_h5"]["datasets"].items()}
        assert _h5_digests(out) == want, rel
        fresh = libs.km.KERAS3_BUILDERS[entry["keras3_builder"]]()
        fresh.load_weights(str(out))
        _assert_predicts(fresh, entry, f"{rel} via Keras 3 .weights.h5")


def test_builders_are_deterministic_entry_points(libs: SimpleNamespace,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI resolves "examples.keras_models:build_sequential" from the repository root.
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.delitem(sys.modules, "examples.keras_models", raising=False)
    module = importlib.import_module("examples.keras_models")
    for name in libs.km.KERAS3_BUILDERS:
        a, b = getattr(module, name)(), getattr(module, name)()
        assert isinstance(a, libs.keras.Model) and a.built, name
        for va, vb in zip(a.weights, b.weights, strict=True):
            np.testing.assert_array_equal(np.asarray(va), np.asarray(vb), err_msg=name)


def test_fresh_copy_keeps_mtimes(tf_tree: Built, fresh_tf_tree: Built) -> None:
    src, _ = tf_tree
    root, manifest = fresh_tf_tree
    for rel in [f for e in manifest["checkpoints"].values() for f in e["files"]]:
        assert (root / rel).stat().st_mtime_ns == (src / rel).stat().st_mtime_ns, rel
