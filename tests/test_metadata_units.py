"""Fast unit tests of metadata gathering: ``Gathered``'s precedence rules, each gatherer on
literal inputs, and ``parse_filename``.

Everything here is a literal dict or a few hand-written text files in ``tmp_path``: no torch,
no TensorFlow, no subprocess, no example tree (the end-to-end checks are in
``test_metadata.py``). The documented source order is: the checkpoint's own fields ->
Lightning's ModelCheckpoint callback state -> ``metrics.csv`` -> ``hparams.yaml`` -> the Hydra
config -> the file name. The first source to offer a field wins; a later one that disagrees
is recorded in ``conflicts``.

Five tests here (optimizer names, numpy integers, Windows paths, two ModelCheckpoint
callbacks, Hydra EarlyStopping sections) found real bugs when this layer was written; they
were fixed in the same change.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptctl.filename_tokens import parse_filename
from ckptctl.formats.pytorch.metadata import gather_from_checkpoint
from ckptctl.metadata import (
    FIELD_PATHS,
    Gathered,
    gather_common,
    gather_from_filename,
    gather_from_hydra,
    gather_from_logs,
)
from ckptctl.readers.tensor import LazyTensor, StorageRef
from ckptctl.schema import Sidecar

# --- helpers -------------------------------------------------------------------------------

#: Lightning's state key for a ModelCheckpoint callback (the repr of its settings).
MC_KEY = ("ModelCheckpoint{'monitor': 'val/hmean', 'mode': 'max', 'every_n_train_steps': 0, "
          "'every_n_epochs': 1, 'train_time_interval': None}")


def mc_state(**overrides: Any) -> dict[str, Any]:
    """ModelCheckpoint's ``state_dict()`` after epoch 2 of a val/hmean (max) run, as literals."""
    state: dict[str, Any] = {
        "monitor": "val/hmean",
        "best_model_score": 0.7,
        "best_model_path": "/x/epoch=2.ckpt",
        "best_k_models": {"/x/epoch=1.ckpt": 0.5, "/x/epoch=2.ckpt": 0.7},
        "current_score": 0.65,  # neither file's score: shows where a score really came from
        "last_model_path": "/x/last.ckpt",
    }
    state.update(overrides)
    return state


def from_checkpoint(obj: Any, name: str = "epoch=1.ckpt", read_scalar: Any = None) -> Gathered:
    """What ``gather_from_checkpoint`` gathers from ``obj`` saved as ``/run/checkpoints/<name>``
    (the folder differs from the callback's ``/x``: files are matched by base name)."""
    g = Gathered()
    gather_from_checkpoint(obj, Path("/run/checkpoints") / name, g,
                           read_scalar or (lambda t: None))
    return g


def scalar_tensor() -> LazyTensor:
    """A one-element float32 tensor record (its value comes from the test's read_scalar)."""
    return LazyTensor(StorageRef("0", "float32", 1), "float32", 0, (), ())


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


#: A CSVLogger file: a training row and a validation row per epoch, blanks elsewhere.
METRICS_CSV = """\
epoch,step,train/loss,val/loss,val/acc
0,9,0.9,,
0,9,,0.8,0.5
1,19,0.7,,
1,19,,0.4012,0.75
"""


def gathered_with_epoch(epoch: int) -> Gathered:
    g = Gathered()
    g.offer("training.epoch", epoch, "checkpoint")
    return g


# --- Gathered: the precedence rules --------------------------------------------------------


def test_first_offer_wins_and_keeps_its_source() -> None:
    g = Gathered()
    g.offer("training.epoch", 3, "checkpoint")
    g.offer("training.epoch", 3, "filename")
    assert g.get("training.epoch") == 3
    assert g.sources == {"training.epoch": "checkpoint"}
    assert g.conflicts == []


def test_disagreeing_later_offer_is_recorded_as_a_conflict_and_does_not_replace_the_value() -> None:
    g = Gathered()
    g.offer("checkpointing.monitor", "val/loss", "callback:ModelCheckpoint")
    g.offer("checkpointing.monitor", "val/acc", "hydra:.hydra/config.yaml")
    assert g.get("checkpointing.monitor") == "val/loss"
    assert g.conflicts == [{
        "field": "checkpointing.monitor",
        "kept": "val/loss", "kept_from": "callback:ModelCheckpoint",
        "other": "val/acc", "other_from": "hydra:.hydra/config.yaml",
    }]


@pytest.mark.parametrize(("kept", "other", "tolerance"), [
    (0.40, 0.4049, 0.005),        # within the tolerance the later source asks for
    (1000.0, 1000.0009, 0.0),     # within 1e-6 relative, without any tolerance
    (0.1 + 0.2, 0.3, 0.0),        # float noise
    (3, 3.0, 0.0),                # int and float of equal value
    ({"lr": 0.1}, {"lr": 0.1}, 0.0),  # non-numbers: equality
])
def test_agreeing_values_within_tolerance_or_1e6_relative_are_not_conflicts(
        kept: Any, other: Any, tolerance: float) -> None:
    g = Gathered()
    g.offer_metric("m", kept, "first")
    g.offer_metric("m", other, "second", tolerance)
    assert g.conflicts == []
    assert g.metrics() == {"m": kept}


