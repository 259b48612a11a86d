"""-q/--quiet on every command and the group-level -v/--verbose (implemented once, in Console)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    (root / "exp").mkdir(parents=True)
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 1, "val_loss": 0.5}, root / "exp/a.pt")
    torch.save({"model": {"w": torch.ones(3)}, "epoch": 2, "val_loss": 0.4}, root / "exp/b.pt")
    (root / "exp/broken.pt").write_bytes(b"")
    return root


def test_quiet_convert_prints_only_errors(tree: Path) -> None:
    result = run_cli("convert", "-q", "--outputs-dir", tree)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"error: {tree / 'exp/broken.pt'}: empty file\n"
    # the group-level spelling does the same
    again = run_cli("-q", "convert", "--outputs-dir", tree, "--force")
    assert (again.exit_code, again.stdout, again.stderr) == (1, "", result.stderr)


def test_quiet_keeps_machine_readable_output(tree: Path) -> None:
    jsonl = run_cli("convert", "--quiet", "--format", "jsonl", "--outputs-dir", tree)
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [r.get("status") for r in records[:-1]] == ["converted", "converted", "failed"]
    assert records[-1]["summary"]["converted"] == 2
    assert jsonl.stderr == ""  # the failure is in its JSON record; no summary line
    scan = run_cli("scan", "-q", "--format", "json", tree)
    assert [Path(r["path"]).name for r in json.loads(scan.stdout)] == ["a.pt", "b.pt", "broken.pt"]
    assert scan.stderr == ""
    ok = run_cli("validate", "-q", tree / "exp/a.pt")
    assert (ok.exit_code, ok.stdout, ok.stderr) == (0, "", "")
    catalog = run_cli("catalog", "-q", tree, "--best", "val_loss")
    assert catalog.stderr == ""  # no "1 checkpoint ... left out", no "2 rows"
    assert [line.split()[1] for line in catalog.stdout.splitlines()[2:]] == [str(tree / "exp/b.pt")]


def test_without_quiet_the_summaries_are_there(tree: Path) -> None:
    result = run_cli("convert", "--outputs-dir", tree)
    assert result.stderr.endswith("found 3, converted 2, skipped 0, failed 1\n")
    assert result.stdout.count("converted      ") == 2


def test_group_verbose_lists_skipped_files(tree: Path) -> None:
    assert run_cli("convert", "--outputs-dir", tree).exit_code == 1
    plain = run_cli("convert", "--outputs-dir", tree)
    assert "skipped" not in plain.stdout
    verbose = run_cli("-v", "convert", "--outputs-dir", tree)
    assert verbose.stdout.count("skipped        ") == 2
    assert verbose.stdout == run_cli("convert", "-v", "--outputs-dir", tree).stdout
    # -q wins over -v
    both = run_cli("-v", "convert", "-q", "--outputs-dir", tree)
    assert both.stdout == ""


def test_every_command_takes_quiet() -> None:
    from ckptctl.cli import COMMANDS

    for name in COMMANDS:
        assert "-q, --quiet" in run_cli(name, "--help").stdout, name
