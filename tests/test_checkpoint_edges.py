"""Small promises at the edges: torch strides of empty tensors, float32 scalars as they
were logged, and CheckpointManager numbers that are not epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import converted_copy, run_cli, sidecar_of

import ckptctl
from ckptctl.filename_tokens import parse_filename


def test_empty_tensors_come_back_with_torchs_strides(tmp_path: Path) -> None:
    original = {"empty": torch.empty(0, 4), "empty_bf16": torch.empty(0, 3, dtype=torch.bfloat16),
                "wide": torch.empty(2, 0, 5, dtype=torch.int16)}
    torch.save(original, tmp_path / "e.pt")
    assert run_cli("convert", "--checkpoint", tmp_path / "e.pt").exit_code == 0
    restored = ckptctl.load_state_dict(tmp_path / "e.weights.h5")
    for name, tensor in original.items():
        assert (restored[name].shape, restored[name].dtype) == (tensor.shape, tensor.dtype), name
        assert restored[name].stride() == tensor.stride(), name
    assert restored["empty"].view(torch.uint8).shape == (0, 16)


@pytest.mark.parametrize("stem", ["ckpt-777", "model.ckpt-5", "checkpoint-500", "ckpt_12"])
def test_checkpoint_counters_are_not_epochs(stem: str) -> None:
    tokens = parse_filename(stem)
    assert (tokens.epoch, tokens.global_step) == (None, None)


@pytest.mark.slow
def test_manager_checkpoints_keep_the_logged_float32_and_have_no_false_conflicts(
        tmp_path_factory: pytest.TempPathFactory, tf_tree: tuple[Path, dict[str, Any]]) -> None:
    root, manifest = converted_copy(tmp_path_factory, tf_tree, "edges_tf")
    checked = 0
    for rel, entry in manifest["checkpoints"].items():
        if entry["kind"] != "tf-index-tf-checkpoint":
            continue
        doc = sidecar_of(root / rel)
        assert doc["conflicts"] == [], (rel, doc["conflicts"])
        assert doc["training"]["epoch"] == entry["values"]["epoch"], rel
        best = entry["values"]["best_metric"]
        if best is not None:
            shortest = float(str(np.float32(best)))
            assert doc["metrics"]["best_metric"] == shortest, rel
            assert len(repr(doc["metrics"]["best_metric"])) <= len(repr(shortest))
        checked += 1
    assert checked >= 3


def test_big_torch_files_are_mapped_a_storage_at_a_time(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Stops: a whole-file memory map kept for the conversion of a big checkpoint (every page
    it touched stayed mapped: peak RSS grew from 327 MiB to 1.2 GB on the 1.1 GB benchmark).
    Found: bench_convert after the per-checkpoint changes (issue 11)."""
    import torch

    from ckptctl.readers import torch_files

    path = tmp_path / "two.pt"
    torch.save({"a": torch.arange(1000.0), "b": torch.ones(1000)}, path)
    monkeypatch.setattr(torch_files, "WHOLE_FILE_MAP_BYTES", 1024)  # "big" for this test
    checkpoint = torch_files.open_torch(path)
    values = {k: t.read(checkpoint, False) for k, t in checkpoint.obj.items()}
    assert values["a"][-1] == 999.0 and values["b"].sum() == 1000
    assert checkpoint._map is None
    monkeypatch.setattr(torch_files, "WHOLE_FILE_MAP_BYTES", 1 << 30)  # small: one map
    checkpoint = torch_files.open_torch(path)
    assert checkpoint.obj["a"].read(checkpoint, False)[-1] == 999.0
    assert checkpoint._map is not None
