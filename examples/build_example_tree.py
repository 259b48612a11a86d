#!/usr/bin/env python
"""Build a realistic, messy ML ``outputs/`` tree with the real libraries.

Used by ``make demo`` (``python examples/build_example_tree.py DIR``) and by the test suite
(``tests/conftest.py``). Every checkpoint is written by the real producer (Lightning's
``Trainer`` + ``ModelCheckpoint``, or ``torch.save``); nothing is hand-assembled, so the files
carry the exact quirks a metadata extractor meets in the wild.

Public API
----------
``build_example_tree(root) -> dict``
    Writes the clean tree and returns a JSON-serialisable manifest of ground truth read back
    from the real objects / written files (never hand-typed numbers).
``build_bad_inputs(root, good_source=None) -> dict``
    Writes hostile and broken files (flat folder) and returns their manifest.

Manifest of ``build_example_tree`` (all paths are POSIX paths relative to ``root``)
-------------------------------------------------------------------------------------
``checkpoints[rel]``: one entry per checkpoint file, always with ``kind``, ``run``,
``serialization`` (``"zip"`` | ``"legacy"``), ``epoch``, ``global_step`` (``None`` where the
format has none), ``top_level_keys`` and ``tensors`` (name -> dtype/shape/stride/offset/sha256
of the raw little-endian C-order bytes). ``kind`` is one of

* ``"lightning"``: adds ``monitor``, ``monitor_value``, ``mode``, ``save_top_k``,
  ``save_last``, ``is_last``, ``in_best_k``, ``is_best``, ``callback_state_key``,
  ``stored_callback_state`` (the ModelCheckpoint state *as stored in that file*, paths made
  relative), ``logged_metrics`` (validation metrics of that epoch), ``hyper_parameters``,
  ``lightning_version`` and, for the OCR run, ``cleval_metrics``.
* ``"training_dict"``: a research-code ``torch.save`` dict; adds ``values`` (scalars read back from
  the file), ``filename_values`` (numbers encoded in the file name) and ``expected_conflict``.
* ``"wrapped_state_dict"``: ``{"state_dict": ..., ...}`` without trainer state.
* ``"state_dict"``: a bare ``{name: tensor}`` mapping.

``runs[name]``: per run directory: ``framework``, ``hydra``, ``architecture`` and
``architecture_source`` (plus encoder/decoder/head for Hydra), checkpoint policy, best-k info
and the logger files (``hparams_yaml``, ``metrics_csv``, ``metrics_csv_columns``).

``expected_conflicts``: filename-vs-content disagreements (the file content must win).
``ignored``: decoy files that are not checkpoints; ``non_checkpoint_files``: every other file.
``tied_groups`` / ``shared_storage_groups`` per zoo file, inside its checkpoint entry.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import os
import pickletools
import random
import shlex
import sys
import time
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

SEED = 1234
OCR_RUN = "ocr_dbnet_hydra"
MLP_RUN = "mlp_minloss"
CAPE_RUN = "cape_run1"
LEGACY_DIR = "legacy_format"
ZOO_DIR = "dtype_zoo"

# Precision/recall "curve" per epoch. hmean ranks epochs 1 > 3 > 2 > 0, so the kept top-2 are
# epochs 1 and 3 (not simply the last two; epochs 0 and 2 are saved, then deleted) and
# last.ckpt is not the best. The final epoch must be in the top-k: Lightning 2.6 only rewrites
# last.ckpt when a top-k file was saved at that step. Gaps (>= 0.04) dwarf the val-loss
# jitter (<= 0.004), so the ranking is stable.
_OCR_CURVE: tuple[tuple[float, float], ...] = (
    (0.58, 0.52), (0.81, 0.76), (0.68, 0.64), (0.74, 0.69),
)


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info logs and the tiny-data warnings, restoring state afterwards."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric",
             "pytorch_lightning")
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Tiny in-process datasets are the point here, not a performance problem.
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
            # torch 2.13 deprecates an API lightning 2.6.6 still calls; not ours to fix.
            warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*",
                                    category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _preserve_global_state() -> Iterator[None]:
    """Restore global RNGs and Lightning's seed env vars: the builder runs inside test sessions."""
    env_keys = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")
    env = {k: os.environ.get(k) for k in env_keys}
    torch_rng, np_rng, py_rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_rng)
        np.random.set_state(np_rng)
        random.setstate(py_rng)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _rel(path: str | os.PathLike[str], root: Path) -> str:
    """Path relative to ``root`` (POSIX); absolute paths outside ``root`` are kept as is."""
    p = Path(path)
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _load(path: Path) -> Any:
    # Only ever used on files this module has just written itself (trusted).
    return torch.load(path, map_location="cpu", weights_only=False)


