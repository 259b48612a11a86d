"""Readers for ``torch.save`` files: the zip format (Lightning ``.ckpt``, ``.pt``, ``.pth``,
``.bin``) and the legacy non-zip pickle stream. Neither imports torch nor runs file code.

ckptctl vouches for a file only if it read the very bytes ``torch.load`` would unpickle, so
it chooses the container as torch does (zip by its first four bytes; otherwise the old tar
format first, then the pickle stream), finds ``data.pkl`` as torch's zip reader does (the
first entry's folder, names compared without case), and refuses files that readers could see
differently: see ``check_zip_end_records``, ``check_zip_members`` and ``pickle_guard``'s framing rule.
"""

from __future__ import annotations

import io
import os
import pickletools
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import (
    AmbiguousCheckpointError,
    CkptError,
    CorruptCheckpointError,
    ReadError,
    UnsupportedCheckpointError,
)
from ..safeio import open_regular
from .tensor import StorageRef
from .unpickler import BoundedReader, restricted_load, storage_ref_from_pid

ZIP_MAGIC = b"PK\x03\x04"
#: ``torch.save``'s legacy stream starts with the pickled int 0x1950a86a20f9469cfc6c.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
LEGACY_HEAD = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC_NUMBER.to_bytes(10, "little")
#: A pickle bigger than this (tensors excluded) is not a checkpoint we can hold safely.
MAX_PICKLE_BYTES = 1 << 30
#: torch writes data.pkl stored; a deflated one (a re-zipped file) may expand this much, no more.
MAX_PICKLE_INFLATION = 100
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_END_RECORD = struct.Struct("<4s4H2LH")  # signature, disks, entry counts, cd size/offset, comment
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")
_END_SIGNATURE = b"PK\x05\x06"
_MAGIC_OPCODES = frozenset({"PROTO", "FRAME", "LONG1", "LONG4", "LONG", "INT"})
#: What ``zipfile`` raises on damaged archives (no single error type of its own).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, KeyError,
              UnicodeDecodeError, NotImplementedError, RuntimeError, OverflowError,
              struct.error, zlib.error, OSError)


def sniff_torch(head: bytes) -> str | None:
    """``zip`` / ``torch-legacy`` / ``torch-tar`` from a file's first bytes (512 are enough);
    None when none. A zip is only *possibly* torch; ``torch_zip_prefix`` checks its names."""
    if head.startswith(ZIP_MAGIC):
        return "zip"  # torch.load's own test: zip whenever the first four bytes say so
    if starts_with_legacy_magic(head):
        return "torch-legacy"
    if head[257:262] == b"ustar" and head.split(b"\0", 1)[0] in _TAR_MEMBERS:
        return "torch-tar"
    return None


#: The members of torch's oldest (tar) format; the first one names the file as such.
_TAR_MEMBERS = frozenset({b"sys_info", b"pickle", b"storages", b"tensors"})


def starts_with_legacy_magic(head: bytes) -> bool:
    """True when the first value the first pickle in ``head`` pushes is torch's legacy magic
    number, at any pickle protocol (``pickle_protocol=4`` frames it, protocol 0 spells it in
    text). What follows is left to the restricted reader, which names anything dangerous."""
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(head[:128])):
            if opcode.name in ("PROTO", "FRAME"):
                continue
            return opcode.name in _MAGIC_OPCODES and arg == LEGACY_MAGIC_NUMBER
    except (ValueError, IndexError, EOFError, UnicodeDecodeError, OverflowError):
        return False
    return False


def torch_zip_prefix(names: list[str]) -> str | None:
    """The archive folder holding ``data.pkl``, found as torch's zip reader finds it: the
    folder of the first entry, ``data.pkl`` looked up without regard to case."""
    if not names or "/" not in names[0]:
        return None
    prefix = names[0].split("/", 1)[0] + "/"
    wanted = f"{prefix}data.pkl".lower()
    return prefix if any(n.lower() == wanted for n in names) else None


