"""Gradient-based attributions: Saliency, Gradient×Input, Integrated Gradients, SmoothGrad.

All four differentiate the explained score (a logit by default) with respect to the inputs
through the framework adapter, streaming ``batch_size`` model inputs per backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Targets, reduce_channels


class _GradientMethod(xt.AttributionMethod):
    needs_gradients = True
    family = "gradient"

    def passes_per_image(self) -> int | None:
        return 1

    def _gradients(self, x: ep.Tensor, targets: Targets) -> ep.Tensor:
        """Gradient of each input's score with respect to that input, ``batch_size`` at a time."""
        parts = []
        for start in range(0, x.shape[0], self.batch_size):
            stop = min(start + self.batch_size, x.shape[0])
            parts.append(targets.take(slice(start, stop)).input_gradient(self.adapter, x[start:stop]))
        return parts[0] if len(parts) == 1 else ep.concatenate(parts, axis=0)


class Saliency(_GradientMethod):
    """Saliency (Simonyan et al., 2014): ``max_c |∂S/∂x_c|`` per position.

    Example:
        >>> maps = xt.Saliency(model)(images, labels)        # (N, H, W)
    """

    name = "saliency"

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> ep.Tensor:
        return reduce_channels(self._gradients(x, targets).abs(), self.adapter.channel_axis, "max")


class GradientInput(_GradientMethod):
    """Gradient × Input (Shrikumar et al., 2016): ``Σ_c x_c · ∂S/∂x_c`` per position.

    For a linear model this is each position's exact contribution to the score.

    Example:
        >>> maps = xt.method("gradient_input", model)(images, labels)
    """

    name = "gradient_input"

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> ep.Tensor:
        return reduce_channels(self._gradients(x, targets) * x, self.adapter.channel_axis, "sum")


def _baseline_like(baseline: Any, x: ep.Tensor, adapter: Any) -> ep.Tensor:
    if isinstance(baseline, int | float):
        return ep.zeros_like(x) + float(baseline)
    b = adapter.to_model(baseline)
    if tuple(b.shape) == tuple(x.shape[1:]):
        b = b.expand_dims(0)
    if b.ndim != x.ndim or b.shape[0] not in (1, x.shape[0]) or tuple(b.shape[1:]) != tuple(x.shape[1:]):
        raise xt.ParameterError(
            f"baseline of shape {tuple(b.shape)} does not fit inputs of shape {tuple(x.shape)}: "
            f"give a number, one input {tuple(x.shape[1:])} or one per input {tuple(x.shape)}"
        )
    return b + ep.zeros_like(x)


