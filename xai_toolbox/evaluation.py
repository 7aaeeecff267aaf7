"""Benchmark several attribution methods with several metrics in one call.

:func:`evaluate` is the one evaluation loop of the toolbox: ``xt.evaluate``, the demo
(``xai-toolbox demo``) and the command line (``xai-toolbox explain`` / ``evaluate``) all run
through it. :func:`top1` gives the model's top-1 classes, the default targets.

Example:
    >>> import xai_toolbox as xt
    >>> table = xt.evaluate(model, images, labels, methods=["saliency", "gradcam"],
    ...                     metrics=["deletion", "insertion", "mufidelity"])
    >>> print(table)
    >>> table.pivot()["gradcam"]["deletion"]
    >>> table.to_pandas()
    >>> table.maps["gradcam"].shape, table.timings["gradcam"]
    >>> table.compare("gradcam", "saliency", "deletion").p_value   # paired test on the images
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import _validation as v
from ._streaming import batched_forward
from .backends import adapt
from .backends.adapter import to_numpy
from .base import AttributionMethod, MethodMetric, Metric, MetricResult
from .errors import ExplanationShapeError, ParameterError, ScoreFunctionError
from .uncertainty import PairedTest, format_interval, not_beaten, paired_test

__all__ = ["COLUMNS", "ConstantMapWarning", "EvaluationTable", "Top1", "constant_maps", "evaluate", "top1"]

COLUMNS = ("method", "metric", "score", "higher_is_better", "result")

Echo = Callable[[str], None]


class EvaluationTable(list):
    """Records ``{"method", "metric", "score", "higher_is_better", "result"}``, one per
    (method, metric) pair; ``score`` is the metric's mean and ``result`` its
    :class:`~xai_toolbox.MetricResult` (per-input scores, curves).

    Besides the records, the table carries what the run produced and cost:

    Attributes:
        maps: ``{method: explanations (N, H, W)}`` as float32 NumPy arrays, for every method
            that explained (also when no metric was asked for).
        timings: seconds spent explaining, per method.
        metric_timings: seconds spent scoring, per ``(method, metric)``.
        params: ``{"methods": {name: params}, "metrics": {name: params}}``: the parameters
            each method and metric built from a name was given (``batch_size`` included), or
            an instance's ``get_params()``; CAMs add ``"layer used"`` (their default layer
            when none was given), which the reports list with the settings.
        failures: ``{"method" or "method/metric": "ErrorType: message"}`` for the steps that
            raised under ``keep_going=True``.
        resolved_params: ``{"methods": {label: params}, "metrics": {label: params}}``: every
            parameter each method and metric ran with (``get_params()``, defaults included),
            and for a method that picks an inner layer (``layer_``), the layer it used — what
            a report needs to reproduce the run.

    Example:
        >>> table.pivot()                     # {"saliency": {"deletion": 0.12, ...}, ...}
        >>> table.to_pandas()                 # a DataFrame with the columns above
        >>> table.results["saliency"]["deletion"].curves.shape   # (N, steps + 1)
        >>> table.maps["saliency"].shape      # (N, H, W)
        >>> table.best("deletion")            # methods whose 95 % interval is not beaten
        >>> table.compare("rise", "saliency", "deletion")   # paired Wilcoxon test
    """

    def __init__(
        self,
        records: Iterable[dict[str, Any]] = (),
        *,
        maps: Mapping[str, np.ndarray] | None = None,
        timings: Mapping[str, float] | None = None,
        metric_timings: Mapping[tuple[str, str], float] | None = None,
        params: Mapping[str, dict[str, dict[str, Any]]] | None = None,
        failures: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(records)
        self.maps: dict[str, np.ndarray] = dict(maps or {})
        self.timings: dict[str, float] = dict(timings or {})
        self.metric_timings: dict[tuple[str, str], float] = dict(metric_timings or {})
        self.params: dict[str, dict[str, dict[str, Any]]] = {"methods": {}, "metrics": {}}
        self.params.update({kind: dict(p) for kind, p in (params or {}).items()})
        self.failures: dict[str, str] = dict(failures or {})
        self.resolved_params: dict[str, dict[str, dict[str, Any]]] = {"methods": {}, "metrics": {}}

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(r["method"] for r in self))

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(r["metric"] for r in self))

    @property
    def results(self) -> dict[str, dict[str, MetricResult]]:
        """The metric results as ``{method: {metric: MetricResult}}`` (``{}`` for a method
        that explained but has no score)."""
        nested: dict[str, dict[str, MetricResult]] = {method: {} for method in self.maps}
        for r in self:
            nested.setdefault(r["method"], {})[r["metric"]] = r["result"]
        return nested

    def pivot(self) -> dict[str, dict[str, float]]:
        """Mean scores as ``{method: {metric: score}}``."""
        table: dict[str, dict[str, float]] = {}
        for r in self:
            table.setdefault(r["method"], {})[r["metric"]] = r["score"]
        return table

    def to_pandas(self) -> Any:
        """The records as a ``pandas.DataFrame`` (pandas must be installed)."""
        try:
            import pandas as pd
        except ImportError as error:
            raise ImportError(
                "EvaluationTable.to_pandas() needs pandas: pip install pandas "
                "(or use table.pivot() / the records themselves)"
            ) from error
        return pd.DataFrame([{k: r[k] for k in COLUMNS} for r in self], columns=list(COLUMNS))

    def intervals(self, metric: str) -> dict[str, tuple[float, float, float]]:
        """``{method: (mean, low, high)}`` for ``metric``: each mean with its 95 % confidence
        interval (bootstrap over images; ``nan`` bounds where undefined).

        Example:
            >>> table.intervals("deletion")["rise"]
            (0.21, 0.17, 0.26)
        """
        out = {}
        for r in self:
            if r["metric"] == metric:
                result = r.get("result")
                low, high = result.ci if isinstance(result, MetricResult) else (float("nan"),) * 2
                out[r["method"]] = (float(r["score"]), low, high)
        return out

    def best(self, metric: str) -> set[str]:
        """The methods marked best on ``metric``: those whose confidence interval no other
        method's interval beats outright (see :func:`xai_toolbox.uncertainty.not_beaten`).

        Example:
            >>> table.best("deletion")            # {'rise', 'sobol'}: their intervals overlap
        """
        hib = next((r["higher_is_better"] for r in self if r["metric"] == metric), None)
        if hib is None:
            raise KeyError(f"no metric {metric!r} in the table; it has {self.metrics}")
        return not_beaten(self.intervals(metric), bool(hib))

    def compare(self, method_a: str, method_b: str, metric: str, *, alpha: float = 0.05) -> PairedTest:
        """Whether ``method_a`` and ``method_b`` differ on ``metric`` over the same images: a
        two-sided Wilcoxon signed-rank test on the per-image scores, with a paired-bootstrap
        interval of the mean difference (see :func:`xai_toolbox.uncertainty.paired_test`).

        Example:
            >>> test = table.compare("rise", "saliency", "deletion")
            >>> test.p_value, test.better        # better: "a", "b" or None
        """
        results = self.results
        for method in (method_a, method_b):
            if metric not in results.get(method, {}):
                raise KeyError(f"no score of {method!r} on {metric!r} in the table")
        return paired_test(results[method_a][metric], results[method_b][metric], alpha=alpha)

    def __str__(self) -> str:
        """A plain-text table: one row per method, one column per metric (↑/↓ = better), each
        cell ``mean ± half-width`` of the 95 % interval; ``*`` marks the methods whose interval
        no other method beats."""
        if not self:
            return "EvaluationTable (empty)"
        cells = {(r["method"], r["metric"]): r for r in self}
        arrows = {r["metric"]: ("↑" if r["higher_is_better"] else "↓") for r in self}
        best = {m: self.best(m) for m in self.metrics}
        header = ["method", *(f"{m} {arrows[m]}" for m in self.metrics)]
        rows = [
            [method, *(_cell(cells.get((method, m)), method in best[m]) for m in self.metrics)]
            for method in self.methods
        ]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
            return "  ".join([first, *rest]).rstrip()

        rule = "  ".join("-" * w for w in widths)
        note = "mean ± half-width of the 95 % bootstrap interval over images; * = not beaten"
        return "\n".join([line(header), rule, *(line(r) for r in rows), note])

    def __repr__(self) -> str:
        return f"EvaluationTable({len(self.methods)} methods × {len(self.metrics)} metrics)\n{self}"


def _cell(record: dict[str, Any] | None, best: bool) -> str:
    if record is None:
        return "—"
    result = record.get("result")
    low, high = result.ci if isinstance(result, MetricResult) else (float("nan"),) * 2
    return format_interval(float(record["score"]), low, high) + ("*" if best else " ")


# -- top-1 classes -----------------------------------------------------------------------------
class Top1(NamedTuple):
    """What :func:`top1` returns: the classes and the number of classes of the model."""

    classes: np.ndarray
    n_classes: int


def top1(model: Any, inputs: Any, *, batch_size: int = 64, output: Any = None) -> Top1:
    """The model's top-1 class for each input (the default targets of every method and metric).

    Args:
        model: a PyTorch or Keras model, a NumPy callable or an adapter.
        inputs: the batch, in the framework's layout (native tensor or NumPy).
        batch_size: model inputs per forward pass.
        output: which of the model's outputs holds the class scores (see
            :func:`~xai_toolbox.adapt`); ``None``: the obvious one.

    Returns:
        ``Top1(classes, n_classes)``: the classes ``(N,)`` as int64 NumPy, and ``K`` of the
        model's ``(N, K)`` outputs.

    Raises:
        ScoreFunctionError: the model's outputs are not ``(N, K)``.

    Example:
        >>> classes, n_classes = top1(model, images)
        >>> table = xt.evaluate(model, images, classes, methods=["gradcam"], metrics=["deletion"])
    """
    batch_size = v.positive_int("batch_size", batch_size)
    adapter = adapt(model, output=output)
    inputs = v.as_array_like(inputs)
    v.check_inputs(adapter, inputs)
    x = adapter.to_model(inputs)
    v.check_finite(x)
    with adapter.preserved():
        outputs = batched_forward(adapter, x, batch_size)
    if outputs.ndim != 2:
        raise ScoreFunctionError(
            f"the model returned outputs of shape {tuple(outputs.shape)}; top-1 classes need "
            "classifier outputs (N, classes)"
        )
    return Top1(outputs.argmax(axis=1).numpy().astype(np.int64), int(outputs.shape[1]))


# -- the evaluation loop -----------------------------------------------------------------------
def evaluate(
    model: Any,
    inputs: Any,
    targets: Any = None,
    *,
    methods: Iterable[str | AttributionMethod],
    metrics: Iterable[str | Metric] = (),
    masks: Any = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    metric_params: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 64,
    progress: bool | None = None,
    keep_going: bool = False,
    echo: Echo | None = None,
    output: Any = None,
    on_maps: Callable[[str, np.ndarray], None] | None = None,
) -> EvaluationTable:
    """Explain ``inputs`` with every method once, and score each explanation with every metric.

    Methods run one at a time, each followed by every metric on its explanations, so only one
    method's explanations are held on the device at a time.

    Args:
        model: a PyTorch or Keras model (or a NumPy callable, for black-box methods).
        inputs: the batch, in the framework's layout.
        targets: class indices ``(N,)``, weights ``(N, K)`` or ``None`` (the model's top-1
            prediction, computed once with :func:`top1` and shared by all methods and metrics).
        methods: registered names or :class:`~xai_toolbox.AttributionMethod` instances (at
            least one).
        metrics: registered names or :class:`~xai_toolbox.Metric` instances; none to only
            explain (the table then has no records, but its ``maps``).
        masks: ground-truth masks ``(N, *positions)`` for localisation metrics (pointing games);
            required as soon as one metric needs them.
        method_params / metric_params: extra constructor parameters per name, e.g.
            ``{"gradcam": {"layer": "layer4"}}``.
        batch_size: model inputs per forward pass, for methods and metrics built from names.
        progress: a progress bar naming the current step (``None``: on a terminal only).
        keep_going: a method or metric that raises is recorded in the table's ``failures``
            and the run goes on (a failed method skips its metrics); ``False``: it raises.
            Unknown names, misplaced parameters and missing masks always raise, before any
            model call.
        echo: called with one line per method (time spent explaining and scoring) and per
            failure, e.g. ``print``; ``None``: silent.
        output: which of the model's outputs is explained and scored, for every method and
            metric (a key, an index or a callable; ``None``: the obvious one, e.g. the
            ``logits`` of a Hugging Face model; see :func:`~xai_toolbox.adapt`).
        on_maps: called with ``(label, maps)`` (float32 NumPy ``(N, H, W)``) as soon as a method
            has explained, before its metrics run — to save each method's maps as it
            completes, so they are kept when a later step fails or the run is interrupted.
            What it raises is raised.

    Returns:
        An :class:`EvaluationTable` with one record per (method, metric), in the given order,
        and the explanations, timings, parameters and failures as attributes. Metrics that do
        not use explanations but check a method (``randomization``) run once per method with
        that method.

    Example:
        >>> table = xt.evaluate(model, images, labels, methods=["saliency", "rise"],
        ...                     metrics=["deletion", "mufidelity"],
        ...                     method_params={"rise": {"nb_masks": 2000, "seed": 0}})
        >>> table.results["rise"]["deletion"].curves     # (N, steps + 1)
        >>> maps = xt.evaluate(model, images, methods=["gradcam"]).maps["gradcam"]
    """
    batch_size = v.positive_int("batch_size", batch_size)
    methods, metrics = list(methods), list(metrics)
    if not methods:
        raise ParameterError("evaluate needs at least one method")
    method_params = _params_by_name("method_params", method_params, methods)
    metric_params = _params_by_name("metric_params", metric_params, metrics)
    _check_entries(methods, metrics)

    # One adapter for every method and metric built here: a Keras model is traced once, not
    # once per object (an adapter passed as the model is used as is).
    model = adapt(model, output=output)
    common = {"batch_size": batch_size, "progress": progress}
    built_methods = _build("method", methods, method_params, model, common, keep_going)
    built_metrics = _build("metric", metrics, metric_params, model, common, keep_going)
    _check_masks(built_metrics, masks)
    if targets is None and not _uses_score_fn(built_methods + built_metrics):
        targets = _top1_targets(model, inputs, batch_size)

    _warm_up(model, inputs, batch_size, gradients=any(getattr(b.obj, "needs_gradients", False) for b in built_methods))

    table = EvaluationTable(params=_params_used(built_methods, built_metrics))
    table.resolved_params = _params_resolved(built_methods, built_metrics)
    steps = _Steps(len(built_methods) * (1 + len(built_metrics)), progress, echo)
    run = _Run(table, steps, keep_going, inputs, targets, masks, on_maps)
    try:
        for method in built_methods:
            run.method(method, built_metrics)
    finally:
        steps.close()
    return table


def _warm_up(adapter: Any, inputs: Any, batch_size: int, gradients: bool) -> None:
    """One untimed forward pass (and input-gradient pass, where a method needs gradients) on a
    chunk like the methods' first: one-time costs — lazy initialisation, Keras tracing its
    compiled passes, allocator growth — are not charged to the first method's time. Nothing
    is kept; a failure here is left for the real steps to report."""
    try:
        x = adapter.to_model(v.as_array_like(inputs))
        part = x[: min(batch_size, int(x.shape[0]))]
        with adapter.preserved():
            outputs = adapter.forward(part)
            if gradients and adapter.supports_gradients and outputs.ndim == 2:
                adapter.weighted_value_and_grad(part, outputs * 0.0)
    except Exception:  # noqa: BLE001 - only a warm-up
        return


def _top1_targets(model: Any, inputs: Any, batch_size: int) -> np.ndarray:
    try:
        return top1(model, inputs, batch_size=batch_size).classes
    except ScoreFunctionError as exc:
        raise ScoreFunctionError(f"{exc}: pass targets, and score_fn=... for other outputs") from exc


@dataclass
class _Built:
    """A method or metric ready to run, under its table label."""

    label: str
    obj: Any  # the instance, or the exception its constructor raised (keep_going)
    params: dict[str, Any]


_FAILED = object()


@dataclass
class _Run:
    """One evaluation in progress: runs the steps and fills ``table``."""

    table: EvaluationTable
    steps: _Steps
    keep_going: bool
    inputs: Any
    targets: Any
    masks: Any
    on_maps: Callable[[str, np.ndarray], None] | None = None

    def method(self, method: _Built, metrics: list[_Built]) -> None:
        """Explain with ``method``, then score its explanations with every metric."""
        self.steps.start(f"{method.label}: explaining")
        maps = self._attempt(method.label, lambda: self._explain(method))
        self.steps.done()
        if maps is _FAILED:
            self.steps.say(f"  {method.label:<22} FAILED: {self.table.failures[method.label]}")
            self.steps.done(len(metrics))
            return
        if self.on_maps is not None:
            self.on_maps(method.label, self.table.maps[method.label])
        for metric in metrics:
            self._apply(method, maps, metric)
        self.steps.say(self._summary_line(method, scored=bool(metrics)))

    def _summary_line(self, method: _Built, scored: bool) -> str:
        """``label explained in 0.12 s (layer conv2), scored in 0.80 s`` (no scoring time
        without metrics), with a note on maps that show nothing."""
        label = method.label
        line = f"  {label:<22} explained in {self.table.timings[label]:6.2f} s"
        layer = self.table.resolved_params["methods"].get(label, {}).get("layer")
        if layer is not None and getattr(method.obj, "layer_", None) is not None:
            line += f" (layer {layer})"
        if scored:
            scoring = sum(t for (m, _), t in self.table.metric_timings.items() if m == label)
            line += f", scored in {scoring:6.2f} s"
        constant = constant_maps(self.table.maps[label])
        if constant:
            line += f"; WARNING: {len(constant)} of {len(self.table.maps[label])} maps are constant"
        return line

    def _explain(self, method: _Built) -> Any:
        start = time.perf_counter()
        native_maps = _ready(method.obj)(self.inputs, self.targets)
        self.table.timings[method.label] = time.perf_counter() - start
        used = getattr(method.obj, "layer_", None)  # a CAM's layer, the default one included
        if used is not None:
            self.table.params["methods"].setdefault(method.label, {})["layer used"] = used
        self.table.maps[method.label] = to_numpy(native_maps).astype(np.float32)
        layer = getattr(method.obj, "layer_", None)  # the layer a CAM picked by default
        if layer is not None:
            self.table.resolved_params["methods"].setdefault(method.label, {})["layer"] = layer
        constant = constant_maps(self.table.maps[method.label])
        if constant:  # an all-zero map says nothing, and would be drawn and scored as if it did
            value = float(self.table.maps[method.label][constant[0]].flat[0])
            warnings.warn(
                f"{method.label}: {len(constant)} of {len(self.table.maps[method.label])} maps are "
                f"constant (e.g. image {constant[0]}: every value {value:g}); they rank no pixel "
                "above another (a dead layer, a saturated model, a target with no gradient?)",
                ConstantMapWarning,
                stacklevel=2,
            )
        return native_maps  # on the device, for the metrics; dropped after them

    def _apply(self, method: _Built, maps: Any, metric: _Built) -> None:
        key = f"{method.label}/{metric.label}"
        self.steps.start(f"{method.label}: {metric.label}")
        start = time.perf_counter()
        result = self._attempt(
            key,
            lambda: _score(_ready(metric.obj), method.obj, self.inputs, self.targets, maps, self.masks),
        )
        self.table.metric_timings[(method.label, metric.label)] = time.perf_counter() - start
        if result is _FAILED:
            self.steps.say(f"  {key} FAILED: {self.table.failures[key]}")
        else:
            self.table.append(_record(method.label, metric.label, result))
        self.steps.done()

    def _attempt(self, key: str, step: Callable[[], Any]) -> Any:
        """``step()``, or ``_FAILED`` with the error recorded under ``key`` when keep_going."""
        try:
            return step()
        except Exception as exc:
            if not self.keep_going:
                raise
            self.table.failures[key] = _describe(exc)
            return _FAILED


class ConstantMapWarning(UserWarning):
    """Some explanations are constant (all zero, say): they rank no input above another."""


def constant_maps(maps: np.ndarray) -> list[int]:
    """The indices of the maps ``(N, ...)`` whose finite values are all equal (or that have
    none).

    Example:
        >>> constant_maps(np.stack([np.zeros((4, 4)), np.eye(4)]))
        [0]
    """
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    out = []
    for i, row in enumerate(flat):
        finite = row[np.isfinite(row)]
        if finite.size == 0 or finite.min() == finite.max():
            out.append(i)
    return out


def _score(
    metric: Metric, method: AttributionMethod, inputs: Any, targets: Any, maps: Any, masks: Any
) -> MetricResult:
    """``metric`` applied to ``method``'s explanations ``maps`` of ``inputs``."""
    given_masks = masks if metric.needs_masks else None
    if metric.needs_explanations:
        return metric(inputs, targets, maps, given_masks)
    if isinstance(metric, MethodMetric):  # gets the method, and reuses the maps already computed
        return metric.evaluate(method, inputs, targets, given_masks, explanations=maps)
    return metric.evaluate(method, inputs, targets, given_masks)  # type: ignore[arg-type]


