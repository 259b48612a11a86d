"""``ckptctl.readers.safetensors_file`` against files written by ``safetensors`` and
``transformers`` themselves, with ``safetensors``' own loading as the reference; then hostile
headers and indexes, each test named for the attack it stops."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from ckptctl.errors import (
    BudgetExceededError,
    CkptError,
    CorruptCheckpointError,
    UnsupportedCheckpointError,
)
from ckptctl.readers import safetensors_file as sf

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
safetensors = pytest.importorskip("safetensors")


def _raw(tensor: Any) -> bytes:
    return bytes(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """safetensors.torch.save_file with every dtype torch and safetensors share, metadata, a
    zero-size and a 0-d tensor; transformers' save_pretrained (one file and sharded) and
    huggingface_hub's sharded .bin (transformers 5 writes safetensors only)."""
    root = tmp_path_factory.mktemp("safetensors")
    gen = torch.Generator().manual_seed(7)
    tensors = {
        "f32": torch.randn(3, 5, generator=gen),
        "f64": torch.randn(4, generator=gen, dtype=torch.float64),
        "f16": torch.randn(2, 3, generator=gen).half(),
        "bf16": torch.randn(7, generator=gen).bfloat16(),
        "i64": torch.arange(-5, 5, dtype=torch.int64),
        "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "i16": torch.tensor([-2, 3], dtype=torch.int16),
        "i8": torch.tensor([-1, 2, 3], dtype=torch.int8),
        "u8": torch.tensor([1, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "f8": torch.tensor([0.5, -2.0]).to(torch.float8_e4m3fn),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(3.25),
    }
    plain = root / "plain.safetensors"
    safetensors_torch.save_file(tensors, str(plain), metadata={"format": "pt", "note": "hi"})

    from huggingface_hub import save_torch_state_dict
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=37, vocab_size=99))
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="50KB")
    (root / "bin").mkdir()
    save_torch_state_dict(model.state_dict(), str(root / "bin"), safe_serialization=False,
                          max_shard_size="50KB")
    return {"root": root, "plain": plain, "tensors": tensors, "model": model}


def test_header_matches_what_safetensors_reads(written: dict[str, Any]) -> None:
    header = sf.read_header(written["plain"])
    assert header.metadata == {"format": "pt", "note": "hi"}
    with safetensors.safe_open(str(written["plain"]), "pt") as handle:
        assert set(header.tensors) == set(handle.keys())
        for name, entry in header.tensors.items():
            expected = handle.get_tensor(name)
            assert entry.name == name
            assert entry.shape == tuple(expected.shape)
            assert sf.read_tensor_bytes(written["plain"], entry) == _raw(expected)
    assert header.tensors["bf16"].dtype == "BF16"
    assert header.tensors["bf16"].torch_dtype == "bfloat16"
    assert header.tensors["f8"].dtype == "F8_E4M3"
    assert header.tensors["scalar"].shape == ()
    assert header.tensors["empty"].nbytes == 0
    begins = [e.begin for e in header.tensors.values()]
    assert begins == sorted(begins)  # file order
    assert header.data_start == 8 + struct.unpack("<Q", written["plain"].read_bytes()[:8])[0]
    assert sf.is_safetensors(written["plain"])


def test_transformers_single_file_bytes_equal_safetensors(written: dict[str, Any]) -> None:
    path = written["root"] / "single" / "model.safetensors"
    header = sf.read_header(path)
    assert header.metadata.get("format") == "pt"
    reference = safetensors_torch.load_file(str(path))
    assert set(header.tensors) == set(reference)
    for name, entry in header.tensors.items():
        assert sf.read_tensor_bytes(path, entry) == _raw(reference[name])


