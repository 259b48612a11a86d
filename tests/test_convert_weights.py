"""Weights written by ``convert`` equal the originals bit for bit (torch.load is the reference)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import converted_copy, outputs_for

import ckptctl
from ckptctl.layouts.ckptctl_tensors import LAYOUT, LAYOUT_VERSION

STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


def reference_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            value = obj.get(key)
            if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
                return value
    assert all(isinstance(v, torch.Tensor) for v in obj.values())
    return obj


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes in logical order (NaN payloads and -0.0 included)."""
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.dtype != torch.bool else flat.to(torch.uint8)


@pytest.fixture(scope="module")
def converted_tree(tmp_path_factory: pytest.TempPathFactory, example_tree: tuple[Path, dict]) -> tuple[Path, dict]:
    return converted_copy(tmp_path_factory, example_tree, "converted")

def all_checkpoints(manifest: dict) -> list[str]:
    return sorted(manifest["checkpoints"])


def test_every_checkpoint_round_trips_bit_exact(converted_tree: tuple[Path, dict]) -> None:
    from conftest import reference_load

    root, manifest = converted_tree
    assert len(manifest["checkpoints"]) >= 15
    for rel in all_checkpoints(manifest):
        source = root / rel
        expected = reference_state_dict(reference_load(source))
        restored = ckptctl.load_state_dict(outputs_for(source)[0])
        assert list(restored) == list(expected), rel  # names and order
        for name, tensor in expected.items():
            got = restored[name]
            assert got.dtype == tensor.dtype, (rel, name)
            assert tuple(got.shape) == tuple(tensor.shape), (rel, name)
            assert torch.equal(bits(got), bits(tensor)), (rel, name)


def test_dtype_zoo_covers_the_hard_cases(converted_tree: tuple[Path, dict]) -> None:
    root, manifest = converted_tree
    zoo = manifest["checkpoints"]["dtype_zoo/zoo.pt"]["tensors"]
    dtypes = {t["dtype"] for t in zoo.values()}
    assert {"bfloat16", "float16", "int8", "bool", "float8_e4m3fn", "uint16", "complex64"} <= dtypes
    assert any(not t["contiguous"] for t in zoo.values())
    assert any(t["storage_offset"] > 0 for t in zoo.values())
    assert any(t["shape"] == [] for t in zoo.values())
    assert any(0 in t["shape"] for t in zoo.values())
    restored = ckptctl.load_state_dict(outputs_for(root / "dtype_zoo/zoo.pt")[0])
    for name, info in zoo.items():
        import hashlib

        digest = hashlib.sha256(bits(restored[name]).numpy().tobytes()).hexdigest()
        assert digest == info["sha256"], name


def test_tied_weights_are_stored_once_and_restored_shared(converted_tree: tuple[Path, dict]) -> None:
    import h5py

    root, manifest = converted_tree
    weights = outputs_for(root / "dtype_zoo/zoo.pt")[0]
    (a, b), = manifest["checkpoints"]["dtype_zoo/zoo.pt"]["tied_groups"]
    with h5py.File(weights, "r") as f:
        assert f["tensors"][a].id == f["tensors"][b].id  # one dataset, two hard links
    restored = ckptctl.load_state_dict(weights)
    assert restored[a] is restored[b]
    arrays = ckptctl.load_weights(weights)
    assert arrays[a] is arrays[b]


def test_weights_file_root_names_layout_and_version(converted_tree: tuple[Path, dict]) -> None:
    import h5py

    root, _ = converted_tree
    with h5py.File(outputs_for(root / "legacy_format/model_legacy.pt")[0], "r") as f:
        assert f.attrs["layout"] == LAYOUT
        assert f.attrs["layout_version"] == LAYOUT_VERSION
        assert f.attrs["source_format"] == "torch-legacy"
        assert int(f.attrs["tensor_count"]) == len(f["tensors"])


def test_lightning_weights_load_strict_into_the_real_model(converted_tree: tuple[Path, dict]) -> None:
    from conftest import _builder, reference_load

    builder = _builder()

    root, manifest = converted_tree
    for rel, info in manifest["checkpoints"].items():
        if info["kind"] != "lightning":
            continue
        source = root / rel
        module_class = builder.TinyMLP if info["run"] == "mlp_minloss" else builder.TinyTextDetector
        model = module_class(**reference_load(source)["hyper_parameters"])
        model.load_state_dict(ckptctl.load_state_dict(outputs_for(source)[0]), strict=True)
        reference = reference_load(source)["state_dict"]
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, reference[name]), (rel, name)


def test_load_weights_gives_numpy_without_importing_torch(converted_tree: tuple[Path, dict]) -> None:
    root, _ = converted_tree
    weights = outputs_for(root / "dtype_zoo/zoo.pt")[0]
    code = (
        "import sys, ckptctl\n"
        f"arrays = ckptctl.load_weights({str(weights)!r})\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(arrays['bfloat16'].dtype, len(arrays))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "bfloat16"
    arrays = ckptctl.load_weights(weights)
    assert all(isinstance(v, np.ndarray) for v in arrays.values())


def test_optimizer_and_rng_states_are_not_copied_but_recorded(converted_tree: tuple[Path, dict]) -> None:
    from helpers import sidecar_of

    root, _ = converted_tree
    source = root / "cape_run1/checkpoint_e001_lr1e-4_bs2_acc4_qpe2.pth"
    arrays = ckptctl.load_weights(outputs_for(source)[0])
    assert not any(name.startswith(("optimizer", "lr_scheduler")) for name in arrays)
    contents = sidecar_of(source)["contents"]
    assert contents["optimizer_state"] is True
    assert contents["lr_scheduler_state"] is True
    assert contents["rng_state"] is True
    assert contents["resumable"] is True
    plain = sidecar_of(root / "legacy_format/plain_state_dict.pth")["contents"]
    assert plain["optimizer_state"] is False and plain["resumable"] is False
