"""The provenance block of a result (:func:`conformood.results.provenance`) as rows, Markdown and HTML."""

from __future__ import annotations

import json


def provenance_rows(block: dict | None) -> list[tuple[str, str]]:
    """(field, value) rows: version and commit, command, seed, each input's path and digest, versions, time."""
    if not block:
        return [("provenance", "not recorded (a result written before conformood 0.3)")]
    git = block.get("git")
    rows = [
        ("conformood", str(block.get("conformood_version"))),
        ("git commit", "not a git checkout" if not git else git["commit"] + (" (uncommitted changes)"
                                                                            if git.get("dirty") else "")),
        ("command", str(block.get("command"))),
        ("seed", str(block.get("seed"))),
    ]
    for name, record in (block.get("inputs") or {}).items():
        rows.append((f"input {name}", f"{record['path']} ({record.get('sha256') or 'not a file'})"))
    rows.append(("python / torch / numpy", f"{block.get('python')} / {block.get('torch')} / {block.get('numpy')}"))
    rows.append(("created (UTC)", str(block.get("created_utc"))))
    rows.append(("config", json.dumps(block.get("config"), sort_keys=True, default=str)))
    return rows


def provenance_markdown(block: dict | None) -> list[str]:
    """The provenance block as a Markdown section (lines)."""
    lines = ["## Provenance", "", "| field | value |", "|---|---|"]
    for key, value in provenance_rows(block):
        escaped = value.replace("|", "\\|")
        lines.append(f"| {key} | {escaped} |")
    return [*lines, ""]
