"""The ``ckptctl-tensors`` HDF5 layout: a named, bit-exact tensor mapping (README: "Weights layout").

    /                      attrs: layout="ckptctl-tensors", layout_version="1.0",
                                  tensor_count, source_format, writer="ckptctl <version>"
    /tensors/<escaped name>  one dataset per tensor, in the source's order; attr "dtype"
                             names the real dtype (e.g. "bfloat16"). Dtypes HDF5 lacks are
                             stored as their raw bits (uint16 for bfloat16, uint8 for float8).
    Tied tensors (same storage, same view) are one dataset reached through two hard links.

Names are escaped so any string is one HDF5 link name: "%" -> "%25", "/" -> "%2F", "." -> "%2E".
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..budgets import OUTPUT_PER_TENSOR, spend_output
from ..errors import (
    BudgetExceededError,
    CkptError,
    CorruptCheckpointError,
    UnsupportedCheckpointError,
    VerificationError,
)
from ..readers.h5safe import (
    H5_ERRORS,
    budget_for,
    check_dataset,
    confine,
    dataset_at,
    has_link,
    open_h5,
    read_dataset,
)
from ..readers.tensor import BIT_CAST_DTYPES, LOGICAL_NUMPY, STORAGE_NUMPY

LAYOUT = "ckptctl-tensors"
LAYOUT_VERSION = "1.0"


def escape_name(name: str) -> str:
    escaped = name.replace("%", "%25").replace("/", "%2F")
    return "%2E" if escaped == "." else (escaped or "%00")


def unescape_name(link: str) -> str:
    if link == "%00":
        return ""
    return link.replace("%2E", ".").replace("%2F", "/").replace("%25", "%")


@dataclass(frozen=True)
class TensorToWrite:
    """One named tensor for the writer; ``load`` returns its values (``STORAGE_NUMPY`` dtype)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    tie_key: Hashable | None
    load: Callable[[], np.ndarray]
    #: rows ``start:stop`` alone, for a source that can read a slice without the rest;
    #: tensors above ``SLICED_FROM_BYTES`` are then written a slice at a time
    load_rows: Callable[[int, int], np.ndarray] | None = None


@dataclass
class WriteSummary:
    tensor_count: int
    parameter_count: int
    stored_bytes: int
    largest_tensor_bytes: int
    #: dataset path -> crc32 of the bytes written, for ``verify_datasets``
    checksums: dict[str, int] = field(default_factory=dict)


def checksum(values: np.ndarray) -> int:
    # ``.data`` is the array's memoryview (numpy types ndarray as a Buffer only on 3.12+).
    return zlib.crc32(np.ascontiguousarray(values).view(np.uint8).reshape(-1).data) if values.size else 0


_VERIFY_CHUNK_BYTES = 32 << 20
#: Tensors bigger than this whose source reads rows (``TensorToWrite.load_rows``) are written
#: in slices of about this size: peak RSS stays near one slice (memory-mapped pages count).
SLICED_FROM_BYTES = 32 << 20


