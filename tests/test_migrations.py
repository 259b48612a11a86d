"""Versioned sidecars: older documents are migrated when read, newer ones are refused by name.

The documents here are literal YAML, as an older (or newer) ckptctl would have written them.
No real migration exists yet (the schema is at its first version), so a test-only one,
registered for the duration of a test, proves the path end to end: read, validate, catalog.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli

from ckptctl import migrations
from ckptctl.errors import NewerSidecarError, SidecarError
from ckptctl.migrations import SCHEMA_VERSION, upgrade
from ckptctl.sidecars import parse_sidecar

#: What both documents below say about the checkpoint itself.
DESCRIBED = """\
checkpoint_path: best.ckpt
weights_path: null
source:
  format: torch-zip
  size_bytes: {size}
  mtime: {mtime}
  sha256: {sha256}
metrics:
  val_loss: 0.25
"""

#: A sidecar of the (imaginary) schema 0.9: ``experiment`` was renamed ``exp_name`` in 1.0,
#: and 0.9 had no ``tool`` section.
OLD_DOCUMENT = """\
schema_version: '0.9'
experiment: baseline
created_at: '2026-01-02T03:04:05+00:00'
""" + DESCRIBED

#: The same checkpoint described by a ckptctl from the future (schema 1.1, a new section).
NEWER_DOCUMENT = """\
schema_version: '1.1'
exp_name: baseline
created_at: '2027-01-02T03:04:05+00:00'
lineage:
  parent: run-41
tool:
  name: ckptctl
  version: 0.9.0
""" + DESCRIBED


def upgrade_0_9(doc: dict[str, Any]) -> dict[str, Any]:
    doc["exp_name"] = doc.pop("experiment")
    doc.setdefault("tool", {"name": "ckptctl", "version": "0.0.9"})
    return doc


@pytest.fixture
def with_test_migration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrations, "MIGRATIONS", {"0.9": (SCHEMA_VERSION, upgrade_0_9)})



def checkpoint_with_sidecar(folder: Path, template: str) -> tuple[Path, Path]:
    """A real torch checkpoint and a sidecar written from ``template`` that describes it."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "best.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, source)
    info = source.stat()
    sidecar = folder / "best.metadata.yaml"
    sidecar.write_text(template.format(size=info.st_size, mtime=info.st_mtime,
                                       sha256=hashlib.sha256(source.read_bytes()).hexdigest()))
    return source, sidecar


def test_current_documents_pass_through_unchanged() -> None:
    doc = {"schema_version": SCHEMA_VERSION, "exp_name": "x"}
    assert upgrade(dict(doc)) == doc


def test_old_sidecar_is_migrated_when_read(tmp_path: Path, with_test_migration: None) -> None:
    _, sidecar = checkpoint_with_sidecar(tmp_path / "baseline", OLD_DOCUMENT)
    parsed = parse_sidecar(sidecar)
    assert parsed.schema_version == SCHEMA_VERSION
    assert parsed.exp_name == "baseline"
    assert parsed.tool.version == "0.0.9"
    assert sidecar.read_text().startswith("schema_version: '0.9'")  # reading never rewrites


def test_old_sidecar_validates_and_is_catalogued(tmp_path: Path, with_test_migration: None) -> None:
    checkpoint_with_sidecar(tmp_path / "baseline", OLD_DOCUMENT)
    result = run_cli("validate", "--strict", tmp_path)
    assert (result.exit_code, result.stderr) == (0, "ok: 1 sidecar, 1 checkpoint checked, no problems\n")
    rows = json.loads(run_cli("catalog", tmp_path, "--format", "json").stdout)
    assert [(r["exp_name"], r["schema_version"], r["metrics"]) for r in rows] == [
        ("baseline", SCHEMA_VERSION, {"val_loss": 0.25})]


def test_without_its_migration_an_old_sidecar_is_a_schema_error(tmp_path: Path) -> None:
    _, sidecar = checkpoint_with_sidecar(tmp_path / "baseline", OLD_DOCUMENT)
    with pytest.raises(SidecarError) as caught:
        parse_sidecar(sidecar)
    assert caught.value.kind == "sidecar"
    assert caught.value.message == f"unknown sidecar schema 0.9 (this ckptctl reads up to {SCHEMA_VERSION})"


@pytest.mark.parametrize("version", ["one", "", "1", "1.0.0", None, 1.0])
def test_a_schema_version_that_is_not_a_version_is_reported(version: object) -> None:
    with pytest.raises(SidecarError) as caught:
        upgrade({"schema_version": version})
    assert caught.value.kind == "sidecar"
    assert "is not a version" in caught.value.message


def test_newer_sidecar_is_one_line_naming_both_versions(tmp_path: Path) -> None:
    _, sidecar = checkpoint_with_sidecar(tmp_path / "baseline", NEWER_DOCUMENT)
    with pytest.raises(NewerSidecarError) as caught:
        parse_sidecar(sidecar)
    expected = (f"written by a newer ckptctl (sidecar schema 1.1; this ckptctl reads up to "
                f"{SCHEMA_VERSION}): upgrade ckptctl")
    assert caught.value.message == expected
    result = run_cli("validate", tmp_path, "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["problems"] == [
        {"path": str(sidecar), "problem": expected, "kind": "newer-schema"}]


def test_convert_never_overwrites_a_newer_sidecar(tmp_path: Path) -> None:
    source, sidecar = checkpoint_with_sidecar(tmp_path / "baseline", NEWER_DOCUMENT)
    before = sidecar.read_bytes()
    result = run_cli("convert", "--checkpoint", source)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"error: {source}: best.metadata.yaml: written by a newer ckptctl (sidecar schema 1.1; this ckptctl reads up "
        f"to {SCHEMA_VERSION}): upgrade ckptctl")
    assert sidecar.read_bytes() == before
    assert not (tmp_path / "baseline" / "best.weights.h5").exists()


def test_convert_reports_the_newer_sidecar_kind(tmp_path: Path) -> None:
    from ckptctl.ops.convert import ConvertOptions, convert, targets_for_checkpoint

    source, _ = checkpoint_with_sidecar(tmp_path / "baseline", NEWER_DOCUMENT)
    targets, _ = targets_for_checkpoint(source)
    [item] = convert(targets, ConvertOptions()).items
    assert (item.status, item.kind) == ("failed", "newer-schema")


def test_scan_and_catalog_say_newer_not_stale(tmp_path: Path) -> None:
    checkpoint_with_sidecar(tmp_path / "baseline", NEWER_DOCUMENT)
    [row] = json.loads(run_cli("scan", tmp_path, "--format", "json").stdout)
    assert (row["status"], row["kind"]) == ("newer", "newer-schema")
    assert row["reason"].startswith("written by a newer ckptctl (sidecar schema 1.1;")
    catalog = run_cli("catalog", tmp_path)
    assert "skipped, written by a newer ckptctl (sidecar schema 1.1" in catalog.stderr
