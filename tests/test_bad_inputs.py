"""Hostile and broken checkpoints: refused or reported in one line, nothing runs, nothing is
left half-written, and the rest of the batch is still converted."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import leftover_temporaries, outputs_exist, run_cli, run_process

from ckptctl.errors import CorruptCheckpointError, UnsafePickleError
from ckptctl.readers.torch_files import open_torch

EXPECTED_REASON = {
    "malicious.ckpt": "refused: the pickle references dangerous callables",
    "malicious_eval.pt": "refused: the pickle references dangerous callables",
    "legacy_malicious.pt": "refused: the pickle references dangerous callables",
    "truncated.ckpt": "damaged zip archive (truncated?)",
    "empty.pt": "empty file",
    "random.pth": "not a checkpoint (unrecognised content)",
}


def assert_no_marker(manifest: dict) -> None:
    for marker in manifest["marker_paths"]:
        assert not Path(marker).exists(), f"payload ran: {marker}"


def test_batch_reports_each_bad_file_and_converts_the_good_one(fresh_bad_inputs: tuple[Path, dict]) -> None:
    """Stops: one malicious or broken file aborting a batch, running, leaving half-written outputs or a traceback. Found: designed up front."""
    root, manifest = fresh_bad_inputs
    result = run_process("convert", "--exp-dir", root)  # a real process: exit code and streams
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(EXPECTED_REASON)
    for name, reason in EXPECTED_REASON.items():
        (line,) = [e for e in errors if e.startswith(f"error: {root / name}: ")]
        assert reason in line, line
        assert outputs_exist(root / name) == (False, False), name
    assert "found 7, converted 1, skipped 0, failed 6" in result.stderr
    assert outputs_exist(root / "good.pt") == (True, True)
    assert leftover_temporaries(root) == []
    assert_no_marker(manifest)
    assert run_cli("validate", "--deep", root).exit_code == 0  # what was written is complete


@pytest.mark.parametrize("name", ["malicious.ckpt", "malicious_eval.pt", "legacy_malicious.pt"])
def test_dangerous_globals_are_named(bad_inputs: tuple[Path, dict], name: str) -> None:
    """Stops: os.system/eval payloads in zip and legacy checkpoints loading instead of being refused by name. Found: designed up front."""
    root, manifest = bad_inputs
    with pytest.raises(UnsafePickleError) as caught:
        open_torch(root / name)
    named = set(caught.value.globals_found)
    expected = {g.replace(" ", ".") for g in manifest["files"][name]["dangerous_globals"]}
    assert named & expected or named == expected, (named, expected)
    assert str(root / name) in str(caught.value)
    assert_no_marker(manifest)


def test_scan_reports_bad_files_without_running_them(bad_inputs: tuple[Path, dict]) -> None:
    """Stops: scan running or crashing on hostile files instead of listing them as unreadable. Found: designed up front."""
    root, manifest = bad_inputs
    result = run_cli("scan", root, "--format", "json")
    assert result.exit_code == 1
    import json

    rows = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    assert rows["good.pt"]["status"] == "not converted"
    for name, reason in EXPECTED_REASON.items():
        assert rows[name]["status"] == "unreadable", name
        assert reason in rows[name]["reason"], name
    assert_no_marker(manifest)


def test_truncated_storage_is_reported(tmp_path: Path) -> None:
    """Stops: a flipped byte in tensor data being converted silently (storage crc32 not checked). Found: designed up front."""
    import torch

    path = tmp_path / "cut.pt"
    torch.save({"w": torch.arange(1000, dtype=torch.float32)}, path)
    data = path.read_bytes()
    # Damage a byte inside the tensor's data: the zip directory is fine, the crc is not.
    start = data.index(b"\x00\x00\x80\x3f")  # 1.0f
    damaged = bytearray(data)
    damaged[start + 3] ^= 0x01
    path.write_bytes(bytes(damaged))
    result = run_cli("convert", "--checkpoint", path)
    assert result.exit_code == 1
    assert "fails its crc32 check" in result.stderr
    assert outputs_exist(path) == (False, False)


def test_corrupt_errors_are_ckpt_errors(bad_inputs: tuple[Path, dict]) -> None:
    """Stops: a truncated zip escaping as a raw zipfile error instead of CorruptCheckpointError. Found: designed up front."""
    root, _ = bad_inputs
    with pytest.raises(CorruptCheckpointError):
        open_torch(root / "truncated.ckpt")


PYTHON_TAG = "!!python/object/apply:os.system ['touch {marker}']"


def test_yaml_with_python_tags_runs_nothing(tmp_path: Path) -> None:
    """Stops: !!python/object/apply tags in sidecars, Hydra config or hparams.yaml running code. Found: designed up front.

    Sidecars and the Hydra/hparams files read beside checkpoints are parsed with the safe
    loader only: a python tag is an error (sidecar) or a skipped file (config), never a call."""
    import torch

    marker = tmp_path / "PWNED_yaml"
    exp = tmp_path / "exp"
    (exp / ".hydra").mkdir(parents=True)
    (exp / ".hydra" / "config.yaml").write_text(
        "model:\n  architecture: " + PYTHON_TAG.format(marker=marker) + "\n")
    (exp / "hparams.yaml").write_text("lr: " + PYTHON_TAG.format(marker=marker) + "\n")
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 1}, exp / "a.ckpt")
    assert run_cli("convert", "--exp-dir", exp).exit_code == 0
    sidecar = exp / "a.metadata.yaml"
    sidecar.write_text(sidecar.read_text() + "evil: " + PYTHON_TAG.format(marker=marker) + "\n")
    result = run_cli("validate", exp)
    assert result.exit_code == 1 and "not valid YAML" in result.stdout
    assert run_cli("catalog", exp, "--no-cache").exit_code == 0
    assert not marker.exists()


def test_lightning_state_key_is_read_as_text() -> None:
    """Stops: code in Lightning's ModelCheckpoint state key being evaluated (no literal_eval/eval). Found: designed up front."""
    from ckptctl.formats.pytorch.metadata import _state_key_settings

    key = ("ModelCheckpoint{'monitor': 'val/hmean', 'mode': 'max', 'every_n_train_steps': 0, "
           "'every_n_epochs': 1, 'train_time_interval': None}")
    assert _state_key_settings(key) == {"monitor": "val/hmean", "mode": "max"}
    assert _state_key_settings("ModelCheckpoint{'monitor': __import__('os').system('x')}") == {}
