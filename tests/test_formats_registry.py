"""The format registry: one entry per format id, asked in order, the first claim decides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ckptctl.formats import (
    FORMAT_IDS,
    NOT_A_SOURCE,
    PROMISED_SUFFIXES,
    REGISTRY,
    FoundCheckpoint,
    Probe,
    classify,
    format_for,
    source_files,
)
from ckptctl.formats.base import OpenedSource, SourceFormat
from ckptctl.outputs import OutputLayout


def test_every_format_id_has_exactly_one_entry() -> None:
    claimed = [fmt for entry in REGISTRY for fmt in entry.ids]
    assert sorted(claimed) == sorted(FORMAT_IDS)
    assert len(claimed) == len(set(claimed))
    for fmt in FORMAT_IDS:
        assert fmt in format_for(fmt).ids
    with pytest.raises(KeyError):
        format_for("onnx")  # an id no entry has


def test_entries_implement_the_protocol() -> None:
    for entry in REGISTRY:
        assert isinstance(entry, SourceFormat)
        assert entry.ids, type(entry).__name__
        assert (type(entry).__doc__ or type(entry).__module__), type(entry).__name__


def test_promised_extensions_without_a_format_are_reported(tmp_path: Path) -> None:
    assert {".ckpt", ".pt", ".pth", ".bin", ".h5", ".keras"} <= set(PROMISED_SUFFIXES)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "weird.pt").write_text("hello")
    assert classify(tmp_path / "notes.txt") is None
    found = classify(tmp_path / "weird.pt")
    assert found == FoundCheckpoint(tmp_path / "weird.pt", None,
                                    "not a checkpoint (unrecognised content)", "unrecognised")


def test_outputs_and_temporaries_are_never_sources(tmp_path: Path) -> None:
    source = tmp_path / "a.ckpt"
    outputs = OutputLayout().outputs(source)
    for path in (outputs.sidecar, outputs.lock, tmp_path / f"{outputs.temp_prefix}1-ab.weights.h5"):
        path.write_bytes(b"PK\x03\x04 not really")
        assert classify(path) is None


@pytest.mark.slow
def test_a_tf_shard_is_part_of_its_checkpoint(tf_tree: tuple[Path, dict[str, Any]]) -> None:
    root, manifest = tf_tree
    prefix = next(root / rel for rel, info in manifest["checkpoints"].items()
                  if info["kind"].startswith("tf-index"))
    files = source_files(prefix, "tf-index")
    assert files[0] == prefix.with_name(prefix.name + ".index")
    assert all(".data-" in f.name for f in files[1:]) and len(files) >= 2
    tf_entry = format_for("tf-index")
    assert tf_entry.sniff(Probe(files[1])) is NOT_A_SOURCE
    found = classify(files[0])
    assert found is not None and (found.path, found.format) == (prefix, "tf-index")
    opened = tf_entry.open(prefix, "tf-index")
    assert isinstance(opened, OpenedSource) and opened.files == files


def test_unknown_format_has_the_checkpoint_itself_as_its_files(tmp_path: Path) -> None:
    assert source_files(tmp_path / "x.bin", None) == [tmp_path / "x.bin"]
