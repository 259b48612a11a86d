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

Work is budgeted (``ckptctl.budgets``): the structural pre-pass charges opcodes, hashing and
calls; the allowed constructors here charge the elements and bytes they materialize (a
``set`` of a referenced list, ``bytes`` of a referenced buffer, a numpy array) against the
same budget, so memo references cannot make a small pickle build gigabytes.
"""

from __future__ import annotations

import _compat_pickle
import collections
import contextvars
import datetime
import io
import math
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..budgets import pickle_work_exceeded, pickle_work_limit
from ..errors import (
    BudgetExceededError,
    CorruptCheckpointError,
    UnsafePickleError,
    UnsupportedCheckpointError,
)
from .pickle_guard import guard_pickle
from .tensor import (
    DTYPES_BY_STORAGE_CLASS,
    DTYPES_BY_TORCH_NAME,
    QUANTIZED_DTYPES,
    QUANTIZED_STORAGE_CLASSES,
    LazyTensor,
    StorageRef,
    _Sealed,
)

if TYPE_CHECKING:
    import numpy as np

# numpy is imported only when a pickle holds a numpy dtype, array or scalar: most torch
# checkpoints do not, and ``scan`` stays light (README: "Light by default").

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
        "_operator", "_functools", "pydoc", "_posixsubprocess", "_ctypes", "codecs",
        "builtins.object", "_winapi", "msvcrt", "winreg", "_signal", "faulthandler",
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
_DANGEROUS_PREFIXES = ("torch._C", "torch.ops", "torch.hub", "torch.utils", "torch.jit",
                       "torch.serialization", "torch.storage._load", "torch.package",
                       "torch.multiprocessing", "torch.distributed", "torch.compiler",
                       "numpy.ctypeslib", "numpy.f2py", "numpy.distutils", "numpy.testing",
                       "numpy.lib", "numpy.memmap", "numpy.load", "numpy.save", "numpy.fromfile",
                       "numpy.loadtxt", "numpy.genfromtxt", "numpy.tofile")


#: Globals inside a dangerous prefix that torch's own weights-only loader allows and that
#: ckptctl replaces with an inert function (``_SAFE_FUNCTIONS``).
_ALLOWED_DESPITE_PREFIX = frozenset({("torch.serialization", "_get_layout")})


def is_dangerous_global(module: str, name: str) -> bool:
    """True for globals that can run code, reach the OS or read files.

    Dotted names (``STACK_GLOBAL "pathlib" "os.system"``) are judged on every component, so
    an attribute walk through an innocent-looking module is caught too.
    """
    if (module, name) in _ALLOWED_DESPITE_PREFIX:
        return False
    if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 spellings: judge both
        mapped = _compat_pickle.NAME_MAPPING[(module, name)]
        if is_dangerous_global(*mapped):
            return True
    elif module in _compat_pickle.IMPORT_MAPPING and is_dangerous_global(
            _compat_pickle.IMPORT_MAPPING[module], name):
        return True
    dotted = f"{module}.{name}"
    parts = dotted.split(".")
    if any(p in _DANGEROUS_MODULES for p in parts) or (module, name) in _DANGEROUS_NAMES:
        return True
    if any(p.startswith("__") and p not in ("__builtin__", "__main__") for p in parts):
        return True
    if "." in name and any(
        (m, n) in _DANGEROUS_NAMES for m, n in [(".".join(parts[:i]), parts[i]) for i in range(1, len(parts))]
    ):
        return True
    return any(dotted == p or dotted.startswith(p + ".") or dotted.startswith(p + "_")
               for p in _DANGEROUS_PREFIXES)


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
        return cast(tuple[Any, ...], self.__dict__["_ckpt_args"])  # set to a tuple by __new__

    @property
    def state(self) -> Any:
        return self.__dict__["_ckpt_state"]

    @property
    def items(self) -> dict[Any, Any]:
        return cast(dict[Any, Any], self.__dict__["_ckpt_items"])  # a dict from __new__

    @property
    def list_items(self) -> list[Any]:
        return cast(list[Any], self.__dict__["_ckpt_list"])  # a list from __new__

    def __repr__(self) -> str:
        return f"<inert {self.type_name}>"


def inert_type(module: str, name: str) -> type[InertObject]:
    """A fresh stand-in class (one per unpickler and name: nothing is kept between loads)."""
    safe_name = "".join(c if c.isalnum() else "_" for c in name[:64])
    return type(f"Inert_{safe_name}", (InertObject,), {"_ckpt_module": module[:256], "_ckpt_name": name[:256]})


@dataclass(frozen=True, slots=True)
class StorageType(_Sealed):
    """What ``torch.FloatStorage`` & co. stand for: a dtype (None for UntypedStorage)."""

    dtype: str | None


@dataclass(frozen=True, slots=True)
class TorchDType(_Sealed):
    """A ``torch.<dtype>`` global, e.g. passed to ``_rebuild_tensor_v3``."""

    name: str


@dataclass(frozen=True, slots=True)
class TorchLayout(_Sealed):
    """A ``torch.layout`` value (``torch.sparse_coo`` …), as torch pickles it: a name."""

    name: str


@dataclass(frozen=True, slots=True)
class UnsupportedTensor(_Sealed):
    """A tensor kind ckptctl cannot rebuild (quantized, sparse, nested …)."""

    kind: str
    args: tuple[Any, ...] = field(default_factory=tuple)


class SafeCallable(_Sealed):
    """An allow-listed callable handed to the unpickler: callable, but not editable by BUILD
    (a real function's ``__defaults__`` could otherwise be poisoned for later loads)."""

    __slots__ = ("_func", "name")
    _func: Callable[..., Any]
    name: str

    def __init__(self, name: str, func: Callable[..., Any]) -> None:
        object.__setattr__(self, "_func", func)
        object.__setattr__(self, "name", name)

    def __setattr__(self, key: str, value: Any) -> None:
        raise CorruptCheckpointError("pickle tries to modify an allowed callable")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<safe {self.name}>"


class SafeOrderedDict(collections.OrderedDict):  # type: ignore[type-arg]
    """``collections.OrderedDict`` as torch pickles state dicts: BUILD may only set the
    ``_metadata`` torch attaches, never shadow methods such as ``get`` or ``items``."""

    __slots__ = ("_metadata",)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict) and set(state) <= {"_metadata"}:
            if "_metadata" in state:
                object.__setattr__(self, "_metadata", state["_metadata"])
            return
        raise CorruptCheckpointError("pickle sets unexpected attributes on a mapping")


