from __future__ import annotations

from pathlib import Path

import click

from .output import FORMATS_TABLE_JSON, emit_json, emit_table, human_size, message


@click.command("scan")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=FORMATS_TABLE_JSON, default="table", show_default=True,
              help="Output format.")
@click.option("--no-recursive", is_flag=True, help="Only look at the given folders, not below.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Look for outputs under DIR, as written by convert --output-dir.")
def command(paths: tuple[Path, ...], fmt: str, no_recursive: bool, output_dir: Path | None) -> None:
    """Find checkpoints under PATHS and say what they are.

    Each checkpoint is listed with its format, size and status: converted, stale (the
    source changed since its sidecar was written), not converted, or unreadable (with the
    reason). No tensor data is read and no framework is imported. Exits 1 when any
    checkpoint is unreadable.
    """
    from ..ops.scan import scan

    report = scan(paths, recursive=not no_recursive, output_dir=output_dir)
    for warning in report.warnings:
        message(f"warning: {warning}")
    if fmt == "json":
        emit_json([row.to_dict() for row in report.rows])
    else:
        emit_table(["PATH", "FORMAT", "SIZE", "STATUS"],
                   [[r.path, r.format or "-", human_size(r.size_bytes),
                     r.status + (f": {r.reason}" if r.reason else "")] for r in report.rows])
        counts: dict[str, int] = {}
        for row in report.rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in counts.items()) or "none"
        message(f"{len(report.rows)} checkpoints: {summary}")
    if any(row.status == "unreadable" for row in report.rows):
        raise SystemExit(1)
