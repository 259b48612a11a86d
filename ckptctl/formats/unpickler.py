"""A restricted unpickler for checkpoint pickles that never executes code from the file.

Safety is by *allow-list*: only the callables in ``_SAFE_GLOBALS`` are ever called, and each
of them is either a plain container constructor or one of ckptctl's own inert rebuild
functions. Every other global becomes an inert stand-in (``InertObject``) that records what
the pickle asked for without importing or calling anything. On top of that, globals known
to be able to run code (``os.system``, ``subprocess.*``, ``builtins.eval`` …) are collected
and the whole pickle is refused with a message naming them, so a user is told, not
silently handed a half-read file.

Tensors are never materialised here: ``_rebuild_tensor_v2``/``_v3`` produce ``LazyTensor``
records (storage key, dtype, offset, shape, stride) that the container reader resolves to
memory-mapped bytes later.
"""

from __future__ import annotations

import _compat_pickle
import collections
import datetime
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptCheckpointError, UnsafePickleError, UnsupportedCheckpointError
from .tensor import DTYPES_BY_STORAGE_CLASS, DTYPES_BY_TORCH_NAME, LazyTensor, StorageRef

# --- what is refused -------------------------------------------------------------------

#: Modules whose globals can reach the OS, the interpreter or the network.
_DANGEROUS_MODULES = frozenset(
    {
        "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "importlib", "runpy",
        "shutil", "socket", "pickle", "_pickle", "cPickle", "marshal", "ctypes", "code",
        "codeop", "pty", "multiprocessing", "webbrowser", "pdb", "commands", "popen2",
        "platform", "signal", "threading", "_thread", "asyncio", "types", "inspect",
        "tempfile", "glob", "urllib", "http", "ftplib", "smtplib", "telnetlib", "requests",
        "dill", "cloudpickle", "joblib", "_io", "io", "zipimport", "pkgutil", "site",
        "sysconfig", "gc", "weakref", "ssl", "select", "mmap", "fcntl", "resource", "shelve",
        "dbm", "sqlite3", "xmlrpc", "logging", "unittest", "doctest", "timeit", "trace",
        "cProfile", "profile", "bdb", "imp", "distutils", "setuptools", "pip",
    }
)
#: Single globals that run code, look up arbitrary attributes or open files.
_DANGEROUS_NAMES = frozenset(
    {
        ("builtins", "eval"), ("builtins", "exec"), ("builtins", "compile"),
        ("builtins", "__import__"), ("builtins", "open"), ("builtins", "getattr"),
        ("builtins", "setattr"), ("builtins", "delattr"), ("builtins", "globals"),
        ("builtins", "locals"), ("builtins", "vars"), ("builtins", "input"),
        ("builtins", "breakpoint"), ("builtins", "exit"), ("builtins", "quit"),
        ("builtins", "help"), ("builtins", "memoryview"), ("builtins", "__builtins__"),
        ("builtins", "classmethod"), ("builtins", "staticmethod"), ("builtins", "property"),
        ("builtins", "super"), ("builtins", "type"), ("functools", "partial"),
        ("functools", "reduce"), ("operator", "attrgetter"), ("operator", "methodcaller"),
        ("operator", "call"),
        ("torch", "load"), ("torch.serialization", "load"), ("torch.hub", "load"),
        ("torch.jit", "load"), ("torch", "compile"), ("numpy", "load"), ("numpy", "loads"),
        ("numpy.lib.npyio", "load"), ("numpy", "fromfile"), ("numpy.testing", "rundocs"),
    }
)
#: Prefixes inside otherwise ordinary packages that reach native code or the filesystem.
_DANGEROUS_PREFIXES = ("torch._C", "torch.ops", "torch.hub", "torch.utils.cpp_extension",
                       "numpy.ctypeslib", "numpy.f2py", "numpy.distutils")


def is_dangerous_global(module: str, name: str) -> bool:
    root = module.split(".", 1)[0]
    if root in _DANGEROUS_MODULES or (module, name) in _DANGEROUS_NAMES:
        return True
    if module == "builtins" and name.startswith("__"):
        return True
    return any(module == p or module.startswith(p + ".") for p in _DANGEROUS_PREFIXES)


# --- inert stand-ins ---------------------------------------------------------------------


