from __future__ import annotations

from pathlib import Path

import click

from . import options
from .console import EXIT_FAILED, Console, human_size


@click.command("clean")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--yes", is_flag=True, help="Remove the files (without it: only list them).")
@options.no_recursive
def command(paths: tuple[Path, ...], yes: bool, no_recursive: bool) -> None:
    """Remove the files ckptctl wrote under PATHS, never a source.

    Lists what it would remove; --yes removes it. Only ckptctl's own files go: its sidecars,
    the weights files they name when the file's HDF5 attributes say ckptctl wrote it (never
    a checkpoint, such as a Keras 3 .weights.h5 source), and its lock files and leftover
    temporaries. A checkpoint another ckptctl is converting is left alone. Exits 1 when a
    file could not be removed.
    """
    from ..ops.clean import clean

    console = Console()
    report = clean(paths, recursive=not no_recursive, act=yes)
    console.warnings(report.warnings)
    for item in report.items:
        if item.status == "failed":
            console.error(item.path, item.reason or "failed")
        elif item.status == "kept":
            console.line(f"{'kept':<14} {item.path} ({item.reason})")
        else:
            console.line(f"{item.status:<14} {item.path}")
    gone = report.with_status("removed" if yes else "would remove")
    count = f"{len(gone)} file{'' if len(gone) == 1 else 's'} " \
            f"({human_size(sum(item.size_bytes for item in gone))})"
    if yes:
        console.message(f"removed {count}")
    elif gone:
        console.message(f"would remove {count}; run again with --yes to remove them")
    else:
        console.message("nothing to remove")
    if report.with_status("failed"):
        console.exit(EXIT_FAILED)
