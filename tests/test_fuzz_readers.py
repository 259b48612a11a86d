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
    """Everything convert would read from ``path`` (structure, metadata and every tensor)."""
    from ckptctl.ops.convert import ConvertOptions, plan_conversion

    _, _, plan = plan_conversion(path, fmt, path.parent, ConvertOptions())  # type: ignore[arg-type]
    if plan.write is not None:
        plan.write(path.with_name(path.name + ".out.weights.h5"))


def assert_only_ckpt_errors(path: Path, fmt: str) -> None:
    started = time.monotonic()
    with contextlib.suppress(CkptError):
        exercise(path, fmt)
    assert time.monotonic() - started < 5, "a reader took too long on hostile bytes"


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


CHILD = r"""
import json, random, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_fuzz_readers import exercise
from ckptctl.errors import CkptError
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
cases = json.loads(sys.argv[1]); out = Path(sys.argv[2])
rng = random.Random(1234)
worst = 0.0
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
        start = time.monotonic()
        try:
            exercise(target, fmt)
        except CkptError:
            pass
        worst = max(worst, time.monotonic() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"worst_seconds": worst, "peak_rss_kib": peak}))
"""


def test_seeded_mutations_stay_within_memory_and_time(example_tree: tuple[Path, dict],
                                                      tf_tree: tuple[Path, dict], tmp_path: Path) -> None:
    """Stops: mutated checkpoints escaping, taking >5 s or >1.5 GB peak RSS in a memory-capped child. Found: fuzzing (hypothesis/mutation)."""
    cases = [
        (str(example_tree[0] / "ocr_dbnet_hydra/checkpoints/last.ckpt"), "torch-zip"),
        (str(example_tree[0] / "legacy_format/model_legacy.pt"), "torch-legacy"),
        (str(tf_tree[0] / "keras2_h5/full_model.h5"), "keras2-h5-model"),
    ]
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases), str(tmp_path),
                           str(Path(__file__).parent)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["worst_seconds"] < 5, report
    assert report["peak_rss_kib"] < 1_500_000, report  # well inside the 3 GiB cap