class InertObject:
    """An instance of a class the pickle named but ckptctl does not import.

    It accepts what the pickle feeds it (constructor args, state, items) and keeps it as
    data, so e.g. an ``argparse.Namespace`` of training args stays readable.
    """

    _ckpt_module: str = ""
    _ckpt_name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = object.__new__(cls)
        obj.__dict__["_ckpt_args"] = args
        obj.__dict__["_ckpt_state"] = None
        obj.__dict__["_ckpt_items"] = {}
        obj.__dict__["_ckpt_list"] = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # args already kept by __new__
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_ckpt_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["_ckpt_items"][key] = value

    def append(self, value: Any) -> None:
        self.__dict__["_ckpt_list"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["_ckpt_list"].extend(values)

    @property
    def type_name(self) -> str:
        return f"{self._ckpt_module}.{self._ckpt_name}"

    @property
    def args(self) -> tuple[Any, ...]:
        return self.__dict__["_ckpt_args"]

    @property
    def state(self) -> Any:
        return self.__dict__["_ckpt_state"]

    @property
    def items(self) -> dict[Any, Any]:
        return self.__dict__["_ckpt_items"]

    @property
    def list_items(self) -> list[Any]:
        return self.__dict__["_ckpt_list"]

    def __repr__(self) -> str:
        return f"<inert {self.type_name}>"


_inert_types: dict[tuple[str, str], type[InertObject]] = {}


def inert_type(module: str, name: str) -> type[InertObject]:
    key = (module, name)
    cls = _inert_types.get(key)
    if cls is None:
        cls = type(f"Inert_{name}", (InertObject,), {"_ckpt_module": module, "_ckpt_name": name})
        _inert_types[key] = cls
    return cls


@dataclass(frozen=True)
class StorageType:
    """What ``torch.FloatStorage`` & co. stand for: a dtype (None for UntypedStorage)."""

    dtype: str | None


@dataclass(frozen=True)
class TorchDType:
    """A ``torch.<dtype>`` global, e.g. passed to ``_rebuild_tensor_v3``."""

    name: str


@dataclass
class UnsupportedTensor:
    """A tensor kind ckptctl cannot rebuild (quantized, sparse, nested …)."""

    kind: str
    args: tuple[Any, ...] = field(default_factory=tuple)


# --- the inert rebuild functions ---------------------------------------------------------


def _check_shape(size: Any, stride: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if not isinstance(size, tuple | list) or not isinstance(stride, tuple | list):
        raise CorruptCheckpointError("tensor record has a malformed size/stride")
    if len(size) != len(stride) or len(size) > 64:
        raise CorruptCheckpointError("tensor record has mismatched size/stride")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (*size, *stride)):
        raise CorruptCheckpointError("tensor record has a negative or non-integer size/stride")
    return tuple(size), tuple(stride)


def _rebuild_tensor(
    storage: Any, storage_offset: Any, size: Any, stride: Any, dtype: str | None = None,
    requires_grad: bool = False,
) -> LazyTensor:
    if not isinstance(storage, StorageRef):
        raise CorruptCheckpointError("tensor record does not point at a storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise CorruptCheckpointError("tensor record has a bad storage offset")
    shape, strides = _check_shape(size, stride)
    tensor_dtype = dtype or storage.dtype
    if tensor_dtype is None:
        raise CorruptCheckpointError("tensor record has no dtype")
    return LazyTensor(storage, tensor_dtype, storage_offset, shape, strides, bool(requires_grad))


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
    backward_hooks: Any = None, metadata: Any = None,
) -> LazyTensor:
    return _rebuild_tensor(storage, storage_offset, size, stride, None, requires_grad)


def _rebuild_tensor_v3(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
    backward_hooks: Any, dtype: Any, metadata: Any = None,
) -> LazyTensor:
    if not isinstance(dtype, TorchDType) or dtype.name not in DTYPES_BY_TORCH_NAME:
        raise UnsupportedCheckpointError(f"tensor dtype {dtype!r} is not supported")
    return _rebuild_tensor(storage, storage_offset, size, stride, dtype.name, requires_grad)


def _rebuild_parameter(data: Any, requires_grad: Any = True, backward_hooks: Any = None,
                       state: Any = None) -> Any:
    if isinstance(data, LazyTensor):
        return data.as_parameter(bool(requires_grad))
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    # Tensor subclasses: rebuild the plain tensor with the (already vetted) inner function.
    if func in _REBUILD_FUNCTIONS and isinstance(args, tuple):
        return func(*args)
    return UnsupportedTensor("tensor subclass", (new_type,))


def _unsupported(kind: str) -> Callable[..., UnsupportedTensor]:
    def build(*args: Any, **kwargs: Any) -> UnsupportedTensor:
        return UnsupportedTensor(kind, args)

    return build


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # Protocol 0/1 pickles of plain objects: build an inert instance, never call ``base``.
    if isinstance(cls, type) and issubclass(cls, InertObject):
        return cls(state) if state is not None else cls()
    return inert_type("copyreg", "_reconstructor")(cls, base, state)


def _codecs_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol 2 spells ``bytes`` values as encode(str, "latin1"): only that use is allowed.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise CorruptCheckpointError("pickle uses _codecs.encode in an unexpected way")
    return text.encode(encoding)


def _torch_size(*args: Any) -> tuple[Any, ...]:
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], tuple | list) else args


def _torch_device(*args: Any) -> str:
    return ":".join(str(a) for a in args)