def _tensor_bytes(t: Tensor) -> bytes:
    """Raw C-order bytes of a tensor's logical contents (little-endian on every torch host)."""
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def _describe_tensor(t: Tensor) -> dict[str, Any]:
    return {
        "dtype": str(t.dtype).removeprefix("torch."),
        "shape": list(t.shape),
        "stride": list(t.stride()),
        "storage_offset": t.storage_offset(),
        "storage_nbytes": t.untyped_storage().nbytes(),
        "contiguous": t.is_contiguous(),
        "is_parameter": isinstance(t, nn.Parameter),
        "numel": t.numel(),
        "nbytes": t.numel() * t.element_size(),
        "sha256": hashlib.sha256(_tensor_bytes(t)).hexdigest(),
    }


def _describe_state_dict(sd: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: _describe_tensor(v) for k, v in sd.items() if isinstance(v, Tensor)}


def _jsonable(obj: Any, root: Path) -> Any:
    """Turn Lightning/torch objects into JSON values; absolute paths become root-relative."""
    if isinstance(obj, Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, Mapping):
        return {str(_jsonable(k, root)): _jsonable(v, root) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v, root) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj):
        return _rel(obj, root)
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return repr(obj)


def _yaml_dump(data: Any, path: Path) -> None:
    # Same style OmegaConf.to_yaml uses (block style, insertion order kept).
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=False,
                                   allow_unicode=True))


def _trainer(run_dir: Path, max_epochs: int, callback: ModelCheckpoint,
             logger: CSVLogger) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[callback],
        default_root_dir=run_dir,  # nothing may land in the caller's cwd
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )


# --------------------------------------------------------------------------- Lightning models


class TinyTextDetector(L.LightningModule):
    """A DBNet-shaped toy (encoder/decoder/head) predicting a text probability map.

    Its hparams deliberately carry no architecture name: that only lives in Hydra's config.
    """

    def __init__(self, lr: float = 1e-3, weight_decay: float = 1e-4, width: int = 8,
                 thresh: float = 0.3, box_thresh: float = 0.7) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),
                                     nn.ReLU())
        self.decoder = nn.Conv2d(width, width, 1)
        self.head = nn.Conv2d(width, 1, 1)
        self._val_losses: list[Tensor] = []
        self.last_cleval: dict[str, float] = {}
        self.history: dict[int, dict[str, float]] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.decoder(self.encoder(x))))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.binary_cross_entropy_with_logits(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        loss = nn.functional.binary_cross_entropy_with_logits(self(x), y)
        self._val_losses.append(loss.detach())

    def on_validation_epoch_end(self) -> None:
        losses, self._val_losses = self._val_losses, []
        if self.trainer.sanity_checking:  # keep "last validation values" real epochs only
            return
        val_loss = torch.stack(losses).mean()
        base_p, base_r = _OCR_CURVE[self.current_epoch]
        jitter = 0.004 * torch.tanh(val_loss)  # deterministic, but depends on the real loss
        precision = torch.tensor(base_p) - jitter
        recall = torch.tensor(base_r) - jitter / 2
        hmean = 2 * precision * recall / (precision + recall)
        metrics = {"val/loss": val_loss, "val/precision": precision, "val/recall": recall,
                   "val/hmean": hmean}
        for name, value in metrics.items():
            self.log(name, value)
        self.history[self.current_epoch] = {k: float(v) for k, v in metrics.items()}
        self.last_cleval = {"precision": float(precision), "recall": float(recall),
                            "hmean": float(hmean)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A project-specific extra top-level key, like real OCR codebases add.
        checkpoint["cleval_metrics"] = dict(self.last_cleval)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class TinyMLP(L.LightningModule):
    def __init__(self, architecture_name: str = "mlp", in_features: int = 4, hidden: int = 8,
                 num_classes: int = 2, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))
        self.history: dict[int, dict[str, float]] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            # Epoch-reduced values exactly as ModelCheckpoint will see them.
            cm = self.trainer.callback_metrics
            self.history[self.current_epoch] = {k: float(cm[k]) for k in ("val_loss", "val_acc")
                                                if k in cm}

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


# --------------------------------------------------------------------------- Lightning runs


def _lightning_entries(root: Path, run: str, cb: ModelCheckpoint,
                       history: dict[int, dict[str, float]],
                       save_top_k: int, save_last: bool) -> dict[str, dict[str, Any]]:
    """Read every checkpoint the callback left behind and describe it from its contents."""
    best_k = {Path(p).resolve(): float(v) for p, v in cb.best_k_models.items()}
    best_path = Path(cb.best_model_path).resolve()
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(cb.dirpath).glob("*.ckpt")):
        ck = _load(path)
        (state_key,) = [k for k in ck["callbacks"] if k.startswith("ModelCheckpoint")]
        epoch = int(ck["epoch"])
        logged = history[epoch]
        if path.resolve() in best_k:
            value = best_k[path.resolve()]
            # Cross-check the two sources so a Lightning behaviour change fails loudly here.
            assert abs(value - logged[cb.monitor]) < 1e-6, (path, value, logged)
        else:
            value = logged[cb.monitor]
        entry: dict[str, Any] = {
            "kind": "lightning",
            "run": run,
            "serialization": "zip",
            "epoch": epoch,
            "global_step": int(ck["global_step"]),
            "monitor": cb.monitor,
            "monitor_value": value,
            "mode": cb.mode,
            "save_top_k": save_top_k,
            "save_last": save_last,
            "is_last": path.name == "last.ckpt",
            "in_best_k": path.resolve() in best_k,
            "is_best": path.resolve() == best_path,
            "callback_state_key": state_key,
            "stored_callback_state": _jsonable(ck["callbacks"][state_key], root),
            "logged_metrics": dict(logged),
            "hyper_parameters": _jsonable(ck.get("hyper_parameters", {}), root),
            "lightning_version": ck["pytorch-lightning_version"],
            "top_level_keys": sorted(ck),
            "tensors": _describe_state_dict(ck["state_dict"]),
        }
        if "cleval_metrics" in ck:
            entry["cleval_metrics"] = dict(ck["cleval_metrics"])
        out[_rel(path, root)] = entry
    return out


