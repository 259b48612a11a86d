"""ckptctl: scan, convert, validate and catalog ML checkpoints without running their code.

The Python API is small and imports no ML framework until asked:

    ckptctl.load_weights(path)      -> dict[str, numpy.ndarray]   (no torch needed)
    ckptctl.load_state_dict(path)   -> dict[str, torch.Tensor]    (ready for load_state_dict)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import numpy as np


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a ckptctl ``.weights.h5`` as numpy arrays (bfloat16/float8 via ml_dtypes).

    Tied tensors come back as the same array object under each name.
    """
    from .formats.ckptctl_h5 import read_tensors

    arrays, _ = read_tensors(Path(path), logical=True)
    return arrays


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Tensors of a ckptctl ``.weights.h5`` as torch tensors, bit-exact, ties restored.

    ``model.load_state_dict(ckptctl.load_state_dict(p), strict=True)`` restores a model.
    """
    import torch  # imported only here: the rest of ckptctl runs without torch

    from .formats.ckptctl_h5 import read_tensors, tensor_dtypes
    from .formats.tensor import BIT_CAST_DTYPES

    arrays, ties = read_tensors(Path(path), logical=False)
    dtypes = tensor_dtypes(Path(path))
    result: dict[str, Any] = {}
    for name, values in arrays.items():
        if name in ties:
            result[name] = result[ties[name]]
            continue
        dtype = dtypes[name]
        if dtype in BIT_CAST_DTYPES:
            # torch has no numpy bfloat16/float8: move the raw bits, then reinterpret them.
            signed = values.view(f"i{values.dtype.itemsize}")
            tensor = torch.from_numpy(signed).view(getattr(torch, dtype))
        else:
            tensor = torch.from_numpy(values if values.flags.writeable else values.copy())
        result[name] = tensor
    return result


__all__ = ["__version__", "load_state_dict", "load_weights"]
