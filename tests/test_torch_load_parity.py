"""ckptctl's verdict is about what ``torch.load`` would run.

A file is converted only when ckptctl read the very pickle bytes ``torch.load(path,
weights_only=False)`` would unpickle; a file two readers can see differently is refused as
``ambiguous``. Each test below builds a file of one class in which ckptctl (before issue 10)
read one benign pickle while torch reads another, then asserts two things:

* ckptctl refuses it in one line, writes nothing for it and converts the good file next to it
  (``bounded.assert_refused``, under a memory cap and a timeout);
* ``torch.load`` in a throwaway subprocess really runs the hidden payload, a harmless
  ``print`` of a marker, so the class is real and not a guess about torch.

The attacks come from the hostile review of issue 10; nothing hostile is committed, every
file is made here from a real ``torch.save`` file.
"""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from bounded import assert_refused, run_bounded
from helpers import outputs_for

pytestmark = pytest.mark.slow

MARKER = "CKPTCTL-PARITY-PAYLOAD"
#: protocol 0: ``builtins.print(MARKER)``; harmless, and visible on torch's stdout.
PAYLOAD = f"cbuiltins\nprint\n(S'{MARKER}'\ntR.".encode()


def torch_runs_payload(path: Path) -> bool:
    """Whether ``torch.load(path, weights_only=False)`` runs the payload (in a subprocess)."""
    code = ("import sys, torch\ntry:\n    torch.load(sys.argv[1], weights_only=False)\n"
            "except Exception:\n    pass\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    return MARKER in done.stdout


def real_zip(tmp_path: Path) -> list[tuple[bytes, bytes]]:
    """The members of a real ``torch.save`` zip, in order."""
    import torch

    path = tmp_path / "template.bin"
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, path)
    with zipfile.ZipFile(path) as archive:
        members = [(i.filename.encode(), archive.read(i)) for i in archive.infolist()]
    path.unlink()
    return members


def real_legacy(tmp_path: Path) -> bytes:
    import torch

    path = tmp_path / "template.bin"
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, path,
               _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.unlink()
    return data


def good_file(tmp_path: Path) -> Path:
    import torch

    path = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, path)
    return path


def check_refused_and_real(tmp_path: Path, hostile: Path, why: str) -> None:
    good = good_file(tmp_path)
    run = run_bounded("convert", "--outputs-dir", tmp_path)
    assert_refused(run, refused=[hostile], converted=[good], reason="ambiguous")
    assert why in run.stderr, run.stderr
    assert torch_runs_payload(hostile), "torch.load did not run the payload: the class is not real"


# --- zip assembly, byte by byte (zipfile would refuse to write these) ---------------------------


def local_header(name: bytes, data: bytes, flags: int = 0) -> bytes:
    return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, 0, 0, 0, zlib.crc32(data),
                       len(data), len(data), len(name), 0) + name + data


def central_entry(name: bytes, data: bytes, offset: int, flags: int = 0,
                  extra: bytes = b"") -> bytes:
    return struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, flags, 0, 0, 0,
                       zlib.crc32(data), len(data), len(data), len(name), len(extra), 0, 0, 0, 0,
                       offset) + name + extra


def end_record(entries: int, cd_size: int, cd_offset: int, comment: bytes = b"") -> bytes:
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, cd_size, cd_offset,
                       len(comment)) + comment


def locals_at(members: list[tuple[bytes, bytes]], start: int) -> tuple[bytes, list[int]]:
    out, offsets = bytearray(), []
    for name, data in members:
        offsets.append(start + len(out))
        out += local_header(name, data)
    return bytes(out), offsets


def directory(members: list[tuple[bytes, bytes]], offsets: list[int]) -> bytes:
    return b"".join(central_entry(n, d, o) for (n, d), o in zip(members, offsets, strict=True))


def plain_zip(members: list[tuple[bytes, bytes]]) -> bytes:
    body, offsets = locals_at(members, 0)
    cd = directory(members, offsets)
    return body + cd + end_record(len(members), len(cd), len(body))


