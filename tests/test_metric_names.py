"""The metric alias rule of ``catalog --best`` (README: Catalog, ``ckptctl/metric_names.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import outputs_for, run_cli

from ckptctl.metric_names import AmbiguousMetric, did_you_mean, metric_key, resolve


@pytest.mark.parametrize("a, b", [
    ("val_loss", "val/loss"), ("val_loss", "val.loss"), ("val/loss", "validation.loss"),
    ("val_loss", "valid_loss"), ("val_loss", "valloss"), ("val_acc", "validacc"),
    ("val_loss", "validation/loss"), ("val//loss", "val_loss"), ("cleval_metrics/hmean",
                                                                  "cleval_metrics.hmean"),
    ("train/loss", "train_loss"),
])
def test_alias_rule_equates(a: str, b: str) -> None:
    assert metric_key(a) == metric_key(b)


@pytest.mark.parametrize("a, b", [
    ("val_loss", "val_stats/loss"),  # a group name is part of the metric
    ("val_loss", "best_val_loss"), ("val_loss", "Val_loss"),  # case matters
    ("val_loss", "train_loss"), ("val_loss", "loss"), ("value", "val_ue"),
    ("val_loss", "valid_stats_loss"),
])
def test_alias_rule_keeps_apart(a: str, b: str) -> None:
    assert metric_key(a) != metric_key(b)


def test_resolve_prefers_exact_then_single_then_spelled_out() -> None:
    assert resolve("val_loss", ["val/loss", "val_loss", "train_loss"]) == "val_loss"
    assert resolve("val_loss", ["val/loss", "train_loss"]) == "val/loss"
    assert resolve("val_loss", ["val/loss", "valloss"]) == "val/loss"  # name over file token
    assert resolve("val_loss", ["val_stats/loss"]) is None
    with pytest.raises(AmbiguousMetric) as caught:
        resolve("val_loss", ["validation.loss", "val/loss"])
    assert caught.value.names == ["val/loss", "validation.loss"]


def test_did_you_mean() -> None:
    assert did_you_mean("val/los", ["val/loss", "train/acc", "val/hmean"]) == ["val/loss"]
    assert did_you_mean("zzz", ["val/loss"]) == []


def _save(root: Path, exp: str, name: str, **metrics: float) -> Path:
    (root / exp).mkdir(parents=True, exist_ok=True)
    path = root / exp / name
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 1, **metrics}, path)
    return path


def test_catalog_best_finds_every_spelling_and_says_which(tmp_path: Path) -> None:
    _save(tmp_path, "a", "a.pt", val_loss=0.5)
    _save(tmp_path, "b", "b.pt", **{"val/loss": 0.25})
    _save(tmp_path, "c", "c.pt", **{"validation.loss": 0.75})
    _save(tmp_path, "d", "d.pt", **{"val_stats/loss": 0.1})  # not val_loss (README)
    _save(tmp_path, "e", "e1_valloss0.35.pt")  # a file-name token only
    assert run_cli("convert", "--outputs-dir", tmp_path).exit_code == 0
    result = run_cli("catalog", tmp_path, "--best", "val_loss")
    assert result.exit_code == 0
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines[0] == ["EXPERIMENT", "CHECKPOINT", "EPOCH", "STEP", "val_loss", "(as", "val/loss,",
                        "valloss,", "validation.loss,", "min)"]
    assert [row[:2] + row[-1:] for row in lines[2:]] == [
        ["b", str(tmp_path / "b/b.pt"), "0.25"], ["e", str(tmp_path / "e/e1_valloss0.35.pt"), "0.35"],
        ["a", str(tmp_path / "a/a.pt"), "0.5"], ["c", str(tmp_path / "c/c.pt"), "0.75"]]
    assert result.stderr == ("note: 1 checkpoint without val_loss was left out\n"
                             "4 rows (best by val_loss, min)\n")
    # the exact name alone: no "as" in the header
    exact = run_cli("catalog", tmp_path, "--best", "val_stats/loss")
    assert exact.stdout.splitlines()[0].split()[-2:] == ["val_stats/loss", "(min)"]
    assert exact.stderr.endswith("\n1 row (best by val_stats/loss, min)\n")


def test_catalog_best_reports_an_ambiguous_sidecar(tmp_path: Path) -> None:
    source = _save(tmp_path, "a", "a.pt", **{"val/loss": 0.5, "validation.loss": 0.6})
    assert run_cli("convert", "--outputs-dir", tmp_path).exit_code == 0
    sidecar = outputs_for(source)[1]
    result = run_cli("catalog", tmp_path, "--best", "val_loss")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (f"Error: metric 'val_loss' is ambiguous in {sidecar}: it logged "
                             "val/loss and validation.loss; ask for one of them by its exact name\n")
    # the exact spelling of one of them is not ambiguous
    exact = run_cli("catalog", tmp_path, "--best", "validation.loss")
    assert exact.exit_code == 0 and exact.stdout.splitlines()[2].split()[-1] == "0.6"


def test_catalog_unknown_metric_says_did_you_mean(tmp_path: Path) -> None:
    _save(tmp_path, "a", "a.pt", **{"val/loss": 0.5, "train_acc": 0.9})
    assert run_cli("convert", "--outputs-dir", tmp_path).exit_code == 0
    result = run_cli("catalog", tmp_path, "--best", "val/los")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == ("Error: unknown metric 'val/los' (did you mean val/loss?); metrics in "
                             "these sidecars: train_acc, val/loss\n")


def test_warm_catalog_with_aliases_stays_light(tmp_path: Path) -> None:
    _save(tmp_path, "a", "a.pt", **{"val/loss": 0.5})
    assert run_cli("convert", "--outputs-dir", tmp_path).exit_code == 0
    code = ("import sys\nfrom ckptctl.cli import main\n"
            "try:\n    main(['catalog', sys.argv[1], '--best', 'val_loss'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('numpy', 'pydantic', 'torch') if m in sys.modules))")
    for _ in range(2):  # the first run fills the cache, the second is warm
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                              text=True, timeout=120, check=True)
    assert "val_loss (as val/loss, min)" in done.stdout
    assert done.stdout.splitlines()[-1] == "[]"
