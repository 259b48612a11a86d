"""What a torch checkpoint says about itself: epoch, step, framework, hyper-parameters,
metrics, Lightning's ModelCheckpoint callback state, and where its state dict is.

Works on the object graph the restricted unpickler returns (plain containers, ``LazyTensor``
and inert stand-ins); nothing here runs code from the checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from ...budgets import PLAIN_MAX_NODES, PLAIN_MAX_TEXT, size_text
from ...errors import BudgetExceededError
from ...metadata import Gathered, architecture
from ...readers.tensor import LazyTensor
from ...readers.unpickler import InertObject, NpArrayRecord, TorchLayout, UnsupportedTensor

if TYPE_CHECKING:
    import numpy as np

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
_OPTIMIZER_KEYS = ("optimizer_states", "optimizer", "optimizer_state_dict", "optim", "optimizers")
_SCHEDULER_KEYS = ("lr_schedulers", "lr_scheduler", "scheduler", "scheduler_state_dict", "schedulers")
_RNG_KEYS = ("rng_state", "np_rng_state", "py_rng_state", "cuda_rng_state", "torch_rng_state",
             "rng_states", "numpy_rng_state", "python_rng_state", "random_state")
_EPOCH_KEYS = ("epoch", "epochs", "current_epoch")
_STEP_KEYS = ("global_step", "step", "iteration", "iter", "steps")
_METRIC_DICT = re.compile(r"(metrics?|stats|scores|results)$", re.IGNORECASE)
_MAX_PLAIN_ITEMS = 200

# The unpickler imports numpy to build numpy values: while numpy is not imported there are
# none, and these checks need not import it (``scan`` stays light).
def _is_np_generic(value: object) -> TypeGuard[np.generic]:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.generic)


def _is_np_array(value: object) -> TypeGuard[np.ndarray]:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray)


def _is_np_integer(value: object) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.integer)


ScalarReader = Callable[[LazyTensor], float | int | bool | None]


# --- turning an unpickled object graph into plain data -----------------------------------

#: Containers nested deeper than this become "<nested too deeply>".
_MAX_PLAIN_DEPTH = 12


class PlainBudget:
    """Values and text one checkpoint's metadata may expand to (``ckptctl.budgets``).

    The object graph is a DAG: memo references let a 2.5 KB pickle hold a list whose items
    are all the one list below it, 40 levels deep, which as a tree has 200**12 values within
    the depth cut. Each value converted is counted, so such a graph is refused, not walked."""

    def __init__(self) -> None:
        self.nodes = 0
        self.text = 0

    def spend(self, text: int = 0) -> None:
        self.nodes += 1
        self.text += text
        if self.nodes > PLAIN_MAX_NODES:
            raise BudgetExceededError(
                "the metadata this checkpoint holds", f"the {PLAIN_MAX_NODES:,} values a sidecar "
                "takes from one checkpoint (shared references expand without bound?)")
        if self.text > PLAIN_MAX_TEXT:
            raise BudgetExceededError(
                "the text of the metadata this checkpoint holds",
                f"the {size_text(PLAIN_MAX_TEXT)} a sidecar takes from one checkpoint")


def to_plain(obj: Any, read_scalar: ScalarReader | None = None, depth: int = 0,
             budget: PlainBudget | None = None) -> Any:
    """JSON/YAML-safe plain data; tensors become scalars (when 1 element) or a summary.

    Containers are cut at ``_MAX_PLAIN_ITEMS`` items and ``_MAX_PLAIN_DEPTH`` levels; every
    value converted is charged to ``budget`` (one per call when None)."""
    budget = budget if budget is not None else PlainBudget()
    if depth > _MAX_PLAIN_DEPTH:
        budget.spend()
        return "<nested too deeply>"
    if isinstance(obj, str):
        text = obj if len(obj) <= 10_000 else obj[:10_000] + "…"
        budget.spend(len(text))
        return text
    budget.spend()
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return obj if obj.bit_length() <= 64 else f"<int of {obj.bit_length()} bits>"
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if _is_np_generic(obj):
        return to_plain(obj.item(), read_scalar, depth, budget)
    if isinstance(obj, LazyTensor):
        if obj.numel == 1 and read_scalar is not None:
            return to_plain(read_scalar(obj), read_scalar, depth, budget)
        return f"<tensor {obj.dtype}{list(obj.shape)}>"
    if _is_np_array(obj):
        if obj.size <= 16 and obj.dtype.kind in "biuf":
            return to_plain(obj.tolist(), read_scalar, depth + 1, budget)
        return f"<ndarray {obj.dtype}{list(obj.shape)}>"
    if isinstance(obj, Mapping):
        return _plain_mapping(obj.items(), read_scalar, depth, budget)
    if isinstance(obj, list | tuple | set | frozenset):
        return _plain_list(obj, read_scalar, depth, budget)
    if isinstance(obj, InertObject):
        return inert_to_plain(obj, read_scalar, depth, budget)
    if isinstance(obj, bytes | bytearray):
        return f"<{len(obj)} bytes>"
    if isinstance(obj, NpArrayRecord):
        return to_plain(obj.array, read_scalar, depth, budget) if obj.array is not None else "<ndarray>"
    if isinstance(obj, TorchLayout):
        return obj.name
    if isinstance(obj, complex):
        return str(obj)
    if isinstance(obj, _dt.datetime | _dt.date | _dt.time | _dt.timedelta):
        return str(obj)
    return f"<{type(obj).__name__}>"  # never str() an unknown object: it may recurse or blow up


def _plain_mapping(items: Iterable[tuple[Any, Any]], read_scalar: ScalarReader | None,
                   depth: int, budget: PlainBudget, skip_private: bool = False,
                   limit: int | None = _MAX_PLAIN_ITEMS) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for key, value in itertools.islice(items, limit):
        name = _key(key, budget)
        if not (skip_private and name.startswith("_")):
            plain[name] = to_plain(value, read_scalar, depth + 1, budget)
    return plain


def _plain_list(values: Iterable[Any], read_scalar: ScalarReader | None, depth: int,
                budget: PlainBudget, limit: int | None = _MAX_PLAIN_ITEMS) -> list[Any]:
    return [to_plain(v, read_scalar, depth + 1, budget) for v in itertools.islice(values, limit)]


def _key(key: Any, budget: PlainBudget | None = None) -> str:
    plain = to_plain(key, None, _MAX_PLAIN_DEPTH - 1, budget)
    return plain if isinstance(plain, str) else str(plain)[:200]


def text_of(value: Any) -> str:
    """A key or name as text: ``str()`` of strings and numbers, without the ways ``str()``
    fails on hostile values (a 5,000-digit integer, a tuple nested 1,000 deep)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | float) or value is None or (
            isinstance(value, int) and value.bit_length() <= 64):
        return str(value)
    return _key(value)


