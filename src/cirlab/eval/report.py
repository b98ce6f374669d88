"""A self-contained HTML report: metric tables per method and example queries with thumbnails."""
from __future__ import annotations

import base64
import html
import io
import random
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..data.record import CIRDataset
from ..fileutil import atomic_write_text
from .evaluate import EvalResult

THUMB = 72
COLUMNS = ["recall@1", "recall@5", "recall@10", "recall@50", "map@5", "map@10", "map@25", "map@50"]

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
.q{display:flex;align-items:center;gap:6px;margin:6px 0}
.q figure{margin:0;text-align:center;font-size:11px}
.q img{width:72px;height:72px;image-rendering:pixelated;border:3px solid #ddd}
.q img.ok{border-color:#1a9c3c}
.q .ref img{border-color:#555}
.txt{width:220px;font-size:13px}
.fig img{max-width:100%}
"""


def _data_uri(path: Path, cache: dict[str, str]) -> str:
    key = str(path)
    if key not in cache:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
        cache[key] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return cache[key]


def _png_uri(path: Path) -> str:
    """A PNG file inlined as is (no thumbnail)."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _table(rows: Sequence[tuple[str, dict]], first: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [first, *COLUMNS, "queries"])
    body = []
    for name, m in rows:
        cells = "".join(f"<td>{m[c]:.2f}</td>" if isinstance(m.get(c), (int, float)) else "<td></td>" for c in COLUMNS)
        body.append(f"<tr><td>{html.escape(name)}</td>{cells}<td>{m.get('queries', '')}</td></tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(path: str | Path, dataset: CIRDataset, results: Sequence[EvalResult], examples: int = 6,
                 seed: int = 0, title: str = "cirlab report",
                 figures: Sequence[tuple[str, str | Path]] | None = None) -> Path:
    """Write ``path`` (HTML, images inlined) with one section per method.

    ``figures``: optional (caption, PNG path) pairs shown full size after the summary table.
    """
    path = Path(path)
    cache: dict[str, str] = {}
    trips = [t for t in dataset.triplets if t.targets]
    picks = random.Random(seed).sample(trips, min(examples, len(trips)))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>dataset <b>{html.escape(dataset.name)}</b>: {len(dataset.gallery)} gallery images, "
             f"{len(trips)} queries. Reference removed from rankings. Metrics in percent.</p>",
             "<h2>Summary</h2>",
             _table([(f"{r.method}", {**r.metrics, "queries": len(r.rankings)}) for r in results], "method")]
    if figures:
        parts.append("<h2>Figures</h2>")
        for caption, png in figures:
            parts.append(f"<figure class='fig'><img src='{_png_uri(Path(png))}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    for r in results:
        parts.append(f"<h2>{html.escape(r.method)} <small>({html.escape(r.backbone)})</small></h2>")
        parts.append(_table(sorted(r.per_kind.items()), "edit kind"))
        parts.append("<h3>Examples (green border: a correct target)</h3>")
        for t in picks:
            ranked = r.rankings.get(t.id, [])[:5]
            figs = [f"<figure class='ref'><img src='{_data_uri(dataset.gallery.path(t.reference), cache)}'"
                    f" alt='reference'><figcaption>reference</figcaption></figure>",
                    f"<div class='txt'>{html.escape(t.caption)}</div>"]
            for n, image_id in enumerate(ranked, 1):
                ok = " class='ok'" if image_id in t.targets else ""
                figs.append(f"<figure><img{ok} src='{_data_uri(dataset.gallery.path(image_id), cache)}' "
                            f"alt='{html.escape(image_id)}'><figcaption>{n}</figcaption></figure>")
            parts.append(f"<div class='q'>{''.join(figs)}</div>")
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
    return path
