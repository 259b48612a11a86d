"""Sanity checks of the fixture trees themselves (not of ckptctl).

If these fail, the ground truth the rest of the suite relies on is wrong, so fix the builder
(examples/build_example_tree.py) before looking at product tests.
"""

from __future__ import annotations

import csv
import io
import os
import pickletools
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

Built = tuple[Path, dict[str, Any]]
Loader = Callable[[str | os.PathLike[str]], Any]


def _pickle_globals(path: Path) -> set[str]:
    """GLOBAL/STACK_GLOBAL targets of a torch file's main pickle, by opcode walk only."""
    raw = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            (name,) = [n for n in zf.namelist() if n.endswith("/data.pkl")]
            stream = io.BytesIO(zf.read(name))
    else:
        stream = io.BytesIO(raw)
        for _ in range(3):  # legacy: magic number, protocol version, sys_info come first
            list(pickletools.genops(stream))
    found: set[str] = set()
    strings: list[str] = []
    for op, arg, _pos in pickletools.genops(stream):
        if op.name == "GLOBAL":
            found.add(str(arg))
        elif op.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]} {strings[-1]}")
        elif isinstance(arg, str):
            strings.append(arg)
    return found


def test_tree_files_exist(example_tree: Built) -> None:
    root, manifest = example_tree
    for rel in [*manifest["checkpoints"], *manifest["non_checkpoint_files"]]:
        assert (root / rel).is_file(), rel
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert on_disk == set(manifest["checkpoints"]) | set(manifest["non_checkpoint_files"])
    assert set(manifest["ignored"]) <= set(manifest["non_checkpoint_files"])
    assert zipfile.is_zipfile(root / "misc/dataset.zip")  # a zip that is not a checkpoint


@pytest.mark.parametrize(("run", "k"), [("ocr_dbnet_hydra", 2), ("mlp_minloss", 3)])
def test_lightning_best_k_models(example_tree: Built, reference_loader: Loader, run: str,
                                 k: int) -> None:
    root, manifest = example_tree
    info = manifest["runs"][run]
    assert len(info["best_k_models"]) == k
    # The newest checkpoint carries the final callback state.
    newest = max(info["checkpoints"], key=lambda rel: manifest["checkpoints"][rel]["global_step"])
    ck = reference_loader(root / newest)
    (key,) = [s for s in ck["callbacks"] if s.startswith("ModelCheckpoint")]
    assert key == manifest["checkpoints"][newest]["callback_state_key"]
    stored = ck["callbacks"][key]["best_k_models"]
    assert len(stored) == k
    assert {Path(p).name for p in stored} == {Path(p).name for p in info["best_k_models"]}
    for rel in info["best_k_models"]:
        entry = manifest["checkpoints"][rel]
        assert entry["in_best_k"]
        assert entry["monitor_value"] == pytest.approx(entry["logged_metrics"][info["monitor"]])


def test_ocr_run_top_k_and_last(example_tree: Built) -> None:
    root, manifest = example_tree
    ckpts = manifest["checkpoints"]
    info = manifest["runs"]["ocr_dbnet_hydra"]
    epochs = sorted(ckpts[rel]["epoch"] for rel in info["best_k_models"])
    assert epochs != [2, 3], "top-2 should not simply be the last two epochs"
    last = ckpts["ocr_dbnet_hydra/checkpoints/last.ckpt"]
    assert last["is_last"] and not last["is_best"]
    assert last["epoch"] == info["max_epochs"] - 1
    assert set(last["cleval_metrics"]) == {"precision", "recall", "hmean"}
    cfg = yaml.safe_load((root / info["hydra_config"]).read_text())
    assert cfg["model"]["architecture"] == info["architecture"] == "dbnet"
    assert "architecture" not in str(last["hyper_parameters"])  # only Hydra knows it


