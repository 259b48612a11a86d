"""Weights & Biases run folders, read without importing ``wandb`` and without the network.

A run folder is ``wandb/run-YYYYMMDD_HHMMSS-<id>/`` (or ``offline-run-…``). It holds
``run-<id>.wandb``, the run's transaction log (every run, online or offline), and, when the
run was synced or online, ``files/wandb-summary.json``, ``files/config.yaml`` and
``files/wandb-metadata.json``. (wandb 0.31 offline runs write only the log and
``files/requirements.txt``: the three files appear when the run is synced.)

Public API (stable; this is what the metadata sources use)::

    RUN_FOLDER_RE                      # run-YYYYMMDD_HHMMSS-<id> / offline-run-…
    find_wandb_runs(exp_root) -> list[Path]
    read_wandb_run(folder) -> WandbRun
    WandbRun(run_id, name, project, entity, summary, config, started_at, offline,
             program, args, git_commit, host, files_read)

Rules:

* **Finding runs.** ``find_wandb_runs`` looks for folders named like ``RUN_FOLDER_RE`` in
  ``exp_root`` itself, in ``exp_root/wandb/``, and (when ``exp_root`` is a ``wandb``
  folder) there; sorted by name (so by start time). Symlinks are never followed:
  ``wandb/latest-run`` (a symlink wandb makes) and symlinked run folders or files are
  ignored; only regular files are read (``safeio.open_regular``).
* **Summary** (``dict[str, float | int]``): the final value of each metric. From
  ``files/wandb-summary.json`` when present, else replayed from the transaction log's
  summary records (the last update of a key wins; removals remove). Nested dicts are
  flattened with ``/`` (``{"val": {"acc": 1}}`` → ``"val/acc"``, W&B's own spelling of
  grouped metrics) down to 8 levels. Only finite int/float values are kept (bools, strings,
  NaN/inf, media and histogram dicts with a ``_type`` are dropped); the keys ``_step``,
  ``_runtime`` and ``_timestamp`` are kept (the step and time of the last log), ``_wandb``
  (W&B's bookkeeping) is dropped.
* **Config** (``dict[str, Any]``): ``files/config.yaml`` when present (W&B's layout: each
  key maps to ``{desc: …, value: …}``; the value is unwrapped, a key without that layout is
  kept as written), else the run record's config plus the log's config updates; ``_wandb``
  is dropped. YAML is parsed only by ``ckptctl.yamlio.load_yaml_file`` (safe loader, no
  aliases, nesting capped).
* **Metadata**: ``program``, ``args``, ``git.commit``, ``host`` and ``startedAt`` from
  ``files/wandb-metadata.json``; run id, display name, project, entity, host and start time
  from the log's run record. ``started_at`` is an ISO-8601 UTC string (``…Z``) or None.
* **Bounds and errors.** Caps: ``MAX_SUMMARY_BYTES`` (16 MiB), ``MAX_CONFIG_BYTES``
  (4 MiB), ``MAX_METADATA_BYTES`` (4 MiB), ``MAX_LOG_BYTES`` (256 MiB; a larger log is not
  replayed and ``summary``/``config`` come from ``files/`` only). JSON rules:
  ``readers.jsonfile`` (duplicate keys refused, nesting capped; W&B's ``NaN``/``Infinity``
  accepted). A file over its cap is a ``BudgetExceededError``, a damaged one a
  ``CorruptCheckpointError``, an unreadable one a ``ReadError``, all naming the file. A
  transaction log cut short or failing a record crc32 (a crash) stops the replay at the last
  whole record: not an error (``WandbRun.log_truncated``); a record that passes its crc32
  but is not a W&B ``Record`` protobuf, or a log with a bad file header, is ``corrupt``.
"""

from __future__ import annotations

import math
import os
import re
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..budgets import size_text
from ..errors import BudgetExceededError, CkptError, CorruptCheckpointError, ReadError
from ..safeio import open_regular
from ..yamlio import load_yaml_file
from .jsonfile import loads_strict, read_json_file
from .protowire import iter_fields

RUN_FOLDER_RE = re.compile(r"(?P<offline>offline-)?run-(?P<date>\d{8}_\d{6})-(?P<id>[A-Za-z0-9]+)")
MAX_SUMMARY_BYTES = 16 << 20
MAX_CONFIG_BYTES = 4 << 20
MAX_METADATA_BYTES = 4 << 20
MAX_LOG_BYTES = 256 << 20
#: ``wandb.log`` calls replayed from one transaction log (the log is capped at 256 MiB too)
MAX_HISTORY_ROWS = 1_000_000
#: Nested summary dicts are flattened this deep; deeper values are dropped.
MAX_FLATTEN_DEPTH = 8
KEPT_PRIVATE_KEYS = frozenset({"_step", "_runtime", "_timestamp"})

