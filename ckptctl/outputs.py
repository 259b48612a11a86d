"""Where a checkpoint's outputs live: one rule for every command.

By default a checkpoint's ``<stem>.weights.h5``, ``<stem>.metadata.yaml`` and lock file
``.<stem>.ckptctl-lock`` sit next to it. With ``--output-dir OUT``, the tree below the
source root is mirrored under ``OUT`` (``SRC/exp/a.ckpt`` -> ``OUT/exp/a.metadata.yaml``),
for read-only or shared sources; sidecars then name their checkpoint by a relative path
back into ``SRC``. ``convert``, ``scan`` and ``validate`` all go through ``OutputLayout``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import temp_prefix
from .walk import LOCK_SUFFIX, SIDECAR_SUFFIX, WEIGHTS_SUFFIX

if TYPE_CHECKING:
    from .schema import Sidecar

#: suffixes cut from a source's name to form its stem (longest first where they overlap)
_STEM_SUFFIXES = (WEIGHTS_SUFFIX, ".safetensors.index.json", ".bin.index.json", ".ckpt", ".pt",
                  ".pth", ".bin", ".h5", ".hdf5", ".safetensors")


def stem_of(path: Path) -> str:
    """``best.ckpt`` -> ``best``; ``model.ckpt`` (a TF prefix) -> ``model``; ``x.weights.h5``
    -> ``x``; ``x.keras`` keeps its name (``x.keras.metadata.yaml``: no clash with ``x.weights.h5``)."""
    name = path.name
    for ext in _STEM_SUFFIXES:
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


@dataclass(frozen=True)
class CheckpointOutputs:
    weights: Path
    sidecar: Path
    lock: Path
    #: every temporary of this checkpoint starts with this name, in ``sidecar.parent``
    temp_prefix: str

    def weights_with(self, suffix: str) -> Path:
        """The weights file with another suffix (``<stem>.safetensors``)."""
        if suffix == WEIGHTS_SUFFIX:
            return self.weights
        return self.weights.with_name(self.weights.name[: -len(WEIGHTS_SUFFIX)] + suffix)

    def remove_stale_temporaries(self) -> None:
        """Temporaries left by a killed run. Call with the lock held: no live process can
        own one of them then."""
        try:
            entries = list(os.scandir(self.sidecar.parent))
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(self.temp_prefix):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


@dataclass(frozen=True)
class OutputLayout:
    """Outputs next to sources (``output_root`` None), or mirrored from ``source_root``
    into ``output_root``."""

    source_root: Path | None = None
    output_root: Path | None = None

    def __post_init__(self) -> None:
        if self.output_root is not None and self.source_root is None:
            raise ValueError("an output root needs the source root it mirrors")

    @classmethod
    def for_path(cls, given: Path, output_root: Path | None) -> OutputLayout:
        """The layout for a path the user named: a folder mirrors from itself, a file (or
        TF prefix) from its folder, as ``convert`` does."""
        if output_root is None:
            return cls()
        return cls(given if given.is_dir() else given.parent, output_root)

    def folder_for(self, source_folder: Path) -> Path:
        """Where outputs of sources in ``source_folder`` go."""
        if self.output_root is None or self.source_root is None:
            return source_folder
        return self.output_root / source_folder.relative_to(self.source_root)

    def outputs(self, source: Path) -> CheckpointOutputs:
        folder = self.folder_for(source.parent)
        stem = stem_of(source)
        return CheckpointOutputs(
            weights=folder / f"{stem}{WEIGHTS_SUFFIX}",
            sidecar=folder / f"{stem}{SIDECAR_SUFFIX}",
            lock=folder / f".{stem}{LOCK_SUFFIX}",
            temp_prefix=temp_prefix(stem),
        )

    def sidecar_roots(self, given: list[Path]) -> list[Path]:
        """Where to look for the sidecars of the sources below ``given``."""
        if self.output_root is None:
            return given
        roots = []
        for path in given:
            folder = path if path.is_dir() else path.parent
            mirrored = self.folder_for(folder)
            if mirrored.exists():
                roots.append(mirrored)
        return roots


def weights_problem(sidecar: Sidecar, folder: Path) -> str | None:
    """Why the weights a sidecar in ``folder`` names are not as it records them (missing, or
    another size), or None when they are (or it names none). Only ``stat``: the sha256 is
    ``validate --deep``'s. A path leaving the folder is not followed (``validate`` names it)."""
    named = sidecar.weights_path
    if named is None:
        return None
    if "\0" in named or os.path.isabs(named) or os.path.normpath(named).split(os.sep)[0] == "..":
        return "the sidecar names weights outside its folder (see ckptctl validate)"
    try:
        info = os.stat(folder / named)
    except FileNotFoundError:
        return "weights file missing"
    except OSError as exc:
        return f"weights file unreadable ({exc.strerror})"
    if sidecar.weights is not None and info.st_size != sidecar.weights.size_bytes:
        return "weights size differs from the sidecar"
    return None


def ckptctl_mark(path: Path) -> bool | None:
    """Whether ckptctl wrote the weights file ``path``, by the mark it leaves: the HDF5 root
    attributes of a ``.weights.h5``, the ``__metadata__`` of a ``.safetensors`` (nothing
    else of the file is read). None when the file does not read as its format at all (a
    damaged output of ours, or not one): convert, clean and discovery all ask this."""
    if path.name.endswith(".safetensors"):
        from .errors import CkptError
        from .layouts.safetensors_out import is_ckptctl_safetensors
        from .readers.safetensors_file import read_header

        try:
            return is_ckptctl_safetensors(read_header(path).metadata)
        except CkptError:
            return None
    from .readers.h5safe import H5_ERRORS, open_h5
    from .readers.keras_files import is_ckptctl_h5

    try:
        with open_h5(path) as f:  # root attributes only: nothing is resolved
            return is_ckptctl_h5(f.attrs)
    except H5_ERRORS:
        return None
