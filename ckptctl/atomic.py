"""Writing files so that a reader sees the old version or the new one, never half of either:
a hidden temporary sibling, fsync, rename, fsync of the folder."""

from __future__ import annotations

import os
from pathlib import Path

from .walk import SIDECAR_SUFFIX, TEMP_MARKER, WEIGHTS_SUFFIX

#: compound suffixes a temporary keeps (Keras refuses a weights file named otherwise)
_KEPT_SUFFIXES = (WEIGHTS_SUFFIX, SIDECAR_SUFFIX, ".safetensors")


def temp_path_for(path: Path) -> Path:
    """A hidden sibling every command ignores: ``.<stem>.ckptctl-tmp-<pid>-<random><suffix>``."""
    name = path.name
    suffix = next((s for s in _KEPT_SUFFIXES if name.endswith(s)), "")
    stem = name[: len(name) - len(suffix)] if suffix else name
    return path.with_name(f"{temp_prefix(stem)}{os.getpid()}-{os.urandom(4).hex()}{suffix}")


def temp_prefix(stem: str) -> str:
    """What every temporary of the outputs named ``stem`` starts with."""
    return f".{stem}{TEMP_MARKER}-"


#: folders whose last renames are not yet fsynced (``write_atomic(..., sync_folder=False)``)
_UNSYNCED: set[Path] = set()


def write_atomic(path: Path, data: bytes, sync_folder: bool = True) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file and a rename. With
    ``sync_folder=False`` the folder's fsync (which makes the rename itself survive a power
    loss) is left to ``sync_folders``, once for many files."""
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_dir(path.parent)
    else:
        _UNSYNCED.add(path.parent)


def sync_folders() -> None:
    """fsync every folder ``write_atomic(..., sync_folder=False)`` left unsynced."""
    while _UNSYNCED:
        fsync_dir(_UNSYNCED.pop())


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LockBusy(Exception):
    """Another process holds the lock."""


class CheckpointLock:
    """An exclusive, non-blocking ``flock`` on a per-checkpoint lock file that does not stay
    behind: released by unlinking the file *while still holding it*, then closing it.

    Why that is race-free: a contender may have opened the file before it was unlinked and
    win its ``flock`` after; it then holds a lock on an inode that no longer has the name.
    So after every successful ``flock`` the locked descriptor is compared with what the path
    names now (``fstat`` vs ``stat``: device and inode); when they differ (or the path is
    gone) the contender closes it and starts over with a fresh ``open(O_CREAT)``. Only a
    holder ever unlinks the path, and only while holding it, so at most one process holds a
    lock on the inode the path names. The kernel releases the lock when its holder dies
    (the file then stays behind, empty; the next holder removes it when it is done).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``LockBusy`` at once; ``OSError`` when it cannot be made."""
        import fcntl

        flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | \
            getattr(os, "O_CLOEXEC", 0)
        for _ in range(1000):  # each retry means another holder released it just now
            fd = os.open(self.path, flags, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockBusy(str(self.path)) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                held, named = os.fstat(fd), os.stat(self.path, follow_symlinks=False)
                same = (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
            except FileNotFoundError:
                same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                self._fd = fd
                return
            os.close(fd)  # locked an unlinked inode: the path names another one now
        raise LockBusy(str(self.path))

    def release(self) -> None:
        """Remove the lock file, then unlock (closing the descriptor unlocks it)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def __enter__(self) -> CheckpointLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
