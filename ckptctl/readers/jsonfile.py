"""Strict, bounded JSON reading for the metadata files next to checkpoints (safetensors
headers, Hugging Face shard indexes, W&B run files). Shared by ``safetensors_file`` and
``wandb_run``; nothing here imports a framework.

Rules, for every document: a size cap checked before parsing (``read_json_file``), brackets
nested deeper than ``max_nesting`` refused before the parser sees them (a
``BudgetExceededError``), UTF-8 only, a key repeated inside one object refused (JSON
parsers disagree about which copy wins, so two readers could see two different files), and
``NaN``/``Infinity`` refused unless ``allow_constants`` (serde_json, used by safetensors,
rejects them; W&B writes them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..budgets import flow_nesting_exceeds, size_text
from ..errors import BudgetExceededError, CorruptCheckpointError, ReadError
from ..safeio import open_regular

#: Real metadata documents nest a few levels; anything past this is an attack on the parser.
MAX_JSON_NESTING = 100


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_strict(data: bytes, what: str, *, allow_constants: bool = False,
                 max_nesting: int = MAX_JSON_NESTING) -> Any:
    """Parse ``data`` (UTF-8 JSON) under the rules of the module doc; ``what`` names it in
    errors. Raises ``BudgetExceededError`` (nesting) or ``CorruptCheckpointError``."""
    if flow_nesting_exceeds(data, max_nesting):
        raise BudgetExceededError(f"the nesting of {what}",
                                  f"the limit of {max_nesting} levels for a JSON document")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptCheckpointError(f"{what} is not UTF-8 (byte {exc.start})") from None
    try:
        if allow_constants:
            return json.loads(text, object_pairs_hook=_no_duplicates)
        return json.loads(text, object_pairs_hook=_no_duplicates,
                          parse_constant=_refuse_constant)
    except _DuplicateKey as exc:
        raise CorruptCheckpointError(
            f"{what} names the key {exc.key[:80]!r} twice in one object") from None
    except RecursionError:  # unreachable past the nesting check, kept as a backstop
        raise BudgetExceededError(f"the nesting of {what}",
                                  "the depth Python's JSON parser reads") from None
    except ValueError as exc:  # JSONDecodeError, too many digits in an int, a constant
        raise CorruptCheckpointError(f"{what} is not valid JSON ({str(exc)[:120]})") from None


def read_capped(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of regular file ``path``, refused past ``max_bytes`` without reading more
    than ``max_bytes + 1`` of them. OSError becomes ``ReadError``."""
    try:
        with open_regular(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise BudgetExceededError(f"{what} of {size_text(size)}",
                                          f"the {size_text(max_bytes)} limit for it")
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ReadError(f"cannot read {what} ({exc.strerror or exc})", path) from None
    if len(data) > max_bytes:  # grew while being read
        raise BudgetExceededError(f"{what} of more than {size_text(max_bytes)}",
                                  f"the {size_text(max_bytes)} limit for it")
    return data


def read_json_file(path: Path, *, max_bytes: int, what: str, allow_constants: bool = False,
                   max_nesting: int = MAX_JSON_NESTING) -> Any:
    """``read_capped`` then ``loads_strict``; errors carry ``path``."""
    data = read_capped(path, max_bytes, what)
    try:
        return loads_strict(data, what, allow_constants=allow_constants,
                            max_nesting=max_nesting)
    except (CorruptCheckpointError, BudgetExceededError) as exc:
        if exc.path is None:
            exc.path = path
        raise
