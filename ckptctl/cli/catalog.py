from __future__ import annotations

from pathlib import Path

import click

from . import options
from .console import Console, fmt_number, plural


@click.command("catalog")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--best", "best", metavar="METRIC",
              help="One row per experiment: its best checkpoint by METRIC, best experiment first.")
@click.option("--mode", type=click.Choice(["min", "max"]),
              help="Whether lower or higher METRIC is better, when no sidecar says so.")
@click.option("--sort", "sort_key", metavar="KEY",
              help="Sort rows by KEY (exp_name, epoch, step, created_at, path or a metric); "
                   "prefix with - for descending.")
@options.output_format("table", "json", "csv",
                       help="Output format; json prints the sidecar documents with sidecar_path added.")
@options.no_recursive
@click.option("--no-cache", is_flag=True, help="Parse every sidecar; do not use the catalog cache.")
def command(paths: tuple[Path, ...], best: str | None, mode: str | None, sort_key: str | None,
            fmt: str, no_recursive: bool, no_cache: bool) -> None:
    """List checkpoints under PATHS (default: .) from their sidecars alone.

    Never opens a checkpoint. With --best METRIC the mode is the sidecar's own
    checkpointing.mode when it monitored METRIC, else --mode, else min for names with
    loss/error/err and max otherwise; checkpoints without METRIC are left out. METRIC
    also finds its aliases: val/loss, val_loss, val.loss, validation.loss and valloss are
    one metric (README: Catalog).
    """
    from ..errors import CkptError
    from ..ops.catalog import all_metric_names, catalog, default_cache_dir

    console = Console()
    try:
        result = catalog(paths or (Path("."),), best=best, mode=mode, sort=sort_key,
                         recursive=not no_recursive, cache_dir=None if no_cache else default_cache_dir())
    except CkptError as exc:
        console.fail(exc.message)
    console.warnings(result.warnings)
    if result.left_out:
        verb = "was" if result.left_out == 1 else "were"
        console.note(f"{plural(result.left_out, 'checkpoint')} without {best} {verb} left out")
    entries = result.entries
    if fmt == "json":
        console.json([e.as_json() for e in entries])
        return
    if best:
        sources = [s for s in result.metric_sources if s != best]
        shown_as = f"as {', '.join(sources)}, " if sources else ""
        columns = ["EXPERIMENT", "CHECKPOINT", "EPOCH", "STEP", f"{best} ({shown_as}{result.mode})"]
        rows = [[e.doc.get("exp_name"), e.checkpoint, e.field("epoch"), e.field("step"),
                 fmt_number(result.best_value(e))] for e in entries]
    else:
        columns = ["EXPERIMENT", "CHECKPOINT", "EPOCH", "STEP", "MONITOR", "SCORE"]
        rows = []
        for e in entries:
            ckpt = e.doc.get("checkpointing") or {}
            monitor = ckpt.get("monitor")
            score = ckpt.get("score", e.metrics.get(monitor) if monitor else None)
            rows.append([e.doc.get("exp_name"), e.checkpoint, e.field("epoch"), e.field("step"),
                         monitor, fmt_number(score)])
    if fmt == "csv":
        metric_names = all_metric_names(entries)
        console.csv(["exp_name", "checkpoint", "epoch", "global_step", "monitor", "mode", *metric_names],
                 [[e.doc.get("exp_name"), e.checkpoint, e.field("epoch"), e.field("step"),
                   (e.doc.get("checkpointing") or {}).get("monitor"),
                   (e.doc.get("checkpointing") or {}).get("mode"),
                   *[e.metrics.get(m) for m in metric_names]] for e in entries])
        return
    console.table(columns, rows, root=paths[0] if len(paths) == 1 else None)
    console.message(plural(len(entries), "row") + (f" (best by {best}, {result.mode})" if best else ""))
