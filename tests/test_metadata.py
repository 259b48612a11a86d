"""Sidecar metadata matches the ground truth the real libraries recorded at save time."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import converted_copy, sidecar_of

from ckptctl.filename_tokens import parse_filename


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, example_tree: tuple[Path, dict]) -> tuple[Path, dict]:
    return converted_copy(tmp_path_factory, example_tree, "meta")

def lightning_entries(manifest: dict) -> list[tuple[str, dict]]:
    return [(rel, info) for rel, info in sorted(manifest["checkpoints"].items())
            if info["kind"] == "lightning"]


def test_lightning_training_and_callback_fields(converted: tuple[Path, dict]) -> None:
    root, manifest = converted
    entries = lightning_entries(manifest)
    assert len(entries) == 6
    for rel, info in entries:
        doc = sidecar_of(root / rel)
        assert doc["training"]["epoch"] == info["epoch"], rel
        assert doc["training"]["global_step"] == info["global_step"], rel
        assert doc["training"]["framework"] == "lightning"
        assert doc["training"]["framework_version"] == info["lightning_version"]
        ckpt = doc["checkpointing"]
        assert ckpt["monitor"] == info["monitor"], rel
        assert ckpt["mode"] == info["mode"], rel
        assert ckpt["score"] == pytest.approx(info["monitor_value"], rel=1e-7), rel
        assert doc["metrics"][info["monitor"]] == pytest.approx(info["monitor_value"], rel=1e-7)
        stored_best = Path(info["stored_callback_state"]["best_model_path"]).name
        assert ckpt["best_when_saved"] == (stored_best == Path(rel).name), rel
        assert doc["exp_name"] == info["run"]
        assert doc["contents"]["optimizer_state"] is True


def test_hydra_supplies_architecture_and_checkpoint_settings(converted: tuple[Path, dict]) -> None:
    root, manifest = converted
    run = manifest["runs"]["ocr_dbnet_hydra"]
    doc = sidecar_of(root / "ocr_dbnet_hydra/checkpoints/last.ckpt")
    assert doc["model"]["architecture"] == run["architecture"] == "dbnet"
    assert doc["model"]["config"]["encoder"]["model_name"] == "mobilenetv3_small_050"
    assert doc["checkpointing"]["save_top_k"] == 2
    assert doc["checkpointing"]["save_last"] is True
    assert any(s.startswith("hydra:") for s in doc["provenance"]["model"])
    # hyper_parameters from the checkpoint itself (no architecture there, by design)
    assert doc["model"]["hyper_parameters"]["width"] == 8


def test_custom_metric_dicts_and_csv_logger_rows(converted: tuple[Path, dict]) -> None:
    root, manifest = converted
    info = manifest["checkpoints"]["ocr_dbnet_hydra/checkpoints/epoch01-hmean0.7824.ckpt"]
    doc = sidecar_of(root / "ocr_dbnet_hydra/checkpoints/epoch01-hmean0.7824.ckpt")
    metrics = doc["metrics"]
    assert metrics["cleval_metrics/hmean"] == pytest.approx(info["cleval_metrics"]["hmean"])
    for name, value in info["logged_metrics"].items():
        assert metrics[name] == pytest.approx(value, rel=1e-6), name
    assert "train/loss" in metrics  # only in metrics.csv: the training row of that epoch
    assert any(s.startswith("metrics.csv:") for s in doc["provenance"]["metrics"])


def test_hparams_architecture_and_filename_tokens(converted: tuple[Path, dict]) -> None:
    root, manifest = converted
    run = manifest["runs"]["mlp_minloss"]
    for rel in run["checkpoints"]:
        doc = sidecar_of(root / rel)
        assert doc["model"]["architecture"] == "mlp"
        tokens = parse_filename(Path(rel).name.removesuffix(".ckpt"))
        assert tokens.epoch == doc["training"]["epoch"]
        assert tokens.global_step == doc["training"]["global_step"]
        # val_loss=0.67 in the name agrees with 0.674… up to its rounding: no conflict
        assert doc["conflicts"] == [], rel
        assert doc["metrics"]["val_loss"] == pytest.approx(run["best_k_models"][rel], rel=1e-7)


def test_plain_training_dict_fields(converted: tuple[Path, dict]) -> None:
    root, manifest = converted
    rel = "cape_run1/checkpoint_best_loss_e002_valloss0.0987_pck0.7654.pth"
    values = manifest["checkpoints"][rel]["values"]
    doc = sidecar_of(root / rel)
    assert doc["training"]["epoch"] == values["epoch"]
    assert doc["training"]["framework"] == "pytorch"
    assert doc["model"]["architecture"] == "cape"  # from the argparse.Namespace in args
    assert doc["model"]["hyper_parameters"]["batch_size"] == values["args"]["batch_size"]
    assert doc["metrics"]["best_val_loss"] == pytest.approx(values["best_val_loss"])
    assert doc["metrics"]["val_stats/pck"] == pytest.approx(values["val_stats"]["pck"])
    assert doc["contents"]["rng_state"] is True


def test_disagreement_keeps_the_checkpoint_value_and_notes_it(converted: tuple[Path, dict]) -> None:
    root, manifest = converted
    (expected,) = manifest["expected_conflicts"]
    doc = sidecar_of(root / expected["path"])
    assert doc["metrics"][expected["field"]] == pytest.approx(expected["file_value"])
    conflicts = [c for c in doc["conflicts"] if c["field"] == f"metrics.{expected['field']}"]
    assert len(conflicts) == 1
    assert conflicts[0]["kept"] == pytest.approx(expected["file_value"])
    assert conflicts[0]["other"] == pytest.approx(expected["filename_value"])
    assert conflicts[0]["other_from"] == "filename"


def test_legacy_file_fields_and_paths_are_relative(converted: tuple[Path, dict]) -> None:
    root, _ = converted
    doc = sidecar_of(root / "legacy_format/model_legacy.pt")
    assert doc["source"]["format"] == "torch-legacy"
    assert doc["training"]["epoch"] == 7 and doc["training"]["global_step"] == 700
    assert doc["checkpoint_path"] == "model_legacy.pt"
    assert doc["weights_path"] == "model_legacy.weights.h5"
    assert doc["exp_name"] == "legacy_format"
    assert doc["tool"]["name"] == "ckptctl"


@pytest.mark.parametrize(("stem", "epoch", "step", "metrics"), [
    ("epoch=3-step=16-val_loss=0.40", 3, 16, {"val_loss": 0.40}),
    ("model_03_valloss_0.1234", 3, None, {"valloss": 0.1234}),
    ("checkpoint_best_pck_e089_pck0.8123_valloss0.1234", 89, None, {"pck": 0.8123, "valloss": 0.1234}),
    ("checkpoint_e001_lr1e-4_bs2_acc4_qpe2", 1, None, {}),
    ("model_epoch_02", 2, None, {}),
    ("top3_epoch_02_loss_0.1234", 2, None, {"loss": 0.1234}),
    ("last", None, None, {}),
])
def test_filename_tokens(stem: str, epoch: int | None, step: int | None, metrics: dict) -> None:
    tokens = parse_filename(stem)
    assert (tokens.epoch, tokens.global_step, tokens.metrics) == (epoch, step, metrics)
