"""Benchmark several attribution methods with several metrics in one call.

Example:
    >>> import xai_toolbox as xt
    >>> table = xt.evaluate(model, images, labels, methods=["saliency", "gradcam"],
    ...                     metrics=["deletion", "insertion", "mufidelity"])
    >>> print(table)
    >>> table.pivot()["gradcam"]["deletion"]
    >>> table.to_pandas()
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from . import _validation as v
from ._streaming import batched_forward
from ._streaming import progress as progress_bar
from .backends import adapt
from .base import AttributionMethod, Metric
from .errors import ExplanationShapeError, ParameterError

COLUMNS = ("method", "metric", "score", "higher_is_better", "result")


class EvaluationTable(list):
    """Records ``{"method", "metric", "score", "higher_is_better", "result"}``, one per
    (method, metric) pair; ``score`` is the metric's mean and ``result`` its
    :class:`~xai_toolbox.MetricResult` (per-input scores, curves).

    Example:
        >>> table.pivot()                     # {"saliency": {"deletion": 0.12, ...}, ...}
        >>> table.to_pandas()                 # a DataFrame with the columns above
    """

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(r["method"] for r in self))

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(r["metric"] for r in self))

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

    def __str__(self) -> str:
        """A plain-text table: one row per method, one column per metric (↑/↓ = better)."""
        if not self:
            return "EvaluationTable (empty)"
        pivot = self.pivot()
        arrows = {r["metric"]: ("↑" if r["higher_is_better"] else "↓") for r in self}
        header = ["method", *(f"{m} {arrows[m]}" for m in self.metrics)]
        rows = [
            [method, *(_fmt(pivot[method].get(m)) for m in self.metrics)] for method in self.methods
        ]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
            return "  ".join([first, *rest]).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(header), rule, *(line(r) for r in rows)])

    def __repr__(self) -> str:
        return f"EvaluationTable({len(self.methods)} methods × {len(self.metrics)} metrics)\n{self}"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def evaluate(
    model: Any,
    inputs: Any,
    targets: Any = None,
    *,
    methods: Iterable[str | AttributionMethod],
    metrics: Iterable[str | Metric],
    masks: Any = None,
    method_params: dict[str, dict[str, Any]] | None = None,
    metric_params: dict[str, dict[str, Any]] | None = None,
    batch_size: int = 64,
    progress: bool | None = None,
) -> EvaluationTable:
    """Explain ``inputs`` with every method once, and score each explanation with every metric.

    Args:
        model: a PyTorch or Keras model (or a NumPy callable, for black-box methods).
        inputs: the batch, in the framework's layout.
        targets: class indices ``(N,)``, weights ``(N, K)`` or ``None`` (the model's top-1
            prediction, computed once and shared by all methods and metrics).
        methods: registered names or :class:`~xai_toolbox.AttributionMethod` instances.
        metrics: registered names or :class:`~xai_toolbox.Metric` instances.
        masks: ground-truth masks ``(N, *positions)`` for localisation metrics (pointing games);
            required as soon as one metric needs them.
        method_params / metric_params: extra constructor parameters per name, e.g.
            ``{"gradcam": {"layer": "layer4"}}``.
        batch_size: model inputs per forward pass, for methods and metrics built from names.
        progress: progress bar over the (method, metric) pairs (``None``: on a terminal only).

    Returns:
        An :class:`EvaluationTable` with one record per (method, metric), in the given order.
        Metrics that do not use explanations but check a method (``randomization``) run once
        per method with that method.

    Example:
        >>> table = xt.evaluate(model, images, labels, methods=["saliency", "rise"],
        ...                     metrics=["deletion", "mufidelity"],
        ...                     method_params={"rise": {"nb_masks": 2000, "seed": 0}})
    """
    from .api import method as make_method
    from .api import metric as make_metric

    batch_size = v.positive_int("batch_size", batch_size)
    methods, metrics = list(methods), list(metrics)
    if not methods or not metrics:
        raise ParameterError("evaluate needs at least one method and one metric")
    method_params = _params_by_name("method_params", method_params, methods)
    metric_params = _params_by_name("metric_params", metric_params, metrics)

    # One adapter for every method and metric built here: a Keras model is traced once, not
    # once per object (an adapter passed as the model is used as is).
    model = adapt(model)
    common = {"batch_size": batch_size, "progress": progress}
    for entry in methods + metrics:
        _check_type(entry)
    built_methods = [
        (_label(m), m if isinstance(m, AttributionMethod) else make_method(m, model, **{**common, **method_params.get(m, {})}))
        for m in methods
    ]
    built_metrics = [
        m if isinstance(m, Metric) else make_metric(m, model, **{**common, **metric_params.get(m, {})})
        for m in metrics
    ]
    needing = [m._plugin_name() for m in built_metrics if m.needs_masks]
    if needing and masks is None:
        raise ExplanationShapeError(
            f"metrics {needing} need ground-truth masks: pass masks=... (N, *positions), or drop them"
        )
    labels = _unique([label for label, _ in built_methods])

    if targets is None and not _uses_score_fn(built_methods, built_metrics):
        targets = _top1(inputs, built_methods[0][1], batch_size)

    table = EvaluationTable()
    pairs = [(i, j) for i in range(len(built_methods)) for j in range(len(built_metrics))]
    explanations: dict[int, Any] = {}
    for i, j in progress_bar(pairs, enabled=progress, total=len(pairs), desc="evaluate"):
        method = built_methods[i][1]
        metric = built_metrics[j]
        given_masks = masks if metric.needs_masks else None
        if i not in explanations and (metric.needs_explanations or _takes_explanations(metric)):
            explanations[i] = method(inputs, targets)  # once per method, reused by every metric
        if metric.needs_explanations:
            result = metric(inputs, targets, explanations[i], given_masks)
        elif _takes_explanations(metric):  # checks the method itself (model randomisation)
            result = metric.evaluate(method, inputs, targets, given_masks, explanations=explanations[i])
        else:
            result = metric.evaluate(method, inputs, targets, given_masks)
        table.append(
            {
                "method": labels[i],
                "metric": result.name,
                "score": result.mean,
                "higher_is_better": result.higher_is_better,
                "result": result,
            }
        )
    return table


def _takes_explanations(metric: Metric) -> bool:
    """Whether a metric that checks a method (model randomisation) accepts its explanations."""
    return "explanations" in inspect.signature(metric.evaluate).parameters


def _params_by_name(
    what: str, params: dict[str, dict[str, Any]] | None, entries: list[Any]
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
        if not isinstance(p, dict):
            raise ParameterError(f"{what}[{name!r}] must be a dict of parameters, got {type(p).__name__}")
    return params


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


def _check_type(entry: Any) -> None:
    if not isinstance(entry, str | AttributionMethod | Metric):
        raise ParameterError(
            f"methods and metrics must be registered names or instances, got {type(entry).__name__}"
        )


def _uses_score_fn(methods: list[tuple[str, AttributionMethod]], metrics: list[Metric]) -> bool:
    return any(getattr(o, "score_fn", None) is not None for o in [m for _, m in methods] + metrics)


def _top1(inputs: Any, method: AttributionMethod, batch_size: int) -> Any:
    """The model's top-1 classes, computed once so every method and metric uses the same."""
    adapter = method.adapter
    _, x = method._prepare(inputs)
    with adapter.preserved():
        outputs = batched_forward(adapter, x, batch_size)
    if outputs.ndim != 2:
        return None  # let each method/metric report the problem with its own message
    return outputs.argmax(axis=1).numpy()