class SafeDict(dict):  # type: ignore[type-arg]
    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        if state:
            raise CorruptCheckpointError("pickle sets unexpected attributes on a mapping")


# numpy arrays are rebuilt from checked raw bytes only: numeric dtypes, no objects/fields.
_NUMERIC_DTYPE = re.compile(r"^[<>|=]?(b1|i1|i2|i4|i8|u1|u2|u4|u8|f2|f4|f8|c8|c16)$")


class NpDTypeRecord(_Sealed):
    __slots__ = ("dtype",)
    dtype: np.dtype

    def __init__(self, dtype: np.dtype) -> None:
        object.__setattr__(self, "dtype", dtype)

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags): only the
        # byte order is taken; anything describing structure is refused.
        if not isinstance(state, tuple) or len(state) < 5 or any(v is not None for v in state[2:5]):
            raise CorruptCheckpointError("pickle builds a structured or malformed numpy dtype")
        order = state[1]
        if order not in ("<", ">", "|", "="):
            raise CorruptCheckpointError("pickle gives a numpy dtype a bad byte order")
        if order in ("<", ">"):
            object.__setattr__(self, "dtype", self.dtype.newbyteorder(order))


class NpArrayRecord(_Sealed):
    """A numpy array rebuilt from its raw bytes (``array`` is None until BUILD)."""

    __slots__ = ("array",)
    array: np.ndarray | None

    def __init__(self) -> None:
        object.__setattr__(self, "array", None)

    def __setstate__(self, state: Any) -> None:
        if self.array is not None or not isinstance(state, tuple) or len(state) not in (4, 5):
            raise CorruptCheckpointError("pickle builds a numpy array twice or malformed")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, NpDTypeRecord) or not isinstance(raw, bytes | bytearray):
            raise CorruptCheckpointError("pickle builds a numpy array of unsupported kind")
        if not isinstance(shape, tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ) or len(shape) > 32:
            raise CorruptCheckpointError("pickle builds a numpy array with a bad shape")
        if math.prod(shape) * dtype.dtype.itemsize != len(raw):
            raise CorruptCheckpointError("pickle builds a numpy array from the wrong byte count")
        _budget().spend(len(raw))
        import numpy as np

        values = np.frombuffer(bytes(raw), dtype=dtype.dtype).reshape(shape, order="F" if fortran else "C")
        object.__setattr__(self, "array", values)


