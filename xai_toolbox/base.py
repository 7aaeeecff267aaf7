"""Base classes of every attribution method and metric.

A subclass implements one method on EagerPy tensors (``_explain`` or ``_score``); the base
class does the rest: input conversion and validation, target resolution, restoring the
caller's tensor type and device, and catching plugins that return malformed results.
Constructors only store their keyword parameters (scikit-learn style) after checking them.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import eagerpy as ep
import numpy as np

from . import _precision
from . import _validation as v
from ._targets import ScoreFn, Targets, resolve_targets
from .backends import ModelAdapter, adapt
from .backends._base import memory_scope
from .errors import PluginError, UnsupportedModelError, XaiToolboxError


class _Configurable:
    """Stores constructor parameters as attributes and shows them in ``repr``."""

    model: Any

    def __setattr__(self, name: str, value: Any) -> None:
        # Conventions shared by every plugin, checked whichever plugin stores them: a ``seed``
        # is None or a non-negative integer (NumPy's generators reject anything else late).
        if name == "seed":
            value = v.seed(name, value)
        object.__setattr__(self, name, value)

    @classmethod
    def _param_names(cls) -> list[str]:
        names: list[str] = []
        for klass in cls.__mro__:
            if "__init__" not in vars(klass) or klass in (_Configurable, object):
                continue
            for p in inspect.signature(vars(klass)["__init__"]).parameters.values():
                if p.name not in ("self", "model") and p.kind is p.KEYWORD_ONLY and p.name not in names:
                    names.append(p.name)
        return names

    def get_params(self) -> dict[str, Any]:
        """The hyper-parameters given to the constructor (defaults included)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({type(self.model).__name__}, {params})"

    @property
    def adapter(self) -> ModelAdapter:
        """The framework adapter for :attr:`model` (created on first use)."""
        adapter = self.__dict__.get("_adapter")
        if adapter is None:
            adapter = adapt(self.model, getattr(self, "framework", None))
            self.__dict__["_adapter"] = adapter
        return adapter

    def _plugin_name(self) -> str:
        return getattr(type(self), "name", "") or type(self).__name__

    def _run_plugin(self, kind: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)``; a non-toolbox exception gets a note naming the plugin that raised it.

        The exception keeps its type (out-of-memory errors and a user's own exceptions from
        ``score_fn`` must stay catchable as what they are); only its traceback says more.
        """
        try:
            return fn(*args)
        except XaiToolboxError:
            raise
        except Exception as exc:
            cls = type(self)
            exc.add_note(
                f"xai-toolbox: raised while running {kind} {self._plugin_name()!r} "
                f"({cls.__module__}.{cls.__qualname__})"
            )
            raise

    def _prepare(self, inputs: Any) -> tuple[Any, ep.Tensor]:
        if _precision.requested() is not None and not self.adapter.supports_autocast:
            raise UnsupportedModelError(
                f"xt.autocast() runs PyTorch models in mixed precision; a {self.adapter.display_name} "
                "is not converted on the fly (build a Keras model under "
                "keras.mixed_precision.set_global_policy('mixed_float16') instead)"
            )
        inputs = v.as_array_like(inputs)
        v.check_inputs(self.adapter, inputs)
        x = self.adapter.to_model(inputs)
        v.check_finite(x)
        return inputs, x


class AttributionMethod(_Configurable, ABC):
    """Base class of attribution methods.

    Subclasses set :attr:`name`, declare their hyper-parameters as keyword-only constructor
    arguments stored under the same attribute names, and implement :meth:`_explain`.

    Args:
        model: a ``torch.nn.Module``, a ``keras.Model`` or a callable over NumPy arrays.
        batch_size: model inputs per forward pass, for every method.
        score_fn: ``score_fn(outputs, targets) -> (N,)`` native tensors; replaces the default
            score ``sum(outputs * one_hot(targets))`` (regression, multi-label, ...).
        progress: show a progress bar (``None``: only on an interactive terminal).
        framework: force an adapter (``"torch"``, ``"tf"``, ``"numpy"``) instead of detecting it.

    Calling the method, ``method(inputs, targets=None)``, returns one explanation per input,
    ``(N, H, W)`` for images (channels reduced), in the inputs' type and on their device.
    """

    #: Registry name, e.g. ``"saliency"``.
    name: ClassVar[str] = ""
    #: Whether the method differentiates the model (NumPy callables cannot be).
    needs_gradients: ClassVar[bool] = False
    #: Whether the result depends on a ``seed``.
    stochastic: ClassVar[bool] = False

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int = 64,
        score_fn: ScoreFn | None = None,
        progress: bool | None = None,
        framework: str | None = None,
    ) -> None:
        self.model = model
        self.batch_size = v.positive_int("batch_size", batch_size)
        if score_fn is not None and not callable(score_fn):
            raise v.ParameterError(f"score_fn must be callable, got {type(score_fn).__name__}")
        self.score_fn = score_fn
        self.progress = progress
        self.framework = framework

    def __call__(self, inputs: Any, targets: Any = None) -> Any:
        """Explain ``inputs`` for ``targets`` (see the class docs)."""
        adapter = self.adapter
        if self.needs_gradients and not adapter.supports_gradients:
            raise UnsupportedModelError(
                f"{self._plugin_name()} needs gradients, which a {adapter.display_name} cannot "
                "give; use a black-box method (rise, sobol, hsic, occlusion)"
            )
        inputs, x = self._prepare(inputs)
        with adapter.preserved(), memory_scope():
            resolved = resolve_targets(adapter, x, targets, self.score_fn, self.batch_size)
            maps = self._run_plugin("method", self._explain, x, resolved)
        self._check_result(maps, x)
        return adapter.restore(maps.float32(), inputs)

    explain = __call__

    @abstractmethod
    def _explain(self, x: ep.Tensor, targets: Targets) -> ep.Tensor:
        """Explanations ``(N, *positions)`` for the validated batch ``x`` on the model's device."""

    # -- helpers for subclasses ----------------------------------------------------------
    def _explanation_shape(self, x: ep.Tensor) -> tuple[int, ...]:
        return v.explanation_shape(tuple(x.shape), self.adapter.channel_axis)

    def _check_result(self, maps: Any, x: ep.Tensor) -> None:
        name = self._plugin_name()
        if not isinstance(maps, ep.Tensor) or type(maps) is not type(x):
            raise PluginError(
                f"method {name!r} returned {type(maps).__name__}; expected an EagerPy tensor of "
                f"the model's framework ({type(x).__name__})"
            )
        expected = self._explanation_shape(x)
        if tuple(maps.shape) != expected:
            raise PluginError(
                f"method {name!r} returned explanations of shape {tuple(maps.shape)}; expected {expected}"
            )
        if str(getattr(maps.raw, "device", "")) != str(getattr(x.raw, "device", "")):
            raise PluginError(
                f"method {name!r} returned explanations on device {maps.raw.device}; "
                f"expected the inputs' device {x.raw.device}"
            )
        if v.is_floating(maps.raw) and v.has_non_finite(maps):
            raise PluginError(f"method {name!r} returned NaN or infinite values")


