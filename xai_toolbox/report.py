"""A self-contained HTML report of an evaluation: overlays, curves, scores, settings.

One file, no external resources: pictures are PNGs embedded as ``data:`` URIs, curves are
inline SVG, the style sheet is inline. Every string that comes from the user (file names,
class names, method names, settings) is HTML-escaped, so a class called
``<script>alert(1)</script>`` shows as text.

Sections:

1. the method × metric table (mean ± half-width of the 95 % bootstrap interval over images,
   metrics grouped by family with their direction; marked best: the methods whose interval no
   other method beats; a paired test of the two best means per metric), with the methods
   ranked by their mean rank over metrics;
2. deletion / insertion (any curve metric): the mean curve per method with its 95 % band;
3. the gallery: one row per method, one column per image, paged so that it never needs
   horizontal scrolling; a colourbar per method, signed maps on a diverging scale centred on
   zero; hovering a picture shows the image's scores;
4. the settings: every parameter each method and metric ran with (defaults resolved, the
   layer a CAM picked, the seeds), the command that reproduces the run, and the software
   versions.

The page fits a 1280 px window: the score table splits by metric family when it has many
metrics, the gallery pages its images, long values wrap.

Example:
    >>> from xai_toolbox.report import write_report
    >>> write_report("report.html", images=images, maps={"gradcam": cam, "rise": rise},
    ...              results=table, names=["a.png", "b.png"], settings={"seed": 0})
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import math
import platform
import sys
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._report_gallery import GALLERY_STYLE, Gallery
from ._report_svg import curve_chart, esc
from .base import MetricResult
from .colours import palette
from .errors import ParameterError
from .plot import display_images
from .uncertainty import not_beaten, paired_test

__all__ = [
    "Score",
    "FAMILIES",
    "collect_scores",
    "format_summary",
    "group_metrics",
    "png_bytes",
    "png_data_uri",
    "rank_methods",
    "render_report",
    "reproduce_command",
    "software_versions",
    "terminal_width",
    "write_report",
]

_MAX_SIDE = 256  # pictures larger than this are downscaled in the report
#: Above this many metrics the score table is split into one table per metric family, so
#: that it fits a 1280 px window.
MAX_METRICS_PER_TABLE = 9


# -- scores ------------------------------------------------------------------------------------
#: The order of metric families in tables (others follow in the order they appear).
FAMILIES = ("fidelity", "stability", "complexity", "randomisation", "localisation")


@dataclass(frozen=True)
class Score:
    """One cell of the method × metric table: the mean, its 95 % interval ``[low, high]``
    (bootstrap over images; NaN where undefined) and the metric's family."""

    method: str
    metric: str
    mean: float
    higher_is_better: bool
    std: float = float("nan")
    n: int = 0
    result: MetricResult | None = None
    low: float = float("nan")
    high: float = float("nan")
    family: str = ""