def test_transformers_sharded_index_lists_every_tensor_once(written: dict[str, Any]) -> None:
    folder = written["root"] / "sharded"
    index = sf.read_shard_index(folder / "model.safetensors.index.json")
    shards = index.shard_paths()
    assert len(shards) >= 2 and all(p.parent == folder for p in shards)
    assert [p.name for p in shards] == sorted(p.name for p in folder.glob("model-*.safetensors"))
    seen: dict[str, str] = {}
    total = 0
    for shard in shards:
        header = sf.read_header(shard)
        reference = safetensors_torch.load_file(str(shard))
        for name, entry in header.tensors.items():
            assert name not in seen
            seen[name] = shard.name
            total += entry.nbytes
            assert sf.read_tensor_bytes(shard, entry) == _raw(reference[name])
    assert seen == index.weight_map
    assert index.total_size == total
    state = written["model"].state_dict()
    assert set(seen) == set(state)


def test_sharded_bin_index(written: dict[str, Any]) -> None:
    folder = written["root"] / "bin"
    index = sf.read_shard_index(folder / "pytorch_model.bin.index.json")
    assert len(index.shard_names()) >= 2
    assert all(p.is_file() and p.suffix == ".bin" for p in index.shard_paths())
    assert set(index.weight_map) == set(written["model"].state_dict())
    assert not sf.is_safetensors(index.shard_paths()[0])  # a zip pickle, not safetensors


# --- hostile files ---------------------------------------------------------------------------


