"""Causal metrics: Deletion and Insertion (Petsiuk, Das, Saenko — RISE, BMVC 2018).

Positions are ranked by the explanation (all channels of a position together). Deletion
replaces the most important positions of the input by a substrate and follows the target
score as more are replaced; Insertion starts from the substrate and puts the most important
positions back. Each curve is summarised by its area (trapezoid rule on ``[0, 1]``).

The ranking is a stable descending sort done once per call in NumPy, so ties are broken by
position index (row-major), identically in every framework. Each perturbed input is built
on the device from the rank of each position: a position is replaced at step ``i`` iff its
rank is below ``k_i``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Chunk, Targets, expand_to_inputs, gaussian_blur


def descending_ranks(maps: np.ndarray) -> np.ndarray:
    """Rank of each position of each map (0 = most important), ties broken by position index.

    Example:
        >>> descending_ranks(np.array([[0.1, 0.5, 0.5, 0.2]]))
        array([[3, 0, 1, 2]])
    """
    flat = maps.reshape(maps.shape[0], -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None, :], axis=1)
    return ranks.reshape(maps.shape)


def trapezoid_auc(curves: np.ndarray) -> np.ndarray:
    """Area under each curve sampled at equally spaced points of ``[0, 1]`` (trapezoid rule)."""
    return 0.5 * (curves[:, :-1] + curves[:, 1:]).mean(axis=1)


class _CausalMetric(xt.Metric):
    family = "fidelity"
    """Shared machinery of :class:`Deletion` and :class:`Insertion`."""

    #: True: the path goes from the input to the substrate (deletion).
    _deleting: bool = True

    def __init__(
        self,
        model: Any,
        *,
        steps: int = 10,
        step_pixels: int | None = None,
        max_percentage_perturbed: float = 1.0,
        baseline: float | str = 0.0,
        activation: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.steps = xe.positive_int("steps", steps)
        self.step_pixels = None if step_pixels is None else xe.positive_int("step_pixels", step_pixels)
        self.max_percentage_perturbed = xe.in_range(
            "max_percentage_perturbed", max_percentage_perturbed, 0.0, 1.0, inclusive=True
        )
        if self.max_percentage_perturbed == 0.0:
            raise xt.ParameterError("max_percentage_perturbed must lie in (0, 1], got 0")
        if isinstance(baseline, str):
            self.baseline: float | str = xe.one_of("baseline", baseline, ("blur",))
        else:
            self.baseline = xe.number("baseline", baseline)
        self.activation = xe.activation("activation", activation)

    def perturbed_counts(self, n_positions: int) -> np.ndarray:
        """Number of positions replaced at each point of the curve (starts at 0)."""
        total = int(np.floor(n_positions * self.max_percentage_perturbed))
        if self.step_pixels is not None:
            n_steps = max(1, -(-total // self.step_pixels))  # ceil, as RISE's n_steps
            return np.minimum(np.arange(n_steps + 1) * self.step_pixels, total)
        # floor(i · total / steps): Xplique's truncated linspace, in exact integer arithmetic.
        return (np.arange(self.steps + 1, dtype=np.int64) * total) // self.steps

    def check_call(self, x: ep.Tensor) -> None:
        # Up front: one pass per point of each curve, and the curves (N, points) as float64,
        # counted without building them.
        n = int(x.shape[0])
        points = self.curve_points(int(np.prod(self.explanation_shape(x)[1:])))
        xe.check_workload(
            self.name,
            model_inputs=points * n,
            held_bytes=3 * points * n * 8,
            cause=f"{points:,} points per curve × {n} input(s)",
        )

    def curve_points(self, n_positions: int) -> int:
        """Points of each curve for inputs of ``n_positions`` positions (``len(perturbed_counts)``)."""
        if self.step_pixels is None:
            return self.steps + 1
        total = int(np.floor(n_positions * self.max_percentage_perturbed))
        return max(1, -(-total // self.step_pixels)) + 1

    def _substrate(self, x: ep.Tensor) -> ep.Tensor | float:
        if not isinstance(self.baseline, str):
            return self.baseline
        if x.ndim != 4:
            raise xt.ParameterError(
                f"baseline='blur' needs images (rank 4); got inputs of shape {tuple(x.shape)}; "
                "use a number"
            )
        # RISE's insertion substrate: Gaussian kernel 11, sigma 5, zero padding.
        return gaussian_blur(x, self.adapter.channel_axis, 11, 5.0)

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        assert maps is not None
        n = x.shape[0]
        maps_np = maps.numpy()
        ranks_np = descending_ranks(maps_np)
        counts = self.perturbed_counts(int(np.prod(ranks_np.shape[1:])))
        ranks = self.adapter.from_numpy(x, ranks_np.astype(np.float32))  # exact below 2**24 positions
        substrate = self._substrate(x)
        build = _perturber(self._deleting, self.adapter.channel_axis, substrate if isinstance(substrate, float) else None)
        curves, _ = xe.stream_scores(
            self.adapter, targets, n, len(counts), build, batch_size=self.batch_size,
            activation=self.activation, progress_bar=self.progress, desc=self.name,
            tensors=self._chunk_tensors(x, ranks, counts, substrate),
        )
        # A constant map ranks nothing: its curve would only follow the row-major tie-break.
        flat = maps_np.reshape(n, -1)
        constant = flat.max(axis=1) == flat.min(axis=1)
        curves[constant] = np.nan
        reason = {"undefined_reason": "constant explanation maps rank no position"} if constant.any() else {}
        return self.make_result(
            trapezoid_auc(curves),
            curves=curves,
            perturbed=counts,
            fractions=counts / max(1, int(np.prod(ranks_np.shape[1:]))),
            **reason,
        )

    def _chunk_tensors(
        self, x: ep.Tensor, ranks: ep.Tensor, counts: np.ndarray, substrate: ep.Tensor | float
    ) -> Callable[[Chunk], tuple[ep.Tensor, ...]]:
        """What each chunk's perturbed inputs are built from (uploads and views only): the
        rows of its images, their ranks, the number of positions replaced at each of its points
        ``(B, 1, ..., 1)``, and the substrate's rows when it is an image."""
        adapter = self.adapter

        def tensors(chunk: Chunk) -> tuple[ep.Tensor, ...]:
            items = chunk.items
            rows = adapter.broadcast_rows(x, items)
            k = xe.index_column(adapter, x, counts[chunk.samples], ranks.ndim)
            r = adapter.broadcast_rows(ranks, items)
            if isinstance(substrate, float):
                return rows, r, k
            return rows, r, k, adapter.broadcast_rows(substrate, items)

        return tensors


