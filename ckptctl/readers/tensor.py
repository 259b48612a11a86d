"""Framework-free tensor records: dtype tables, storages and lazily read, bounds-checked views."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import CorruptCheckpointError

if TYPE_CHECKING:
    import numpy as np

# numpy (and ml_dtypes) are imported only when values are read or written: ``scan`` and
# ``catalog`` read a checkpoint's structure without them (each costs ~40-80 ms to import).

#: dtype name (torch's spelling) -> the numpy dtype code that holds its exact bits in HDF5.
#: Types numpy/HDF5 lack (bfloat16, float8) are stored as unsigned integers of equal width
#: with the real dtype named in an attribute; ``LOGICAL_NUMPY`` gives the typed view.
_STORAGE_CODES: dict[str, str] = {
    "float64": "<f8", "float32": "<f4", "float16": "<f2",
    "bfloat16": "<u2", "int64": "<i8", "int32": "<i4",
    "int16": "<i2", "int8": "i1", "uint8": "u1",
    "uint16": "<u2", "uint32": "<u4", "uint64": "<u8",
    "bool": "?", "complex64": "<c8", "complex128": "<c16",
    "float8_e4m3fn": "u1", "float8_e5m2": "u1",
    "float8_e4m3fnuz": "u1", "float8_e5m2fnuz": "u1",
}
#: bytes per element of every dtype ``_STORAGE_CODES`` names
ITEMSIZE: dict[str, int] = {name: int(code.lstrip("<>")[1:]) for name, code in _STORAGE_CODES.items()
                            if code != "?"} | {"bool": 1}
#: dtypes whose HDF5 storage differs from their meaning (raw bits in an unsigned int).
BIT_CAST_DTYPES = frozenset({"bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                             "float8_e5m2fnuz"})
DTYPES_BY_TORCH_NAME = frozenset(_STORAGE_CODES)


@cache
def _numpy_tables() -> tuple[dict[str, np.dtype], dict[str, np.dtype]]:
    import ml_dtypes
    import numpy as np

    storage = {name: np.dtype(code) for name, code in _STORAGE_CODES.items()}
    logical = {**storage, **{name: np.dtype(getattr(ml_dtypes, name)) for name in BIT_CAST_DTYPES}}
    return storage, logical


def __getattr__(name: str) -> Any:
    """``STORAGE_NUMPY`` and ``LOGICAL_NUMPY``, built (importing numpy) on first use."""
    if name == "STORAGE_NUMPY":
        return _numpy_tables()[0]
    if name == "LOGICAL_NUMPY":
        return _numpy_tables()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    STORAGE_NUMPY: dict[str, np.dtype]
    LOGICAL_NUMPY: dict[str, np.dtype]


DTYPES_BY_STORAGE_CLASS: dict[str, str] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


#: Quantized storages (``torch.quantize_per_tensor`` …): recognised, so a quantized tensor is
#: reported as such, but never converted (their values need their quantizer).
QUANTIZED_STORAGE_CLASSES: dict[str, str] = {
    "QInt8Storage": "qint8", "QUInt8Storage": "quint8", "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
}
_QUANTIZED_ITEMSIZE = {"qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1}
QUANTIZED_DTYPES = frozenset(_QUANTIZED_ITEMSIZE)


def itemsize(dtype: str) -> int:
    size = ITEMSIZE.get(dtype)
    return size if size is not None else _QUANTIZED_ITEMSIZE[dtype]


#: A view may be larger than its storage only by broadcasting (zero strides); cap that.
#: (The bytes a whole checkpoint may write are budgeted by its writer: ``ckptctl.budgets``.)
MAX_BROADCAST_BYTES = 256 << 20
#: No array (numpy's, torch's, an HDF5 read's) can span more bytes than this, even an empty
#: one: numpy multiplies the non-zero dimensions and refuses past it.
MAX_EXTENT_BYTES = (1 << 63) - 1


def check_extent(shape: tuple[int, ...], item: int, what: str = "tensor") -> None:
    """Refuse a shape no array can have: its non-zero dimensions times ``item`` bytes past
    ``MAX_EXTENT_BYTES``. ``(0, 2**32, 2**32)`` holds no element, yet neither numpy nor torch
    can make it (torch cannot save it): a crafted record, refused before any array is made."""
    extent = item
    for n in shape:
        if n:
            extent *= n
            if extent > MAX_EXTENT_BYTES:
                raise CorruptCheckpointError(
                    f"{what} of shape {list(shape)[:8]} cannot be held by any array (its "
                    "non-zero dimensions span more than 2**63 bytes)")


class _Sealed:
    """Records built during unpickling must not be editable by a later BUILD opcode."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise CorruptCheckpointError(f"pickle tries to modify a {type(self).__name__} record")


@dataclass(frozen=True, slots=True)
class StorageRef(_Sealed):
    """One storage record of a checkpoint; ``dtype`` None means untyped (``numel`` in bytes)."""

    key: str
    dtype: str | None
    numel: int
    location: str = "cpu"

    @property
    def nbytes(self) -> int:
        return self.numel if self.dtype is None else self.numel * itemsize(self.dtype)


