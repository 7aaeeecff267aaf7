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

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import eagerpy as ep
import numpy as np

from xai_toolbox import _validation as v
from xai_toolbox._streaming import to_numpy
from xai_toolbox._targets import Targets, resolve_targets
from xai_toolbox.base import AttributionMethod, Metric, MetricResult
from xai_toolbox.errors import LayerError, UnsupportedModelError
from xai_toolbox.registry import get_registry, hookimpl

from .mufidelity import rowwise_correlation

# -- weight layers, copies and re-initialisation (PyTorch and Keras) ------------------------


def weight_layers(model: Any, framework: str) -> list[tuple[str, Any]]:
    """``(name, layer)`` of every layer owning trainable parameters, in model order.

    PyTorch: modules with parameters of their own, by dotted name. Keras: leaf layers with
    trainable weights, nested models walked (``"outer/inner"`` names).
    """
    if framework == "torch":
        return [
            (name, module)
            for name, module in model.named_modules()
            if any(p.requires_grad for p in module.parameters(recurse=False))
        ]
    return list(_keras_leaves(model))


def _keras_leaves(layer: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    import keras

    for child in getattr(layer, "layers", None) or []:
        if isinstance(child, keras.layers.InputLayer):
            continue
        qualified = prefix + child.name
        if getattr(child, "layers", None):
            yield from _keras_leaves(child, qualified + "/")
        elif child.trainable_weights:
            yield qualified, child


def copy_model(model: Any, framework: str) -> Any:
    """An independent copy of a PyTorch or Keras model (weights included)."""
    if framework == "torch":
        return copy.deepcopy(model)
    import keras

    try:
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        return clone
    except Exception as clone_error:  # subclassed models without a config
        try:
            return copy.deepcopy(model)
        except Exception:
            raise UnsupportedModelError(
                f"cannot copy this Keras model ({type(model).__name__}) to randomise it: "
                f"clone_model failed ({clone_error}); give the model a get_config() or use a "
                "functional/Sequential model"
            ) from clone_error


def _torch_shape(keras_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch layout of a Keras kernel: ``(*k, in, out)`` → ``(out, in, *k)``, dense ``.T``."""
    if len(keras_shape) >= 3:
        *k, cin, cout = keras_shape
        return (cout, cin, *k)
    return tuple(reversed(keras_shape))


def _keras_layout(a: np.ndarray) -> np.ndarray:
    if a.ndim >= 3:
        return np.moveaxis(a, (0, 1), (-1, -2)).copy()  # (out, in, *k) -> (*k, in, out)
    return a.T.copy()


def _draws(rng: np.random.Generator, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Uniform ``±1/sqrt(fan_in)`` (PyTorch's default scale) for every parameter of one layer.

    ``fan_in`` comes from the layer's first parameter of rank ≥ 2 (PyTorch layout); layers with
    vectors only (normalisation) draw in ``±1``.
    """
    kernels = [s for s in shapes if len(s) >= 2]
    bound = 1.0 / math.sqrt(int(np.prod(kernels[0][1:]))) if kernels else 1.0
    return [rng.uniform(-bound, bound, s).astype(np.float32) for s in shapes]


def randomize_layers(model: Any, framework: str, names: list[str], seed: int | None) -> None:
    """Re-initialise the layers ``names`` of ``model`` in place, in the order given."""
    rng = np.random.default_rng(seed)
    layers = dict(weight_layers(model, framework))
    for name in names:
        layer = layers[name]
        if framework == "torch":
            import torch

            params = [p for p in layer.parameters(recurse=False) if p.requires_grad]
            with torch.no_grad():
                for p, a in zip(params, _draws(rng, [tuple(p.shape) for p in params]), strict=True):
                    p.copy_(torch.from_numpy(a).to(device=p.device, dtype=p.dtype))
        else:
            variables = list(layer.trainable_weights)
            shapes = [_torch_shape(tuple(int(d) for d in w.shape)) for w in variables]
            for w, a in zip(variables, _draws(rng, shapes), strict=True):
                w.assign(_keras_layout(a) if a.ndim >= 2 else a)


# -- the metric --------------------------------------------------------------------------------


class ModelRandomization(Metric):
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
    higher_is_better = False
    needs_explanations = False

    def __init__(
        self,
        model: Any,
        *,
        method: str | type | AttributionMethod = "saliency",
        method_params: dict[str, Any] | None = None,
        fraction: float = 0.25,
        layers: list[str] | None = None,
        seed: int | None = 0,
        absolute: bool = True,
        batch_size: int = 64,
        score_fn: Any = None,
        progress: bool | None = None,
        framework: str | None = None,
    ) -> None:
        super().__init__(model, batch_size=batch_size, score_fn=score_fn, progress=progress, framework=framework)
        is_class = isinstance(method, type) and issubclass(method, AttributionMethod)
        if isinstance(method, str):
            get_registry().method(method)  # an unknown name fails now, listing the known ones
        elif not (is_class or isinstance(method, AttributionMethod)):
            raise v.ParameterError(
                "method must be a registered method name, an AttributionMethod class or an "
                f"instance; got {type(method).__name__}"
            )
        self.method = method
        if method_params is not None and not isinstance(method_params, dict):
            raise v.ParameterError(f"method_params must be a dict, got {type(method_params).__name__}")
        self.method_params = dict(method_params or {})
        self.fraction = v.in_range("fraction", fraction, 0.0, 1.0, inclusive=True)
        if self.fraction == 0.0:
            raise v.ParameterError("fraction must lie in (0, 1], got 0")
        if layers is not None:
            is_names = isinstance(layers, list | tuple) and all(isinstance(n, str) for n in layers)
            if not is_names or not layers:
                raise LayerError(f"layers must be a non-empty list of layer names, got {layers!r}")
            layers = list(layers)
        self.layers = layers
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
            raise v.ParameterError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        self.absolute = bool(absolute)

    # -- configuration ----------------------------------------------------------------
    def make_method(self, model: Any) -> AttributionMethod:
        """The configured attribution method, built for ``model``."""
        method = self.method
        if isinstance(method, AttributionMethod):
            cls, params = type(method), {**method.get_params(), **self.method_params}
        else:
            cls = get_registry().method(method).cls if isinstance(method, str) else method
            params = {"batch_size": self.batch_size, **self.method_params}
            if self.score_fn is not None:
                params.setdefault("score_fn", self.score_fn)
            if self.framework is not None:
                params.setdefault("framework", self.framework)
        return cls(model, **params)

    def selected_layers(self) -> list[str]:
        """Names of the layers re-initialised, from the output down."""
        framework = self._framework()
        available = [name for name, _ in weight_layers(self.adapter.model, framework)]
        if not available:
            raise LayerError("the model has no layer with trainable weights to randomise")
        top_down = available[::-1]
        if self.layers is None:
            return top_down[: max(1, math.ceil(self.fraction * len(available) - 1e-9))]
        aliases = self._aliases(available)
        unknown = [n for n in self.layers if n not in aliases]
        if unknown:
            shown = ", ".join(repr(n) for n in available[:40])
            raise LayerError(
                f"layers {unknown} are not weight layers of the model; available: {shown}"
            )
        wanted = {aliases[n] for n in self.layers}
        return [n for n in top_down if n in wanted]

    @staticmethod
    def _aliases(available: list[str]) -> dict[str, str]:
        # Keras layers inside nested models also answer to their own name when it is unique.
        aliases = {n: n for n in available}
        short: dict[str, list[str]] = {}
        for n in available:
            short.setdefault(n.rsplit("/", 1)[-1], []).append(n)
        aliases.update({s: full[0] for s, full in short.items() if len(full) == 1 and s not in aliases})
        return aliases

    def _framework(self) -> str:
        framework = self.adapter.framework
        if framework not in ("torch", "tf"):
            raise UnsupportedModelError(
                f"model randomisation needs the model's weights; a {self.adapter.display_name} "
                "has none we can reach — use a PyTorch or Keras model"
            )
        return framework

    # -- evaluation ---------------------------------------------------------------------
    def __call__(
        self, inputs: Any, targets: Any = None, explanations: Any = None, masks: Any = None
    ) -> MetricResult:
        self._framework()
        self.selected_layers()  # bad layer names fail before any model call
        adapter = self.adapter
        inputs, x = self._prepare(inputs)
        before = None if explanations is None else self._prepare_explanations(x, explanations)
        mask_t = self._prepare_masks(x, masks)
        with adapter.preserved():
            resolved = resolve_targets(adapter, x, targets, self.score_fn, self.batch_size)
            return self._score(x, resolved, before, mask_t)

    def evaluate(
        self, method: Any, inputs: Any, targets: Any = None, masks: Any = None, explanations: Any = None
    ) -> MetricResult:
        """Run the check for ``method`` (a name, class or instance) instead of the configured one.

        ``explanations``, when given, are ``method``'s maps on this model (reused as "before").
        """
        keep_params = method == self.method if isinstance(method, str) else method is self.method
        params = {**self.get_params(), "method": method}
        if not keep_params:
            params["method_params"] = None
        return type(self)(self.model, **params)(inputs, targets, explanations, masks)

    def _score(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> MetricResult:
        framework = self._framework()
        names = self.selected_layers()
        native_targets = _native_targets(targets)
        if maps is None:  # the adapter, not the bare model: its compiled forward is reused
            before = to_numpy(self.make_method(self.adapter)(x.raw, native_targets))
        else:
            before = maps.numpy()
        randomized = copy_model(self.adapter.model, framework)
        randomize_layers(randomized, framework, names, self.seed)
        after = to_numpy(self.make_method(randomized)(x.raw, native_targets))
        a, b = before.reshape(len(before), -1), after.reshape(len(after), -1)
        if self.absolute:
            a, b = np.abs(a), np.abs(b)
        scores = rowwise_correlation(a, b, "spearman")
        return self._result(scores, layers=names, before=before, after=after)


def _native_targets(targets: Targets) -> Any:
    """The resolved targets in a form every method accepts again."""
    if targets.score_fn is not None:
        return targets.raw
    if targets.labels is not None:
        return targets.labels
    assert targets.weights is not None
    return targets.weights.numpy()


@hookimpl
def register_metrics(register: Callable[[str, type], None]) -> None:
    register(ModelRandomization.name, ModelRandomization)