def _np_dtype(spec: Any, align: Any = False, copy: Any = True) -> NpDTypeRecord:
    if not isinstance(spec, str) or not _NUMERIC_DTYPE.match(spec):
        raise UnsupportedCheckpointError(f"numpy dtype {str(spec)[:40]!r} is not supported")
    import numpy as np

    return NpDTypeRecord(np.dtype(spec))


class _Marker(_Sealed):
    __slots__ = ("name",)
    name: str

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)


_NDARRAY_MARKER = _Marker("numpy.ndarray")  # stands for numpy.ndarray; never callable


def _np_reconstruct(subtype: Any, shape: Any = (0,), typecode: Any = b"b") -> NpArrayRecord:
    if subtype is not _NDARRAY_MARKER:
        raise UnsupportedCheckpointError("numpy array subclass is not supported")
    if shape != (0,):  # numpy always writes (0,) here; the real shape comes with BUILD
        raise CorruptCheckpointError("pickle reconstructs a numpy array with a bad shape")
    return NpArrayRecord()


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, NpDTypeRecord) or not isinstance(data, bytes | bytearray) \
            or len(data) != dtype.dtype.itemsize:
        raise CorruptCheckpointError("pickle builds a malformed numpy scalar")
    import numpy as np

    return _budget().note_value(np.frombuffer(bytes(data), dtype=dtype.dtype)[0])


# --- the work budget of one load -------------------------------------------------------------

#: Steps charged per element an allowed constructor materializes (a set entry, an
#: OrderedDict pair, an int turned into a byte): roughly its bytes of memory.
_ELEMENT_STEPS = 8
#: Distinct values of one hash that constructors may create (complex and numpy numbers hash
#: by value; ``2**61 - 1`` apart, integers hash alike). Real checkpoints hold one or two; many
#: would make any dict keyed by them quadratic.
_MAX_SAME_HASH = 64


