"""Every reader over mutated real fixtures: only ckptctl's own errors escape, within time
and memory bounds (hypothesis in-process; a seeded mutation loop in a memory-capped child).

Where found: the torch-zip, Keras HDF5 and seeded child cases failed against the readers as they
were before commit 2e71184 (raw zipfile/h5py errors escaping, one HDF5 input running for minutes);
the legacy, TF-index and sidecar cases already held.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptctl.errors import CkptError

pytestmark = pytest.mark.slow  # hypothesis and seeded mutation loops over real fixtures (and the TF tree)
FUZZ_SETTINGS = settings(max_examples=40, deadline=5000, derandomize=True,
                         suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                HealthCheck.too_slow])


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "zero-run"]))
    if not data:
        return draw(st.binary(max_size=64))
    position = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        mutated = bytearray(data)
        mutated[position] ^= draw(st.integers(1, 255))
        return bytes(mutated)
    if kind == "truncate":
        return data[:position]
    if kind == "splice":
        return data[:position] + draw(st.binary(min_size=1, max_size=32)) + data[position:]
    length = draw(st.integers(1, 64))
    return data[:position] + b"\0" * length + data[position + length:]


def exercise(path: Path, fmt: str) -> None:
    """Everything convert would read from ``path`` (structure, metadata and every tensor),
    within the output budget convert gives it."""
    from ckptctl.budgets import output_budget
    from ckptctl.ops.convert import ConvertOptions, plan_conversion
    from ckptctl.sources import fingerprint

    _, _, plan = plan_conversion(path, fmt, path.parent, ConvertOptions())  # type: ignore[arg-type]
    if plan.write is not None:
        with output_budget(fingerprint(path, fmt).size_bytes):
            plan.write(path.with_name(path.name + ".out.weights.h5"))


#: A reader's CPU time on one hostile file (CPU, not wall: a loaded CI machine must not fail
#: a test that guards against quadratic work), and a wall-clock bound against hangs.
MAX_CPU_SECONDS = 5
MAX_WALL_SECONDS = 60


def assert_only_ckpt_errors(path: Path, fmt: str) -> None:
    started, started_cpu = time.monotonic(), time.process_time()
    with contextlib.suppress(CkptError):
        exercise(path, fmt)
    assert time.process_time() - started_cpu < MAX_CPU_SECONDS, "a reader took too long on hostile bytes"
    assert time.monotonic() - started < MAX_WALL_SECONDS, "a reader hung on hostile bytes"


def fixture_bytes(root: Path, rel: str) -> bytes:
    return (root / rel).read_bytes()


@pytest.mark.parametrize(("tree", "rel", "fmt"), [
    # Stops: a mutated torch zip escaping as a raw zipfile error (UnicodeDecodeError, NotImplementedError). Found: fuzzing (hypothesis/mutation).
    ("example_tree", "mlp_minloss/checkpoints/epoch=4-step=20-val_loss=0.64.ckpt", "torch-zip"),
    # Stops: a mutated legacy torch stream escaping as a non-CkptError or running over 5 s. Found: designed up front (held under hypothesis fuzzing).
    ("example_tree", "legacy_format/model_legacy.pt", "torch-legacy"),
    # Stops: a mutated torch zip of every dtype escaping as a raw zipfile error. Found: fuzzing (hypothesis/mutation).
    ("example_tree", "dtype_zoo/zoo.pt", "torch-zip"),
    # Stops: a damaged Keras full-model HDF5 escaping as a raw h5py error (KeyError, OSError). Found: fuzzing (hypothesis/mutation).
    ("tf_tree", "keras2_h5/full_model.h5", "keras2-h5-model"),
    # Stops: a damaged Keras weights HDF5 running for minutes or escaping as a raw h5py error. Found: fuzzing (hypothesis/mutation).
    ("tf_tree", "keras2_h5/model_01_valloss_1.1496.h5", "keras2-h5-weights"),
])
def test_single_file_readers_fuzz(request: pytest.FixtureRequest, tmp_path: Path, tree: str,
                                  rel: str, fmt: str) -> None:
    """Stops: mutated torch zip/legacy and Keras HDF5 files escaping as non-CkptError or taking >5 s. Found: fuzzing (hypothesis/mutation)."""
    original = fixture_bytes(request.getfixturevalue(tree)[0], rel)

    @FUZZ_SETTINGS
    @given(mutations(original))
    def run(mutated: bytes) -> None:
        target = tmp_path / Path(rel).name
        target.write_bytes(mutated)
        assert_only_ckpt_errors(target, fmt)

    run()


def test_tf_index_reader_fuzz(tf_tree: tuple[Path, dict], tmp_path: Path) -> None:
    """Stops: a mutated TF .index or data shard escaping as non-CkptError or taking >5 s. Found: designed up front (held under hypothesis fuzzing)."""
    import shutil

    source = tf_tree[0] / "keras2_functional"
    index = (source / "model.ckpt.index").read_bytes()
    shard = (source / "model.ckpt.data-00000-of-00001").read_bytes()

    @FUZZ_SETTINGS
    @given(st.sampled_from(["index", "shard"]), st.data())
    def run(which: str, data: st.DataObject) -> None:
        folder = tmp_path / "tf"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        mutated = data.draw(mutations(index if which == "index" else shard))
        (folder / "model.ckpt.index").write_bytes(mutated if which == "index" else index)
        (folder / "model.ckpt.data-00000-of-00001").write_bytes(mutated if which == "shard" else shard)
        assert_only_ckpt_errors(folder / "model.ckpt", "tf-index")

    run()


def test_sidecar_parser_fuzz(tmp_path: Path) -> None:
    """Stops: a mutated sidecar YAML crashing the parser with a non-CkptError. Found: designed up front (held under hypothesis fuzzing)."""
    import torch
    from helpers import run_cli

    from ckptctl.sidecars import parse_sidecar

    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 1}, tmp_path / "a.pt")
    assert run_cli("convert", "--checkpoint", tmp_path / "a.pt").exit_code == 0
    original = (tmp_path / "a.metadata.yaml").read_bytes()

    @FUZZ_SETTINGS
    @given(mutations(original))
    def run(mutated: bytes) -> None:
        target = tmp_path / "fuzz.metadata.yaml"
        target.write_bytes(mutated)
        with contextlib.suppress(CkptError):
            parse_sidecar(target)

    run()


def _hdf5_seed(folder: Path, kind: str, attack: str) -> tuple[Path, bytes]:
    """A small Keras 2 weights .h5 or ckptctl-tensors .weights.h5 whose (4, 3) kernel is
    replaced by ``attack`` (test_hdf5_confinement), and the secret it points at."""
    import h5py
    import numpy as np
    from test_hdf5_confinement import SECRET, SHAPE, make_secrets, plant

    from ckptctl.layouts.ckptctl_tensors import TensorToWrite, write_tensors

    secrets = make_secrets(folder / "secrets")
    seed = folder / ("seed.h5" if kind == "keras2-h5-weights" else "seed.weights.h5")
    kernel = np.arange(12, dtype="<f4").reshape(SHAPE)
    if kind == "keras2-h5-weights":
        with h5py.File(seed, "w") as f:
            f.attrs["keras_version"] = "2.15.0"
            f.attrs["backend"] = "tensorflow"
            f.attrs["layer_names"] = np.array([b"dense"])
            group = f.create_group("dense")
            group.attrs["weight_names"] = np.array([b"dense/kernel:0", b"dense/bias:0"])
            group.create_dataset("dense/kernel:0", data=kernel)
            group.create_dataset("dense/bias:0", data=np.zeros(3, "<f4"))
        path = "dense/dense/kernel:0"
    else:
        write_tensors(seed, [TensorToWrite("w", "float32", SHAPE, None, lambda: kernel)],
                      {"writer": "ckptctl test"})
        path = "tensors/w"
    with h5py.File(seed, "r+") as f:
        plant(f, path, attack, secrets)
    return seed, SECRET


@pytest.mark.parametrize("kind", ["keras2-h5-weights", "ckptctl-tensors"])
@pytest.mark.parametrize("attack", ["external_storage", "external_link", "virtual_dataset",
                                    "never_written_16GiB", "gzip_bomb_6GiB"])
def test_hdf5_indirection_seeds_fuzz(tmp_path: Path, kind: str, attack: str) -> None:
    """Stops: mutated HDF5 files with external storage, external links, virtual datasets or size bombs (as convert and load_weights read them) reading another file's bytes, allocating what they declare, escaping as non-CkptError or taking >5 s. Found: hostile review (issue 10)."""
    import ckptctl

    seed, secret = _hdf5_seed(tmp_path, kind, attack)
    original = seed.read_bytes()

    @settings(FUZZ_SETTINGS, max_examples=25)
    @given(mutations(original))
    def run(mutated: bytes) -> None:
        target = tmp_path / seed.name
        target.write_bytes(mutated)
        started, started_cpu = time.monotonic(), time.process_time()
        with contextlib.suppress(CkptError):
            if kind == "ckptctl-tensors":
                arrays = ckptctl.load_weights(target)
                assert all(secret[:16] not in a.tobytes() for a in arrays.values())
            else:
                exercise(target, kind)
        assert time.process_time() - started_cpu < MAX_CPU_SECONDS, "a reader took too long"
        assert time.monotonic() - started < MAX_WALL_SECONDS, "a reader hung on hostile bytes"
        for output in tmp_path.glob("*.out.weights.h5"):
            assert secret[:16] not in output.read_bytes(), "the secret leaked into the output"

    run()


