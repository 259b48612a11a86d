"""A tiny, defensive decoder for the protobuf wire format (no ``protobuf`` package needed).

Only what checkpoint readers need: walk the fields of one message and turn raw field values
into Python ints, bools, strings and sub-messages. Every malformed input raises
``WireFormatError`` (a ``CorruptCheckpointError``), never IndexError or an endless loop;
lengths are checked against the bytes actually present before anything is sliced.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import CorruptCheckpointError

Buffer = bytes | memoryview

WIRE_VARINT = 0
WIRE_FIXED64 = 1
WIRE_LEN = 2
WIRE_FIXED32 = 5
_MAX_VARINT_BYTES = 10  # a 64-bit value never needs more than ten 7-bit groups
_U64 = 1 << 64


class WireFormatError(CorruptCheckpointError):
    """Bytes that are not a well-formed protobuf message."""


def read_varint(buf: Buffer, pos: int, end: int | None = None) -> tuple[int, int]:
    """Decode one base-128 varint at ``pos``; return ``(value, next_pos)``."""
    stop = len(buf) if end is None else end
    result = 0
    shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= stop:
            raise WireFormatError("truncated varint")
        byte = buf[pos + i]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >= _U64:
                raise WireFormatError("varint overflows 64 bits")
            return result, pos + i + 1
        shift += 7
    raise WireFormatError("varint longer than 10 bytes")


class Field:
    """One field of a message; the accessors check the wire type a known field must have."""

    __slots__ = ("number", "value", "wire")

    def __init__(self, number: int, wire: int, value: int | memoryview) -> None:
        self.number = number
        self.wire = wire
        self.value = value

    def _expect(self, wire: int) -> None:
        if self.wire != wire:  # a known field with another wire type: surely corrupt
            raise WireFormatError(
                f"field {self.number} has wire type {self.wire}, expected {wire}")

    def uint(self) -> int:
        self._expect(WIRE_VARINT)
        assert isinstance(self.value, int)
        return self.value

    def int64(self) -> int:
        return as_int64(self.uint())

    def int32(self) -> int:
        return as_int32(self.uint())

    def boolean(self) -> bool:
        return self.uint() != 0

    def fixed32(self) -> int:
        self._expect(WIRE_FIXED32)
        assert isinstance(self.value, int)
        return self.value

    def message(self) -> memoryview:
        """A length-delimited payload: sub-message, bytes or string (no copy)."""
        self._expect(WIRE_LEN)
        assert isinstance(self.value, memoryview)
        return self.value

    def text(self, what: str) -> str:
        return as_text(self.message(), what)

    def packed_or_single(self) -> list[int]:
        """A repeated varint field: packed (proto3's default) or one element per field."""
        if self.wire == WIRE_LEN:
            return unpack_packed_varints(self.message())
        return [self.uint()]


def iter_fields(buf: Buffer) -> Iterator[Field]:
    """Yield each field of one message, in wire order.

    Varint/fixed values are ints; length-delimited ones are memoryviews into ``buf``.
    Groups (wire types 3/4) are obsolete and rejected.
    """
    view = memoryview(buf)
    end = len(view)
    pos = 0
    while pos < end:
        tag, pos = read_varint(view, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise WireFormatError("field number 0")
        if wire == WIRE_VARINT:
            value, pos = read_varint(view, pos, end)
            yield Field(number, wire, value)
        elif wire == WIRE_LEN:
            length, pos = read_varint(view, pos, end)
            if length > end - pos:
                raise WireFormatError(f"field {number} claims {length} bytes, {end - pos} remain")
            yield Field(number, wire, view[pos : pos + length])
            pos += length
        elif wire in (WIRE_FIXED32, WIRE_FIXED64):
            size = 4 if wire == WIRE_FIXED32 else 8
            if size > end - pos:
                raise WireFormatError(f"truncated fixed{size * 8} field {number}")
            yield Field(number, wire, int.from_bytes(view[pos : pos + size], "little"))
            pos += size
        else:
            raise WireFormatError(f"unsupported wire type {wire} (field {number})")


def as_int64(value: int) -> int:
    """Reinterpret a varint as two's-complement int64 (negative numbers use 10 bytes)."""
    return value - _U64 if value >= 1 << 63 else value


def as_int32(value: int) -> int:
    """int32 fields are sign-extended to 64 bits on the wire; out-of-range means corrupt."""
    signed = as_int64(value)
    if not -(1 << 31) <= signed < 1 << 31:
        raise WireFormatError(f"int32 field holds {signed}")
    return signed


def as_text(value: memoryview, what: str) -> str:
    """A proto ``string`` field: must be UTF-8."""
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireFormatError(f"{what} is not valid UTF-8") from exc


def unpack_packed_varints(value: memoryview) -> list[int]:
    """A packed ``repeated`` varint field (proto3's default encoding for repeated scalars)."""
    out: list[int] = []
    pos = 0
    while pos < len(value):
        item, pos = read_varint(value, pos)
        out.append(item)
    return out
