"""A report as one self-contained HTML file: thumbnails embedded as small JPEGs, the
outlier histogram as an SVG picture, no scripts, fonts or links to fetch."""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Callable
from typing import TextIO

from encoder import ImageLoadError, open_image

from ..engine import Engine, EngineError
from ..pair_scale import top_share
from .model import Group, Report
from .outliers import Outliers

log = logging.getLogger(__name__)

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{margin:1.2em 0 .4em}
.group{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0;padding:8px;background:#fff;border:1px solid #ddd;
border-radius:6px}.group.flagged{border-color:#c33}
.card{width:var(--w);font-size:12px;word-break:break-all}.card img,.card .none{width:var(--w);height:var(--w);
object-fit:contain;background:#eee;display:block;border-radius:4px}.card .none{line-height:var(--w);
text-align:center;color:#888}
.keeper img{outline:3px solid #2a7;outline-offset:-3px}.badge{font-weight:600;color:#2a7}.bad{color:#c33}
.meta{color:#666}.more{color:#666;font-style:italic}table{border-collapse:collapse}td,th{padding:2px 8px}
.arrow{align-self:center;font-size:20px;color:#999}
"""


class _Thumbs:
    """Data URIs of small JPEGs for indexed ids and for files; a missing file gives None."""

    def __init__(self, engine: Engine | None, size: int) -> None:
        self.engine, self.size, self.cache = engine, size, {}

    def _make(self, key, fn: Callable[[], bytes]) -> str | None:
        if key not in self.cache:
            try:
                self.cache[key] = "data:image/jpeg;base64," + base64.b64encode(fn()).decode("ascii")
            except (EngineError, ImageLoadError, OSError) as exc:
                log.debug("no thumbnail for %s: %s", key, exc)
                self.cache[key] = None
        return self.cache[key]

    def of_id(self, image_id: int | None) -> str | None:
        if self.engine is None or image_id is None:
            return None
        return self._make(image_id, lambda: self.engine.thumbnail(int(image_id), self.size))

    def of_file(self, path: str) -> str | None:
        def make() -> bytes:
            img, _ = open_image(path, draft_size=self.size)
            img.thumbnail((self.size, self.size))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=80)
            return buf.getvalue()

        return self._make(("file", path), make)


class _Out:
    """A list-like sink that writes each piece straight to the file."""

    def __init__(self, fh: TextIO) -> None:
        self.append = fh.write

    def __iadd__(self, pieces: list[str]) -> _Out:
        for p in pieces:
            self.append(p)
        return self


def _card(uri: str | None, title: str, lines: list[str], cls: str = "") -> str:
    img = f'<img src="{uri}" alt="{html.escape(title)}">' if uri else '<div class="none">no preview</div>'
    body = "<br>".join(lines)
    return f'<div class="card {cls}" title="{html.escape(title)}">{img}{body}</div>'


def _member_card(thumbs: _Thumbs, m, keeper: bool, exact: bool) -> str:
    lines = [html.escape(m.path)]
    dims = f"{m.width}x{m.height}" if m.width else "?"
    lines.append(f'<span class="meta">#{m.id} · {dims} · {_size(m.size)}</span>')
    if keeper:
        lines.append('<span class="badge">keep</span>')
    elif not exact and m.similarity is not None:
        bits = "" if m.hamming is None else f" · hash distance {m.hamming}"
        lines.append(f'<span class="meta">similarity {m.similarity:.4f}{bits}</span>')
    return _card(thumbs.of_id(m.id), m.path, lines, "keeper" if keeper else "")


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _groups(out: _Out, thumbs: _Thumbs, groups: list[Group], max_groups: int, exact: bool) -> None:
    for g in groups[:max_groups]:
        cards = [_member_card(thumbs, m, i == 0, exact) for i, m in enumerate(g.members)]
        label = g.tier + ("" if exact else f", min similarity {g.min_similarity:.4f}")
        out.append(
            f'<div class="group" data-tier="{html.escape(g.tier)}" aria-label="{html.escape(label)}">'
            + "".join(cards)
            + "</div>"
        )
    if len(groups) > max_groups:
        out.append(f'<p class="more">{len(groups) - max_groups} more groups: see the JSON or CSV report.</p>')


def histogram_svg(o: Outliers, width: int = 640, height: int = 220) -> str:
    """The outlier score histogram (log-spaced bins) with the threshold as a red line."""
    counts, edges = o.histogram_counts, o.histogram_edges
    pad_l, pad_b, pad_t = 40, 36, 12
    w, h = width - pad_l - 10, height - pad_b - pad_t
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    if counts:
        lo, hi = math.log10(edges[0]), math.log10(edges[-1])
        span = (hi - lo) or 1.0
        peak = max(counts) or 1

        def x(v: float) -> float:
            return pad_l + (math.log10(max(v, 1e-12)) - lo) / span * w

        for c, e0, e1 in zip(counts, edges[:-1], edges[1:], strict=True):
            bh = c / peak * h
            parts.append(
                f'<rect x="{x(e0):.1f}" y="{pad_t + h - bh:.1f}" width="{max(0.5, x(e1) - x(e0) - 1):.1f}" '
                f'height="{bh:.1f}" fill="#4a7bd0"/>'
            )
        if edges[0] <= o.threshold_score <= edges[-1]:
            tx = x(o.threshold_score)
            parts.append(
                f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{pad_t}" y2="{pad_t + h}" stroke="#c33" '
                f'stroke-width="2"/><text x="{tx + 3:.1f}" y="{pad_t + 10}" fill="#c33">z = '
                f"{o.threshold_z}</text>"
            )
        for v, anchor in ((edges[0], "start"), (math.sqrt(edges[0] * edges[-1]), "middle"), (edges[-1], "end")):
            parts.append(f'<text x="{x(v):.1f}" y="{height - 20}" text-anchor="{anchor}">{v:.3g}</text>')
        parts.append(
            f'<text x="{pad_l + w / 2:.0f}" y="{height - 4}" text-anchor="middle">reconstruction error '
            f'(log scale)</text><text x="4" y="{pad_t + 10}">{peak}</text>'
        )
    parts.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{pad_t + h}" y2="{pad_t + h}" stroke="#333"/></svg>')
    return "".join(parts)


def write_html(
    report: Report, fh: TextIO, *, engine: Engine | None = None, thumb_size: int = 96, max_groups: int = 200
) -> None:
    """Write the report as one HTML page. Sections hold at most `max_groups` groups each
    (the JSON and CSV hold everything); thumbnails need the `engine`."""
    thumbs = _Thumbs(engine, thumb_size)
    esc = html.escape
    out = _Out(fh)  # written as it is made: the page is never held whole in memory
    out += [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lookalike report</title>'
        f'<style>{STYLE}</style></head><body style="--w:{thumb_size + 24}px">',
        f'<h1>lookalike report</h1><p class="meta">index {esc(report.index)} · model '
        f"{esc(str(report.model_id))} · {report.images} images · {esc(report.generated_at)}</p>",
    ]
    if report.exact is not None:
        n_files = sum(len(g.others) for g in report.exact)
        out.append(
            f'<section id="exact"><h2>Exact duplicates</h2><p>{len(report.exact)} groups of byte-identical '
            f"files; {n_files} copies could go. The keeper is the first indexed.</p>"
        )
        _groups(out, thumbs, report.exact, max_groups, exact=True)
        out.append("</section>")
    if report.near is not None:
        nd = report.near
        out.append(
            f'<section id="near"><h2>Near-duplicates</h2><p>Similarity: {esc(nd.similarity)}; '
            f"{nd.vectors} images, {nd.k} neighbours each ({esc(nd.method)}), {nd.pairs} pairs. A group is "
            "shown at the strictest tier at which it holds together. The keeper (largest resolution) is "
            "outlined; each other image shows its similarity to it.</p>"
        )
        for t in nd.tiers:
            groups = nd.groups[t.name]
            rule = f"similarity &ge; {t.threshold:g}" + (
                f" or hash distance &le; {t.hamming}" if t.hamming is not None else ""
            )
            rule += f" or a crop within {t.crop_hamming} bits" if t.crop_hamming is not None else ""
            if t.detail_veto and t.hamming is not None:
                rule += "; files of one size and format whose detail differs are two pictures"
            if t.crowd_margin is not None:
                rule += f"; a similarity alone must beat both images' {nd.k}th neighbours by {t.crowd_margin:g}"
            out.append(
                f'<h3 id="tier-{esc(t.name)}">{esc(t.name)} ({rule}): '
                f'{len(groups)} groups</h3><p class="meta">{esc(t.description)}</p>'
            )
            _groups(out, thumbs, groups, max_groups, exact=False)
        out.append("</section>")
    if report.neighbours is not None:
        out.append(
            f'<section id="neighbours"><h2>Neighbours of the query set</h2><p>{len(report.neighbours)} '
            f"queries, top {report.neighbours_k} each.</p>"
        )
        for q in report.neighbours[:max_groups]:
            label = str(q.query.get("path") or q.query.get("id"))
            uri = thumbs.of_id(q.query["id"]) if "id" in q.query else thumbs.of_file(label)
            lines = [esc(label)]
            if q.exact_match_id is not None:
                lines.append(f'<span class="badge">same bytes as #{q.exact_match_id}</span>')
            if q.error:
                lines.append(f'<span class="bad">{esc(q.error)}</span>')
            cards = [_card(uri, label, lines, "keeper"), '<span class="arrow">&rarr;</span>']
            cards += [
                _card(
                    thumbs.of_id(h.id),
                    h.path,
                    [
                        esc(h.path),
                        f'<span class="meta">#{h.id} · similarity {h.similarity:.4f} {top_share(h.percentile)}</span>',
                    ],
                )
                for h in q.neighbours
            ]
            out.append('<div class="group query">' + "".join(cards) + "</div>")
        if len(report.neighbours) > max_groups:
            out.append(f'<p class="more">{len(report.neighbours) - max_groups} more queries: see the JSON or CSV.</p>')
        out.append("</section>")
    if report.outliers is not None:
        o = report.outliers
        svg = base64.b64encode(histogram_svg(o).encode()).decode("ascii")
        out.append(
            f'<section id="outliers"><h2>Outliers</h2><p>Reconstruction error of the autoencoder for '
            f"{o.count} distinct images. Rule: robust z-score of log(error) (median and MAD) above "
            f"{o.threshold_z}, i.e. error &gt; {o.threshold_score:.4g}: {o.flagged} flagged.</p>"
            f'<img id="histogram" src="data:image/svg+xml;base64,{svg}" alt="histogram of reconstruction '
            'errors">'
        )
        cards = []
        for o_ in o.top:
            lines = [esc(o_.path), f'<span class="meta">#{o_.id} · error {o_.score:.4g} · z {o_.z:.2f}</span>']
            if o_.flagged:
                lines.append('<span class="bad">outlier</span>')
            cards.append(_card(thumbs.of_id(o_.id), o_.path, lines))
        out.append('<div class="group outliers">' + "".join(cards) + "</div>")
        if o.failed:
            out.append(f'<p class="bad">{len(o.failed)} images could not be decoded for scoring.</p>')
        out.append("</section>")
    out.append("</body></html>\n")
