"""Shared fixtures: the example ``outputs/`` tree and the hostile-input folder.

Both are built with the real libraries by ``examples/build_example_tree.py``, once per test
session even under ``pytest -n 2`` (xdist): the first worker builds under a file lock into
the directory all workers share, the others reuse it. Those shared copies are read-only by
convention; tests that write anything must use ``fresh_tree`` / ``fresh_bad_inputs``.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))
sys.path.insert(0, str(REPO / "tests"))


def pytest_configure(config: pytest.Config) -> None:
    """Outside any test too (session and module fixtures, collection, every xdist worker and
    the processes they start), the catalog cache is a throwaway folder, never ~/.cache."""
    import atexit
    import tempfile

    scratch = tempfile.mkdtemp(prefix="ckptctl-test-cache-")
    atexit.register(shutil.rmtree, scratch, True)
    os.environ["CKPTCTL_CACHE_DIR"] = scratch


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and the processes it starts) uses its own catalog cache, never ~/.cache."""
    monkeypatch.setenv("CKPTCTL_CACHE_DIR", str(tmp_path / "cache"))
    # One checkpoint at a time in the process itself (fault injection and monkeypatches act
    # there); the tests of --jobs give it explicitly.
    monkeypatch.setenv("CKPTCTL_JOBS", "1")


def _builder() -> Any:
    """examples/build_example_tree.py, imported on first use: it imports torch and Lightning,
    which the fast unit tests never need."""
    return importlib.import_module("build_example_tree")

Built = tuple[Path, dict[str, Any]]


def reference_load(path: str | os.PathLike[str]) -> Any:
    """Reference reader for tests: full ``torch.load``.

    Unsafe on untrusted input, so only ever call it on the trusted example tree, never on
    ``bad_inputs`` files. The product code never does this.
    """
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _build_once(tmp_path_factory: pytest.TempPathFactory, name: str,
                build: Callable[[Path], dict[str, Any]]) -> Built:
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
            manifest_file.write_text(json.dumps(build(root), indent=1))
            done.touch()  # written last: its presence means root and manifest are complete
    return root, json.loads(manifest_file.read_text())


@pytest.fixture(scope="session")
def example_tree(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The clean example tree ``(root, manifest)``. Shared by all tests: do not write to it."""
    return _build_once(tmp_path_factory, "example_tree", lambda root: _builder().build_example_tree(root))


@pytest.fixture
def fresh_tree(example_tree: Built, tmp_path: Path) -> Built:
    """A private copy ``(root, manifest)`` of the example tree (mtimes kept) to write into.

    Manifest paths are relative, so they hold for the copy. Paths *stored inside* Lightning
    checkpoints (``dirpath``, ``best_k_models``...) still name the original tree, as they do
    for a run directory that was moved.
    """
    src, manifest = example_tree
    root = tmp_path / "outputs"
    shutil.copytree(src, root, symlinks=True)  # copy2 keeps mtimes; dirs get copystat too
    return root, manifest


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Hostile/broken files ``(root, manifest)``; shared, do not write to it.

    ``manifest["marker_paths"]`` are the absolute files the payloads would create if ever
    executed; a test must assert none of them exists. Never ``reference_load`` these files.
    """
    return _build_once(tmp_path_factory, "bad_inputs", lambda root: _builder().build_bad_inputs(root))


@pytest.fixture
def fresh_bad_inputs(bad_inputs: Built, tmp_path: Path) -> Built:
    """A private copy ``(root, manifest)`` of the bad inputs, for tests that write outputs.

    The payload commands were baked in at build time with absolute paths under the *original*
    folder, so the markers to check stay ``manifest["marker_paths"]`` (unchanged, pointing at
    the shared build), not paths inside the copy. ``manifest["markers"]`` holds their names if
    a test also wants to look inside the copy.
    """
    src, manifest = bad_inputs
    root = tmp_path / "bad"
    shutil.copytree(src, root)
    return root, manifest


@pytest.fixture(scope="session")
def reference_loader() -> Callable[[str | os.PathLike[str]], Any]:
    """``reference_load`` as a fixture, for test modules that should not import conftest."""
    return reference_load


# --- TensorFlow / Keras example tree (examples/build_tf_tree.py) ----------------------------


def _build_tf_tree(root: Path) -> dict[str, Any]:
    # Imported on first use only: TensorFlow must not load in workers that never need it.
    return importlib.import_module("build_tf_tree").build_tf_tree(root)


@pytest.fixture(scope="session")
def tf_tree(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The legacy TF/Keras checkpoint tree ``(root, manifest)``; shared, do not write to it.

    ``manifest["checkpoints"]`` is keyed by TF prefix (``.../model.ckpt``) or file path; see
    the module docstring of ``examples/build_tf_tree.py`` for every field.
    """
    return _build_once(tmp_path_factory, "tf_tree", _build_tf_tree)


def _build_hf_tree(root: Path) -> dict[str, Any]:
    """``examples/build_hf_tree.py`` in a subprocess: transformers, Lightning and wandb (and
    their global state: loggers, seeds, wandb's service process) stay out of the tests."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONHASHSEED"] = "0"
    builder = REPO / "examples" / "build_hf_tree.py"
    done = subprocess.run([sys.executable, str(builder), str(root)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{builder.name} failed ({done.returncode}):\n"
                           f"{done.stdout[-4000:]}\n{done.stderr[-8000:]}")
    manifest: dict[str, Any] = json.loads((root / "MANIFEST.json").read_text())
    return manifest


@pytest.fixture(scope="session")
def hf_tree(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The Hugging Face / TensorBoard / W&B example tree ``(root, manifest)`` (issue 13);
    shared, do not write to it. ``examples/build_hf_tree.py`` documents every manifest key."""
    return _build_once(tmp_path_factory, "hf_tree", _build_hf_tree)


@pytest.fixture
def fresh_tf_tree(tf_tree: Built, tmp_path: Path) -> Built:
    """A private copy ``(root, manifest)`` of the TF tree (mtimes kept) to write into.

    Manifest paths are relative, so they hold for the copy; the state files inside the tree
    store paths relative to their directory too, so the copy is self-consistent.
    """
    src, manifest = tf_tree
    root = tmp_path / "tf_outputs"
    shutil.copytree(src, root, symlinks=True)  # copy2 keeps mtimes; dirs get copystat too
    return root, manifest
