"""Reader for TensorFlow "TF-index" checkpoints (TensorBundle), without importing TensorFlow.

A checkpoint is ``prefix.index`` plus ``prefix.data-NNNNN-of-MMMMM`` shards. The index is a
LevelDB-style SSTable: key ``""`` holds a ``BundleHeaderProto``, every other key is a tensor
name whose value is a ``BundleEntryProto`` saying where the tensor's bytes live (shard,
offset, size, masked crc32c). Keys starting with a NUL byte hold the pieces of sliced
tensors: TF1 partitioned variables, or tensors that TF2's ``MaxShardSizePolicy`` split
across shards.

Everything read from disk is treated as hostile: lengths are checked against the bytes
present before anything is sliced or allocated, and every failure is a ``CkptError``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypedDict

import google_crc32c

from ..errors import CkptError, CorruptCheckpointError, ReadError, UnsupportedCheckpointError
from ..safeio import open_regular
from .protowire import WireFormatError, iter_fields, read_varint
from .tensor import DTYPES_BY_TORCH_NAME, ITEMSIZE, check_extent

if TYPE_CHECKING:
    import numpy as np

# numpy is imported where tensor values are read: opening the index (``scan``) needs none.

# --- SSTable layout (LevelDB table format, as used by tensorflow/core/lib/io/table) --------
TABLE_MAGIC = 0xDB4775248B80FB57
_MAGIC_BYTES = TABLE_MAGIC.to_bytes(8, "little")
FOOTER_SIZE = 48  # metaindex + index BlockHandles padded to 40 bytes, then the magic
_BLOCK_TRAILER_SIZE = 5  # 1-byte compression type + 4-byte masked crc32c
_NO_COMPRESSION = 0
_COMPRESSION_NAMES = {1: "snappy"}
#: Decoded keys + values may outgrow the index file this many times (prefix compression),
#: plus a constant; more means a hostile file built to explode memory.
_EXPANSION_FACTOR = 64
_EXPANSION_SLACK = 32 << 20
#: An index this large is not something TensorFlow writes; refuse instead of reading it.
MAX_INDEX_BYTES = 1 << 30
_CRC_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF

# --- TensorBundle ------------------------------------------------------------------------
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_BUNDLE_VERSION = 1  # kTensorBundleVersion: the format version this reader implements
_SHARD_RE = re.compile(r"(?P<prefix>.+)\.data-(?P<i>\d{5,})-of-(?P<n>\d{5,})")

#: tensorflow.DataType enum -> dtype name (torch spelling, see ``tensor.STORAGE_NUMPY``).
DTYPE_NAMES: dict[int, str] = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
    8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8", 13: "qint32",
    14: "bfloat16", 15: "qint16", 16: "quint16", 17: "uint16", 18: "complex128",
    19: "float16", 20: "resource", 21: "variant", 22: "uint32", 23: "uint64",
    24: "float8_e5m2", 25: "float8_e4m3fn", 26: "float8_e4m3fnuz", 27: "float8_e4m3b11fnuz",
    28: "float8_e5m2fnuz", 29: "int4", 30: "uint4", 31: "int2", 32: "uint2",
    33: "float4_e2m1fn",
}
#: Names whose bytes this reader can return (``read``); "string" goes through ``read_strings``.
READABLE_DTYPES = frozenset(n for n in DTYPE_NAMES.values() if n in DTYPES_BY_TORCH_NAME)

#: One slice of a partitioned variable: per dimension (start, length), length -1 = whole dim.
TensorSlice = tuple[tuple[int, int], ...]


def mask_crc(crc: int) -> int:
    """LevelDB/TF's crc masking (stored checksums are masked so CRCs of CRCs stay strong)."""
    return ((((crc >> 15) | (crc << 17)) & _U32) + _CRC_MASK_DELTA) & _U32


def _crc(data: np.ndarray) -> int:
    # google_crc32c accepts only read-only buffers; a read-only uint8 view costs no copy.
    view = data.view()
    view.flags.writeable = False
    return int(google_crc32c.value(view))


# --- public records ------------------------------------------------------------------------


@dataclass(frozen=True)
class TFTensorEntry:
    """One tensor of the bundle, as described by its ``BundleEntryProto``."""

    name: str
    dtype: str  # torch-style name ("float32", "bfloat16", "string", ...; see DTYPE_NAMES)
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None  # masked, as stored; None when the entry carries none
    slices: tuple[TensorSlice, ...] = ()  # non-empty: a partitioned variable's metadata entry

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_sliced(self) -> bool:
        return bool(self.slices)


@dataclass(frozen=True)
class ObjectReference:
    node_id: int
    local_name: str


@dataclass(frozen=True)
class SerializedTensor:
    name: str
    full_name: str
    checkpoint_key: str


@dataclass(frozen=True)
class SlotVariableReference:
    original_variable_node_id: int
    slot_name: str
    slot_variable_node_id: int