CHILD = r"""
import json, random, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_fuzz_readers import exercise
from ckptctl.errors import CkptError
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
cases = json.loads(sys.argv[1]); out = Path(sys.argv[2])
rng = random.Random(1234)
worst = worst_wall = 0.0  # CPU seconds (other load on the machine does not count), wall
for path, fmt in cases:
    data = Path(path).read_bytes()
    for i in range(60):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        if rng.random() < 0.3:
            mutated = mutated[: rng.randrange(len(mutated))]
        target = out / Path(path).name
        target.write_bytes(bytes(mutated))
        start, start_cpu = time.monotonic(), time.process_time()
        try:
            exercise(target, fmt)
        except CkptError:
            pass
        worst = max(worst, time.process_time() - start_cpu)
        worst_wall = max(worst_wall, time.monotonic() - start)
# VmHWM: this process's own peak RSS. ru_maxrss would start at the high-water mark of the
# pytest process that started it (carried across exec), which grows with the tests before.
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open("/proc/self/status") as status:
    peak = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), peak)
print(json.dumps({"worst_seconds": worst, "worst_wall_seconds": worst_wall, "peak_rss_kib": peak}))
"""


def test_seeded_mutations_stay_within_memory_and_time(example_tree: tuple[Path, dict],
                                                      tf_tree: tuple[Path, dict], tmp_path: Path) -> None:
    """Stops: mutated checkpoints escaping, taking >5 s or >1.5 GB peak RSS in a memory-capped child. Found: fuzzing (hypothesis/mutation)."""
    cases = [
        (str(example_tree[0] / "ocr_dbnet_hydra/checkpoints/last.ckpt"), "torch-zip"),
        (str(example_tree[0] / "legacy_format/model_legacy.pt"), "torch-legacy"),
        (str(tf_tree[0] / "keras2_h5/full_model.h5"), "keras2-h5-model"),
    ]
    # HDF5 size bombs: a never-written 16 GiB dataset and a 6 GiB gzip bomb (issue 10)
    cases += [(str(_hdf5_seed(tmp_path / f"seed-{attack}", "keras2-h5-weights", attack)[0]),
               "keras2-h5-weights") for attack in ("never_written_16GiB", "gzip_bomb_6GiB")]
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases), str(tmp_path),
                           str(Path(__file__).parent)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["worst_seconds"] < MAX_CPU_SECONDS, report
    assert report["worst_wall_seconds"] < MAX_WALL_SECONDS, report
    assert report["peak_rss_kib"] < 1_500_000, report  # well inside the 3 GiB cap


