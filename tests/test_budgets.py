"""Every expansion of an input is budgeted (``ckptctl.budgets``): a few hostile bytes that
describe gigabytes, hours of hashing or an exponential tree are refused in one line
(``refused: … exceeds …``, kind ``budget``), never a hang, a ``MemoryError``, a
``RecursionError`` or an internal error; real checkpoints convert unchanged.

Each hostile file is built here (raw pickle opcodes, ``zipfile``, a hand-written TF index),
next to a good ``torch.save`` file, and converted by the real CLI in a child with an
address-space cap and a timeout (``bounded.run_bounded``): the hostile file gets one error
line and no outputs, the good one converts. Unit tests against ``restricted_load`` pin the
mechanisms. Measured before the budgets (same inputs, same cap): the tuple-hash and
integer-collision pickles ran past any timeout, the wide memo-list checkpoint grew to
3.3 GB and past any timeout, the repeated-``bytearray`` pickle hit ``MemoryError``, the
broadcast checkpoint wrote 2.1 GB from 1.8 KB, the ``.keras`` bomb took 4.3 GB and ended
in an internal ``MemoryError``, the ``[``-nested ``config.json`` in a ``RecursionError``.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pytest
from bounded import assert_refused, run_bounded
from helpers import outputs_for, sidecar_of
from test_unpickler_hostile import (
    P4,
    op_bytes,
    op_call,
    op_dict,
    op_global,
    op_int,
    op_list,
    op_storage_pid,
    op_str,
    op_tensor,
    op_tuple,
    pkl,
    rewrite_zip,
)

from ckptctl.budgets import (
    JSON_MEMBER_MAX,
    OUTPUT_FLOOR,
    PICKLE_WORK_FLOOR,
    PLAIN_MAX_NODES,
    output_budget,
    pickle_work_limit,
)
from ckptctl.errors import (
    BudgetExceededError,
    CkptError,
    CorruptCheckpointError,
    UnsupportedCheckpointError,
)
from ckptctl.readers.unpickler import TorchLayout, restricted_load

#: The CLI converts torch and TF-index files in well under this; bombs would need far more.
MEMORY = 1536 << 20
TIMEOUT = 90.0
P61 = 2**61 - 1  # integers this far apart hash alike

# --- building blocks -------------------------------------------------------------------------


def put(index: int) -> bytes:
    return pickle.LONG_BINPUT + struct.pack("<I", index)


def get(index: int) -> bytes:
    return pickle.LONG_BINGET + struct.pack("<I", index)


def checkpoint_pkl(*extra: tuple[str, bytes], prelude: bytes = b"", proto: bytes = b"") -> bytes:
    """``{"state_dict": {"w": <tensor>}, **extra}``; ``prelude`` runs first (memo set-up)."""
    pairs = [(op_str("state_dict"), op_dict((op_str("w"), op_tensor())))]
    pairs += [(op_str(k), v) for k, v in extra]
    return pkl(prelude, op_dict(*pairs), **({"proto": proto} if proto else {}))


def tuple_dag(levels: int) -> bytes:
    """Memo ``levels`` holds t_levels, where t_0 = (1,) and t_i = (t_(i-1), t_(i-1)): 16
    bytes a level, 2**levels elements to hash."""
    body = op_tuple(op_int(1)) + put(0)
    for i in range(1, levels + 1):
        body += get(i - 1) + get(i - 1) + pickle.TUPLE2 + put(i)
    return body + pickle.POP


def colliding_int_keys(count: int) -> bytes:
    """A dict whose ``count`` integer keys all hash alike (5 + i * (2**61 - 1))."""
    items = b"".join(op_int(5 + i * P61) + pickle.NONE for i in range(count))
    return pickle.EMPTY_DICT + pickle.MARK + items + pickle.SETITEMS


def memo_lists(width: int, levels: int) -> tuple[bytes, bytes]:
    """(prelude, reference): l_0 = [1], l_i = [l_(i-1)] * width, as memo references."""
    body = op_list(op_int(1)) + put(0)
    for i in range(1, levels + 1):
        body += op_list(*[get(i - 1)] * width) + put(i)
    return body + pickle.POP, get(levels)


def repeated_calls(callable_: bytes, arg: bytes, times: int) -> bytes:
    """``[callable_(arg), ...]`` with ``arg`` memoized once and referenced ``times`` times."""
    calls = b"".join(op_call(callable_, get(0)) for _ in range(times))
    return arg + put(0) + pickle.POP + pickle.EMPTY_LIST + pickle.MARK + calls + pickle.APPENDS


def load(data: bytes) -> Any:
    return restricted_load(data)[0]


def refused_quickly(data: bytes, seconds: float = 5.0,
                    error: type[CkptError] = BudgetExceededError) -> CkptError:
    started = time.monotonic()
    with pytest.raises(error) as caught:
        load(data)
    assert time.monotonic() - started < seconds
    return caught.value


@pytest.fixture(scope="module")
def zip_template(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real ``torch.save`` zip of ``{"w": arange(16, float32)}`` (storage key "0")."""
    import torch

    path = tmp_path_factory.mktemp("tpl") / "archive.pt"
    torch.save({"w": torch.arange(16, dtype=torch.float32)}, path)
    return path.read_bytes()


