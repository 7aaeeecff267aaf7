"""Plotting for notebooks: heatmap overlays, method grids and deletion/insertion curves.

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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends import native_framework
from .backends.adapter import to_numpy
from .errors import InputError, ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .base import MetricResult

__all__ = ["colormap", "curves", "display_images", "grid", "overlay", "to_numpy"]

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


def _normalize(m: np.ndarray) -> np.ndarray:
    """Min-max to ``[0, 1]`` per map (a constant map becomes 0)."""
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def _resize_map(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if m.shape == shape:
        return m
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is in the plot extra
        raise ImportError("resizing a map to its image needs Pillow: pip install pillow") from exc
    img = Image.fromarray(m.astype(np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), dtype=np.float32)


# -- colours -------------------------------------------------------------------------------------
# Matplotlib's "jet" segment data (x, value) per channel, so the fallback draws the same colours.
_JET = (
    ((0.0, 0.35, 0.66, 0.89, 1.0), (0.0, 0.0, 1.0, 1.0, 0.5)),
    ((0.0, 0.125, 0.375, 0.64, 0.91, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)),
    ((0.0, 0.11, 0.34, 0.65, 1.0), (0.5, 1.0, 1.0, 0.0, 0.0)),
)


def _builtin_jet(v: np.ndarray) -> np.ndarray:
    v = np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
    return np.stack([np.interp(v, xs, ys) for xs, ys in _JET], axis=-1).astype(np.float32)


def _builtin_gray(v: np.ndarray) -> np.ndarray:
    v = np.clip(np.asarray(v, dtype=np.float32), 0.0, 1.0)
    return np.repeat(v[..., None], 3, axis=-1)


_BUILTIN: dict[str, Callable[[np.ndarray], np.ndarray]] = {"jet": _builtin_jet, "gray": _builtin_gray}


def colormap(cmap: str | Callable[[np.ndarray], np.ndarray] = "jet") -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping values in ``[0, 1]`` (any shape) to RGB floats (shape ``+ (3,)``).

    Matplotlib's colormap of that name when matplotlib is installed; without it, the built-in
    ``"jet"`` and ``"gray"``. A callable is returned unchanged.

    Example:
        >>> colormap("jet")(np.array([0.0, 1.0])).round(2)
        array([[0. , 0. , 0.5],
               [0.5, 0. , 0. ]], dtype=float32)
    """
    if callable(cmap):
        return cmap
    if not isinstance(cmap, str):
        raise ParameterError(f"cmap must be a colormap name or a callable, got {type(cmap).__name__}")
    try:
        import matplotlib
    except ImportError:
        if cmap in _BUILTIN:
            return _BUILTIN[cmap]
        raise ParameterError(
            f"colormap {cmap!r} needs matplotlib (pip install matplotlib); without it only "
            f"{sorted(_BUILTIN)} are available"
        ) from None
    try:
        mpl_cmap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ParameterError(f"unknown matplotlib colormap {cmap!r}") from None

    def apply(v: np.ndarray) -> np.ndarray:
        return np.asarray(mpl_cmap(v), dtype=np.float32)[..., :3]

    return apply


