"""safetensors files (``save_file``, ``save_pretrained``): recognised by content, never run.

A safetensors file is a length-prefixed JSON header and raw little-endian tensor bytes
(``readers.safetensors_file`` checks the header as the safetensors library does). Its
tensors become the ``ckptctl-tensors`` layout, bit-exact, like a torch state dict's, so a
tree converts to one kind of weights file; the source is only read.

``SafetensorsTensors`` is shared with the sharded and Hugging Face Trainer formats
(``formats.huggingface``).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .. import __version__
from ..errors import CorruptCheckpointError, UnsupportedCheckpointError
from ..metadata import Gathered
from ..outputs import ckptctl_mark
from ..readers.safetensors_file import (
    MAGIC_LENGTH,
    MAX_HEADER_BYTES,
    SafetensorsHeader,
    TensorEntry,
    read_header,
)
from ..safeio import open_regular
from . import base

if TYPE_CHECKING:
    import numpy as np

    from ..layouts.ckptctl_tensors import TensorToWrite

SAFETENSORS_SUFFIX = ".safetensors"
#: ``__metadata__["format"]`` as ``transformers``/``safetensors`` write it -> framework
_FRAMEWORKS = {"pt": "pytorch", "tf": "tensorflow", "flax": "flax", "mlx": "mlx", "np": "numpy"}


def looks_like_safetensors(probe: base.Probe) -> bool:
    """The first bytes are a plausible header length followed by ``{`` (the header is
    checked in full by ``read_header`` when the file is opened)."""
    try:
        head = probe.head()
        size = os.stat(probe.path).st_size
    except OSError:
        return False
    if len(head) <= MAGIC_LENGTH:
        return False
    length = int.from_bytes(head[:MAGIC_LENGTH], "little")
    return 2 <= length <= min(MAX_HEADER_BYTES, size - MAGIC_LENGTH) and head[8:9] == b"{"


class SafetensorsTensors:
    """The tensors of one safetensors file, in file order, as ``TensorToWrite`` items: each
    read from its own byte range (memory-mapped; big ones a slice of rows at a time)."""

    def __init__(self, path: Path, header: SafetensorsHeader) -> None:
        self.path = path
        self.header = header

    def check_dtypes(self) -> None:
        bad = sorted({e.dtype for e in self.header.tensors.values() if e.torch_dtype is None})
        if bad:
            names = [e.name for e in self.header.tensors.values() if e.dtype in bad][:3]
            raise UnsupportedCheckpointError(
                f"tensors of dtype {', '.join(bad)} ({', '.join(map(repr, names))}...) have no "
                "bit-exact HDF5 storage in ckptctl yet", self.path)

    def items(self) -> list[TensorToWrite]:
        from ..layouts.ckptctl_tensors import TensorToWrite

        self.check_dtypes()
        return [TensorToWrite(name, entry.torch_dtype or "", entry.shape, None,
                              self._loader(entry), self._rows_loader(entry))
                for name, entry in self.header.tensors.items()]

    def _map(self, entry: TensorEntry, start: int, length: int) -> np.ndarray:
        """Bytes ``start:start + length`` of a tensor, mapped from the file (opened as a
        regular file, its size checked first: a file cut short since its header was read
        is an error, not a crash)."""
        import numpy as np

        if length == 0:
            return np.empty(0, dtype=np.uint8)
        try:
            with open_regular(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if entry.offset + start + length > size:
                    raise CorruptCheckpointError(
                        f"tensor {entry.name[:120]!r} lies beyond the end of the file (changed "
                        "or truncated since its header was read)", self.path)
                return np.memmap(handle, dtype=np.uint8, mode="r", offset=entry.offset + start,
                                 shape=(length,))
        except (OSError, ValueError) as exc:
            raise CorruptCheckpointError(f"cannot map tensor {entry.name[:120]!r} ({exc})",
                                         self.path) from None

    def _loader(self, entry: TensorEntry) -> Callable[[], Any]:
        def load() -> Any:
            from ..readers.tensor import STORAGE_NUMPY

            dtype = STORAGE_NUMPY[entry.torch_dtype or ""]
            return self._map(entry, 0, entry.nbytes).view(dtype).reshape(entry.shape)

        return load

    def _rows_loader(self, entry: TensorEntry) -> Callable[[int, int], Any] | None:
        if not entry.shape or entry.numel == 0:
            return None
        row_bytes = entry.nbytes // entry.shape[0]

        def load_rows(start: int, stop: int) -> Any:
            from ..readers.tensor import STORAGE_NUMPY

            dtype = STORAGE_NUMPY[entry.torch_dtype or ""]
            raw = self._map(entry, start * row_bytes, (stop - start) * row_bytes)
            return raw.view(dtype).reshape((stop - start, *entry.shape[1:]))

        return load_rows


def write_tensor_items(tmp: Path, items: list[TensorToWrite], source_format: str,
                       state_key: str | None = None, weights_format: str = "h5"
                       ) -> base.WrittenWeights:
    """``items`` into the ``ckptctl-tensors`` layout at ``tmp``, or with ``weights_format``
    "safetensors" into the ``ckptctl-safetensors`` one."""
    dtypes: dict[str, int] = defaultdict(int)
    for item in items:
        dtypes[item.dtype] += 1
    attrs = {"source_format": source_format, "writer": f"ckptctl {__version__}"}
    if weights_format == "safetensors":
        from ..layouts import safetensors_out

        summary = safetensors_out.write_safetensors(tmp, items, attrs)
        layout, version = safetensors_out.LAYOUT, safetensors_out.LAYOUT_VERSION
    else:
        from ..layouts.ckptctl_tensors import LAYOUT, LAYOUT_VERSION, write_tensors

        summary = write_tensors(tmp, items, attrs)
        layout, version = LAYOUT, LAYOUT_VERSION
    return base.WrittenWeights(layout, version, summary.tensor_count, summary.parameter_count,
                               dict(sorted(dtypes.items())), state_key, summary.checksums)


def torch_family_plan(write: Callable[[Path, str], base.WrittenWeights],
                      options: base.WeightsOptions) -> base.WeightsPlan:
    """The plan of a PyTorch-family source: ``write(tmp, weights_format)`` into
    ``<stem>.weights.h5`` or, with ``--weights-format safetensors``, ``<stem>.safetensors``."""
    fmt = options.weights_format
    return base.WeightsPlan(write=lambda tmp: write(tmp, fmt),
                            suffix=".safetensors" if fmt == "safetensors" else ".weights.h5")


def offer_header_metadata(header: SafetensorsHeader, g: Gathered, source: str) -> None:
    if g.get("training.framework") is None:  # "transformers" from config.json says more
        g.offer("training.framework", _FRAMEWORKS.get(header.metadata.get("format", "")), source)
    g.offer("contents.model_weights", True, source)


class Safetensors(base.SourceFormat):
    ids = ("safetensors",)
    promised_suffixes: ClassVar[tuple[str, ...]] = (SAFETENSORS_SUFFIX,)
    pytorch_family: ClassVar[bool] = True

    def sniff(self, probe: base.Probe) -> base.Sniffed:
        if looks_like_safetensors(probe):
            if ckptctl_mark(probe.path):
                return base.NOT_A_SOURCE  # convert --weights-format safetensors wrote it
            return base.FoundCheckpoint(probe.path, "safetensors")
        if probe.name.endswith(SAFETENSORS_SUFFIX) and probe.unreadable() is None and probe.head():
            return base.FoundCheckpoint(probe.path, "safetensors",
                                        "not a safetensors file (no valid header length)")
        return None

    def check_structure(self, path: Path) -> None:
        read_header(path)

    def open(self, path: Path, fmt: base.FormatId) -> base.OpenedSource:
        return OpenedSafetensors(path, read_header(path))


class OpenedSafetensors(base.OpenedSource):
    format: base.FormatId = "safetensors"

    def __init__(self, path: Path, header: SafetensorsHeader) -> None:
        self.path = path
        self.files = [path]
        self.tensors = SafetensorsTensors(path, header)

    def read_metadata(self, g: Gathered) -> None:
        from .huggingface import offer_hf_config

        offer_hf_config(self.path.parent, g)  # first: a transformers model names its framework
        offer_header_metadata(self.tensors.header, g, "safetensors header")

    def plan_weights(self, g: Gathered, options: base.WeightsOptions) -> base.WeightsPlan:
        self.tensors.check_dtypes()  # refused before anything is written
        if options.weights_format == "safetensors":
            # already the file asked for: described by the sidecar, never rewritten
            return base.WeightsPlan(native=self.path, describe_native=self._describe)
        return torch_family_plan(lambda tmp, fmt: write_tensor_items(
            tmp, self.tensors.items(), self.format, weights_format=fmt), options)

    def _describe(self) -> base.WrittenWeights:
        entries = list(self.tensors.header.tensors.values())
        dtypes: dict[str, int] = defaultdict(int)
        for entry in entries:
            dtypes[entry.torch_dtype or entry.dtype] += 1
        return base.WrittenWeights("safetensors", "-", len(entries),
                                   sum(e.numel for e in entries), dict(sorted(dtypes.items())))


SAFETENSORS = Safetensors()
