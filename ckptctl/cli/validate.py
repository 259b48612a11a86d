from __future__ import annotations

from pathlib import Path

import click

from . import options
from .console import EXIT_FAILED, Console


@click.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--strict", is_flag=True,
              help="Also fail on checkpoints with no sidecar or a stale one.")
@click.option("--deep", is_flag=True, help="Re-hash checkpoints and weights against their sha256.")
@options.output_format("table", "json")
@options.no_recursive
@options.output_dir(options.OUTPUT_DIR_LOOK)
@options.jobs("With --deep, re-hash")
def command(paths: tuple[Path, ...], strict: bool, deep: bool, fmt: str, no_recursive: bool,
            output_dir: Path | None, jobs: int | None) -> None:
    """Check sidecars under PATHS (default: .) against the schema and their files.

    Every sidecar must parse and match the schema, and the checkpoint and weights it names
    must exist with the recorded sizes. Exits 0 when clean, 1 on any problem: the CI
    pre-release check.
    """
    from ..ops.validate import validate

    console = Console()
    report = validate(paths or (Path("."),), strict=strict, deep=deep, recursive=not no_recursive,
                      output_dir=output_dir, jobs=options.resolve_jobs(jobs))
    console.warnings(report.warnings)
    if fmt == "json":
        console.json({"ok": report.ok, "sidecars_checked": report.sidecars_checked,
                      "checkpoints_checked": report.checkpoints_checked,
                      "problems": [p.to_dict() for p in report.problems]})
    elif report.problems:
        console.table(["PATH", "PROBLEM"], [[p.path, p.problem] for p in report.problems])
    checked = f"{report.sidecars_checked} sidecars"
    if strict:
        checked += f", {report.checkpoints_checked} checkpoints"
    if report.ok:
        console.message(f"ok: {checked} checked, no problems")
    else:
        console.message(f"failed: {len(report.problems)} problems in {checked}")
        console.exit(EXIT_FAILED)
