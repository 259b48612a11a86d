"""Hostile review of the code paths that delete or overwrite files: format switches
(``_previous_weights``), ``_refuse_foreign_file``, safetensors outputs and sources,
the metadata refresh, ``CheckpointLock`` and ``clean --yes``.

Every test builds its files with the real libraries, runs the real CLI and checks the safe
behaviour; the core check is the sha256 of every source before and after."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_cli, run_process
from safetensors import safe_open
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.xdist_group("output_hostile")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hashes(paths: list[Path]) -> dict[str, str | None]:
    return {str(p): (_sha(p) if p.is_file() else None) for p in paths}


def _state(seed: int = 0, n: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {"a.weight": torch.randn(n, n), "a.bias": torch.randn(n)}


def _edit_sidecar(sidecar: Path, **changes: object) -> None:
    doc = yaml.safe_load(sidecar.read_text())
    doc.update(changes)
    sidecar.write_text(yaml.safe_dump(doc, sort_keys=False))


def _one_line_error(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "internal error" not in stderr, stderr


def _ckptctl_marked(path: Path) -> bool:
    try:
        with safe_open(path, "pt") as handle:
            return "ckptctl.layout" in (handle.metadata() or {})
    except Exception:
        return False


def _check_sidecars_vouch_for_complete_weights(folder: Path) -> None:
    """Every sidecar's weights exist with the recorded size and sha256."""
    for sidecar in folder.glob("*.metadata.yaml"):
        doc = yaml.safe_load(sidecar.read_text())
        if doc.get("weights_path") is None:
            continue
        weights = folder / doc["weights_path"]
        assert weights.is_file(), f"{sidecar.name} names missing {weights.name}"
        assert weights.stat().st_size == doc["weights"]["size_bytes"], sidecar.name
        assert _sha(weights) == doc["weights"]["sha256"], sidecar.name


# --- a safetensors source and a torch source of the same stem ----------------------------


def test_sidecar_of_a_native_safetensors_source_never_lets_a_torch_twin_overwrite_it(
        tmp_path: Path) -> None:
    """Stops: overwriting a safetensors SOURCE ``x.safetensors`` with the conversion of its
    torch twin ``x.pt``. A legit earlier ``convert x.safetensors --weights-format
    safetensors`` wrote ``x.metadata.yaml`` naming the source itself as its weights; a later
    ``convert x.pt --weights-format safetensors`` would write ``x.safetensors`` and
    ``_refuse_foreign_file`` accepts it because the sidecar "wrote" it."""
    st = tmp_path / "x.safetensors"
    pt = tmp_path / "x.pt"
    save_file({"other": torch.arange(5.0)}, st)
    torch.save(_state(), pt)
    before = _hashes([st, pt])
    assert run_cli("convert", "--weights-format", "safetensors", st).exit_code == 0
    result = run_cli("convert", "--weights-format", "safetensors", pt)
    _one_line_error(result.stderr)
    assert _hashes([st, pt]) == before, "a source was overwritten"
    assert result.exit_code == 1  # a clash / foreign-file refusal, not a success


def test_sidecar_of_a_native_safetensors_source_never_lets_force_overwrite_it(
        tmp_path: Path) -> None:
    """Stops: the same overwrite of a safetensors source through ``convert --force``."""
    st = tmp_path / "x.safetensors"
    pt = tmp_path / "x.pt"
    save_file({"other": torch.arange(5.0)}, st)
    torch.save(_state(), pt)
    before = _hashes([st, pt])
    assert run_cli("convert", "--weights-format", "safetensors", st).exit_code == 0
    result = run_cli("convert", "--force", "--weights-format", "safetensors", pt)
    _one_line_error(result.stderr)
    assert _hashes([st, pt]) == before, "a source was overwritten"


