"""Plots of concepts and feature visualisations: importance bars, concept crop grids, concept
attribution maps, and feature visualisations with their transparency.

Like :mod:`xai_toolbox.plot`, every function returns a :class:`matplotlib.figure.Figure` built
without ``pyplot`` (no global backend touched; a notebook shows it inline). The result objects
have the same plots as methods (``concepts.plot_crops()``, ``vis.plot()``).

Example:
    >>> from xai_toolbox import plot_concepts
    >>> concepts = xt.concepts("craft", model, layer="layer4")(images, class_id=3)
    >>> plot_concepts.importances(concepts).savefig("importances.png")
    >>> plot_concepts.concept_crops(concepts, top=5, crops=8).savefig("crops.png")
    >>> plot_concepts.concept_maps(concepts, images[:4]).savefig("where.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends.adapter import to_numpy
from .errors import ParameterError
from .plot import display_images

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from ._concepts import Concepts
    from ._featurevis import Visualization

__all__ = ["concept_colors", "concept_crops", "concept_maps", "featurevis", "featurevis_grid", "importances"]


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("xai_toolbox.plot_concepts needs matplotlib: pip install matplotlib") from exc
    return Figure(figsize=(width, height), layout="constrained")


def _bare(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def concept_colors(count: int) -> np.ndarray:
    """``(count, 3)`` distinct RGB colours, one per concept (matplotlib's ``tab10``, then
    ``tab20``), the same in every plot of this module.

    Example:
        >>> concept_colors(3).shape
        (3, 3)
    """
    import matplotlib

    palette = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    return np.asarray([palette(i % palette.N)[:3] for i in range(count)], dtype=np.float32)


def _shown(concepts: Concepts, top: int | None, which: Sequence[int] | None) -> list[int]:
    r = len(concepts)
    if which is not None:
        chosen = [int(i) for i in which]
        bad = [i for i in chosen if not 0 <= i < r]
        if bad:
            raise ParameterError(f"concepts {bad} are out of range: there are {r} concepts")
        return chosen
    count = r if top is None else int(top)
    if count < 1:
        raise ParameterError(f"top must be at least 1, got {top}")
    return [int(i) for i in concepts.order[:count]]


def importances(concepts: Concepts, *, top: int | None = None, figsize: tuple[float, float] = (5.0, 3.0)) -> Figure:
    """Horizontal bars of the concepts' importances, the most important on top, each in its
    concept's colour.

    Args:
        concepts: a concept method's result.
        top: show only the ``top`` most important concepts.
        figsize: figure size in inches.

    Example:
        >>> importances(concepts, top=10).savefig("importances.png")
    """
    shown = _shown(concepts, top, None)
    values = np.asarray(concepts.importances)[shown]
    colors = concept_colors(len(concepts))[shown]
    fig = _figure(*figsize)
    ax = fig.subplots()
    positions = np.arange(len(shown))[::-1]
    ax.barh(positions, values, color=colors)
    ax.set_yticks(positions, [f"concept {i}" for i in shown], fontsize=8)
    ax.set_xlabel("importance (Sobol total index)")
    ax.set_title(f"{concepts.method}: concepts of class {concepts.class_id}", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def concept_crops(
    concepts: Concepts,
    *,
    top: int | None = 5,
    crops: int = 8,
    which: Sequence[int] | None = None,
    cell_size: float = 1.0,
) -> Figure:
    """One row per concept (the most important first): its importance and the crops that hold
    the most of it.

    Args:
        concepts: a concept method's result with example crops (CRAFT's).
        top: how many of the most important concepts to show.
        crops: crops per concept.
        which: concept indices to show instead of the ``top`` ones.
        cell_size: size of one crop in inches.

    Example:
        >>> concept_crops(concepts, top=5, crops=8).savefig("concepts.png")
    """
    shown = _shown(concepts, top, which)
    rows = [np.clip(display_images(concepts.top_crops(i, crops), channels_first=False), 0.0, 1.0) for i in shown]
    cols = max(len(r) for r in rows)
    colors = concept_colors(len(concepts))
    fig = _figure(cell_size * cols + 1.2, cell_size * len(shown))
    axes = np.asarray(fig.subplots(len(shown), cols, squeeze=False))
    for row, (concept, pictures) in enumerate(zip(shown, rows, strict=True)):
        for col in range(cols):
            ax = axes[row, col]
            _bare(ax)
            if col < len(pictures):
                ax.imshow(pictures[col], interpolation="nearest")
            else:
                ax.set_axis_off()
        label = f"concept {concept}\n{float(np.asarray(concepts.importances)[concept]):.3f}"
        axes[row, 0].set_ylabel(label, fontsize=8, color=colors[concept])
        for side in ("left", "right", "top", "bottom"):
            axes[row, 0].spines[side].set_color(colors[concept])
            axes[row, 0].spines[side].set_linewidth(2)
    return fig


def concept_maps(
    concepts: Concepts,
    images: Any,
    *,
    top: int | None = 3,
    which: Sequence[int] | None = None,
    maps: Any = None,
    filter_percentile: float = 90.0,
    alpha: float = 0.65,
    image_titles: Sequence[str] | None = None,
    cell_size: float = 1.6,
) -> Figure:
    """Where the concepts appear: one row per image, the image then one panel per concept
    with the concept's map drawn in its colour where it is above its ``filter_percentile``
    (as Xplique's ``plot_concept_attribution_map``), and a last panel with every shown concept.

    Args:
        concepts: a concept method's result that locates concepts (CRAFT's).
        images: a batch in the model's layout (native or NumPy).
        top: how many of the most important concepts to show.
        which: concept indices to show instead of the ``top`` ones.
        maps: the concept attribution maps of ``images`` if already computed, ``(N, r, H, W)``.
        filter_percentile: per image and concept, values below this percentile are hidden.
        alpha: opacity of the concept colour at the map's maximum.
        image_titles: one label per row.
        cell_size: size of one panel in inches.

    Example:
        >>> concept_maps(concepts, images[:4], top=3).savefig("where.png")
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ParameterError(f"alpha must be in [0, 1], got {alpha}")
    if not 0.0 <= float(filter_percentile) <= 100.0:
        raise ParameterError(f"filter_percentile must be in [0, 100], got {filter_percentile}")
    shown = _shown(concepts, top, which)
    rgb = np.clip(display_images(images), 0.0, 1.0)
    m = to_numpy(concepts.attribution_maps(images) if maps is None else maps).astype(np.float64)
    if m.ndim != 4 or m.shape[0] != len(rgb) or m.shape[2:] != rgb.shape[1:3]:
        raise ParameterError(f"maps of shape {m.shape} do not fit {len(rgb)} images of {rgb.shape[1:3]}")
    colors = concept_colors(len(concepts))
    n, cols = len(rgb), len(shown) + 2
    if image_titles is not None and len(image_titles) < n:
        raise ParameterError(f"got {len(image_titles)} image_titles for {n} images")
    fig = _figure(cell_size * cols, cell_size * n)
    axes = np.asarray(fig.subplots(n, cols, squeeze=False))
    for row in range(n):
        together = rgb[row].copy()
        panels = [("input", rgb[row])]
        for concept in shown:
            weight = _filtered(m[row, concept], filter_percentile) * alpha
            panels.append((f"concept {concept}", _tint(rgb[row], weight, colors[concept])))
            together = _tint(together, weight, colors[concept])
        panels.append(("together", together))
        for col, (title, picture) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(np.clip(picture, 0.0, 1.0), interpolation="nearest")
            _bare(ax)
            if row == 0:
                color = colors[shown[col - 1]] if 0 < col <= len(shown) else "black"
                ax.set_title(title, fontsize=8, color=color)
        if image_titles is not None:
            axes[row, 0].set_ylabel(str(image_titles[row]), fontsize=8)
    return fig


