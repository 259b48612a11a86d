"""Readers for ``torch.save`` files: the zip format (Lightning ``.ckpt``, ``.pt``, ``.pth``,
``.bin``) and the legacy non-zip pickle stream. Neither imports torch nor runs file code."""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import CkptError, CorruptCheckpointError, ReadError, UnsupportedCheckpointError
from ..safeio import open_regular
from .tensor import StorageRef
from .unpickler import restricted_load, storage_ref_from_pid

ZIP_MAGIC = b"PK\x03\x04"
#: ``torch.save``'s legacy stream starts with the pickled int 0x1950a86a20f9469cfc6c.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
LEGACY_HEAD = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC_NUMBER.to_bytes(10, "little")
#: A pickle bigger than this (tensors excluded) is not a checkpoint we can hold safely.
MAX_PICKLE_BYTES = 1 << 30
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
#: What ``zipfile`` raises on damaged archives (no single error type of its own).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, KeyError,
              UnicodeDecodeError, NotImplementedError, RuntimeError, OverflowError,
              struct.error, zlib.error, OSError)


def sniff_torch(head: bytes) -> str | None:
    """``torch-zip`` / ``torch-legacy`` from a file's first bytes; None when neither.

    A zip is only *possibly* torch; ``is_torch_zip`` checks its member names.
    """
    if head.startswith(LEGACY_HEAD):
        return "torch-legacy"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    return None


def torch_zip_prefix(names: list[str]) -> str | None:
    """The archive folder holding ``data.pkl`` (torch uses any single top-level name)."""
    candidates = [n[: -len("data.pkl")] for n in names if n.endswith("data.pkl")
                  and n.count("/") <= 1]
    return candidates[0] if len(candidates) == 1 else None


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
            head = handle.read(32)
    kind = sniff_torch(head)
    try:
        if kind == "torch-legacy":
            return _open_legacy(path)
        if kind == "zip":
            return _open_zip(path)
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
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise CorruptCheckpointError(f"not a complete zip archive, truncated? ({exc})") from exc
    with archive, open_regular(path, "rb") as raw:
        try:
            infos = archive.infolist()
        except Exception as exc:
            raise CorruptCheckpointError(f"unreadable zip directory ({exc})") from exc
        names = [i.filename for i in infos]
        prefix = torch_zip_prefix(names)
        if prefix is None:
            raise UnsupportedCheckpointError("zip archive without a torch data.pkl")
        if f"{prefix}constants.pkl" in names or any(n.startswith(f"{prefix}code/") for n in names):
            raise UnsupportedCheckpointError("TorchScript archive (holds code); not converted")
        by_name = {i.filename: i for i in infos}
        for info in infos:
            if info.flag_bits & 0x1:
                raise UnsupportedCheckpointError(f"zip entry {info.filename} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise UnsupportedCheckpointError(f"zip entry {info.filename} uses an unknown compression")
        pkl_info = by_name[f"{prefix}data.pkl"]
        if pkl_info.file_size > MAX_PICKLE_BYTES:
            raise CorruptCheckpointError("data.pkl is larger than 1 GiB")
        try:
            pickle_bytes = archive.read(pkl_info)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise CorruptCheckpointError(f"data.pkl is damaged ({exc})") from exc
        byteorder = b"little"
        if f"{prefix}byteorder" in by_name:
            if by_name[f"{prefix}byteorder"].file_size > 16:
                raise CorruptCheckpointError("byteorder record is oversized")
            byteorder = archive.read(f"{prefix}byteorder").strip()
        tf = TorchFile(path=path, format="torch-zip", obj=None, big_endian=byteorder == b"big")

        def persistent_load(pid: Any) -> StorageRef:
            return tf.remember(storage_ref_from_pid(pid)[0])

        tf.obj, unpickler = restricted_load(pickle_bytes, persistent_load)
        tf.unknown_globals = unpickler.unknown
        file_size = path.stat().st_size
        for key in tf.refs:
            record = by_name.get(f"{prefix}data/{key}")
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
    with open(path, "rb") as handle:
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