def test_hand_edited_sidecar_naming_a_foreign_safetensors_never_gets_it_overwritten(
        tmp_path: Path) -> None:
    """Stops: a valid, unmarked safetensors file (someone's model, dropped in where our
    output was) being overwritten because the old sidecar names it: for HDF5 only an
    *unreadable* file is replaced on the sidecar's word; a readable safetensors file without
    ckptctl's mark is not ours and must be refused."""
    pt = tmp_path / "m.pt"
    torch.save(_state(), pt)
    assert run_cli("convert", "--weights-format", "safetensors", pt).exit_code == 0
    theirs = tmp_path / "m.safetensors"
    theirs.unlink()
    save_file({"their.model": torch.arange(100.0)}, theirs)  # a real model, no ckptctl marks
    before = _hashes([theirs, pt])
    result = run_cli("convert", "--weights-format", "safetensors", pt)
    _one_line_error(result.stderr)
    assert _hashes([theirs, pt]) == before, "a foreign safetensors file was overwritten"


def test_two_sources_with_one_stem_clash_and_nothing_is_written(tmp_path: Path) -> None:
    """Stops: ``model.pt`` and ``model.safetensors`` in one folder with ``--weights-format
    safetensors`` (the torch output *is* ``model.safetensors``) overwriting or describing
    one another."""
    pt = tmp_path / "model.pt"
    st = tmp_path / "model.safetensors"
    torch.save(_state(), pt)
    save_file({"w": torch.arange(4.0)}, st)
    before = _hashes([pt, st])
    for args in (["--weights-format", "safetensors"], ["--weights-format", "safetensors",
                                                       "--force"], []):
        result = run_cli("convert", *args, tmp_path)
        _one_line_error(result.stderr)
        assert result.exit_code == 1
        assert "clash" in result.stderr
        assert _hashes([pt, st]) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.safetensors"]


def test_native_safetensors_source_survives_format_switches_and_clean(tmp_path: Path) -> None:
    """Stops: a safetensors source, described natively and then converted to ``.weights.h5``
    and back, being removed as "the other format's file" or by ``clean --yes``."""
    st = tmp_path / "m.safetensors"
    save_file({"w": torch.arange(6.0)}, st)
    before = _hashes([st])
    for fmt in ("safetensors", "h5", "safetensors", "h5"):
        result = run_cli("convert", "--weights-format", fmt, tmp_path)
        assert result.exit_code == 0, result.stderr
        assert _hashes([st]) == before
        _check_sidecars_vouch_for_complete_weights(tmp_path)
    assert run_cli("clean", "--yes", tmp_path).exit_code == 0
    assert _hashes([st]) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# --- hostile sidecars and format switches -------------------------------------------------


def test_format_switch_never_deletes_weights_another_sidecar_names(tmp_path: Path) -> None:
    """Stops: a hand-edited ``a.metadata.yaml`` naming ``b.safetensors`` (b's output, which
    b's sidecar vouches for) making ``convert a.pt`` (switch to h5) delete it: b's sidecar
    would then vouch for missing weights."""
    for name in ("a", "b"):
        torch.save(_state(1), tmp_path / f"{name}.pt")
    assert run_cli("convert", "--weights-format", "safetensors", tmp_path).exit_code == 0
    b_weights = tmp_path / "b.safetensors"
    assert (tmp_path / "a.safetensors").stat().st_size == b_weights.stat().st_size
    _edit_sidecar(tmp_path / "a.metadata.yaml", weights_path="b.safetensors")
    before = _hashes([b_weights])
    result = run_cli("convert", tmp_path / "a.pt")
    _one_line_error(result.stderr)
    assert _hashes([b_weights]) == before, "b's weights were deleted"
    _check_sidecars_vouch_for_complete_weights(tmp_path)


