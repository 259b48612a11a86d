"""How much work, memory and output one input may cost: in proportion to its size, with a
generous floor, so a real checkpoint of any size converts unchanged while a few hostile
bytes cannot expand without bound.

A checkpoint is a small description of something larger: pickle memo references name one
object many times, a tensor view with zero strides is bigger than its storage, deflate
expands, shared sub-trees expand when walked as trees. Each such expansion is charged here
or next to where it happens, and exceeding its budget is one ``BudgetExceededError``
(``refused: <what> exceeds <budget>``, kind ``budget``), never a hang, a ``MemoryError``, a
``RecursionError`` or an internal error.

=========================  ==============================================  =================
what                       limit                                           where
=========================  ==============================================  =================
unpickling work            ``max(64 Mi, 16 x pickle bytes)`` steps          ``readers.pickle_guard``,
                                                                           ``readers.unpickler``
metadata from a pickle     50,000 values and 1 MiB of text per checkpoint  ``formats.pytorch.metadata``
weights written            ``max(64 MiB, 16 x source bytes)``              ``layouts`` (writers)
``.keras`` JSON members    16 MiB, and 100x their compressed size          ``read_json_member``
                           (past 1 MiB); nesting Python's parser reads
=========================  ==============================================  =================

Why these numbers:

* **Unpickling**: one step is an opcode, a byte copied or 8 per element built by an allowed
  constructor (``bytes``, ``set``, numpy arrays …), a tuple element hashed, or a probe past
  a colliding dict key. Real checkpoint pickles cost 0.2 to 0.7 steps per byte (the example
  and demo trees); the costliest ordinary content, a protocol-2 ``set`` or ``frozenset``
  of small integers, about 3. So 16 per byte leaves a wide margin, and the floor lets any small pickle
  through, while 64 Mi steps stay around a second of CPU and a few hundred MiB.
* **Metadata**: hyper-parameters become YAML in a sidecar that every command reads back
  under a 4 MiB cap (``yamlio.MAX_YAML_BYTES``). Containers are already cut at 200 items and
  12 levels; shared references can still expand that tree exponentially, so values are
  counted. Real hyper-parameters hold hundreds to a few thousand values.
* **Weights written**: a state dict is at most its file (views and ties write each stored
  byte about once); the ratio matches ``readers.h5safe.INFLATE_RATIO`` (a compressed HDF5
  source may inflate 16x), and the floor lets small files hold broadcast buffers
  (``expand``ed masks) of up to 64 MiB. A 751-byte file can no longer write 2 GB.
* **``.keras`` JSON**: Keras' own ``config.json`` of a 1,000-layer model is a few MiB and
  compresses about 10-30x; a member that claims more than 16 MiB, or inflates more than
  100x past 1 MiB, is a decompression bomb and is refused before it is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BudgetExceededError, CorruptCheckpointError

if TYPE_CHECKING:
    import zipfile

# --- unpickling ------------------------------------------------------------------------------

#: Work steps a pickle may cost per byte of it ...
PICKLE_WORK_PER_BYTE = 16
#: ... or this many, whichever is larger.
PICKLE_WORK_FLOOR = 64 << 20


def pickle_work_limit(pickle_bytes: int) -> int:
    """The work steps a pickle of ``pickle_bytes`` may cost (guard and unpickler together)."""
    return max(PICKLE_WORK_FLOOR, PICKLE_WORK_PER_BYTE * pickle_bytes)


def pickle_work_exceeded(pickle_bytes: int) -> BudgetExceededError:
    limit = pickle_work_limit(pickle_bytes)
    return BudgetExceededError(
        "unpickling",
        f"its work budget of {count_text(limit)} steps ({PICKLE_WORK_PER_BYTE} per byte of a "
        f"{size_text(pickle_bytes)} pickle, at least {count_text(PICKLE_WORK_FLOOR)}): the "
        "pickle repeats or nests references far beyond its size")


# --- metadata converted from a pickle --------------------------------------------------------

#: Values (containers and scalars) one checkpoint's metadata may expand to ...
PLAIN_MAX_NODES = 50_000
#: ... and characters of text.
PLAIN_MAX_TEXT = 1 << 20


# --- weights written ---------------------------------------------------------------------------

#: Bytes of weights one checkpoint may write: this many times its source files ...
OUTPUT_RATIO = 16
#: ... or this much, whichever is larger.
OUTPUT_FLOOR = 64 << 20


@dataclass
class OutputBudget:
    """Bytes of tensors one conversion may still write (see the module doc)."""

    source_bytes: int
    written: int = 0

    @property
    def limit(self) -> int:
        return max(OUTPUT_FLOOR, OUTPUT_RATIO * self.source_bytes)

    def spend(self, nbytes: int, what: str) -> None:
        """Charge ``nbytes`` about to be materialized and written for ``what``."""
        if self.written + nbytes > self.limit:
            raise BudgetExceededError(
                f"writing {what} ({size_text(nbytes)}; {size_text(self.written + nbytes)} in all)",
                f"the output budget of {size_text(self.limit)} ({OUTPUT_RATIO}x the "
                f"{size_text(self.source_bytes)} the source stores on disk, at least "
                f"{size_text(OUTPUT_FLOOR)})")
        self.written += nbytes


_OUTPUT: ContextVar[OutputBudget | None] = ContextVar("ckptctl_output_budget", default=None)


@contextmanager
def output_budget(source_bytes: int) -> Iterator[OutputBudget]:
    """Within this block, weights writers may write ``max(OUTPUT_FLOOR, OUTPUT_RATIO x
    source_bytes)`` bytes of tensors in all (``convert`` sets it per checkpoint)."""
    budget = OutputBudget(source_bytes)
    token = _OUTPUT.set(budget)
    try:
        yield budget
    finally:
        _OUTPUT.reset(token)


#: What every tensor written costs besides its bytes (an HDF5 dataset's headers and the
#: time to create it, ~0.5 ms): 100,000 empty tensors in a 6 MB header must not take minutes.
#: Real models have at most tens of thousands of tensors, far inside the 64 MiB floor.
OUTPUT_PER_TENSOR = 4096


def spend_output(nbytes: int, what: str) -> None:
    """Charge a tensor to the current output budget, before it is read (no budget: free)."""
    budget = _OUTPUT.get()
    if budget is not None:
        budget.spend(nbytes, what)


# --- JSON inside zip archives ------------------------------------------------------------------

#: A JSON member of a ``.keras`` archive larger than this is not Keras' ...
JSON_MEMBER_MAX = 16 << 20
#: ... nor one that inflates more than this many times its compressed size ...
ZIP_INFLATE_RATIO = 100
#: ... once larger than this (tiny members may compress at any ratio).
ZIP_INFLATE_FLOOR = 1 << 20


def read_json_member(archive: zipfile.ZipFile, name: str) -> Any:
    """Member ``name`` of ``archive`` parsed as JSON, within the budgets above: its declared
    size and compression ratio are checked before anything is inflated, no more than the
    declared size is read, and nesting deeper than Python's parser goes is refused."""
    info = archive.getinfo(name)
    if info.file_size > JSON_MEMBER_MAX:
        raise BudgetExceededError(f"{name} of {size_text(info.file_size)}",
                                  f"the {size_text(JSON_MEMBER_MAX)} limit for a JSON member")
    if info.compress_type != 0 and info.file_size > max(  # 0: zipfile.ZIP_STORED
            ZIP_INFLATE_FLOOR, ZIP_INFLATE_RATIO * info.compress_size):
        raise BudgetExceededError(
            f"{name}, inflating from {size_text(info.compress_size)} to "
            f"{size_text(info.file_size)},",
            f"the {ZIP_INFLATE_RATIO}x compression-ratio limit (a decompression bomb?)")
    with archive.open(info) as member:
        data = member.read(info.file_size + 1)  # zipfile stops at the declared size
    if len(data) != info.file_size:
        raise CorruptCheckpointError(f"{name} holds {len(data)} bytes, not the {info.file_size} "
                                     "its zip entry declares")
    return loads_json(data, name)