def with_payload(members: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The same members with the payload (padded: offsets stay apart) as data.pkl."""
    return [(n, PAYLOAD + b" " * 1000 if n.endswith(b"/data.pkl") else d) for n, d in members]


def test_control_a_rebuilt_real_zip_converts(tmp_path: Path) -> None:
    """Control: the byte-level zip writer below makes files torch and ckptctl both read."""
    path = tmp_path / "rebuilt.pt"
    path.write_bytes(plain_zip(real_zip(tmp_path)))
    run = run_bounded("convert", "--outputs-dir", tmp_path)
    assert run.exit_code == 0, run.stderr
    assert all(p.exists() for p in outputs_for(path))


def build_repeated_member(tmp_path: Path, spelling: bytes = b"DATA.pkl") -> Path:
    members = real_zip(tmp_path)
    prefix = members[0][0].split(b"/")[0]
    path = tmp_path / "repeated.pt"
    path.write_bytes(plain_zip([*members, (prefix + b"/" + spelling, PAYLOAD)]))
    return path


@pytest.mark.parametrize("spelling", [b"data.pkl", b"DATA.pkl"], ids=["exact", "case"])
def test_zip_member_repeated(tmp_path: Path, spelling: bytes) -> None:
    """Stops: a second data.pkl (same name, or same name in other case) after the real one:
    torch's zip reader takes the later one, ckptctl read the first. Found: hostile review
    (issue 10)."""
    check_refused_and_real(tmp_path, build_repeated_member(tmp_path, spelling), "appears twice")


def build_name_with_nul(tmp_path: Path) -> Path:
    members = real_zip(tmp_path)
    prefix = members[0][0].split(b"/")[0]
    benign = dict(members)[prefix + b"/data.pkl"]
    hostile = [*with_payload(members), (prefix + b"/data.pkl\x00x", benign)]
    path = tmp_path / "nul.pt"
    path.write_bytes(plain_zip(hostile))
    return path


def test_zip_member_name_with_nul(tmp_path: Path) -> None:
    """Stops: data.pkl holds the payload and a benign "data.pkl\\0x" follows: Python's
    zipfile cuts the name at NUL (the later one wins), torch's reader does not. Found:
    hostile review (issue 10)."""
    check_refused_and_real(tmp_path, build_name_with_nul(tmp_path), "NUL")


def build_misplaced_directory(tmp_path: Path) -> Path:
    members = real_zip(tmp_path)
    payload = with_payload(members)
    body_p, offsets_p = locals_at(payload, 0)
    body_b, offsets_b = locals_at(members, len(body_p))
    cd_p = directory(payload, offsets_p)
    cd_b = directory(members, [o - len(cd_p) for o in offsets_b])  # zipfile adds the shift back
    assert len(cd_p) == len(cd_b)
    path = tmp_path / "cd-offset.pt"
    path.write_bytes(body_p + body_b + cd_p + cd_b
                     + end_record(len(members), len(cd_b), len(body_p) + len(body_b)))
    return path


def test_central_directory_not_where_the_end_record_says(tmp_path: Path) -> None:
    """Stops: two central directories; the end record's offset names the payload's, while
    zipfile reads the one just before the end record and shifts every offset by the
    difference. Found: hostile review (issue 10)."""
    check_refused_and_real(tmp_path, build_misplaced_directory(tmp_path),
                           "central directory is not where")


def zip64_end_record(entries: int, cd_size: int, cd_offset: int) -> bytes:
    return struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries,
                       cd_size, cd_offset)


def build_misplaced_zip64_record(tmp_path: Path) -> Path:
    members = real_zip(tmp_path)
    payload = with_payload(members)
    body_p, offsets_p = locals_at(payload, 0)
    body_b, offsets_b = locals_at(members, len(body_p))
    record_p_at = len(body_p) + len(body_b)
    cd_p_at = record_p_at + 56
    cd_p = directory(payload, offsets_p)
    cd_b_at = cd_p_at + len(cd_p)
    cd_b = directory(members, offsets_b)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, record_p_at, 1)
    sentinels = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                            0xFFFFFFFF, 0)
    path = tmp_path / "zip64.pt"
    path.write_bytes(body_p + body_b + zip64_end_record(len(payload), len(cd_p), cd_p_at) + cd_p
                     + cd_b + zip64_end_record(len(members), len(cd_b), cd_b_at) + locator
                     + sentinels)
    return path


def test_zip64_end_record_not_where_its_locator_says(tmp_path: Path) -> None:
    """Stops: two ZIP64 end records; the locator's offset names the payload's, zipfile reads
    the one right before the locator. Found: hostile review (issue 10)."""
    check_refused_and_real(tmp_path, build_misplaced_zip64_record(tmp_path),
                           "ZIP64 end record is not where")


def build_end_record_in_comment(tmp_path: Path) -> Path:
    members = real_zip(tmp_path)
    payload = with_payload(members)
    body_p, offsets_p = locals_at(payload, 0)
    body_b, offsets_b = locals_at(members, len(body_p))
    cd_p, cd_b = directory(payload, offsets_p), directory(members, offsets_b)
    cd_p_at = len(body_p) + len(body_b)
    fake = end_record(len(payload), len(cd_p), cd_p_at)
    path = tmp_path / "comment.pt"
    path.write_bytes(body_p + body_b + cd_p + cd_b
                     + end_record(len(members), len(cd_b), cd_p_at + len(cd_p), comment=fake))
    return path


def test_end_signature_inside_the_comment(tmp_path: Path) -> None:
    """Stops: the end record points at the benign directory and its comment holds a second,
    self-consistent end record pointing at the payload's. Found: hostile review (issue 10)."""
    check_refused_and_real(tmp_path, build_end_record_in_comment(tmp_path),
                           "end signature inside the comment")


# --- legacy streams ----------------------------------------------------------------------------


def build_frame_past_stop(tmp_path: Path) -> Path:
    legacy = real_legacy(tmp_path)
    stream = io.BytesIO(legacy)
    bounds = []
    import pickletools

    for _ in range(3):  # magic, protocol version, sys_info
        start = stream.tell()
        for op, _, pos in pickletools.genops(stream):
            if op.name == "STOP":
                bounds.append((start, pos + 1))
                break
        stream.seek(bounds[-1][1])
    sys_start, sys_end = bounds[2]
    body = legacy[sys_start + 2:sys_end]  # without PROTO 2, ending with STOP
    framed = (pickle.PROTO + b"\x04" + pickle.FRAME + struct.pack("<Q", len(body) + len(PAYLOAD))
              + body + PAYLOAD)
    path = tmp_path / "framed.pt"
    path.write_bytes(legacy[:sys_start] + framed + legacy[sys_end:])
    return path


def test_legacy_frame_running_past_stop(tmp_path: Path) -> None:
    """Stops: the sys_info pickle re-framed at protocol 4 with a frame running past its STOP
    over a payload: the C unpickler on torch's buffered file resumes after STOP (the payload),
    ckptctl's resumed after the frame (the real object). Found: hostile review (issue 10)."""
    check_refused_and_real(tmp_path, build_frame_past_stop(tmp_path),
                           "frame runs past its STOP")


def tar_block(name: bytes, size: int) -> bytearray:
    """A ustar header for a regular member (checksum left to ``seal``)."""
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:136] = b"0000644\0" + b"0000000\0" * 2 + b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[156:157] = b"0"
    block[257:265] = b"ustar\x0000"
    return block