@dataclass(frozen=True)
class RegisteredSaver:
    name: str
    object_name: str


@dataclass(frozen=True)
class TrackableNode:
    children: tuple[ObjectReference, ...] = ()
    attributes: tuple[SerializedTensor, ...] = ()
    slot_variables: tuple[SlotVariableReference, ...] = ()
    registered_saver: RegisteredSaver | None = None
    has_checkpoint_values: bool | None = None


@dataclass(frozen=True)
class ObjectGraph:
    """A parsed ``TrackableObjectGraph``: node 0 is the root object that was saved."""

    nodes: tuple[TrackableNode, ...]

    def paths(self) -> dict[int, str]:
        """node id -> "a/b/c" path of local names, breadth first from the root (as TF names)."""
        if not self.nodes:
            return {}
        found = {0: ""}
        queue = [0]
        for node_id in queue:  # the list grows while iterated: a plain BFS
            base = found[node_id]
            for child in self.nodes[node_id].children:
                if child.node_id not in found:
                    found[child.node_id] = f"{base}/{child.local_name}" if base else child.local_name
                    queue.append(child.node_id)
        return found


@dataclass(frozen=True)
class BundleHeader:
    num_shards: int
    endianness: Literal["little", "big"]
    producer: int
    min_consumer: int


# --- SSTable --------------------------------------------------------------------------------


def _storage_numpy() -> dict[str, np.dtype]:
    from .tensor import STORAGE_NUMPY

    return STORAGE_NUMPY


