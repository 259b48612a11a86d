"""``convert PATHS...``, ``--into`` (old name ``--output-dir``), the experiment inferred from
markers when convert is pointed one level too low, and metadata-only refreshes that keep the
weights (issue 12, items 1 and 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import outputs_for, run_cli, sidecar_of


def _experiment(root: Path, name: str = "mlp", count: int = 2) -> list[Path]:
    """A Lightning-shaped experiment folder: ``<name>/checkpoints/epoch=N.ckpt``."""
    folder = root / name / "checkpoints"
    folder.mkdir(parents=True)
    paths = []
    for epoch in range(1, count + 1):
        path = folder / f"epoch={epoch}.ckpt"
        torch.save({"state_dict": {"w": torch.full((4,), float(epoch))}, "epoch": epoch,
                    "global_step": 10 * epoch}, path)
        paths.append(path)
    return paths


# --- positional paths ------------------------------------------------------------------------


def test_folders_and_files_as_arguments(tmp_path: Path) -> None:
    mlp = _experiment(tmp_path / "runs", "mlp")
    cnn = _experiment(tmp_path / "runs", "cnn", 1)
    loose = tmp_path / "loose.pt"
    torch.save({"model": {"w": torch.ones(2)}}, loose)
    # a folder, a file inside it again (converted once) and a file elsewhere
    result = run_cli("convert", tmp_path / "runs", mlp[0], loose)
    assert (result.exit_code, result.stderr) == (0, "found 4, converted 4, skipped 0, failed 0\n")
    assert result.stdout == "".join(f"converted      {p}\n" for p in [*cnn, *mlp, loose])
    # each folder is handled like --outputs-dir: one experiment per subfolder
    assert [sidecar_of(p)["exp_name"] for p in [*cnn, *mlp, loose]] == ["cnn", "mlp", "mlp",
                                                                       tmp_path.name]


def test_positional_folder_equals_outputs_dir(tmp_path: Path) -> None:
    sources = _experiment(tmp_path / "runs", "mlp")
    flag = run_cli("convert", "--outputs-dir", tmp_path / "runs", "--dry-run")
    positional = run_cli("convert", tmp_path / "runs", "--dry-run")
    assert (positional.exit_code, positional.stdout, positional.stderr) == (
        flag.exit_code, flag.stdout, flag.stderr)
    assert positional.stdout == "".join(f"would convert  {p}\n" for p in sources)


@pytest.mark.parametrize("flag", ["--outputs-dir", "--exp-dir", "--checkpoint"])
def test_paths_and_the_old_flags_are_not_mixed(tmp_path: Path, flag: str) -> None:
    sources = _experiment(tmp_path / "runs")
    given = sources[0] if flag == "--checkpoint" else tmp_path / "runs"
    result = run_cli("convert", tmp_path / "runs", flag, given)
    assert result.exit_code == 2
    assert result.stderr.endswith("give folders and checkpoints as PATHS, or one of --checkpoint, "
                                  "--exp-dir or --outputs-dir, not both\n")
    assert not outputs_for(sources[0])[1].exists()


def test_nothing_or_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    nothing = run_cli("convert")
    assert nothing.exit_code == 2
    assert nothing.stderr.endswith("give PATHS (folders or checkpoints), or exactly one of "
                                   "--checkpoint, --exp-dir or --outputs-dir\n")
    missing = run_cli("convert", tmp_path / "nope")
    assert missing.exit_code == 2
    assert f"{tmp_path / 'nope'} does not exist (nor nope.index)" in missing.stderr


# --- --into and its hidden old name ----------------------------------------------------------


@pytest.mark.parametrize("name", ["--into", "--output-dir"])
def test_into_and_its_old_name_write_and_find_the_same_outputs(tmp_path: Path, name: str) -> None:
    sources = _experiment(tmp_path / "runs")
    out = tmp_path / "out"
    result = run_cli("convert", tmp_path / "runs", name, out)
    assert (result.exit_code, result.stderr) == (0, "found 2, converted 2, skipped 0, failed 0\n")
    assert (out / "mlp" / "checkpoints" / "epoch=1.metadata.yaml").is_file()
    assert not outputs_for(sources[0])[1].exists()
    scan = run_cli("scan", tmp_path / "runs", name, out)
    assert (scan.exit_code, scan.stderr) == (0, "2 checkpoints: 2 converted\n")
    validate = run_cli("validate", "--strict", name, out, tmp_path / "runs")
    assert (validate.exit_code, validate.stderr) == (
        0, "ok: 2 sidecars, 2 checkpoints checked, no problems\n")


@pytest.mark.parametrize("command", ["convert", "scan", "validate"])
def test_output_dir_is_hidden_and_into_documented(command: str) -> None:
    text = run_cli(command, "--help").stdout
    assert "--into DIR" in text
    # not listed as an option (the --into help may mention its old name)
    assert not [line for line in text.splitlines() if line.startswith("  --output-dir")]


@pytest.mark.parametrize("command", ["convert", "scan", "validate"])
def test_into_and_output_dir_naming_two_folders_is_a_usage_error(tmp_path: Path,
                                                                  command: str) -> None:
    _experiment(tmp_path / "runs")
    result = run_cli(command, tmp_path / "runs", "--into", tmp_path / "a",
                     "--output-dir", tmp_path / "b")
    assert result.exit_code == 2
    assert result.stderr.endswith("--into and --output-dir (its old name) name different "
                                  "folders; give one\n")


# --- the experiment, inferred from markers ---------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--outputs-dir", "runs/mlp"], ["--exp-dir", "runs/mlp/checkpoints"], ["runs/mlp"],
    ["runs/mlp/checkpoints"], ["--outputs-dir", "runs"], ["--exp-dir", "runs/mlp"],
])
def test_one_level_too_low_still_names_the_experiment(tmp_path: Path, args: list[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sources = _experiment(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    assert run_cli("convert", *args).exit_code == 0
    assert [sidecar_of(p)["exp_name"] for p in sources] == ["mlp", "mlp"]


@pytest.mark.parametrize("marker", ["lightning_logs", "csv_logs", ".hydra", "hparams.yaml"])
def test_each_marker_makes_a_folder_an_experiment(tmp_path: Path, marker: str) -> None:
    exp = tmp_path / "runs" / "gan"
    (exp / "weights").mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.ones(2)}}, exp / "weights" / "g.pt")
    if marker.endswith(".yaml"):
        (exp / marker).write_text("lr: 0.1\n")
    else:
        (exp / marker).mkdir()
    assert run_cli("convert", "--outputs-dir", exp).exit_code == 0
    assert sidecar_of(exp / "weights" / "g.pt")["exp_name"] == "gan"


def test_a_folder_of_experiments_inside_a_project_is_not_an_experiment(tmp_path: Path) -> None:
    """A project holding its own checkpoints/ does not absorb the runs/ folder beside it:
    only a root inside a marker folder (or holding one) is inside an experiment."""
    (tmp_path / "checkpoints").mkdir()
    sources = _experiment(tmp_path / "runs", "mlp", 1)
    (tmp_path / "runs" / "loose.pt").write_bytes((tmp_path / "runs" / "mlp" / "checkpoints" /
                                                 "epoch=1.ckpt").read_bytes())
    assert run_cli("convert", tmp_path / "runs").exit_code == 0
    assert sidecar_of(sources[0])["exp_name"] == "mlp"
    assert sidecar_of(tmp_path / "runs" / "loose.pt")["exp_name"] == "runs"


# --- metadata-only refreshes -----------------------------------------------------------------


def _rename_experiment_in_sidecar(source: Path, wrong: str) -> None:
    """What an earlier ckptctl wrote when pointed one level too low."""
    sidecar = outputs_for(source)[1]
    text = sidecar.read_text()
    assert "exp_name: mlp\n" in text
    stat = sidecar.stat()
    sidecar.write_text(text.replace("exp_name: mlp\n", f"exp_name: {wrong}\n"))
    os.utime(sidecar, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_wrong_experiment_name_is_refreshed_without_rewriting_the_weights(tmp_path: Path) -> None:
    sources = _experiment(tmp_path / "runs")
    assert run_cli("convert", tmp_path / "runs").exit_code == 0
    for source in sources:
        _rename_experiment_in_sidecar(source, "checkpoints")
    weights = [outputs_for(s)[0] for s in sources]
    before = [(w.stat().st_ino, w.stat().st_mtime_ns, w.read_bytes()) for w in weights]
    result = run_cli("convert", "-v", tmp_path / "runs")
    assert (result.exit_code, result.stdout) == (0, "".join(f"converted      {s}\n" for s in sources))
    assert result.stderr == "".join(
        f"note: {s}: sidecar refreshed (exp_name 'checkpoints' -> 'mlp'); weights kept, their "
        "sha256 checked\n" for s in sources) + "found 2, converted 2, skipped 0, failed 0\n"
    assert [sidecar_of(s)["exp_name"] for s in sources] == ["mlp", "mlp"]
    assert [(w.stat().st_ino, w.stat().st_mtime_ns, w.read_bytes()) for w in weights] == before
    again = run_cli("convert", tmp_path / "runs")
    assert again.stderr == "found 2, converted 0, skipped 2, failed 0\n"
    deep = run_cli("validate", "--strict", "--deep", tmp_path / "runs")
    assert (deep.exit_code, deep.stderr) == (0, "ok: 2 sidecars, 2 checkpoints checked, no problems\n")


def test_a_new_metric_source_refreshes_the_sidecar(tmp_path: Path) -> None:
    (source, _) = _experiment(tmp_path / "runs")
    assert run_cli("convert", tmp_path / "runs").exit_code == 0
    assert "val_loss" not in sidecar_of(source).get("metrics", {})
    weights = outputs_for(source)[0]
    inode = weights.stat().st_ino
    logs = tmp_path / "runs" / "mlp" / "csv_logs"
    logs.mkdir()
    (logs / "metrics.csv").write_text("epoch,step,val_loss\n1,9,0.5\n2,19,0.25\n")
    later = outputs_for(source)[1].stat().st_mtime + 5
    os.utime(logs / "metrics.csv", (later, later))
    result = run_cli("convert", tmp_path / "runs")
    assert result.stderr == "found 2, converted 2, skipped 0, failed 0\n"
    assert sidecar_of(source)["metrics"]["val_loss"] == 0.5
    assert sidecar_of(source)["provenance"]["metrics"] == ["metrics.csv:csv_logs/metrics.csv"]
    assert weights.stat().st_ino == inode
    assert run_cli("convert", tmp_path / "runs").stderr == "found 2, converted 0, skipped 2, failed 0\n"


def test_weights_that_do_not_match_their_sha256_are_rewritten_not_kept(tmp_path: Path) -> None:
    (source, _) = _experiment(tmp_path / "runs")
    assert run_cli("convert", tmp_path / "runs").exit_code == 0
    _rename_experiment_in_sidecar(source, "checkpoints")
    weights = outputs_for(source)[0]
    intact = weights.read_bytes()
    flipped = bytearray(intact)
    flipped[-50] ^= 0xFF
    weights.write_bytes(bytes(flipped))  # same size: only the sha256 tells
    result = run_cli("convert", "-v", tmp_path / "runs")
    assert result.exit_code == 0
    assert f"converted      {source}\n" in result.stdout and "sidecar refreshed" not in result.stdout
    assert weights.read_bytes() == intact
    assert sidecar_of(source)["exp_name"] == "mlp"
