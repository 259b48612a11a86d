"""Hostile pickles and containers against the restricted unpickler and the torch readers.

Every attack is hand-assembled from raw pickle opcodes (``pickle``'s opcode constants) and
wrapped in a real ``torch.save`` zip (``data.pkl`` rewritten, entries kept STORED) or in a
legacy ``torch.save`` stream. The promises under test (README, ``unpickler.py``):

* no code from a checkpoint ever runs: payloads try to ``touch`` a marker in ``tmp_path``
  and the ``marker`` fixture fails the test (an *error*, never hidden by ``xfail``) if the
  marker appears;
* a pickle naming a dangerous callable is refused with ``UnsafePickleError`` naming it;
* malformed bytes raise only ``CkptError`` subclasses: no other exception type, no crash,
  no hang, memory bounded (crash and memory attacks run in a resource-limited child);
* tensor views never read outside their storage.

Each test is a regression test (a new gap would be added as ``xfail(strict=True)`` with its
reason). Its first docstring line (or, in mixed tables, the comment above each case) says which
attack it stops and where it was found: "hostile review of the unpickler, session 1" when the
attack got through the reader as it was before that review (these tests fail against commit
ccc0a09, the parent of fa74ed6), "designed up front" when it was already stopped, or for controls.
"""

from __future__ import annotations

import copyreg
import io
import json
import os
import pickle
import pickletools
import resource
import shlex
import struct
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptctl.errors import (
    AmbiguousCheckpointError,
    CkptError,
    CorruptCheckpointError,
    UnsafePickleError,
    UnsupportedCheckpointError,
)
from ckptctl.readers import unpickler as unpickler_module
from ckptctl.readers.tensor import LazyTensor
from ckptctl.readers.torch_files import LEGACY_HEAD, TorchFile, open_torch
from ckptctl.readers.unpickler import restricted_load

REPO = Path(__file__).resolve().parent.parent

# --- raw opcode assembly -----------------------------------------------------------------

P0 = b""
P2 = pickle.PROTO + b"\x02"
P4 = pickle.PROTO + b"\x04"
P5 = pickle.PROTO + b"\x05"


def op_global(module: str, name: str) -> bytes:
    """GLOBAL (protocols 0-3): ``c<module>\\n<name>\\n``."""
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def op_str(text: str) -> bytes:
    """BINUNICODE: a 4-byte length then UTF-8."""
    raw = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def op_stack_global(module: str, name: str) -> bytes:
    """STACK_GLOBAL (protocol 4): module and name strings taken from the stack."""
    return op_str(module) + op_str(name) + pickle.STACK_GLOBAL


def op_bytes(data: bytes) -> bytes:
    return pickle.BINBYTES + struct.pack("<I", len(data)) + data


