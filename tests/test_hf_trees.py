"""A tree the real libraries wrote (``examples/build_hf_tree.py``: a ``transformers.Trainer``
run with TensorBoard, ``save_pretrained`` single and sharded, sharded ``.bin`` sets with tied
weights, Lightning runs logged only to TensorBoard and only to W&B offline) converts,
validates, and ``catalog --best`` ranks every run by the metric it logged. Every expected
value comes from the builder's manifest, which records what the libraries themselves logged
(read back with their own readers), never from ckptctl."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import outputs_for, run_cli, sidecar_of

import ckptctl

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hf_trees")]

Built = tuple[Path, dict[str, Any]]


@pytest.fixture(scope="module")
def converted(hf_tree: Built, tmp_path_factory: pytest.TempPathFactory) -> Built:
    source, manifest = hf_tree
    root = tmp_path_factory.mktemp("hf_converted") / "outputs"
    shutil.copytree(source, root, symlinks=True)
    result = run_cli("convert", "--outputs-dir", root)
    assert result.exit_code == 0, result.output + result.stderr
    return root, manifest


def test_every_checkpoint_is_found_once_and_validates(converted: Built) -> None:
    root, manifest = converted
    trainer = manifest["hf_trainer"]
    expected = {f"{d}.metadata.yaml" for d in trainer["checkpoints"]}
    expected |= {f"{trainer['run_dir']}/model.metadata.yaml"}  # the run's final model
    for folder, info in manifest["pretrained"].items():
        index = info.get("index_file")
        name = Path(index).name if index else "model.safetensors"
        stem = name.split(".")[0]
        expected.add(f"{folder}/{stem}.metadata.yaml")
    for section in ("lightning_tb", "lightning_wandb"):
        expected |= {str(Path(p).with_suffix(".metadata.yaml"))
                     for p in manifest[section]["checkpoints"]}
    found = {p.relative_to(root).as_posix() for p in root.rglob("*.metadata.yaml")}
    assert found == expected
    assert run_cli("validate", "--strict", "--deep", root).exit_code == 0


def test_trainer_checkpoints_carry_their_own_step_metrics(converted: Built) -> None:
    root, manifest = converted
    trainer = manifest["hf_trainer"]
    for folder, info in trainer["checkpoints"].items():
        sidecar = sidecar_of(root / folder)
        assert sidecar["source"]["format"] == "hf-trainer"
        assert sidecar["checkpoint_path"] == Path(folder).name
        assert sidecar["training"]["global_step"] == info["global_step"]
        if float(info["epoch"]).is_integer():
            assert sidecar["training"]["epoch"] == int(info["epoch"])
        else:
            assert "epoch" not in sidecar["training"]
        for name in ("eval_loss", "eval_accuracy"):
            assert sidecar["metrics"][name] == info["eval_metrics"][name], (folder, name)
        checkpointing = sidecar["checkpointing"]
        assert checkpointing["monitor"] == "eval_loss" and checkpointing["mode"] == "min"
        assert checkpointing["score"] == info["eval_metrics"]["eval_loss"]
        assert checkpointing["best_model_score"] == info["best_metric"]
        assert checkpointing["best_when_saved"] == (
            Path(info["best_model_checkpoint"]).name == Path(folder).name)
        assert sidecar["contents"]["resumable"] is True
        # save_total_limit keeps the newest N, not the best N: never labelled save_top_k
        assert "save_top_k" not in checkpointing
        assert sidecar["model"]["hyper_parameters"]["save_total_limit"] == 2
        assert sidecar["model"]["architecture"] == "BertForSequenceClassification"
        files = sorted(f"{Path(folder).name}/{n}" for n in info["files"])
        assert sidecar["source"]["files"] == files


def test_trainer_weights_are_bit_exact(converted: Built) -> None:
    from safetensors.torch import load_file

    root, manifest = converted
    for folder in manifest["hf_trainer"]["checkpoints"]:
        weights, _ = outputs_for(root / folder)
        loaded = ckptctl.load_state_dict(weights)
        reference = load_file(root / folder / "model.safetensors")
        assert list(loaded) == list(reference)
        assert all(torch.equal(loaded[k], v) for k, v in reference.items())


def test_the_run_folder_is_not_labelled_with_the_last_steps_metrics(converted: Built) -> None:
    """Stops: a Trainer run's output folder (after ``save_model()`` + ``save_state()``)
    taken for a checkpoint: its weights are the best model's (``load_best_model_at_end``),
    its ``trainer_state.json`` the last step's, so the two would be wrongly paired."""
    root, manifest = converted
    run = manifest["hf_trainer"]["run_dir"]
    sidecar = sidecar_of(root / run / "model.safetensors")
    assert sidecar["source"]["format"] == "safetensors"
    assert "global_step" not in sidecar["training"]
    assert "eval_loss" not in sidecar["metrics"]


