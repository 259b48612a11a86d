"""The TF-index (TensorBundle) reader, checked against TensorFlow itself.

Checkpoints are written by the real libraries (tf_keras ``save_weights``, Keras 3 under
``tf.train.CheckpointManager``, a size-sharded ``tf.train.Checkpoint``, a TF1 sharded
``Saver`` with partitioned variables), once per test run even under xdist. TensorFlow is the
reference here; the reader itself must never import it.

Every test that builds the checkpoints (``ckpts``) or imports TensorFlow's protobufs is marked
``slow``; only the pure slice-key and state-file tests run in ``pytest -m "not slow"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pytest
from filelock import FileLock

from ckptctl.errors import CkptError, CorruptCheckpointError, UnsupportedCheckpointError
from ckptctl.readers.tensor import STORAGE_NUMPY
from ckptctl.readers.tf_index import (
    OBJECT_GRAPH_KEY,
    TFIndexCheckpoint,
    _Table,
    is_tf_index,
    open_tf_index,
    read_state_file,
    slice_key,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

Ckpts = dict[str, Path]
#: Checkpoints whose every entry is compared with TensorFlow's reader.
ALL_CKPTS = ["keras2_seq", "keras2_func", "last_777", "last_776", "best", "dtypes",
             "size_sharded", "tf1_sharded"]
OBJECT_GRAPH_CKPTS = [n for n in ALL_CKPTS if n != "tf1_sharded"]
MAGIC = (0xDB4775248B80FB57).to_bytes(8, "little")


# --- building the checkpoints with the real libraries ----------------------------------------


def _tf() -> Any:
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def _keras2_models(root: Path, rng: np.random.Generator) -> dict[str, Path]:
    tf = _tf()
    import tf_keras

    seq = tf_keras.Sequential([tf_keras.layers.Dense(8, activation="relu", input_shape=(5,)),
                               tf_keras.layers.Dense(3)])
    # Extra tracked variables of dtypes a float32 model never has.
    extras = {"bf16": tf.constant(rng.normal(size=(4, 3)), dtype=tf.bfloat16),
              "f16": tf.constant(rng.normal(size=(7,)), dtype=tf.float16),
              "i32": tf.constant(rng.integers(-9, 9, size=(2, 2)), dtype=tf.int32),
              "i64": tf.constant(2**40 + 3, dtype=tf.int64)}
    for name, value in extras.items():  # not trainable: the optimizer must not see them
        setattr(seq, f"extra_{name}", tf.Variable(value, trainable=False))
    # A legacy optimizer keeps TF slot variables: exercises ``slot_variables``.
    opt = tf_keras.optimizers.legacy.Adam(1e-3)
    seq.compile(optimizer=opt, loss="mse")
    grads = [tf.ones_like(v) for v in seq.trainable_variables]
    opt.apply_gradients(zip(grads, seq.trainable_variables, strict=True))
    seq.save_weights(str(root / "keras2_seq" / "model.ckpt"))

    a = tf_keras.Input((4,), name="a")
    b = tf_keras.Input((3,), name="b")
    x = tf_keras.layers.BatchNormalization()(tf_keras.layers.Dense(6)(a))
    y = tf_keras.layers.Dense(5)(b)
    out = tf_keras.layers.Dense(2)(tf_keras.layers.Concatenate()([x, y]))
    func = tf_keras.Model([a, b], out)
    func.set_weights([rng.normal(size=w.shape).astype("float32") ** 2 for w in func.weights])
    func.save_weights(str(root / "keras2_func" / "model.ckpt"))
    return {"keras2_seq": root / "keras2_seq" / "model.ckpt",
            "keras2_func": root / "keras2_func" / "model.ckpt"}


def _keras3_manager(root: Path, rng: np.random.Generator) -> dict[str, Path]:
    tf = _tf()
    keras = tf.keras  # Keras 3 in TF >= 2.16
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="hidden"),
                              keras.layers.LayerNormalization(), keras.layers.Dense(2)])
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.weights])
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)  # creates the moment variables, no training
    ckpt = tf.train.Checkpoint(
        model=model, optimizer=optimizer,
        epoch=tf.Variable(3, dtype=tf.int64), global_step=tf.Variable(0, dtype=tf.int64),
        best_metric=tf.Variable(0.93, dtype=tf.float32), best_epoch=tf.Variable(2, dtype=tf.int64))
    last = tf.train.CheckpointManager(ckpt, str(root / "manager" / "last"), max_to_keep=2)
    # A non-ASCII checkpoint name: the state file octal-escapes it.
    best = tf.train.CheckpointManager(ckpt, str(root / "manager" / "best"), max_to_keep=1,
                                      checkpoint_name="modèle")
    for step in (775, 776, 777):
        ckpt.global_step.assign(step)
        model.layers[0].kernel.assign_add(tf.ones_like(model.layers[0].kernel))
        last.save(checkpoint_number=step)
        if step == 776:
            best.save(checkpoint_number=step)
    return {"last_777": root / "manager" / "last" / "ckpt-777",
            "last_776": root / "manager" / "last" / "ckpt-776",
            "best": root / "manager" / "best" / "modèle-776"}


def _dtypes_and_shards(root: Path, rng: np.random.Generator) -> dict[str, Path]:
    tf = _tf()
    import ml_dtypes

    base = rng.integers(-3, 4, size=(2, 3))
    names = ["float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64",
             "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128"]
    variables = {n: tf.Variable(tf.cast(tf.constant(base), getattr(tf, n))) for n in names}
    variables["f8"] = tf.Variable(tf.constant(
        np.array([1.5, -2, 0.25, 448], dtype=ml_dtypes.float8_e4m3fn)))
    variables["empty"] = tf.Variable(tf.zeros((0, 3)))
    variables["text"] = tf.Variable([[b"a\x00\xff", b""], [b"x" * 300, "é".encode()]])
    variables["big"] = tf.Variable(tf.constant(rng.normal(size=(300, 7)), dtype=tf.float32))
    dtypes = tf.train.Checkpoint(**variables).write(str(root / "dtypes" / "ckpt"))

    # Small shards: TF splits the tensors into slices spread over several data files.
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=5000)
    sharded = tf.train.Checkpoint(
        **{f"v{i}": tf.Variable(rng.normal(size=(300, 7)).astype("float32")) for i in range(3)},
        step=tf.Variable(5, dtype=tf.int64),
    ).write(str(root / "size_sharded" / "ckpt"),
            options=tf.train.CheckpointOptions(experimental_sharding_callback=policy))

    # TF1: a sharded Saver over three CPU devices, with partitioned variables.
    (root / "tf1").mkdir()
    with tf.Graph().as_default():
        v1 = tf.compat.v1
        v1.get_variable("emb", shape=[5000, 3], partitioner=v1.fixed_size_partitioner(3),
                        initializer=v1.random_normal_initializer(seed=1))
        v1.get_variable("w", shape=[13, 5], partitioner=v1.fixed_size_partitioner(2, axis=1),
                        initializer=v1.random_normal_initializer(seed=2))
        for i, dtype in enumerate([tf.float64, tf.int32, tf.float16]):
            with tf.device(f"/cpu:{i}"):
                v1.get_variable(f"dev{i}", shape=[4], dtype=dtype,
                                initializer=v1.ones_initializer())
        saver = v1.train.Saver(sharded=True)
        config = v1.ConfigProto(device_count={"CPU": 3})
        with v1.Session(config=config) as session:
            session.run(v1.global_variables_initializer())
            tf1 = saver.save(session, str(root / "tf1" / "model.ckpt"), global_step=5)
    return {"dtypes": Path(dtypes), "size_sharded": Path(sharded), "tf1_sharded": Path(tf1)}


def _build(root: Path) -> dict[str, str]:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    built = {**_keras2_models(root, rng), **_keras3_manager(root, rng),
             **_dtypes_and_shards(root, rng)}
    return {name: str(path) for name, path in built.items()}


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> Ckpts:
    """name -> checkpoint prefix; built once per run (shared by xdist workers): read-only."""
    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None
    base = tmp_path_factory.getbasetemp().parent if shared else tmp_path_factory.getbasetemp()
    root, manifest = base / "tf_index_ckpts", base / "tf_index_ckpts.json"
    with FileLock(str(base / "tf_index_ckpts.lock")):
        if not manifest.exists():
            if root.exists():  # a build that crashed half-way
                shutil.rmtree(root)
            manifest.write_text(json.dumps(_build(root)))  # written last: marks completion
    return {name: Path(p) for name, p in json.loads(manifest.read_text()).items()}


def _copy_ckpt(prefix: Path, dest: Path) -> Path:
    """Copy one checkpoint's files into ``dest``; return the new prefix."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in prefix.parent.iterdir():
        if path.name.startswith(prefix.name + ".") and path.is_file():
            shutil.copy(path, dest / path.name)
    return dest / prefix.name