# -- public API ----------------------------------------------------------------------------------
def overlay(
    images: Any,
    maps: Any,
    alpha: float = 0.5,
    cmap: str | Callable[[np.ndarray], np.ndarray] = "jet",
    *,
    channels_first: bool | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """Blend heatmaps onto images: ``(1 - alpha) * image + alpha * cmap(map)``.

    Args:
        images: one image ``(H, W)`` / ``(C, H, W)`` / ``(H, W, C)``, or a batch
            ``(N, ...)``; a native tensor or NumPy array. Whether a batch is meant is read
            from ``maps``: ``(H, W)`` for one image, ``(N, H, W)`` for a batch.
        maps: explanations ``(H, W)`` for one image, ``(N, H, W)`` for a batch (a batch
            with a channel axis, ``(N, C, H, W)``/``(N, H, W, C)``, is averaged over it); a map
            of another size than its image is resized bilinearly.
        alpha: weight of the heatmap, in ``[0, 1]``.
        cmap: a colormap name (matplotlib's, or the built-in ``"jet"``/``"gray"``) or a
            function from ``[0, 1]`` values to RGB.
        channels_first: the images' layout; ``None`` reads it from the tensor type or guesses.
        normalize: min-max each map to ``[0, 1]`` first (else values are clipped to it).

    Returns:
        float32 RGB in ``[0, 1]``: ``(H, W, 3)`` for one image, ``(N, H, W, 3)`` for a batch.

    Example:
        >>> rgb = overlay(images, maps, alpha=0.4)        # (N, H, W, 3)
        >>> Image.fromarray((rgb[0] * 255).astype("uint8")).save("overlay.png")
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ParameterError(f"alpha must be in [0, 1], got {alpha}")
    batch = len(getattr(maps, "shape", np.shape(maps))) >= 3
    rgb = display_images(images, channels_first=channels_first, batch=batch)
    m = _maps_array(maps, batch)
    if batch and len(m) != len(rgb):
        raise InputError(f"got {len(rgb)} images but {len(m)} maps")
    colour = colormap(cmap)
    rgb_b, m_b = (rgb, m) if batch else (rgb[None], m[None])
    out = np.empty_like(rgb_b)
    for i, (img, mp) in enumerate(zip(rgb_b, m_b, strict=True)):
        mp = _resize_map(mp, img.shape[:2])
        mp = _normalize(mp) if normalize else np.clip(mp, 0.0, 1.0)
        out[i] = (1.0 - alpha) * img + alpha * colour(mp)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    return out if batch else out[0]


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
    alpha: float = 0.5,
    cmap: str | Callable[[np.ndarray], np.ndarray] = "jet",
    channels_first: bool | None = None,
    show_input: bool = True,
    max_images: int | None = None,
    cell_size: float = 1.8,
) -> Figure:
    """A figure with one row per image: the input, then one overlay per method.

    Args:
        images: a batch ``(N, ...)`` in either layout (see :func:`overlay`).
        maps_by_method: ``{method name: maps (N, H, W)}``, in column order.
        titles: column titles for the methods (default: the dict's keys).
        image_titles: one label per row (e.g. the class), shown on the left.
        alpha, cmap, channels_first: as for :func:`overlay`.
        show_input: add a first column with the plain input.
        max_images: show only the first ``max_images`` rows.
        cell_size: size of one panel in inches.

    Returns:
        a :class:`matplotlib.figure.Figure` (no pyplot state involved).

    Example:
        >>> fig = grid(images, {"gradcam": cam, "rise": rise}, image_titles=["cat", "dog"])
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
    overlays = []
    for name in names:
        m = _maps_array(maps_by_method[name], batch=True)
        if len(m) != len(rgb):
            raise InputError(f"method {name!r}: got {len(m)} maps for {len(rgb)} images")
        overlays.append(overlay(rgb[:n], m[:n], alpha=alpha, cmap=cmap, channels_first=False))
    if image_titles is not None and len(image_titles) < n:
        raise ParameterError(f"got {len(image_titles)} image_titles for {n} images")
    cols = len(names) + int(show_input)
    fig = _figure(cell_size * cols, cell_size * n)
    axes = np.asarray(fig.subplots(n, cols, squeeze=False))
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
    return fig


def curve_axis(result: MetricResult) -> np.ndarray:
    """The x-axis of a curve metric's curves: the metric's own, else ``linspace(0, 1)``."""
    assert result.curves is not None
    steps = result.curves.shape[-1]
    for key in ("fractions", "x", "fraction", "steps_fraction", "axis"):
        value = result.details.get(key)
        if value is not None and np.asarray(value).shape == (steps,):
            return np.asarray(value, dtype=np.float64)
    return np.linspace(0.0, 1.0, steps)


def curves(
    results: MetricResult | Mapping[str, MetricResult],
    *,
    title: str | None = None,
    individual: bool = False,
    figsize: tuple[float, float] = (5.0, 3.5),
) -> Figure:
    """Mean curve (with its AUC in the legend) of a curve metric, per method.

    Args:
        results: one :class:`~xai_toolbox.MetricResult` with ``curves`` (deletion,
            insertion, ...), or ``{label: MetricResult}`` to compare methods on one axis.
        title: the axes title (default: the metric's name).
        individual: also draw each input's curve, thin and transparent.
        figsize: figure size in inches.

    Returns:
        a :class:`matplotlib.figure.Figure`.

    Example:
        >>> res = {m: xt.metric("deletion", model).evaluate(m, images, labels) for m in methods}
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
    import matplotlib

    palette = matplotlib.colormaps["tab10" if len(results) <= 10 else "tab20"]
    for i, (label, res) in enumerate(results.items()):
        assert res.curves is not None
        x = curve_axis(res)
        mean = np.nanmean(res.curves, axis=0)
        colour = palette(i % palette.N)
        ax.plot(x, mean, label=f"{label} (AUC {res.mean:.3f})", linewidth=1.8, color=colour)
        if individual:
            for c in res.curves:
                ax.plot(x, c, color=colour, alpha=0.2, linewidth=0.6)
    metric_names = sorted({res.name for res in results.values()})
    ax.set_title(title if title is not None else ", ".join(metric_names))
    ax.set_xlabel("fraction of pixels")
    ax.set_ylabel("score")
    if len(results) > 4:  # many methods: the legend beside the axes, not over the curves
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    else:
        ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return fig
