"""Base classes of every attribution method and metric.

A subclass declares its own hyper-parameters and implements one method on EagerPy tensors
(:meth:`AttributionMethod.explain_batch` or :meth:`Metric.score_batch`); the base class does the
rest: the standard keyword arguments, input conversion and validation, target resolution, the
memory scope of the call, restoring the caller's tensor type and device, and catching plugins
that return malformed results. Constructors only store their keyword parameters
(scikit-learn style) after checking them.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import eagerpy as ep
import numpy as np

from . import _precision
from . import _validation as v
from ._budget import check_workload
from ._targets import ScoreFn, Targets, resolve_targets
from .backends import ModelAdapter, adapt
from .backends.adapter import (
    OutputSelector,
    memory_scope,
    model_non_finite,
    output_selector,
    to_numpy,
)
from .errors import (
    NonFiniteOutputError,
    ParameterError,
    PluginError,
    UndefinedScoreWarning,
    UnsupportedModelError,
    XaiToolboxError,
)
from .ops import constants_scope

#: The keyword arguments every method and metric takes (declared once, in the base classes).
STANDARD_PARAMS = ("batch_size", "score_fn", "progress", "framework", "output")

#: Input kind by rank: what ``input_kinds`` of methods name.
INPUT_KINDS = {2: "tabular", 3: "series", 4: "image"}


class _Configurable:
    """Stores constructor parameters as attributes and shows them in ``repr``."""

    model: Any

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int = 64,
        score_fn: ScoreFn | None = None,
        progress: bool | None = None,
        framework: str | None = None,
        output: OutputSelector = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise self._unknown_params(unknown)
        self.model = model
        self.batch_size = v.positive_int("batch_size", batch_size)
        if score_fn is not None and not callable(score_fn):
            raise ParameterError(f"score_fn must be callable, got {type(score_fn).__name__}")
        self.score_fn = score_fn
        if progress is not None:
            progress = v.flag("progress", progress)
        self.progress = progress
        if framework is not None and not isinstance(framework, str):
            raise ParameterError(f"framework must be a framework name (str) or None, got {framework!r}")
        self.framework = framework
        self.output = output_selector("output", output)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # help(cls) and inspect.signature(cls) show every parameter the class takes: its own
        # and the standard ones, though a subclass passes the latter on as **kwargs.
        params = [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        params += [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
            for name, default in cls._param_defaults().items()
        ]
        cls.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: Any) -> None:
        # Conventions shared by every plugin, checked whichever plugin stores them: a ``seed``
        # is None or a non-negative integer (NumPy's generators reject anything else late).
        if name == "seed":
            value = v.seed(name, value)
        object.__setattr__(self, name, value)

    @classmethod
    def _param_defaults(cls) -> dict[str, Any]:
        defaults: dict[str, Any] = {}
        for klass in cls.__mro__:
            init = vars(klass).get("__init__")
            if init is None or klass is object:
                continue
            for p in inspect.signature(init).parameters.values():
                if p.kind is p.KEYWORD_ONLY and p.name not in defaults:
                    defaults[p.name] = p.default
        return defaults

    @classmethod
    def param_names(cls) -> list[str]:
        """Every hyper-parameter the class takes, its own first, then the standard ones.

        Example:
            >>> xt.Rise.param_names()[:2]
            ['nb_samples', 'grid_size']
        """
        return list(cls._param_defaults())

    def get_params(self) -> dict[str, Any]:
        """The hyper-parameters given to the constructor (defaults included)."""
        return {name: getattr(self, name) for name in self.param_names()}

    @classmethod
    def _unknown_params(cls, unknown: dict[str, Any]) -> ParameterError:
        valid = cls.param_names()
        parts = []
        for name in unknown:
            close = difflib.get_close_matches(name, valid, n=1)
            parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return ParameterError(
            f"{cls.__name__} got unknown parameter{'s' if len(parts) > 1 else ''} "
            f"{', '.join(parts)}; valid parameters: {', '.join(valid)}"
        )

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({type(self.model).__name__}, {params})"

    @property
    def adapter(self) -> ModelAdapter:
        """The framework adapter for :attr:`model` (created on first use)."""
        adapter = self.__dict__.get("_adapter")
        if adapter is None:
            adapter = adapt(self.model, getattr(self, "framework", None), getattr(self, "output", None))
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

    def check_call(self, x: ep.Tensor) -> None:
        """Reject a call this object's parameters do not fit, before any model call.

        Runs after the inputs are validated and converted (``x`` is on the model's device),
        before targets are resolved. Override it to raise
        :class:`~xai_toolbox.errors.ParameterError`/:class:`~xai_toolbox.errors.InputError`
        (a grid larger than the image, an unknown layer name). The default accepts every call.
        """

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
        self.check_input_kind(x)
        self.check_call(x)  # nothing has called the model yet
        return inputs, x

    def check_input_kind(self, x: ep.Tensor) -> None:
        """Reject inputs of a kind this object does not explain (see ``input_kinds``), before
        any model call. Metrics accept every kind; methods check theirs."""

    def explanation_shape(self, x: ep.Tensor) -> tuple[int, ...]:
        """The shape of the explanations of ``x``: ``(N, H, W)`` for images whatever the
        layout, ``(N, T)`` for series, ``(N, F)`` for tabular rows."""
        return v.explanation_shape(tuple(x.shape), self.adapter.channel_axis)


@dataclass
class Explanation:
    """What :meth:`AttributionMethod.explain_batch` may return instead of bare maps: the maps
    and auxiliary outputs of the same call (e.g. Opti-CAM's final scores), so nothing has to
    travel through instance state (unsafe when threads share an instance).

    ``extras`` hold EagerPy tensors with one row per input (given back in the caller's type,
    like the maps) or NumPy arrays.

    Example:
        >>> return Explanation(maps, {"scores": scores, "history": history})
    """

    maps: ep.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


class AttributionMethod(_Configurable, ABC):
    """Base class of attribution methods.

    A subclass sets :attr:`name`, declares its own hyper-parameters as keyword-only constructor
    arguments stored under the same attribute names (passing ``**kwargs`` on to this class,
    which takes the standard ones below), and implements :meth:`explain_batch`.

    Args:
        model: a model of any registered framework (``torch.nn.Module``, ``keras.Model``, a
            callable over NumPy arrays, ...).
        batch_size: model inputs per forward pass, for every method.
        score_fn: ``score_fn(outputs, targets) -> (N,)`` native tensors; replaces the default
            score ``sum(outputs * one_hot(targets))`` (regression, multi-label, ...).
        progress: show a progress bar (``None``: only on an interactive terminal).
        framework: force an adapter (``"torch"``, ``"tf"``, ``"numpy"``, ...) instead of
            detecting it.
        output: which of the model's outputs is explained when it returns a tuple, a dict, a
            dataclass / Hugging Face ``ModelOutput``: a key or attribute (``"logits"``), an
            index (``0``) or a callable ``fn(outputs) -> tensor``; ``None`` picks the obvious
            one (``logits``, or the only tensor) and raises an error showing the structure
            otherwise.

    Calling the method, ``method(inputs, targets=None)``, returns one explanation per input,
    ``(N, H, W)`` for images (channels reduced), in the inputs' type and on their device.

    Example:
        >>> class Ones(xt.AttributionMethod):
        ...     name = "ones"
        ...     def __init__(self, model, *, value=1.0, **kwargs):
        ...         super().__init__(model, **kwargs)
        ...         self.value = xt.extend.number("value", value)
        ...     def explain_batch(self, x, targets):
        ...         return ep.ones(x, self.explanation_shape(x)) * self.value
    """

    #: Registry name, e.g. ``"saliency"``.
    name: ClassVar[str] = ""
    #: Whether the method differentiates the model (NumPy callables cannot be).
    needs_gradients: ClassVar[bool] = False
    #: Whether the method captures inner layers (CAM methods).
    needs_layers: ClassVar[bool] = False
    #: Whether the result depends on a ``seed`` parameter (shown by ``xai-toolbox list``;
    #: the contract checks that one seed gives one map).
    stochastic: ClassVar[bool] = False
    #: Family shown by ``xai-toolbox list`` and the docs: ``"gradient"``, ``"cam"``,
    #: ``"perturbation"``, ``"surrogate"``, ``"baseline"`` or another word a plugin chooses.
    family: ClassVar[str] = "other"
    #: Input kinds the method explains: ``"image"`` ``(N, C, H, W)``/``(N, H, W, C)``,
    #: ``"series"`` ``(N, T, C)``, ``"tabular"`` ``(N, F)``.
    input_kinds: ClassVar[tuple[str, ...]] = ("image", "series", "tabular")

    def passes_per_image(self) -> int | None:
        """Model passes (forward, or forward and backward for gradient methods) this method
        makes per image with its parameters, where known in advance (``None`` otherwise: e.g.
        an early-stopping optimisation). ``xai-toolbox list`` shows it at the defaults.

        Example:
            >>> xt.Rise(None, nb_samples=4000).passes_per_image()
            4000
        """
        return None

    def __call__(self, inputs: Any, targets: Any = None) -> Any:
        """Explain ``inputs`` for ``targets`` (see the class docs)."""
        maps, _ = self.explain_with_extras(inputs, targets)
        return maps

    explain = __call__

    def explain_with_extras(self, inputs: Any, targets: Any = None) -> tuple[Any, dict[str, Any]]:
        """Like calling the method, plus the auxiliary outputs it returns (see
        :class:`Explanation`): ``(maps, extras)``, both in the inputs' type.

        Example:
            >>> maps, extras = xt.OptiCAM(model).explain_with_extras(images, labels)
            >>> extras["scores"]                               # (N,) masked scores
        """
        adapter = self.adapter
        self._check_capabilities(adapter)
        inputs, x = self._prepare(inputs)
        self.check_workload(tuple(x.shape))
        with adapter.preserved(), memory_scope(), constants_scope():
            resolved = resolve_targets(adapter, x, targets, self.score_fn, self.batch_size)
            out = self._run_plugin("method", self.explain_batch, x, resolved)
            explanation = out if isinstance(out, Explanation) else Explanation(out)
            self._check_result(explanation.maps, x)  # in the call's scope: it knows the model's passes
        extras = {
            key: adapter.restore(value, inputs) if isinstance(value, ep.Tensor) else value
            for key, value in explanation.extras.items()
        }
        return adapter.restore(explanation.maps.float32(), inputs), extras

    def check_workload(self, shape: tuple[int, ...]) -> None:
        """Refuse a call on inputs of ``shape`` whose model passes or memory exceed what the
        machine has, before any pass: ``passes_per_image()`` model inputs per input, and one
        pass's inputs (``batch_size`` of them, float32) held at once. Calling the method runs
        it; the command line runs it before loading the model.

        Raises:
            WorkloadError: with the numbers (see :func:`xai_toolbox.extend.check_workload`).

        Example:
            >>> xt.Rise(None, nb_samples=10**9).check_workload((8, 3, 224, 224))
            Traceback (most recent call last):
            WorkloadError: rise: this call would run the model on 8,000,000,000 inputs ...
        """
        passes = self.passes_per_image()
        if not passes:
            return
        n = int(shape[0])
        per_input = int(np.prod(shape[1:])) * 4  # float32
        total = int(passes) * n
        counts = ", ".join(
            f"{k}={val}" for k, val in self.get_params().items()
            if isinstance(val, int) and not isinstance(val, bool) and k != "batch_size"
        )
        check_workload(
            self._plugin_name(),
            model_inputs=total,
            held_bytes=min(self.batch_size, total) * per_input,
            cause=f"{passes:,} passes per input × {n} input(s) of {per_input:,} bytes, "
            f"batch_size={self.batch_size}" + (f"; {counts}" if counts else ""),
        )

    def check_input_kind(self, x: ep.Tensor) -> None:
        """An :class:`~xai_toolbox.errors.InputError` naming the kind of ``x`` (rank 2 tabular,
        3 series, 4 image) and the methods that explain it, when :attr:`input_kinds` lacks it."""
        kind = INPUT_KINDS.get(x.ndim, f"rank-{x.ndim}")
        if kind in self.input_kinds:
            return
        from .errors import InputError
        from .registry import get_registry

        able = sorted(name for name, e in get_registry().methods.items() if kind in e.cls.input_kinds)
        raise InputError(
            f"{self._plugin_name()} explains {' and '.join(self.input_kinds)} inputs; these are {kind} "
            f"inputs of shape {tuple(x.shape)}"
            + (f"; methods for {kind} inputs: {', '.join(able)}" if able else "")
        )

    def _check_capabilities(self, adapter: ModelAdapter) -> None:
        if self.needs_gradients and not adapter.supports_gradients:
            raise UnsupportedModelError(
                f"{self._plugin_name()} needs gradients, which a {adapter.display_name} cannot "
                "give; use a black-box method (rise, sobol, hsic, occlusion)"
            )
        if self.needs_layers and not adapter.supports_layers:
            raise UnsupportedModelError(f"{self._plugin_name()}: {adapter.no_layers_message()}")

    @abstractmethod
    def explain_batch(self, x: ep.Tensor, targets: Targets) -> ep.Tensor | Explanation:
        """Explanations ``(N, *positions)`` for the validated batch ``x`` on the model's device
        (or an :class:`Explanation` with auxiliary outputs)."""

    def _check_result(self, maps: Any, x: ep.Tensor) -> None:
        name = self._plugin_name()
        if not isinstance(maps, ep.Tensor) or type(maps) is not type(x):
            raise PluginError(
                f"method {name!r} returned {type(maps).__name__}; expected an EagerPy tensor of "
                f"the model's framework ({type(x).__name__})"
            )
        expected = self.explanation_shape(x)
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
            passes = model_non_finite()
            if passes:  # the model's fault, not the method's
                raise NonFiniteOutputError(
                    f"the {self.adapter.display_name} model ({type(self.model).__name__}) returned NaN "
                    f"or infinite values in its {' and '.join(passes)} on finite inputs, so {name!r} "
                    "cannot explain it; check the model (a log or a division by zero, an overflow "
                    "in float16)"
                )
            raise PluginError(f"method {name!r} returned NaN or infinite values")


@dataclass
class MetricResult:
    """What a metric returns: per-input scores, their mean with a confidence interval, and
    curves where defined.

    Attributes:
        name: registry name of the metric.
        scores: ``(N,)`` per-input scores (NumPy); NaN where a score is undefined for an input.
        curves: ``(N, steps + 1)`` per-input curves for curve metrics, else ``None``.
        higher_is_better: how to read the score.
        details: extra arrays a metric reports (e.g. the x-axis of the curves).
        family: the metric's family (``"fidelity"``, ``"stability"``, ``"complexity"``,
            ``"randomisation"``, ``"localisation"``, ...; ``""`` when unknown).

    :attr:`ci` is the 95 % confidence interval of :attr:`mean`: a percentile bootstrap over
    the inputs with a fixed seed (see :func:`xai_toolbox.uncertainty.bootstrap_ci`), so the
    same scores always give the same interval; NaN scores are left out, and with fewer than two
    finite scores the interval is ``(nan, nan)``.

    Example:
        >>> result = xt.metric("deletion", model)(images, labels, maps)
        >>> result.mean, result.ci, result.scores.shape, result.curves.shape
        (0.21, (0.17, 0.26), (8,), (8, 11))
    """

    name: str
    scores: np.ndarray
    higher_is_better: bool
    curves: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)
    family: str = ""

    @property
    def mean(self) -> float:
        """Mean score over the inputs (NaN scores ignored)."""
        finite = self.scores[~np.isnan(self.scores)]
        return float(finite.mean()) if finite.size else float("nan")

    @property
    def n(self) -> int:
        """Inputs with a score (NaN scores left out): the sample behind :attr:`mean`."""
        return int(np.count_nonzero(~np.isnan(np.asarray(self.scores, dtype=np.float64))))

    @property
    def ci(self) -> tuple[float, float]:
        """95 % confidence interval ``(low, high)`` of :attr:`mean` (bootstrap over inputs)."""
        return self.confidence_interval()

    @property
    def half_width(self) -> float:
        """Half the width of :attr:`ci` (what tables show as ``mean ± half_width``)."""
        low, high = self.ci
        return (high - low) / 2.0

    def confidence_interval(self, confidence: float = 0.95, *, seed: int = 0) -> tuple[float, float]:
        """The interval of :attr:`mean` at another ``confidence`` level or bootstrap ``seed``.

        Example:
            >>> result.confidence_interval(0.99)
        """
        from .uncertainty import bootstrap_ci

        key = (confidence, seed, np.asarray(self.scores, dtype=np.float64).tobytes())
        cache = self.__dict__.setdefault("_ci_cache", {})
        if key not in cache:
            cache.clear()  # scores replaced: drop intervals of the old ones
            cache[key] = bootstrap_ci(self.scores, confidence=confidence, seed=seed)
        return cache[key]

    def __repr__(self) -> str:
        arrow = "higher is better" if self.higher_is_better else "lower is better"
        curves = "" if self.curves is None else f", curves={self.curves.shape}"
        low, high = self.ci
        return (
            f"MetricResult({self.name!r}, mean={self.mean:.4f}, ci=[{low:.4f}, {high:.4f}], "
            f"n={len(self.scores)}{curves}, {arrow})"
        )


class Metric(_Configurable, ABC):
    """Base class of metrics.

    ``metric(inputs, targets, explanations)`` (plus ``masks`` for localisation metrics) returns
    a :class:`MetricResult`. ``metric.evaluate(method, inputs, targets)`` explains first.

    A subclass sets :attr:`name` and :attr:`higher_is_better`, declares its own
    hyper-parameters (passing ``**kwargs`` on to this class) and implements
    :meth:`score_batch`.

    Args:
        model: the model whose explanations are scored.
        batch_size: model inputs per forward pass.
        score_fn: as for methods: ``score_fn(outputs, targets) -> (N,)``.
        progress: show a progress bar (``None``: only on an interactive terminal).
        framework: force an adapter (``"torch"``, ``"tf"``, ``"numpy"``, ...).
        output: which of the model's outputs is scored (as for methods).

    Example:
        >>> class MeanAttribution(xt.Metric):
        ...     name = "mean_attribution"
        ...     def score_batch(self, x, targets, maps, masks):
        ...         return self.make_result(maps.reshape((maps.shape[0], -1)).mean(axis=1))
    """

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    #: Family shown by ``xai-toolbox list``, the docs and the report: ``"fidelity"``,
    #: ``"stability"``, ``"complexity"``, ``"randomisation"``, ``"localisation"`` or another.
    family: ClassVar[str] = "other"
    #: Whether the metric needs ground-truth masks (pointing games).
    needs_masks: ClassVar[bool] = False
    #: Whether the metric needs explanations at all (a model sanity check may not).
    needs_explanations: ClassVar[bool] = True

    def __call__(
        self, inputs: Any, targets: Any = None, explanations: Any = None, masks: Any = None
    ) -> MetricResult:
        adapter = self.adapter
        inputs, x = self._prepare(inputs)
        given = self.needs_explanations or explanations is not None
        maps = self._prepare_explanations(x, explanations) if given else None
        mask_t = self._prepare_masks(x, masks)
        with adapter.preserved(), memory_scope(), constants_scope():
            resolved = resolve_targets(adapter, x, targets, self.score_fn, self.batch_size)
            result = self._run_plugin("metric", self.score_batch, x, resolved, maps, mask_t)
            self._check_result(result, x.shape[0])
            self._warn_undefined(result)
        return result

    def _warn_undefined(self, result: MetricResult) -> None:
        """One :class:`~xai_toolbox.errors.UndefinedScoreWarning` when some scores are NaN,
        saying why where it is known (the model's NaN outputs, the metric's reason)."""
        scores = np.asarray(result.scores, dtype=np.float64)
        undefined = int(np.count_nonzero(np.isnan(scores)))
        if not undefined:
            return
        reasons = []
        passes = model_non_finite()
        if passes:
            reasons.append(f"the model returned NaN or infinite values in its {' and '.join(passes)}")
        reason = result.details.get("undefined_reason")
        if reason:
            reasons.append(str(reason))
        warnings.warn(
            UndefinedScoreWarning(
                f"metric {self._plugin_name()!r}: {undefined} of {len(scores)} scores are undefined "
                "(NaN) and left out of the mean and its interval"
                + (f": {'; '.join(reasons)}" if reasons else "")
            ),
            stacklevel=3,
        )

    def _check_result(self, result: Any, n: int) -> None:
        name = self._plugin_name()
        if not isinstance(result, MetricResult):
            raise PluginError(
                f"metric {name!r} returned {type(result).__name__}; expected a MetricResult "
                "(build it with self.make_result(scores, curves, ...))"
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
        method = _method_object(method, self.model, {"batch_size": self.batch_size})
        explanations = method(inputs, targets) if self.needs_explanations else None
        return self(inputs, targets, explanations, masks)

    @abstractmethod
    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> MetricResult:
        """Score the validated batch; ``maps`` are ``(N, *positions)`` on the model's device
        (``None`` for metrics that need no explanations), ``masks`` likewise where given."""

    def make_result(self, scores: Any, curves: Any = None, **details: Any) -> MetricResult:
        """The :class:`MetricResult` of this metric from per-input ``scores`` ``(N,)`` (any
        tensor or array), optional ``curves`` ``(N, points)`` and named ``details``.

        Example:
            >>> return self.make_result(aucs, curves=curves, fractions=fractions)
        """
        return MetricResult(
            name=self._plugin_name(),
            scores=to_numpy(scores).astype(np.float64).reshape(-1),
            higher_is_better=self.higher_is_better,
            curves=None if curves is None else to_numpy(curves).astype(np.float64),
            details=details,
            family=self.family,
        )

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
        values = np.asarray(to_numpy(masks), dtype=np.float32)
        soft = (values > 0) & (values < 1)
        if soft.any():  # ambiguous: say how it is read instead of guessing silently
            warnings.warn(
                f"metric {self._plugin_name()!r}: the masks hold values strictly between 0 and 1 "
                f"(e.g. {float(values[soft][0]):g}); a position counts as inside when its value is "
                "above 0.5 — threshold soft masks yourself to choose otherwise",
                UserWarning,
                stacklevel=4,
            )
        mask_t = self.adapter.to_model(values)
        v.check_finite(mask_t, "masks")
        return mask_t


class MethodMetric(Metric):
    """Base class of metrics that re-run an attribution method: model randomisation,
    stability, sensitivity.

    The method is given as a registered name, an :class:`AttributionMethod` class, or an
    instance (its parameters are reused); :meth:`explain` runs it on a model — the metric's
    own or a modified copy — with the targets already resolved for the call. The call keeps
    the template of every metric (validation before any model call, memory scope, result
    checks); explanations passed to the metric are this method's maps on the metric's model
    (computed when not given).

    Args:
        method: the attribution method (default ``"saliency"``).
        method_params: keyword parameters for the method (with a name or a class).

    Example:
        >>> class Repeatability(MethodMetric):
        ...     name = "repeatability"
        ...     def score_batch(self, x, targets, maps, masks):
        ...         again = self.explain(self.adapter, x, targets)
        ...         return self.make_result(((maps - again) ** 2).mean(axis=(1, 2)))
    """

    needs_explanations = False

    def __init__(
        self,
        model: Any,
        *,
        method: str | type | AttributionMethod = "saliency",
        method_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        is_class = isinstance(method, type) and issubclass(method, AttributionMethod)
        if isinstance(method, str):
            from .registry import get_registry

            get_registry().method(method)  # an unknown name fails now, listing the known ones
        elif not (is_class or isinstance(method, AttributionMethod)):
            raise ParameterError(
                "method must be a registered method name, an AttributionMethod class or an "
                f"instance; got {type(method).__name__}"
            )
        self.method = method
        if method_params is not None and not isinstance(method_params, dict):
            raise ParameterError(f"method_params must be a dict, got {type(method_params).__name__}")
        self.method_params = dict(method_params or {})

    def make_method(self, model: Any) -> AttributionMethod:
        """The configured attribution method, built for ``model`` (a model or an adapter)."""
        method = self.method
        if isinstance(method, AttributionMethod):
            return type(method)(model, **{**method.get_params(), **self.method_params})
        defaults: dict[str, Any] = {"batch_size": self.batch_size}
        if self.score_fn is not None:
            defaults["score_fn"] = self.score_fn
        if self.framework is not None:
            defaults["framework"] = self.framework
        if self.output is not None:
            defaults["output"] = self.output
        return _method_object(method, model, {**defaults, **self.method_params})

    def explain(self, model: Any, x: ep.Tensor, targets: Targets) -> ep.Tensor:
        """The configured method's explanations of ``x`` on ``model`` (the metric's adapter, or
        the adapter of a modified copy), for the resolved ``targets``, beside ``x``."""
        maps = self.make_method(model)(x.raw, targets.native())
        return maps if isinstance(maps, ep.Tensor) else ep.astensor(maps)

    def evaluate(
        self, method: Any, inputs: Any, targets: Any = None, masks: Any = None, explanations: Any = None
    ) -> MetricResult:
        """Run the check for ``method`` (a name, class or instance) instead of the configured one.

        ``explanations``, when given, are ``method``'s maps on this model (reused).

        Example:
            >>> xt.ModelRandomization(model).evaluate("gradcam", images, labels)
        """
        same = method == self.method if isinstance(method, str) else method is self.method
        params = {**self.get_params(), "method": method}
        if not same:
            params["method_params"] = None
        return type(self)(self.model, **params)(inputs, targets, explanations, masks)


def _method_object(method: Any, model: Any, params: dict[str, Any]) -> AttributionMethod:
    """``method`` as an instance: a registered name or a class is built for ``model``."""
    if isinstance(method, AttributionMethod):
        return method
    if isinstance(method, str):
        from .registry import get_registry

        method = get_registry().method(method).cls
    if isinstance(method, type) and issubclass(method, AttributionMethod):
        return method(model, **params)
    raise ParameterError(
        f"method must be an AttributionMethod, a class of one or a registered name, got {type(method).__name__}"
    )
