"""``xai-toolbox report DIR``: a self-contained HTML report of a dataset run's store.

Sections: the scores (per method and metric, the mean with its 95 % confidence interval, the
best of each column marked, methods ranked by mean rank), a per-class breakdown, the best and
worst images of each method on each metric with their maps, the failures, and the settings.

Pictures are encoded by :mod:`xai_toolbox.report`'s public helpers; every string from the store
is HTML-escaped. Images are shown again where they can be read again
(files of an image folder, rows of a ``.npy`` file); otherwise the maps are shown alone.

The confidence interval of a mean over ``n`` images is Student's ``t`` interval,
``mean ± t(0.975, n - 1) · sd / sqrt(n)`` (for thousands of images the same as the normal
and the bootstrap intervals).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..plot import display_images, overlay
from ..report import png_data_uri, software_versions
from .runner import DatasetResults, open_results

__all__ = ["mean_interval", "write_dataset_report"]


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of the finite ``values`` and its Student-t interval
    (``nan`` bounds for fewer than two values).

    Example:
        >>> mean_interval([1.0, 2.0, 3.0])
        (2.0, -0.484..., 4.484...)
    """
    from scipy import stats

    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(a.mean())
    if a.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))
    return mean, mean - half, mean + half


def write_dataset_report(
    results: str | Path | DatasetResults,
    out: str | Path | None = None,
    *,
    top: int = 4,
    max_classes: int = 100,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Path:
    """Write the HTML report of a store (default ``DIR/report.html``) and return its path.

    Args:
        results: the store folder, or :func:`~xai_toolbox.datasets.open_results`'s object.
        out: where to write the report.
        top: best and worst images shown per method and metric.
        max_classes: classes shown in the per-class tables (those with the most images).
        alpha, cmap: overlay blending and colormap.

    Example:
        >>> write_dataset_report("runs/val")
        PosixPath('runs/val/report.html')
    """
    results = results if isinstance(results, DatasetResults) else open_results(results)
    frame = results.records()
    path = Path(out) if out is not None else results.path / "report.html"
    page = _Page(results, frame, top, max_classes, alpha, cmap)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page.render(), encoding="utf-8")
    return path