@pytest.mark.parametrize(("kept", "other", "tolerance"), [
    (0.40, 0.406, 0.005),         # just outside the tolerance
    (1000.0, 1000.002, 0.0),      # just outside 1e-6 relative
    (0.40, 0.4012, 0.0),          # no tolerance asked: 1e-6 relative only
    ("min", "max", 0.0),
])
def test_values_beyond_tolerance_and_1e6_relative_are_conflicts(
        kept: Any, other: Any, tolerance: float) -> None:
    g = Gathered()
    g.offer_metric("m", kept, "first")
    g.offer_metric("m", other, "second", tolerance)
    assert [c["other"] for c in g.conflicts] == [other]


@pytest.mark.parametrize("ignored", [None, math.nan, math.inf, -math.inf, np.float64("nan")])
def test_none_and_non_finite_floats_are_ignored_neither_kept_nor_conflicting(ignored: Any) -> None:
    g = Gathered()
    g.offer_metric("val/loss", ignored, "checkpoint")
    assert g.metrics() == {}  # ignored: a later source can still supply the value
    g.offer_metric("val/loss", 0.4, "metrics.csv")
    g.offer_metric("val/loss", ignored, "filename")
    assert g.metrics() == {"val/loss": 0.4}
    assert g.sources == {"metrics.val/loss": "metrics.csv"}
    assert g.conflicts == []


def test_bool_is_compared_by_python_equality_with_no_numeric_tolerance() -> None:
    """``_agrees`` compares a bool with ``==``: True agrees with 1 and 1.0 (Python's bool is
    an int), but no tolerance or 1e-6 relative slack applies, so True vs 1.0000001 or vs 1.5
    with tolerance 1 is a conflict, as is True vs False."""
    g = Gathered()
    g.offer("checkpointing.best_when_saved", True, "callback")
    g.offer("checkpointing.best_when_saved", 1, "equal-int")
    g.offer("checkpointing.best_when_saved", 1.0, "equal-float")
    assert g.conflicts == []
    g.offer("checkpointing.best_when_saved", 1.0000001, "near-float")
    g.offer("checkpointing.best_when_saved", 1.5, "tolerant", tolerance=1.0)
    g.offer("checkpointing.best_when_saved", False, "false")
    assert [c["other_from"] for c in g.conflicts] == ["near-float", "tolerant", "false"]
    assert g.get("checkpointing.best_when_saved") is True


def test_offer_refuses_a_name_that_is_not_a_sidecar_field() -> None:
    g = Gathered()
    with pytest.raises(ValueError, match=r"'training\.epok'"):
        g.offer("training.epok", 1, "test")  # type: ignore[arg-type]
    assert g.values == {}


def test_offer_metric_accepts_any_metric_name_and_metrics_strips_the_prefix() -> None:
    g = Gathered()
    g.offer_metric("val/loss", 0.4, "metrics.csv")
    g.offer_metric("cleval_metrics/hmean", 0.78, "checkpoint:cleval_metrics")
    g.offer("training.epoch", 1, "checkpoint")
    assert g.values["metrics.val/loss"] == 0.4
    assert g.metrics() == {"val/loss": 0.4, "cleval_metrics/hmean": 0.78}


def test_group_returns_one_groups_fields_without_the_prefix() -> None:
    g = Gathered()
    g.offer("training.epoch", 1, "checkpoint")
    g.offer("training.framework", "lightning", "checkpoint")
    g.offer("model.architecture", "mlp", "hparams.yaml")
    g.offer_metric("model/acc", 0.9, "checkpoint")  # metrics.model/acc: not in group "model"
    assert g.group("training") == {"epoch": 1, "framework": "lightning"}
    assert g.group("model") == {"architecture": "mlp"}
    assert g.group("metrics") == g.metrics() == {"model/acc": 0.9}
    assert g.group("contents") == {}


def test_provenance_lists_each_groups_sources_in_first_seen_order_without_duplicates() -> None:
    g = Gathered()
    g.offer("training.epoch", 1, "checkpoint")
    g.offer_metric("val/loss", 0.4, "metrics.csv:logs/metrics.csv")
    g.offer("training.global_step", 19, "filename")
    g.offer("training.framework", "pytorch", "checkpoint")
    g.offer_metric("val/acc", 0.75, "metrics.csv:logs/metrics.csv")
    g.offer_metric("best_val_loss", 0.3, "checkpoint")
    g.offer_metric("val/loss", 0.5, "filename")  # a losing source: a conflict, not provenance
    assert g.provenance() == {
        "training": ["checkpoint", "filename"],
        "metrics": ["metrics.csv:logs/metrics.csv", "checkpoint"],
    }


def test_field_paths_are_exactly_the_offerable_fields_of_the_sidecar_schema() -> None:
    """A typo in a field path (here or in the schema) fails this test."""
    schema_paths = set()
    for group in ("training", "model", "checkpointing", "contents"):
        group_model = Sidecar.model_fields[group].annotation
        assert group_model is not None
        schema_paths |= {f"{group}.{name}" for name in group_model.model_fields}
    assert "contents.resumable" in schema_paths  # computed by convert, never offered
    offerable = schema_paths - {"contents.resumable"}
    assert sorted(FIELD_PATHS - offerable) == [], "offerable but not in the schema"
    assert sorted(offerable - FIELD_PATHS) == [], "in the schema but not offerable"
    assert offerable == FIELD_PATHS