def _by_lower_name(infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    return {info.filename.lower(): info for info in infos}


def check_zip_end_records(raw: BinaryIO, size: int) -> int:
    """Refuse zips whose end records torch's reader (miniz) and Python's ``zipfile`` could
    read differently; returns the entry count the records give.

    Both find the end record by searching backwards, so the last end signature must be the
    only self-consistent end record (one hidden in the comment of another is refused); the
    central directory must sit exactly where that record (or its ZIP64 record, found through
    its locator) says, since ``zipfile`` silently shifts every offset by any difference and
    miniz does not, and ``zipfile`` looks for the ZIP64 record next to the locator while
    miniz follows the locator's offset.
    """
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
    return int(entries)


def check_zip_members(infos: list[zipfile.ZipInfo], entries: int) -> None:
    """Refuse member lists two readers see differently: a count the end record contradicts
    (miniz trusts the count, ``zipfile`` the directory size), names repeated even ignoring
    case (miniz's lookup), names holding NUL (``zipfile`` cuts them there, miniz does not)."""
    if entries != len(infos):
        raise AmbiguousCheckpointError(
            f"zip end record counts {entries} entries, its central directory holds {len(infos)}")
    seen: set[str] = set()
    for info in infos:
        if "\0" in info.orig_filename:
            raise AmbiguousCheckpointError("a zip member name holds a NUL byte")
        folded = info.orig_filename.lower()
        if folded in seen:
            raise AmbiguousCheckpointError(
                f"zip member {info.orig_filename!r} appears twice (ignoring case)")
        seen.add(folded)


def zip_member_names(path: Path) -> list[str]:
    """The member names of a zip, in directory order, after the end-record and member checks
    above (an ambiguous zip raises ``AmbiguousCheckpointError`` before any name is trusted)."""
    with open_regular(path, "rb") as raw:
        entries = check_zip_end_records(raw, os.fstat(raw.fileno()).st_size)
        raw.seek(0)
        with zipfile.ZipFile(raw) as archive:
            infos = archive.infolist()
        check_zip_members(infos, entries)
    return [info.filename for info in infos]


def _find_all(data: bytes, needle: bytes) -> list[int]:
    found, at = [], data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + 1)
    return found


def tar_verdict(handle: BinaryIO, size: int) -> bool:
    """What ``torch.load`` decides before reading a non-zip file as a pickle stream: True
    when ``tarfile`` opens it (torch then reads it as its tar format, never as a stream)."""
    handle.seek(0)
    try:
        with tarfile.open(fileobj=BoundedReader(handle, size), mode="r:",  # type: ignore[call-overload]
                          format=tarfile.PAX_FORMAT):
            return True
    except tarfile.TarError:
        return False
    except Exception as exc:  # torch.load fails here too, but the stream must not be vouched for
        raise AmbiguousCheckpointError(f"the tar reader torch.load tries first fails on it ({type(exc).__name__})") from exc
    finally:
        handle.seek(0)


@dataclass
class TorchFile:
    """An opened torch checkpoint: its unpickled object graph plus access to storages."""

    path: Path
    format: str
    obj: Any
    unknown_globals: set[str] = field(default_factory=set)
    big_endian: bool = False
    # storage key -> (absolute byte offset in the file, byte length, crc32 or None)
    records: dict[str, tuple[int, int, int | None]] = field(default_factory=dict)
    refs: dict[str, StorageRef] = field(default_factory=dict)

    def remember(self, ref: StorageRef) -> StorageRef:
        """One record per storage key: tensors sharing a storage share the record."""
        return self.refs.setdefault(ref.key, ref)

    def storage_bytes(self, ref: StorageRef) -> np.ndarray:
        offset, _length, _ = self._record(ref)
        need = ref.nbytes
        if need == 0:
            return np.empty(0, dtype=np.uint8)
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=offset, shape=(need,))

    def check_storage(self, ref: StorageRef, data: np.ndarray) -> None:
        """Compare a storage's bytes with the zip's crc32 (catches flipped bytes)."""
        _, length, crc = self._record(ref)
        if crc is not None and length == data.shape[0] and zlib.crc32(data.data) != crc:
            raise CorruptCheckpointError(f"storage data/{ref.key} fails its crc32 check", self.path)

    def _record(self, ref: StorageRef) -> tuple[int, int, int | None]:
        try:
            record = self.records[ref.key]
        except KeyError:
            raise CorruptCheckpointError(f"storage record data/{ref.key} is missing", self.path) from None
        if record[1] < ref.nbytes:
            raise CorruptCheckpointError(
                f"storage record data/{ref.key} holds {record[1]} bytes, needs {ref.nbytes}",
                self.path,
            )
        return record


