"""A torch zip's directory, read the way ``torch.load``'s own reader (miniz) reads it.

ckptctl vouches for a torch zip only if it read the bytes torch would read. Python's
``zipfile`` is a different reader: it decodes names (UTF-8 or cp437 by a flag bit; on Python
3.12+ a Unicode Path extra field renames members), shifts offsets when the central directory
is not where the end record says, applies every ZIP64 extra field, and reads the ZIP64 record
next to its locator. So the directory is parsed here on raw bytes as miniz does, and every
point where the two could disagree is refused as ambiguous:

* the last end signature must be the only self-consistent end record (one hidden in the
  comment of another is refused);
* the central directory must sit exactly where the end record (or the ZIP64 record the
  locator points at, which must sit right before the locator) says;
* the entry count must fill exactly the directory's size (miniz counts, zipfile measures);
* a member has at most one ZIP64 extra field and no Unicode Path field;
* names are raw bytes, unique even ignoring ASCII case (miniz's lookup) and free of NUL.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import AmbiguousCheckpointError, CorruptCheckpointError, UnsupportedCheckpointError

_END_RECORD = struct.Struct("<4s4H2LH")  # signature, disks, entry counts, cd size/offset, comment
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL_ENTRY = struct.Struct("<4s6H3L5H2L")
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_END_SIGNATURE = b"PK\x05\x06"
_ZIP64_EXTRA = 0x0001
_UNICODE_PATH_EXTRA = 0x7075
STORED, DEFLATED = 0, 8
#: About three million members: far beyond any checkpoint, far below a memory problem.
MAX_DIRECTORY_BYTES = 256 << 20


@dataclass(frozen=True)
class ZipMember:
    """One central-directory entry, as miniz sees it (the name is raw bytes)."""

    name: bytes
    flags: int
    method: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int

    @property
    def text_name(self) -> str:
        """For messages only: never used to look anything up."""
        return self.name.decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class ZipDirectory:
    members: list[ZipMember]
    file_size: int

    def folded(self) -> dict[bytes, ZipMember]:
        """Members by ASCII-lowercased name: miniz's case-insensitive lookup (names are
        unique under it, checked when the directory was read)."""
        return {m.name.lower(): m for m in self.members}


def read_directory(raw: BinaryIO, size: int) -> ZipDirectory:
    """Parse and check a zip's end records and central directory (no member data read)."""
    entries, cd_size, cd_offset = _end_records(raw, size)
    if cd_size > MAX_DIRECTORY_BYTES:
        raise CorruptCheckpointError(
            f"refused: zip central directory of {cd_size} bytes exceeds {MAX_DIRECTORY_BYTES}")
    raw.seek(cd_offset)
    data = raw.read(cd_size)
    if len(data) != cd_size:
        raise CorruptCheckpointError("zip central directory is truncated")
    members: list[ZipMember] = []
    at = 0
    for _ in range(entries):
        if at + _CENTRAL_ENTRY.size > len(data) or data[at:at + 4] != b"PK\x01\x02":
            raise CorruptCheckpointError("zip central directory entry is damaged")
        (_, _, _, flags, method, _, _, crc, compressed, plain, name_len, extra_len, comment_len,
         _, _, _, offset) = _CENTRAL_ENTRY.unpack_from(data, at)
        name_at = at + _CENTRAL_ENTRY.size
        extra_at = name_at + name_len
        at = extra_at + extra_len + comment_len
        if at > len(data):
            raise CorruptCheckpointError("zip central directory entry is damaged")
        name = data[name_at:extra_at]
        plain, compressed, offset = _apply_extra(data[extra_at:extra_at + extra_len], name,
                                                 plain, compressed, offset)
        members.append(ZipMember(name, flags, method, crc, compressed, plain, offset))
    if at != len(data):
        raise AmbiguousCheckpointError(
            f"zip end record counts {entries} entries, its central directory holds more bytes")
    _check_names(members)
    return ZipDirectory(members, size)


def read_member(raw: BinaryIO, directory: ZipDirectory, member: ZipMember, limit: int) -> bytes:
    """A member's bytes (stored or deflated, at most ``limit``), crc32-checked."""
    if member.flags & 0x1:
        raise UnsupportedCheckpointError(f"zip entry {member.text_name} is encrypted")
    if member.size > limit:
        raise CorruptCheckpointError(f"zip entry {member.text_name} is larger than {limit} bytes")
    start = data_offset(raw, directory, member)
    raw.seek(start)
    stored = raw.read(member.compressed_size)
    if len(stored) != member.compressed_size:
        raise CorruptCheckpointError(f"zip entry {member.text_name} runs past the end of file")
    if member.method == STORED:
        if member.compressed_size != member.size:
            raise CorruptCheckpointError(f"zip entry {member.text_name} has inconsistent sizes")
        data = stored
    elif member.method == DEFLATED:
        inflater = zlib.decompressobj(-15)
        try:
            data = inflater.decompress(stored, member.size + 1)  # never more than declared
        except zlib.error as exc:
            raise CorruptCheckpointError(f"zip entry {member.text_name} is damaged ({exc})") from exc
        if len(data) != member.size:
            raise CorruptCheckpointError(f"zip entry {member.text_name} inflates to the wrong size")
    else:
        raise UnsupportedCheckpointError(f"zip entry {member.text_name} uses an unknown compression")
    if zlib.crc32(data) != member.crc:
        raise CorruptCheckpointError(f"zip entry {member.text_name} fails its crc32 check")
    return data


