"""Metrics from TensorBoard event files and Weights & Biases runs, matched to one checkpoint.

Both logs record values by step, never by checkpoint, so a value is only taken when the
log itself says it belongs to the checkpoint's epoch or step (a metric from another step is
the worst label a sidecar can carry):

* **By epoch**, when the log records the epoch next to its values (Lightning logs an
  ``epoch`` scalar with every logged step, to TensorBoard and to W&B) and the checkpoint
  knows its epoch: every logged step of that epoch, later steps winning, as the rows of
  a CSVLogger's ``metrics.csv`` do; when the checkpoint also knows its global step N, only
  the values logged at steps before N (Lightning logs an epoch's validation at the step
  before the end-of-epoch checkpoint's; a checkpoint saved mid-epoch must not get the
  validation values logged after it). W&B rows without a step are then not used.
* **Else by step**, when the checkpoint knows its global step: TensorBoard values logged at
  exactly that step (a Hugging Face Trainer logs ``eval/loss`` at the step it saves), W&B
  rows whose ``trainer/global_step`` (Lightning), ``train/global_step`` (Trainer) or
  ``global_step`` equals it. W&B's own ``_step`` counter is not the training step and is
  never used.
* Otherwise nothing is taken (a note says why). Nor is anything taken for a checkpoint
  of a step- or time-based ``ModelCheckpoint`` (``every_n_train_steps``,
  ``train_time_interval``): saved at a training batch's end, it may precede values logged
  at its own step (the epoch's validation, when that batch was the epoch's last), and
  nothing in the logs tells the two apart.

A value whose name, lower-cased without separators, is already known (``eval/loss`` from
TensorBoard after ``eval_loss`` from ``trainer_state.json``; ``train/loss`` after ``loss``)
is offered under the known name: an agreeing value (float32 rounding aside) adds nothing,
a different one is recorded as a conflict.

**Which log.** TensorBoard: the event-file folders below the experiment folder nearest to
the checkpoint (most path components shared); several equally near folders (Keras'
``train/`` and ``validation/``) are all read, each tag prefixed by its folder's name.
W&B: the run (``wandb/run-*`` or ``offline-run-*``) whose id is a folder name on the
checkpoint's path (Lightning's ``WandbLogger`` saves under ``<project>/<run id>/``), else
the only run of the experiment; with several runs and no id on the path, none.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CkptError

if TYPE_CHECKING:
    from .metadata import Gathered
    from .readers.tfevents import ScalarLog

#: step columns a W&B row may carry, by the logger that writes them
_WANDB_STEP_KEYS = ("trainer/global_step", "train/global_step", "global_step")
#: bookkeeping, not metrics
_NOT_METRICS = frozenset({"epoch", "train/epoch", "_step", "_runtime", "_timestamp",
                          "hp_metric",  # Lightning's placeholder for the hparams plugin
                          *_WANDB_STEP_KEYS})
#: TensorBoard tags that say a log's steps are training steps: the Trainer's callback
#: logs these with every step (a plain ``add_scalar(tag, v, epoch)`` log counts epochs)
_TB_STEP_TAGS = ("train/epoch", "train/global_step")
#: event folders that are one run's parts (Keras' TensorBoard callback), read together
_RUN_PARTS = frozenset({"train", "validation", "eval", "val", "test"})
_MAX_EVENT_FOLDERS = 64


def _normalised(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _offer(g: Gathered, values: dict[str, float], source: str) -> None:
    known = {_normalised(name): name for name in g.metrics()}
    for name, value in values.items():
        if name in _NOT_METRICS:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        try:
            value = float(value)  # an int of 400 digits is no metric
        except OverflowError:
            continue
        same = known.get(_normalised(name))
        if same is None and name.startswith("train/"):
            # the Trainer's TensorBoard callback logs trainer_state's "loss" as "train/loss"
            same = known.get(_normalised(name[len("train/"):]))
        g.offer_metric(same or name, value, source, tolerance=1e-6)


def _values_for(rows: list[tuple[int | None, dict[str, float]]], epoch: Any, step: Any, *,
                saves_mid_epoch: bool = False,
                steps_are_training_steps: bool = True) -> dict[str, float] | None:
    """The values logged for the checkpoint of ``epoch``/``step`` (rules in the module doc);
    None when nothing matches or nothing can be matched. ``rows`` are (the training step
    the row was logged at, or None when unknown; its values)."""
    from .metadata import epoch_values

    if not isinstance(step, int) or isinstance(step, bool):
        step = None
    if saves_mid_epoch:
        return None  # the file may precede values logged at its own step: none are taken
    if isinstance(epoch, int) and any("epoch" in row for _, row in rows):
        # the CSV rule, but a row without a step cannot be placed before the checkpoint
        merged = epoch_values([(at, row) for at, row in rows if row.get("epoch") == epoch],
                              step, keep_unknown_steps=False)
        return merged or None
    if step is not None and steps_are_training_steps:
        merged = {}
        for at, row in rows:
            if at == step:
                merged.update(row)
        return merged or None
    return None


# --- TensorBoard ------------------------------------------------------------------------------

class _Cache:
    """Folder walks and parsed logs, once per convert run (``reset`` starts a run)."""

    def __init__(self) -> None:
        self.event_dirs: dict[Path, list[Path]] = {}
        self.logs: dict[tuple[Path, tuple[tuple[str, int, int], ...]], ScalarLog | str] = {}
        self.wandb: dict[Path, Any] = {}


_CACHE = _Cache()


def reset() -> None:
    global _CACHE
    _CACHE = _Cache()


def _event_dirs(exp_root: Path) -> list[Path]:
    if exp_root not in _CACHE.event_dirs:
        from .metadata import experiment_files
        from .readers.tfevents import is_event_file_name

        dirs: dict[Path, None] = {}
        for path, _ in experiment_files(exp_root):
            if is_event_file_name(path.name) and len(dirs) < _MAX_EVENT_FOLDERS:
                dirs[path.parent] = None
        _CACHE.event_dirs[exp_root] = sorted(dirs)
    return _CACHE.event_dirs[exp_root]


def _scalar_log(folder: Path) -> ScalarLog | str:
    """The scalars of the event files directly in ``folder`` (cached while they are
    unchanged), or why they were not read."""
    from .readers.tfevents import find_event_files, read_scalars_dir

    try:
        files = find_event_files(folder, max_depth=0)
        stamp = tuple((p.name, (s := os.stat(p)).st_size, s.st_mtime_ns) for p in files)
    except (OSError, CkptError) as exc:
        return f"skipped ({getattr(exc, 'message', exc)})"
    key = (folder, stamp)
    if key not in _CACHE.logs:
        try:
            _CACHE.logs[key] = read_scalars_dir(folder, max_depth=0)
        except CkptError as exc:
            _CACHE.logs[key] = f"skipped ({exc.message})"
    return _CACHE.logs[key]


def _nearest_dirs(path: Path, dirs: list[Path]) -> tuple[list[Path], str | None]:
    """The event folders of the checkpoint's run, or why none is taken: the nearest folder;
    several equally near ones only when they are one run's parts (Keras' ``train/`` and
    ``validation/``), else none (two runs' logs, e.g. ``version_0`` and ``version_1``
    beside a ``dirpath`` of checkpoints, cannot be told apart)."""
    def shared(folder: Path) -> int:
        return len(os.path.commonpath([path, folder]).split(os.sep))

    if not dirs:
        return [], None
    best = max(shared(d) for d in dirs)
    nearest = [d for d in dirs if shared(d) == best]
    if len(nearest) == 1:
        return nearest, None
    if len({d.parent for d in nearest}) == 1 and all(d.name in _RUN_PARTS for d in nearest):
        return nearest, None
    names = ", ".join(sorted(d.name for d in nearest)[:4])
    return [], f"{len(nearest)} TensorBoard runs are equally near ({names}): none used"


def gather_from_tensorboard(path: Path, exp_root: Path, g: Gathered) -> None:
    folders, why_none = _nearest_dirs(path, _event_dirs(exp_root))
    if why_none is not None:
        g.notes.append(why_none)
    if not folders:
        return
    epoch, step = g.get("training.epoch"), g.get("training.global_step")
    for folder in folders:
        log = _scalar_log(folder)
        relative = os.path.relpath(folder, exp_root)
        if isinstance(log, str):
            g.notes.append(f"{folder}: {log}")
            continue
        by_step: dict[int, dict[str, float]] = {}
        for tag, points in log.points.items():
            for at, scalar in points.items():
                by_step.setdefault(at, {})[tag] = scalar.value
        rows: list[tuple[int | None, dict[str, float]]] = sorted(by_step.items())
        found = _values_for(rows, epoch, step, saves_mid_epoch=bool(g.hints.get("saves_mid_epoch")),
                            steps_are_training_steps=any(t in log.points for t in _TB_STEP_TAGS))
        if found is None:
            continue
        values = found
        if len(folders) > 1:  # Keras' train/ and validation/ log the same tag names
            name = folder.name
            values = {k if k in _NOT_METRICS else f"{name}/{k}": v for k, v in values.items()}
        _offer(g, values, f"tensorboard:{relative}")


# --- Weights & Biases ---------------------------------------------------------------------------

def _wandb_runs(exp_root: Path) -> list[Any]:
    """The runs of an experiment, read once per convert run (unreadable ones noted)."""
    if exp_root not in _CACHE.wandb:
        from .readers.wandb_run import find_wandb_runs, read_wandb_run

        runs: list[Any] = []
        for folder in find_wandb_runs(exp_root):
            try:
                runs.append(read_wandb_run(folder))
            except CkptError as exc:
                runs.append(f"{folder}: not read ({exc.message})")
        _CACHE.wandb[exp_root] = runs
    return list(_CACHE.wandb[exp_root])


def _wandb_step(row: dict[str, Any]) -> int | None:
    """The training step a W&B row was logged at, when the logger recorded it."""
    for key in _WANDB_STEP_KEYS:
        value = row.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 62:
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2.0 ** 62:
            return int(value)
    return None


def gather_from_wandb(path: Path, exp_root: Path, g: Gathered) -> None:
    runs = _wandb_runs(exp_root)
    for problem in [r for r in runs if isinstance(r, str)]:
        g.notes.append(problem)
    readable = [r for r in runs if not isinstance(r, str)]
    if not readable:
        return
    parts = path.parts
    on_path = [r for r in readable if r.run_id in parts]
    if on_path:  # the deepest id on the path: a fine-tuning run saved inside its parent's
        deepest = max(on_path, key=lambda r: max(i for i, p in enumerate(parts) if p == r.run_id))
        chosen = deepest.run_id
    elif len({r.run_id for r in readable}) == 1:
        chosen = readable[0].run_id
    else:
        g.notes.append(f"{len(readable)} W&B runs in {exp_root.name} and none named on the "
                       "checkpoint's path: W&B not used")
        return
    # A resumed run logs into a new folder under the same id: its folders, in start order
    # (their names begin with the start time), replay as one history, later rows winning.
    attempts = [r for r in readable if r.run_id == chosen]
    run = attempts[-1]
    source = f"wandb:{run.folder.name}"
    epoch, step = g.get("training.epoch"), g.get("training.global_step")
    rows = [(_wandb_step(row), row) for attempt in attempts for row in attempt.history]
    # The summary holds each key's LAST (or best) value, not one step's: never matched.
    found = _values_for(rows, epoch, step, saves_mid_epoch=bool(g.hints.get("saves_mid_epoch"))
                        ) if rows else None
    if found is not None:
        _offer(g, found, source)
    elif rows:
        g.notes.append(f"{source}: no logged values of this checkpoint's epoch or step")
    elif run.summary:
        g.notes.append(f"{source}: only a summary (last values, no history): not used")
    config = {k: v for k, v in run.config.items() if not k.startswith("_")}
    if config:
        g.offer("model.hyper_parameters", config, source)
    g.offer("model.run_name", run.name, source)