class IntegratedGradients(_GradientMethod):
    """Integrated Gradients (Sundararajan et al., 2017).

    ``IG = (x − x') ⊙ ∫₀¹ ∂S/∂x (x' + α(x − x')) dα``, summed over channels. The integral is
    approximated with ``steps`` points by the ``rule``: ``"trapezoid"`` (default, as Xplique),
    ``"riemann_middle"``, or ``"gausslegendre"`` (Captum's default). Completeness: the map
    sums to about ``S(x) − S(x')``.

    Args:
        steps: number of points on the path (model inputs per image).
        baseline: a number, one input, or one input per image (default 0, a black image).
        rule: quadrature rule, see above.

    Example:
        >>> maps = xt.IntegratedGradients(model, steps=32)(images, labels)
    """

    name = "integrated_gradients"

    def passes_per_image(self) -> int | None:
        return self.steps

    def __init__(
        self, model: Any, *, steps: int = 50, baseline: Any = 0.0, rule: str = "trapezoid", **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        self.steps = xe.positive_int("steps", steps)
        self.baseline = baseline
        self.rule = xe.one_of("rule", rule, ("trapezoid", "riemann_middle", "gausslegendre"))
        if self.rule == "trapezoid" and self.steps < 2:
            raise xt.ParameterError("steps must be at least 2 for the trapezoid rule")

    def _nodes(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.steps
        if self.rule == "trapezoid":
            alphas = np.linspace(0.0, 1.0, n)
            weights = np.full(n, 1.0 / (n - 1))
            weights[[0, -1]] /= 2
        elif self.rule == "riemann_middle":
            alphas = (np.arange(n) + 0.5) / n
            weights = np.full(n, 1.0 / n)
        else:
            nodes, w = np.polynomial.legendre.leggauss(n)
            alphas, weights = (nodes + 1) / 2, w / 2
        return alphas.astype(np.float32), weights.astype(np.float32)

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> ep.Tensor:
        adapter = self.adapter
        baseline = _baseline_like(self.baseline, x, adapter)
        delta = x - baseline
        alphas, weights = self._nodes()
        sums = xe.ItemSums(x.shape[0], adapter)
        shape = (-1,) + (1,) * (x.ndim - 1)
        todo = xe.chunks(x.shape[0], self.steps, self.batch_size)
        for chunk in xe.progress(todo, enabled=self.progress, total=len(todo), desc=self.name):
            items = chunk.items
            # from_numpy: no stream synchronisation per chunk on a GPU
            a = adapter.from_numpy(x, alphas[chunk.samples]).reshape(shape)
            w = adapter.from_numpy(x, weights[chunk.samples]).reshape(shape)
            path = adapter.take_rows(baseline, items) + a * adapter.take_rows(delta, items)
            grad = targets.take(items).input_gradient(adapter, path)
            sums.add(chunk, grad * w)
        return reduce_channels(delta * sums.result(), adapter.channel_axis, "sum")


class SmoothGrad(_GradientMethod):
    """SmoothGrad (Smilkov et al., 2017): the saliency averaged over noisy copies of the input.

    ``SG = mean_n |∂S/∂x (x + ε_n)|``, max over channels, ``ε_n ~ N(0, σ²)`` with
    ``σ = noise · (max(x) − min(x))`` per image (the paper recommends 10–20 %).
    By default the noise is drawn on the host with ``numpy.random.Generator([seed, i])`` for
    image ``i`` (Box–Muller normals from its uniforms, see :func:`xai_toolbox.extend.standard_normal`),
    in a channels-first order, so one seed gives the same map in every framework
    and for every ``batch_size``. ``noise_source="device"`` draws it on the model's device with
    the framework's own generator instead (seeded per image, so still independent of
    ``batch_size``): no full-size host-to-device copy per chunk, which matters on a GPU, but
    PyTorch and Keras then draw different noise.

    Args:
        nb_samples: noisy copies per image (paper: 50).
        noise: noise level as a fraction of each image's value range.
        seed: seed of the noise (``None``: fresh noise on every call).
        noise_source: ``"host"`` (NumPy, the same in every framework) or ``"device"``.

    Example:
        >>> maps = xt.SmoothGrad(model, nb_samples=25, seed=0)(images, labels)
    """

    name = "smoothgrad"
    stochastic = True

    def passes_per_image(self) -> int | None:
        return self.nb_samples

    def __init__(
        self,
        model: Any,
        *,
        nb_samples: int = 50,
        noise: float = 0.15,
        seed: int | None = 0,
        noise_source: str = "host",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.nb_samples = xe.positive_int("nb_samples", nb_samples)
        self.noise = xe.in_range("noise", noise, 0.0, 10.0, inclusive=True)
        self.seed = seed
        self.noise_source = xe.one_of("noise_source", noise_source, ("host", "device"))

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> ep.Tensor:
        adapter = self.adapter
        flat = x.reshape((x.shape[0], -1))
        sigma = (flat.max(axis=1) - flat.min(axis=1)) * self.noise
        noise = xe.noise_source(self.noise_source, adapter, x, self.seed, self.nb_samples)
        if self.noise_source == "host":
            sigma = sigma.numpy()  # one small transfer per call, not one per chunk
        sums = xe.ItemSums(x.shape[0], adapter)
        todo = xe.chunks(x.shape[0], self.nb_samples, self.batch_size)
        for chunk in xe.progress(todo, enabled=self.progress, total=len(todo), desc=self.name):
            items = chunk.items
            noisy = adapter.take_rows(x, items) + noise.scaled(chunk, sigma)
            grad = targets.take(items).input_gradient(adapter, noisy)
            sums.add(chunk, grad.abs())
        return reduce_channels(sums.result() / self.nb_samples, adapter.channel_axis, "max")


Register = Callable[[str, type], None]


@xt.hookimpl
def register_methods(register: Register) -> None:
    for cls in (Saliency, GradientInput, IntegratedGradients, SmoothGrad):
        register(cls.name, cls)