def data_offset(raw: BinaryIO, directory: ZipDirectory, member: ZipMember) -> int:
    """Where a member's bytes start: after its local header's name and extra field (the
    local lengths, as miniz reads them), checked to lie inside the file."""
    raw.seek(member.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or not header.startswith(b"PK\x03\x04"):
        raise CorruptCheckpointError(f"bad zip local header for {member.text_name}")
    fields = _LOCAL_HEADER.unpack(header)
    start = member.header_offset + _LOCAL_HEADER.size + int(fields[9]) + int(fields[10])
    if start + member.compressed_size > directory.file_size:
        raise CorruptCheckpointError(f"zip entry {member.text_name} runs past the end of file")
    return start


def _apply_extra(extra: bytes, name: bytes, plain: int, compressed: int,
                 offset: int) -> tuple[int, int, int]:
    """Sizes and offset after the ZIP64 extra field, which fills in the 32-bit fields that
    hold the 0xFFFFFFFF sentinel, in order. One such field at most: miniz reads the first,
    zipfile applies them all."""
    at, zip64 = 0, None
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4:at + 4 + length]
        if len(body) != length:
            raise CorruptCheckpointError("zip extra field is damaged")
        if kind == _UNICODE_PATH_EXTRA:
            raise AmbiguousCheckpointError(
                "a zip member carries a Unicode Path field (newer Python zipfile renames it)")
        if kind == _ZIP64_EXTRA:
            if zip64 is not None:
                raise AmbiguousCheckpointError("a zip member has two ZIP64 extra fields")
            zip64 = body
        at += 4 + length
    values = [plain, compressed, offset]
    if zip64 is not None:
        read = 0
        for i, value in enumerate(values):
            if value == 0xFFFFFFFF:
                if read + 8 > len(zip64):
                    raise CorruptCheckpointError("zip ZIP64 extra field is too short")
                values[i] = struct.unpack_from("<Q", zip64, read)[0]
                read += 8
    elif 0xFFFFFFFF in values:
        raise CorruptCheckpointError(
            f"zip entry {name.decode('utf-8', 'backslashreplace')} lacks its ZIP64 field")
    return values[0], values[1], values[2]


def _check_names(members: list[ZipMember]) -> None:
    seen: set[bytes] = set()
    for member in members:
        if b"\0" in member.name:
            raise AmbiguousCheckpointError("a zip member name holds a NUL byte")
        folded = member.name.lower()  # ASCII only, like miniz
        if folded in seen:
            raise AmbiguousCheckpointError(
                f"zip member {member.text_name!r} appears twice (ignoring case)")
        seen.add(folded)


def _end_records(raw: BinaryIO, size: int) -> tuple[int, int, int]:
    """(entry count, directory size, directory offset) from the end records, refusing the
    ambiguities in the module docstring."""
    tail_size = min(size, _END_RECORD.size + 0xFFFF + _ZIP64_LOCATOR.size + _ZIP64_END_RECORD.size)
    raw.seek(size - tail_size)
    tail = raw.read(tail_size)
    base = size - tail_size
    consistent = [q for q in _find_all(tail, _END_SIGNATURE)
                  if q + _END_RECORD.size <= len(tail)
                  and q + _END_RECORD.size + _END_RECORD.unpack_from(tail, q)[-1] == len(tail)]
    last = tail.rfind(_END_SIGNATURE)
    if not consistent:
        raise CorruptCheckpointError("not a complete zip archive, truncated? (no end record)")
    if len(consistent) != 1 or consistent[0] != last:
        raise AmbiguousCheckpointError(
            "zip end record is ambiguous (an end signature inside the comment)")
    end_at = base + last
    (_, disk, cd_disk, disk_entries, entries, cd_size, cd_offset,
     _) = _END_RECORD.unpack_from(tail, last)
    cd_end = end_at
    locator_at = last - _ZIP64_LOCATOR.size
    if locator_at >= 0 and tail[locator_at:locator_at + 4] == b"PK\x06\x07":
        _, _, record_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
        record_at = end_at - _ZIP64_LOCATOR.size - _ZIP64_END_RECORD.size
        if record_offset != record_at or record_at < 0:
            raise AmbiguousCheckpointError("ZIP64 end record is not where its locator says")
        raw.seek(record_at)
        record = raw.read(_ZIP64_END_RECORD.size)
        if len(record) != _ZIP64_END_RECORD.size or not record.startswith(b"PK\x06\x06"):
            raise AmbiguousCheckpointError("ZIP64 end record is not where its locator says")
        (_, _, _, _, disk64, cd_disk64, disk_entries64, entries64, cd_size64,
         cd_offset64) = _ZIP64_END_RECORD.unpack(record)
        for small, big, sentinel in ((entries, entries64, 0xFFFF), (cd_size, cd_size64, 0xFFFFFFFF),
                                     (cd_offset, cd_offset64, 0xFFFFFFFF),
                                     (disk_entries, disk_entries64, 0xFFFF)):
            if small not in (big, sentinel):
                raise AmbiguousCheckpointError("zip end record and ZIP64 end record disagree")
        disk, cd_disk, entries, cd_size, cd_offset = disk64, cd_disk64, entries64, cd_size64, cd_offset64
        cd_end = record_at
    if disk or cd_disk:
        raise UnsupportedCheckpointError("multi-part zip archives are not supported")
    if cd_offset + cd_size != cd_end:
        raise AmbiguousCheckpointError("zip central directory is not where the end record says")
    return int(entries), int(cd_size), int(cd_offset)


def _find_all(data: bytes, needle: bytes) -> list[int]:
    found, at = [], data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + 1)
    return found
