"""Every HDF5 read in ckptctl is confined to its file and bounded (``ckptctl/readers/h5safe.py``).

Issue 10, "Reads outside the tree -> HDF5 indirection": a Keras 2 ``.h5`` (or a ckptctl
``.weights.h5``) whose weight dataset uses external storage, an external link or a virtual
dataset made ``convert`` copy another file's bytes into the converted weights (and
``load_weights``/``load_state_dict`` return them); a tiny file declaring a never-written
16 GiB dataset, or a gzip bomb, made the read allocate all of it.

Each hostile file is a real one (a ``tf_keras`` model saved with ``model.save``/
``save_weights``, or ckptctl's own output of a small torch file) with one weight replaced
by the hostile variant, built here with h5py. The "secret" it points at lies outside the
converted tree; its bytes must appear in no output and no message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bounded import BoundedRun, assert_refused, run_bounded
from helpers import outputs_for, run_cli

import ckptctl
from ckptctl.errors import CkptError

#: 48 bytes: the float32 (4, 3) kernel of the Dense layer the attacks replace.
SECRET = b"TOP-SECRET:0123456789abcdef/TOP-SECRET:ghijklmno"
SHAPE = (4, 3)
assert len(SECRET) == 4 * np.prod(SHAPE)

ATTACKS = ["external_storage", "external_link", "virtual_dataset", "never_written_16GiB",
           "gzip_bomb_6GiB"]
#: what the one refusal line says for each attack
REASONS = {
    "external_storage": "uses external storage (reads another file)",
    "external_link": "is an external link",
    "virtual_dataset": "is a virtual dataset (reads other files)",
    "never_written_16GiB": "never written",
    "gzip_bomb_6GiB": "exceeds the read budget",
    "external_storage_fifo": "uses external storage",
    "external_link_fifo": "is an external link",
}
#: far below what any of the bombs would allocate if read
MEMORY = 2 << 30


@dataclass(frozen=True)
class Secrets:
    raw: Path    # the secret bytes as a plain file (external storage reads it)
    h5: Path     # the secret as dataset /secret of an HDF5 file (external links, VDS)
    fifo: Path   # a FIFO: opening it for reading blocks until a writer comes


def make_secrets(folder: Path) -> Secrets:
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / "secret.bin"
    raw.write_bytes(SECRET * 4)
    h5 = folder / "secret.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("secret", data=np.frombuffer(SECRET, "<f4").reshape(SHAPE))
    fifo = folder / "secret.fifo"
    os.mkfifo(fifo)
    return Secrets(raw, h5, fifo)


def _gzip_bomb(dataset: Any) -> None:
    """Every chunk of a (40000, 40000) float32 dataset: 64 MB of zeros deflated to ~65 KB."""
    blob = zlib.compress(bytes(4000 * 4000 * 4), 9)
    for i in range(0, dataset.shape[0], 4000):
        for j in range(0, dataset.shape[1], 4000):
            dataset.id.write_direct_chunk((i, j), blob)


def plant(f: Any, path: str, attack: str, secrets: Secrets) -> None:
    """Replace the dataset at ``path`` of the open (r+) file ``f`` by ``attack``'s variant,
    keeping its attributes where the variant is a dataset."""
    import h5py

    old = f[path]
    attrs = dict(old.attrs)
    shape, dtype = old.shape, old.dtype
    assert shape == SHAPE and dtype == np.dtype("<f4"), (path, shape, dtype)
    del f[path]
    if attack in ("external_storage", "external_storage_fifo"):
        target = secrets.raw if attack == "external_storage" else secrets.fifo
        f.create_dataset(path, shape=shape, dtype=dtype, external=[(str(target), 0, len(SECRET))])
    elif attack in ("external_link", "external_link_fifo"):
        target = secrets.h5 if attack == "external_link" else secrets.fifo
        f[path] = h5py.ExternalLink(str(target), "/secret")
        return
    elif attack == "virtual_dataset":
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[...] = h5py.VirtualSource(str(secrets.h5), "secret", shape=shape)
        f.create_virtual_dataset(path, layout)
    elif attack == "never_written_16GiB":
        f.create_dataset(path, shape=(65536, 65536), dtype="<f4")  # 16 GiB, never written
    elif attack == "gzip_bomb_6GiB":
        bomb = f.create_dataset(path, shape=(40000, 40000), dtype="<f4", chunks=(4000, 4000),
                                compression="gzip")
        _gzip_bomb(bomb)
    else:
        raise AssertionError(attack)
    for key, value in attrs.items():
        f[path].attrs[key] = value


def tampered(source: Path, dest: Path, path: str, attack: str, secrets: Secrets) -> Path:
    import h5py

    shutil.copyfile(source, dest)
    with h5py.File(dest, "r+") as f:
        plant(f, path, attack, secrets)
    return dest


def assert_no_secret(tree: Path, *runs: BoundedRun) -> None:
    """No file under ``tree`` (outputs, sidecars, temporaries) and no message holds the secret."""
    needle = SECRET[:16]
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert needle not in path.read_bytes(), f"the secret leaked into {path}"
    for run in runs:
        assert needle.decode() not in run.stdout + run.stderr


# --- Keras 2 HDF5 sources ------------------------------------------------------------------

_KERAS2 = """
import sys
import tf_keras as K
folder = sys.argv[1]
model = K.Sequential([K.Input((4,)), K.layers.Dense(3, name="dense"), K.layers.Dense(2, name="head")])
model.compile("adam", "mse")
model.save(folder + "/model.h5")
model.save_weights(folder + "/weights.h5")
"""


@pytest.fixture(scope="module")
def keras2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Keras 2 ``model.save`` (model.h5) and ``save_weights`` (weights.h5) pair."""
    folder = tmp_path_factory.mktemp("keras2")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", _KERAS2, str(folder)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return folder