def op_int(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return pickle.BININT + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    if len(raw) < 256:
        return pickle.LONG1 + bytes([len(raw)]) + raw
    return pickle.LONG4 + struct.pack("<i", len(raw)) + raw


def op_tuple(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def op_list(*items: bytes) -> bytes:
    return pickle.EMPTY_LIST + pickle.MARK + b"".join(items) + pickle.APPENDS


def op_dict(*pairs: tuple[bytes, bytes]) -> bytes:
    return pickle.EMPTY_DICT + b"".join(k + v + pickle.SETITEM for k, v in pairs)


def op_call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)`` via REDUCE."""
    return func + op_tuple(*args) + pickle.REDUCE


def op_build(state: bytes) -> bytes:
    """BUILD: ``__setstate__(state)`` or ``__dict__`` update (+ setattr for a slot state)."""
    return state + pickle.BUILD


def op_slotstate(**attrs: bytes) -> bytes:
    """A ``(None, {name: value})`` BUILD state: every item becomes a ``setattr``."""
    return op_tuple(pickle.NONE, op_dict(*[(op_str(k), v) for k, v in attrs.items()]))


def pkl(*body: bytes, proto: bytes = P2) -> bytes:
    return proto + b"".join(body) + pickle.STOP


def np_dtype(code: str) -> bytes:
    """``numpy.dtype(code, False, True)``: how numpy pickles a dtype (a fresh copy)."""
    return op_call(op_global("numpy", "dtype"), op_str(code), pickle.NEWFALSE, pickle.NEWTRUE)


def op_storage_pid(key: str = "0", storage: str = "FloatStorage", numel: int = 16,
                   legacy: bool = False) -> bytes:
    """torch's persistent id ``('storage', <type>, key, location, numel[, view])``."""
    items = [op_str("storage"), op_global("torch", storage), op_str(key), op_str("cpu"),
             op_int(numel)]
    if legacy:
        items.append(pickle.NONE)
    return op_tuple(*items) + pickle.BINPERSID


def op_tensor(pid: bytes | None = None, offset: int = 0, shape: tuple[int, ...] = (16,),
              stride: tuple[int, ...] = (1,)) -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    return op_call(
        op_global("torch._utils", "_rebuild_tensor_v2"),
        op_storage_pid() if pid is None else pid, op_int(offset),
        op_tuple(*map(op_int, shape)), op_tuple(*map(op_int, stride)), pickle.NEWFALSE,
        op_call(op_global("collections", "OrderedDict")),
    )


def state_dict_pkl(*extra: tuple[str, bytes], tensor: bytes | None = None) -> bytes:
    """``{"w": tensor, **extra}`` as a protocol-2 pickle."""
    pairs = [(op_str("w"), op_tensor() if tensor is None else tensor)]
    pairs += [(op_str(k), v) for k, v in extra]
    return pkl(op_dict(*pairs))


def opcode_names(data: bytes) -> set[str]:
    return {op.name for op, _, _ in pickletools.genops(data)}


def shell(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


# --- containers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zip_template(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real ``torch.save`` zip of ``{"w": arange(16, float32)}`` (storage key "0")."""
    import torch

    path = tmp_path_factory.mktemp("tpl") / "archive.pt"
    torch.save({"w": torch.arange(16, dtype=torch.float32)}, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def legacy_template(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real legacy (non-zip) ``torch.save`` stream of ``{"w": arange(4, float32)}``."""
    import torch

    path = tmp_path_factory.mktemp("tpl") / "legacy.pt"
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, path,
               _use_new_zipfile_serialization=False)
    return path.read_bytes()


def rewrite_zip(template: bytes, data_pkl: bytes | None = None,
                replace: dict[str, bytes] | None = None, add: dict[str, bytes] | None = None,
                compress: dict[str, int] | None = None) -> bytes:
    """The template with ``<prefix>/data.pkl`` (and other members, by suffix) replaced."""
    replace = dict(replace or {})
    if data_pkl is not None:
        replace["data.pkl"] = data_pkl
    compress = compress or {}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(template)) as zin, zipfile.ZipFile(out, "w") as zout:
        prefix = next(i.filename for i in zin.infolist() if i.filename.endswith("data.pkl"))
        prefix = prefix[: -len("data.pkl")]
        for info in zin.infolist():
            suffix = info.filename[len(prefix):]
            data = replace.get(suffix, zin.read(info))
            info.compress_type = compress.get(suffix, zipfile.ZIP_STORED)
            zout.writestr(info, data)
        for suffix, data in (add or {}).items():
            zout.writestr(zipfile.ZipInfo(prefix + suffix), data)
    return out.getvalue()


def build_zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    """A zip from scratch: ``(name, data, compress_type)`` in order."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data, method in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            archive.writestr(info, data)
    return out.getvalue()


def patch_zip_entry(data: bytes, name: str, central: dict[str, int] | None = None,
                    local: dict[str, int] | None = None) -> bytes:
    """Forge header fields of one member (central directory and/or local header)."""
    central_fields = {"flags": (8, "<H"), "method": (10, "<H"), "crc": (16, "<I"),
                      "size": (24, "<I"), "header_offset": (42, "<I")}
    local_fields = {"flags": (6, "<H"), "method": (8, "<H"), "name_len": (26, "<H")}
    out = bytearray(data)
    raw_name = name.encode()

    def find(signature: bytes, name_at: int, header: int) -> int:
        start = 0
        while True:
            start = out.index(signature, start)
            name_len = struct.unpack_from("<H", out, start + name_at)[0]
            if bytes(out[start + header: start + header + name_len]) == raw_name:
                return start
            start += 4

    for fields, table, signature, name_at, header in (
        (central or {}, central_fields, b"PK\x01\x02", 28, 46),
        (local or {}, local_fields, b"PK\x03\x04", 26, 30),
    ):
        if fields:
            at = find(signature, name_at, header)
            for key, value in fields.items():
                offset, fmt = table[key]
                struct.pack_into(fmt, out, at + offset, value)
    return bytes(out)


def split_legacy(data: bytes) -> tuple[list[bytes], bytes]:
    """A legacy stream's five pickles (magic, version, sys_info, object, keys) and the tail."""
    pickles = []
    start = 0
    stream = io.BytesIO(data)
    for _ in range(5):
        for op, _, pos in pickletools.genops(stream):
            if op.name == "STOP":
                end = pos + 1
                break
        pickles.append(data[start:end])
        start = end
        stream.seek(end)
    return pickles, data[start:]


LEGACY_OBJ = pkl(op_dict((op_str("w"), op_tensor(op_storage_pid("k", numel=4, legacy=True),
                                                    shape=(4,)))))
LEGACY_KEYS = pkl(op_list(op_str("k")))
LEGACY_RECORD = struct.pack("<q", 4) + struct.pack("<4f", 0, 1, 2, 3)


def legacy_stream(template: bytes, obj: bytes = LEGACY_OBJ, keys: bytes = LEGACY_KEYS,
                  tail: bytes = LEGACY_RECORD, magic: bytes | None = None,
                  version: bytes | None = None, sys_info: bytes | None = None) -> bytes:
    """A legacy stream: torch's own magic/version/sys_info pickles around crafted parts."""
    (t_magic, t_version, t_sys, _, _), _ = split_legacy(template)
    return ((magic or t_magic) + (version or t_version) + (sys_info or t_sys) + obj + keys
            + tail)


def write(tmp_path: Path, data: bytes, name: str = "model.pt") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def open_and_read(path: Path) -> dict[str, Any]:
    """``open_torch`` then read every top-level tensor, as a converter would."""
    tf = open_torch(path)
    assert isinstance(tf.obj, dict)
    return {k: v.read(tf, tf.big_endian) if isinstance(v, LazyTensor) else v
            for k, v in tf.obj.items()}


def read_tensor(tf: TorchFile, key: str = "w") -> np.ndarray:
    tensor = tf.obj[key]
    assert isinstance(tensor, LazyTensor)
    return tensor.read(tf, tf.big_endian)


# --- isolation -------------------------------------------------------------------------------


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """Where payloads try to write; checked again at teardown so ``xfail`` cannot hide it."""
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), f"code from a checkpoint ran: {path} was created"


CHILD_PRELUDE = """
import gc, json, resource, sys
from pathlib import Path
from ckptctl.errors import CkptError


def peak_mib():
    # VmHWM is this process's own peak RSS; ru_maxrss would start at the forking parent's.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(**fields):
    print("RESULT " + json.dumps(fields), flush=True)
"""


def _limit_child() -> None:
    """Runs in the child before exec: bounded address space and stack, no core dumps."""
    for limit, value in ((resource.RLIMIT_AS, 3 << 30), (resource.RLIMIT_STACK, 8 << 20),
                         (resource.RLIMIT_CORE, 0)):
        _, hard = resource.getrlimit(limit)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(limit, (value, hard if hard != resource.RLIM_INFINITY else value))


def run_child(tmp_path: Path, body: str, *args: str | Path,
              timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """Run ``body`` in a fresh, resource-limited interpreter; (returncode, reported fields)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD_PRELUDE + textwrap.dedent(body))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONFAULTHANDLER": ""}
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=_limit_child, env=env,
                          cwd=REPO, check=False)
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    fields = json.loads(results[-1][len("RESULT "):]) if results else {}
    if proc.returncode != 0:
        fields.setdefault("stderr", proc.stderr[-2000:])
    return proc.returncode, fields


LOAD_IN_CHILD = """
from ckptctl.readers.unpickler import restricted_load
payload = Path(sys.argv[1]).read_bytes()
before = peak_mib()
try:
    obj, _ = restricted_load(payload)
    outcome = "loaded"
except CkptError as exc:
    outcome = type(exc).__name__
grew = peak_mib() - before
obj = None
gc.collect()
report(outcome=outcome, grew=grew)
"""


def load_in_child(tmp_path: Path, payload: bytes) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "payload.pkl"
    path.write_bytes(payload)
    return run_child(tmp_path, LOAD_IN_CHILD, path)


# === 1. dangerous globals are refused, whatever opcode spells them ==========================

Payload = Callable[[str], bytes]  # shell command -> pickle bytes

UNSAFE: list[tuple[str, Payload, set[str], str]] = [
    # (id, payload, globals that must be named, an opcode the payload must really use)
    ("GLOBAL os.system", lambda c: pkl(op_call(op_global("os", "system"), op_str(c))),
     {"os.system"}, "GLOBAL"),
    ("STACK_GLOBAL os.system",
     lambda c: pkl(op_call(op_stack_global("os", "system"), op_str(c)), proto=P4),
     {"os.system"}, "STACK_GLOBAL"),
    ("STACK_GLOBAL of memoized strings",
     lambda c: pkl(op_str("os"), pickle.MEMOIZE, op_str("system"), pickle.MEMOIZE,
                   pickle.POP, pickle.POP, pickle.BINGET + b"\x00", pickle.BINGET + b"\x01",
                   pickle.STACK_GLOBAL, op_tuple(op_str(c)), pickle.REDUCE, proto=P4),
     {"os.system"}, "MEMOIZE"),
    ("memoized GLOBAL fetched again",
     lambda c: pkl(op_global("posix", "system"), pickle.BINPUT + b"\x07", pickle.POP,
                   pickle.BINGET + b"\x07", op_tuple(op_str(c)), pickle.REDUCE),
     {"posix.system"}, "BINGET"),
    ("py2 __builtin__.eval",
     lambda c: pkl(op_call(op_global("__builtin__", "eval"),
                           op_str(f"__import__('os').system({c!r})"))),
     {"builtins.eval"}, "GLOBAL"),
    ("py2 __builtin__.exec",
     lambda c: pkl(op_call(op_global("__builtin__", "exec"),
                           op_str(f"import os; os.system({c!r})"))),
     {"builtins.exec"}, "GLOBAL"),
    ("posix.system", lambda c: pkl(op_call(op_global("posix", "system"), op_str(c))),
     {"posix.system"}, "GLOBAL"),
    ("nt.system", lambda c: pkl(op_call(op_global("nt", "system"), op_str(c))),
     {"nt.system"}, "GLOBAL"),
    ("subprocess.check_call",
     lambda c: pkl(op_call(op_global("subprocess", "check_call"),
                           op_list(*map(op_str, shlex.split(c))))),
     {"subprocess.check_call"}, "GLOBAL"),
    ("__import__('os').system via getattr",
     lambda c: pkl(op_call(op_call(op_global("builtins", "getattr"),
                                   op_call(op_global("builtins", "__import__"), op_str("os")),
                                   op_str("system")), op_str(c))),
     {"builtins.getattr", "builtins.__import__"}, "REDUCE"),
    ("getattr chain on an inert class",
     lambda c: pkl(op_call(op_global("__builtin__", "getattr"),
                           op_global("argparse", "Namespace"), op_str("__init__"))),
     {"builtins.getattr"}, "GLOBAL"),
    ("operator.attrgetter",
     lambda c: pkl(op_call(op_call(op_call(op_global("operator", "attrgetter"),
                                           op_str("system")), op_global("pydoc", "os")),
                           op_str(c))),
     {"operator.attrgetter"}, "REDUCE"),
    ("operator.methodcaller",
     lambda c: pkl(op_call(op_call(op_global("operator", "methodcaller"), op_str("system"),
                                   op_str(c)), op_global("pydoc", "os"))),
     {"operator.methodcaller"}, "REDUCE"),
    ("functools.partial(os.system)()",
     lambda c: pkl(op_call(op_call(op_global("functools", "partial"),
                                   op_global("os", "system"), op_str(c)))),
     {"functools.partial", "os.system"}, "REDUCE"),
    ("py2 __builtin__.reduce -> functools.reduce",
     lambda c: pkl(op_call(op_global("__builtin__", "reduce"), op_global("os", "system"),
                           op_list(op_str(c)))),
     {"functools.reduce", "os.system"}, "GLOBAL"),
    ("copyreg._reconstructor with a dangerous base",
     lambda c: pkl(op_call(op_global("copy_reg", "_reconstructor"),
                           op_global("argparse", "Namespace"), op_global("os", "system"),
                           op_str(c))),
     {"os.system"}, "GLOBAL"),
    ("copyreg._reconstructor with a dangerous cls",
     lambda c: pkl(op_call(op_global("copyreg", "_reconstructor"), op_global("os", "system"),
                           op_global("builtins", "object"), op_str(c))),
     {"os.system"}, "GLOBAL"),
    ("inert class called with a dangerous callable",
     lambda c: pkl(op_call(op_global("argparse", "Namespace"),
                           op_global("builtins", "eval"))),
     {"builtins.eval"}, "REDUCE"),
    ("INST (protocol 0)",
     lambda c: b"(S" + repr(c).encode() + b"\nios\nsystem\n.", {"os.system"}, "INST"),
    ("OBJ (protocol 1)",
     lambda c: b"(cos\nsystem\nS" + repr(c).encode() + b"\no.", {"os.system"}, "OBJ"),
    ("protocol 0 text GLOBAL+TUPLE+REDUCE",
     lambda c: b"c__builtin__\neval\n(S" + repr(f"__import__('os').system({c!r})").encode()
     + b"\ntR.", {"builtins.eval"}, "STRING"),
    ("NEWOBJ of a dangerous class",
     lambda c: pkl(op_global("subprocess", "Popen"), op_tuple(op_str(c)), pickle.NEWOBJ),
     {"subprocess.Popen"}, "NEWOBJ"),
    ("NEWOBJ_EX of a dangerous class",
     lambda c: pkl(op_stack_global("subprocess", "Popen"), op_tuple(op_str(c)),
                   op_dict((op_str("shell"), pickle.NEWTRUE)), pickle.NEWOBJ_EX, proto=P4),
     {"subprocess.Popen"}, "NEWOBJ_EX"),
    ("defaultdict(os.system)",
     lambda c: pkl(op_call(op_global("collections", "defaultdict"), op_global("os", "system"))),
     {"os.system"}, "GLOBAL"),
    ("OrderedDict BUILD {'__setstate__': os.system} then BUILD(cmd)",
     lambda c: pkl(op_call(op_global("collections", "OrderedDict")),
                   op_build(op_dict((op_str("__setstate__"), op_global("os", "system")))),
                   op_build(op_str(c))),
     {"os.system"}, "BUILD"),
    ("BUILD slot state on an inert object",
     lambda c: pkl(op_call(op_global("argparse", "Namespace")),
                   op_build(op_slotstate(hook=op_global("subprocess", "getoutput")))),
     {"subprocess.getoutput"}, "BUILD"),
    ("numpy scalar of object dtype holding os.system",
     lambda c: pkl(op_call(op_global("numpy.core.multiarray", "scalar"), np_dtype("O8"),
                           op_global("os", "system"))),
     {"os.system"}, "GLOBAL"),
    ("numpy object array holding os.system",
     lambda c: pkl(op_call(op_global("numpy.core.multiarray", "_reconstruct"),
                           op_global("numpy", "ndarray"), op_tuple(op_int(0)), op_bytes(b"b")),
                   op_build(op_tuple(op_int(1), op_tuple(op_int(1)), np_dtype("O8"),
                                     pickle.NEWFALSE, op_list(op_global("os", "system"))))),
     {"os.system"}, "BUILD"),
    ("_rebuild_from_type_v2 with a dangerous func",
     lambda c: pkl(op_call(op_global("torch._tensor", "_rebuild_from_type_v2"),
                           op_global("os", "system"), op_global("torch", "Tensor"),
                           op_tuple(op_str(c)), op_dict())),
     {"os.system"}, "GLOBAL"),
    ("torch.load / numpy.load (nested unpickling)",
     lambda c: pkl(op_call(op_global("torch", "load"), op_str("/dev/null")),
                   pickle.POP, op_call(op_global("numpy", "load"), op_str("/dev/null"))),
     {"torch.load", "numpy.load"}, "GLOBAL"),
    ("torch._C native entry point",
     lambda c: pkl(op_global("torch._C", "_jit_pass_inline")), {"torch._C._jit_pass_inline"},
     "GLOBAL"),
]


@pytest.mark.parametrize(("payload", "expected", "opcode"),
                         [pytest.param(p, e, o, id=i) for i, p, e, o in UNSAFE])
def test_dangerous_global_is_refused_and_named(marker: Path, payload: Payload,
                                               expected: set[str], opcode: str) -> None:
    """Stops: a dangerous callable (os.system, eval, Popen...) reached through any opcode spelling of a global. Found: designed up front."""
    data = payload(shell(marker))
    assert opcode in opcode_names(data)  # the attack really exercises that opcode
    with pytest.raises(UnsafePickleError) as caught:
        restricted_load(data)
    assert expected <= set(caught.value.globals_found)
    assert "nothing was executed" in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("code", [1, 0x1F0, 0x7FFFFFF0], ids=["EXT1", "EXT2", "EXT4"])
def test_registered_extension_code_still_goes_through_find_class(marker: Path,
                                                                 code: int) -> None:
    """Stops: os.system reached through a copyreg EXT1/EXT2/EXT4 code instead of a named global. Found: designed up front.

    The copyreg extension registry maps a code to (module, name): still vetted.
    """
    op = pickle.EXT1 + bytes([code]) if code < 256 else (
        pickle.EXT2 + struct.pack("<H", code) if code < 65536
        else pickle.EXT4 + struct.pack("<i", code))
    copyreg.add_extension("os", "system", code)
    try:
        data = pkl(op, op_tuple(op_str(shell(marker))), pickle.REDUCE)
        with pytest.raises(UnsafePickleError) as caught:
            restricted_load(data)
    finally:
        copyreg.remove_extension("os", "system", code)  # also drops the extension cache
    assert caught.value.globals_found == ["os.system"]
    assert not marker.exists()



def test_extension_code_is_refused_on_every_load(marker: Path) -> None:
    """Stops: an EXT code refused once, then served unvetted from the extension cache later. Found: hostile review of the unpickler, session 1."""
    code = 0xF3
    copyreg.add_extension("os", "system", code)
    try:
        data = pkl(pickle.EXT1 + bytes([code]), op_tuple(op_str(shell(marker))), pickle.REDUCE)
        for _ in range(2):
            with pytest.raises(UnsafePickleError):
                restricted_load(data)
    finally:
        copyreg.remove_extension("os", "system", code)
    assert not marker.exists()



def test_extension_cache_filled_elsewhere_does_not_run_code(tmp_path: Path) -> None:
    """Stops: an EXT code already cached by another pickle.loads in the process skipping find_class. Found: hostile review of the unpickler, session 1."""
    marker = tmp_path / "PWNED_ext"  # checked here, not at teardown: this attack works today
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(pkl(pickle.EXT1 + b"\xf2", op_tuple(op_str(shell(marker))),
                            pickle.REDUCE))
    rc, result = run_child(tmp_path, """
        import copyreg, pickle
        from ckptctl.readers.unpickler import restricted_load
        copyreg.add_extension("posix", "system", 0xF2)
        pickle.loads(b"\\x80\\x02\\x82\\xf2.")  # elsewhere: the code is resolved, not called
        try:
            restricted_load(Path(sys.argv[1]).read_bytes())
            report(outcome="loaded")
        except CkptError as exc:
            report(outcome=type(exc).__name__)
        """, payload)
    assert not marker.exists(), "the pickle ran os.system"
    assert rc == 0 and result["outcome"] == "UnsafePickleError", result


def test_dangerous_global_in_zip_checkpoint_is_refused(tmp_path: Path, marker: Path,
                                                       zip_template: bytes) -> None:
    """Stops: posix.system injected into a real torch.save data.pkl beside its tensor. Found: designed up front (fickling injection class).

    Hidden one level down next to a real tensor, like a poisoned hparams entry.
    """
    hparams = op_dict((op_str("lr"), op_int(1)), (op_str("hook"), op_call(
        op_global("posix", "system"), op_str(shell(marker)))))
    path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl(("hparams", hparams))))
    with pytest.raises(UnsafePickleError) as caught:
        open_torch(path)
    assert caught.value.globals_found == ["posix.system"]
    assert str(path) in str(caught.value)
    assert not marker.exists()


def test_dangerous_global_inside_tensor_record_is_refused(tmp_path: Path, marker: Path,
                                                          zip_template: bytes) -> None:
    """Stops: os.system hidden in the backward-hooks argument of a tensor record. Found: designed up front (fickling injection class).

    The backward-hooks slot of ``_rebuild_tensor_v2`` carries a payload.
    """
    tensor = op_call(op_global("torch._utils", "_rebuild_tensor_v2"), op_storage_pid(),
                     op_int(0), op_tuple(op_int(16)), op_tuple(op_int(1)), pickle.NEWFALSE,
                     op_call(op_global("os", "system"), op_str(shell(marker))))
    path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl(tensor=tensor)))
    with pytest.raises(UnsafePickleError) as caught:
        open_torch(path)
    assert caught.value.globals_found == ["os.system"]


@pytest.mark.parametrize("part", ["magic", "version", "sys_info", "object", "keys"])
def test_dangerous_global_in_any_legacy_pickle_is_refused(tmp_path: Path, marker: Path,
                                                          legacy_template: bytes,
                                                          part: str) -> None:
    """Stops: a payload in any of the five pickles of a legacy stream (magic ... keys). Found: designed up front."""
    (magic, version, sys_info, _, _), _ = split_legacy(legacy_template)
    evil = op_call(op_global("posix", "system"), op_str(shell(marker)))
    parts = {
        "magic": LEGACY_HEAD + pickle.POP + evil + pickle.STOP,  # still sniffs as legacy
        "version": pkl(evil),
        "sys_info": pkl(evil),
        "object": pkl(op_dict((op_str("w"), evil))),
        "keys": pkl(evil),
    }
    stream = legacy_stream(legacy_template, magic=parts["magic"] if part == "magic" else magic,
                           version=parts["version"] if part == "version" else version,
                           sys_info=parts["sys_info"] if part == "sys_info" else sys_info,
                           obj=parts["object"] if part == "object" else LEGACY_OBJ,
                           keys=parts["keys"] if part == "keys" else LEGACY_KEYS)
    path = write(tmp_path, stream)
    with pytest.raises(UnsafePickleError) as caught:
        open_torch(path)
    assert caught.value.globals_found == ["posix.system"]
    assert not marker.exists()


def test_legacy_module_source_record_with_dangerous_global(tmp_path: Path, marker: Path,
                                                           legacy_template: bytes) -> None:
    """Stops: os.system smuggled in as the class of a legacy ('module', cls, source) record. Found: designed up front.

    A pickled nn.Module's ``('module', cls, source)`` persistent id is never used.
    """
    obj = pkl(op_dict((op_str("m"), op_tuple(op_str("module"), op_global("os", "system"),
                                              op_str(shell(marker))) + pickle.BINPERSID)))
    path = write(tmp_path, legacy_stream(legacy_template, obj=obj, keys=pkl(pickle.EMPTY_LIST),
                                         tail=b""))
    with pytest.raises(UnsafePickleError):
        open_torch(path)


# --- 1b. a dangerous global must win over any later error --------------------------------

EVIL = op_global("os", "system") + pickle.POP  # referenced, then dropped from the stack

MASKED: list[Any] = [
    # Stops: the global's refusal being masked by a later _codecs misuse error. Found: hostile review of the unpickler, session 1.
    pytest.param(pkl(EVIL, op_call(op_global("_codecs", "encode"), op_int(1))),
                 id="then CorruptCheckpointError"),
    # Stops: the refusal being masked by an unsupported tensor record. Found: hostile review of the unpickler, session 1.
    pytest.param(pkl(EVIL, op_call(op_global("torch._utils", "_rebuild_tensor_v3"),
                                   *[pickle.NONE] * 7)),
                 id="then UnsupportedCheckpointError"),
    # Stops: the refusal being masked by a malformed persistent id. Found: hostile review of the unpickler, session 1.
    pytest.param(pkl(EVIL, op_str("x"), pickle.BINPERSID),
                 id="then bad persistent id"),
    # Stops: the refusal being masked by a 1 TiB length (MemoryError). Found: hostile review of the unpickler, session 1.
    pytest.param(pkl(EVIL, pickle.BINBYTES8 + struct.pack("<Q", 2**40)),
                 id="then MemoryError"),
    # Stops: the refusal being masked by a missing memo entry. Found: designed up front.
    pytest.param(pkl(EVIL, pickle.GET + b"99\n"), id="then UnpicklingError"),
    # Stops: the refusal being masked by a pickle cut off before STOP. Found: designed up front.
    pytest.param(P2 + EVIL, id="then EOF"),
]


@pytest.mark.parametrize("data", MASKED)
def test_dangerous_global_is_named_even_when_the_pickle_then_fails(data: bytes) -> None:
    """Stops: a dangerous global reported as merely corrupt because the pickle fails after it. Found: hostile review of the unpickler, session 1."""
    with pytest.raises(UnsafePickleError) as caught:
        restricted_load(data)
    assert caught.value.globals_found == ["os.system"]



def test_dangerous_storage_type_in_persistent_id_is_named(tmp_path: Path,
                                                          zip_template: bytes) -> None:
    """Stops: os.system as a persistent id's storage type reported as "unknown type", not unsafe. Found: hostile review of the unpickler, session 1."""
    pid = op_tuple(op_str("storage"), op_global("os", "system"), op_str("0"), op_str("cpu"),
                   op_int(16)) + pickle.BINPERSID
    path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl(tensor=op_tensor(pid))))
    with pytest.raises(UnsafePickleError):
        open_torch(path)


# --- 1c. well-known gadgets outside the deny-list ----------------------------------------
# Each of these runs code (or writes files) under a plain ``pickle.loads`` (checked by hand
# when this file was written). ckptctl never calls them (unknown globals are inert), but the
# promise is that they are *refused and named*, not silently read as "unknown".


def _gadget(payload: Payload, name: str) -> Any:
    return pytest.param(payload, name, id=name)


GADGETS = [
    # Stops: pydoc.pipepager(text, cmd) running cmd through the shell. Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_global("pydoc", "pipepager"), op_str("x"), op_str(c))),
            "pydoc.pipepager"),
    # Stops: pydoc.locate importing any dotted name (os.system), then called. Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_call(op_global("pydoc", "locate"), op_str("os.system")),
                                  op_str(c))), "pydoc.locate"),
    # Stops: the C module twin of operator.methodcaller (only operator.* was denied). Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_call(op_global("_operator", "methodcaller"),
                                          op_str("system"), op_str(c)),
                                  op_global("pydoc", "os"))), "_operator.methodcaller"),
    # Stops: the C module twin of operator.attrgetter. Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_call(op_call(op_global("_operator", "attrgetter"),
                                                  op_str("system")), op_global("pydoc", "os")),
                                  op_str(c))), "_operator.attrgetter"),
    # Stops: the C module twin of functools.partial binding a shell command. Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_call(op_global("_functools", "partial"),
                                          op_global("pydoc", "pipepager"), op_str("x"),
                                          op_str(c)))), "_functools.partial"),
    # Stops: a dotted STACK_GLOBAL name walking module attributes (pathlib -> os.system). Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_stack_global("pathlib", "os.system"), op_str(c)),
                          proto=P4), "pathlib.os.system"),
    # Stops: a dotted name reaching object.__subclasses__ (classic sandbox escape). Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_stack_global("builtins", "object.__subclasses__")),
                          proto=P4), "builtins.object.__subclasses__"),
    # Stops: a dotted name reaching torch.load (nested unrestricted unpickling). Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_stack_global("torch", "serialization.load"),
                                  op_str("/dev/null")), proto=P4), "torch.serialization.load"),
    # Stops: numpy's runstring exec-ing a code string. Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_global("numpy.testing._private.utils", "runstring"),
                                  op_str(f"__import__('os').system({c!r})"), op_dict())),
            "numpy.testing._private.utils.runstring"),
    # Stops: torch's execWrapper exec-ing a code string (a public fickling bypass). Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_global("torch.jit.unsupported_tensor_ops", "execWrapper"),
                                  op_str(f"__import__('os').system({c!r})"), op_dict(),
                                  op_dict())), "torch.jit.unsupported_tensor_ops.execWrapper"),
    # Stops: torch.utils.collect_env.run running a shell command. Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_global("torch.utils.collect_env", "run"), op_str(c))),
            "torch.utils.collect_env.run"),
    # Stops: torch.storage._load_from_bytes unpickling embedded bytes unrestricted. Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_global("torch.storage", "_load_from_bytes"), op_bytes(
        pkl(op_call(op_global("posix", "system"), op_str(c)))))),
            "torch.storage._load_from_bytes"),
    # Stops: numpy.load with allow_pickle=True (nested unpickling). Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_global("numpy.lib._npyio_impl", "load"),
                                  op_str("/dev/null"), pickle.NONE, pickle.NEWTRUE)),
            "numpy.lib._npyio_impl.load"),
    # Stops: numpy's read_array with allow_pickle=True (nested unpickling). Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_global("numpy.lib.format", "read_array"),
                                  op_str("/dev/null"), pickle.NEWTRUE)),
            "numpy.lib.format.read_array"),
    # Stops: codecs.open creating/truncating an arbitrary file. Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_global("codecs", "open"), op_str(c.split()[-1]),
                                  op_str("w"))), "codecs.open"),
    # Stops: numpy.memmap creating/overwriting an arbitrary file (mode w+). Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_global("numpy", "memmap"), op_str(c.split()[-1]),
                                  op_str("uint8"), op_str("w+"), op_int(0),
                                  op_tuple(op_int(1)))), "numpy.memmap"),
    # Stops: the raw process spawner under subprocess. Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_global("_posixsubprocess", "fork_exec")),
            "_posixsubprocess.fork_exec"),
    # Stops: _ctypes.dlopen loading an arbitrary shared library. Found: hostile review of the unpickler, session 1.
    _gadget(lambda c: pkl(op_call(op_global("_ctypes", "dlopen"), op_str("/tmp/evil.so"))),
            "_ctypes.dlopen"),
    # Controls: already refused today.
    # Stops: cProfile.run exec-ing a code string. Found: designed up front.
    _gadget(lambda c: pkl(op_call(op_global("cProfile", "run"),
                                  op_str(f"__import__('os').system({c!r})"))),
            "cProfile.run"),
    # Stops: timeit.timeit exec-ing a code string. Found: designed up front.
    _gadget(lambda c: pkl(op_call(op_global("timeit", "timeit"),
                                  op_str(f"__import__('os').system({c!r})"))),
            "timeit.timeit"),
    # Stops: numpy.ctypeslib.load_library loading a shared library. Found: designed up front.
    _gadget(lambda c: pkl(op_call(op_global("numpy.ctypeslib", "load_library"),
                                  op_str("evil"), op_str("/tmp"))),
            "numpy.ctypeslib.load_library"),
    # Stops: torch.hub.load fetching and running a repository's hubconf. Found: designed up front.
    _gadget(lambda c: pkl(op_call(op_global("torch.hub", "load"), op_str("evil/repo"),
                                  op_str("model"))), "torch.hub.load"),
]


