"""Ordinary trees that used to crash (found by the hostile review, round 2): a relative
``--checkpoint`` next to CSVLogger files, a sidecar about another format, and sidecars that
``validate`` accepts but ``catalog`` choked on (YAML dates, metrics written as text, NaN)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli, sidecar_of


def lightning_run(root: Path) -> Path:
    (root / "run" / "checkpoints").mkdir(parents=True)
    (root / "run" / "csv").mkdir()
    source = root / "run" / "checkpoints" / "a.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 1}, source)
    (root / "run" / "csv" / "metrics.csv").write_text("epoch,step,val_loss\n1,10,0.5\n")
    (root / "run" / "hparams.yaml").write_text("lr: 0.1\n")
    return source


def test_relative_checkpoint_next_to_csv_logger_files(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Stops: 'Can't mix absolute and relative paths' for every CSVLogger run given as a relative path. Found: hostile review, round 2."""
    source = lightning_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = run_cli("convert", "--checkpoint", "run/checkpoints/a.ckpt")
    assert result.exit_code == 0, result.stderr
    doc = sidecar_of(source)
    assert doc["metrics"] == {"val_loss": 0.5}
    assert doc["model"]["hyper_parameters"] == {"lr": 0.1}


@pytest.mark.parametrize("claimed", ["tf-index", "keras3-keras"])
def test_sidecar_about_another_format_is_stale(tmp_path: Path, claimed: str) -> None:
    """Stops: a sidecar whose source.format is not the checkpoint's making convert fail or skip it. Found: hostile review, round 2."""
    source = lightning_run(tmp_path)
    assert run_cli("convert", "--checkpoint", source).exit_code == 0
    sidecar = source.with_name("a.metadata.yaml")
    sidecar.write_text(sidecar.read_text().replace("format: torch-zip", f"format: {claimed}"))
    report = json.loads(run_cli("validate", tmp_path, "--format", "json").stdout)
    assert [(p["kind"], p["problem"].split(",")[0]) for p in report["problems"]] == [
        ("stale", f"source.format says {claimed}")]
    again = run_cli("convert", "--checkpoint", source)
    assert (again.exit_code, again.stdout.split()[0]) == (0, "converted")
    assert sidecar_of(source)["source"]["format"] == "torch-zip"


def test_catalog_reads_every_sidecar_validate_accepts(tmp_path: Path) -> None:
    """Stops: catalog crashing on a YAML date in hyper-parameters, a metric written as text, or a NaN metric. Found: hostile review, round 2."""
    source = lightning_run(tmp_path)
    assert run_cli("convert", "--checkpoint", source).exit_code == 0
    sidecar = source.with_name("a.metadata.yaml")
    text = sidecar.read_text()
    text = text.replace("metrics:\n  val_loss: 0.5", "metrics:\n  val_loss: .nan\n  acc: '0.7'")
    text = text.replace("hyper_parameters:\n", "hyper_parameters:\n    when: 2024-01-02\n")
    sidecar.write_text(text)
    assert run_cli("validate", tmp_path).exit_code == 0
    for _ in range(2):  # cold, then from the cache
        rows = json.loads(run_cli("catalog", tmp_path, "--format", "json").stdout)
        assert rows[0]["metrics"] == {"val_loss": None, "acc": 0.7}  # NaN is JSON null
        assert rows[0]["model"]["hyper_parameters"]["when"] == "2024-01-02"
        assert run_cli("catalog", tmp_path, "--sort", "-acc").exit_code == 0
        best = run_cli("catalog", tmp_path, "--best", "acc")
        assert best.exit_code == 0 and "0.7" in best.stdout
        nan_only = run_cli("catalog", tmp_path, "--best", "val_loss")
        assert nan_only.exit_code == 1  # a NaN ranks nowhere: no checkpoint has the metric
