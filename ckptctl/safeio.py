"""Opening input files without ever blocking: only regular files are read.

A FIFO, socket or device named like a checkpoint, a shard, ``metrics.csv`` or a sidecar would
make a plain ``open()`` wait forever (a FIFO) or read without end (``/dev/zero``). Every
input ckptctl reads goes through ``open_regular``: the file is opened with ``O_NONBLOCK``
(which never blocks, whatever the file is) and ``fstat`` decides, on the very descriptor
that will be read, that it is a regular file; anything else is refused in one line.
"""

from __future__ import annotations

import errno
import os
import stat
from io import BufferedReader
from typing import IO, Any, Literal, TextIO, overload


@overload
def open_regular(path: str | os.PathLike[str], mode: Literal["rb"] = "rb") -> BufferedReader: ...
@overload
def open_regular(path: str | os.PathLike[str], mode: Literal["r"], **kwargs: Any) -> TextIO: ...
def open_regular(path: str | os.PathLike[str], mode: str = "rb", **kwargs: Any) -> IO[Any]:
    """``open(path, mode)`` for reading, refusing anything but a regular file (OSError)."""
    if mode not in ("rb", "r"):
        raise ValueError("open_regular is for reading")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            # An OSError like any other unreadable file (callers already handle those), with
            # an errno no caller maps to advice ("permission denied", "no space", …).
            raise OSError(errno.ENODEV, f"not a regular file ({_kind(info.st_mode)})", str(path))
        os.set_blocking(fd, True)
        return open(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def is_regular(path: str | os.PathLike[str]) -> bool:
    """A regular file, following symlinks (never opens it)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"
