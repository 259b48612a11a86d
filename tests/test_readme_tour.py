"""The README tells the truth: its tour is the output of a real demo run (``make tour``) and
its install line names every core dependency."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import readme_tour  # noqa: E402 - the tool lives outside the package

#: sizes are rounded to 0.1 KB and Lightning stores the absolute run folder in its
#: checkpoints, so a size may differ by the length of the machine's temp path: compared
#: masked. Counts, names, metric values and every line of text are compared as they are.
_SIZE = re.compile(r"\b\d+(?:\.\d)? (?:B|KB|MB|GB)\b")


def _masked(text: str) -> str:
    return _SIZE.sub("<size>", text)


@pytest.mark.slow
def test_committed_tour_is_a_real_demo_run(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    blocks = readme_tour.generate(tmp_path)
    regenerated = readme_tour.splice(readme, blocks)
    assert _masked(regenerated) == _masked(readme), "run `make tour` to regenerate the README's tour"


def test_splice_replaces_only_between_markers() -> None:
    start, end = readme_tour.start_marker("demo"), readme_tour.end_marker("demo")
    text = f"intro\n{start}\n```console\n$ ckptctl scan old\nstale\n```\n{end}\noutro\n"
    new = readme_tour.splice(text, {"demo": "```console\n$ ckptctl scan new\n```"})
    assert new == f"intro\n{start}\n```console\n$ ckptctl scan new\n```\n{end}\noutro\n"
    with pytest.raises(SystemExit):
        readme_tour.splice("no markers", {"demo": "x"})


def test_readme_has_every_tour_block_and_builders_exist() -> None:
    readme = (REPO / "README.md").read_text()
    for name in readme_tour.TOURS:
        assert readme.count(readme_tour.start_marker(name)) == 1, name
        assert readme.count(readme_tour.end_marker(name)) == 1, name
    for script in readme_tour.BUILDERS:
        assert (REPO / "examples" / script).is_file(), script


def test_normalise_hides_timestamps_durations_and_the_workdir(tmp_path: Path) -> None:
    text = f"{tmp_path}/demo-outputs/a.ckpt converted in 1.25s at 2026-01-02T03:04:05+00:00  \n"
    assert readme_tour.normalise(text, tmp_path) == \
        "demo-outputs/a.ckpt converted in <seconds> at <time>"


def test_long_listings_keep_head_tail_and_summary() -> None:
    step = readme_tour.Step(("convert",), keep=1)
    out = "\n".join([f"converted {i}" for i in range(5)] + ["found 5"])
    assert readme_tour._shown(step, out) == "converted 0\n...\nconverted 4\nfound 5"


def test_install_line_lists_every_core_dependency() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    block = pyproject.split("\ndependencies = [", 1)[1].split("]", 1)[0]
    names = [re.split(r"[<>=!~\[ ;]", dep)[0] for dep in re.findall(r'"([^"]+)"', block)]
    assert "google-crc32c" in names and "filelock" in names
    readme = (REPO / "README.md").read_text()
    install = readme.split("## Install", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    listed = install.split("pip install '.[torch]'")[0]
    listed_names = {n.strip().lower() for n in re.split(r"[,\s#:]+", listed.split("API", 1)[1]) if n}
    missing = [n for n in names if n.lower() not in listed_names]
    assert not missing, f"README install line does not name {missing}"
