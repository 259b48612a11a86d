"""Recognising Keras files (HDF5 and ``.keras`` zips) by content, without importing Keras.

Kinds:
  keras2-h5-model    ``model.save("m.h5")``: root attrs keras_version/backend/model_config,
                     weights under ``model_weights/``
  keras2-h5-weights  ``model.save_weights("w.h5")``: root attrs layer_names, one group a layer
  keras3-weights-h5  Keras 3 ``save_weights("x.weights.h5")``: ``layers/…/vars/<i>`` groups
  keras3-keras       Keras 3 ``model.save("x.keras")``: a zip with config.json + model.weights.h5
  ckptctl-output     a weights file ckptctl wrote (root attr ``writer`` = "ckptctl …")
"""

from __future__ import annotations

from pathlib import Path

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def is_ckptctl_h5(attrs: object) -> bool:
    get = getattr(attrs, "get", None)
    if get is None:
        return False
    writer = get("writer", "")
    writer = writer.decode() if isinstance(writer, bytes) else str(writer)
    return writer.startswith("ckptctl") or get("layout") == "ckptctl-tensors"


def h5_kind(path: Path) -> str | None:
    """The kind of an HDF5 file (see module doc), or None for HDF5 that is not Keras'."""
    # h5py (a core dependency) is imported by h5safe on first use, to keep discovery of torch
    # fast. Only root attributes and root link names are read: nothing is resolved (an
    # external link must not be followed, not even to sniff); readers ``confine`` the file.
    from .h5safe import H5_ERRORS, has_link, open_h5

    try:
        with open_h5(path) as f:
            attrs = f.attrs
            if is_ckptctl_h5(attrs):
                return "ckptctl-output"
            if has_link(f, "model_weights") or ("keras_version" in attrs and "model_config" in attrs):
                return "keras2-h5-model"
            if "layer_names" in attrs:
                return "keras2-h5-weights"
            if has_link(f, "layers") or has_link(f, "vars"):
                return "keras3-weights-h5"
    except H5_ERRORS:
        return "broken-h5"
    return None


def keras_zip_kind(path: Path) -> str | None:
    import zipfile

    from .torch_files import zip_errors

    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except zip_errors():
        return "broken-keras"
    if "config.json" in names and ("model.weights.h5" in names or "metadata.json" in names):
        return "keras3-keras"
    return None