# --- gather_from_checkpoint: the checkpoint's own fields -----------------------------------


def test_checkpoint_top_level_keys_become_contents_keys() -> None:
    g = from_checkpoint({"epoch": 1, "state_dict": {}, 7: "x"})
    assert g.get("contents.keys") == ["epoch", "state_dict", "7"]


@pytest.mark.parametrize("key", ["epoch", "epochs", "current_epoch"])
def test_checkpoint_epoch_key_and_its_aliases_give_training_epoch(key: str) -> None:
    g = from_checkpoint({key: 4})
    assert g.get("training.epoch") == 4
    assert g.sources["training.epoch"] == "checkpoint"


@pytest.mark.parametrize("key", ["global_step", "step", "iteration", "iter", "steps"])
def test_checkpoint_step_key_and_its_aliases_give_training_global_step(key: str) -> None:
    g = from_checkpoint({key: 120})
    assert g.get("training.global_step") == 120


def test_checkpoint_epoch_key_beats_its_alias_and_a_disagreeing_alias_is_a_conflict() -> None:
    g = from_checkpoint({"current_epoch": 5, "epoch": 4, "global_step": 10, "iteration": 10})
    assert g.get("training.epoch") == 4  # alias order, not dict order, decides
    assert g.get("training.global_step") == 10
    assert g.conflicts == [{"field": "training.epoch", "kept": 4, "kept_from": "checkpoint",
                            "other": 5, "other_from": "checkpoint"}]


@pytest.mark.parametrize(("value", "expected"), [
    (3.0, 3),       # an integral float is an epoch
    (2.5, None),    # a fraction is not
    (True, None),   # nor a bool
    ("3", None),    # nor text
])
def test_checkpoint_epoch_must_be_an_integral_number(value: Any, expected: int | None) -> None:
    g = from_checkpoint({"epoch": value})
    assert g.get("training.epoch") == expected
    assert "epoch" not in g.metrics()  # an epoch key is never a metric


@pytest.mark.parametrize("key", ["pytorch-lightning_version", "lightning_version"])
def test_lightning_version_key_gives_framework_lightning_and_its_version(key: str) -> None:
    g = from_checkpoint({"epoch": 1, key: "2.2.1"})
    assert g.group("training") == {"epoch": 1, "framework": "lightning",
                                   "framework_version": "2.2.1"}


def test_checkpoint_without_lightning_version_is_plain_pytorch_without_a_version() -> None:
    g = from_checkpoint({"epoch": 1, "model_state_dict": {}})
    assert g.get("training.framework") == "pytorch"
    assert g.get("training.framework_version") is None


@pytest.mark.parametrize(("checkpoint", "expected"), [
    ({"optimizer_states": [{"state": {}}], "lr_schedulers": [{"last_epoch": 3}],
      "rng_state": [1]},
     {"optimizer_state": True, "lr_scheduler_state": True, "rng_state": True}),
    ({"optimizer": {"lr": 0.1}, "scheduler_state_dict": {"step": 1}},
     {"optimizer_state": True, "lr_scheduler_state": True, "rng_state": False}),
    # empty or None optimizer/scheduler entries are no state; any rng key present counts
    ({"optimizer_states": [], "lr_schedulers": {}, "optimizer": None, "np_rng_state": None},
     {"optimizer_state": False, "lr_scheduler_state": False, "rng_state": True}),
    ({"epoch": 1}, {"optimizer_state": False, "lr_scheduler_state": False, "rng_state": False}),
])
def test_optimizer_scheduler_and_rng_flags(checkpoint: dict[str, Any],
                                           expected: dict[str, bool]) -> None:
    g = from_checkpoint(checkpoint)
    assert {k: v for k, v in g.group("contents").items() if k != "keys"} == expected


def test_an_optimizer_name_as_text_is_not_optimizer_state() -> None:
    g = from_checkpoint({"model": {}, "optimizer": "adamw", "scheduler": "cosine"})
    assert g.get("contents.optimizer_state") is False
    assert g.get("contents.lr_scheduler_state") is False


def test_hyper_parameters_give_model_hyper_parameters_and_architecture() -> None:
    hp = {"arch": "resnet18", "lr": 0.01, "layers": [2, 2]}
    g = from_checkpoint({"epoch": 1, "hyper_parameters": hp})
    assert g.get("model.hyper_parameters") == hp
    assert g.get("model.architecture") == "resnet18"
    assert g.sources["model.hyper_parameters"] == "checkpoint:hyper_parameters"
    assert "hyper_parameters/lr" not in g.metrics()  # hyper-parameters are not metrics


def test_args_are_hyper_parameters_when_hyper_parameters_are_absent() -> None:
    g = from_checkpoint({"epoch": 1, "args": {"model": {"name": "unet"}, "bs": 2}})
    assert g.get("model.hyper_parameters") == {"model": {"name": "unet"}, "bs": 2}
    assert g.get("model.architecture") == "unet"  # found in the nested model section
    assert g.sources["model.hyper_parameters"] == "checkpoint:args"


