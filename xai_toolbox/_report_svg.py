"""Inline SVG for the HTML report: curve charts (mean curve and 95 % band per method, labelled
axes, round ticks) and colourbars. No script, no external resource: each returns a string of
markup with every user string escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import MetricResult
from .colours import MapScale
from .plot import curve_axis, curve_band, curve_labels

#: Dash patterns cycled every 10 colours, so methods past the tenth stay apart.
_DASHES = ("", "6 3", "2 2", "8 3 2 3")
#: Bands are drawn up to this many methods per chart; more would cover each other.
MAX_BANDS = 6


def esc(value: Any) -> str:
    """``str(value)`` escaped for HTML text and attribute values (line breaks as ``&#10;``, so
    a multi-line tooltip stays on one line of markup)."""
    return html.escape(str(value), quote=True).replace("\n", "&#10;")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 × 10^k) from below ``low`` to above ``high``.

    Example:
        >>> nice_ticks(0.0, 0.93)
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def tick_label(value: float, step: float) -> str:
    """A tick value with as many decimals as its step needs (``0.25``, ``1.0e-04``)."""
    if abs(value) < abs(step) * 1e-6:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        return f"{value:.1e}"
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 2
    scaled = step * 10**decimals
    if abs(round(scaled) - scaled) > 1e-6:
        decimals += 1
    return f"{value:.{decimals}f}"


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.3f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def curve_chart(metric: str, results: Mapping[str, MetricResult], colours: Mapping[str, str]) -> str:
    """A ``<figure>`` with the mean curve of each method of a curve metric, its 95 % band, axis
    labels, round ticks and a legend (empty string when no method has a finite curve)."""
    width, height, left, right, top, bottom = 480, 300, 62, 14, 14, 46
    series = []
    for method, res in results.items():
        mean, low, high = curve_band(res)
        if np.all(np.isfinite(mean)):
            # The normal band can leave the range the curves ever reach (e.g. below 0 for
            # probabilities): clip it there.
            curves = np.asarray(res.curves, dtype=np.float64)
            low = np.maximum(np.nan_to_num(low, nan=0.0), np.nanmin(curves, axis=0))
            high = np.minimum(np.nan_to_num(high, nan=0.0), np.nanmax(curves, axis=0))
            series.append((method, curve_axis(res), mean, low, high))
    if not series:
        return ""
    x_ticks = nice_ticks(min(float(s[1].min()) for s in series), max(float(s[1].max()) for s in series))
    bands = len(series) <= MAX_BANDS
    y_low = min(float((s[3] if bands else s[2]).min()) for s in series)
    y_high = max(float((s[4] if bands else s[2]).max()) for s in series)
    if y_high - y_low < 1e-12:
        y_low, y_high = y_low - 0.5, y_high + 0.5
    y_ticks = nice_ticks(y_low, y_high)
    x_lo, x_hi = x_ticks[0], x_ticks[-1] if x_ticks[-1] > x_ticks[0] else x_ticks[0] + 1.0
    y_lo, y_hi = y_ticks[0], y_ticks[-1] if y_ticks[-1] > y_ticks[0] else y_ticks[0] + 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(xv: float) -> float:
        return left + (xv - x_lo) / (x_hi - x_lo) * plot_w

    def py(yv: float) -> float:
        return top + (1.0 - (yv - y_lo) / (y_hi - y_lo)) * plot_h

    x_label, y_label = curve_labels(next(iter(results.values())))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{esc(metric)} curves">',
        f"<title>{esc(metric)}: mean curve per method, shaded: 95 % interval of the mean</title>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#999"/>',
    ]
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    for fx in x_ticks:
        parts.append(f'<line x1="{px(fx):.1f}" y1="{top}" x2="{px(fx):.1f}" y2="{top + plot_h}" stroke="#eee"/>')
        parts.append(f'<text x="{px(fx):.1f}" y="{top + plot_h + 14}" text-anchor="middle">'
                     f"{tick_label(fx, x_step)}</text>")
    for fy in y_ticks:
        parts.append(f'<line x1="{left}" y1="{py(fy):.1f}" x2="{left + plot_w}" y2="{py(fy):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 5}" y="{py(fy) + 3.5:.1f}" text-anchor="end">'
                     f"{tick_label(fy, y_step)}</text>")
    parts.append(f'<text class="axis" x="{left + plot_w / 2:.1f}" y="{height - 8}" '
                 f'text-anchor="middle">{esc(x_label)}</text>')
    parts.append(f'<text class="axis" transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle">{esc(y_label)}</text>')
    for i, (method, x, mean, low, high) in enumerate(series):
        colour = colours[method]
        res = results[method]
        if bands and res.curves is not None and res.curves.shape[0] > 1:
            outline = [*zip(x, high, strict=True), *reversed(list(zip(x, low, strict=True)))]
            points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in outline)
            parts.append(f'<polygon points="{points}" fill="{colour}" fill-opacity="0.14" stroke="none"/>')
        points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, mean, strict=True))
        dash_attr = _dash(i)
        low_ci, high_ci = res.ci
        tip = f"{method}: {metric} {_fmt(res.mean)} (95 % CI {_fmt(low_ci)} to {_fmt(high_ci)}, n = {res.n})"
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash_attr} points="{points}">'
            f"<title>{esc(tip)}</title></polyline>"
        )
    parts.append("</svg>")
    legend = "".join(
        f'<li><svg class="swatch" width="22" height="10" aria-hidden="true"><line x1="1" y1="5" '
        f'x2="21" y2="5" stroke="{colours[m]}" stroke-width="3"{_dash(i)}/></svg>{esc(m)} '
        f'<span class="muted">({_fmt(results[m].mean)})</span></li>'
        for i, (m, *_) in enumerate(series)
    )
    note = "" if bands else (
        f'<p class="muted">Bands left out: more than {MAX_BANDS} methods would cover each other.</p>'
    )
    return (
        f'<figure class="chart"><figcaption>{esc(metric)}</figcaption>{"".join(parts)}'
        f'<ul class="legend">{legend}</ul>{note}</figure>'
    )


def _dash(index: int) -> str:
    """The ``stroke-dasharray`` attribute of the ``index``-th series ("" for solid)."""
    dash = _DASHES[(index // 10) % len(_DASHES)]
    return f' stroke-dasharray="{dash}"' if dash else ""


def colourbar(scale: MapScale, ident: str, width: int = 150) -> str:
    """A horizontal colourbar of ``scale`` (gradient, end and centre labels) as inline SVG;
    ``ident`` makes its gradient's id unique in the page."""
    lo = -1.0 if scale.diverging else 0.0
    positions = np.linspace(lo, 1.0, 11, dtype=np.float32)
    rgb = np.clip(scale.colours(positions) * 255.0 + 0.5, 0, 255).astype(int)
    stops = "".join(
        f'<stop offset="{i / 10:.1f}" stop-color="#{r:02x}{g:02x}{b:02x}"/>'
        for i, (r, g, b) in enumerate(rgb)
    )
    labels = scale.tick_labels()
    xs = [4, width / 2, width - 4] if len(labels) == 3 else [4, width - 4]
    anchors = ["start", "middle", "end"] if len(labels) == 3 else ["start", "end"]
    texts = "".join(
        f'<text x="{x:.0f}" y="25" text-anchor="{a}">{esc(t)}</text>'
        for x, a, t in zip(xs, anchors, labels, strict=True)
    )
    return (
        f'<svg class="colourbar" xmlns="http://www.w3.org/2000/svg" width="{width}" height="28" '
        f'viewBox="0 0 {width} 28" role="img" aria-label="colour scale: {esc(scale.describe())}">'
        f"<title>{esc(scale.describe())}</title>"
        f'<defs><linearGradient id="{esc(ident)}">{stops}</linearGradient></defs>'
        f'<rect x="0" y="2" width="{width}" height="10" fill="url(#{esc(ident)})" stroke="#999" '
        f'stroke-width="0.5"/>{texts}</svg>'
    )
