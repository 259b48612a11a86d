from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from . import options
from .console import EXIT_FAILED, Console, plural

if TYPE_CHECKING:
    from ..ops.convert import ConvertOptions, ConvertReport, ItemResult, Status, Target


@click.command("convert")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--checkpoint", "checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="Convert one checkpoint: a file, or a TF prefix such as run/model.ckpt.")
@click.option("--exp-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Convert every checkpoint of one experiment folder.")
@click.option("--outputs-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Convert every checkpoint below an outputs folder (one experiment per subfolder).")
@options.output_dir("Write outputs under DIR, mirroring the source tree (for read-only or shared "
                    "source folders); sidecars point back at the sources. Formerly --output-dir "
                    "(still accepted).")
@click.option("--force", is_flag=True, help="Reconvert even when the outputs are up to date.")
@click.option("--dry-run", is_flag=True, help="Say what would be converted; write nothing.")
@options.no_recursive
@click.option("--metadata-only", is_flag=True, help="Write sidecars only, no weights files.")
@click.option("--weights-format", type=click.Choice(["h5", "safetensors"]), default="h5",
              show_default=True,
              help="h5: <stem>.weights.h5 (Keras-3-loadable for Keras sources). safetensors: "
                   "<stem>.safetensors for PyTorch-family sources (safetensors.torch.load_file "
                   "reads it; tied tensors stored once, their aliases in its metadata); a "
                   "safetensors source is then described, not rewritten; Keras sources keep .weights.h5.")
@click.option("--keras-model", metavar="MODULE:FUNCTION",
              help="Build your Keras 3 model with MODULE:FUNCTION: verify the converted weights "
                   "against it, or map the checkpoint onto it when no layout is certain "
                   "(subclassed models, custom layers); imports TensorFlow/Keras.")
@options.jobs("Convert checkpoints")
@click.option("--shard", metavar="K/N",
              help="Convert only shard K of N (0-based; the same split on every machine). "
                   "'--shard N' takes K from the scheduler; an --outputs-dir run inside a "
                   "Slurm job array uses the array's task id and count when --shard is not "
                   "given.")
@options.output_format("text", "jsonl", help="text: one line per checkpoint for people; "
                       "jsonl: one JSON object per checkpoint as it finishes, then a summary "
                       "object (for schedulers and CI).")
@click.option("--submit", type=click.Choice(["slurm"]),
              help="Do not convert here: submit the conversion as a Slurm job array (sbatch), "
                   "one shard per task, --cpus-per-task workers each.")
@click.option("--array", "array_tasks", type=click.IntRange(min=1), default=8, show_default=True,
              help="With --submit: number of array tasks (shards).")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --submit: CPUs (worker processes) per task.")
@click.option("--partition", help="With --submit: the Slurm partition.")
@click.option("--time", "time_limit", metavar="TIME", help="With --submit: the time limit per task (e.g. 4:00:00).")
@click.option("--wait", is_flag=True,
              help="With --submit: wait for the array, then summarise it from the tree.")
