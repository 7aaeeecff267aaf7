"""Robustness of explanations to small input perturbations, and their fidelity to them.

* :class:`SensitivityMax` (Yeh et al., NeurIPS 2019; Captum's ``sensitivity_max``): the largest
  relative change of the explanation over random points of an L∞ ball around the input.
* :class:`LocalLipschitz` (Alvarez-Melis & Jaakkola, 2018; Quantus' ``LocalLipschitzEstimate``):
  the largest ratio ``‖φ(x) − φ(x')‖ / ‖x − x'‖`` over Gaussian neighbours.
* :class:`Infidelity` (Yeh et al., NeurIPS 2019; Captum's ``infidelity``): the mean squared
  error between the attribution of a random perturbation and the score change it causes.

Perturbations are drawn on the host per input, item ``i`` from ``default_rng([seed, i])`` in
the channels-first order (transposed for channels-last frameworks), so the same seed gives the
same neighbours in every framework and for every ``batch_size``. Perturbed inputs are streamed
``batch_size`` at a time across inputs; the metrics that re-explain (Sensitivity-Max, Local
Lipschitz) run the configured method on each chunk of neighbours.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Chunk, MethodMetric, ModelAdapter, Targets, expand_to_inputs


def canonical_shape(adapter: ModelAdapter, shape: tuple[int, ...]) -> tuple[tuple[int, ...], bool]:
    """The channels-first form of one input's ``shape`` and whether it had to be moved.

    Example:
        >>> canonical_shape(keras_adapter, (16, 16, 3))
        ((3, 16, 16), True)
    """
    channels_last = adapter.channel_axis == -1 and len(shape) >= 2
    return ((shape[-1], *shape[:-1]) if channels_last else shape), channels_last


def host_draw(adapter: ModelAdapter, shape: tuple[int, ...], draw: Callable[[tuple[int, ...]], np.ndarray]) -> np.ndarray:
    """``draw(canonical shape)`` for a batch of inputs shaped ``(n, *item)`` in the framework's
    layout: drawn channels-first, then moved, so every framework gets the same numbers.

    Example:
        >>> host_draw(adapter, (20, 16, 16, 3), lambda s: rng.uniform(0, 0.1, s))   # (20, 16, 16, 3)
    """
    item, moved = canonical_shape(adapter, tuple(shape[1:]))
    values = np.asarray(draw((shape[0], *item)), dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(values, 1, -1)) if moved else values


class UniformNoise:
    """Uniform noise in ``[low, high)`` for (item, sample) pairs, drawn on the host: item ``i``
    from ``default_rng([seed, i])`` (all its samples at once), the layout as :func:`host_draw`.

    Example:
        >>> noise = UniformNoise(adapter, x, seed=0, n=10, low=-0.02, high=0.02)
        >>> perturbed = adapter.broadcast_rows(x, chunk.items) + noise.chunk(chunk)
    """

    def __init__(self, adapter: ModelAdapter, like: ep.Tensor, seed: int | None, n: int, low: float, high: float) -> None:
        self.adapter, self.like, self.seed, self.n = adapter, like, seed, n
        self.low, self.high = low, high
        self._item: int | None = None
        self._values: np.ndarray | None = None

    def for_item(self, item: int) -> np.ndarray:
        """All ``n`` samples of ``item``, ``(n, *item shape)`` float32."""
        if self._item != item:
            rng = np.random.default_rng(None if self.seed is None else [self.seed, item])
            shape = (self.n, *self.like.shape[1:])
            self._item = item
            self._values = host_draw(self.adapter, shape, lambda s: rng.uniform(self.low, self.high, s))
        assert self._values is not None
        return self._values

    def chunk(self, chunk: Chunk) -> ep.Tensor:
        """The noise of the chunk's pairs on the device, ``(chunk.size, *item shape)``."""
        out = np.empty((chunk.size, *self.like.shape[1:]), dtype=np.float32)
        for item, lo, hi in chunk.runs():
            first = (chunk.start + lo) % self.n
            out[lo:hi] = self.for_item(item)[first : first + hi - lo]
        return self.adapter.from_numpy(self.like, out)


