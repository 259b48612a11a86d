#!/usr/bin/env python
"""Build a tree of Hugging Face / TensorBoard / W&B outputs with the real libraries (issue 13).

Used by the test suite (``tests/hf_fixtures.py``: ``hf_tree``, built in a subprocess) and by
hand (``python examples/build_hf_tree.py DIR``). Every file is written by its real producer
(``transformers.Trainer``, ``save_pretrained``, ``huggingface_hub.save_torch_state_dict``,
Lightning's default ``TensorBoardLogger``, ``WandbLogger`` in offline mode); nothing is
hand-assembled. Tiny random models, no downloads (never ``from_pretrained`` of a hub name),
no network (``HF_HUB_OFFLINE``, ``WANDB_MODE=offline``), seeded.

Public API
----------
``build_hf_tree(root) -> dict``
    Writes the tree under ``root`` (absent or empty), writes ``root/MANIFEST.json`` and returns
    the same JSON-serialisable manifest: ground truth read back from the real objects and the
    written files with the libraries themselves as references (never hand-typed numbers).

Tree
----
``hf_trainer_bert/``  a ``transformers.Trainer`` run (tiny BERT classifier, eval + save every
    4 steps, ``save_total_limit=2``, ``load_best_model_at_end``), run the way the official
    example scripts (``run_glue.py``) finish: ``checkpoint-N/`` folders, then ``save_model()``
    + ``save_metrics`` + ``save_state()`` into the run folder itself, then ``evaluate()``.
    TensorBoard events under ``runs/<Mon DD_HH-MM-SS>_<host>/`` (transformers 5 dropped
    ``TrainingArguments.logging_dir``; its default, used here, is that folder; only the
    ``TENSORBOARD_LOGGING_DIR`` environment variable moves it): two event files, the second
    opened by the post-train ``evaluate()`` after the writer was closed at train end.
``hf_pretrained/``  BERT ``save_pretrained``: ``model.safetensors`` + ``config.json``.
``hf_pretrained_sharded/``  same model, ``max_shard_size="50KB"``:
    ``model-0000x-of-0000y.safetensors`` + ``model.safetensors.index.json``.
``hf_bin_sharded/``  same model as ``pytorch_model-0000x-of-0000y.bin`` +
    ``pytorch_model.bin.index.json`` (+ ``config.json``).
``gpt2_pretrained/``, ``gpt2_bin_sharded/``  a tiny GPT-2 LM whose ``lm_head.weight`` is tied to
    ``transformer.wte.weight``, saved both ways.
``lightning_tb/``  Lightning with its default logger (TensorBoard) and a ``val_loss``
    ``ModelCheckpoint(save_top_k=2)``: ``lightning_logs/version_0/{events.out.tfevents.*,
    hparams.yaml,checkpoints/*.ckpt}``.
``lightning_wandb/``  Lightning with ``WandbLogger(offline=True)``:
    ``wandb/offline-run-<stamp>-<id>/`` and ``<project>/<id>/checkpoints/*.ckpt``.

Manifest (all paths POSIX, relative to ``root``)
------------------------------------------------
``format_version``, ``seed``, ``versions`` (library versions), ``timings`` (seconds per part),
``files`` (every file of the tree but ``MANIFEST.json``: size and sha256), and one section per
part: ``hf_trainer``, ``pretrained``, ``lightning_tb``, ``lightning_wandb`` (keys described in
each ``_build_*`` function's docstring). ``tensors`` maps are ``name -> {dtype, shape, sha256}``
with sha256 over the tensor's little-endian C-order bytes (``tensor_sha256``). Values copied
verbatim from the writers' files (``best_model_checkpoint``, ``model_checkpoint_state``) keep
the absolute paths those files store; every path the builder itself records is relative.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# Before any of the libraries is imported (several read these once, at import).
_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_DISABLE_GIT": "true",
    "WANDB_DISABLE_CODE": "true",
}
os.environ.update(_ENV)

SEED = 0
TRAINER_ARGS: dict[str, Any] = {
    "num_train_epochs": 3, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
    "eval_strategy": "steps", "eval_steps": 4, "save_steps": 4, "save_total_limit": 2,
    "logging_steps": 2, "load_best_model_at_end": True, "metric_for_best_model": "eval_loss",
    "greater_is_better": False, "report_to": ["tensorboard"], "use_cpu": True, "seed": SEED,
    "learning_rate": 1e-3, "disable_tqdm": True,
}
N_TRAIN, N_EVAL, SEQ_LEN = 64, 32, 16
BERT_CONFIG: dict[str, Any] = {"hidden_size": 32, "num_hidden_layers": 2,
                               "num_attention_heads": 2, "intermediate_size": 37,
                               "vocab_size": 99, "num_labels": 2}
# bos/eos inside the tiny vocabulary (GPT2Config's defaults, 50256, make transformers warn).
GPT2_CONFIG: dict[str, Any] = {"n_embd": 32, "n_layer": 2, "n_head": 2, "vocab_size": 99,
                               "n_positions": 64, "bos_token_id": 98, "eos_token_id": 98}
SHARD_SIZE = "50KB"
LIGHTNING_TB_EPOCHS = 3
LIGHTNING_WANDB_EPOCHS = 2
WANDB_PROJECT = "ckptctl-demo"
WANDB_RUN_NAME = "tiny-mlp-wandb"
WANDB_RUN_ID = "ckptdemo"


# --------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensor_sha256(t: Any) -> str:
    """sha256 of a torch tensor's little-endian C-order bytes (float32/int64 here)."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def tensor_info(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                   "sha256": tensor_sha256(t)} for name, t in sorted(state.items())}


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def files_info(folder: Path, root: Path) -> dict[str, dict[str, Any]]:
    """Every regular file under ``folder``: path relative to ``root`` -> size, sha256."""
    return {_rel(p, root): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def _jsonable(value: Any) -> Any:
    """Numbers/str/bool/None/lists/dicts as is; tensors and numpy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        return value.item()
    return repr(value)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' progress output and known-noise warnings while building."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        levels = {}
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                     "transformers", "wandb", "huggingface_hub"):
            levels[name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def _seed(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def tensorboard_scalars(logdir: Path) -> dict[str, list[dict[str, Any]]]:
    """All scalar events under ``logdir`` (one run folder) as EventAccumulator reads them:
    tag -> [{step, value, wall_time}] in file order. Values are float32 on disk."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [{"step": e.step, "value": e.value, "wall_time": e.wall_time}
                  for e in acc.Scalars(tag)] for tag in sorted(acc.Tags()["scalars"])}


