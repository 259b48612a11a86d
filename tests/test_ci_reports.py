"""CI integration: `validate --format junit|sarif|github`, GitHub annotations under Actions,
"nothing checked", what --strict says about checkpoints convert refuses, the pre-commit hook,
the composite GitHub Action, and Ctrl-C during a real conversion."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import REPO, leftover_temporaries, outputs_for, run_cli, run_process

from ckptctl import __version__
from ckptctl.ops.validate import Problem, ValidateReport
from ckptctl.reports import (
    escape_data,
    escape_property,
    github_annotations,
    junit_report,
    sarif_report,
)


def save_checkpoint(path: Path, value: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.full((3,), value)}, "epoch": 1}, path)
    return path


class _RunsCode:
    """Pickles as ``os.system(command)``: refused by ckptctl, never run."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


@pytest.fixture
def mixed_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cwd = tmp_path (no git repository); ``exp/`` holds a converted checkpoint, a stale one
    and one never converted. Returns tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    good = save_checkpoint(tmp_path / "exp" / "good.ckpt")
    stale = save_checkpoint(tmp_path / "exp" / "stale.ckpt")
    for source in (good, stale):
        assert run_cli("convert", "--checkpoint", source).exit_code == 0
    torch.save({"state_dict": {"w": torch.ones(300)}}, stale)  # a new size: stale even without --strict
    save_checkpoint(tmp_path / "exp" / "new.pt")
    return tmp_path


STALE_PROBLEM = "checkpoint stale.ckpt size differs from the sidecar (stale: run ckptctl convert)"


# --- github ---------------------------------------------------------------------------------


def test_github_format_is_one_error_per_problem_then_the_summary(mixed_tree: Path) -> None:
    result = run_cli("validate", "--strict", "--format", "github", "exp")
    assert result.exit_code == 1
    assert result.stdout == (
        f"::error file=exp/stale.metadata.yaml,title=ckptctl::{STALE_PROBLEM}\n"
        "::error file=exp/new.pt,title=ckptctl::no sidecar (run ckptctl convert)\n"
        "failed: 2 problems in 2 sidecars, 3 checkpoints\n")
    assert result.stderr == ""  # the summary is the report's last line, not repeated


def test_github_paths_are_relative_to_the_git_toplevel(mixed_tree: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["git", "init", "-q", str(mixed_tree)], check=True)
    monkeypatch.chdir(mixed_tree / "exp")
    result = run_cli("validate", "--format", "github", ".")
    assert result.stdout.splitlines()[0] == (
        f"::error file=exp/stale.metadata.yaml,title=ckptctl::{STALE_PROBLEM}")


def test_github_escaping_follows_the_workflow_command_rules(tmp_path: Path) -> None:
    # GitHub's toolkit: data escapes % CR LF; properties also : and ,
    assert escape_data("100% bad\r\nnext: a, b") == "100%25 bad%0D%0Anext: a, b"
    assert escape_property("a,b:c%d\n") == "a%2Cb%3Ac%25d%0A"
    report = ValidateReport(problems=[Problem("run,1/x:y%.ckpt", "line one\nline two: 5%",
                                              "corrupt")])
    assert github_annotations(report, tmp_path, tmp_path) == [
        "::error file=run%2C1/x%3Ay%25.ckpt,title=ckptctl::line one%0Aline two: 5%25"]
    outside = ValidateReport(problems=[Problem("/elsewhere/a.ckpt", "gone", "missing")])
    assert github_annotations(outside, tmp_path, tmp_path) == [
        "::error file=/elsewhere/a.ckpt,title=ckptctl::gone"]