def inert_to_plain(obj: InertObject, read_scalar: ScalarReader | None, depth: int,
                   budget: PlainBudget | None = None) -> Any:
    """Readable data from a stand-in: Namespace/AttributeDict/DictConfig become mappings
    (whole: only the budget bounds them, where plain containers are cut at 200 items)."""
    budget = budget if budget is not None else PlainBudget()
    state = obj.state
    if obj.type_name.startswith("omegaconf.") and isinstance(state, dict):
        content = state.get("_content")
        if isinstance(content, dict):
            return _plain_mapping(content.items(), read_scalar, depth, budget, limit=None)
        if isinstance(content, list):
            return _plain_list(content, read_scalar, depth, budget, limit=None)
        return to_plain(state.get("_val", content), read_scalar, depth + 1, budget)
    if obj.items:
        return _plain_mapping(obj.items.items(), read_scalar, depth, budget, limit=None)
    if isinstance(state, dict):
        return _plain_mapping(state.items(), read_scalar, depth, budget, skip_private=True,
                              limit=None)
    if obj.list_items:
        return _plain_list(obj.list_items, read_scalar, depth, budget, limit=None)
    if obj.type_name.startswith("pathlib.") and obj.args:
        return "/".join(text_of(a) for a in obj.args[:_MAX_PLAIN_ITEMS])[:10_000]
    if obj.type_name.startswith("enum.") or obj.args:
        return to_plain(obj.args[0], read_scalar, depth + 1, budget) if len(obj.args) == 1 else obj.type_name
    return f"<{obj.type_name}>"


def as_mapping(obj: Any) -> Mapping[Any, Any] | None:
    if isinstance(obj, Mapping):
        return obj
    if isinstance(obj, InertObject):
        if obj.items:
            return obj.items
        if isinstance(obj.state, dict):
            return obj.state
    return None


def _number(value: Any, read_scalar: ScalarReader | None) -> float | None:
    if isinstance(value, LazyTensor):
        if value.numel != 1 or read_scalar is None:
            return None
        value = read_scalar(value)
    if _is_np_generic(value):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and value.bit_length() > 1000:
        return None
    return float(value) if math.isfinite(float(value)) else None


def _integer(value: Any, read_scalar: ScalarReader | None) -> int | None:
    number = _number(value, read_scalar)
    return int(number) if number is not None and float(number).is_integer() else None


# --- the state dict ------------------------------------------------------------------