@pytest.mark.parametrize(("payload", "name"), GADGETS)
def test_known_code_execution_gadget_is_refused(marker: Path, payload: Payload,
                                                name: str) -> None:
    """Stops: code-running gadgets outside the deny-list (picklescan/modelscan bypass class). Found: hostile review of the unpickler, session 1."""
    with pytest.raises(UnsafePickleError) as caught:
        restricted_load(payload(shell(marker)))
    assert name in caught.value.globals_found
    assert not marker.exists()


def test_unknown_harmless_globals_stay_inert_data(marker: Path) -> None:
    """Stops: an unknown global (argparse.Namespace, PosixPath) being imported or called. Found: designed up front.

    Not refused, not imported, not called: kept as data for the metadata reader.
    """
    data = pkl(op_dict(
        (op_str("args"), op_call(op_global("argparse", "Namespace")) + op_build(
            op_dict((op_str("lr"), op_int(3)), (op_str("cmd"), op_str(shell(marker)))))),
        (op_str("path"), op_call(op_global("pathlib", "PosixPath"), op_str("runs"),
                                 op_str("a"))),
    ))
    obj, unpickler = restricted_load(data)
    assert unpickler.unknown == {"argparse.Namespace", "pathlib.PosixPath"}
    assert obj["args"].state == {"lr": 3, "cmd": shell(marker)}
    assert obj["path"].args == ("runs", "a")
    assert not marker.exists()


