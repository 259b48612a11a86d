"""Error types. Every expected failure is a ``CkptError`` carrying one readable line."""

from __future__ import annotations


class CkptError(Exception):
    """An expected failure about one file: reported as one line, never as a traceback."""

    def __init__(self, message: str, path: object | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path is not None else self.message


def describe_error(exc: CkptError, source: object) -> str:
    """The reason, naming the damaged file when it is not the checkpoint itself (a shard)."""
    if exc.path is not None and str(exc.path) != str(source):
        from pathlib import Path

        return f"{Path(str(exc.path)).name}: {exc.message}"
    return exc.message


class UnsafePickleError(CkptError):
    """The pickle references callables that could run code; it is refused, never executed."""

    def __init__(self, globals_found: list[str], path: object | None = None) -> None:
        self.globals_found = sorted(set(globals_found))
        super().__init__(
            "refused: the pickle references dangerous callables "
            + ", ".join(self.globals_found)
            + " (nothing was executed)",
            path,
        )


class CorruptCheckpointError(CkptError):
    """The file looks like a checkpoint but its bytes are broken (truncated, bad records)."""


class UnsupportedCheckpointError(CkptError):
    """The file is well-formed but holds something ckptctl cannot convert (yet)."""


class OutputConflictError(CkptError):
    """Two sources would write the same output files."""


class SidecarError(CkptError):
    """A sidecar cannot be read or does not match the schema."""
