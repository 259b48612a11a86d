"""The ``ckptctl-safetensors`` layout: a PyTorch state dict as a standard safetensors file.

``convert --weights-format safetensors`` writes ``<stem>.safetensors`` instead of
``<stem>.weights.h5`` for PyTorch-family sources. The file is an ordinary safetensors file
(``safetensors.torch.load_file`` reads it), with:

* tensors in the source's order, contiguous, little-endian, bit-exact (bfloat16 and float8
  as the dtypes safetensors names them);
* tied tensors (one storage, one view) stored once; every other name of a tie is recorded
  in ``__metadata__`` as ``{alias: stored name}``, the convention of
  ``safetensors.torch.save_model`` (which ``transformers`` relies on), so ``load_model``
  and ``ckptctl.load_state_dict`` restore the tie; ``load_file`` returns the stored names;
* ``__metadata__`` also holds ``format: pt``, ``ckptctl.layout``, ``ckptctl.layout_version``,
  ``ckptctl.writer`` and ``ckptctl.source_format`` (how ckptctl recognises its own output
  and never takes it for a source);
* the header padded with spaces to a multiple of 8 bytes, as the safetensors library does.

Dtypes safetensors lacks (complex128, quantized) are refused with a one-line reason.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..budgets import OUTPUT_PER_TENSOR, spend_output
from ..errors import (
    CkptError,
    CorruptCheckpointError,
    UnsupportedCheckpointError,
    VerificationError,
)
from ..readers.safetensors_file import TORCH_DTYPE_NAMES
from .ckptctl_tensors import SLICED_FROM_BYTES, TensorToWrite, WriteSummary

if TYPE_CHECKING:
    import numpy as np

LAYOUT = "ckptctl-safetensors"
LAYOUT_VERSION = "1.0"
#: ckptctl's dtype names -> safetensors' (the reverse of the reader's table)
SAFETENSORS_DTYPES: dict[str, str] = {name: code for code, name in TORCH_DTYPE_NAMES.items()}
_RESERVED = frozenset({"format"})
_KEY_PREFIX = "ckptctl."


def is_ckptctl_safetensors(metadata: dict[str, str]) -> bool:
    return metadata.get(f"{_KEY_PREFIX}layout") == LAYOUT


def write_safetensors(dest: Path, tensors: Iterable[TensorToWrite],
                      attrs: dict[str, str]) -> WriteSummary:
    """Write ``tensors`` to ``dest`` (a new file); ``attrs`` (writer, source_format) go to
    ``__metadata__`` under ``ckptctl.``. Checksums are crc32 per stored tensor name."""
    from ..readers.tensor import STORAGE_NUMPY

    items = list(tensors)
    stored: list[TensorToWrite] = []
    aliases: dict[str, str] = {}
    first: dict[Hashable, str] = {}
    names: set[str] = set()
    for item in items:
        spend_output(OUTPUT_PER_TENSOR, f"tensor {item.name[:120]!r}")
        if item.name in names:
            raise UnsupportedCheckpointError(f"duplicate tensor name {item.name!r}")
        names.add(item.name)
        if item.dtype not in SAFETENSORS_DTYPES:
            raise UnsupportedCheckpointError(
                f"tensor {item.name[:120]!r} is {item.dtype}, which safetensors cannot store; "
                "convert without --weights-format safetensors")
        if item.tie_key is not None and item.tie_key in first:
            aliases[item.name] = first[item.tie_key]
            continue
        if item.tie_key is not None:
            first[item.tie_key] = item.name
        stored.append(item)
    metadata: dict[str, str] = {"format": "pt", f"{_KEY_PREFIX}layout": LAYOUT,
                                f"{_KEY_PREFIX}layout_version": LAYOUT_VERSION}
    metadata.update({f"{_KEY_PREFIX}{k}": v for k, v in attrs.items()})
    for alias, target in aliases.items():
        if alias in _RESERVED or alias.startswith(_KEY_PREFIX):
            raise UnsupportedCheckpointError(
                f"tied tensor name {alias[:120]!r} collides with a safetensors metadata key")
        metadata[alias] = target
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    sizes: list[int] = []
    for item in stored:
        nbytes = math.prod(item.shape) * STORAGE_NUMPY[item.dtype].itemsize
        header[item.name] = {"dtype": SAFETENSORS_DTYPES[item.dtype], "shape": list(item.shape),
                             "data_offsets": [offset, offset + nbytes]}
        sizes.append(nbytes)
        offset += nbytes
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    summary = WriteSummary(len(items), 0, 0, 0)
    with open(dest, "xb") as out:
        out.write(len(raw).to_bytes(8, "little"))
        out.write(raw)
        for item, nbytes in zip(stored, sizes, strict=True):
            spend_output(nbytes, f"tensor {item.name[:120]!r}")
            crc = _write_one(out, item, nbytes)
            summary.checksums[item.name] = crc
            summary.parameter_count += math.prod(item.shape)
            summary.stored_bytes += nbytes
            summary.largest_tensor_bytes = max(summary.largest_tensor_bytes, nbytes)
    return summary


def _write_one(out: Any, item: TensorToWrite, nbytes: int) -> int:
    """Write one tensor's bytes (a slice of rows at a time when big); their crc32."""
    import numpy as np

    from ..readers.tensor import STORAGE_NUMPY

    expected = STORAGE_NUMPY[item.dtype]
    if item.load_rows is not None and nbytes > SLICED_FROM_BYTES and item.shape[0] > 1:
        rows = item.shape[0]
        step = max(1, SLICED_FROM_BYTES // max(1, nbytes // rows))
        crc = 0
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            values = np.ascontiguousarray(item.load_rows(start, stop))
            _check(values, expected, (stop - start, *item.shape[1:]), item.name)
            data = values.view(np.uint8).reshape(-1).data
            out.write(data)
            crc = zlib.crc32(data, crc)
            del values, data
        return crc
    values = item.load()
    _check(values, expected, item.shape, item.name)
    values = np.ascontiguousarray(values)  # (a 0-d array becomes 1-d: the same bytes)
    if not values.size:
        return 0
    whole = values.view(np.uint8).reshape(-1).data
    out.write(whole)
    return zlib.crc32(whole)


def _check(values: np.ndarray, expected: np.dtype, shape: tuple[int, ...], name: str) -> None:
    if values.dtype != expected or values.shape != shape:
        raise VerificationError(f"tensor {name!r} read back as {values.dtype}{values.shape}")


_VERIFY_BYTES = 32 << 20


def verify_safetensors(path: Path, checksums: dict[str, int]) -> None:
    """Parse the written file as any safetensors input is parsed, then read every stored
    tensor back (in bounded slices) and compare its crc32 with what was written."""
    from ..readers.safetensors_file import read_header
    from ..safeio import open_regular

    try:
        header = read_header(path)
        if set(header.tensors) != set(checksums):
            raise VerificationError("verification failed: the written header lists other tensors")
        with open_regular(path, "rb") as handle:
            for name, expected in checksums.items():
                entry = header.tensors[name]
                handle.seek(entry.offset)
                left, crc = entry.nbytes, 0
                while left:
                    chunk = handle.read(min(left, _VERIFY_BYTES))
                    if not chunk:
                        raise VerificationError(f"verification failed: {name} is truncated")
                    crc = zlib.crc32(chunk, crc)
                    left -= len(chunk)
                if crc != expected:
                    raise VerificationError(f"verification failed: {name} read back differently")
    except VerificationError:
        raise
    except CkptError as exc:
        raise VerificationError(f"verification failed: {exc.message}") from exc
    except OSError as exc:
        raise VerificationError(f"verification failed: cannot read it back ({exc.strerror})") from exc


def read_safetensors_tensors(path: Path, logical: bool = False
                             ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a safetensors file as (name -> array in ckptctl's storage dtype, or
    with ``logical`` its real one (ml_dtypes bfloat16 …), tied alias -> stored name);
    aliases only from a ckptctl-written file's metadata."""
    import numpy as np

    from ..readers.safetensors_file import read_header, read_tensor_bytes
    from ..readers.tensor import LOGICAL_NUMPY, STORAGE_NUMPY

    header = read_header(path)
    arrays: dict[str, np.ndarray] = {}
    for name, entry in header.tensors.items():
        dtype = entry.torch_dtype
        if dtype is None:
            raise UnsupportedCheckpointError(f"tensor {name[:120]!r} has dtype {entry.dtype}, "
                                             "which ckptctl cannot read", path)
        data = bytearray(read_tensor_bytes(path, entry))  # writable: torch shares it
        table = LOGICAL_NUMPY if logical else STORAGE_NUMPY
        arrays[name] = np.frombuffer(data, dtype=table[dtype]).reshape(entry.shape)
    ties: dict[str, str] = {}
    if is_ckptctl_safetensors(header.metadata):
        for key, target in header.metadata.items():
            if key in _RESERVED or key.startswith(_KEY_PREFIX):
                continue
            if target not in arrays or key in arrays:
                raise CorruptCheckpointError(f"tied name {key[:120]!r} names no stored tensor", path)
            ties[key] = target
    return arrays, ties