@pytest.fixture
def batch(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """``batch(name, data)``: a folder holding the hostile file and a good ``torch.save``
    file; returns (hostile, good)."""
    import torch

    def make(name: str, data: bytes | None = None) -> tuple[Path, Path]:
        folder = tmp_path / "run"
        folder.mkdir(exist_ok=True)
        good = folder / "good.pt"
        torch.save({"w": torch.randn(4, 4)}, good)
        hostile = folder / name
        if data is not None:
            hostile.write_bytes(data)
        return hostile, good

    return make


def convert(folder: Path) -> Any:
    return run_bounded("convert", "--outputs-dir", folder, memory=MEMORY, timeout=TIMEOUT)


# === 1. the unpickler's work budget ============================================================


def test_hashing_a_tuple_dag_as_a_dict_key_is_refused_not_run() -> None:
    """Stops: a 700-byte pickle whose dict key is a tuple of two references to the tuple below, 40 levels: 2**40 hash steps (hours). Found: hostile review (issue 10)."""
    data = pkl(tuple_dag(40), op_dict((get(40), op_int(1))))
    assert len(data) < 1000
    error = refused_quickly(data, seconds=1.0)
    assert "exceeds its work budget" in str(error) and error.kind == "budget"


def test_tuple_dag_hashed_by_an_allowed_set_is_refused() -> None:
    """Stops: the same tuple DAG hashed inside builtins.set / frozenset (REDUCE), where the pre-pass sees no key. Found: hostile review (issue 10)."""
    for name in ("set", "frozenset"):
        data = pkl(tuple_dag(40), op_call(op_global("builtins", name), op_list(get(40))))
        refused_quickly(data, seconds=1.0)


def test_integer_keys_that_all_collide_are_refused() -> None:
    """Stops: dict keys 2**61-1 apart (one hash): filling the dict is quadratic (a 520 KB pickle took 8.7 s, 5 MB would take 15 minutes). Found: hostile review (issue 10)."""
    data = pkl(colliding_int_keys(40_000))
    assert len(data) < 600_000
    refused_quickly(data)


def test_colliding_keys_through_tuples_and_frozensets_are_refused() -> None:
    """Stops: the same collision hidden in (k, "x") tuple keys or frozenset({k}) keys. Found: hostile review (issue 10)."""
    tuples = b"".join(op_tuple(op_int(5 + i * P61), get(0)) + pickle.NONE for i in range(40_000))
    refused_quickly(pkl(op_str("x"), put(0), pickle.POP, pickle.EMPTY_DICT, pickle.MARK, tuples,
                        pickle.SETITEMS))
    sets = b"".join(pickle.MARK + op_int(5 + i * P61) + pickle.FROZENSET + pickle.NONE
                    for i in range(40_000))
    refused_quickly(pkl(pickle.EMPTY_DICT, pickle.MARK, sets, pickle.SETITEMS, proto=P4))


def test_numbers_built_by_value_cannot_all_share_a_hash() -> None:
    """Stops: complex numbers (or numpy scalars) built by REDUCE with one hash, then used as dict keys the pre-pass cannot see. Found: hostile review (issue 10)."""
    # 2**(61 k) all hash to 1 (2**61 = 1 mod 2**61 - 1) and are exact floats: 256 complex
    # numbers with one hash.
    many = b"".join(op_call(op_global("builtins", "complex"), op_int(2 ** (61 * i)),
                            op_int(2 ** (61 * j))) for i in range(1, 17) for j in range(1, 17))
    error = refused_quickly(pkl(pickle.EMPTY_LIST, pickle.MARK, many, pickle.APPENDS))
    assert "distinct numbers with one hash" in str(error)


@pytest.mark.parametrize(("callable_", "arg", "times"), [
    pytest.param(op_global("builtins", "set"), op_list(*[op_int(i) for i in range(200_000)]),
                 100_000, id="set of a 200,000-item list, 100,000 times"),
    pytest.param(op_global("builtins", "bytearray"), op_bytes(b"x" * (1 << 20)), 20_000,
                 id="bytearray of 1 MiB, 20,000 times"),
    pytest.param(op_global("builtins", "bytes"), op_bytes(b"x" * (1 << 20)), 20_000,
                 id="bytes of 1 MiB, 20,000 times"),
    pytest.param(op_global("collections", "OrderedDict"),
                 op_list(*[op_tuple(op_int(i), pickle.NONE) for i in range(100_000)]), 10_000,
                 id="OrderedDict of 100,000 pairs, 10,000 times"),
    pytest.param(op_global("torch", "Size"), op_list(*[op_int(i) for i in range(100_000)]),
                 20_000, id="torch.Size of 100,000 ints, 20,000 times"),
])
def test_allowed_constructors_of_referenced_data_are_charged(callable_: bytes, arg: bytes,
                                                             times: int) -> None:
    """Stops: an allowed constructor (set, bytearray, bytes, OrderedDict, torch.Size) called over and over on one memoized large argument: gigabytes from a few MB. Found: hostile review (issue 10)."""
    refused_quickly(pkl(repeated_calls(callable_, arg, times)), seconds=20.0)


def test_repeated_numpy_arrays_from_one_buffer_are_charged() -> None:
    """Stops: one memoized 1 MiB buffer rebuilt into 20,000 numpy arrays. Found: hostile review (issue 10)."""
    dtype = op_call(op_global("numpy", "dtype"), op_str("f4"), pickle.NEWFALSE, pickle.NEWTRUE)
    array = (op_call(op_global("numpy.core.multiarray", "_reconstruct"),
                     op_global("numpy", "ndarray"), op_tuple(op_int(0)), op_bytes(b"b"))
             + op_tuple(op_int(1), op_tuple(op_int(1 << 18)), dtype, pickle.NEWFALSE, get(0))
             + pickle.BUILD)
    data = pkl(op_bytes(b"\0" * (1 << 20)), put(0), pickle.POP, pickle.EMPTY_LIST, pickle.MARK,
               array * 20_000, pickle.APPENDS)
    refused_quickly(data, seconds=20.0)


def test_a_big_argument_tuple_passed_again_and_again_is_charged() -> None:
    """Stops: REDUCE/NEWOBJ_EX of an inert class with one memoized 100,000-item argument tuple (or keyword dict), 100,000 times: each call copies it. Found: hostile review (issue 10)."""
    args = op_tuple(*[op_int(i) for i in range(100_000)])
    refused_quickly(pkl(repeated_calls(op_global("argparse", "Namespace"), args, 100_000)),
                    seconds=20.0)
    kwargs = op_dict(*[(op_str(f"k{i}"), op_int(i)) for i in range(100_000)])
    objects = (op_global("argparse", "Namespace") + pickle.EMPTY_TUPLE + get(0)
               + pickle.NEWOBJ_EX) * 100_000
    data = pkl(kwargs, put(0), pickle.POP, pickle.EMPTY_LIST, pickle.MARK, objects,
               pickle.APPENDS, proto=P4)
    refused_quickly(data, seconds=20.0)


@pytest.mark.parametrize("encoding", ["punycode", "idna", "utf-16", "rot13", "zlib", "base64"])
def test_text_encodings_beyond_the_allow_list_are_refused(encoding: str) -> None:
    """Stops: bytes/bytearray/_codecs.encode reconstruction through punycode and friends (quadratic in the text; codecs that are not text encodings at all). Found: hostile review (issue 10)."""
    text = op_str("\u00e9a" * 1000)
    for data in (op_call(op_global("builtins", "bytes"), text, op_str(encoding)),
                 op_call(op_global("builtins", "bytearray"), text, op_str(encoding)),
                 op_call(op_global("_codecs", "encode"), text, op_str(encoding))):
        with pytest.raises((UnsupportedCheckpointError, CorruptCheckpointError)):
            load(pkl(data))


def test_the_encodings_pickles_use_still_load() -> None:
    """Stops: false refusals of bytes as protocols 0-2 and Python 2 spell them (latin-1, utf-8, ascii). Found: hostile review (issue 10)."""
    for encoding in ("latin1", "latin-1", "LATIN_1", "iso-8859-1", "utf-8", "utf8", "ascii"):
        assert load(pkl(op_call(op_global("_codecs", "encode"), op_str("ab"),
                                op_str(encoding)))) == b"ab"
        assert load(pkl(op_call(op_global("builtins", "bytearray"), op_str("ab"),
                                op_str(encoding)))) == bytearray(b"ab")
    assert load(pickle.dumps(b"\x00\xffbytes", protocol=2)) == b"\x00\xffbytes"
    assert load(pickle.dumps(bytearray(b"\x00\xff"), protocol=2)) == bytearray(b"\x00\xff")
    # Python 2's OrderedDict pickles pass their items as a list of pairs.
    py2 = pkl(op_call(op_global("collections", "OrderedDict"),
                      op_list(op_list(op_str("a"), op_int(1)), op_list(op_str("b"), op_int(2)))))
    assert list(load(py2).items()) == [("a", 1), ("b", 2)]


def test_real_pickles_cost_a_small_fraction_of_their_budget() -> None:
    """Stops: budgets that refuse real checkpoints (a false refusal is a failure too). Found: hostile review (issue 10)."""
    import collections

    shapes = {f"layer{i}.weight": np.zeros((4, 4), np.float32) for i in range(1000)}
    contents: list[Any] = [
        set(range(100_000)), frozenset(range(50_000)),
        collections.OrderedDict((f"p{i}", i) for i in range(100_000)),
        {(i, i + 1): i for i in range(50_000)}, {np.int64(i): np.float64(i) for i in range(20_000)},
        shapes, [[[[i]]] for i in range(20_000)], {"cfg": {"lr": 1e-3, "layers": list(range(999))}},
    ]
    for obj in contents:
        for protocol in (2, 4):
            data = pickle.dumps(obj, protocol=protocol)
            _, unpickler = restricted_load(data)
            assert unpickler.work <= 6 * len(data), (type(obj), protocol, unpickler.work, len(data))
            assert unpickler.work < pickle_work_limit(len(data)) / 4
    assert pickle_work_limit(10) == PICKLE_WORK_FLOOR


def test_deeply_nested_frozensets_end_cleanly() -> None:
    """Stops: frozensets nested 20,000 deep through memoized lists (which the pre-pass's depth count does not see), loaded and compared as dict keys. Found: hostile review (issue 10)."""
    def chain(base: int, levels: int) -> tuple[bytes, int]:
        body = (pickle.EMPTY_LIST + put(base) + pickle.POP + get(1) + pickle.MARK + get(base)
                + pickle.TUPLE + pickle.REDUCE + put(base + 1) + pickle.POP)
        for i in range(1, levels + 1):
            inner, outer = base + 2 * i, base + 2 * i + 1
            body += pickle.EMPTY_LIST + put(inner) + get(outer - 2) + pickle.APPEND + pickle.POP
            body += get(1) + get(inner) + pickle.TUPLE1 + pickle.REDUCE + put(outer) + pickle.POP
        return body, base + 2 * levels + 1

    first, top1 = chain(10, 20_000)
    second, top2 = chain(top1 + 10, 20_000)
    prelude = op_global("builtins", "frozenset") + put(1) + pickle.POP + first + second
    loaded = load(pkl(prelude, op_dict((op_str("a"), get(top1)), (op_str("b"), get(top2)))))
    from ckptctl.formats.pytorch.metadata import to_plain

    assert "<nested too deeply>" in json.dumps(to_plain(loaded))
    with pytest.raises(CorruptCheckpointError, match="nests too deeply"):
        load(pkl(prelude, op_dict((get(top1), op_int(1)), (get(top2), op_int(2)))))


# === 2. metadata from shared references ========================================================


def test_metadata_of_shared_references_is_budgeted() -> None:
    """Stops: to_plain walking a DAG of memo references as a tree (200**12 values from 13 KB). Found: hostile review (issue 10)."""
    from ckptctl.formats.pytorch.metadata import to_plain

    prelude, ref = memo_lists(200, 12)
    obj = load(pkl(prelude, ref))
    started = time.monotonic()
    with pytest.raises(BudgetExceededError, match=f"{PLAIN_MAX_NODES:,} values"):
        to_plain(obj)
    assert time.monotonic() - started < 2
    prelude, ref = memo_lists(2, 40)  # the depth cut keeps this one at 2**13 values
    plain = to_plain(load(pkl(prelude, ref)))
    assert len(json.dumps(plain)) < 250_000


# === 3-6. the real CLI, hostile file next to a good one =========================================

CLI_PICKLES: list[Any] = [
    pytest.param("tuple_dag.ckpt", lambda: checkpoint_pkl(
        ("hyper_parameters", op_dict((get(40), op_int(1)))), prelude=tuple_dag(40)),
        "exceeds its work budget", id="tuple DAG as a dict key"),
    pytest.param("collide.ckpt", lambda: checkpoint_pkl(("k", colliding_int_keys(40_000))),
                 "exceeds its work budget", id="colliding integer keys"),
    pytest.param("bytes.ckpt", lambda: checkpoint_pkl(("k", repeated_calls(
        op_global("builtins", "bytearray"), op_bytes(b"x" * (1 << 20)), 5_000))),
        "exceeds its work budget", id="bytearray of one buffer 5,000 times"),
    pytest.param("memo_wide.ckpt", lambda: checkpoint_pkl(
        ("hyper_parameters", op_dict((op_str("x"), memo_lists(200, 12)[1]))),
        prelude=memo_lists(200, 12)[0]), "exceeds the 50,000 values", id="wide memo lists"),
    pytest.param("punycode.ckpt", lambda: checkpoint_pkl(("k", op_call(
        op_global("builtins", "bytes"), op_str("\u00e9a" * 100_000), op_str("punycode")))),
        "text encoding 'punycode'", id="punycode bytes"),
]


@pytest.mark.parametrize(("name", "build", "reason"), CLI_PICKLES)
def test_hostile_pickle_is_refused_and_the_batch_converts(
        zip_template: bytes, batch: Callable[..., tuple[Path, Path]], name: str,
        build: Callable[[], bytes], reason: str) -> None:
    """Stops: budget attacks on data.pkl (tuple DAG hashing, colliding keys, repeated buffers, memo-list trees, punycode) hanging or crashing the batch. Found: hostile review (issue 10)."""
    hostile, good = batch(name, rewrite_zip(zip_template, build()))
    assert_refused(convert(hostile.parent), [hostile], [good], reason=reason)


def test_memo_lists_forty_levels_deep_convert_to_a_small_sidecar(
        zip_template: bytes, batch: Callable[..., tuple[Path, Path]]) -> None:
    """Stops: a 2.5 KB pickle nesting lists of two references to the list below, 40 levels, expanding exponentially in the sidecar. Found: hostile review (issue 10)."""
    prelude, ref = memo_lists(2, 40)
    data = checkpoint_pkl(("hyper_parameters", op_dict((op_str("x"), ref))), prelude=prelude)
    hostile, good = batch("memo_lists.ckpt", rewrite_zip(zip_template, data))
    run = convert(hostile.parent)
    assert_refused(run, [], [hostile, good], exit_code=0)
    assert outputs_for(hostile)[1].stat().st_size < 400_000


def test_broadcast_views_cannot_write_more_than_the_output_budget(
        zip_template: bytes, batch: Callable[..., tuple[Path, Path]]) -> None:
    """Stops: a 1.8 KB checkpoint of zero-stride views of one 64-byte storage writing 2.1 GB of weights. Found: hostile review (issue 10)."""
    shapes = [((1 << 26,), (0,)), ((1, 1 << 26), (0, 0)), ((2, 1 << 25), (0, 0)),
              ((4, 1 << 24), (0, 0)), ((8, 1 << 23), (0, 0)), ((16, 1 << 22), (0, 0)),
              ((32, 1 << 21), (0, 0)), ((64, 1 << 20), (0, 0))]
    pairs = [(op_str(f"w{i}"), op_tensor(op_storage_pid() + put(0) if i == 0 else get(0), 0,
                                         shape, stride))
             for i, (shape, stride) in enumerate(shapes)]
    hostile, good = batch("broadcast.ckpt", rewrite_zip(zip_template, pkl(op_dict(*pairs))))
    assert hostile.stat().st_size < 2000
    run = convert(hostile.parent)
    assert_refused(run, [hostile], [good], reason="exceeds the output budget of 64.0 MiB")
    assert not list(hostile.parent.glob(".*ckptctl-tmp*"))


def test_a_broadcast_buffer_within_the_floor_still_converts(
        zip_template: bytes, batch: Callable[..., tuple[Path, Path]]) -> None:
    """Stops: the output cap refusing a real expanded buffer (torch.ones(1).expand(n) saved as is). Found: hostile review (issue 10)."""
    import torch

    hostile, good = batch("expanded.pt")
    torch.save({"mask": torch.ones(1).expand(1 << 22), "w": torch.ones(3)}, hostile)
    assert_refused(convert(hostile.parent), [], [hostile, good], exit_code=0)
    assert OUTPUT_FLOOR >= 4 << 22  # 16 MiB written from 4 stored bytes


def test_output_budget_is_relative_to_the_source() -> None:
    """Stops: an output cap that is fixed rather than proportional (a 10 GB state dict must convert). Found: hostile review (issue 10)."""
    with output_budget(10 << 30) as budget:
        budget.spend(10 << 30, "a 10 GiB state dict")
        budget.spend(100 << 30, "views of it")
    with output_budget(1000) as budget, pytest.raises(BudgetExceededError, match=r"64\.0 MiB"):
        budget.spend(OUTPUT_FLOOR + 1, "a broadcast view")


@pytest.mark.parametrize(("dims", "converted"), [((0, 2**32, 2**32), False), ((0, 2**20, 2**20), True)])
def test_empty_tensor_with_huge_dimensions_fails_cleanly(
        zip_template: bytes, batch: Callable[..., tuple[Path, Path]], dims: tuple[int, ...],
        converted: bool) -> None:
    """Stops: an empty tensor of shape (0, 2**32, 2**32) ending in "internal error" (numpy refuses the shape). Found: hostile review (issue 10)."""
    stride = tuple(math.prod(dims[i + 1:]) for i in range(len(dims)))
    data = pkl(op_dict((op_str("state_dict"), op_dict(
        (op_str("w"), op_tensor()), (op_str("e"), op_tensor(shape=dims, stride=stride))))))
    hostile, good = batch("empty.ckpt", rewrite_zip(zip_template, data))
    run = convert(hostile.parent)
    if converted:
        assert_refused(run, [], [hostile, good], exit_code=0)
    else:
        assert_refused(run, [hostile], [good], reason="cannot be held by any array")


def test_five_thousand_digit_integers_are_data(zip_template: bytes,
                                               batch: Callable[..., tuple[Path, Path]]) -> None:
    """Stops: a 5,000-digit integer key (top level, metrics, hyper-parameters) ending in "internal error" (int-to-str limit). Found: hostile review (issue 10)."""
    big = op_int(10**4999)
    data = checkpoint_pkl(("hyper_parameters", op_dict((big, op_int(1)), (op_str("n"), big))),
                          ("val_metrics", op_dict((big, pickle.BINFLOAT + struct.pack(">d", 0.5)))))
    data = data[:-1] + big + op_int(7) + pickle.SETITEM + data[-1:]  # a top-level key too
    hostile, good = batch("bigint.ckpt", rewrite_zip(zip_template, data))
    assert_refused(convert(hostile.parent), [], [hostile, good], exit_code=0)
    sidecar = sidecar_of(hostile)
    assert "<int of 16607 bits>" in sidecar["contents"]["keys"]
    assert sidecar["model"]["hyper_parameters"]["n"] == "<int of 16607 bits>"
    assert sidecar["metrics"]["val_metrics/<int of 16607 bits>"] == 0.5


def test_deep_frozensets_in_a_checkpoint_end_cleanly(
        zip_template: bytes, batch: Callable[..., tuple[Path, Path]]) -> None:
    """Stops: frozensets nested past the pre-pass's depth count reaching the metadata walkers. Found: hostile review (issue 10)."""
    levels = 5_000
    body = op_global("builtins", "frozenset") + put(1) + pickle.POP
    body += (pickle.EMPTY_LIST + put(10) + pickle.POP + get(1) + pickle.MARK + get(10)
             + pickle.TUPLE + pickle.REDUCE + put(11) + pickle.POP)
    for i in range(1, levels + 1):
        inner, outer = 10 + 2 * i, 11 + 2 * i
        body += pickle.EMPTY_LIST + put(inner) + get(outer - 2) + pickle.APPEND + pickle.POP
        body += get(1) + get(inner) + pickle.TUPLE1 + pickle.REDUCE + put(outer) + pickle.POP
    data = checkpoint_pkl(("hyper_parameters", op_dict((op_str("x"), get(11 + 2 * levels)))),
                          prelude=body)
    hostile, good = batch("frozensets.ckpt", rewrite_zip(zip_template, data))
    assert_refused(convert(hostile.parent), [], [hostile, good], exit_code=0)


# --- YAML next to a checkpoint, and sidecars ---------------------------------------------------


@pytest.mark.parametrize("text", [
    pytest.param("x: " + "[" * 100_000 + "\n", id="flow nesting 100,000 deep (crashed libyaml)"),
    pytest.param("x: " + "[" * 300 + "]" * 300 + "\n", id="300 deep (broke the sidecar schema)"),
])
def test_deeply_nested_logger_yaml_is_skipped(batch: Callable[..., tuple[Path, Path]],
                                              text: str) -> None:
    """Stops: an hparams.yaml nested 100,000 deep killing convert with a segmentation fault in libyaml's composer, or 300 deep ending in an internal error when the sidecar is built. Found: hostile review (issue 10)."""
    import torch

    checkpoint, good = batch("run.ckpt")
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 1}, checkpoint)
    (checkpoint.parent / "hparams.yaml").write_text(text)
    assert_refused(convert(checkpoint.parent), [], [checkpoint, good], exit_code=0)
    assert sidecar_of(checkpoint)["model"].get("hyper_parameters") is None