def test_hyper_parameters_beat_args_and_the_difference_is_a_conflict() -> None:
    g = from_checkpoint({"hyper_parameters": {"lr": 0.1}, "args": {"lr": 0.2}})
    assert g.get("model.hyper_parameters") == {"lr": 0.1}
    assert [(c["field"], c["other_from"]) for c in g.conflicts] == [
        ("model.hyper_parameters", "checkpoint:args")]


def test_top_level_floats_are_metrics_but_ints_bools_and_epoch_or_step_are_not() -> None:
    g = from_checkpoint({
        "epoch": 3.0, "global_step": 40.0,           # integral floats: counters, not metrics
        "best_val_loss": 0.31, "best_pck": np.float32(0.5),
        "num_classes": 10, "use_ema": True, "name": "run",
    })
    assert g.metrics() == {"best_val_loss": 0.31, "best_pck": 0.5}
    assert g.sources["metrics.best_val_loss"] == "checkpoint"


def test_nested_metric_dicts_become_key_slash_metric() -> None:
    g = from_checkpoint({
        "epoch": 1,
        "val_metrics": {"acc": 0.9, "f1": 0.8, "note": "ok"},
        "train_stats": {"loss": 0.2},
        "cleval_scores": {"hmean": 0.78},
        "test_results": {"map": 0.5},
        "config": {"dropout": 0.1},         # not a metric dict: no metrics from it
        "optimizer": {"lr": 0.001},
    })
    assert g.metrics() == {"val_metrics/acc": 0.9, "val_metrics/f1": 0.8,
                           "train_stats/loss": 0.2, "cleval_scores/hmean": 0.78,
                           "test_results/map": 0.5}
    assert g.sources["metrics.val_metrics/acc"] == "checkpoint:val_metrics"


def test_ints_inside_a_metric_dict_are_taken_as_metrics() -> None:
    """Unlike top-level ints, a metric dict's ints are metrics (e.g. a count of hits)."""
    g = from_checkpoint({"val_metrics": {"correct": 95, "acc": 0.95}})
    assert g.metrics() == {"val_metrics/correct": 95.0, "val_metrics/acc": 0.95}


def test_numpy_integers_at_top_level_are_not_metrics_either() -> None:
    g = from_checkpoint({"epoch": 7, "best_epoch": np.int64(3), "best_val_loss": 0.3})
    assert g.metrics() == {"best_val_loss": 0.3}


def test_scalar_tensors_are_read_with_read_scalar() -> None:
    g = from_checkpoint({"epoch": 1, "best_score": scalar_tensor()}, read_scalar=lambda t: 0.5)
    assert g.metrics() == {"best_score": 0.5}


def test_a_bare_tensor_mapping_gives_no_metrics() -> None:
    """A bare state dict: its one-element tensors are buffers, not metrics."""
    state_dict = {"bn.running_var": scalar_tensor(), "bn.momentum": scalar_tensor()}
    g = from_checkpoint(state_dict, read_scalar=lambda t: 0.5)
    assert g.metrics() == {}
    assert g.get("contents.keys") == ["bn.running_var", "bn.momentum"]
    assert g.get("training.framework") == "pytorch"


def test_a_non_mapping_checkpoint_gives_nothing() -> None:
    g = from_checkpoint([1, 2, 3])
    assert g.values == {}


# --- gather_from_checkpoint: Lightning's ModelCheckpoint callback state --------------------


@pytest.mark.parametrize(("name", "score", "best_when_saved"), [
    ("epoch=1.ckpt", 0.5, False),
    ("epoch=2.ckpt", 0.7, True),
])
def test_model_checkpoint_state_gives_this_files_score_from_best_k_models_by_base_name(
        name: str, score: float, best_when_saved: bool) -> None:
    g = from_checkpoint({"epoch": 2, "callbacks": {MC_KEY: mc_state()}}, name=name)
    assert g.group("checkpointing") == {
        "monitor": "val/hmean",
        "mode": "max",                   # from the state key's text
        "best_model_score": 0.7,
        "best_when_saved": best_when_saved,
        "save_last": True,               # a last_model_path was recorded
        "score": score,                  # best_k_models[<this base name>], not current_score
    }
    assert g.metrics() == {"val/hmean": score}
    assert g.sources["checkpointing.score"] == "callback:ModelCheckpoint"
    assert g.sources["metrics.val/hmean"] == "callback:ModelCheckpoint"
    assert g.sources["checkpointing.save_last"] == "callback:ModelCheckpoint (last_model_path)"
    assert g.conflicts == []


def test_model_checkpoint_file_not_in_best_k_models_takes_current_score() -> None:
    g = from_checkpoint({"callbacks": {MC_KEY: mc_state()}}, name="last.ckpt")
    assert g.get("checkpointing.score") == 0.65
    assert g.metrics() == {"val/hmean": 0.65}
    assert g.get("checkpointing.best_when_saved") is False


