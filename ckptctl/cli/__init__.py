"""The ``ckptctl`` command line: a thin click layer over ``ckptctl.ops``.

Commands live one per module and are imported only when invoked, so ``ckptctl --help``
and the light commands never pay for (or import) numpy-heavy code, torch or tensorflow.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from typing import Any

import click

from .. import __version__
from . import options

#: command name -> (module, one-line help shown by ``ckptctl --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "scan": ("ckptctl.cli.scan", "Find checkpoints and say what they are and whether they are converted."),
    "convert": ("ckptctl.cli.convert", "Write <stem>.weights.h5 and <stem>.metadata.yaml next to checkpoints."),
    "validate": ("ckptctl.cli.validate", "Check sidecars against the schema and the files they describe."),
    "catalog": ("ckptctl.cli.catalog", "Table of experiments and their best checkpoints, from sidecars alone."),
    "clean": ("ckptctl.cli.clean", "Remove the files ckptctl wrote (dry run unless --yes), never a source."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[cmd_name][0])
        command: click.Command = module.command
        if not any(param.name == "quiet" for param in command.params):
            command.params.append(options.quiet_option())  # -q/--quiet on every command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_text) for name, (_, help_text) in COMMANDS.items()])


@click.group("ckptctl", cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckptctl")
@options.verbosity
def cli() -> None:
    """Scan, convert, validate and catalog ML checkpoints, safely.

    Reading a checkpoint never runs code from it. Typical use:

    \b
      ckptctl scan outputs/
      ckptctl convert --outputs-dir outputs/
      ckptctl validate --strict outputs/
      ckptctl catalog outputs/ --best val/hmean
    """


#: exit code for Ctrl-C (128 + SIGINT), as shells report it
EXIT_INTERRUPTED = 130
#: exit code for SIGTERM (128 + 15)
EXIT_TERMINATED = 143


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's kill, ``timeout``): unwind like Ctrl-C, so worker processes are
    stopped and temporaries removed, then exit 143."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> Any:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return cli.main(args=argv, prog_name="ckptctl", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt) as exc:
        # also during a lazy import, before click could turn it into "Aborted!"
        click.echo("interrupted: everything reported above is finished and complete; no "
                   "partial outputs were left (a conversion in progress removed its hidden "
                   "temporaries)", err=True)
        # click turns the interrupt into Abort, keeping it as the cause
        terminated = any(isinstance(e, _Terminated) for e in (exc, exc.__cause__, exc.__context__))
        sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
