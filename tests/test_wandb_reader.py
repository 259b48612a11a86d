"""``ckptctl.readers.wandb_run`` against a real offline run written by the ``wandb`` package
(in a subprocess: ``WANDB_MODE=offline``, no network) and against a synced run's ``files/``
(wandb 0.31 offline runs write only the transaction log, so the ``files/`` layout of a
synced run — ``wandb-summary.json``, ``config.yaml``, ``wandb-metadata.json`` — is built here
to W&B's documented layout). Then hostile folders, each test named for the attack it stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ckptctl.errors import BudgetExceededError, CorruptCheckpointError
from ckptctl.readers import wandb_run as wb

_WANDB_SCRIPT = textwrap.dedent("""
    import json, wandb
    run = wandb.init(project="ckpt-proj", name="tiny-run",
                     config={"lr": 0.01, "model": {"depth": 3}, "batch_size": 8})
    run.config["optimizer"] = "adam"
    for step in range(5):
        wandb.log({"loss": 1.0 / (step + 1), "acc": step / 10, "val": {"f1": step / 4},
                   "flag": step % 2 == 0, "note": "x"}, step=step)
    run.summary["best_acc"] = 0.9
    print(json.dumps({"id": run.id, "name": run.name, "project": run.project,
                      "dir": run.dir}))
    wandb.finish()