#: the Dense kernel in each kind of Keras 2 file
KERNEL = {"model.h5": "model_weights/dense/dense/kernel:0", "weights.h5": "dense/dense/kernel:0"}


@pytest.mark.parametrize("attack", [*ATTACKS, "external_storage_fifo", "external_link_fifo"])
def test_keras2_h5_indirection_and_bombs_are_refused(keras2: Path, tmp_path: Path, attack: str) -> None:
    """Stops: a Keras 2 .h5 (model.save and save_weights) whose kernel is external storage, an external link, a virtual dataset (another file's bytes copied into the converted weights; a FIFO target blocking), a never-written 16 GiB dataset or a 6 GiB gzip bomb (allocated). Found: hostile review (issue 10)."""
    secrets = make_secrets(tmp_path / "secrets")
    tree = tmp_path / "tree"
    tree.mkdir()
    hostile = [tampered(keras2 / kind, tree / f"hostile_{kind}", kernel, attack, secrets)
               for kind, kernel in KERNEL.items()]
    good = tree / "good_model.h5"
    shutil.copyfile(keras2 / "model.h5", good)
    run = run_bounded("convert", "--exp-dir", tree, memory=MEMORY, timeout=60)
    assert_refused(run, refused=hostile, converted=[good], reason=REASONS[attack])
    assert_no_secret(tree, run)


def test_real_keras2_files_still_convert(keras2: Path, tmp_path: Path) -> None:
    """Stops: the guard refusing real tf_keras files (model.save, save_weights). Found: hostile review (issue 10)."""
    shutil.copytree(keras2, tmp_path / "tree")
    run = run_bounded("convert", "--exp-dir", tmp_path / "tree", memory=MEMORY, timeout=60)
    assert run.exit_code == 0, run.stdout + run.stderr
    for kind in KERNEL:
        assert all(p.exists() for p in outputs_for(tmp_path / "tree" / kind))


def test_sniffing_never_follows_an_external_link(keras2: Path, tmp_path: Path) -> None:
    """Stops: scan/convert following a root-level external link to a FIFO while only telling what kind of HDF5 a file is (``"a/b" in f`` opens the target; it blocks for ever). Found: hostile review (issue 10)."""
    import h5py

    secrets = make_secrets(tmp_path / "secrets")
    tree = tmp_path / "tree"
    tree.mkdir()
    hostile = tree / "hostile.h5"
    shutil.copyfile(keras2 / "weights.h5", hostile)
    with h5py.File(hostile, "r+") as f:
        f["model_weights"] = h5py.ExternalLink(str(secrets.fifo), "/model_weights")
        f["dense"].attrs["probe"] = 1
        del f["head"]
        f["head"] = h5py.ExternalLink(str(secrets.fifo), "/head")
    shutil.copyfile(keras2 / "weights.h5", tree / "good.h5")
    scan = run_bounded("scan", "--format", "json", tree, memory=MEMORY, timeout=60)
    assert not scan.timed_out and "Traceback" not in scan.stderr, scan.stderr
    run = run_bounded("convert", "--exp-dir", tree, memory=MEMORY, timeout=60)
    assert_refused(run, refused=[hostile], converted=[tree / "good.h5"], reason="is an external link")


