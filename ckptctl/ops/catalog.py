"""``catalog``: a table of checkpoints and experiments built from sidecars alone.

Never opens a checkpoint. Parsed sidecars are cached (keyed by path, size and mtime) so a
warm catalog of thousands of experiments costs a ``stat`` per sidecar, not a YAML parse.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CkptError, UsageError
from ..metric_names import AmbiguousMetric, did_you_mean, metric_key
from ..metric_names import resolve as resolve_metric
from ..migrations import SCHEMA_VERSION
from ..walk import find_sidecars  # light: a warm catalog never imports numpy or pydantic

CACHE_VERSION = 3  # 3: cached documents are migrated, plain JSON, metrics as numbers
_LOWER_IS_BETTER = re.compile(r"loss|error|err", re.IGNORECASE)


class UnknownMetricError(CkptError):
    def __init__(self, metric: str, known: list[str]) -> None:
        listed = ", ".join(known) if known else "none (no sidecar has metrics)"
        close = did_you_mean(metric, known)
        hint = f" (did you mean {', '.join(close[:-1])} or {close[-1]}?)" if len(close) > 1 \
            else f" (did you mean {close[0]}?)" if close else ""
        super().__init__(f"unknown metric {metric!r}{hint}; metrics in these sidecars: {listed}")
        self.known = known
        self.close = close


class AmbiguousMetricError(CkptError):
    def __init__(self, metric: str, sidecar: Path, names: list[str]) -> None:
        super().__init__(f"metric {metric!r} is ambiguous in {sidecar}: it logged "
                         f"{' and '.join(names)}; ask for one of them by its exact name")
        self.names = names


@dataclass
class Entry:
    sidecar_path: Path
    doc: dict[str, Any]
    #: with ``--best``: the logged name the asked metric was found as (README: Catalog)
    best_source: str | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return self.doc.get("metrics") or {}

    def field(self, key: str) -> Any:
        if key in ("exp_name", "created_at", "checkpoint_path"):
            return self.doc.get(key)
        if key in ("epoch", "global_step", "step"):
            return (self.doc.get("training") or {}).get("global_step" if key == "step" else key)
        if key in ("path", "sidecar_path"):
            return str(self.sidecar_path)
        return self.metrics.get(key.removeprefix("metrics."))

    @property
    def checkpoint(self) -> str:
        relative: str = self.doc.get("checkpoint_path", "")
        return os.path.normpath(self.sidecar_path.parent / relative)

    def as_json(self) -> dict[str, Any]:
        return {**self.doc, "sidecar_path": str(self.sidecar_path)}


@dataclass
class CatalogResult:
    entries: list[Entry]
    metric: str | None = None
    mode: str | None = None
    left_out: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def metric_sources(self) -> list[str]:
        """The logged names ``metric`` was found as, in the order of the rows."""
        return list(dict.fromkeys(e.best_source for e in self.entries if e.best_source))

    def best_value(self, entry: Entry) -> float | None:
        value = entry.metrics.get(entry.best_source) if entry.best_source else None
        return value if isinstance(value, int | float) else None


def default_cache_dir() -> Path:
    override = os.environ.get("CKPTCTL_CACHE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ckptctl"


def load_entries(paths: Iterable[Path], recursive: bool = True,
                 cache_dir: Path | None = None) -> tuple[list[Entry], list[str]]:
    """Valid sidecars below ``paths`` (invalid ones become warnings: validate reports them)."""
    paths = [Path(p) for p in paths]
    warnings: list[str] = []
    sidecars = find_sidecars(paths, recursive, warnings)
    cache_file = _cache_file(cache_dir, paths) if cache_dir is not None else None
    # Thousands of small documents stay alive here: pausing the cycle collector, which would
    # otherwise rescan them repeatedly, halves parse time. Nothing here makes cycles.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _load(sidecars, cache_file, warnings)
    finally:
        if collecting:
            gc.enable()


def _load(sidecars: list[Path], cache_file: Path | None,
          warnings: list[str]) -> tuple[list[Entry], list[str]]:
    cache = _read_cache(cache_file) if cache_file else {}
    fresh: dict[str, list[Any]] = {}
    entries = []
    for path in sidecars:
        key = str(path.absolute())
        try:
            info = path.stat()
        except OSError:
            continue
        stamp = [info.st_size, info.st_mtime_ns]
        cached = cache.get(key)
        if cached is not None and cached[0] == stamp:
            doc = cached[1]
        else:
            from ..sidecars import parse_sidecar, read_sidecar_doc  # only on a cache miss

            try:
                doc = read_sidecar_doc(path)  # an older schema is upgraded, a newer one refused
                parsed = parse_sidecar(path, doc)  # schema check before a document is trusted
            except CkptError as exc:
                warnings.append(f"{path}: skipped, {exc.message}")
                continue
            # What the schema accepted, as the schema reads it: metrics as numbers ('0.5'
            # is 0.5), YAML dates as text, so sorting, JSON and the cache all see plain data.
            doc = _plain(doc)
            doc["metrics"] = dict(parsed.metrics)
        fresh[key] = [stamp, doc]
        entries.append(Entry(path, doc))
    if cache_file is not None and fresh != cache:
        _write_cache(cache_file, fresh)
    return entries, warnings


def _plain(value: Any) -> Any:
    """YAML's extra scalar types (dates, bytes) as JSON-compatible text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _cache_file(cache_dir: Path, roots: list[Path]) -> Path:
    ident = "\n".join(sorted(str(p.resolve()) for p in roots))
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    # Cached documents are migrated: a ckptctl with another schema version keeps its own cache.
    return cache_dir / f"catalog-v{CACHE_VERSION}-s{SCHEMA_VERSION}-{digest}.json"