# The transaction log: LevelDB's log format after a 7-byte W&B header.
_LOG_IDENT = b":W&B"
_LOG_MAGIC = 0xBEE1
_LOG_HEADER = 7
_BLOCK = 32768
_RECORD_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class WandbRun:
    folder: Path
    run_id: str
    name: str | None = None
    project: str | None = None
    entity: str | None = None
    summary: dict[str, float | int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    offline: bool = False
    program: str | None = None
    args: list[str] = field(default_factory=list)
    git_commit: str | None = None
    host: str | None = None
    files_read: list[Path] = field(default_factory=list)
    log_truncated: bool = False
    #: every ``wandb.log`` call replayed from the transaction log, in order: its numeric
    #: values (flattened like the summary), with ``_step`` (W&B's own counter) when recorded
    history: list[dict[str, float | int]] = field(default_factory=list)


# --- finding runs ------------------------------------------------------------------------------


def _real_dirs(folder: Path) -> Iterator[os.DirEntry[str]]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if stat.S_ISDIR(entry.stat(follow_symlinks=False).st_mode):
                yield entry
        except OSError:
            continue


def find_wandb_runs(exp_root: str | os.PathLike[str]) -> list[Path]:
    """Run folders in ``exp_root``, ``exp_root/wandb`` (rules in the module doc)."""
    root = Path(exp_root)
    places = [root]
    wandb_dir = root / "wandb"
    if not wandb_dir.is_symlink() and wandb_dir.is_dir():
        places.append(wandb_dir)
    found: dict[str, Path] = {}
    for place in places:
        for entry in _real_dirs(place):
            if RUN_FOLDER_RE.fullmatch(entry.name):
                found.setdefault(os.path.realpath(entry.path), Path(entry.path))
    return sorted(found.values(), key=lambda p: (p.name, str(p)))


# --- reading one run ---------------------------------------------------------------------------


def _regular_in(folder: Path, *parts: str) -> Path | None:
    """``folder/parts`` when it is a regular file reached through no symlink, else None."""
    current = folder
    for part in parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            return None
    return current if stat.S_ISREG(mode) else None


def read_wandb_run(folder: str | os.PathLike[str]) -> WandbRun:
    """Read run folder ``folder`` (rules in the module doc)."""
    folder = Path(folder)
    match = RUN_FOLDER_RE.fullmatch(folder.name)
    try:
        mode = os.lstat(folder).st_mode
    except OSError as exc:
        raise ReadError(f"cannot read the W&B run folder ({exc.strerror or exc})",
                        folder) from None
    if stat.S_ISLNK(mode):
        raise CorruptCheckpointError("the W&B run folder is a symlink (not followed)", folder)
    if not stat.S_ISDIR(mode) or match is None:
        raise CorruptCheckpointError("not a W&B run folder (run-YYYYMMDD_HHMMSS-<id>)", folder)
    run = WandbRun(folder, match["id"], offline=bool(match["offline"]))

    log_path = _regular_in(folder, f"run-{run.run_id}.wandb")
    replay: _Replay | None = None
    if log_path is not None and log_path.stat().st_size <= MAX_LOG_BYTES:
        replay = _replay_log(log_path)
        run.files_read.append(log_path)
        run.log_truncated = replay.truncated
        run.name, run.project, run.entity = replay.name, replay.project, replay.entity
        run.host = replay.host
        run.started_at = replay.started_at
        run.history = replay.history
        if replay.run_id and replay.run_id != run.run_id:
            raise CorruptCheckpointError(
                f"the transaction log is of run {replay.run_id[:40]!r}, not {run.run_id!r}",
                log_path)

    summary_path = _regular_in(folder, "files", "wandb-summary.json")
    if summary_path is not None:
        document = read_json_file(summary_path, max_bytes=MAX_SUMMARY_BYTES,
                                  what="wandb-summary.json", allow_constants=True)
        if not isinstance(document, dict):
            raise CorruptCheckpointError("wandb-summary.json is not a JSON object",
                                         summary_path)
        run.summary = flatten_metrics(document)
        run.files_read.append(summary_path)
    elif replay is not None:
        run.summary = flatten_metrics(replay.summary)

    config_path = _regular_in(folder, "files", "config.yaml")
    if config_path is not None:
        run.config = _read_config(config_path)
        run.files_read.append(config_path)
    elif replay is not None:
        run.config = {k: v for k, v in replay.config.items() if k != "_wandb"}

    metadata_path = _regular_in(folder, "files", "wandb-metadata.json")
    if metadata_path is not None:
        _read_metadata(metadata_path, run)
        run.files_read.append(metadata_path)
    return run


def _read_config(path: Path) -> dict[str, Any]:
    try:
        size = os.stat(path).st_size
        if size > MAX_CONFIG_BYTES:
            raise BudgetExceededError(f"config.yaml of {size_text(size)}",
                                      f"the {size_text(MAX_CONFIG_BYTES)} limit for it", path)
        document = load_yaml_file(path, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ReadError(f"cannot read config.yaml ({exc.strerror or exc})", path) from None
    except CkptError:
        raise
    except Exception as exc:  # yaml.YAMLError and load_yaml_file's ValueErrors
        raise CorruptCheckpointError(f"config.yaml is not valid YAML ({str(exc)[:120]})",
                                     path) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise CorruptCheckpointError("config.yaml is not a mapping", path)
    config: dict[str, Any] = {}
    for key, entry in document.items():
        if key == "_wandb" or not isinstance(key, str):
            continue
        if isinstance(entry, dict) and "value" in entry and set(entry) <= {"value", "desc"}:
            config[key] = entry["value"]
        else:
            config[key] = entry
    return config


def _read_metadata(path: Path, run: WandbRun) -> None:
    document = read_json_file(path, max_bytes=MAX_METADATA_BYTES, what="wandb-metadata.json",
                              allow_constants=True)
    if not isinstance(document, dict):
        raise CorruptCheckpointError("wandb-metadata.json is not a JSON object", path)
    program = document.get("program") or document.get("codePath")
    if isinstance(program, str):
        run.program = program
    args = document.get("args")
    if isinstance(args, list):
        run.args = [a for a in args if isinstance(a, str)]
    git = document.get("git")
    if isinstance(git, dict) and isinstance(git.get("commit"), str):
        run.git_commit = git["commit"]
    if isinstance(document.get("host"), str):
        run.host = document["host"]
    started = document.get("startedAt")
    if isinstance(started, str) and run.started_at is None:
        run.started_at = started


def flatten_metrics(document: dict[str, Any]) -> dict[str, float | int]:
    """The numeric leaves of a summary, nested keys joined with ``/`` (rules in the doc)."""
    out: dict[str, float | int] = {}
    stack: list[tuple[str, dict[str, Any], int]] = [("", document, 0)]
    while stack:
        prefix, node, depth = stack.pop()
        if "_type" in node and prefix:  # media, histograms, tables: not a metric
            continue
        for key, value in node.items():
            if not isinstance(key, str) or (not prefix and key == "_wandb"):
                continue
            if not prefix and key.startswith("_") and key not in KEPT_PRIVATE_KEYS:
                continue
            name = f"{prefix}/{key}" if prefix else key
            if isinstance(value, dict):
                if depth + 1 < MAX_FLATTEN_DEPTH:
                    stack.append((name, value, depth + 1))
            elif isinstance(value, bool):
                continue
            elif isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
                out[name] = value
    return dict(sorted(out.items()))


# --- the transaction log -----------------------------------------------------------------------


@dataclass
class _Replay:
    run_id: str | None = None
    name: str | None = None
    project: str | None = None
    entity: str | None = None
    host: str | None = None
    started_at: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float | int]] = field(default_factory=list)
    truncated: bool = False


