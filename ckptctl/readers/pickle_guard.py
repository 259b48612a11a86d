"""A structural pre-pass over a pickle, run before anything is built from it.

``pickletools.genops`` only decodes opcodes, it never builds objects, so this pass can refuse
what the C unpickler would handle badly or unsafely, before it sees the bytes:

* EXT1/EXT2/EXT4 opcodes: CPython answers them from the process-wide copyreg extension cache
  without calling ``find_class``, so they could bypass the allow-list (torch never writes them);
* out-of-band buffers (NEXT_BUFFER/READONLY_BUFFER): not part of any checkpoint format;
* memo indices larger than the pickle could ever fill (the C unpickler sizes its memo from
  the index, so ``LONG_BINPUT 2**28`` would allocate gigabytes);
* nesting deeper than ``MAX_DEPTH`` (hashing a deeply nested tuple overflows the C stack);
* frames that do not end where their pickle does: the C unpickler on a buffered file (what
  ``torch.load`` opens) resumes right after STOP, on an unbuffered one after the frame, so a
  frame running past STOP hides a second pickle only one of them reads;
* work beyond the pickle's budget (``ckptctl.budgets``): one step per opcode, plus what
  the C unpickler would spend hashing and calling. Memo references make a few bytes name a
  large object many times: a tuple nesting two references to the one below it, 40 levels
  deep, takes 2**40 steps to hash as a dict key; a tuple of 100,000 items passed 100,000
  times as a call's arguments is copied each time; 100,000 integer keys that differ by
  ``2**61 - 1`` all hash alike and make filling a dict quadratic. The pass models each
  stack item's hashing cost (tuples count their elements, through references) and, for keys
  made of numbers, the hash they share, and charges every key hashed and every call's
  arguments. ``unpickler.restricted_load`` charges what allowed constructors materialize
  against the same budget.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import functools
import itertools
import pickletools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Final, Protocol

from ..budgets import pickle_work_exceeded, pickle_work_limit
from ..errors import AmbiguousCheckpointError, CorruptCheckpointError, UnsafePickleError

MAX_DEPTH = 1000
_CONTAINER_UPDATES = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_STRINGS = frozenset({"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "STRING",
                      "BINSTRING", "SHORT_BINSTRING"})
_LITERALS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT",
                       "BINFLOAT", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"}) | _STRINGS
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_TUPLES = frozenset({"EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"})
_CALLS = frozenset({"REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST"})
#: A hashing cost is only compared with budgets: it saturates here instead of growing.
_COST_CAP = 1 << 62

#: One simulated stack item, a plain tuple (the pass runs once per opcode of every pickle):
#: (nesting depth, identity, hashing cost, hash or None, the string it is or None).
#: * depth: hashing a deeply nested tuple overflows the C stack;
#: * identity: which object it is (an int); memo references and container updates keep it;
#: * cost: steps to hash it (a tuple walks its elements, through shared references);
#: * hash: the hash it will have, when known here (numbers, strings, tuples of them);
#: * text: the string it is, for STACK_GLOBAL.
_Item = tuple[int, int, int, int | None, str | None]
_DEPTH: Final = 0
_IDENT: Final = 1
_COST: Final = 2
_HASH: Final = 3
_TEXT: Final = 4


class _HashOf:
    """Hashes as the object it stands for: a tuple (or frozenset) of these hashes exactly as
    the real one, which only combines its elements' hashes."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    def __hash__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _HashOf) and other.value == self.value


@dataclass(frozen=True, slots=True)
class PickleCost:
    """What the pass measured: the pickle's length and the steps it charged."""

    size: int
    work: int


class _Containers:
    """Per dict and set the pickle fills: how many keys it holds, and how many of them share
    each hash. A key whose hash others in the same container share costs a probe past each
    of them (numbers that differ by ``2**61 - 1`` hash alike; strings use the per-process
    seed and cannot be made to). Kept only for containers that get keys."""

    def __init__(self) -> None:
        self.lengths: dict[int, int] = {}
        self._hashes: dict[int, dict[int, int]] = {}

    def insert(self, container: int, keys: list[_Item]) -> int:
        """Charge hashing ``keys`` into ``container``: each key's own cost plus a probe past
        every key already there with the same hash."""
        self.lengths[container] = self.lengths.get(container, 0) + len(keys)
        spent = 0
        seen = self._hashes.setdefault(container, {})
        for key in keys:
            spent += key[_COST]
            digest = key[_HASH]
            if digest is not None:
                shared = seen.get(digest, 0)
                seen[digest] = shared + 1
                spent += shared
        return min(_COST_CAP, spent)


