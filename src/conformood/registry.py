"""One registry type for every pluggable family: name -> factory, with a paper reference and a description.

Detectors, objectives, encoders, heads, set families, data sets, protocols, optimisers and schedules are each
one :class:`Registry`. The command line takes its choices and help text from them, never from copied strings.

An entry is either registered with its factory, or *declared* by the dotted path of a factory that lives in a
higher layer (``"conformood.conformal.sets.detector:ConformalSetDetector"``): the name, its facts and its help
are known at once, and the module is imported the first time the factory itself is asked for. So a registry
lists the same names whatever has been imported, and no module registers anything into another as a side effect
of being imported.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Entry:
    """One registered name: its factory, where it comes from, what it is, and family-specific facts."""

    name: str
    factory: Callable[..., Any] | None
    reference: str = ""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    target: str = ""  # "package.module:attribute" of a declared entry whose factory is imported on first use

    def __getattr__(self, key: str) -> Any:  # e.g. ``entry.needs_labels`` for a detector
        try:
            return self.__dict__["extra"][key]
        except KeyError:
            raise AttributeError(f"{self.name!r} has no attribute {key!r}") from None


class Registry:
    """Names of one family (``kind``, e.g. "detector") mapped to factories, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, factory: Callable[..., Any] | None = None, *, reference: str = "",
                 description: str = "", **extra: Any) -> Callable[..., Any]:
        """Register ``factory`` under ``name``; without ``factory``, a decorator that registers what it wraps."""

        def add(f: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, f, reference, description, dict(extra))
            return f

        return add(factory) if factory is not None else add

    def declare(self, name: str, target: str, *, reference: str = "", description: str = "", **extra: Any) -> None:
        """Declare ``name`` by the dotted path ``"package.module:attribute"`` of its factory; the module is
        imported the first time the factory is asked for (:meth:`get`), never by listing the names."""
        module, sep, attribute = target.partition(":")
        if not sep or not module or not attribute:
            raise ValueError(f"{self.kind} {name!r}: target must be 'package.module:attribute', got {target!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, None, reference, description, dict(extra), target)

    def info(self, name: str) -> Entry:
        """The entry of ``name``; a clear error listing the known names otherwise."""
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self._entries)}")
        return self._entries[name]

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name`` (a declared one is imported now, once)."""
        entry = self.info(name)
        if entry.factory is None:
            module, _, attribute = entry.target.partition(":")
            factory = getattr(importlib.import_module(module), attribute)
            entry = Entry(entry.name, factory, entry.reference, entry.description, entry.extra, entry.target)
            self._entries[name] = entry
        return entry.factory  # type: ignore[return-value]

    def create(self, name: str, **options: Any) -> Any:
        """Call the factory of ``name`` with ``options``, refusing options its signature does not accept."""
        factory = self.get(name)
        target = factory.__init__ if inspect.isclass(factory) else factory
        params = inspect.signature(target).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            accepted = [p for p in params if p != "self"]
            unknown = sorted(set(options) - set(accepted))
            if unknown:
                raise ValueError(f"{self.kind} {name!r} has no option(s) {unknown}; it accepts {accepted or 'none'}")
        return factory(**options)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def help(self) -> str:
        """One line per name with its description, for command-line help."""
        return "; ".join(f"{e.name}: {e.description}" if e.description else e.name for e in self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
