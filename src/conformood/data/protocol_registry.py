"""Evaluation protocols by name: ``NAME:ARGUMENT`` strings such as ``one-vs-rest:3`` or ``pair:NAME``."""

from __future__ import annotations

import os

from ..registry import Registry
from .arrays import ImageArrays
from .named import NAMED_OOD_PAIRS, named_ood_pair
from .protocols import OODTask, few_shot_ood, leave_one_class_out, one_vs_rest
from .splits import Split

PROTOCOLS: Registry = Registry("protocol")


@PROTOCOLS.register("one-vs-rest", reference="FIRM section 4", argument="C", needs_dataset=True,
                    description="class C is in-distribution, every other class OOD")
def _one_vs_rest(data: ImageArrays, split: Split, argument: str, seed: int) -> OODTask:
    return one_vs_rest(data, split, argument)


@PROTOCOLS.register("leave-one-class-out", reference="CLP paper section 4", argument="C", needs_dataset=True,
                    description="every class but C is in-distribution, C is OOD")
def _leave_one_class_out(data: ImageArrays, split: Split, argument: str, seed: int) -> OODTask:
    return leave_one_class_out(data, split, argument)


@PROTOCOLS.register("few-shot", reference="FIRM section 4 (few-shot OOD)", argument="K", needs_dataset=True,
                    description="K labelled in-distribution images per class")
def _few_shot(data: ImageArrays, split: Split, argument: str, seed: int) -> OODTask:
    try:
        shots = int(argument)
    except ValueError:
        raise ValueError(f"few-shot needs a whole number of shots, got {argument!r}") from None
    return few_shot_ood(data, split, shots, seed=seed)


@PROTOCOLS.register("pair", argument="NAME", needs_dataset=False,
                    description=f"a named near/far OOD pair ({', '.join(NAMED_OOD_PAIRS.names())})")
def _pair(data: ImageArrays | None, split: Split | None, argument: str, seed: int,
          data_dir: str | os.PathLike | None = None) -> OODTask:
    return named_ood_pair(argument, data_dir=data_dir, seed=seed)


def parse_protocol(protocol: str) -> tuple[str, str]:
    """``"NAME:ARGUMENT"`` -> (registered name, argument), with a clear error for anything else."""
    name, _, argument = str(protocol).partition(":")
    examples = ", ".join(f"'{n}:{PROTOCOLS.info(n).argument}'" for n in PROTOCOLS)
    if not argument:
        raise ValueError(f"protocol must look like one of {examples}, got {protocol!r}")
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return name, argument


def protocol_task(protocol: str, data: ImageArrays | None = None, split: Split | None = None,
                  seed: int = 0) -> OODTask:
    """The task of ``protocol`` on a labelled data set and its split (a named pair needs neither)."""
    name, argument = parse_protocol(protocol)
    if PROTOCOLS.info(name).needs_dataset and (data is None or split is None):
        raise ValueError(f"protocol {name!r} needs a data set and its split")
    return PROTOCOLS.get(name)(data, split, argument, seed)


def protocol_help() -> str:
    """``NAME:ARGUMENT`` forms with their descriptions, for command-line help."""
    return "; ".join(f"{n}:{PROTOCOLS.info(n).argument} ({PROTOCOLS.info(n).description})" for n in PROTOCOLS)