class _Table:
    """Iterates the (key, value) records of an uncompressed LevelDB-format table in memory."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.path = path
        self.budget = _EXPANSION_FACTOR * len(data) + _EXPANSION_SLACK
        # Blocks of a real table never overlap: more block bytes than the file holds means a
        # crafted table re-reading its bytes (crc work quadratic in the file size).
        self.block_bytes_left = len(data)

    def corrupt(self, message: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"corrupt checkpoint index: {message}", self.path)

    def records(self) -> Iterator[tuple[bytes, memoryview]]:
        size = len(self.data)
        if size < FOOTER_SIZE:
            raise self.corrupt(f"{size} bytes is too short for a table footer")
        footer = memoryview(self.data)[size - FOOTER_SIZE :]
        if bytes(footer[40:]) != _MAGIC_BYTES:
            raise self.corrupt("bad table magic number (not an SSTable, or truncated)")
        _meta, pos = self._handle(footer, 0)  # the metaindex is empty in TF bundles
        index_handle, _ = self._handle(footer, pos)
        index_block = self._block(index_handle, "index block")
        last_key: bytes | None = None
        last_index_key: bytes | None = None
        for index_key, handle_bytes in self._block_records(index_block, "index block"):
            if last_index_key is not None and index_key <= last_index_key:
                raise self.corrupt("index block keys are not increasing")
            last_index_key = index_key
            handle, used = self._handle(handle_bytes, 0)
            if used != len(handle_bytes):
                raise self.corrupt("index block value is not a block handle")
            for key, value in self._block_records(self._block(handle, "data block"), "data block"):
                # Strictly increasing keys catch corruption, duplicated blocks and loops.
                if last_key is not None and key <= last_key:
                    raise self.corrupt("keys are not in increasing order")
                if key > index_key:
                    raise self.corrupt("a data block holds keys beyond its index entry")
                last_key = key
                yield key, value

    def _handle(self, buf: memoryview, pos: int) -> tuple[tuple[int, int], int]:
        try:
            offset, pos = read_varint(buf, pos)
            length, pos = read_varint(buf, pos)
        except WireFormatError as exc:
            raise self.corrupt(f"bad block handle ({exc.message})") from None
        return (offset, length), pos

    def _block(self, handle: tuple[int, int], what: str) -> memoryview:
        offset, length = handle
        limit = len(self.data) - FOOTER_SIZE
        if offset > limit or length > limit - offset - _BLOCK_TRAILER_SIZE:
            raise self.corrupt(f"{what} at {offset}+{length} lies outside the file")
        self.block_bytes_left -= length + _BLOCK_TRAILER_SIZE
        if self.block_bytes_left < 0:
            raise self.corrupt("blocks overlap")
        end = offset + length
        kind = self.data[end]
        stored = int.from_bytes(self.data[end + 1 : end + 5], "little")
        if mask_crc(int(google_crc32c.value(self.data[offset : end + 1]))) != stored:
            raise self.corrupt(f"crc32c mismatch in the {what} at offset {offset}")
        if kind != _NO_COMPRESSION:
            name = _COMPRESSION_NAMES.get(kind, f"type {kind}")
            raise UnsupportedCheckpointError(
                f"index {what} uses {name} compression; only uncompressed tables are supported",
                self.path,
            )
        return memoryview(self.data)[offset:end]

    def _block_records(self, block: memoryview, what: str) -> Iterator[tuple[bytes, memoryview]]:
        size = len(block)
        if size < 4:
            raise self.corrupt(f"{what} of {size} bytes has no restart array")
        num_restarts = int.from_bytes(block[size - 4 :], "little")
        if num_restarts > (size - 4) // 4:
            raise self.corrupt(f"{what} claims {num_restarts} restart points")
        data_end = size - 4 - 4 * num_restarts
        restarts = struct.unpack_from(f"<{num_restarts}I", block, data_end)
        if num_restarts and (restarts[0] != 0 or any(b <= a for a, b in itertools.pairwise(restarts))
                             or restarts[-1] > max(data_end - 1, 0)):
            raise self.corrupt(f"{what} has bad restart points")
        next_restart = 0
        pos = 0
        key = b""
        try:
            while pos < data_end:
                at_restart = next_restart < num_restarts and pos == int(restarts[next_restart])
                shared, pos = read_varint(block, pos, data_end)
                non_shared, pos = read_varint(block, pos, data_end)
                value_len, pos = read_varint(block, pos, data_end)
                if at_restart:
                    next_restart += 1
                    if shared:
                        raise self.corrupt(f"{what} restart entry shares a key prefix")
                if shared > len(key) or non_shared + value_len > data_end - pos:
                    raise self.corrupt(f"{what} entry at {pos} overruns its block")
                self.budget -= shared + non_shared + value_len
                if self.budget < 0:
                    raise self.corrupt("keys expand far beyond the file size")
                key = key[:shared] + bytes(block[pos : pos + non_shared])
                pos += non_shared
                yield key, block[pos : pos + value_len]
                pos += value_len
        except WireFormatError as exc:
            raise self.corrupt(f"{what}: {exc.message}") from None
        if next_restart != num_restarts and data_end > 0:  # an empty block has restart 0 only
            raise self.corrupt(f"{what} restart points do not fall on entries")


# --- protobuf messages ----------------------------------------------------------------------


def _header(value: memoryview) -> BundleHeader:
    try:
        return _parse_header(value)
    except WireFormatError as exc:
        raise CorruptCheckpointError(f"bad bundle header: {exc.message}") from None


def _parse_header(value: memoryview) -> BundleHeader:
    num_shards = endianness = producer = min_consumer = 0
    bad_consumers: list[int] = []
    for field in iter_fields(value):
        if field.number == 1:
            num_shards = field.int32()
        elif field.number == 2:
            endianness = field.uint()
        elif field.number == 3:  # VersionDef
            for version in iter_fields(field.message()):
                if version.number == 1:
                    producer = version.int32()
                elif version.number == 2:
                    min_consumer = version.int32()
                elif version.number == 3:
                    bad_consumers += version.packed_or_single()
    if endianness not in (0, 1):
        raise UnsupportedCheckpointError(f"unknown bundle endianness {endianness}")
    if min_consumer > _BUNDLE_VERSION or _BUNDLE_VERSION in bad_consumers:
        raise UnsupportedCheckpointError(
            f"bundle needs a reader of format version >= {min_consumer} "
            f"(this one reads version {_BUNDLE_VERSION})")
    if num_shards <= 0:
        raise CorruptCheckpointError(f"bundle header claims {num_shards} shards")
    return BundleHeader(num_shards, "big" if endianness else "little", producer, min_consumer)


def _parse_shape(value: memoryview) -> tuple[int, ...]:
    dims: list[int] = []
    for field in iter_fields(value):
        if field.number == 2:  # Dim {size = 1; name = 2}
            size = 0
            for dim in iter_fields(field.message()):
                if dim.number == 1:
                    size = dim.int64()
            if size < 0:
                raise WireFormatError(f"tensor shape has an unknown dimension ({size})")
            dims.append(size)
        elif field.number == 3 and field.boolean():
            raise WireFormatError("tensor shape has unknown rank")
    return tuple(dims)


def _parse_slice(value: memoryview) -> TensorSlice:
    extents: list[tuple[int, int]] = []
    for field in iter_fields(value):
        if field.number == 1:  # Extent {start = 1; oneof {length = 2}}
            start, length = 0, -1  # no length: the whole dimension
            for extent in iter_fields(field.message()):
                if extent.number == 1:
                    start = extent.int64()
                elif extent.number == 2:
                    length = extent.int64()
            if start < 0 or length < -1:
                raise WireFormatError(f"bad slice extent ({start}, {length})")
            extents.append((start, length))
    return tuple(extents)


def _entry(name: str, value: memoryview) -> TFTensorEntry:
    try:
        return _parse_entry(name, value)
    except WireFormatError as exc:
        raise CorruptCheckpointError(f"bad index entry for {name!r}: {exc.message}") from None


def _parse_entry(name: str, value: memoryview) -> TFTensorEntry:
    dtype_enum = shard_id = offset = size = 0
    shape: tuple[int, ...] = ()
    crc: int | None = None
    slices: list[TensorSlice] = []
    for field in iter_fields(value):
        if field.number == 1:
            dtype_enum = field.uint()
        elif field.number == 2:
            shape = _parse_shape(field.message())
        elif field.number == 3:
            shard_id = field.int32()
        elif field.number == 4:
            offset = field.int64()
        elif field.number == 5:
            size = field.int64()
        elif field.number == 6:
            crc = field.fixed32()
        elif field.number == 7:
            slices.append(_parse_slice(field.message()))
    if dtype_enum == 0:
        raise WireFormatError("no dtype")
    if shard_id < 0 or offset < 0 or size < 0:
        raise WireFormatError("negative shard id, offset or size")
    dtype = DTYPE_NAMES.get(dtype_enum, f"dtype_enum_{dtype_enum}")
    return TFTensorEntry(name, dtype, shape, shard_id, offset, size, crc, tuple(slices))


def parse_object_graph(data: bytes) -> ObjectGraph:
    """Parse a serialized ``tensorflow.TrackableObjectGraph`` (raises WireFormatError)."""
    nodes = tuple(_parse_trackable(f.message()) for f in iter_fields(data) if f.number == 1)
    for node in nodes:  # dangling ids would break every consumer: reject them here
        ids = [c.node_id for c in node.children]
        for slot in node.slot_variables:
            ids += [slot.original_variable_node_id, slot.slot_variable_node_id]
        if any(not 0 <= i < len(nodes) for i in ids):
            raise WireFormatError("object graph references a node that does not exist")
    return ObjectGraph(nodes)


def _parse_trackable(value: memoryview) -> TrackableNode:
    children: list[ObjectReference] = []
    attributes: list[SerializedTensor] = []
    slots: list[SlotVariableReference] = []
    saver: RegisteredSaver | None = None
    has_values: bool | None = None
    for field in iter_fields(value):
        if field.number == 1:
            node_id, local_name = 0, ""
            for sub in iter_fields(field.message()):
                if sub.number == 1:
                    node_id = sub.int32()
                elif sub.number == 2:
                    local_name = sub.text("child name")
            children.append(ObjectReference(node_id, local_name))
        elif field.number == 2:
            texts = _texts(field.message(), 3, "attribute")
            attributes.append(SerializedTensor(*texts))
        elif field.number == 3:
            ids = [0, 0, 0]
            slot_name = ""
            for sub in iter_fields(field.message()):
                if sub.number in (1, 3):
                    ids[sub.number - 1] = sub.int32()
                elif sub.number == 2:
                    slot_name = sub.text("slot name")
            slots.append(SlotVariableReference(ids[0], slot_name, ids[2]))
        elif field.number == 4:
            saver = RegisteredSaver(*_texts(field.message(), 2, "registered saver"))
        elif field.number == 5:  # google.protobuf.BoolValue: an absent value means False
            has_values = any(sub.boolean() for sub in iter_fields(field.message())
                             if sub.number == 1)
    return TrackableNode(tuple(children), tuple(attributes), tuple(slots), saver, has_values)


def _texts(value: memoryview, count: int, what: str) -> list[str]:
    """String fields 1..count of a message (proto3 defaults: "")."""
    out = [""] * count
    for field in iter_fields(value):
        if 1 <= field.number <= count:
            out[field.number - 1] = field.text(what)
    return out


# --- partitioned variables: the index keys of their slices ----------------------------------


def _ordered_unsigned(value: int) -> bytes:
    """OrderedCode ``WriteNumIncreasing``: a length byte, then the big-endian bytes."""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes([len(raw)]) + raw


def _ordered_signed(value: int) -> bytes:
    """OrderedCode ``WriteSignedNumIncreasing``: L bytes whose first L header bits say L.

    An L-byte code holds 7L - 1 magnitude bits in two's complement; the header's run of L
    ones is XORed in, so negative numbers get inverted headers and still sort first.
    """
    magnitude = ~value if value < 0 else value
    length = max(1, (magnitude.bit_length() + 7) // 7)
    while magnitude.bit_length() > 7 * length - 1:
        length += 1
    bits = 8 * length
    code = (value & ((1 << bits) - 1)) ^ (((1 << length) - 1) << (bits - length))
    return code.to_bytes(length, "big")


def slice_key(name: str, extents: TensorSlice) -> bytes:
    """The index key TensorFlow stores one slice of a partitioned variable under."""
    escaped = name.encode("utf-8").replace(b"\xff", b"\xff\x00").replace(b"\x00", b"\x00\xff")
    parts = [_ordered_unsigned(0), escaped, b"\x00\x01", _ordered_unsigned(len(extents))]
    for start, length in extents:
        parts += [_ordered_signed(start), _ordered_signed(length)]
    return b"".join(parts)


def _slice_key_name(key: bytes) -> str:
    """Best-effort tensor name of a slice key, for messages only."""
    end = key.find(b"\x00\x01", 1)
    raw = key[1:end] if end > 0 else key[1:]
    return raw.replace(b"\x00\xff", b"\x00").replace(b"\xff\x00", b"\xff").decode(
        "utf-8", "backslashreplace")


# --- the checkpoint ------------------------------------------------------------------------


def _sibling(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


def _shard_name(prefix: Path, index: int, count: int) -> str:
    return f"{prefix.name}.data-{index:05d}-of-{count:05d}"


def _find_shards(prefix: Path, num_shards: int) -> list[Path]:
    """The data shards of ``prefix``: exactly ``num_shards`` of them, no more, no less."""
    pattern = re.compile(re.escape(prefix.name) + r"\.data-(\d{5,})-of-(\d{5,})")
    found: dict[int, Path] = {}
    folder = prefix.parent
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise ReadError(f"cannot list the checkpoint folder ({exc.strerror})", folder) from None
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        index, count = int(match[1]), int(match[2])
        # Only TF's canonical spelling counts; anything else of this prefix is a stray shard.
        if count != num_shards or index >= count or name != _shard_name(prefix, index, count):
            raise CorruptCheckpointError(
                f"data shard does not belong to this checkpoint, whose index says "
                f"{num_shards} shard(s)", folder / name)
        found[index] = folder / name
    if len(found) < num_shards:  # loop bounded by len(found): num_shards may be huge
        missing = next(i for i in range(len(found) + 1) if i not in found)
        raise CorruptCheckpointError(
            f"missing data shard {missing + 1} of {num_shards}",
            folder / _shard_name(prefix, missing, num_shards))
    paths = [found[i] for i in range(num_shards)]
    for path in paths:
        if not path.is_file():
            raise CorruptCheckpointError("data shard is not a regular file", path)
    return paths


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise ReadError(f"cannot read the file ({exc.strerror})", path) from None


class TFIndexCheckpoint:
    """An opened TensorBundle checkpoint; tensors are read on demand, one file read each."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.index_path = _sibling(prefix, ".index")
        data = self._read_index()
        self.entries: dict[str, TFTensorEntry] = {}
        self._slices: dict[bytes, TFTensorEntry] = {}  # partitioned-variable pieces, by key
        header: BundleHeader | None = None
        try:
            for key, value in _Table(data, self.index_path).records():
                if key == b"":
                    header = _header(value)
                elif key[0] == 0:
                    self._slices[key] = _entry(_slice_key_name(key), value)
                else:
                    name = key.decode("utf-8", "backslashreplace")
                    if name in self.entries:  # only possible through the lossy decoding
                        raise CorruptCheckpointError(f"tensor name {name!r} appears twice")
                    self.entries[name] = _entry(name, value)
        except CkptError as exc:
            if exc.path is None:
                exc.path = self.index_path
            raise
        if header is None:
            raise CorruptCheckpointError("index has no bundle header", self.index_path)
        self.header = header
        self.num_shards = header.num_shards
        self.shard_paths = _find_shards(prefix, header.num_shards)
        self._shard_sizes = [_file_size(p) for p in self.shard_paths]
        self._check_layout()

    def __repr__(self) -> str:
        return (f"TFIndexCheckpoint({str(self.prefix)!r}, {len(self.entries)} entries, "
                f"{self.num_shards} shard(s))")

    @property
    def endianness(self) -> Literal["little", "big"]:
        return self.header.endianness

    def _read_index(self) -> bytes:
        if not self.index_path.is_file():  # also refuses FIFOs and devices, which could hang
            raise CorruptCheckpointError("not a TF-index checkpoint: no .index file", self.index_path)
        try:
            size = self.index_path.stat().st_size
            if size > MAX_INDEX_BYTES:
                raise UnsupportedCheckpointError(
                    f"index of {size} bytes exceeds the {MAX_INDEX_BYTES}-byte limit",
                    self.index_path)
            with open_regular(self.index_path, "rb") as f:
                return f.read(MAX_INDEX_BYTES + 1)
        except OSError as exc:
            raise ReadError(f"cannot read the index ({exc.strerror})", self.index_path) from None

    def _check_layout(self) -> None:
        """Every entry must fit its dtype and its shard: fail at open, not half-way through."""
        sizes = self._shard_sizes
        data_entries = [e for e in self.entries.values() if not e.slices]
        for entry in [*data_entries, *self._slices.values()]:
            if entry.shard_id >= self.num_shards:
                raise CorruptCheckpointError(
                    f"tensor {entry.name!r} lives in shard {entry.shard_id}, but there are only "
                    f"{self.num_shards}", self.index_path)
            item = ITEMSIZE.get(entry.dtype, 1)
            try:
                check_extent(entry.shape, item, f"tensor {entry.name[:120]!r}")
            except CkptError as exc:
                exc.path = self.index_path
                raise
            if entry.dtype in READABLE_DTYPES:
                need = entry.numel * ITEMSIZE[entry.dtype]
                if entry.size != need:
                    raise CorruptCheckpointError(
                        f"tensor {entry.name!r} has {entry.size} bytes, but {entry.dtype} "
                        f"{list(entry.shape)} needs {need}", self.index_path)
            elif entry.dtype == "string" and entry.numel > entry.size:
                raise CorruptCheckpointError(
                    f"string tensor {entry.name!r} cannot hold {entry.numel} strings in "
                    f"{entry.size} bytes", self.index_path)
            shard_size = sizes[entry.shard_id]
            if entry.offset + entry.size > shard_size:
                raise CorruptCheckpointError(
                    f"shard ends at byte {shard_size}, but tensor {entry.name!r} needs bytes "
                    f"{entry.offset}..{entry.offset + entry.size}",
                    self.shard_paths[entry.shard_id])

    # -- reading ---------------------------------------------------------------------------

    def _raw(self, entry: TFTensorEntry) -> np.ndarray:
        """The entry's bytes, read once into a fresh array (not yet verified)."""
        import numpy as np

        buf = np.empty(entry.size, dtype=np.uint8)  # size was checked against the shard
        self._read(entry, buf.data)  # memoryview(buf): numpy types ndarray a Buffer on 3.12+ only
        return buf

    def _read(self, entry: TFTensorEntry, into: memoryview | None = None) -> bytes:
        """Read the entry's bytes into ``into``, or (if None) as one new bytes object."""
        path = self.shard_paths[entry.shard_id]
        try:
            with open_regular(path, "rb") as f:
                f.seek(entry.offset)
                if into is None:
                    data = f.read(entry.size)
                    got = len(data)
                else:
                    data = b""
                    got = f.readinto(into)  # buffered: loops until full or end of file
        except OSError as exc:
            raise ReadError(f"cannot read tensor {entry.name!r} ({exc.strerror})", path
                            ) from None
        if got != entry.size:
            raise CorruptCheckpointError(
                f"shard ends inside tensor {entry.name!r} ({got} of {entry.size} bytes)", path)
        return data

    def _verify(self, entry: TFTensorEntry, crc: int) -> None:
        """Compare the unmasked crc32c of what was read with the entry's masked one."""
        actual = mask_crc(crc)
        if actual != entry.crc32c:
            stored = "none" if entry.crc32c is None else f"{entry.crc32c:#010x}"
            raise CorruptCheckpointError(
                f"crc32c mismatch in tensor {entry.name!r} (stored {stored}, "
                f"computed {actual:#010x})", self.shard_paths[entry.shard_id])

    def _numpy_dtype(self, entry: TFTensorEntry) -> np.dtype:
        if entry.dtype not in READABLE_DTYPES:
            raise UnsupportedCheckpointError(
                f"tensor {entry.name!r} has dtype {entry.dtype}, which ckptctl cannot read",
                self.index_path)
        dtype = _storage_numpy()[entry.dtype]
        return dtype.newbyteorder(">") if self.endianness == "big" else dtype

    def _values(self, entry: TFTensorEntry) -> np.ndarray:
        dtype = self._numpy_dtype(entry)
        raw = self._raw(entry)
        self._verify(entry, _crc(raw))
        values = raw.view(dtype).reshape(entry.shape)
        if values.dtype.byteorder == ">":
            values = values.astype(_storage_numpy()[entry.dtype])  # a big-endian bundle
        return values

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as an array of ``STORAGE_NUMPY[dtype]`` (bfloat16 as uint16 bits).

        String tensors come back as an object array of ``bytes``; partitioned variables are
        assembled from their slices. Raises KeyError for an unknown name.
        """
        entry = self.entries[name]
        if entry.slices:
            return self._read_partitioned(entry)
        if entry.dtype == "string":
            import numpy as np

            values = self._strings(entry)
            strings = np.empty(len(values), dtype=object)
            strings[:] = values
            return strings.reshape(entry.shape)
        return self._values(entry)

    def read_strings(self, name: str) -> list[bytes]:
        """A DT_STRING tensor's elements, in C order."""
        entry = self.entries[name]
        if entry.dtype != "string" or entry.slices:
            raise UnsupportedCheckpointError(
                f"tensor {name!r} is {'partitioned ' if entry.slices else ''}{entry.dtype}, "
                "not a plain string tensor", self.index_path)
        return self._strings(entry)

    def _strings(self, entry: TFTensorEntry) -> list[bytes]:
        # Layout: each element's length as a varint64, a 4-byte masked crc32c of the lengths,
        # then the elements back to back. Both checksums hash each length as a fixed uint32
        # (uint64 above 4 GiB) in the writer's byte order, not the varint bytes.
        path = self.shard_paths[entry.shard_id]
        data = self._read(entry)  # size was checked against the shard at open
        lengths: list[int] = []
        pos = 0
        try:
            for _ in range(entry.numel):  # numel <= size was checked at open
                length, pos = read_varint(data, pos)
                lengths.append(length)
        except WireFormatError:
            raise CorruptCheckpointError(
                f"string tensor {entry.name!r} has a broken length table", path) from None
        if len(data) - pos < 4 or sum(lengths) != len(data) - pos - 4:
            raise CorruptCheckpointError(
                f"string tensor {entry.name!r}: its lengths do not match its {len(data)} bytes",
                path)
        order = self.endianness
        fixed = b"".join(n.to_bytes(4 if n <= _U32 else 8, order) for n in lengths)
        crc = int(google_crc32c.value(fixed))
        stored = int.from_bytes(data[pos : pos + 4], order)
        if mask_crc(crc) != stored:
            raise CorruptCheckpointError(
                f"string tensor {entry.name!r} has a bad length checksum", path)
        self._verify(entry, int(google_crc32c.extend(crc, data[pos:])))
        pos += 4
        out: list[bytes] = []
        for length in lengths:
            out.append(data[pos : pos + length])
            pos += length
        return out

    def _read_partitioned(self, entry: TFTensorEntry) -> np.ndarray:
        """Assemble a sliced tensor from the pieces its metadata entry lists."""
        rank = len(entry.shape)
        pieces: list[tuple[tuple[slice, ...], TFTensorEntry]] = []
        seen: set[bytes] = set()
        total = 0
        for extents in entry.slices:
            if len(extents) != rank:
                raise CorruptCheckpointError(
                    f"tensor {entry.name!r} has a slice of rank {len(extents)}", self.index_path)
            region: list[slice] = []
            for (start, length), dim in zip(extents, entry.shape, strict=True):
                stop = dim if length == -1 else start + length
                if stop > dim or start > stop:
                    raise CorruptCheckpointError(
                        f"tensor {entry.name!r} has a slice outside its shape", self.index_path)
                region.append(slice(start, stop))
            key = slice_key(entry.name, extents)
            if key in seen:
                raise CorruptCheckpointError(
                    f"tensor {entry.name!r} has overlapping slices", self.index_path)
            seen.add(key)
            piece = self._slices.get(key)
            expect = tuple(s.stop - s.start for s in region)
            if piece is None:
                raise CorruptCheckpointError(
                    f"tensor {entry.name!r}: slice {list(extents)} is missing", self.index_path)
            if piece.dtype != entry.dtype or piece.shape != expect:
                raise CorruptCheckpointError(
                    f"tensor {entry.name!r}: slice {list(extents)} is {piece.dtype} "
                    f"{list(piece.shape)}, expected {entry.dtype} {list(expect)}",
                    self.index_path)
            pieces.append((tuple(region), piece))
            total += piece.numel
        if total != entry.numel:
            raise CorruptCheckpointError(
                f"tensor {entry.name!r}: its slices hold {total} of {entry.numel} elements",
                self.index_path)
        # Pieces of a real checkpoint never share bytes; crafted ones could, to make a huge
        # tensor out of a small file. Bound the allocation by what the shards really hold.
        if sum(piece.size for _, piece in pieces) > sum(self._shard_sizes):
            raise CorruptCheckpointError(
                f"tensor {entry.name!r}: its slices claim more bytes than the shards hold",
                self.index_path)
        self._numpy_dtype(entry)  # unsupported dtypes (strings too) fail before allocating
        # Slice data was bounds-checked against the shards at open, so these allocations are.
        import numpy as np

        out = np.empty(entry.shape, dtype=_storage_numpy()[entry.dtype])
        covered = np.zeros(entry.shape, dtype=bool)
        for where, piece in pieces:
            if covered[where].any():
                raise CorruptCheckpointError(
                    f"tensor {entry.name!r} has overlapping slices", self.index_path)
            covered[where] = True
            out[where] = self._values(piece)
        return out

    def object_graph(self) -> ObjectGraph | None:
        """The ``TrackableObjectGraph`` saved by TF2 object-based checkpoints (else None)."""
        if OBJECT_GRAPH_KEY not in self.entries:
            return None
        values = self.read_strings(OBJECT_GRAPH_KEY)
        if len(values) != 1:
            raise CorruptCheckpointError(
                f"{OBJECT_GRAPH_KEY} holds {len(values)} strings, expected 1", self.index_path)
        try:
            return parse_object_graph(values[0])
        except CkptError as exc:
            raise CorruptCheckpointError(f"bad object graph: {exc.message}",
                                         self.shard_paths[self.entries[OBJECT_GRAPH_KEY].shard_id]
                                         ) from None


