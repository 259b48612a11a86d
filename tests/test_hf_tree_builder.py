"""``examples/build_hf_tree.py``: the built tree is what its manifest says, checked with the
libraries themselves as references (``safetensors``, ``torch.load``, TensorBoard's
``EventAccumulator``) and against the documented behaviour of the writers (Trainer's
``save_total_limit`` + best kept, Lightning's ``save_top_k``, W&B's offline run folder)."""

from __future__ import annotations

import hashlib
import json
import math
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

# Every test here uses the tree built by transformers/Lightning/wandb (~20 s, once per session).
pytestmark = pytest.mark.slow

Built = tuple[Path, dict[str, Any]]

TRAINER_FILES = ["config.json", "model.safetensors", "optimizer.pt", "rng_state.pth",
                 "scheduler.pt", "trainer_state.json", "training_args.bin"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensor_sha(t: Any) -> str:
    return _sha(t.detach().contiguous().numpy().tobytes())


def _infos(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                "sha256": _tensor_sha(t)} for n, t in sorted(state.items())}


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _manifest_scalars(section: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e["step"], e["value"]) for e in events]
            for tag, events in section["tensorboard"]["scalars"].items()}


def _pickle_globals(data: bytes) -> set[str]:
    """Module/name pairs a pickle would import, found without unpickling it."""
    found: set[str] = set()
    strings: list[str] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(str(arg))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.add(f"{strings[-2]}.{strings[-1]}")
        elif op.name == "GLOBAL":
            found.add(str(arg).replace(" ", "."))
    return found


# --------------------------------------------------------------------------- whole tree


def test_every_file_is_in_the_manifest_with_its_digest(hf_tree: Built) -> None:
    root, manifest = hf_tree
    on_disk = {p.relative_to(root).as_posix(): p for p in root.rglob("*")
               if p.is_file() and not p.is_symlink() and p.name != "MANIFEST.json"}
    assert sorted(on_disk) == sorted(manifest["files"])
    for rel, path in on_disk.items():
        assert manifest["files"][rel] == {"size": path.stat().st_size,
                                          "sha256": _sha(path.read_bytes())}, rel
    assert json.loads((root / "MANIFEST.json").read_text()) == manifest
    assert set(manifest) >= {"format_version", "seed", "versions", "timings", "hf_trainer",
                             "pretrained", "lightning_tb", "lightning_wandb", "files"}


# --------------------------------------------------------------------------- HF Trainer


def test_trainer_keeps_exactly_best_and_last_checkpoints(hf_tree: Built) -> None:
    root, manifest = hf_tree
    tr = manifest["hf_trainer"]
    run = root / tr["run_dir"]
    steps = tr["saved_steps"]
    assert steps == list(range(4, tr["max_steps"] + 1, 4))  # save_steps=4 up to the last step
    on_disk = sorted(p.relative_to(root).as_posix() for p in run.glob("checkpoint-*"))
    assert on_disk == sorted(tr["checkpoints"])
    # save_total_limit=2 with load_best_model_at_end: the best one is never rotated away;
    # the newest is kept; when the newest is the best, the two newest are kept.
    best, last = tr["best_checkpoint"], tr["last_checkpoint"]
    expected = {best, last} if best != last else {
        f"{tr['run_dir']}/checkpoint-{s}" for s in steps[-2:]}
    assert set(on_disk) == expected
    assert sorted(tr["deleted_checkpoints"]) == sorted(
        f"{tr['run_dir']}/checkpoint-{s}" for s in steps
        if f"{tr['run_dir']}/checkpoint-{s}" not in expected)
    # The best is the minimum eval_loss among the evaluations of the run (greater_is_better=False).
    evals = [e for e in tr["log_history"] if "eval_loss" in e]
    assert [e["step"] for e in evals] == steps
    best_eval = min(evals, key=lambda e: e["eval_loss"])
    assert best == f"{tr['run_dir']}/checkpoint-{best_eval['step']}"


