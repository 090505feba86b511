"""The installed version of conformood (from the package metadata; the source tree's own when not installed)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("conformood")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare source tree
    __version__ = "0.0.0+unknown"
