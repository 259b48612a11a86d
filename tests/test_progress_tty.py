"""convert's progress bar in a real pseudo-terminal, read back through a terminal emulator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect
import pyte
import pytest
import torch

ROWS, COLS = 60, 200


def _tree(root: Path) -> None:
    """30 small torch.save checkpoints of different sizes, and two broken files (errors on
    stderr, interleaved with the results on stdout)."""
    exp = root / "exp"
    exp.mkdir(parents=True)
    for i in range(30):
        torch.save({"model": {"w": torch.arange(float(64 * (i + 1)))}, "epoch": i},
                   exp / f"ckpt_{i:02d}.pt")
    (exp / "ckpt_10b.pt").write_bytes(b"")
    (exp / "ckpt_20b.pth").write_bytes(os.urandom(300))


def _env() -> dict[str, str]:
    env = dict(os.environ, TERM="xterm-256color", PYTHONUNBUFFERED="1")
    for name in ("COLUMNS", "LINES", "NO_COLOR", "CI", "GITHUB_ACTIONS"):
        env.pop(name, None)
    return env


@pytest.mark.slow
def test_progress_bar_leaves_every_result_line_intact(tmp_path: Path) -> None:
    _tree(tmp_path / "tty" / "outputs")
    shutil.copytree(tmp_path / "tty", tmp_path / "pipe")
    # What a pipe gets (no bar): the reference lines, in order.
    piped = subprocess.run([sys.executable, "-m", "ckptctl", "convert", "--outputs-dir", "outputs"],
                           cwd=tmp_path / "pipe", env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=300, check=False)
    expected = piped.stdout.splitlines()
    assert len(expected) == 33 and expected[-1] == "found 32, converted 30, skipped 0, failed 2"

    child = pexpect.spawn(sys.executable, ["-m", "ckptctl", "convert", "--outputs-dir", "outputs"],
                          cwd=str(tmp_path / "tty"), env=_env(), dimensions=(ROWS, COLS),
                          timeout=300)
    child.expect(pexpect.EOF)
    raw: bytes = child.before
    child.close()
    assert child.exitstatus == 1  # two checkpoints failed

    screen = pyte.Screen(COLS, ROWS)
    stream = pyte.ByteStream(screen)
    bar_seen = []
    for start in range(0, len(raw), 64):
        stream.feed(raw[start:start + 64])
        bar_seen += [line for line in screen.display
                     if "converting" in line and "KiB" in line and "ckpt_" in line]
    # The bar was drawn, counting bytes (KiB) and naming the checkpoint in hand ...
    assert bar_seen, raw[-2000:]
    # ... and left nothing behind: the final screen is exactly the result lines, each whole.
    final = [line.rstrip() for line in screen.display if line.strip()]
    assert final == expected
    assert not any("━" in line or "converting" in line for line in final)


def test_no_bar_when_not_a_terminal_or_quiet(tmp_path: Path) -> None:
    from helpers import run_cli

    _tree(tmp_path / "outputs")
    result = run_cli("convert", "--outputs-dir", tmp_path / "outputs")
    assert "converting" not in result.output and "━" not in result.output
    assert result.stdout.count("converted      ") == 30
