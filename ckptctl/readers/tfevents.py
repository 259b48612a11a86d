"""TensorBoard event files (``events.out.tfevents.*``): scalars, without TensorFlow or the
``protobuf`` package.

An event file is a sequence of TFRecords: ``uint64 LE length``, ``uint32`` masked crc32c of
those 8 bytes, the data, ``uint32`` masked crc32c of the data. Each record holds one
``tensorflow.Event`` protobuf (``wall_time`` double 1, ``step`` int64 2, ``file_version``
string 3, ``summary`` 5); a ``Summary`` holds ``Value`` messages (``tag`` 1,
``simple_value`` float 2, ``tensor`` 8, ``metadata`` 9 → ``plugin_data.plugin_name``).

Public API (stable; this is what the metadata sources use)::

    Scalar(tag: str, step: int, wall_time: float, value: float)     # frozen dataclass
    iter_scalars(path, *, tags=None, max_bytes=DEFAULT_MAX_BYTES,
                 max_record_bytes=MAX_RECORD_BYTES, report=None) -> Iterator[Scalar]
    read_scalars(path, *, tags=None, max_bytes=..., max_record_bytes=...,
                 max_points=MAX_POINTS) -> ScalarLog
    read_scalars_dir(folder, *, tags=None, max_bytes=..., max_record_bytes=...,
                     max_points=..., max_depth=3) -> ScalarLog
    find_event_files(folder, *, max_depth=3) -> list[Path]
    is_event_file_name(name) -> bool
    ScalarLog: .points {tag: {step: Scalar}}, .files, .truncated, .records,
               .oversized_skipped, .tags(), .series(tag), .last(tag), .at_step(step)
    ReadReport: per-file counters filled in while ``iter_scalars`` runs

Rules:

* **Which values are scalars.** A ``Value`` with ``simple_value`` (TF1 summaries,
  ``torch.utils.tensorboard``, Lightning's ``TensorBoardLogger``, HF Trainer) and a
  ``Value`` whose ``tensor`` is rank 0 of dtype float, double, half, bfloat16, int32 or
  int64 and whose plugin is ``"scalars"`` (TF2 ``tf.summary.scalar``, Keras' TensorBoard
  callback). TF2 writers may send the plugin metadata only with the first value of a tag, so
  the plugin of a tag is remembered from its first metadata for the rest of the read (of a
  file, or of all files of ``read_scalars_dir``). Everything else (images, histograms,
  audio, graphs, hparams, text, non-scalar tensors) is skipped without being decoded.
* **Last value wins.** ``ScalarLog`` keeps, per (tag, step), the value logged LAST in read
  order: records in file order, files in ``find_event_files`` order. (A resumed run that
  logs step 500 again overrides the first value; TensorBoard's own purging of "orphaned"
  steps is not imitated.) ``iter_scalars`` yields every value, duplicates included.
* **Integrity.** Both CRCs of every record are checked; a bad one is a
  ``CorruptCheckpointError`` naming the byte offset of the record. A last record cut short
  (a file still being written, or a crash) ends the read cleanly and is reported in
  ``ReadReport.truncated`` / ``ScalarLog.truncated``, not raised.
* **Bounds.** Files are streamed (one record in memory at a time). A record declaring more
  than ``max_record_bytes`` (64 MiB) is skipped by seeking past it (its data CRC is then not
  checked: counted in ``oversized_skipped``); one reaching past the end of the file is a
  truncated tail. A file larger than ``max_bytes`` (1 GiB) is refused
  (``BudgetExceededError``) before reading; so is a ``ScalarLog`` past ``max_points``
  distinct (tag, step) pairs (2,000,000; pass ``tags`` to keep fewer). Time is linear in
  the number of records.
* **Files.** Only regular files are read (``safeio.open_regular``); ``find_event_files``
  never follows symlinks (to files or folders) and returns event files sorted by file name
  (TensorBoard names start with the creation time in seconds, so this is creation order),
  ties broken by relative path.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import google_crc32c

from ..budgets import count_text, size_text
from ..errors import BudgetExceededError, CkptError, CorruptCheckpointError, ReadError
from ..safeio import open_regular
from .protowire import WIRE_FIXED32, WIRE_FIXED64, WIRE_LEN, Field, iter_fields

#: A record longer than this is skipped unread (scalars are tiny; images may be large).
MAX_RECORD_BYTES = 64 << 20
#: Event files larger than this are refused before reading.
DEFAULT_MAX_BYTES = 1 << 30
#: Distinct (tag, step) pairs one ScalarLog may hold.
MAX_POINTS = 2_000_000
EVENT_FILE_MARKER = "tfevents"
_CRC_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_HEADER = 12
_FOOTER = 4

# tensorflow.DataType values readable as a scalar
_DT_FLOAT, _DT_DOUBLE, _DT_INT32, _DT_INT64, _DT_BFLOAT16, _DT_HALF = 1, 2, 3, 9, 14, 19
_CONTENT_FORMAT = {_DT_FLOAT: "<f", _DT_DOUBLE: "<d", _DT_INT32: "<i", _DT_INT64: "<q",
                   _DT_HALF: "<e"}
SCALARS_PLUGIN = "scalars"


def mask_crc(crc: int) -> int:
    """TFRecord's crc masking: ((crc >> 15) | (crc << 17)) + 0xa282ead8, mod 2**32."""
    return ((((crc >> 15) | (crc << 17)) & _U32) + _CRC_MASK_DELTA) & _U32