def test_model_checkpoint_monitor_and_mode_come_from_the_state_key_text_when_state_lacks_them() -> None:
    state = mc_state(monitor=None, last_model_path="", best_model_path="")
    g = from_checkpoint({"callbacks": {MC_KEY: state}}, name="epoch=1.ckpt")
    assert g.get("checkpointing.monitor") == "val/hmean"
    assert g.get("checkpointing.mode") == "max"
    assert g.get("checkpointing.score") == 0.5
    assert g.get("checkpointing.save_last") is None       # empty last_model_path: unknown
    assert g.get("checkpointing.best_when_saved") is None  # empty best_model_path: unknown


def test_callback_state_is_offered_after_the_checkpoints_top_level_metrics() -> None:
    """checkpoint -> callback state: a top-level value of the monitored metric wins."""
    g = from_checkpoint({"val/hmean": 0.55, "callbacks": {MC_KEY: mc_state()}},
                        name="epoch=1.ckpt")
    assert g.metrics() == {"val/hmean": 0.55}
    assert g.conflicts == [{"field": "metrics.val/hmean", "kept": 0.55, "kept_from": "checkpoint",
                            "other": 0.5, "other_from": "callback:ModelCheckpoint"}]


def test_callbacks_that_are_not_model_checkpoint_are_ignored() -> None:
    g = from_checkpoint({"callbacks": {
        "EarlyStopping{'monitor': 'val/hmean', 'mode': 'max'}": {"wait_count": 0,
                                                                 "best_score": 0.7},
    }})
    assert g.group("checkpointing") == {}


def test_model_checkpoint_paths_written_on_windows_are_matched_by_base_name() -> None:
    state = mc_state(best_model_path="C:\\x\\epoch=2.ckpt", last_model_path="",
                     best_k_models={"C:\\x\\epoch=1.ckpt": 0.5, "C:\\x\\epoch=2.ckpt": 0.7})
    g = from_checkpoint({"callbacks": {MC_KEY: state}}, name="epoch=2.ckpt")
    assert g.get("checkpointing.best_when_saved") is True
    assert g.get("checkpointing.score") == 0.7


def test_a_second_model_checkpoint_callback_does_not_create_conflicts() -> None:
    by_loss = ("ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min', 'every_n_train_steps': 0, "
               "'every_n_epochs': 1, 'train_time_interval': None}")
    by_acc = by_loss.replace("val/loss", "val/acc").replace("'min'", "'max'")
    g = from_checkpoint({"callbacks": {
        by_loss: {"monitor": "val/loss", "best_model_score": 0.3, "best_model_path": "/x/a.ckpt",
                  "best_k_models": {"/x/a.ckpt": 0.3}, "current_score": 0.3,
                  "last_model_path": ""},
        by_acc: {"monitor": "val/acc", "best_model_score": 0.9, "best_model_path": "/x/b.ckpt",
                 "best_k_models": {"/x/b.ckpt": 0.9}, "current_score": 0.8,
                 "last_model_path": ""},
    }}, name="a.ckpt")
    assert g.get("checkpointing.monitor") == "val/loss"  # the callback that saved this file
    assert g.get("checkpointing.score") == 0.3
    assert g.conflicts == []


# --- metrics.csv and hparams.yaml (gather_from_logs) ---------------------------------------


def test_metrics_csv_rows_of_the_gathered_epoch_are_merged(tmp_path: Path) -> None:
    write(tmp_path, "logs/metrics.csv", METRICS_CSV)
    g = gathered_with_epoch(1)
    gather_from_logs(tmp_path / "checkpoints/epoch=1.ckpt", tmp_path, g)
    # the training row and the validation row of epoch 1; epoch 0 and epoch/step are not taken
    assert g.metrics() == {"train/loss": 0.7, "val/loss": 0.4012, "val/acc": 0.75}
    assert set(g.provenance()["metrics"]) == {"metrics.csv:logs/metrics.csv"}


def test_call_order_metrics_csv_is_read_only_for_an_epoch_gathered_before_it(
        tmp_path: Path) -> None:
    """Call-order dependency: gather_from_logs picks rows by the epoch already in ``g``;
    called before any source gave an epoch, it takes no metrics.csv rows at all."""
    write(tmp_path, "logs/metrics.csv", METRICS_CSV)
    g = Gathered()
    gather_from_logs(tmp_path / "checkpoints/epoch=1.ckpt", tmp_path, g)
    assert g.metrics() == {}


def test_call_order_an_epoch_only_in_the_file_name_comes_too_late_for_metrics_csv(
        tmp_path: Path) -> None:
    """Call-order dependency: gather_common reads the logs before the file name, so a
    checkpoint with no epoch field gets no metrics.csv rows even though its name says
    ``epoch=1``."""
    write(tmp_path, "logs/metrics.csv", METRICS_CSV)
    g = Gathered()
    gather_common(tmp_path / "checkpoints/epoch=1-step=19.ckpt", "epoch=1-step=19", tmp_path, g)
    assert g.get("training.epoch") == 1
    assert g.sources["training.epoch"] == "filename"
    assert g.metrics() == {}