""")


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("wandb")  # installed: the run itself happens in a subprocess
    root = tmp_path_factory.mktemp("wandb_exp")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(root),
           "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
           "WANDB_CONFIG_DIR": str(root / ".config"), "WANDB_CACHE_DIR": str(root / ".cache")}
    done = subprocess.run([sys.executable, "-c", _WANDB_SCRIPT], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300, check=True)
    info = json.loads(done.stdout.strip().splitlines()[-1])
    return {"root": root, **info}


def test_find_runs_ignores_latest_run_symlink(offline_run: dict[str, Any]) -> None:
    root = offline_run["root"]
    assert (root / "wandb" / "latest-run").is_symlink()
    runs = wb.find_wandb_runs(root)
    assert [p.name for p in runs] == [p.name for p in (root / "wandb").glob("offline-run-*")]
    assert len(runs) == 1 and runs[0].name.endswith(offline_run["id"])
    assert wb.find_wandb_runs(root / "wandb") == runs


def test_offline_run_matches_what_wandb_logged(offline_run: dict[str, Any]) -> None:
    (folder,) = wb.find_wandb_runs(offline_run["root"])
    run = wb.read_wandb_run(folder)
    assert run.run_id == offline_run["id"] and run.offline
    assert run.name == offline_run["name"] == "tiny-run"
    assert run.project == "ckpt-proj"
    assert run.config == {"lr": 0.01, "model": {"depth": 3}, "batch_size": 8,
                          "optimizer": "adam"}
    summary = {k: v for k, v in run.summary.items() if not k.startswith("_")}
    assert summary == {"loss": 0.2, "acc": 0.4, "val/f1": 1.0, "best_acc": 0.9}
    assert run.summary["_step"] == 4
    assert run.started_at is not None and run.started_at.endswith("Z")
    assert run.files_read == [folder / f"run-{run.run_id}.wandb"]
    assert not run.log_truncated


def test_offline_run_history_replays_every_log_call(offline_run: dict[str, Any]) -> None:
    """Each ``wandb.log(..., step=N)`` is one history row with its own values (not the
    summary's last ones): what a checkpoint of step N is matched against."""
    (folder,) = wb.find_wandb_runs(offline_run["root"])
    run = wb.read_wandb_run(folder)
    rows = [{k: v for k, v in row.items() if not k.startswith("_") or k == "_step"}
            for row in run.history]
    assert rows == [{"_step": step, "loss": 1.0 / (step + 1), "acc": step / 10,
                     "val/f1": step / 4} for step in range(5)]


def test_truncated_transaction_log_keeps_what_was_whole(offline_run: dict[str, Any],
                                                        tmp_path: Path) -> None:
    (folder,) = wb.find_wandb_runs(offline_run["root"])
    copy = tmp_path / folder.name
    copy.mkdir()
    log = folder / f"run-{offline_run['id']}.wandb"
    raw = log.read_bytes()
    (copy / log.name).write_bytes(raw[: len(raw) * 2 // 3])
    run = wb.read_wandb_run(copy)
    assert run.log_truncated
    assert run.project == "ckpt-proj" and run.summary.get("loss", 0) >= 0.2


# --- a synced run's files/ ---------------------------------------------------------------------


def _synced(tmp_path: Path, summary: str | None = None) -> Path:
    folder = tmp_path / "wandb" / "run-20250102_030405-abc123"
    files = folder / "files"
    files.mkdir(parents=True)
    (files / "wandb-summary.json").write_text(summary if summary is not None else json.dumps({
        "loss": 0.25, "val": {"acc": 0.75, "f1": {"macro": 0.5}}, "_step": 99,
        "_runtime": 12.5, "_timestamp": 1735787045.1, "_wandb": {"runtime": 12},
        "flag": True, "text": "hello", "nan": float("nan"),
        "img": {"_type": "image-file", "width": 4}}))
    (files / "config.yaml").write_text(textwrap.dedent("""\
        _wandb:
          value:
            cli_version: 0.17.0
        lr:
          desc: null
          value: 0.001
        layers:
          value: [32, 16]
        raw_key: 5
        """))
    (files / "wandb-metadata.json").write_text(json.dumps({
        "program": "train.py", "args": ["--lr", "0.001"], "host": "node1",
        "startedAt": "2025-01-02T03:04:05.000000Z", "git": {"commit": "deadbeef"}}))
    return folder


def test_synced_run_files_are_read_by_documented_rules(tmp_path: Path) -> None:
    run = wb.read_wandb_run(_synced(tmp_path))
    assert run.run_id == "abc123" and not run.offline
    assert run.summary == {"_runtime": 12.5, "_step": 99, "_timestamp": 1735787045.1,
                           "loss": 0.25, "val/acc": 0.75, "val/f1/macro": 0.5}
    assert run.config == {"lr": 0.001, "layers": [32, 16], "raw_key": 5}
    assert run.program == "train.py" and run.args == ["--lr", "0.001"]
    assert run.git_commit == "deadbeef" and run.host == "node1"
    assert run.started_at == "2025-01-02T03:04:05.000000Z"
    assert [p.name for p in run.files_read] == ["wandb-summary.json", "config.yaml",
                                                "wandb-metadata.json"]
    assert wb.find_wandb_runs(tmp_path) == [tmp_path / "wandb" / "run-20250102_030405-abc123"]


def test_summary_json_of_100_mb_is_refused_unread(tmp_path: Path) -> None:
    folder = _synced(tmp_path)
    with (folder / "files" / "wandb-summary.json").open("r+b") as handle:
        handle.truncate(100 << 20)  # sparse: costs no disk
    with pytest.raises(BudgetExceededError, match=r"wandb-summary\.json of 100\.0 MiB"):
        wb.read_wandb_run(folder)


def test_deeply_nested_summary_json_cannot_crash_the_parser(tmp_path: Path) -> None:
    folder = _synced(tmp_path, '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(BudgetExceededError, match="nesting"):
        wb.read_wandb_run(folder)


def test_duplicate_summary_keys_cannot_show_two_values(tmp_path: Path) -> None:
    folder = _synced(tmp_path, '{"loss": 1.0, "loss": 0.1}')
    with pytest.raises(CorruptCheckpointError, match="twice"):
        wb.read_wandb_run(folder)


def test_config_yaml_python_tag_is_never_constructed(tmp_path: Path) -> None:
    folder = _synced(tmp_path)
    (folder / "files" / "config.yaml").write_text(
        "lr: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(CorruptCheckpointError, match=r"config\.yaml is not valid YAML"):
        wb.read_wandb_run(folder)
    assert not (Path.cwd() / "pwned").exists()


def test_config_yaml_alias_bomb_is_refused(tmp_path: Path) -> None:
    folder = _synced(tmp_path)
    (folder / "files" / "config.yaml").write_text(
        "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n")
    with pytest.raises(CorruptCheckpointError, match="aliases"):
        wb.read_wandb_run(folder)


def test_symlinked_run_folder_is_not_followed(tmp_path: Path) -> None:
    real = _synced(tmp_path / "elsewhere")
    exp = tmp_path / "exp"
    (exp / "wandb").mkdir(parents=True)
    linked = exp / "wandb" / "run-20250102_030405-zzz999"
    linked.symlink_to(real, target_is_directory=True)
    assert wb.find_wandb_runs(exp) == []
    with pytest.raises(CorruptCheckpointError, match="symlink"):
        wb.read_wandb_run(linked)


def test_symlinked_summary_file_outside_the_tree_is_not_read(tmp_path: Path) -> None:
    folder = _synced(tmp_path)
    secret = tmp_path / "secret.json"
    secret.write_text('{"stolen": 1}')
    summary = folder / "files" / "wandb-summary.json"
    summary.unlink()
    summary.symlink_to(secret)
    run = wb.read_wandb_run(folder)
    assert "stolen" not in run.summary and summary not in run.files_read


def test_fifo_summary_cannot_block(tmp_path: Path) -> None:
    folder = _synced(tmp_path)
    summary = folder / "files" / "wandb-summary.json"
    summary.unlink()
    os.mkfifo(summary)
    run = wb.read_wandb_run(folder)  # returns at once: the FIFO is never opened
    assert run.summary == {} and run.config["lr"] == 0.001


def test_folder_not_named_like_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CorruptCheckpointError, match="not a W&B run folder"):
        wb.read_wandb_run(tmp_path)