def prefix_of(path: str | os.PathLike[str]) -> Path:
    """The checkpoint prefix for a prefix, its ``.index`` file or one of its data shards."""
    path = Path(path)
    if path.name.endswith(".index"):
        return path.with_name(path.name[: -len(".index")])
    match = _SHARD_RE.fullmatch(path.name)
    if match is not None:
        return path.with_name(match["prefix"])
    return path


def open_tf_index(path: str | os.PathLike[str]) -> TFIndexCheckpoint:
    """Open the checkpoint that ``path`` (prefix, ``.index`` or data shard) belongs to."""
    prefix = prefix_of(path)
    index = _sibling(prefix, ".index")
    if not index.is_file():
        raise CorruptCheckpointError("not a TF-index checkpoint: no .index file", index)
    return TFIndexCheckpoint(prefix)


def is_tf_index(path: str | os.PathLike[str]) -> bool:
    """Cheap sniff: a ``*.index`` file ending in the SSTable magic number."""
    path = Path(path)
    if not path.name.endswith(".index") or not path.is_file():  # FIFOs would block open()
        return False
    try:
        with open_regular(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < FOOTER_SIZE:
                return False
            f.seek(size - len(_MAGIC_BYTES))
            return f.read(len(_MAGIC_BYTES)) == _MAGIC_BYTES
    except OSError:
        return False


# --- the `checkpoint` state file (text-format CheckpointState) -----------------------------

STATE_FILE_NAME = "checkpoint"
_MAX_STATE_BYTES = 16 << 20
_STATE_TOKENS = re.compile(
    r"""\s+|\#[^\n]*|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
        |(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?|[-+]?(?:inf|nan))|(?P<punct>.)""",
    re.VERBOSE,
)
_SIMPLE_ESCAPES = {"n": 10, "r": 13, "t": 9, "\\": 92, "'": 39, '"': 34, "a": 7, "b": 8,
                   "f": 12, "v": 11, "?": 63}
_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.DOTALL)


