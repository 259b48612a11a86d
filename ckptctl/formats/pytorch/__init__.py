"""PyTorch checkpoints: ``torch.save`` files, zip (torch >= 1.6) and legacy, Lightning included.

Read with the restricted unpickler (no code from the file runs); weights become the
``ckptctl-tensors`` layout, bit-exact, ties kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ...errors import AmbiguousCheckpointError, CkptError, UnsupportedCheckpointError
from ...metadata import Gathered
from ...readers.tensor import LazyTensor, StorageRef
from ...readers.torch_files import (
    TorchFile,
    looks_like_pickle,
    open_torch,
    sniff_torch,
    tar_verdict,
    torch_zip_prefix,
    zip_errors,
    zip_member_names,
)
from ...safeio import open_regular
from .. import base
from .metadata import (
    STATE_DICT_KEYS,
    as_mapping,
    find_state_dict,
    gather_from_checkpoint,
    unsupported_tensors,
)

#: extensions that promise a torch checkpoint: such a file that is not one is *reported*
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def magic_of(probe: base.Probe) -> str | None:
    """"zip" / "torch-legacy" / "torch-tar" from the file's first bytes; None when neither or unreadable
    (the registry reports unreadable files named like checkpoints)."""
    try:
        return sniff_torch(probe.head())
    except OSError:
        return None


class _TorchFormat(base.SourceFormat):
    promised_suffixes: ClassVar[tuple[str, ...]] = TORCH_SUFFIXES
    pytorch_family: ClassVar[bool] = True

    def check_structure(self, path: Path) -> None:
        open_torch(path)

    def open(self, path: Path, fmt: base.FormatId) -> base.OpenedSource:
        return OpenedTorch(open_torch(path))


class TorchZip(_TorchFormat):
    ids = ("torch-zip",)

    def sniff(self, probe: base.Probe) -> base.Sniffed:
        if magic_of(probe) != "zip":
            return None
        promised = probe.name.endswith(TORCH_SUFFIXES)
        try:
            if torch_zip_prefix(zip_member_names(probe.path)) is not None:
                return base.FoundCheckpoint(probe.path, "torch-zip")
        except AmbiguousCheckpointError as exc:
            return base.FoundCheckpoint(probe.path, "torch-zip", exc.message, exc.kind)
        except Exception as exc:
            if not isinstance(exc, (CkptError, *zip_errors())):
                raise
            return (base.FoundCheckpoint(probe.path, "torch-zip", "damaged zip archive (truncated?)")
                    if promised else None)
        if promised:
            return base.FoundCheckpoint(probe.path, None, "zip archive without torch data", "unrecognised")
        return None


class TorchLegacy(_TorchFormat):
    ids = ("torch-legacy",)

    def sniff(self, probe: base.Probe) -> base.Sniffed:
        magic = magic_of(probe)
        if magic == "torch-legacy":
            return base.FoundCheckpoint(probe.path, "torch-legacy")
        if magic == "zip":
            return None
        promised = probe.name.endswith(TORCH_SUFFIXES)
        if magic == "torch-tar" or (promised and _opens_as_tar(probe.path)):
            return base.FoundCheckpoint(probe.path, "torch-legacy", "torch's oldest checkpoint "
                                        "format (a tar archive) is not supported", "unsupported")
        if promised and looks_like_pickle(probe.head()):
            # torch.load would unpickle it: read it (restricted) rather than call it unrecognised
            return base.FoundCheckpoint(probe.path, "torch-legacy")
        return None


def _opens_as_tar(path: Path) -> bool:
    """torch.load's first try on a non-zip file (only asked of files named like checkpoints)."""
    try:
        with open_regular(path, "rb") as handle:
            return tar_verdict(handle, os.fstat(handle.fileno()).st_size)
    except (OSError, CkptError):
        return False