def test_format_switch_never_deletes_a_marked_safetensors_used_as_a_model(
        tmp_path: Path) -> None:
    """Stops: a safetensors file carrying ckptctl's marks (copied from an output, now the
    user's model ``best_model.safetensors``, named by no sidecar of its own) being deleted
    because a hand-edited sidecar of another checkpoint names it."""
    torch.save(_state(2), tmp_path / "a.pt")
    assert run_cli("convert", "--weights-format", "safetensors", tmp_path).exit_code == 0
    model = tmp_path / "best_model.safetensors"
    shutil.copyfile(tmp_path / "a.safetensors", model)
    assert _ckptctl_marked(model)
    _edit_sidecar(tmp_path / "a.metadata.yaml", weights_path="best_model.safetensors")
    before = _hashes([model, tmp_path / "a.pt"])
    result = run_cli("convert", tmp_path / "a.pt")  # switch to h5
    _one_line_error(result.stderr)
    assert _hashes([model, tmp_path / "a.pt"]) == before, "the user's model was deleted"


@pytest.mark.parametrize("named", ["../outside.safetensors", "sub/../../outside.safetensors",
                                   "link.safetensors", "a.metadata.yaml", "a.pt",
                                   "b.pt", "./b.safetensors.orig"])
def test_hostile_weights_path_never_deletes_anything_on_switch_force_or_clean(
        tmp_path: Path, named: str) -> None:
    """Stops: a sidecar whose ``weights_path`` names a file outside the folder, a symlink,
    the sidecar itself, the source, another checkpoint's source or a marked copy making
    ``convert`` (format switches, ``--force``) or ``clean --yes`` delete or overwrite it."""
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(_state(3), folder / "a.pt")
    torch.save(_state(4), folder / "b.pt")
    assert run_cli("convert", "--weights-format", "safetensors", folder).exit_code == 0
    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(folder / "b.safetensors", outside)  # marked, outside the tree
    shutil.copyfile(folder / "b.safetensors", folder / "b.safetensors.orig")
    (folder / "link.safetensors").symlink_to(folder / "b.safetensors.orig")
    guarded = [outside, folder / "a.pt", folder / "b.pt", folder / "b.safetensors.orig"]
    before = _hashes(guarded)
    for args in (["convert", folder / "a.pt"], ["convert", "--force", "--weights-format",
                                                 "safetensors", folder / "a.pt"],
                 ["convert", "--force", folder / "a.pt"], ["clean", "--yes", folder]):
        if (folder / "a.metadata.yaml").exists():
            _edit_sidecar(folder / "a.metadata.yaml", weights_path=named)
        result = run_cli(*args)
        _one_line_error(result.stderr)
        assert _hashes(guarded) == before, (args, named)
        assert (folder / "link.safetensors").is_symlink()


def test_clean_never_deletes_a_marked_safetensors_named_by_a_hostile_sidecar(
        tmp_path: Path) -> None:
    """Stops: ``clean --yes`` removing the user's model (a marked copy of an output) because
    a sidecar someone wrote names it."""
    torch.save(_state(5), tmp_path / "a.pt")
    assert run_cli("convert", "--weights-format", "safetensors", tmp_path).exit_code == 0
    model = tmp_path / "shipped.safetensors"
    shutil.copyfile(tmp_path / "a.safetensors", model)
    _edit_sidecar(tmp_path / "a.metadata.yaml", weights_path="shipped.safetensors")
    before = _hashes([model])
    result = run_cli("clean", "--yes", tmp_path)
    _one_line_error(result.stderr)
    assert _hashes([model]) == before