def is_tensor_mapping(obj: Any) -> bool:
    mapping = as_mapping(obj)
    return (
        mapping is not None and len(mapping) > 0
        and all(isinstance(k, str) and isinstance(v, LazyTensor) for k, v in mapping.items())
    )


def find_state_dict(obj: Any) -> tuple[str | None, Mapping[str, LazyTensor] | None]:
    """Lightning ``state_dict``; else the first of ``STATE_DICT_KEYS`` mapping names to
    tensors; else the whole object when it is such a mapping. (None, None) when absent."""
    mapping = as_mapping(obj)
    if mapping is not None:
        for key in STATE_DICT_KEYS:
            if key in mapping and is_tensor_mapping(mapping[key]):
                return key, as_mapping(mapping[key])
    if is_tensor_mapping(obj):
        return None, as_mapping(obj)
    return None, None


def split_state_dict(obj: Any) -> tuple[str | None, dict[str, LazyTensor] | None, list[str]]:
    """Like ``find_state_dict``, but a state dict may also hold tensors ckptctl cannot convert
    (quantized, sparse, nested …): (where it was found, the tensors it can convert, and
    ``"name (kind)"`` of each it cannot). (None, None, []) when there is no state dict.

    For converting the rest of a state dict with a note naming what was left out, instead
    of refusing the whole file (torch_files/OpenedTorch decide; this only finds them)."""

    def split(candidate: Any) -> tuple[dict[str, LazyTensor], list[str]] | None:
        mapping = as_mapping(candidate)
        if mapping is None or not mapping or not all(
                isinstance(k, str) and isinstance(v, LazyTensor | UnsupportedTensor)
                for k, v in mapping.items()):
            return None
        tensors = {k: v for k, v in mapping.items() if isinstance(v, LazyTensor)}
        if not tensors:
            return None
        return tensors, [f"{k} ({v.kind})" for k, v in mapping.items()
                         if isinstance(v, UnsupportedTensor)]

    mapping = as_mapping(obj)
    if mapping is not None:
        for key in STATE_DICT_KEYS:
            found = split(mapping[key]) if key in mapping else None
            if found is not None:
                return key, *found
    found = split(obj)
    return (None, *found) if found is not None else (None, None, [])


def unsupported_tensors(obj: Any) -> list[str]:
    mapping = as_mapping(obj)
    if mapping is None:
        return []
    return [f"{k} ({v.kind})" for k, v in mapping.items() if isinstance(v, UnsupportedTensor)]


# --- sources ----------------------------------------------------------------------------


def gather_from_checkpoint(obj: Any, path: Path, g: Gathered, read_scalar: ScalarReader) -> None:
    top = as_mapping(obj)
    if top is None:
        return
    src = "checkpoint"
    keys = [text_of(k) for k in top]
    g.offer("contents.keys", keys, src)
    for key in _EPOCH_KEYS:
        g.offer("training.epoch", _integer(top.get(key), read_scalar), src)
    for key in _STEP_KEYS:
        g.offer("training.global_step", _integer(top.get(key), read_scalar), src)
    lightning_version = top.get("pytorch-lightning_version") or top.get("lightning_version")
    if isinstance(lightning_version, str):
        g.offer("training.framework", "lightning", src)
        g.offer("training.framework_version", lightning_version, src)
    else:
        g.offer("training.framework", "pytorch", src)
    g.offer("contents.optimizer_state", any(_non_empty(top.get(k)) for k in _OPTIMIZER_KEYS), src)
    g.offer("contents.lr_scheduler_state", any(_non_empty(top.get(k)) for k in _SCHEDULER_KEYS), src)
    g.offer("contents.rng_state", any(k in top for k in _RNG_KEYS), src)

    hparams = top.get("hyper_parameters")
    args = top.get("args") or top.get("config") or top.get("cfg") or top.get("hparams")
    budget = PlainBudget()  # one for the checkpoint: both may be the same shared graph
    for hp_source, hp in (("checkpoint:hyper_parameters", hparams), ("checkpoint:args", args)):
        plain = to_plain(hp, read_scalar, 0, budget) if hp is not None else None
        if isinstance(plain, dict) and plain:
            g.offer("model.hyper_parameters", plain, hp_source)
            g.offer("model.architecture", architecture(plain), hp_source)

    if is_tensor_mapping(obj):
        return  # a bare state dict: its scalars are buffers, not metrics
    for key, value in top.items():
        key = text_of(key)
        number = _number(value, read_scalar)
        if number is not None and key not in _EPOCH_KEYS + _STEP_KEYS and not _is_integer(value):
            g.offer_metric(key, number, src)  # best_val_loss, best_pck, …
        nested = as_mapping(value)
        if nested is not None and _METRIC_DICT.search(key) and key not in ("hyper_parameters",):
            for metric, metric_value in nested.items():
                number = _number(metric_value, read_scalar)
                if number is not None:
                    g.offer_metric(f"{key}/{text_of(metric)}", number, f"checkpoint:{key}")
    _gather_callbacks(top, path, g, read_scalar)


