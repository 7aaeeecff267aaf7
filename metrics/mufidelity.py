"""MuFidelity / faithfulness correlation (Bhatt, Weller, Moura — IJCAI 2020, Def. 3).

For random subsets ``S`` of the input, correlate the attribution mass of ``S`` with the drop
of the target score when ``S`` is set to a baseline:

    µF = Corr_S( Σ_{i∈S} φ_i ,  f(x)[c] − f(x_[S ← baseline])[c] )

Subsets are Xplique's: cells of a ``grid_size × grid_size`` grid, each removed independently
with probability ``subset_percent``, drawn with ``np.random.default_rng(seed)`` at grid
resolution (framework-independent layout) and nearest-upsampled on the device. The same
``nb_samples`` subsets serve every input, so an input's score does not depend on the rest of
the batch, on ``batch_size`` or on the framework.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np
from scipy.stats import rankdata

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Targets, expand_to_inputs


def rowwise_correlation(a: np.ndarray, b: np.ndarray, kind: str = "pearson") -> np.ndarray:
    """Correlation between the rows of ``a`` and ``b`` ``(N, S)``; a constant row → 0 (no
    variation to correlate: Xplique's and Quantus' convention); a row holding NaN or an
    infinity (a model that returned NaN) → NaN, left out of the mean.

    Example:
        >>> rowwise_correlation(np.array([[1.0, 2, 3]]), np.array([[2.0, 4, 7]]), "spearman")
        array([1.])
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    broken = ~(np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1))
    if kind == "spearman":
        a, b = rankdata(a, axis=1), rankdata(b, axis=1)  # average ranks for ties, as scipy's spearmanr
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (a * b).sum(axis=1) / denom
    corr = np.where(np.isfinite(corr), np.clip(corr, -1.0, 1.0), 0.0)
    return np.where(broken, np.nan, corr)