def _record(method: str, metric: str, result: MetricResult) -> dict[str, Any]:
    return {
        "method": method,
        "metric": metric,
        "score": result.mean,
        "higher_is_better": result.higher_is_better,
        "result": result,
    }


def _describe(exc: BaseException) -> str:
    """``"ErrorType: first line of the message"``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _ready(obj: Any) -> Any:
    """A built method or metric; the error its constructor raised is raised here instead."""
    if isinstance(obj, Exception):
        raise obj
    return obj


class _Steps:
    """One progress bar over every step (a method explaining, a metric scoring), naming the
    current one; lines to ``echo`` are written above it."""

    def __init__(self, total: int, progress: bool | None, echo: Echo | None) -> None:
        if progress is None:
            progress = sys.stderr.isatty() and not os.environ.get("CI")
        self.echo = echo
        self.bar: Any = None
        if progress and total > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="evaluate", unit="step", file=sys.stderr, leave=False)

    def start(self, description: str) -> None:
        if self.bar is not None:
            self.bar.set_description(description)

    def done(self, steps: int = 1) -> None:
        if self.bar is not None and steps:
            self.bar.update(steps)

    def say(self, line: str) -> None:
        if self.echo is None:
            return
        if self.bar is not None:
            self.bar.write(line)  # above the bar, which stays at the bottom
        else:
            self.echo(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- building and checking what to run -----------------------------------------------------------
def _build(
    kind: str,
    entries: list[Any],
    params: dict[str, dict[str, Any]],
    model: Any,
    common: dict[str, Any],
    keep_going: bool,
) -> list[_Built]:
    """Methods or metrics from names (with ``common`` then their ``params``) or instances."""
    from .api import method as make_method
    from .api import metric as make_metric

    make = make_method if kind == "method" else make_metric
    labels = _unique([_label(e) for e in entries])
    built = []
    for label, entry in zip(labels, entries, strict=True):
        if not isinstance(entry, str):
            built.append(_Built(label, entry, entry.get_params()))
            continue
        given = {"batch_size": common["batch_size"], **params.get(entry, {})}
        try:
            obj = make(entry, model, **{"progress": common["progress"], **given})
        except Exception as exc:
            if not keep_going:
                raise
            obj = exc  # reported as the failure of each step that uses it
        built.append(_Built(label, obj, given))
    return built


def _params_used(methods: list[_Built], metrics: list[_Built]) -> dict[str, dict[str, dict[str, Any]]]:
    return {"methods": {b.label: b.params for b in methods}, "metrics": {b.label: b.params for b in metrics}}


def _params_resolved(methods: list[_Built], metrics: list[_Built]) -> dict[str, dict[str, dict[str, Any]]]:
    """Every parameter of each built method and metric (a constructor that failed: the given)."""

    def resolved(b: _Built) -> dict[str, Any]:
        return b.obj.get_params() if hasattr(b.obj, "get_params") else dict(b.params)

    return {"methods": {b.label: resolved(b) for b in methods}, "metrics": {b.label: resolved(b) for b in metrics}}


def _params_by_name(
    what: str, params: Mapping[str, Mapping[str, Any]] | None, entries: list[Any]
) -> dict[str, dict[str, Any]]:
    params = dict(params or {})
    names = {e for e in entries if isinstance(e, str)}
    unknown = sorted(set(params) - names)
    if unknown:  # never silently ignore a parameter
        raise ParameterError(
            f"{what} has entries {unknown} that are not among the names given ({sorted(names)}); "
            "parameters of instances are set on the instances"
        )
    for name, p in params.items():
        if not isinstance(p, Mapping):
            raise ParameterError(f"{what}[{name!r}] must be a dict of parameters, got {type(p).__name__}")
    return {name: dict(p) for name, p in params.items()}


def _check_entries(methods: list[Any], metrics: list[Any]) -> None:
    """Instances of the right kind, or registered names (else the error lists the names)."""
    from .registry import get_registry

    registry = get_registry()
    for entries, cls, lookup in ((methods, AttributionMethod, registry.method), (metrics, Metric, registry.metric)):
        for entry in entries:
            if isinstance(entry, str):
                lookup(entry)  # raises UnknownNameError with the available names
            elif not isinstance(entry, cls):
                raise ParameterError(
                    f"methods and metrics must be registered names or instances, got {type(entry).__name__}"
                )


def _check_masks(metrics: list[_Built], masks: Any) -> None:
    needing = [b.label for b in metrics if isinstance(b.obj, Metric) and b.obj.needs_masks]
    if needing and masks is None:
        raise ExplanationShapeError(
            f"metrics {needing} need ground-truth masks: pass masks=... (N, *positions), or drop them"
        )


def _label(m: Any) -> str:
    if isinstance(m, str):
        return m
    return getattr(type(m), "name", "") or type(m).__name__


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def _uses_score_fn(built: list[_Built]) -> bool:
    return any(getattr(b.obj, "score_fn", None) is not None for b in built)
