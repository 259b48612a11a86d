"""``convert --submit slurm`` on a real Slurm: a job array converts a mixed tree, each
checkpoint exactly once, by exactly one task, and leaves what a serial run leaves."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import REPO
from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def ckptctl(cluster: SlurmCluster, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ckptctl", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_job_array_converts_each_checkpoint_once(slurm_cluster: SlurmCluster,  # noqa: F811
                                                 example_tree: tuple[Path, dict],
                                                 tmp_path: Path) -> None:
    import torch

    root = tmp_path / "outputs"
    shutil.copytree(example_tree[0], root)
    (root / "extra").mkdir()
    torch.save({"w": torch.ones(4)}, root / "extra" / "legacy.pt",
               _use_new_zipfile_serialization=False)
    torch.save({"state_dict": {"w": torch.zeros(2, 2)}, "epoch": 3}, root / "extra" / "lit.ckpt")
    expected = json.loads(ckptctl(slurm_cluster, "scan", "--format", "json", root,
                                  cwd=tmp_path).stdout)
    sources = {row["path"] for row in expected if row["status"] != "unreadable"}
    assert len(sources) >= 15

    done = ckptctl(slurm_cluster, "convert", "--outputs-dir", root, "--submit", "slurm",
                   "--array", "4", "--wait", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "done:" in done.stderr and f"{len(sources)} converted" in done.stderr

    logs = sorted((tmp_path / "ckptctl-slurm").glob("*/*.jsonl"))
    assert len(logs) == 4, logs  # one per task
    by_source: Counter[str] = Counter()
    tasks_with_work = 0
    for log in logs:
        records = [json.loads(line) for line in log.read_text().splitlines()]
        items = [r for r in records if "source" in r]
        assert records[-1]["summary"]["failed"] == 0
        tasks_with_work += bool(items)
        by_source.update(r["source"] for r in items if r["status"] == "converted")
    assert set(by_source) == sources  # every checkpoint ...
    assert set(by_source.values()) == {1}  # ... by exactly one task
    assert tasks_with_work >= 2  # the array really split the work

    validate = ckptctl(slurm_cluster, "validate", "--deep", "--strict", root, cwd=tmp_path)
    assert validate.returncode == 0, validate.stdout + validate.stderr


def test_the_example_sbatch_script_runs_as_documented(slurm_cluster: SlurmCluster,  # noqa: F811
                                                      example_tree: tuple[Path, dict],
                                                      tmp_path: Path) -> None:
    """The README's recipe, by hand: ``sbatch --array=0-1 examples/ckptctl-convert.sbatch``."""
    import os

    root = tmp_path / "outputs"
    shutil.copytree(example_tree[0], root)
    env = {**slurm_cluster.env, "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{slurm_cluster.env['PATH']}"}
    done = subprocess.run(["sbatch", "--wait", "--array=0-1", "--cpus-per-task=1", "--time=10",
                           str(REPO / "examples" / "ckptctl-convert.sbatch"), str(root)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    logs = sorted(tmp_path.glob("ckptctl-convert-*.jsonl"))
    assert len(logs) == 2
    summaries = [json.loads(log.read_text().splitlines()[-1])["summary"] for log in logs]
    assert sum(s["converted"] for s in summaries) == len(list(root.rglob("*.metadata.yaml")))
    assert all(s["failed"] == 0 for s in summaries)