def _write(path: Path, header: dict[str, Any] | bytes, data: bytes = b"",
           length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _t(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_huge_header_length_is_refused_unread(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", b"{}", length=100_000_001)
    with pytest.raises(BudgetExceededError, match="safetensors header"):
        sf.read_header(path)
    assert not sf.is_safetensors(path)


def test_header_longer_than_file_is_corrupt(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", b"{}", length=5000)
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        sf.read_header(path)


def test_overlapping_offsets_cannot_alias_tensors(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors",
                  {"a": _t("F32", [2], 0, 8), "b": _t("F32", [2], 4, 12)}, bytes(12))
    with pytest.raises(CorruptCheckpointError, match="overlap"):
        sf.read_header(path)


def test_offsets_beyond_file_cannot_read_past_end(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", {"a": _t("F32", [4], 0, 16)}, bytes(8))
    with pytest.raises(CorruptCheckpointError, match="holds only 8 bytes"):
        sf.read_header(path)


def test_gap_in_data_area_cannot_hide_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", {"a": _t("F32", [1], 4, 8)}, bytes(8))
    with pytest.raises(CorruptCheckpointError, match="belong to no tensor"):
        sf.read_header(path)


def test_trailing_bytes_after_last_tensor_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", {"a": _t("F32", [1], 0, 4)}, bytes(9))
    with pytest.raises(CorruptCheckpointError, match="cover 4"):
        sf.read_header(path)


def test_size_mismatch_cannot_misstate_tensor_extent(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", {"a": _t("F32", [3], 0, 8)}, bytes(8))
    with pytest.raises(CorruptCheckpointError, match="needs 12 bytes"):
        sf.read_header(path)


def test_duplicate_json_keys_cannot_show_two_readers_two_tensors(tmp_path: Path) -> None:
    raw = (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
           b'"a": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}')
    path = _write(tmp_path / "x.safetensors", raw, bytes(4))
    with pytest.raises(CorruptCheckpointError, match="twice"):
        sf.read_header(path)
    # safetensors itself silently keeps one copy (the last): other parsers keep the first
    with safetensors.safe_open(str(path), "pt") as handle:
        assert handle.get_tensor("a").dtype == torch.int32


def test_non_string_metadata_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", {"__metadata__": {"n": 3}})
    with pytest.raises(CorruptCheckpointError, match="not a string"):
        sf.read_header(path)


def test_unknown_dtype_is_unsupported(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", {"a": _t("F128", [1], 0, 16)}, bytes(16))
    with pytest.raises(UnsupportedCheckpointError, match="F128"):
        sf.read_header(path)


@pytest.mark.parametrize("shape", [[-1], [1.5], ["2"], [True], "4", [2**64]])
def test_malformed_shape_is_refused(tmp_path: Path, shape: Any) -> None:
    path = _write(tmp_path / "x.safetensors", {"a": {"dtype": "U8", "shape": shape,
                                                    "data_offsets": [0, 0]}})
    with pytest.raises(CorruptCheckpointError, match="shape"):
        sf.read_header(path)


def test_overflowing_shape_cannot_wrap_the_size_check(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", {"a": _t("F32", [2**32, 2**32], 0, 0)})
    with pytest.raises(CorruptCheckpointError, match="larger than 2"):
        sf.read_header(path)


def test_deeply_nested_json_header_cannot_crash_the_parser(tmp_path: Path) -> None:
    raw = b'{"__metadata__": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    path = _write(tmp_path / "x.safetensors", raw)
    with pytest.raises(BudgetExceededError, match="nesting"):
        sf.read_header(path)


def test_header_not_json_object_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", b"[1, 2]")
    with pytest.raises(CorruptCheckpointError, match="start with"):
        sf.read_header(path)


def test_every_library_dtype_is_known() -> None:
    """The dtype table is exactly what the installed safetensors defines (its own error lists
    them), and each one, at its bit width, loads there and here alike."""
    raw = json.dumps({"x": _t("NOPE", [1], 0, 1)}).encode()
    with pytest.raises(safetensors.SafetensorError) as caught:
        safetensors.deserialize(struct.pack("<Q", len(raw)) + raw + bytes(1))
    library = re.findall(r"`([A-Z0-9_]+)`", str(caught.value).split("expected one of", 1)[1])
    assert library == list(sf.DTYPE_BITS)
    for dtype, bits in sf.DTYPE_BITS.items():
        n = 4 if bits == 6 else max(1, 8 // bits)
        nbytes = n * bits // 8
        raw = json.dumps({"x": _t(dtype, [n], 0, nbytes)}).encode()
        blob = struct.pack("<Q", len(raw)) + raw + bytes(nbytes)
        ((_, info),) = safetensors.deserialize(blob)
        assert info["dtype"] == dtype and len(info["data"]) == nbytes
        assert len(sf._check_header(json.loads(raw), 8 + len(raw), len(blob),
                                    Path("x")).tensors) == 1


def test_sub_byte_tensor_must_end_on_a_byte(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", {"a": _t("F4", [1], 0, 1)}, bytes(1))
    with pytest.raises(CorruptCheckpointError, match="whole byte"):
        sf.read_header(path)


def test_truncated_after_header_read_is_caught_by_tensor_read(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", {"a": _t("F32", [2], 0, 8)}, bytes(8))
    entry = sf.read_header(path).tensors["a"]
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CorruptCheckpointError, match="beyond"):
        sf.read_tensor_bytes(path, entry)
    with pytest.raises(BudgetExceededError):
        sf.read_tensor_bytes(path, entry, max_bytes=4)


def test_fifo_is_not_opened_as_safetensors(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "x.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CkptError):
        sf.read_header(fifo)
    assert not sf.is_safetensors(fifo)


# --- hostile indexes -------------------------------------------------------------------------


@pytest.mark.parametrize("shard", ["../x.safetensors", "/etc/passwd", "sub/x.safetensors",
                                   "..", "", "a\\b.safetensors"])
def test_index_naming_parent_path_cannot_escape_the_folder(tmp_path: Path, shard: str) -> None:
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps({"metadata": {}, "weight_map": {"w": shard}}))
    with pytest.raises(CorruptCheckpointError, match="not a file in the index's folder"):
        sf.read_shard_index(path)


def test_index_duplicate_tensor_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors.index.json"
    path.write_text('{"weight_map": {"w": "a.safetensors", "w": "b.safetensors"}}')
    with pytest.raises(CorruptCheckpointError, match="twice"):
        sf.read_shard_index(path)


def test_huge_index_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sf, "MAX_INDEX_BYTES", 1000)
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps({"weight_map": {f"w{i}": "a.safetensors" for i in range(200)}}))
    with pytest.raises(BudgetExceededError, match="shard index"):
        sf.read_shard_index(path)


def test_index_without_weight_map_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors.index.json"
    path.write_text('{"metadata": {"total_size": 4}}')
    with pytest.raises(CorruptCheckpointError, match="weight_map"):
        sf.read_shard_index(path)
