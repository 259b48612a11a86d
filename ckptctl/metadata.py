"""Gather a checkpoint's metadata from every source available, recording where each came from.

Sources are offered in priority order: the checkpoint's own fields (its format's
``read_metadata``, e.g. Lightning's ModelCheckpoint callback state, a Hugging Face
``trainer_state.json``), the logger's ``metrics.csv`` and ``hparams.yaml``, TensorBoard
event files and W&B runs (``logsources``), the Hydra config, and the file name
(``gather_common``). The first source to offer a field wins; a later source that disagrees
(beyond the rounding it was written with) is recorded as a conflict rather than silently
dropped. Field paths are one typed vocabulary (``FieldPath``), checked against the sidecar
schema by a test and at every call site by the type checker.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args

from .budgets import MAX_FLOW_NESTING, flow_nesting_exceeds
from .filename_tokens import parse_filename
from .safeio import open_regular

#: Every sidecar field a gatherer may offer (``group.field``); metrics use ``offer_metric``.
FieldPath = Literal[
    "training.epoch", "training.global_step", "training.framework", "training.framework_version",
    "model.architecture", "model.name", "model.backend", "model.run_name",
    "model.training_config", "model.hyper_parameters", "model.config",
    "checkpointing.monitor", "checkpointing.mode", "checkpointing.save_top_k",
    "checkpointing.save_last", "checkpointing.score", "checkpointing.best_model_score",
    "checkpointing.best_when_saved", "checkpointing.best_epoch", "checkpointing.role",
    "checkpointing.save_counter", "checkpointing.saved_at", "checkpointing.saved_at_text",
    "checkpointing.is_latest",
    "contents.keys", "contents.model_weights", "contents.optimizer_state",
    "contents.lr_scheduler_state", "contents.rng_state",
]
FIELD_PATHS: Final[frozenset[str]] = frozenset(get_args(FieldPath))
GROUPS: Final = ("training", "model", "checkpointing", "contents", "metrics")
_METRIC_PREFIX = "metrics."
_ARCH_KEYS = ("architecture_name", "architecture", "arch", "model_name", "model_type", "model", "name")


@dataclass
class Gathered:
    """Field path -> value, with the source of each and the disagreements seen."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: facts that shape how later sources are read, not sidecar fields: "saves_mid_epoch"
    #: (a step- or time-based ModelCheckpoint: the file may have been saved before values
    #: logged at its own step (its epoch's validation), so no logged values are taken)
    hints: dict[str, Any] = field(default_factory=dict)
    #: said to the user even without -v (a refused pickle among a checkpoint's files)
    warnings: list[str] = field(default_factory=list)

    def offer(self, name: FieldPath, value: Any, source: str, tolerance: float = 0.0) -> None:
        if name not in FIELD_PATHS:  # a computed name that slipped past the type checker
            raise ValueError(f"not a sidecar field: {name!r}")
        self._offer(name, value, source, tolerance)

    def offer_metric(self, metric: str, value: Any, source: str, tolerance: float = 0.0) -> None:
        self._offer(_METRIC_PREFIX + metric, value, source, tolerance)

    def _offer(self, name: str, value: Any, source: str, tolerance: float) -> None:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return
        if name not in self.values:
            self.values[name] = value
            self.sources[name] = source
            return
        kept = self.values[name]
        if not _agrees(kept, value, tolerance):
            self.conflicts.append({"field": name, "kept": kept, "kept_from": self.sources[name],
                                   "other": value, "other_from": source})

    def get(self, name: FieldPath) -> Any:
        return self.values.get(name)

    def metrics(self) -> dict[str, Any]:
        cut = len(_METRIC_PREFIX)
        return {k[cut:]: v for k, v in self.values.items() if k.startswith(_METRIC_PREFIX)}

    def group(self, prefix: str) -> dict[str, Any]:
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.values.items() if k.startswith(prefix + ".")}

    def provenance(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for name, source in self.sources.items():
            sources = result.setdefault(name.split(".", 1)[0], [])
            if source not in sources:
                sources.append(source)
        return result


def _agrees(a: Any, b: Any, tolerance: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a == b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(float(a) - float(b)) <= max(tolerance, 1e-6 * max(abs(a), abs(b)))
    return bool(a == b)


def architecture(config: Mapping[str, Any]) -> str | None:
    for key in _ARCH_KEYS:
        value = config.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, Mapping) and key == "model":
            nested = architecture(value)
            if nested:
                return nested
    target = config.get("_target_")
    return target.rsplit(".", 1)[-1] if isinstance(target, str) else None


def find_upwards(start: Path, stop: Path, relative: str) -> Path | None:
    """The nearest ``relative`` file in ``start`` or its parents, not above ``stop``."""
    current = start
    while True:
        candidate = current / relative
        if candidate.is_file():
            return candidate
        if current == stop or current.parent == current or stop not in current.parents:
            return None
        current = current.parent


def _walk_with_depth(root: Path, max_depth: int, max_entries: int = 20000
                     ) -> Iterator[tuple[Path, int]]:
    """Files (and links) below ``root`` with the depth of their folder; symlinked folders
    are not entered; at most ``max_entries`` entries are looked at."""
    seen = 0
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if seen > max_entries:
                return
            if entry.is_dir(follow_symlinks=False):
                if depth < max_depth:
                    stack.append((Path(entry.path), depth + 1))
            else:
                yield Path(entry.path), depth


#: how deep one convert run looks into an experiment folder for logs and configs
EXPERIMENT_WALK_DEPTH = 6


def _nearest(path: Path, candidates: list[Path]) -> Path | None:
    def shared(c: Path) -> int:
        return len(os.path.commonpath([str(c.parent), str(path.parent)]))

    return max(candidates, key=lambda c: (shared(c), -len(c.parts))) if candidates else None


class _RunCache:
    """Logger files read once per run, not once per checkpoint: an experiment's 20
    checkpoints share one folder walk and one ``metrics.csv``. Keyed by size and mtime, so a
    file that changes mid-run is read again; ``start_run`` empties it."""

    def __init__(self) -> None:
        self.walks: dict[Path, list[tuple[Path, int]]] = {}
        self.metrics: dict[tuple[Path, int, int], MetricRows | str] = {}

    def experiment_files(self, exp_root: Path) -> list[tuple[Path, int]]:
        """Every file of an experiment folder with its folder's depth, walked once per run
        for all who ask (logger files, TensorBoard folders, convert's newest-metadata check)."""
        if exp_root not in self.walks:
            self.walks[exp_root] = list(_walk_with_depth(exp_root, EXPERIMENT_WALK_DEPTH))
        return self.walks[exp_root]

    def logger_files(self, exp_root: Path) -> list[Path]:
        return [p for p, depth in self.experiment_files(exp_root)
                if depth <= 5 and p.name in ("metrics.csv", "hparams.yaml")]

    def metrics_by_epoch(self, path: Path) -> MetricRows | str:
        """Each epoch's rows (step, values), in file order, or why the file was skipped."""
        try:
            info = os.stat(path)
        except OSError as exc:
            return str(exc)
        key = (path, info.st_size, info.st_mtime_ns)
        if key not in self.metrics:
            self.metrics[key] = _read_metrics_csv(path)
        return self.metrics[key]


_RUN = _RunCache()


def experiment_files(exp_root: Path) -> list[tuple[Path, int]]:
    """``_RunCache.experiment_files`` of the current run."""
    return _RUN.experiment_files(exp_root)


def start_run() -> None:
    """Forget the logger files read so far (``convert`` calls it once per run)."""
    global _RUN
    _RUN = _RunCache()
    from . import logsources

    logsources.reset()


#: epoch -> its rows in file order: (the step column, or None without one; the row's values)
MetricRows = dict[int, list[tuple[int | None, dict[str, float]]]]


def _read_metrics_csv(path: Path) -> MetricRows | str:
    by_epoch: MetricRows = {}
    try:
        with open_regular(path, "r", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                epoch = _to_int(row.get("epoch"))
                if epoch is None:
                    continue
                merged: dict[str, float] = {}
                by_epoch.setdefault(epoch, []).append((_to_int(row.get("step")), merged))
                for column, text in row.items():
                    if column in ("epoch", "step") or column is None or not text:
                        continue
                    try:
                        merged[column] = float(text)
                    except ValueError:
                        continue
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        return f"skipped ({exc})"
    return by_epoch


def gather_from_logs(path: Path, exp_root: Path, g: Gathered) -> None:
    """CSVLogger ``metrics.csv`` rows of the checkpoint's epoch, and ``hparams.yaml``."""
    files = _RUN.logger_files(exp_root)
    metrics_csv = _nearest(path, [p for p in files if p.name == "metrics.csv"])
    epoch = g.get("training.epoch")
    if metrics_csv is not None and isinstance(epoch, int) and g.hints.get("saves_mid_epoch"):
        g.notes.append(f"{metrics_csv.name}: a step-based ModelCheckpoint's file may precede "
                       "values logged at its step; none attributed to it")
    elif metrics_csv is not None and isinstance(epoch, int):
        source = f"metrics.csv:{os.path.relpath(metrics_csv, exp_root)}"
        metrics = _RUN.metrics_by_epoch(metrics_csv)
        if isinstance(metrics, str):
            g.notes.append(f"{metrics_csv}: {metrics}")
        else:
            for column, value in epoch_values(metrics.get(epoch, []),
                                               g.get("training.global_step")).items():
                g.offer_metric(column, value, source)
    hparams = _nearest(path, [p for p in files if p.name == "hparams.yaml"])
    if hparams is not None:
        data = _safe_yaml(hparams, g)
        if isinstance(data, dict) and data:
            source = f"hparams.yaml:{os.path.relpath(hparams, exp_root)}"
            g.offer("model.hyper_parameters", data, source)
            g.offer("model.architecture", architecture(data), source)


def epoch_values(rows: list[tuple[int | None, dict[str, float]]], global_step: Any, *,
                 keep_unknown_steps: bool = True) -> dict[str, float]:
    """The checkpoint's epoch's values, later rows winning; with its global step N known, only
    rows logged at steps before N (Lightning logs an epoch's validation at the step before
    the end-of-epoch checkpoint's: a checkpoint saved mid-epoch must not get the validation
    values logged after it). Rows without a step (a CSV of another tool) are kept unless
    ``keep_unknown_steps`` is False (TensorBoard and W&B rows: ``logsources``). (A
    step-based ModelCheckpoint's files get no logged values at all: ``gather_from_logs``.)"""
    bound = global_step if isinstance(global_step, int) and not isinstance(global_step, bool) \
        else None
    merged: dict[str, float] = {}
    for step, values in rows:
        if bound is None or (step is None and keep_unknown_steps) or \
                (step is not None and step < bound):
            merged.update(values)
    return merged


def _to_int(text: Any) -> int | None:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


_MAX_SIDE_YAML = 1 << 20
#: Logger and Hydra YAML nested deeper than this is skipped: real configs nest about 10
#: levels, while the sidecar's schema and every walker over it have a recursion limit.
MAX_YAML_DEPTH = 32


def _safe_yaml(path: Path, g: Gathered) -> Any:
    try:
        with open_regular(path, "rb") as handle:
            text = handle.read(_MAX_SIDE_YAML + 1)
        if len(text) > _MAX_SIDE_YAML or flow_nesting_exceeds(text):
            # too big, or nested so deep that libyaml would crash the process parsing it
            g.notes.append(f"{path}: not read (larger than {_MAX_SIDE_YAML} bytes or nested "
                           f"deeper than {MAX_FLOW_NESTING} levels)")
            return None
        data = _load_yaml(text)
    except Exception as exc:  # YAML written by other tools may hold python tags: skip it
        g.notes.append(f"{path}: not read ({type(exc).__name__})")
        return None
    if nesting_depth(data, MAX_YAML_DEPTH) > MAX_YAML_DEPTH:
        g.notes.append(f"{path}: not read (nested deeper than {MAX_YAML_DEPTH} levels)")
        return None
    return data


def _load_yaml(text: bytes) -> Any:
    """``yamlio.load_yaml_file`` on bytes already read and checked: the safe loader, aliases
    refused."""
    import yaml

    from .yamlio import SafeLoader, _has_alias  # PyYAML only when a YAML file is read

    if b"*" in text and _has_alias(text):
        raise ValueError("YAML aliases are not allowed")
    return yaml.load(text, Loader=SafeLoader)


def nesting_depth(value: Any, limit: int) -> int:
    """How deeply ``value``'s dicts and lists nest, counted without recursion and no further
    than ``limit + 1``."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth + 1)
            if deepest > limit:
                return deepest
            pending.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def gather_from_hydra(path: Path, exp_root: Path, g: Gathered) -> None:
    config_path = find_upwards(path.parent, exp_root, ".hydra/config.yaml")
    if config_path is None:
        return
    config = _safe_yaml(config_path, g)
    if not isinstance(config, dict):
        return
    source = f"hydra:{os.path.relpath(config_path, exp_root)}"
    model = config.get("model")
    if isinstance(model, dict):
        g.offer("model.config", model, source)
        g.offer("model.architecture", architecture(model), source)
    monitor = g.get("checkpointing.monitor")
    # EarlyStopping and schedulers have a `monitor` too: checkpoint sections come first.
    sections = sorted(_dicts_with_monitor(config), key=lambda d: not _is_checkpoint_section(d))
    for section in sections:
        if monitor is not None and section.get("monitor") != monitor:
            continue
        g.offer("checkpointing.monitor", section.get("monitor"), source)
        mode = section.get("mode")
        g.offer("checkpointing.mode", mode if mode in ("min", "max") else None, source)
        top_k = section.get("save_top_k")
        g.offer("checkpointing.save_top_k", top_k if isinstance(top_k, int) else None, source)
        save_last = section.get("save_last")
        g.offer("checkpointing.save_last", save_last if isinstance(save_last, bool) else None, source)
        break


_CHECKPOINT_KEYS = ("save_top_k", "save_last", "dirpath", "filename", "every_n_epochs")


def _is_checkpoint_section(section: dict[str, Any]) -> bool:
    target = section.get("_target_")
    if isinstance(target, str) and target.endswith("ModelCheckpoint"):
        return True
    return any(key in section for key in _CHECKPOINT_KEYS)


def _dicts_with_monitor(node: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    if depth > 6 or not isinstance(node, dict):
        return
    if isinstance(node.get("monitor"), str):
        yield node
    for value in node.values():
        yield from _dicts_with_monitor(value, depth + 1)


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _closeness(logged: str, target: str) -> int:
    """0: same name, 1: its best_ tracker, 2: same last part (val/loss ~ loss), 3: unrelated."""
    norm = _normalise(logged)
    if norm == target:
        return 0
    if norm == "best" + target:
        return 1
    return 2 if _normalise(logged.rsplit("/", 1)[-1]) == target else 3


def gather_from_filename(path: Path, stem: str, g: Gathered) -> None:
    tokens = parse_filename(stem)
    src = "filename"
    g.offer("training.epoch", tokens.epoch, src)
    g.offer("training.global_step", tokens.global_step, src)
    known = g.metrics()
    for name, value in tokens.metrics.items():
        tolerance = 0.5 * 10 ** -tokens.decimals[name]
        # The same metric under a logged spelling (val/loss ~ valloss ~ best_valloss).
        ranked = [(_closeness(k, _normalise(name)), k) for k in known]
        matches = [k for rank, k in sorted(ranked) if rank < 3]
        if not matches:
            g.offer_metric(name, value, src)
        elif not any(_agrees(known[m], value, tolerance) for m in matches):
            g.offer_metric(matches[0], value, src, tolerance)


def gather_common(path: Path, stem: str, exp_root: Path, g: Gathered) -> None:
    """The format-independent sources, after the checkpoint's own: logger files (which need
    the epoch or step the checkpoint gave: CSV, then TensorBoard, then W&B), Hydra, then
    file-name tokens (which defer to metrics already known under another spelling)."""
    # Absolute, both: a relative --checkpoint under an absolute experiment folder must not
    # mix the two (os.path.commonpath refuses).
    path, exp_root = path.absolute(), exp_root.absolute()
    from .logsources import gather_from_tensorboard, gather_from_wandb

    gather_from_logs(path, exp_root, g)
    gather_from_tensorboard(path, exp_root, g)
    gather_from_wandb(path, exp_root, g)
    gather_from_hydra(path, exp_root, g)
    gather_from_filename(path, stem, g)
