"""Random Logit (Sixt, Granz, Landgraf, "When Explanations Lie", ICML 2020; Xplique's
``RandomLogitMetric``): the structural similarity between the explanation of the target class
and that of a random other class. A class-sensitive explanation changes: lower is better.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import MethodMetric, Targets

from .stability import _labels


def off_classes(labels: np.ndarray, n_classes: int, seed: int | None) -> np.ndarray:
    """A uniform class ``≠ y`` for each label ``y`` (as Xplique: ``r ~ U{0..K−2}``, then
    ``r + 1`` where ``r ≥ y``), drawn from ``default_rng(seed)``.

    Example:
        >>> off_classes(np.array([0, 1, 2]), 3, seed=0)
        array([2, 2, 1])
    """
    r = np.random.default_rng(seed).integers(0, n_classes - 1, size=len(labels))
    return np.where(r >= labels, r + 1, r)


def gaussian_window(size: int, sigma: float) -> np.ndarray:
    """The normalised ``size × size`` Gaussian window of SSIM."""
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(coords**2) / (2.0 * sigma**2))
    window = np.outer(g, g)
    return window / window.sum()


def ssim(a: np.ndarray, b: np.ndarray, *, window: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> np.ndarray:
    """SSIM (Wang et al., 2004) between the 2-D maps ``a`` and ``b`` ``(N, H, W)``, one value
    per pair, as ``tf.image.ssim`` in Xplique: Gaussian window (shrunk to the largest odd size
    ≤ min(H, W)), valid positions only, dynamic range ``max − min`` over both maps (a pair
    with no range scores 1).

    Example:
        >>> m = np.random.default_rng(0).random((2, 16, 16))
        >>> ssim(m, m)
        array([1., 1.])
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    size = min(window, a.shape[1], a.shape[2])
    size = max(1, size - 1 if size % 2 == 0 else size)
    w = gaussian_window(size, sigma)
    both = np.concatenate([a.reshape(len(a), -1), b.reshape(len(b), -1)], axis=1)
    span = both.max(axis=1) - both.min(axis=1)
    c1 = ((k1 * span) ** 2)[:, None, None]
    c2 = ((k2 * span) ** 2)[:, None, None]

    def local_mean(m: np.ndarray) -> np.ndarray:
        return np.einsum("nijkl,kl->nij", np.lib.stride_tricks.sliding_window_view(m, (size, size), axis=(1, 2)), w)

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 where span = 0, replaced below
        luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
        structure = (2 * cov + c2) / (var_a + var_b + c2)
        values = (luminance * structure).mean(axis=(1, 2))
    return np.where(span > 0, values, 1.0)


class RandomLogit(MethodMetric):
    """Random Logit (Sixt et al., 2020): SSIM between the explanation of the target class and
    that of a uniformly drawn other class — lower is better (the explanation depends on the
    class explained).

    SSIM is Xplique's (``tf.image.ssim`` on the 2-D maps: Gaussian window 11, σ 1.5,
    k1 0.01, k2 0.03, range over both maps; a pair of constant maps scores 1). Quantus'
    variant compares flattened 1-D vectors with a 7-sample window, which is not comparable.

    Args:
        method: the attribution method (name, class or instance; default ``"saliency"``).
        method_params: keyword parameters for the method (with a name or a class).
        seed: seed of the off-class draw (``default_rng(seed)``, one class per input).
        window: SSIM window size (default 11).

    Targets must be classes (indices or one-hot; ``None`` = top-1). Explanations passed to the
    metric are those of the target class (``method``'s maps on this model). ``details`` hold the
    ``off_classes`` drawn.

    Example:
        >>> xt.RandomLogit(model, method="gradcam", seed=0)(images, labels).mean
    """

    name = "random_logit"
    family = "randomisation"
    higher_is_better = False

    def __init__(self, model: Any, *, seed: int | None = 42, window: int = 11, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.seed = seed
        self.window = xe.positive_int("window", window)

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        labels = _labels(targets)
        if targets.weights is not None:
            n_classes = int(targets.weights.shape[1])
        else:
            n_classes = int(xe.batched_forward(self.adapter, x[:1], 1).shape[1])
        if n_classes < 2:
            raise xt.ParameterError("random_logit needs a model with at least 2 classes")
        others = off_classes(labels, n_classes, self.seed)
        base = self.explain(self.adapter, x, targets) if maps is None else maps
        off_targets = Targets(len(others), labels=others)
        other = self.explain(self.adapter, x, off_targets)
        a, b = base.numpy(), other.numpy()
        if a.ndim == 2:  # tabular and series maps: one row
            a, b = a[:, None, :], b[:, None, :]
        return self.make_result(ssim(a, b, window=self.window), off_classes=others)


@xt.hookimpl
def register_metrics(register: Callable[[str, type], None]) -> None:
    register(RandomLogit.name, RandomLogit)