def _logger_files(root: Path, logger: CSVLogger) -> dict[str, Any]:
    log_dir = Path(logger.log_dir)
    metrics_csv = log_dir / "metrics.csv"
    header = metrics_csv.read_text().splitlines()[0]
    return {
        "log_dir": _rel(log_dir, root),
        "hparams_yaml": _rel(log_dir / "hparams.yaml", root),
        "metrics_csv": _rel(metrics_csv, root),
        "metrics_csv_columns": header.split(","),
    }


def _run_summary(root: Path, cb: ModelCheckpoint) -> dict[str, Any]:
    return {
        "monitor": cb.monitor,
        "mode": cb.mode,
        "best_model_path": _rel(cb.best_model_path, root),
        "best_model_score": float(cb.best_model_score),
        "best_k_models": {_rel(p, root): float(v) for p, v in cb.best_k_models.items()},
        "last_model_path": _rel(cb.last_model_path, root) if cb.last_model_path else None,
    }


def _hydra_files(run_dir: Path, cfg: dict[str, Any], overrides: list[str]) -> None:
    """Write what Hydra 1.3 writes into ``<output_dir>/.hydra`` (Hydra itself is absent)."""
    hydra_dir = run_dir / ".hydra"
    _yaml_dump(cfg, hydra_dir / "config.yaml")
    _yaml_dump(overrides, hydra_dir / "overrides.yaml")
    hydra_cfg = {
        "hydra": {
            "run": {"dir": "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}"},
            "sweep": {"dir": "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}",
                      "subdir": "${hydra.job.num}"},
            "launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                        "max_batch_size": None, "params": None},
            "env": {},
            "mode": "RUN",
            "searchpath": [],
            "callbacks": {},
            "output_subdir": ".hydra",
            "overrides": {"hydra": ["hydra.mode=RUN"], "task": list(overrides)},
            "job": {
                "name": "train",
                "chdir": None,
                "override_dirname": ",".join(sorted(overrides)),
                "id": "???",
                "num": "???",
                "config_name": "train",
                "env_set": {},
                "env_copy": [],
                "config": {"override_dirname": {"kv_sep": "=", "item_sep": ",",
                                                "exclude_keys": []}},
            },
            "runtime": {
                "version": "1.3.2",
                "version_base": "1.3",
                "cwd": str(run_dir.parent.resolve()),
                "config_sources": [
                    {"path": "hydra.conf", "schema": "pkg", "provider": "hydra"},
                    {"path": "configs", "schema": "pkg", "provider": "main"},
                    {"path": "", "schema": "structured", "provider": "schema"},
                ],
                "output_dir": str(run_dir.resolve()),
                "choices": {
                    "model": "dbnet", "hydra/env": "default", "hydra/callbacks": None,
                    "hydra/job_logging": "default", "hydra/hydra_logging": "default",
                    "hydra/hydra_help": "default", "hydra/help": "default",
                    "hydra/sweeper": "basic", "hydra/launcher": "basic",
                    "hydra/output": "default",
                },
            },
            "verbose": False,
        }
    }
    _yaml_dump(hydra_cfg, hydra_dir / "hydra.yaml")