# --- equality with TensorFlow -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_CKPTS)
def test_every_entry_matches_tensorflow(ckpts: Ckpts, name: str) -> None:
    tf = _tf()
    prefix = ckpts[name]
    ours = open_tf_index(prefix)
    ref = tf.train.load_checkpoint(str(prefix))
    ref_dtypes = ref.get_variable_to_dtype_map()
    ref_shapes = ref.get_variable_to_shape_map()
    assert set(ours.entries) == set(ref_dtypes)
    assert list(ours.entries) == sorted(ours.entries, key=lambda n: n.encode())  # index order
    for tensor, entry in ours.entries.items():
        expected = ref.get_tensor(tensor)
        assert entry.shape == tuple(ref_shapes[tensor]), tensor
        if entry.dtype == "string":
            got = ours.read(tensor)
            assert got.shape == np.shape(expected)
            assert got.tolist() == np.asarray(expected, dtype=object).tolist()
            continue
        assert entry.dtype == ref_dtypes[tensor].name, tensor
        got = ours.read(tensor)
        assert got.dtype == STORAGE_NUMPY[entry.dtype], tensor
        assert got.shape == expected.shape, tensor
        # Bit-for-bit: bfloat16/float8 come back as their raw bits.
        assert got.tobytes() == np.ascontiguousarray(expected).tobytes(), tensor


@pytest.mark.slow
def test_dtypes_are_named_like_torch(ckpts: Ckpts) -> None:
    entries = open_tf_index(ckpts["dtypes"]).entries
    dtypes = {n.split("/")[0]: e.dtype for n, e in entries.items()}
    assert dtypes["bfloat16"] == "bfloat16" and dtypes["float16"] == "float16"
    assert dtypes["f8"] == "float8_e4m3fn" and dtypes["text"] == "string"
    assert dtypes["complex128"] == "complex128" and dtypes["bool"] == "bool"
    seq = open_tf_index(ckpts["keras2_seq"]).entries
    assert {e.dtype for n, e in seq.items() if n.startswith("extra_")} == {
        "bfloat16", "float16", "int32", "int64"}


def _tf_graph(data: bytes) -> Any:
    _tf()
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    return trackable_object_graph_pb2.TrackableObjectGraph.FromString(data)


