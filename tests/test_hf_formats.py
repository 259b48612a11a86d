"""Hugging Face weights as ``transformers`` and ``huggingface_hub`` write them: a single
``model.safetensors``, a sharded safetensors set, a sharded ``.bin`` set, with tied weights
(GPT-2's ``lm_head`` is ``wte``). Each set is one checkpoint, converted bit-exact (checked
against ``safetensors``/``torch.load`` as references, in tests only), with the index's
``weight_map`` checked; then broken sets, each test named for what it stops."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import outputs_for, run_cli, sidecar_of

import ckptctl

pytestmark = pytest.mark.xdist_group("hf_formats")

_BUILD = textwrap.dedent("""
    import os, sys, torch
    os.environ["HF_HUB_OFFLINE"] = "1"
    from pathlib import Path
    from huggingface_hub import save_torch_state_dict
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel
    root = Path(sys.argv[1])
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        vocab_size=99, num_labels=2))
    bert.save_pretrained(root / "bert")
    bert.save_pretrained(root / "bert_sharded", max_shard_size="50KB")
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=99,
                                      n_positions=64, bos_token_id=0, eos_token_id=0))
    gpt2.save_pretrained(root / "gpt2")
    # transformers 5 writes safetensors only: the hub's helper writes the .bin shards
    (root / "gpt2_bin").mkdir()
    save_torch_state_dict(gpt2.state_dict(), root / "gpt2_bin", safe_serialization=False,
                          max_shard_size="50KB")
    gpt2.config.save_pretrained(root / "gpt2_bin")
