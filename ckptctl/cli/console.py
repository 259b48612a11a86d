"""The one output sink of the CLI: results on stdout (tables on a terminal, JSON/CSV for
scripts), errors, warnings and notes on stderr, and one way to end with an exit code.

Every command gets a ``Console`` and never calls ``click.echo`` or ``sys.exit`` itself.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

#: Exit codes (README: Exit codes)
EXIT_OK = 0
EXIT_FAILED = 1  # some checkpoint or sidecar failed; the others were still handled
EXIT_USAGE = 2   # click's own code for bad options


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    """``text`` safe for a terminal, one line: control characters (a file name's newline or
    ESC sequence) and undecodable bytes of a file name are shown escaped, ``ls``-style, so
    a name can neither forge an output line nor drive the terminal."""
    value = str(text)
    if value.isprintable():
        return value
    out = []
    for char in value:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif not char.isprintable() and char != " ":
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


#: where the group-level and per-command -v/-q flags are kept (``click.Context.meta`` is
#: shared by a command and its group)
VERBOSE_KEY = "ckptctl.verbose"
QUIET_KEY = "ckptctl.quiet"


class Console:
    """``verbose``/``quiet`` default to the -v/--verbose and -q/--quiet given on the command
    line (``ckptctl -v convert ...``, ``ckptctl scan -q ...``).

    quiet: only errors and the result (a table, JSON, CSV, a report document) are printed;
    per-checkpoint lines, summaries, notes, warnings and the progress bar are not.
    verbose: also details (tracebacks of internal errors, notes, skipped files)."""

    def __init__(self, verbose: bool = False, quiet: bool | None = None) -> None:
        ctx = click.get_current_context(silent=True)
        meta: dict[str, Any] = ctx.meta if ctx is not None else {}
        self.quiet = bool(meta.get(QUIET_KEY, False)) if quiet is None else quiet
        self.verbose = (verbose or bool(meta.get(VERBOSE_KEY, False))) and not self.quiet
        #: while a progress bar is live: rich's console, which prints lines above the bar
        self._live: Any = None

    def _err(self, text: str) -> None:
        if self._live is not None:
            from rich.text import Text

            self._live.print(Text(text), highlight=False)
        else:
            click.echo(text, err=True)

    def _out(self, text: str) -> None:
        if self._live is not None and sys.stdout.isatty():
            from rich.text import Text

            self._live.print(Text(text), highlight=False)  # the same terminal: above the bar
        else:
            click.echo(text)

    # --- stderr: what happened along the way ---------------------------------------------

    def message(self, text: str) -> None:
        if not self.quiet:
            self._err(printable(text))

    def error(self, path: object, reason: str) -> None:
        self._err(f"error: {printable(path)}: {printable(reason)}")

    def warning(self, text: str) -> None:
        if not self.quiet:
            self._err(f"warning: {printable(text)}")

    def warnings(self, texts: Sequence[str]) -> None:
        for text in texts:
            self.warning(text)

    def note(self, text: str) -> None:
        if not self.quiet:
            self._err(f"note: {printable(text)}")

    def detail(self, text: str) -> None:
        """Shown only with --verbose (e.g. the traceback of an internal error)."""
        if self.verbose:
            self._err(text)

    def progress(self, items: Sequence[tuple[object, int]],
                 what: str = "converting") -> contextlib.AbstractContextManager[Callable[[], None]]:
        """A bar on stderr counting the bytes of ``items`` (label, size), handled in order:
        each call of the function it yields marks the next item done, and the bar names the
        one after it. While the bar is live, every line this console prints goes through
        rich's console, which puts it above the bar, so the bar redraws cleanly and leaves
        nothing behind (it is transient). Only on a terminal, for two items or more, and
        never with --quiet."""
        if self.quiet or len(items) < 2 or not sys.stderr.isatty():
            return contextlib.nullcontext(lambda: None)
        return self._progress(items, what)

    @contextlib.contextmanager
    def _progress(self, items: Sequence[tuple[object, int]],
                  what: str) -> Iterator[Callable[[], None]]:
        from rich.console import Console as RichConsole
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.table import Column

        live = RichConsole(stderr=True, highlight=False)
        bar = Progress(
            TextColumn(what), BarColumn(), DownloadColumn(binary_units=True),
            TransferSpeedColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[current]}", markup=False,
                       table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
            console=live, transient=True, expand=True, redirect_stdout=False,
            redirect_stderr=False)
        labels = [printable(label) for label, _ in items]
        sizes = [max(0, size) for _, size in items]
        position = 0
        with bar:
            task = bar.add_task(what, total=max(1, sum(sizes)), current=labels[0])
            self._live = live

            def advance() -> None:
                nonlocal position
                if position >= len(items):
                    return
                position += 1
                bar.update(task, advance=sizes[position - 1],
                           current=labels[position] if position < len(items) else "")

            try:
                yield advance
            finally:
                self._live = None

    # --- stdout: the result ----------------------------------------------------------------

    def line(self, text: str) -> None:
        """A line for people on stdout (a checkpoint's result); not with --quiet."""
        if not self.quiet:
            self._out(printable(text))

    def json(self, data: Any) -> None:
        """Strict JSON: a NaN or infinite value (a diverged metric) is written as null."""
        click.echo(json.dumps(_finite(data), indent=2, ensure_ascii=False, allow_nan=False,
                              default=str))

    def document(self, text: str) -> None:
        """A whole machine-readable document (JUnit XML, SARIF, workflow commands) exactly
        as its builder (``ckptctl.reports``) wrote it: escaped for its own format already."""
        click.echo(text)

    def json_line(self, data: Any) -> None:
        """One compact JSON object per line (JSON Lines), flushed: a scheduler or CI follows
        a long run as it goes. ASCII-escaped: an undecodable file name stays lossless."""
        click.echo(json.dumps(_finite(data), ensure_ascii=True, allow_nan=False, default=str,
                              separators=(",", ":")))
        sys.stdout.flush()

    def csv(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
        click.echo(buffer.getvalue(), nl=False)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]],
              root: Path | None = None) -> None:
        """A table; on a terminal too narrow for it, paths under ``root`` (the one folder the
        user gave) are shown relative to it rather than wrapped mid-name."""
        from rich import box
        from rich.console import Console as RichConsole
        from rich.table import Table
        from rich.text import Text

        if sys.stdout.isatty() and root is not None:
            columns, rows = fit_paths(columns, rows, root, RichConsole().width)
        table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, show_edge=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            # Text, never markup: a Hydra sweep folder "act=[relu,gelu]" prints as itself
            table.add_row(*[Text("" if v is None else printable(v)) for v in row])
        if sys.stdout.isatty():
            RichConsole(highlight=False).print(table)
            return
        # Piped output: one row per line (no wrapping at 80 columns), no colour, no trailing blanks.
        console = RichConsole(width=1000, no_color=True, highlight=False, color_system=None)
        with console.capture() as capture:
            console.print(table)
        lines = [line.rstrip() for line in capture.get().splitlines()]
        click.echo("\n".join(line for line in lines if line.strip()))

    # --- the end ---------------------------------------------------------------------------

    def exit(self, code: int) -> NoReturn:
        raise SystemExit(code)

    def usage_error(self, text: str) -> NoReturn:
        raise click.UsageError(text)

    def fail(self, text: str) -> NoReturn:
        """A command-level failure (not about one file): ``error: text``, exit 1."""
        raise click.ClickException(text)


def fit_paths(columns: Sequence[str], rows: Sequence[Sequence[Any]], root: Path,
              width: int) -> tuple[list[str], list[list[Any]]]:
    """When the table is wider than ``width``, every cell that is a path under ``root`` is
    made relative to it, and its column header says so (``PATH (in outputs/)``)."""
    cells = [[printable("" if v is None else v) for v in row] for row in rows]
    natural = sum(max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns))
    natural += 3 * (len(columns) - 1)
    prefix = str(root).rstrip(os.sep) + os.sep
    if natural <= width or str(root) in ("", "."):
        return list(columns), [list(row) for row in rows]
    shortened: set[int] = set()
    out = []
    for row in rows:
        new = list(row)
        for i, value in enumerate(row):
            if isinstance(value, str | Path) and str(value).startswith(prefix):
                new[i] = str(value)[len(prefix):]
                shortened.add(i)
        out.append(new)
    header = [f"{c} (in {prefix})" if i in shortened else c for i, c in enumerate(columns)]
    return header, out


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 row``, ``2 rows``, ``0 problems``: a count with its noun agreeing."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


def fmt_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
