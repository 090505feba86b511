"""What ``conformood inspect run`` writes: per-image results (CSV, JSON), anomaly-map and overlay PNGs, and a
self-contained HTML report with the overlays of the flagged parts first.

Maps are shown on one colour scale for every image: 0 to the inspector's ``map_scale`` (the patch distance that
the (1 − α) quantile of good calibration parts reaches), so a red region means "further from every good patch
than the worst patch of nine good parts in ten" at α = 0.1, whatever the image.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_path, write_json

THUMB = 220  # the long side of the report's thumbnails, in pixels
MAX_GALLERY = 120  # overlays embedded in the report (flagged first, then by score); every one is in overlays/


def _colormap(values: np.ndarray) -> np.ndarray:
    """uint8 RGB (h, w, 3) of ``values`` in [0, 1] through matplotlib's "inferno"."""
    from matplotlib import colormaps

    return (colormaps["inferno"](np.clip(values, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 3) of a float (c, h, w) image in [0, 1]."""
    x = np.clip(image, 0.0, 1.0)
    x = np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x[:3]
    return (x.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)


def map_on_image(anomaly_map: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """The part of a map (on the model input) that covers the image (``box`` = top, left, height, width),
    resized to the image's own ``size`` (bilinear)."""
    import torch

    from ..data.arrays import resize_bilinear

    top, left, h, w = box
    crop = anomaly_map[top:top + h, left:left + w]
    return resize_bilinear(torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None], size)[0, 0
                                                                                                            ].numpy()


OVERLAY_FROM = 0.7  # the overlay starts at 70 % of the scale and is fully red at the scale and above


def overlay(image: np.ndarray, scaled_map: np.ndarray) -> np.ndarray:
    """uint8 RGB: the image in gray, and where the map reaches ``OVERLAY_FROM`` of the scale a colour from yellow
    to red (red at the scale: as far from every good patch as the worst patch of the (1 − α) quantile of good
    parts), blended in more strongly as the value grows."""
    gray = _to_rgb(image).mean(axis=2, keepdims=True).repeat(3, axis=2).astype(np.float32)
    level = np.clip((scaled_map - OVERLAY_FROM) / (1.0 - OVERLAY_FROM), 0.0, 1.0)
    colour = np.stack([np.full_like(level, 255.0), 230.0 * (1.0 - level), np.zeros_like(level)], axis=-1)
    weight = np.where(scaled_map >= OVERLAY_FROM, 0.35 + 0.4 * level, 0.0)[..., None]
    return (gray * (1 - weight) + colour * weight + 0.5).astype(np.uint8)


def region_overlay(shown: np.ndarray, region: np.ndarray, caption: str) -> np.ndarray:
    """An overlay with the region's outline in cyan and a strip below stating the region's guarantee (wrapped to
    the image's width)."""
    from PIL import Image, ImageDraw, ImageFont

    inside = np.pad(region, 1, mode="edge")
    edge = region & ~(inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:])
    out = shown.copy()
    out[edge] = (0, 220, 255)
    w = out.shape[1]
    font = ImageFont.load_default(size=11)
    lines = [""]
    for word in caption.split():
        trial = f"{lines[-1]} {word}".strip()
        if lines[-1] and font.getlength(trial) > w - 4:
            lines.append(word)
        else:
            lines[-1] = trial
    strip = Image.new("RGB", (w, 13 * len(lines) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for k, line in enumerate(lines):
        draw.text((2, 2 + 13 * k), line, fill=(0, 0, 0), font=font)
    return np.concatenate([out, np.asarray(strip)], axis=0)


def region_png_names(names: list[str]) -> list[str]:
    """``regions/<dir>/<image stem>_region.png`` for every image; where two images of one folder share a stem
    (``a.jpg`` and ``a.png``), the full name keeps them apart (``a.jpg_region.png``)."""
    stems = [n.rsplit(".", 1)[0] for n in names]
    seen: dict[str, int] = {}
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
    return [f"{stem if seen[stem] == 1 else name}_region.png" for stem, name in zip(stems, names)]


def _png(array: np.ndarray, path: Path | None = None, thumb: int | None = None) -> bytes:
    """PNG bytes of ``array`` (written to ``path`` when given); a ``thumb`` is a JPEG of that long side instead, to
    keep the report small."""
    from PIL import Image

    img = Image.fromarray(array)
    buf = io.BytesIO()
    if thumb is not None:
        img.thumbnail((thumb, thumb))
        img.save(buf, format="JPEG", quality=85)
    else:
        img.save(buf, format="PNG")
    data = buf.getvalue()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return data


def write_inspection(out: str | Path, inspection: Any, boxes: list[tuple[int, int, int, int]], map_scale: float,
                     alpha: float, summary: dict, maps: bool = True) -> dict:
    """Write ``results.csv``, ``results.json``, ``maps/<name>.png``, ``overlays/<name>.png`` and
    ``report.html`` into ``out``; returns the JSON written. ``inspection``: what ``Inspector.inspect`` returns
    (names, scores, p_values, flags, maps on the model input, sizes, images, skipped, ignored)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"image": n, "score": float(s), "p_value": float(p), "flag": bool(f)}
            for n, s, p, f in zip(inspection.names, inspection.scores, inspection.p_values, inspection.flags)]
    regions = getattr(inspection, "regions", None)
    region_files = region_png_names(inspection.names) if regions is not None else []
    for i, r in enumerate(rows if regions is not None else []):
        r |= {"region_area": float(regions[i].mean()), "region": f"regions/{region_files[i]}"}
    with atomic_path(out / "results.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["image", "score", "p_value", "flag"] + (
                ["region_area", "region"] if regions is not None else []))
            writer.writeheader()
            writer.writerows({**r, "score": f"{r['score']:.6g}", "p_value": f"{r['p_value']:.6g}",
                              "flag": int(r["flag"]), **({"region_area": f"{r['region_area']:.6g}"} if
                                                         regions is not None else {})} for r in rows)
    thumbs: dict[int, bytes] = {}
    peaks = inspection.maps.reshape(len(rows), -1).max(axis=1) if len(rows) else np.empty(0)
    order = sorted(range(len(rows)), key=lambda i: (not rows[i]["flag"], -rows[i]["score"], -peaks[i]))
    gallery = set(order[:MAX_GALLERY])
    for i, name in enumerate(inspection.names):
        if regions is not None:
            _png((regions[i] * 255).astype(np.uint8), out / "regions" / region_files[i])
        if not maps and i not in gallery:
            continue
        scaled = map_on_image(inspection.maps[i], boxes[i], inspection.sizes[i]) / map_scale
        if maps:
            _png(_colormap(scaled), out / "maps" / f"{name}.png")
        shown = overlay(inspection.images[i], scaled)
        if regions is not None:
            shown = region_overlay(shown, regions[i], f"{summary['regions']['caption']}; this region: "
                                                      f"{regions[i].mean():.1%} of the image")
        if maps:
            _png(shown, out / "overlays" / f"{name}.png")
        if i in gallery:
            thumbs[i] = _png(shown, thumb=THUMB)
    result = {**summary, "alpha": alpha, "columns": {
        "score": "anomaly score (higher = more anomalous)",
        "p_value": "conformal p-value against the good calibration parts",
        "flag": "true where the decision rule flags the part (p-value <= alpha, or the PAC rule)",
        **({"region_area": "fraction of the image inside its defect region",
            "region": "the region as a mask PNG at the image's own size"} if regions is not None else {})},
        "counts": {"images": len(rows), "flagged": int(sum(r["flag"] for r in rows)),
                   "skipped": len(inspection.skipped)},
        "skipped": inspection.skipped, "ignored": inspection.ignored, "images": rows}
    write_json(out / "results.json", result)
    _report(out / "report.html", rows, order, thumbs, result)
    return result


def _report(path: Path, rows: list[dict], order: list[int], thumbs: dict[int, bytes], result: dict) -> None:
    alpha = result["alpha"]
    counts = result["counts"]
    guarantee = result.get("guarantee", "")
    left_out = f"; {counts['skipped']} unreadable file(s) left out" if counts["skipped"] else ""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>conformood inspection</title><style>",
             "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.4}",
             ".grid{display:flex;flex-wrap:wrap;gap:10px}.card{width:230px;font-size:0.85em}",
             ".card img{width:100%;height:auto;border:3px solid #ccc}.card.flag img{border-color:#c0392b}",
             "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 7px;font-size:0.9em}",
             "td.n{text-align:right}.flag td{background:#fbe9e7}</style></head><body>",
             "<h1>Inspection results</h1>",
             f"<p><strong>{counts['flagged']}</strong> of {counts['images']} image(s) flagged at α = {alpha}"
             f"{left_out}.</p>",
             f"<p>{html.escape(guarantee)}</p>",
             *([f"<p><strong>Defect regions</strong> (cyan outline; mask PNGs in <code>regions/</code>): "
                f"{html.escape(result['regions']['guarantee'])}</p>"] if result.get("regions") else []),
             "<p>Overlays: the anomaly map on one scale for every image. Unmarked: like the good parts; yellow to "
             "red: from 70 % to 100 % and more of the distance that the worst patch of a good part reaches in "
             "(1 − α) of the good calibration parts.</p>",
             "<h2>Flagged first, then by score (ties: the strongest map first)</h2><div class='grid'>"]
    for i in order:
        if i not in thumbs:
            continue
        r = rows[i]
        data = base64.b64encode(thumbs[i]).decode()
        parts.append(f"<div class='card{' flag' if r['flag'] else ''}'><img alt='{html.escape(r['image'])}' "
                     f"src='data:image/jpeg;base64,{data}'><br>{html.escape(r['image'])}<br>score {r['score']:.4g}, "
                     f"p = {r['p_value']:.3g}{' — <strong>flagged</strong>' if r['flag'] else ''}</div>")
    parts.append("</div>")
    if len(thumbs) < len(rows):
        parts.append(f"<p>{len(rows) - len(thumbs)} more in the table; every overlay is in <code>overlays/</code>.</p>")
    parts.append("<h2>Every image</h2><table><tr><th>image</th><th>score</th><th>p-value</th><th>flag</th></tr>")
    for i in order:
        r = rows[i]
        parts.append(f"<tr{' class=flag' if r['flag'] else ''}><td>{html.escape(r['image'])}</td>"
                     f"<td class=n>{r['score']:.5g}</td><td class=n>{r['p_value']:.4g}</td>"
                     f"<td>{'flagged' if r['flag'] else ''}</td></tr>")
    parts.append("</table>")
    prov = result.get("provenance", {})
    parts.append("<h2>Provenance</h2><table>")
    for key in ("conformood_version", "created_utc", "command", "seed"):
        if key in prov:
            parts.append(f"<tr><td>{key}</td><td>{html.escape(str(prov[key]))}</td></tr>")
    model = result.get("model", {})
    for key, value in model.items():
        parts.append(f"<tr><td>model {html.escape(key)}</td><td>{html.escape(str(value))}</td></tr>")
    parts.append("</table></body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