def _log_records(data: bytes, path: Path, replay: _Replay) -> Iterator[bytes]:
    """Whole records of a W&B transaction log (LevelDB log format, zlib crc32 of the type
    byte and the data). Damage ends the iteration (``replay.truncated``)."""
    if (len(data) < _LOG_HEADER or data[:4] != _LOG_IDENT
            or int.from_bytes(data[4:6], "little") != _LOG_MAGIC):
        raise CorruptCheckpointError("not a W&B transaction log (bad header)", path)
    pos = _LOG_HEADER
    pending: bytearray | None = None
    while pos < len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD_HEADER:
            pos += left  # block trailer padding
            continue
        if pos + _RECORD_HEADER > len(data):
            replay.truncated = True
            return
        crc = int.from_bytes(data[pos:pos + 4], "little")
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        start, end = pos + _RECORD_HEADER, pos + _RECORD_HEADER + length
        if kind == 0 and length == 0 and crc == 0:  # zero padding (preallocated tail)
            pos += left
            continue
        if end > len(data) or end - pos > left or kind not in (_FULL, _FIRST, _MIDDLE, _LAST):
            replay.truncated = True
            return
        chunk = data[start:end]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            replay.truncated = True
            return
        pos = end
        if kind == _FULL:
            pending = None
            yield chunk
        elif kind == _FIRST:
            pending = bytearray(chunk)
        elif pending is not None:
            pending += chunk
            if kind == _LAST:
                yield bytes(pending)
                pending = None