def test_soft_link_through_an_external_link_is_refused(keras2: Path, tmp_path: Path) -> None:
    """Stops: an in-file soft link whose path runs through an external link (the soft link looks local; resolving it reads another file). Found: hostile review (issue 10)."""
    import h5py

    secrets = make_secrets(tmp_path / "secrets")
    tree = tmp_path / "tree"
    tree.mkdir()
    hostile = tree / "hostile.h5"
    shutil.copyfile(keras2 / "weights.h5", hostile)
    with h5py.File(hostile, "r+") as f:
        f["elsewhere"] = h5py.ExternalLink(str(secrets.h5), "/")
        del f["dense/dense/kernel:0"]
        f["dense/dense/kernel:0"] = h5py.SoftLink("/elsewhere/secret")
    run = run_bounded("convert", "--exp-dir", tree, memory=MEMORY, timeout=60)
    assert_refused(run, refused=[hostile], reason="elsewhere is an external link")
    assert_no_secret(tree, run)


@pytest.mark.parametrize("attack", ["external_link", "virtual_dataset"])
def test_keras3_native_weights_with_indirection_are_refused(tmp_path: Path, attack: str) -> None:
    """Stops: a Keras 3 .weights.h5 (described, not rewritten) whose variable reads another file getting a sidecar that vouches for it. Found: hostile review (issue 10)."""
    import h5py

    secrets = make_secrets(tmp_path / "secrets")
    tree = tmp_path / "tree"
    tree.mkdir()
    files = {}
    for name in ("hostile", "good"):
        path = tree / f"{name}.weights.h5"
        with h5py.File(path, "w") as f:
            f.attrs["date_saved"] = "2024-01-01@00:00:00"
            f.create_dataset("layers/dense/vars/0", data=np.ones(SHAPE, "<f4"))
            f.create_dataset("layers/dense/vars/1", data=np.zeros(3, "<f4"))
            f.create_group("optimizer/vars")
            if name == "hostile":
                plant(f, "layers/dense/vars/0", attack, secrets)
        files[name] = path
    run = run_bounded("convert", "--exp-dir", tree, memory=MEMORY, timeout=60)
    output = run.stdout + run.stderr
    assert run.exit_code == 1 and "Traceback" not in output, output
    naming = [line for line in run.lines if "hostile.weights.h5" in line]
    assert len(naming) == 1 and REASONS[attack] in naming[0], output
    assert not outputs_for(files["hostile"])[1].exists()
    assert outputs_for(files["good"])[1].exists()


# --- ckptctl's own .weights.h5: validate --deep and the Python API -------------------------


@pytest.fixture
def converted(tmp_path: Path) -> tuple[Path, Path]:
    """(tree, weights): a small torch checkpoint converted by ckptctl, and a second one."""
    import torch

    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("a", "b"):
        torch.save({"w": torch.arange(12, dtype=torch.float32).reshape(SHAPE),
                    "bias": torch.zeros(3)}, tree / f"{name}.pt")
    result = run_cli("convert", "--exp-dir", tree)
    assert result.exit_code == 0, result.output
    return tree, outputs_for(tree / "a.pt")[0]


def _rewrite_sidecar_to_match(sidecar: Path, weights: Path) -> None:
    """What an attacker who rewrites the weights also does: record their new sha256/size."""
    import hashlib

    from ckptctl.yamlio import load_yaml_file

    doc = load_yaml_file(sidecar)
    assert isinstance(doc, dict)
    old_sha, old_size = doc["weights"]["sha256"], doc["weights"]["size_bytes"]
    text = sidecar.read_text()
    text = text.replace(old_sha, hashlib.sha256(weights.read_bytes()).hexdigest())
    text = text.replace(f"size_bytes: {old_size}\n", f"size_bytes: {weights.stat().st_size}\n")
    sidecar.write_text(text)