@pytest.mark.parametrize("run", ["ocr_dbnet_hydra", "mlp_minloss"])
def test_logger_files(example_tree: Built, run: str) -> None:
    root, manifest = example_tree
    info = manifest["runs"][run]
    with (root / info["metrics_csv"]).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == info["metrics_csv_columns"]
    assert info["monitor"] in info["metrics_csv_columns"]
    assert {int(r["epoch"]) for r in rows} == set(range(info["max_epochs"]))
    assert isinstance(yaml.safe_load((root / info["hparams_yaml"]).read_text()), dict)


def test_legacy_file_is_not_zip(example_tree: Built) -> None:
    root, manifest = example_tree
    path = root / "legacy_format/model_legacy.pt"
    assert manifest["checkpoints"]["legacy_format/model_legacy.pt"]["serialization"] == "legacy"
    assert not zipfile.is_zipfile(path)
    assert path.read_bytes()[:2] == b"\x80\x02"  # starts with a protocol-2 pickle (magic no.)
    for rel in ("legacy_format/plain_state_dict.pth", "legacy_format/weights.bin"):
        assert zipfile.is_zipfile(root / rel)


def test_cape_conflict(example_tree: Built, reference_loader: Loader) -> None:
    root, manifest = example_tree
    (conflict,) = manifest["expected_conflicts"]
    ck = reference_loader(root / conflict["path"])
    assert ck["best_pck"] == conflict["file_value"] == 0.8125
    assert f"pck{conflict['filename_value']}" in conflict["path"]
    assert type(ck["args"]).__name__ == "Namespace"


def test_dtype_zoo(example_tree: Built, reference_loader: Loader) -> None:
    import torch

    root, manifest = example_tree
    zoo = reference_loader(root / "dtype_zoo/zoo.pt")["state_dict"]
    expected = manifest["checkpoints"]["dtype_zoo/zoo.pt"]["tensors"]
    assert list(zoo) == list(expected)
    for name, t in zoo.items():
        assert str(t.dtype).removeprefix("torch.") == expected[name]["dtype"], name
        assert list(t.shape) == expected[name]["shape"], name
    assert zoo["tied_a"].untyped_storage().data_ptr() == zoo["tied_b"].untyped_storage().data_ptr()
    assert zoo["sliced"].storage_offset() > 0 and not zoo["transposed"].is_contiguous()
    assert isinstance(zoo["parameter"], torch.nn.Parameter)
    assert {"float8_e4m3fn", "uint16", "bfloat16", "complex64", "bool"} <= {
        e["dtype"] for e in expected.values()}


def test_bad_inputs(bad_inputs: Built) -> None:
    root, manifest = bad_inputs
    files = manifest["files"]
    assert _pickle_globals(root / "malicious.ckpt") >= {"posix system"}
    assert _pickle_globals(root / "legacy_malicious.pt") >= {"posix system"}
    assert not zipfile.is_zipfile(root / "legacy_malicious.pt")
    # Protocol 2 stores builtins under their Python 2 name.
    assert _pickle_globals(root / "malicious_eval.pt") >= {"__builtin__ eval"}
    assert not zipfile.is_zipfile(root / "truncated.ckpt")
    assert (root / "truncated.ckpt").stat().st_size == files["truncated.ckpt"]["truncated_bytes"]
    assert (root / "empty.pt").stat().st_size == 0
    assert (root / "random.pth").stat().st_size == 4096
    assert zipfile.is_zipfile(root / "good.pt")
    for marker in manifest["marker_paths"]:
        assert not Path(marker).exists(), marker  # building must not have run a payload


def test_fresh_copies(fresh_tree: Built, example_tree: Built, fresh_bad_inputs: Built) -> None:
    root, manifest = fresh_tree
    src, _ = example_tree
    assert root != src
    for rel in manifest["checkpoints"]:
        assert (root / rel).stat().st_mtime_ns == (src / rel).stat().st_mtime_ns
    bad_root, bad_manifest = fresh_bad_inputs
    assert sorted(p.name for p in bad_root.iterdir()) == sorted(bad_manifest["files"])
    assert all(Path(m).is_absolute() for m in bad_manifest["marker_paths"])
