"""Every HDF5 read in ckptctl goes through here: confined to the one file, and bounded.

HDF5 can make a read of one file return another file's bytes, or allocate far more than
the file holds. ckptctl refuses all of it, in one line naming the dataset or link:

* **external links** (``h5py.ExternalLink``): h5py follows them on plain ``f[name]``, and
  even ``"a/b" in f`` opens the target file (a FIFO there blocks for ever). ``confine``
  walks every link of the file *without resolving any* (following hard links only) and
  refuses external and user-defined links; ``dataset_at`` resolves a
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
* **deflate streams longer than their chunk**: HDF5's deflate filter grows its buffer until
  the stream ends (a 64 KiB chunk can inflate to 1.5 GB). Before HDF5 decodes a deflated
  dataset, every chunk is inflated here first with ``zlib``, bounded by the chunk's own
  size, and a chunk inflating past it is refused (the work is charged to the budget);
* **filters** outside what Keras and h5py writers use (deflate, shuffle, fletcher32): LZF,
  n-bit, scale-offset and any other id are refused as unsupported;
* **HDF5 plugins**: ckptctl's process never loads one. Dynamic plugin loading
  (``H5PLset_loading_state(0)``) is switched off before any file is opened (and again at
  each open), so a filter id in a dataset's *or a group's* pipeline cannot make HDF5 search
  ``HDF5_PLUGIN_PATH`` and run a shared library's constructor. API users who need plugins
  for their own files can switch it back on after calling ckptctl;
* **groups with filtered link storage** (a compressed fractal heap of links: a heap bomb,
  or a plugin id): refused before any of their links is read;
* **deep nesting**: HDF5's own recursive walks (``H5Lvisit``/``H5Ovisit``, h5py's
  ``visit``/``visititems``) overflow the C stack on a chain of ~20,000 groups. ckptctl walks
  the file itself, iteratively, and refuses more than ``MAX_DEPTH`` levels (Keras nests
  fewer than 10);
* **aliased storage**: datasets whose storage addresses point at the same bytes (one 4 MiB
  tensor read 2,000 times from a 5 MB file). HDF5 writers never overlap storage; any
  overlap between two objects' contiguous storage or chunks is refused as corrupt;
* **not a regular file**: files are opened through ``safeio.open_regular`` (``O_NONBLOCK``
  and ``fstat`` on the descriptor that is read) and HDF5 reads that very file
  (``/proc/self/fd/N``, or h5py's file-object driver where there is no ``/proc``).

Contiguous and compact datasets whose storage matches their size are read as they are: their
bytes are in the file and no two datasets share them, so reading them all allocates at most
the file's size. Names shown in messages are escaped (``\\n``, ``\\x1b``): every refusal
is one printable line. Writing is not covered.

Not covered: a corrupted B-tree (a chunk index or a group's symbol table pointing back at
itself) can crash libhdf5 itself; a variable-length attribute declaring a huge length makes
HDF5 allocate it when read.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np

from ..budgets import size_text
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

#: Group levels below the root a file may nest (Keras nests fewer than 10).
MAX_DEPTH = 256

#: The HDF5 filters Keras and h5py writers use; any other is refused as unsupported.
ALLOWED_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32"}
#: Names of filters HDF5 or h5py know, for the refusal message.
KNOWN_FILTERS = {4: "szip", 5: "nbit", 6: "scaleoffset", 32000: "lzf"}
_DEFLATE, _FLETCHER32 = 1, 3

_LINK_HARD, _LINK_SOFT = 0, 1  # h5py.h5l.TYPE_HARD, TYPE_SOFT
_OBJ_GROUP, _OBJ_DATASET = 0, 1  # h5py.h5o.TYPE_GROUP, TYPE_DATASET
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


def _h5py() -> Any:
    """h5py, with HDF5's dynamic plugin loading switched off (module doc)."""
    import h5py

    disable_plugins()
    return h5py


