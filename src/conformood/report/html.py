"""A self-contained HTML page (figures embedded as base64, no external URL) rendered from a result."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from ..io import atomic_path

_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px}"
    "td{text-align:right}td:first-child,th:first-child{text-align:left}th{background:#eee}"
    "code{background:#f3f3f3;padding:0 3px;border-radius:3px}"
    "figure{margin:1.5em 0}img{width:100%;height:auto}figcaption{color:#444;font-size:0.95em}"
    "table.provenance td{text-align:left;font-size:0.9em;word-break:break-all}"
)


def inline_markdown(text: str) -> str:
    """Escape ``text`` for HTML, rendering `code` spans and **bold** as Markdown does."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def render_html(title: str, sections: list[tuple[str, str]], tables: list[tuple[str, list[str], list[list[str]]]],
                figures: list[tuple[Path, str]], path: str | Path,
                provenance_rows: list[tuple[str, str]] | None = None) -> Path:
    """Write one offline page: paragraphs (inline Markdown), tables, PNG figures with their captions embedded in
    the file, and the provenance of the result."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, text in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{inline_markdown(text)}</p>")
    for caption, header, rows in tables:
        parts.append(f"<h2>{html.escape(caption)}</h2><table><tr>")
        parts.extend(f"<th>{inline_markdown(h)}</th>" for h in header)
        parts.append("</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{inline_markdown(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    for fig, caption in figures:
        data = base64.b64encode(Path(fig).read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{inline_markdown(caption)}</figcaption></figure>")
    if provenance_rows:
        parts.append("<h2>Provenance</h2><table class='provenance'>")
        parts.extend(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in provenance_rows)
        parts.append("</table>")
    parts.append("</body></html>")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path
