"""Every HDF5 read in ckptctl goes through here: confined to the one file, and bounded.

HDF5 can make a read of one file return another file's bytes, or allocate far more than
the file holds. ckptctl refuses all of it, in one line naming the dataset or link:

* **external links** (``h5py.ExternalLink``): h5py follows them on plain ``f[name]``, and
  even ``"a/b" in f`` opens the target file (a FIFO there blocks for ever). ``confine``
  walks every link of the file *without resolving any* (``H5Lvisit`` never follows
  external links) and refuses external and user-defined links; ``dataset_at`` resolves a
  path one link at a time and follows only hard links and in-file soft links. Once a file
  has passed ``confine``, no path in it can lead outside it, so ordinary h5py access is safe;
* **external storage** (``create_dataset(..., external=...)``: raw data in other files) and
  **virtual datasets** (VDS: data mapped from other files): refused by ``check_dataset``;
* **declared but not stored**: a contiguous or compact dataset whose allocated storage is
  smaller than its declared size (an 8 KB file declaring a never-written 16 GiB dataset
  reads back 16 GiB of fill value), or a chunked dataset with chunks never written;
* **decompression bombs**: a chunked dataset with filters may inflate far beyond its stored
  bytes (deflate reaches ~1000:1). Decompressed data is budgeted against the *file's* size:
  at most ``INFLATE_RATIO`` times it (or ``INFLATE_FLOOR`` for small files), per file.
  Real Keras and ckptctl weights are stored uncompressed; trained weights an ``h5repack``
  compresses shrink by well under 2x, so 16x the whole file leaves room for zero-filled
  tensors (fresh optimizer slots) while a 6 MB file can no longer ask for 6 GB. A limit
  near deflate's own maximum (1000x) would never catch a deflate bomb;
* **filters** outside a short allow-list (deflate, shuffle, fletcher32, n-bit,
  scale-offset, LZF): any other id would make HDF5 search its plugin path and load a
  shared library;
* **not a regular file**: files are opened through ``safeio.open_regular`` (``O_NONBLOCK``
  and ``fstat`` on the descriptor that is read) and HDF5 reads that very file
  (``/proc/self/fd/N``, or h5py's file-object driver where there is no ``/proc``).

Contiguous and compact datasets whose storage matches their size are read as they are: their
bytes are in the file, so a read allocates at most the file's size. Writing is not covered.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np

from ..errors import BudgetExceededError, CorruptCheckpointError, UnsupportedCheckpointError
from ..safeio import open_regular

#: What h5py raises on damaged files (it has no error type of its own).
H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, AttributeError, IndexError)

#: Decompressed bytes a file may yield: this many times its size ...
INFLATE_RATIO = 16
#: ... or this much, whichever is larger (small files with zero-filled tensors).
INFLATE_FLOOR = 64 << 20
#: Soft links followed while resolving one path (HDF5's own limit is 16 too).
MAX_SOFT_LINK_HOPS = 16

#: HDF5 filters HDF5 (and h5py, for LZF) implement themselves; any other id means a plugin.
ALLOWED_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 5: "nbit", 6: "scaleoffset",
                   32000: "lzf"}

_LINK_HARD, _LINK_SOFT = 0, 1  # h5py.h5l.TYPE_HARD, TYPE_SOFT
_PROC_FD = "/proc/self/fd"

_P = ParamSpec("_P")
_R = TypeVar("_R")


def damaged(exc: BaseException, path: Path | str | None = None,
            what: str = "damaged HDF5 file") -> CorruptCheckpointError:
    """A raw h5py error as ckptctl's one-line error (about ``path`` when given)."""
    text = str(exc).splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
    return CorruptCheckpointError(f"{what} ({text})", path)