@pytest.mark.parametrize("command", ["validate", "catalog"])
def test_deeply_nested_sidecar_is_reported_not_a_crash(tmp_path: Path, command: str) -> None:
    """Stops: a 100 KB sidecar of "[" x 100000 crashing validate and catalog with a segmentation fault (libyaml recursion). Found: hostile review (issue 10)."""
    (tmp_path / "x.metadata.yaml").write_text("a: " + "[" * 100_000 + "\n")
    run = run_bounded(command, tmp_path, memory=MEMORY, timeout=TIMEOUT)
    assert run.exit_code in (0, 1) and "Traceback" not in run.stderr, run


# --- .keras archives ----------------------------------------------------------------------------


def keras_zip(path: Path, config: bytes | None = None, *, config_size: int = 0,
              metadata: bytes = b'{"keras_version": "3.3.3"}') -> Path:
    """A ``.keras`` archive; ``config_size`` streams that many spaces inside config.json."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("metadata.json", metadata)
        if config is not None:
            archive.writestr("config.json", config)
        else:
            with archive.open("config.json", "w", force_zip64=True) as member:
                member.write(b'{"class_name": "Sequential", "pad": "')
                chunk = b" " * (1 << 22)
                for _ in range(config_size // len(chunk)):
                    member.write(chunk)
                member.write(b'"}')
    return path


def test_keras_config_that_inflates_past_its_cap_is_refused_before_reading(
        batch: Callable[..., tuple[Path, Path]]) -> None:
    """Stops: a .keras config.json that inflates 1000x (3 MB to 3 GiB took 4.3 GB and ended in an internal MemoryError); the declared size and the ratio are checked before anything is inflated. Found: hostile review (issue 10)."""
    hostile, good = batch("bomb.keras")
    keras_zip(hostile, config_size=JSON_MEMBER_MAX + (4 << 20))
    ratio = hostile.parent / "ratio.keras"
    keras_zip(ratio, config_size=8 << 20)  # under the cap, but 1000x its compressed size
    run = convert(hostile.parent)
    assert_refused(run, [hostile], [good], reason="exceeds the 16.0 MiB limit for a JSON member")
    assert_refused(run, [ratio], [good], reason="exceeds the 100x compression-ratio limit")


def test_keras_config_whose_size_is_forged_fails_cleanly(
        batch: Callable[..., tuple[Path, Path]]) -> None:
    """Stops: a config.json whose zip entry declares 1 KiB while its deflate stream inflates to 64 MiB: only the declared size is ever inflated. Found: hostile review (issue 10)."""
    hostile, good = batch("forged.keras")
    keras_zip(hostile, config_size=64 << 20)
    data = bytearray(hostile.read_bytes())
    start = 0  # the central directory's entry, which zipfile goes by
    while (start := data.find(b"PK\x01\x02", start)) != -1:
        if data[start + 46:start + 57] == b"config.json":
            assert struct.unpack_from("<H", data, start + 30)[0] == 0  # no ZIP64 extra
            struct.pack_into("<I", data, start + 24, 1024)
        start += 4
    hostile.write_bytes(bytes(data))
    run = convert(hostile.parent)
    assert_refused(run, [hostile], [good])


def test_keras_config_nested_too_deep_is_refused(batch: Callable[..., tuple[Path, Path]]) -> None:
    """Stops: a config.json of "[" x 100000 ending in an internal RecursionError; a merely deep compile_config (500 levels) is left out of the sidecar instead of breaking its YAML. Found: hostile review (issue 10)."""
    hostile, good = batch("deep.keras")
    keras_zip(hostile, b"[" * 100_000)
    odd = keras_zip(hostile.parent / "odd.keras",
                    b'{"class_name": ["x"], "compile_config": {"loss": ' + b"[" * 500 + b"]" * 500
                    + b"}}", metadata=b'{"keras_version": {"x": 1}, "date_saved": 7}')
    run = convert(hostile.parent)
    assert_refused(run, [hostile], [good], reason="refused: the nesting of config.json exceeds")
    assert any(line.startswith("converted") and line.endswith("odd.keras") for line in run.lines)
    sidecar = sidecar_of(odd)  # a .keras archive is described by its sidecar alone
    assert sidecar["model"].get("training_config") is None
    assert sidecar["training"].get("framework_version") is None
    assert sidecar["model"].get("architecture") is None


# --- TF-index checkpoints ---------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _message(number: int, body: bytes) -> bytes:
    return _field(number, 2, _varint(len(body)) + body)


def _mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def tf_entry(dtype: int, shape: tuple[int, ...], offset: int, data: bytes,
             crc: int | None = None) -> bytes:
    """A ``BundleEntryProto``."""
    dims = b"".join(_message(2, _field(1, 0, _varint(d))) for d in shape)
    crc = _mask(google_crc32c.value(data)) if crc is None else crc
    return (_field(1, 0, _varint(dtype)) + _message(2, dims) + _field(4, 0, _varint(offset))
            + _field(5, 0, _varint(len(data))) + _field(6, 5, struct.pack("<I", crc)))


def tf_string_entry(value: bytes, offset: int) -> tuple[bytes, bytes]:
    """(shard bytes, entry) of a one-element DT_STRING tensor."""
    crc = google_crc32c.value(len(value).to_bytes(4, "little"))
    head = _mask(crc).to_bytes(4, "little")
    data = _varint(len(value)) + head + value
    entry_crc = _mask(google_crc32c.extend(crc, head + value))
    return data, (_field(1, 0, _varint(7)) + _message(2, _message(2, _field(1, 0, _varint(1))))
                  + _field(4, 0, _varint(offset)) + _field(5, 0, _varint(len(data)))
                  + _field(6, 5, struct.pack("<I", entry_crc)))


def write_tf(folder: Path, name: str, entries: dict[bytes, bytes], shard: bytes) -> Path:
    from test_tf_index_reader import write_table

    folder.mkdir(parents=True, exist_ok=True)
    header = _field(1, 0, _varint(1)) + _message(3, _field(1, 0, _varint(1)))
    records = [(b"", header), *sorted(entries.items())]
    (folder / f"{name}.index").write_bytes(write_table(records))
    (folder / f"{name}.data-00000-of-00001").write_bytes(shard)
    return folder / name


def test_tf_tensor_with_huge_empty_shape_fails_cleanly(
        batch: Callable[..., tuple[Path, Path]]) -> None:
    """Stops: a TF-index tensor of shape (0, 2**40, 2**40) ending in "internal error". Found: hostile review (issue 10)."""
    _, good = batch("unused")
    weights = np.arange(4, dtype="<f4").tobytes()
    prefix = write_tf(good.parent, "bigshape", {b"w": tf_entry(1, (4,), 0, weights),
                                            b"e": tf_entry(1, (0, 2**40, 2**40), 16, b"")}, weights)
    assert_refused(convert(good.parent), [prefix], [good], reason="cannot be held by any array")


def test_tf_entries_sharing_bytes_cannot_multiply_the_output(
        batch: Callable[..., tuple[Path, Path]]) -> None:
    """Stops: 200 TF-index entries over the same 1 MiB of a shard writing 200 MiB of weights. Found: hostile review (issue 10)."""
    _, good = batch("unused")
    block = np.zeros(1 << 18, dtype="<f4").tobytes()
    prefix = write_tf(good.parent, "alias", {b"w%05d" % i: tf_entry(1, (1 << 18,), 0, block)
                                             for i in range(200)}, block)
    assert_refused(convert(good.parent), [prefix], [good], reason="exceeds the output budget")


def _graph_node(*parts: bytes) -> bytes:
    return _message(1, b"".join(parts))


def _child(node_id: int, name: str) -> bytes:
    return _message(1, _field(1, 0, _varint(node_id)) + _message(2, name.encode()))


def _variable(key: str) -> bytes:
    return _message(2, _message(1, b"VARIABLE_VALUE") + _message(2, key.encode())
                    + _message(3, key.encode()))


def tf_with_graph(folder: Path, name: str, nodes: list[bytes]) -> Path:
    key = "layer-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    kernel = np.ones((2, 2), dtype="<f4").tobytes()
    graph, entry = tf_string_entry(b"".join(nodes), len(kernel))
    return write_tf(folder, name, {b"_CHECKPOINTABLE_OBJECT_GRAPH": entry,
                                   key.encode(): tf_entry(1, (2, 2), 0, kernel)}, kernel + graph)


def test_cyclic_tf_object_graph_converts_without_recursing(
        batch: Callable[..., tuple[Path, Path]]) -> None:
    """Stops: a TF object graph whose model lists itself as a layer (and a layer pointing back at the root) recursing without end. Found: hostile review (issue 10)."""
    _, good = batch("unused")
    key = "layer-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    prefix = tf_with_graph(good.parent, "cycle", [
        _graph_node(_child(1, "layer-0"), _child(0, "layer-1")),
        _graph_node(_child(2, "kernel"), _child(0, "parent")),
        _graph_node(_variable(key))])
    assert_refused(convert(good.parent), [], [prefix, good], exit_code=0)


def test_shared_tf_sub_graphs_are_not_walked_as_trees(
        batch: Callable[..., tuple[Path, Path]]) -> None:
    """Stops: a 5 KB TF object graph of 9 levels, each node holding 40 references to the next, walked as a tree while looking for variables. Found: hostile review (issue 10)."""
    _, good = batch("unused")
    key = "layer-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    nodes = [_graph_node(_child(1, "layer-0")), _graph_node(_child(2, "kernel"), _child(3, "sub")),
             _graph_node(_variable(key))]
    levels = 9
    for i in range(levels):
        nodes.append(_graph_node(*[_child(4 + i, f"layer-{j}") for j in range(40)]))
    nodes.append(_graph_node())
    prefix = tf_with_graph(good.parent, "dag", nodes)
    run = run_bounded("convert", "--outputs-dir", good.parent, memory=MEMORY, timeout=20)
    assert_refused(run, [], [prefix, good], exit_code=0)


# === 7. false refusals: what torch's own weights-only loader reads ==============================


def test_layout_values_are_inert_data(tmp_path: Path) -> None:
    """Stops: torch.save of a torch.layout (torch.serialization._get_layout) refused as dangerous; torch's weights-only loader allows it. Found: hostile review (issue 10)."""
    import torch

    path = tmp_path / "layout.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2, 2)},
                "hyper_parameters": {"layout": torch.sparse_coo, "dense": torch.strided}}, path)
    run = run_bounded("convert", "--checkpoint", path, memory=MEMORY, timeout=TIMEOUT)
    assert_refused(run, [], [path], exit_code=0)
    assert sidecar_of(path)["model"]["hyper_parameters"] == {"layout": "torch.sparse_coo",
                                                              "dense": "torch.strided"}
    with pytest.raises(CorruptCheckpointError, match="unknown torch layout"):
        load(pkl(op_call(op_global("torch.serialization", "_get_layout"), op_str("os.system"))))
    assert load(pkl(op_call(op_global("torch.serialization", "_get_layout"),
                            op_str("torch.sparse_csr")))) == TorchLayout("torch.sparse_csr")


