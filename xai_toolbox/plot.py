"""Plotting for notebooks: heatmap overlays, method grids and deletion/insertion curves.

Maps are shown the way Captum's ``visualize_image_attr`` and Xplique's ``plot_attributions``
show them: the sign chosen (``sign="all"`` on a diverging colormap centred on zero for signed
maps such as Gradient×Input, ``"positive"``, ``"negative"`` or ``"absolute"``; ``"auto"``
picks), the largest values clipped at a percentile so a few pixels do not wash out the rest,
a perceptually uniform colormap by default, and a colourbar saying what the colours mean.

Everything here accepts native tensors (PyTorch, TensorFlow) or NumPy arrays, in either
layout: a PyTorch tensor is read channels-first, a TensorFlow tensor channels-last, and a
NumPy array by looking for the axis of size 1, 3 or 4 (pass ``channels_first=`` to decide
explicitly). :func:`overlay` needs only NumPy (and Pillow to resize a map to its image);
:func:`grid` and :func:`curves` return :class:`matplotlib.figure.Figure` objects built without
``pyplot``, so they neither need nor change a global backend — a notebook shows them inline.

Example:
    >>> import xai_toolbox as xt
    >>> maps = {m: xt.explain(model, images, labels, method=m) for m in ("saliency", "gradcam")}
    >>> fig = xt.plot.grid(images, maps, image_titles=["cat", "dog"])
    >>> fig.savefig("maps.png")
    >>> rgb = xt.plot.overlay(images[0], maps["gradcam"][0], alpha=0.4)   # (H, W, 3) in [0, 1]
    >>> scale = xt.plot.map_scale(maps["saliency"])                       # what the colours mean
    >>> scale.sign, scale.describe()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends import native_framework
from .backends.adapter import to_numpy
from .colours import (
    DIVERGING_CMAP,
    SEQUENTIAL_CMAP,
    SIGNS,
    MapScale,
    auto_sign,
    colormap,
    heatmap,
    map_scale,
    palette,
)
from .errors import InputError, ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .base import MetricResult

__all__ = [
    "DIVERGING_CMAP",
    "SEQUENTIAL_CMAP",
    "SIGNS",
    "MapScale",
    "auto_sign",
    "colormap",
    "curve_band",
    "curve_labels",
    "curves",
    "display_images",
    "grid",
    "heatmap",
    "map_scale",
    "overlay",
    "palette",
    "scores",
    "to_numpy",
]

_CHANNEL_SIZES = (1, 3, 4)


# -- conversion --------------------------------------------------------------------------------
def _framework_channels_first(x: Any) -> bool | None:
    """Whether ``x``'s framework puts channels first (PyTorch), last (Keras), or ``None`` for
    NumPy arrays and other objects (then the layout is guessed from the shape)."""
    framework = native_framework(x)
    return None if framework is None else framework.channel_axis == 1


def _single_image(a: np.ndarray, channels_first: bool | None) -> np.ndarray:
    """One image ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)`` as ``(H, W, C)``."""
    if a.ndim == 2:
        return a[..., None]
    if a.ndim != 3:
        raise InputError(f"expected one image (H, W), (C, H, W) or (H, W, C); got shape {a.shape}")
    if channels_first is None:
        channels_first = a.shape[0] in _CHANNEL_SIZES and a.shape[-1] not in _CHANNEL_SIZES
    return np.moveaxis(a, 0, -1) if channels_first else a


def _image_batch(a: np.ndarray, channels_first: bool | None) -> np.ndarray:
    """A batch ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` as ``(N, H, W, C)``."""
    if a.ndim == 3:
        return a[..., None]
    if a.ndim != 4:
        raise InputError(
            f"expected a batch of images (N, H, W), (N, C, H, W) or (N, H, W, C); got shape {a.shape}"
        )
    if channels_first is None:
        channels_first = a.shape[1] in _CHANNEL_SIZES and a.shape[-1] not in _CHANNEL_SIZES
    return np.moveaxis(a, 1, -1) if channels_first else a


def _to_rgb(a: np.ndarray) -> np.ndarray:
    """``(..., H, W, C)`` with C in 1, 3, 4 as float RGB in ``[0, 1]`` (rescaled if outside)."""
    if a.shape[-1] not in _CHANNEL_SIZES:
        raise InputError(
            f"images must have 1, 3 or 4 channels, got {a.shape[-1]} (shape {a.shape}); pass "
            "channels_first= if the layout was guessed wrong"
        )
    a = a.astype(np.float32)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 4:
        a = a[..., :3]  # drop alpha
    if a.size and not np.all(np.isfinite(a)):
        raise InputError("images contain NaN or infinite values")
    # Normalised inputs (e.g. ImageNet mean/std) are rescaled per image for display only.
    flat = a.reshape(-1, *a.shape[-3:]) if a.ndim == 4 else a[None]
    out = np.empty_like(flat)
    for i, img in enumerate(flat):
        lo, hi = float(img.min()), float(img.max())
        if lo < 0.0 or hi > 1.0:
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        out[i] = img
    return out.reshape(a.shape)


def display_images(images: Any, *, channels_first: bool | None = None, batch: bool = True) -> np.ndarray:
    """Images as float RGB ``(N, H, W, 3)`` (or ``(H, W, 3)`` with ``batch=False``) in ``[0, 1]``.

    Images with values outside ``[0, 1]`` (normalised inputs) are min-max rescaled per image.

    Example:
        >>> display_images(torch.rand(2, 3, 8, 8)).shape
        (2, 8, 8, 3)
    """
    if channels_first is None:
        channels_first = _framework_channels_first(images)
    a = to_numpy(images)
    a = _image_batch(a, channels_first) if batch else _single_image(a, channels_first)
    return _to_rgb(a)


def _maps_array(maps: Any, batch: bool) -> np.ndarray:
    m = to_numpy(maps).astype(np.float32)
    if batch and m.ndim == 4:  # one value per input value: average the channels
        channels_first = _framework_channels_first(maps)
        if channels_first is None:
            channels_first = m.shape[1] in _CHANNEL_SIZES and m.shape[-1] not in _CHANNEL_SIZES
        m = m.mean(axis=1 if channels_first else -1)
    want = 3 if batch else 2
    if m.ndim != want:
        raise InputError(
            f"expected explanation maps {'(N, H, W)' if batch else '(H, W)'}, got shape {m.shape}"
        )
    return np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)


def _resize_map(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if m.shape == shape:
        return m
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is in the plot extra
        raise ImportError("resizing a map to its image needs Pillow: pip install pillow") from exc
    img = Image.fromarray(m.astype(np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), dtype=np.float32)


# -- public API ----------------------------------------------------------------------------------
BACKGROUNDS = ("gray", "color", "none")


def overlay(
    images: Any,
    maps: Any,
    alpha: float = 0.8,
    cmap: str | Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    sign: str = "auto",
    clip_percentile: float = 0.5,
    fade: bool = True,
    background: str = "gray",
    shared_scale: bool = False,
    channels_first: bool | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """Heatmaps drawn over their images.

    Each map is put on its colour scale (:func:`map_scale`: the sign shown, percentile
    clipping, a diverging colormap centred on zero for signed maps, a perceptually uniform one
    otherwise) and blended onto the image: ``(1 - a) * image + a * cmap(value)`` with opacity
    ``a = alpha * |value|`` (``fade``, the default: zero attribution shows the image itself,
    not a colour that looks important) or ``a = alpha`` everywhere. The image is shown in grey
    under the colours by default (as Captum's blended heat map), which keeps the colours
    readable on colourful photos.

    Args:
        images: one image ``(H, W)`` / ``(C, H, W)`` / ``(H, W, C)``, or a batch
            ``(N, ...)``; a native tensor or NumPy array. Whether a batch is meant is read
            from ``maps``: ``(H, W)`` for one image, ``(N, H, W)`` for a batch.
        maps: explanations ``(H, W)`` for one image, ``(N, H, W)`` for a batch (a batch
            with a channel axis, ``(N, C, H, W)``/``(N, H, W, C)``, is averaged over it); a map
            of another size than its image is resized bilinearly.
        alpha: opacity of the heatmap at the ends of its scale, in ``[0, 1]``.
        cmap: a colormap name (matplotlib's, or the built-in ``"viridis"``/``"RdBu_r"``/
            ``"jet"``/``"gray"``) or a function from ``[0, 1]`` values to RGB; ``None``: by sign.
        sign, clip_percentile: which sign is shown and how much saturates (:func:`map_scale`).
        fade: opacity proportional to ``|value|`` on the scale (``False``: uniform ``alpha``).
        background: the image under the heatmap: ``"gray"``, ``"color"`` or ``"none"``
            (the heatmap alone).
        shared_scale: one colour scale for the whole batch instead of one per map.
        channels_first: the images' layout; ``None`` reads it from the tensor type or guesses.
        normalize: put the maps on their scale first (``False``: the maps are already in
            ``[0, 1]``, or ``[-1, 1]`` for ``sign="all"``, and are only clipped to it).

    Returns:
        float32 RGB in ``[0, 1]``: ``(H, W, 3)`` for one image, ``(N, H, W, 3)`` for a batch.

    Example:
        >>> rgb = overlay(images, maps, alpha=0.7, sign="all")        # (N, H, W, 3)
        >>> Image.fromarray((rgb[0] * 255).astype("uint8")).save("overlay.png")
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ParameterError(f"alpha must be in [0, 1], got {alpha}")
    if background not in BACKGROUNDS:
        raise ParameterError(f"background must be one of {', '.join(BACKGROUNDS)}; got {background!r}")
    batch = len(getattr(maps, "shape", np.shape(maps))) >= 3
    rgb = display_images(images, channels_first=channels_first, batch=batch)
    m = _maps_array(maps, batch)
    if batch and len(m) != len(rgb):
        raise InputError(f"got {len(rgb)} images but {len(m)} maps")
    rgb_b, m_b = (rgb, m) if batch else (rgb[None], m[None])
    m_b = np.stack([_resize_map(mp, img.shape[:2]) for img, mp in zip(rgb_b, m_b, strict=True)])
    scale = map_scale(m_b, sign=sign, clip_percentile=clip_percentile, shared=shared_scale, cmap=cmap)
    if normalize:
        values = scale.normalize(m_b)
    else:
        values = np.clip(m_b, -1.0 if scale.diverging else 0.0, 1.0).astype(np.float32)
    colours = scale.colours(values)
    opacity = alpha * (np.abs(values) if fade else np.ones_like(values))
    under = _background(rgb_b, background)
    out = (1.0 - opacity[..., None]) * under + opacity[..., None] * colours
    if background == "none":
        out = colours
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    return out if batch else out[0]


def _background(rgb: np.ndarray, background: str) -> np.ndarray:
    if background == "color":
        return rgb
    if background == "gray":  # luma (ITU-R BT.601), lightened so dark images stay legible
        luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.repeat((0.2 + 0.6 * luma)[..., None], 3, axis=-1)
    return np.ones_like(rgb)


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("xai_toolbox.plot.grid/curves need matplotlib: pip install matplotlib") from exc
    return Figure(figsize=(width, height), layout="constrained")


def grid(
    images: Any,
    maps_by_method: Mapping[str, Any],
    titles: Sequence[str] | None = None,
    *,
    image_titles: Sequence[str] | None = None,
    alpha: float = 0.8,
    cmap: str | Callable[[np.ndarray], np.ndarray] | None = None,
    sign: str | Mapping[str, str] = "auto",
    clip_percentile: float = 0.5,
    fade: bool = True,
    background: str = "gray",
    shared_scale: bool = False,
    colorbar: bool = True,
    channels_first: bool | None = None,
    show_input: bool = True,
    max_images: int | None = None,
    cell_size: float = 1.8,
) -> Figure:
    """A figure with one row per image: the input, then one overlay per method, and under
    each method's column a colourbar saying what its colours mean.

    Args:
        images: a batch ``(N, ...)`` in either layout (see :func:`overlay`).
        maps_by_method: ``{method name: maps (N, H, W)}``, in column order.
        titles: column titles for the methods (default: the dict's keys).
        image_titles: one label per row (e.g. the class), shown on the left.
        alpha, cmap, clip_percentile, fade, background, shared_scale, channels_first: as for
            :func:`overlay`.
        sign: as for :func:`overlay`, for every method, or ``{method: sign}`` (missing:
            ``"auto"``).
        colorbar: a colourbar under each method's column (``−s 0 +s`` for signed maps,
            ``0 s`` otherwise, ``s`` the per-map clipping value; actual values with
            ``shared_scale=True``).
        show_input: add a first column with the plain input.
        max_images: show only the first ``max_images`` rows.
        cell_size: size of one panel in inches.

    Returns:
        a :class:`matplotlib.figure.Figure` (no pyplot state involved).

    Example:
        >>> fig = grid(images, {"gradcam": cam, "integrated_gradients": ig},
        ...            image_titles=["cat", "dog"])
        >>> fig.savefig("grid.png", dpi=120)
    """
    if not maps_by_method:
        raise ParameterError("maps_by_method is empty: pass {method name: maps}")
    names = list(maps_by_method)
    titles = list(titles) if titles is not None else names
    if len(titles) != len(names):
        raise ParameterError(f"got {len(titles)} titles for {len(names)} methods")
    rgb = display_images(images, channels_first=channels_first)
    n = len(rgb) if max_images is None else min(len(rgb), int(max_images))
    if image_titles is not None and len(image_titles) < n:
        raise ParameterError(f"got {len(image_titles)} image_titles for {n} images")
    signs = sign if isinstance(sign, Mapping) else dict.fromkeys(names, sign)
    overlays, scales = [], []
    for name in names:
        m = _maps_array(maps_by_method[name], batch=True)
        if len(m) != len(rgb):
            raise InputError(f"method {name!r}: got {len(m)} maps for {len(rgb)} images")
        options = {"sign": signs.get(name, "auto"), "clip_percentile": clip_percentile,
                   "shared": shared_scale, "cmap": cmap}
        scales.append(map_scale(m[:n], **options))
        overlays.append(overlay(rgb[:n], m[:n], alpha=alpha, cmap=cmap, sign=options["sign"],
                                clip_percentile=clip_percentile, fade=fade, background=background,
                                shared_scale=shared_scale, channels_first=False))
    cols = len(names) + int(show_input)
    bar_rows = int(colorbar)
    fig = _figure(cell_size * cols, cell_size * (n + 0.35 * bar_rows))
    axes = np.asarray(
        fig.subplots(n + bar_rows, cols, squeeze=False,
                     gridspec_kw={"height_ratios": [1.0] * n + [0.12] * bar_rows})
    )
    for row in range(n):
        panels = ([("input", rgb[row])] if show_input else []) + [
            (title, ov[row]) for title, ov in zip(titles, overlays, strict=True)
        ]
        for col, (title, picture) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if col == 0 and image_titles is not None:
                ax.set_ylabel(str(image_titles[row]), fontsize=9)
    if colorbar:
        first = int(show_input)
        if show_input:
            axes[n, 0].set_axis_off()
        for col, scale in enumerate(scales, start=first):
            _colorbar(axes[n, col], scale)
    return fig


def _colorbar(ax: Any, scale: MapScale) -> None:
    """A horizontal colourbar of ``scale`` drawn as an image in ``ax``."""
    lo = -1.0 if scale.diverging else 0.0
    ramp = np.linspace(lo, 1.0, 128, dtype=np.float32)[None, :]
    ax.imshow(scale.colours(ramp), aspect="auto", extent=(lo, 1.0, 0.0, 1.0))
    ax.set_yticks([])
    ticks = [-1.0, 0.0, 1.0] if scale.diverging else [0.0, 1.0]
    ax.set_xticks(ticks, labels=list(scale.tick_labels()), fontsize=7)
    ax.tick_params(length=2, pad=1)


def curve_axis(result: MetricResult) -> np.ndarray:
    """The x-axis of a curve metric's curves: the metric's own, else ``linspace(0, 1)``."""
    assert result.curves is not None
    steps = result.curves.shape[-1]
    for key in ("fractions", "x", "fraction", "steps_fraction", "axis"):
        value = result.details.get(key)
        if value is not None and np.asarray(value).shape == (steps,):
            return np.asarray(value, dtype=np.float64)
    return np.linspace(0.0, 1.0, steps)


#: What the x-axis of each known curve metric measures (others: "fraction of the input").
CURVE_X_LABELS = {
    "deletion": "fraction of pixels removed (most relevant first)",
    "insertion": "fraction of pixels inserted (most relevant first)",
}


def curve_labels(result: MetricResult) -> tuple[str, str]:
    """``(x label, y label)`` of a curve metric's chart: what is perturbed, and the model
    output the curve follows (its ``activation`` detail, when the metric reports one).

    Example:
        >>> curve_labels(deletion_result)
        ('fraction of pixels removed (most relevant first)', 'model score')
    """
    x = CURVE_X_LABELS.get(result.name.split("#", 1)[0], "fraction of the input perturbed")
    activation = result.details.get("activation")
    y = {"softmax": "class probability", "sigmoid": "class probability"}.get(str(activation), "model score")
    return x, y


def curve_band(result: MetricResult, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean curve over the inputs and a ``confidence`` band around it: ``(mean, low, high)``
    per step, the band ``mean ± z · std / sqrt(n)`` (normal approximation of the interval of
    the mean; ``low == high == mean`` with one input).

    Example:
        >>> mean, low, high = curve_band(result)
    """
    from statistics import NormalDist

    assert result.curves is not None
    curves = np.asarray(result.curves, dtype=np.float64)
    mean = np.nanmean(curves, axis=0)
    n = np.sum(np.isfinite(curves), axis=0)
    std = np.nanstd(curves, axis=0, ddof=1) if curves.shape[0] > 1 else np.zeros_like(mean)
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    half = np.where(n > 1, z * np.nan_to_num(std) / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, mean - half, mean + half


#: Line styles cycled with the colours, so curves stay apart in grey print too.
DASHES = ("solid", (0, (5, 2)), (0, (1, 1.5)), (0, (4, 1.5, 1, 1.5)))


def curves(
    results: MetricResult | Mapping[str, MetricResult],
    *,
    title: str | None = None,
    individual: bool = False,
    band: bool | None = None,
    figsize: tuple[float, float] = (5.0, 3.5),
) -> Figure:
    """Mean curve (with its AUC in the legend) of a curve metric, per method, with the 95 %
    band of the mean over the inputs.

    Each method gets its own colour (and a line style, so curves stay apart in grey print);
    the axes say what is perturbed and which model output is followed; the y range follows
    the data, so small scores are not flattened against a ``[0, 1]`` axis.

    Args:
        results: one :class:`~xai_toolbox.MetricResult` with ``curves`` (deletion,
            insertion, ...), or ``{label: MetricResult}`` to compare methods on one axis.
        title: the axes title (default: the metric's name).
        individual: also draw each input's curve, thin and transparent.
        band: shade the 95 % interval of the mean curve (:func:`curve_band`); ``None``: up to
            6 methods (more bands would cover each other).
        figsize: figure size in inches.

    Returns:
        a :class:`matplotlib.figure.Figure`.

    Example:
        >>> res = {m: xt.metric("deletion", model)(images, labels, maps[m]) for m in maps}
        >>> curves(res).savefig("deletion.png")
    """
    from .base import MetricResult

    if isinstance(results, MetricResult):
        results = {results.name: results}
    if not results:
        raise ParameterError("no results to plot")
    for label, res in results.items():
        if not isinstance(res, MetricResult):
            raise ParameterError(f"{label!r}: expected a MetricResult, got {type(res).__name__}")
        if res.curves is None:
            raise ParameterError(f"{label!r}: metric {res.name!r} has no curves (not a curve metric)")
    fig = _figure(*figsize)
    ax = fig.subplots()
    colours = palette(len(results))
    band = len(results) <= 6 if band is None else band
    for i, (label, res) in enumerate(results.items()):
        assert res.curves is not None
        x = curve_axis(res)
        mean, low, high = curve_band(res)
        colour = colours[i]
        ax.plot(x, mean, label=f"{label} (AUC {res.mean:.3f})", linewidth=1.8, color=colour,
                linestyle=DASHES[(i // 10) % len(DASHES)])
        if band and res.curves.shape[0] > 1:
            ax.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
        if individual:
            for c in res.curves:
                ax.plot(x, c, color=colour, alpha=0.2, linewidth=0.6)
    metric_names = sorted({res.name for res in results.values()})
    first = next(iter(results.values()))
    x_label, y_label = curve_labels(first)
    ax.set_title(title if title is not None else ", ".join(metric_names))
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.margins(x=0)
    if len(results) > 4:  # many methods: the legend beside the axes, not over the curves
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5),
                  ncols=1 + len(results) // 15)
    else:
        ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return fig


def scores(
    results: Mapping[str, MetricResult],
    *,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One metric's mean per method with its 95 % interval, best first (a dot-and-whisker
    chart, as a paper's comparison figure).

    Args:
        results: ``{method: MetricResult}`` of one metric (e.g.
            ``{m: table.results[m]["deletion"] for m in table.methods}``).
        title: the axes title (default: the metric's name and which way is better).
        figsize: figure size in inches (default: grows with the number of methods).

    Returns:
        a :class:`matplotlib.figure.Figure`.

    Example:
        >>> scores({m: table.results[m]["mufidelity"] for m in table.methods}).savefig("mu.png")
    """
    from .base import MetricResult

    if not results:
        raise ParameterError("no results to plot")
    for label, res in results.items():
        if not isinstance(res, MetricResult):
            raise ParameterError(f"{label!r}: expected a MetricResult, got {type(res).__name__}")
    first = next(iter(results.values()))
    higher = bool(first.higher_is_better)
    finite = {m: r for m, r in results.items() if np.isfinite(r.mean)}
    order = sorted(finite, key=lambda m: -finite[m].mean if higher else finite[m].mean)
    fig = _figure(*(figsize or (5.5, 0.9 + 0.32 * max(1, len(order)))))
    ax = fig.subplots()
    colours = palette(len(results))
    colour_of = dict(zip(results, colours, strict=True))
    for row, method in enumerate(order):
        res = finite[method]
        low, high = res.ci
        if np.isfinite(low) and np.isfinite(high):
            ax.plot([low, high], [row, row], color=colour_of[method], linewidth=2.2, solid_capstyle="butt")
        ax.plot([res.mean], [row], "o", color=colour_of[method], markersize=5, markeredgecolor="black",
                markeredgewidth=0.5)
    ax.set_yticks(range(len(order)), labels=order, fontsize=8)
    ax.invert_yaxis()  # best on top
    ax.set_xlabel(f"{first.name} ({'higher' if higher else 'lower'} is better), mean and 95 % interval")
    ax.set_title(title if title is not None else f"{first.name} {'↑' if higher else '↓'}")
    ax.grid(True, axis="x", alpha=0.3)
    return fig