def test_nested_pickle_inside_bytes_is_data_not_loaded(marker: Path) -> None:
    """Stops: a second-stage pickle inside a bytes value being unpickled too. Found: designed up front."""
    inner = pkl(op_call(op_global("os", "system"), op_str(shell(marker))))
    obj, _ = restricted_load(pkl(op_dict((op_str("blob"), op_bytes(inner)))))
    assert obj == {"blob": inner}
    assert not marker.exists()


# === 2. malformed pickles raise CorruptCheckpointError only ================================

MALFORMED: list[Any] = [
    pytest.param(b"", id="empty"),
    pytest.param(P2 + pickle.NONE, id="no STOP"),
    pytest.param(state_dict_pkl()[:40], id="truncated mid-record"),
    pytest.param(P2 + b"\xff" + pickle.STOP, id="unknown opcode"),
    pytest.param(pkl(pickle.REDUCE), id="stack underflow"),
    pytest.param(pkl(pickle.MARK + pickle.POP_MARK + pickle.POP_MARK), id="POP_MARK without MARK"),
    pytest.param(pkl(pickle.BINGET + b"\x05"), id="BINGET of a missing memo entry"),
    pytest.param(pkl(op_int(1), op_int(2), pickle.STACK_GLOBAL, proto=P4),
                 id="STACK_GLOBAL of ints"),
    pytest.param(pkl(pickle.EMPTY_DICT, pickle.MARK, op_int(1), pickle.SETITEMS),
                 id="odd SETITEMS"),
    pytest.param(pickle.PROTO + b"\x06" + pickle.NONE + pickle.STOP, id="protocol 6"),
    pytest.param(P2 + pickle.BINUNICODE + struct.pack("<I", 0xFFFFFFFF) + b"ab" + pickle.STOP,
                 id="BINUNICODE claims 4 GiB"),
    pytest.param(P4 + pickle.BINUNICODE8 + struct.pack("<Q", 2**62) + b"ab" + pickle.STOP,
                 id="BINUNICODE8 claims 2**62"),
    pytest.param(P4 + pickle.BINBYTES8 + struct.pack("<Q", 2**40) + b"ab" + pickle.STOP,
                 id="BINBYTES8 claims 1 TiB"),
    pytest.param(P5 + pickle.BYTEARRAY8 + struct.pack("<Q", 2**20) + b"ab" + pickle.STOP,
                 id="BYTEARRAY8 truncated"),
    pytest.param(P4 + pickle.FRAME + struct.pack("<Q", 2**40) + pickle.NONE + pickle.STOP,
                 id="FRAME claims 1 TiB"),
    pytest.param(pickle.LONG + b"9" * 10000 + b"L\n" + pickle.STOP, id="LONG of 10000 digits"),
    pytest.param(pickle.INT + b"9x\n" + pickle.STOP, id="INT garbage"),
    pytest.param(b"S'\xff\xfe'\n.", id="STRING not utf-8"),
    pytest.param(pkl(pickle.EXT1 + b"\x01"), id="EXT1 unregistered"),
    pytest.param(pkl(pickle.EXT2 + b"\x01\x01"), id="EXT2 unregistered"),
    pytest.param(pkl(pickle.EXT4 + b"\x01\x01\x01\x01"), id="EXT4 unregistered"),
    pytest.param(b"Pfoo\n.", id="PERSID without a loader"),
    pytest.param(pkl(op_int(5), pickle.BINPERSID), id="BINPERSID without a loader"),
    pytest.param(P5 + pickle.NEXT_BUFFER + pickle.STOP, id="NEXT_BUFFER"),
    pytest.param(pkl(op_call(op_global("_codecs", "encode"), op_str("x"), op_str("rot13"))),
                 id="_codecs.encode rot13"),
    pytest.param(pkl(op_call(op_global("_codecs", "encode"), op_int(1), op_str("latin1"))),
                 id="_codecs.encode of an int"),
    pytest.param(pkl(op_call(op_global("collections", "OrderedDict")), op_build(op_int(5))),
                 id="BUILD OrderedDict with an int state"),
    pytest.param(pkl(op_call(op_global("collections", "OrderedDict")),
                     op_build(op_slotstate(__class__=op_global("collections", "defaultdict")))),
                 id="BUILD OrderedDict __class__ swap"),
    pytest.param(pkl(op_global("argparse", "Namespace"), op_build(op_dict(
        (op_str("__setstate__"), op_int(1))))), id="BUILD on an inert class"),
    pytest.param(pkl(op_global("argparse", "Namespace"), op_build(op_slotstate(
        __init__=op_global("builtins", "list")))), id="BUILD slot state on an inert class"),
    pytest.param(pkl(op_global("numpy.dtypes", "Float64DType"),
                     op_build(op_slotstate(evil=op_int(1)))), id="BUILD on a numpy DType class"),
    pytest.param(pkl(op_global("pkg", "na\0me")), id="NUL in a global name"),
    pytest.param(pkl(op_call(op_global("numpy", "dtype"), op_tuple(
        op_str("f8"), op_tuple(op_int(2**31), op_int(2**31))))), id="numpy dtype huge subarray"),
    pytest.param(pkl(op_call(op_global("numpy.core.multiarray", "_reconstruct"),
                             op_global("numpy", "ndarray"), op_tuple(op_int(2**62)),
                             op_str("f8"))), id="numpy _reconstruct 2**62 elements"),
    pytest.param(pkl(op_call(op_global("numpy.core.multiarray", "_reconstruct"),
                             op_global("numpy", "ndarray"), op_tuple(op_int(-1)), op_str("f8"))),
                 id="numpy _reconstruct negative shape"),
    pytest.param(pkl(op_call(op_global("numpy.core.multiarray", "_reconstruct"),
                             op_global("numpy", "ndarray"), op_tuple(op_int(0)), op_bytes(b"b")),
                     op_build(op_tuple(op_int(1), op_tuple(op_int(2**40)), np_dtype("u1"),
                                       pickle.NEWFALSE, op_bytes(b"")))),
                 id="numpy array state shorter than its shape"),
    pytest.param(pkl(op_call(op_global("numpy.core.multiarray", "_reconstruct"),
                             op_global("numpy", "ndarray"), op_tuple(op_int(0)), op_bytes(b"b")),
                     op_build(op_tuple(op_int(1), op_tuple(op_int(2)), np_dtype("O8"),
                                       pickle.NEWFALSE, op_bytes(b"A" * 16)))),
                 id="numpy object array from raw bytes"),
    pytest.param(pkl(op_call(op_global("numpy", "ndarray"), op_tuple(op_int(2)), op_str("f4"),
                             op_bytes(b"\1" * 8), op_int(0), op_tuple(op_int(-1000)))),
                 id="numpy ndarray buffer with escaping strides"),
    pytest.param(pkl(op_call(op_global("numpy", "ndarray"), op_tuple(op_int(2)), op_str("f4"),
                             op_bytes(b"\1" * 8), op_int(10**6), op_tuple(op_int(4)))),
                 id="numpy ndarray buffer offset past the end"),
    pytest.param(pkl(op_call(op_global("numpy.core.multiarray", "scalar"), np_dtype("f8"),
                             op_bytes(b"\0" * 4))), id="numpy scalar with short bytes"),
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_pickle_is_corrupt(data: bytes) -> None:
    """Stops: malformed opcodes, lying lengths and bad numpy states escaping as non-CkptError. Found: designed up front."""
    # Corrupt, refused as unsupported (e.g. numpy object/structured dtypes) or as ambiguous
    # (a frame past its STOP): never loaded.
    with pytest.raises((CorruptCheckpointError, UnsupportedCheckpointError,
                        AmbiguousCheckpointError)):
        restricted_load(data)


def test_deeply_nested_lists_load_or_are_corrupt() -> None:
    """Stops: 200k nested lists crashing the loader (RecursionError or C stack overflow). Found: designed up front.

    The unpickler is a stack machine: depth alone costs no Python recursion.
    """
    depth = 200_000
    data = P2 + pickle.EMPTY_LIST * (depth + 1) + pickle.APPEND * depth + pickle.STOP
    try:
        obj, _ = restricted_load(data)
    except CorruptCheckpointError:
        return
    assert isinstance(obj, list)


@pytest.mark.parametrize("container", [
    pytest.param("dict key"),
    pytest.param("frozenset"),
])
def test_deep_tuple_hashing_does_not_crash(tmp_path: Path, container: str) -> None:
    """Stops: a 1M-deep nested tuple segfaulting the process when hashed (dict key, frozenset). Found: hostile review of the unpickler, session 1."""
    nested = pickle.EMPTY_TUPLE + pickle.TUPLE1 * 1_000_000
    if container == "dict key":
        data = pkl(pickle.EMPTY_DICT, nested, pickle.NONE, pickle.SETITEM)
    else:
        data = pkl(op_call(op_global("builtins", "frozenset"), op_tuple(nested)))
    rc, result = load_in_child(tmp_path, data)
    assert rc == 0, f"child died with {rc}: {result}"
    assert result["outcome"] in {"loaded", "CorruptCheckpointError"}


# === 3. the vetted rebuild functions and records cannot be tampered with ===================



def test_build_cannot_give_a_tensor_a_negative_stride(tmp_path: Path,
                                                      zip_template: bytes) -> None:
    """Stops: BUILD giving a tensor record a negative stride (reads before its storage). Found: hostile review of the unpickler, session 1."""
    tensor = op_tensor(shape=(2,), stride=(1,)) + op_build(op_dict(
        (op_str("stride"), op_tuple(op_int(-16)))))
    path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl(tensor=tensor)))
    try:
        tf = open_torch(path)
    except CorruptCheckpointError:
        return  # refused while loading: fine
    assert tf.records["0"][0] >= 64  # the 64 bytes before the storage are mapped: no crash
    with pytest.raises(CorruptCheckpointError):
        read_tensor(tf)



def test_build_cannot_give_a_tensor_a_negative_offset(tmp_path: Path,
                                                      zip_template: bytes) -> None:
    """Stops: BUILD giving a tensor record a negative offset (reads before its storage). Found: hostile review of the unpickler, session 1."""
    tensor = op_tensor() + op_build(op_dict((op_str("offset"), op_int(-4))))
    path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl(tensor=tensor)))
    with pytest.raises(CorruptCheckpointError):
        read_tensor(open_torch(path))