@pytest.mark.parametrize("kind", ["sparse", "quantized", "quantized per channel"])
def test_sparse_and_quantized_tensors_are_named_as_such(tmp_path: Path, kind: str) -> None:
    """Stops: a sparse tensor refused as "dangerous callables" and a quantized one as "unknown storage type" (corrupt): both are well-formed, ckptctl just cannot convert them. Found: hostile review (issue 10)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        special = {"sparse": lambda: torch.ones(2, 2).to_sparse(),
                   "quantized": lambda: torch.quantize_per_tensor(torch.ones(2, 2), 0.1, 0,
                                                                  torch.qint8),
                   "quantized per channel": lambda: torch.quantize_per_channel(
                       torch.ones(2, 2), torch.tensor([0.1, 0.2]), torch.tensor([0, 0]), 0,
                       torch.quint8)}[kind]()
    path = tmp_path / "special.pt"
    torch.save({"w": torch.ones(2, 2), "s": special}, path)
    run = run_bounded("convert", "--checkpoint", path, memory=MEMORY, timeout=TIMEOUT)
    assert_refused(run, [path], reason=f"s ({kind.split()[0]} tensor)")
    assert "dangerous" not in run.stderr and "storage type" not in run.stderr
    from ckptctl.formats.pytorch.metadata import split_state_dict
    from ckptctl.readers.torch_files import open_torch

    key, tensors, skipped = split_state_dict(open_torch(path).obj)
    assert key is None and tensors is not None and list(tensors) == ["w"]
    assert skipped == [f"s ({kind.split()[0]} tensor)"]


def test_a_quantized_tensor_is_named_not_an_unknown_storage(tmp_path: Path) -> None:
    """Stops: a quantized tensor failing as "unknown storage type", as if the file were
    damaged. It is named, and the file is refused as unsupported: weights without one of
    their tensors would not load with strict=True, so nothing partial is written. Found:
    hostile review (issue 10)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_tensor(torch.ones(2, 2), 0.1, 0, torch.qint8)
    path = tmp_path / "mixed.pt"
    torch.save({"w": torch.ones(2, 2), "q": quantized}, path)
    run = run_bounded("convert", "-v", "--checkpoint", path, memory=MEMORY, timeout=TIMEOUT)
    assert_refused(run, [path], [], reason="q (quantized tensor)")
    assert "storage type" not in run.stderr