def _build_ocr_run(root: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    run_dir = root / OCR_RUN
    overrides = ["model=dbnet", "trainer.max_epochs=4",
                 "callbacks.model_checkpoint.save_top_k=2"]
    # The composed config as Hydra would save it: unresolved (interpolations kept).
    cfg: dict[str, Any] = {
        "seed": SEED,
        "model": {
            "architecture": "dbnet",
            "encoder": {"model_name": "mobilenetv3_small_050", "pretrained": True},
            "decoder": {"name": "pan_decoder", "inner_channels": 96},
            "head": {"name": "db_head"},
            "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0001},
        },
        "data": {"batch_size": 4, "image_size": 16},
        "trainer": {"max_epochs": 4, "accelerator": "cpu"},
        "callbacks": {
            "model_checkpoint": {
                "dirpath": "${hydra:runtime.output_dir}/checkpoints",
                "monitor": "val/hmean",
                "mode": "max",
                "save_top_k": 2,
                "save_last": True,
                "filename": "epoch{epoch:02d}-hmean{val/hmean:.4f}",
                "auto_insert_metric_name": False,
            }
        },
        "logger": {"csv": {"name": "csv_logs"}},
    }
    _hydra_files(run_dir, cfg, overrides)
    (run_dir / "train.log").write_text(
        "[2024-05-01 12:00:00,000][__main__][INFO] - Instantiating model <dbnet>\n"
        "[2024-05-01 12:00:01,000][__main__][INFO] - Starting training!\n"
    )
    # A preview image next to the run: must be ignored by any scanner.
    (run_dir / "sample.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(16)))

    mc = cfg["callbacks"]["model_checkpoint"]
    L.seed_everything(SEED, workers=True)
    g = torch.Generator().manual_seed(SEED)
    size = cfg["data"]["image_size"]
    x_train, x_val = torch.randn(16, 3, size, size, generator=g), torch.randn(8, 3, size, size,
                                                                             generator=g)
    y_train = (torch.rand(16, 1, size, size, generator=g) > 0.8).float()
    y_val = (torch.rand(8, 1, size, size, generator=g) > 0.8).float()
    bs = cfg["data"]["batch_size"]
    train_dl = DataLoader(TensorDataset(x_train, y_train), batch_size=bs)
    val_dl = DataLoader(TensorDataset(x_val, y_val), batch_size=bs)

    model = TinyTextDetector(lr=cfg["model"]["optimizer"]["lr"],
                             weight_decay=cfg["model"]["optimizer"]["weight_decay"])
    cb = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor=mc["monitor"], mode=mc["mode"],
                         save_top_k=mc["save_top_k"], save_last=mc["save_last"],
                         filename=mc["filename"],
                         auto_insert_metric_name=mc["auto_insert_metric_name"])
    logger = CSVLogger(save_dir=run_dir, name="csv_logs")
    trainer = _trainer(run_dir, cfg["trainer"]["max_epochs"], cb, logger)
    trainer.fit(model, train_dl, val_dl)

    entries = _lightning_entries(root, OCR_RUN, cb, model.history, mc["save_top_k"],
                                 mc["save_last"])
    run = {
        "framework": "lightning",
        "hydra": True,
        "hydra_dir": f"{OCR_RUN}/.hydra",
        "hydra_config": f"{OCR_RUN}/.hydra/config.yaml",
        "hydra_overrides": overrides,
        "architecture": cfg["model"]["architecture"],
        "architecture_source": "hydra",
        "encoder": cfg["model"]["encoder"]["model_name"],
        "decoder": cfg["model"]["decoder"]["name"],
        "head": cfg["model"]["head"]["name"],
        "save_top_k": mc["save_top_k"],
        "save_last": mc["save_last"],
        "max_epochs": cfg["trainer"]["max_epochs"],
        "checkpoints": sorted(entries),
        **_run_summary(root, cb),
        **_logger_files(root, logger),
    }
    return run, entries


def _build_mlp_run(root: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    run_dir = root / MLP_RUN
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "notes.txt").write_text("lr 0.01 looked fine; try hidden=16 next.\n")
    L.seed_everything(SEED + 1, workers=True)
    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(48, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    train_dl = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8)  # 4 steps/epoch
    val_dl = DataLoader(TensorDataset(x[32:], y[32:]), batch_size=8)
    save_top_k, save_last, max_epochs = 3, False, 5
    model = TinyMLP(architecture_name="mlp", hidden=8, lr=0.01)
    cb = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="val_loss", mode="min",
                         save_top_k=save_top_k, save_last=save_last,
                         filename="{epoch}-{step}-{val_loss:.2f}")
    logger = CSVLogger(save_dir=run_dir, name="lightning_logs")
    trainer = _trainer(run_dir, max_epochs, cb, logger)
    trainer.fit(model, train_dl, val_dl)

    entries = _lightning_entries(root, MLP_RUN, cb, model.history, save_top_k, save_last)
    run = {
        "framework": "lightning",
        "hydra": False,
        "architecture": model.hparams.architecture_name,
        "architecture_source": "hyper_parameters.architecture_name",
        "save_top_k": save_top_k,
        "save_last": save_last,
        "max_epochs": max_epochs,
        "checkpoints": sorted(entries),
        **_run_summary(root, cb),
        **_logger_files(root, logger),
    }
    return run, entries