@click.option("-v", "--verbose", is_flag=True, help="Also list skipped files and show tracebacks of internal errors.")
def command(paths: tuple[Path, ...], checkpoint: Path | None, exp_dir: Path | None,
            outputs_dir: Path | None,
            output_dir: Path | None, force: bool,
            dry_run: bool, no_recursive: bool, metadata_only: bool, weights_format: str,
            keras_model: str | None,
            jobs: int | None, shard: str | None, fmt: str, submit: str | None,
            array_tasks: int, cpus_per_task: int, partition: str | None,
            time_limit: str | None, wait: bool, verbose: bool) -> None:
    """Write <stem>.weights.h5 and <stem>.metadata.yaml next to each checkpoint.

    PATHS are folders (each converted like --outputs-dir: every checkpoint below it, one
    experiment per subfolder, or the experiment it is or lies in) and checkpoint files or
    TF prefixes (each like --checkpoint); give PATHS or one of --checkpoint, --exp-dir,
    --outputs-dir. Weights are stored bit-exact (dtype, shape, values, tied tensors); the sidecar gathers
    metadata from the checkpoint, its callback state, Hydra config, logger files and file
    name. Sources are never modified. Up-to-date outputs are skipped. Exits 0 when nothing
    failed, 1 when any checkpoint failed (the others are still converted), 2 on usage errors.
    """
    console = Console(verbose=verbose)
    chosen = [o for o in (checkpoint, exp_dir, outputs_dir) if o is not None]
    if paths and chosen:
        console.usage_error("give folders and checkpoints as PATHS, or one of --checkpoint, "
                            "--exp-dir or --outputs-dir, not both")
    if not paths and len(chosen) != 1:
        console.usage_error("give PATHS (folders or checkpoints), or exactly one of "
                            "--checkpoint, --exp-dir or --outputs-dir")
    for path in paths:
        if not (path.exists() or path.with_name(path.name + ".index").exists()):
            raise click.BadParameter(f"{path} does not exist (nor {path.name}.index)",
                                     param_hint="'PATHS...'")
    from ..ops.convert import (
        ConvertOptions,
        targets_for_checkpoint,
        targets_for_exp_dir,
        targets_for_outputs_dir,
        targets_for_paths,
    )

    if keras_model is not None:
        # Checked once, before any checkpoint: a bad spec is a usage error, not N failures.
        from ..errors import UsageError
        from ..formats.keras_weights import resolve_keras_builder

        try:
            resolve_keras_builder(keras_model)
        except UsageError as exc:
            raise click.BadParameter(exc.message, param_hint="'--keras-model'") from None
    recursive = not no_recursive
    if submit is not None:
        given_jobs = click.get_current_context().get_parameter_source("jobs")
        if shard is not None or given_jobs == click.core.ParameterSource.COMMANDLINE:
            console.usage_error("--submit chooses shards and workers itself: drop --shard/--jobs")
        given = [("--checkpoint", checkpoint), ("--exp-dir", exp_dir), ("--outputs-dir", outputs_dir),
                 ("--into", output_dir), ("--keras-model", keras_model)]
        args = [part for flag, value in given if value is not None
                for part in (flag, str(value if flag == "--keras-model" else Path(value).absolute()))]
        args += [str(path.absolute()) for path in paths]
        args += [flag for flag, on in (("--force", force), ("--dry-run", dry_run),
                                       ("--no-recursive", no_recursive),
                                       ("--metadata-only", metadata_only)) if on]
        args += ["--weights-format", weights_format] if weights_format != "h5" else []
        _submit(console, args, array_tasks, cpus_per_task, partition, time_limit, wait,
                [outputs_dir or exp_dir or (checkpoint.parent if checkpoint else Path.cwd())]
                if not paths else list(paths), output_dir, recursive)
    if checkpoint is not None and not (
        checkpoint.exists() or checkpoint.with_name(checkpoint.name + ".index").exists()
    ):
        raise click.BadParameter(f"{checkpoint} does not exist (nor {checkpoint.name}.index)",
                                 param_hint="'--checkpoint'")
    if paths:
        targets, warnings = targets_for_paths(paths, recursive)
    elif checkpoint is not None:
        targets, warnings = targets_for_checkpoint(checkpoint)
    elif exp_dir is not None:
        targets, warnings = targets_for_exp_dir(exp_dir, recursive)
    else:
        assert outputs_dir is not None
        targets, warnings = targets_for_outputs_dir(outputs_dir, recursive)
    console.warnings(warnings)
    run_options = ConvertOptions(force=force, dry_run=dry_run, metadata_only=metadata_only,
                                 keras_model=keras_model, output_dir=output_dir,
                                 jobs=options.resolve_jobs(jobs), weights_format=weights_format)
    # A Slurm array splits a whole tree by itself; an array whose tasks each name their own
    # --exp-dir or --checkpoint (or checkpoint files) must not silently convert a fraction
    # of it. Each target's shard key is relative to the path it was found from.
    if shard is not None or outputs_dir is not None or any(p.is_dir() for p in paths):
        targets = _my_shard(console, shard, targets, run_options)
    report = _run(console, targets, run_options, fmt)
    done: Status = "would convert" if dry_run else "converted"
    if fmt == "jsonl":
        console.json_line({"summary": {
            "found": len(report.items), "converted": report.count("converted"),
            "would_convert": report.count("would convert"), "skipped": report.count("skipped"),
            "failed": report.count("failed"),
            "seconds": round(sum(i.seconds for i in report.items), 3),
            "bytes": sum(i.source_bytes for i in report.items)}})
    console.message(f"found {len(report.items)}, {done} {report.count(done)}, "
                    f"skipped {report.count('skipped')}, failed {report.count('failed')}")
    if report.failed:
        console.exit(EXIT_FAILED)