def _filtered(m: np.ndarray, percentile: float) -> np.ndarray:
    """``m`` zeroed below its ``percentile`` and divided by its maximum: ``[0, 1]``."""
    kept = np.where(m >= np.percentile(m, percentile), m, 0.0)
    top = kept.max()
    return kept / top if top > 0 else np.zeros_like(kept)


def _tint(rgb: np.ndarray, weight: np.ndarray, color: np.ndarray) -> np.ndarray:
    return (1.0 - weight[..., None]) * rgb + weight[..., None] * color


def featurevis(
    vis: Visualization,
    *,
    transparency: bool = True,
    percentile: float = 80.0,
    title: str | None = None,
    size: float = 3.0,
) -> Figure:
    """A feature visualisation, faded to black where its transparency map is low (see
    :meth:`~xai_toolbox.extend.Visualization.display`); ``transparency=False`` shows the
    image alone.

    Example:
        >>> featurevis(vis).savefig("maco.png")
    """
    fig = _figure(size, size)
    ax = fig.subplots()
    ax.imshow(vis.display(transparency=transparency, percentile=percentile), interpolation="nearest")
    _bare(ax)
    ax.set_title(title if title is not None else f"{vis.method}: {vis.objective.describe()}", fontsize=9)
    return fig


def featurevis_grid(
    visualizations: Sequence[Visualization],
    *,
    titles: Sequence[str] | None = None,
    transparency: bool = True,
    both: bool = False,
    percentile: float = 80.0,
    cell_size: float = 1.8,
) -> Figure:
    """Several feature visualisations side by side; ``both`` adds a second row with the
    images without transparency.

    Example:
        >>> featurevis_grid([maco(c, shape) for c in range(5)], titles=class_names)
    """
    visualizations = list(visualizations)
    if not visualizations:
        raise ParameterError("no visualisations to plot")
    if titles is not None and len(titles) != len(visualizations):
        raise ParameterError(f"got {len(titles)} titles for {len(visualizations)} visualisations")
    rows = 2 if both else 1
    fig = _figure(cell_size * len(visualizations), cell_size * rows + 0.3)
    axes = np.asarray(fig.subplots(rows, len(visualizations), squeeze=False))
    for col, vis in enumerate(visualizations):
        faded = [transparency, False] if both else [transparency]
        for row, fade in enumerate(faded):
            ax = axes[row, col]
            ax.imshow(vis.display(transparency=fade, percentile=percentile), interpolation="nearest")
            _bare(ax)
        axes[0, col].set_title(titles[col] if titles is not None else vis.objective.describe(), fontsize=8)
    return fig
