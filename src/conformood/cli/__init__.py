"""The ``conformood`` command: it parses arguments and calls the library, nothing more.

A user error (a bad value, a missing or unreadable file, an unavailable device, an output folder that holds an
earlier run) is one line on stderr and exit code 2, never a traceback; :func:`main` is the installed entry
point and applies the same rule to the parser's own errors.
"""

from __future__ import annotations

import sys

from .. import allocator
from . import commands, deploy, evaluate, inspect, reproduce  # noqa: F401  (registers the commands)
from .app import app

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Run the command line; parser errors (an unknown option, a value of the wrong type) are one line too.

    The process keeps freed memory for reuse (:func:`conformood.allocator.keep_freed_memory`: on glibc, CPU
    fine-tuning and extraction run about 2.5× as fast) unless ``CONFORMOOD_KEEP_FREED_MEMORY=0``.
    """
    import importlib

    import typer
    from typer.main import get_command

    try:
        if allocator.wanted():
            allocator.keep_freed_memory()
    except ValueError as exc:
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(2)

    from ._boundary import click_package

    click = click_package()
    exceptions = importlib.import_module(f"{click.__name__}.exceptions")
    # typer.Abort, and click's own Abort where the click in use has one (the copy newer Typer releases vendor
    # raises typer's)
    aborts = tuple({typer.Abort, getattr(exceptions, "Abort", typer.Abort)})
    command = get_command(app)
    try:
        code = command.main(args=argv, prog_name="conformood", standalone_mode=False)
    except exceptions.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx is not None else str(exc))
        code = 0
    except exceptions.ClickException as exc:
        path = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "conformood"
        typer.echo(f"Error: {' '.join(exc.format_message().split())} (see {path} --help)", err=True)
        code = exc.exit_code
    except aborts:
        typer.echo("Aborted.", err=True)
        code = 130
    sys.exit(code or 0)
