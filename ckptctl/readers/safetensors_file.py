"""safetensors files and Hugging Face shard indexes, read without the ``safetensors`` package.

A safetensors file is an 8-byte little-endian ``N``, ``N`` bytes of JSON (the header), then
the data area. The header maps tensor names to ``{"dtype", "shape", "data_offsets":
[begin, end]}`` (offsets relative to the data area) plus an optional ``"__metadata__"``
object of string to string. Nothing in a file is ever executed.

Public API (stable; this is what format modules use)::

    read_header(path) -> SafetensorsHeader
        SafetensorsHeader.tensors: dict[str, TensorEntry]   # in file order (by data offset)
        SafetensorsHeader.metadata: dict[str, str]           # "__metadata__", {} when absent
        SafetensorsHeader.data_start: int                    # 8 + N: where tensor bytes start
        SafetensorsHeader.file_size: int
        TensorEntry(dtype, shape, begin, end, name, data_start)
            .nbytes, .numel, .offset (absolute), .torch_dtype (None when torch lacks it)
    read_tensor_bytes(path, entry, *, max_bytes=None) -> bytes  # exactly entry.nbytes bytes
    is_safetensors(path) -> bool                          # cheap sniff, never raises
    read_shard_index(path) -> ShardIndex                  # model.safetensors.index.json,
        ShardIndex.metadata: dict[str, Any]               # pytorch_model.bin.index.json
        ShardIndex.weight_map: dict[str, str]             # tensor name -> shard file name
        ShardIndex.shard_names() -> list[str]; .shard_paths() -> list[Path]; .total_size

Header rules (those of the safetensors library, 0.8, so ckptctl accepts exactly what
``safetensors.safe_open`` accepts, plus duplicate keys refused):

* ``N`` at most ``MAX_HEADER_BYTES`` (100,000,000, the library's ``MAX_HEADER_SIZE``:
  ``BudgetExceededError``) and at most the bytes the file holds after the 8 (``corrupt``).
* The header is UTF-8 JSON starting with ``{`` (trailing spaces, the writer's padding, are
  fine); a key repeated in one object, ``NaN``/``Infinity`` and nesting past 100 levels are
  refused (``readers.jsonfile``).
* ``__metadata__``: absent, ``null`` or an object whose values are all strings.
* Each tensor: ``dtype`` one of ``DTYPE_BITS`` (else ``UnsupportedCheckpointError``);
  ``shape`` a list of non-negative integers whose product fits in 64 bits;
  ``data_offsets`` two non-negative integers ``begin <= end`` with ``end - begin`` equal to
  ``prod(shape) * bits / 8`` (sub-byte dtypes must end on a whole byte).
* The data area (file size minus ``8 + N``) is exactly covered: sorted by offset, each
  tensor starts where the previous one ended, the first at 0, the last ends at the end of the
  file; an overlap, a gap, bytes after the last tensor or a tensor past the end are
  ``corrupt``. (Zero-size tensors may share an offset.)

Shard index rules: at most ``MAX_INDEX_BYTES``; a JSON object with ``weight_map`` (object of
tensor name to shard file name) and optional ``metadata`` (object); every shard name is a
plain file name in the index's folder (no ``/`` or ``\\``, not ``.``/``..``, no NUL, not
empty) else ``corrupt``. Whether the shards exist is for the caller to check
(``shard_paths`` names them).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..budgets import size_text
from ..errors import (
    BudgetExceededError,
    CkptError,
    CorruptCheckpointError,
    ReadError,
    UnsupportedCheckpointError,
)
from ..safeio import open_regular
from .jsonfile import loads_strict, read_json_file

#: The safetensors library's MAX_HEADER_SIZE: longer headers are refused unread.
MAX_HEADER_BYTES = 100_000_000
#: A shard index names every tensor once: a few MiB for the largest public models.
MAX_INDEX_BYTES = 64 << 20
_U64_MAX = (1 << 64) - 1

#: Every dtype the safetensors library (0.8.0) defines -> bits per element.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
    "U64": 64,
}
#: safetensors dtype -> ckptctl's torch-style dtype name (``readers.tensor.STORAGE_NUMPY``);
#: dtypes absent here (F4, F6_*, F8_E8M0) have no ckptctl storage yet.
TORCH_DTYPE_NAMES: dict[str, str] = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz", "I16": "int16", "U16": "uint16", "F16": "float16",
    "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32",
    "C64": "complex64", "F64": "float64", "I64": "int64", "U64": "uint64",
}

MAGIC_LENGTH = 8


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file. ``begin``/``end`` are relative to the data area, as
    in the header; ``offset`` is absolute in the file."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int
    name: str = ""
    data_start: int = 0

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def offset(self) -> int:
        return self.data_start + self.begin

    @property
    def torch_dtype(self) -> str | None:
        return TORCH_DTYPE_NAMES.get(self.dtype)


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int
    file_size: int


@dataclass(frozen=True)
class ShardIndex:
    path: Path
    metadata: dict[str, Any]
    weight_map: dict[str, str]
    shard_order: tuple[str, ...] = field(default=())

    def shard_names(self) -> list[str]:
        """Each shard file once, in sorted order (``model-00001-of-00003`` … sort right)."""
        return sorted(set(self.weight_map.values()))

    def shard_paths(self) -> list[Path]:
        return [self.path.parent / name for name in self.shard_names()]

    @property
    def total_size(self) -> int | None:
        value = self.metadata.get("total_size")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def _corrupt(message: str, path: Path) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"bad safetensors header: {message}", path)


def _u64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U64_MAX


def _shape_bytes(shape: tuple[int, ...], bits: int) -> int | None:
    """Bytes of a tensor, or None when the element count or size overflows 64 bits (the
    library refuses those) or a sub-byte dtype does not end on a whole byte (-1)."""
    if 0 in shape:
        return 0
    numel = 1
    for n in shape:
        numel *= n
        if numel > _U64_MAX:
            return None
    total_bits = numel * bits
    if total_bits // 8 > _U64_MAX:
        return None
    if total_bits % 8:
        return -1
    return total_bits // 8


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and check the header of safetensors file ``path`` (rules in the module doc).
    Reads ``8 + N`` bytes, never the tensors."""
    path = Path(path)
    try:
        with open_regular(path, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(MAGIC_LENGTH)
            if len(prefix) < MAGIC_LENGTH:
                raise _corrupt(f"the file holds {len(prefix)} bytes, too few for the "
                               "8-byte header length", path)
            length = int.from_bytes(prefix, "little")
            if length > MAX_HEADER_BYTES:
                raise BudgetExceededError(
                    f"a safetensors header of {size_text(length)}",
                    f"the {size_text(MAX_HEADER_BYTES)} the safetensors library allows",
                    path)
            if length > file_size - MAGIC_LENGTH:
                raise _corrupt(f"the header claims {length} bytes, the file holds only "
                               f"{file_size - MAGIC_LENGTH} after its length (truncated?)",
                               path)
            raw = handle.read(length)
    except OSError as exc:
        raise ReadError(f"cannot read the file ({exc.strerror or exc})", path) from None
    if len(raw) != length:
        raise _corrupt(f"the header claims {length} bytes, only {len(raw)} could be read",
                       path)
    if not raw.startswith(b"{"):
        raise _corrupt("the header does not start with '{' (not a safetensors file)", path)
    try:
        document = loads_strict(raw, "the safetensors header")
    except CkptError as exc:
        exc.path = path
        raise
    if not isinstance(document, dict):  # unreachable: it starts with '{'
        raise _corrupt("the header is not a JSON object", path)
    data_start = MAGIC_LENGTH + length
    return _check_header(document, data_start, file_size, path)


def _check_header(document: dict[str, Any], data_start: int, file_size: int,
                  path: Path) -> SafetensorsHeader:
    metadata: dict[str, str] = {}
    entries: list[TensorEntry] = []
    data_size = file_size - data_start
    for name, info in document.items():
        if name == "__metadata__":
            if info is None:
                continue
            if not isinstance(info, dict):
                raise _corrupt("__metadata__ is not an object of strings", path)
            for key, value in info.items():
                if not isinstance(value, str):
                    raise _corrupt(f"__metadata__[{key[:80]!r}] is {type(value).__name__}, "
                                   "not a string", path)
                metadata[key] = value
            continue
        label = repr(name[:120])
        if not isinstance(info, dict):
            raise _corrupt(f"tensor {label} is described by a {type(info).__name__}, "
                           "not an object", path)
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str):
            raise _corrupt(f"tensor {label} has no dtype string", path)
        bits = DTYPE_BITS.get(dtype)
        if bits is None:
            raise UnsupportedCheckpointError(
                f"tensor {label} has dtype {dtype[:40]!r}, which safetensors does not define "
                f"(known: {', '.join(DTYPE_BITS)})", path)
        if not isinstance(shape, list) or not all(_u64(n) for n in shape):
            raise _corrupt(f"tensor {label} has shape {str(shape)[:80]}, not a list of "
                           "non-negative integers", path)
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_u64(n) for n in offsets)):
            raise _corrupt(f"tensor {label} has data_offsets {str(offsets)[:80]}, not two "
                           "non-negative integers", path)
        begin, end = offsets
        dims = tuple(shape)
        nbytes = _shape_bytes(dims, bits)
        if nbytes is None:
            raise _corrupt(f"tensor {label} of shape {list(dims)[:8]} is larger than 2**64 "
                           "bytes", path)
        if nbytes < 0:
            raise _corrupt(f"tensor {label} of {dtype} elements does not end on a whole "
                           "byte", path)
        if end < begin:
            raise _corrupt(f"tensor {label} ends (byte {end}) before it begins ({begin})",
                           path)
        if end - begin != nbytes:
            raise _corrupt(f"tensor {label} ({dtype} {list(dims)[:8]}) needs {nbytes} bytes "
                           f"but its data_offsets [{begin}, {end}] span {end - begin}", path)
        if end > data_size:
            raise _corrupt(f"tensor {label} ends at byte {end} of the data area, which holds "
                           f"only {data_size} bytes (truncated?)", path)
        entries.append(TensorEntry(dtype, dims, begin, end, name, data_start))
    ordered = sorted(entries, key=lambda e: (e.begin, e.end))  # stable: header order in ties
    covered = 0
    previous: TensorEntry | None = None
    for entry in ordered:
        if entry.begin < covered:
            assert previous is not None
            raise _corrupt(f"tensors {previous.name[:80]!r} and {entry.name[:80]!r} overlap "
                           f"(data bytes {entry.begin}..{covered})", path)
        if entry.begin > covered:
            raise _corrupt(f"data bytes {covered}..{entry.begin} belong to no tensor", path)
        covered = entry.end
        previous = entry
    if covered != data_size:
        raise _corrupt(f"the data area holds {data_size} bytes but its tensors cover "
                       f"{covered} (bytes after the last tensor)", path)
    return SafetensorsHeader({e.name: e for e in ordered}, metadata, data_start, file_size)