class _Page:
    def __init__(self, results: DatasetResults, frame: Any, top: int, max_classes: int, alpha: float, cmap: str) -> None:
        self.results, self.frame, self.top, self.max_classes = results, frame, top, max_classes
        self.alpha, self.cmap = alpha, cmap
        self.info = results.info
        self.class_names: list[str] | None = self.info.get("class_names")
        self.scored = frame[frame["metric"].notna() & frame["error"].isna()].copy()
        self.explained = frame[frame["metric"].isna()].copy()
        self._label()

    def render(self) -> str:
        data = self.info.get("binding", {}).get("data", {})
        title = f"xai-toolbox dataset report — {data.get('root') or data.get('file') or data.get('kind', 'data')}"
        return "\n".join([
            *_page_head(title),
            *self._header(title),
            "<main>",
            *self._scores(),
            *self._per_class(),
            *self._extremes(),
            *self._failures(),
            *self._settings(),
            "</main>", "</body>", "</html>",
        ]) + "\n"

    # -- sections ------------------------------------------------------------------------------------
    def _header(self, title: str) -> list[str]:
        n_images = self.frame["position"].nunique() if len(self.frame) else 0
        failed = int(self.frame["error"].notna().sum())
        methods = self.explained["method"].nunique()
        metrics = self.scored["metric"].nunique()
        return [
            "<header>", f"<h1>{esc(title)}</h1>",
            f'<p class="muted">{n_images} images, {methods} method(s), {metrics} metric(s); '
            f"{len(self.frame)} records, {failed} failed.</p>", "</header>",
        ]

    def _cells(self) -> dict[tuple[str, str], tuple[Score, float, float]]:
        cells = {}
        for (method, metric), group in self.scored.groupby(["method_label", "metric_label"], sort=False):
            mean, low, high = mean_interval(group["score"].to_numpy())
            hib = bool(group["higher_is_better"].iloc[0])
            cells[(method, metric)] = (Score(method, metric, mean, hib, float(group["score"].std()), len(group)), low, high)
        return cells

    def _scores(self) -> list[str]:
        cells = self._cells()
        if not cells:
            return ['<section id="scores"><h2>Scores</h2><p class="muted">no metric scores stored</p></section>']
        methods = list(dict.fromkeys(m for m, _ in cells))
        metrics = list(dict.fromkeys(k for _, k in cells))
        best = {k: _best([cells[(m, k)][0] for m in methods if (m, k) in cells]) for k in metrics}
        head = "".join(f"<th>{esc(k)} {'↑' if cells[next((m, k) for m in methods if (m, k) in cells)][0].higher_is_better else '↓'}</th>" for k in metrics)
        rows = []
        for i, (method, mean_rank) in enumerate(rank_methods([c[0] for c in cells.values()]), start=1):
            tds = []
            for k in metrics:
                if (method, k) not in cells:
                    tds.append("<td>-</td>")
                    continue
                score, low, high = cells[(method, k)]
                star = method in best[k]
                text = f"{_fmt(score.mean)} <span class=\"muted\">[{_fmt(low)}, {_fmt(high)}] n={score.n}</span>"
                tds.append(f'<td class="best">{text} ★</td>' if star else f"<td>{text}</td>")
            rows.append(f"<tr><td>{i}</td><td>{esc(method)}</td><td>{_fmt(mean_rank)}</td>{''.join(tds)}</tr>")
        return [
            '<section id="scores">', "<h2>Scores</h2>",
            '<p class="muted">Mean over the images with its 95 % confidence interval (Student t) and the '
            "number of images; ↑ higher is better, ↓ lower is better; ★ the best mean of each column. "
            "Methods are ranked by their mean rank over the metrics.</p>",
            f'<table class="scores"><thead><tr><th>rank</th><th>method</th><th>mean rank</th>{head}</tr></thead><tbody>',
            *rows, "</tbody></table>", "</section>",
        ]

    def _per_class(self) -> list[str]:
        scored = self.scored[self.scored["label"].notna()]
        if scored.empty:
            return []
        counts = scored.groupby("label")["position"].nunique().sort_values(ascending=False)
        shown = list(counts.index[: self.max_classes])
        out = ['<section id="classes">', "<h2>Per class</h2>",
               '<p class="muted">Mean score per true class (rows) and method (columns), with the number of images.'
               + (f" The {len(shown)} classes with the most images of {len(counts)}." if len(shown) < len(counts) else "")
               + "</p>"]
        for metric, group in scored.groupby("metric_label", sort=False):
            methods = list(dict.fromkeys(group["method_label"]))
            means = group.groupby(["label", "method_label"])["score"].mean()
            head = "".join(f"<th>{esc(m)}</th>" for m in methods)
            rows = []
            for label in sorted(shown):
                tds = "".join(f"<td>{_fmt(means.get((label, m), float('nan')))}</td>" for m in methods)
                rows.append(f"<tr><td>{esc(self._class(label))}</td><td>{int(counts[label])}</td>{tds}</tr>")
            out += [f"<h3>{esc(metric)}</h3>",
                    f'<table class="scores"><thead><tr><th>class</th><th>images</th>{head}</tr></thead><tbody>',
                    *rows, "</tbody></table>"]
        out.append("</section>")
        return out

    def _extremes(self) -> list[str]:
        if self.scored.empty or self.top < 1:
            return []
        out = ['<section id="extremes">', "<h2>Best and worst images</h2>",
               f'<p class="muted">Per method and metric, the {self.top} images with the best and the worst score, '
               "with the method's map.</p>"]
        for (method, metric), group in self.scored.groupby(["method_label", "metric_label"], sort=False):
            hib = bool(group["higher_is_better"].iloc[0])
            ordered = group.sort_values("score", ascending=not hib, kind="stable")
            key = f"{group['method'].iloc[0]}-{group['method_hash'].iloc[0]}"
            out.append(f"<h3>{esc(method)} — {esc(metric)} {'↑' if hib else '↓'}</h3>")
            for title, rows in (("best", ordered.head(self.top)), ("worst", ordered.tail(self.top).iloc[::-1])):
                out.append(f'<div class="row"><figure class="input"><figcaption><strong>{title}</strong></figcaption></figure>'
                           + "".join(self._figure(key, r) for r in rows.itertuples()) + "</div>")
        out.append("</section>")
        return out

    def _figure(self, key: str, row: Any) -> str:
        try:
            m = np.asarray(self.results.store.read_maps(key, int(row.position), 1))
        except Exception:
            return f"<figure><figcaption>{esc(row.image_id)}: map unreadable</figcaption></figure>"
        image = self._image(row)
        base = image if image is not None else np.zeros((*m.shape[1:], 3), np.float32)
        rgb = overlay(base[None], np.nan_to_num(m), alpha=self.alpha if image is not None else 1.0,
                      cmap=self.cmap, channels_first=False)[0]
        caption = f"{esc(row.image_id)}<br>score {_fmt(row.score)}"
        if not _missing(row.label):
            caption += f"<br>label {esc(self._class(row.label))}"
        if not _missing(row.prediction):
            caption += f"<br>predicted {esc(self._class(row.prediction))}"
        return f"<figure>{_img(png_data_uri(rgb), str(row.image_id), rgb.shape[1], rgb.shape[0])}<figcaption>{caption}</figcaption></figure>"

    def _image(self, row: Any) -> np.ndarray | None:
        """The image again, as RGB ``(H, W, 3)``, where it can be read again."""
        data = self.info.get("binding", {}).get("data", {})
        try:
            if isinstance(row.path, str) and Path(row.path).is_file():
                from ..io import load_images

                size = data.get("size")
                return load_images([row.path], size=size, channels=3).images[0]
            if data.get("kind") == "array" and data.get("file") and Path(data["file"]).is_file():
                array = np.load(data["file"], mmap_mode="r")
                return display_images(np.asarray(array[int(row.position)])[None])[0]
        except Exception:
            return None
        return None

    def _failures(self) -> list[str]:
        failed = self.frame[self.frame["error"].notna()]
        if failed.empty:
            return []
        kinds = failed["error"].str.split(":", n=1).str[0].value_counts()
        first = failed.drop_duplicates("image_id").head(20)
        rows = "".join(
            f"<tr><td>{esc(r.image_id)}</td><td>{esc(r.method)}</td><td>{esc(r.metric if isinstance(r.metric, str) else '(explanation)')}</td>"
            f"<td>{esc(r.error)}</td></tr>" for r in first.itertuples()
        )
        return [
            '<section id="failures">', "<h2>Failures</h2>",
            "<p>" + ", ".join(f"{esc(k)}: {int(n)}" for k, n in kinds.items()) + " failed record(s).</p>",
            '<table class="kv"><thead><tr><th>image</th><th>method</th><th>metric</th><th>reason</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>", "</section>",
        ]

    def _settings(self) -> list[str]:
        info = self.info
        return [
            '<section id="settings">', "<h2>Settings</h2>",
            _render_value({"data, model and inputs": info.get("binding", {}), "configurations": info.get("components", {})}),
            "<h2>Runs</h2>", _render_value({str(i + 1): r for i, r in enumerate(info.get("runs", []))}),
            "<h2>Software (of this report)</h2>", _render_value(software_versions()), "</section>",
        ]

    # -- helpers -----------------------------------------------------------------------------------
    def _label(self) -> None:
        """Column labels: the name, with the hash where a store holds several configurations."""
        for frame in (self.scored, self.explained):
            for column, name, digest in (("method_label", "method", "method_hash"), ("metric_label", "metric", "metric_hash")):
                several = self.frame.groupby(name)[digest].nunique()
                frame[column] = [
                    n if not isinstance(n, str) or several.get(n, 1) <= 1 else f"{n} ({h})"
                    for n, h in zip(frame[name], frame[digest], strict=True)
                ]

    def _class(self, index: Any) -> str:
        i = int(index)
        names = self.class_names
        return f"{names[i]} ({i})" if names is not None and 0 <= i < len(names) else str(i)


