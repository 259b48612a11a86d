from __future__ import annotations

from pathlib import Path

import click

from . import options
from .console import EXIT_FAILED, Console, human_size, plural


@click.command("scan")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@options.output_format("table", "json")
@options.no_recursive
@options.output_dir(options.OUTPUT_DIR_LOOK)
def command(paths: tuple[Path, ...], fmt: str, no_recursive: bool, output_dir: Path | None) -> None:
    """Find checkpoints under PATHS and say what they are.

    Each checkpoint is listed with its format, size and status: converted, stale (the
    source changed since its sidecar was written), not converted, unreadable (with the
    reason), or newer (its sidecar was written by a newer ckptctl). No tensor data is read and no framework is imported. Exits 1 when any
    checkpoint is unreadable.
    """
    from ..ops.scan import scan

    console = Console()
    report = scan(paths, recursive=not no_recursive, output_dir=output_dir)
    console.warnings(report.warnings)
    if fmt == "json":
        console.json([row.to_dict() for row in report.rows])
    else:
        console.table(["PATH", "FORMAT", "SIZE", "STATUS"],
                      [[r.path, r.format or "-", human_size(r.size_bytes),
                        r.status + (f": {r.reason}" if r.reason else "")] for r in report.rows],
                      root=paths[0] if len(paths) == 1 else None)
        counts: dict[str, int] = {}
        for row in report.rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in counts.items()) or "none"
        console.message(f"{plural(len(report.rows), 'checkpoint')}: {summary}")
    if any(row.status == "unreadable" for row in report.rows):
        console.exit(EXIT_FAILED)