class StorageProvider(Protocol):
    def storage_bytes(self, ref: StorageRef) -> np.ndarray:
        """The storage's bytes as a read-only uint8 array (usually memory-mapped)."""
        ...


class RangeProvider(StorageProvider, Protocol):
    def storage_range(self, ref: StorageRef, start: int, length: int) -> np.ndarray:
        """Bytes ``start:start + length`` of the storage, as a read-only uint8 array."""
        ...


@dataclass(frozen=True, slots=True)
class LazyTensor(_Sealed):
    """A tensor described by its storage and view; bytes are read only on ``read``."""

    storage: StorageRef
    dtype: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool = False
    is_parameter: bool = False

    def as_parameter(self, requires_grad: bool) -> LazyTensor:
        return replace(self, requires_grad=requires_grad, is_parameter=True)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)  # Python ints: no int64 wrap-around

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)

    @property
    def view_key(self) -> tuple[object, ...]:
        """Identical for two names that are the same tensor (tied weights)."""
        return (self.storage.key, self.dtype, self.offset, self.shape, self.stride)

    def read(self, provider: StorageProvider, big_endian: bool = False) -> np.ndarray:
        """The tensor's values in logical (C) order, as ``STORAGE_NUMPY[dtype]``.

        Bounds are checked before any strided view is made: a hostile record must not read
        outside its storage.
        """
        if self.dtype not in ITEMSIZE or not isinstance(self.storage, StorageRef):
            raise CorruptCheckpointError("tensor record is malformed")
        import numpy as np

        storage_numpy = _numpy_tables()[0]
        item = itemsize(self.dtype)
        raw = provider.storage_bytes(self.storage)
        count = raw.shape[0] // item
        if self.numel * item > max(raw.shape[0], MAX_BROADCAST_BYTES):
            raise CorruptCheckpointError(
                f"tensor of {self.numel} elements is larger than its storage allows")
        if self.numel > 0:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=False))
            if last >= count:
                raise CorruptCheckpointError(
                    f"tensor view reaches element {last} of a storage holding {count}"
                )
        elif self.offset > count:
            raise CorruptCheckpointError("tensor offset lies outside its storage")
        check_extent(self.shape, item)
        np_dtype = storage_numpy[self.dtype]
        if big_endian and np_dtype.itemsize > 1:
            np_dtype = np_dtype.newbyteorder(">")
        typed = raw[: count * item].view(np_dtype)
        if self.numel == 0:
            return np.empty(self.shape, dtype=storage_numpy[self.dtype])
        try:
            view = np.lib.stride_tricks.as_strided(
                typed[self.offset :], shape=self.shape, strides=[s * item for s in self.stride],
                writeable=False,
            )
            # Contiguous views are written straight from the mapping; others gathered once.
            out = view if view.flags.c_contiguous else view.copy(order="C")
        except (ValueError, OverflowError, MemoryError) as exc:
            raise CorruptCheckpointError(f"tensor view cannot be read ({exc})") from exc
        if big_endian and np_dtype.itemsize > 1:
            out = out.astype(storage_numpy[self.dtype])
        return out

    def read_rows(self, provider: RangeProvider, start: int, stop: int,
                  big_endian: bool = False) -> np.ndarray:
        """Rows ``start:stop`` (first dimension) of a C-contiguous view, read from just
        their bytes: a big tensor is written a slice at a time. The whole view is checked
        against its storage first, as ``read`` does."""
        if self.dtype not in ITEMSIZE or not isinstance(self.storage, StorageRef) \
                or not self.shape or not self.is_contiguous_view():
            raise CorruptCheckpointError("tensor record cannot be read by rows")
        item = itemsize(self.dtype)
        check_extent(self.shape, item)
        if not 0 <= start <= stop <= self.shape[0]:
            raise CorruptCheckpointError("rows outside the tensor")
        count = self.storage.nbytes // item
        if self.offset < 0 or self.offset + self.numel > count:
            raise CorruptCheckpointError(
                f"tensor view reaches element {self.offset + self.numel - 1} of a storage "
                f"holding {count}")
        row = math.prod(self.shape[1:])
        raw = provider.storage_range(self.storage, (self.offset + start * row) * item,
                                     (stop - start) * row * item)
        np_dtype = _numpy_tables()[0][self.dtype]
        shape = (stop - start, *self.shape[1:])
        if big_endian and np_dtype.itemsize > 1:
            swapped: np.ndarray = raw.view(np_dtype.newbyteorder(">")).astype(np_dtype)
            return swapped.reshape(shape)
        values: np.ndarray = raw.view(np_dtype)
        return values.reshape(shape)

    def is_contiguous_view(self) -> bool:
        expected = 1
        for n, s in zip(reversed(self.shape), reversed(self.stride), strict=False):
            if n != 1 and s != expected:
                return False
            expected *= n
        return True
