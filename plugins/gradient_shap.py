"""GradientSHAP / Expected Gradients: Integrated Gradients averaged over references drawn from
a distribution, with one random point of each path.

``φ(x) = E_{x'∼D, α∼U(0,1)} [(x − x') ⊙ ∂S/∂x (x' + α (x − x'))]`` (Erion et al., 2021), estimated
with ``nb_samples`` draws per image as Captum's ``GradientShap`` does: a reference ``x'`` drawn
uniformly with replacement from ``baselines``, one ``α``, optionally Gaussian noise on ``x``.
"""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Targets, reduce_channels

from .gradient_stats import NOISE_SCALES, noise_sigma, non_negative
from .gradients import _GradientMethod

#: Third key of each image's draw generator, ``default_rng([seed, image, DRAWS_KEY])``: a stream
#: apart from the noise's ``default_rng([seed, image])``.
DRAWS_KEY = 1


def draws(seed: int | None, item: int, n: int, n_references: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``item``'s reference indices ``(n,)`` (uniform over ``n_references``, with
    replacement) and path positions ``α`` ``(n,)`` (uniform in [0, 1)), in that order, from
    ``numpy.random.default_rng([seed, item, DRAWS_KEY])``: the same in every framework and for
    every ``batch_size`` (``seed=None``: fresh draws).

    Example:
        >>> indices, alphas = draws(0, item=3, n=5, n_references=10)
    """
    rng = np.random.default_rng(None if seed is None else [seed, item, DRAWS_KEY])
    indices = rng.integers(n_references, size=n)
    return indices, rng.random(n, dtype=np.float32)


class GradientSHAP(_GradientMethod):
    """GradientSHAP (Lundberg & Lee, NeurIPS 2017; Captum's ``GradientShap``), i.e. Expected
    Gradients (Erion, Janizek, Sturmfels, Lundberg, Lee, *Nature Machine Intelligence* 2021).

    For each of ``nb_samples`` draws per image: a reference ``x'`` uniformly from
    ``baselines``, ``α ~ U(0, 1)``, and ``x̃ = x + N(0, σ²)`` (σ = 0 by default); the
    attribution is ``(x̃ − x') ⊙ ∂S/∂x (x' + α (x̃ − x'))`` (or the gradient alone with
    ``multiply_by_inputs=False``), averaged over the draws and summed over channels. In
    expectation the map sums to ``S(x) − E[S(x')]`` (exactly, draw by draw, for a linear model).

    Args:
        nb_samples: draws per image (model inputs per image). shap's ``GradientExplainer``
            default, 200; Captum's is 5, which is very noisy.
        baselines: the reference distribution: a number (a constant image), one input, or a
            stack ``(B, *input_shape)`` of references (e.g. training images) drawn with
            replacement — Expected Gradients' setting.
        noise: standard deviation of Gaussian noise added to the input before each draw
            (Captum's ``stdevs``, default 0), in input units or as a fraction of the image's
            range, see ``noise_scale``.
        noise_scale: ``"absolute"`` (Captum) or ``"range"``.
        multiply_by_inputs: multiply by ``x̃ − x'`` (Captum's default, True).
        seed: seed of the draws (``None``: fresh draws on every call).

    The draws are returned as extras by :meth:`explain_with_extras`: ``"baseline_indices"``
    and ``"alphas"``, ``(N, nb_samples)`` NumPy arrays.

    Example:
        >>> maps = xt.GradientSHAP(model, baselines=train_images[:64], seed=0)(images, labels)
    """

    name = "gradient_shap"
    stochastic = True

    def __init__(
        self,
        model: Any,
        *,
        nb_samples: int = 200,
        baselines: Any = 0.0,
        noise: float = 0.0,
        noise_scale: str = "absolute",
        multiply_by_inputs: bool = True,
        seed: int | None = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.nb_samples = xe.positive_int("nb_samples", nb_samples)
        if isinstance(baselines, bool) or baselines is None:
            raise xt.ParameterError(f"baselines must be a number or an array of references, got {baselines!r}")
        if isinstance(baselines, int | float | np.number):
            baselines = xe.number("baselines", baselines)
        self.baselines = baselines
        self.noise = non_negative("noise", noise)
        self.noise_scale = xe.one_of("noise_scale", noise_scale, NOISE_SCALES)
        self.multiply_by_inputs = xe.flag("multiply_by_inputs", multiply_by_inputs)
        self.seed = seed

    def passes_per_image(self) -> int | None:
        return self.nb_samples

    def _references(self, x: ep.Tensor) -> ep.Tensor:
        """The baselines as a stack ``(B, *x.shape[1:])`` on the model's device."""
        if isinstance(self.baselines, float):
            return ep.zeros(x, (1, *x.shape[1:])) + self.baselines
        refs = self.adapter.to_model(self.baselines)
        if tuple(refs.shape) == tuple(x.shape[1:]):
            refs = refs.expand_dims(0)
        if refs.ndim != x.ndim or tuple(refs.shape[1:]) != tuple(x.shape[1:]) or refs.shape[0] == 0:
            raise xt.ParameterError(
                f"baselines of shape {tuple(refs.shape)} do not fit inputs of shape {tuple(x.shape)}: "
                f"give a number, one input {tuple(x.shape[1:])} or references (B, {', '.join(map(str, x.shape[1:]))})"
            )
        if xe.has_non_finite(refs):
            raise xt.ParameterError("baselines contain NaN or infinite values")
        return refs

    def check_call(self, x: ep.Tensor) -> None:
        self._references(x)

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> xe.Explanation:
        adapter = self.adapter
        n, count = self.nb_samples, x.shape[0]
        refs = self._references(x)
        drawn = [draws(self.seed, item, n, refs.shape[0]) for item in range(count)]
        indices = np.stack([d[0] for d in drawn])
        alphas = np.stack([d[1] for d in drawn])
        noise = None
        if self.noise > 0:
            noise = xe.noise_source("host", adapter, x, self.seed, n)
            sigma = noise_sigma(x, self.noise, self.noise_scale, "host")
        sums = xe.ItemSums(count, adapter)
        shape = (-1,) + (1,) * (x.ndim - 1)
        todo = xe.chunks(count, n, self.batch_size)
        for chunk in xe.progress(todo, enabled=self.progress, total=len(todo), desc=self.name):
            items, samples = chunk.items, chunk.samples
            inputs = adapter.take_rows(x, items)
            if noise is not None:
                inputs = inputs + noise.scaled(chunk, sigma)
            reference = adapter.take_rows(refs, indices[items, samples])
            alpha = adapter.from_numpy(x, alphas[items, samples]).reshape(shape)
            delta = inputs - reference
            grad = targets.take(items).input_gradient(adapter, reference + alpha * delta)
            sums.add(chunk, grad * delta if self.multiply_by_inputs else grad)
        maps = reduce_channels(sums.result() / n, adapter.channel_axis, "sum")
        return xe.Explanation(maps, {"baseline_indices": indices, "alphas": alphas})


@xt.hookimpl
def register_methods(register: Any) -> None:
    register(GradientSHAP.name, GradientSHAP)