def seal(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def tar_member(name: bytes, data: bytes) -> bytes:
    return seal(tar_block(name, len(data))) + data + b"\0" * (-len(data) % 512)


def build_tar_polyglot(tmp_path: Path) -> Path:
    legacy = real_legacy(tmp_path)
    assert legacy[15:21] == b"\x80\x02M\xe9\x03.", "template: magic then protocol version"
    rest = legacy[21:]
    block = tar_block(b"x", len(rest))
    block[0:15] = legacy[:15]  # the magic pickle
    block[15:22] = b"\x80\x02T" + struct.pack("<I", 507 - 22)  # BINSTRING over the header
    block[507:512] = b"0M\xe9\x03."  # POP, BININT2 1001, STOP
    path = tmp_path / "polyglot.pt"
    path.write_bytes(seal(block) + rest + b"\0" * (-len(rest) % 512)
                     + tar_member(b"storages", PAYLOAD) + b"\0" * 1024)
    return path


def test_legacy_stream_that_is_also_a_tar(tmp_path: Path) -> None:
    """Stops: a legacy stream whose first 512 bytes are also a valid tar header (the protocol
    version pickle pops a string holding the header fields): torch.load tries its old tar
    format first and unpickles the tar's "storages" member. Found: hostile review (issue 10)."""
    check_refused_and_real(tmp_path, build_tar_polyglot(tmp_path),
                           "also a valid tar archive")


def test_old_tar_checkpoint_is_named_not_unrecognised(tmp_path: Path) -> None:
    """Stops: torch's oldest (tar) format, which torch.load still reads (and runs, here),
    reported as "unrecognised" as if it were not a checkpoint. Found: hostile review
    (issue 10)."""
    path = tmp_path / "old.pt"
    path.write_bytes(tar_member(b"sys_info", PAYLOAD) + tar_member(b"storages", PAYLOAD)
                     + b"\0" * 1024)
    good = good_file(tmp_path)
    run = run_bounded("convert", "--outputs-dir", tmp_path)
    assert_refused(run, refused=[path], converted=[good], reason="oldest checkpoint format")
    scan = run_bounded("scan", "--format", "json", tmp_path)
    assert '"unsupported"' in scan.stdout, scan.stdout
    assert torch_runs_payload(path)


@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
def test_legacy_stream_at_any_pickle_protocol_converts(tmp_path: Path, protocol: int) -> None:
    """Stops: a real legacy ``torch.save(..., pickle_protocol=4)`` file (magic number framed)
    called "unrecognised": a false negative. Found: hostile review (issue 10)."""
    import torch

    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
               "b": torch.tensor([1, 2, 3], dtype=torch.int64)}
    path = tmp_path / f"p{protocol}.pt"
    torch.save(tensors, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    run = run_bounded("convert", "--outputs-dir", tmp_path)
    assert run.exit_code == 0, run.stdout + run.stderr
    from ckptctl import load_state_dict

    loaded = load_state_dict(outputs_for(path)[0])
    for name, tensor in tensors.items():
        np.testing.assert_array_equal(loaded[name], tensor.numpy())


def test_control_real_zip64_checkpoint_reads(tmp_path: Path) -> None:
    """Control: torch's own ZIP64 archives (more than 65,535 records; the end record holds
    sentinels for some fields, real values for others) pass the end-record checks."""
    import torch

    from ckptctl.readers.torch_files import open_torch

    path = tmp_path / "many.pt"
    torch.save({f"t{i}": torch.full((1,), float(i)) for i in range(66_000)}, path)
    assert b"PK\x06\x07" in path.read_bytes()[-200:], "expected a ZIP64 locator"
    checkpoint = open_torch(path)
    assert len(checkpoint.obj) == 66_000
    assert checkpoint.obj["t65999"].read(checkpoint, False).tolist() == [65999.0]


# --- found by the hostile review of this file's first version (issue 10) -----------------------


def build_utf8_flag_twin(tmp_path: Path) -> Path:
    members = [(b"\xc3\xa9/" + n.split(b"/", 1)[1], d) for n, d in real_zip(tmp_path)]
    body, offsets = locals_at(members, 0)
    twin = local_header(b"\xc3\xa9/data.pkl", PAYLOAD, flags=0x800)
    cd = directory(members, offsets) + central_entry(b"\xc3\xa9/data.pkl", PAYLOAD, len(body),
                                                     flags=0x800)
    path = tmp_path / "utf8-twin.pt"
    path.write_bytes(body + twin + cd + end_record(len(members) + 1, len(cd), len(body) + len(twin)))
    return path


def test_same_name_bytes_with_and_without_the_utf8_flag(tmp_path: Path) -> None:
    """Stops: two members with the same name bytes, one flagged UTF-8: Python's zipfile
    decodes them to two names (cp437 and UTF-8), torch's reader compares bytes and takes the
    flagged payload. Found: hostile review of the parity checks (issue 10)."""
    check_refused_and_real(tmp_path, build_utf8_flag_twin(tmp_path), "appears twice")


def build_unicode_path_field(tmp_path: Path) -> Path:
    members = with_payload(real_zip(tmp_path))
    body, offsets = locals_at(members, 0)
    prefix = members[0][0].split(b"/")[0]
    renamed = prefix + b"/zzz"
    field = struct.pack("<HHB", 0x7075, 5 + len(renamed), 1) + struct.pack(
        "<I", zlib.crc32(prefix + b"/data.pkl")) + renamed
    cd = b"".join(central_entry(n, d, o, extra=field if n.endswith(b"/data.pkl") else b"")
                  for (n, d), o in zip(members, offsets, strict=True))
    path = tmp_path / "unicode-path.pt"
    path.write_bytes(body + cd + end_record(len(members), len(cd), len(body)))
    return path


def test_unicode_path_extra_field(tmp_path: Path) -> None:
    """Stops: a Unicode Path extra field, which Python 3.12+'s zipfile uses to rename a
    member (here data.pkl, the payload, out of the way of a benign one), while torch's
    reader ignores it. Found: hostile review of the parity checks (issue 10)."""
    check_refused_and_real(tmp_path, build_unicode_path_field(tmp_path), "Unicode Path")


def test_two_zip64_fields_in_one_entry(tmp_path: Path) -> None:
    """Stops: two ZIP64 extra fields on data.pkl (32-bit offset 0xFFFFFFFF): zipfile applies
    both (the second points at the benign copy), torch's reader takes the first (the payload,
    4 GiB in; the file is sparse). Found: hostile review of the parity checks (issue 10)."""
    members = real_zip(tmp_path)
    benign = dict(members)[next(n for n, _ in members if n.endswith(b"/data.pkl"))]
    payload = PAYLOAD + b" " * max(0, len(benign) - len(PAYLOAD))
    body, cd, pkl_name = b"", b"", b""
    for name, data in members:
        if name.endswith(b"/data.pkl"):
            extra = struct.pack("<HHQ", 1, 8, 0xFFFFFFFF) + struct.pack("<HHQ", 1, 8, len(body))
            cd += central_entry(name, data, 0xFFFFFFFF, extra=extra)
            pkl_name = name
        else:
            cd += central_entry(name, data, len(body))
        body += local_header(name, data)
    path = tmp_path / "zip64-twice.pt"
    with path.open("wb") as out:
        out.write(body)
        out.seek(0xFFFFFFFF)
        out.write(local_header(pkl_name, payload))
        cd_at = out.tell()
        out.write(cd)
        record_at = out.tell()
        out.write(zip64_end_record(len(members), len(cd), cd_at))
        out.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, record_at, 1))
        out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                              0xFFFFFFFF, 0))
    check_refused_and_real(tmp_path, path, "two ZIP64 extra fields")