@functools.cache
def _shape(opcode: pickletools.OpcodeInfo) -> tuple[int, int, int]:
    """(items popped below the mark or -1 without one, items popped without a mark, items
    pushed) for ``opcode``."""
    before = [s.name for s in opcode.stack_before]
    if "mark" in before:
        return before.index("mark"), 0, len(opcode.stack_after)
    return -1, len(before), len(opcode.stack_after)


class PickleStream(Protocol):
    """A binary file-like object: ``pickletools.genops`` only calls ``read`` and ``readline``
    on it (and ``tell`` when there is one)."""

    def read(self, n: int, /) -> bytes: ...
    def readline(self) -> bytes: ...


def guard_pickle(source: bytes | IO[bytes] | PickleStream, is_dangerous: Callable[[str, str], bool],
                 max_depth: int = MAX_DEPTH) -> PickleCost:
    """Raise ``CorruptCheckpointError``/``UnsafePickleError`` for a pickle that must not be
    loaded, ``BudgetExceededError`` for one that would cost more work than its size allows.
    Reads exactly one pickle (up to STOP) from ``source``; returns its length and the work
    charged, which the unpickler's own charges continue.

    Globals named by GLOBAL/INST, or by STACK_GLOBAL from plain string pushes, are checked
    with ``is_dangerous`` here, so they are named even when the pickle breaks later on.
    """
    stack: list[_Item] = []
    marks: list[int] = []
    memo: dict[int, _Item] = {}
    dangerous: list[str] = []
    containers = _Containers()
    idents = itertools.count()
    count = work = 0
    first: int | None = None
    size = 0
    limit = pickle_work_limit(0)
    frame_end: int | None = None
    previous = -1
    try:
        # typeshed types genops' argument as IO[bytes]; it only needs a PickleStream.
        for opcode, arg, pos in pickletools.genops(source):  # type: ignore[arg-type]
            count += 1
            work += 1
            name = opcode.name
            if pos is not None:
                frame_end = _check_framing(name, arg, pos, previous, frame_end)
                previous = pos
                first = pos if first is None else first
                size = pos - first + 1
            else:
                size = count
            if name in _LITERALS:  # the commonest opcodes: pushed here, without _apply
                cost = 1 + arg.bit_length() // 64 if isinstance(arg, int) else 1
                stack.append((0, next(idents), cost, hash(arg),  # numbers, str, bytes
                              arg if name in _STRINGS and isinstance(arg, str) else None))
                continue
            if name in ("EXT1", "EXT2", "EXT4"):
                named = copyreg._inverted_registry.get(arg)  # type: ignore[attr-defined]
                if named is None:
                    raise CorruptCheckpointError(f"pickle uses unregistered extension code {arg}")
                raise UnsafePickleError([".".join(named)])  # never resolved through the cache
            if name in ("NEXT_BUFFER", "READONLY_BUFFER"):
                raise CorruptCheckpointError("pickle uses out-of-band buffers")
            if name in ("GLOBAL", "INST") and isinstance(arg, str):
                module, _, attr = arg.partition(" ")
                if is_dangerous(module, attr):
                    dangerous.append(_python3_name(module, attr))
            if name == "STACK_GLOBAL" and len(stack) >= 2:
                module_name, attr_name = stack[-2][_TEXT], stack[-1][_TEXT]
                if module_name is not None and attr_name is not None and is_dangerous(module_name, attr_name):
                    dangerous.append(_python3_name(module_name, attr_name))
            if name == "MARK":
                marks.append(len(stack))
                continue
            if name in _GETS:
                found = memo.get(arg) if isinstance(arg, int) else None
                stack.append(found if found is not None else (0, next(idents), 1, None, None))
                continue
            if name in _PUTS or name == "MEMOIZE":
                index = len(memo) if name == "MEMOIZE" else arg
                if not isinstance(index, int) or index > max(count, 1 << 16):
                    raise CorruptCheckpointError("pickle memo index out of range")
                if stack:
                    memo[index] = stack[-1]
                continue
            if name == "DUP":
                stack.append(_pop(stack))
                stack.append(stack[-1])
                continue
            item, spent = _apply(opcode, name, arg, stack, marks, containers, idents)
            work += spent
            if work > limit:
                limit = pickle_work_limit(size)
                if work > limit:
                    raise pickle_work_exceeded(size)
            if item is not None and item[_DEPTH] > max_depth:
                raise CorruptCheckpointError(f"pickle nests deeper than {max_depth} levels")
        if work > pickle_work_limit(size):  # literals are not checked one by one
            raise pickle_work_exceeded(size)
    except (UnsafePickleError, CorruptCheckpointError, AmbiguousCheckpointError) as exc:
        if dangerous and not isinstance(exc, UnsafePickleError):
            raise UnsafePickleError(dangerous) from exc
        raise
    except (ValueError, IndexError, EOFError, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        if dangerous:
            raise UnsafePickleError(dangerous) from exc
        raise CorruptCheckpointError(f"unreadable pickle ({exc})") from exc
    if dangerous:
        raise UnsafePickleError(dangerous)
    return PickleCost(size, work)


def _check_framing(name: str, arg: object, pos: int, previous: int,
                   frame_end: int | None) -> int | None:
    """The end of the current frame after the opcode at ``pos``; refuses frames that overlap,
    that an opcode straddles, or that run past STOP (see the module docstring)."""
    if frame_end is not None and previous < frame_end < pos:
        raise AmbiguousCheckpointError("an opcode straddles a pickle frame boundary")
    if name == "FRAME" and isinstance(arg, int):
        if frame_end is not None and pos < frame_end:
            raise AmbiguousCheckpointError("a pickle frame starts inside another one")
        return pos + 9 + arg  # FRAME opcode + 8-byte length, then the frame's bytes
    if name == "STOP" and frame_end is not None and frame_end > pos + 1:
        raise AmbiguousCheckpointError("a pickle frame runs past its STOP")
    return frame_end


def _python3_name(module: str, name: str) -> str:
    """``__builtin__ eval`` is reported as ``builtins.eval``: the name a reader knows."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def _apply(opcode: pickletools.OpcodeInfo, name: str, arg: object, stack: list[_Item],
           marks: list[int], containers: _Containers,
           idents: Iterator[int]) -> tuple[_Item | None, int]:
    """Pop what ``opcode`` consumes, push what it produces; (the item pushed, extra work)."""
    below_mark, plain, pushed = _shape(opcode)
    if below_mark >= 0:
        if not marks:
            raise CorruptCheckpointError("pickle pops a mark it never set")
        start = marks.pop()
        popped = stack[start:]
        del stack[start:]
        if below_mark:
            below = [_pop(stack) for _ in range(below_mark)]
            below.reverse()  # bottom first
            popped = below + popped
    elif plain:
        if len(stack) < plain:
            raise CorruptCheckpointError("pickle pops from an empty stack")
        popped = stack[-plain:]
        del stack[-plain:]
    else:
        popped = []
    if not pushed:
        return None, 0
    spent = 0
    if name in _CONTAINER_UPDATES and popped:
        container, items = popped[0], popped[1:]
        depth = container[_DEPTH]
        for i in items:
            if i[_DEPTH] >= depth:
                depth = i[_DEPTH] + 1
        if name in ("SETITEM", "SETITEMS"):
            spent = containers.insert(container[_IDENT], items[0::2])
        elif name == "ADDITEMS":
            spent = containers.insert(container[_IDENT], items)
        item = (depth, container[_IDENT], container[_COST], container[_HASH], container[_TEXT])
    else:
        depth = 0
        for i in popped:
            if i[_DEPTH] >= depth:
                depth = i[_DEPTH] + 1
        item = _produce(name, depth, popped, next(idents))
        if name == "DICT":
            spent = containers.insert(item[_IDENT], popped[0::2])
        elif name == "FROZENSET":
            spent = containers.insert(item[_IDENT], popped)
        elif name in _CALLS:
            # The callable gets its arguments unpacked (copied) and may walk them; NEWOBJ_EX
            # copies its keyword dict too.
            spent = _total_cost(popped[1:])
            if name == "NEWOBJ_EX":
                spent += containers.lengths.get(popped[-1][_IDENT], 0)
    stack.append(item)
    return item, spent


def _produce(name: str, depth: int, popped: list[_Item], ident: int) -> _Item:
    """The item a (non-updating, non-literal) opcode pushes."""
    if name in _CONSTANTS:
        return depth, ident, 1, hash(_CONSTANTS[name]), None
    if name in _TUPLES:
        hashes = [i[_HASH] for i in popped]
        digest = None if None in hashes else hash(tuple(_HashOf(h) for h in hashes if h is not None))
        return depth, ident, min(_COST_CAP, 1 + _total_cost(popped)), digest, None
    if name == "FROZENSET":
        hashes = [i[_HASH] for i in popped]
        digest = None if None in hashes else hash(frozenset(_HashOf(h) for h in hashes if h is not None))
        return depth, ident, 1, digest, None
    if name in _CALLS:  # torch.Size, complex, numpy scalars hash by content: cost it so
        return depth, ident, min(_COST_CAP, 1 + _total_cost(popped[1:])), None, None
    return depth, ident, 1, None, None


def _total_cost(items: list[_Item]) -> int:
    total = 0
    for item in items:
        total += item[_COST]
    return min(_COST_CAP, total)


def _pop(stack: list[_Item]) -> _Item:
    if not stack:
        raise CorruptCheckpointError("pickle pops from an empty stack")
    return stack.pop()
