"""The public entry points: find, build and run methods and metrics by name."""

from __future__ import annotations

from typing import Any

from ._concepts import ConceptMethod
from ._featurevis import FeatureVisualization
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


def list_concepts() -> list[str]:
    """Names of every registered concept-extraction method, sorted.

    Example:
        >>> "craft" in xt.list_concepts()
        True
    """
    return sorted(get_registry().concepts)


def list_featurevis() -> list[str]:
    """Names of every registered feature-visualisation method, sorted.

    Example:
        >>> "maco" in xt.list_featurevis()
        True
    """
    return sorted(get_registry().featurevis)


def concepts(name: str, model: Any, **params: Any) -> ConceptMethod:
    """Build the concept-extraction method registered as ``name`` for ``model``.

    Example:
        >>> craft = xt.concepts("craft", model, layer="layer4", number_of_concepts=10)
        >>> found = craft(images_of_one_class, class_id=3)   # bank, importances, maps, crops
    """
    return get_registry().concept(name).cls(model, **params)


def featurevis(name: str, model: Any, **params: Any) -> FeatureVisualization:
    """Build the feature-visualisation method registered as ``name`` for ``model``.

    Example:
        >>> maco = xt.featurevis("maco", model, nb_steps=256)
        >>> vis = maco(xt.Objective.logit(3), input_shape=(3, 224, 224))
    """
    return get_registry().feature_visualization(name).cls(model, **params)


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
    """The registered method, metric, concept or feature-visualisation class called ``name``
    (e.g. ``"GradCAM"``, ``"Craft"``), if any."""
    for entry in _class_entries():
        if entry.cls.__name__ == name:
            return entry.cls
    return None


def class_names() -> list[str]:
    return sorted({e.cls.__name__ for e in _class_entries()})


def _class_entries() -> list[Any]:
    registry = get_registry()
    return [
        *registry.methods.values(), *registry.metrics.values(),
        *registry.concepts.values(), *registry.featurevis.values(),
    ]
