"""Readers for ``torch.save`` files: the zip format (Lightning ``.ckpt``, ``.pt``, ``.pth``,
``.bin``) and the legacy non-zip pickle stream. Neither imports torch nor runs file code.

ckptctl vouches for a file only if it read the very bytes ``torch.load`` would unpickle, so
it chooses the container as torch does (zip by its first four bytes; otherwise the old tar
format first, then the pickle stream), reads the zip directory as torch's zip reader does
(``zip_directory``: raw names, the first entry's folder, lookups ignoring ASCII case), and
refuses files that readers could see differently (there and in ``pickle_guard``'s framing).
"""

from __future__ import annotations

import io
import mmap
import os
import pickletools
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import (
    AmbiguousCheckpointError,
    BudgetExceededError,
    CkptError,
    CorruptCheckpointError,
    ReadError,
    UnsupportedCheckpointError,
)
from ..safeio import open_regular
from .tensor import StorageRef
from .unpickler import BoundedReader, restricted_load, storage_ref_from_pid
from .zip_directory import STORED, data_offset, read_directory, read_member

if TYPE_CHECKING:
    import numpy as np  # imported when tensor bytes are read, never by ``scan``

ZIP_MAGIC = b"PK\x03\x04"
#: ``torch.save``'s legacy stream starts with the pickled int 0x1950a86a20f9469cfc6c.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
LEGACY_HEAD = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC_NUMBER.to_bytes(10, "little")
#: A pickle bigger than this (tensors excluded) is not a checkpoint we can hold safely.
MAX_PICKLE_BYTES = 1 << 30
#: torch writes data.pkl stored; a deflated one (a re-zipped file) may expand this much, no more.
MAX_PICKLE_INFLATION = 100
#: Files up to this size are mapped once, whole; bigger ones a storage at a time, so the
#: pages of a 10 GB checkpoint are not all held mapped (peak RSS stays near one tensor).
WHOLE_FILE_MAP_BYTES = 64 << 20
_MAGIC_OPCODES = frozenset({"PROTO", "FRAME", "LONG1", "LONG4", "LONG", "INT"})
#: What ``zipfile`` raises on damaged archives (no single error type of its own).
def zip_errors() -> tuple[type[BaseException], ...]:
    """``ZIP_ERRORS``, importing ``zipfile`` only when an error is being matched (``scan``
    of torch files reads their directory with ``zip_directory``, never ``zipfile``)."""
    import zipfile

    return (zipfile.BadZipFile, zipfile.LargeZipFile, *_OTHER_ZIP_ERRORS)


