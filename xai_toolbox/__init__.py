"""xai-toolbox: explanations for image classifiers on PyTorch and TensorFlow/Keras.

Every method and metric is a plugin; the built-ins are found the same way as third-party ones.

Example:
    >>> import xai_toolbox as xt
    >>> xt.list_methods()
    ['gradcam', 'gradcampp', ...]
    >>> maps = xt.explain(model, images, labels, method="gradcam")      # (N, H, W)
    >>> xt.metric("deletion", model)(images, labels, maps).mean

Method and metric classes are also attributes of the package (``xt.Saliency``,
``xt.GradCAM``, ``xt.Deletion``, ...), resolved through the registry. Concept extraction
(``xt.concepts("craft", model, ...)``) and feature visualisation (``xt.featurevis("maco",
model, ...)`` with an :class:`Objective`) are plugin kinds of their own. Plugin authors build on
:mod:`xai_toolbox.extend`, the versioned extension API.
"""

from __future__ import annotations

from typing import Any

from . import _compat

_compat.apply()

from . import extend, scores  # noqa: E402
from ._featurevis import Objective  # noqa: E402
from ._precision import autocast  # noqa: E402
from .api import (  # noqa: E402
    concepts,
    explain,
    featurevis,
    list_concepts,
    list_featurevis,
    list_methods,
    list_metrics,
    method,
    metric,
)
from .backends import ModelAdapter, adapt  # noqa: E402
from .backends.jax_model import JaxModel  # noqa: E402
from .backends.numpy import NumpyModel  # noqa: E402
from .base import AttributionMethod, Metric, MetricResult  # noqa: E402
from .errors import *  # noqa: E402,F403
from .errors import OutOfMemoryWarning  # noqa: E402
from .errors import __all__ as _error_names  # noqa: E402
from .registry import hookimpl, reload_plugins  # noqa: E402
from .uncertainty import PairedTest, bootstrap_ci, paired_test  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AttributionMethod",
    "JaxModel",
    "Metric",
    "MetricResult",
    "ModelAdapter",
    "NumpyModel",
    "Objective",
    "OutOfMemoryWarning",
    "PairedTest",
    "adapt",
    "autocast",
    "concepts",
    "bootstrap_ci",
    "extend",
    "scores",
    "explain",
    "featurevis",
    "hookimpl",
    "list_concepts",
    "list_featurevis",
    "list_methods",
    "list_metrics",
    "method",
    "metric",
    "paired_test",
    "reload_plugins",
    *_error_names,
]


def __getattr__(name: str) -> Any:
    # Method/metric classes come from plugins, so they are looked up lazily by class name.
    if name[:1].isupper():
        from .api import find_class

        cls = find_class(name)
        if cls is not None:
            return cls
    if name in ("explain_dataset", "datasets"):  # whole datasets (zarr/pyarrow/ray when used)
        import importlib

        module = importlib.import_module(".datasets", __name__)
        return module if name == "datasets" else module.explain_dataset
    if name in ("evaluate", "plot"):
        import importlib

        module = importlib.import_module(f".{'evaluation' if name == 'evaluate' else name}", __name__)
        return getattr(module, name) if name == "evaluate" else module
    raise AttributeError(f"module 'xai_toolbox' has no attribute {name!r}")


def __dir__() -> list[str]:
    from .api import class_names

    return sorted({*globals(), *__all__, *class_names()})