@pytest.mark.parametrize("first", [(b"sys_info", b""), (b"readme", b"ustar\x0000"),
                                   (b"./storages", b"ustar\x0000")],
                         ids=["v7-tar", "other-first-member", "dot-slash"])
def test_every_tar_torch_opens_is_named(tmp_path: Path, first: tuple[bytes, bytes]) -> None:
    """Stops: tar files torch.load reads (and runs, here) called "unrecognised" because they
    lack the ustar magic or start with another member. Found: hostile review of the parity
    checks (issue 10)."""
    name, magic = first
    block = tar_block(name, len(PAYLOAD))
    block[257:265] = magic.ljust(8, b"\0")
    path = tmp_path / "old.pt"
    path.write_bytes(seal(block) + PAYLOAD + b"\0" * (-len(PAYLOAD) % 512)
                     + tar_member(b"storages", PAYLOAD) + b"\0" * 1024)
    good = good_file(tmp_path)
    run = run_bounded("convert", "--outputs-dir", tmp_path)
    assert_refused(run, refused=[path], converted=[good], reason="oldest checkpoint format")
    assert torch_runs_payload(path)


def test_legacy_first_pickle_is_read_whole(tmp_path: Path) -> None:
    """Stops: a legacy stream whose first pickle calls something before pushing the magic
    number (torch unpickles it whole and runs the call): read by the restricted reader, which
    names the dangerous callable, never skipped as "unrecognised". Found: hostile review of
    the parity checks (issue 10)."""
    legacy = real_legacy(tmp_path)
    evil = b"cos\nsystem\n(S'true'\ntR0"  # os.system('true'), POP (harmless if it ran)
    path = tmp_path / "prefixed.pt"
    path.write_bytes(evil + legacy[2:])  # drop PROTO 2: protocol 0 opcodes, then the magic
    good = good_file(tmp_path)
    run = run_bounded("convert", "--outputs-dir", tmp_path)
    assert_refused(run, refused=[path], converted=[good], reason="dangerous callables os.system")


#: Every class above, for the fuzzers (``tests/test_fuzz_hostile_seeds.py``).
SEED_BUILDERS = {
    "repeated-member": build_repeated_member,
    "name-with-nul": build_name_with_nul,
    "misplaced-directory": build_misplaced_directory,
    "misplaced-zip64-record": build_misplaced_zip64_record,
    "end-record-in-comment": build_end_record_in_comment,
    "frame-past-stop": build_frame_past_stop,
    "tar-polyglot": build_tar_polyglot,
    "utf8-flag-twin": build_utf8_flag_twin,
    "unicode-path-field": build_unicode_path_field,
}
