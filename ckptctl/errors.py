"""Error types. Every expected failure is a ``CkptError`` carrying one readable line and a
``kind`` (machine-readable, stable: JSON outputs and tests use it, never the wording)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

#: Why something failed. Stable identifiers: documented in the README, exposed in JSON.
ErrorKind = Literal[
    "unsafe",          # the pickle would run code: refused, nothing executed
    "ambiguous",       # torch.load could read different bytes than ckptctl: refused
    "budget",          # reading it would take more work, memory or output than its size allows
    "corrupt",         # broken bytes: truncated, bad records, damaged archive
    "unsupported",     # well-formed, but nothing ckptctl can convert (yet)
    "unrecognised",    # named like a checkpoint, but no known format
    "conflict",        # two sources would write the same outputs, or a foreign file is in the way
    "mismatch",        # the weights do not match --keras-model
    "changed",         # the source changed while it was being read
    "verify",          # written weights read back differently
    "os",              # the operating system refused (space, permissions, missing file)
    "busy",            # another ckptctl process holds the checkpoint's lock
    "usage",           # a bad option value
    "sidecar",         # a sidecar cannot be read or does not match the schema
    "newer-schema",    # a sidecar written by a newer ckptctl
    "missing",         # a file a sidecar names is missing
    "stale",           # a file differs from what its sidecar records
    "not-converted",   # a checkpoint without a sidecar (validate --strict)
    "crashed",         # the worker process converting it died (killed, out of memory)
    "internal",        # a bug in ckptctl: please report it
]


class CkptError(Exception):
    """An expected failure about one file: reported as one line, never as a traceback.

    Each subclass names its ``kind``: ``class ReadError(CkptError, kind="os")``."""

    kind: ClassVar[ErrorKind] = "corrupt"

    def __init_subclass__(cls, kind: ErrorKind | None = None, **rest: object) -> None:
        super().__init_subclass__(**rest)
        if kind is not None:
            cls.kind = kind

    def __init__(self, message: str, path: object | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path is not None else self.message


def describe_error(exc: CkptError, source: object) -> str:
    """The reason, naming the damaged file when it is not the checkpoint itself (a shard)."""
    if exc.path is not None and str(exc.path) != str(source):
        return f"{Path(str(exc.path)).name}: {exc.message}"
    return exc.message


def kind_of(exc: BaseException) -> ErrorKind:
    """The kind of any exception met while handling one file."""
    if isinstance(exc, CkptError):
        return exc.kind
    if isinstance(exc, OSError):
        return "os"
    return "internal"


class UnsafePickleError(CkptError, kind="unsafe"):
    """The pickle references callables that could run code; it is refused, never executed."""

    def __init__(self, globals_found: list[str], path: object | None = None) -> None:
        self.globals_found = sorted(set(globals_found))
        super().__init__(
            "refused: the pickle references dangerous callables "
            + ", ".join(self.globals_found)
            + " (nothing was executed)",
            path,
        )


class AmbiguousCheckpointError(CkptError, kind="ambiguous"):
    """Readers could disagree about the bytes (torch.load might unpickle something ckptctl
    never saw): refused rather than vouched for."""

    def __init__(self, why: str, path: object | None = None) -> None:
        super().__init__(f"refused as ambiguous: {why} (torch.load could read other bytes "
                         "than ckptctl checked; nothing was executed)", path)
        self.why = why


class BudgetExceededError(CkptError, kind="budget"):
    """Reading the input would take more work, memory or output than its size allows (a
    bomb: few bytes that expand without bound). Refused in one line: ``refused: <what>
    exceeds <budget>``; nothing was expanded past the budget. See ``ckptctl.budgets``."""

    def __init__(self, what: str, budget: str, path: object | None = None) -> None:
        super().__init__(f"refused: {what} exceeds {budget}", path)
        self.what = what
        self.budget = budget


# The file looks like a checkpoint but its bytes are broken (truncated, bad records).
class CorruptCheckpointError(CkptError, kind="corrupt"): ...
# The file is well-formed but holds something ckptctl cannot convert (yet).
class UnsupportedCheckpointError(CkptError, kind="unsupported"): ...
# The operating system refused to read a file (permissions, vanished, I/O error).
class ReadError(CkptError, kind="os"): ...
# Two sources would write the same output files, or a foreign file is in the way.
class OutputConflictError(CkptError, kind="conflict"): ...
# Converted weights do not line up with the model --keras-model builds.
class KerasModelMismatchError(CkptError, kind="mismatch"): ...
# The source changed while it was being converted.
class SourceChangedError(CkptError, kind="changed"): ...
# Weights just written read back differently from what was meant to be written.
class VerificationError(CkptError, kind="verify"): ...
# An option value that cannot work (a malformed spec, an unknown sort key).
class UsageError(CkptError, kind="usage"): ...
# A sidecar cannot be read or does not match the schema.
class SidecarError(CkptError, kind="sidecar"): ...


class NewerSidecarError(SidecarError, kind="newer-schema"):
    """A sidecar written by a newer ckptctl than this one: never misread or overwritten."""

    def __init__(self, found: str, supported: str, path: object | None = None) -> None:
        super().__init__(f"written by a newer ckptctl (sidecar schema {found}; this ckptctl "
                         f"reads up to {supported}): upgrade ckptctl", path)
        self.found = found
        self.supported = supported
