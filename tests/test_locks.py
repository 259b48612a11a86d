"""Lock files do not stay behind, and removing them keeps the lock exclusive (issue 12, item 8).

The lock is released by unlinking its file while still holding it; a contender that locked
the unlinked inode notices (fstat vs stat) and starts over. These tests race real processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, run_cli, run_process

from ckptctl.outputs import OutputLayout

#: Each process takes the same lock ROUNDS times; while holding it, it creates a marker with
#: O_EXCL (fails if another holder's marker is there), sleeps a moment, removes it.
RACER = """
import os, sys, time
from pathlib import Path
from ckptctl.atomic import CheckpointLock, LockBusy
lock_path, marker, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
held = overlaps = 0
while held < rounds:
    lock = CheckpointLock(lock_path)
    try:
        lock.acquire()
    except LockBusy:
        continue
    try:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            overlaps += 1
        else:
            os.close(fd)
            time.sleep(0.0005)
            os.unlink(marker)
        held += 1
    finally:
        lock.release()
print(overlaps)
"""


def test_lock_stays_exclusive_while_its_file_is_removed_on_every_release(tmp_path: Path) -> None:
    lock_path, marker = tmp_path / ".a.ckptctl-lock", tmp_path / "held-by"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(lock_path), str(marker), "300"],
                               cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    overlaps = [int(p.communicate(timeout=240)[0]) for p in racers]
    assert [p.returncode for p in racers] == [0, 0, 0, 0]
    assert overlaps == [0, 0, 0, 0], "two processes held the lock at once"
    assert not lock_path.exists() and not marker.exists()


def _make_tree(root: Path, count: int) -> list[Path]:
    (root / "exp").mkdir(parents=True)
    sources = []
    for i in range(count):
        path = root / "exp" / f"c{i}.ckpt"
        torch.save({"state_dict": {"w": torch.full((64,), float(i))}, "epoch": i}, path)
        sources.append(path)
    return sources


def test_racing_converters_never_both_convert_a_checkpoint(tmp_path: Path) -> None:
    """Three `convert` processes started together on a fresh tree, five times over: each
    checkpoint is converted by exactly one of them every time (the others skip it as busy or
    up to date), and no lock file is left."""
    sources = _make_tree(tmp_path / "runs", 6)
    for _ in range(5):
        for path in (tmp_path / "runs" / "exp").iterdir():
            if path.name.endswith((".weights.h5", ".metadata.yaml")):
                path.unlink()
        procs = [subprocess.Popen([sys.executable, "-m", "ckptctl", "convert", "--jobs", "1", "-v",
                                   str(tmp_path / "runs")], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outputs = [p.communicate(timeout=240) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outputs
        converted = [line.split()[-1] for out, _ in outputs for line in out.splitlines()
                     if line.startswith("converted ")]
        assert sorted(converted) == sorted(str(s) for s in sources)
        assert not list((tmp_path / "runs").rglob("*.ckptctl-lock"))


def test_a_converted_tree_holds_only_sources_weights_and_sidecars(tmp_path: Path) -> None:
    sources = _make_tree(tmp_path / "runs", 3)
    result = run_cli("convert", tmp_path / "runs")
    assert (result.exit_code, result.stderr) == (0, "found 3, converted 3, skipped 0, failed 0\n")
    expected = set(sources)
    for source in sources:
        outputs = OutputLayout().outputs(source)
        expected |= {outputs.weights, outputs.sidecar}
    files = {p for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    assert files == expected
    # a second run (everything up to date) leaves nothing either
    assert run_cli("convert", tmp_path / "runs").exit_code == 0
    assert {p for p in (tmp_path / "runs").rglob("*") if p.is_file()} == expected


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_lock_left_by_a_killed_holder_is_taken_and_removed(tmp_path: Path) -> None:
    (source,) = _make_tree(tmp_path / "runs", 1)
    lock_path = OutputLayout().outputs(source).lock
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from ckptctl.atomic import CheckpointLock; CheckpointLock(Path(sys.argv[1])).acquire(); "
         "print('held', flush=True); time.sleep(600)", str(lock_path)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    busy = run_process("convert", "-v", source, cwd=REPO)
    assert f"skipped        {source} (busy: another ckptctl process is converting it)" in busy.stdout
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert lock_path.exists()  # the kernel released the lock; its file stayed
    done = run_process("convert", source, cwd=REPO)
    assert (done.returncode, done.stdout) == (0, f"converted      {source}\n")
    assert not lock_path.exists()
