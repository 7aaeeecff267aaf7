"""The built-in ``adapt_model`` hook: PyTorch, Keras and NumPy callables.

Frameworks are imported only when the model is one of theirs (checked through
``sys.modules``), so ``import xai_toolbox`` never pulls in TensorFlow or PyTorch.
"""

from __future__ import annotations

import sys
from typing import Any

from ..registry import hookimpl


def _is_torch(model: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _is_keras(model: Any) -> bool:
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(model, keras.layers.Layer)


@hookimpl(trylast=True)
def adapt_model(model: Any, framework: str | None) -> Any:
    if framework in (None, "torch") and _is_torch(model):
        from .torch import TorchAdapter

        return TorchAdapter(model)
    if framework in (None, "tf") and _is_keras(model):
        from .tensorflow import KerasAdapter

        return KerasAdapter(model)
    if framework in (None, "numpy") and callable(model) and not (_is_torch(model) or _is_keras(model)):
        from .numpy import NumpyAdapter

        return NumpyAdapter(model)
    return None