@functools.cache
def _libhdf5() -> Any:
    """The libhdf5 h5py runs on (through one of its extension modules), or None."""
    import ctypes

    import h5py

    try:
        lib = ctypes.CDLL(h5py.h5pl.__file__)  # symbols resolve in its libhdf5 too
        lib.H5PLset_loading_state.argtypes = [ctypes.c_uint]
        lib.H5PLset_loading_state.restype = ctypes.c_int
        lib.H5PLget_loading_state.argtypes = [ctypes.POINTER(ctypes.c_uint)]
        lib.H5PLget_loading_state.restype = ctypes.c_int
        lib.H5Pget_nfilters.argtypes = [ctypes.c_int64]
        lib.H5Pget_nfilters.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib


def disable_plugins() -> None:
    """Switch off HDF5's dynamic plugin loading in this process (``H5PLset_loading_state(0)``):
    no filter id can make HDF5 load a shared library. Called before every open."""
    import h5py

    setter = getattr(h5py.h5pl, "set_loading_state", None)
    if setter is not None:
        setter(0)
        return
    lib = _libhdf5()
    if lib is not None and lib.H5PLset_loading_state(0) >= 0:
        return
    while h5py.h5pl.size():  # no loading switch: leave HDF5 no directory to search
        h5py.h5pl.remove(0)


def plugins_loadable() -> bool:
    """Whether HDF5 may load a plugin now (for tests and diagnostics)."""
    import ctypes

    import h5py

    getter = getattr(h5py.h5pl, "get_loading_state", None)
    if getter is not None:
        return bool(getter())
    lib = _libhdf5()
    if lib is None:
        return bool(h5py.h5pl.size())
    state = ctypes.c_uint(0)
    if lib.H5PLget_loading_state(ctypes.byref(state)) < 0:
        return True
    return bool(state.value)


@contextmanager
def open_h5(path: str | os.PathLike[str]) -> Iterator[Any]:
    """An ``h5py.File`` open for reading ``path``, which must be a regular file.

    Nothing is checked inside the file yet: use ``attrs`` and ``has_link`` freely, call
    ``confine`` before resolving names (``f[...]``, ``in``, ``visititems``), or resolve one
    dataset with ``dataset_at``. Raises ``OSError`` when the file cannot be opened (not a
    regular file, not HDF5, truncated), as ``open()`` would."""
    h5py = _h5py()

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
    """Whether ``group`` holds a link called ``name`` (one component), never following it.
    False for a group whose links are stored filtered (not read: ``confine`` refuses it)."""
    try:
        if _group_filters(group.id):
            return False
        return bool(group.id.links.exists(name.encode()))
    except H5_ERRORS:
        return False


def _group_filters(gid: Any) -> int:
    """How many filters a group's link storage goes through (0 for every writer ckptctl
    knows; metadata only: no link is read). 0 when HDF5 cannot be asked."""
    import h5py

    if isinstance(gid, h5py.h5f.FileID):
        gid = h5py.h5g.open(gid, b"/")
    plist = gid.get_create_plist()
    counter = getattr(plist, "get_nfilters", None)
    if counter is not None:
        return int(counter())
    lib = _libhdf5()
    return max(0, int(lib.H5Pget_nfilters(plist.id))) if lib is not None else 0


@dataclass
class ReadBudget:
    """Decompressed bytes one opened file may still yield (see the module doc)."""

    file_size: int
    inflated: int = 0
    #: datasets (object addresses) whose deflate streams were already inflated once
    prechecked: set[int] = field(default_factory=set)

    @property
    def limit(self) -> int:
        return max(INFLATE_FLOOR, INFLATE_RATIO * self.file_size)

    def spend(self, nbytes: int, what: str, stored: int) -> None:
        if self.inflated + nbytes > self.limit:
            before = f" (after {size_text(self.inflated)} from other datasets)" if self.inflated else ""
            raise BudgetExceededError(
                f"{what} inflating from {size_text(stored)} to {size_text(nbytes)}{before}",
                f"the read budget of {size_text(self.limit)} ({INFLATE_RATIO}x the file's "
                f"{size_text(self.file_size)}; a decompression bomb?)")
        self.inflated += nbytes


@_ckpt_errors_only
def budget_for(f: Any) -> ReadBudget:
    """A fresh budget for the opened file ``f``."""
    return ReadBudget(int(f.id.get_filesize()))


