"""The one output sink of the CLI: results on stdout (tables on a terminal, JSON/CSV for
scripts), errors, warnings and notes on stderr, and one way to end with an exit code.

Every command gets a ``Console`` and never calls ``click.echo`` or ``sys.exit`` itself.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Sequence
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


class Console:
    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose

    # --- stderr: what happened along the way ---------------------------------------------

    def message(self, text: str) -> None:
        click.echo(printable(text), err=True)

    def error(self, path: object, reason: str) -> None:
        click.echo(f"error: {printable(path)}: {printable(reason)}", err=True)

    def warning(self, text: str) -> None:
        click.echo(f"warning: {printable(text)}", err=True)

    def warnings(self, texts: Sequence[str]) -> None:
        for text in texts:
            self.warning(text)

    def note(self, text: str) -> None:
        click.echo(f"note: {printable(text)}", err=True)

    def detail(self, text: str) -> None:
        """Shown only with --verbose (e.g. the traceback of an internal error)."""
        if self.verbose:
            click.echo(text, err=True)

    # --- stdout: the result ----------------------------------------------------------------

    def line(self, text: str) -> None:
        click.echo(printable(text))

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

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        from rich import box
        from rich.console import Console as RichConsole
        from rich.table import Table
        from rich.text import Text

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


def fmt_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
