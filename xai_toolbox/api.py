"""The public entry points: find, build and run methods and metrics by name."""

from __future__ import annotations

from typing import Any

from .base import AttributionMethod, Metric
from .registry import get_registry


def list_methods() -> list[str]:
    """Names of every registered attribution method, sorted.

    Example:
        >>> import xai_toolbox as xt
        >>> "saliency" in xt.list_methods()
        True
    """
    return sorted(get_registry().methods)


def list_metrics() -> list[str]:
    """Names of every registered metric, sorted."""
    return sorted(get_registry().metrics)


def method(name: str, model: Any, **params: Any) -> AttributionMethod:
    """Build the attribution method registered as ``name`` for ``model``.

    Example:
        >>> explainer = xt.method("gradcam", model, layer="layer4")
        >>> maps = explainer(images, targets)   # (N, H, W), same framework/device as images
    """
    return get_registry().method(name).cls(model, **params)


def metric(name: str, model: Any, **params: Any) -> Metric:
    """Build the metric registered as ``name`` for ``model``.

    Example:
        >>> result = xt.metric("deletion", model, steps=20)(images, targets, maps)
        >>> result.mean, result.curves.shape
    """
    return get_registry().metric(name).cls(model, **params)


def explain(model: Any, inputs: Any, targets: Any = None, *, method: str = "saliency", **params: Any) -> Any:
    """One-shot helper: ``xt.method(method, model, **params)(inputs, targets)``.

    Example:
        >>> maps = xt.explain(model, images, labels, method="gradcam", layer="layer4")
    """
    return globals()["method"](method, model, **params)(inputs, targets)


def find_class(name: str) -> type | None:
    """The registered method or metric class called ``name`` (e.g. ``"GradCAM"``), if any."""
    registry = get_registry()
    for entry in (*registry.methods.values(), *registry.metrics.values()):
        if entry.cls.__name__ == name:
            return entry.cls
    return None


def class_names() -> list[str]:
    registry = get_registry()
    return sorted({e.cls.__name__ for e in (*registry.methods.values(), *registry.metrics.values())})