def test_budget_seeds_stay_within_memory_and_time(tmp_path: Path) -> None:
    """Stops: mutated budget attacks (memo-reference expansion, tuple-DAG hashing, colliding keys, repeated buffers, broadcast views, a deflated .keras config) escaping, taking >5 s or >1.5 GB in a memory-capped child. Found: hostile review (issue 10)."""
    import zipfile

    import torch
    from test_budgets import (
        checkpoint_pkl,
        colliding_int_keys,
        get,
        memo_lists,
        repeated_calls,
        tuple_dag,
    )
    from test_unpickler_hostile import (
        op_bytes,
        op_dict,
        op_global,
        op_int,
        op_str,
        op_tensor,
        pkl,
        rewrite_zip,
    )

    template = tmp_path / "template.pt"
    torch.save({"w": torch.arange(16, dtype=torch.float32)}, template)
    zip_template = template.read_bytes()
    wide, wide_ref = memo_lists(200, 12)
    seeds = {
        "memo_wide.ckpt": checkpoint_pkl(("hyper_parameters", op_dict((op_str("x"), wide_ref))),
                                         prelude=wide),
        "tuple_dag.ckpt": checkpoint_pkl(("k", op_dict((get(30), op_int(1)))), prelude=tuple_dag(30)),
        "collide.ckpt": checkpoint_pkl(("k", colliding_int_keys(3_000))),
        "buffers.ckpt": checkpoint_pkl(("k", repeated_calls(op_global("builtins", "bytearray"),
                                                            op_bytes(b"x" * 65536), 2_000))),
        "broadcast.ckpt": pkl(op_dict(*[  # zero-stride rows of one 64-byte storage
            (op_str(f"w{i}"), op_tensor(None, 0, (1 << (24 - i), 2 << i), (0, 1)))
            for i in range(4)])),
    }
    cases = []
    for name, data in seeds.items():
        path = tmp_path / name
        path.write_bytes(rewrite_zip(zip_template, data))
        cases.append((str(path), "torch-zip"))
    keras = tmp_path / "bomb.keras"
    with zipfile.ZipFile(keras, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", b'{"keras_version": "3.3.3"}')
        archive.writestr("config.json", b'{"class_name": "' + b" " * (8 << 20) + b'"}')
    cases.append((str(keras), "keras3-keras"))
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases), str(out),
                           str(Path(__file__).parent)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["worst_seconds"] < MAX_CPU_SECONDS, report
    assert report["worst_wall_seconds"] < MAX_WALL_SECONDS, report
    assert report["peak_rss_kib"] < 1_500_000, report
