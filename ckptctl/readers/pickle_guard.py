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
  frame running past STOP hides a second pickle only one of them reads.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import pickletools
from collections.abc import Callable
from typing import IO, Protocol

from ..errors import AmbiguousCheckpointError, CorruptCheckpointError, UnsafePickleError

MAX_DEPTH = 1000
_CONTAINER_UPDATES = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_STRINGS = frozenset({"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "STRING",
                      "BINSTRING", "SHORT_BINSTRING"})


class PickleStream(Protocol):
    """A binary file-like object: ``pickletools.genops`` only calls ``read`` and ``readline``
    on it (and ``tell`` when there is one)."""

    def read(self, n: int, /) -> bytes: ...
    def readline(self) -> bytes: ...


def guard_pickle(source: bytes | IO[bytes] | PickleStream, is_dangerous: Callable[[str, str], bool],
                 max_depth: int = MAX_DEPTH) -> None:
    """Raise ``CorruptCheckpointError``/``UnsafePickleError`` for a pickle that must not be
    loaded. Reads exactly one pickle (up to STOP) from ``source``.

    Globals named by GLOBAL/INST, or by STACK_GLOBAL from plain string pushes, are checked
    with ``is_dangerous`` here, so they are named even when the pickle breaks later on.
    """
    stack: list[int] = []  # nesting depth of each item on the simulated stack
    strings: list[str | None] = []  # the string each stack item is, when it is one
    marks: list[int] = []
    memo: dict[int, tuple[int, str | None]] = {}
    dangerous: list[str] = []
    count = 0
    frame_end: int | None = None
    previous = -1
    try:
        # typeshed types genops' argument as IO[bytes]; it only needs a PickleStream.
        for opcode, arg, pos in pickletools.genops(source):  # type: ignore[arg-type]
            count += 1
            name = opcode.name
            if pos is not None:
                frame_end = _check_framing(name, arg, pos, previous, frame_end)
                previous = pos
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
            if name == "STACK_GLOBAL" and len(strings) >= 2:
                module_name, attr_name = strings[-2], strings[-1]
                if module_name is not None and attr_name is not None and is_dangerous(module_name, attr_name):
                    dangerous.append(_python3_name(module_name, attr_name))
            if name == "MARK":
                marks.append(len(stack))
                continue
            if name in _GETS:
                depth, text = memo.get(arg, (0, None)) if isinstance(arg, int) else (0, None)
                stack.append(depth)
                strings.append(text)
                continue
            if name in _PUTS or name == "MEMOIZE":
                index = len(memo) if name == "MEMOIZE" else arg
                if not isinstance(index, int) or index > max(count, 1 << 16):
                    raise CorruptCheckpointError("pickle memo index out of range")
                if stack:
                    memo[index] = (stack[-1], strings[-1])
                continue
            depth = _apply(opcode, stack, marks, name)
            del strings[len(stack) - len(opcode.stack_after):]
            while len(strings) < len(stack):
                strings.append(arg if name in _STRINGS and isinstance(arg, str) else None)
            if depth > max_depth:
                raise CorruptCheckpointError(f"pickle nests deeper than {max_depth} levels")
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


def _apply(opcode: pickletools.OpcodeInfo, stack: list[int], marks: list[int], name: str) -> int:
    before = [s.name for s in opcode.stack_before]
    if "mark" in before:
        if not marks:
            raise CorruptCheckpointError("pickle pops a mark it never set")
        start = marks.pop()
        sliced = stack[start:]
        del stack[start:]
        below = [_pop(stack) for _ in range(before.index("mark"))]
        popped = below + sliced
        container = below[0] if below else None
    else:
        popped = [_pop(stack) for _ in before]
        popped.reverse()  # bottom first
        container = popped[0] if popped else None
    if name in _CONTAINER_UPDATES and container is not None:
        items = popped[1:]
        depth = max(container, max(items, default=-1) + 1)
    else:
        depth = max(popped, default=-1) + 1
    for _ in opcode.stack_after:
        stack.append(depth)
    return depth


def _pop(stack: list[int]) -> int:
    if not stack:
        raise CorruptCheckpointError("pickle pops from an empty stack")
    return stack.pop()
