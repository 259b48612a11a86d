"""``convert --jobs``, ``--shard`` and ``--format jsonl``: the same outputs as a serial run,
results in discovery order, a dead worker failing only its checkpoint, shards that split a
tree exactly once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, outputs_for, run_process

from ckptctl.errors import UsageError
from ckptctl.sharding import Shard, resolve_shard

#: what differs between two runs of the same conversion: timestamps, and so the weights
#: file's hash (the arrays themselves are compared)
VOLATILE = {"created_at", "sha256"}


def stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def tree_outputs(root: Path) -> dict[str, Any]:
    """Every sidecar (minus timestamps, paths made relative) and weights file's bytes."""
    found: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.name.endswith(".metadata.yaml"):
            text = path.read_text().replace(str(root), "<root>")
            found[rel] = stable(yaml.safe_load(text))
        elif path.name.endswith(".weights.h5"):
            from ckptctl import load_weights

            found[rel] = {name: array.tobytes() for name, array in load_weights(path).items()}
    return found


@pytest.fixture
def two_trees(example_tree: tuple[Path, dict], tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "a" / "outputs", tmp_path / "b" / "outputs"
    shutil.copytree(example_tree[0], first)
    shutil.copytree(example_tree[0], second)
    return first, second


def test_jobs_write_what_a_serial_run_writes_in_the_same_order(two_trees: tuple[Path, Path]) -> None:
    """Two workers leave the tree one process leaves, and report in discovery order."""
    serial, parallel = two_trees
    one = run_process("convert", "--outputs-dir", serial, "--jobs", "1")
    two = run_process("convert", "--outputs-dir", parallel, "--jobs", "2")
    assert one.returncode == two.returncode == 0, two.stderr
    assert tree_outputs(serial) == tree_outputs(parallel)
    assert one.stdout.replace(str(serial), "<root>") == two.stdout.replace(str(parallel), "<root>")


def test_jsonl_reports_each_checkpoint_then_a_summary(two_trees: tuple[Path, Path]) -> None:
    root = two_trees[0]
    (root / "misc" / "broken.ckpt").write_bytes(b"PK\x03\x04 not really")
    done = run_process("convert", "--outputs-dir", root, "--format", "jsonl", "--jobs", "2")
    assert done.returncode == 1
    records = [json.loads(line) for line in done.stdout.splitlines()]
    items, summary = records[:-1], records[-1]["summary"]
    assert summary["found"] == len(items) and summary["failed"] == 1
    assert summary["converted"] == len(items) - 1
    broken = [i for i in items if i["source"].endswith("broken.ckpt")]
    assert broken[0]["status"] == "failed" and broken[0]["kind"] == "corrupt"
    for item in items:
        assert set(item) >= {"source", "status", "kind", "seconds", "bytes", "weights", "sidecar"}
        if item["status"] == "converted":
            assert Path(item["sidecar"]).exists() and item["bytes"] > 0


def test_a_killed_worker_fails_only_its_checkpoint(tmp_path: Path) -> None:
    """Stops: one worker dying (the OOM killer, a crash) failing the whole batch (the
    standard pool's BrokenProcessPool) or leaving partial outputs."""
    import torch

    root = tmp_path / "outputs"
    (root / "exp").mkdir(parents=True)
    for i in range(2):  # big enough that a worker is still busy when it is killed
        torch.save({"w": torch.randn(40_000_000)}, root / "exp" / f"big{i}.pt")
    for i in range(6):
        torch.save({"w": torch.ones(3) * i}, root / "exp" / f"small{i}.pt")
    process = subprocess.Popen([sys.executable, "-m", "ckptctl", "convert", "--outputs-dir",
                                str(root), "--jobs", "2", "--format", "jsonl"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, victim_source = None, None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        # a worker writing big0/big1 names itself: .<stem>.ckptctl-tmp-<pid>-<rand>.weights.h5
        for temporary in (root / "exp").glob(".big*.ckptctl-tmp-*"):
            victim = int(temporary.name.split("ckptctl-tmp-")[1].split("-")[0])
            victim_source = root / "exp" / (temporary.name[1:].split(".ckptctl-tmp-")[0] + ".pt")
            break
        time.sleep(0.01)
    assert victim is not None and victim != process.pid, "no worker was seen writing"
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    items = [json.loads(line) for line in stdout.splitlines()][:-1]
    crashed = [i for i in items if i["status"] == "failed"]
    assert len(crashed) == 1 and crashed[0]["kind"] == "crashed", items
    assert crashed[0]["source"] == str(victim_source)
    assert "SIGKILL" in crashed[0]["reason"]
    assert sum(i["status"] == "converted" for i in items) == 7
    weights, sidecar = outputs_for(Path(crashed[0]["source"]))
    assert not weights.exists() and not sidecar.exists()
    again = run_process("convert", "--outputs-dir", root, "--jobs", "2")
    assert again.returncode == 0 and "converted" in again.stdout, again.stderr


def test_shards_split_the_tree_exactly_once(two_trees: tuple[Path, Path]) -> None:
    serial, sharded = two_trees
    assert run_process("convert", "--outputs-dir", serial, "--jobs", "1").returncode == 0
    counts = []
    for index in range(3):
        done = run_process("convert", "--outputs-dir", sharded, "--shard", f"{index}/3",
                           "--format", "jsonl", "--jobs", "1")
        assert done.returncode == 0, done.stderr
        assert f"shard {index}/3 (from --shard)" in done.stderr
        counts.append(json.loads(done.stdout.splitlines()[-1])["summary"]["converted"])
    assert sum(counts) == len([p for p in serial.rglob("*.metadata.yaml")])
    assert all(counts), counts  # 15 checkpoints: every shard gets some
    assert tree_outputs(serial) == tree_outputs(sharded)


def test_slurm_array_variables_choose_the_shard(two_trees: tuple[Path, Path]) -> None:
    root = two_trees[0]
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4",
           "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_MAX": "7"}
    done = subprocess.run([sys.executable, "-m", "ckptctl", "convert", "--outputs-dir", str(root),
                           "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True,
                          check=False)
    assert "shard 1/4 (from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT)" in done.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"},
     "Error: SLURM_ARRAY_TASK_ID: 'x' is not a whole number"),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4"},
     "Error: shard 7/4 (from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT): need 0 <= K < N"),
])
def test_bad_scheduler_variables_are_named_not_blamed_on_shard(
        two_trees: tuple[Path, Path], env: dict[str, str], message: str) -> None:
    """A usage error from the environment names the variable; no --shard was given."""
    done = subprocess.run([sys.executable, "-m", "ckptctl", "convert", "--outputs-dir",
                           str(two_trees[0]), "--dry-run"], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == message
    assert "--shard'" not in done.stderr


def test_shard_resolution() -> None:
    assert resolve_shard(None, {}) is None
    assert resolve_shard("2/8", {}) == Shard(2, 8, "--shard")
    assert resolve_shard("8", {"JOB_COMPLETION_INDEX": "3"}) == Shard(3, 8, "JOB_COMPLETION_INDEX")
    slurm = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "32"}
    assert resolve_shard(None, slurm) == Shard(0, 32, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
    for bad, env in (("8/8", {}), ("x/2", {}), ("4", {}), ("3", slurm),
                     (None, {**slurm, "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "62"})):
        with pytest.raises(UsageError):
            resolve_shard(bad, env)


def test_shard_membership_is_stable_and_balanced() -> None:
    keys = [f"exp{i // 20}/checkpoints/epoch={i % 20}.metadata.yaml" for i in range(2000)]
    shards = [Shard(k, 8, "--shard") for k in range(8)]
    owners = [[s.index for s in shards if s.holds(key)] for key in keys]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(o == [k] for o in owners) for k in range(8)]
    assert min(sizes) > 180 and max(sizes) < 320, sizes
    # pinned values: the split must not change between versions or machines (a re-run after
    # an upgrade would otherwise give checkpoints to other tasks)
    pinned = {"exp0/a.metadata.yaml": 9, "exp1/checkpoints/epoch=3.metadata.yaml": 25,
              "run/x.metadata.yaml": 26, "b/model.ckpt.metadata.yaml": 31}
    for key, index in pinned.items():
        assert [k for k in range(32) if Shard(k, 32, "--shard").holds(key)] == [index]


def test_clashing_sources_land_in_one_shard(tmp_path: Path) -> None:
    """Stops: a.ckpt and a.pt (same outputs) converted by two machines, each overwriting the
    other's sidecar: they share a shard, where the clash is reported."""
    import torch

    root = tmp_path / "outputs" / "exp"
    root.mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, root / "a.ckpt")
    torch.save({"w": torch.zeros(2)}, root / "a.pt")
    failures = []
    for index in range(4):
        done = run_process("convert", "--outputs-dir", root.parent, "--shard", f"{index}/4",
                           "--jobs", "1")
        failures += [line for line in done.stderr.splitlines() if "clash" in line]
    assert len(failures) == 2, failures


def test_jobs_default_to_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from ckptctl.cli.options import resolve_jobs
    from ckptctl.workers import usable_cpus

    assert resolve_jobs(None) == usable_cpus() == len(os.sched_getaffinity(0))
    assert resolve_jobs(3) == 3
    monkeypatch.delenv("CKPTCTL_JOBS")
    help_text = run_process("convert", "--help").stdout
    assert "CKPTCTL_JOBS" in help_text and "usable CPUs" in help_text


def test_deep_validation_in_workers_finds_what_one_process_finds(two_trees: tuple[Path, Path]) -> None:
    root = two_trees[0]
    assert run_process("convert", "--outputs-dir", root, "--jobs", "1").returncode == 0
    weights = sorted(root.rglob("*.weights.h5"))[3]
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # same size, other bytes: only --deep sees it
    weights.write_bytes(bytes(data))
    one = run_process("validate", "--deep", "--format", "json", "--jobs", "1", root)
    two = run_process("validate", "--deep", "--format", "json", "--jobs", "2", root)
    assert one.returncode == two.returncode == 1
    assert json.loads(one.stdout) == json.loads(two.stdout)
    assert weights.name in one.stdout


def test_sbatch_script_quotes_paths_and_refuses_injection(tmp_path: Path) -> None:
    """Stops: a folder or option value adding #SBATCH lines or shell commands to the job
    script (``--partition "debug\\n#SBATCH --uid=0"``, an outputs folder named ``$(reboot)``)."""
    from ckptctl.slurm import SlurmArray, sbatch_script, submit

    script = sbatch_script(SlurmArray(4, 2), ["--outputs-dir", "/data/$(reboot) x"], tmp_path)
    assert "'/data/$(reboot) x'" in script
    assert script.count("#SBATCH") == 5  # job name, array, cpus, output, error
    for bad in (SlurmArray(2, partition="debug\n#SBATCH --uid=0"), SlurmArray(2, time="1:00 x")):
        with pytest.raises(UsageError):
            submit(bad, ["--outputs-dir", "/data"], tmp_path, wait=False)


def test_an_array_task_naming_its_own_experiment_converts_all_of_it(
        two_trees: tuple[Path, Path]) -> None:
    """Stops: a "one task per experiment" Slurm array (``--exp-dir exp$TASK``) silently
    converting a quarter of each experiment because the array variables were read as a
    shard. Found: hostile review of the parallel code (issue 11)."""
    root = two_trees[0]
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
    done = subprocess.run([sys.executable, "-m", "ckptctl", "convert", "--exp-dir",
                           str(root / "mlp_minloss"), "--format", "jsonl"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "shard" not in done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])["summary"]
    assert summary["converted"] == len(list((root / "mlp_minloss").rglob("*.ckpt")))


def test_modules_in_the_current_folder_never_run_in_workers(two_trees: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    """Stops: a numpy.py or multiprocessing.py in the current folder running when worker
    processes start (python -c puts the folder first on sys.path). Found: hostile review of
    the parallel code (issue 11)."""
    root = two_trees[0]
    here = tmp_path / "here"
    here.mkdir()
    for name in ("numpy", "multiprocessing", "h5py"):
        marker = here / f"PWNED_{name}"
        (here / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (["convert", "--outputs-dir", str(root), "--jobs", "2"],
                 ["validate", "--deep", "--jobs", "2", str(root)]):
        done = subprocess.run([sys.executable, "-m", "ckptctl", *args], cwd=here, env=env,
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in here.glob("PWNED_*")) == []


def test_sigterm_stops_workers_and_leaves_nothing_busy(tmp_path: Path) -> None:
    """Stops: SIGTERM (a scheduler's kill) leaving orphan workers that keep converting and
    make the next run skip their checkpoints as busy. Found: hostile review of the parallel
    code (issue 11)."""
    import torch

    root = tmp_path / "outputs"
    (root / "exp").mkdir(parents=True)
    for i in range(4):
        torch.save({"w": torch.randn(20_000_000)}, root / "exp" / f"big{i}.pt")
    process = subprocess.Popen([sys.executable, "-m", "ckptctl", "convert", "--outputs-dir",
                                str(root), "--jobs", "2"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((root / "exp").glob(".big*.ckptctl-tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    time.sleep(0.5)
    assert list((root / "exp").glob(".big*.ckptctl-tmp-*")) == []  # the workers unwound
    again = run_process("convert", "--outputs-dir", root, "--jobs", "2", "-v")
    assert again.returncode == 0 and "busy" not in again.stdout + again.stderr, again.stderr
