"""The ``dgeo`` Typer app: registers the commands and turns dgeo errors into one-line messages."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from dgeo.errors import DgeoError

app = typer.Typer(
    name="dgeo",
    help="dgeo: learned visual localization. Run `dgeo COMMAND --help` for examples.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from dgeo import __version__

        typer.echo(f"dgeo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """dgeo: learned visual localization. Run `dgeo COMMAND --help` for examples."""


def _register() -> None:
    """Import the command modules; each adds its commands to :data:`app`."""
    from dgeo.cli import commands  # noqa: F401


def main() -> None:
    """Entry point of the ``dgeo`` console script."""
    _register()
    try:
        app()
    except DgeoError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
