"""Damaged outputs are not "converted" (issue 12, item 5): ``scan`` checks that the weights a
sidecar names exist with the recorded size, and plain ``convert`` reconverts when they do
not. The sha256 stays ``validate --deep``'s (scan and convert only stat)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from helpers import outputs_for, run_cli

sys.path.insert(0, str(Path(__file__).parent))
from test_project import modules_after  # shared probe of a real process


def _converted(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "runs"
    (root / "exp").mkdir(parents=True)
    a, b = root / "exp" / "a.ckpt", root / "exp" / "b.pt"
    torch.save({"state_dict": {"w": torch.arange(256.0)}, "epoch": 1}, a)
    torch.save({"model": {"w": torch.ones(8)}}, b)
    assert run_cli("convert", root).exit_code == 0
    return root, a, b


def _scan(root: Path) -> list[tuple[str, str, str | None, str | None]]:
    result = run_cli("scan", "--format", "json", root)
    assert result.exit_code == 0, result.stderr
    return [(Path(r["path"]).name, r["status"], r["reason"], r["kind"])
            for r in json.loads(result.stdout)]


def test_missing_weights_are_stale_and_reconverted(tmp_path: Path) -> None:
    root, a, _ = _converted(tmp_path)
    weights = outputs_for(a)[0]
    weights.unlink()
    assert _scan(root) == [("a.ckpt", "stale", "weights file missing", "stale"),
                           ("b.pt", "converted", None, None)]
    table = run_cli("scan", root)
    (row,) = [line for line in table.stdout.splitlines() if line.startswith(str(a))]
    assert row.endswith("   stale: weights file missing")
    assert table.stderr == "2 checkpoints: 1 stale, 1 converted\n"
    result = run_cli("convert", root)
    assert (result.exit_code, result.stdout, result.stderr) == (
        0, f"converted      {a}\n", "found 2, converted 1, skipped 1, failed 0\n")
    assert weights.is_file()
    assert [row[1] for row in _scan(root)] == ["converted", "converted"]


def test_weights_of_another_size_are_stale_and_reconverted(tmp_path: Path) -> None:
    root, a, _ = _converted(tmp_path)
    weights = outputs_for(a)[0]
    intact = weights.read_bytes()
    # truncated: no longer readable HDF5, yet ckptctl's own sidecar vouches for it
    weights.write_bytes(intact[: len(intact) // 2])
    assert _scan(root) == [("a.ckpt", "stale", "weights size differs from the sidecar", "stale"),
                           ("b.pt", "converted", None, None)]  # no row for the damaged file
    result = run_cli("convert", root)
    assert (result.exit_code, result.stdout, result.stderr) == (
        0, f"converted      {a}\n", "found 2, converted 1, skipped 1, failed 0\n")
    assert weights.read_bytes() == intact
    # grown: still readable, another size
    with weights.open("ab") as handle:
        handle.write(b"\0" * 10)
    assert _scan(root)[0][1:3] == ("stale", "weights size differs from the sidecar")
    assert run_cli("convert", root).stdout == f"converted      {a}\n"
    deep = run_cli("validate", "--deep", "--strict", root)
    assert (deep.exit_code, deep.stderr) == (0, "ok: 2 sidecars, 2 checkpoints checked, no problems\n")


def test_a_flipped_byte_is_left_to_validate_deep(tmp_path: Path) -> None:
    """Same size: scan and convert only stat (they stay fast); validate --deep hashes."""
    root, a, _ = _converted(tmp_path)
    weights = outputs_for(a)[0]
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert _scan(root)[0][1] == "converted"
    deep = run_cli("validate", "--deep", root)
    assert deep.exit_code == 1
    assert f"weights {weights.name} do not match their sha256" in deep.stdout


def test_checking_the_outputs_is_a_stat(tmp_path: Path) -> None:
    """No HDF5 file left in the tree to recognise: judging both checkpoints stale (weights
    missing) needs no numpy or h5py (pydantic reads the sidecars)."""
    root, a, b = _converted(tmp_path)
    for source in (a, b):
        outputs_for(source)[0].unlink()
    assert modules_after(["scan", str(root)], ("numpy", "h5py", "ml_dtypes", "torch")) == []
    assert [row[2] for row in _scan(root)] == ["weights file missing"] * 2