def positive_number(name: str, value: Any) -> float:
    """``value`` as a float > 0, else a :class:`~xai_toolbox.errors.ParameterError` naming it.

    Example:
        >>> positive_number("radius", 0.02)
        0.02
    """
    number = xe.number(name, value)
    if number <= 0:
        raise xt.ParameterError(f"{name} must be positive, got {value}")
    return number


def flat_norm(t: ep.Tensor) -> ep.Tensor:
    """The L2 (Frobenius) norm of each row of ``t``, ``(B,)``."""
    return (t.reshape((t.shape[0], -1)) ** 2).sum(axis=1).sqrt()


def explain_pairs(
    metric: MethodMetric,
    x: ep.Tensor,
    targets: Targets,
    n_per_item: int,
    perturb: Callable[[Chunk], ep.Tensor],
    value: Callable[[Chunk, ep.Tensor, ep.Tensor], ep.Tensor],
) -> np.ndarray:
    """``value(chunk, perturbed, maps)`` ``(chunk.size,)`` for every (input, neighbour) pair,
    as NumPy ``(n_items, n_per_item)``: the neighbours ``perturb(chunk)`` are explained by the
    metric's method ``batch_size`` at a time across inputs, values kept on the device until
    the end.

    Example:
        >>> distances = explain_pairs(self, x, targets, 20, perturb, lambda c, p, m: flat_norm(m - base))
    """
    values = xe.PairScores(x.shape[0], n_per_item, metric.adapter)
    todo = xe.chunks(x.shape[0], n_per_item, metric.batch_size)
    for chunk in xe.progress(todo, enabled=metric.progress, total=len(todo), desc=metric.name):
        perturbed = perturb(chunk)
        maps = metric.explain(metric.adapter, perturbed, targets.take(chunk.items))
        values.put(chunk, value(chunk, perturbed, maps))
    return values.result().numpy().astype(np.float64)