def _read_cache(path: Path) -> dict[str, list[Any]]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return data["entries"] if data.get("version") == CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_cache(path: Path, entries: dict[str, list[Any]]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        text = json.dumps({"version": CACHE_VERSION, "entries": entries}, separators=(",", ":"))
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)  # one write: json.dump's many small writes cost 3x
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs speed


def resolve_mode(metric: str, entries: list[Entry], mode: str | None) -> str:
    """The sidecar's mode when it monitored ``metric`` (under any name the alias rule
    allows); else ``mode``; else by the name."""
    key = metric_key(metric)
    for entry in entries:
        checkpointing = entry.doc.get("checkpointing") or {}
        monitor = checkpointing.get("monitor")
        if isinstance(monitor, str) and metric_key(monitor) == key \
                and checkpointing.get("mode") in ("min", "max"):
            return str(checkpointing["mode"])  # "min" or "max", checked just above
    if mode is not None:
        return mode
    return "min" if _LOWER_IS_BETTER.search(metric) else "max"


def all_metric_names(entries: list[Entry]) -> list[str]:
    return sorted({name for entry in entries for name in entry.metrics})


def catalog(paths: Iterable[Path], best: str | None = None, mode: str | None = None,
            sort: str | None = None, recursive: bool = True,
            cache_dir: Path | None = None) -> CatalogResult:
    entries, warnings = load_entries(paths, recursive, cache_dir)
    if best is None:
        entries.sort(key=lambda e: (str(e.doc.get("exp_name")), str(e.sidecar_path)))
        if sort:
            entries = sort_entries(entries, sort)
        return CatalogResult(entries, warnings=warnings)
    # The asked name, or the one logged name the alias rule says it means (README: Catalog).
    # A NaN or infinite value (a diverged run) ranks nowhere: it is left out like a missing one.
    with_metric = []
    value: dict[int, float] = {}
    for entry in entries:
        try:
            source = resolve_metric(best, entry.metrics)
        except AmbiguousMetric as exc:
            raise AmbiguousMetricError(best, entry.sidecar_path, exc.names) from None
        found = entry.metrics.get(source) if source is not None else None
        if isinstance(found, int | float) and math.isfinite(found):
            entry.best_source = source
            value[id(entry)] = float(found)
            with_metric.append(entry)
    if not with_metric:
        raise UnknownMetricError(best, all_metric_names(entries))
    chosen_mode = resolve_mode(best, with_metric, mode)
    sign = 1.0 if chosen_mode == "min" else -1.0
    best_per_exp: dict[str, Entry] = {}
    for entry in sorted(with_metric, key=lambda e: str(e.sidecar_path)):
        exp = str(entry.doc.get("exp_name"))
        current = best_per_exp.get(exp)
        if current is None or sign * value[id(entry)] < sign * value[id(current)]:
            best_per_exp[exp] = entry
    rows = sorted(best_per_exp.values(),
                  key=lambda e: (sign * value[id(e)], str(e.doc.get("exp_name"))))
    if sort:
        rows = sort_entries(rows, sort)
    return CatalogResult(rows, best, chosen_mode, len(entries) - len(with_metric), warnings)


FIELD_KEYS = ("exp_name", "epoch", "step", "global_step", "created_at", "path", "checkpoint_path")


def sort_entries(entries: list[Entry], key: str) -> list[Entry]:
    """Sort by a field or metric name (``-`` prefix: descending); unknown keys are an error
    listing the ones that exist."""
    descending = key.startswith("-")
    key = key.lstrip("-")
    known = set(FIELD_KEYS) | set(all_metric_names(entries))
    if key.removeprefix("metrics.") not in known:
        raise UsageError(f"unknown sort key {key!r}; use one of: " + ", ".join(sorted(known)))
    present = [e for e in entries if e.field(key) is not None]
    missing = [e for e in entries if e.field(key) is None]
    present.sort(key=lambda e: e.field(key), reverse=descending)
    return present + missing