def _best(scores: Sequence[Score]) -> set[str]:
    finite = [s for s in scores if math.isfinite(s.mean)]
    if not finite:
        return set()
    target = (max if finite[0].higher_is_better else min)(s.mean for s in finite)
    return {s.method for s in finite if math.isclose(s.mean, target, rel_tol=1e-9, abs_tol=1e-12)}


def _fmt(x: Any) -> str:
    x = float(x)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.3f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _missing(value: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(value))



# -- page pieces -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Score:
    """One cell of the scores table."""

    method: str
    metric: str
    mean: float
    higher_is_better: bool
    std: float
    n: int


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def rank_methods(scores: Sequence[Score]) -> list[tuple[str, float]]:
    """Methods by mean rank over the metrics (ties share the average rank; 1 = best)."""
    methods = list(dict.fromkeys(s.method for s in scores))
    ranks: dict[str, list[float]] = {m: [] for m in methods}
    for metric in dict.fromkeys(s.metric for s in scores):
        cells = [s for s in scores if s.metric == metric and math.isfinite(s.mean)]
        keys = np.array([(-1.0 if s.higher_is_better else 1.0) * s.mean for s in cells])
        for s, k in zip(cells, keys, strict=True):
            ranks[s.method].append(float(np.sum(keys < k)) + (float(np.sum(keys == k)) + 1.0) / 2.0)
    ranked = [(m, float(np.mean(r)) if r else float("nan")) for m, r in ranks.items()]
    return sorted(ranked, key=lambda item: (not math.isfinite(item[1]), item[1]))


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem auto;max-width:1400px;
padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1.05rem;margin-bottom:.3rem}.muted{color:#777;font-size:.9em}
table.scores{border-collapse:collapse;font-variant-numeric:tabular-nums;margin-bottom:1rem}
table.scores th,table.scores td{border:1px solid #ddd;padding:.3rem .6rem;text-align:right}
table.scores td:nth-child(2),table.scores th:first-child{text-align:left}
table.scores thead th{background:#f4f4f4}td.best{background:#e6f4ea;font-weight:700}
.row{display:flex;gap:.4rem;margin-bottom:.9rem;align-items:flex-start;overflow-x:auto}
.row figure{flex:none;text-align:center;font-size:.75rem;width:140px;margin:0}
.row figure.input{width:60px}
.row img{image-rendering:pixelated;display:block;margin:0 auto .2rem}
table.kv{border-collapse:collapse;font-size:.9rem}
table.kv th,table.kv td{border:1px solid #e3e3e3;padding:.2rem .5rem;text-align:left;vertical-align:top}
table.kv th{background:#fafafa;font-weight:600}
"""


def _page_head(title: str) -> list[str]:
    return [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>",
    ]


def _render_value(value: Any) -> str:
    """Nested settings as key-value tables."""
    if isinstance(value, Mapping):
        if not value:
            return '<span class="muted">none</span>'
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{_render_value(v)}</td></tr>" for k, v in value.items())
        return f'<table class="kv">{rows}</table>'
    if isinstance(value, list | tuple):
        if all(isinstance(v, int | float | str | bool) or v is None for v in value):
            return esc(", ".join(str(v) for v in value))
        return "<ul>" + "".join(f"<li>{_render_value(v)}</li>" for v in value) + "</ul>"
    return esc(value)


def _img(uri: str, alt: str, width: int, height: int, side: int = 136) -> str:
    scale = side / max(width, height)
    return f'<img src="{uri}" alt="{esc(alt)}" width="{round(width * scale)}" height="{round(height * scale)}">'