class OpenedTorch(base.OpenedSource):
    def __init__(self, checkpoint: TorchFile) -> None:
        self.checkpoint = checkpoint
        self.format = "torch-legacy" if checkpoint.format == "torch-legacy" else "torch-zip"
        self.files = [checkpoint.path]
        self.state_key, self.state_dict = find_state_dict(checkpoint.obj)

    def read_scalar(self, tensor: LazyTensor) -> Any:
        try:
            return tensor.read(self.checkpoint, self.checkpoint.big_endian).reshape(-1)[0].item()
        except CkptError:
            return None

    def read_metadata(self, g: Gathered) -> None:
        gather_from_checkpoint(self.checkpoint.obj, self.checkpoint.path, g, self.read_scalar)
        g.offer("contents.model_weights", self.state_dict is not None, "checkpoint")

    def plan_weights(self, g: Gathered, options: base.WeightsOptions) -> base.WeightsPlan:
        state_dict = self.state_dict
        if state_dict is None:
            obj = self.checkpoint.obj
            mapping = as_mapping(obj)
            nested = [mapping[k] for k in STATE_DICT_KEYS if mapping is not None and k in mapping]
            bad = unsupported_tensors(obj) + [b for n in nested for b in unsupported_tensors(n)]
            if bad:
                raise UnsupportedCheckpointError("cannot convert tensors: " + ", ".join(bad[:5]))
            raise UnsupportedCheckpointError(
                "no model state dict found (looked for " + ", ".join(STATE_DICT_KEYS)
                + " or a bare name->tensor mapping); use --metadata-only for a sidecar alone")
        from ..safetensors import torch_family_plan

        return torch_family_plan(lambda tmp, fmt: self._write(state_dict, tmp, fmt), options)

    def _write(self, state_dict: Mapping[str, LazyTensor], tmp: Path,
               weights_format: str) -> base.WrittenWeights:
        from ..safetensors import write_tensor_items

        return write_tensor_items(tmp, torch_items(self.checkpoint, state_dict), self.format,
                                  self.state_key, weights_format)


def torch_items(checkpoint: TorchFile, state_dict: Mapping[str, Any],
                tie_scope: object = None) -> list[Any]:
    """The tensors of ``state_dict`` (from ``checkpoint``) as ``TensorToWrite`` items, each
    storage's crc32 checked before its first use. Tensors that are one view of one storage
    are one tie (``tie_scope`` keeps the storages of different files apart)."""
    from ...layouts.ckptctl_tensors import SLICED_FROM_BYTES, TensorToWrite

    checked: set[str] = set()

    def loader(tensor: LazyTensor) -> Callable[[], Any]:
        def load() -> Any:
            ref: StorageRef = tensor.storage
            if ref.key not in checked:  # each storage's crc32 once, before its first use
                raw = checkpoint.storage_bytes(ref)
                checkpoint.check_storage(ref, raw)
                checked.add(ref.key)
                del raw
            return tensor.read(checkpoint, checkpoint.big_endian)

        return load

    def rows_loader(tensor: LazyTensor) -> Callable[[int, int], Any] | None:
        if not tensor.shape or not tensor.is_contiguous_view():
            return None  # strided views are gathered whole by ``load``

        def load_rows(start: int, stop: int) -> Any:
            ref: StorageRef = tensor.storage
            if ref.key not in checked:
                checkpoint.check_storage_in_slices(ref, SLICED_FROM_BYTES)
                checked.add(ref.key)
            return tensor.read_rows(checkpoint, start, stop, checkpoint.big_endian)

        return load_rows

    items = []
    for name, tensor in state_dict.items():
        if not isinstance(tensor, LazyTensor):
            raise UnsupportedCheckpointError(f"state dict entry {str(name)[:120]!r} is not a tensor")
        tie = tensor.view_key if tie_scope is None else (tie_scope, tensor.view_key)
        items.append(TensorToWrite(str(name), tensor.dtype, tensor.shape, tie, loader(tensor),
                                   rows_loader(tensor)))
    return items


TORCH_ZIP = TorchZip()
TORCH_LEGACY = TorchLegacy()
