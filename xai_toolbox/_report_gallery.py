"""The report's gallery: one row per method, one column per image, pages of a few images.

Laid out so that it never needs horizontal scrolling: the table is at most
``METHOD_COLUMN + per_page × (CELL + gap)`` CSS pixels wide (1226 px for 8 images, inside a
1280 px window) and shrinks with the window below that (the pictures scale with their column).
The inputs head every page and stay at the top of the window while the methods scroll by
(``position: sticky``). Each method's label carries its colourbar; hovering a picture shows the
image's name, the map's scale and the image's score on every metric. More images than fit in
a page go to further pages, each a ``<details>`` block (the first open): no script needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._report_svg import colourbar, esc
from .colours import map_scale
from .plot import overlay, to_numpy

METHOD_COLUMN = 170  # CSS pixels of the method labels (name, colourbar, sign)
CELL = 128  # CSS pixels per picture at full width
GAP = 4  # border-spacing between cells


def gallery_width(columns: int) -> int:
    """CSS width of a gallery page of ``columns`` images."""
    return METHOD_COLUMN + columns * (CELL + GAP) + GAP


GALLERY_STYLE = f"""
details.page{{margin:.6rem 0}}
details.page>summary{{cursor:pointer;font-weight:600;margin-bottom:.3rem}}
table.gallery{{border-collapse:separate;border-spacing:{GAP}px;table-layout:fixed;max-width:100%}}
table.gallery thead th:first-child{{width:{METHOD_COLUMN}px}}
table.gallery thead th{{position:sticky;top:0;background:#fff;z-index:2;vertical-align:bottom;
font-weight:400;font-size:.72rem;line-height:1.25;padding:2px 0;overflow-wrap:anywhere}}
table.gallery thead th img{{outline:2px solid #555;outline-offset:-2px}}
table.gallery th.method{{text-align:left;font-size:.8rem;vertical-align:middle;font-weight:600;
overflow-wrap:anywhere;padding-right:4px}}
table.gallery th.method .sign{{display:block;font-weight:400;color:#666;font-size:.7rem}}
table.gallery td{{padding:0}}
table.gallery img{{width:100%;height:auto;display:block;image-rendering:pixelated}}
svg.colourbar{{display:block;max-width:100%;margin:.2rem 0 0}}
svg.colourbar text{{font-size:9px;fill:#444}}
"""


@dataclass(frozen=True)
class Gallery:
    """The pictures of a report: inputs, their captions, and what to say on hover."""

    rgb: np.ndarray
    names: Sequence[str] | None = None
    labels: Sequence[int] | None = None
    predictions: Sequence[int] | None = None
    targets: Sequence[int] | None = None
    class_names: Sequence[str] | None = None
    #: ``{method: {metric: per-image scores (N,)}}`` shown when hovering a picture.
    scores: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)

    def section(
        self,
        maps: Mapping[str, Any],
        *,
        max_images: int,
        per_page: int = 8,
        alpha: float = 0.8,
        cmap: str | None = None,
        sign: str | Mapping[str, str] = "auto",
        clip_percentile: float = 0.5,
    ) -> list[str]:
        """The ``<section id="images">`` markup, one line per element."""
        n = len(self.rgb)
        shown = min(n, int(max_images))
        per_page = max(1, int(per_page))
        signs = sign if isinstance(sign, Mapping) else dict.fromkeys(maps, sign)
        rows = []
        for method, m in maps.items():
            values = np.asarray(to_numpy(m), dtype=np.float32)[:shown]
            options = {"sign": signs.get(method, "auto"), "clip_percentile": clip_percentile, "cmap": cmap}
            scale = map_scale(values, **options)
            pictures = overlay(self.rgb[:shown], values, alpha=alpha, channels_first=False, **options)
            rows.append((method, scale, pictures))
        out = [
            '<section id="images">',
            "<h2>Explanations</h2>",
            '<p class="muted">One row per method, one column per image (the input on top). Each '
            "map is coloured on its own scale: s, where the colours saturate, is the "
            f"{100 - clip_percentile:g}th percentile of its |values| (hover a colourbar for what "
            "its colours mean, a picture for its s and the image's scores). Signed maps use a "
            "diverging scale centred on zero: white/grey is zero, not \u201cmedium\u201d; "
            "opacity grows with |value|, so the grey image shows where the map is near zero.</p>",
        ]
        if shown < n:
            out.append(f'<p class="muted">Showing the first {shown} of {n} images.</p>')
        for page, start in enumerate(range(0, shown, per_page)):
            stop = min(start + per_page, shown)
            out += self._page(page, start, stop, shown, rows)
        out.append("</section>")
        return out

    def _page(self, page: int, start: int, stop: int, shown: int, rows: list[tuple[str, Any, np.ndarray]]) -> list[str]:
        columns = stop - start
        height, width = self.rgb.shape[1:3]
        summary = f"Images {start + 1}\u2013{stop} of {shown}" if shown > stop - start else f"{shown} images"
        head = "".join(
            f'<th scope="col">{self._img(self.rgb[i], self._name(i), width, height)}'
            f"{'<br>'.join(self._caption(i))}</th>"
            for i in range(start, stop)
        )
        out = [
            f'<details class="page"{" open" if page == 0 else ""}><summary>{summary}</summary>',
            f'<table class="gallery" style="width:{gallery_width(columns)}px">',
            f'<thead><tr><th scope="col">method</th>{head}</tr></thead><tbody>',
        ]
        for row, (method, scale, pictures) in enumerate(rows):
            sign_text = {"all": "signed", "positive": "positive part", "negative": "negative part",
                         "absolute": "|value|"}[scale.sign]
            label = (
                f'<th scope="row" class="method">{esc(method)}'
                f"{colourbar(scale, f'cb-{page}-{row}')}<span class=\"sign\">{sign_text}</span></th>"
            )
            cells = "".join(
                f"<td>{self._img(pictures[i], f'{method} on {self._name(i)}', width, height, self._tip(method, i, scale.bounds[i]))}</td>"
                for i in range(start, stop)
            )
            out.append(f"<tr>{label}{cells}</tr>")
        out += ["</tbody></table>", "</details>"]
        return out

    @staticmethod
    def _img(rgb: np.ndarray, alt: str, width: int, height: int, title: str | None = None) -> str:
        side = max(width, height)
        w, h = round(CELL * width / side), round(CELL * height / side)
        from .report import png_data_uri

        tip = f' title="{esc(title)}"' if title else ""
        return f'<img src="{png_data_uri(rgb)}" alt="{esc(alt)}" width="{w}" height="{h}"{tip}>'

    def _tip(self, method: str, i: int, bound: float) -> str:
        lines = [f"{method} on {self._name(i)}", f"s = {bound:.3g}"]
        for metric, values in self.scores.get(method, {}).items():
            if i < len(values) and np.isfinite(values[i]):
                lines.append(f"{metric}: {values[i]:.4g}")
        return "\n".join(lines)

    def _name(self, i: int) -> str:
        return str(self.names[i]) if self.names is not None else f"image {i}"

    def _caption(self, i: int) -> list[str]:
        """The image's name, its label, the model's prediction (red when wrong) and the class
        explained."""
        caption = [f"<strong>{esc(self.names[i])}</strong>" if self.names is not None else f"<strong>#{i}</strong>"]
        if self.labels is not None:
            caption.append(f"label: {esc(self._class(self.labels[i]))}")
        if self.predictions is not None:
            wrong = self.labels is not None and int(self.predictions[i]) != int(self.labels[i])
            text = f"predicted: {esc(self._class(self.predictions[i]))}"
            caption.append(f'<span class="wrong">{text}</span>' if wrong else text)
        if self.targets is not None:
            caption.append(f"explained: {esc(self._class(self.targets[i]))}")
        return caption

    def _class(self, index: int) -> str:
        if self.class_names is not None and 0 <= int(index) < len(self.class_names):
            return str(self.class_names[int(index)])
        return str(int(index))