@pytest.mark.parametrize("attack", ATTACKS)
def test_tampered_weights_are_refused_by_validate_deep(converted: tuple[Path, Path], tmp_path: Path,
                                                      attack: str) -> None:
    """Stops: a ckptctl .weights.h5 rewritten to read another file (or to declare what it does not store), with its sidecar rewritten to match, passing validate --deep. Found: hostile review (issue 10)."""
    tree, weights = converted
    secrets = make_secrets(tmp_path / "secrets")
    pristine = tmp_path / "pristine.weights.h5"
    shutil.copyfile(weights, pristine)
    tampered(pristine, weights, "tensors/w", attack, secrets)
    sidecar = outputs_for(tree / "a.pt")[1]
    plain = run_bounded("validate", "--deep", "--format", "json", tree, memory=MEMORY, timeout=60)
    assert plain.exit_code == 1, plain.stdout + plain.stderr  # the size or sha256 differs
    assert [p["kind"] for p in json.loads(plain.stdout)["problems"]] == ["corrupt"]
    _rewrite_sidecar_to_match(sidecar, weights)
    run = run_bounded("validate", "--deep", "--format", "json", tree, memory=MEMORY, timeout=60)
    assert not run.timed_out and "Traceback" not in run.stderr, run.stderr
    assert run.exit_code == 1, run.stdout + run.stderr
    problems = json.loads(run.stdout)["problems"]
    assert len(problems) == 1, problems  # b's outputs are fine
    assert "a.weights.h5" in problems[0]["problem"] and REASONS[attack] in problems[0]["problem"]
    assert "\n" not in problems[0]["problem"]
    shallow = run_bounded("validate", tree, memory=MEMORY, timeout=60)
    assert shallow.exit_code == 0, shallow.stdout + shallow.stderr  # sizes match: not --deep
    assert_no_secret(tree, plain, run, shallow)


_API_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[3]), int(sys.argv[3])))
import ckptctl
from ckptctl.errors import CkptError
try:
    result = getattr(ckptctl, sys.argv[1])(sys.argv[2])
    print(json.dumps({"raised": None, "w": bytes(memoryview(result["w"].numpy() if hasattr(
        result["w"], "numpy") else result["w"]).cast("B")).hex()}))
except CkptError as exc:
    print(json.dumps({"raised": "CkptError", "message": str(exc)}))
except BaseException as exc:
    print(json.dumps({"raised": type(exc).__name__, "message": str(exc)[:2000]}))
"""


def call_api(api: str, path: Path, memory: int = 4 << 30, timeout: float = 60) -> dict[str, Any]:
    """``ckptctl.<api>(path)`` in a child under an address-space cap and a timeout: what it
    raised (``"CkptError"`` for any of ckptctl's), or the bytes of tensor ``w``."""
    from helpers import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", _API_CHILD, api, str(path), str(memory)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"raised": "timeout"}
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("api", ["load_weights", "load_state_dict"])
def test_python_api_refuses_tampered_weights(converted: tuple[Path, Path], tmp_path: Path,
                                             attack: str, api: str) -> None:
    """Stops: ckptctl.load_weights/load_state_dict returning another file's bytes (or allocating a declared 16 GiB / a gzip bomb) from a tampered .weights.h5. Found: hostile review (issue 10)."""
    _, weights = converted
    secrets = make_secrets(tmp_path / "secrets")
    pristine = tmp_path / "pristine.weights.h5"
    shutil.copyfile(weights, pristine)
    tampered(pristine, weights, "tensors/w", attack, secrets)
    result = call_api(api, weights)
    assert result["raised"] == "CkptError", result
    assert REASONS[attack] in result["message"] and "\n" not in result["message"], result
    assert SECRET[:16].decode() not in result["message"]
    good = call_api(api, outputs_for(weights.parent / "b.pt")[0])
    assert good["w"] == np.arange(12, dtype="<f4").tobytes().hex(), good


# --- malformed .weights.h5 through the Python API ------------------------------------------


def _malformed(f: Any, case: str) -> None:
    import h5py

    group = f["tensors"]
    if case == "layout_attr_is_an_array":
        f.attrs["layout"] = np.array([1, 2, 3])
    elif case == "no_tensors_group":
        del f["tensors"]
    elif case == "tensors_is_a_dataset":
        del f["tensors"]
        f["tensors"] = np.arange(3)
    elif case == "tensor_is_a_group":
        del group["w"]
        group.create_group("w")
    elif case == "dtype_attr_lies":
        group["w"].attrs["dtype"] = "bfloat16"
    elif case == "dtype_attr_unknown":
        group["w"].attrs["dtype"] = "float99"
    elif case == "dtype_attr_is_an_array":
        group["w"].attrs["dtype"] = np.array([1.5, 2.5])
    elif case == "variable_length_strings":
        del group["w"]
        group.create_dataset("w", data=np.array(["a", "bc"], dtype=h5py.string_dtype()))
    elif case == "object_references":
        del group["w"]
        group.create_dataset("w", data=np.array([f.ref, f.ref], dtype=h5py.ref_dtype))
    elif case == "null_dataspace":
        del group["w"]
        group.create_dataset("w", data=h5py.Empty("<f4"))
    elif case == "big_endian":
        del group["w"]
        group.create_dataset("w", data=np.ones(SHAPE, ">f4")).attrs["dtype"] = "float32"
    elif case == "compound":
        del group["w"]
        group.create_dataset("w", data=np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]))
    elif case == "dangling_soft_link":
        del group["w"]
        group["w"] = h5py.SoftLink("/nowhere")
    elif case == "soft_link_cycle":
        del group["w"]
        group["w"] = h5py.SoftLink("/tensors/w")
    elif case == "unknown_filter":
        del group["w"]
        # a filter id no one registered: reading would make HDF5 look for a plugin
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(SHAPE)
        dcpl.set_filter(33333, h5py.h5z.FLAG_OPTIONAL)
        space = h5py.h5s.create_simple(SHAPE)
        h5py.h5d.create(group.id, b"w", h5py.h5t.IEEE_F32LE, space, dcpl=dcpl).write(
            h5py.h5s.ALL, h5py.h5s.ALL, np.ones(SHAPE, "<f4"))
    elif case == "chunks_never_written":
        del group["w"]
        group.create_dataset("w", shape=(4000, 4000), dtype="<f4", chunks=(100, 100)).attrs["dtype"] = "float32"
    else:
        raise AssertionError(case)


