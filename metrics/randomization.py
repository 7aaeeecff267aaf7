"""Model parameter randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018), cascading from the output.

The top layers of a *copy* of the model are re-initialised, the inputs are explained again
with the same method, and each explanation is compared with the original one by Spearman rank
correlation. An explanation that depends on what the model learned changes: low similarity
is better. The user's model is never modified.

New weights come from ``np.random.default_rng(seed)``, drawn in PyTorch's layout (and
transposed for Keras), so twin PyTorch/Keras models get identical random weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import MethodMetric, ModelAdapter, Targets

from .mufidelity import rowwise_correlation


def draws(rng: np.random.Generator, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Uniform ``±1/sqrt(fan_in)`` (PyTorch's default scale) for every parameter of one layer.

    ``shapes`` are in the canonical (PyTorch) layout; ``fan_in`` comes from the layer's first
    parameter of rank ≥ 2; layers with vectors only (normalisation) draw in ``±1``.

    Example:
        >>> [a.shape for a in draws(np.random.default_rng(0), [(4, 3), (4,)])]
        [(4, 3), (4,)]
    """
    kernels = [s for s in shapes if len(s) >= 2]
    bound = 1.0 / math.sqrt(int(np.prod(kernels[0][1:]))) if kernels else 1.0
    return [rng.uniform(-bound, bound, s).astype(np.float32) for s in shapes]


def randomize_layers(adapter: ModelAdapter, names: list[str], seed: int | None) -> None:
    """Re-initialise the layers ``names`` of the adapter's model in place, in the order given."""
    rng = np.random.default_rng(seed)
    adapter.reinitialize(names, lambda shapes: draws(rng, shapes))


# -- the metric --------------------------------------------------------------------------------


class ModelRandomization(MethodMetric):
    """Model randomisation sanity check (Adebayo et al., 2018): Spearman correlation between
    each explanation and the explanation of the same input by a model whose top layers were
    re-initialised — lower is better (the explanation depends on the learned weights).

    Args:
        method: the attribution method checked: a registered name (default ``"saliency"``),
            an :class:`~xai_toolbox.AttributionMethod` class, or an instance (its parameters are
            reused for the randomised model).
        method_params: keyword parameters for the method (with a name or a class).
        fraction: share of the weight layers re-initialised, cascading from the output
            (``ceil(fraction × n)``, at least one); default 0.25, as Xplique.
        layers: explicit layer names to re-initialise instead of ``fraction`` (PyTorch dotted
            module names, Keras layer names; see ``details["layers"]`` for what was used).
        seed: seed of the new weights (uniform ``±1/sqrt(fan_in)``, PyTorch's default scale).
        absolute: compare ``|maps|`` (default True, as Quantus' MPRT; Adebayo et al. report
            both).

    Explanations passed to the metric are used as the "before" maps (they must come from
    ``method`` on this model); without them the metric computes them. ``details`` hold the
    randomised ``layers`` and the maps ``before`` and ``after`` (NumPy).

    Example:
        >>> xt.metric("randomization", model, method="gradcam", fraction=0.5)(images, labels).mean
        >>> xt.ModelRandomization(model).evaluate("saliency", images, labels)
    """

    name = "randomization"
    family = "randomisation"
    higher_is_better = False

    def __init__(
        self,
        model: Any,
        *,
        fraction: float = 0.25,
        layers: list[str] | None = None,
        seed: int | None = 0,
        absolute: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.fraction = xe.in_range("fraction", fraction, 0.0, 1.0, inclusive=True)
        if self.fraction == 0.0:
            raise xt.ParameterError("fraction must lie in (0, 1], got 0")
        if layers is not None:
            is_names = isinstance(layers, list | tuple) and all(isinstance(n, str) for n in layers)
            if not is_names or not layers:
                raise xt.LayerError(f"layers must be a non-empty list of layer names, got {layers!r}")
            layers = list(layers)
        self.layers = layers
        self.seed = seed
        self.absolute = xe.flag("absolute", absolute)

    def selected_layers(self) -> list[str]:
        """Qualified names of the layers re-initialised, from the output down."""
        adapter = self.adapter
        available = adapter.weight_layers()
        if not available:
            raise xt.LayerError("the model has no layer with trainable weights to randomise")
        top_down = available[::-1]
        if self.layers is None:
            return top_down[: max(1, math.ceil(self.fraction * len(available) - 1e-9))]
        wanted = {adapter.resolve_layer(name) for name in self.layers}
        unknown = sorted(wanted - set(available))
        if unknown:
            shown = ", ".join(repr(n) for n in available[:40])
            raise xt.LayerError(f"layers {unknown} are not weight layers of the model; available: {shown}")
        return [n for n in top_down if n in wanted]

    def check_call(self, x: ep.Tensor) -> None:
        self.selected_layers()  # bad layer names (or a model without weights) fail before any model call

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        names = self.selected_layers()
        # The adapter, not the bare model: its compiled forward is reused.
        before = (self.explain(self.adapter, x, targets) if maps is None else maps).numpy()
        randomized = self.adapter.clone()
        randomize_layers(randomized, names, self.seed)
        after = self.explain(randomized, x, targets).numpy()
        a, b = before.reshape(len(before), -1), after.reshape(len(after), -1)
        if self.absolute:
            a, b = np.abs(a), np.abs(b)
        scores = rowwise_correlation(a, b, "spearman")
        return self.make_result(scores, layers=names, before=before, after=after)


@xt.hookimpl
def register_metrics(register: Callable[[str, type], None]) -> None:
    register(ModelRandomization.name, ModelRandomization)
