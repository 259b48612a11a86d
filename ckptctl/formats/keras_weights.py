"""Writing Keras weights, shared by the TF-index and Keras 2 HDF5 formats: the Keras 3
``.weights.h5`` layout when the structure maps onto it, else the ``ckptctl-tensors``
fallback with the reason; and ``--keras-model`` verification."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .. import __version__
from ..errors import KerasModelMismatchError, UnsupportedCheckpointError, UsageError
from ..metadata import Gathered
from . import base

if TYPE_CHECKING:
    from ..layouts.ckptctl_tensors import TensorToWrite
    from ..layouts.keras3 import KLayer

KERAS3_LAYOUT = "keras3"
TENSORS_LAYOUT = "ckptctl-tensors"  # layouts.ckptctl_tensors.LAYOUT, without importing h5py
KERAS3_LAYOUT_VERSION = "1.0"


def _keras3_writer(model: KLayer, source_format: base.FormatId, options: base.WeightsOptions) -> base.WeightsWriter:
    from ..layouts.keras3 import keras3_mapping, write_keras3_weights

    mapped = keras3_mapping(model)  # raises Unmappable before anything is written

    def write(tmp: Path) -> base.WrittenWeights:
        from ..layouts.ckptctl_tensors import verify_datasets

        count, elements, checksums = write_keras3_weights(
            tmp, model, mapped, {"writer": f"ckptctl {__version__}", "source_format": source_format})
        if options.keras_model:
            verify_datasets(tmp, checksums)  # before Keras reads it: a bad file must not load
            verify_with_keras_model(options.keras_model, tmp)
            checksums = {}
        dtypes: dict[str, int] = defaultdict(int)
        for item in mapped:
            dtypes[item.variable.dtype] += 1
        return base.WrittenWeights(KERAS3_LAYOUT, KERAS3_LAYOUT_VERSION, count, elements,
                              dict(sorted(dtypes.items())), checksums=checksums)

    return write


def _fallback_writer(items: list[TensorToWrite], source_format: base.FormatId) -> base.WeightsWriter:
    def write(tmp: Path) -> base.WrittenWeights:
        from ..layouts.ckptctl_tensors import LAYOUT, LAYOUT_VERSION, write_tensors

        summary = write_tensors(tmp, items, {"source_format": source_format,
                                             "writer": f"ckptctl {__version__}"})
        dtypes: dict[str, int] = defaultdict(int)
        for item in items:
            dtypes[item.dtype] += 1
        return base.WrittenWeights(LAYOUT, LAYOUT_VERSION, summary.tensor_count,
                              summary.parameter_count, dict(sorted(dtypes.items())),
                              checksums=summary.checksums)

    return write


def keras3_or_fallback(fmt: base.FormatId, g: Gathered, model: KLayer | None, why_not: str | None,
                       fallback: Callable[[], list[TensorToWrite]],
                       options: base.WeightsOptions) -> base.WeightsPlan:
    """The Keras 3 layout when ``model`` maps onto it with certainty; with --keras-model,
    the user's model filled variable by variable; else every model variable in the
    ``ckptctl-tensors`` layout, with a note saying why. Always a ``.weights.h5``: Keras 3
    loads that, and ``--weights-format safetensors`` is for PyTorch-family sources."""
    plan = _keras_plan(fmt, g, model, why_not, fallback, options)
    if options.weights_format == "safetensors":
        plan.notes.append("a Keras source: wrote .weights.h5 (--weights-format safetensors is "
                          "for PyTorch-family sources)")
    return plan


def _keras_plan(fmt: base.FormatId, g: Gathered, model: KLayer | None, why_not: str | None,
                fallback: Callable[[], list[TensorToWrite]],
                options: base.WeightsOptions) -> base.WeightsPlan:
    from ..layouts.keras3 import Unmappable

    if model is not None:
        try:
            plan = base.WeightsPlan(write=_keras3_writer(model, fmt, options))
            g.offer("contents.model_weights", True, "checkpoint")
            return plan
        except Unmappable as exc:
            why_not = exc.message
    why_not = _one_short_line(why_not or "no Keras model found")
    if options.keras_model:
        items = fallback()
        if not items:
            raise UnsupportedCheckpointError(f"no model variables found ({why_not})")
        g.offer("contents.model_weights", True, "checkpoint")
        spec = options.keras_model
        return base.WeightsPlan(write=lambda tmp: _assign_to_keras_model(spec, items, fmt, tmp),
                                notes=[f"mapped onto --keras-model {spec} in weight order "
                                       f"({why_not})"])
    items = fallback()
    if not items:
        raise UnsupportedCheckpointError(f"no model variables found ({why_not})")
    g.offer("contents.model_weights", True, "checkpoint")
    return base.WeightsPlan(write=_fallback_writer(items, fmt),
                            notes=[f"Keras 3 layout not possible ({why_not}); wrote {TENSORS_LAYOUT} instead"])


def _local_name(path: str) -> str:
    """``dense/kernel:0`` -> ``kernel``; Keras 3 TF graphs spell some ``_kernel``."""
    return path.rsplit("/", 1)[-1].split(":")[0].lstrip("_")


def _one_short_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _assign_to_keras_model(spec: str, items: list[TensorToWrite], fmt: base.FormatId,
                           tmp: Path) -> base.WrittenWeights:
    """Build the user's Keras 3 model, assign the source variables to its weights in order
    (Keras 2's weight order: layer by layer, each layer's variables in creation order),
    checking every shape, and let Keras write the file it would write for that model. A
    second instance then loads it and must hold exactly the assigned values."""
    import numpy as np

    model = build_keras_model(spec)
    targets = list(model.weights)
    if len(targets) != len(items):
        raise KerasModelMismatchError(
            f"--keras-model {spec} has {len(targets)} variables, the checkpoint {len(items)}")
    values = []
    for target, item in zip(targets, items, strict=True):
        # Same shapes can hide a different order (a layer's own weights vs a sub-layer's,
        # non-trainable before trainable): the variable names must agree too.
        wanted, got = _local_name(str(target.path)), _local_name(item.name)
        if wanted != got and "variable" not in (wanted, got):
            raise KerasModelMismatchError(
                f"--keras-model {spec}: {target.path} is named {wanted!r}, the checkpoint's "
                f"variable at that position {got!r} (first mismatch; the orders differ)")
        array = item.load()
        if tuple(target.shape) != tuple(array.shape):
            raise KerasModelMismatchError(
                f"--keras-model {spec}: {target.path} has shape {tuple(target.shape)}, the "
                f"checkpoint's {item.name} {tuple(array.shape)} (first mismatch)")
        target.assign(array)
        values.append(array)
    model.save_weights(str(tmp))
    reloaded = build_keras_model(spec)
    try:
        reloaded.load_weights(str(tmp))
    except Exception as exc:  # Keras' own check: any failure fails this checkpoint
        raise KerasModelMismatchError(f"--keras-model {spec} rejected the weights: "
                                      f"{str(exc).splitlines()[0]}") from exc
    for target, array in zip(reloaded.weights, values, strict=True):
        if not np.array_equal(np.asarray(target.numpy()), array, equal_nan=True):
            raise KerasModelMismatchError(f"--keras-model {spec}: {target.path} did not round-trip")
    dtypes: dict[str, int] = defaultdict(int)
    for item in items:
        dtypes[item.dtype] += 1
    return base.WrittenWeights(KERAS3_LAYOUT, KERAS3_LAYOUT_VERSION, len(items),
                               sum(int(np.prod(i.shape)) for i in items), dict(sorted(dtypes.items())))


_SPEC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


@contextlib.contextmanager
def _quiet_tensorflow_startup() -> Iterator[None]:
    """TensorFlow's start-up lines (oneDNN, CUDA stubs, CPU features: printed by its C++
    runtime on fd 2 while it loads, before any log level applies) and absl's warnings are
    noise around ckptctl's one line per checkpoint. Silenced while the user's module is
    imported, unless TensorFlow is loaded already or the user chose a level with
    ``TF_CPP_MIN_LOG_LEVEL``. What was swallowed is replayed if the import fails."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        yield
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # what TensorFlow logs once loaded
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        import tempfile

        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            except BaseException:
                os.dup2(saved, 2)
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))
                raise
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
    try:
        from absl import logging as absl_logging  # installed with TensorFlow
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.ERROR)