def read_tensor_bytes(path: str | os.PathLike[str], entry: TensorEntry, *,
                      max_bytes: int | None = None) -> bytes:
    """Exactly the ``entry.nbytes`` bytes of one tensor (from ``read_header`` of the same
    file), read with one bounded read; a file shorter than the header said (changed or
    truncated since) is ``corrupt``, a tensor over ``max_bytes`` a ``BudgetExceededError``."""
    path = Path(path)
    if max_bytes is not None and entry.nbytes > max_bytes:
        raise BudgetExceededError(f"tensor {entry.name[:80]!r} of {size_text(entry.nbytes)}",
                                  f"the {size_text(max_bytes)} limit for one read", path)
    try:
        with open_regular(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if entry.offset + entry.nbytes > size:
                raise CorruptCheckpointError(
                    f"tensor {entry.name[:80]!r} lies at bytes {entry.offset}.."
                    f"{entry.offset + entry.nbytes}, beyond the {size}-byte file "
                    "(changed or truncated since its header was read?)", path)
            handle.seek(entry.offset)
            data = handle.read(entry.nbytes)
    except OSError as exc:
        raise ReadError(f"cannot read the file ({exc.strerror or exc})", path) from None
    if len(data) != entry.nbytes:
        raise CorruptCheckpointError(f"tensor {entry.name[:80]!r}: read {len(data)} of "
                                     f"{entry.nbytes} bytes (truncated?)", path)
    return data


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """Cheap sniff, never raising: a regular file whose first 8 bytes are a plausible header
    length followed by ``{``. (``read_header`` decides whether it is a good one.)"""
    try:
        with open_regular(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(MAGIC_LENGTH + 1)
    except OSError:
        return False
    if len(head) < MAGIC_LENGTH + 1:
        return False
    length = int.from_bytes(head[:MAGIC_LENGTH], "little")
    return 2 <= length <= min(MAX_HEADER_BYTES, size - MAGIC_LENGTH) and head[8:9] == b"{"


# --- shard indexes -----------------------------------------------------------------------

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _plain_file_name(name: str) -> bool:
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
            and "\x00" not in name)


def read_shard_index(path: str | os.PathLike[str]) -> ShardIndex:
    """Read a Hugging Face shard index (rules in the module doc)."""
    path = Path(path)
    document = read_json_file(path, max_bytes=MAX_INDEX_BYTES, what="the shard index")
    if not isinstance(document, dict):
        raise CorruptCheckpointError("the shard index is not a JSON object", path)
    metadata = document.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise CorruptCheckpointError("the shard index's metadata is not an object", path)
    weight_map = document.get("weight_map")
    if not isinstance(weight_map, dict):
        raise CorruptCheckpointError("the shard index has no weight_map object", path)
    order: dict[str, None] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CorruptCheckpointError(
                f"weight_map[{name[:80]!r}] is {type(shard).__name__}, not a file name", path)
        if shard not in order:
            if not _plain_file_name(shard):
                raise CorruptCheckpointError(
                    f"weight_map[{name[:80]!r}] names {shard[:120]!r}, not a file in the "
                    "index's folder (refused: shards must sit next to their index)", path)
            order[shard] = None
    return ShardIndex(path, metadata, dict(weight_map), tuple(order))