def verify_datasets(path: Path, checksums: dict[str, int]) -> None:
    """Read every written dataset back and compare its crc32 with what was written: the
    weights are committed only when the file on disk holds exactly the source's values.
    Large datasets are read in slices of rows, so memory stays at one slice. Read like any
    other HDF5 input (``readers.h5safe``), though ckptctl has just written it."""
    # One buffer for every slice read: allocating and freeing a fresh 32 MiB array per slice
    # can leave the allocator holding one more (peak RSS up by a slice, depending on timing).
    buffer: np.ndarray | None = None
    try:
        with open_h5(path) as f:
            budget = budget_for(f)
            for dataset_path, expected in checksums.items():
                dataset = dataset_at(f, dataset_path)
                check_dataset(dataset, budget)
                if dataset.ndim == 0 or dataset.size == 0:
                    got = checksum(read_dataset(dataset, budget))
                else:
                    rows_total = dataset.shape[0]
                    row_bytes = max(1, dataset.nbytes // rows_total)
                    step = min(rows_total, max(1, _VERIFY_CHUNK_BYTES // row_bytes))
                    if buffer is None or buffer.nbytes < step * row_bytes:
                        buffer = np.empty(max(_VERIFY_CHUNK_BYTES, step * row_bytes), np.uint8)
                    got = 0
                    for start in range(0, rows_total, step):
                        count = min(step, rows_total - start)
                        rows = buffer[:count * row_bytes].view(dataset.dtype).reshape(
                            (count, *dataset.shape[1:]))
                        dataset.read_direct(rows, source_sel=np.s_[start:start + count])
                        got = zlib.crc32(buffer[:count * row_bytes].data, got)
                if got != expected:
                    raise VerificationError(f"verification failed: {dataset_path} read back differently")
    except CkptError as exc:
        if isinstance(exc, VerificationError):
            raise
        raise VerificationError(f"verification failed: {exc.message}") from exc
    except H5_ERRORS as exc:
        raise VerificationError(f"verification failed: the written weights cannot be read back "
                                f"({str(exc)[:120]})") from exc


def write_tensors(
    dest: Path, tensors: Iterable[TensorToWrite], root_attrs: dict[str, Any]
) -> WriteSummary:
    """Write ``tensors`` to ``dest`` (a new file). Ties are stored once as hard links."""
    summary = WriteSummary(0, 0, 0, 0)
    with _new_file(dest) as f:
        f.attrs["layout"] = LAYOUT
        f.attrs["layout_version"] = LAYOUT_VERSION
        for key, value in root_attrs.items():
            f.attrs[key] = value
        group = _ordered_group(f, "tensors")
        first_link: dict[Hashable, str] = {}
        for tensor in tensors:
            link = escape_name(tensor.name)
            if link in group:
                raise UnsupportedCheckpointError(f"duplicate tensor name {tensor.name!r}")
            summary.tensor_count += 1
            spend_output(OUTPUT_PER_TENSOR, f"tensor {tensor.name[:120]!r}")
            if tensor.tie_key is not None and tensor.tie_key in first_link:
                group[link] = group[first_link[tensor.tie_key]]  # hard link: stored once
                continue
            # Charged before it is read: a broadcast view is materialized in full.
            nbytes = math.prod(tensor.shape) * STORAGE_NUMPY[tensor.dtype].itemsize
            spend_output(nbytes, f"tensor {tensor.name[:120]!r}")
            expected = STORAGE_NUMPY[tensor.dtype]
            if tensor.load_rows is not None and nbytes > SLICED_FROM_BYTES and tensor.shape[0] > 1:
                dataset = group.create_dataset(link, shape=tensor.shape, dtype=expected)
                crc = _write_in_slices(dataset, tensor, expected, nbytes)
            else:
                values = tensor.load()
                if values.dtype != expected or values.shape != tensor.shape:
                    raise VerificationError(f"tensor {tensor.name!r} read back as {values.dtype}{values.shape}")
                dataset = group.create_dataset(link, data=values)
                crc = checksum(values)
                del values
            dataset.attrs["dtype"] = tensor.dtype
            summary.checksums[dataset.name] = crc
            summary.parameter_count += math.prod(tensor.shape)
            summary.stored_bytes += nbytes
            summary.largest_tensor_bytes = max(summary.largest_tensor_bytes, nbytes)
            if tensor.tie_key is not None:
                first_link[tensor.tie_key] = link
        f.attrs["tensor_count"] = summary.tensor_count
    return summary


def _write_in_slices(dataset: h5py.Dataset, tensor: TensorToWrite, expected: np.dtype,
                     nbytes: int) -> int:
    """Write ``tensor`` into ``dataset`` (same shape) a slice of rows at a time; the crc32
    of its bytes, equal to ``checksum`` of the whole array."""
    assert tensor.load_rows is not None
    rows = tensor.shape[0]
    step = max(1, SLICED_FROM_BYTES // max(1, nbytes // rows))
    crc = 0
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        values = tensor.load_rows(start, stop)
        if values.dtype != expected or values.shape != (stop - start, *tensor.shape[1:]):
            raise VerificationError(f"tensor {tensor.name!r} rows {start}:{stop} read back as "
                                    f"{values.dtype}{values.shape}")
        values = np.ascontiguousarray(values)
        dataset.write_direct(values, dest_sel=np.s_[start:stop])
        crc = zlib.crc32(values.view(np.uint8).reshape(-1).data, crc)
        del values  # its map: the slice's pages leave this process's RSS
    return crc


def _new_file(dest: Path) -> h5py.File:
    """A new HDF5 file (latest format) whose objects record no times: converting the same
    source twice writes the same bytes, whatever the clock says."""
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    return h5py.File(h5py.h5f.create(str(dest).encode(), h5py.h5f.ACC_TRUNC, fcpl=fcpl,
                                     fapl=fapl))


def _ordered_group(f: h5py.File, name: str) -> h5py.Group:
    """``f.create_group(name, track_order=True)``, without modification times."""
    gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    gcpl.set_link_creation_order(h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED)
    gcpl.set_obj_track_times(False)
    return h5py.Group(h5py.h5g.create(f.id, name.encode(), gcpl=gcpl))


def read_tensors(path: Path, logical: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a ``ckptctl-tensors`` file: (name -> array, name -> tie target).

    With ``logical`` the arrays carry their real dtype (``ml_dtypes.bfloat16`` …); otherwise
    the stored bits. The second mapping names, for each tied alias, the first name it shares.
    The file is ``confine``d first (a hostile ``.weights.h5`` can name other files, declare
    what it does not store, or not follow the layout): every failure is a ``CkptError``.
    """
    try:
        with open_h5(path) as f:
            return _read_tensors(f, logical)
    except CkptError as exc:
        if exc.path is None:
            exc.path = path
        raise
    except H5_ERRORS as exc:
        raise CorruptCheckpointError(f"not a readable HDF5 file ({str(exc)[:120]})", path) from exc
    except MemoryError:
        raise BudgetExceededError("reading its tensors", "the memory available to this process",
                                  path) from None


def _text_attr(attrs: Any, key: str) -> str | None:
    value = attrs.get(key)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _read_tensors(f: Any, logical: bool) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    arrays: dict[str, np.ndarray] = {}
    ties: dict[str, str] = {}
    if _text_attr(f.attrs, "layout") != LAYOUT:
        raise UnsupportedCheckpointError(f"not a {LAYOUT} weights file")
    confined = confine(f)  # after it, names resolve inside the file
    group = f["tensors"] if has_link(f, "tensors") else None
    if not isinstance(group, h5py.Group):
        raise CorruptCheckpointError(f"a {LAYOUT} file without a tensors group")
    budget = budget_for(f)
    budget.prechecked = confined.prechecked  # deflate chunks confine inflated: not again
    seen: dict[Any, str] = {}
    for link in group:
        name = unescape_name(link)
        dataset = group[link]
        if not isinstance(dataset, h5py.Dataset):
            raise CorruptCheckpointError(f"tensors/{link[:120]} is not a dataset")
        ident = dataset.id  # equal (and equally hashed) for hard links to one object
        if ident in seen:
            ties[name] = seen[ident]
            arrays[name] = arrays[seen[ident]]
            continue
        seen[ident] = name
        dtype = _text_attr(dataset.attrs, "dtype")
        if dtype is None:
            if "dtype" in dataset.attrs:
                raise CorruptCheckpointError(f"tensor {name[:120]!r} has a malformed dtype attribute")
            dtype = dataset.dtype.name
        stored = STORAGE_NUMPY.get(dtype)
        if stored is None or dataset.dtype != stored:
            raise CorruptCheckpointError(
                f"tensor {name[:120]!r} is stored as {dataset.dtype}, not as ckptctl stores "
                f"{dtype[:40]}")
        values = read_dataset(dataset, budget)
        if logical and dtype in BIT_CAST_DTYPES:
            values = values.view(LOGICAL_NUMPY[dtype])
        arrays[name] = values
    return arrays, ties