def test_trainer_checkpoint_folders_match_trainer_state(hf_tree: Built) -> None:
    root, manifest = hf_tree
    tr = manifest["hf_trainer"]
    for rel, entry in tr["checkpoints"].items():
        folder = root / rel
        assert entry["files"] == TRAINER_FILES == sorted(p.name for p in folder.iterdir())
        for name, digest in entry["sha256"].items():
            assert _sha((folder / name).read_bytes()) == digest
        state = json.loads((folder / "trainer_state.json").read_text())
        step = int(folder.name.split("-")[1])
        assert state["global_step"] == entry["global_step"] == step
        assert state["epoch"] == entry["epoch"] == step / tr["steps_per_epoch"]
        assert state["best_metric"] == entry["best_metric"]
        # best_model_checkpoint is stored as the path the Trainer was given (absolute here).
        assert Path(state["best_model_checkpoint"]).name == Path(tr["best_checkpoint"]).name
        evals = [e for e in state["log_history"] if e.get("step") == step and "eval_loss" in e]
        assert evals == [entry["eval_metrics"]]
        assert set(entry["eval_metrics"]) == {"epoch", "step", "eval_loss", "eval_accuracy",
                                              "eval_runtime", "eval_samples_per_second",
                                              "eval_steps_per_second"}
        # best_metric at that step is the minimum of the evaluations so far.
        so_far = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e]
        assert state["best_metric"] == min(so_far)
        # Training log entries every logging_steps=2 steps.
        assert [e["step"] for e in state["log_history"] if "loss" in e] == list(
            range(2, step + 1, 2))


def test_trainer_weights_are_the_model_at_each_save(hf_tree: Built) -> None:
    from safetensors.torch import load_file

    root, manifest = hf_tree
    tr = manifest["hf_trainer"]
    for rel, entry in tr["checkpoints"].items():
        assert _infos(load_file(root / rel / "model.safetensors")) == entry["tensors"], rel
    # load_best_model_at_end: save_model() at the end writes the best checkpoint's weights.
    final = load_file(root / tr["run_dir"] / "model.safetensors")
    assert _infos(final) == tr["final"]["tensors"] == tr["checkpoints"][tr["best_checkpoint"]][
        "tensors"]
    assert tr["final"]["files"] == ["all_results.json", "config.json", "eval_results.json",
                                    "model.safetensors", "train_results.json",
                                    "trainer_state.json", "training_args.bin"]
    best = tr["checkpoints"][tr["best_checkpoint"]]
    assert tr["final"]["results"]["eval_results.json"]["eval_loss"] == best["best_metric"]


def test_training_args_bin_is_a_pickled_training_arguments(hf_tree: Built) -> None:
    root, manifest = hf_tree
    tr = manifest["hf_trainer"]
    for rel in [*tr["checkpoints"], tr["run_dir"]]:
        with zipfile.ZipFile(root / rel / "training_args.bin") as zf:  # torch.save zip format
            (pkl,) = [n for n in zf.namelist() if n.endswith("/data.pkl")]
            names = _pickle_globals(zf.read(pkl))
        assert "transformers.training_args.TrainingArguments" in names, names


def test_trainer_tensorboard_scalars(hf_tree: Built) -> None:
    root, manifest = hf_tree
    tr = manifest["hf_trainer"]
    logdir = root / tr["tensorboard"]["logdir"]
    # transformers 5 default: <output_dir>/runs/<Mon DD_HH-MM-SS>_<host>/
    assert re.fullmatch(r"runs/[A-Z][a-z]{2}\d{2}_\d{2}-\d{2}-\d{2}_.+",
                        logdir.relative_to(root / tr["run_dir"]).as_posix())
    assert _scalars(logdir) == _manifest_scalars(tr)
    scalars = _manifest_scalars(tr)
    # Tags are the log keys rewritten: eval_x -> eval/x, everything else -> train/x.
    assert {"eval/loss", "eval/accuracy", "train/loss", "train/learning_rate", "train/epoch",
            "train/grad_norm", "train/train_loss"} <= set(scalars)
    evals = [e for e in tr["log_history"] if "eval_loss" in e]
    during = scalars["eval/loss"][:len(evals)]
    assert [s for s, _ in during] == [e["step"] for e in evals]
    for (_, value), entry in zip(during, evals, strict=True):
        assert math.isclose(value, entry["eval_loss"], rel_tol=1e-6)  # float32 on disk
    # The post-train evaluate() of the best model is logged again at the last step (its own
    # event file: the writer was closed at on_train_end and reopened).
    (extra_step, extra_value), = scalars["eval/loss"][len(evals):]
    assert extra_step == tr["max_steps"]
    assert math.isclose(extra_value, tr["post_train_evaluate"]["eval_loss"], rel_tol=1e-6)
    assert len(tr["tensorboard"]["event_files"]) == 2