@pytest.mark.slow
@pytest.mark.parametrize("name", OBJECT_GRAPH_CKPTS)
def test_object_graph_matches_tensorflow(ckpts: Ckpts, name: str) -> None:
    tf = _tf()
    ours = open_tf_index(ckpts[name])
    raw = tf.train.load_checkpoint(str(ckpts[name])).get_tensor(OBJECT_GRAPH_KEY)
    assert ours.read_strings(OBJECT_GRAPH_KEY) == [raw]
    ref = _tf_graph(raw)
    graph = ours.object_graph()
    assert graph is not None and len(graph.nodes) == len(ref.nodes)
    for node, ref_node in zip(graph.nodes, ref.nodes, strict=True):
        assert [(c.node_id, c.local_name) for c in node.children] == [
            (c.node_id, c.local_name) for c in ref_node.children]
        assert [(a.name, a.full_name, a.checkpoint_key) for a in node.attributes] == [
            (a.name, a.full_name, a.checkpoint_key) for a in ref_node.attributes]
        assert [(s.original_variable_node_id, s.slot_name, s.slot_variable_node_id)
                for s in node.slot_variables] == [
            (s.original_variable_node_id, s.slot_name, s.slot_variable_node_id)
            for s in ref_node.slot_variables]
        if ref_node.HasField("has_checkpoint_values"):
            assert node.has_checkpoint_values == ref_node.has_checkpoint_values.value
    # Every attribute names a tensor that is really in the bundle.
    keys = {a.checkpoint_key for n in graph.nodes for a in n.attributes}
    assert keys <= set(ours.entries)


@pytest.mark.slow
def test_object_graph_details(ckpts: Ckpts) -> None:
    seq = open_tf_index(ckpts["keras2_seq"]).object_graph()
    assert seq is not None
    assert sum(len(n.slot_variables) for n in seq.nodes) == 8  # Adam m, v x 4 weights
    paths = seq.paths()
    assert paths[0] == ""
    assert "layer_with_weights-0/kernel" in paths.values()
    assert "optimizer" in paths.values()
    manager = open_tf_index(ckpts["last_777"]).object_graph()
    assert manager is not None
    top = {c.local_name for c in manager.nodes[0].children}
    assert {"model", "optimizer", "epoch", "global_step", "best_metric", "best_epoch"} <= top
    assert open_tf_index(ckpts["tf1_sharded"]).object_graph() is None  # name-based TF1


@pytest.mark.slow
def test_manager_values(ckpts: Ckpts) -> None:
    last, older = open_tf_index(ckpts["last_777"]), open_tf_index(ckpts["last_776"])
    key = "global_step/.ATTRIBUTES/VARIABLE_VALUE"
    assert int(last.read(key)) == 777 and int(older.read(key)) == 776
    assert float(last.read("best_metric/.ATTRIBUTES/VARIABLE_VALUE")) == pytest.approx(0.93)


@pytest.mark.slow
def test_multi_shard_checkpoints(ckpts: Ckpts) -> None:
    sharded = open_tf_index(ckpts["size_sharded"])
    assert sharded.num_shards > 2
    assert [p.name for p in sharded.shard_paths] == [
        f"ckpt.data-{i:05d}-of-{sharded.num_shards:05d}" for i in range(sharded.num_shards)]
    assert any(e.is_sliced for e in sharded.entries.values())
    tf1 = open_tf_index(ckpts["tf1_sharded"])
    assert tf1.num_shards == 4  # three devices + the host's shard
    assert {e.shard_id for e in tf1.entries.values() if not e.is_sliced} == {1, 2, 3}
    assert tf1.entries["emb"].slices == (((0, 1667), (0, 3)), ((1667, 1667), (0, 3)),
                                         ((3334, 1666), (0, 3)))


@pytest.mark.slow
def test_slice_keys_are_encoded_as_tensorflow_does(ckpts: Ckpts) -> None:
    # Every slice key TF really wrote is found by our encoder, and nothing else is there.
    for name in ("size_sharded", "tf1_sharded"):
        ckpt = open_tf_index(ckpts[name])
        keys = {slice_key(e.name, extents) for e in ckpt.entries.values() for extents in e.slices}
        assert keys == set(ckpt._slices)


@pytest.mark.parametrize("value", [-(2**63), -4097, -65, -64, -1, 0, 63, 64, 8191, 8192,
                                   2**20 - 1, 2**40, 2**62, 2**63 - 2])
def test_slice_key_numbers_sort_like_numbers(value: int) -> None:
    # OrderedCode is order preserving: bytewise key order follows numeric order.
    assert slice_key("x", ((0, value),)) < slice_key("x", ((0, value + 1),))


# --- opening, finding, sniffing, state files --------------------------------------------------


def find_tf_checkpoints(folder: Path, recursive: bool = False) -> list[Path]:
    """TF-index checkpoints as ``scan``/``convert`` find them (by their .index files)."""
    from ckptctl.discovery import discover

    return sorted(f.path for f in discover([folder], recursive).checkpoints
                  if f.format == "tf-index" and f.problem is None)


@pytest.mark.slow
def test_open_accepts_prefix_index_and_shard(ckpts: Ckpts) -> None:
    prefix = ckpts["size_sharded"]
    shard = open_tf_index(prefix).shard_paths[-1]
    for given in (prefix, prefix.with_name("ckpt.index"), shard, str(shard), str(prefix)):
        ckpt = open_tf_index(given)
        assert ckpt.prefix == prefix and isinstance(ckpt, TFIndexCheckpoint)
    with pytest.raises(CkptError, match=r"no \.index"):
        open_tf_index(prefix.with_name("nothing-here"))