def test_catalog_ranks_trainer_runs_by_eval_loss(converted: Built) -> None:
    root, manifest = converted
    result = run_cli("catalog", root, "--best", "eval_loss", "--format", "json")
    rows = json.loads(result.stdout)
    best = manifest["hf_trainer"]["best_checkpoint"]
    assert [(r["exp_name"], Path(r["checkpoint_path"]).name) for r in rows] == [
        ("hf_trainer_bert", Path(best).name)]


@pytest.mark.parametrize("section", ["lightning_tb", "lightning_wandb"])
def test_lightning_runs_get_their_epochs_values_from_the_logger(converted: Built,
                                                                 section: str) -> None:
    """TensorBoard or W&B is the only logger: ``val_acc`` (not in the checkpoint) comes from
    it, matched by the checkpoint's epoch and the steps before its global step."""
    root, manifest = converted
    for path, info in manifest[section]["checkpoints"].items():
        logged = info["tb"] if section == "lightning_tb" else info["wandb_row"]
        sidecar = sidecar_of(root / path)
        assert sidecar["training"]["epoch"] == info["epoch"]
        assert sidecar["metrics"]["val_acc"] == pytest.approx(logged["val_acc"], rel=1e-6)
        assert sidecar["metrics"]["val_loss"] == pytest.approx(logged["val_loss"], rel=1e-6)
        expected = "tensorboard:" if section == "lightning_tb" else "wandb:"
        assert any(s.startswith(expected) for s in sidecar["provenance"]["metrics"]), sidecar
        assert sidecar["conflicts"] == []


def test_catalog_ranks_lightning_runs_by_val_loss(converted: Built) -> None:
    root, manifest = converted
    rows = json.loads(run_cli("catalog", root, "--best", "val_loss", "--format", "json").stdout)
    best = {r["exp_name"]: r for r in rows}
    assert set(best) == {"lightning_tb", "lightning_wandb"}
    tb = manifest["lightning_tb"]["checkpoints"]
    expected = min(tb, key=lambda p: tb[p]["tb"]["val_loss"])
    assert Path(best["lightning_tb"]["checkpoint_path"]).name == Path(expected).name


def test_a_mid_epoch_checkpoint_gets_no_later_validation_values(converted: Built,
                                                                 tmp_path: Path) -> None:
    """Stops: a checkpoint saved before its epoch's validation labelled with that
    validation's values (a metric from the wrong step). The same Lightning checkpoint,
    re-saved with a global step inside its epoch, must get only the training values."""
    root, manifest = converted
    path, info = next(iter(manifest["lightning_tb"]["checkpoints"].items()))
    source = root / path
    state = torch.load(source, weights_only=True)
    state["global_step"] = info["global_step"] - 2  # two steps before the epoch's end
    state.pop("callbacks", None)  # its callback score is the end-of-epoch one
    mid = source.with_name("mid.ckpt")
    torch.save(state, mid)
    assert run_cli("convert", "--checkpoint", mid).exit_code == 0
    metrics = sidecar_of(mid)["metrics"]
    assert "val_loss" not in metrics and "val_acc" not in metrics