def _is_integer(value: Any) -> bool:
    """Counts (``best_epoch``, ``num_classes``) are not metrics, however they are stored."""
    if isinstance(value, LazyTensor):
        return value.dtype.startswith(("int", "uint", "bool"))
    return isinstance(value, int) or _is_np_integer(value)


def _non_empty(value: Any) -> bool:
    """Holds state: a non-empty container or object. A name stored as text ("adamw") or a
    number is a setting, not optimizer or scheduler state."""
    if value is None or isinstance(value, str | bytes | int | float) or _is_np_generic(value):
        return False
    if isinstance(value, list | tuple | dict) or as_mapping(value) is not None:
        return len(as_mapping(value) or value) > 0
    return True


# Lightning's ModelCheckpoint state key is the repr of a small dict:
#   ModelCheckpoint{'monitor': 'val/hmean', 'mode': 'max', 'every_n_train_steps': 0, ...}
# Only the two string fields are wanted; they are matched as text, never evaluated.
_STATE_KEY_FIELD = re.compile(r"""'(monitor|mode)': (['"])(.{0,512}?)\2(?=[,}])""")


_STEP_BASED = re.compile(r"'every_n_train_steps': ([1-9][0-9]*)|'train_time_interval': (?!None)")


def _saves_mid_epoch(state_key: str) -> bool:
    """A ModelCheckpoint saving every N training steps or every time interval (its state
    key spells its settings): its files may precede their epoch's validation."""
    return _STEP_BASED.search(state_key[:4096]) is not None


def _state_key_settings(state_key: str) -> dict[str, str]:
    return {m.group(1): m.group(3) for m in _STATE_KEY_FIELD.finditer(state_key[:4096])}


def _gather_callbacks(top: Mapping[str, Any], path: Path, g: Gathered, read_scalar: ScalarReader) -> None:
    callbacks = as_mapping(top.get("callbacks"))
    if callbacks is None:
        return
    found: list[tuple[dict[str, Any], Mapping[str, Any], bool]] = []
    for key, state in callbacks.items():
        name = text_of(key)
        state_map = as_mapping(state)
        if not name.startswith("ModelCheckpoint") or state_map is None:
            continue
        settings = _state_key_settings(name)
        if _saves_mid_epoch(name):
            g.hints["saves_mid_epoch"] = True
        best_k = as_mapping(state_map.get("best_k_models")) or {}
        mine = any(_base_name(p) == path.name for p in best_k)
        found.append((settings, state_map, mine))
    # The callback that saved *this* file (else the first) gives the checkpointing settings;
    # the others only give their scores for this file as metrics.
    found.sort(key=lambda item: not item[2])
    for index, (settings, state, mine) in enumerate(found):
        primary = index == 0
        src = "callback:ModelCheckpoint"
        monitor = state.get("monitor") or settings.get("monitor")
        if primary:
            g.offer("checkpointing.monitor", monitor if isinstance(monitor, str) else None, src)
            mode = settings.get("mode")
            g.offer("checkpointing.mode", mode if mode in ("min", "max") else None, src)
            best_score = _number(state.get("best_model_score"), read_scalar)
            g.offer("checkpointing.best_model_score", best_score, src)
            best_path = state.get("best_model_path")
            if isinstance(best_path, str) and best_path:
                g.offer("checkpointing.best_when_saved", _base_name(best_path) == path.name, src)
        last_path = state.get("last_model_path")
        if isinstance(last_path, str) and last_path:
            g.offer("checkpointing.save_last", True, f"{src} (last_model_path)")
        score = None
        for saved, value in (as_mapping(state.get("best_k_models")) or {}).items():
            if _base_name(saved) == path.name:
                score = _number(value, read_scalar)
        if score is None and mine is False and not found[0][2]:
            score = _number(state.get("current_score"), read_scalar)
        if score is not None and isinstance(monitor, str):
            if primary:
                g.offer("checkpointing.score", score, src)
            g.offer_metric(monitor, score, src)


def _base_name(saved: object) -> str:
    """The file name of a path recorded by Lightning on any OS (``C:\\x\\a.ckpt`` -> ``a.ckpt``)."""
    return re.split(r"[\\/]", text_of(saved))[-1]
