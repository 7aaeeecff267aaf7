"""Gradient statistics over noisy copies of the input: SquareGrad and VarGrad (Xplique's
``gradient_statistics``), the second and centred second moments beside SmoothGrad's mean.

Both draw ``nb_samples`` noisy copies of each image with SmoothGrad's noise machinery (the same
noise in every framework and for every ``batch_size``), stream them ``batch_size`` model inputs
at a time across images, and accumulate each image's running mean and sum of squared
deviations chunk by chunk (Chan et al.'s pairwise update): exact like sums of ``g`` and ``g²``,
without their cancellation in float32 when the mean is large against the spread.
"""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Chunk, ModelAdapter, Targets, reduce_channels

from .gradients import _GradientMethod

NOISE_SCALES = ("absolute", "range")
REDUCERS = ("mean", "sum", "max")


def non_negative(name: str, value: Any) -> float:
    """A finite number ≥ 0 (a noise level).

    Example:
        >>> non_negative("noise", 0.2)
        0.2
    """
    value = xe.number(name, value)
    if value < 0:
        raise xt.ParameterError(f"{name} must be a non-negative number, got {value!r}")
    return value


def noise_sigma(x: ep.Tensor, noise: float, scale: str, source: str) -> Any:
    """Each image's noise standard deviation: ``noise`` itself (``scale="absolute"``, input
    units, as Xplique and Captum) or ``noise · (max − min)`` of the image (``"range"``, as
    SmoothGrad). NumPy for host noise (read once per call), a device tensor for device noise.

    Example:
        >>> sigma = noise_sigma(x, 0.2, "absolute", "host")        # (N,) NumPy
    """
    if scale == "absolute":
        return np.full(x.shape[0], noise, dtype=np.float32)
    flat = x.reshape((x.shape[0], -1))
    sigma = (flat.max(axis=1) - flat.min(axis=1)) * noise
    return sigma.numpy() if source == "host" else sigma