def _unescape(literal: str) -> str:
    """A text-format string literal (C escapes; non-ASCII bytes arrive octal-escaped)."""
    body = literal[1:-1]
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(body):
        out += body[pos : match.start()].encode("utf-8")
        octal, hexa, other = match.groups()
        if octal:
            out.append(int(octal, 8) & 0xFF)
        elif hexa:
            out.append(int(hexa, 16))
        else:
            out += bytes([_SIMPLE_ESCAPES[other]]) if other in _SIMPLE_ESCAPES \
                else ("\\" + other).encode("utf-8")
        pos = match.end()
    out += body[pos:].encode("utf-8")
    return out.decode("utf-8", "replace")


class CheckpointState(TypedDict):
    """The fields of TF's ``CheckpointState`` text proto that ckptctl uses."""

    model_checkpoint_path: str | None
    all_model_checkpoint_paths: list[str]
    all_model_checkpoint_timestamps: list[float]
    last_preserved_timestamp: float | None


def read_state_file(folder: str | os.PathLike[str]) -> CheckpointState | None:
    """Parse TF's ``checkpoint`` state file in ``folder`` (or at that path), tolerantly.

    Returns ``model_checkpoint_path`` (str | None), ``all_model_checkpoint_paths`` (list),
    ``all_model_checkpoint_timestamps`` (list of float) and ``last_preserved_timestamp``
    (float | None); None when there is no such file or nothing in it is recognisable.
    Paths are returned as written (relative to the folder, or absolute).
    """
    path = Path(folder)
    if path.is_dir():
        path = path / STATE_FILE_NAME
    if not path.is_file():
        return None
    try:
        with open_regular(path, "rb") as f:
            text = f.read(_MAX_STATE_BYTES).decode("utf-8", "replace")
    except OSError:
        return None
    values: dict[str, list[str | float]] = {}
    field: str | None = None
    for match in _STATE_TOKENS.finditer(text):
        kind = match.lastgroup
        token = match.group()
        if kind == "ident" and token not in ("inf", "nan"):
            field = token
        elif kind in ("str", "num") and field is not None:
            if kind == "str":
                values.setdefault(field, []).append(_unescape(token))
            else:
                with contextlib.suppress(ValueError):  # e.g. a lone "-"
                    values.setdefault(field, []).append(float(token.rstrip("fF")))
        elif kind == "punct" and token not in ":[],;":
            field = None  # something unexpected: wait for the next field name
    paths = [v for v in values.get("model_checkpoint_path", []) if isinstance(v, str)]
    all_paths = [v for v in values.get("all_model_checkpoint_paths", []) if isinstance(v, str)]
    stamps = [float(v) for v in values.get("all_model_checkpoint_timestamps", [])
              if isinstance(v, float)]
    preserved = [v for v in values.get("last_preserved_timestamp", []) if isinstance(v, float)]
    if not (paths or all_paths or stamps or preserved):
        return None
    return {  # the last value wins for singular fields, as in protobuf
        "model_checkpoint_path": paths[-1] if paths else None,
        "all_model_checkpoint_paths": all_paths,
        "all_model_checkpoint_timestamps": stamps,
        "last_preserved_timestamp": preserved[-1] if preserved else None,
    }