@pytest.mark.slow
def test_find_checkpoints_and_sniff(ckpts: Ckpts, tmp_path: Path) -> None:
    """Stops: discovery blocking on a FIFO named *.index or taking junk .index files for checkpoints. Found: designed up front."""
    last = ckpts["last_777"].parent
    assert find_tf_checkpoints(last) == [last / "ckpt-776", last / "ckpt-777"]
    best = ckpts["best"].parent
    assert find_tf_checkpoints(best) == [best / "modèle-776"]
    every = find_tf_checkpoints(last.parent, recursive=True)
    assert set(every) == {ckpts[n] for n in ("last_776", "last_777", "best")}
    assert is_tf_index(ckpts["tf1_sharded"].with_name("model.ckpt-5.index"))
    assert not is_tf_index(ckpts["tf1_sharded"].with_name("model.ckpt-5.meta"))
    (tmp_path / "fake.index").write_bytes(b"\0" * 100)  # not an SSTable
    (tmp_path / "tiny.index").write_bytes(MAGIC)  # too short for a footer
    prefix = _copy_ckpt(ckpts["keras2_seq"], tmp_path)
    for n in (10, 2):
        shutil.copy(prefix.with_name("model.ckpt.index"), tmp_path / f"step-{n}.index")
    assert find_tf_checkpoints(tmp_path) == [tmp_path / "model.ckpt", tmp_path / "step-10",
                                             tmp_path / "step-2"]
    assert not is_tf_index(tmp_path / "fake.index")
    assert not is_tf_index(tmp_path / "missing.index")
    os.mkfifo(tmp_path / "pipe.index")  # opening a FIFO would block: never touched
    assert not is_tf_index(tmp_path / "pipe.index")
    assert tmp_path / "pipe" not in find_tf_checkpoints(tmp_path)
    with pytest.raises(CkptError, match=r"no \.index"):
        open_tf_index(tmp_path / "pipe")


@pytest.mark.slow
def test_state_file_written_by_checkpoint_manager(ckpts: Ckpts) -> None:
    tf = _tf()
    last = ckpts["last_777"].parent
    state = read_state_file(last)
    assert state is not None
    assert state["model_checkpoint_path"] == "ckpt-777"
    assert state["all_model_checkpoint_paths"] == ["ckpt-776", "ckpt-777"]
    ref = tf.train.get_checkpoint_state(str(last))
    assert state["all_model_checkpoint_timestamps"] == pytest.approx(
        list(ref.all_model_checkpoint_timestamps), abs=1e-3)
    assert state["last_preserved_timestamp"] == pytest.approx(ref.last_preserved_timestamp,
                                                              abs=1e-3)
    best = read_state_file(ckpts["best"].parent / "checkpoint")  # the file itself works too
    assert best is not None and best["model_checkpoint_path"] == "modèle-776"
    tf1 = read_state_file(ckpts["tf1_sharded"].parent)
    assert tf1 is not None and tf1["model_checkpoint_path"] == str(ckpts["tf1_sharded"])
    assert tf1["all_model_checkpoint_timestamps"] == []


def test_state_file_parsing_is_tolerant(tmp_path: Path) -> None:
    """Stops: a garbage, binary or oddly escaped 'checkpoint' state file crashing discovery. Found: designed up front."""
    assert read_state_file(tmp_path) is None  # no file
    (tmp_path / "checkpoint").write_text("garbage only {}\n")
    assert read_state_file(tmp_path) is None
    (tmp_path / "checkpoint").write_text(
        '# comment\nmodel_checkpoint_path: "a\\"b\\303\\251\\x41\\n"\n'
        "all_model_checkpoint_paths: 'x' all_model_checkpoint_paths: [\"y\", \"z\"]\n"
        "what is this ???\n"
        "all_model_checkpoint_timestamps: 1.5e9\nall_model_checkpoint_timestamps: 7\n"
        "last_preserved_timestamp: 12.25\nunknown_field { nested: 1 }\n")
    assert read_state_file(tmp_path) == {
        "model_checkpoint_path": 'a"béA\n',
        "all_model_checkpoint_paths": ["x", "y", "z"],
        "all_model_checkpoint_timestamps": [1.5e9, 7.0],
        "last_preserved_timestamp": 12.25,
    }
    (tmp_path / "checkpoint").write_bytes(b"\xff\xfe\x00binary" * 100)
    assert read_state_file(tmp_path) is None


