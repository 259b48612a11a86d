"""Sidecar paths are data, not instructions: ``validate`` follows them only inside the
sidecar's folder (and the ``--output-dir`` mirror's sources), found by the hostile review,
round 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli


def converted(tmp_path: Path) -> Path:
    (tmp_path / "exp").mkdir()
    source = tmp_path / "exp" / "best.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, source)
    assert run_cli("convert", "--checkpoint", source).exit_code == 0
    return source.with_name("best.metadata.yaml")


@pytest.mark.parametrize(("field", "value"), [
    ("checkpoint_path", "../../../../../../dev/zero"),
    ("checkpoint_path", "/etc/passwd"),
    ("checkpoint_path", "best\\0.ckpt"),
    ("weights_path", "../../../../../../dev/zero"),
    ("weights_path", "/etc/passwd"),
])
@pytest.mark.parametrize("deep", [False, True])
def test_validate_never_follows_a_path_out_of_the_tree(tmp_path: Path, field: str, value: str,
                                                       deep: bool) -> None:
    """Stops: a sidecar naming /dev/zero, /etc/passwd or ../.. making validate (--deep) read files outside the tree. Found: hostile review, round 2."""
    sidecar = converted(tmp_path)
    text = sidecar.read_text()
    old = next(line for line in text.splitlines() if line.startswith(f"{field}:"))
    sidecar.write_text(text.replace(old, f"{field}: \"{value}\""))
    result = run_cli("validate", tmp_path, "--format", "json", *(["--deep"] if deep else []))
    report = json.loads(result.stdout)
    assert result.exit_code == 1
    [problem] = report["problems"]
    assert problem["kind"] == "sidecar" and problem["problem"].startswith(field)
    assert "not followed" in problem["problem"]


def test_a_folder_named_as_the_checkpoint_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    """Stops: a checkpoint_path naming a folder (or a FIFO) being opened. Found: hostile review, round 2."""
    sidecar = converted(tmp_path)
    (tmp_path / "exp" / "folder").mkdir()
    sidecar.write_text(sidecar.read_text().replace("checkpoint_path: best.ckpt", "checkpoint_path: folder"))
    result = run_cli("validate", tmp_path, "--deep")
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_output_dir_sidecars_may_name_their_mirrored_sources(tmp_path: Path) -> None:
    """The documented exception: sidecars under --output-dir point back into the source tree."""
    (tmp_path / "src" / "exp").mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "src" / "exp" / "a.ckpt")
    out = tmp_path / "out"
    assert run_cli("convert", "--outputs-dir", tmp_path / "src", "--output-dir", out).exit_code == 0
    result = run_cli("validate", "--strict", "--deep", "--output-dir", out, tmp_path / "src")
    assert (result.exit_code, result.stderr) == (0, "ok: 1 sidecar, 1 checkpoint checked, no problems\n")
    # the same sidecar checked without --output-dir leads outside its folder: reported
    plain = json.loads(run_cli("validate", out, "--format", "json").stdout)
    assert [p["kind"] for p in plain["problems"]] == ["sidecar"]
