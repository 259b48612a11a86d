"""Session fixture ``hf_tree``: the Hugging Face / TensorBoard / W&B example tree (issue 13).

Built by ``examples/build_hf_tree.py`` in a subprocess (transformers, Lightning and wandb
stay out of the test process, and their global state — loggers, seeds, wandb's service
process, environment variables — cannot leak into other tests), once per session even under
``pytest -n 2``: as ``conftest._build_once`` does, the first xdist worker builds under a file
lock into the directory all workers share, the others reuse it. The shared tree is read-only
by convention: copy it (``shutil.copytree(root, tmp_path / "hf", symlinks=True)``) to write.

Use it with ``from hf_fixtures import hf_tree  # noqa: F401``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parent.parent
BUILDER = REPO / "examples" / "build_hf_tree.py"
BUILD_TIMEOUT = 900  # seconds; the build takes ~15-30 s on 2 cores

Built = tuple[Path, dict[str, Any]]


def _run_builder(root: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONHASHSEED"] = "0"
    done = subprocess.run([sys.executable, str(BUILDER), str(root)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{BUILDER.name} failed ({done.returncode}):\n"
                           f"{done.stdout[-4000:]}\n{done.stderr[-8000:]}")
    manifest: dict[str, Any] = json.loads((root / "MANIFEST.json").read_text())
    return manifest


def build_hf_tree_once(tmp_path_factory: pytest.TempPathFactory, name: str = "hf_tree") -> Built:
    """Build ``name`` once per session, shared by all xdist workers; return (root, manifest)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        # Not under xdist: basetemp's parent outlives the session, so stay inside basetemp.
        base = tmp_path_factory.getbasetemp()
    else:
        base = tmp_path_factory.getbasetemp().parent  # shared by the workers of this run
    root = base / name
    manifest_file = base / f"{name}.manifest.json"
    done = base / f"{name}.done"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            if root.exists():  # leftovers of a build that crashed half-way
                shutil.rmtree(root)
            manifest_file.write_text(json.dumps(_run_builder(root), indent=1))
            done.touch()  # written last: its presence means root and manifest are complete
    return root, json.loads(manifest_file.read_text())


@pytest.fixture(scope="session")
def hf_tree(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The HF/TensorBoard/W&B example tree ``(root, manifest)``; shared, do not write to it.

    See the docstring of ``examples/build_hf_tree.py`` for the tree and every manifest key.
    """
    return build_hf_tree_once(tmp_path_factory)
