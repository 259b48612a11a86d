"""The CLI contract: names, outputs and exit codes that users' scripts and CI rely on."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import leftover_temporaries, outputs_exist, outputs_for, run_cli

from ckptctl.cli import COMMANDS, cli


def make_small_tree(root: Path) -> Path:
    exp = root / "exp1" / "checkpoints"
    exp.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 2, "global_step": 10},
               exp / "epoch=2-step=10-val_loss=0.40.ckpt")
    return exp / "epoch=2-step=10-val_loss=0.40.ckpt"


def test_every_command_has_help() -> None:
    result = run_cli("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output
        sub = run_cli(name, "--help")
        assert sub.exit_code == 0, name
        assert len(cli.get_command(None, name).help or "") > 40, name  # type: ignore[arg-type]
        assert "Usage: ckptctl " + name in sub.output


def test_scan_json_lists_format_size_and_status(tmp_path: Path) -> None:
    source = make_small_tree(tmp_path)
    result = run_cli("scan", tmp_path, "--format", "json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert rows == [{"path": str(source), "format": "torch-zip", "size_bytes": source.stat().st_size,
                     "status": "not converted", "reason": None, "kind": None, "sidecar": None}]
    assert run_cli("convert", "--checkpoint", source).exit_code == 0
    rows = json.loads(run_cli("scan", tmp_path, "--format", "json").stdout)
    assert rows[0]["status"] == "converted"
    os.utime(source, (1, 1))  # touched: same size, new mtime
    rows = json.loads(run_cli("scan", tmp_path, "--format", "json").stdout)
    assert rows[0]["status"] == "stale"
    assert rows[0]["reason"] == "source modified since conversion"
    assert rows[0]["kind"] == "stale"


def test_scan_table_and_no_recursive(tmp_path: Path) -> None:
    make_small_tree(tmp_path)
    result = run_cli("scan", tmp_path, "--no-recursive")
    assert result.exit_code == 0
    assert result.stdout == "PATH   FORMAT   SIZE   STATUS\n" + "─" * 29 + "\n"
    assert result.stderr == "0 checkpoints: none\n"


def test_scan_survives_symlink_loops(tmp_path: Path) -> None:
    source = make_small_tree(tmp_path)
    (source.parent / "loop").symlink_to(tmp_path, target_is_directory=True)
    rows = json.loads(run_cli("scan", tmp_path, "--format", "json").stdout)
    assert [r["path"] for r in rows] == [str(source)]


def test_convert_summary_rerun_skip_and_force(tmp_path: Path) -> None:
    source = make_small_tree(tmp_path)
    first = run_cli("convert", "--outputs-dir", tmp_path)
    assert first.exit_code == 0
    assert first.stdout == f"converted      {source}\n"
    assert first.stderr == "found 1, converted 1, skipped 0, failed 0\n"
    _weights, sidecar = outputs_for(source)
    before = sidecar.stat().st_mtime_ns
    again = run_cli("convert", "--outputs-dir", tmp_path)
    assert (again.exit_code, again.stdout) == (0, "")
    assert again.stderr == "found 1, converted 0, skipped 1, failed 0\n"
    assert sidecar.stat().st_mtime_ns == before
    forced = run_cli("convert", "--outputs-dir", tmp_path, "--force")
    assert forced.stderr == "found 1, converted 1, skipped 0, failed 0\n"
    assert leftover_temporaries(tmp_path) == []


def test_convert_dry_run_writes_nothing(tmp_path: Path) -> None:
    source = make_small_tree(tmp_path)
    result = run_cli("convert", "--exp-dir", tmp_path / "exp1", "--dry-run")
    assert result.exit_code == 0
    assert result.stdout == f"would convert  {source}\n"
    assert outputs_exist(source) == (False, False)


def test_convert_metadata_only(tmp_path: Path) -> None:
    source = make_small_tree(tmp_path)
    assert run_cli("convert", "--checkpoint", source, "--metadata-only").exit_code == 0
    assert outputs_exist(source) == (False, True)
    from helpers import sidecar_of

    doc = sidecar_of(source)
    assert doc["weights_path"] is None and "weights" not in doc
    assert run_cli("validate", "--strict", tmp_path).exit_code == 0


def test_convert_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run_cli("convert").exit_code == 2
    assert run_cli("convert", "--exp-dir", tmp_path, "--outputs-dir", tmp_path).exit_code == 2
    assert run_cli("convert", "--checkpoint", tmp_path / "missing.ckpt").exit_code == 2


def test_touched_source_with_same_content_refreshes_the_sidecar_only(tmp_path: Path) -> None:
    source = make_small_tree(tmp_path)
    assert run_cli("convert", "--checkpoint", source).exit_code == 0
    weights, _ = outputs_for(source)
    weights_mtime = weights.stat().st_mtime_ns
    os.utime(source, (1_000_000, 1_000_000))  # e.g. a copy without -p
    result = run_cli("convert", "--checkpoint", source, "-v")
    assert result.stdout == f"skipped        {source} (content unchanged (sidecar mtime refreshed))\n"
    assert weights.stat().st_mtime_ns == weights_mtime
    rows = json.loads(run_cli("scan", tmp_path, "--format", "json").stdout)
    assert rows[0]["status"] == "converted"


def test_stale_source_is_reconverted_without_force(tmp_path: Path) -> None:
    source = make_small_tree(tmp_path)
    assert run_cli("convert", "--checkpoint", source).exit_code == 0
    torch.save({"state_dict": {"w": torch.full((3,), 7.0)}, "epoch": 3}, source)
    result = run_cli("convert", "--checkpoint", source)
    assert result.stderr == "found 1, converted 1, skipped 0, failed 0\n"
    import ckptctl

    assert ckptctl.load_weights(outputs_for(source)[0])["w"].tolist() == [7.0, 7.0, 7.0]


def test_name_clash_fails_both_and_writes_nothing(tmp_path: Path) -> None:
    for ext in (".ckpt", ".pt"):
        torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / f"best{ext}")
    result = run_cli("convert", "--exp-dir", tmp_path)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == (f"error: {tmp_path / 'best.ckpt'}: output name clash with best.pt "
                        "(both would write best.weights.h5); rename one of them")
    assert lines[-1] == "found 2, converted 0, skipped 0, failed 2"
    assert not list(tmp_path.glob("best.weights.h5")) and not list(tmp_path.glob("*.yaml"))


def test_validate_clean_then_each_kind_of_problem(tmp_path: Path) -> None:
    source = make_small_tree(tmp_path)
    assert run_cli("convert", "--checkpoint", source).exit_code == 0
    ok = run_cli("validate", tmp_path, "--deep", "--strict")
    assert (ok.exit_code, ok.stderr) == (0, "ok: 1 sidecar, 1 checkpoint checked, no problems\n")
    weights, sidecar = outputs_for(source)
    # same size, different bytes: only --deep sees it
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert run_cli("validate", tmp_path).exit_code == 0
    deep = run_cli("validate", tmp_path, "--deep", "--format", "json")
    assert deep.exit_code == 1
    report = json.loads(deep.stdout)
    assert report["problems"] == [{"path": str(sidecar),
                                   "problem": "weights epoch=2-step=10-val_loss=0.40.weights.h5 "
                                              "do not match their sha256", "kind": "corrupt"}]
    # an unknown field is reported, not accepted
    sidecar.write_text(sidecar.read_text() + "surprise: 1\n")
    bad = run_cli("validate", tmp_path)
    assert bad.exit_code == 1
    assert "unknown field surprise" in bad.stdout
    bad_json = json.loads(run_cli("validate", tmp_path, "--format", "json").stdout)
    assert [p["kind"] for p in bad_json["problems"]] == ["sidecar"]
    # a checkpoint without a sidecar fails only --strict
    sidecar.unlink()
    weights.unlink()
    assert run_cli("validate", tmp_path).exit_code == 0
    strict = run_cli("validate", tmp_path, "--strict")
    assert strict.exit_code == 1 and "no sidecar (run ckptctl convert)" in strict.stdout
    strict_json = json.loads(run_cli("validate", tmp_path, "--strict", "--format", "json").stdout)
    assert [p["kind"] for p in strict_json["problems"]] == ["not-converted"]


def test_validate_rejects_yaml_alias_bombs(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    (tmp_path / "bomb.metadata.yaml").write_text(bomb)
    result = run_cli("validate", tmp_path)
    assert result.exit_code == 1
    assert "YAML aliases are not allowed" in result.stdout


def convert_example(tree: tuple[Path, dict]) -> Path:
    root, _ = tree
    assert run_cli("convert", "--outputs-dir", root).exit_code == 0
    return root


def test_catalog_best_max_metric(fresh_tree: tuple[Path, dict]) -> None:
    root = convert_example(fresh_tree)
    _, manifest = fresh_tree
    result = run_cli("catalog", root, "--best", "val/hmean", "--format", "json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    best = manifest["runs"]["ocr_dbnet_hydra"]["best_model_path"]
    assert [Path(r["sidecar_path"]).parent / r["checkpoint_path"] for r in rows] == [root / best]
    assert result.stderr == "note: 12 checkpoints without val/hmean were left out\n"


def test_catalog_best_min_metric_uses_sidecar_mode(fresh_tree: tuple[Path, dict]) -> None:
    root = convert_example(fresh_tree)
    _, manifest = fresh_tree
    # --mode max is overridden: the sidecars say val_loss was monitored with mode=min
    result = run_cli("catalog", root, "--best", "val_loss", "--mode", "max", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    # the OCR run logged val/loss: the same metric by the alias rule (README: Catalog)
    assert [r["exp_name"] for r in rows] == ["mlp_minloss", "ocr_dbnet_hydra"]
    assert rows[0]["checkpoint"] == str(root / manifest["runs"]["mlp_minloss"]["best_model_path"])
    assert rows[0]["mode"] == "min"


def test_catalog_ranks_experiments_best_first(tmp_path: Path) -> None:
    for exp, losses in (("a", [0.5, 0.3]), ("b", [0.2, 0.9]), ("c", [0.7])):
        for i, loss in enumerate(losses):
            (tmp_path / exp).mkdir(exist_ok=True)
            torch.save({"model": {"w": torch.ones(1)}, "epoch": i, "best_val_loss": loss},
                       tmp_path / exp / f"e{i}.pt")
    assert run_cli("convert", "--outputs-dir", tmp_path).exit_code == 0
    result = run_cli("catalog", tmp_path, "--best", "best_val_loss")
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["b", "a", "c"]
    assert lines[0].split() == ["EXPERIMENT", "CHECKPOINT", "EPOCH", "STEP", "best_val_loss", "(min)"]
    assert lines[2].split()[1:] == [str(tmp_path / "b/e0.pt"), "0", "0.2"]
    high = run_cli("catalog", tmp_path, "--best", "best_val_loss", "--mode", "max")
    # no sidecar monitored it; the name says loss, but --mode was given: max wins
    assert [line.split()[:2] for line in high.stdout.splitlines()[2:]] == [
        ["b", str(tmp_path / "b/e1.pt")], ["c", str(tmp_path / "c/e0.pt")], ["a", str(tmp_path / "a/e0.pt")]]


def test_catalog_unknown_metric_lists_known_ones(fresh_tree: tuple[Path, dict]) -> None:
    root = convert_example(fresh_tree)
    result = run_cli("catalog", root, "--best", "val/nope")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: unknown metric 'val/nope' (did you mean ")
    assert "?); metrics in these sidecars: " in result.stderr
    assert "val/hmean" in result.stderr and "val_loss" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_catalog_json_sort_and_cache(fresh_tree: tuple[Path, dict], tmp_path: Path) -> None:
    root = convert_example(fresh_tree)
    docs = json.loads(run_cli("catalog", root, "--format", "json").stdout)
    assert len(docs) == 15
    assert all(Path(d["sidecar_path"]).exists() and d["schema_version"] == "1.0" for d in docs)
    by_epoch = json.loads(run_cli("catalog", root, "--sort", "-epoch", "--format", "json").stdout)
    epochs = [d["training"].get("epoch") for d in by_epoch]
    numbered = [e for e in epochs if e is not None]
    assert numbered == sorted(numbered, reverse=True) and epochs[: len(numbered)] == numbered
    bad_sort = run_cli("catalog", root, "--sort", "nonsense")
    assert bad_sort.exit_code == 1 and "unknown sort key 'nonsense'" in bad_sort.stderr
    cached = run_cli("catalog", root, "--format", "json")  # second run: from the cache
    assert json.loads(cached.stdout) == docs
    # editing a sidecar invalidates its cache entry
    sidecar = Path(docs[0]["sidecar_path"])
    sidecar.write_text(sidecar.read_text().replace(f"exp_name: {docs[0]['exp_name']}", "exp_name: renamed"))
    names = {d["exp_name"] for d in json.loads(run_cli("catalog", root, "--format", "json").stdout)}
    assert "renamed" in names


def test_catalog_never_opens_checkpoints(fresh_tree: tuple[Path, dict]) -> None:
    root = convert_example(fresh_tree)
    before = run_cli("catalog", root, "--best", "val/hmean", "--format", "json", "--no-cache")
    sources = [p for p in root.rglob("*") if p.suffix in (".ckpt", ".pt", ".pth", ".bin")]
    assert len(sources) == 15
    for path in sources:  # checkpoints gone: a catalog that needed them would change or fail
        path.unlink()
    after = run_cli("catalog", root, "--best", "val/hmean", "--format", "json", "--no-cache")
    assert after.exit_code == 0
    assert json.loads(after.stdout) == json.loads(before.stdout) != []


def test_exp_name_from_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_small_tree(tmp_path)
    monkeypatch.chdir(tmp_path / "exp1")
    assert run_cli("convert", "--checkpoint", "checkpoints/" + source.name).exit_code == 0
    from helpers import sidecar_of

    assert sidecar_of(source)["exp_name"] == "exp1"
    assert run_cli("convert", "--exp-dir", ".", "--force").exit_code == 0
    assert sidecar_of(source)["exp_name"] == "exp1"