@pytest.mark.slow
def test_reader_does_not_import_tensorflow(ckpts: Ckpts) -> None:
    script = (
        "import sys, json\n"
        "from ckptctl.readers.tf_index import open_tf_index, read_state_file\n"
        "from ckptctl.discovery import discover\n"
        "for prefix in sys.argv[1:]:\n"
        "    ckpt = open_tf_index(prefix)\n"
        "    [ckpt.read(name) for name in ckpt.entries]\n"
        "    ckpt.object_graph()\n"
        "    read_state_file(ckpt.prefix.parent)\n"
        "    discover([ckpt.prefix.parent])\n"
        "heavy = ('tensorflow', 'keras', 'tf_keras', 'google.protobuf', 'torch')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script, *map(str, ckpts.values())],
                            capture_output=True, text=True, timeout=120, env=env,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.slow
def test_scan_of_tf_checkpoints_needs_no_numpy(ckpts: Ckpts) -> None:
    """``scan`` opens the index, checks every entry against its shard and reads the
    CheckpointManager state without numpy (values are only read by convert)."""
    folders = sorted({str(Path(p).parent) for p in ckpts.values()})
    script = (
        "import sys, json\n"
        "from ckptctl.ops.scan import scan\n"
        "rows = scan([__import__('pathlib').Path(p) for p in sys.argv[1:]]).rows\n"
        "print(json.dumps([sorted(m for m in ('numpy', 'pydantic', 'yaml', 'h5py') if m in sys.modules),\n"
        "                  sorted({r.status for r in rows if r.format == 'tf-index'})]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *folders], capture_output=True,
                            text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [[], ["not converted"]]


# --- broken checkpoints -------------------------------------------------------------------------


@pytest.mark.slow
def test_flipped_byte_in_data_shard(ckpts: Ckpts, tmp_path: Path) -> None:
    """Stops: a flipped byte in a data shard (tensor or object graph) being read silently, not named. Found: designed up front."""
    prefix = _copy_ckpt(ckpts["keras2_seq"], tmp_path)
    ckpt = open_tf_index(prefix)
    for tensor in ("layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE", OBJECT_GRAPH_KEY):
        entry = ckpt.entries[tensor]
        shard = ckpt.shard_paths[entry.shard_id]
        data = bytearray(shard.read_bytes())
        data[entry.offset + entry.size // 2] ^= 0x10
        shard.write_bytes(bytes(data))
        with pytest.raises(CorruptCheckpointError) as err:
            ckpt.read(tensor)
        assert shard.name in str(err.value) and tensor in str(err.value)
        data[entry.offset + entry.size // 2] ^= 0x10  # restore for the next tensor
        shard.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=OBJECT_GRAPH_KEY):
        data[ckpt.entries[OBJECT_GRAPH_KEY].offset] ^= 0x7F  # in the string length table
        ckpt.shard_paths[0].write_bytes(bytes(data))
        ckpt.object_graph()


@pytest.mark.slow
def test_flipped_byte_in_a_slice_of_a_partitioned_variable(ckpts: Ckpts, tmp_path: Path) -> None:
    """Stops: a flipped byte in one slice of a partitioned variable going unnoticed. Found: designed up front."""
    prefix = _copy_ckpt(ckpts["size_sharded"], tmp_path)
    ckpt = open_tf_index(prefix)
    name = "v1/.ATTRIBUTES/VARIABLE_VALUE"
    extents = ckpt.entries[name].slices[-1]
    piece = ckpt._slices[slice_key(name, extents)]
    shard = ckpt.shard_paths[piece.shard_id]
    data = bytearray(shard.read_bytes())
    data[piece.offset + 1] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError) as err:
        ckpt.read(name)
    assert shard.name in str(err.value) and name in str(err.value)


@pytest.mark.slow
def test_missing_and_extra_shards(ckpts: Ckpts, tmp_path: Path) -> None:
    """Stops: a missing, stray or renamed data shard being read as a valid shard set. Found: designed up front."""
    prefix = _copy_ckpt(ckpts["size_sharded"], tmp_path / "missing")
    num = open_tf_index(prefix).num_shards
    gone = prefix.with_name(f"ckpt.data-00002-of-{num:05d}")
    gone.unlink()
    with pytest.raises(CorruptCheckpointError, match="missing data shard 3") as err:
        open_tf_index(prefix)
    assert err.value.path == gone

    prefix = _copy_ckpt(ckpts["keras2_seq"], tmp_path / "extra")
    stray = prefix.with_name("model.ckpt.data-00001-of-00003")
    stray.write_bytes(b"\0" * 10)
    with pytest.raises(CorruptCheckpointError, match="does not belong") as err:
        open_tf_index(prefix)
    assert err.value.path == stray

    # The only shard renamed into a 2-shard set: wrong set, named.
    stray.unlink()
    only = prefix.with_name("model.ckpt.data-00000-of-00001")
    renamed = only.rename(prefix.with_name("model.ckpt.data-00000-of-00002"))
    with pytest.raises(CorruptCheckpointError) as err:
        open_tf_index(prefix)
    assert err.value.path == renamed
    renamed.unlink()
    with pytest.raises(CorruptCheckpointError, match="missing") as err:
        open_tf_index(prefix)
    assert err.value.path == only
    # Temporary files of an interrupted save are not shards and are ignored.
    only.with_name("model.ckpt.data-00000-of-00001.tempstate123").write_bytes(b"x")
    shutil.copy(ckpts["keras2_seq"].with_name("model.ckpt.data-00000-of-00001"), only)
    assert open_tf_index(prefix).num_shards == 1


@pytest.mark.slow
def test_truncated_shard(ckpts: Ckpts, tmp_path: Path) -> None:
    """Stops: a shard truncated before (or shrunk after) opening yielding short or garbage tensors. Found: designed up front."""
    prefix = _copy_ckpt(ckpts["keras2_func"], tmp_path)
    ckpt = open_tf_index(prefix)
    last = max(ckpt.entries.values(), key=lambda e: e.offset + e.size)
    shard = ckpt.shard_paths[0]
    with open(shard, "r+b") as f:
        f.truncate(last.offset + last.size - 1)
    with pytest.raises(CorruptCheckpointError, match="shard ends") as err:
        open_tf_index(prefix)
    assert err.value.path == shard and last.name in str(err.value)
    # A shard shrinking between open and read is caught too.
    with open(shard, "r+b") as f:
        f.truncate(0)
    with pytest.raises(CorruptCheckpointError, match="shard ends inside") as err:
        ckpt.read(last.name)
    assert err.value.path == shard


@pytest.mark.slow
def test_truncated_or_corrupted_index(ckpts: Ckpts, tmp_path: Path) -> None:
    """Stops: a truncated or bit-flipped .index (SSTable) being parsed instead of refused by name. Found: designed up front."""
    prefix = _copy_ckpt(ckpts["keras2_func"], tmp_path)
    index = prefix.with_name("model.ckpt.index")
    original = index.read_bytes()
    for cut in (0, 1, 47, 48, len(original) // 2, len(original) - 49, len(original) - 1):
        index.write_bytes(original[:cut])
        with pytest.raises(CorruptCheckpointError) as err:
            open_tf_index(prefix)
        assert err.value.path == index
    data = bytearray(original)
    data[20] ^= 0x04  # inside the first data block
    index.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="crc32c mismatch") as err:
        open_tf_index(prefix)
    assert err.value.path == index


def _mutations(original: bytes, rng: random.Random) -> Iterator[bytes]:
    while True:
        data = bytearray(original)
        kind = rng.randrange(4)
        if kind == 0:  # a few flipped bits anywhere
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del data[rng.randrange(len(data)):]
        elif kind == 2:  # random garbage, sometimes behind a valid-looking footer
            data = bytearray(rng.randbytes(rng.randrange(200)))
            if rng.random() < 0.5:
                data += MAGIC
        else:  # a spliced-in chunk
            pos = rng.randrange(len(data))
            data[pos:pos] = rng.randbytes(rng.randrange(1, 30))
        yield bytes(data)


def _open_and_read_all(prefix: Path) -> None:
    """Open and read everything; only CkptError may escape."""
    try:
        ckpt = open_tf_index(prefix)
        for name in ckpt.entries:
            with contextlib.suppress(CkptError):
                ckpt.read(name)
        ckpt.object_graph()
    except CkptError:
        pass


def _fuzz(prefix: Path, cases: Iterator[bytes], seconds: float) -> int:
    index = prefix.with_name(prefix.name + ".index")
    deadline = time.perf_counter() + seconds
    count = 0
    while time.perf_counter() < deadline:
        index.write_bytes(next(cases))
        started = time.perf_counter()
        _open_and_read_all(prefix)  # anything but a CkptError fails the test
        assert time.perf_counter() - started < 1.0  # no hang on any input
        count += 1
    return count


@pytest.mark.slow
def test_fuzzed_raw_index_only_raises_ckpt_errors(ckpts: Ckpts, tmp_path: Path) -> None:
    """Stops: mutated .index bytes escaping as non-CkptError or hanging over 1 s. Found: designed up front (seeded mutation loop)."""
    prefix = _copy_ckpt(ckpts["keras2_seq"], tmp_path)
    original = prefix.with_name("model.ckpt.index").read_bytes()
    assert _fuzz(prefix, _mutations(original, random.Random(1234)), 0.4) > 50


# --- a minimal SSTable writer, to build indexes whose checksums are right ---------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _common_prefix(a: bytes, b: bytes) -> int:
    low, high = 0, min(len(a), len(b))  # binary search: slices compare in C, keys are long
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def _block_contents(records: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out, restarts, prev = bytearray(), [], b""
    for i, (key, value) in enumerate(records):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            shared = _common_prefix(prev, key)
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        out += key[shared:] + value
        prev = key
    restarts = restarts or [0]
    return bytes(out) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack(
        "<I", len(restarts))


def write_table(records: list[tuple[bytes, bytes]], block_size: int = 256,
                compression: int = 0,
                mutate: Callable[[bytearray], None] | None = None) -> bytes:
    """An SSTable like TF's (restart every 16 keys); ``mutate`` edits blocks before the crc."""
    out = bytearray()

    def add_block(block_records: list[tuple[bytes, bytes]], interval: int = 16) -> bytes:
        contents = bytearray(_block_contents(block_records, interval))
        if mutate is not None:
            mutate(contents)
        handle = _varint(len(out)) + _varint(len(contents))
        trailer = bytes([compression])
        crc = _mask(google_crc32c.value(bytes(contents) + trailer))
        out.extend(contents + trailer + crc.to_bytes(4, "little"))
        return handle

    index: list[tuple[bytes, bytes]] = []
    chunk: list[tuple[bytes, bytes]] = []
    for key, value in records:
        chunk.append((key, value))
        if sum(len(k) + len(v) for k, v in chunk) >= block_size:
            index.append((key, add_block(chunk)))
            chunk = []
    if chunk:
        index.append((chunk[-1][0], add_block(chunk)))
    meta = add_block([])
    footer = (meta + add_block(index, interval=1)).ljust(40, b"\0") + MAGIC
    return bytes(out) + footer


def _records(prefix: Path) -> list[tuple[bytes, bytes]]:
    index = prefix.with_name(prefix.name + ".index")
    return [(k, bytes(v)) for k, v in _Table(index.read_bytes(), index).records()]


@pytest.mark.slow
def test_table_writer_matches_tensorflow(ckpts: Ckpts, tmp_path: Path) -> None:
    """The test writer is checked by TF itself, so indexes crafted with it are meaningful."""
    tf = _tf()
    prefix = _copy_ckpt(ckpts["size_sharded"], tmp_path)
    prefix.with_name("ckpt.index").write_bytes(write_table(_records(ckpts["size_sharded"])))
    ref = tf.train.load_checkpoint(str(prefix))
    ours = open_tf_index(prefix)
    for name in ours.entries:
        if name != OBJECT_GRAPH_KEY:
            assert ours.read(name).tobytes() == ref.get_tensor(name).tobytes()


@pytest.mark.slow
def test_fuzzed_index_with_valid_checksums(ckpts: Ckpts, tmp_path: Path) -> None:
    """Stops: mutations behind valid block crcs crashing protobuf/layout parsing. Found: designed up front (seeded mutation loop).

    Mutations behind correct block crcs reach the protobuf and layout checks."""
    prefix = _copy_ckpt(ckpts["size_sharded"], tmp_path)
    records = _records(prefix)
    rng = random.Random(99)

    def flip(block: bytearray) -> None:
        for _ in range(rng.randint(1, 3)):
            if block:
                block[rng.randrange(len(block))] = rng.randrange(256)

    def cases() -> Iterator[bytes]:
        while True:
            if rng.random() < 0.5:
                yield write_table(records, mutate=flip)
                continue
            mutated = list(records)
            i = rng.randrange(len(mutated))
            key, value = mutated[i]
            value = bytearray(value)
            for _ in range(rng.randint(1, 3)):
                if value:
                    value[rng.randrange(len(value))] = rng.randrange(256)
            if rng.random() < 0.3:
                value = value[: rng.randrange(len(value) + 1)]
            mutated[i] = (key, bytes(value))
            yield write_table(mutated)

    assert _fuzz(prefix, cases(), 0.6) > 20


def _bundle_records(header: Any, entries: dict[bytes, Any]) -> list[tuple[bytes, bytes]]:
    return [(b"", header.SerializeToString())] + [
        (k, v.SerializeToString()) for k, v in sorted(entries.items())]


def _protos() -> tuple[Any, Any]:
    _tf()
    from tensorflow.core.framework import versions_pb2
    from tensorflow.core.protobuf import tensor_bundle_pb2

    return tensor_bundle_pb2, versions_pb2


def _entry(pb: Any, dtype: int, shape: tuple[int, ...], offset: int, data: bytes,
           crc: int | None = None) -> Any:
    entry = pb.BundleEntryProto(dtype=dtype, offset=offset, size=len(data),
                                crc32c=_mask(google_crc32c.value(data)) if crc is None else crc)
    for dim in shape:
        entry.shape.dim.add(size=dim)
    return entry


@pytest.mark.slow
def test_big_endian_bundle(tmp_path: Path) -> None:
    pb, versions = _protos()
    floats = np.array([[1.5, -2.0], [3.25, 1e30]], dtype=">f4")
    strings = [b"hello", b"", b"\xe9\x00"]
    lengths = b"".join(_varint(len(s)) for s in strings)
    length_crc = google_crc32c.value(b"".join(len(s).to_bytes(4, "big") for s in strings))
    text = lengths + _mask(length_crc).to_bytes(4, "big") + b"".join(strings)
    text_crc = _mask(google_crc32c.extend(length_crc, text[len(lengths):]))
    shard = floats.tobytes() + text
    header = pb.BundleHeaderProto(num_shards=1, endianness=pb.BundleHeaderProto.BIG,
                                  version=versions.VersionDef(producer=1))
    records = _bundle_records(header, {
        b"f": _entry(pb, 1, (2, 2), 0, floats.tobytes()),
        b"s": _entry(pb, 7, (3,), 16, text, crc=text_crc),
    })
    (tmp_path / "be.index").write_bytes(write_table(records))
    (tmp_path / "be.data-00000-of-00001").write_bytes(shard)
    ckpt = open_tf_index(tmp_path / "be")
    assert ckpt.endianness == "big"
    got = ckpt.read("f")
    assert got.dtype == np.dtype("<f4") and got.tolist() == floats.tolist()
    assert ckpt.read_strings("s") == strings


def _crafted(tmp_path: Path, entries: dict[bytes, Any], shard: bytes | None = b"\0" * 64,
             **header_fields: Any) -> Path:
    pb, versions = _protos()
    header = pb.BundleHeaderProto(**{"num_shards": 1, "version": versions.VersionDef(producer=1),
                                     **header_fields})
    (tmp_path / "c.index").write_bytes(write_table(_bundle_records(header, entries)))
    if shard is not None:
        (tmp_path / "c.data-00000-of-00001").write_bytes(shard)
    return tmp_path / "c"


@pytest.mark.slow
def test_crafted_indexes(tmp_path: Path) -> None:
    """Stops: crafted index entries (bad dtypes, 2**40 sizes, bad shard ids/counts, negative offsets). Found: designed up front."""
    pb, versions = _protos()
    zeros = b"\0" * 16
    ok = {b"ok": _entry(pb, 1, (4,), 0, zeros)}
    # Unsupported dtypes are listed, and refused by name when read.
    prefix = _crafted(tmp_path, {**ok, b"res": _entry(pb, 20, (), 0, b"\0" * 8),
                                 b"q": _entry(pb, 11, (2,), 0, b"\0" * 2)})
    ckpt = open_tf_index(prefix)
    assert ckpt.entries["res"].dtype == "resource" and ckpt.read("ok").tolist() == [0.0] * 4
    with pytest.raises(UnsupportedCheckpointError, match="resource"):
        ckpt.read("res")
    with pytest.raises(UnsupportedCheckpointError, match="qint8"):
        ckpt.read("q")
    with pytest.raises(UnsupportedCheckpointError, match="not a plain string"):
        ckpt.read_strings("ok")
    with pytest.raises(KeyError):
        ckpt.read("absent")
    # A newer bundle format, and a compressed table.
    prefix = _crafted(tmp_path, ok, version=versions.VersionDef(producer=3, min_consumer=2))
    with pytest.raises(UnsupportedCheckpointError, match="version"):
        open_tf_index(prefix)
    index = tmp_path / "c.index"
    index.write_bytes(write_table(_records(_crafted(tmp_path, ok)), compression=1))
    with pytest.raises(UnsupportedCheckpointError, match="snappy") as err:
        open_tf_index(prefix)
    assert err.value.path == index

    bad_cases: list[tuple[dict[str, Any], dict[bytes, Any], str]] = [
        ({}, {b"big": _entry(pb, 1, (2**40,), 0, b"")}, "needs"),  # size != shape x dtype
        ({}, {b"far": pb.BundleEntryProto(dtype=1, size=2**42, offset=8, crc32c=1,
                                          shape={"dim": [{"size": 2**40}]})}, "shard ends"),
        ({}, {b"shard": pb.BundleEntryProto(dtype=1, shard_id=5)}, "shard 5"),
        ({}, {b"nodtype": pb.BundleEntryProto(size=4)}, "no dtype"),
        ({}, {b"neg": pb.BundleEntryProto(dtype=1, offset=-1)}, "negative"),
        ({}, {b"dim": pb.BundleEntryProto(dtype=1, shape={"dim": [{"size": -1}]})}, "unknown"),
        ({"num_shards": 0}, ok, "0 shards"),
        ({"num_shards": 2**31 - 1}, ok, "missing data shard 1 of 2147483647"),
        ({"endianness": 7}, ok, "endianness"),
    ]
    for i, (header, entries, message) in enumerate(bad_cases):
        (tmp_path / str(i)).mkdir()
        shard = None if "num_shards" in header else b"\0" * 64
        prefix = _crafted(tmp_path / str(i), entries, shard, **header)
        with pytest.raises(CkptError, match=message) as err:
            open_tf_index(prefix)
        assert err.value.path is not None


@pytest.mark.slow
def test_partitioned_slices_must_tile_the_tensor(tmp_path: Path) -> None:
    """Stops: overlapping, missing or aliased slices building a big tensor from a small file. Found: designed up front."""
    pb, _ = _protos()
    half = np.arange(4, dtype="<f4").tobytes()

    def meta(*extents: tuple[int, int]) -> Any:
        entry = pb.BundleEntryProto(dtype=1, shape={"dim": [{"size": 8}]})
        for start, length in extents:
            entry.slices.add().extent.add(start=start, length=length)
        return entry

    pieces = {slice_key("t", ((0, 4),)): _entry(pb, 1, (4,), 0, half),
              slice_key("t", ((4, 4),)): _entry(pb, 1, (4,), 16, half),
              slice_key("t", ((2, 4),)): _entry(pb, 1, (4,), 0, half)}
    shard = half * 2
    good = _crafted(tmp_path, {b"t": meta((0, 4), (4, 4)), **pieces}, shard)
    assert open_tf_index(good).read("t").tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    # Two pieces sharing the same 16 bytes: a small file must not make a big tensor.
    twice = {slice_key("t", ((0, 4),)): _entry(pb, 1, (4,), 0, half),
             slice_key("t", ((4, 4),)): _entry(pb, 1, (4,), 0, half)}
    with pytest.raises(CorruptCheckpointError, match="more bytes than the shards hold"):
        open_tf_index(_crafted(tmp_path, {b"t": meta((0, 4), (4, 4)), **twice}, half)).read("t")
    for extents, message in ([((0, 4),), "4 of 8"], [((0, 4), (2, 4)), "overlapping"],
                             [((0, 4), (0, 4)), "overlapping"],
                             [((0, 4), (4, 4), (2, 4)), "12 of 8"],
                             [((0, 4), (5, 4)), "outside|missing"], [((0, 2), (2, 6)), "missing"]):
        prefix = _crafted(tmp_path, {b"t": meta(*extents), **pieces}, shard)
        with pytest.raises(CorruptCheckpointError, match=message):
            open_tf_index(prefix).read("t")


@pytest.mark.slow
def test_key_expansion_bomb_is_refused(tmp_path: Path) -> None:
    """Stops: an SSTable key-prefix bomb (a <1 MB index expanding to 1.2 GB of keys). Found: designed up front.

    Prefix compression could turn a small index into gigabytes of keys: it must not."""
    pb, versions = _protos()
    header = pb.BundleHeaderProto(num_shards=1, version=versions.VersionDef(producer=1))
    value = _entry(pb, 1, (0,), 0, b"").SerializeToString()
    stem = b"k" * 60_000
    # One huge block with a single restart: every key shares 60 kB with its predecessor.
    head = (b"", header.SerializeToString())
    first = stem + bytes(3)
    block = bytearray(_varint(0) + _varint(0) + _varint(len(head[1])) + head[1])
    block += _varint(0) + _varint(len(first)) + _varint(len(value)) + first + value
    for i in range(1, 20_000):
        block += _varint(60_000) + _varint(3) + _varint(len(value)) + i.to_bytes(3, "big") + value
    contents = bytes(block) + struct.pack("<II", 0, 1)
    last_key = stem + (19_999).to_bytes(3, "big")
    handle = _varint(0) + _varint(len(contents))
    crc = _mask(google_crc32c.value(contents + b"\0"))
    meta_at = len(contents) + 5
    index_block = _block_contents([(last_key, handle)], 1)
    meta_block = _block_contents([], 1)
    blob = bytearray(contents + b"\0" + crc.to_bytes(4, "little"))
    for block in (meta_block, index_block):
        blob += block + b"\0" + _mask(google_crc32c.value(block + b"\0")).to_bytes(4, "little")
    footer = (_varint(meta_at) + _varint(len(meta_block))
              + _varint(meta_at + len(meta_block) + 5) + _varint(len(index_block)))
    blob += footer.ljust(40, b"\0") + MAGIC
    assert len(blob) < 1_000_000  # decoded, the keys would be 1.2 GB
    (tmp_path / "bomb.index").write_bytes(bytes(blob))
    (tmp_path / "bomb.data-00000-of-00001").write_bytes(b"")
    started = time.perf_counter()
    with pytest.raises(CorruptCheckpointError, match="expand"):
        open_tf_index(tmp_path / "bomb")
    assert time.perf_counter() - started < 2
