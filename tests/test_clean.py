"""``ckptctl clean`` removes only what ckptctl wrote, never a source (issue 12, item 6: a glob
once deleted a Keras 3 source ``.weights.h5``); and ``find_checkpoint_for_loading`` names a
Keras 3 file's kind by content (item 7)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from helpers import outputs_for, run_cli

import ckptctl
from ckptctl.atomic import temp_path_for
from ckptctl.outputs import OutputLayout

KERAS3 = """
import sys
import keras
folder = sys.argv[1]
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
model.save_weights(folder + "/k3.weights.h5")
model.save(folder + "/model.keras")
"""


@pytest.fixture(scope="module")
def keras3_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Keras 3 source ``k3.weights.h5`` and ``model.keras``, written by Keras 3 itself."""
    folder = tmp_path_factory.mktemp("keras3")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, "-c", KERAS3, str(folder)], check=True, env=env, timeout=300,
                   capture_output=True)
    return folder


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path, keras3_files: Path) -> dict[str, Path]:
    exp = root / "exp"
    exp.mkdir(parents=True)
    files = {"a": exp / "a.ckpt", "b": exp / "b.pt", "k3": exp / "k3.weights.h5",
             "notes": exp / "notes.yaml", "foreign": exp / "foreign.metadata.yaml"}
    torch.save({"state_dict": {"w": torch.ones(4)}, "epoch": 1}, files["a"])
    torch.save({"model": {"w": torch.zeros(3)}}, files["b"])
    files["k3"].write_bytes((keras3_files / "k3.weights.h5").read_bytes())
    files["notes"].write_text("lr: 0.1\n")
    files["foreign"].write_text("author: someone else\n")  # named like a sidecar, not one
    return files


def test_clean_lists_then_removes_only_ckptctl_files_and_keeps_a_keras3_source(
        tmp_path: Path, keras3_files: Path) -> None:
    root = tmp_path / "runs"
    files = _tree(root, keras3_files)
    converted = run_cli("convert", root)
    assert converted.exit_code == 0, converted.stderr
    exp = root / "exp"
    # the Keras 3 source got a sidecar naming the source itself as its weights
    assert (exp / "k3.metadata.yaml").is_file()
    # what a killed run leaves: a stale temporary and a lock file
    temporary = temp_path_for(outputs_for(files["a"])[0])
    temporary.write_bytes(b"partial")
    lock = OutputLayout().outputs(files["b"]).lock
    lock.write_bytes(b"")
    sources = {name: _digest(path) for name, path in files.items()}

    ours = [exp / "a.weights.h5", exp / "a.metadata.yaml", temporary, exp / "b.weights.h5",
            exp / "b.metadata.yaml", lock, exp / "k3.metadata.yaml"]
    dry = run_cli("clean", root)
    kept = f"kept           {exp / 'foreign.metadata.yaml'} (not a ckptctl sidecar ("
    assert dry.exit_code == 0
    lines = dry.stdout.splitlines()
    assert lines[6].startswith(kept)  # groups in name order: a, b, foreign, k3
    assert lines[:6] + lines[7:] == [f"would remove   {p}" for p in ours]
    assert dry.stderr.startswith("would remove 7 files (")
    assert dry.stderr.endswith("); run again with --yes to remove them\n")
    assert all(p.exists() for p in ours)

    done = run_cli("clean", "--yes", root)
    assert done.exit_code == 0
    lines = done.stdout.splitlines()
    assert lines[6].startswith(kept)
    assert lines[:6] + lines[7:] == [f"removed        {p}" for p in ours]
    assert done.stderr.startswith("removed 7 files (")
    assert {p for p in root.rglob("*")} == {exp, *files.values()}
    assert {name: _digest(path) for name, path in files.items()} == sources
    again = run_cli("clean", "--yes", root)
    assert [line[:15] for line in again.stdout.splitlines()] == ["kept           "]
    assert again.stderr == "removed 0 files (0 B)\n"


def test_weights_a_sidecar_names_are_kept_unless_ckptctl_wrote_them(
        tmp_path: Path, keras3_files: Path) -> None:
    """A sidecar edited (or a weights file replaced) to name a Keras 3 source: the sidecar
    goes, the source stays."""
    root = tmp_path / "runs"
    files = _tree(root, keras3_files)
    assert run_cli("convert", files["a"]).exit_code == 0
    weights, sidecar = outputs_for(files["a"])
    weights.write_bytes(files["k3"].read_bytes())  # a source where ckptctl's output was
    result = run_cli("clean", "--yes", root / "exp")
    assert result.stdout.splitlines()[:2] == [
        f"kept           {weights} (not recognisably ckptctl's (a source, or damaged): left in place)",
        f"removed        {sidecar}"]
    assert weights.is_file() and _digest(weights) == _digest(files["k3"])


def test_a_busy_checkpoint_is_left_alone(tmp_path: Path, keras3_files: Path) -> None:
    root = tmp_path / "runs"
    files = _tree(root, keras3_files)
    assert run_cli("convert", files["b"]).exit_code == 0
    weights, sidecar = outputs_for(files["b"])
    with FileLock(str(OutputLayout().outputs(files["b"]).lock)):  # another converter's lock
        result = run_cli("clean", "--yes", root)
    assert result.stdout.splitlines()[:2] == [
        f"kept           {weights} (busy: a ckptctl process is converting it)",
        f"kept           {sidecar} (busy: a ckptctl process is converting it)"]
    assert weights.is_file() and sidecar.is_file()


def test_symlinks_are_neither_followed_nor_removed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    torch.save({"model": {"w": torch.ones(2)}}, elsewhere / "x.pt")
    assert run_cli("convert", elsewhere).exit_code == 0
    root = tmp_path / "runs"
    root.mkdir()
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "x.metadata.yaml").symlink_to(elsewhere / "x.metadata.yaml")
    result = run_cli("clean", "--yes", root)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "removed 0 files (0 B)\n")
    assert outputs_for(elsewhere / "x.pt")[1].is_file()


def test_find_checkpoint_for_loading_recognises_files_by_content(tmp_path: Path,
                                                                 keras3_files: Path) -> None:
    keras_file = keras3_files / "model.keras"
    assert ckptctl.find_checkpoint_for_loading(keras_file) == (keras_file, "keras3")
    k3 = keras3_files / "k3.weights.h5"
    assert ckptctl.find_checkpoint_for_loading(k3) == (k3, "keras3")
    torch_file = tmp_path / "model.bin"
    torch.save({"w": torch.ones(2)}, torch_file)
    assert ckptctl.find_checkpoint_for_loading(torch_file) == (torch_file, "torch")
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_bytes(b"not a checkpoint at all")
    assert ckptctl.find_checkpoint_for_loading(not_a_checkpoint) == (not_a_checkpoint, None)