@_ckpt_errors_only
def confine(f: Any, budget: ReadBudget | None = None) -> ReadBudget:
    """Refuse the whole file unless every link stays inside it, every dataset passes
    ``check_dataset`` (with one budget for all of them) and no two datasets share storage.
    Reads metadata only (and inflates deflated chunks once, bounded); after it, names in
    ``f`` resolve inside ``f``. Returns the budget, spent by compressed datasets."""
    budget = budget if budget is not None else budget_for(f)
    extents: list[tuple[int, int, str]] = []
    for path, dsid in _walk(f):
        _check(dsid, path, budget, extents)
    extents.sort()
    reach, owner = -1, ""
    for start, end, name in extents:
        if start < reach:
            raise CorruptCheckpointError(
                f"refused: datasets {owner} and {name} share stored bytes (at offset {start}; "
                "HDF5 writers never overlap storage)")
        if end > reach:
            reach, owner = end, name
    return budget


@_ckpt_errors_only
def dataset_paths(f: Any) -> list[str]:
    """Paths of every dataset reachable through hard links, each object once (like
    ``visititems``, without HDF5's recursion); ``confine`` the file first."""
    return [path for path, _ in _walk(f)]


def _walk(f: Any) -> list[tuple[str, Any]]:
    """``(path, DatasetID)`` of every distinct dataset reached through hard links, depth first
    in name order, walked iteratively (HDF5's ``H5Ovisit`` recurses in C). Refuses external
    and user-defined links, groups whose link storage is filtered, and nesting deeper than
    ``MAX_DEPTH``, before anything below them is read."""
    h5py = _h5py()
    root = h5py.h5g.open(f.id, b"/")
    seen = {int(h5py.h5o.get_info(root).addr)}
    found: list[tuple[str, Any]] = []
    stack: list[tuple[Any, str, int]] = [(root, "", 0)]
    while stack:
        gid, where, depth = stack.pop()
        if _group_filters(gid):
            raise UnsupportedCheckpointError(
                f"refused: group {_shown(where or '/')} stores its links compressed (filtered "
                "link storage; no Keras or h5py writer does)")
        links: list[tuple[bytes, int]] = []

        def collect(name: bytes, info: Any, links: list[tuple[bytes, int]] = links) -> None:
            links.append((name, int(info.type)))

        gid.links.iterate(collect, info=True)
        groups: list[tuple[Any, str, int]] = []
        for name, kind in links:
            text = name.decode("utf-8", "replace")
            path = f"{where}/{text}" if where else text
            if kind not in (_LINK_HARD, _LINK_SOFT):
                raise UnsupportedCheckpointError(_leaving(h5py.Group(gid), text, path, kind))
            if kind != _LINK_HARD:
                continue  # soft links: resolved (and checked) through their target's hard link
            info = h5py.h5o.get_info(gid, name)
            addr = int(info.addr)
            if addr in seen:
                continue
            seen.add(addr)
            if info.type == _OBJ_GROUP:
                if depth + 1 > MAX_DEPTH:
                    raise UnsupportedCheckpointError(
                        f"refused: group {_shown(path[:200])} nests more than {MAX_DEPTH} levels deep")
                groups.append((h5py.h5g.open(gid, name), path, depth + 1))
            elif info.type == _OBJ_DATASET:
                found.append((path, h5py.h5d.open(gid, name)))
        stack.extend(reversed(groups))
    return found


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