MALFORMED = ["layout_attr_is_an_array", "no_tensors_group", "tensors_is_a_dataset",
             "tensor_is_a_group", "dtype_attr_lies", "dtype_attr_unknown", "dtype_attr_is_an_array",
             "variable_length_strings", "object_references", "null_dataspace", "big_endian",
             "compound", "dangling_soft_link", "soft_link_cycle", "unknown_filter",
             "chunks_never_written"]


@pytest.mark.parametrize("case", MALFORMED)
@pytest.mark.parametrize("api", ["load_weights", "load_state_dict"])
def test_python_api_raises_only_ckptctl_errors_on_malformed_weights(
        converted: tuple[Path, Path], case: str, api: str) -> None:
    """Stops: malformed .weights.h5 files making the Python API raise bare ValueError/AttributeError/TypeError/KeyError/OSError from h5py (or return object arrays). Found: hostile review (issue 10)."""
    import h5py

    _, weights = converted
    with h5py.File(weights, "r+") as f:
        _malformed(f, case)
    with pytest.raises(CkptError) as caught:
        getattr(ckptctl, api)(weights)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("content", ["empty", "not_hdf5", "truncated", "folder", "fifo", "missing"])
def test_python_api_on_what_is_not_an_hdf5_file(converted: tuple[Path, Path], tmp_path: Path,
                                                content: str) -> None:
    """Stops: load_weights on an empty, non-HDF5, truncated or missing file, a folder or a FIFO (blocking) raising OSError from h5py or hanging. Found: hostile review (issue 10)."""
    _, weights = converted
    target = tmp_path / "x.weights.h5"
    if content == "empty":
        target.write_bytes(b"")
    elif content == "not_hdf5":
        target.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    elif content == "truncated":
        target.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif content == "folder":
        target.mkdir()
    elif content == "fifo":
        os.mkfifo(target)
        assert call_api("load_weights", target)["raised"] == "CkptError"  # no waiting for a writer
        return
    with pytest.raises(CkptError):
        ckptctl.load_weights(target)
    if content != "folder":
        assert ckptctl.find_checkpoint_for_loading(target).path == target


def test_real_outputs_load_unchanged(converted: tuple[Path, Path]) -> None:
    """Stops: the guard refusing ckptctl's own outputs (ties, every dtype are covered by test_convert_weights). Found: hostile review (issue 10)."""
    tree, weights = converted
    arrays = ckptctl.load_weights(weights)
    np.testing.assert_array_equal(arrays["w"], np.arange(12, dtype="<f4").reshape(SHAPE))
    assert run_cli("validate", "--deep", "--strict", tree).exit_code == 0


# --- the guard itself ----------------------------------------------------------------------


def test_read_budget_bounds_what_one_file_may_inflate_to(tmp_path: Path) -> None:
    """Stops: a compressed dataset within a per-dataset ratio but, summed over many datasets, inflating far past the file's size. Found: hostile review (issue 10)."""
    import h5py

    from ckptctl.readers import h5safe

    path = tmp_path / "many.h5"
    zeros = np.zeros((1024, 1024), "<f4")  # 4 MiB each, deflated to a few KB
    with h5py.File(path, "w") as f:
        for index in range(40):
            f.create_dataset(f"d{index}", data=zeros, chunks=(1024, 1024), compression="gzip")
    with h5safe.open_h5(path) as f:
        budget = h5safe.budget_for(f)
        assert budget.limit == h5safe.INFLATE_FLOOR  # a small file
        with pytest.raises(CkptError, match="exceeds the read budget"):
            h5safe.confine(f)
        # one dataset alone is fine
        one = h5safe.read_dataset(h5safe.dataset_at(f, "d0"), h5safe.budget_for(f))
        assert one.shape == (1024, 1024)


