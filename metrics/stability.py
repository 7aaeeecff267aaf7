"""Stability of explanations: to nearby inputs (AverageStability; Bhatt, Weller, Moura, IJCAI
2020) and to the training data (MeGe and ReCo; Fel, Vigouroux, Cadène, Serre, WACV 2022).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Chunk, MethodMetric, Targets

from .mufidelity import rowwise_correlation
from .robustness import explain_pairs, flat_norm, host_draw, positive_number


class AverageStability(MethodMetric):
    """AverageStability (Bhatt et al., 2020, Def. 2; Xplique): the mean distance between the
    explanation of an input and those of ``nb_samples`` neighbours ``x + u_j``,
    ``u_j ~ U[0, radius)^d`` — lower is better.

    As Xplique, the ``nb_samples`` offsets are drawn once (from ``default_rng(seed)``, in the
    channels-first order for every framework) and shared by all inputs; neighbours are not
    clipped, and maps are not normalised (the score has the maps' scale).

    Args:
        method: the attribution method (name, class or instance; default ``"saliency"``).
        method_params: keyword parameters for the method (with a name or a class).
        radius: upper bound of the uniform offsets (default 0.1, Xplique).
        nb_samples: neighbours per input (default 20, Xplique).
        distance: ``"l2"`` (default, Xplique) or ``"l1"`` between the flattened maps.
        seed: seed of the offsets.

    Explanations passed to the metric are ``φ(x)`` (``method``'s maps on this model).
    ``details`` hold the per-neighbour ``distances`` ``(N, nb_samples)``.

    Example:
        >>> xt.AverageStability(model, method="gradcam", seed=0)(images, labels).mean
    """

    name = "average_stability"
    family = "stability"
    higher_is_better = False

    def __init__(
        self,
        model: Any,
        *,
        radius: float = 0.1,
        nb_samples: int = 20,
        distance: str = "l2",
        seed: int | None = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.radius = positive_number("radius", radius)
        self.nb_samples = xe.positive_int("nb_samples", nb_samples)
        self.distance = xe.one_of("distance", distance, ("l2", "l1"))
        self.seed = seed

    def offsets(self, shape: tuple[int, ...]) -> np.ndarray:
        """The shared offsets ``(nb_samples, *shape)`` for inputs of one input's ``shape`` (in
        the framework's layout)."""
        rng = np.random.default_rng(self.seed)
        return host_draw(self.adapter, (self.nb_samples, *shape), lambda s: rng.uniform(0.0, self.radius, s))

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        adapter = self.adapter
        base = self.explain(adapter, x, targets) if maps is None else maps
        offsets = adapter.from_numpy(x, self.offsets(tuple(x.shape[1:])))

        def perturb(chunk: Chunk) -> ep.Tensor:
            return adapter.broadcast_rows(x, chunk.items) + adapter.take_rows(offsets, chunk.samples)

        def distance(chunk: Chunk, perturbed: ep.Tensor, neighbour_maps: ep.Tensor) -> ep.Tensor:
            diff = neighbour_maps - adapter.broadcast_rows(base, chunk.items)
            if self.distance == "l1":
                return diff.abs().reshape((diff.shape[0], -1)).sum(axis=1)
            return flat_norm(diff)

        distances = explain_pairs(self, x, targets, self.nb_samples, perturb, distance)
        return self.make_result(distances.mean(axis=1), distances=distances)


class MeGe(MethodMetric):
    """MeGe and ReCo (Fel et al., WACV 2022): how much explanations change between models
    trained on different folds of the data — MeGe higher is better, in ``(0, 1]``.

    The inputs are cut into ``k`` equal contiguous folds (as Xplique: ``N`` must be a multiple
    of ``k``); model ``i`` was trained on every fold but fold ``i``. Every model explains every
    input with the method and predicts it. For each pair of models ``i < j`` and each input of
    fold ``i`` or ``j`` (seen in training by exactly one of them) that at least one of the two
    classifies correctly (``targets`` are the labels), ``d = sqrt(1 − |ρ|)`` with ``ρ`` the
    Spearman correlation of the two maps goes to ``S=`` if the two predictions agree, else to
    ``S≠``.

    * ``details["mege"] = 1 / (1 + mean(S=))`` and ``details["reco"] = max_γ TPR(γ) + TNR(γ) − 1``
      (floored at 0; thresholds every ``len // 20 + 1``-th sorted distance) are Xplique's
      dataset-level scores.
    * ``scores`` are per input: ``1 / (1 + mean of the input's S= distances)`` (NaN for an
      input with none), so the table's mean and interval are over inputs; they equal
      ``details["mege"]`` when every input has the same number of agreeing pairs.

    Args:
        models: the ``k`` trained models (same framework as ``model``), model ``i`` trained
            without fold ``i`` of the inputs.
        learning_algorithm: instead of ``models``: ``learning_algorithm(x_train, y_train,
            x_test, y_test) -> model`` (NumPy arrays, labels as class indices), called ``k``
            times per call, as Xplique's.
        k_splits: number of folds when training (default 4, Xplique).
        method: the attribution method (name, class or instance; default ``"saliency"``).
        method_params: keyword parameters for the method (with a name or a class).

    ``model`` is only the framework's reference; explanations passed to the metric are not
    used (they are the maps of ``model``, not of the fold models). ``details`` also hold the
    distance sets ``s_equal`` and ``s_different`` and the ``predictions`` ``(k, N)``.

    Example:
        >>> result = xt.MeGe(models[0], models=models, method="saliency")(images, labels)
        >>> result.details["mege"], result.details["reco"]
    """

    name = "mege"
    family = "stability"
    higher_is_better = True

    def __init__(
        self,
        model: Any,
        *,
        models: Sequence[Any] | None = None,
        learning_algorithm: Callable[..., Any] | None = None,
        k_splits: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if (models is None) == (learning_algorithm is None):
            raise xt.ParameterError("MeGe needs exactly one of models=[...] or learning_algorithm=...")
        if models is not None:
            if not isinstance(models, list | tuple) or len(models) < 2:
                raise xt.ParameterError(f"models must be a list of at least 2 trained models, got {models!r}")
            models = list(models)
        if learning_algorithm is not None and not callable(learning_algorithm):
            raise xt.ParameterError("learning_algorithm must be callable")
        self.models = models
        self.learning_algorithm = learning_algorithm
        self.k_splits = xe.positive_int("k_splits", k_splits)
        if models is None and self.k_splits < 2:
            raise xt.ParameterError(f"k_splits must be at least 2, got {k_splits}")

    @property
    def folds(self) -> int:
        return len(self.models) if self.models is not None else self.k_splits

    def check_call(self, x: ep.Tensor) -> None:
        if x.shape[0] % self.folds:
            raise xt.InputError(
                f"MeGe cuts the inputs into {self.folds} equal folds: got {x.shape[0]} inputs, "
                f"not a multiple of {self.folds}"
            )

    def fold_models(self, x: ep.Tensor, labels: np.ndarray) -> list[Any]:
        """The ``k`` models, trained by ``learning_algorithm`` when no models were given."""
        if self.models is not None:
            return list(self.models)
        k, size = self.k_splits, x.shape[0] // self.k_splits
        inputs = x.numpy()
        models = []
        for i in range(k):
            test = np.arange(i * size, (i + 1) * size)
            train = np.setdiff1d(np.arange(x.shape[0]), test)
            models.append(self.learning_algorithm(inputs[train], labels[train], inputs[test], labels[test]))  # type: ignore[misc]
        return models

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        labels = _labels(targets)
        models = self.fold_models(x, labels)
        framework = self.adapter.framework
        adapters = [xe.adapt(m, framework) for m in models]
        predictions = np.stack([
            xe.batched_forward(a, x, self.batch_size).argmax(axis=1).numpy() for a in adapters
        ])
        explanations = np.stack([self.explain(a, x, targets).numpy() for a in adapters])
        per_input, s_equal, s_different = mege_distances(explanations, predictions, labels)
        with np.errstate(invalid="ignore"):
            scores = np.array([1.0 / (1.0 + np.mean(d)) if d else np.nan for d in per_input])
        mege = 1.0 / (1.0 + s_equal.mean()) if s_equal.size else float("nan")
        return self.make_result(
            scores, mege=float(mege), reco=reco(s_equal, s_different), s_equal=s_equal,
            s_different=s_different, predictions=predictions,
        )


def _labels(targets: Targets) -> np.ndarray:
    if targets.labels is not None:
        return np.asarray(targets.labels, dtype=np.int64)
    if targets.weights is not None:
        return targets.weights.numpy().argmax(axis=1).astype(np.int64)
    raise xt.ParameterError("this metric needs class targets (indices or one-hot), not a score_fn")


def mege_distances(
    explanations: np.ndarray, predictions: np.ndarray, labels: np.ndarray
) -> tuple[list[list[float]], np.ndarray, np.ndarray]:
    """The Spearman distances of MeGe: per input (its ``S=`` distances), ``S=`` and ``S≠``.

    ``explanations`` ``(k, N, ...)``, ``predictions`` ``(k, N)``; fold ``i`` is the ``i``-th
    contiguous ``N / k`` inputs; NaN distances (constant maps) are dropped.

    Example:
        >>> per_input, s_eq, s_ne = mege_distances(maps, predictions, labels)
    """
    k, n = predictions.shape
    size = n // k
    flat = np.nan_to_num(explanations.reshape(k, n, -1).astype(np.float64))
    fold = np.arange(n) // size
    per_input: list[list[float]] = [[] for _ in range(n)]
    s_equal: list[float] = []
    s_different: list[float] = []
    for i in range(k):
        for j in range(i + 1, k):
            rows = np.flatnonzero((fold == i) | (fold == j))
            rho = _spearman(flat[i, rows], flat[j, rows])
            dist = np.sqrt(1.0 - np.abs(rho))
            for row, d in zip(rows, dist, strict=True):
                pi, pj = predictions[i, row], predictions[j, row]
                if np.isnan(d) or (pi != labels[row] and pj != labels[row]):
                    continue
                if pi == pj:
                    s_equal.append(float(d))
                    per_input[row].append(float(d))
                else:
                    s_different.append(float(d))
    return per_input, np.array(s_equal), np.array(s_different)


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Spearman correlation; NaN where a row is constant (as ``scipy.stats.spearmanr``)."""
    rho = rowwise_correlation(a, b, "spearman")
    constant = (a.max(axis=1) == a.min(axis=1)) | (b.max(axis=1) == b.min(axis=1))
    return np.where(constant, np.nan, rho)


def reco(s_equal: np.ndarray, s_different: np.ndarray) -> float:
    """Relative consistency: ``max_γ TPR(γ) + TNR(γ) − 1`` (floored at 0) separating ``S=``
    (below γ) from ``S≠`` (above γ), γ over every ``len // 20 + 1``-th sorted distance (as
    Xplique); ties at γ count in neither class.

    Example:
        >>> round(reco(np.array([0.1, 0.2]), np.array([0.8, 0.9])), 6)
        1.0
    """
    total = np.sort(np.concatenate([s_equal, s_different]))
    best = 0.0
    for gamma in total[:: len(total) // 20 + 1]:
        tp, fn = np.sum(s_equal < gamma), np.sum(s_equal > gamma)
        tn, fp = np.sum(s_different > gamma), np.sum(s_different < gamma)
        best = max(best, tp / (tp + fn + 1e-10) + tn / (tn + fp + 1e-10) - 1.0)
    return float(best)


@xt.hookimpl
def register_metrics(register: Callable[[str, type], None]) -> None:
    register(AverageStability.name, AverageStability)
    register(MeGe.name, MeGe)