def _perturber(deleting: bool, channel_axis: int, value: float | None) -> Callable[..., ep.Tensor]:
    """``build(rows, ranks, k[, substrate])`` → the inputs with the positions of rank below
    ``k`` replaced (deletion) or kept (insertion), the others from the substrate: ``value``,
    or the substrate rows given (see ``xe.built_scores``)."""

    def build(rows: ep.Tensor, r: ep.Tensor, k: ep.Tensor, *substrate: ep.Tensor) -> ep.Tensor:
        # Deletion keeps the positions ranked at or after k; insertion (what is not yet
        # inserted is substrate) those before k.
        keep = ((r >= k) if deleting else (r < k)).astype(rows.dtype)
        keep = expand_to_inputs(keep, rows.ndim, channel_axis)
        # x·keep + s·(1−keep) is exact for keep ∈ {0, 1}: kept values are bit-identical.
        # Full-size operations are what this costs beside the model, so the scalar
        # substrate's term stays at mask size, and a zero substrate needs none.
        if substrate:
            return rows * keep + substrate[0] * (1.0 - keep)
        if value == 0.0:
            return rows * keep
        return rows * keep + (1.0 - keep) * value

    return build


class Deletion(_CausalMetric):
    """Deletion (Petsiuk et al., 2018): area under the score curve as the most important
    positions are replaced by a substrate — lower is better.

    Args:
        steps: number of intervals; the curve has ``steps + 1`` points at fractions
            ``0, 1/steps, …, 1`` of the perturbed budget (default 10, as Xplique).
        step_pixels: replace this many positions per step instead (RISE used 224 for single
            images and 1 792 for its published numbers); overrides ``steps``.
        max_percentage_perturbed: fraction of the positions perturbed at the last point.
        baseline: the substrate: a number (default 0, RISE's zero image) or ``"blur"``
            (Gaussian blur, kernel 11, sigma 5).
        activation: ``None`` (scores as the model gives them, e.g. logits), ``"softmax"`` (RISE's
            probabilities) or ``"sigmoid"``, applied to the outputs before the target score.

    The result holds per-input AUCs (``scores``), the curves ``(N, points)`` and, in
    ``details``, the number (``perturbed``) and share (``fractions``) of replaced positions.
    A constant explanation ranks no position: its score and curve are NaN (left out of the
    mean, with an :class:`~xai_toolbox.errors.UndefinedScoreWarning`), as are those of an
    input on which the model returned NaN.

    Example:
        >>> result = xt.Deletion(model, activation="softmax")(images, labels, maps)
        >>> result.mean, result.curves.shape
    """

    name = "deletion"
    higher_is_better = False
    _deleting = True


class Insertion(_CausalMetric):
    """Insertion (Petsiuk et al., 2018): area under the score curve as the most important
    positions are inserted into the substrate — higher is better.

    Parameters as :class:`Deletion`. RISE's insertion starts from a blurred image
    (``baseline="blur"``); the default 0 follows Xplique.

    Example:
        >>> result = xt.Insertion(model, baseline="blur", activation="softmax")(images, labels, maps)
    """

    name = "insertion"
    higher_is_better = True
    _deleting = False


@xt.hookimpl
def register_metrics(register: Callable[[str, type], None]) -> None:
    register(Deletion.name, Deletion)
    register(Insertion.name, Insertion)
