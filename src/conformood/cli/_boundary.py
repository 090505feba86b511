"""The command's boundary: user errors become one line on stderr and exit code 2, devices and output folders
are checked before any work starts, and every experiment runs through one runner."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer

#: exceptions that mean the user gave something wrong (a value, a file), never a bug: one line, exit code 2
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, EOFError)

WEIGHTS_HELP = "With --backbone: 'imagenet' (make weights), 'none' (random) or a .safetensors / state-dict file."


def weights_option(value: str) -> str | None:
    """``--weights``: 'none' means random initialisation (``None``); anything else is passed on."""
    return None if value == "none" else value


def click_package() -> Any:
    """The click package that Typer runs on: ``click`` itself, or the copy that newer Typer releases vendor
    (``typer._click``); its exceptions and ``ParameterSource`` must come from the same one."""
    import importlib

    from typer.core import TyperCommand

    base = next(c for c in TyperCommand.__mro__[1:] if c.__name__ == "Command")
    package = base.__module__.rpartition(".")[0]
    return importlib.import_module(package)


def given_on_command_line(ctx: Any, name: str) -> bool:
    """True when option ``name`` was given explicitly on the command line (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def fail(message: object) -> NoReturn:
    """Print ``Error: message`` as one line on stderr and exit with code 2."""
    typer.echo(f"Error: {' '.join(str(message).split())}", err=True)
    raise typer.Exit(2)


def user_errors(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``function``; a user error (a bad value, a missing or unreadable file) becomes one line, exit 2."""
    try:
        return function(*args, **kwargs)
    except typer.Exit:
        raise
    except USER_ERRORS as exc:
        fail(exc)


def config(factory: Callable[..., Any], **fields: Any) -> Any:
    """An experiment's configuration; an invalid field is a user error."""
    return user_errors(factory, **fields)


def resolve_device(device: str, option: str = "--device") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` are checked against
    this machine, so a missing GPU is a clear error before any work starts."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    name, _, index = device.partition(":")
    if name == "cpu" and not index:
        return device
    if name != "cuda" or (index and not index.isdigit()):
        fail(f"{option} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        fail(f"{option} {device}: CUDA is not available on this machine; use --device cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        fail(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def prepare_output(out: Path, overwrite: bool, produces: Iterable[str], keep: Iterable[str] = (),
                   option: str = "--out") -> None:
    """Check ``out`` before a run writes there. It must be a folder (or not exist). An earlier run's outputs
    (the glob patterns ``produces``) are refused unless ``overwrite``, which deletes them first, so that no
    stale file of an earlier run is left beside the new ones; ``keep`` names what may stay (a resumable
    checkpoint, a cache). Nothing else in the folder is touched."""
    for path in _earlier_outputs(out, overwrite, produces, keep, option):
        _remove(path)


def _earlier_outputs(out: Path, overwrite: bool, produces: Iterable[str], keep: Iterable[str] = (),
                     option: str = "--out") -> list[Path]:
    """An earlier run's outputs in the folder ``out``; refused (one line, exit 2) unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        fail(f"{option} {out} is a file; give a folder for the results")
    if not out.exists():
        return []
    kept = {p for pattern in keep for p in out.glob(pattern)}
    found = sorted({p for pattern in produces for p in out.glob(pattern)} - kept)
    if found and not overwrite:
        names = ", ".join(p.name for p in found[:4]) + (" ..." if len(found) > 4 else "")
        fail(f"{option} {out} already holds results of an earlier run ({names}); pass --overwrite to replace "
             "them, or choose another folder")
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def staged_output(out: Path, overwrite: bool, produces: Iterable[str], option: str = "--out") -> Iterator[Path]:
    """A folder to write a run's results into, beside ``out``; only when the run succeeds do they replace the
    earlier run's outputs in ``out`` (refused unless ``overwrite``), so a failed run never destroys a finished
    one. For runs that do not read earlier contents of ``out`` (no resumable checkpoint, no cache)."""
    produces = tuple(produces)
    _earlier_outputs(out, overwrite, produces, option=option)  # refused before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    out.mkdir(parents=True, exist_ok=True)
    for path in _earlier_outputs(out, True, produces, option=option):
        _remove(path)
    for path in staging.iterdir():
        if (out / path.name).exists():
            _remove(out / path.name)
        os.replace(path, out / path.name)
    staging.rmdir()


def run_experiment(run: Callable[..., dict], cfg: Any, out: Path, show: Callable[[dict], None],
                   **options: Any) -> dict:
    """The one runner of every experiment: ``run(cfg, out, **options)`` writes JSON and its report, then
    ``show(result)`` prints the summary. User errors become one line (exit code 2)."""
    result = user_errors(run, cfg, out, **options)
    show(result)
    return result


def set_data_root(data_root: Path | None) -> None:
    """``--data-root``: the folder of the named data sets and of relative paths in recipes, for this process
    (it replaces ``$CONFORMOOD_DATA``)."""
    if data_root is None:
        return
    if not data_root.is_dir():
        fail(f"--data-root {data_root} is not a folder")
    os.environ["CONFORMOOD_DATA"] = str(data_root.resolve())


def parse_options(items: list[str] | None) -> dict:
    """``--option key=value`` pairs; values are JSON where they parse, else strings."""
    import json

    options = {}
    for item in items or []:
        if "=" not in item:
            fail(f"--option must be key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


#: the release after which the former spellings of options stop working
FORMER_SPELLINGS_UNTIL = "0.5.0"


def former_spelling(value: Any, former: Any, new: str, old: str, default: Any = None) -> Any:
    """Merge an option given by its former name ``old`` into its one name ``new``: the former spelling works,
    with one deprecation line on stderr, until :data:`FORMER_SPELLINGS_UNTIL`; both spellings with different
    values are refused."""
    if former is None:
        return value
    typer.echo(f"Warning: {old} is deprecated; use {new} (the old spelling works until conformood "
               f"{FORMER_SPELLINGS_UNTIL})", err=True)
    if value is not None and value != default and value != former:
        fail(f"give {new} only ({old} is its former name)")
    return former


def echo_warnings(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """:func:`user_errors`, with every warning the library raises printed once as one line on stderr
    (``Warning: …``), never as Python's two-line warning with a source line."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = user_errors(function, *args, **kwargs)
    seen = set()
    for w in caught:
        text = " ".join(str(w.message).split())
        if text not in seen:
            seen.add(text)
            typer.echo(f"Warning: {text}", err=True)
    return result
