"""The README's Guarantees, proved by injecting the real faults: SIGKILL mid-write, several
converters at once, a full filesystem, a read-only source tree, a file vanishing.

The fault-injection tests (SIGKILL, concurrent processes, ENOSPC, read-only mount) are marked
``slow``; the in-process ones (busy lock, vanishing file, deep trees, big sidecar) stay quick."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import leftover_temporaries, outputs_exist, outputs_for, run_cli, run_process

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


def write_checkpoint(path: Path, megabytes: int, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    per = max(1, megabytes // 4)
    state = {f"layer{i}.weight": torch.randn(per * 256 * 1024 // 1024, 1024, generator=generator)
             for i in range(4)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "epoch": seed}, path)


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "exp" / "big.pt"
    write_checkpoint(path, 320)  # ~320 MB: conversion takes long enough to be killed mid-way
    return path


def converting_process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ckptctl", "convert", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_no_or_complete_outputs(big_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    shutil.copytree(big_checkpoint.parent, folder)
    source = folder / big_checkpoint.name
    started = time.monotonic()
    completed = run_process("convert", "--checkpoint", source)
    full_run = time.monotonic() - started
    assert completed.returncode == 0, completed.stderr
    killed_mid_write = 0
    # Kill points spread over a whole run (process start-up included), several on each phase.
    for fraction in (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95):
        proc = converting_process("--checkpoint", str(source), "--force")
        time.sleep(full_run * fraction)
        if leftover_temporaries(folder):
            killed_mid_write += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        # Whatever sidecars exist vouch for complete, matching files (a kill between retiring
        # the old sidecar and writing the new one leaves none: the next run converts again).
        check = run_cli("validate", "--deep", folder)
        assert check.exit_code == 0, (fraction, check.stdout, check.stderr)
    assert killed_mid_write >= 1, "no kill landed while outputs were being written"
    final = run_process("convert", "--checkpoint", source, "--force")
    assert final.returncode == 0, final.stderr
    assert leftover_temporaries(folder) == []
    assert run_cli("validate", "--deep", "--strict", folder).exit_code == 0


@pytest.mark.slow
def test_killed_first_conversion_leaves_nothing_and_next_run_finishes(big_checkpoint: Path,
                                                                     tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    shutil.copytree(big_checkpoint.parent, folder)
    source = folder / big_checkpoint.name
    weights, sidecar = outputs_for(source)
    proc = converting_process("--checkpoint", str(source))
    deadline = time.monotonic() + 60
    while not leftover_temporaries(folder) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not sidecar.exists()  # no sidecar over incomplete weights
    again = run_process("convert", "--checkpoint", source)
    assert again.returncode == 0, again.stderr
    assert leftover_temporaries(folder) == []
    assert run_cli("validate", "--deep", folder).exit_code == 0
    assert weights.exists()


@pytest.mark.slow
def test_concurrent_converters_write_each_checkpoint_once(fresh_tree: tuple[Path, dict]) -> None:
    root, manifest = fresh_tree
    procs = [converting_process("--outputs-dir", str(root), "-v") for _ in range(4)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _, err in outputs]
    converted = Counter(line.split(None, 1)[1] for out, _ in outputs for line in out.splitlines()
                        if line.startswith("converted"))
    assert set(converted.values()) == {1}, converted
    assert len(converted) == len(manifest["checkpoints"])
    check = run_cli("validate", "--deep", "--strict", root)
    assert check.exit_code == 0, check.stdout
    assert leftover_temporaries(root) == []


def test_busy_checkpoint_is_skipped_not_waited_for(tmp_path: Path) -> None:
    from filelock import FileLock

    from ckptctl.outputs import OutputLayout

    source = tmp_path / "exp" / "a.pt"
    write_checkpoint(source, 4)
    with FileLock(str(OutputLayout().outputs(source).lock)):
        result = run_cli("convert", "--checkpoint", source, "-v")
    assert result.exit_code == 0
    assert result.stdout == f"skipped        {source} (busy: another ckptctl process is converting it)\n"
    assert outputs_exist(source) == (False, False)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
@ROOT_ONLY
def test_full_disk_fails_one_checkpoint_cleanly_and_the_batch_goes_on(
        tmp_path: Path, small_filesystem: Path) -> None:
    sources = tmp_path / "src"
    write_checkpoint(sources / "a_small.pt", 4, seed=1)
    write_checkpoint(sources / "b_huge.pt", 16, seed=2)  # cannot fit in 12 MB
    write_checkpoint(sources / "c_small.pt", 4, seed=3)
    result = run_process("convert", "--exp-dir", sources, "--output-dir", small_filesystem)
    assert result.returncode == 1
    errors = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and "b_huge.pt" in errors[0]
    assert "no space left on device" in errors[0] and "Traceback" not in result.stderr
    names = sorted(p.name for p in small_filesystem.rglob("*") if p.is_file() and "lock" not in p.name)
    assert names == ["a_small.metadata.yaml", "a_small.weights.h5",
                     "c_small.metadata.yaml", "c_small.weights.h5"]
    # sidecars under --output-dir name their sources outside it: validate follows them only
    # when told the mirror (issue "Hostile inputs, round 2": sidecar paths are data)
    assert run_cli("validate", "--deep", "--output-dir", small_filesystem, sources).exit_code == 0


@pytest.mark.slow
@ROOT_ONLY
def test_read_only_source_tree_with_output_dir(tmp_path: Path, fresh_tree: tuple[Path, dict]) -> None:
    root, manifest = fresh_tree
    read_only = tmp_path / "ro"
    read_only.mkdir()
    if subprocess.run(["mount", "--bind", str(root), str(read_only)]).returncode != 0:
        pytest.skip("cannot bind-mount")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(read_only)]).returncode != 0:
            pytest.skip("cannot remount read-only")
        refused = run_process("convert", "--exp-dir", read_only / "legacy_format")
        assert refused.returncode == 1
        assert all("read-only" in x or "permission denied" in x
                   for x in refused.stderr.splitlines() if x.startswith("error: "))
        out = tmp_path / "converted"
        done = run_process("convert", "--outputs-dir", read_only, "--output-dir", out)
        assert done.returncode == 0, done.stderr
        assert run_cli("validate", "--deep", "--output-dir", out, read_only).exit_code == 0
        rows = json.loads(run_cli("scan", read_only, "--output-dir", out, "--format", "json").stdout)
        assert {r["status"] for r in rows} == {"converted"}
        assert len(rows) == len(manifest["checkpoints"])
        best = json.loads(run_cli("catalog", out, "--best", "val_loss", "--format", "json").stdout)
        # mlp_minloss logged val_loss; the OCR run val/loss (the same metric by the alias rule)
        assert sorted(r["exp_name"] for r in best) == ["mlp_minloss", "ocr_dbnet_hydra"]
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=False)


def test_file_vanishing_mid_run_fails_that_checkpoint_only(tmp_path: Path) -> None:
    from ckptctl.ops.convert import ConvertOptions, convert, targets_for_exp_dir

    write_checkpoint(tmp_path / "a.pt", 4, seed=1)
    write_checkpoint(tmp_path / "b.pt", 4, seed=2)
    targets, _ = targets_for_exp_dir(tmp_path, True)
    (tmp_path / "a.pt").unlink()  # gone between discovery and conversion
    report = convert(targets, ConvertOptions())
    statuses = {item.source.name: (item.status, item.reason) for item in report.items}
    assert statuses["a.pt"][0] == "failed" and "vanished" in statuses["a.pt"][1]
    assert statuses["b.pt"] == ("converted", None)
    assert leftover_temporaries(tmp_path) == []


def test_scan_survives_unicode_spaces_and_very_deep_trees(tmp_path: Path) -> None:
    deep = tmp_path
    for i in range(300):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    write_checkpoint(deep / "deep ckpt ü 模型.pt", 1)
    rows = json.loads(run_cli("scan", tmp_path, "--format", "json").stdout)
    assert [Path(r["path"]).name for r in rows] == ["deep ckpt ü 模型.pt"]
    assert run_cli("convert", "--outputs-dir", tmp_path).exit_code == 0
    assert run_cli("validate", "--deep", "--strict", tmp_path).exit_code == 0


def test_oversized_sidecar_is_rejected_quickly(tmp_path: Path) -> None:
    big = tmp_path / "big.metadata.yaml"
    big.write_text("schema_version: '1.0'\nnote: " + "x" * (5 * 1024 * 1024) + "\n")
    started = time.monotonic()
    result = run_cli("validate", tmp_path)
    assert time.monotonic() - started < 5
    assert result.exit_code == 1 and "larger than" in result.stdout