def test_under_github_actions_the_table_is_followed_by_annotations(
        mixed_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    result = run_cli("validate", "exp")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["PATH", "PROBLEM"]
    assert lines[-1] == f"::error file=exp/stale.metadata.yaml,title=ckptctl::{STALE_PROBLEM}"
    assert result.stderr == "failed: 1 problem in 2 sidecars\n"
    # an explicit --format is exactly that format, annotations or not
    explicit = run_cli("validate", "exp", "--format", "table")
    assert "::error" not in explicit.stdout
    as_json = run_cli("validate", "exp", "--format", "json")
    assert json.loads(as_json.stdout)["problems"][0]["kind"] == "stale"
    monkeypatch.setenv("GITHUB_ACTIONS", "false")
    assert "::error" not in run_cli("validate", "exp").stdout


# --- junit ----------------------------------------------------------------------------------


def test_junit_has_one_testcase_per_checked_file_and_failures_with_kinds(mixed_tree: Path) -> None:
    result = run_cli("validate", "--strict", "--format", "junit", "exp")
    assert result.exit_code == 1
    assert result.stdout.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    suites = ET.fromstring(result.stdout)
    assert suites.tag == "testsuites"
    [suite] = list(suites)
    assert suite.tag == "testsuite"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("5", "2", "0")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert sorted(cases) == sorted(["exp/good.metadata.yaml", "exp/stale.metadata.yaml",
                                    "exp/good.ckpt", "exp/stale.ckpt", "exp/new.pt"])
    assert {case.get("classname") for case in cases.values()} == {"exp"}
    assert cases["exp/good.ckpt"].find("failure") is None
    stale = cases["exp/stale.metadata.yaml"].find("failure")
    assert stale is not None
    assert (stale.get("type"), stale.get("message")) == ("stale", STALE_PROBLEM)
    new = cases["exp/new.pt"].find("failure")
    assert new is not None and new.get("type") == "not-converted"
    assert result.stderr == "failed: 2 problems in 2 sidecars, 3 checkpoints\n"


def test_junit_escapes_names_and_messages() -> None:
    name = 'run <"a"> & \'b\'/x\n.ckpt'
    report = ValidateReport(checked=[name, "ok.metadata.yaml"], problems=[
        Problem(name, "bad <tag> & \"quote\"\nsecond line", "corrupt"),
        Problem(name, "also \x1b[31mred", "stale")])
    suites = ET.fromstring(junit_report(report))
    cases = suites.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == [name, "ok.metadata.yaml"]
    failure = cases[0].find("failure")
    assert failure is not None
    assert failure.get("type") == "corrupt"  # several problems: the first one's kind
    assert failure.get("message") == 'bad <tag> & "quote"\nsecond line; also \\x1b[31mred'
    assert failure.text is not None and "stale: also \\x1b[31mred" in failure.text
    assert suites.get("failures") == "1" and suites.get("tests") == "2"


# --- sarif ----------------------------------------------------------------------------------


def check_sarif_2_1_0(doc: dict[str, Any]) -> None:
    """The fields SARIF 2.1.0 requires (sarifLog, run, tool, toolComponent, result, message,
    artifactLocation), checked by hand: no JSON Schema validator is installed here."""
    assert doc["version"] == "2.1.0"
    assert doc["$schema"].endswith("sarif-2.1.0.json")
    assert isinstance(doc["runs"], list) and len(doc["runs"]) == 1
    run = doc["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "ckptctl" and driver["version"] == __version__
    rule_ids = [rule["id"] for rule in driver["rules"]]
    assert len(rule_ids) == len(set(rule_ids))
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"]
    for base in run.get("originalUriBaseIds", {}).values():
        assert base["uri"].startswith("file:///") and base["uri"].endswith("/")
    for result in run["results"]:
        assert result["message"]["text"]
        assert result["level"] in ("none", "note", "warning", "error")
        assert rule_ids[result["ruleIndex"]] == result["ruleId"]
        for location in result["locations"]:
            artifact = location["physicalLocation"]["artifactLocation"]
            assert "\\" not in artifact["uri"] and " " not in artifact["uri"]
            if "uriBaseId" in artifact:
                assert artifact["uriBaseId"] in run["originalUriBaseIds"]
                assert not artifact["uri"].startswith("/")


def test_sarif_one_result_per_problem_relative_to_the_repository_root(
        mixed_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["git", "init", "-q", str(mixed_tree)], check=True)
    monkeypatch.chdir(mixed_tree / "exp")
    result = run_cli("validate", "--strict", "--format", "sarif", ".")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    check_sarif_2_1_0(doc)
    run = doc["runs"][0]
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == mixed_tree.resolve().as_uri() + "/"
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == ["not-converted", "stale"]
    got = [(r["ruleId"], r["level"], r["message"]["text"],
            r["locations"][0]["physicalLocation"]["artifactLocation"]) for r in run["results"]]
    assert got == [
        ("stale", "error", STALE_PROBLEM, {"uri": "exp/stale.metadata.yaml", "uriBaseId": "%SRCROOT%"}),
        ("not-converted", "error", "no sidecar (run ckptctl convert)",
         {"uri": "exp/new.pt", "uriBaseId": "%SRCROOT%"}),
    ]


def test_sarif_uris_are_encoded_and_a_clean_run_has_no_results(tmp_path: Path) -> None:
    report = ValidateReport(problems=[Problem("my run/a,b%.ckpt", "x", "corrupt"),
                                      Problem("/other/place.ckpt", "y", "missing")])
    doc = json.loads(sarif_report(report, tmp_path, tmp_path))
    check_sarif_2_1_0(doc)
    locations = [r["locations"][0]["physicalLocation"]["artifactLocation"]
                 for r in doc["runs"][0]["results"]]
    assert locations == [{"uri": "my%20run/a%2Cb%25.ckpt", "uriBaseId": "%SRCROOT%"},
                         {"uri": "file:///other/place.ckpt"}]
    clean = json.loads(sarif_report(ValidateReport(checked=["a.metadata.yaml"]), tmp_path, tmp_path))
    check_sarif_2_1_0(clean)
    assert clean["runs"][0]["results"] == [] and clean["runs"][0]["tool"]["driver"]["rules"] == []


# --- nothing checked; what --strict says ------------------------------------------------------


def test_nothing_checked_says_so_and_fails_strict(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    plain = run_cli("validate", empty)
    assert (plain.exit_code, plain.stdout) == (0, "")
    assert plain.stderr == f"nothing checked: no sidecars under {empty}\n"
    strict = run_cli("validate", "--strict", empty)
    assert strict.exit_code == 1
    assert strict.stderr == f"nothing checked: no sidecars or checkpoints under {empty}\n"
    assert json.loads(run_cli("validate", "--strict", "--format", "json", empty).stdout)["ok"] is False
    # a tree with checkpoints but no sidecars, and a checkpoint file without one
    source = save_checkpoint(tmp_path / "run" / "a.ckpt")
    assert run_cli("validate", tmp_path / "run").stderr == (
        f"nothing checked: no sidecars under {tmp_path / 'run'}\n")
    assert run_cli("validate", source).stderr == f"nothing checked: no sidecars under {source}\n"
    github = run_cli("validate", "--strict", "--format", "github", empty)
    assert github.exit_code == 1
    assert github.stdout == (f"::error title=ckptctl::nothing checked: no sidecars or "
                             f"checkpoints under {empty}\n")


def test_a_checkpoint_file_given_has_its_sidecar_checked(tmp_path: Path) -> None:
    source = save_checkpoint(tmp_path / "a.ckpt")
    assert run_cli("convert", "--checkpoint", source).exit_code == 0
    ok = run_cli("validate", source)
    assert (ok.exit_code, ok.stderr) == (0, "ok: 1 sidecar checked, no problems\n")
    _, sidecar = outputs_for(source)
    sidecar.write_text(sidecar.read_text() + "surprise: 1\n")
    bad = run_cli("validate", source, "--format", "json")
    assert bad.exit_code == 1
    assert [(p["path"], p["kind"]) for p in json.loads(bad.stdout)["problems"]] == [
        (str(sidecar), "sidecar")]


def test_strict_names_why_convert_would_refuse_a_checkpoint(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": _RunsCode(f"touch {marker}")},
               tmp_path / "evil.pt")
    torch.save({"epoch": 3, "note": "no weights here"}, tmp_path / "nostate.pt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "scripted.pt"))
    save_checkpoint(tmp_path / "plain.ckpt")
    result = run_cli("validate", "--strict", "--format", "json", tmp_path)
    assert result.exit_code == 1
    problems = {Path(p["path"]).name: (p["kind"], p["problem"])
                for p in json.loads(result.stdout)["problems"]}
    assert problems["evil.pt"] == ("unsafe", "cannot be converted: refused: the pickle "
                                   "references dangerous callables posix.system (nothing was executed)")
    kind, text = problems["nostate.pt"]
    assert kind == "unsupported"
    assert text.startswith("cannot be converted: no model state dict found")
    assert problems["scripted.pt"] == ("unsupported", "cannot be converted: TorchScript "
                                       "archive (holds code); not converted")
    assert problems["plain.ckpt"] == ("not-converted", "no sidecar (run ckptctl convert)")
    assert not marker.exists()


def test_changed_files_checks_their_folders_only(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path / "a" / "good.ckpt")
    assert run_cli("convert", "--checkpoint", good).exit_code == 0
    new = save_checkpoint(tmp_path / "b" / "new.ckpt")
    save_checkpoint(tmp_path / "a" / "deeper" / "unconverted.ckpt")
    notes = tmp_path / "c" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("not a checkpoint")
    _, sidecar = outputs_for(good)
    ok = run_cli("validate", "--strict", "--changed-files", sidecar, good)
    assert (ok.exit_code, ok.stderr) == (0, "ok: 1 sidecar, 1 checkpoint checked, no problems\n")
    bad = run_cli("validate", "--strict", "--changed-files", "--format", "json", sidecar, new)
    assert bad.exit_code == 1
    assert [p["path"] for p in json.loads(bad.stdout)["problems"]] == [str(new)]
    # a changed file in a folder with nothing of ckptctl's: said, but no failure
    nothing = run_cli("validate", "--strict", "--changed-files", notes)
    assert nothing.exit_code == 0
    assert nothing.stderr.startswith("nothing checked:")


# --- the GitHub Action ------------------------------------------------------------------------


def load_action() -> dict[str, Any]:
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert isinstance(action, dict)
    return action


def run_action_steps(action: dict[str, Any], inputs: dict[str, str], cwd: Path,
                     shim_bin: Path) -> list[subprocess.CompletedProcess[str]]:
    """Every ``run:`` step as the runner runs a composite step (``bash -eo pipefail``),
    ``${{ inputs.X }}`` in its env substituted; ``python`` is ``shim_bin``'s recorder."""
    done = []
    for step in action["runs"]["steps"]:
        if "run" not in step:
            continue
        assert step["shell"] == "bash"
        env = {**os.environ, "GITHUB_ACTION_PATH": str(REPO),
               "PATH": f"{shim_bin}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
                       f"{os.environ['PATH']}"}
        for name, value in step.get("env", {}).items():
            for key, given in inputs.items():
                value = value.replace("${{ inputs." + key + " }}", given)
            assert "${{" not in value, value
            env[name] = value
        script = cwd / f"step{len(done)}.sh"
        script.write_text(step["run"])
        done.append(subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail",
                                    str(script)], cwd=cwd, env=env, capture_output=True,
                                   text=True, timeout=300))
    return done


@pytest.fixture
def python_shim(tmp_path: Path) -> Path:
    """A ``python`` that records its arguments: the install step is checked, not run (it
    would install into the test's environment)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\necho "$@" >> {shim / "calls"}\n')
    (shim / "python").chmod(0o755)
    return shim


def test_action_declares_its_inputs_and_uses_steps() -> None:
    action = load_action()
    assert set(action["inputs"]) == {"paths", "strict", "deep", "sarif", "python-version"}
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["python-version"] == "${{ inputs.python-version }}"
    upload = next(s for s in steps if s.get("uses", "").startswith("github/codeql-action/upload-sarif@"))
    assert upload["with"]["sarif_file"] == "${{ inputs.sarif }}"
    assert "inputs.sarif != ''" in upload["if"] and "always()" in upload["if"]
    assert steps.index(setup) < steps.index(upload)


def test_action_steps_run_locally(tmp_path: Path, python_shim: Path) -> None:
    work = tmp_path / "checkout"
    good = save_checkpoint(work / "models" / "good.ckpt")
    assert run_cli("convert", "--checkpoint", good).exit_code == 0
    inputs = {"paths": "models", "strict": "true", "deep": "true", "sarif": "", "python-version": "3.12"}
    install, clean = run_action_steps(load_action(), inputs, work, python_shim)
    assert install.returncode == 0, install.stderr
    assert (python_shim / "calls").read_text().split()[-1] == str(REPO)  # pip install <action path>
    assert (clean.returncode, clean.stdout) == (0, "ok: 1 sidecar, 1 checkpoint checked, no problems\n")
    # a problem: annotations, exit 1, and the SARIF file written when asked
    save_checkpoint(work / "models" / "new.pt")
    inputs.update(sarif="results/ckptctl.sarif", paths="models  models/good.ckpt")
    (work / "results").mkdir()
    _, failing = run_action_steps(load_action(), inputs, work, python_shim)
    assert failing.returncode == 1
    assert failing.stdout.splitlines() == [
        "::error file=models/new.pt,title=ckptctl::no sidecar (run ckptctl convert)",
        "failed: 1 problem in 1 sidecar, 2 checkpoints"]
    doc = json.loads((work / "results" / "ckptctl.sarif").read_text())
    check_sarif_2_1_0(doc)
    assert [r["ruleId"] for r in doc["runs"][0]["results"]] == ["not-converted"]
    # not strict: the unconverted checkpoint is no failure
    inputs.update(strict="false", sarif="")
    _, relaxed = run_action_steps(load_action(), inputs, work, python_shim)
    assert relaxed.returncode == 0, relaxed.stdout


# --- the pre-commit hook ----------------------------------------------------------------------


def test_pre_commit_hook_definition() -> None:
    [hook] = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "ckptctl-validate" and hook["language"] == "python"
    assert hook["entry"] == "ckptctl validate --strict --changed-files"
    assert hook["pass_filenames"] is True
    import re

    files = re.compile(hook["files"])
    for name in ("a.metadata.yaml", "a.ckpt", "w.weights.h5", "m.ckpt.index",
                 "m.ckpt.data-00000-of-00001", "x.keras", "y.pth"):
        assert files.search(f"runs/{name}"), name
    for name in ("README.md", "train.py", "config.yaml"):
        assert not files.search(name), name


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
                   cwd=cwd, check=True, capture_output=True)


@pytest.mark.slow
def test_pre_commit_try_repo_runs_the_hook(tmp_path: Path) -> None:
    """``pre-commit try-repo`` on a copy of this working tree (try-repo itself only sees
    committed and tracked files): it builds the hook's venv with pip, as users get it."""
    pre_commit = Path(sys.executable).parent / "pre-commit"
    if not pre_commit.exists():
        pytest.skip("pre-commit is not installed (pip install -e '.[test]')")
    hook_repo = tmp_path / "hook-repo"
    hook_repo.mkdir()
    for name in ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml"):
        shutil.copy2(REPO / name, hook_repo / name)
    shutil.copytree(REPO / "ckptctl", hook_repo / "ckptctl",
                    ignore=shutil.ignore_patterns("__pycache__"))
    _git("init", "-q", cwd=hook_repo)
    _git("add", "-A", cwd=hook_repo)
    _git("commit", "-q", "-m", "hooks", cwd=hook_repo)
    user = tmp_path / "user"
    good = save_checkpoint(user / "runs" / "good.ckpt")
    assert run_cli("convert", "--checkpoint", good).exit_code == 0
    (user / "README.md").write_text("not a checkpoint\n")
    _git("init", "-q", cwd=user)
    _git("add", "-A", cwd=user)
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}

    def try_repo() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(pre_commit), "try-repo", str(hook_repo), "ckptctl-validate",
                               "--all-files"], cwd=user, env=env, capture_output=True,
                              text=True, timeout=600)

    passed = try_repo()
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "ckptctl validate" in passed.stdout and "Passed" in passed.stdout
    save_checkpoint(user / "runs" / "new.pt")
    _git("add", "-A", cwd=user)
    failed = try_repo()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "runs/new.pt" in failed.stdout and "no sidecar (run ckptctl convert)" in failed.stdout