def _item_path(item: memoryview) -> tuple[list[str], bytes | None]:
    key: list[str] = []
    nested: list[str] = []
    value: bytes | None = None
    for sub in iter_fields(item):
        if sub.number == 1:
            key = [sub.text("key")]
        elif sub.number == 2:
            nested.append(sub.text("nested key"))
        elif sub.number == 16:
            value = bytes(sub.message())
    return (nested or key), value


def _apply(target: dict[str, Any], record: memoryview, what: str) -> None:
    """Replay a SummaryRecord/ConfigRecord: update 1 (key 1 | nested_key 2, value_json 16),
    remove 2."""
    for sub in iter_fields(record):
        if sub.number not in (1, 2):
            continue
        path, raw = _item_path(sub.message())
        if not path or len(path) > MAX_FLATTEN_DEPTH:
            continue
        node = target
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                if sub.number == 2:
                    break
                child = node[part] = {}
            node = child
        else:
            if sub.number == 2:
                node.pop(path[-1], None)
            elif raw is not None:
                node[path[-1]] = loads_strict(raw, what, allow_constants=True)


def _timestamp(message: memoryview) -> str | None:
    seconds = nanos = 0
    for sub in iter_fields(message):
        if sub.number == 1:
            seconds = sub.int64()
        elif sub.number == 2:
            nanos = sub.int32()
    try:
        moment = datetime.fromtimestamp(seconds + nanos / 1e9, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _replay_log(path: Path) -> _Replay:
    try:
        with open_regular(path, "rb") as handle:
            data = handle.read(MAX_LOG_BYTES + 1)
    except OSError as exc:
        raise ReadError(f"cannot read the transaction log ({exc.strerror or exc})",
                        path) from None
    replay = _Replay()
    if len(data) > MAX_LOG_BYTES:
        return replay
    try:
        for record in _log_records(data, path, replay):
            for fld in iter_fields(record):
                if fld.number == 2:  # history: one wandb.log call
                    if len(replay.history) < MAX_HISTORY_ROWS:
                        replay.history.append(_history_row(fld.message()))
                elif fld.number == 3:  # summary
                    _apply(replay.summary, fld.message(), "a summary value")
                elif fld.number == 5:  # config
                    _apply(replay.config, fld.message(), "a config value")
                elif fld.number == 17:  # run
                    _read_run_record(fld.message(), replay)
    except CkptError as exc:
        if isinstance(exc, BudgetExceededError) or exc.path is not None:
            raise
        raise CorruptCheckpointError(f"bad W&B transaction log record: {exc.message}",
                                     path) from None
    return replay


def _history_row(record: memoryview) -> dict[str, float | int]:
    """A HistoryRecord (item 1: HistoryItem as in summaries; step 2: HistoryStep, num 1)
    as flat numeric values; ``_step`` from the item or the record's step."""
    row: dict[str, Any] = {}
    step: int | None = None
    for sub in iter_fields(record):
        if sub.number == 1:
            path, raw = _item_path(sub.message())
            if not path or len(path) > MAX_FLATTEN_DEPTH or raw is None:
                continue
            node = row
            for part in path[:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node[path[-1]] = loads_strict(raw, "a history value", allow_constants=True)
        elif sub.number == 2:
            for step_field in iter_fields(sub.message()):
                if step_field.number == 1:
                    step = step_field.int64()
    flat = flatten_metrics(row)
    if "_step" not in flat and step is not None:
        flat["_step"] = step
    return flat


def _read_run_record(message: memoryview, replay: _Replay) -> None:
    for sub in iter_fields(message):
        number = sub.number
        if number == 1:
            replay.run_id = sub.text("run id")
        elif number == 2:
            replay.entity = sub.text("entity") or replay.entity
        elif number == 3:
            replay.project = sub.text("project") or replay.project
        elif number == 4:
            _apply(replay.config, sub.message(), "a config value")
        elif number == 5:
            _apply(replay.summary, sub.message(), "a summary value")
        elif number == 8:
            replay.name = sub.text("display name") or replay.name
        elif number == 13:
            replay.host = sub.text("host") or replay.host
        elif number == 17:
            replay.started_at = _timestamp(sub.message())