# --------------------------------------------------------------------------- save_pretrained


def test_pretrained_files_store_the_model_weights(hf_tree: Built) -> None:
    import torch
    from safetensors.torch import load_file

    root, manifest = hf_tree
    pre = manifest["pretrained"]
    assert set(pre) == {"hf_pretrained", "hf_pretrained_sharded", "hf_bin_sharded",
                        "gpt2_pretrained", "gpt2_bin_sharded"}
    for rel, entry in pre.items():
        folder = root / rel
        assert sorted(p.name for p in folder.iterdir()) == entry["files"], rel
        assert entry["reloads_with_from_pretrained"], rel
        stored: dict[str, Any] = {}
        for name in entry["weights_files"]:
            path = folder / name
            if name.endswith(".safetensors"):
                state = load_file(path)
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
            assert sorted(state) == entry["stored"][name]["names"], (rel, name)
            assert not set(state) & set(stored), "a name stored in two shards"
            stored.update(state)
        assert _infos(stored) == {n: i for n, i in entry["tensors"].items() if n in stored}
        if entry["index"] is not None:
            weight_map = entry["index"]["weight_map"]
            assert weight_map == json.loads((folder / entry["index_file"]).read_text())[
                "weight_map"]
            assert sorted(weight_map) == sorted(stored)
            for tensor_name, shard in weight_map.items():
                assert tensor_name in entry["stored"][shard]["names"]
            assert len(entry["weights_files"]) > 1
            pattern = (r"model-\d{5}-of-\d{5}\.safetensors" if entry["kind"] == "safetensors-sharded"
                       else r"pytorch_model-\d{5}-of-\d{5}\.bin")
            assert all(re.fullmatch(pattern, n) for n in entry["weights_files"])
        else:
            assert entry["weights_files"] == ["model.safetensors"]