def test_metadata_refresh_with_hostile_sidecar_never_rewrites_a_source(tmp_path: Path) -> None:
    """Stops: the metadata-only refresh (a newer ``metrics.csv``) accepting a sidecar whose
    ``weights_path`` names the source, or whose sha256 was forged to match a source, and
    overwriting or deleting that file."""
    exp = tmp_path / "exp"
    (exp / "checkpoints").mkdir(parents=True)
    pt = exp / "checkpoints" / "a.pt"
    torch.save(_state(6), pt)
    assert run_cli("convert", exp).exit_code == 0
    sidecar = exp / "checkpoints" / "a.metadata.yaml"
    doc = yaml.safe_load(sidecar.read_text())
    doc["weights_path"] = "a.pt"
    doc["weights"]["size_bytes"] = pt.stat().st_size
    doc["weights"]["sha256"] = _sha(pt)
    sidecar.write_text(yaml.safe_dump(doc, sort_keys=False))
    time.sleep(0.05)
    (exp / "metrics.csv").write_text("epoch,loss\n0,1.0\n")
    before = _hashes([pt])
    for fmt in ("h5", "safetensors", "h5"):
        result = run_cli("convert", "--weights-format", fmt, exp)
        _one_line_error(result.stderr)
        assert _hashes([pt]) == before
    _check_sidecars_vouch_for_complete_weights(exp / "checkpoints")


# --- safetensors writer: names that collide with the header -------------------------------


@pytest.mark.parametrize("names", [("format", "tied"), ("tied", "format"),
                                   ("ckptctl.layout", "tied"), ("tied", "ckptctl.layout"),
                                   ("__metadata__", "tied"), ("w", "__metadata__")])
def test_tensor_names_like_metadata_keys_are_exact_or_refused_in_one_line(
        tmp_path: Path, names: tuple[str, str]) -> None:
    """Stops: tensors named like ``__metadata__`` keys (``format``, ``ckptctl.layout``) or
    ``__metadata__`` itself, with ties, producing a file whose metadata lies (a tie lost,
    ckptctl's mark overwritten), a traceback, or a partial output."""
    first, second = names
    shared = torch.randn(3, 2)
    state = {first: shared, second: shared, "other": torch.ones(2)}
    pt = tmp_path / "m.pt"
    torch.save(state, pt)
    before = _hashes([pt])
    result = run_cli("convert", "--weights-format", "safetensors", pt)
    _one_line_error(result.stderr)
    assert _hashes([pt]) == before
    out = tmp_path / "m.safetensors"
    if result.exit_code != 0:
        assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 3
        assert not out.exists() and not (tmp_path / "m.metadata.yaml").exists()
        return
    assert _ckptctl_marked(out)
    import ckptctl

    restored = ckptctl.load_state_dict(out)
    assert set(restored) == set(state)
    for key, value in state.items():
        assert torch.equal(restored[key], value), key
    stored = load_file(out)
    assert all(torch.equal(t, state[k]) for k, t in stored.items())
    assert run_cli("validate", "--strict", "--deep", tmp_path).exit_code == 0


# --- locks --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symlink", "directory", "dangling"])
def test_lock_file_replaced_by_symlink_or_directory_harms_nothing(tmp_path: Path,
                                                                   kind: str) -> None:
    """Stops: a ``.<stem>.ckptctl-lock`` replaced by a symlink to a victim file (or a
    directory) making ``convert`` or ``clean --yes`` truncate, write or delete the victim,
    or crash with a traceback."""
    victim = tmp_path / "victim.pt"
    torch.save(_state(7), victim)
    folder = tmp_path / "run"
    folder.mkdir()
    pt = folder / "a.pt"
    torch.save(_state(8), pt)
    lock = folder / ".a.ckptctl-lock"
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "dangling":
        lock.symlink_to(tmp_path / "created-through-the-link")
    else:
        lock.mkdir()
    before = _hashes([victim, pt])
    for args in (["convert", pt], ["convert", "--weights-format", "safetensors", folder],
                 ["clean", "--yes", folder]):
        result = run_cli(*args)
        _one_line_error(result.stderr)
        assert _hashes([victim, pt]) == before, args
        assert not (tmp_path / "created-through-the-link").exists()
        assert lock.is_symlink() or lock.is_dir()
        if args[0] == "convert":
            assert result.exit_code == 1
            assert "a.pt" in result.stderr


# --- kill -9 while switching formats ------------------------------------------------------


