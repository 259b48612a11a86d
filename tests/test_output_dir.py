"""One output layout for every command: a tree converted with ``--output-dir OUT`` is found
converted and clean by ``scan --output-dir OUT`` and ``validate --strict --output-dir OUT``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli

from ckptctl.outputs import OutputLayout, stem_of


def test_scan_and_validate_find_what_convert_wrote_elsewhere(
        fresh_tree: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    source, _ = fresh_tree
    out = tmp_path / "converted"
    converted = run_cli("convert", "--outputs-dir", source, "--output-dir", out)
    assert converted.exit_code == 0, converted.stderr
    assert not list(source.rglob("*.metadata.yaml")), "nothing is written next to the sources"

    rows = json.loads(run_cli("scan", source, "--output-dir", out, "--format", "json").stdout)
    assert len(rows) >= 10
    assert {row["status"] for row in rows} == {"converted"}
    assert all(row["sidecar"].startswith(str(out)) for row in rows)

    strict = run_cli("validate", "--strict", "--deep", "--output-dir", out, source)
    assert (strict.exit_code, strict.stderr) == (
        0, f"ok: {len(rows)} sidecars, {len(rows)} checkpoints checked, no problems\n")

    # without --output-dir the same check finds no sidecars next to the sources
    plain = json.loads(run_cli("validate", "--strict", source, "--format", "json").stdout)
    assert plain["sidecars_checked"] == 0
    assert [p["kind"] for p in plain["problems"]] == ["not-converted"] * len(rows)


def test_validate_strict_output_dir_passes_on_a_clean_tree(tmp_path: Path) -> None:
    import torch

    source = tmp_path / "runs"
    for exp in ("a", "b"):
        (source / exp / "checkpoints").mkdir(parents=True)
        torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 1},
                   source / exp / "checkpoints" / "last.ckpt")
    out = tmp_path / "out"
    assert run_cli("convert", "--outputs-dir", source, "--output-dir", out).exit_code == 0
    assert (out / "a" / "checkpoints" / "last.metadata.yaml").is_file()
    result = run_cli("validate", "--strict", "--deep", "--output-dir", out, source)
    assert (result.exit_code, result.stderr) == (0, "ok: 2 sidecars, 2 checkpoints checked, no problems\n")
    scan = run_cli("scan", "--output-dir", out, source)
    assert (scan.exit_code, scan.stderr) == (0, "2 checkpoints: 2 converted\n")


def test_output_layout_rules(tmp_path: Path) -> None:
    source = tmp_path / "src" / "exp" / "ckpts" / "epoch=1.ckpt"
    beside = OutputLayout().outputs(source)
    assert (beside.weights.name, beside.sidecar.name, beside.lock.name) == (
        "epoch=1.weights.h5", "epoch=1.metadata.yaml", ".epoch=1.ckptctl-lock")
    assert beside.sidecar.parent == source.parent
    mirrored = OutputLayout(tmp_path / "src", tmp_path / "out").outputs(source)
    assert mirrored.sidecar == tmp_path / "out" / "exp" / "ckpts" / "epoch=1.metadata.yaml"
    assert mirrored.temp_prefix == ".epoch=1.ckptctl-tmp-"
    assert [stem_of(Path(n)) for n in ("model.ckpt", "x.weights.h5", "x.keras", "w.hdf5", ".pt")] == [
        "model", "x", "x.keras", "w", ".pt"]
    with pytest.raises(ValueError):
        OutputLayout(None, tmp_path / "out")