def test_tied_weights_are_stored_once_in_safetensors_and_shared_in_bin(
        hf_tree: Built) -> None:
    import torch

    root, manifest = hf_tree
    pre = manifest["pretrained"]
    assert pre["gpt2_pretrained"]["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    assert pre["hf_pretrained"]["tied"] == {}
    # save_pretrained drops the alias and records nothing about it in the header.
    (st,) = pre["gpt2_pretrained"]["stored"].values()
    assert "lm_head.weight" not in st["names"] and "transformer.wte.weight" in st["names"]
    assert st["header_metadata"] == {"format": "pt"}
    assert set(pre["gpt2_pretrained"]["tensors"]) - set(st["names"]) == {"lm_head.weight"}
    # The .bin set keeps both names, in one shard, on one storage.
    entry = pre["gpt2_bin_sharded"]
    shard = entry["index"]["weight_map"]["lm_head.weight"]
    assert entry["index"]["weight_map"]["transformer.wte.weight"] == shard
    assert entry["stored"][shard]["shared_storage"] == [["lm_head.weight",
                                                         "transformer.wte.weight"]]
    state = torch.load(root / "gpt2_bin_sharded" / shard, map_location="cpu", weights_only=True)
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()


# --------------------------------------------------------------------------- Lightning + TB


def test_lightning_tb_checkpoints_and_scalars(hf_tree: Built) -> None:
    import torch

    root, manifest = hf_tree
    lt = manifest["lightning_tb"]
    log_dir = root / lt["log_dir"]
    assert lt["log_dir"] == "lightning_tb/lightning_logs/version_0"
    assert lt["logger"] == "TensorBoardLogger"
    assert not list((root / lt["exp_dir"]).rglob("metrics.csv"))
    assert sorted(p.name for p in log_dir.iterdir()) == sorted(
        ["checkpoints", "hparams.yaml", *(Path(f).name for f in lt["event_files"])])
    scalars = _scalars(log_dir)
    assert scalars == _manifest_scalars(lt)
    assert set(scalars) == {"epoch", "hp_metric", "train_loss_epoch", "train_loss_step",
                            "val_acc", "val_loss"}
    spe = lt["steps_per_epoch"]
    # Epoch-level values are logged at the epoch's last step: global_step after it, minus one.
    assert [s for s, _ in scalars["val_loss"]] == [spe * (e + 1) - 1 for e in range(lt["epochs"])]
    # save_top_k=2 keeps the two lowest val_loss epochs.
    ranked = sorted(range(lt["epochs"]), key=lambda e: scalars["val_loss"][e][1])[:2]
    kept = {}
    for rel, entry in lt["checkpoints"].items():
        ckpt = torch.load(root / rel, map_location="cpu", weights_only=False)
        assert (ckpt["epoch"], ckpt["global_step"]) == (entry["epoch"], entry["global_step"])
        assert entry["global_step"] == spe * (entry["epoch"] + 1)
        assert _infos(ckpt["state_dict"]) == entry["tensors"]
        assert entry["tb"]["step"] == entry["global_step"] - 1
        assert entry["tb"]["val_loss"] == scalars["val_loss"][entry["epoch"]][1]
        assert entry["tb"]["val_loss"] == entry["monitor_value"]  # both float32
        assert entry["tb"]["val_acc"] == scalars["val_acc"][entry["epoch"]][1]
        assert set(entry["tb"]["epoch_scalar"]) == {float(entry["epoch"])}
        assert Path(rel).name == f"epoch={entry['epoch']}-val_loss={entry['monitor_value']:.3f}.ckpt"
        kept[entry["epoch"]] = rel
    assert sorted(kept) == sorted(ranked)
    assert sorted(p.relative_to(root).as_posix() for p in (log_dir / "checkpoints").iterdir()) \
        == sorted(lt["checkpoints"])


# --------------------------------------------------------------------------- Lightning + W&B


def test_wandb_offline_run_folder(hf_tree: Built) -> None:
    import torch

    root, manifest = hf_tree
    wb = manifest["lightning_wandb"]
    run_dir = root / wb["run_dir"]
    assert re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{wb['run_id']}", run_dir.name)
    assert (run_dir.parent / "latest-run").is_symlink()
    on_disk = {p.relative_to(run_dir).as_posix(): p.stat().st_size
               for p in run_dir.rglob("*") if p.is_file()}
    assert on_disk == wb["run_files"]
    assert f"run-{wb['run_id']}.wandb" in on_disk
    assert (run_dir / f"run-{wb['run_id']}.wandb").read_bytes()[:4] == b":W&B"
    # Offline, not synced: no summary/config/metadata files (they are written on sync).
    assert not {"files/wandb-summary.json", "files/config.yaml",
                "files/wandb-metadata.json"} & set(on_disk)
    assert wb["config"] == {"in_features": 8, "hidden": 16, "lr": 0.05}
    # The summary is the last value logged for every key.
    last: dict[str, Any] = {}
    for row in wb["history"]:
        last.update({k: v for k, v in row.items() if k not in ("_step", "lightning_step")})
    summary = wb["summary"]
    assert summary["_step"] == len(wb["history"]) - 1
    assert {k: summary[k] for k in last} == last
    assert summary["trainer/global_step"] == wb["history"][-1]["lightning_step"]
    (rel, entry), = wb["checkpoints"].items()
    assert rel == f"{wb['exp_dir']}/{wb['project']}/{wb['run_id']}/checkpoints/" \
        f"epoch={entry['epoch']}-step={entry['global_step']}.ckpt"
    assert rel == wb["best"]
    ckpt = torch.load(root / rel, map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (entry["epoch"], entry["global_step"])
    assert entry["wandb_row"]["val_loss"] == entry["monitor_value"]
    assert entry["monitor_value"] == min(r["val_loss"] for r in wb["history"] if "val_loss" in r)


# Fields copied verbatim from the writers' own files, which store absolute paths.
RAW_FIELDS = {"best_model_checkpoint", "model_checkpoint_state"}


def _strings(value: Any, key: str = "") -> list[str]:
    if key in RAW_FIELDS:
        return []
    if isinstance(value, dict):
        return [*value, *(s for k, v in value.items() for s in _strings(v, k))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v, key)]
    return [value] if isinstance(value, str) else []


def test_manifest_paths_are_relative_to_root(hf_tree: Built) -> None:
    root, manifest = hf_tree
    strings = _strings(manifest)
    assert not [s for s in strings if str(root) in s]
    relative = [s for s in strings if re.match(r"(hf_|gpt2_|lightning_)\w*/", s)]
    deleted = set(manifest["hf_trainer"]["deleted_checkpoints"])
    assert len(relative) > 50
    assert all((root / s).exists() for s in relative if s not in deleted)
    assert not any((root / s).exists() for s in deleted)