def _check(dsid: Any, path: str, budget: ReadBudget,
           extents: list[tuple[int, int, str]] | None = None) -> int:
    """``check_dataset`` on a low-level ``DatasetID`` (no high-level object per dataset:
    ``confine`` checks thousands). Adds the dataset's stored extents (``(start, end, name)``)
    to ``extents`` when given."""
    h5py = _h5py()

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
        raise CorruptCheckpointError(f"refused: dataset {name} claims {size_text(stored)} of storage, "
                                     f"more than the file's {size_text(budget.file_size)}")
    if layout in (h5d.CONTIGUOUS, h5d.COMPACT):
        if logical and stored < logical:
            raise CorruptCheckpointError(
                f"refused: dataset {name} declares {size_text(logical)} but stores {size_text(stored)} "
                "(never written?)")
        offset = dsid.get_offset() if layout == h5d.CONTIGUOUS and stored else None
        if extents is not None and offset is not None:
            extents.append((int(offset), int(offset) + stored, name))
        return logical
    if layout != h5d.CHUNKED:
        raise UnsupportedCheckpointError(f"refused: dataset {name} has an unknown storage layout ({layout})")
    pipeline = [int(dcpl.get_filter(index)[0]) for index in range(dcpl.get_nfilters())]
    for code in pipeline:
        if code not in ALLOWED_FILTERS:
            known = f" ({KNOWN_FILTERS[code]})" if code in KNOWN_FILTERS else ""
            raise UnsupportedCheckpointError(
                f"refused: dataset {name} uses HDF5 filter {code}{known}; ckptctl reads only "
                "deflate, shuffle and fletcher32 (what Keras and h5py write)")
    if not logical:
        return 0
    chunk = dcpl.get_chunk()
    expected = math.prod(-(-int(n) // max(1, int(c))) for n, c in zip(shape, chunk, strict=False))
    written = int(dsid.get_num_chunks())
    if written < expected:
        raise CorruptCheckpointError(
            f"refused: dataset {name} declares {size_text(logical)} in {expected} chunks but stores "
            f"{written} (never written?)")
    if stored < logical:
        budget.spend(logical, f"dataset {name}", stored)
    addr = int(h5py.h5o.get_info(dsid).addr)
    if extents is None and (_DEFLATE not in pipeline or addr in budget.prechecked):
        return logical
    chunks: list[tuple[tuple[int, ...], int, int, int]] = []

    def add_chunk(info: Any) -> None:
        chunks.append((tuple(info.chunk_offset), int(info.filter_mask), int(info.byte_offset),
                       int(info.size)))

    if hasattr(dsid, "chunk_iter"):
        dsid.chunk_iter(add_chunk)
    else:
        for index in range(written):
            add_chunk(dsid.get_chunk_info(index))
    if extents is not None:
        extents.extend((start, start + size, name) for _, _, start, size in chunks if size)
    if _DEFLATE in pipeline and addr not in budget.prechecked:
        chunk_bytes = math.prod(int(c) for c in chunk) * int(dsid.get_type().get_size())
        _precheck_deflate(dsid, name, pipeline, chunk_bytes, chunks, budget)
        budget.prechecked.add(addr)
    return logical


def _precheck_deflate(dsid: Any, name: str, pipeline: list[int], chunk_bytes: int,
                      chunks: list[tuple[tuple[int, ...], int, int, int]],
                      budget: ReadBudget) -> None:
    """Inflate every chunk's deflate stream with ``zlib``, bounded by the chunk's size, before
    HDF5 does (its deflate filter grows its buffer until the stream ends): a stream inflating
    past its chunk is refused. The inflated bytes are charged to ``budget``."""
    # What a deflate stream may hold: the chunk, plus the checksums filters before it added.
    bound = chunk_bytes + 4 * pipeline.count(_FLETCHER32)
    for offset, mask, _, size in chunks:
        if size > budget.file_size:
            raise CorruptCheckpointError(
                f"refused: dataset {name} claims a chunk of {size_text(size)}, more than the file")
        _, data = dsid.read_direct_chunk(offset)
        for index in reversed(range(len(pipeline))):  # reading undoes the filters last first
            if mask & (1 << index):
                continue  # this filter was skipped for this chunk
            if pipeline[index] == _FLETCHER32:
                data = data[:-4]
            elif pipeline[index] == _DEFLATE:
                inflater = zlib.decompressobj()
                try:
                    data = inflater.decompress(data, bound + 1)
                except zlib.error as exc:
                    raise CorruptCheckpointError(
                        f"refused: dataset {name} has a damaged deflate chunk at {offset} ({exc})") from None
                budget.spend(len(data), f"dataset {name} (checking its deflate chunks)", size)
                if len(data) > bound:
                    raise BudgetExceededError(
                        f"dataset {name}: a deflate chunk at {offset} inflating past its own size "
                        f"({size_text(bound)}; a decompression bomb?)",
                        "what a chunk can hold")


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
    """``name`` for a one-line message: control and other unprintable characters escaped
    (``\\n``, ``\\x1b``), cut at ``limit`` characters."""
    if not name.isprintable():
        name = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                       for c in name)
    return name if len(name) <= limit else name[: limit - 1] + "…"

