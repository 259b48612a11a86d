"""ckptctl: scan, convert, validate and catalog ML checkpoints without running their code.

The Python API is small and imports no ML framework until asked:

    ckptctl.load_weights(path)      -> dict[str, numpy.ndarray]   (no torch needed)
    ckptctl.load_state_dict(path)   -> dict[str, torch.Tensor]    (ready for load_state_dict)
    ckptctl.find_checkpoint_for_loading(path) -> (path, kind)     (prefer the converted file)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

__version__ = "0.1.0"

if TYPE_CHECKING:
    import numpy as np

_R = TypeVar("_R")


def _memory_as_ckpt_error(func: Callable[[str | Path], _R]) -> Callable[[str | Path], _R]:
    """A ``MemoryError`` (under an address-space cap) leaves the API as a ``CkptError``."""

    @functools.wraps(func)
    def wrapper(path: str | Path) -> _R:
        try:
            return func(path)
        except MemoryError:
            from .errors import BudgetExceededError

            raise BudgetExceededError("loading its tensors", "the memory available to this "
                                      "process", path) from None

    return wrapper


@_memory_as_ckpt_error
def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a ckptctl ``.weights.h5`` as numpy arrays (bfloat16/float8 via ml_dtypes).

    Tied tensors come back as the same array object under each name. A file that is not a
    well-formed ``ckptctl-tensors`` file reading only itself (no external links, external
    storage or virtual datasets; nothing declared that is not stored) raises a
    ``ckptctl.errors.CkptError``, never an h5py error.
    """
    arrays, _ = _read_any(Path(path))
    return arrays


def _read_any(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> array with its real dtype, tied alias -> the name it shares) of a
    ``.weights.h5`` or a ``.safetensors`` file (``convert --weights-format safetensors``)."""
    if path.name.endswith(".safetensors"):
        from .layouts.safetensors_out import read_safetensors_tensors

        arrays, ties = read_safetensors_tensors(path, logical=True)
        for alias, target in ties.items():
            arrays[alias] = arrays[target]
        return arrays, ties
    from .layouts.ckptctl_tensors import read_tensors

    return read_tensors(path, logical=True)


@_memory_as_ckpt_error
def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Tensors of a ckptctl ``.weights.h5`` as torch tensors, bit-exact, ties restored.

    ``model.load_state_dict(ckptctl.load_state_dict(p), strict=True)`` restores a model.
    Raises ``CkptError`` like ``load_weights``.
    """
    try:
        import torch  # imported only here: the rest of ckptctl runs without torch
    except ImportError as exc:
        raise ImportError("ckptctl.load_state_dict needs torch: pip install 'ckptctl[torch]' "
                          "(ckptctl.load_weights returns numpy arrays without it)") from exc

    from .readers.tensor import BIT_CAST_DTYPES

    # Logical arrays carry the real dtype (ml_dtypes spells bfloat16/float8 as torch does).
    arrays, ties = _read_any(Path(path))
    result: dict[str, Any] = {}
    for name, values in arrays.items():
        if name in ties:
            result[name] = result[ties[name]]
            continue
        dtype = values.dtype.name
        if values.size == 0:
            # An empty array may come back with zero strides; torch's own layout for the
            # shape keeps .view(other dtype) working.
            torch_dtype = getattr(torch, dtype) if dtype in BIT_CAST_DTYPES else \
                torch.from_numpy(values.copy()).dtype
            result[name] = torch.empty(values.shape, dtype=torch_dtype)
            continue
        if dtype in BIT_CAST_DTYPES:
            # torch has no numpy bfloat16/float8: move the raw bits, then reinterpret them.
            signed = values.view(f"i{values.dtype.itemsize}")
            tensor = torch.from_numpy(signed).view(getattr(torch, dtype))
        else:
            tensor = torch.from_numpy(values if values.flags.writeable else values.copy())
        result[name] = tensor
    return result


class FoundForLoading(NamedTuple):
    path: Path
    #: "keras3" (Keras 3 loads it: a ``.weights.h5`` or a ``.keras`` file), "ckptctl-tensors",
    #: "tf-index" (legacy prefix), "keras-h5", "torch", another source format's id, or None
    #: when nothing recognisable exists at or next to ``path``
    kind: str | None


_LEGACY_SUFFIXES = (".ckpt", ".h5", ".hdf5", ".pt", ".pth", ".bin")

#: format id (``ckptctl.formats``) -> the kind ``find_checkpoint_for_loading`` answers
_KIND_OF_FORMAT = {
    "torch-zip": "torch", "torch-legacy": "torch", "tf-index": "tf-index",
    "keras2-h5-model": "keras-h5", "keras2-h5-weights": "keras-h5",
    "keras3-weights-h5": "keras3", "keras3-keras": "keras3",
}


def find_checkpoint_for_loading(path: str | Path) -> FoundForLoading:
    """The best file to load for ``path``: its converted ``<stem>.weights.h5`` when present,
    else the legacy checkpoint (a TF prefix such as ``model.ckpt`` with ``.index``/``.data-*``,
    a Keras 2 ``.h5``, a Keras 3 ``.keras`` or a torch file), its kind recognised by content
    as ``ckptctl scan`` recognises it (never from the extension alone).

    ``path`` may name either form: ``run/model.ckpt`` or ``run/model.weights.h5``. Mirrors the
    fallback Keras 3 users write by hand after upgrading (try the .weights.h5, else the legacy
    file), without importing Keras.
    """
    path = Path(path)
    name = path.name
    if name.endswith(".weights.h5"):
        stem = name[: -len(".weights.h5")]
        weights = path
        legacy = [path.with_name(stem + suffix) for suffix in _LEGACY_SUFFIXES]
    else:
        stem = next((name[: -len(s)] for s in _LEGACY_SUFFIXES if name.endswith(s)), name)
        weights = path.with_name(stem + ".weights.h5")
        legacy = [path]
    if weights.is_file():
        return FoundForLoading(weights, _weights_kind(weights))
    for candidate in legacy:
        if candidate.with_name(candidate.name + ".index").is_file():
            return FoundForLoading(candidate, "tf-index")
        if candidate.is_file():
            from .formats import classify

            found = classify(candidate)
            if found is None or found.format is None:
                continue  # not a checkpoint, or a damaged one
            return FoundForLoading(candidate, _KIND_OF_FORMAT.get(found.format, found.format))
    return FoundForLoading(path, None)


def _weights_kind(path: Path) -> str:
    from .readers.h5safe import H5_ERRORS, open_h5

    try:
        with open_h5(path) as f:  # root attributes only: nothing is resolved
            layout = f.attrs.get("layout")
            layout = layout.decode("utf-8", "replace") if isinstance(layout, bytes) else layout
            return "ckptctl-tensors" if isinstance(layout, str) and layout == "ckptctl-tensors" else "keras3"
    except H5_ERRORS:
        return "keras3"


__all__ = ["FoundForLoading", "__version__", "find_checkpoint_for_loading", "load_state_dict",
           "load_weights"]