# --------------------------------------------------------------------------- plain torch runs


class _CapeToy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.LayerNorm(12))
        self.keypoint_head = nn.Linear(12, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.keypoint_head(self.backbone(x))


def _build_cape_run(root: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[Any]]:
    run_dir = root / CAPE_RUN
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED + 2)
    np.random.seed(SEED + 2)
    random.seed(SEED + 2)
    lr, lr_tok, bs, acc, qpe = 1e-4, "1e-4", 2, 4, 2
    # output_dir stays relative (as typed on the command line) so contents are root-independent.
    args = argparse.Namespace(model="cape", lr=lr, batch_size=bs, accumulation_steps=acc,
                              num_queries_per_episode=qpe, epochs=50, seed=SEED + 2,
                              output_dir=f"outputs/{CAPE_RUN}", dataset="mp100", device="cpu")
    model = _CapeToy()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    x, y = torch.randn(8, 6), torch.randn(8, 4)

    def train_epoch() -> float:
        loss = torch.tensor(0.0)
        for i in range(0, 8, bs):
            loss = nn.functional.mse_loss(model(x[i:i + bs]), y[i:i + bs])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        return float(loss.detach())

    suffix = f"lr{lr_tok}_bs{bs}_acc{acc}_qpe{qpe}"
    # (file name, epoch, val loss, val pck, best_val_loss, best_pck, filename numbers)
    plan: list[tuple[str, int, float, float, float, float, dict[str, float]]] = [
        (f"checkpoint_e001_{suffix}.pth", 1, 0.1502, 0.7011, 0.1502, 0.7011, {}),
        (f"checkpoint_e002_{suffix}.pth", 2, 0.0987, 0.7654, 0.0987, 0.7654, {}),
        ("checkpoint_best_loss_e002_valloss0.0987_pck0.7654.pth", 2, 0.0987, 0.7654, 0.0987,
         0.7654, {"best_val_loss": 0.0987, "best_pck": 0.7654}),
        # Deliberate disagreement: the name says pck0.8123, the file holds 0.8125.
        ("checkpoint_best_pck_e002_pck0.8123_valloss0.1234.pth", 2, 0.1234, 0.8125, 0.1234,
         0.8125, {"best_pck": 0.8123, "best_val_loss": 0.1234}),
    ]
    entries: dict[str, dict[str, Any]] = {}
    conflicts: list[Any] = []
    trained_epoch = 0
    for name, epoch, vloss, vpck, best_loss, best_pck, name_values in plan:
        while trained_epoch < epoch:
            train_loss = train_epoch()
            trained_epoch += 1
        path = run_dir / name
        torch.save({
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(),
            "epoch": epoch,
            "args": args,
            "train_stats": {"loss": train_loss, "lr": sched.get_last_lr()[0]},
            "val_stats": {"loss": vloss, "pck": vpck},
            "best_val_loss": best_loss,
            "best_pck": best_pck,
            "epochs_without_improvement": 0 if epoch == 2 else 1,
            "rng_state": torch.get_rng_state(),
            "np_rng_state": np.random.get_state(),
            "py_rng_state": random.getstate(),
        }, path)
        ck = _load(path)
        rel = _rel(path, root)
        values = {k: ck[k] for k in ("epoch", "best_val_loss", "best_pck",
                                     "epochs_without_improvement")}
        conflict = None
        for field, named in name_values.items():
            if named != values[field]:
                conflict = {"path": rel, "field": field, "filename_value": named,
                            "file_value": values[field], "winner": "file"}
                conflicts.append(conflict)
        entries[rel] = {
            "kind": "training_dict",
            "run": CAPE_RUN,
            "serialization": "zip",
            "epoch": ck["epoch"],
            "global_step": None,
            "values": {**values, "val_stats": dict(ck["val_stats"]),
                       "train_stats": dict(ck["train_stats"]), "args": vars(ck["args"])},
            "filename_values": {"epoch": epoch, **name_values},
            "expected_conflict": conflict,
            "top_level_keys": sorted(ck),
            "tensors": _describe_state_dict(ck["model"]),
        }
    run = {
        "framework": "torch",
        "hydra": False,
        "architecture": args.model,
        "architecture_source": "args.model",
        "checkpoints": sorted(entries),
    }
    return run, entries, conflicts