class MuFidelity(xt.Metric):
    """MuFidelity (Bhatt et al., 2020): correlation between the attribution of random subsets
    and the score drop when they are removed — higher is better, in ``[-1, 1]``.

    Args:
        grid_size: side of the grid of removable cells for images (default 9, Xplique); ``None``
            removes single positions. Tabular inputs always use single features; series use
            ``grid_size`` cells along time.
        subset_percent: probability that a cell is removed (default 0.2, Xplique).
        nb_samples: number of random subsets per input (default 200, Xplique), or ``"auto"``:
            subsets in rounds up to ``max_samples``, each input stopping once the standard
            error of its correlation (distribution-free, see
            :func:`xai_toolbox.extend.correlation_standard_error`) is at most ``tolerance``.
        baseline: value given to removed positions (default 0).
        correlation: ``"pearson"`` (default: the paper's definition and Quantus') or
            ``"spearman"`` (Xplique since 2021).
        activation: ``None`` (logits), ``"softmax"`` or ``"sigmoid"`` before the target score.
        tolerance: with ``nb_samples="auto"``, the standard error (in correlation units) at
            which an input stops (default 0.05).
        max_samples: with ``nb_samples="auto"``, the most subsets per input (default 2048).
        seed: seed of the NumPy generator that draws the subsets (subset ``n`` is the same
            for any ``nb_samples``: more subsets only add to the sequence).

    Per-input correlations are ``scores``; ``details`` hold the subsets' ``attributions`` and
    ``drops`` ``(N, nb_samples)`` (with ``"auto"``: NaN past the subsets an input used, whose
    numbers are in ``details["nb_samples"]``, with the ``standard_errors``). An undefined correlation (constant drops) counts as 0; an
    input whose drops are NaN (the model returned NaN) scores NaN, left out of the mean.

    Example:
        >>> result = xt.MuFidelity(model, nb_samples=100, seed=0)(images, labels, maps)
    """

    name = "mufidelity"
    family = "fidelity"
    higher_is_better = True

    def __init__(
        self,
        model: Any,
        *,
        grid_size: int | None = 9,
        subset_percent: float = 0.2,
        nb_samples: int | str = 200,
        baseline: float = 0.0,
        correlation: str = "pearson",
        activation: str | None = None,
        tolerance: float | None = None,
        max_samples: int | None = None,
        seed: int | None = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.grid_size = None if grid_size is None else xe.positive_int("grid_size", grid_size)
        self.subset_percent = xe.in_range("subset_percent", subset_percent, 0.0, 1.0)
        try:
            self.nb_samples = xe.sample_count("nb_samples", nb_samples, minimum=2)
        except xt.ParameterError:
            raise xt.ParameterError(
                f"nb_samples must be at least 2 to compute a correlation (or 'auto'), got {nb_samples!r}"
            ) from None
        self.baseline = xe.number("baseline", baseline)
        self.correlation = xe.one_of("correlation", correlation, ("pearson", "spearman"))
        self.activation = xe.activation("activation", activation)
        self.tolerance = tolerance
        self.max_samples = max_samples
        self.seed = seed
        self.sampling()  # validates tolerance and max_samples against nb_samples

    def sampling(self) -> xe.SampleSchedule:
        """The number of subsets: fixed, or the adaptive rounds of ``nb_samples="auto"``."""
        return xe.sample_schedule(
            "nb_samples", self.nb_samples, tolerance=self.tolerance, max_samples=self.max_samples,
            first=AUTO_FIRST, default_tolerance=AUTO_TOLERANCE, default_maximum=AUTO_MAXIMUM, minimum=2,
        )

    def check_call(self, x: ep.Tensor) -> None:
        # Up front: nb_samples + 1 passes per input, and the subsets drawn at once (float64
        # uniforms and their float32 keep mask, per cell) with their (N, nb_samples) results.
        positions = self.explanation_shape(x)[1:]
        cells = int(np.prod(positions if x.ndim == 2 or self.grid_size is None else (self.grid_size,) * len(positions)))
        n = int(x.shape[0])
        samples = self.sampling().maximum
        at_most = f" ({samples} at most)" if self.nb_samples == xe.AUTO else ""
        xe.check_workload(
            self.name,
            model_inputs=(samples + 1) * n,
            held_bytes=samples * cells * 12 + 3 * n * samples * 8,
            cause=f"nb_samples={self.nb_samples}{at_most} subsets of {cells} cells, {n} input(s)",
        )

    def draw_keep(self, positions: tuple[int, ...], tabular: bool, count: int | None = None) -> np.ndarray:
        """The kept cells ``(count, *grid)`` as 0/1 float32, at grid resolution (``count``:
        ``nb_samples`` by default; the first subsets are the same for any count)."""
        if tabular or self.grid_size is None:
            grid = positions
        else:
            grid = (self.grid_size,) * len(positions)
        count = int(self.nb_samples) if count is None else count
        u = np.random.default_rng(self.seed).random((count, *grid))
        return (u > self.subset_percent).astype(np.float32)

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        assert maps is not None
        adapter = self.adapter
        channel_axis = adapter.channel_axis
        positions = self.explanation_shape(x)[1:]
        schedule = self.sampling()
        keep_grid = self.draw_keep(positions, tabular=x.ndim == 2, count=schedule.maximum)
        clean = xe.batched_scores(adapter, targets, x, self.batch_size, self.activation)
        base = clean.numpy().astype(np.float64)
        attrs = np.full((x.shape[0], schedule.maximum), np.nan)
        drops = np.full((x.shape[0], schedule.maximum), np.nan)
        build = _remover(channel_axis, self.baseline, positions)

        def sample_round(round_: xe.SampleRound) -> None:
            cells = adapter.from_numpy(x, keep_grid[round_.lo : round_.hi])  # this round's subsets
            k, count = len(round_.active), round_.hi - round_.lo
            scores, sums = xe.PairScores(k, count, adapter), xe.PairScores(k, count, adapter)
            todo = round_.chunks
            desc = f"{self.name} ({round_.hi} subsets)" if schedule.adaptive else self.name
            for chunk in xe.progress(todo, enabled=self.progress, total=len(todo), desc=desc):
                items = chunk.items
                # The subsets' cells, upsampled and applied, scored, and their attribution
                # sums, in one pass the adapter may compile.
                score, attribution = xe.built_scores(
                    adapter, build, adapter.broadcast_rows(x, items), adapter.broadcast_rows(maps, items),
                    adapter.take_rows(cells, chunk.samples - round_.lo),
                    targets=targets, items=items, activation=self.activation,
                )
                scores.put(chunk, score)
                sums.put(chunk, attribution)
            # One host copy per round, not per chunk.
            got = ep.stack([scores.result(), sums.result()], axis=0).numpy().astype(np.float64)
            drops[round_.active, round_.lo : round_.hi] = base[round_.active, None] - got[0]
            attrs[round_.active, round_.lo : round_.hi] = got[1]

        def error(active: np.ndarray, n: int) -> np.ndarray:
            a, d = attrs[active, :n], drops[active, :n]
            if self.correlation == "spearman":
                a, d = rankdata(a, axis=1), rankdata(d, axis=1)
            return xe.correlation_standard_error(a, d)

        used = schedule.run(x.shape[0], self.batch_size, sample_round, error)
        scores = np.array([
            rowwise_correlation(attrs[i : i + 1, :n], drops[i : i + 1, :n], self.correlation)[0]
            for i, n in enumerate(used)
        ])
        if not schedule.adaptive:
            return self.make_result(scores, attributions=attrs, drops=drops)
        errors = np.array([error(np.array([i]), int(n))[0] for i, n in enumerate(used)])
        return self.make_result(
            scores, attributions=attrs, drops=drops, nb_samples=used, standard_errors=errors
        )


def _remover(channel_axis: int, baseline: float, positions: tuple[int, ...]) -> Callable[..., tuple[ep.Tensor, ep.Tensor]]:
    """``build(rows, maps, cells)`` → the inputs with the removed cells set to ``baseline``, and
    the attribution of the removed positions per input (see ``xe.built_scores``). Cells
    ``(B, *grid)`` are nearest-upsampled to ``positions``."""
    size = int(np.prod(positions))

    def build(rows: ep.Tensor, maps: ep.Tensor, cells: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        keep = xe.upsample_cells(cells, positions, "nearest")                   # (B, *positions)
        removed = (maps * (1.0 - keep)).reshape((-1, size)).sum(axis=1)
        keep = expand_to_inputs(keep, rows.ndim, channel_axis)
        if baseline == 0.0:  # one full-size operation instead of three
            return rows * keep, removed
        return rows * keep + (1.0 - keep) * baseline, removed  # the second term is mask-sized

    return build


#: ``nb_samples="auto"``: first checkpoint, default tolerance and maximum.
AUTO_FIRST = 64
AUTO_TOLERANCE = 0.05
AUTO_MAXIMUM = 2048


@xt.hookimpl
def register_metrics(register: Callable[[str, type], None]) -> None:
    register(MuFidelity.name, MuFidelity)