def _masked_crc(data: bytes) -> int:
    return mask_crc(int(google_crc32c.value(data)))


@dataclass(frozen=True)
class Scalar:
    tag: str
    step: int
    wall_time: float
    value: float


@dataclass
class ReadReport:
    """What one ``iter_scalars`` call met (filled in as it runs)."""

    path: Path
    records: int = 0
    scalars: int = 0
    oversized_skipped: int = 0
    truncated: bool = False
    file_version: str | None = None
    bytes_read: int = 0


@dataclass
class ScalarLog:
    """Scalars of one or more event files: the last value logged per (tag, step)."""

    points: dict[str, dict[int, Scalar]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    truncated: list[Path] = field(default_factory=list)
    records: int = 0
    oversized_skipped: int = 0
    max_points: int = MAX_POINTS
    _count: int = 0

    def add(self, scalar: Scalar) -> None:
        steps = self.points.setdefault(scalar.tag, {})
        if scalar.step not in steps:
            self._count += 1
            if self._count > self.max_points:
                raise BudgetExceededError(
                    f"{count_text(self._count)} distinct (tag, step) scalars",
                    f"the limit of {count_text(self.max_points)} (read fewer tags)")
        steps[scalar.step] = scalar

    def tags(self) -> list[str]:
        return sorted(self.points)

    def series(self, tag: str) -> list[Scalar]:
        """The values of ``tag``, by step."""
        steps = self.points.get(tag, {})
        return [steps[s] for s in sorted(steps)]

    def last(self, tag: str) -> Scalar | None:
        """The value of ``tag`` at its highest step."""
        steps = self.points.get(tag)
        return steps[max(steps)] if steps else None

    def at_step(self, step: int) -> dict[str, float]:
        """tag -> value logged at exactly ``step``."""
        return {tag: steps[step].value for tag, steps in sorted(self.points.items())
                if step in steps}

    def __len__(self) -> int:
        return self._count


def is_event_file_name(name: str) -> bool:
    return name.startswith("events.out.tfevents.")


# --- records ---------------------------------------------------------------------------------


def _read_exactly(handle: BinaryIO, count: int) -> bytes:
    data = handle.read(count)
    while 0 < len(data) < count:  # a pipe-like short read: keep going until EOF
        more = handle.read(count - len(data))
        if not more:
            break
        data += more
    return data


def _records(handle: BinaryIO, path: Path, report: ReadReport,
             max_record_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(offset, data) of each whole record; stops at EOF or a truncated tail."""
    offset = 0
    while True:
        header = _read_exactly(handle, _HEADER)
        if not header:
            return
        if len(header) < _HEADER:
            report.truncated = True
            return
        length_bytes, length_crc = header[:8], int.from_bytes(header[8:], "little")
        if _masked_crc(length_bytes) != length_crc:
            raise CorruptCheckpointError(
                f"bad event file: the length of the record at byte {offset} fails its "
                "crc32c check", path)
        length = int.from_bytes(length_bytes, "little")
        end = offset + _HEADER + length + _FOOTER
        if length > max_record_bytes:
            size = os.fstat(handle.fileno()).st_size
            if end > size:
                report.truncated = True
                return
            handle.seek(end)
            report.oversized_skipped += 1
            report.bytes_read = offset = end
            continue
        data = _read_exactly(handle, length)
        footer = _read_exactly(handle, _FOOTER) if len(data) == length else b""
        if len(footer) < _FOOTER:
            report.truncated = True
            return
        if _masked_crc(data) != int.from_bytes(footer, "little"):
            raise CorruptCheckpointError(
                f"bad event file: the record at byte {offset} fails its data crc32c check",
                path)
        report.records += 1
        report.bytes_read = end
        yield offset, data
        offset = end


# --- protobuf messages -----------------------------------------------------------------------


def _double(field_: Field) -> float:
    if field_.wire != WIRE_FIXED64:
        field_._expect(WIRE_FIXED64)
    assert isinstance(field_.value, int)
    return float(struct.unpack("<d", field_.value.to_bytes(8, "little"))[0])


def _float(field_: Field) -> float:
    return float(struct.unpack("<f", field_.fixed32().to_bytes(4, "little"))[0])


def _plugin_name(metadata: memoryview) -> str | None:
    for sub in iter_fields(metadata):
        if sub.number == 1:  # plugin_data
            for item in iter_fields(sub.message()):
                if item.number == 1:
                    return item.text("plugin name")
    return None


def _tensor_scalar(tensor: memoryview) -> float | None:
    """The value of a rank-0 numeric TensorProto, else None (anything else is skipped)."""
    dtype = 0
    rank = 0
    content: memoryview | None = None
    values: list[Field] = []
    for sub in iter_fields(tensor):
        number = sub.number
        if number == 1:
            dtype = sub.uint()
        elif number == 2:  # TensorShapeProto: dim = 2, unknown_rank = 3
            for dim in iter_fields(sub.message()):
                if dim.number in (2, 3):
                    rank += 1
        elif number == 4:
            content = sub.message()
        elif number in (5, 6, 7, 10, 13):
            values.append(sub)
    if rank or dtype not in (*_CONTENT_FORMAT, _DT_BFLOAT16):
        return None
    if content is not None and len(content):
        fmt = _CONTENT_FORMAT.get(dtype)
        if dtype == _DT_BFLOAT16:
            if len(content) != 2:
                return None
            return float(struct.unpack("<f", b"\x00\x00" + bytes(content))[0])
        if fmt is None or len(content) != struct.calcsize(fmt):
            return None
        return float(struct.unpack(fmt, bytes(content))[0])
    wanted = {_DT_FLOAT: 5, _DT_DOUBLE: 6, _DT_INT32: 7, _DT_INT64: 10, _DT_HALF: 13,
              _DT_BFLOAT16: 13}[dtype]
    found = [v for v in values if v.number == wanted]
    if not found:
        return 0.0  # proto3: a scalar tensor with no values holds zero
    last = found[-1]
    if wanted == 5:
        raw = bytes(last.message()) if last.wire == WIRE_LEN else \
            last.fixed32().to_bytes(4, "little")
        return float(struct.unpack("<f", raw[-4:])[0]) if len(raw) >= 4 else None
    if wanted == 6:
        if last.wire == WIRE_LEN:
            raw = bytes(last.message())
            return float(struct.unpack("<d", raw[-8:])[0]) if len(raw) >= 8 else None
        return _double(last)
    ints = last.packed_or_single()
    if not ints:
        return None
    bits = ints[-1]
    if wanted == 13:  # half_val holds the 16 bits of a half or a bfloat16
        bits &= 0xFFFF
        if dtype == _DT_HALF:
            return float(struct.unpack("<e", bits.to_bytes(2, "little"))[0])
        return float(struct.unpack("<f", (bits << 16).to_bytes(4, "little"))[0])
    signed = bits - (1 << 64) if bits >= 1 << 63 else bits
    return float(signed)


def _event_scalars(data: bytes, tags: Collection[str] | None,
                   plugins: dict[str, str | None], report: ReadReport) -> Iterator[Scalar]:
    wall_time = 0.0
    step = 0
    summary: memoryview | None = None
    for fld in iter_fields(data):
        if fld.number == 1:
            wall_time = _double(fld)
        elif fld.number == 2:
            step = fld.int64()
        elif fld.number == 3:
            report.file_version = fld.text("file_version")
        elif fld.number == 5:
            summary = fld.message()
    if summary is None:
        return
    for value_field in iter_fields(summary):
        if value_field.number != 1:
            continue
        tag = ""
        simple: Field | None = None
        tensor: memoryview | None = None
        metadata: memoryview | None = None
        for sub in iter_fields(value_field.message()):
            if sub.number == 1:
                tag = sub.text("tag")
            elif sub.number == 2:
                simple = sub
            elif sub.number == 8:
                tensor = sub.message()
            elif sub.number == 9:
                metadata = sub.message()
        if metadata is not None and tag not in plugins:
            plugins[tag] = _plugin_name(metadata)
        if tags is not None and tag not in tags:
            continue
        if simple is not None:
            if simple.wire != WIRE_FIXED32:
                simple._expect(WIRE_FIXED32)
            yield Scalar(tag, step, wall_time, _float(simple))
        elif tensor is not None and plugins.get(tag) == SCALARS_PLUGIN:
            value = _tensor_scalar(tensor)
            if value is not None:
                yield Scalar(tag, step, wall_time, value)


def iter_scalars(path: str | os.PathLike[str], *, tags: Collection[str] | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 max_record_bytes: int = MAX_RECORD_BYTES,
                 report: ReadReport | None = None,
                 _plugins: dict[str, str | None] | None = None) -> Iterator[Scalar]:
    """Every scalar of event file ``path`` in record order (rules in the module doc).
    Pass a ``ReadReport`` to learn whether the file ended in a truncated record."""
    path = Path(path)
    report = report if report is not None else ReadReport(path)
    plugins: dict[str, str | None] = {} if _plugins is None else _plugins
    wanted = frozenset(tags) if tags is not None else None
    try:
        handle = open_regular(path, "rb")
    except OSError as exc:
        raise ReadError(f"cannot read the event file ({exc.strerror or exc})", path) from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise BudgetExceededError(f"an event file of {size_text(size)}",
                                      f"the {size_text(max_bytes)} limit for one", path)
        try:
            for offset, data in _records(handle, path, report, max_record_bytes):
                try:
                    for scalar in _event_scalars(data, wanted, plugins, report):
                        report.scalars += 1
                        yield scalar
                except CkptError as exc:
                    raise CorruptCheckpointError(
                        f"bad event file: the record at byte {offset} is not an Event "
                        f"({exc.message})", path) from None
        except OSError as exc:
            raise ReadError(f"cannot read the event file ({exc.strerror or exc})",
                            path) from None


def read_scalars(path: str | os.PathLike[str], *, tags: Collection[str] | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 max_record_bytes: int = MAX_RECORD_BYTES,
                 max_points: int = MAX_POINTS) -> ScalarLog:
    """The scalars of one event file, last value per (tag, step)."""
    log = ScalarLog(max_points=max_points)
    _collect(log, [Path(path)], tags, max_bytes, max_record_bytes)
    return log


def read_scalars_dir(folder: str | os.PathLike[str], *, tags: Collection[str] | None = None,
                     max_bytes: int = DEFAULT_MAX_BYTES,
                     max_record_bytes: int = MAX_RECORD_BYTES, max_points: int = MAX_POINTS,
                     max_depth: int = 3) -> ScalarLog:
    """The scalars of every event file under ``folder`` (``find_event_files``), merged in
    that order: a later file's value for a (tag, step) replaces an earlier one's."""
    log = ScalarLog(max_points=max_points)
    _collect(log, find_event_files(folder, max_depth=max_depth), tags, max_bytes,
             max_record_bytes)
    return log


def _collect(log: ScalarLog, paths: list[Path], tags: Collection[str] | None,
             max_bytes: int, max_record_bytes: int) -> None:
    plugins: dict[str, str | None] = {}
    for path in paths:
        report = ReadReport(path)
        for scalar in iter_scalars(path, tags=tags, max_bytes=max_bytes,
                                   max_record_bytes=max_record_bytes, report=report,
                                   _plugins=plugins):
            log.add(scalar)
        log.files.append(path)
        log.records += report.records
        log.oversized_skipped += report.oversized_skipped
        if report.truncated:
            log.truncated.append(path)


def find_event_files(folder: str | os.PathLike[str], *, max_depth: int = 3) -> list[Path]:
    """Regular ``events.out.tfevents.*`` files in ``folder`` and its sub-folders down to
    ``max_depth`` levels (0: the folder alone), never through symlinks; sorted by file name,
    then relative path. ``runs/`` (HF Trainer: one sub-folder per run) and
    ``lightning_logs/version_0/`` both work."""
    root = Path(folder)
    found: list[tuple[str, str, Path]] = []
    pending: list[tuple[Path, int]] = [(root, 0)]
    while pending:
        current, depth = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            if current == root:
                raise ReadError(f"cannot list the folder ({exc.strerror or exc})",
                                root) from None
            continue
        for entry in entries:
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                if depth < max_depth:
                    pending.append((Path(entry.path), depth + 1))
            elif stat.S_ISREG(mode) and is_event_file_name(entry.name):
                path = Path(entry.path)
                found.append((entry.name, path.relative_to(root).as_posix(), path))
    return [path for _, _, path in sorted(found)]