def test_build_mutated_tensor_does_not_crash_the_reader(tmp_path: Path,
                                                        zip_template: bytes) -> None:
    """Stops: BUILD giving a tensor a -2**40 stride that segfaulted the reader at read time. Found: hostile review of the unpickler, session 1."""
    tensor = op_tensor(shape=(2,), stride=(1,)) + op_build(op_dict(
        (op_str("stride"), op_tuple(op_int(-(2**40))))))
    path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl(tensor=tensor)))
    rc, result = run_child(tmp_path, """
        from ckptctl.readers.torch_files import open_torch
        try:
            tf = open_torch(Path(sys.argv[1]))
            tf.obj["w"].read(tf)
            report(outcome="read")
        except CkptError as exc:
            report(outcome=type(exc).__name__)
        """, path)
    assert rc == 0, f"reader died with {rc}"
    assert result["outcome"] == "CorruptCheckpointError"


TAMPERED: list[Any] = [
    # Stops: BUILD swapping a tensor record's dtype. Found: hostile review of the unpickler, session 1.
    pytest.param(op_tensor() + op_build(op_dict((op_str("dtype"), op_str("evil")))),
                 id="tensor dtype"),
    # Stops: BUILD giving a tensor record a negative shape. Found: hostile review of the unpickler, session 1.
    pytest.param(op_tensor() + op_build(op_dict((op_str("shape"), op_tuple(op_int(-4))))),
                 id="tensor shape negative"),
    # Stops: BUILD giving a tensor record a str shape. Found: hostile review of the unpickler, session 1.
    pytest.param(op_tensor() + op_build(op_dict((op_str("shape"), op_str("abc")))),
                 id="tensor shape str"),
    # Stops: BUILD swapping a tensor record's storage. Found: hostile review of the unpickler, session 1.
    pytest.param(op_tensor() + op_build(op_dict((op_str("storage"), op_str("x")))),
                 id="tensor storage swapped"),
    # Stops: BUILD giving a storage reference a negative numel. Found: hostile review of the unpickler, session 1.
    pytest.param(op_tensor(op_storage_pid() + op_build(op_dict((op_str("numel"),
                                                                op_int(-16))))),
                 id="storage ref numel negative"),
    # Stops: BUILD swapping a storage reference's dtype. Found: hostile review of the unpickler, session 1.
    pytest.param(op_tensor(op_storage_pid() + op_build(op_dict((op_str("dtype"),
                                                                op_str("evil"))))),
                 id="storage ref dtype"),
    # Stops: BUILD swapping the dtype of a storage type. Found: hostile review of the unpickler, session 1.
    pytest.param(op_tensor(op_tuple(
        op_str("storage"), op_global("torch", "FloatStorage")
        + op_build(op_dict((op_str("dtype"), op_str("evil")))),
        op_str("0"), op_str("cpu"), op_int(16)) + pickle.BINPERSID),
                 id="storage type dtype"),
    # Stops: BUILD pointing a storage reference at ../../x. Found: designed up front.
    pytest.param(op_tensor(op_storage_pid() + op_build(op_dict((op_str("key"),
                                                                op_str("../../x"))))),
                 id="storage ref key traversal"),
]


@pytest.mark.parametrize("tensor", TAMPERED)
def test_build_on_ckptctl_records_is_refused_or_harmless(tmp_path: Path, zip_template: bytes,
                                                        tensor: bytes) -> None:
    """Stops: BUILD tampering with ckptctl's own tensor/storage records (dtype, shape, numel, key). Found: hostile review of the unpickler, session 1."""
    path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl(tensor=tensor)))
    with pytest.raises(CkptError):
        read_tensor(open_torch(path))



def test_build_cannot_modify_vetted_rebuild_functions(tmp_path: Path,
                                                      zip_template: bytes) -> None:
    """Stops: BUILD on a vetted callable (_rebuild_tensor_v2, _codecs.encode) altering later loads. Found: hostile review of the unpickler, session 1."""
    rebuild = unpickler_module._rebuild_tensor_v2
    encode = unpickler_module._codecs_encode
    saved = (rebuild.__defaults__, dict(rebuild.__dict__), dict(encode.__dict__))
    evil = pkl(op_global("torch._utils", "_rebuild_tensor_v2"),
               op_build(op_slotstate(__defaults__=pickle.EMPTY_TUPLE)), pickle.POP,
               op_global("_codecs", "encode"), op_build(op_dict((op_str("x"), op_int(1)))))
    try:
        with pytest.raises(CorruptCheckpointError):
            restricted_load(evil)
        assert rebuild.__defaults__ == saved[0]
        assert encode.__dict__ == saved[2]
        # A torch-written tensor record without the optional metadata argument still loads.
        path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl()))
        assert read_tensor(open_torch(path)).tolist() == list(range(16))
    finally:
        rebuild.__defaults__ = saved[0]
        rebuild.__dict__.clear()
        rebuild.__dict__.update(saved[1])
        encode.__dict__.clear()
        encode.__dict__.update(saved[2])


def test_copyreg_reconstructor_never_calls_its_base(marker: Path) -> None:
    """Stops: copyreg._reconstructor calling its base type on attacker-chosen state. Found: designed up front."""
    data = pkl(op_call(op_global("copy_reg", "_reconstructor"), op_global("argparse", "Namespace"),
                       op_global("builtins", "dict"), op_dict((op_str("cmd"),
                                                               op_str(shell(marker))))))
    obj, _ = restricted_load(data)
    assert obj.args == ({"cmd": shell(marker)},)


def test_rebuild_from_type_v2_only_calls_vetted_functions() -> None:
    """Stops: _rebuild_from_type_v2 calling an arbitrary func (list(range(10**12))). Found: designed up front."""
    data = pkl(op_call(op_global("torch._tensor", "_rebuild_from_type_v2"),
                       op_global("builtins", "list"), op_global("torch.nn", "Parameter"),
                       op_tuple(op_call(op_global("builtins", "range"), op_int(10**12))),
                       op_dict()))
    obj, _ = restricted_load(data)
    assert isinstance(obj, unpickler_module.UnsupportedTensor)


# === 4. numpy reconstructors: data only, never memory corruption ===========================

NUMPY_STRUCT_OBJECT = (
    np_dtype("V16")
    + op_build(op_tuple(op_int(3), op_str("|"), pickle.NONE, op_tuple(op_str("a"), op_str("b")),
                        op_dict((op_str("a"), op_tuple(np_dtype("O8"), op_int(0))),
                                (op_str("b"), op_tuple(np_dtype("O8"), op_int(8)))),
                        op_int(16), op_int(1), op_int(1)))  # flags=1: "has objects", no list
)


def _array_of(dtype: bytes, raw: bytes, count: int) -> bytes:
    return (op_call(op_global("numpy.core.multiarray", "_reconstruct"),
                    op_global("numpy", "ndarray"), op_tuple(op_int(0)), op_bytes(b"b"))
            + op_build(op_tuple(op_int(1), op_tuple(op_int(count)), dtype, pickle.NEWFALSE,
                                op_bytes(raw))))


@pytest.mark.parametrize("data", [
    pytest.param(pkl(_array_of(NUMPY_STRUCT_OBJECT, b"A" * 16, 1)), id="object fields from raw bytes"),
    pytest.param(pkl(op_call(op_global("builtins", "str"), _array_of(np_dtype("O8") + op_build(
        op_tuple(op_int(3), op_str("|"), pickle.NONE, pickle.NONE, pickle.NONE, op_int(-1),
                 op_int(-1), op_int(0))), b"A" * 16, 2))),
        id="object dtype with flags cleared"),
])
def test_numpy_dtype_state_cannot_forge_object_pointers(tmp_path: Path, data: bytes) -> None:
    """Stops: a forged numpy dtype state turning raw bytes into object pointers (segfault). Found: hostile review of the unpickler, session 1."""
    rc, result = load_in_child(tmp_path, data)
    assert rc == 0, f"child died with {rc}: {result}"
    assert result["outcome"] in {"CorruptCheckpointError", "UnsupportedCheckpointError"}



def test_numpy_dtype_field_offset_cannot_read_out_of_bounds(tmp_path: Path) -> None:
    """Stops: a structured dtype field at offset 10**8 reading far outside an 8-byte scalar. Found: hostile review of the unpickler, session 1."""
    evil = np_dtype("V8") + op_build(op_tuple(
        op_int(3), op_str("|"), pickle.NONE, op_tuple(op_str("a")),
        op_dict((op_str("a"), op_tuple(np_dtype("f8"), op_int(10**8)))),
        op_int(8), op_int(1), op_int(0)))
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(pkl(op_dict((op_str("v"), op_call(
        op_global("numpy.core.multiarray", "scalar"), evil, op_bytes(b"\0" * 8))))))
    rc, result = run_child(tmp_path, """
        from ckptctl.readers.unpickler import restricted_load
        from ckptctl.formats.pytorch.metadata import to_plain
        try:
            obj, _ = restricted_load(Path(sys.argv[1]).read_bytes())
            report(outcome="loaded", plain=repr(to_plain(obj)))
        except CkptError as exc:
            report(outcome=type(exc).__name__)
        """, payload)
    assert rc == 0, f"child died with {rc}"
    assert result["outcome"] in {"CorruptCheckpointError", "UnsupportedCheckpointError"}


def test_numpy_builtin_dtype_singleton_cannot_be_mutated(tmp_path: Path) -> None:
    """Stops: BUILD on numpy's shared float64 dtype corrupting every float64 in the process. Found: designed up front.

    ``numpy.dtype('f8', False, False)`` is the process-wide float64: BUILD must not touch it.
    """
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(pkl(op_call(op_global("numpy", "dtype"), op_str("f8"), pickle.NEWFALSE,
                                    pickle.NEWFALSE),
                            op_build(op_tuple(op_int(3), op_str(">"), pickle.NONE, pickle.NONE,
                                              pickle.NONE, op_int(4096), op_int(1),
                                              op_int(0)))))
    rc, result = run_child(tmp_path, """
        import numpy as np
        from ckptctl.readers.unpickler import restricted_load
        try:
            restricted_load(Path(sys.argv[1]).read_bytes())
        except CkptError:
            pass
        report(f8=np.dtype("f8").str, size=np.dtype("f8").itemsize)
        """, payload)
    assert rc == 0
    assert result == {"f8": "<f8", "size": 8}


def test_numpy_plain_array_round_trips() -> None:
    """Stops: a false refusal of a legitimate pickled float64 numpy array (control). Found: designed up front.

    Control: a legitimate pickled float array is still data.
    """
    data = pkl(_array_of(np_dtype("<f8"), struct.pack("<2d", 1.5, -2.0), 2))
    obj, _ = restricted_load(data)
    assert obj.array.tolist() == [1.5, -2.0]  # a checked record holding the array


# === 5. memory stays bounded (measured in a child: peak RSS growth) =========================