def _submit(console: Console, args: list[str], tasks: int, cpus: int, partition: str | None,
            time_limit: str | None, wait: bool, trees: list[Path], output_dir: Path | None,
            recursive: bool) -> NoReturn:
    from ..errors import UsageError
    from ..slurm import SlurmArray, SubmitError, submit, task_logs

    try:
        job = submit(SlurmArray(tasks, cpus, partition, time_limit), args, Path.cwd() / "ckptctl-slurm",
                     wait)
    except UsageError as exc:
        console.usage_error(exc.message)
    except SubmitError as exc:
        console.fail(str(exc))
    console.message(f"submitted job {job.job_id}: {tasks} tasks x {cpus} CPUs; script "
                    f"{job.script}; logs in {job.log_dir}")
    if not wait:
        console.exit(0)
    records = task_logs(job.log_dir)
    failed = [r for r in records if r.get("status") == "failed"]
    for record in failed:
        console.error(record["source"], f"{record.get('reason')} ({record['task_log']})")
    from ..ops.scan import scan

    rows = scan(trees, recursive=recursive, output_dir=output_dir).rows
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    converted = sum(r.get("status") == "converted" for r in records)
    console.message(f"job {job.job_id} done: {converted} converted by {plural(tasks, 'task')}, "
                    f"{len(failed)} failed; the tree now: {plural(len(rows), 'checkpoint')}, "
                    + (", ".join(f"{n} {s}" for s, n in counts.items()) or "none"))
    console.exit(EXIT_FAILED if failed or job.status else 0)


def _my_shard(console: Console, option: str | None, targets: list[Target],
              run_options: ConvertOptions) -> list[Target]:
    from ..errors import UsageError
    from ..ops.convert import select_shard
    from ..sharding import resolve_shard

    try:
        shard = resolve_shard(option)
    except UsageError as exc:
        if option is not None and "/" in option:  # the value given is wrong
            raise click.BadParameter(exc.message, param_hint="'--shard'") from None
        console.usage_error(exc.message)  # the scheduler's variables are: they name themselves
    if shard is None:
        return targets
    mine = select_shard(targets, run_options, shard)
    console.message(f"shard {shard} (from {shard.origin}): {len(mine)} of "
                    f"{plural(len(targets), 'checkpoint')}")
    return mine


def _run(console: Console, targets: list[Target], run_options: ConvertOptions,
         fmt: str) -> ConvertReport:
    from ..ops.convert import convert

    def report_json(item: ItemResult) -> None:
        console.json_line({
            "source": str(item.source), "status": item.status, "kind": item.kind,
            "reason": item.reason, "notes": item.notes,
            "weights": None if item.weights is None else str(item.weights),
            "sidecar": None if item.sidecar is None else str(item.sidecar),
            "seconds": round(item.seconds, 3), "bytes": item.source_bytes})

    def report_item(item: ItemResult) -> None:
        if item.status == "failed":
            console.error(item.source, item.reason or "failed")
            if item.detail:
                console.detail(item.detail.rstrip())
        elif item.status == "skipped":
            if console.verbose:
                console.line(f"skipped        {item.source} ({item.reason})")
        else:
            console.line(f"{item.status:<14} {item.source}")
            for note in item.notes:
                if note.startswith("warning: "):  # shown without -v
                    console.warnings([f"{item.source}: {note[len('warning: '):]}"])
                elif console.verbose:
                    console.note(f"{item.source}: {note}")

    if fmt == "jsonl":
        return convert(targets, run_options, report_json)
    if run_options.dry_run:
        return convert(targets, run_options, report_item)
    # A bar over the sources' bytes, naming the checkpoint in hand; lines print above it.
    with console.progress([(t.found.path, _source_size(t)) for t in targets]) as advance:

        def report_and_advance(item: ItemResult) -> None:
            report_item(item)
            advance()

        return convert(targets, run_options, report_and_advance)


def _source_size(target: Target) -> int:
    from ..sources import fingerprint

    try:
        return fingerprint(target.found.path, target.found.format).size_bytes
    except OSError:
        return 0  # reported by convert itself
