"""ROAD — RemOve And Debias (Rong, Leemann, Borisov, Kasneci, Kasneci, ICML 2022).

Removing pixels by setting them to a constant leaks the removed shape to the model (the
"class information leakage" the paper measures). ROAD instead *imputes* the removed pixels
from their neighbours — noisy linear imputation — and follows the target score as a growing
fraction of the pixels is removed, most relevant first (MoRF) or least relevant first (LeRF).

Noisy linear imputation (identical in the official code, pytorch-grad-cam and Quantus): every
removed pixel is the weighted mean of its in-image neighbours, 4-neighbours weighing 1/6 and
diagonal ones 1/12, solved jointly for all removed pixels (a sparse linear system per channel,
SciPy's ``spsolve``), then Gaussian noise of std ``noise`` is added to the removed pixels.

Imputation runs on the host, per (image, fraction) pair, on the inputs as the model receives
them; the imputed inputs are streamed to the model ``batch_size`` at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import eagerpy as ep
import numpy as np
import scipy

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Chunk, Targets

from .causal import descending_ranks, trapezoid_auc

#: Neighbour offsets (row, column) and weights of the noisy linear imputation.
NEIGHBOURS = (
    ((0, 1), 1 / 6), ((0, -1), 1 / 6), ((1, 0), 1 / 6), ((-1, 0), 1 / 6),
    ((1, 1), 1 / 12), ((1, -1), 1 / 12), ((-1, 1), 1 / 12), ((-1, -1), 1 / 12),
)


def linear_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """``image`` ``(C, H, W)`` with the ``removed`` pixels ``(H, W)`` replaced by the solution
    of ``x_i = Σ_j w_j x_j / Σ_j w_j`` over their in-image neighbours ``j`` (noise-free).

    Example:
        >>> img = np.arange(9.0).reshape(1, 3, 3)           # affine: 3·row + column
        >>> removed = np.zeros((3, 3), bool); removed[1, 1] = True
        >>> float(linear_imputation(img, removed)[0, 1, 1])
        4.0
    """
    channels, height, width = image.shape
    rows, cols = np.nonzero(removed)
    m = len(rows)
    if m == 0:
        return image.copy()
    index = np.full((height, width), -1, dtype=np.int64)
    index[rows, cols] = np.arange(m)
    diagonal = np.zeros(m)
    rhs = np.zeros((m, channels))
    a_rows, a_cols, a_vals = [], [], []
    for (dr, dc), weight in NEIGHBOURS:
        nr, nc = rows + dr, cols + dc
        inside = (nr >= 0) & (nr < height) & (nc >= 0) & (nc < width)
        src, nr, nc = np.flatnonzero(inside), nr[inside], nc[inside]
        diagonal[src] += weight
        neighbour = index[nr, nc]
        unknown = neighbour >= 0
        a_rows.append(src[unknown])
        a_cols.append(neighbour[unknown])
        a_vals.append(np.full(int(unknown.sum()), -weight))
        known = ~unknown
        np.add.at(rhs, src[known], weight * image[:, nr[known], nc[known]].T)
    matrix = scipy.sparse.csc_matrix(
        (np.concatenate([*a_vals, diagonal]),
         (np.concatenate([*a_rows, np.arange(m)]), np.concatenate([*a_cols, np.arange(m)]))),
        shape=(m, m),
    )
    solution = np.asarray(scipy.sparse.linalg.spsolve(matrix, rhs)).reshape(m, channels)
    out = image.copy()
    out[:, rows, cols] = solution.T
    return out


def noisy_linear_imputation(
    image: np.ndarray, removed: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """:func:`linear_imputation` plus ``N(0, noise²)`` on the removed pixels (channels-first,
    noise drawn as ``(removed pixels, C)`` in row-major pixel order)."""
    out = linear_imputation(image, removed)
    if noise > 0:
        rows, cols = np.nonzero(removed)
        out[:, rows, cols] += rng.normal(0.0, noise, (len(rows), image.shape[0])).T
    return out


class _Road(xt.Metric):
    """Shared machinery of :class:`RoadMoRF` and :class:`RoadLeRF`."""

    family = "fidelity"
    #: True: the most relevant pixels are removed first (MoRF).
    _most_relevant_first: bool = True

    def __init__(
        self,
        model: Any,
        *,
        percentiles: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        noise: float = 0.01,
        activation: str | None = "softmax",
        seed: int | None = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        values = list(percentiles) if isinstance(percentiles, list | tuple) else None
        if not values or not all(isinstance(p, int | float) and 0.0 < p < 1.0 for p in values):
            raise xt.ParameterError(
                f"percentiles must be a non-empty list of fractions in (0, 1), got {percentiles!r}"
            )
        self.percentiles = tuple(float(p) for p in values)
        self.noise = xe.number("noise", noise)
        if self.noise < 0:
            raise xt.ParameterError(f"noise must be non-negative, got {noise}")
        self.activation = xe.activation("activation", activation)
        self.seed = seed

    def check_call(self, x: ep.Tensor) -> None:
        if x.ndim != 4:
            raise xt.InputError(f"ROAD imputes image pixels: inputs must be images (rank 4), got shape {tuple(x.shape)}")

    def removed_counts(self, n_pixels: int) -> np.ndarray:
        """Pixels removed at each percentile: ``floor(p · H · W)``."""
        return np.floor(np.asarray(self.percentiles) * n_pixels + 1e-9).astype(np.int64)

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        assert maps is not None
        adapter = self.adapter
        ranks = descending_ranks(maps.numpy())  # (N, H, W), 0 = most relevant
        n_pixels = int(np.prod(ranks.shape[1:]))
        counts = self.removed_counts(n_pixels)
        images = xe.channels_first(x, adapter.channel_axis).numpy().astype(np.float64)
        channels_last = adapter.channel_axis == -1

        def build(chunk: Chunk) -> ep.Tensor:
            batch = []
            for item, step in zip(chunk.items, chunk.samples, strict=True):
                k = counts[step]
                removed = ranks[item] < k if self._most_relevant_first else ranks[item] >= n_pixels - k
                rng = np.random.default_rng(None if self.seed is None else [self.seed, item, step])
                batch.append(noisy_linear_imputation(images[item], removed, self.noise, rng))
            out = np.stack(batch).astype(np.float32)
            return adapter.from_numpy(x, np.ascontiguousarray(np.moveaxis(out, 1, -1)) if channels_last else out)

        curves, _ = xe.stream_scores(
            adapter, targets, x.shape[0], len(counts), build, batch_size=self.batch_size,
            activation=self.activation, progress_bar=self.progress, desc=self.name,
        )
        return self.make_result(curves.mean(axis=1), curves=curves, fractions=np.asarray(self.percentiles),
                                removed=counts, auc=trapezoid_auc(curves))


_ARGS = """
    Args:
        percentiles: fractions of the pixels removed, each in (0, 1) (default 0.1, …, 0.9:
            pytorch-grad-cam's ROAD averages; the official demo uses 0.1–0.5, 0.7, 0.9).
        noise: std of the Gaussian noise added to imputed pixels (default 0.01, all three
            codes; in the units of the model's inputs — the official code imputes [0, 1]
            pixels before normalisation).
        activation: ``"softmax"`` (default: the paper's class probability), ``"sigmoid"`` or
            ``None`` (logits), applied before the target score.
        seed: seed of the imputation noise (image ``i``, percentile ``s``:
            ``default_rng([seed, i, s])``).

    Pixels are ranked by the explanation with a stable sort (ties by position index), not by
    the official random tie-breaker. The score is the mean target score over the
    percentiles; ``curves`` ``(N, percentiles)`` hold each point, ``details`` the
    ``fractions``, the ``removed`` pixel counts and the trapezoid ``auc`` over the points.
"""


class RoadMoRF(_Road):
    __doc__ = (
        """ROAD, most relevant first (Rong et al., 2022): the mean target score after the most
    relevant fraction ``p`` of the pixels is removed and imputed, over several ``p`` — lower is
    better (removing what the explanation marks destroys the prediction).
"""
        + _ARGS
        + """
    Example:
        >>> xt.RoadMoRF(model, seed=0)(images, labels, maps).mean
"""
    )

    name = "road_morf"
    higher_is_better = False
    _most_relevant_first = True


class RoadLeRF(_Road):
    __doc__ = (
        """ROAD, least relevant first (Rong et al., 2022): the mean target score after the least
    relevant fraction ``p`` of the pixels is removed and imputed, over several ``p`` — higher is
    better (what the explanation marks as irrelevant can go).

    ``p`` is the fraction *removed*, as in the paper's figures (the official code's LeRF
    parameter is the fraction kept).
"""
        + _ARGS
        + """
    Example:
        >>> xt.RoadLeRF(model, seed=0)(images, labels, maps).mean
"""
    )

    name = "road_lerf"
    higher_is_better = True
    _most_relevant_first = False


@xt.hookimpl
def register_metrics(register: Callable[[str, type], None]) -> None:
    register(RoadMoRF.name, RoadMoRF)
    register(RoadLeRF.name, RoadLeRF)