MIB = 1 << 20
MEMORY: list[Any] = [
    # Stops: a memo index of 2**24 growing the memo table. Found: hostile review of the unpickler, session 1.
    pytest.param(pkl(pickle.NONE, pickle.LONG_BINPUT + struct.pack("<I", 2**24)),
        id="LONG_BINPUT memo index 2**24"),
    # Stops: bytearray(2**28): 256 MiB from a few bytes. Found: hostile review of the unpickler, session 1.
    pytest.param(pkl(op_call(op_global("builtins", "bytearray"), op_int(2**28))),
        id="bytearray(2**28)"),
    # Stops: list(range(2**22)) materialised. Found: hostile review of the unpickler, session 1.
    pytest.param(pkl(op_call(op_global("builtins", "list"), op_call(
        op_global("builtins", "range"), op_int(2**22)))),
        id="list(range(2**22))"),
    # Stops: str() of a 32 MiB bytearray (a 4x larger repr). Found: hostile review of the unpickler, session 1.
    pytest.param(pkl(op_call(op_global("builtins", "str"), op_call(
        op_global("builtins", "bytearray"), op_int(2**25)))),
        id="str(bytearray(2**25))"),
    # Stops: torch.device() given 32 MiB of bytes. Found: hostile review of the unpickler, session 1.
    pytest.param(pkl(op_call(op_global("torch", "device"), op_call(
        op_global("builtins", "bytes"), op_int(2**25)))),
        id="torch.device(bytes(2**25))"),
    # Stops: a 2**24-element numpy object array via NEWOBJ. Found: hostile review of the unpickler, session 1.
    pytest.param(pkl(op_global("numpy", "ndarray"), op_tuple(op_tuple(op_int(2**24)),
                                                             op_str("O")), pickle.NEWOBJ),
                 id="numpy object array 2**24"),
    # Stops: numpy _reconstruct of an 8 TiB array. Found: designed up front.
    pytest.param(pkl(op_call(op_global("numpy.core.multiarray", "_reconstruct"),
                             op_global("numpy", "ndarray"), op_tuple(op_int(2**40)),
                             op_str("f8"))), id="numpy _reconstruct 8 TiB"),
    # Stops: a BINBYTES8 length of 8 GiB read eagerly. Found: designed up front.
    pytest.param(P4 + pickle.BINBYTES8 + struct.pack("<Q", 2**33) + b"ab" + pickle.STOP,
                 id="BINBYTES8 claims 8 GiB"),
]


@pytest.mark.parametrize("data", MEMORY)
def test_small_pickle_cannot_claim_much_memory(tmp_path: Path, data: bytes) -> None:
    """Stops: a pickle under 100 bytes making the loader allocate hundreds of MiB. Found: hostile review of the unpickler, session 1."""
    assert len(data) < 100
    rc, result = load_in_child(tmp_path, data)
    assert rc == 0, result
    assert result["grew"] < 64, f"peak RSS grew {result['grew']:.0f} MiB ({result['outcome']})"



@pytest.mark.slow
def test_unknown_globals_are_not_retained_after_loading(tmp_path: Path) -> None:
    """Stops: 10k unknown globals leaving ~23 MiB retained in a process-wide cache after loading. Found: hostile review of the unpickler, session 1."""
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(pkl(*[op_global("pkg", f"n{i}") + pickle.POP for i in range(10_000)],
                            pickle.NONE))
    rc, result = run_child(tmp_path, """
        import tracemalloc
        from ckptctl.readers.unpickler import restricted_load
        data = Path(sys.argv[1]).read_bytes()
        tracemalloc.start()
        restricted_load(data)
        gc.collect()
        report(retained=tracemalloc.get_traced_memory()[0])
        """, payload)
    assert rc == 0, result
    assert result["retained"] < 2 * MIB, f"{result['retained'] / MIB:.1f} MiB retained"


# === 6. tensor records: bounds, overflow, exception types ===================================


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"shape": (-1,), "stride": (1,)}, CorruptCheckpointError),
    ({"shape": (4,), "stride": (-1,)}, CorruptCheckpointError),
    ({"offset": -1}, CorruptCheckpointError),
    ({"shape": (1,) * 65, "stride": (1,) * 65}, CorruptCheckpointError),
    ({"shape": (2, 2), "stride": (1,)}, CorruptCheckpointError),
], ids=["negative dim", "negative stride", "negative offset", "65 dims", "stride rank mismatch"])
def test_bad_tensor_record_is_refused_while_loading(tmp_path: Path, zip_template: bytes,
                                                    kwargs: dict[str, Any],
                                                    error: type[CkptError]) -> None:
    """Stops: tensor records with negative dims/strides/offsets, >64 dims or mismatched ranks. Found: designed up front."""
    path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl(tensor=op_tensor(**kwargs))))
    with pytest.raises(error):
        open_torch(path)


def test_bool_sizes_are_refused(tmp_path: Path, zip_template: bytes) -> None:
    """Stops: booleans as a tensor's size/stride (True == 1) slipping past the integer checks. Found: designed up front."""
    tensor = op_call(op_global("torch._utils", "_rebuild_tensor_v2"), op_storage_pid(),
                     op_int(0), op_tuple(pickle.NEWTRUE), op_tuple(pickle.NEWTRUE),
                     pickle.NEWFALSE, op_dict())
    path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl(tensor=tensor)))
    with pytest.raises(CorruptCheckpointError):
        open_torch(path)


def test_unknown_v3_dtype_is_unsupported(tmp_path: Path, zip_template: bytes) -> None:
    """Stops: a _rebuild_tensor_v3 record with an exotic dtype (quint4x2) read as another dtype. Found: designed up front."""
    tensor = op_call(op_global("torch._utils", "_rebuild_tensor_v3"),
                     op_storage_pid(storage="UntypedStorage", numel=64), op_int(0),
                     op_tuple(op_int(16)), op_tuple(op_int(1)), pickle.NEWFALSE, op_dict(),
                     op_global("torch", "quint4x2"))
    path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl(tensor=tensor)))
    with pytest.raises(UnsupportedCheckpointError):
        open_torch(path)


READ_ERRORS: list[Any] = [
    # Stops: a stride of 2**70 overflowing the byte range. Found: designed up front.
    pytest.param({"shape": (2,), "stride": (2**70,)}, id="stride 2**70"),
    # Stops: an offset of 2**70. Found: designed up front.
    pytest.param({"offset": 2**70, "shape": (1,), "stride": (1,)}, id="offset 2**70"),
    # Stops: a one-element view starting at the storage's end. Found: designed up front.
    pytest.param({"offset": 16, "shape": (1,), "stride": (1,)}, id="offset at the end"),
    # Stops: an empty view placed past the storage's end. Found: designed up front.
    pytest.param({"offset": 17, "shape": (0,), "stride": (1,)}, id="empty view past the end"),
    # Stops: a view one element longer than its storage. Found: designed up front.
    pytest.param({"shape": (17,), "stride": (1,)}, id="one element too many"),
    # Stops: a 2-D view whose last rows run past the storage. Found: designed up front.
    pytest.param({"shape": (4, 4), "stride": (5, 1)}, id="rows past the end"),
    # Stops: a storage numel larger than its record's bytes. Found: designed up front.
    pytest.param({"numel": 2**62}, id="storage numel beyond its record"),
    # Stops: a view and storage both claiming 2**62 elements. Found: designed up front.
    pytest.param({"numel": 2**62, "shape": (2**62,), "stride": (1,)},
                 id="view and storage both huge"),
    # Stops: a shape whose numel wraps to 0 in int64 (2**32 x 2**32). Found: hostile review of the unpickler, session 1.
    pytest.param({"shape": (2**32, 2**32), "stride": (0, 0)}, id="numel wraps to 0"),
    # Stops: a shape whose numel wraps negative in int64. Found: hostile review of the unpickler, session 1.
    pytest.param({"shape": (3, 2**62), "stride": (0, 0)}, id="numel wraps negative"),
    # Stops: an empty view whose other dims overflow int64. Found: hostile review of the unpickler, session 1.
    pytest.param({"shape": (0, 2**62, 2**62), "stride": (1, 1, 1)},
        id="empty view with overflowing dims"),
    # Stops: a single dimension of 2**70. Found: hostile review of the unpickler, session 1.
    pytest.param({"shape": (2**70,), "stride": (0,)}, id="dim 2**70"),
    # Stops: a zero-stride view that materialises 4 TiB. Found: hostile review of the unpickler, session 1.
    pytest.param({"shape": (2**20, 2**20), "stride": (0, 0)},
        id="zero-stride broadcast to 4 TiB"),
]


@pytest.mark.parametrize("kwargs", READ_ERRORS)
def test_out_of_range_view_fails_at_read_with_ckpt_error(tmp_path: Path, zip_template: bytes,
                                                         kwargs: dict[str, Any]) -> None:
    """Stops: tensor views reaching outside their storage or overflowing int64. Found: designed up front; overflows: hostile review, session 1."""
    kwargs = dict(kwargs)  # parameters are shared between runs: never mutate them
    numel = kwargs.pop("numel", 16)
    tensor = op_tensor(op_storage_pid(numel=numel), **kwargs)
    path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl(tensor=tensor)))
    tf = open_torch(path)
    with pytest.raises(CorruptCheckpointError):
        read_tensor(tf)


@pytest.mark.parametrize(("shape", "stride", "offset"), [
    ((16,), (1,), 0), ((4, 4), (1, 4), 0), ((2, 3), (0, 1), 5), ((0,), (1,), 16), ((), (), 15),
], ids=["contiguous", "transposed", "zero-stride rows", "empty at the end", "scalar"])
def test_legal_views_read_exactly_their_elements(tmp_path: Path, zip_template: bytes,
                                                 shape: tuple[int, ...],
                                                 stride: tuple[int, ...], offset: int) -> None:
    """Stops: bounds checks so tight they refuse legal views (transposed, broadcast, empty, scalar) (control). Found: designed up front."""
    tensor = op_tensor(offset=offset, shape=shape, stride=stride)
    path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl(tensor=tensor)))
    values = read_tensor(open_torch(path))
    storage = np.arange(16, dtype=np.float32)
    expected = np.lib.stride_tricks.as_strided(storage[offset:], shape=shape,
                                               strides=[s * 4 for s in stride])
    assert values.shape == shape
    assert np.array_equal(values, expected)


# === 7. persistent ids and storage keys (zip) =============================================

PIDS: list[Any] = [
    pytest.param(b"Pfoo\n", id="text PERSID"),
    pytest.param(op_int(7) + pickle.BINPERSID, id="int id"),
    pytest.param(op_list(op_str("storage")) + pickle.BINPERSID, id="list id"),
    pytest.param(op_tuple(op_str("storage")) + pickle.BINPERSID, id="short tuple"),
    pytest.param(op_tuple(op_str("module"), op_str("x"), op_str("y")) + pickle.BINPERSID,
                 id="legacy module record in a zip"),
    pytest.param(op_tuple(op_str("storage"), op_global("argparse", "Namespace"), op_str("0"),
                          op_str("cpu"), op_int(16)) + pickle.BINPERSID,
                 id="unknown storage type"),
    pytest.param(op_storage_pid(numel=-1), id="negative numel"),
    pytest.param(op_tuple(op_str("storage"), op_global("torch", "FloatStorage"), op_int(0),
                          op_str("cpu"), op_int(16)) + pickle.BINPERSID, id="int key"),
    pytest.param(op_storage_pid(key="../0"), id="key ../0"),
    pytest.param(op_storage_pid(key="/etc/passwd"), id="absolute key"),
    pytest.param(op_storage_pid(key=".."), id="key .."),
    pytest.param(op_storage_pid(key="k" * 300), id="300-char key"),
    pytest.param(op_storage_pid(key="0\0"), id="NUL in key"),
    pytest.param(op_storage_pid(key="..\\..\\0"), id="backslash key"),
    pytest.param(op_storage_pid(key="7"), id="key of a missing record"),
]


@pytest.mark.parametrize("pid", PIDS)
def test_weird_persistent_id_is_corrupt(tmp_path: Path, zip_template: bytes, pid: bytes) -> None:
    """Stops: malformed or path-like persistent ids (../, absolute, NUL, missing record) reaching a storage. Found: designed up front."""
    path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl(tensor=op_tensor(pid))))
    with pytest.raises(CorruptCheckpointError):
        open_and_read(path)