# === real checkpoints are not refused ===========================================================


def test_real_checkpoints_convert_within_their_budgets(tmp_path: Path) -> None:
    """Stops: budgets refusing real checkpoints: a 200-tensor state dict of a few MB, a 1,000-layer model with optimizer state, a deeply nested real config. Found: hostile review (issue 10)."""
    import torch

    folder = tmp_path / "real"
    folder.mkdir()
    torch.manual_seed(0)
    state = {f"block{i}.weight": torch.randn(64, 64) for i in range(200)}
    torch.save(state, folder / "state_dict.pt")
    layers = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(1000)])
    optimizer = torch.optim.Adam(layers.parameters())
    layers(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    config: Any = {"lr": 1e-3}
    for _ in range(200):
        config = {"inner": config, "tags": ["a", "b"]}
    torch.save({"state_dict": layers.state_dict(), "optimizer_states": [optimizer.state_dict()],
                "hyper_parameters": config, "epoch": 3}, folder / "deep.ckpt")
    started = time.monotonic()
    run = run_bounded("convert", "--outputs-dir", folder, memory=MEMORY, timeout=TIMEOUT)
    assert_refused(run, [], [folder / "state_dict.pt", folder / "deep.ckpt"], exit_code=0)
    assert time.monotonic() - started < 60
    from ckptctl.layouts.ckptctl_tensors import read_tensors

    arrays, _ = read_tensors(outputs_for(folder / "state_dict.pt")[0])
    assert all(np.array_equal(arrays[k], v.numpy()) for k, v in state.items())
    assert sidecar_of(folder / "deep.ckpt")["weights"]["tensor_count"] == 2000


def test_sparse_file_buys_no_output(tmp_path: Path) -> None:
    """Stops: a sparse copy of a checkpoint (a 128 MiB zero tensor, a few KiB on disk)
    writing 128 MiB of weights: the output budget counts what the file stores on disk, not
    what it declares. Found: hostile review (issue 10)."""
    import shutil
    import subprocess

    import torch

    dense = tmp_path / "dense" / "zeros.pt"
    dense.parent.mkdir()
    torch.save({"w": torch.zeros(32 << 20)}, dense)
    sparse = tmp_path / "sparse" / "zeros.pt"
    sparse.parent.mkdir()
    if shutil.which("cp") is None or subprocess.run(
            ["cp", "--sparse=always", str(dense), str(sparse)], check=False).returncode != 0:
        pytest.skip("GNU cp --sparse=always is needed to make a sparse file")
    if sparse.stat().st_blocks * 512 > 1 << 20:
        pytest.skip("this filesystem does not keep holes")
    good = sparse.parent / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    run = run_bounded("convert", "--outputs-dir", sparse.parent, memory=MEMORY, timeout=TIMEOUT)
    assert_refused(run, [sparse], [good], reason="exceeds the output budget")
    assert "stores on disk" in run.stderr
    control = run_bounded("convert", "--outputs-dir", dense.parent, memory=MEMORY, timeout=TIMEOUT)
    assert_refused(control, [], [dense], exit_code=0)