@dataclass
class MetricResult:
    """What a metric returns: per-input scores, their mean, and curves where defined.

    Attributes:
        name: registry name of the metric.
        scores: ``(N,)`` per-input scores (NumPy).
        curves: ``(N, steps + 1)`` per-input curves for curve metrics, else ``None``.
        higher_is_better: how to read the score.
        details: extra arrays a metric reports (e.g. the x-axis of the curves).
    """

    name: str
    scores: np.ndarray
    higher_is_better: bool
    curves: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        """Mean score over the inputs (NaN scores ignored)."""
        finite = self.scores[~np.isnan(self.scores)]
        return float(finite.mean()) if finite.size else float("nan")

    def __repr__(self) -> str:
        arrow = "higher is better" if self.higher_is_better else "lower is better"
        curves = "" if self.curves is None else f", curves={self.curves.shape}"
        return f"MetricResult({self.name!r}, mean={self.mean:.4f}, n={len(self.scores)}{curves}, {arrow})"


class Metric(_Configurable, ABC):
    """Base class of metrics.

    ``metric(inputs, targets, explanations)`` (plus ``masks`` for localisation metrics) returns
    a :class:`MetricResult`. ``metric.evaluate(method, inputs, targets)`` explains first.

    Args:
        model: the model whose explanations are scored.
        batch_size: model inputs per forward pass.
        score_fn: as for methods: ``score_fn(outputs, targets) -> (N,)``.
        progress: show a progress bar (``None``: only on an interactive terminal).
        framework: force an adapter (``"torch"``, ``"tf"``, ``"numpy"``).
    """

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    #: Whether the metric needs ground-truth masks (pointing games).
    needs_masks: ClassVar[bool] = False
    #: Whether the metric needs explanations at all (a model sanity check may not).
    needs_explanations: ClassVar[bool] = True

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int = 64,
        score_fn: ScoreFn | None = None,
        progress: bool | None = None,
        framework: str | None = None,
    ) -> None:
        self.model = model
        self.batch_size = v.positive_int("batch_size", batch_size)
        if score_fn is not None and not callable(score_fn):
            raise v.ParameterError(f"score_fn must be callable, got {type(score_fn).__name__}")
        self.score_fn = score_fn
        self.progress = progress
        self.framework = framework

    def __call__(
        self, inputs: Any, targets: Any = None, explanations: Any = None, masks: Any = None
    ) -> MetricResult:
        adapter = self.adapter
        inputs, x = self._prepare(inputs)
        maps = self._prepare_explanations(x, explanations) if self.needs_explanations else None
        mask_t = self._prepare_masks(x, masks)
        with adapter.preserved(), memory_scope():
            resolved = resolve_targets(adapter, x, targets, self.score_fn, self.batch_size)
            result = self._run_plugin("metric", self._score, x, resolved, maps, mask_t)
        self._check_result(result, x.shape[0])
        return result

    def _check_result(self, result: Any, n: int) -> None:
        name = self._plugin_name()
        if not isinstance(result, MetricResult):
            raise PluginError(
                f"metric {name!r} returned {type(result).__name__}; expected a MetricResult "
                "(build it with self._result(scores, curves, ...))"
            )
        scores = np.asarray(result.scores)
        if scores.shape != (n,):
            raise PluginError(
                f"metric {name!r} returned scores of shape {scores.shape} for {n} inputs; "
                f"expected one score per input, shape ({n},)"
            )
        if not np.issubdtype(scores.dtype, np.number):
            raise PluginError(f"metric {name!r} returned non-numeric scores (dtype {scores.dtype})")
        if result.curves is not None:
            curves = np.asarray(result.curves)
            if curves.ndim != 2 or curves.shape[0] != n:
                raise PluginError(
                    f"metric {name!r} returned curves of shape {curves.shape} for {n} inputs; "
                    f"expected one curve per input, shape ({n}, points)"
                )

    def evaluate(self, method: Any, inputs: Any, targets: Any = None, masks: Any = None) -> MetricResult:
        """Explain ``inputs`` with ``method`` (a method object or a registered name), then score.

        Example:
            >>> result = xt.metric("deletion", model).evaluate("saliency", images, labels)
        """
        if isinstance(method, str):
            from .api import method as make_method

            method = make_method(method, self.model, batch_size=self.batch_size)
        if not isinstance(method, AttributionMethod):
            raise v.ParameterError(
                f"method must be an AttributionMethod or a registered name, got {type(method).__name__}"
            )
        explanations = method(inputs, targets) if self.needs_explanations else None
        return self(inputs, targets, explanations, masks)

    @abstractmethod
    def _score(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> MetricResult:
        """Score the validated batch; ``maps`` are ``(N, *positions)`` on the model's device."""

    def _prepare_explanations(self, x: ep.Tensor, explanations: Any) -> ep.Tensor:
        if explanations is None:
            raise v.ExplanationShapeError(
                f"metric {self._plugin_name()!r} needs explanations: call metric(inputs, targets, "
                "explanations) or metric.evaluate(method, inputs, targets)"
            )
        explanations = v.as_array_like(explanations, "explanations")
        if not v.is_numeric(explanations, allow_bool=True):  # a binary map is an explanation too
            raise v.ExplanationShapeError(
                f"explanations must be numbers, got dtype {v.dtype_name(explanations)}"
            )
        v.check_explanations(tuple(x.shape), tuple(explanations.shape), self.adapter.channel_axis)
        maps = self.adapter.to_model(explanations)
        v.check_finite(maps, "explanations")
        if maps.ndim == x.ndim and x.ndim > 2:  # one value per input value: channels together
            from .ops import reduce_channels

            maps = reduce_channels(maps, self.adapter.channel_axis, "mean")
        return maps

    def _prepare_masks(self, x: ep.Tensor, masks: Any) -> ep.Tensor | None:
        if masks is None:
            if self.needs_masks:
                raise v.ExplanationShapeError(
                    f"metric {self._plugin_name()!r} needs ground-truth masks: pass masks=... of "
                    f"shape {v.explanation_shape(tuple(x.shape), self.adapter.channel_axis)}"
                )
            return None
        masks = v.as_array_like(masks, "masks")
        expected = v.explanation_shape(tuple(x.shape), self.adapter.channel_axis)
        if tuple(masks.shape) != expected:
            raise v.ExplanationShapeError(
                f"masks of shape {tuple(masks.shape)} do not match the inputs: expected {expected}"
            )
        if not v.is_numeric(masks, allow_bool=True):
            raise v.ExplanationShapeError(
                f"masks must be booleans or numbers 0/1, got dtype {v.dtype_name(masks)}"
            )
        mask_t = self.adapter.to_model(np.asarray(_host(masks), dtype=np.float32))
        v.check_finite(mask_t, "masks")
        return mask_t

    def _result(
        self, scores: Any, curves: Any = None, **details: Any
    ) -> MetricResult:
        from ._streaming import to_numpy

        return MetricResult(
            name=self._plugin_name(),
            scores=to_numpy(scores).astype(np.float64).reshape(-1),
            higher_is_better=self.higher_is_better,
            curves=None if curves is None else to_numpy(curves).astype(np.float64),
            details=details,
        )


def _host(a: Any) -> Any:
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    if hasattr(a, "numpy") and not isinstance(a, np.ndarray):
        return a.numpy()
    return a

