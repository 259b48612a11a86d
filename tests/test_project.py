"""Project-level promises: light imports, committed schema and docs up to date."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from ckptctl.schema import json_schema_text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from cli_docs import splice  # noqa: E402 - the docs tool lives outside the package

HEAVY = ("torch", "tensorflow", "keras", "lightning", "tf_keras")

PROBE = """
import sys
from ckptctl.cli import main
try:
    main({args!r})
except SystemExit:
    pass
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


def heavy_modules_after(*args: str) -> list[str]:
    code = PROBE.format(args=[str(a) for a in args], heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = [x for x in out.stderr.splitlines() if x.startswith("HEAVY=")][-1]
    return [m for m in line.removeprefix("HEAVY=").split(",") if m]


@pytest.fixture(scope="module")
def small_converted_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("light") / "outputs"
    (root / "exp").mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 1, "val_loss": 0.5}, root / "exp/a.ckpt")
    torch.save({"model": {"w": torch.ones(2)}}, root / "exp/b.pt")
    assert run_cli("convert", "--checkpoint", root / "exp/a.ckpt").exit_code == 0
    return root


@pytest.mark.parametrize("args", [
    ["--help"], ["scan", "{root}"], ["validate", "--strict", "--deep", "{root}"],
    ["catalog", "{root}", "--best", "val_loss"], ["catalog", "{root}", "--format", "json"],
    ["convert", "--outputs-dir", "{root}", "--force"],
])
def test_commands_do_not_import_ml_frameworks(small_converted_tree: Path, args: list[str]) -> None:
    resolved = [a.format(root=small_converted_tree) for a in args]
    assert heavy_modules_after(*resolved) == []


#: What ``scan`` of checkpoints without sidecars does not need either (README: "Light by
#: default"): each costs 10-80 ms of start-up, and scan's whole process is ~100 ms.
NOT_FOR_SCAN = ("numpy", "ml_dtypes", "pydantic", "yaml", "h5py", "rich")


def modules_after(args: list[str], names: tuple[str, ...]) -> list[str]:
    code = PROBE.format(args=args, heavy=names)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = [x for x in out.stderr.splitlines() if x.startswith("HEAVY=")][-1]
    return [m for m in line.removeprefix("HEAVY=").split(",") if m]


def test_scan_of_torch_checkpoints_needs_no_numpy_pydantic_or_yaml(tmp_path: Path) -> None:
    """A Lightning-shaped zip checkpoint (hyper-parameters, callback state with tensor
    scores) and a legacy (pre-1.6) one: their structure and metadata are read without
    numpy; pydantic and PyYAML are not needed when no sidecar exists."""
    (tmp_path / "exp").mkdir()
    state = {"state_dict": {"w": torch.ones(3, 2), "b": torch.zeros(2, dtype=torch.bfloat16)},
             "epoch": 3, "global_step": 30, "hyper_parameters": {"lr": 0.1, "layers": [2, 3]},
             "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {
                 "best_model_score": torch.tensor(0.25), "monitor": "val_loss"}}}
    torch.save(state, tmp_path / "exp/zip.ckpt")
    torch.save(state, tmp_path / "exp/legacy.pt", _use_new_zipfile_serialization=False)
    args = ["scan", "--format", "json", str(tmp_path)]
    assert modules_after(args, NOT_FOR_SCAN) == []
    rows = json.loads(run_cli(*args).output)
    assert sorted((Path(r["path"]).name, r["format"], r["status"]) for r in rows) == [
        ("legacy.pt", "torch-legacy", "not converted"), ("zip.ckpt", "torch-zip", "not converted")]


def test_committed_json_schema_is_current() -> None:
    committed = (REPO / "schemas" / "sidecar-1.0.schema.json").read_text()
    assert committed == json_schema_text(), "run `make schema` to regenerate schemas/"
    assert json.loads(committed)["properties"]["schema_version"]["const"] == "1.0"


def test_readme_cli_reference_matches_help() -> None:
    readme = (REPO / "README.md").read_text()
    assert splice(readme) == readme, "run `make docs` to regenerate the README's CLI reference"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in ci and "make test" in readme.split("\n## ")[0]


def test_python_m_ckptctl_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "ckptctl", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ckptctl, version ")