def _ckpt_errors_only(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """h5py's own errors on damaged files leave as ``CorruptCheckpointError``."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return func(*args, **kwargs)
        except H5_ERRORS as exc:
            raise damaged(exc) from exc

    return wrapper


@contextmanager
def open_h5(path: str | os.PathLike[str]) -> Iterator[Any]:
    """An ``h5py.File`` open for reading ``path``, which must be a regular file.

    Nothing is checked inside the file yet: use ``attrs`` and ``has_link`` freely, call
    ``confine`` before resolving names (``f[...]``, ``in``, ``visititems``), or resolve one
    dataset with ``dataset_at``. Raises ``OSError`` when the file cannot be opened (not a
    regular file, not HDF5, truncated), as ``open()`` would."""
    import h5py

    handle = open_regular(path)
    try:
        if os.path.isdir(_PROC_FD) and sys.platform.startswith("linux"):
            # HDF5 opens the very inode fstat approved (a rename in between cannot swap in
            # a FIFO) and reads it with its own fast POSIX driver.
            try:
                f = h5py.File(f"{_PROC_FD}/{handle.fileno()}", "r")
            except OSError as exc:
                message = _own_name(str(exc), handle.fileno(), path)
                raise (OSError(message) if exc.errno is None else OSError(exc.errno, message)) from None
            handle.close()
        else:
            f = h5py.File(handle, "r")
    except BaseException:
        handle.close()
        raise
    try:
        with f:
            yield f
    finally:
        handle.close()


def _own_name(message: str, fd: int, path: str | os.PathLike[str]) -> str:
    return message.replace(f"{_PROC_FD}/{fd}", os.fspath(path))


def has_link(group: Any, name: str) -> bool:
    """Whether ``group`` holds a link called ``name`` (one component), never following it."""
    try:
        return bool(group.id.links.exists(name.encode()))
    except H5_ERRORS:
        return False


@dataclass
class ReadBudget:
    """Decompressed bytes one opened file may still yield (see the module doc)."""

    file_size: int
    inflated: int = 0

    @property
    def limit(self) -> int:
        return max(INFLATE_FLOOR, INFLATE_RATIO * self.file_size)

    def spend(self, nbytes: int, what: str, stored: int) -> None:
        if self.inflated + nbytes > self.limit:
            before = f" (after {_size(self.inflated)} from other datasets)" if self.inflated else ""
            raise BudgetExceededError(
                f"{what} inflating from {_size(stored)} to {_size(nbytes)}{before}",
                f"the read budget of {_size(self.limit)} ({INFLATE_RATIO}x the file's "
                f"{_size(self.file_size)}; a decompression bomb?)")
        self.inflated += nbytes


@_ckpt_errors_only
def budget_for(f: Any) -> ReadBudget:
    """A fresh budget for the opened file ``f``."""
    return ReadBudget(int(f.id.get_filesize()))


@_ckpt_errors_only
def confine(f: Any, budget: ReadBudget | None = None) -> ReadBudget:
    """Refuse the whole file unless every link stays inside it and every dataset passes
    ``check_dataset`` (with one budget for all of them). Reads metadata only; after it,
    names in ``f`` resolve inside ``f``. Returns the budget, spent by compressed datasets."""
    import h5py

    budget = budget if budget is not None else budget_for(f)
    leaving: list[tuple[str, int]] = []

    def visit_link(name: bytes, info: Any) -> None:
        if info.type not in (_LINK_HARD, _LINK_SOFT) and not leaving:
            leaving.append((name.decode("utf-8", "replace"), int(info.type)))

    f.id.links.visit(visit_link, info=True)
    if leaving:
        name, kind = leaving[0]
        raise UnsupportedCheckpointError(_leaving(f, name, name, kind))

    datasets: list[bytes] = []

    def visit_object(name: bytes, info: Any) -> None:
        if info.type == h5py.h5o.TYPE_DATASET:
            datasets.append(name)

    # Objects reached through hard links, each once (tied tensors too); low-level calls
    # throughout (a high-level object per dataset costs more than the checks).
    h5py.h5o.visit(f.id, visit_object, info=True)
    for path in datasets:
        _check(h5py.h5d.open(f.id, path), path.decode("utf-8", "replace"), budget)
    return budget


def _leaving(group: Any, name: str, shown: str, kind: int) -> str:
    """Why link ``name`` of ``group`` (shown as ``shown``) is refused."""
    if kind == 64:  # h5py.h5l.TYPE_EXTERNAL
        target = ""
        try:
            filename, inside = group.id.links.get_val(name.encode())
            target = f" to {_shown(os.fsdecode(filename))}:{_shown(inside.decode('utf-8', 'replace'))}"
        except H5_ERRORS:
            pass
        return f"refused: {_shown(shown)} is an external link{target} (reads another file)"
    return f"refused: {_shown(shown)} is a user-defined link (type {kind}; ckptctl follows only links inside the file)"


def check_file(path: str | os.PathLike[str]) -> None:
    """Open ``path`` and ``confine`` it: a ``CkptError`` naming what is refused, or None."""
    try:
        with open_h5(path) as f:
            confine(f)
    except H5_ERRORS as exc:
        raise damaged(exc) from exc


@_ckpt_errors_only
def dataset_at(f: Any, path: str) -> Any:
    """The dataset at ``path`` in ``f``, resolved one link at a time: hard links, and soft
    links inside the file (at most ``MAX_SOFT_LINK_HOPS``); an external or user-defined link
    on the way is refused before anything is opened through it. Not yet checked: read it
    with ``read_dataset`` (or ``check_dataset`` it first)."""
    import h5py

    node = f
    parts = [p for p in path.split("/") if p]
    hops = 0
    walked: list[str] = []
    while parts:
        name = parts.pop(0)
        if not isinstance(node, h5py.Group):
            raise CorruptCheckpointError(f"{_shown('/'.join(walked))} is not a group (looking for {_shown(path)})")
        encoded = name.encode()
        if not node.id.links.exists(encoded):
            raise CorruptCheckpointError(f"{_shown(path)} is missing")
        kind = int(node.id.links.get_info(encoded).type)
        here = "/".join([*walked, name])
        if kind == _LINK_HARD:
            node = node[name]
            walked.append(name)
        elif kind == _LINK_SOFT:
            hops += 1
            if hops > MAX_SOFT_LINK_HOPS:
                raise CorruptCheckpointError(f"{_shown(path)}: more than {MAX_SOFT_LINK_HOPS} soft links (a cycle?)")
            target = node.id.links.get_val(encoded).decode("utf-8", "replace")
            if target.startswith("/"):
                node, walked = f, []
            parts = [p for p in target.split("/") if p] + parts
        else:
            raise UnsupportedCheckpointError(_leaving(node, name, here, kind))
    if not isinstance(node, h5py.Dataset):
        raise CorruptCheckpointError(f"{_shown(path)} is not a dataset")
    return node


@_ckpt_errors_only
def check_dataset(ds: Any, budget: ReadBudget) -> int:
    """The bytes reading all of ``ds`` allocates, after refusing what would read outside
    the file or allocate more than it holds (module doc). Metadata only."""
    return _check(ds.id, ds.name or "(anonymous)", budget)


def _check(dsid: Any, path: str, budget: ReadBudget) -> int:
    """``check_dataset`` on a low-level ``DatasetID`` (no high-level object per dataset:
    ``confine`` checks thousands)."""
    import h5py

    h5d = h5py.h5d
    name = _shown(path.lstrip("/"))
    dcpl = dsid.get_create_plist()
    if dcpl.get_external_count() > 0:
        raise UnsupportedCheckpointError(f"refused: dataset {name} uses external storage (reads another file)")
    layout = dcpl.get_layout()
    if layout == h5d.VIRTUAL:
        raise UnsupportedCheckpointError(f"refused: dataset {name} is a virtual dataset (reads other files)")
    space = dsid.get_space()
    if space.get_simple_extent_type() == h5py.h5s.NULL:  # no elements at all
        return 0
    shape = space.get_simple_extent_dims()
    logical = math.prod(int(n) for n in shape) * int(dsid.get_type().get_size())
    stored = int(dsid.get_storage_size())
    if stored > budget.file_size:
        raise CorruptCheckpointError(f"refused: dataset {name} claims {_size(stored)} of storage, "
                                     f"more than the file's {_size(budget.file_size)}")
    if layout in (h5d.CONTIGUOUS, h5d.COMPACT):
        if logical and stored < logical:
            raise CorruptCheckpointError(
                f"refused: dataset {name} declares {_size(logical)} but stores {_size(stored)} "
                "(never written?)")
        return logical
    if layout != h5d.CHUNKED:
        raise UnsupportedCheckpointError(f"refused: dataset {name} has an unknown storage layout ({layout})")
    for index in range(dcpl.get_nfilters()):
        code = int(dcpl.get_filter(index)[0])
        if code not in ALLOWED_FILTERS:
            raise UnsupportedCheckpointError(
                f"refused: dataset {name} needs HDF5 filter {code}, which ckptctl does not load "
                "(it would load a plugin)")
    if not logical:
        return 0
    chunk = dcpl.get_chunk()
    expected = math.prod(-(-int(n) // max(1, int(c))) for n, c in zip(shape, chunk, strict=False))
    written = int(dsid.get_num_chunks())
    if written < expected:
        raise CorruptCheckpointError(
            f"refused: dataset {name} declares {_size(logical)} in {expected} chunks but stores "
            f"{written} (never written?)")
    if stored < logical:
        budget.spend(logical, f"dataset {name}", stored)
    return logical


@_ckpt_errors_only
def read_dataset(ds: Any, budget: ReadBudget) -> np.ndarray:
    """All of ``ds`` as an array, once ``check_dataset`` allows it. Only fixed-size types:
    variable-length data and references are not tensors."""
    check_dataset(ds, budget)
    dtype = ds.dtype
    if dtype.hasobject:
        raise UnsupportedCheckpointError(
            f"dataset {_shown((ds.name or '').lstrip('/'))} holds variable-length data or references, not a tensor")
    if ds.shape is None:
        raise CorruptCheckpointError(f"dataset {_shown((ds.name or '').lstrip('/'))} has no shape (a null dataspace)")
    values = ds[()]
    return values if isinstance(values, np.ndarray) else np.asarray(values, dtype=dtype)


def _shown(name: str, limit: int = 120) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