class LoadBudget:
    """The work one ``restricted_load`` may still do (``ckptctl.budgets``): the structural
    pre-pass's charges continued by what the allowed constructors materialize."""

    def __init__(self, size: int, spent: int = 0) -> None:
        self.size = size
        self.work = spent
        self.limit = pickle_work_limit(size)
        self._values: dict[int, Any] = {}

    def spend(self, steps: int) -> None:
        self.work += steps
        if self.work > self.limit:
            raise pickle_work_exceeded(self.size)

    def hashing(self, items: Any) -> None:
        """Charge hashing every item of ``items`` into one set or dict: each item's own
        cost (a tuple hashes its elements, through shared references: a DAG costs its
        size as a tree), counted before anything is hashed, then a probe past each earlier
        item of the same hash."""
        self.spend(len(items))
        types = set(map(type, items))  # the common cases stay in C: strings, small ints
        if types <= _FLAT_HASH_TYPES:
            pass
        elif types <= {int, bool}:
            self.spend(sum(map(int.bit_length, items)) // 64)
        else:
            known: dict[int, int] = {}  # id -> cost of the tuples already counted
            for item in items:
                self.spend(_hash_steps(item, known) - 1)
        shared = collections.Counter(map(hash, items))  # affordable: charged above
        self.spend(sum(n * (n - 1) // 2 for n in shared.values() if n > 1))

    def note_value(self, value: Any) -> Any:
        """Record a number built by value (complex, numpy scalar): refuse the pickle when
        more than ``_MAX_SAME_HASH`` distinct ones share a hash. Returns ``value``."""
        digest = hash(value)
        seen = self._values.get(digest)
        if seen is None:
            self._values[digest] = value
        elif isinstance(seen, _SameHash):
            seen.add(value)
            if len(seen) > _MAX_SAME_HASH:
                raise BudgetExceededError(
                    f"{len(seen)} distinct numbers with one hash",
                    f"the {_MAX_SAME_HASH} a pickle may build (dict keys that all collide)")
        elif not _same(seen, value):
            self._values[digest] = _SameHash((seen, value))
        return value


#: Types whose hash is one step (cached, or a few machine words).
_FLAT_HASH_TYPES = frozenset({str, bytes, float, bool, type(None), complex})


def _hash_steps(item: Any, known: dict[int, int]) -> int:
    """What hashing ``item`` costs, in steps: tuples walk their elements (a tuple holding
    two references to the one below it, 40 levels deep, costs 2**41), frozensets their
    cached entries, integers their digits. Each distinct tuple is visited once (``known``
    keeps their costs by id), so counting a DAG is linear in its size."""
    if not isinstance(item, tuple):
        return _scalar_steps(item)
    pending: list[tuple[tuple[Any, ...], bool]] = [(item, False)]
    while pending:
        node, expanded = pending.pop()
        if id(node) in known:
            continue
        children = [c for c in node if isinstance(c, tuple) and id(c) not in known]
        if expanded or not children:
            known[id(node)] = 1 + sum(known[id(c)] if isinstance(c, tuple) else _scalar_steps(c)
                                      for c in node)
        else:
            pending.append((node, True))
            pending.extend((c, False) for c in children)
    return known[id(item)]


def _scalar_steps(value: Any) -> int:
    if isinstance(value, int):
        return 1 + value.bit_length() // 64
    if isinstance(value, frozenset):
        return 1 + len(value)
    return 1


class _SameHash(set):  # type: ignore[type-arg]
    """Distinct values seen with one hash."""


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


_BUDGET: contextvars.ContextVar[LoadBudget | None] = contextvars.ContextVar(
    "ckptctl_load_budget", default=None)


def _budget() -> LoadBudget:
    """The budget of the load in progress (a fresh floor budget outside any load)."""
    budget = _BUDGET.get()
    return budget if budget is not None else LoadBudget(0)


#: ``bytes``/``bytearray``/``_codecs.encode`` text encodings: the ones pickles use (latin-1
#: for Python 2 ``str`` and protocol 0-2 ``bytes``, utf-8, ascii). Others (punycode, idna …)
#: are refused: some are quadratic in the text's length.
_ENCODINGS = {"latin1": "latin-1", "latin-1": "latin-1", "iso-8859-1": "latin-1",
              "iso8859-1": "latin-1", "l1": "latin-1", "utf-8": "utf-8", "utf8": "utf-8",
              "ascii": "ascii", "us-ascii": "ascii"}


def _encoding(name: Any, what: str) -> str:
    canonical = _ENCODINGS.get(name.lower().replace("_", "-")) if isinstance(name, str) else None
    if canonical is None:
        raise UnsupportedCheckpointError(
            f"refused: the pickle builds {what} with the text encoding {str(name)[:40]!r} "
            "(only latin-1, utf-8 and ascii are read; others can take quadratic time)")
    return canonical


def _encode(text: str, encoding: str) -> bytes:
    _budget().spend(len(text))
    return text.encode(encoding)


# --- builtins that could allocate from a size alone are wrapped to take data only ---------


def _concrete(value: Any, what: str) -> Any:
    """``value`` when it is data (never a size or an iterator); its materializing charged."""
    if not isinstance(value, list | tuple | set | frozenset | bytes | bytearray | str):
        raise CorruptCheckpointError(f"pickle builds a {what} from {type(value).__name__}")
    _budget().spend(len(value) * (1 if isinstance(value, bytes | bytearray | str) else _ELEMENT_STEPS))
    return value


def _safe_set(items: Any = ()) -> set[Any]:
    items = _concrete(items, "set")
    _budget().hashing(items)
    return set(items)


def _safe_frozenset(items: Any = ()) -> frozenset[Any]:
    items = _concrete(items, "frozenset")
    _budget().hashing(items)
    return frozenset(items)


def _safe_bytearray(data: Any = b"", encoding: Any = None) -> bytearray:
    if isinstance(data, str):
        return bytearray(_encode(data, _encoding("latin1" if encoding is None else encoding,
                                                 "a bytearray")))
    return bytearray(_concrete(data, "bytearray"))


def _safe_bytes(data: Any = b"", encoding: Any = None) -> bytes:
    if isinstance(data, str):
        return _encode(data, _encoding("latin1" if encoding is None else encoding, "bytes"))
    return bytes(_concrete(data, "bytes"))


def _safe_ordered_dict(*args: Any) -> SafeOrderedDict:
    """``OrderedDict()`` as torch pickles it, or ``OrderedDict([[k, v], ...])`` as Python 2
    pickled it: pairs only, charged like a set of their keys."""
    if len(args) > 1:
        raise CorruptCheckpointError("pickle builds an OrderedDict from several arguments")
    if not args:
        return SafeOrderedDict()
    pairs = _concrete(args[0], "OrderedDict")
    if not all(isinstance(pair, list | tuple) and len(pair) == 2 for pair in pairs):
        raise CorruptCheckpointError("pickle builds an OrderedDict from something not pairs")
    _budget().hashing([pair[0] for pair in pairs])
    return SafeOrderedDict(pairs)


def _safe_complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (real, imag)):
        raise CorruptCheckpointError("pickle builds a complex number from non-numbers")
    return cast(complex, _budget().note_value(complex(real, imag)))


def _safe_slice(*args: Any) -> slice:
    if len(args) > 3 or not all(a is None or isinstance(a, int) for a in args):
        raise CorruptCheckpointError("pickle builds a malformed slice")
    return slice(*args)


def _safe_defaultdict(*args: Any) -> SafeDict:
    return SafeDict()  # the default factory is dropped: it would be a callable from the file


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
) -> LazyTensor | UnsupportedTensor:
    if not isinstance(storage, StorageRef):
        raise CorruptCheckpointError("tensor record does not point at a storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise CorruptCheckpointError("tensor record has a bad storage offset")
    shape, strides = _check_shape(size, stride)
    tensor_dtype = dtype or storage.dtype
    if tensor_dtype is None:
        raise CorruptCheckpointError("tensor record has no dtype")
    if tensor_dtype in QUANTIZED_DTYPES:
        return UnsupportedTensor("quantized tensor", (tensor_dtype, shape))
    return LazyTensor(storage, tensor_dtype, storage_offset, shape, strides, bool(requires_grad))


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
    backward_hooks: Any = None, metadata: Any = None,
) -> LazyTensor | UnsupportedTensor:
    return _rebuild_tensor(storage, storage_offset, size, stride, None, requires_grad)


def _rebuild_tensor_v3(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
    backward_hooks: Any, dtype: Any, metadata: Any = None,
) -> LazyTensor | UnsupportedTensor:
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


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # Protocol 2 spells ``bytes`` values as encode(str, "latin1"): only that use is allowed.
    if not isinstance(text, str) or errors != "strict":
        raise CorruptCheckpointError("pickle uses _codecs.encode in an unexpected way")
    return _encode(text, _encoding(encoding, "bytes"))


def _torch_size(*args: Any) -> tuple[Any, ...]:
    values = args
    if len(args) == 1 and isinstance(args[0], tuple | list):
        values = tuple(_concrete(args[0], "torch.Size"))
    if not all(isinstance(v, int) for v in values):
        raise CorruptCheckpointError("pickle builds a malformed torch.Size")
    return values


#: ``torch.serialization._get_layout``'s names (torch's own table).
_LAYOUTS = frozenset({"torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc",
                      "torch.sparse_bsr", "torch.sparse_bsc", "torch._mkldnn", "torch.jagged"})


def _torch_layout(name: Any) -> TorchLayout:
    """``torch.serialization._get_layout("torch.sparse_coo")``: a layout, kept as its name."""
    if not isinstance(name, str) or name not in _LAYOUTS:
        raise CorruptCheckpointError(f"pickle names an unknown torch layout {str(name)[:40]!r}")
    return TorchLayout(name)


def _torch_device(*args: Any) -> str:
    if not 1 <= len(args) <= 2 or not isinstance(args[0], str) or len(args[0]) > 32 or (
        len(args) == 2 and not isinstance(args[1], int | type(None))
    ):
        raise CorruptCheckpointError("pickle builds a malformed torch.device")
    return ":".join(str(a) for a in args if a is not None)


_SAFE_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _safe_ordered_dict,
    ("collections", "defaultdict"): _safe_defaultdict,
    ("builtins", "set"): _safe_set,
    ("builtins", "frozenset"): _safe_frozenset,
    ("builtins", "complex"): _safe_complex,
    ("builtins", "bytearray"): _safe_bytearray,
    ("builtins", "bytes"): _safe_bytes,
    ("builtins", "slice"): _safe_slice,
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
    ("torch.serialization", "_get_layout"): _torch_layout,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    key: SafeCallable(f"{key[0]}.{key[1]}", func) for key, func in _SAFE_FUNCTIONS.items()
}
_SAFE_GLOBALS[("numpy", "ndarray")] = _NDARRAY_MARKER
_REBUILD_FUNCTIONS = frozenset({_SAFE_GLOBALS[("torch._utils", "_rebuild_tensor_v2")],
                                _SAFE_GLOBALS[("torch._utils", "_rebuild_tensor_v3")]})