# --- hostile review of the guard itself (issue 10): plugins, inflation, aliasing, depth ----


def _new_tensors(dest: Path, libver: Any = "earliest") -> Any:
    """A fresh ckptctl-tensors file (root attributes as ckptctl writes them), open for writing."""
    import h5py

    f = h5py.File(dest, "w", libver=libver)
    f.attrs.update({"layout": "ckptctl-tensors", "layout_version": "1.0",
                    "writer": "ckptctl 0.1.0", "source_format": "pytorch", "tensor_count": 1})
    f.create_group("tensors", track_order=True)
    return f


def _lookup3(data: bytes) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` (HDF5's metadata checksum)."""
    mask = 0xFFFFFFFF

    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & mask

    def word(at: int, buf: bytes) -> int:
        return int.from_bytes(buf[at:at + 4], "little")

    length, i = len(data), 0
    a = b = c = (0xDEADBEEF + length) & mask
    while length > 12:
        a, b, c = (a + word(i, data)) & mask, (b + word(i + 4, data)) & mask, (c + word(i + 8, data)) & mask
        a = (a - c) & mask; a ^= rot(c, 4); c = (c + b) & mask  # noqa: E702
        b = (b - a) & mask; b ^= rot(a, 6); a = (a + c) & mask  # noqa: E702
        c = (c - b) & mask; c ^= rot(b, 8); b = (b + a) & mask  # noqa: E702
        a = (a - c) & mask; a ^= rot(c, 16); c = (c + b) & mask  # noqa: E702
        b = (b - a) & mask; b ^= rot(a, 19); a = (a + c) & mask  # noqa: E702
        c = (c - b) & mask; c ^= rot(b, 4); b = (b + a) & mask  # noqa: E702
        length -= 12
        i += 12
    if length == 0:
        return c
    tail = data[i:i + length] + bytes(12 - length)
    a, b, c = (a + word(0, tail)) & mask, (b + word(4, tail)) & mask, (c + word(8, tail)) & mask
    c ^= b; c = (c - rot(b, 14)) & mask  # noqa: E702
    a ^= c; a = (a - rot(c, 11)) & mask  # noqa: E702
    b ^= a; b = (b - rot(a, 25)) & mask  # noqa: E702
    c ^= b; c = (c - rot(b, 16)) & mask  # noqa: E702
    a ^= c; a = (a - rot(c, 4)) & mask  # noqa: E702
    b ^= a; b = (b - rot(a, 14)) & mask  # noqa: E702
    c ^= b; c = (c - rot(b, 24)) & mask  # noqa: E702
    return c


def _group_filter_file(dest: Path, filter_id: int = 200) -> None:
    """A ckptctl-tensors file whose ``tensors`` group keeps its 50 links in a fractal heap
    behind a filter pipeline (deflate when written), the filter id then patched to
    ``filter_id`` (no one registered it): reading the links makes HDF5 look for a plugin."""
    import ctypes
    import struct

    import h5py

    from ckptctl.readers import h5safe

    lib = h5safe._libhdf5()
    assert lib is not None
    lib.H5Pset_deflate.argtypes = [ctypes.c_int64, ctypes.c_uint]
    f = h5py.File(dest, "w", libver=("earliest", "latest"))  # v1 object headers: no checksums
    f.attrs.update({"layout": "ckptctl-tensors", "layout_version": "1.0",
                    "writer": "ckptctl 0.1.0", "tensor_count": 50})
    gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    gcpl.set_link_creation_order(h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED)
    assert lib.H5Pset_deflate(gcpl.id, 7) >= 0
    group = h5py.Group(h5py.h5g.create(f.id, b"tensors", gcpl=gcpl))
    for index in range(50):
        group.create_dataset(f"w{index}", data=np.full(3, index, "<f4")).attrs["dtype"] = "float32"
    f.close()
    data = bytearray(dest.read_bytes())
    # pipeline message v1 holding deflate (id 1, "deflate", level 7): the group's, and the heap's copy
    pattern = b"\x01\x01" + bytes(6) + b"\x01\x00\x08\x00\x01\x00\x01\x00deflate\x00\x07\x00\x00\x00"
    assert data.count(pattern) == 2, data.count(pattern)
    data = bytearray(data.replace(pattern, pattern[:8] + struct.pack("<H", filter_id) + pattern[10:]))
    at = 0
    while (heap := data.find(b"FRHP", at)) >= 0:  # fractal heap headers carry a checksum
        filters = int.from_bytes(data[heap + 7:heap + 9], "little")
        size = 142 + (12 + filters if filters else 0)
        data[heap + size:heap + size + 4] = _lookup3(bytes(data[heap:heap + size])).to_bytes(4, "little")
        at = heap + 4
    dest.write_bytes(bytes(data))


_PLUGIN_SOURCE = r"""
#include <stdio.h>
__attribute__((constructor)) static void loaded(void) {
    FILE *f = fopen(MARKER, "a");
    if (f) { fputs("loaded\n", f); fclose(f); }
}
"""


def test_a_filter_on_a_group_never_loads_an_hdf5_plugin(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Stops: a filter id on a group's link storage (not a dataset) making HDF5 search HDF5_PLUGIN_PATH and run a shared library's constructor, during `ckptctl scan` sniffing or `load_weights` (which then aborted: double free). Found: hostile review of the HDF5 guard (issue 10)."""
    folder = tmp_path / "tree"
    folder.mkdir()
    weights = folder / "a.weights.h5"
    _group_filter_file(weights)
    marker = tmp_path / "PLUGIN-LOADED"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is not None:
        source = tmp_path / "plugin.c"
        source.write_text(_PLUGIN_SOURCE)
        built = subprocess.run([compiler, "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o",
                                str(plugins / "libplugin.so"), str(source)],
                               capture_output=True, text=True, check=False)
        assert built.returncode == 0, built.stderr
    monkeypatch.setenv("HDF5_PLUGIN_PATH", str(plugins))
    scan = run_bounded("scan", folder, memory=MEMORY, timeout=60)
    assert not scan.timed_out and scan.exit_code == 0, scan.stdout + scan.stderr
    assert "Traceback" not in scan.stdout + scan.stderr
    result = call_api("load_weights", weights, memory=MEMORY)  # a crash fails call_api
    assert result["raised"] == "CkptError", result
    assert "stores its links compressed" in result["message"] and "\n" not in result["message"]
    assert not marker.exists(), "an HDF5 plugin was loaded"
    if compiler is None:
        pytest.skip("no C compiler: the refusal is checked, not that no plugin would load")


def test_plugin_loading_is_off_once_ckptctl_opened_a_file(converted: tuple[Path, Path]) -> None:
    """Stops: HDF5 loading a plugin for any filter id in a file ckptctl reads (the process-wide switch is off from the first open). Found: hostile review of the HDF5 guard (issue 10)."""
    from ckptctl.readers import h5safe

    _, weights = converted
    with h5safe.open_h5(weights):
        assert not h5safe.plugins_loadable()


def _inflating_chunk_file(dest: Path, inflated: int) -> None:
    """One (128, 128) float32 deflate chunk (64 KiB) whose stream inflates to ``inflated``."""
    packer = zlib.compressobj(9)
    block = bytes(1 << 24)
    parts = [packer.compress(block) for _ in range(inflated // len(block))]
    blob = b"".join([*parts, packer.flush()])
    with _new_tensors(dest) as f:
        data = f["tensors"].create_dataset("w", shape=(128, 128), dtype="<f4", chunks=(128, 128),
                                           compression="gzip")
        data.id.write_direct_chunk((0, 0), blob)
        data.attrs["dtype"] = "float32"


def test_a_deflate_chunk_inflating_past_its_size_is_refused(tmp_path: Path) -> None:
    """Stops: a 64 KiB deflate chunk whose stream inflates to 1.5 GB (HDF5's deflate filter grows its buffer until the stream ends; the budget only saw the declared size). Found: hostile review of the HDF5 guard (issue 10)."""
    weights = tmp_path / "a.weights.h5"
    _inflating_chunk_file(weights, 256 << 20)
    result = call_api("load_weights", weights, memory=1 << 30)
    assert result["raised"] == "CkptError", result
    assert "inflating past its own size" in result["message"], result


def test_deflated_shuffled_checksummed_datasets_still_read(tmp_path: Path) -> None:
    """Stops: the deflate pre-check refusing what h5py writes (gzip + shuffle + fletcher32, edge chunks), and LZF/n-bit/scale-offset being read (refused as unsupported). Found: hostile review of the HDF5 guard (issue 10)."""
    import h5py

    from ckptctl.readers import h5safe

    values = np.random.default_rng(0).standard_normal((300, 70)).astype("<f4")
    path = tmp_path / "filters.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("all", data=values, chunks=(64, 32), compression="gzip", shuffle=True,
                         fletcher32=True)
        f.create_dataset("gzip", data=values, chunks=(128, 70), compression="gzip")
        f.create_dataset("lzf", data=values, chunks=(64, 32), compression="lzf")
    with h5safe.open_h5(path) as f:
        budget = h5safe.budget_for(f)
        for name in ("all", "gzip"):
            read = h5safe.read_dataset(h5safe.dataset_at(f, name), budget)
            assert np.array_equal(read, values)
        with pytest.raises(CkptError, match=r"filter 32000 \(lzf\)"):
            h5safe.confine(f)


def test_aliased_storage_is_refused(tmp_path: Path) -> None:
    """Stops: N datasets whose storage addresses are patched to one real tensor's bytes, each passing every check, so load_weights read a 4 MiB tensor N times (8 GB from a 4.85 MB file; a raw MemoryError under a cap). Found: hostile review of the HDF5 guard (issue 10)."""
    import h5py

    weights = tmp_path / "a.weights.h5"
    size = 1 << 20
    with _new_tensors(weights) as f:
        group = f["tensors"]
        real = group.create_dataset("real", data=np.ones(size // 4, "<f4"))
        offset = real.id.get_offset()
        space = h5py.h5s.create_simple((size // 4,))
        for index in range(50):
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_LATE)
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
            h5py.h5d.create(group.id, f"a{index}".encode(), h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
        f.attrs["tensor_count"] = 51
    data = weights.read_bytes()
    # contiguous layout message (version 3): undefined address, then the size
    pattern = b"\x03\x01" + b"\xff" * 8 + size.to_bytes(8, "little")
    assert data.count(pattern) == 50
    weights.write_bytes(data.replace(pattern, b"\x03\x01" + offset.to_bytes(8, "little")
                                     + size.to_bytes(8, "little")))
    result = call_api("load_weights", weights, memory=1 << 30)
    assert result["raised"] == "CkptError", result
    assert "share stored bytes" in result["message"], result


def test_memory_errors_leave_the_api_as_ckpt_errors(converted: tuple[Path, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Stops: a MemoryError (under an address-space cap) escaping load_weights/load_state_dict raw. Found: hostile review of the HDF5 guard (issue 10)."""
    from ckptctl.layouts import ckptctl_tensors

    _, weights = converted

    def exhausted(*_: Any, **__: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(ckptctl_tensors, "_read_tensors", exhausted)
    for api in (ckptctl.load_weights, ckptctl.load_state_dict):
        with pytest.raises(CkptError, match="memory available"):
            api(weights)


def test_deep_nesting_is_refused_before_hdf5_recurses(tmp_path: Path) -> None:
    """Stops: a chain of 20,000 nested groups crashing ckptctl with SIGSEGV (HDF5's recursive H5Lvisit/H5Ovisit) in load_weights, convert and validate --deep. Found: hostile review of the HDF5 guard (issue 10)."""
    import h5py

    from ckptctl.readers import h5safe

    weights = tmp_path / "a.weights.h5"
    with _new_tensors(weights, libver="latest") as f:
        f["tensors"].create_dataset("w", data=np.ones(SHAPE, "<f4")).attrs["dtype"] = "float32"
        group = h5py.h5g.create(f.id, b"d")
        for _ in range(20000):
            group = h5py.h5g.create(group, b"a")
    result = call_api("load_weights", weights, memory=MEMORY)  # a crash fails call_api
    assert result["raised"] == "CkptError", result
    assert f"nests more than {h5safe.MAX_DEPTH} levels deep" in result["message"], result
    assert len(result["message"]) < 400


def test_names_in_refusals_are_one_printable_line(tmp_path: Path) -> None:
    """Stops: a dataset name holding a newline, ESC and CR forging extra output lines (and terminal escapes) in a refusal. Found: hostile review of the HDF5 guard (issue 10)."""
    from ckptctl.readers import h5safe

    evil = "x\nconverted      forged.h5\x1b[2K\rfound 9, converted 9\u202e"
    shown = h5safe._shown(evil)
    assert shown.isprintable() and "\\n" in shown and "\\x1b" in shown and "\\r" in shown
    weights = tmp_path / "a.weights.h5"
    with _new_tensors(weights) as f:
        f["tensors"].create_dataset("w", data=np.ones(3, "<f4")).attrs["dtype"] = "float32"
        f.create_dataset(evil, shape=(4,), dtype="<f4", external=[("nonexistent.bin", 0, 16)])
    result = call_api("load_weights", weights)
    assert result["raised"] == "CkptError", result
    assert result["message"].isprintable() and "uses external storage" in result["message"], result
