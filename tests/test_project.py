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