def test_checkpoint_metric_beats_metrics_csv_and_the_disagreement_is_a_conflict(
        tmp_path: Path) -> None:
    write(tmp_path, "logs/metrics.csv", METRICS_CSV)
    g = from_checkpoint({"epoch": 1, "val/loss": 0.35, "val/acc": 0.75})
    gather_from_logs(tmp_path / "checkpoints/epoch=1.ckpt", tmp_path, g)
    assert g.metrics() == {"val/loss": 0.35, "val/acc": 0.75, "train/loss": 0.7}
    assert g.conflicts == [{"field": "metrics.val/loss",
                            "kept": 0.35, "kept_from": "checkpoint",
                            "other": 0.4012, "other_from": "metrics.csv:logs/metrics.csv"}]


def test_the_metrics_csv_nearest_to_the_checkpoint_is_used(tmp_path: Path) -> None:
    write(tmp_path, "version_0/metrics.csv", "epoch,step,val/loss\n1,9,0.9\n")
    write(tmp_path, "version_1/metrics.csv", "epoch,step,val/loss\n1,9,0.4\n")
    g = gathered_with_epoch(1)
    gather_from_logs(tmp_path / "version_1/checkpoints/epoch=1.ckpt", tmp_path, g)
    assert g.metrics() == {"val/loss": 0.4}
    assert g.sources["metrics.val/loss"] == "metrics.csv:version_1/metrics.csv"


def test_hparams_yaml_gives_hyper_parameters_and_architecture(tmp_path: Path) -> None:
    write(tmp_path, "logs/hparams.yaml", "model_name: mlp\nhidden: 32\nlr: 0.001\n")
    g = Gathered()
    gather_from_logs(tmp_path / "checkpoints/last.ckpt", tmp_path, g)
    assert g.get("model.hyper_parameters") == {"model_name": "mlp", "hidden": 32, "lr": 0.001}
    assert g.get("model.architecture") == "mlp"
    assert g.sources["model.architecture"] == "hparams.yaml:logs/hparams.yaml"


def test_checkpoint_hyper_parameters_beat_hparams_yaml_with_a_conflict(tmp_path: Path) -> None:
    write(tmp_path, "logs/hparams.yaml", "model_name: mlp\nlr: 0.002\n")
    g = from_checkpoint({"hyper_parameters": {"model_name": "mlp", "lr": 0.001}})
    gather_from_logs(tmp_path / "checkpoints/last.ckpt", tmp_path, g)
    assert g.get("model.hyper_parameters") == {"model_name": "mlp", "lr": 0.001}
    assert [c["field"] for c in g.conflicts] == ["model.hyper_parameters"]  # architecture agrees


def test_hparams_yaml_with_a_python_tag_is_skipped_with_a_note_and_runs_nothing(
        tmp_path: Path) -> None:
    marker = tmp_path / "created-by-yaml"
    write(tmp_path, "logs/hparams.yaml",
          "args: !!python/object:argparse.Namespace {lr: 0.1}\n"
          f"hook: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n")
    g = Gathered()
    gather_from_logs(tmp_path / "checkpoints/last.ckpt", tmp_path, g)
    assert not marker.exists()
    assert g.values == {}
    assert len(g.notes) == 1
    assert "hparams.yaml: not read" in g.notes[0]


# --- the Hydra config (gather_from_hydra) --------------------------------------------------

HYDRA_CONFIG = """\
model:
  _target_: models.dbnet.DBNet
  encoder:
    model_name: mobilenetv3_small_050
  width: 8
callbacks:
  model_checkpoint:
    _target_: lightning.pytorch.callbacks.ModelCheckpoint
    monitor: val/hmean
    mode: max
    save_top_k: 2
    save_last: true
"""


def test_hydra_model_section_gives_model_config_and_architecture(tmp_path: Path) -> None:
    write(tmp_path, ".hydra/config.yaml", HYDRA_CONFIG)
    g = Gathered()
    gather_from_hydra(tmp_path / "checkpoints/last.ckpt", tmp_path, g)  # found upwards
    assert g.get("model.config") == {"_target_": "models.dbnet.DBNet",
                                     "encoder": {"model_name": "mobilenetv3_small_050"},
                                     "width": 8}
    assert g.get("model.architecture") == "DBNet"  # last part of _target_
    assert g.sources["model.config"] == "hydra:.hydra/config.yaml"


def test_hydra_callback_section_with_a_monitor_gives_checkpointing_settings(
        tmp_path: Path) -> None:
    write(tmp_path, ".hydra/config.yaml", HYDRA_CONFIG)
    g = Gathered()
    gather_from_hydra(tmp_path / "checkpoints/last.ckpt", tmp_path, g)
    assert g.group("checkpointing") == {"monitor": "val/hmean", "mode": "max",
                                        "save_top_k": 2, "save_last": True}


def test_hydra_uses_only_the_callback_section_for_the_monitor_already_known(
        tmp_path: Path) -> None:
    write(tmp_path, ".hydra/config.yaml", """\
callbacks:
  by_loss: {monitor: val/loss, mode: min, save_top_k: 1}
  by_hmean: {monitor: val/hmean, mode: max, save_top_k: 3}
""")
    g = from_checkpoint({"callbacks": {MC_KEY: mc_state(last_model_path="")}})
    gather_from_hydra(tmp_path / "checkpoints/epoch=1.ckpt", tmp_path, g)
    assert g.get("checkpointing.save_top_k") == 3
    assert g.sources["checkpointing.save_top_k"] == "hydra:.hydra/config.yaml"
    assert g.conflicts == []