_REBUILD_FUNCTIONS: set[Callable[..., Any]] = {_rebuild_tensor_v2, _rebuild_tensor_v3}

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "tuple"): tuple,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "bytes"): bytes,
    ("builtins", "slice"): slice,
    ("builtins", "range"): range,
    ("builtins", "float"): float,
    ("builtins", "int"): int,
    ("builtins", "str"): str,
    ("builtins", "bool"): bool,
    ("datetime", "datetime"): datetime.datetime,
    ("datetime", "date"): datetime.date,
    ("datetime", "time"): datetime.time,
    ("datetime", "timedelta"): datetime.timedelta,
    ("datetime", "timezone"): datetime.timezone,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch._utils", "_rebuild_qtensor"): _unsupported("quantized tensor"),
    ("torch._utils", "_rebuild_sparse_tensor"): _unsupported("sparse tensor"),
    ("torch._utils", "_rebuild_nested_tensor"): _unsupported("nested tensor"),
    ("torch._utils", "_rebuild_wrapper_subclass"): _unsupported("tensor subclass"),
    ("torch._utils", "_rebuild_meta_tensor_no_storage"): _unsupported("meta tensor"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"): _unsupported("device tensor"),
    ("torch._utils", "_rebuild_device_tensor_from_cpu_tensor"): _unsupported("device tensor"),
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("_codecs", "encode"): _codecs_encode,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
}


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy's own reconstructors: they only build arrays/dtypes from bytes (no code runs)."""
    import numpy as np
    from numpy.lib import format as _fmt  # noqa: F401 - ensures numpy core is importable

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    entries: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        entries[(mod, "_reconstruct")] = multiarray._reconstruct
        entries[(mod, "scalar")] = multiarray.scalar
    for mod in ("numpy.dtypes", "numpy"):
        for dtype_class in ("Float64DType", "Float32DType", "Int64DType", "Int32DType",
                            "UInt32DType", "UInt8DType", "BoolDType", "Float16DType"):
            if hasattr(np, "dtypes") and hasattr(np.dtypes, dtype_class):
                entries[(mod, dtype_class)] = getattr(np.dtypes, dtype_class)
    return entries


_SAFE_GLOBALS.update(_numpy_globals())


# --- the unpickler -----------------------------------------------------------------------

PersistentLoader = Callable[[Any], Any]


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only hands out vetted or inert objects."""

    def __init__(self, file: Any, persistent_load: PersistentLoader | None = None) -> None:
        super().__init__(file, encoding="utf-8")
        self.dangerous: list[str] = []
        self.unknown: set[str] = set()
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise CorruptCheckpointError("pickle names a global with a non-string name")
        if is_dangerous_global(module, name):  # checked on the raw name too
            self.dangerous.append(f"{module}.{name}")
            return inert_type(module, name)
        # Protocol 0-2 pickles use Python 2 names; an overridden find_class sees them raw.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        safe = _SAFE_GLOBALS.get((module, name))
        if safe is not None:
            return safe
        if is_dangerous_global(module, name):
            self.dangerous.append(f"{module}.{name}")
            return inert_type(module, name)
        if module == "torch":
            if name in DTYPES_BY_STORAGE_CLASS:
                return StorageType(DTYPES_BY_STORAGE_CLASS[name])
            if name in DTYPES_BY_TORCH_NAME:
                return TorchDType(name)
        if module in ("torch.storage", "torch") and name in ("UntypedStorage", "TypedStorage"):
            return StorageType(None)
        self.unknown.add(f"{module}.{name}")
        return inert_type(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise CorruptCheckpointError("unexpected persistent reference in pickle")
        return self._persistent(pid)


def restricted_load(
    data: bytes | io.BufferedIOBase, persistent_load: PersistentLoader | None = None
) -> tuple[Any, RestrictedUnpickler]:
    """Unpickle ``data`` safely. Raises ``UnsafePickleError`` when dangerous globals appear."""
    stream = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    unpickler = RestrictedUnpickler(stream, persistent_load)
    try:
        obj = unpickler.load()
    except (UnsafePickleError, CorruptCheckpointError, UnsupportedCheckpointError):
        raise
    except RecursionError as exc:
        raise CorruptCheckpointError("pickle nests too deeply") from exc
    except MemoryError as exc:
        raise CorruptCheckpointError("pickle asks for more memory than it can hold") from exc
    except Exception as exc:  # any parse failure of hostile bytes is a corrupt file
        if unpickler.dangerous:
            raise UnsafePickleError(unpickler.dangerous) from exc
        raise CorruptCheckpointError(f"unreadable pickle ({type(exc).__name__}: {exc})") from exc
    if unpickler.dangerous:
        raise UnsafePickleError(unpickler.dangerous)
    return obj, unpickler


def storage_ref_from_pid(pid: Any, legacy: bool = False) -> tuple[StorageRef, Any]:
    """Decode torch's persistent id ``('storage', type, key, location, numel[, view])``."""
    if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
        raise CorruptCheckpointError(f"unexpected persistent id {str(pid)[:80]!r}")
    storage_type, key, location, numel = pid[1], pid[2], pid[3], pid[4]
    if not isinstance(storage_type, StorageType):
        raise CorruptCheckpointError("storage record names an unknown storage type")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise CorruptCheckpointError("storage record has a bad key or size")
    if len(key) > 256 or "/" in key or key in (".", ".."):
        raise CorruptCheckpointError("storage record has a bad key")
    view = pid[5] if legacy and len(pid) > 5 else None
    return StorageRef(key=key, dtype=storage_type.dtype, numel=numel, location=str(location)), view
