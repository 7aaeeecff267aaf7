"""Pieces shared by the built-in fidelity metrics: output activations and streamed scoring.

A perturbation metric asks for ``n_per_item`` perturbed versions of each input; we enumerate
the (input, perturbation) pairs in order and stream them through the model in chunks of
``batch_size`` across input boundaries (:func:`xai_toolbox._streaming.chunks`), building each
chunk on the device. Scores stay on the device until the end, so there is one host copy per
call, not one per chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

from xai_toolbox import _validation as v
from xai_toolbox._streaming import Chunk, PairScores, batched_forward, chunks, progress, upload
from xai_toolbox._targets import Targets
from xai_toolbox.base import Metric

#: Accepted values of ``activation``: scores as the model gives them, or probabilities.
ACTIVATIONS = (None, "softmax", "sigmoid")


def check_activation(activation: Any) -> str | None:
    return v.one_of("activation", activation, ACTIVATIONS)


def check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not np.isfinite(value):
        raise v.ParameterError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def activate(outputs: ep.Tensor, activation: str | None) -> ep.Tensor:
    """Apply the output activation the metric was configured with (before the target score)."""
    if activation is None:
        return outputs
    if activation == "softmax":
        return ep.softmax(outputs, axis=-1)
    # EagerPy has no sigmoid; 1 / (1 + e^-z) saturates to exactly 0 or 1 without NaN.
    return 1.0 / (1.0 + ep.exp(-outputs))


def clean_scores(metric: Metric, x: ep.Tensor, targets: Targets, activation: str | None) -> ep.Tensor:
    """``(N,)`` scores of the unperturbed inputs, ``batch_size`` inputs per forward pass."""
    outputs = batched_forward(metric.adapter, x, metric.batch_size)
    return targets.score(activate(outputs, activation))


def streamed_scores(
    metric: Metric,
    targets: Targets,
    n_items: int,
    n_per_item: int,
    build: Callable[[Chunk], ep.Tensor],
    activation: str | None,
    *,
    desc: str,
    extra: Callable[[Chunk], ep.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores ``(n_items, n_per_item)`` of the perturbed inputs ``build(chunk)`` returns.

    ``extra(chunk)`` optionally computes one more per-pair value on the device (MuFidelity's
    attribution sums); it comes back with the same shape.
    """
    scores, extras = PairScores(n_items, n_per_item), PairScores(n_items, n_per_item)
    todo = chunks(n_items, n_per_item, metric.batch_size)
    for chunk in progress(todo, enabled=metric.progress, total=len(todo), desc=desc):
        outputs = metric.adapter.forward(build(chunk))
        scores.put(chunk, targets.take(chunk.items).score(activate(outputs, activation)))
        if extra is not None:
            extras.put(chunk, extra(chunk))
    return _host(scores), (_host(extras) if extra is not None else None)


def _host(values: PairScores) -> np.ndarray:
    return values.result().numpy().astype(np.float64)


def index_column(like: ep.Tensor, values: np.ndarray, ndim: int) -> ep.Tensor:
    """``values`` ``(B,)`` on ``like``'s device, shaped ``(B, 1, ..., 1)`` to broadcast over ``ndim`` axes."""
    t = upload(like, np.asarray(values, dtype=np.float32))  # per chunk: no GPU sync
    return t.reshape((len(values),) + (1,) * (ndim - 1))


def positions_shape(x: ep.Tensor, channel_axis: int) -> tuple[int, ...]:
    """The per-position shape of an explanation for ``x`` (channels removed, batch dropped)."""
    return v.explanation_shape(tuple(x.shape), channel_axis)[1:]
