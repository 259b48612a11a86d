"""``convert --weights-format safetensors``: ``<stem>.safetensors`` for PyTorch-family sources,
bit-exact, read by ``safetensors.torch.load_file`` (the reference, in tests only), tied
tensors stored once with their aliases in the metadata (``safetensors.torch.save_model``'s
convention) and restored by ``ckptctl.load_state_dict``; never taken for a source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli, sidecar_of
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file

import ckptctl

pytestmark = pytest.mark.xdist_group("safetensors_output")


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    embedding = torch.randn(11, 4)
    return {"embed.weight": embedding, "block.weight": torch.randn(4, 4),
            "block.bias": torch.randn(4).to(torch.bfloat16),
            "steps": torch.tensor(7, dtype=torch.int64), "mask": torch.tensor([True, False]),
            "half": torch.randn(3).half(), "head.weight": embedding}  # tied to embed.weight


def test_a_torch_checkpoint_becomes_a_standard_safetensors_file(tmp_path: Path) -> None:
    state = _state()
    source = tmp_path / "run" / "model.ckpt"
    source.parent.mkdir()
    torch.save({"state_dict": state, "epoch": 2}, source)
    result = run_cli("convert", "--weights-format", "safetensors", source.parent)
    assert result.exit_code == 0, result.output + result.stderr
    out = tmp_path / "run" / "model.safetensors"
    assert not (tmp_path / "run" / "model.weights.h5").exists()
    stored = load_file(out)  # the safetensors library reads it
    assert set(stored) == set(state) - {"head.weight"}  # a tie is stored once
    for name, tensor in stored.items():
        assert tensor.dtype == state[name].dtype and torch.equal(tensor, state[name]), name
    with safe_open(out, "pt") as handle:
        metadata = handle.metadata()
    assert metadata["head.weight"] == "embed.weight" and metadata["format"] == "pt"
    restored = ckptctl.load_state_dict(out)
    assert set(restored) == set(state)
    assert restored["head.weight"].data_ptr() == restored["embed.weight"].data_ptr()
    assert all(torch.equal(restored[k], v) for k, v in state.items())
    sidecar = sidecar_of(source)
    assert sidecar["weights_path"] == "model.safetensors"
    assert sidecar["weights"]["layout"] == "ckptctl-safetensors"
    assert sidecar["weights"]["tensor_count"] == len(state)
    assert run_cli("validate", "--strict", "--deep", tmp_path).exit_code == 0
    rows = json.loads(run_cli("scan", "--format", "json", tmp_path).stdout)
    assert [Path(r["path"]).name for r in rows] == ["model.ckpt"]  # the output is no source


def test_safetensors_models_load_through_safetensors_load_model(tmp_path: Path) -> None:
    """The alias convention is the library's own: ``load_model`` restores the tie."""
    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight
    source = tmp_path / "tied.pt"
    torch.save(model.state_dict(), source)
    assert run_cli("convert", "--weights-format", "safetensors", source).exit_code == 0
    fresh = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    fresh[1].weight = fresh[0].weight
    missing, unexpected = load_model(fresh, tmp_path / "tied.safetensors")
    assert not missing and not unexpected
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_a_safetensors_source_is_described_not_rewritten(tmp_path: Path) -> None:
    source = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(6.0)}, source)
    before = source.read_bytes()
    assert run_cli("convert", "--weights-format", "safetensors", source).exit_code == 0
    sidecar = sidecar_of(source)
    assert sidecar["weights_path"] == "model.safetensors"
    assert sidecar["weights"]["layout"] == "safetensors"
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.metadata.yaml",
                                                         "model.safetensors"]


def test_switching_weights_format_leaves_no_unnamed_weights(tmp_path: Path) -> None:
    """Stops: a tree keeping the previous format's weights file, named by no sidecar."""
    source = tmp_path / "m.pt"
    torch.save({"w": torch.ones(3)}, source)
    assert run_cli("convert", source).exit_code == 0
    assert run_cli("convert", "--weights-format", "safetensors", source).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.metadata.yaml", "m.pt",
                                                         "m.safetensors"]
    assert run_cli("convert", source).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.metadata.yaml", "m.pt",
                                                         "m.weights.h5"]


def test_an_existing_foreign_safetensors_file_is_never_overwritten(tmp_path: Path) -> None:
    source = tmp_path / "m.pt"
    torch.save({"w": torch.ones(3)}, source)
    save_file({"other": torch.zeros(2)}, tmp_path / "m.safetensors")  # someone else's
    before = (tmp_path / "m.safetensors").read_bytes()
    result = run_cli("convert", "--weights-format", "safetensors", source)
    assert result.exit_code == 1
    assert "m.safetensors exists and was not written by ckptctl" in result.stderr
    assert (tmp_path / "m.safetensors").read_bytes() == before


def test_dtypes_safetensors_cannot_hold_are_refused_in_one_line(tmp_path: Path) -> None:
    source = tmp_path / "c.pt"
    torch.save({"z": torch.zeros(2, dtype=torch.complex128)}, source)
    result = run_cli("convert", "--weights-format", "safetensors", source)
    assert result.exit_code == 1
    assert "complex128, which safetensors cannot store" in result.stderr
    assert not (tmp_path / "c.safetensors").exists()
    assert run_cli("convert", source).exit_code == 0  # the default format holds it


def test_clean_removes_safetensors_outputs_but_never_sources(tmp_path: Path) -> None:
    save_file({"w": torch.arange(3.0)}, tmp_path / "source.safetensors")
    torch.save({"w": torch.ones(3)}, tmp_path / "m.pt")
    assert run_cli("convert", "--weights-format", "safetensors", tmp_path).exit_code == 0
    assert run_cli("clean", "--yes", tmp_path).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "source.safetensors"]


def test_switching_formats_never_removes_a_file_of_another_checkpoint(tmp_path: Path) -> None:
    """Stops: a hand-edited sidecar naming another checkpoint's weights (or a source) as its
    own making a format switch delete that file: only this checkpoint's own
    ``<stem>.weights.h5``/``<stem>.safetensors`` may go."""
    import yaml

    for name in ("a", "b"):
        torch.save({"w": torch.ones(2)}, tmp_path / f"{name}.pt")
    assert run_cli("convert", tmp_path).exit_code == 0
    sidecar = tmp_path / "a.metadata.yaml"
    doc = yaml.safe_load(sidecar.read_text())
    for victim in ("b.weights.h5", "b.pt"):
        doc["weights_path"] = victim
        sidecar.write_text(yaml.safe_dump(doc))
        before = (tmp_path / victim).read_bytes()
        assert run_cli("convert", "--weights-format", "safetensors", tmp_path / "a.pt").exit_code == 0
        assert (tmp_path / victim).read_bytes() == before, victim
        assert run_cli("convert", tmp_path / "a.pt").exit_code == 0
