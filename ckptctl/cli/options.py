"""Options shared by several commands, defined once so they read and behave the same."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def no_recursive(function: F) -> F:
    return click.option("--no-recursive", is_flag=True,
                        help="Only look at the given folders, not below.")(function)


def output_format(*choices: str, help: str = "Output format.") -> Callable[[F], F]:
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=choices[0],
                        show_default=True, help=help)


def output_dir(help: str) -> Callable[[F], F]:
    return click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), help=help)


#: convert's wording; scan and validate look where it wrote
OUTPUT_DIR_LOOK = ("Look for outputs under DIR, as written by convert --output-dir "
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