def test_hydra_early_stopping_section_is_not_taken_for_the_checkpoint_callback(
        tmp_path: Path) -> None:
    write(tmp_path, ".hydra/config.yaml", """\
callbacks:
  early_stopping:
    _target_: lightning.pytorch.callbacks.EarlyStopping
    monitor: val/loss
    mode: min
    patience: 3
  model_checkpoint:
    _target_: lightning.pytorch.callbacks.ModelCheckpoint
    monitor: val/loss
    mode: min
    save_top_k: 3
    save_last: true
""")
    g = Gathered()
    gather_from_hydra(tmp_path / "checkpoints/last.ckpt", tmp_path, g)
    assert g.get("checkpointing.save_top_k") == 3
    assert g.get("checkpointing.save_last") is True


def test_hparams_yaml_architecture_beats_hydra_with_a_conflict(tmp_path: Path) -> None:
    write(tmp_path, "logs/hparams.yaml", "arch: mlp\n")
    write(tmp_path, ".hydra/config.yaml", "model:\n  name: dbnet\n")
    g = Gathered()
    gather_common(tmp_path / "checkpoints/last.ckpt", "last", tmp_path, g)
    assert g.get("model.architecture") == "mlp"
    assert g.conflicts == [{"field": "model.architecture",
                            "kept": "mlp", "kept_from": "hparams.yaml:logs/hparams.yaml",
                            "other": "dbnet", "other_from": "hydra:.hydra/config.yaml"}]


def test_hydra_config_outside_the_experiment_root_is_not_used(tmp_path: Path) -> None:
    write(tmp_path, ".hydra/config.yaml", HYDRA_CONFIG)
    g = Gathered()
    gather_from_hydra(tmp_path / "exp/checkpoints/last.ckpt", tmp_path / "exp", g)
    assert g.values == {}


# --- the file name (gather_from_filename), last ------------------------------------------


def test_file_name_metric_agreeing_within_its_rounding_is_not_a_conflict() -> None:
    g = Gathered()
    g.offer_metric("val_loss", 0.4012, "metrics.csv")
    gather_from_filename(Path("epoch=1-val_loss=0.40.ckpt"), "epoch=1-val_loss=0.40", g)
    assert g.metrics() == {"val_loss": 0.4012}
    assert g.conflicts == []


def test_file_name_metric_beyond_its_rounding_is_a_conflict() -> None:
    g = Gathered()
    g.offer_metric("val_loss", 0.4012, "metrics.csv")
    gather_from_filename(Path("epoch=1-val_loss=0.50.ckpt"), "epoch=1-val_loss=0.50", g)
    assert g.metrics() == {"val_loss": 0.4012}
    assert g.conflicts == [{"field": "metrics.val_loss", "kept": 0.4012, "kept_from": "metrics.csv",
                            "other": 0.5, "other_from": "filename"}]


@pytest.mark.parametrize(("stem", "conflicts"), [
    ("model_01_valloss_0.40", 0),   # 0.40 ~ 0.4012 at two decimals
    ("model_01_valloss_0.50", 1),
])
def test_file_name_valloss_is_matched_to_the_logged_val_slash_loss(stem: str, conflicts: int) -> None:
    g = gathered_with_epoch(1)
    g.offer_metric("val/loss", 0.4012, "metrics.csv")
    gather_from_filename(Path(stem + ".h5"), stem, g)
    assert g.metrics() == {"val/loss": 0.4012}  # never a second "valloss" metric
    assert [c["field"] for c in g.conflicts] == ["metrics.val/loss"] * conflicts


def test_file_name_metric_is_matched_to_its_best_tracker() -> None:
    g = Gathered()
    g.offer_metric("best_pck", 0.8123, "checkpoint")
    stem = "checkpoint_best_pck_e089_pck0.8123"
    gather_from_filename(Path(stem + ".pth"), stem, g)
    assert g.metrics() == {"best_pck": 0.8123}
    assert g.get("training.epoch") == 89


def test_file_name_metric_not_known_under_any_spelling_is_added_from_the_file_name() -> None:
    g = Gathered()
    g.offer_metric("val/loss", 0.4012, "metrics.csv")
    gather_from_filename(Path("epoch=1-hmean=0.78.ckpt"), "epoch=1-hmean=0.78", g)
    assert g.metrics() == {"val/loss": 0.4012, "hmean": 0.78}
    assert g.sources["metrics.hmean"] == "filename"


def test_file_name_epoch_loses_to_the_checkpoints_with_a_conflict() -> None:
    g = from_checkpoint({"epoch": 2, "global_step": 30})
    gather_from_filename(Path("epoch=3-step=30.ckpt"), "epoch=3-step=30", g)
    assert g.get("training.epoch") == 2
    assert g.conflicts == [{"field": "training.epoch", "kept": 2, "kept_from": "checkpoint",
                            "other": 3, "other_from": "filename"}]


