"""Colours of explanation maps: colormaps (with built-in fallbacks when matplotlib is absent),
the colour scale of a batch of maps (sign shown, percentile clipping, shared or per map) and
distinct line colours. :mod:`xai_toolbox.plot` and the HTML report draw with these; they are
re-exported by :mod:`xai_toolbox.plot`.

Example:
    >>> from xai_toolbox.colours import map_scale
    >>> scale = map_scale(maps)                  # sign read from the maps, 0.5 % clipped
    >>> rgb = scale.colours(scale.normalize(maps))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends.adapter import to_numpy
from .errors import ParameterError

__all__ = [
    "DIVERGING_CMAP",
    "SEQUENTIAL_CMAP",
    "SIGNS",
    "MapScale",
    "auto_sign",
    "colormap",
    "heatmap",
    "map_scale",
    "palette",
]


# -- colours -------------------------------------------------------------------------------------
# Matplotlib's "jet" segment data (x, value) per channel, so the fallback draws the same colours.
_JET = (
    ((0.0, 0.35, 0.66, 0.89, 1.0), (0.0, 0.0, 1.0, 1.0, 0.5)),
    ((0.0, 0.125, 0.375, 0.64, 0.91, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)),
    ((0.0, 0.11, 0.34, 0.65, 1.0), (0.5, 1.0, 1.0, 0.0, 0.0)),
)
# Viridis (matplotlib's, CC0) sampled at 17 evenly spaced points: linear interpolation between
# them stays within 0.021 of the full table on every channel.
_VIRIDIS = (
    (0.267, 0.0049, 0.3294), (0.2823, 0.095, 0.4173), (0.2788, 0.1755, 0.4834),
    (0.259, 0.2515, 0.5247), (0.2297, 0.3224, 0.5457), (0.1994, 0.3876, 0.5546),
    (0.1727, 0.4488, 0.5579), (0.149, 0.5081, 0.5572), (0.1276, 0.5669, 0.5506),
    (0.1206, 0.6258, 0.5335), (0.1579, 0.6838, 0.5017), (0.2461, 0.7389, 0.452),
    (0.3692, 0.7889, 0.3829), (0.516, 0.8312, 0.2943), (0.6785, 0.8637, 0.1895),
    (0.8456, 0.8873, 0.0997), (0.9932, 0.9062, 0.1439),
)
# ColorBrewer's 11-class RdBu (Apache 2.0), blue to red: matplotlib's "RdBu_r" interpolates it.
_RDBU_R = (
    "#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7",
    "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f",
)


def _hex_rgb(code: str) -> tuple[float, float, float]:
    return tuple(int(code[i : i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]


def _anchors(colours: Sequence[tuple[float, float, float]]) -> Callable[[np.ndarray], np.ndarray]:
    table = np.asarray(colours, dtype=np.float64)
    xs = np.linspace(0.0, 1.0, len(table))

    def apply(v: np.ndarray) -> np.ndarray:
        v = np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
        return np.stack([np.interp(v, xs, table[:, c]) for c in range(3)], axis=-1).astype(np.float32)

    return apply


def _builtin_jet(v: np.ndarray) -> np.ndarray:
    v = np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
    return np.stack([np.interp(v, xs, ys) for xs, ys in _JET], axis=-1).astype(np.float32)


def _builtin_gray(v: np.ndarray) -> np.ndarray:
    v = np.clip(np.asarray(v, dtype=np.float32), 0.0, 1.0)
    return np.repeat(v[..., None], 3, axis=-1)


_BUILTIN: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jet": _builtin_jet,
    "gray": _builtin_gray,
    "viridis": _anchors(_VIRIDIS),
    "RdBu_r": _anchors([_hex_rgb(c) for c in _RDBU_R]),
}

#: The colormap of maps shown without their sign (perceptually uniform, readable in grey).
SEQUENTIAL_CMAP = "viridis"
#: The colormap of signed maps (``sign="all"``): blue below zero, white at zero, red above.
DIVERGING_CMAP = "RdBu_r"
#: How a map's sign is shown (see :func:`map_scale`).
SIGNS = ("auto", "all", "positive", "negative", "absolute")


def colormap(cmap: str | Callable[[np.ndarray], np.ndarray] = "viridis") -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping values in ``[0, 1]`` (any shape) to RGB floats (shape ``+ (3,)``).

    Matplotlib's colormap of that name when matplotlib is installed; without it, the built-in
    ``"viridis"``, ``"RdBu_r"``, ``"jet"`` and ``"gray"``. A callable is returned unchanged.

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


# -- scaling maps onto colours -------------------------------------------------------------------
@dataclass(frozen=True)
class MapScale:
    """How a batch of maps is put on a colour scale (what :func:`map_scale` decided).

    Attributes:
        sign: ``"all"`` (a diverging scale centred on zero: ``[-bound, +bound]``),
            ``"positive"`` (``[0, bound]``, negative values shown as zero), ``"negative"``
            (the negative values, as magnitudes on ``[0, bound]``) or ``"absolute"``
            (``|value|`` on ``[0, bound]``).
        bounds: ``(N,)`` the value at the end of each map's colour scale: the
            ``100 - clip_percentile`` percentile of the shown values (0 for a map with nothing
            to show). Values beyond it saturate.
        clip_percentile: the share (in %) of the largest shown values that saturate.
        shared: one bound for every map (the batch's), or one per map.
        cmap: the colormap name (or callable).

    Example:
        >>> scale = map_scale(maps)                # sign read from the maps
        >>> scale.sign, scale.bounds[0]
        ('all', 0.031)
    """

    sign: str
    bounds: np.ndarray
    clip_percentile: float
    shared: bool
    cmap: str | Callable[[np.ndarray], np.ndarray]

    @property
    def diverging(self) -> bool:
        return self.sign == "all"

    def normalize(self, maps: np.ndarray) -> np.ndarray:
        """``maps (N, H, W)`` on the scale: ``[-1, 1]`` for ``sign="all"``, else ``[0, 1]``."""
        shown = _signed_part(np.asarray(maps, dtype=np.float32), self.sign)
        bounds = self.bounds.reshape(-1, *([1] * (shown.ndim - 1))).astype(np.float32)
        safe = np.where(bounds > 0, bounds, 1.0)
        out = np.where(bounds > 0, shown / safe, 0.0)
        return np.clip(out, -1.0 if self.diverging else 0.0, 1.0).astype(np.float32)

    def colours(self, normalized: np.ndarray) -> np.ndarray:
        """RGB of values already on the scale (see :meth:`normalize`)."""
        position = (normalized + 1.0) / 2.0 if self.diverging else normalized
        return colormap(self.cmap)(position)

    def tick_labels(self) -> tuple[str, ...]:
        """Labels of the colourbar's ends (and centre): ``("−s", "0", "+s")`` for a signed
        scale, ``("0", "s")`` otherwise — with the value of ``s`` when the scale is shared."""
        s = _short(float(self.bounds[0])) if self.shared and len(self.bounds) else "s"
        if self.diverging:
            return (f"−{s}", "0", f"+{s}")
        return ("0", f"−{s}" if self.sign == "negative" else s)

    def describe(self) -> str:
        """One line saying what the colours mean."""
        what = {
            "all": "signed, diverging scale centred on zero (blue < 0 < red)",
            "positive": "positive values only (negative shown as zero)",
            "negative": "negative values only, as magnitudes",
            "absolute": "absolute values",
        }[self.sign]
        where = "one scale for all images" if self.shared else "s per image"
        return (
            f"{what}; s = {100 - self.clip_percentile:g}th percentile of the shown |values| "
            f"({where}), larger values saturate"
        )


def _short(x: float) -> str:
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 or x == 0 else f"{x:.2e}"


def _signed_part(m: np.ndarray, sign: str) -> np.ndarray:
    if sign == "all":
        return m
    if sign == "positive":
        return np.maximum(m, 0.0)
    if sign == "negative":
        return np.maximum(-m, 0.0)
    return np.abs(m)


def auto_sign(maps: Any) -> str:
    """``"all"`` when the maps carry a sign worth showing, else ``"positive"``.

    Signed: at least 1 % of the values are negative and the most negative reaches 1 % of the
    largest magnitude (Gradient×Input, Integrated Gradients, Occlusion); maps that are
    non-negative up to rounding (Saliency, CAMs after their ReLU, RISE) are ``"positive"``.

    Example:
        >>> auto_sign(np.array([[-1.0, 2.0]])), auto_sign(np.array([[0.0, 2.0]]))
        ('all', 'positive')
    """
    m = np.asarray(to_numpy(maps), dtype=np.float32)
    m = m[np.isfinite(m)]
    if not m.size:
        return "positive"
    largest = float(np.abs(m).max())
    negative = m < 0
    if largest > 0 and negative.mean() >= 0.01 and -float(m.min()) >= 0.01 * largest:
        return "all"
    return "positive"


def map_scale(
    maps: Any,
    *,
    sign: str = "auto",
    clip_percentile: float = 0.5,
    shared: bool = False,
    cmap: str | Callable[[np.ndarray], np.ndarray] | None = None,
) -> MapScale:
    """Decide how ``maps (N, H, W)`` are coloured, as Captum's ``visualize_image_attr`` and
    Xplique's ``plot_attributions`` do: which sign is shown, where each map's scale ends,
    which colormap.

    Args:
        maps: explanations ``(N, ...)`` (any tensor or array); each of the ``N`` is one map.
        sign: ``"all"`` (signed, on a diverging colormap centred on zero), ``"positive"``,
            ``"negative"``, ``"absolute"``, or ``"auto"`` (``"all"`` for maps with a real
            negative part, else ``"positive"``; see :func:`auto_sign`).
        clip_percentile: percent of the largest shown values that saturate (Xplique's
            ``clip_percentile``; Captum's ``outlier_perc`` plays the same part), so a few
            extreme pixels do not wash the rest out. 0 = scale to the maximum.
        shared: one scale for the whole batch (compare magnitudes across images) instead
            of one per map.
        cmap: a colormap name or callable; ``None``: :data:`DIVERGING_CMAP` for signed
            maps, :data:`SEQUENTIAL_CMAP` otherwise (both perceptually ordered).

    Example:
        >>> scale = map_scale(maps, sign="all", clip_percentile=1.0)
        >>> rgb = scale.colours(scale.normalize(maps))      # (N, H, W, 3)
    """
    if sign not in SIGNS:
        raise ParameterError(f"sign must be one of {', '.join(SIGNS)}; got {sign!r}")
    clip_percentile = float(clip_percentile)
    if not 0.0 <= clip_percentile < 100.0:
        raise ParameterError(f"clip_percentile must be in [0, 100), got {clip_percentile}")
    m = _as_maps(maps)
    resolved = auto_sign(m) if sign == "auto" else sign
    shown = np.abs(_signed_part(m, resolved)).reshape(len(m), -1)
    q = 100.0 - clip_percentile
    if shared:
        bound = float(np.percentile(shown, q, method="lower")) if shown.size else 0.0
        bound = bound if bound > 0 else float(shown.max(initial=0.0))
        bounds = np.full(len(m), bound)
    else:
        bounds = np.percentile(shown, q, axis=1, method="lower") if shown.size else np.zeros(len(m))
        peaks = shown.max(axis=1, initial=0.0)
        bounds = np.where(bounds > 0, bounds, peaks)  # sparse maps: most values are zero
    if cmap is None:
        cmap = DIVERGING_CMAP if resolved == "all" else SEQUENTIAL_CMAP
    colormap(cmap)  # an unknown name fails here, not in the middle of a figure
    return MapScale(resolved, np.asarray(bounds, dtype=np.float64), clip_percentile, bool(shared), cmap)


def heatmap(maps: Any, scale: MapScale | None = None, **scale_options: Any) -> np.ndarray:
    """The maps as RGB pictures ``(N, H, W, 3)`` on their colour scale (no image under them).

    Example:
        >>> heatmap(maps, sign="absolute").shape
        (4, 64, 64, 3)
    """
    m = _as_maps(maps)
    scale = scale or map_scale(m, **scale_options)
    return scale.colours(scale.normalize(m))


def palette(count: int) -> list[str]:
    """``count`` distinct line colours (hex): Tableau 10, then Tableau 20's lighter shades,
    then evenly spaced hues — never the same colour twice.

    Example:
        >>> palette(3)
        ['#1f77b4', '#ff7f0e', '#2ca02c']
    """
    import colorsys

    base = list(_TAB10) + list(_TAB10_LIGHT)
    if count <= len(base):
        return base[:count]
    extra = count - len(base)
    hues = [(0.07 + i / extra) % 1.0 for i in range(extra)]
    rgb = [colorsys.hls_to_rgb(h, 0.35, 0.75) for h in hues]
    return base + ["#" + "".join(f"{round(255 * c):02x}" for c in colour) for colour in rgb]


_TAB10 = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
_TAB10_LIGHT = (
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
    "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)


def _as_maps(maps: Any) -> np.ndarray:
    m = np.asarray(to_numpy(maps), dtype=np.float32)
    if m.ndim < 2:
        raise ParameterError(f"expected a batch of maps (N, ...), got shape {m.shape}")
    return np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