# --- Ctrl-C -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_mid_convert_exits_130_and_leaves_nothing_partial(tmp_path: Path, jobs: str) -> None:
    root = tmp_path / "outputs"
    total = 24
    (root / "exp").mkdir(parents=True)
    for i in range(total):
        torch.save({"state_dict": {"w": torch.randn(1_000_000)}}, root / "exp" / f"ckpt{i:02d}.pt")
    process = subprocess.Popen([sys.executable, "-m", "ckptctl", "convert", "--outputs-dir",
                                str(root), "--jobs", jobs], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def finished() -> list[str]:  # sidecars in place (not their hidden temporaries)
        return sorted(p.name.removesuffix(".metadata.yaml")
                      for p in (root / "exp").glob("[!.]*.metadata.yaml"))

    deadline = time.monotonic() + 120
    while not finished() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert stderr.splitlines()[-1] == (
        "interrupted: everything reported above is finished and complete; no partial outputs "
        "were left (a conversion in progress removed its hidden temporaries)")
    sidecars = finished()
    assert 1 <= len(sidecars) < total  # interrupted mid-run
    reported = sorted(Path(line.split()[-1]).stem for line in stdout.splitlines()
                      if line.startswith("converted"))
    assert set(reported) <= set(sidecars)
    time.sleep(0.5)  # stopped workers finish unwinding
    assert leftover_temporaries(root) == []
    weights = sorted(p.name.removesuffix(".weights.h5") for p in (root / "exp").glob("[!.]*.weights.h5"))
    assert set(sidecars) <= set(weights)  # every sidecar vouches for complete weights
    check = run_process("validate", "--deep", root)
    assert check.returncode == 0, check.stdout + check.stderr