def _from_result(method: str, metric: str, res: MetricResult) -> Score:
    scores = np.asarray(res.scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    std = float(finite.std()) if finite.size else float("nan")
    low, high = res.ci
    family = res.family or _registered_family(metric)
    return Score(method, metric, res.mean, bool(res.higher_is_better), std, int(scores.size), res,
                 low, high, family)


def _registered_family(metric: str) -> str:
    """The family of a registered metric named ``metric`` (``"name#2"`` labels included)."""
    from .registry import get_registry

    entry = get_registry().metrics.get(metric.split("#", 1)[0])
    return "" if entry is None else str(getattr(entry.cls, "family", ""))


def collect_scores(results: Any) -> list[Score]:
    """Normalise evaluation results into a list of :class:`Score`.

    Accepts an ``EvaluationTable`` (anything with ``.records``), an iterable of records
    (dicts with ``method``, ``metric``, ``score``, ``higher_is_better`` and optionally
    ``result``), or ``{method: {metric: MetricResult}}``.

    Example:
        >>> scores = collect_scores({"rise": {"deletion": result}})   # one Score per cell
        >>> scores[0].mean == result.mean
        True
    """
    if results is None:
        return []
    if isinstance(results, Mapping):
        out = []
        for method, per_metric in results.items():
            for metric, res in per_metric.items():
                if not isinstance(res, MetricResult):
                    raise ParameterError(
                        f"results[{method!r}][{metric!r}] must be a MetricResult, got {type(res).__name__}"
                    )
                out.append(_from_result(str(method), str(metric), res))
        return out
    records = getattr(results, "records", results)
    if callable(records):
        records = records()
    out = []
    for rec in records:
        if isinstance(rec, Score):
            out.append(rec)
            continue
        if not isinstance(rec, Mapping):
            raise ParameterError(f"cannot read an evaluation record of type {type(rec).__name__}")
        res = rec.get("result")
        if isinstance(res, MetricResult):
            out.append(_from_result(str(rec["method"]), str(rec["metric"]), res))
        else:
            out.append(
                Score(str(rec["method"]), str(rec["metric"]), float(rec["score"]),
                      bool(rec.get("higher_is_better", True)))
            )
    return out


def group_metrics(scores: Sequence[Score]) -> list[tuple[str, list[str]]]:
    """The metrics of ``scores`` grouped by family: ``[(family, [metric, ...]), ...]``, the
    families in the order of :data:`FAMILIES` (others after, unknown last as ``"other"``),
    the metrics of a family in the order they appear.

    Example:
        >>> group_metrics(collect_scores(table))
        [('fidelity', ['deletion', 'insertion']), ('localisation', ['pointing_game'])]
    """
    families: dict[str, list[str]] = {}
    for s in scores:
        members = families.setdefault(s.family or "other", [])
        if s.metric not in members:
            members.append(s.metric)

    def position(family: str) -> int:
        return FAMILIES.index(family) if family in FAMILIES else len(FAMILIES) + (family == "other")

    ordered = sorted(families, key=position)  # stable: other families keep their order
    return [(family, families[family]) for family in ordered]


def _order(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _table(scores: Sequence[Score]) -> tuple[list[str], list[str], dict[tuple[str, str], Score]]:
    methods = _order(s.method for s in scores)
    metrics = [metric for _, members in group_metrics(scores) for metric in members]
    return methods, metrics, {(s.method, s.metric): s for s in scores}


def _best(cells: dict[tuple[str, str], Score], methods: Sequence[str], metric: str) -> set[str]:
    """The methods whose 95 % interval on ``metric`` no other method's interval beats
    (without intervals: the best finite means, ties all count)."""
    values = {m: cells[(m, metric)] for m in methods if (m, metric) in cells}
    if not values:
        return set()
    hib = next(iter(values.values())).higher_is_better
    return not_beaten({m: (s.mean, s.low, s.high) for m, s in values.items()}, hib)


def _leaders_test(cells: dict[tuple[str, str], Score], methods: Sequence[str], metric: str) -> str:
    """The paired test of the two best means on ``metric``, as one line ("" if not possible)."""
    values = [
        cells[(m, metric)] for m in methods
        if (m, metric) in cells and math.isfinite(cells[(m, metric)].mean) and cells[(m, metric)].result
    ]
    if len(values) < 2:
        return ""
    values.sort(key=lambda s: -s.mean if s.higher_is_better else s.mean)
    first, second = values[0], values[1]
    assert first.result is not None and second.result is not None
    if len(first.result.scores) != len(second.result.scores):
        return ""
    test = paired_test(first.result, second.result, higher_is_better=first.higher_is_better)
    if not math.isfinite(test.p_value):
        return ""
    verdict = "differ" if test.better else "do not differ significantly"
    return f"{first.method} vs {second.method}: {verdict} (Wilcoxon p = {test.p_value:.2g}, n = {test.n})"


def rank_methods(scores: Sequence[Score]) -> list[tuple[str, float]]:
    """Methods sorted by their mean rank over the metrics (1 = best on every metric).

    Within a metric the methods are ranked by mean score, respecting ``higher_is_better``;
    ties share the average rank; a method without a finite score on a metric is left out of
    that metric's ranking.

    Example:
        >>> best_method, its_mean_rank = rank_methods(collect_scores(table))[0]
    """
    methods, metrics, cells = _table(scores)
    ranks: dict[str, list[float]] = {m: [] for m in methods}
    for metric in metrics:
        values = [(m, cells[(m, metric)]) for m in methods if (m, metric) in cells]
        values = [(m, s) for m, s in values if math.isfinite(s.mean)]
        if not values:
            continue
        sign = -1.0 if values[0][1].higher_is_better else 1.0
        keys = np.array([sign * s.mean for _, s in values])
        # Average ranks for ties: rank = (number strictly better) + (ties + 1) / 2.
        for (m, _), k in zip(values, keys, strict=True):
            better = float(np.sum(keys < k))
            equal = float(np.sum(keys == k))
            ranks[m].append(better + (equal + 1.0) / 2.0)
    ranked = [(m, float(np.mean(r)) if r else float("nan")) for m, r in ranks.items()]
    return sorted(ranked, key=lambda item: (not math.isfinite(item[1]), item[1]))


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.3f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _summary_cell(cell: Score | None, best: bool) -> str:
    """``mean* ± half-width`` (``*``: not beaten), the mean alone without an interval."""
    if cell is None:
        return "-"
    mark = "*" if best else " "
    if not (math.isfinite(cell.low) and math.isfinite(cell.high)) or not math.isfinite(cell.mean):
        return _fmt(cell.mean) + mark.strip()
    return f"{_fmt(cell.mean)}{mark} ± {_fmt((cell.high - cell.low) / 2.0)}"


def format_summary(
    scores: Sequence[Score], timings: Mapping[str, float] | None = None, *, width: int | None = None
) -> str:
    """A plain-text table of the ranked methods (for the terminal): metrics grouped by family
    with their direction, each cell ``mean ± half-width`` of the 95 % bootstrap interval
    over images; ``*`` marks the methods whose interval no other method beats.

    Args:
        scores: the cells (see :func:`collect_scores`).
        timings: seconds spent explaining, per method (a last column).
        width: the terminal's width in characters: a table wider than that is cut into
            blocks of metric columns, one under the other, each repeating the rank and the
            method, so no line wraps (``None``: one table however wide; see
            :func:`terminal_width`).

    Example:
        >>> print(format_summary(collect_scores(table), timings={"rise": 2.5}, width=100))
    """
    methods, metrics, cells = _table(scores)
    ranked = rank_methods(scores)
    best = {metric: _best(cells, methods, metric) for metric in metrics}
    family_of = {metric: family for family, members in group_metrics(scores) for metric in members}
    fixed_head = ["rank", "method", "mean rank"]
    fixed_rows = [[str(i), method, _fmt(mean_rank)] for i, (method, mean_rank) in enumerate(ranked, start=1)]
    columns = []  # (header, cells per ranked method)
    for metric in metrics:
        hib = next(cells[(m, metric)] for m in methods if (m, metric) in cells).higher_is_better
        values = [_summary_cell(cells.get((method, metric)), method in best[metric]) for method, _ in ranked]
        columns.append((f"{metric} {'↑' if hib else '↓'}", values))
    if timings:
        columns.append(("time (s)", [f"{timings[m]:.1f}" if m in timings else "-" for m, _ in ranked]))
    lines: list[str] = []
    for block in _column_blocks(fixed_head, fixed_rows, columns, width):
        if lines:
            lines.append("")
        lines += _text_table([*fixed_head, *(h for h, _ in block)],
                             [[*row, *(values[i] for _, values in block)] for i, row in enumerate(fixed_rows)])
    groups = ", ".join(
        f"{family}: {' '.join(members)}" for family, members in group_metrics(scores) if members
    )
    if len(set(family_of.values())) > 1 or "other" not in family_of.values():
        lines.append(textwrap.fill(f"families: {groups}", width or 10**6, subsequent_indent="  "))
    note = "mean ± half-width of the 95 % bootstrap interval over images; * = interval not beaten"
    lines.append(textwrap.fill(note, width or 10**6))
    return "\n".join(lines)


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _column_blocks(
    fixed_head: list[str], fixed_rows: list[list[str]], columns: list[tuple[str, list[str]]], width: int | None
) -> list[list[tuple[str, list[str]]]]:
    """``columns`` cut into consecutive blocks that fit ``width`` beside the fixed columns
    (at least one column per block; one block when ``width`` is ``None``)."""
    if width is None or not columns:
        return [columns]

    def span(header: str, values: list[str]) -> int:
        return max(len(header), *(len(v) for v in values)) + 2

    fixed = sum(span(h, [r[i] for r in fixed_rows]) for i, h in enumerate(fixed_head))
    blocks: list[list[tuple[str, list[str]]]] = [[]]
    used = fixed
    for column in columns:
        need = span(*column)
        if blocks[-1] and used + need > width:
            blocks.append([])
            used = fixed
        blocks[-1].append(column)
        used += need
    return blocks


def terminal_width(default: int = 120) -> int:
    """The terminal's width in characters (``COLUMNS``, the terminal's size, else ``default``).

    Example:
        >>> print(format_summary(scores, width=terminal_width()))
    """
    import shutil

    return shutil.get_terminal_size((default, 24)).columns


# -- versions ----------------------------------------------------------------------------------
def software_versions() -> dict[str, str]:
    """Versions of Python, NumPy, the xai-toolbox and every framework already imported.

    Example:
        >>> software_versions()["numpy"] == np.__version__
        True
    """
    from . import __version__

    versions = {"python": platform.python_version(), "xai-toolbox": __version__, "numpy": np.__version__}
    for module in ("eagerpy", "torch", "tensorflow", "keras", "PIL", "matplotlib"):
        mod = sys.modules.get(module)
        if mod is not None:
            name = "pillow" if module == "PIL" else module
            versions[name] = str(getattr(mod, "__version__", "unknown"))
    versions["platform"] = platform.platform(terse=True)
    return versions


# -- pictures ----------------------------------------------------------------------------------
def png_bytes(rgb: np.ndarray, max_side: int | None = None) -> bytes:
    """An ``(H, W, 3)`` float image in ``[0, 1]`` encoded as PNG (downscaled to ``max_side``).

    Example:
        >>> Path("overlay.png").write_bytes(png_bytes(xt.plot.overlay(image, cam)))
    """
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow comes with the plot/all extras
        raise ImportError("writing PNG pictures needs Pillow: pip install pillow") from exc
    array = (np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    img = Image.fromarray(array, mode="RGB")
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_data_uri(rgb: np.ndarray) -> str:
    """An ``(H, W, 3)`` float image in ``[0, 1]`` as a ``data:image/png;base64,...`` URI.

    Images larger than 256 pixels on a side are downscaled first (the report stays small).
    """
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb, _MAX_SIDE)).decode("ascii")


# -- settings ----------------------------------------------------------------------------------
def _render_value(value: Any) -> str:
    if isinstance(value, Mapping):
        if not value:
            return '<span class="muted">none</span>'
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{_render_value(v)}</td></tr>" for k, v in value.items())
        return f'<table class="kv">{rows}</table>'
    if isinstance(value, list | tuple) and not all(isinstance(v, int | float | str | bool) for v in value):
        return "<ul>" + "".join(f"<li>{_render_value(v)}</li>" for v in value) + "</ul>"
    if isinstance(value, list | tuple):
        return esc(", ".join(str(v) for v in value))
    return esc(_plain(value))


def _plain(value: Any) -> str:
    """A parameter value as text: numbers and strings as themselves, callables by name."""
    if value is None or isinstance(value, bool | int | float | str):
        return str(value)
    if callable(value):
        return getattr(value, "__qualname__", None) or repr(value)
    return repr(value)


#: Parameters that change how a run is shown, not what it computes: left out of the report.
_DISPLAY_ONLY = ("progress",)


def reproduce_command(argv: Sequence[str] | None = None) -> str | None:
    """The command line that ran this process, when it is the ``xai-toolbox`` command
    (``None`` otherwise, e.g. in a notebook): the program as ``xai-toolbox``, each argument
    quoted for a POSIX shell.

    Example:
        >>> reproduce_command(["/venv/bin/xai-toolbox", "demo", "--quick"])
        'xai-toolbox demo --quick'
    """
    import shlex

    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return None
    program = Path(argv[0])
    is_cli = program.name == "xai-toolbox" or program.as_posix().endswith(("xai_toolbox/cli.py", "xai_toolbox/__main__.py"))
    return shlex.join(["xai-toolbox", *argv[1:]]) if is_cli else None


def _parameters_section(results: Any) -> list[str]:
    """Every parameter each method and metric ran with: the table's ``resolved_params``
    (defaults included, the layer a CAM picked), those given by the caller in bold."""
    resolved = getattr(results, "resolved_params", None)
    if not resolved:
        return []
    given = getattr(results, "params", {}) or {}
    out = [
        "<h3>Parameters</h3>",
        '<p class="muted">Every parameter as run, defaults included; <strong>bold</strong>: '
        "given explicitly. A method that picks an inner layer shows the layer it used; a "
        "stochastic method or metric without a seed is not reproducible.</p>",
    ]
    for kind in ("methods", "metrics"):
        cards = []
        for name, params in resolved.get(kind, {}).items():
            chosen = given.get(kind, {}).get(name, {})
            rows = []
            for key, value in params.items():
                if key in _DISPLAY_ONLY:
                    continue
                text = esc(_plain(value))
                if key == "seed" and value is None:
                    text += ' <span class="wrong">(unseeded)</span>'
                rows.append(f"<tr><th>{esc(key)}</th><td>{f'<strong>{text}</strong>' if key in chosen else text}</td></tr>")
            cards.append(f'<table class="kv params"><caption>{esc(name)}</caption>{"".join(rows)}</table>')
        if cards:
            out.append(f'<h4>{kind}</h4><div class="cards">{"".join(cards)}</div>')
    return out


_STYLE = """
*,*::before,*::after{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem auto;max-width:1400px;
padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2rem}h3{font-size:1.05rem;margin:1.2rem 0 .3rem}h4{margin:.8rem 0 .3rem;font-size:.95rem}
.muted{color:#666;font-size:.9em}
table.scores{border-collapse:collapse;font-variant-numeric:tabular-nums;max-width:100%;margin-bottom:.8rem}
table.scores caption{text-align:left;font-weight:600;padding:.2rem 0}
table.scores th,table.scores td{border:1px solid #ddd;padding:.25rem .4rem;text-align:right;font-size:.86rem}
table.scores thead th{background:#f4f4f4;font-weight:600;vertical-align:bottom}
table.scores th.method,table.scores td.method{text-align:left}
table.scores .hw{display:block;font-size:.78em;color:#555;white-space:nowrap}
table.scores td.method{overflow-wrap:anywhere;min-width:6em}
td.best{background:#e6f4ea;font-weight:700}
.charts{display:flex;flex-wrap:wrap;gap:1.5rem}
figure{margin:0}figure.chart{max-width:100%}figure.chart figcaption{font-weight:600;margin-bottom:.3rem}
figure.chart svg{max-width:100%;height:auto}
svg text{font-size:10px;fill:#444}svg text.axis{font-size:11px;fill:#222}
ul.legend{list-style:none;padding:0;margin:.4rem 0;columns:2;font-size:.82rem;max-width:480px}
.swatch{display:inline-block;margin-right:.35em;vertical-align:middle}
.wrong{color:#b00020;font-weight:600}
table.kv{border-collapse:collapse;font-size:.85rem;max-width:100%}
table.kv th,table.kv td{border:1px solid #e3e3e3;padding:.2rem .5rem;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
table.kv th{background:#fafafa;font-weight:600}
table.kv caption{text-align:left;font-weight:600;padding:.15rem 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.6rem;align-items:start}
.cards table.kv{width:100%}
pre.command{background:#f6f8fa;border:1px solid #ddd;padding:.5rem .7rem;white-space:pre-wrap;
overflow-wrap:anywhere;font-size:.85rem}
ul.notes li{margin-bottom:.3rem}
""" + GALLERY_STYLE


# -- the report --------------------------------------------------------------------------------
def render_report(
    *,
    images: Any,
    maps: Mapping[str, Any],
    results: Any = None,
    names: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    predictions: Sequence[int] | None = None,
    targets: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    notes: Sequence[str] = (),
    title: str = "xai-toolbox report",
    command: str | None = None,
    channels_first: bool | None = None,
    max_images: int = 32,
    per_page: int = 8,
    alpha: float = 0.8,
    cmap: str | None = None,
    sign: str | Mapping[str, str] = "auto",
    clip_percentile: float = 0.5,
) -> str:
    """The report as an HTML string (see the module docs for its sections).

    Args:
        images: the inputs, ``(N, ...)`` in either layout; normalised inputs are rescaled
            for display (pass the un-normalised images for faithful colours).
        maps: ``{method: explanations (N, H, W)}``, in display order.
        results: scores (see :func:`collect_scores`); ``None`` for a gallery only. An
            :class:`~xai_toolbox.evaluation.EvaluationTable` also gives the parameters every
            method and metric ran with (its ``resolved_params``).
        names: one name per image (file names), shown in captions.
        labels: true class indices, if known; ``predictions``: the model's classes;
            ``targets``: the classes explained.
        class_names: names of the class indices.
        settings: what produced the results (data, model, seeds, ...), shown as tables.
        timings: seconds spent per method (explanation time).
        notes: free-text remarks shown under the title.
        title: the page title.
        command: the command that reproduces the run (default: this process's command line
            when it is ``xai-toolbox``, see :func:`reproduce_command`).
        channels_first: the images' layout if it cannot be read from their type.
        max_images: at most this many images in the gallery (the scores cover all).
        per_page: images per gallery page (8 fit a 1280 px window).
        alpha, cmap, sign, clip_percentile: how maps are drawn (see
            :func:`xai_toolbox.plot.overlay`); ``sign`` may be ``{method: sign}``.

    Example:
        >>> page = render_report(images=x, maps={"gradcam": cam}, results=table)
    """
    rgb = display_images(images, channels_first=channels_first)
    _check_lengths(len(rgb), maps, names=names, labels=labels, predictions=predictions, targets=targets)
    scores = collect_scores(results)
    method_order = _order([*maps, *(s.method for s in scores)])
    colours = dict(zip(method_order, palette(len(method_order)), strict=True))
    gallery = Gallery(rgb, names, labels, predictions, targets, class_names, _per_image_scores(scores))
    command = command if command is not None else reproduce_command()
    return "\n".join([
        *_page_head(title),
        *_header(title, len(rgb), len(maps), scores, notes),
        "<main>",
        *(_scores_section(scores, timings) + _curves_section(scores, colours) if scores else []),
        *gallery.section(maps, max_images=max_images, per_page=per_page, alpha=alpha, cmap=cmap,
                         sign=sign, clip_percentile=clip_percentile),
        *_settings_section(settings, results, command),
        "</main>",
        "</body>",
        "</html>",
    ]) + "\n"


def _per_image_scores(scores: Sequence[Score]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for s in scores:
        if s.result is not None:
            out.setdefault(s.method, {})[s.metric] = np.asarray(s.result.scores, dtype=np.float64)
    return out


def _check_lengths(n: int, maps: Mapping[str, Any], **per_image: Sequence[Any] | None) -> None:
    for method, m in maps.items():
        if int(np.shape(m)[0]) != n:
            raise ParameterError(f"maps[{method!r}] has {np.shape(m)[0]} maps for {n} images")
    for what, seq in per_image.items():
        if seq is not None and len(seq) != n:
            raise ParameterError(f"got {len(seq)} {what} for {n} images")


def _page_head(title: str) -> list[str]:
    return [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
    ]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def _header(title: str, n: int, n_methods: int, scores: Sequence[Score], notes: Sequence[str]) -> list[str]:
    """The title, what the report covers, and the notes."""
    metrics = f", {len(_order(s.metric for s in scores))} metrics" if scores else ""
    out = [
        "<header>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="muted">Generated {esc(_dt.datetime.now().strftime("%Y-%m-%d %H:%M"))} by '
        f"xai-toolbox: {_plural(n, 'image')}, {_plural(n_methods, 'method')}{metrics}.</p>",
    ]
    if notes:
        out.append('<ul class="notes">' + "".join(f"<li>{esc(t)}</li>" for t in notes) + "</ul>")
    out.append("</header>")
    return out


def _scores_section(scores: Sequence[Score], timings: Mapping[str, float] | None) -> list[str]:
    """1. The method × metric table: metrics grouped by family, methods ranked, each cell the
    mean ± half-width of its 95 % interval, the methods whose interval is not beaten marked;
    one table per family when there are more than :data:`MAX_METRICS_PER_TABLE` metrics."""
    methods, metrics, cells = _table(scores)
    groups = group_metrics(scores)
    best = {metric: _best(cells, methods, metric) for metric in metrics}
    ranked = rank_methods(scores)
    out = [
        '<section id="scores">',
        "<h2>Scores</h2>",
        '<p class="muted">Mean over the images ± half-width of its 95 % confidence interval '
        "(percentile bootstrap over images, seeded); ↑ higher is better, ↓ lower is better. "
        "Highlighted (★): the methods whose interval no other method's interval beats — "
        "several are marked when the images cannot tell them apart. Metrics are grouped by "
        "family; methods are ranked by their mean rank over all the metrics. Hover a cell for "
        "its interval and the per-image scores.</p>",
    ]
    if len(metrics) <= MAX_METRICS_PER_TABLE:
        out += _score_table(groups, ranked, cells, best, timings, caption=None)
    else:
        for i, (family, members) in enumerate(groups):
            out += _score_table([(family, members)], ranked, cells, best, timings if i == 0 else None,
                                caption=family)
    tests = [(metric, _leaders_test(cells, methods, metric)) for metric in metrics]
    tests = [(metric, line) for metric, line in tests if line]
    if tests:
        out.append(
            '<p class="muted">Paired test of the two best means per metric (Wilcoxon signed-rank '
            "on the per-image scores, two-sided, 5 %):</p>"
        )
        out.append(
            '<ul class="tests">'
            + "".join(f"<li><strong>{esc(metric)}</strong>: {esc(line)}</li>" for metric, line in tests)
            + "</ul>"
        )
    out.append("</section>")
    return out


def _score_table(
    groups: list[tuple[str, list[str]]],
    ranked: list[tuple[str, float]],
    cells: dict[tuple[str, str], Score],
    best: dict[str, set[str]],
    timings: Mapping[str, float] | None,
    caption: str | None,
) -> list[str]:
    metrics = [metric for _, members in groups for metric in members]
    methods = [m for m, _ in ranked]
    head = "".join(f"<th>{_breakable(metric)} {_arrow(cells, methods, metric)}</th>" for metric in metrics)
    time_head = "<th>time (s)</th>" if timings else ""
    family_head = "".join(f'<th colspan="{len(members)}">{esc(family)}</th>' for family, members in groups)
    families = f'<tr class="families"><th colspan="3"></th>{family_head}{"<th></th>" if timings else ""}</tr>'
    out = [
        '<table class="scores">' + (f"<caption>{esc(caption)}</caption>" if caption else ""),
        f"<thead>{'' if caption else families}",
        f'<tr><th>rank</th><th class="method">method</th><th>mean rank</th>{head}{time_head}</tr></thead><tbody>',
    ]
    for i, (method, mean_rank) in enumerate(ranked, start=1):
        row = [f"<td>{i}</td>", f'<td class="method">{_breakable(method)}</td>', f"<td>{_fmt(mean_rank)}</td>"]
        row += [_score_cell(cells.get((method, metric)), method in best[metric]) for metric in metrics]
        if timings:
            row.append(f"<td>{timings[method]:.2f}</td>" if method in timings else "<td>-</td>")
        out.append("<tr>" + "".join(row) + "</tr>")
    out.append("</tbody></table>")
    return out


def _breakable(name: str) -> str:
    """A metric name that may wrap after its underscores (narrow columns)."""
    return "_<wbr/>".join(esc(part) for part in name.split("_"))  # <wbr/>: a void element, closed for XML-minded parsers


def _arrow(cells: dict[tuple[str, str], Score], methods: Sequence[str], metric: str) -> str:
    first = next(m for m in methods if (m, metric) in cells)
    return "↑" if cells[first, metric].higher_is_better else "↓"


def _score_cell(cell: Score | None, best: bool) -> str:
    if cell is None:
        return "<td>-</td>"
    tip = ""
    if cell.n:
        tip = f"mean {_fmt(cell.mean)}, 95 % CI [{_fmt(cell.low)}, {_fmt(cell.high)}], std {_fmt(cell.std)}, n={cell.n}"
        if cell.result is not None and cell.n <= 64:
            per_image = ", ".join(_fmt(float(v)) for v in np.asarray(cell.result.scores, dtype=np.float64))
            tip += f"\nper image: {per_image}"
    text = _fmt(cell.mean) + (" ★" if best else "")
    if math.isfinite(cell.mean) and math.isfinite(cell.low) and math.isfinite(cell.high):
        text += f' <span class="hw">± {_fmt((cell.high - cell.low) / 2.0)}</span>'
    css = ' class="best"' if best else ""
    return f'<td{css} title="{esc(tip)}">{text}</td>'


def _curves_section(scores: Sequence[Score], colours: Mapping[str, str]) -> list[str]:
    """2. The mean curve per method of every curve metric (deletion, insertion), with bands."""
    methods, metrics, cells = _table(scores)
    charts = []
    for metric in metrics:
        with_curves = {
            m: cells[m, metric].result for m in methods
            if (m, metric) in cells and _has_curves(cells[m, metric])
        }
        chart = curve_chart(metric, with_curves, colours) if with_curves else ""  # type: ignore[arg-type]
        if chart:
            charts.append(chart)
    if not charts:
        return []
    return [
        '<section id="curves">',
        "<h2>Curves</h2>",
        '<p class="muted">Mean model output as pixels are removed (deletion: lower is better) or '
        "inserted (insertion: higher is better) in the order of each method's map; shaded: the "
        "95 % interval of the mean over the images. Hover a curve for its score.</p>",
        '<div class="charts">' + "".join(charts) + "</div>",
        "</section>",
    ]


def _has_curves(cell: Score) -> bool:
    return cell.result is not None and cell.result.curves is not None


def _settings_section(settings: Mapping[str, Any] | None, results: Any, command: str | None) -> list[str]:
    """4. The command to reproduce, the settings, every parameter as run, the software."""
    shown = dict(settings or {})
    if getattr(results, "resolved_params", None):  # the resolved parameters replace the given ones
        shown = {k: v for k, v in shown.items() if k not in ("methods", "metrics")}
    out = ['<section id="settings">', "<h2>Settings</h2>"]
    if command:
        out += [
            "<h3>Reproduce</h3>",
            f'<pre class="command"><code>{esc(command)}</code></pre>',
            f'<p class="muted">run from {esc(Path.cwd())}</p>',
        ]
    out.append(_render_value(shown) if shown else '<p class="muted">none recorded</p>')
    out += _parameters_section(results)
    out += ["<h2>Software</h2>", _render_value(software_versions()), "</section>"]
    return out


def write_report(path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`render_report` ``(**kwargs)`` to ``path`` (UTF-8) and return the path.

    Written by :func:`xai_toolbox.io.write_output`: never through a symbolic link planted at
    ``path``, and atomically (no empty or half-written report if rendering or writing fails).

    Example:
        >>> write_report("out/report.html", images=x, maps={"rise": maps}, results=table)
        PosixPath('out/report.html')
    """
    from .io import write_output

    path = Path(path)
    page = render_report(**kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_output(path.parent, path.name, page)