def test_backslash_key_only_names_a_member_inside_the_archive(tmp_path: Path,
                                                              zip_template: bytes) -> None:
    """Stops: a storage key with '..' and backslashes being resolved as a file path (traversal). Found: designed up front.

    Keys are zip member names, never file system paths: ``..\\`` reads the member.
    """
    tensor = op_tensor(op_storage_pid(key="..\\x"))
    data = rewrite_zip(zip_template, state_dict_pkl(tensor=tensor),
                       add={"data/..\\x": struct.pack("<16f", *range(16))})
    path = write(tmp_path, data)
    assert open_and_read(path)["w"].tolist() == list(range(16))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


# === 8. zip containers ====================================================================


def _stored_entries(pickle_bytes: bytes | None = None) -> list[tuple[str, bytes, int]]:
    stored = zipfile.ZIP_STORED
    return [("archive/data.pkl", pickle_bytes or state_dict_pkl(), stored),
            ("archive/byteorder", b"little", stored),
            ("archive/data/0", struct.pack("<16f", *range(16)), stored),
            ("archive/version", b"3\n", stored)]


def _with(entries: list[tuple[str, bytes, int]], name: str, data: bytes | None = None,
          method: int | None = None) -> list[tuple[str, bytes, int]]:
    return [(n, d if n != name or data is None else data, m if n != name or method is None
             else method) for n, d, m in entries]


def _break_local_magic(data: bytes, name: str) -> bytes:
    raw = name.encode()
    at = data.index(b"PK\x03\x04")
    while data[at + 30: at + 30 + len(raw)] != raw:
        at = data.index(b"PK\x03\x04", at + 4)
    return data[:at] + b"XX" + data[at + 2:]


def _method(data: bytes, name: str, method: int) -> bytes:
    return patch_zip_entry(data, name, central={"method": method}, local={"method": method})


def _encrypted(data: bytes, name: str) -> bytes:
    return patch_zip_entry(data, name, central={"flags": 1}, local={"flags": 1})


ZIPS: list[Any] = [
    # Stops: a deflated storage member (storages must be STORED to be mapped). Found: designed up front.
    pytest.param(lambda: build_zip(_with(_stored_entries(), "archive/data/0",
                                         method=zipfile.ZIP_DEFLATED)),
                 UnsupportedCheckpointError, id="deflated storage"),
    # Stops: a bzip2-compressed storage member. Found: designed up front.
    pytest.param(lambda: build_zip(_with(_stored_entries(), "archive/data/0",
                                         method=zipfile.ZIP_BZIP2)),
                 UnsupportedCheckpointError, id="bzip2 storage"),
    # Stops: a data.pkl whose directory entry claims 2 GiB. Found: designed up front.
    pytest.param(lambda: patch_zip_entry(build_zip(_stored_entries()), "archive/data.pkl",
                                         central={"size": 2**31}),
                 CorruptCheckpointError, id="data.pkl claims 2 GiB"),
    # Stops: an 8 MiB deflate bomb behind a lying size. Found: designed up front.
    pytest.param(lambda: patch_zip_entry(build_zip(_with(
        _stored_entries(), "archive/data.pkl", state_dict_pkl() + b"\0" * (8 * MIB),
        zipfile.ZIP_DEFLATED)), "archive/data.pkl", central={"size": len(state_dict_pkl())}),
                 CorruptCheckpointError, id="deflate bomb with a lying size"),
    # Stops: a data.pkl failing its crc. Found: designed up front.
    pytest.param(lambda: patch_zip_entry(build_zip(_stored_entries()), "archive/data.pkl",
                                         central={"crc": 0}),
                 CorruptCheckpointError, id="data.pkl bad crc"),
    # Stops: a storage header offset past the end of file. Found: designed up front.
    pytest.param(lambda: patch_zip_entry(build_zip(_stored_entries()), "archive/data/0",
                                         central={"header_offset": 2**31}),
                 CorruptCheckpointError, id="storage header offset past EOF"),
    # Stops: a storage local-header name length past EOF. Found: designed up front.
    pytest.param(lambda: patch_zip_entry(build_zip(_stored_entries()), "archive/data/0",
                                         local={"name_len": 60000}),
                 CorruptCheckpointError, id="storage local name length past EOF"),
    # Stops: a storage member with a broken local-header magic. Found: designed up front.
    pytest.param(lambda: _break_local_magic(build_zip(_stored_entries()), "archive/data/0"),
                 CorruptCheckpointError, id="storage bad local magic"),
    # Stops: a TorchScript archive (code/ member) read as a checkpoint. Found: designed up front.
    pytest.param(lambda: build_zip([*_stored_entries(), ("archive/code/__torch__.py",
                                                         b"import os", zipfile.ZIP_STORED)]),
                 UnsupportedCheckpointError, id="TorchScript code/"),
    # Stops: a TorchScript constants.pkl beside data.pkl. Found: designed up front.
    pytest.param(lambda: build_zip([*_stored_entries(), ("archive/constants.pkl",
                                                         state_dict_pkl(), zipfile.ZIP_STORED)]),
                 UnsupportedCheckpointError, id="TorchScript constants.pkl"),
    # Stops: a data.pkl outside the first entry's folder, where torch never looks (a second
    # folder's data.pkl is ignored as torch ignores it). Found: designed up front; narrowed
    # to torch's own lookup in issue 10.
    pytest.param(lambda: build_zip([("other/version", b"3", zipfile.ZIP_STORED),
                                    *_stored_entries()]),
                 UnsupportedCheckpointError, id="two data.pkl"),
    # Stops: a zip with no data.pkl. Found: designed up front.
    pytest.param(lambda: build_zip(_stored_entries()[1:]), UnsupportedCheckpointError,
                 id="no data.pkl"),
    # Stops: a truncated central directory. Found: designed up front.
    pytest.param(lambda: build_zip(_stored_entries())[:-30], CorruptCheckpointError,
                 id="truncated central directory"),
    # Stops: a storage member shorter than its numel. Found: designed up front.
    pytest.param(lambda: build_zip(_with(_stored_entries(), "archive/data/0",
                                         struct.pack("<5f", *range(5)))),
                 CorruptCheckpointError, id="storage shorter than numel"),
    # Stops: a referenced storage member that is absent. Found: designed up front.
    pytest.param(lambda: build_zip([e for e in _stored_entries() if e[0] != "archive/data/0"]),
                 CorruptCheckpointError, id="storage missing"),
    # Stops: a data.pkl with an unknown compression method escaping as NotImplementedError. Found: hostile review of the unpickler, session 1.
    pytest.param(lambda: _method(build_zip(_stored_entries()), "archive/data.pkl", 99),
                 CkptError,
                 id="data.pkl unknown compression"),
    # Stops: a data.pkl flagged encrypted escaping as RuntimeError. Found: hostile review of the unpickler, session 1.
    pytest.param(lambda: _encrypted(build_zip(_stored_entries()), "archive/data.pkl"),
                 CkptError,
                 id="data.pkl encrypted"),
    # Stops: a byteorder member with an unknown compression method. Found: hostile review of the unpickler, session 1.
    pytest.param(lambda: _method(build_zip(_stored_entries()), "archive/byteorder", 99),
                 CkptError,
                 id="byteorder unknown compression"),
    # Stops: a byteorder member flagged encrypted. Found: hostile review of the unpickler, session 1.
    pytest.param(lambda: _encrypted(build_zip(_stored_entries()), "archive/byteorder"),
                 CkptError,
                 id="byteorder encrypted"),
    # Stops: a storage member flagged encrypted. Found: hostile review of the unpickler, session 1.
    pytest.param(lambda: _encrypted(build_zip(_stored_entries()), "archive/data/0"),
                 UnsupportedCheckpointError, id="storage encrypted"),
]


@pytest.mark.parametrize(("build", "error"), ZIPS)
def test_hostile_zip_container(tmp_path: Path, build: Callable[[], bytes],
                               error: type[CkptError]) -> None:
    """Stops: hostile torch zips (bombs, forged headers, TorchScript). Found: designed up front; encrypted/unknown-method: hostile review, session 1."""
    path = write(tmp_path, build())
    with pytest.raises(error):
        open_and_read(path)


def test_deflated_data_pkl_is_still_read(tmp_path: Path) -> None:
    """Stops: a false refusal of a legitimate zip whose data.pkl is deflated (control). Found: designed up front.

    Control: only storages must be STORED; a compressed data.pkl is legitimate zip.
    """
    path = write(tmp_path, build_zip(_with(_stored_entries(), "archive/data.pkl",
                                           method=zipfile.ZIP_DEFLATED)))
    assert open_and_read(path)["w"].tolist() == list(range(16))


def test_torch_written_zip_round_trips(tmp_path: Path, zip_template: bytes) -> None:
    """Stops: a false refusal of a real torch.save zip or an equivalent rewrite of it (control). Found: designed up front.

    Control: the unmodified template and a rewritten-but-equivalent data.pkl both read.
    """
    assert open_and_read(write(tmp_path, zip_template, "a.pt"))["w"].tolist() == list(range(16))
    path = write(tmp_path, rewrite_zip(zip_template, state_dict_pkl()), "b.pt")
    assert open_and_read(path)["w"].tolist() == list(range(16))



def test_byteorder_member_is_size_limited(tmp_path: Path, zip_template: bytes) -> None:
    """Stops: a 64 MiB byteorder member deflated into a small file inflating in memory (zip bomb). Found: hostile review of the unpickler, session 1."""
    data = rewrite_zip(zip_template, replace={"byteorder": b" " * (64 * MIB)},
                       compress={"byteorder": zipfile.ZIP_DEFLATED})
    path = write(tmp_path, data)
    assert path.stat().st_size < MIB
    rc, result = run_child(tmp_path, """
        from ckptctl.readers.torch_files import open_torch
        before = peak_mib()
        try:
            open_torch(Path(sys.argv[1]))
            outcome = "opened"
        except CkptError as exc:
            outcome = type(exc).__name__
        report(outcome=outcome, grew=peak_mib() - before)
        """, path)
    assert rc == 0, result
    assert result["grew"] < 32, f"peak RSS grew {result['grew']:.0f} MiB"


# === 9. legacy (non-zip) streams ==========================================================


def test_torch_written_legacy_stream_round_trips(tmp_path: Path, legacy_template: bytes) -> None:
    """Stops: a false refusal of a real (or equivalently crafted) legacy torch.save stream (control). Found: designed up front."""
    assert open_and_read(write(tmp_path, legacy_template))["w"].tolist() == [0, 1, 2, 3]
    crafted = write(tmp_path, legacy_stream(legacy_template), "crafted.pt")
    assert open_and_read(crafted)["w"].tolist() == [0, 1, 2, 3]