""")


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf") / "models"
    root.mkdir()
    subprocess.run([sys.executable, "-c", _BUILD, str(root)], check=True, capture_output=True,
                   timeout=600, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    return root


def _copy(hf_models: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(hf_models, root)
    return root


def _reference(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    for shard in sorted(folder.glob("pytorch_model*.bin")):
        state.update(torch.load(shard, weights_only=True))
    return state


def test_scan_lists_each_set_once(hf_models: Path) -> None:
    result = run_cli("scan", "--format", "json", hf_models)
    rows = {Path(r["path"]).relative_to(hf_models).as_posix(): r["format"]
            for r in json.loads(result.output)}
    assert rows == {"bert/model.safetensors": "safetensors",
                    "bert_sharded/model.safetensors.index.json": "safetensors-sharded",
                    "gpt2/model.safetensors": "safetensors",
                    "gpt2_bin/pytorch_model.bin.index.json": "torch-sharded"}


def test_every_set_converts_bit_exact(hf_models: Path, tmp_path: Path) -> None:
    root = _copy(hf_models, tmp_path)
    result = run_cli("convert", "--outputs-dir", root)
    assert result.exit_code == 0, result.output + result.stderr
    sources = {"bert": "model.safetensors", "bert_sharded": "model.safetensors.index.json",
               "gpt2": "model.safetensors", "gpt2_bin": "pytorch_model.bin.index.json"}
    for folder, source in sources.items():
        weights, _ = outputs_for(root / folder / source)
        loaded = ckptctl.load_state_dict(weights)
        reference = _reference(root / folder)
        assert list(loaded) == list(reference) or set(loaded) == set(reference), folder
        for name, tensor in reference.items():
            assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    assert run_cli("validate", "--strict", "--deep", root).exit_code == 0


def test_sidecars_name_every_shard_and_the_model(hf_models: Path, tmp_path: Path) -> None:
    root = _copy(hf_models, tmp_path)
    assert run_cli("convert", "--outputs-dir", root).exit_code == 0
    sharded = sidecar_of(root / "bert_sharded/model.safetensors.index.json")
    shards = sorted(p.name for p in (root / "bert_sharded").glob("model-*.safetensors"))
    assert sharded["source"]["files"] == ["model.safetensors.index.json", *shards]
    assert sharded["weights_path"] == "model.weights.h5"
    assert sharded["model"]["architecture"] == "BertForSequenceClassification"
    assert sharded["training"]["framework"] == "transformers"
    assert sharded["weights"]["tensor_count"] == len(_reference(root / "bert_sharded"))
    binary = sidecar_of(root / "gpt2_bin/pytorch_model.bin.index.json")
    assert binary["source"]["format"] == "torch-sharded"
    assert binary["weights_path"] == "pytorch_model.weights.h5"
    assert not binary["conflicts"]


def test_shards_alone_are_not_checkpoints_of_their_own(hf_models: Path, tmp_path: Path) -> None:
    """Stops: a sharded set converted as N unrelated checkpoints (and N catalog rows)."""
    root = _copy(hf_models, tmp_path)
    assert run_cli("convert", "--outputs-dir", root).exit_code == 0
    sidecars = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.metadata.yaml"))
    assert sidecars == ["bert/model.metadata.yaml", "bert_sharded/model.metadata.yaml",
                        "gpt2/model.metadata.yaml", "gpt2_bin/pytorch_model.metadata.yaml"]


def _index(folder: Path) -> tuple[Path, dict]:
    index = next(folder.glob("*.index.json"))
    return index, json.loads(index.read_text())


def test_a_missing_shard_is_named(hf_models: Path, tmp_path: Path) -> None:
    """Stops: a set with a lost shard converted as if the model were complete."""
    root = _copy(hf_models, tmp_path)
    shard = sorted((root / "bert_sharded").glob("model-*.safetensors"))[1]
    shard.unlink()
    result = run_cli("convert", "--exp-dir", root / "bert_sharded")
    assert result.exit_code == 1
    assert f"shard {shard.name} named by the index is missing" in result.stderr
    assert not list((root / "bert_sharded").glob("*.weights.h5"))


def test_a_tensor_in_the_wrong_shard_is_refused(hf_models: Path, tmp_path: Path) -> None:
    """Stops: an index whose weight_map disagrees with the shards being trusted silently."""
    root = _copy(hf_models, tmp_path)
    index, data = _index(root / "bert_sharded")
    name = next(iter(data["weight_map"]))
    shards = sorted(set(data["weight_map"].values()))
    data["weight_map"][name] = next(s for s in shards if s != data["weight_map"][name])
    index.write_text(json.dumps(data))
    result = run_cli("convert", "--exp-dir", root / "bert_sharded")
    assert result.exit_code == 1
    assert "which the index places in" in result.stderr


def test_an_index_listing_a_tensor_no_shard_holds_is_refused(hf_models: Path,
                                                             tmp_path: Path) -> None:
    root = _copy(hf_models, tmp_path)
    index, data = _index(root / "gpt2_bin")
    data["weight_map"]["ghost.weight"] = next(iter(data["weight_map"].values()))
    index.write_text(json.dumps(data))
    result = run_cli("convert", "--exp-dir", root / "gpt2_bin")
    assert result.exit_code == 1
    assert "the index lists 1 tensor(s) no shard holds ('ghost.weight')" in result.stderr


def test_an_index_naming_a_file_outside_its_folder_is_refused(hf_models: Path,
                                                              tmp_path: Path) -> None:
    """Stops: a shard index reading files outside its folder (``../secret``)."""
    root = _copy(hf_models, tmp_path)
    (root / "secret.safetensors").write_bytes((root / "bert/model.safetensors").read_bytes())
    index, data = _index(root / "bert_sharded")
    data["weight_map"] = {k: "../secret.safetensors" for k in data["weight_map"]}
    index.write_text(json.dumps(data))
    result = run_cli("scan", root / "bert_sharded")
    assert result.exit_code == 1
    assert "not a file in the index's folder" in result.output


def test_a_pickle_shard_that_would_run_code_is_refused(hf_models: Path, tmp_path: Path) -> None:
    """Stops: a .bin shard calling os.system when loaded, hidden among good shards."""
    root = _copy(hf_models, tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os
            return (os.system, (f"touch {marker}",))

    shard = sorted((root / "gpt2_bin").glob("pytorch_model-*.bin"))[0]
    state = torch.load(shard, weights_only=True)
    torch.save({**state, "extra": Payload()}, shard)
    result = run_cli("convert", "--exp-dir", root / "gpt2_bin")
    assert result.exit_code == 1
    assert "pickle references dangerous callables posix.system" in result.stderr
    assert shard.name in result.stderr  # the shard is named, not only the index
    assert not marker.exists()