def _build_legacy(root: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    d = root / LEGACY_DIR
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED + 3)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    sd = model.state_dict()
    torch.save({"state_dict": sd, "epoch": 7, "global_step": 700}, d / "model_legacy.pt",
               _use_new_zipfile_serialization=False)
    torch.save(sd, d / "plain_state_dict.pth")
    hf = nn.Sequential(OrderedDict(embeddings=nn.Embedding(10, 4), encoder=nn.Linear(4, 4)))
    torch.save(hf.state_dict(), d / "weights.bin")

    entries: dict[str, dict[str, Any]] = {}
    for name in ("model_legacy.pt", "plain_state_dict.pth", "weights.bin"):
        path = d / name
        ck = _load(path)
        wrapped = "state_dict" in ck
        entries[_rel(path, root)] = {
            "kind": "wrapped_state_dict" if wrapped else "state_dict",
            "run": LEGACY_DIR,
            "serialization": "zip" if zipfile.is_zipfile(path) else "legacy",
            "epoch": ck.get("epoch") if wrapped else None,
            "global_step": ck.get("global_step") if wrapped else None,
            "top_level_keys": sorted(ck),
            "tensors": _describe_state_dict(ck["state_dict"] if wrapped else ck),
        }
    run = {"framework": "torch", "hydra": False, "architecture": None,
           "architecture_source": None, "checkpoints": sorted(entries)}
    return run, entries


def _make_zoo() -> OrderedDict[str, Tensor]:
    g = torch.Generator().manual_seed(SEED + 4)
    f32 = torch.randn(4, 5, generator=g)
    f32[0, :4] = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0])
    tied = torch.randn(2, 3, generator=g)
    big = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    int64 = torch.randint(-(2**40), 2**40, (4,), dtype=torch.int64, generator=g)
    int64 = torch.cat([int64, torch.tensor([2**62 + 1, -(2**63), 2**63 - 1])])  # > 2**53
    zoo: OrderedDict[str, Tensor] = OrderedDict()
    zoo["float32"] = f32
    zoo["float64"] = torch.randn(3, 3, dtype=torch.float64, generator=g)
    zoo["float16"] = torch.randn(2, 4, generator=g).half()
    zoo["bfloat16"] = torch.randn(2, 4, generator=g).to(torch.bfloat16)
    zoo["int8"] = torch.randint(-128, 128, (6,), dtype=torch.int8, generator=g)
    zoo["uint8"] = torch.randint(0, 256, (6,), dtype=torch.uint8, generator=g)
    zoo["int16"] = torch.randint(-(2**15), 2**15, (5,), dtype=torch.int16, generator=g)
    zoo["int32"] = torch.randint(-(2**31), 2**31 - 1, (5,), dtype=torch.int32, generator=g)
    zoo["int64"] = int64
    zoo["bool"] = torch.randn(7, generator=g) > 0
    zoo["complex64"] = torch.randn(3, dtype=torch.complex64, generator=g)
    zoo["tied_a"] = tied
    zoo["tied_b"] = tied  # the same object: one storage in the file
    zoo["transposed"] = torch.randn(3, 5, generator=g).t()
    zoo["sliced"] = big[1:, ::2]  # storage_offset 6, stride (6, 2)
    zoo["scalar"] = torch.tensor(3.5)
    zoo["empty"] = torch.empty(0, 3)
    zoo["float8"] = torch.randn(2, 4, generator=g).to(torch.float8_e4m3fn)
    # randint has no uint16 kernel; go through int32 and cast.
    zoo["uint16"] = torch.randint(0, 2**16, (5,), dtype=torch.int32, generator=g).to(torch.uint16)
    zoo["parameter"] = nn.Parameter(torch.randn(2, 2, generator=g))
    return zoo


