"""Structured results: every failure carries a machine-readable ``kind`` next to its message,
in the Python results and in every JSON output. Tests here assert on kinds, not wording."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock
from helpers import run_cli

from ckptctl.errors import kind_of
from ckptctl.ops.convert import ConvertOptions, convert, targets_for_exp_dir
from ckptctl.ops.scan import scan
from ckptctl.outputs import OutputLayout

#: the bad-inputs manifest's "expect" -> the kind convert and scan report
KIND_OF_EXPECTATION = {"unsafe": "unsafe", "corrupt": "corrupt", "empty": "unrecognised",
                       "not_a_checkpoint": "unrecognised", "ok": None}


def test_convert_and_scan_kinds_for_every_bad_input(
        fresh_bad_inputs: tuple[Path, dict[str, Any]]) -> None:
    root, manifest = fresh_bad_inputs
    targets, _ = targets_for_exp_dir(root, recursive=False)
    items = {item.source.name: item for item in convert(targets, ConvertOptions()).items}
    rows = {Path(row.path).name: row for row in scan([root], recursive=False).rows}
    for name, info in manifest["files"].items():
        expected = KIND_OF_EXPECTATION[info["expect"]]
        assert items[name].kind == expected, name
        assert (items[name].status == "failed") == (expected is not None), name
        if expected is not None and expected != "unsafe":
            # scan reads structure only: an unsafe pickle is refused there too
            assert rows[name].kind == expected, name
    assert rows["malicious.ckpt"].kind == "unsafe"
    for marker in manifest["marker_paths"]:
        assert not Path(marker).exists()


def test_scan_json_exposes_kind(fresh_bad_inputs: tuple[Path, dict[str, Any]]) -> None:
    root, _ = fresh_bad_inputs
    result = run_cli("scan", root, "--format", "json")
    kinds = {Path(row["path"]).name: row["kind"] for row in json.loads(result.stdout)}
    assert kinds["good.pt"] is None
    assert kinds["truncated.ckpt"] == "corrupt"
    assert kinds["empty.pt"] == "unrecognised"


def make_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def test_kinds_of_unsupported_conflict_and_busy(tmp_path: Path) -> None:
    import torch

    exp = tmp_path / "exp"
    make_checkpoint(exp / "no_weights.pt", {"epoch": 1, "notes": "no tensors here"})
    make_checkpoint(exp / "twin.ckpt", {"state_dict": {"w": torch.ones(1)}})
    make_checkpoint(exp / "twin.pt", {"state_dict": {"w": torch.ones(1)}})
    held = make_checkpoint(exp / "held.ckpt", {"state_dict": {"w": torch.ones(1)}})
    targets, _ = targets_for_exp_dir(exp, recursive=False)
    with FileLock(str(OutputLayout().outputs(held).lock)):
        items = {i.source.name: i for i in convert(targets, ConvertOptions()).items}
    assert (items["no_weights.pt"].status, items["no_weights.pt"].kind) == ("failed", "unsupported")
    assert (items["twin.ckpt"].kind, items["twin.pt"].kind) == ("conflict", "conflict")
    assert (items["held.ckpt"].status, items["held.ckpt"].kind) == ("skipped", None)
    assert items["held.ckpt"].reason is not None and items["held.ckpt"].reason.startswith("busy")


def test_success_notes_are_not_failure_reasons(tmp_path: Path) -> None:
    import torch

    source = make_checkpoint(tmp_path / "exp" / "ok.ckpt", {"state_dict": {"w": torch.ones(1)}})
    targets, _ = targets_for_exp_dir(source.parent, recursive=False)
    [item] = convert(targets, ConvertOptions()).items
    assert (item.status, item.reason, item.kind, item.notes) == ("converted", None, None, [])
    [again] = convert(targets, ConvertOptions()).items
    assert (again.status, again.reason, again.kind) == ("skipped", "up to date", None)


@pytest.mark.parametrize(("error", "kind"), [
    (OSError(28, "No space left on device"), "os"),
    (ValueError("a bug"), "internal"),
])
def test_kind_of_non_ckptctl_errors(error: BaseException, kind: str) -> None:
    assert kind_of(error) == kind
