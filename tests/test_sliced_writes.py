"""Big tensors are written a slice of rows at a time (``layouts.ckptctl_tensors.SLICED_FROM_BYTES``),
so a convert's peak RSS stays near one slice, not its largest tensor; the result is the same
bit-exact file. The slice size is lowered here so small tensors take the sliced path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import outputs_for, run_cli

import ckptctl
import ckptctl.layouts.ckptctl_tensors as tensors_layout

pytestmark = pytest.mark.xdist_group("sliced")


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    base = torch.randn(40, 33)
    return {
        "big": torch.randn(257, 31),                   # rows do not divide evenly into slices
        "half": torch.randn(64, 16).to(torch.float16),
        "bf16": torch.randn(50, 20).to(torch.bfloat16),  # raw bits, named by its attribute
        "ints": torch.arange(3000, dtype=torch.int64).reshape(100, 30),
        "column_view": base[:, 1:5],                   # strided: gathered whole, not sliced
        "row_view": base[10:30],                        # contiguous view at an offset: sliced
        "one_row": torch.randn(1, 4096),               # one row: written whole
        "scalar": torch.tensor(2.5),
        "tied": base,                                  # storage shared with the views above
    }


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensors_layout, "SLICED_FROM_BYTES", 1024)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_sliced_writes_are_bit_exact(tmp_path: Path, small_slices: None, legacy: bool) -> None:
    state = _state()
    source = tmp_path / "model.pt"
    torch.save({"state_dict": state}, source, _use_new_zipfile_serialization=not legacy)
    result = run_cli("convert", "--checkpoint", source)
    assert result.exit_code == 0, result.output + result.stderr
    loaded = ckptctl.load_state_dict(outputs_for(source)[0])
    assert list(loaded) == list(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(loaded[name].view(torch.uint8) if tensor.dim() else loaded[name],
                           tensor.contiguous().view(torch.uint8) if tensor.dim() else tensor), name
    assert run_cli("validate", "--deep", "--strict", tmp_path).exit_code == 0


def test_a_flipped_byte_in_a_big_storage_is_caught_slice_by_slice(
        tmp_path: Path, small_slices: None) -> None:
    """Stops: a damaged storage of a big tensor being converted because its crc32 is only
    checked when the whole storage is read at once."""
    source = tmp_path / "model.pt"
    values = torch.zeros(512, 64)
    torch.save({"state_dict": {"w": values}}, source)
    data = bytearray(source.read_bytes())
    needle = values.numpy().tobytes()[:4096]
    at = data.find(needle) + 70_000  # inside the storage, past its first slices
    assert 0 < at < len(data)
    data[at] ^= 0x40
    source.write_bytes(bytes(data))
    result = run_cli("convert", "--checkpoint", source)
    assert result.exit_code == 1
    assert "fails its crc32 check" in result.stderr
    assert outputs_for(source) and not any(p.exists() for p in outputs_for(source))


# The convert runs in a forked child, its peak read with wait4: an exec'd process would
# carry over the high-water mark of pytest's own (large) RSS.
MEASURE = r"""
import os, sys
pid = os.fork()
if pid == 0:
    from ckptctl.cli import main
    try:
        main(["convert", "--checkpoint", sys.argv[1], "--jobs", "1"])
    except SystemExit as exc:
        os._exit(exc.code or 0)
    os._exit(0)
_, status, usage = os.wait4(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
print(usage.ru_maxrss * 1024)
"""


@pytest.mark.slow
def test_peak_rss_stays_near_a_slice_not_the_largest_tensor(tmp_path: Path) -> None:
    """A 384 MiB checkpoint (one 256 MiB tensor) in a file over 64 MiB: mapped a slice at
    a time. Peak RSS (mapped pages count) must stay well under the largest tensor."""
    source = tmp_path / "big.pt"
    torch.save({"state_dict": {"big": torch.ones(2048, 32768), "other": torch.ones(1024, 32768)}},
               source)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(source)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    peak = int(out.stdout.split()[-1])
    assert peak < 200 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB for a 256 MiB tensor"
    assert peak > 40 * 2**20  # it did measure the converting process
