"""Small helpers shared by tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from ckptctl.cli import cli
from ckptctl.sidecars import parse_sidecar
from ckptctl.yamlio import load_yaml_file

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> Result:
    """Invoke the CLI in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="ckptctl", catch_exceptions=False)


def run_process(*args: str, cwd: Path | None = None,
                command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ckptctl ...`` (or ``command``) as a real process (for imports, signals,
    exit codes)."""
    return subprocess.run([*(command or [sys.executable, "-m", "ckptctl"]), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def outputs_for(source: Path) -> tuple[Path, Path]:
    """(weights, sidecar) of ``source`` in the default layout: next to it."""
    from ckptctl.outputs import OutputLayout

    outputs = OutputLayout().outputs(source)
    return outputs.weights, outputs.sidecar


def sidecar_of(source: Path) -> dict[str, Any]:
    path = outputs_for(source)[1]
    parse_sidecar(path)  # must be schema-valid
    data = load_yaml_file(path)
    assert isinstance(data, dict)
    return data


def outputs_exist(source: Path) -> tuple[bool, bool]:
    weights, sidecar = outputs_for(source)
    return weights.exists(), sidecar.exists()


def leftover_temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".ckptctl-tmp" in p.name]


def converted_copy(tmp_path_factory: Any, tree: tuple[Path, dict[str, Any]], name: str) -> tuple[Path, dict[str, Any]]:
    """A private copy of a fixture tree, converted with ``convert --outputs-dir`` (exit 0)."""
    import shutil

    src, manifest = tree
    root = tmp_path_factory.mktemp(name) / "outputs"
    shutil.copytree(src, root)
    result = run_cli("convert", "--outputs-dir", root)
    assert result.exit_code == 0, result.output
    return root, manifest
