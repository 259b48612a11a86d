"""Only regular files are ever opened for reading: FIFOs named like checkpoints, shards,
logger files, Hydra configs or sidecars never block a command (hostile review, round 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import run_process

from ckptctl.safeio import open_regular


def test_open_regular_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    """Stops: open() waiting forever on a FIFO. Found: hostile review, round 2."""
    os.mkfifo(tmp_path / "x.ckpt")
    with pytest.raises(OSError, match="not a regular file \\(a FIFO\\)"):
        open_regular(tmp_path / "x.ckpt")
    with pytest.raises(OSError, match="a character device"):
        open_regular("/dev/zero")


def test_fifos_in_a_tree_never_block_any_command(tmp_path: Path) -> None:
    """Stops: a FIFO named metrics.csv, hparams.yaml, .hydra/config.yaml, x.ckpt, a sidecar, a TF index, shard or state file hanging scan/convert/validate/catalog. Found: hostile review, round 2."""
    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (tmp_path / "tf").mkdir()
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 1}, run / "a.ckpt")
    for name in ("csv/metrics.csv", "hparams.yaml", ".hydra/config.yaml", "b.ckpt",
                 "c.metadata.yaml"):
        os.mkfifo(run / name)
    for name in ("m.ckpt.index", "checkpoint", "n.ckpt.data-00000-of-00001"):
        os.mkfifo(tmp_path / "tf" / name)
    (tmp_path / "tf" / "n.ckpt.index").write_bytes(b"")
    for args in (["scan", tmp_path], ["convert", "--outputs-dir", tmp_path],
                 ["validate", "--strict", tmp_path], ["catalog", tmp_path]):
        done = run_process(*map(str, args))  # run_process times out (and fails) if one blocks
        assert "Traceback" not in done.stderr, (args, done.stderr)
    assert (run / "a.metadata.yaml").is_file()