def tensorboard_tags(logdir: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {kind: sorted(v) for kind, v in acc.Tags().items()
            if isinstance(v, list) and v}


def stored_names(path: Path) -> dict[str, Any]:
    """What a weights file actually stores, read with the reference libraries."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {"names": sorted(f.keys()), "header_metadata": f.metadata(),
                    "shared_storage": []}
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    by_ptr: dict[int, list[str]] = {}
    for name, t in state.items():
        by_ptr.setdefault(t.untyped_storage().data_ptr(), []).append(name)
    return {"names": sorted(state), "header_metadata": None,
            "shared_storage": sorted(sorted(g) for g in by_ptr.values() if len(g) > 1)}


# --------------------------------------------------------------------------- HF Trainer


class _RandomTokens:
    """A torch-style map Dataset of random token ids (built lazily to keep imports cheap)."""

    def __init__(self, n: int, seed: int) -> None:
        import torch

        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, BERT_CONFIG["vocab_size"], (n, SEQ_LEN), generator=g)
        self.attention_mask = torch.ones(n, SEQ_LEN, dtype=torch.long)
        lengths = torch.randint(SEQ_LEN // 2, SEQ_LEN + 1, (n,), generator=g)
        for i, length in enumerate(lengths.tolist()):
            self.attention_mask[i, length:] = 0
            self.input_ids[i, length:] = 0
        # A learnable rule (first token even/odd) so accuracy moves, plus noise for overfitting.
        self.labels = (self.input_ids[:, 0] % 2).long()
        flip = torch.rand(n, generator=g) < 0.2
        self.labels[flip] = 1 - self.labels[flip]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i],
                "labels": self.labels[i]}


def _accuracy(eval_pred: Any) -> dict[str, float]:
    import numpy as np

    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def _build_hf_trainer(root: Path) -> dict[str, Any]:
    """``hf_trainer_bert/``. Manifest section ``hf_trainer``:

    ``run_dir``; ``training_args`` (what was passed); ``steps_per_epoch``, ``max_steps``;
    ``saved_steps`` (every save, in order) and ``deleted_checkpoints`` (rotated away by
    ``save_total_limit``); ``checkpoints[dir]`` per kept ``checkpoint-N``: ``global_step``,
    ``epoch``, ``eval_metrics`` (the ``eval_*`` log_history entry of that step),
    ``train_logs`` (the training log entries up to that step), ``best_metric``,
    ``best_model_checkpoint`` (as that folder's trainer_state.json says), ``files`` (names),
    ``sha256`` (name -> digest), ``tensors`` (the model's state dict captured in memory at the
    save, i.e. the reference for ``model.safetensors``); ``best_checkpoint``,
    ``last_checkpoint``; ``final`` (the run folder itself after ``save_model``/``save_state``:
    files, tensors = the best model's weights, ``train_results``/``eval_results``/
    ``all_results`` JSON as written, ``log_history``); ``log_history`` (the final state's);
    ``tensorboard``: ``logdir``, ``event_files``, ``tags``, ``scalars`` (tag -> [{step, value,
    wall_time}], from EventAccumulator), ``post_train_evaluate`` (metrics of the final
    ``evaluate()`` call, also logged to TensorBoard at the last step).
    """
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    run = root / "hf_trainer_bert"
    set_seed(SEED)
    model = BertForSequenceClassification(BertConfig(**BERT_CONFIG))
    train, evaluation = _RandomTokens(N_TRAIN, SEED + 1), _RandomTokens(N_EVAL, SEED + 2)
    captured: dict[int, dict[str, Any]] = {}

    class CaptureOnSave(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            captured[state.global_step] = tensor_info(kwargs["model"].state_dict())

    args = TrainingArguments(output_dir=str(run), **TRAINER_ARGS)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                      compute_metrics=_accuracy, callbacks=[CaptureOnSave()])
    # The way transformers' examples/pytorch/text-classification/run_glue.py ends a run.
    result = trainer.train()
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    final_tensors = tensor_info(model.state_dict())  # the best checkpoint's, reloaded in place
    eval_metrics = trainer.evaluate()
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("eval", eval_metrics)
    del trainer

    steps_per_epoch = -(-N_TRAIN // TRAINER_ARGS["per_device_train_batch_size"])
    max_steps = steps_per_epoch * TRAINER_ARGS["num_train_epochs"]
    saved_steps = sorted(captured)
    checkpoints: dict[str, dict[str, Any]] = {}
    for folder in sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        state = json.loads((folder / "trainer_state.json").read_text())
        step = state["global_step"]
        evals = [e for e in state["log_history"] if e.get("step") == step and "eval_loss" in e]
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
        checkpoints[_rel(folder, root)] = {
            "global_step": step, "epoch": state["epoch"],
            "eval_metrics": evals[-1] if evals else None,
            "train_logs": [e for e in state["log_history"] if "loss" in e],
            "best_metric": state["best_metric"],
            "best_model_checkpoint": state["best_model_checkpoint"],
            "best_global_step": state.get("best_global_step"),
            "files": names,
            "sha256": {n: sha256_file(folder / n) for n in names},
            "tensors": captured[step],
        }
    last_state = json.loads((run / "trainer_state.json").read_text())
    best_abs = last_state["best_model_checkpoint"]
    best_rel = _rel(Path(best_abs), root) if best_abs else None

    logdirs = sorted({p.parent for p in (run / "runs").rglob("events.out.tfevents.*")})
    if len(logdirs) != 1:
        raise RuntimeError(f"expected one TensorBoard run folder, found {logdirs}")
    logdir = logdirs[0]
    final_names = sorted(p.name for p in run.iterdir() if p.is_file())
    return {
        "run_dir": _rel(run, root),
        "training_args": _jsonable(TRAINER_ARGS),
        "steps_per_epoch": steps_per_epoch, "max_steps": max_steps,
        "saved_steps": saved_steps,
        "deleted_checkpoints": [f"{_rel(run, root)}/checkpoint-{s}" for s in saved_steps
                                if f"{_rel(run, root)}/checkpoint-{s}" not in checkpoints],
        "checkpoints": checkpoints,
        "best_checkpoint": best_rel,
        "last_checkpoint": f"{_rel(run, root)}/checkpoint-{saved_steps[-1]}",
        "log_history": last_state["log_history"],
        "final": {
            "dir": _rel(run, root), "files": final_names,
            "tensors": final_tensors,
            "results": {n: json.loads((run / n).read_text()) for n in final_names
                        if n.endswith("results.json")},
        },
        "tensorboard": {
            "logdir": _rel(logdir, root),
            "event_files": sorted(_rel(p, root) for p in logdir.glob("events.out.tfevents.*")),
            "tags": tensorboard_tags(logdir),
            "scalars": tensorboard_scalars(logdir),
        },
        "post_train_evaluate": _jsonable(eval_metrics),
    }


# --------------------------------------------------------------------------- save_pretrained


def _weights_entry(folder: Path, root: Path, model: Any, *, kind: str, model_class: str,
                   tied: Mapping[str, str]) -> dict[str, Any]:
    """One pretrained folder: files, index, what each weights file stores, reference tensors."""
    index_files = sorted(folder.glob("*.index.json"))
    index = json.loads(index_files[0].read_text()) if index_files else None
    weights = sorted(p for p in folder.iterdir()
                     if p.suffix in (".safetensors", ".bin") and p.is_file())
    state = model.state_dict()
    return {
        "kind": kind, "model_class": model_class,
        "files": sorted(p.name for p in folder.iterdir() if p.is_file()),
        "weights_files": [p.name for p in weights],
        "index_file": index_files[0].name if index_files else None,
        "index": index,
        "stored": {p.name: stored_names(p) for p in weights},
        "tied": dict(tied),
        "tensors": tensor_info(state),  # every name of model.state_dict() (aliases included)
        "config": json.loads((folder / "config.json").read_text())
        if (folder / "config.json").exists() else None,
    }


def _build_pretrained(root: Path) -> dict[str, Any]:
    """``hf_pretrained*``, ``hf_bin_sharded``, ``gpt2_*``. Manifest section ``pretrained[dir]``:

    ``kind`` (``safetensors`` | ``safetensors-sharded`` | ``bin-sharded``), ``model_class``,
    ``files`` (names in the folder), ``weights_files``, ``index_file`` and ``index`` (parsed;
    ``None`` when single-file), ``stored[file]`` = ``names`` the file actually holds,
    ``header_metadata`` (safetensors ``__metadata__``), ``shared_storage`` (groups of names
    sharing one storage inside a ``.bin``), ``tied`` (alias -> target, from the model's
    ``all_tied_weights_keys`` and checked by data pointer), ``tensors`` (reference: the
    in-memory ``state_dict()``, aliases included), ``config`` (config.json parsed).
    """
    from huggingface_hub import save_torch_state_dict
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        set_seed,
    )

    out: dict[str, Any] = {}
    set_seed(SEED + 10)
    bert = BertForSequenceClassification(BertConfig(**BERT_CONFIG))
    set_seed(SEED + 20)
    gpt2 = GPT2LMHeadModel(GPT2Config(**GPT2_CONFIG))
    for model, prefix in ((bert, "hf"), (gpt2, "gpt2")):
        cls = type(model).__name__
        tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
        state = model.state_dict()
        for alias, target in tied.items():  # really one tensor in memory
            if state[alias].data_ptr() != state[target].data_ptr():
                raise RuntimeError(f"{cls}: {alias} is not tied to {target}")
        single = root / f"{prefix}_pretrained"
        model.save_pretrained(single)
        out[_rel(single, root)] = _weights_entry(single, root, model, kind="safetensors",
                                                 model_class=cls, tied=tied)
        if prefix == "hf":
            sharded = root / "hf_pretrained_sharded"
            model.save_pretrained(sharded, max_shard_size=SHARD_SIZE)
            out[_rel(sharded, root)] = _weights_entry(
                sharded, root, model, kind="safetensors-sharded", model_class=cls, tied=tied)
        # transformers 5 ignores safe_serialization=False (always safetensors), so the
        # sharded .bin set older transformers wrote comes from huggingface_hub's writer, which
        # transformers 4.x used for it (same names: pytorch_model-0000x-of-0000y.bin and
        # pytorch_model.bin.index.json). The full state_dict() goes in, tied aliases included,
        # as torch.save(model.state_dict()) users have them.
        binned = root / f"{prefix}_bin_sharded"
        binned.mkdir()
        save_torch_state_dict(state, binned, safe_serialization=False,
                              max_shard_size=SHARD_SIZE)
        model.config.save_pretrained(binned)
        out[_rel(binned, root)] = _weights_entry(binned, root, model, kind="bin-sharded",
                                                 model_class=cls, tied=tied)
    # Round trip through transformers itself: every folder loads back to the same weights.
    for rel, entry in out.items():
        loader = (BertForSequenceClassification if entry["model_class"].startswith("Bert")
                  else GPT2LMHeadModel)
        loaded = loader.from_pretrained(root / rel, local_files_only=True)
        entry["reloads_with_from_pretrained"] = (
            tensor_info(loaded.state_dict()) == entry["tensors"])
    return out


# --------------------------------------------------------------------------- Lightning


def _lightning_module(seed: int) -> Any:
    import lightning as L
    import torch
    from torch import nn

    class TinyMLP(L.LightningModule):
        def __init__(self, in_features: int = 8, hidden: int = 16, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)  # type: ignore[no-any-return]

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            logits = self(x)
            self.log("val_loss", nn.functional.cross_entropy(logits, y), on_epoch=True)
            self.log("val_acc", (logits.argmax(-1) == y).float().mean(), on_epoch=True)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])

    torch.manual_seed(seed)
    return TinyMLP()


def _lightning_data(seed: int) -> tuple[Any, Any]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 8, generator=g)
    y = (x[:, 0] + 0.5 * torch.randn(96, generator=g) > 0).long()
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=16)
    return train, val


def _read_ckpt(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint as torch.load sees it (the builder's own trusted file)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    callbacks = {k: _jsonable({kk: vv for kk, vv in v.items()
                               if kk in ("monitor", "best_model_score", "best_model_path",
                                         "current_score", "best_k_models", "kth_value",
                                         "last_model_path")})
                 for k, v in ckpt.get("callbacks", {}).items() if k.startswith("ModelCheckpoint")}
    return {"epoch": ckpt["epoch"], "global_step": ckpt["global_step"],
            "keys": sorted(ckpt), "model_checkpoint_state": callbacks,
            "tensors": tensor_info(ckpt["state_dict"])}


def _build_lightning_tb(root: Path) -> dict[str, Any]:
    """``lightning_tb/``. Manifest section ``lightning_tb``:

    ``exp_dir``, ``logger`` (class of the default logger), ``log_dir`` (the version folder),
    ``epochs``, ``steps_per_epoch``, ``files`` (every file of the experiment), ``event_files``,
    ``hparams_yaml``; ``tensorboard``: ``tags`` and ``scalars`` (EventAccumulator's: tag ->
    [{step, value, wall_time}]); ``checkpoints[path]``: ``epoch``/``global_step`` from the
    file, ``monitor_value`` (the callback's score for it), ``tb`` = {``val_loss``, ``val_acc``,
    ``step`` (TB step at which they were recorded for that epoch), ``epoch_scalar`` (value of
    the ``epoch`` scalar at that step)}, ``model_checkpoint_state``, ``tensors``; ``best``
    (the callback's ``best_model_path``, relative).
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    exp = root / "lightning_tb"
    L.seed_everything(SEED + 30, workers=True, verbose=False)
    model = _lightning_module(SEED + 30)
    train, val = _lightning_data(SEED + 31)
    ckpt_cb = ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=2,
                              filename="{epoch}-{val_loss:.3f}")
    trainer = L.Trainer(default_root_dir=str(exp), max_epochs=LIGHTNING_TB_EPOCHS,
                        accelerator="cpu", devices=1, callbacks=[ckpt_cb],
                        enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=1, deterministic=True)
    logger_cls = type(trainer.logger).__name__
    if logger_cls != "TensorBoardLogger" or len(trainer.loggers) != 1:
        raise RuntimeError(f"default logger is {trainer.loggers}, expected TensorBoard only")
    trainer.fit(model, train, val)
    assert trainer.logger is not None and trainer.logger.log_dir is not None
    log_dir = Path(trainer.logger.log_dir)
    scalars = tensorboard_scalars(log_dir)
    checkpoints: dict[str, dict[str, Any]] = {}
    for path, score in sorted(ckpt_cb.best_k_models.items()):
        info = _read_ckpt(Path(path))
        # The epoch's val_* are logged at the step where the "epoch" scalar equals the epoch.
        epoch_steps = [e["step"] for e in scalars["epoch"] if e["value"] == info["epoch"]]
        val_events = [e for e in scalars["val_loss"] if e["step"] in epoch_steps]
        if len(val_events) != 1:
            raise RuntimeError(f"{path}: val_loss events of epoch {info['epoch']}: {val_events}")
        step = val_events[0]["step"]
        info["monitor_value"] = float(score)
        info["tb"] = {
            "step": step,
            "val_loss": val_events[0]["value"],
            "val_acc": next(e["value"] for e in scalars["val_acc"] if e["step"] == step),
            "epoch_scalar": [e["value"] for e in scalars["epoch"] if e["step"] == step],
        }
        checkpoints[_rel(Path(path), root)] = info
    return {
        "exp_dir": _rel(exp, root), "logger": logger_cls, "log_dir": _rel(log_dir, root),
        "epochs": LIGHTNING_TB_EPOCHS, "steps_per_epoch": len(train),
        "files": sorted(files_info(exp, root)),
        "event_files": sorted(_rel(p, root) for p in log_dir.glob("events.out.tfevents.*")),
        "hparams_yaml": (log_dir / "hparams.yaml").read_text()
        if (log_dir / "hparams.yaml").exists() else None,
        "tensorboard": {"tags": tensorboard_tags(log_dir), "scalars": scalars},
        "checkpoints": checkpoints,
        "best": _rel(Path(ckpt_cb.best_model_path), root),
    }


def _build_lightning_wandb(root: Path) -> dict[str, Any]:
    """``lightning_wandb/``. Manifest section ``lightning_wandb``:

    ``exp_dir``, ``project``, ``run_id``, ``run_name``, ``run_dir`` (``wandb/offline-run-*``),
    ``run_files`` (every file in it, relative to it, with size), ``files`` (the experiment's),
    ``config`` (the run's config as wandb holds it), ``summary`` (``run.summary`` as wandb
    itself reports it just before ``finish()``), ``history_keys`` (metric names logged),
    ``history`` (every row Lightning passed to ``run.log``, in order, with wandb's ``_step``
    = its index and ``lightning_step`` = the step Lightning gave), ``checkpoints[path]``
    (``epoch``, ``global_step``, ``monitor_value``, ``tensors``..., ``wandb_row`` = the history
    row holding that epoch's ``val_loss``), ``best``. Config/cache dirs of wandb go to a temporary folder, not into the tree or ~.
    """
    import lightning as L
    import wandb
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    exp = root / "lightning_wandb"
    exp.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="wandb-home-") as home:
        saved = {k: os.environ.get(k) for k in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR",
                                                "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR")}
        os.environ.update({"WANDB_CONFIG_DIR": f"{home}/config", "WANDB_CACHE_DIR":
                           f"{home}/cache", "WANDB_DATA_DIR": f"{home}/data",
                           "WANDB_ARTIFACT_DIR": f"{home}/artifacts"})
        try:
            L.seed_everything(SEED + 40, workers=True, verbose=False)
            model = _lightning_module(SEED + 40)
            train, val = _lightning_data(SEED + 41)
            logged: list[dict[str, Any]] = []

            class RecordingWandbLogger(WandbLogger):
                """Records every row Lightning hands to wandb (``run.log``), nothing else."""

                def log_metrics(self, metrics: Mapping[str, float],
                                step: int | None = None) -> None:
                    logged.append({"_step": len(logged), "lightning_step": step,
                                   **_jsonable(dict(metrics))})
                    super().log_metrics(metrics, step)

            # a fixed run id: the checkpoints' folder (<project>/<id>/) is the same in every
            # build, so the README's tour, generated from a build, is reproducible
            logger = RecordingWandbLogger(offline=True, save_dir=str(exp), id=WANDB_RUN_ID,
                                          project=WANDB_PROJECT, name=WANDB_RUN_NAME)
            ckpt_cb = ModelCheckpoint(monitor="val_loss")
            trainer = L.Trainer(max_epochs=LIGHTNING_WANDB_EPOCHS, accelerator="cpu",
                                devices=1, logger=logger, callbacks=[ckpt_cb],
                                default_root_dir=str(exp), enable_progress_bar=False,
                                enable_model_summary=False, log_every_n_steps=1,
                                deterministic=True)
            trainer.fit(model, train, val)
            run = logger.experiment
            run_id, run_name, run_dir = run.id, run.name, Path(run.dir).parent
            summary = _jsonable(dict(run.summary))
            config = _jsonable(dict(run.config))
            wandb.finish()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    checkpoints: dict[str, dict[str, Any]] = {}
    for path, score in sorted(ckpt_cb.best_k_models.items()):
        info = _read_ckpt(Path(path))
        info["monitor_value"] = float(score)
        rows = [r for r in logged if r.get("epoch") == info["epoch"] and "val_loss" in r]
        if len(rows) != 1:
            raise RuntimeError(f"{path}: wandb rows with val_loss of epoch {info['epoch']}: {rows}")
        info["wandb_row"] = rows[0]
        checkpoints[_rel(Path(path), root)] = info
    return {
        "exp_dir": _rel(exp, root), "project": WANDB_PROJECT, "run_id": run_id,
        "run_name": run_name, "run_dir": _rel(run_dir, root),
        "run_files": {_rel(p, run_dir): p.stat().st_size
                      for p in sorted(run_dir.rglob("*")) if p.is_file()},
        "files": sorted(files_info(exp, root)),
        "config": config, "summary": summary,
        "history_keys": sorted(k for k in summary if not k.startswith("_")),
        "history": logged,
        "checkpoints": checkpoints,
        "best": _rel(Path(ckpt_cb.best_model_path), root),
    }


# --------------------------------------------------------------------------- entry points


def build_hf_tree(root: Path) -> dict[str, Any]:
    """Write the tree under ``root`` (absent or empty) and ``root/MANIFEST.json``; return it."""
    root = Path(root).resolve()
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty")
    root.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    timings: dict[str, float] = {}
    sections: dict[str, Any] = {}
    parts = (("hf_trainer", _build_hf_trainer), ("pretrained", _build_pretrained),
             ("lightning_tb", _build_lightning_tb), ("lightning_wandb", _build_lightning_wandb))
    with _quiet():
        for name, build in parts:
            start = time.perf_counter()
            _seed(SEED)
            sections[name] = build(root)
            timings[name] = round(time.perf_counter() - start, 2)

    import huggingface_hub
    import lightning
    import safetensors
    import tensorboard
    import transformers
    import wandb

    manifest = {
        "format_version": 1, "seed": SEED,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "huggingface_hub": huggingface_hub.__version__,
                     "safetensors": safetensors.__version__,
                     "tensorboard": tensorboard.__version__,
                     "lightning": lightning.__version__, "wandb": wandb.__version__,
                     "python": sys.version.split()[0]},
        "timings": timings,
        **sections,
        "files": files_info(root, root),
    }
    (root / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=False))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="directory to create (must be absent or empty)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = build_hf_tree(args.root)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"built {len(manifest['files'])} files under {args.root} in "
          f"{time.perf_counter() - start:.1f}s ({manifest['timings']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
