"""Names and text from the outside are printed as text: never rich markup, never control
characters (found by the hostile review, round 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import run_cli, run_process


def test_hydra_sweep_folders_print_as_themselves(tmp_path: Path) -> None:
    """Stops: rich markup in a folder name ("act=[relu,gelu]") vanishing or crashing the table. Found: hostile review, round 2."""
    folder = tmp_path / "act=[relu,gelu]" / "[bold]x[/bold]"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.ones(1)}}, folder / "last.ckpt")
    result = run_cli("scan", tmp_path)
    assert result.exit_code == 0
    assert str(folder / "last.ckpt") in result.stdout
    assert run_cli("convert", "--outputs-dir", tmp_path).exit_code == 0
    catalog = run_cli("catalog", tmp_path)
    assert catalog.exit_code == 0 and "act=[relu,gelu]" in catalog.stdout


def test_control_characters_in_names_are_escaped(tmp_path: Path) -> None:
    """Stops: a file name with a newline or an ESC sequence forging an output line or driving the terminal. Found: hostile review, round 2."""
    name = "evil\n\x1b[2Jerror: all fine.pt"
    (tmp_path / name).write_bytes(b"not a checkpoint")
    result = run_cli("scan", tmp_path)
    assert "\x1b" not in result.stdout + result.stderr
    assert "evil\\n\\x1b[2Jerror: all fine.pt" in result.stdout
    converted = run_cli("convert", "--outputs-dir", tmp_path)
    [line] = converted.stderr.splitlines()[:-1]  # one line for the one bad file, then the summary
    assert line.startswith("error: ") and "\\n" in line and "\x1b" not in line


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="needs a filesystem of raw byte names")
def test_non_utf8_file_names_convert_or_fail_cleanly(tmp_path: Path) -> None:
    """Stops: a non-UTF-8 file name leaving orphan weights and failing every rerun. Found: hostile review, round 2."""
    raw = os.fsencode(tmp_path) + b"/m\xff.ckpt"
    with open(raw, "wb") as handle:
        torch.save({"state_dict": {"w": torch.ones(1)}}, handle)
    first = run_process("convert", "--outputs-dir", tmp_path)
    assert "Traceback" not in first.stderr
    names = sorted(n for n in os.listdir(os.fsencode(tmp_path)) if not n.endswith(b"-lock"))
    if first.returncode == 0:
        assert b"m\xff.metadata.yaml" in names and b"m\xff.weights.h5" in names
        assert run_process("validate", "--strict", tmp_path).returncode == 0
    else:
        assert names == [b"m\xff.ckpt"], names  # nothing half-written
        assert "not valid UTF-8" in first.stderr
    assert "m\\xff.ckpt" in first.stdout + first.stderr


def test_names_too_long_for_their_outputs_fail_in_one_line(tmp_path: Path) -> None:
    """Stops: scan and validate --strict printing a traceback for a name that is too long once the output suffix is added. Found: hostile review, round 2."""
    import json

    source = tmp_path / ("a" * 250 + ".ckpt")
    torch.save({"state_dict": {"w": torch.ones(1)}}, source)
    [row] = json.loads(run_cli("scan", tmp_path, "--format", "json").stdout)
    assert (row["status"], row["kind"]) == ("not converted", "os")
    strict = json.loads(run_cli("validate", "--strict", tmp_path, "--format", "json").stdout)
    assert [p["kind"] for p in strict["problems"]] == ["os"]
    converted = run_cli("convert", "--outputs-dir", tmp_path)
    assert converted.exit_code == 1 and "Traceback" not in converted.stderr
    assert converted.stderr.count("error: ") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]