class Moments:
    """Per-item mean and sum of squared deviations of per-pair values, chunk by chunk.

    Values are taken about a shift per item, the first value seen (shifted data: deviations
    from a typical value are small, so a mean of 1000 does not cost the digits of a 1e-3
    spread), and each run of an item's values in a chunk is merged into the item's running
    moments by the pairwise update of Chan, Golub and LeVeque (1979): with ``n_a`` values so
    far of mean ``m_a`` and a run of ``n_b`` values of mean ``m_b`` and squared deviations
    ``M_b``, ``δ = m_b − m_a``, ``m ← m_a + δ n_b / n``, ``M ← M_a + M_b + δ² n_a n_b / n``.
    On adapters with mutable tensors each statistic lives in one buffer, updated in place.

    Example:
        >>> moments = Moments(n_items=2, adapter=adapter)
        >>> for chunk in xe.chunks(2, 8, batch_size=5):
        ...     moments.add(chunk, values_of(chunk))              # (chunk.size, ...)
        >>> mean, squared_deviations = moments.result()           # (2, ...) each
    """

    def __init__(self, n_items: int, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        self.counts = np.zeros(n_items, dtype=np.int64)
        self._stores: dict[str, Any] = {}  # "shift", "mean", "squares": a buffer or a list

    def add(self, chunk: Chunk, values: ep.Tensor) -> None:
        """Merge the chunk's per-pair ``values`` ``(chunk.size, ...)`` into their items."""
        for item, lo, hi in chunk.runs():
            run = values[lo:hi]
            n_a, n_b = int(self.counts[item]), hi - lo
            if n_a == 0:
                self._put("shift", item, run[0])
            offsets = run - self._get("shift", item)
            run_mean = offsets.mean(axis=0)
            run_squares = ((offsets - run_mean) ** 2).sum(axis=0)
            self.counts[item] = total = n_a + n_b
            if n_a == 0:
                self._put("mean", item, run_mean)
                self._put("squares", item, run_squares)
                continue
            delta = run_mean - self._get("mean", item)
            self._put("mean", item, delta * (n_b / total), add=True)
            self._put("squares", item, run_squares + delta**2 * (n_a * n_b / total), add=True)

    def _get(self, name: str, item: int) -> ep.Tensor:
        store = self._stores[name]
        return store[item] if isinstance(store, list) else ep.astensor(store[item])

    def _put(self, name: str, item: int, value: ep.Tensor, *, add: bool = False) -> None:
        store = self._stores.get(name)
        if not self.adapter.mutable_tensors:
            if store is None:
                store = self._stores[name] = [None] * len(self.counts)
            store[item] = store[item] + value if add else value
            return
        if store is None:
            store = self._stores[name] = ep.zeros(value, (len(self.counts), *value.shape)).raw
        self.adapter.write_rows(store, item, value.raw, add=add)

    def _all(self, name: str) -> ep.Tensor:
        store = self._stores[name]
        return ep.stack(store, axis=0) if isinstance(store, list) else ep.astensor(store)

    def result(self) -> tuple[ep.Tensor, ep.Tensor]:
        """``(means, squared deviations)``, ``(n_items, ...)`` each."""
        missing = np.flatnonzero(self.counts == 0).tolist()
        if missing:
            raise RuntimeError(f"no values were added for items {missing}")
        return self._all("shift") + self._all("mean"), self._all("squares")


class _GradientStatistic(_GradientMethod):
    """The input gradients of ``nb_samples`` noisy copies of each image, summarised per input
    value by :meth:`statistic`, then reduced over channels."""

    stochastic = True

    def __init__(
        self,
        model: Any,
        *,
        nb_samples: int = 50,
        noise: float = 0.2,
        noise_scale: str = "absolute",
        noise_source: str = "host",
        seed: int | None = 0,
        reducer: str = "mean",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.nb_samples = xe.positive_int("nb_samples", nb_samples)
        self.noise = non_negative("noise", noise)
        self.noise_scale = xe.one_of("noise_scale", noise_scale, NOISE_SCALES)
        self.noise_source = xe.one_of("noise_source", noise_source, ("host", "device"))
        self.seed = seed
        self.reducer = xe.one_of("reducer", reducer, REDUCERS)

    def passes_per_image(self) -> int | None:
        return self.nb_samples

    def statistic(self, mean: ep.Tensor, squared_deviations: ep.Tensor) -> ep.Tensor:
        raise NotImplementedError

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> ep.Tensor:
        adapter = self.adapter
        sigma = noise_sigma(x, self.noise, self.noise_scale, self.noise_source)
        noise = xe.noise_source(self.noise_source, adapter, x, self.seed, self.nb_samples)
        moments = Moments(x.shape[0], adapter)
        todo = xe.chunks(x.shape[0], self.nb_samples, self.batch_size)
        for chunk in xe.progress(todo, enabled=self.progress, total=len(todo), desc=self.name):
            items = chunk.items
            noisy = adapter.take_rows(x, items) + noise.scaled(chunk, sigma)
            moments.add(chunk, targets.take(items).input_gradient(adapter, noisy))
        return reduce_channels(self.statistic(*moments.result()), adapter.channel_axis, self.reducer)


class SquareGrad(_GradientStatistic):
    """SquareGrad (SmoothGrad², Hooker et al., NeurIPS 2019; Xplique's ``SquareGrad``): the
    mean of the squared input gradients over noisy copies of the input,
    ``Q = (1/n) Σ_k (∂S/∂x (x + ε_k))²``, ``ε_k ~ N(0, σ²)``, averaged over channels.

    Args:
        nb_samples: noisy copies per image (Xplique: 50).
        noise: standard deviation of the noise: in input units (``noise_scale="absolute"``,
            Xplique's 0.2), or as a fraction of each image's value range (``"range"``, as
            SmoothGrad here).
        noise_scale: ``"absolute"`` or ``"range"``, see ``noise``.
        noise_source: ``"host"`` (NumPy, the same noise in every framework) or ``"device"``
            (the framework's generator on the model's device), as SmoothGrad.
        seed: seed of the noise (``None``: fresh noise on every call).
        reducer: channel reduction applied after the statistic (Xplique: ``"mean"``).

    Example:
        >>> maps = xt.SquareGrad(model, nb_samples=50, noise=0.2, seed=0)(images, labels)
    """

    name = "squaregrad"

    def statistic(self, mean: ep.Tensor, squared_deviations: ep.Tensor) -> ep.Tensor:
        return squared_deviations / self.nb_samples + mean * mean


class VarGrad(_GradientStatistic):
    """VarGrad (Adebayo et al., 2018; Xplique's ``VarGrad``): the variance of the input
    gradients over noisy copies of the input,
    ``V = 1/(n − ddof) · Σ_k (G_k − Ḡ)²``, ``G_k = ∂S/∂x (x + ε_k)``, averaged over channels.

    ``ddof=1`` (default) is Xplique's unbiased estimator; ``ddof=0`` is Captum's
    ``NoiseTunnel(nt_type="vargrad")`` (which, over ``Saliency``, also needs ``abs=False`` to
    compute the variance of the gradient rather than of its absolute value).

    Args:
        nb_samples: noisy copies per image (Xplique: 50; at least ``ddof + 1``).
        noise: noise standard deviation, see :class:`SquareGrad`.
        noise_scale: ``"absolute"`` (Xplique) or ``"range"``.
        noise_source: ``"host"`` or ``"device"``.
        seed: seed of the noise.
        ddof: 1 (unbiased, Xplique) or 0 (Captum).
        reducer: channel reduction applied after the statistic (Xplique: ``"mean"``).

    Example:
        >>> maps = xt.VarGrad(model, nb_samples=50, seed=0)(images, labels)
    """

    name = "vargrad"

    def __init__(self, model: Any, *, ddof: int = 1, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.ddof = xe.one_of("ddof", ddof, (0, 1))
        if self.nb_samples <= self.ddof:
            raise xt.ParameterError(
                f"VarGrad needs nb_samples > ddof to estimate a variance; got nb_samples="
                f"{self.nb_samples} with ddof={self.ddof}"
            )

    def statistic(self, mean: ep.Tensor, squared_deviations: ep.Tensor) -> ep.Tensor:
        return squared_deviations / (self.nb_samples - self.ddof)


@xt.hookimpl
def register_methods(register: Any) -> None:
    for cls in (SquareGrad, VarGrad):
        register(cls.name, cls)