def resolve_keras_builder(spec: str) -> Callable[[], Any]:
    """The function ``module:function`` names, importing its module.

    The current folder is searched *last* (after every installed package), so a ``keras.py``
    or ``numpy.py`` lying in a downloaded checkpoint tree never shadows the real package when
    the user's module imports it. Raises ``UsageError`` for a malformed or missing spec."""
    if not _SPEC.match(spec):
        raise UsageError(f"--keras-model must be module:function (e.g. mypkg.models:build), "
                         f"got {spec!r}")
    module_name, _, function_name = spec.partition(":")
    cwd = os.getcwd()
    # `python -m ckptctl` puts the current folder first: move it (and "") to the end.
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)] + [cwd]
    try:
        with _quiet_tensorflow_startup():  # the user's module imports Keras, hence TensorFlow
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--keras-model {spec}: cannot import {module_name} ({exc})") from None
    builder = getattr(module, function_name, None)
    if not callable(builder):
        raise UsageError(f"--keras-model {spec}: {module_name} has no function {function_name}")
    return cast(Callable[[], Any], builder)


def build_keras_model(spec: str) -> Any:
    """The Keras 3 model that ``module:function`` builds."""
    return resolve_keras_builder(spec)()


def verify_with_keras_model(spec: str, weights: Path) -> None:
    """Build the user's Keras 3 model (``module:function``), load ``weights`` into it, and
    require the same variables at the same paths with the same shapes as Keras would save."""
    model = build_keras_model(spec)
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        expected_path = Path(scratch) / "expected.weights.h5"
        model.save_weights(str(expected_path))
        expected = _dataset_shapes(expected_path)
    got = _dataset_shapes(weights)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append("model variables not in the checkpoint: " + ", ".join(missing[:5]))
        if extra:
            parts.append("checkpoint variables the model lacks: " + ", ".join(extra[:5]))
        if wrong:
            parts.append("shape mismatch at " + ", ".join(f"{k} {got[k]} vs {expected[k]}" for k in wrong[:5]))
        raise KerasModelMismatchError("does not match --keras-model: " + "; ".join(parts))
    try:
        model.load_weights(str(weights))
    except Exception as exc:  # Keras' own check; any failure fails this checkpoint
        raise KerasModelMismatchError(
            f"--keras-model {spec} rejected the weights: {str(exc).splitlines()[0]}") from exc


def _dataset_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from ..readers.h5safe import H5_ERRORS, confine, damaged, dataset_paths, open_h5

    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with open_h5(path) as f:
            confine(f)
            for name in dataset_paths(f):  # not visititems: HDF5 recurses (deep files crash)
                shapes[name] = tuple(f[name].shape or ())
    except H5_ERRORS as exc:
        raise damaged(exc, path) from exc
    return shapes
