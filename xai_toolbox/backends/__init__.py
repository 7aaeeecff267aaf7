"""Framework adapters. :func:`adapt` picks one through the ``adapt_model`` plugin hook."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedModelError
from ._base import ModelAdapter

_ALIASES = {"pytorch": "torch", "torch": "torch", "tf": "tf", "tensorflow": "tf", "keras": "tf",
            "numpy": "numpy"}


def canonical_framework(name: str) -> str:
    """The canonical name of a framework from any alias users type ("pytorch" → "torch",
    "keras"/"tensorflow" → "tf"); unknown names are returned lower-cased, as given.

    Example:
        >>> canonical_framework("PyTorch")
        'torch'
    """
    return _ALIASES.get(name.lower(), name.lower())


def adapt(model: Any, framework: str | None = None) -> ModelAdapter:
    """The adapter for ``model``: the first plugin's ``adapt_model`` that accepts it.

    ``framework`` ("torch", "tf", "numpy") forces a choice where a model could fit several.
    An adapter passed in is returned as is.
    """
    if isinstance(model, ModelAdapter):
        return model
    from ..registry import get_registry

    fw = canonical_framework(framework) if framework else None
    adapter = get_registry().hook.adapt_model(model=model, framework=fw)
    if adapter is None:
        raise UnsupportedModelError(
            f"no backend accepts a model of type {type(model).__module__}.{type(model).__qualname__}; "
            "expected a torch.nn.Module, a keras.Model, or a callable over NumPy arrays"
        )
    return adapter


__all__ = ["ModelAdapter", "adapt", "canonical_framework"]
