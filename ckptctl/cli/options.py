"""Options shared by several commands, defined once so they read and behave the same."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click

F = TypeVar("F", bound=Callable[..., Any])


def no_recursive(function: F) -> F:
    return click.option("--no-recursive", is_flag=True,
                        help="Only look at the given folders, not below.")(function)


def output_format(*choices: str, help: str = "Output format.") -> Callable[[F], F]:
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=choices[0],
                        show_default=True, help=help)


def output_dir(help: str) -> Callable[[F], F]:
    """``--into DIR`` (passed as ``output_dir``), and ``--output-dir DIR``, its old name: a
    hidden alias that still works (one letter from ``--outputs-dir``, hence the new name)."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def merged(*args: Any, output_dir_alias: Path | None = None, **kwargs: Any) -> Any:
            if output_dir_alias is not None:
                if kwargs.get("output_dir") not in (None, output_dir_alias):
                    raise click.UsageError("--into and --output-dir (its old name) name "
                                           "different folders; give one")
                kwargs["output_dir"] = output_dir_alias
            return function(*args, **kwargs)

        kind = click.Path(file_okay=False, path_type=Path)
        with_alias = click.option("--output-dir", "output_dir_alias", type=kind, hidden=True,
                                  help="Old name of --into.")(merged)
        return cast(F, click.option("--into", "output_dir", type=kind, metavar="DIR",
                                    help=help)(with_alias))

    return decorate


#: convert's wording; scan and validate look where it wrote
OUTPUT_DIR_LOOK = ("Look for outputs under DIR, as written by convert --into DIR "
                   "(give the same folders you gave convert).")


def jobs(what: str) -> Callable[[F], F]:
    """``--jobs N``: worker processes; default: the CPUs this process may use."""
    return click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, metavar="N",
                        envvar="CKPTCTL_JOBS", show_envvar=True,
                        help=f"{what} in N worker processes (default: the usable CPUs; 1: one "
                             "at a time in this process).")


def resolve_jobs(value: int | None) -> int:
    from ..workers import usable_cpus

    return value if value is not None else usable_cpus()


QUIET_HELP = ("Print only errors and the result (table, JSON, CSV, report): no per-checkpoint "
              "lines, summaries, notes, warnings or progress bar.")
VERBOSE_HELP = ("Also print details: notes, skipped files and tracebacks of internal errors "
                "(-q wins over -v).")


def _remember(key: str) -> Callable[[click.Context, click.Parameter, bool], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            ctx.meta[key] = True  # meta is shared by the group and its command: Console reads it
    return callback


def quiet_option() -> click.Option:
    """``-q/--quiet``, added to every command by the group (``ckptctl scan -q ...``)."""
    from .console import QUIET_KEY

    return click.Option(["-q", "--quiet"], is_flag=True, expose_value=False,
                        callback=_remember(QUIET_KEY), help=QUIET_HELP)


def verbosity(function: F) -> F:
    """The group's ``-v/--verbose`` and ``-q/--quiet`` (``ckptctl -v convert ...``)."""
    from .console import QUIET_KEY, VERBOSE_KEY

    function = click.option("-q", "--quiet", is_flag=True, expose_value=False,
                            callback=_remember(QUIET_KEY), help=QUIET_HELP)(function)
    return click.option("-v", "--verbose", is_flag=True, expose_value=False,
                        callback=_remember(VERBOSE_KEY), help=VERBOSE_HELP)(function)
