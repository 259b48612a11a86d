"""The fuzzers, seeded with the hostile classes of issue 10.

Each seed is a file of one attack class (built by the test module that proves the class);
a seeded mutation loop in a memory-capped child runs everything ``convert`` would read over
every seed and its mutations. Mutated attacks must still end in ckptctl's own errors (or a
conversion) within bounded time and memory: a mutation must not turn a refused class into a
crash, a hang or an allocation bomb.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import outputs_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent


def seed_builders() -> dict[str, tuple[Callable[[Path], Path], str]]:
    """name -> (builder(tmp_path) -> file, the format convert would read it as)."""
    from test_torch_load_parity import SEED_BUILDERS

    return {name: (build, "torch-legacy" if name in ("frame-past-stop", "tar-polyglot")
                   else "torch-zip") for name, build in SEED_BUILDERS.items()}


def test_hostile_seeds_and_their_mutations_fail_cleanly(tmp_path: Path) -> None:
    """Stops: a mutated attack file (each class of issue 10 as a seed) escaping as a
    non-CkptError, taking > 5 s or > 1.5 GB. Found: hostile review (issue 10)."""
    from test_fuzz_readers import CHILD  # the memory-capped seeded mutation loop

    cases = []
    for name, (build, fmt) in seed_builders().items():
        folder = tmp_path / name
        folder.mkdir()
        cases.append((str(build(folder)), fmt))
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases), str(work), str(HERE)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]  # a non-CkptError ends the child
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["worst_seconds"] < 5, report  # CPU seconds of the worst case
    assert report["worst_wall_seconds"] < 60, report
    assert report["peak_rss_kib"] < 1_500_000, report


# --- names and special files -------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def good_torch_file() -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"w": torch.arange(3.0)}, buffer)
    return buffer.getvalue()


NAME_ALPHABET = st.sampled_from(list("abc=[]{},/\\*\x1b\r\n\t\x07\x7f\u202e \u00e9[/]:"))


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stem=st.text(NAME_ALPHABET, min_size=1, max_size=24))
def test_hostile_names_and_special_files_fail_cleanly(tmp_path_factory: pytest.TempPathFactory,
                                                      stem: str) -> None:
    """Stops: a file name with control characters, rich markup or a bidi override forging
    output lines, crashing the printer, or a FIFO named like a checkpoint blocking the batch
    (hypothesis over names; a FIFO and a sparse file beside every good file). Found: hostile
    review (issue 10)."""
    import os

    from helpers import run_cli

    stem = stem.replace("/", "_").strip() or "x"
    if stem in (".", ".."):
        stem = "dots"
    root = tmp_path_factory.mktemp("names") / "outputs"
    folder = root / "exp"
    folder.mkdir(parents=True)
    good = folder / f"{stem}.pt"
    good.write_bytes(good_torch_file())
    os.mkfifo(folder / f"{stem}-fifo.ckpt")
    with (folder / f"{stem}-sparse.pt").open("wb") as sparse:
        sparse.truncate(1 << 30)  # a 1 GiB hole: not a checkpoint, never read in full
    for args in (["scan", root], ["convert", "--outputs-dir", root], ["validate", root]):
        result = run_cli(*args)
        output = result.stdout + result.stderr
        assert result.exit_code in (0, 1), (args, output)
        assert "Traceback" not in output and "internal error" not in output, output
        for line in output.splitlines():  # names are escaped: no raw control characters
            assert line.isprintable(), repr(line)
    assert all(p.exists() for p in outputs_for(good))

