"""Issue 12's small things: plural counts, paths in narrow tables, the torch-less
load_state_dict, quiet TensorFlow start-up, shell completion, and tests never touching the
user's catalog cache."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_cli, run_process

from ckptctl.cli.console import fit_paths, plural

SCRIPT = Path(sys.executable).with_name("ckptctl")


def test_plural() -> None:
    assert [plural(n, "row") for n in (0, 1, 2)] == ["0 rows", "1 row", "2 rows"]


def test_counts_are_pluralised_in_scan_validate_and_catalog(tmp_path: Path) -> None:
    (tmp_path / "exp").mkdir()
    source = tmp_path / "exp/a.pt"
    torch.save({"model": {"w": torch.ones(2)}, "val_loss": 0.5}, source)
    assert run_cli("scan", tmp_path).stderr == "1 checkpoint: 1 not converted\n"
    assert run_cli("convert", "--checkpoint", source).exit_code == 0
    assert run_cli("validate", "--strict", tmp_path).stderr == \
        "ok: 1 sidecar, 1 checkpoint checked, no problems\n"
    assert run_cli("catalog", tmp_path, "--best", "val_loss").stderr == \
        "1 row (best by val_loss, min)\n"
    source.write_bytes(source.read_bytes() + b"x")  # one problem: stale source
    assert run_cli("validate", tmp_path).stderr == "failed: 1 problem in 1 sidecar\n"
    assert run_cli("validate", "--strict", tmp_path).stderr == \
        "failed: 2 problems in 1 sidecar, 1 checkpoint\n"


def test_narrow_tables_show_paths_relative_to_the_root() -> None:
    root = Path("runs/2024-05-01/very_long_experiment_name_for_a_sweep")
    rows = [[str(root / "checkpoints/epoch=12-step=4800-val_loss=0.1234.ckpt"), "torch-zip"]]
    columns, shown = fit_paths(["PATH", "FORMAT"], rows, root, width=60)
    assert columns == [f"PATH (in {root}/)", "FORMAT"]
    assert shown == [["checkpoints/epoch=12-step=4800-val_loss=0.1234.ckpt", "torch-zip"]]
    # a table that fits is left alone
    assert fit_paths(["PATH", "FORMAT"], rows, root, width=200) == (["PATH", "FORMAT"], rows)


def test_load_state_dict_without_torch_says_what_to_install(tmp_path: Path) -> None:
    code = ("import sys\nsys.modules['torch'] = None\nimport ckptctl\n"
            "try:\n    ckptctl.load_state_dict(sys.argv[1])\n"
            "except ImportError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.weights.h5")],
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout == ("ckptctl.load_state_dict needs torch: pip install 'ckptctl[torch]' "
                           "(ckptctl.load_weights returns numpy arrays without it)\n")


@pytest.mark.slow
def test_keras_model_import_does_not_print_tensorflow_startup_noise(tmp_path: Path) -> None:
    (tmp_path / "mymodels.py").write_text(
        "import keras\nimport tensorflow as tf\n\n"
        "def build():\n    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])\n\n"
        "build()\ntf.constant(1.0) + 1  # the first op: TensorFlow's CUDA probe logs here\n")
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "ckptctl", "convert", "--keras-model",
                           "mymodels:build", "--checkpoint", "x.pt"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert (done.returncode, done.stdout) == (0, "converted      x.pt\n")
    assert done.stderr == "found 1, converted 1, skipped 0, failed 0\n"


@pytest.mark.parametrize("shell, marker", [
    ("bash", "_ckptctl_completion()"), ("zsh", "#compdef ckptctl"),
    ("fish", "function _ckptctl_completion"),
])
def test_shell_completion_script(shell: str, marker: str) -> None:
    env = dict(os.environ, _CKPTCTL_COMPLETE=f"{shell}_source")
    done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0 and marker in done.stdout, done.stderr


def test_shell_completion_completes_commands_and_options() -> None:
    env = dict(os.environ, _CKPTCTL_COMPLETE="bash_complete", COMP_WORDS="ckptctl ca",
               COMP_CWORD="1")
    done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["plain,catalog"]
    env.update(COMP_WORDS="ckptctl catalog --be", COMP_CWORD="2")
    done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["plain,--best"]


def _real_cache() -> Path:
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)  # not $HOME: a test may have changed it
    return home / ".cache" / "ckptctl"


def _listing(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir())


def test_tests_never_write_the_users_catalog_cache(tmp_path: Path) -> None:
    """Guard for `make test`: in-process runs and subprocesses use the test's cache."""
    from ckptctl.ops.catalog import default_cache_dir

    assert default_cache_dir() == tmp_path / "cache"
    assert not str(default_cache_dir()).startswith(str(_real_cache()))
    before = _listing(_real_cache())
    (tmp_path / "exp").mkdir()
    torch.save({"model": {"w": torch.ones(2)}, "val_loss": 0.5}, tmp_path / "exp/a.pt")
    assert run_cli("convert", "--outputs-dir", tmp_path).exit_code == 0
    assert run_cli("catalog", tmp_path).exit_code == 0  # in-process
    in_process = _listing(tmp_path / "cache")
    assert len(in_process) == 1
    assert run_process("catalog", tmp_path / "exp").returncode == 0  # another root: another file
    assert len(_listing(tmp_path / "cache")) == 2
    assert _listing(_real_cache()) == before


def test_the_session_outside_tests_has_a_private_cache_too() -> None:
    """Session and module fixtures run outside ``private_cache``: conftest's
    ``pytest_configure`` gave the whole process a throwaway cache."""
    session = os.environ["CKPTCTL_CACHE_DIR"]
    assert Path(session).name == "cache"  # private_cache, inside this test
    code = "import os; print(os.environ['CKPTCTL_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == session
