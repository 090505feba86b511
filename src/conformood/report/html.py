"""A self-contained HTML page (figures embedded as base64) rendered from a Markdown-like result."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..io import atomic_path


def render_html(title: str, sections: list[tuple[str, str]], tables: list[tuple[str, list[str], list[list[str]]]],
                figures: list[Path], path: str | Path) -> Path:
    """Write one offline page: paragraphs, tables and PNG figures embedded in the file."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}"
        "th{background:#eee}img{max-width:100%;margin:1em 0}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, text in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(text)}</p>")
    for caption, header, rows in tables:
        parts.append(f"<h2>{html.escape(caption)}</h2><table><tr>")
        parts.extend(f"<th>{html.escape(h)}</th>" for h in header)
        parts.append("</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    for fig in figures:
        data = base64.b64encode(Path(fig).read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(Path(fig).stem)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(Path(fig).name)}</figcaption></figure>")
    parts.append("</body></html>")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts))
    return path