def loads_json(data: bytes | str, what: str) -> Any:
    """``json.loads``, with nesting too deep for Python's parser refused in one line.

    The C parser counts its own recursion and raises ``RecursionError`` near
    ``sys.getrecursionlimit()`` levels (``[`` x 100000 included), before the C stack is at
    risk; what it returns nests less than that, and callers bound what they walk."""
    try:
        return json.loads(data)
    except RecursionError:
        raise BudgetExceededError(f"the nesting of {what}",
                                  "the depth Python's JSON parser reads") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise CorruptCheckpointError(f"{what} is not valid JSON ({str(exc)[:120]})") from None


# --- nesting of text formats -------------------------------------------------------------------

#: YAML/JSON flow collections (``[``, ``{``) nested deeper than this are refused unread:
#: libyaml's C composer recurses per level and crashes the process (a segmentation fault,
#: not an exception) somewhere past 20,000 levels; nothing real nests past a few dozen.
MAX_FLOW_NESTING = 1000


def flow_nesting_exceeds(data: bytes, limit: int = MAX_FLOW_NESTING) -> bool:
    """True when ``data``'s brackets could nest deeper than ``limit``. Brackets inside
    quoted strings count too (conservative: only an unbalanced run of them in a string could
    be refused), so the check is a count, then one vectorized pass: no parser involved."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    import numpy as np

    raw = np.frombuffer(data, dtype=np.uint8)
    steps = ((raw == 0x5B) | (raw == 0x7B)).astype(np.int32) - ((raw == 0x5D) | (raw == 0x7D))
    return int(np.cumsum(steps).max()) > limit


# --- wording -------------------------------------------------------------------------------------


def size_text(nbytes: int) -> str:
    """``2.5 KiB``; bytes below 1 KiB as ``751 bytes``."""
    value = float(nbytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def count_text(count: int) -> str:
    """``64 Mi`` for exact binary multiples, else the number with thousands separators."""
    for shift, unit in ((30, "Gi"), (20, "Mi")):
        if count >= 1 << shift and count % (1 << shift) == 0:
            return f"{count >> shift} {unit}"
    return f"{count:,}"