def test_documented_source_order_end_to_end_on_a_small_tree(tmp_path: Path) -> None:
    """checkpoint -> callback state -> metrics.csv -> hparams.yaml -> Hydra -> file name."""
    write(tmp_path, "logs/metrics.csv", METRICS_CSV)
    write(tmp_path, "logs/hparams.yaml", "lr: 0.001\n")
    write(tmp_path, ".hydra/config.yaml", HYDRA_CONFIG)
    # Lightning logs an epoch's validation at the step before its checkpoint's global_step
    # (the CSV's epoch 1 rows are at step 19; its end-of-epoch checkpoint is step 20)
    stem = "epoch=1-step=20-val_loss=0.40-lr=0.02"
    path = tmp_path / "checkpoints" / f"{stem}.ckpt"
    callback_state = mc_state(best_k_models={f"/x/{path.name}": 0.78}, last_model_path="")
    g = Gathered()
    gather_from_checkpoint({"epoch": 1, "global_step": 20, "pytorch-lightning_version": "2.2.1",
                            "best_val_loss": 0.38, "callbacks": {MC_KEY: callback_state}},
                           path, g, lambda t: None)
    gather_common(path, stem, tmp_path, g)

    assert g.metrics() == {"best_val_loss": 0.38, "val/hmean": 0.78, "train/loss": 0.7,
                           "val/loss": 0.4012, "val/acc": 0.75, "lr": 0.02}
    assert g.provenance() == {
        "contents": ["checkpoint"],
        "training": ["checkpoint"],
        "checkpointing": ["callback:ModelCheckpoint", "hydra:.hydra/config.yaml"],
        "metrics": ["checkpoint", "callback:ModelCheckpoint", "metrics.csv:logs/metrics.csv",
                    "filename"],
        "model": ["hparams.yaml:logs/hparams.yaml", "hydra:.hydra/config.yaml"],
    }
    assert g.get("model.architecture") == "DBNet"  # hparams.yaml had none: Hydra gives it
    assert g.get("checkpointing.save_top_k") == 2
    assert g.conflicts == []


def test_a_mid_epoch_checkpoint_gets_only_the_rows_logged_before_it(tmp_path: Path) -> None:
    """Stops: a checkpoint saved mid-epoch (``every_n_train_steps``) labelled with its
    epoch's validation values, which were logged after it was saved (a metric from the
    wrong step). Rows as a real Lightning CSVLogger writes them: validation of an epoch at
    the step before the end-of-epoch checkpoint's global_step."""
    write(tmp_path, "logs/metrics.csv", """\
epoch,step,train_loss,val_loss
1,4,0.98,
1,5,0.84,
1,6,0.85,
1,7,0.59,
1,7,,0.77
""")
    path = tmp_path / "checkpoints" / "mid.ckpt"
    g = Gathered()
    gather_from_checkpoint({"epoch": 1, "global_step": 6}, path, g, lambda t: None)
    gather_common(path, "mid", tmp_path, g)
    assert g.metrics() == {"train_loss": 0.84}  # step 5, the last logged before step 6
    end = Gathered()
    gather_from_checkpoint({"epoch": 1, "global_step": 8}, path, end, lambda t: None)
    gather_common(path, "mid", tmp_path, end)
    assert end.metrics() == {"train_loss": 0.59, "val_loss": 0.77}


# --- parse_filename ------------------------------------------------------------------------


def test_parse_lightning_key_value_file_name() -> None:
    tokens = parse_filename("epoch=3-step=16-val_loss=0.40")
    assert (tokens.epoch, tokens.global_step) == (3, 16)
    assert tokens.metrics == {"val_loss": 0.40}
    assert tokens.decimals == {"val_loss": 2}


def test_parse_keras_name_epoch_metric_file_name() -> None:
    tokens = parse_filename("model_03_valloss_0.1234")
    assert (tokens.epoch, tokens.global_step) == (3, None)
    assert tokens.metrics == {"valloss": 0.1234}
    assert tokens.decimals == {"valloss": 4}


def test_parse_glued_file_name() -> None:
    tokens = parse_filename("checkpoint_best_pck_e089_pck0.8123_valloss0.1234")
    assert tokens.epoch == 89
    assert tokens.metrics == {"pck": 0.8123, "valloss": 0.1234}
    assert tokens.decimals == {"pck": 4, "valloss": 4}


@pytest.mark.parametrize("stem", [
    "run_bs2_acc4_e010_loss0.25",
    "run-bs=2-acc=4-epoch=10-loss=0.25",
])
def test_parse_integer_settings_like_bs2_and_acc4_are_not_metrics(stem: str) -> None:
    tokens = parse_filename(stem)
    assert tokens.epoch == 10
    assert tokens.metrics == {"loss": 0.25}


@pytest.mark.parametrize(("stem", "epoch", "step"), [
    ("step_5000", None, 5000),
    ("epoch_07", 7, None),
    ("iter=200", None, 200),
    ("last", None, None),
])
def test_parse_counters_named_by_their_word(stem: str, epoch: int | None, step: int | None) -> None:
    tokens = parse_filename(stem)
    assert (tokens.epoch, tokens.global_step, tokens.metrics) == (epoch, step, {})