# --- the unpickler -----------------------------------------------------------------------

PersistentLoader = Callable[[Any], Any]


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only hands out vetted or inert objects."""

    def __init__(self, file: Any, persistent_load: PersistentLoader | None = None) -> None:
        super().__init__(file, encoding="utf-8")
        self.dangerous: list[str] = []
        self.unknown: set[str] = set()
        self._persistent = persistent_load
        self._inert: dict[tuple[str, str], type[InertObject]] = {}
        #: the pickle's length and the work its load cost (``LoadBudget``), once loaded
        self.pickle_bytes = 0
        self.work = 0

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise CorruptCheckpointError("pickle names a global with a non-string name")
        if len(module) + len(name) > 512 or not (module + name).isprintable():
            raise CorruptCheckpointError("pickle names a global with a malformed name")
        if is_dangerous_global(module, name):  # checked on the raw name too
            self.dangerous.append(f"{module}.{name}")
            return self._inert_type(module, name)
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
            return self._inert_type(module, name)
        if module == "torch":
            if name in DTYPES_BY_STORAGE_CLASS:
                return StorageType(DTYPES_BY_STORAGE_CLASS[name])
            if name in QUANTIZED_STORAGE_CLASSES:
                return StorageType(QUANTIZED_STORAGE_CLASSES[name])
            if name in DTYPES_BY_TORCH_NAME:
                return TorchDType(name)
        if module in ("torch.storage", "torch") and name in ("UntypedStorage", "TypedStorage"):
            return StorageType(None)
        if len(self.unknown) < 1000:
            self.unknown.add(f"{module}.{name}")
        return self._inert_type(module, name)

    def _inert_type(self, module: str, name: str) -> type[InertObject]:
        key = (module, name)
        if key not in self._inert:
            if len(self._inert) >= 50_000:
                raise CorruptCheckpointError("pickle names more than 50,000 different classes")
            self._inert[key] = inert_type(module, name)
        return self._inert[key]

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise CorruptCheckpointError("unexpected persistent reference in pickle")
        return self._persistent(pid)


class _Handle(Protocol):
    """What ``BoundedReader`` uses of the file it wraps."""

    def read(self, n: int, /) -> bytes: ...
    def readline(self, limit: int, /) -> bytes: ...
    def tell(self) -> int: ...
    def seek(self, offset: int, whence: int, /) -> int: ...


class BoundedReader:
    """A read-only file view whose reads never ask for more than the file still holds.

    A pickle's length fields are attacker-controlled; ``file.read(n)`` may allocate ``n``
    bytes before discovering the file is shorter. Clamping turns that into a short read,
    which the (un)pickler reports as truncation.
    """

    def __init__(self, handle: Any, size: int) -> None:
        self._handle: _Handle = handle
        self._size = size

    def _left(self) -> int:
        return max(0, self._size - self._handle.tell())

    def read(self, n: int = -1) -> bytes:
        left = self._left()
        return self._handle.read(left if n is None or n < 0 else min(n, left))

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readline(self, limit: int = -1) -> bytes:
        left = min(self._left(), 1 << 20)  # text-protocol lines are short
        return self._handle.readline(left if limit < 0 else min(limit, left))

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)


def restricted_load(
    data: bytes | io.BufferedIOBase, persistent_load: PersistentLoader | None = None
) -> tuple[Any, RestrictedUnpickler]:
    """Unpickle ``data`` safely. Raises ``UnsafePickleError`` when dangerous globals appear."""
    stream: io.BufferedIOBase | BoundedReader = (
        io.BytesIO(data) if isinstance(data, bytes | bytearray) else data)
    if not isinstance(stream, io.BytesIO | BoundedReader) and hasattr(stream, "fileno"):
        stream = BoundedReader(stream, os.fstat(stream.fileno()).st_size)
    start = stream.tell()
    cost = guard_pickle(stream, is_dangerous_global)  # nothing is built from a pickle that fails it
    stream.seek(start)
    unpickler = RestrictedUnpickler(stream, persistent_load)
    budget = LoadBudget(cost.size, cost.work)
    token = _BUDGET.set(budget)
    try:
        obj = unpickler.load()
        unpickler.pickle_bytes, unpickler.work = budget.size, budget.work
    except Exception as exc:  # any failure on hostile bytes is a corrupt file...
        if unpickler.dangerous:  # ...but a dangerous global seen on the way is named first
            raise UnsafePickleError(unpickler.dangerous) from exc
        if isinstance(exc, UnsafePickleError | CorruptCheckpointError | UnsupportedCheckpointError
                      | BudgetExceededError):
            raise
        if isinstance(exc, RecursionError):
            raise CorruptCheckpointError("pickle nests too deeply") from exc
        if isinstance(exc, MemoryError):
            raise CorruptCheckpointError("pickle asks for more memory than it can hold") from exc
        raise CorruptCheckpointError(f"unreadable pickle ({type(exc).__name__}: {str(exc)[:200]})") from exc
    finally:
        _BUDGET.reset(token)
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
