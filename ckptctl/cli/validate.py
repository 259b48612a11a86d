from __future__ import annotations

import os
import subprocess
from pathlib import Path

import click
from click.core import ParameterSource

from . import options
from .console import EXIT_FAILED, Console, plural

FORMAT_HELP = ("table: for people; json: for scripts; junit: JUnit XML (GitLab, Jenkins); sarif: "
               "SARIF 2.1.0 (GitHub code scanning); github: GitHub Actions annotations. Under "
               "GitHub Actions (GITHUB_ACTIONS=true) the table is followed by the annotations "
               "unless --format is given.")


@click.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--strict", is_flag=True,
              help="Also fail on checkpoints with no sidecar or a stale one (naming why convert "
                   "would refuse one), and when nothing was checked.")
@click.option("--deep", is_flag=True, help="Re-hash checkpoints and weights against their sha256.")
@options.output_format("table", "json", "junit", "sarif", "github", help=FORMAT_HELP)
@options.no_recursive
@options.output_dir(options.OUTPUT_DIR_LOOK)
@options.jobs("With --deep, re-hash")
@click.option("--changed-files", is_flag=True,
              help="PATHS are changed files (as a pre-commit hook passes them): check the folders "
                   "holding them, not below; a folder with nothing to check is no failure then.")
def command(paths: tuple[Path, ...], strict: bool, deep: bool, fmt: str, no_recursive: bool,
            output_dir: Path | None, jobs: int | None, changed_files: bool) -> None:
    """Check sidecars under PATHS (default: .) against the schema and their files.

    Every sidecar must parse and match the schema, and the checkpoint and weights it names
    must exist with the recorded sizes; a checkpoint file given as a path has its sidecar
    checked. Exits 0 when clean, 1 on any problem: the CI pre-release check.
    """
    from ..ops.validate import validate

    console = Console()
    explicit_format = click.get_current_context().get_parameter_source("fmt") \
        is not ParameterSource.DEFAULT
    targets = paths or (Path("."),)
    recursive = not no_recursive
    if changed_files:
        targets = tuple(dict.fromkeys(p if p.is_dir() else p.parent for p in targets))
        recursive = False
    report = validate(targets, strict=strict, deep=deep, recursive=recursive,
                      output_dir=output_dir, jobs=options.resolve_jobs(jobs))
    console.warnings(report.warnings)
    nothing = report.sidecars_checked == 0 and report.checkpoints_checked == 0
    checked = plural(report.sidecars_checked, "sidecar")
    if strict:
        checked += ", " + plural(report.checkpoints_checked, "checkpoint")
    if nothing:
        what = "sidecars or checkpoints" if strict else "sidecars"
        summary = f"nothing checked: no {what} under {', '.join(str(t) for t in targets)}"
    elif report.ok:
        summary = f"ok: {checked} checked, no problems"
    else:
        summary = f"failed: {plural(len(report.problems), 'problem')} in {checked}"
    failed = not report.ok or (nothing and strict and not changed_files)

    if fmt == "json":
        console.json({"ok": not failed, "sidecars_checked": report.sidecars_checked,
                      "checkpoints_checked": report.checkpoints_checked,
                      "problems": [p.to_dict() for p in report.problems]})
    elif fmt in ("junit", "sarif", "github"):
        from .. import reports

        if fmt == "junit":
            console.document(reports.junit_report(report))
        else:
            cwd = Path.cwd()
            root = repository_root(cwd)
            console.document(reports.sarif_report(report, root, cwd) if fmt == "sarif" else
                             reports.github_report(report, summary, root, cwd,
                                                   summary_is_error=failed and report.ok))
    else:
        if report.problems:
            console.table(["PATH", "PROBLEM"], [[p.path, p.problem] for p in report.problems],
                          root=paths[0] if len(paths) == 1 else None)
        if os.environ.get("GITHUB_ACTIONS") == "true" and not explicit_format:
            from .. import reports

            cwd = Path.cwd()
            for line in reports.github_annotations(report, repository_root(cwd), cwd):
                console.document(line)
    if fmt != "github":  # there the summary is the report's last line
        console.message(summary)
    if failed:
        console.exit(EXIT_FAILED)


def repository_root(cwd: Path) -> Path:
    """The git toplevel of ``cwd``, else ``cwd``: what SARIF and annotation paths are
    relative to."""
    try:
        done = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd,
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return cwd
    top = done.stdout.strip()
    return Path(top) if done.returncode == 0 and top else cwd