LEGACY: list[Any] = [
    pytest.param({"tail": struct.pack("<q", -4) + LEGACY_RECORD[8:]}, CorruptCheckpointError,
                 id="negative size prefix"),
    pytest.param({"tail": struct.pack("<q", 2**40) + LEGACY_RECORD[8:]}, CorruptCheckpointError,
                 id="size prefix past EOF"),
    pytest.param({"tail": struct.pack("<q", 3) + LEGACY_RECORD[8:]}, CorruptCheckpointError,
                 id="size prefix not dividing the bytes"),
    pytest.param({"tail": LEGACY_RECORD[:12]}, CorruptCheckpointError, id="storage cut short"),
    pytest.param({"tail": b"\1\2"}, CorruptCheckpointError, id="size prefix cut short"),
    pytest.param({"tail": b""}, CorruptCheckpointError, id="no storage records"),
    pytest.param({"obj": pkl(op_dict((op_str("w"), op_tensor(op_storage_pid(
        "k", numel=2**60, legacy=True), shape=(4,)))))}, CorruptCheckpointError,
                 id="storage numel 2**60"),
    pytest.param({"obj": pkl(op_dict((op_str("w"), op_tensor(op_storage_pid(
        "k", numel=-4, legacy=True), shape=(4,)))))}, CorruptCheckpointError,
                 id="negative storage numel"),
    pytest.param({"keys": pkl(op_list(op_str("zz")))}, CorruptCheckpointError,
                 id="key list names an unreferenced storage"),
    pytest.param({"keys": pkl(op_str("k"))}, CorruptCheckpointError, id="key list not a list"),
    pytest.param({"keys": pkl(op_list(op_int(1)))}, CorruptCheckpointError,
                 id="key list of ints"),
    pytest.param({"keys": pkl(pickle.EMPTY_LIST)}, CorruptCheckpointError,
                 id="referenced storage without a record"),
    pytest.param({"obj": pkl(op_dict((op_str("w"), op_tensor(
        op_tuple(op_str("storage"), op_global("torch", "FloatStorage"), op_str("k"),
                 op_str("cpu"), op_int(4), op_tuple(op_str("k"), op_int(0), op_int(4)))
        + pickle.BINPERSID, shape=(4,)))))}, UnsupportedCheckpointError,
                 id="storage view record"),
    pytest.param({"version": pkl(op_int(1002))}, UnsupportedCheckpointError,
                 id="unknown protocol version"),
    pytest.param({"obj": P2 + pickle.BINUNICODE + struct.pack("<I", 2**31) + b"abc"
                  + pickle.STOP}, CorruptCheckpointError, id="BINUNICODE claims 2 GiB"),
    pytest.param({"obj": P4 + pickle.BINBYTES8 + struct.pack("<Q", 2**33) + b"abc"
                  + pickle.STOP}, CorruptCheckpointError, id="BINBYTES8 claims 8 GiB"),
    pytest.param({"obj": b"", "keys": b"", "tail": b""}, CorruptCheckpointError,
                 id="stream ends after sys_info"),
]


@pytest.mark.parametrize(("parts", "error"), LEGACY)
def test_hostile_legacy_stream(tmp_path: Path, legacy_template: bytes, parts: dict[str, bytes],
                               error: type[CkptError]) -> None:
    """Stops: hostile legacy streams (lying size prefixes, missing records, bad key lists, huge numel). Found: designed up front."""
    path = write(tmp_path, legacy_stream(legacy_template, **parts))
    with pytest.raises(error):
        open_and_read(path)


def test_legacy_bad_magic_is_not_a_torch_file(tmp_path: Path, legacy_template: bytes) -> None:
    """Stops: a stream with a wrong legacy magic number being read as a torch file. Found: designed up front."""
    magic = pkl(op_int(0x1950A86A20F9469CFC6B))
    path = write(tmp_path, legacy_stream(legacy_template, magic=magic))
    with pytest.raises(UnsupportedCheckpointError):
        open_and_read(path)


def test_legacy_duplicate_key_reads_consecutive_records(tmp_path: Path,
                                                        legacy_template: bytes) -> None:
    """Stops: a storage key listed twice desynchronising the legacy record reader. Found: designed up front."""
    keys = pkl(op_list(op_str("k"), op_str("k")))
    path = write(tmp_path, legacy_stream(legacy_template, keys=keys,
                                         tail=LEGACY_RECORD + LEGACY_RECORD))
    assert open_and_read(path)["w"].tolist() == [0, 1, 2, 3]


# === 10. metadata gathering on hostile values (convert never reports an internal error) =====


def _convert(tmp_path: Path, template: bytes, data_pkl: bytes) -> Any:
    """Convert a torch zip whose data.pkl is ``data_pkl``; the one ``ItemResult``."""
    from ckptctl.ops.convert import ConvertOptions, convert, targets_for_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    path = write(run, rewrite_zip(template, data_pkl))
    targets, _ = targets_for_checkpoint(path)
    (item,) = convert(targets, ConvertOptions()).items
    return item


def _ckpt(*pairs: tuple[str, bytes], top: bytes = pickle.EMPTY_DICT, state: bytes = b"") -> bytes:
    state_dict = op_dict((op_str("w"), op_tensor()))
    body = top + b"".join(op_str(k) + v + pickle.SETITEM
                          for k, v in [("state_dict", state_dict), *pairs])
    return pkl(body + state)


ORDERED = op_call(op_global("collections", "OrderedDict"))
HUGE_INT = pickle.LONG4 + struct.pack("<i", 2000) + b"\1" * 2000

CONVERT: list[Any] = [
    # Stops: a 4800-digit epoch crashing metadata (int to float overflow). Found: hostile review of the unpickler, session 1.
    pytest.param(_ckpt(("epoch", HUGE_INT)),
        id="epoch of 4800 digits"),
    # Stops: a 4800-digit metric crashing metadata. Found: hostile review of the unpickler, session 1.
    pytest.param(_ckpt(("best_val", HUGE_INT)), id="metric of 4800 digits"),
    # Stops: a 4800-digit hparams key (int-to-str digit limit). Found: hostile review of the unpickler, session 1.
    pytest.param(_ckpt(("hyper_parameters", op_dict((HUGE_INT, op_int(1))))),
        id="hparams key of 4800 digits"),
    # Stops: a slice over 5000 nested lists (RecursionError in repr). Found: hostile review of the unpickler, session 1.
    pytest.param(_ckpt(("hyper_parameters", op_dict((op_str("x"), op_call(
        op_global("builtins", "slice"), pickle.EMPTY_LIST * 5001
        + pickle.APPEND * 5000))))),
        id="slice of a deep list"),
    # Stops: a checkpoint OrderedDict whose BUILD shadows .get. Found: hostile review of the unpickler, session 1.
    pytest.param(_ckpt(top=ORDERED, state=op_build(op_dict((op_str("get"), op_int(1))))), id="OrderedDict.get shadowed"),
    # Stops: deeply nested lists in hparams. Found: designed up front.
    pytest.param(_ckpt(("hyper_parameters", op_dict(*[
        (op_str(f"k{i}"), pickle.EMPTY_LIST * 40 + pickle.APPEND * 39) for i in range(3)]))),
        id="nested lists in hparams"),
    # Stops: a complex number in hparams. Found: designed up front.
    pytest.param(_ckpt(("hyper_parameters", op_dict((op_str("c"), op_call(
        op_global("builtins", "complex"), op_int(1), op_int(2)))))), id="complex value"),
    # Stops: a NaN dict key in hparams. Found: designed up front.
    pytest.param(_ckpt(("hyper_parameters", op_dict((pickle.BINFLOAT + struct.pack(
        ">d", float("nan")), op_int(1))))), id="NaN key"),
    # Stops: a callback state key built to blow up literal_eval. Found: designed up front.
    pytest.param(_ckpt(("callbacks", op_dict((op_str("ModelCheckpoint{" + "[" * 3000), op_dict(
        (op_str("best_model_score"), op_int(1))))))), id="callback name literal_eval bomb"),
]


@pytest.mark.parametrize("data", CONVERT)
def test_convert_reports_hostile_metadata_without_internal_error(tmp_path: Path,
                                                                 zip_template: bytes,
                                                                 data: bytes) -> None:
    """Stops: hostile metadata values (huge ints, deep nesting, shadowed methods) crashing convert. Found: hostile review of the unpickler, session 1."""
    item = _convert(tmp_path, zip_template, data)
    assert item.status in {"converted", "failed"}
    assert "internal error" not in (item.reason or ""), item.reason



def test_poisoned_state_dict_items_cannot_hide_tensors(tmp_path: Path,
                                                      zip_template: bytes) -> None:
    """Stops: a state_dict OrderedDict whose BUILD shadows .items() hiding its tensors from convert. Found: hostile review of the unpickler, session 1."""
    from ckptctl.layouts.ckptctl_tensors import read_tensors

    state_dict = (ORDERED + op_str("w") + op_tensor() + pickle.SETITEM
                  + op_build(op_dict((op_str("items"), op_global("builtins", "list")))))
    item = _convert(tmp_path, zip_template, pkl(op_dict((op_str("state_dict"), state_dict))))
    if item.status == "failed":
        assert "internal error" not in (item.reason or "")
        return
    arrays, _ = read_tensors(item.weights)
    assert list(arrays) == ["w"]


def test_ordered_dict_metadata_attribute_is_still_accepted(tmp_path: Path,
                                                           zip_template: bytes) -> None:
    """Stops: a false refusal of torch's own state_dict ``_metadata`` BUILD (control). Found: designed up front.

    Control: torch's state_dict OrderedDict legitimately BUILDs ``{'_metadata': ...}``.
    """
    state_dict = (ORDERED + op_str("w") + op_tensor() + pickle.SETITEM
                  + op_build(op_dict((op_str("_metadata"), op_dict()))))
    item = _convert(tmp_path, zip_template, pkl(op_dict((op_str("state_dict"), state_dict))))
    assert item.status == "converted", item.reason


# === 11. no torch import; deterministic fuzzing =============================================


def test_readers_never_import_torch(tmp_path: Path, zip_template: bytes,
                                    legacy_template: bytes) -> None:
    """Stops: reading, converting or refusing a checkpoint importing torch (and its import side effects). Found: designed up front."""
    (tmp_path / "z").mkdir()
    zip_path = write(tmp_path / "z", zip_template)
    legacy_path = write(tmp_path, legacy_template, "legacy.pt")
    unsafe = tmp_path / "unsafe.pkl"
    unsafe.write_bytes(pkl(op_call(op_global("torch", "load"), op_str("x"))))
    rc, result = run_child(tmp_path, """
        from ckptctl.readers.torch_files import open_torch
        from ckptctl.readers.unpickler import restricted_load
        from ckptctl.ops.convert import ConvertOptions, convert, targets_for_checkpoint
        zip_path, legacy_path, unsafe = map(Path, sys.argv[1:])
        for path in (zip_path, legacy_path):
            tf = open_torch(path)
            tf.obj["w"].read(tf)
        (item,) = convert(targets_for_checkpoint(zip_path)[0], ConvertOptions()).items
        try:
            restricted_load(unsafe.read_bytes())
        except CkptError:
            pass
        report(status=item.status, torch=sorted(m for m in sys.modules
                                                if m == "torch" or m.startswith("torch.")))
        """, zip_path, legacy_path, unsafe)
    assert rc == 0, result
    assert result == {"status": "converted", "torch": []}


FUZZ = """
import io, random, zipfile
from ckptctl.readers.tensor import LazyTensor
from ckptctl.readers.torch_files import open_torch
template = Path(sys.argv[1]).read_bytes()
with zipfile.ZipFile(io.BytesIO(template)) as z:
    infos = [(i, z.read(i)) for i in z.infolist()]
base = next(d for i, d in infos if i.filename.endswith("data.pkl"))
rng = random.Random(20240601)
escaped = []
target = Path(sys.argv[2])
for n in range(int(sys.argv[3])):
    data = bytearray(base)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data))
        roll = rng.random()
        if roll < 0.6:
            data[at] = rng.randrange(256)
        elif roll < 0.8:
            del data[at]
        else:
            data.insert(at, rng.randrange(256))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info, raw in infos:
            z.writestr(info, bytes(data) if info.filename.endswith("data.pkl") else raw)
    target.write_bytes(out.getvalue())
    try:
        tf = open_torch(target)
        for value in (tf.obj.values() if isinstance(tf.obj, dict) else ()):
            if isinstance(value, LazyTensor):
                value.read(tf)
    except CkptError:
        pass
    except Exception as exc:
        escaped.append(f"{n}: {type(exc).__name__}: {exc}"[:200])
report(escaped=escaped)
"""


@pytest.mark.slow
def test_fuzzed_data_pkl_only_raises_ckpt_errors(tmp_path: Path, zip_template: bytes) -> None:
    """Stops: mutated data.pkl bytes escaping as non-CkptError exceptions. Found: designed up front (seeded mutation loop).

    Random byte flips/insertions/deletions of a real data.pkl (fixed seed, in a child).
    """
    template = write(tmp_path, zip_template, "template.pt")
    rc, result = run_child(tmp_path, FUZZ, template, tmp_path / "fuzzed.pt", 200)
    assert rc == 0, result
    assert result["escaped"] == []