_OTHER_ZIP_ERRORS = (ValueError, EOFError, KeyError,
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


def torch_zip_prefix(names: list[bytes]) -> bytes | None:
    """The archive folder holding ``data.pkl`` (with its slash), found as torch's zip reader
    finds it: the folder of the first entry, ``data.pkl`` looked up ignoring ASCII case."""
    if not names or b"/" not in names[0]:
        return None
    prefix = names[0].split(b"/", 1)[0] + b"/"
    wanted = (prefix + b"data.pkl").lower()
    return prefix if any(n.lower() == wanted for n in names) else None


def zip_member_names(path: Path) -> list[bytes]:
    """The raw member names of a zip, in directory order, after ``zip_directory``'s checks
    (an ambiguous zip raises ``AmbiguousCheckpointError`` before any name is trusted)."""
    with open_regular(path, "rb") as raw:
        directory = read_directory(raw, os.fstat(raw.fileno()).st_size)
    return [member.name for member in directory.members]


def looks_like_pickle(head: bytes) -> bool:
    """Whether ``torch.load`` would unpickle this non-zip, non-tar file as a legacy stream and
    get somewhere: a pickle protocol header, or a protocol 0/1 opening opcode."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    return head[:1] in (b"c", b"(", b"}", b"]", b"L", b"I", b"\x8a", b"J")


def tar_verdict(handle: BinaryIO, size: int) -> bool:
    """What ``torch.load`` decides before reading a non-zip file as a pickle stream: True
    when ``tarfile`` opens it (torch then reads it as its tar format, never as a stream)."""
    handle.seek(0)
    import tarfile  # only for files that are not zip archives

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
    _map: np.ndarray | None = field(default=None, repr=False)
    _file_size: int | None = field(default=None, repr=False)

    def remember(self, ref: StorageRef) -> StorageRef:
        """One record per storage key: tensors sharing a storage share the record."""
        return self.refs.setdefault(ref.key, ref)

    def storage_bytes(self, ref: StorageRef) -> np.ndarray:
        import numpy as np

        offset, _length, _ = self._record(ref)
        need = ref.nbytes
        if need == 0:
            return np.empty(0, dtype=np.uint8)
        if self._size() > WHOLE_FILE_MAP_BYTES:
            # a map per storage, dropped after use: a big file's pages never stay mapped
            return np.memmap(self.path, dtype=np.uint8, mode="r", offset=offset, shape=(need,))
        return self._mapped()[offset:offset + need]

    def storage_range(self, ref: StorageRef, start: int, length: int) -> np.ndarray:
        """Bytes ``start:start + length`` of a storage (inside its record), mapped on their
        own in a big file: a big tensor is written a slice at a time, each slice's pages
        dropped with its map, so peak RSS stays near one slice, not one tensor."""
        import numpy as np

        offset, record_length, _ = self._record(ref)
        if start < 0 or length < 0 or start + length > min(record_length, ref.nbytes):
            raise CorruptCheckpointError(f"storage data/{ref.key} is read out of its bounds",
                                         self.path)
        if length == 0:
            return np.empty(0, dtype=np.uint8)
        if self._size() > WHOLE_FILE_MAP_BYTES:
            return np.memmap(self.path, dtype=np.uint8, mode="r", offset=offset + start,
                             shape=(length,))
        return self._mapped()[offset + start:offset + start + length]

    def check_storage_in_slices(self, ref: StorageRef, slice_bytes: int) -> None:
        """``check_storage`` one slice at a time (for storages bigger than a slice)."""
        _, length, crc = self._record(ref)
        if crc is None or length != ref.nbytes:
            return
        running = 0
        for start in range(0, length, slice_bytes):
            piece = self.storage_range(ref, start, min(slice_bytes, length - start))
            running = zlib.crc32(piece.data, running)
            del piece
        if running != crc:
            raise CorruptCheckpointError(f"storage data/{ref.key} fails its crc32 check", self.path)

    def _size(self) -> int:
        if self._file_size is None:
            self._file_size = self.path.stat().st_size
        return self._file_size

    def _mapped(self) -> np.ndarray:
        """A small file, memory-mapped read-only once (a map per storage costs a syscall
        and a path resolution each: most of the time of a small checkpoint)."""
        if self._map is None:
            import numpy as np

            with open_regular(self.path, "rb") as handle:
                mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._map = np.frombuffer(mapping, dtype=np.uint8)
        return self._map

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
    """Read a torch checkpoint's structure (no tensor bytes) with the restricted unpickler,
    choosing the container as ``torch.load`` does: a zip by its first four bytes; otherwise
    its tar format if ``tarfile`` opens the file; otherwise a legacy pickle stream."""
    try:
        with open_regular(path, "rb") as handle:
            head = handle.read(512)
            if head.startswith(ZIP_MAGIC):
                return _read_zip(path, handle)
            if tar_verdict(handle, os.fstat(handle.fileno()).st_size):
                if looks_like_pickle(head):
                    raise AmbiguousCheckpointError("also a valid tar archive, which torch.load "
                                                   "reads instead of the pickle stream")
                raise UnsupportedCheckpointError(
                    "torch's oldest checkpoint format (a tar archive) is not supported")
            if looks_like_pickle(head):
                return _open_legacy(path, handle)
    except CkptError as exc:
        if exc.path is None:
            exc.path = path
        raise
    except OSError as exc:
        raise ReadError(f"cannot read ({exc.strerror or exc})", path) from exc
    raise UnsupportedCheckpointError("not a torch.save file", path)


def _read_zip(path: Path, raw: BinaryIO) -> TorchFile:
    directory = read_directory(raw, os.fstat(raw.fileno()).st_size)
    names = [m.name for m in directory.members]
    prefix = torch_zip_prefix(names)
    if prefix is None:
        raise UnsupportedCheckpointError("zip archive without a torch data.pkl")
    by_name = directory.folded()
    outside = next((m for m in directory.members if not m.name.startswith(prefix)), None)
    if outside is not None:
        raise UnsupportedCheckpointError(
            f"zip member {outside.text_name!r} lies outside the archive folder")
    if (prefix + b"constants.pkl").lower() in by_name or any(
            n.lower().startswith((prefix + b"code/").lower()) for n in names):
        raise UnsupportedCheckpointError("TorchScript archive (holds code); not converted")
    pkl_member = by_name[(prefix + b"data.pkl").lower()]
    if pkl_member.method != STORED and pkl_member.size > max(
            1 << 20, MAX_PICKLE_INFLATION * pkl_member.compressed_size):
        raise BudgetExceededError(
            f"a deflated data.pkl of {pkl_member.compressed_size} bytes inflating to "
            f"{pkl_member.size}", f"{MAX_PICKLE_INFLATION}x its compressed size")
    pickle_bytes = read_member(raw, directory, pkl_member, MAX_PICKLE_BYTES)
    byteorder = b"little"
    order_member = by_name.get((prefix + b"byteorder").lower())
    if order_member is not None:
        byteorder = read_member(raw, directory, order_member, 16).strip()
    tf = TorchFile(path=path, format="torch-zip", obj=None, big_endian=byteorder == b"big")

    def persistent_load(pid: Any) -> StorageRef:
        return tf.remember(storage_ref_from_pid(pid)[0])

    tf.obj, unpickler = restricted_load(pickle_bytes, persistent_load)
    tf.unknown_globals = unpickler.unknown
    for key in tf.refs:
        record = by_name.get((prefix + b"data/" + key.encode()).lower())
        if record is None:
            raise CorruptCheckpointError(f"storage record data/{key} is missing")
        if record.method != STORED or record.compressed_size != record.size:
            raise UnsupportedCheckpointError(f"storage record data/{key} is compressed")
        if record.flags & 0x1:
            raise UnsupportedCheckpointError(f"storage record data/{key} is encrypted")
        tf.records[key] = (data_offset(raw, directory, record), record.size, record.crc)
    return tf


def _open_legacy(path: Path, handle: io.BufferedReader) -> TorchFile:
    tf = TorchFile(path=path, format="torch-legacy", obj=None)
    handle.seek(0)
    # read in order, pickle after pickle, like torch's own pickle_module.load calls
    magic, _ = restricted_load(handle)
    if magic != LEGACY_MAGIC_NUMBER:
        raise UnsupportedCheckpointError(
            "a pickle, but not a torch.save file (its first value is not torch's magic number)")
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
    file_size = os.fstat(handle.fileno()).st_size
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