def _groups(sd: Mapping[str, Tensor], key: Any) -> list[list[str]]:
    buckets: dict[Any, list[str]] = {}
    for name, t in sd.items():
        buckets.setdefault(key(t), []).append(name)
    return [names for names in buckets.values() if len(names) > 1]


def _build_zoo(root: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    d = root / ZOO_DIR
    d.mkdir(parents=True, exist_ok=True)
    zoo = _make_zoo()
    torch.save({"state_dict": zoo}, d / "zoo.pt")
    torch.save(zoo, d / "zoo_sd.pt")
    entries: dict[str, dict[str, Any]] = {}
    for name, wrapped in (("zoo.pt", True), ("zoo_sd.pt", False)):
        path = d / name
        ck = _load(path)
        sd = ck["state_dict"] if wrapped else ck
        entries[_rel(path, root)] = {
            "kind": "wrapped_state_dict" if wrapped else "state_dict",
            "run": ZOO_DIR,
            "serialization": "zip",
            "epoch": None,
            "global_step": None,
            "top_level_keys": sorted(ck),
            "tensors": _describe_state_dict(sd),
            # Read back from the loaded file: torch keeps object identity for tied weights.
            "tied_groups": _groups(sd, id),
            "shared_storage_groups": _groups(sd, lambda t: t.untyped_storage().data_ptr()),
            "nonfinite": {"float32": {"nan": int(sd["float32"].isnan().sum()),
                                      "posinf": int(sd["float32"].isposinf().sum()),
                                      "neginf": int(sd["float32"].isneginf().sum()),
                                      "negzero": int(((sd["float32"] == 0)
                                                      & sd["float32"].signbit()).sum())}},
        }
    run = {"framework": "torch", "hydra": False, "architecture": None,
           "architecture_source": None, "checkpoints": sorted(entries)}
    return run, entries


def _build_misc(root: Path) -> list[str]:
    d = root / "misc"
    d.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(d / "dataset.zip", "w") as zf:
        # Fixed timestamp so the archive bytes are reproducible.
        info = zipfile.ZipInfo("dataset/README.txt", date_time=(2024, 1, 1, 0, 0, 0))
        zf.writestr(info, "Not a checkpoint: a plain zip with a text file.\n")
    return [f"{MLP_RUN}/notes.txt", f"{OCR_RUN}/sample.png", "misc/dataset.zip"]


# --------------------------------------------------------------------------- public API


def build_example_tree(root: Path) -> dict[str, Any]:
    """Build the clean example ``outputs/`` tree under ``root`` and return its manifest."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        # ModelCheckpoint would add -v1 suffixes and warn; ground truth would be wrong.
        raise FileExistsError(f"{root} exists and is not empty")
    root.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Any] = {}
    checkpoints: dict[str, dict[str, Any]] = {}
    with _preserve_global_state():
        with _quiet_lightning():
            for name, builder in ((OCR_RUN, _build_ocr_run), (MLP_RUN, _build_mlp_run)):
                runs[name], entries = builder(root)
                checkpoints.update(entries)
        runs[CAPE_RUN], entries, conflicts = _build_cape_run(root)
        checkpoints.update(entries)
        for name, builder in ((LEGACY_DIR, _build_legacy), (ZOO_DIR, _build_zoo)):
            runs[name], entries = builder(root)
            checkpoints.update(entries)
    ignored = _build_misc(root)
    all_files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return {
        "format_version": 1,
        "versions": {"torch": torch.__version__, "lightning": L.__version__},
        "checkpoints": dict(sorted(checkpoints.items())),
        "runs": runs,
        "expected_conflicts": conflicts,
        "ignored": ignored,
        "non_checkpoint_files": [f for f in all_files if f not in checkpoints],
    }


class _SystemPayload:
    """Unpickles as ``os.system(cmd)``: the pickle stores a ``posix.system`` global."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.cmd,))


class _EvalPayload:
    """Unpickles as ``eval(expr)``: the pickle stores a ``builtins.eval`` global."""

    def __init__(self, expr: str) -> None:
        self.expr = expr

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (eval, (self.expr,))


def pickle_globals(path: Path) -> list[str]:
    """``"module name"`` of every GLOBAL/STACK_GLOBAL opcode in a torch file's main pickle.

    Read with ``pickletools.genops`` only: nothing is unpickled. Handles the zip format
    (``*/data.pkl``) and the legacy format (4th pickle of the stream).
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            (name,) = [n for n in zf.namelist() if n.endswith("/data.pkl")]
            ops = list(pickletools.genops(zf.read(name)))
    else:
        stream = io.BytesIO(Path(path).read_bytes())
        for _ in range(3):  # magic number, protocol version, sys_info
            list(pickletools.genops(stream))
        ops = list(pickletools.genops(stream))
    found: list[str] = []
    strings: list[str] = []
    for op, arg, _pos in ops:
        if op.name == "GLOBAL":
            found.append(str(arg))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]} {strings[-1]}")
        elif isinstance(arg, str):
            strings.append(arg)
    return found


def _lightning_like_bytes() -> bytes:
    """A real torch.save zip checkpoint shaped like Lightning's, built in memory."""
    torch.manual_seed(SEED + 5)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.Adam(model.parameters())
    buf = io.BytesIO()
    torch.save({"epoch": 3, "global_step": 12, "pytorch-lightning_version": L.__version__,
                "state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()],
                "lr_schedulers": [], "hyper_parameters": {"lr": 1e-3}}, buf)
    return buf.getvalue()


def build_bad_inputs(root: Path, good_source: Path | None = None) -> dict[str, Any]:
    """Write hostile/broken inputs into the flat folder ``root``; return their manifest.

    The payload commands embed absolute marker paths under ``root`` *as built*; copies of the
    folder still point at those original paths (``marker_paths``), which must never exist.
    ``good_source`` (a real zip checkpoint) is what ``truncated.ckpt`` is cut from.
    """
    with _preserve_global_state():
        return _build_bad_inputs(Path(root), good_source)


def _build_bad_inputs(root: Path, good_source: Path | None) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    build_root = root.resolve()
    torch.manual_seed(SEED + 6)
    sd = nn.Linear(3, 2).state_dict()
    markers = {"malicious.ckpt": "PWNED_os_system", "malicious_eval.pt": "PWNED_eval",
               "legacy_malicious.pt": "PWNED_legacy_os_system"}

    def system(name: str) -> _SystemPayload:
        return _SystemPayload(f"touch {shlex.quote(str(build_root / markers[name]))}")

    # Hidden one level down, next to real tensors, like a poisoned hparams entry would be.
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 12,
                "hyper_parameters": {"lr": 1e-3, "init_hook": system("malicious.ckpt")}},
               root / "malicious.ckpt")
    marker = str(build_root / markers["malicious_eval.pt"])
    torch.save({"state_dict": sd, "extra": _EvalPayload(
        f"__import__('pathlib').Path({marker!r}).touch()")}, root / "malicious_eval.pt")
    torch.save({"state_dict": sd, "payload": system("legacy_malicious.pt")},
               root / "legacy_malicious.pt", _use_new_zipfile_serialization=False)

    if good_source is not None:
        source_bytes, source = Path(good_source).read_bytes(), str(good_source)
    else:
        source_bytes, source = _lightning_like_bytes(), "in-memory lightning-shaped torch.save"
    cut = int(len(source_bytes) * 0.6)
    (root / "truncated.ckpt").write_bytes(source_bytes[:cut])
    (root / "empty.pt").write_bytes(b"")
    (root / "random.pth").write_bytes(random.Random(SEED).randbytes(4096))
    good = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 1)).state_dict()
    torch.save(good, root / "good.pt")

    files: dict[str, dict[str, Any]] = {
        "malicious.ckpt": {"expect": "unsafe", "serialization": "zip",
                           "dangerous_globals": ["posix.system"]},
        "malicious_eval.pt": {"expect": "unsafe", "serialization": "zip",
                              "dangerous_globals": ["builtins.eval"]},
        "legacy_malicious.pt": {"expect": "unsafe", "serialization": "legacy",
                                "dangerous_globals": ["posix.system"]},
        "truncated.ckpt": {"expect": "corrupt", "source": source,
                           "original_bytes": len(source_bytes), "truncated_bytes": cut},
        "empty.pt": {"expect": "empty"},
        "random.pth": {"expect": "not_a_checkpoint", "size": 4096},
        "good.pt": {"expect": "ok", "kind": "state_dict", "serialization": "zip",
                    "tensors": _describe_state_dict(_load(root / "good.pt"))},
    }
    for name, marker_name in markers.items():
        files[name]["marker"] = marker_name
        # As stored: protocol 2 writes builtins as "__builtin__" (Python 2 compat names).
        files[name]["raw_globals"] = sorted(set(pickle_globals(root / name)))
    return {
        "format_version": 1,
        "build_root": str(build_root),
        "files": files,
        "good": ["good.pt"],
        "markers": sorted(markers.values()),
        "marker_paths": sorted(str(build_root / m) for m in markers.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="directory to create (must be absent or empty)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = build_example_tree(args.root)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"built {len(manifest['checkpoints'])} checkpoints in {len(manifest['runs'])} runs "
          f"under {args.root} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