def test_sigkill_while_switching_formats_keeps_every_invariant(tmp_path: Path) -> None:
    """Stops: a kill at a random moment while ``--weights-format`` switches leaving a
    sidecar vouching for weights that are not complete, a changed source, or (after the
    next run completes) the other format's weights file named by no sidecar."""
    folder = tmp_path / "run"
    folder.mkdir()
    torch.manual_seed(9)
    sources = []
    for name in ("a", "b"):
        path = folder / f"{name}.pt"
        torch.save({"big": torch.randn(4096, 2048), "tied": torch.randn(8)}, path)
        sources.append(path)
    before = _hashes(sources)
    started = time.monotonic()
    assert run_process("convert", "--jobs", "1", folder).returncode == 0
    full = time.monotonic() - started
    rng = random.Random(1234)
    fmt = "h5"
    for _ in range(24):
        fmt = "safetensors" if fmt == "h5" else "h5"
        proc = subprocess.Popen([sys.executable, "-m", "ckptctl", "convert", "--jobs", "1",
                                 "--weights-format", fmt, folder],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2 * full, 1.3 * full))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _hashes(sources) == before
        _check_sidecars_vouch_for_complete_weights(folder)
    for fmt in ("safetensors", "h5"):
        result = run_process("convert", "--jobs", "1", "--weights-format", fmt, folder)
        assert result.returncode == 0, result.stderr
        _check_sidecars_vouch_for_complete_weights(folder)
        other = ".weights.h5" if fmt == "safetensors" else ".safetensors"
        assert not [p.name for p in folder.iterdir() if p.name.endswith(other)], fmt
        assert not [p.name for p in folder.iterdir() if "ckptctl-tmp" in p.name]
    assert _hashes(sources) == before


def test_interrupted_switch_leaves_no_unnamed_weights_after_the_next_run(
        tmp_path: Path) -> None:
    """Stops: a kill between the new sidecar's rename and the old format's unlink (the one
    window the random kills rarely hit) leaving the old weights forever: neither the next
    ``convert`` nor ``clean --yes`` may keep weights ckptctl wrote that no sidecar names."""
    pt = tmp_path / "m.pt"
    torch.save(_state(10), pt)
    assert run_cli("convert", pt).exit_code == 0
    old = tmp_path / "m.weights.h5"
    kept = tmp_path.parent / f"{tmp_path.name}-m.weights.h5.keep"
    shutil.copyfile(old, kept)
    assert run_cli("convert", "--weights-format", "safetensors", pt).exit_code == 0
    shutil.copyfile(kept, old)  # the state such a kill leaves
    assert run_cli("convert", "--weights-format", "safetensors", pt).exit_code == 0
    assert run_cli("clean", "--yes", tmp_path).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


# --- convert and clean racing -------------------------------------------------------------


def test_concurrent_convert_and_clean_never_touch_sources_or_orphan_weights(
        tmp_path: Path) -> None:
    """Stops: ``clean --yes`` (which reads a sidecar before taking the lock) racing
    ``convert`` format switches: sources changed, a sidecar vouching for missing weights, or
    weights left that no sidecar names and a final ``clean`` cannot remove."""
    folder = tmp_path / "run"
    folder.mkdir()
    sources = []
    for i in range(6):
        path = folder / f"c{i}.pt"
        torch.save(_state(20 + i, 64), path)
        sources.append(path)
    native = folder / "native.safetensors"
    save_file({"w": torch.arange(10.0)}, native)
    sources.append(native)
    before = _hashes(sources)
    procs = []
    for round_ in range(4):
        for fmt in ("h5", "safetensors"):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "ckptctl", "convert", "--jobs", "1", "--weights-format",
                 fmt, folder], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        procs.append(subprocess.Popen([sys.executable, "-m", "ckptctl", "clean", "--yes",
                                       folder], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
        if round_ % 2:
            time.sleep(0.3)
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert "Traceback" not in err, err
    assert _hashes(sources) == before
    _check_sidecars_vouch_for_complete_weights(folder)
    assert run_process("clean", "--yes", folder).returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in sources)