class SensitivityMax(MethodMetric):
    """Sensitivity-Max (Yeh et al., 2019): ``max_s ‖φ(x + δ_s) − φ(x)‖ / ‖φ(x)‖`` over
    ``nb_samples`` points ``δ_s ~ U[−radius, radius]^d`` — lower is better.

    The method is re-run on every neighbour (same targets). As Captum's ``sensitivity_max``
    and the official code, the change is relative to ``‖φ(x)‖`` (Frobenius norm; a zero map
    divides by 1); ``relative=False`` gives the paper's absolute form.

    Args:
        method: the attribution method (name, class or instance; default ``"saliency"``).
        method_params: keyword parameters for the method (with a name or a class).
        radius: half-side of the L∞ ball (default 0.02, Captum).
        nb_samples: neighbours per input (default 10, Captum).
        relative: divide by ``‖φ(x)‖`` (default True, Captum and the official code).
        seed: seed of the neighbours (input ``i`` draws from ``default_rng([seed, i])``).

    Explanations passed to the metric are ``φ(x)`` (``method``'s maps on this model). ``details``
    hold the per-neighbour ``sensitivities`` ``(N, nb_samples)``.

    Example:
        >>> xt.SensitivityMax(model, method="gradcam", seed=0)(images, labels).mean
    """

    name = "sensitivity_max"
    family = "stability"
    higher_is_better = False

    def __init__(
        self,
        model: Any,
        *,
        radius: float = 0.02,
        nb_samples: int = 10,
        relative: bool = True,
        seed: int | None = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.radius = positive_number("radius", radius)
        self.nb_samples = xe.positive_int("nb_samples", nb_samples)
        self.relative = xe.flag("relative", relative)
        self.seed = seed

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        adapter = self.adapter
        base = self.explain(adapter, x, targets) if maps is None else maps
        noise = UniformNoise(adapter, x, self.seed, self.nb_samples, -self.radius, self.radius)

        def perturb(chunk: Chunk) -> ep.Tensor:
            return adapter.broadcast_rows(x, chunk.items) + noise.chunk(chunk)

        def change(chunk: Chunk, perturbed: ep.Tensor, neighbour_maps: ep.Tensor) -> ep.Tensor:
            return flat_norm(neighbour_maps - adapter.broadcast_rows(base, chunk.items))

        changes = explain_pairs(self, x, targets, self.nb_samples, perturb, change)
        if self.relative:
            norms = flat_norm(base).numpy().astype(np.float64)
            changes = changes / np.where(norms == 0.0, 1.0, norms)[:, None]
        return self.make_result(changes.max(axis=1), sensitivities=changes)


class LocalLipschitz(MethodMetric):
    """Local Lipschitz Estimate (Alvarez-Melis & Jaakkola, 2018):
    ``max_s ‖φ(x) − φ(x'_s)‖₂ / (‖x − x'_s‖₂ + 1e-10)`` over ``nb_samples`` Gaussian neighbours
    ``x'_s = x + N(0, std²)`` on every input value — lower is better.

    Defaults follow Quantus' ``LocalLipschitzEstimate`` (200 neighbours, std 0.1, no clipping);
    unlike Quantus, explanations are not normalised by a batch-wide maximum (that would make an
    input's score depend on the rest of the batch) — pass maps on a common scale.

    Args:
        method: the attribution method (name, class or instance; default ``"saliency"``).
        method_params: keyword parameters for the method (with a name or a class).
        nb_samples: neighbours per input (default 200, Quantus).
        std: standard deviation of the Gaussian perturbation (default 0.1, Quantus; in the
            units of the model's inputs).
        seed: seed of the neighbours (input ``i`` draws from ``default_rng([seed, i])``).

    ``details`` hold the per-neighbour ``ratios`` ``(N, nb_samples)``.

    Example:
        >>> xt.LocalLipschitz(model, nb_samples=50, seed=0)(images, labels).mean
    """

    name = "local_lipschitz"
    family = "stability"
    higher_is_better = False

    def __init__(
        self, model: Any, *, nb_samples: int = 200, std: float = 0.1, seed: int | None = 0, **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        self.nb_samples = xe.positive_int("nb_samples", nb_samples)
        self.std = positive_number("std", std)
        self.seed = seed

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        adapter = self.adapter
        base = self.explain(adapter, x, targets) if maps is None else maps
        noise = xe.noise_source("host", adapter, x, self.seed, self.nb_samples)
        sigma = np.full(x.shape[0], self.std, dtype=np.float32)
        last: dict[int, ep.Tensor] = {}

        def perturb(chunk: Chunk) -> ep.Tensor:
            last.clear()
            last[chunk.start] = noise.scaled(chunk, sigma)
            return adapter.broadcast_rows(x, chunk.items) + last[chunk.start]

        def ratio(chunk: Chunk, perturbed: ep.Tensor, neighbour_maps: ep.Tensor) -> ep.Tensor:
            change = flat_norm(neighbour_maps - adapter.broadcast_rows(base, chunk.items))
            return change / (flat_norm(last[chunk.start]) + 1e-10)

        ratios = explain_pairs(self, x, targets, self.nb_samples, perturb, ratio)
        return self.make_result(ratios.max(axis=1), ratios=ratios)


class Infidelity(xt.Metric):
    """Infidelity (Yeh et al., 2019): ``E_I[(Iᵀφ − (f(x) − f(x − I)))²]`` over ``nb_samples``
    Gaussian perturbations ``I ~ N(0, std²)`` of every input value — lower is better.

    ``f`` is the target score (logit by default); an explanation ``(H, W)`` weighs the
    perturbation of every channel at its position (``Iᵀφ = Σ_c Σ_hw I_chw φ_hw``), which is
    Captum's ``infidelity`` with the map repeated over channels.

    Args:
        nb_samples: perturbations per input (default 10, Captum's ``n_perturb_samples``).
        std: standard deviation of ``I`` (default 0.003: Captum's documented example; in the
            units of the model's inputs).
        normalize: scale ``φ`` by the optimal ``β = E[Iᵀφ·Δf] / E[(Iᵀφ)²]`` first, as the
            official code (scale-invariant); default False, as Captum.
        activation: ``None`` (logits), ``"softmax"`` or ``"sigmoid"`` before the target score.
        seed: seed of the perturbations (input ``i`` draws from ``default_rng([seed, i])``).

    ``details`` hold, per perturbation ``(N, nb_samples)``, the attributed change
    ``attributions`` (``Iᵀφ``) and the score ``drops`` (``f(x) − f(x − I)``).

    Example:
        >>> xt.Infidelity(model, std=0.01, seed=0)(images, labels, maps).mean
    """

    name = "infidelity"
    family = "fidelity"
    higher_is_better = False

    def __init__(
        self,
        model: Any,
        *,
        nb_samples: int = 10,
        std: float = 0.003,
        normalize: bool = False,
        activation: str | None = None,
        seed: int | None = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.nb_samples = xe.positive_int("nb_samples", nb_samples)
        self.std = positive_number("std", std)
        self.normalize = xe.flag("normalize", normalize)
        self.activation = xe.activation("activation", activation)
        self.seed = seed

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        assert maps is not None
        adapter = self.adapter
        noise = xe.noise_source("host", adapter, x, self.seed, self.nb_samples)
        sigma = np.full(x.shape[0], self.std, dtype=np.float32)
        clean = xe.batched_scores(adapter, targets, x, self.batch_size, self.activation)
        last: dict[int, ep.Tensor] = {}

        def perturbation(chunk: Chunk) -> ep.Tensor:
            if chunk.start not in last:  # build() and attribution() ask for the same chunk
                last.clear()
                last[chunk.start] = noise.scaled(chunk, sigma)
            return last[chunk.start]

        def build(chunk: Chunk) -> ep.Tensor:
            return adapter.broadcast_rows(x, chunk.items) - perturbation(chunk)

        def attribution(chunk: Chunk) -> ep.Tensor:
            rows = adapter.broadcast_rows(maps, chunk.items)
            weighted = perturbation(chunk) * expand_to_inputs(rows, x.ndim, adapter.channel_axis)
            return weighted.reshape((weighted.shape[0], -1)).sum(axis=1)

        scores, attributed = xe.stream_scores(
            adapter, targets, x.shape[0], self.nb_samples, build, batch_size=self.batch_size,
            activation=self.activation, progress_bar=self.progress, desc=self.name, extra=attribution,
        )
        assert attributed is not None
        drops = clean.numpy().astype(np.float64)[:, None] - scores
        return self.make_result(infidelity(attributed, drops, self.normalize), attributions=attributed, drops=drops)


def infidelity(attributions: np.ndarray, drops: np.ndarray, normalize: bool) -> np.ndarray:
    """Per-input infidelity from ``Iᵀφ`` and ``f(x) − f(x − I)`` ``(N, samples)``; with
    ``normalize`` the attributions are first scaled by the optimal ``β`` (0/0 → β = 0).

    Example:
        >>> infidelity(np.array([[1.0, 2.0]]), np.array([[2.0, 4.0]]), normalize=True)
        array([0.])
    """
    if normalize:
        num = (attributions * drops).mean(axis=1, keepdims=True)
        den = (attributions**2).mean(axis=1, keepdims=True)
        attributions = attributions * np.divide(num, den, out=np.zeros_like(num), where=den != 0)
    return ((attributions - drops) ** 2).mean(axis=1)


@xt.hookimpl
def register_metrics(register: Callable[[str, type], None]) -> None:
    register(SensitivityMax.name, SensitivityMax)
    register(LocalLipschitz.name, LocalLipschitz)
    register(Infidelity.name, Infidelity)
