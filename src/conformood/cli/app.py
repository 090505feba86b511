"""The ``conformood`` Typer application, its ``--version`` and the help filled from the registries."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup


def _flags_without_placeholders(command: Any, ctx: Any) -> None:
    """A flag is shown as ``--x / --no-x`` (or ``--x``) without a value placeholder such as ``<bool>``."""
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False):
            param.metavar = ""


class Group(TyperGroup):
    """The ``conformood`` command and its groups (``reproduce``)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _flags_without_placeholders(self, ctx)
        super().format_help(ctx, formatter)


app = typer.Typer(
    name="conformood",
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Contrastive OOD and anomaly detection with conformal guarantees.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Command(TyperCommand):
    """Every conformood command: a flag is shown as ``--x / --no-x`` without a value placeholder."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _flags_without_placeholders(self, ctx)
        super().format_help(ctx, formatter)


class RegistryHelp(Command):
    """Fills the option help's registry placeholders ({datasets}, {objectives}, {protocols}, {recipes}) from
    the registries when help is shown, so that the choices come from the registries while starting a command
    imports no torch."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from ..data import DATASETS, protocol_help
        from ..train.objective_registry import OBJECTIVES
        from ..train.run_config import recipe_names

        fill = {"{datasets}": ", ".join(DATASETS.names()), "{objectives}": ", ".join(OBJECTIVES.names()),
                "{protocols}": protocol_help(), "{recipes}": ", ".join(recipe_names())}
        for param in self.params:
            for token, text in fill.items():
                if getattr(param, "help", None) and token in param.help:
                    param.help = param.help.replace(token, text)
        super().format_help(ctx, formatter)


def _version(value: bool) -> None:
    if value:
        from .._version import __version__

        typer.echo(f"conformood {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Contrastive OOD and anomaly detection with conformal guarantees."""