def open_torch(path: Path, head: bytes | None = None) -> TorchFile:
    """Read a torch checkpoint's structure (no tensor bytes) with the restricted unpickler."""
    if head is None:
        with open_regular(path, "rb") as handle:
            head = handle.read(512)
    kind = sniff_torch(head)
    try:
        if kind == "torch-legacy":
            return _open_legacy(path)
        if kind == "zip":
            return _open_zip(path)
        if kind == "torch-tar":
            raise UnsupportedCheckpointError(
                "torch's oldest checkpoint format (a tar archive) is not supported")
    except CkptError as exc:
        if exc.path is None:
            exc.path = path
        raise
    except OSError as exc:
        raise ReadError(f"cannot read ({exc.strerror or exc})", path) from exc
    raise UnsupportedCheckpointError("not a torch.save file", path)


def _open_zip(path: Path) -> TorchFile:
    try:
        return _read_zip(path)
    except CkptError:
        raise
    except ZIP_ERRORS as exc:
        raise CorruptCheckpointError(f"damaged zip archive ({type(exc).__name__}: {str(exc)[:120]})") from exc


def _read_zip(path: Path) -> TorchFile:
    with open_regular(path, "rb") as raw:
        entries = check_zip_end_records(raw, os.fstat(raw.fileno()).st_size)
        raw.seek(0)
        try:
            archive = zipfile.ZipFile(raw)
        except (zipfile.BadZipFile, ValueError, EOFError) as exc:
            raise CorruptCheckpointError(f"not a complete zip archive, truncated? ({exc})") from exc
        try:
            infos = archive.infolist()
        except Exception as exc:
            raise CorruptCheckpointError(f"unreadable zip directory ({exc})") from exc
        names = [i.filename for i in infos]
        prefix = torch_zip_prefix(names)
        if prefix is None:
            raise UnsupportedCheckpointError("zip archive without a torch data.pkl")
        check_zip_members(infos, entries)
        by_name = _by_lower_name(infos)  # unique ignoring case: checked just above
        if f"{prefix}constants.pkl".lower() in by_name or any(
                n.lower().startswith(f"{prefix}code/".lower()) for n in names):
            raise UnsupportedCheckpointError("TorchScript archive (holds code); not converted")
        for info in infos:
            if info.flag_bits & 0x1:
                raise UnsupportedCheckpointError(f"zip entry {info.filename} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise UnsupportedCheckpointError(f"zip entry {info.filename} uses an unknown compression")
        pkl_info = by_name[f"{prefix}data.pkl".lower()]
        if pkl_info.file_size > MAX_PICKLE_BYTES:
            raise CorruptCheckpointError("data.pkl is larger than 1 GiB")
        if pkl_info.compress_type != zipfile.ZIP_STORED and pkl_info.file_size > max(
                1 << 20, MAX_PICKLE_INFLATION * pkl_info.compress_size):
            raise CorruptCheckpointError(
                f"refused: deflated data.pkl expands {pkl_info.file_size} bytes from "
                f"{pkl_info.compress_size}, which exceeds {MAX_PICKLE_INFLATION}x")
        try:
            pickle_bytes = archive.read(pkl_info)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise CorruptCheckpointError(f"data.pkl is damaged ({exc})") from exc
        byteorder = b"little"
        order_info = by_name.get(f"{prefix}byteorder".lower())
        if order_info is not None:
            if order_info.file_size > 16:
                raise CorruptCheckpointError("byteorder record is oversized")
            byteorder = archive.read(order_info).strip()
        tf = TorchFile(path=path, format="torch-zip", obj=None, big_endian=byteorder == b"big")

        def persistent_load(pid: Any) -> StorageRef:
            return tf.remember(storage_ref_from_pid(pid)[0])

        tf.obj, unpickler = restricted_load(pickle_bytes, persistent_load)
        tf.unknown_globals = unpickler.unknown
        file_size = path.stat().st_size
        for key in tf.refs:
            record = by_name.get(f"{prefix}data/{key}".lower())
            if record is None:
                raise CorruptCheckpointError(f"storage record data/{key} is missing")
            if record.compress_type != zipfile.ZIP_STORED:
                raise UnsupportedCheckpointError(f"storage record data/{key} is compressed")
            offset = _data_offset(raw, record)
            if offset + record.file_size > file_size:
                raise CorruptCheckpointError(f"storage record data/{key} runs past the end of file")
            tf.records[key] = (offset, record.file_size, record.CRC)
    return tf


def _data_offset(raw: BinaryIO, info: zipfile.ZipInfo) -> int:
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != ZIP_MAGIC:
        raise CorruptCheckpointError(f"bad zip local header for {info.filename}")
    fields = _LOCAL_HEADER.unpack(header)
    name_len, extra_len = int(fields[9]), int(fields[10])  # "H" fields: ints already
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _open_legacy(path: Path) -> TorchFile:
    tf = TorchFile(path=path, format="torch-legacy", obj=None)
    with open_regular(path, "rb") as handle:
        if tar_verdict(handle, os.fstat(handle.fileno()).st_size):
            raise AmbiguousCheckpointError(
                "also a valid tar archive, which torch.load reads instead of the pickle stream")
        magic, _ = restricted_load(handle)
        if magic != LEGACY_MAGIC_NUMBER:
            raise CorruptCheckpointError("bad legacy torch magic number")
        version, _ = restricted_load(handle)
        if version != LEGACY_PROTOCOL_VERSION:
            raise UnsupportedCheckpointError(f"legacy torch protocol {version!r} not supported")
        sys_info, _ = restricted_load(handle)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            tf.big_endian = True

        def persistent_load(pid: Any) -> Any:
            if isinstance(pid, tuple) and pid and pid[0] == "module":
                return None  # a pickled nn.Module's source code: never used, never run
            ref, view = storage_ref_from_pid(pid, legacy=True)
            if view is not None:
                raise UnsupportedCheckpointError("legacy storage views are not supported")
            return tf.remember(ref)

        tf.obj, unpickler = restricted_load(handle, persistent_load)
        tf.unknown_globals = unpickler.unknown
        keys, _ = restricted_load(handle)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CorruptCheckpointError("legacy storage key list is malformed")
        file_size = path.stat().st_size
        for key in keys:
            if key not in tf.refs:
                raise CorruptCheckpointError(f"legacy storage {key} is not referenced")
            size_bytes = handle.read(8)
            if len(size_bytes) != 8:
                raise CorruptCheckpointError("legacy file is truncated in its storage records")
            # The prefix counts elements of a type the record does not name (untyped storages
            # of new dtypes); the pickled reference knows the byte length, the prefix must fit.
            count = int.from_bytes(size_bytes, "little", signed=True)
            offset = handle.tell()
            length = tf.refs[key].nbytes
            if count < 0 or (count and length % count) or offset + length > file_size:
                raise CorruptCheckpointError("legacy file is truncated in its storage records")
            tf.records[key] = (offset, length, None)
            handle.seek(offset + length)
    return tf
