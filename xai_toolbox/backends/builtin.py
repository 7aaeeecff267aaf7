"""The built-in frameworks and ``adapt_model`` hook: PyTorch, Keras and NumPy callables.

Frameworks are imported only when the model is one of theirs (checked through
``sys.modules``), so ``import xai_toolbox`` never pulls in TensorFlow or PyTorch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ..registry import hookimpl
from . import model_files
from .frameworks import Framework
from .test_models import keras_model, keras_native, torch_model, torch_native

FRAMEWORKS = (
    Framework(
        "torch", "PyTorch", aliases=("pytorch",), module="torch", models="a torch.nn.Module",
        channel_axis=1, build_test_model=torch_model, to_native=torch_native,
        is_native=lambda x: _is_instance(x, "torch", "Tensor"),
        model_files=model_files.TORCHSCRIPT_SUFFIXES, load_model_file=model_files.load_torch_file,
        load_weights=model_files.load_torch_weights,
    ),
    Framework(
        "tf", "TensorFlow/Keras", aliases=("tensorflow", "keras"), module="tensorflow",
        models="a keras.Model", channel_axis=-1, build_test_model=keras_model, to_native=keras_native,
        is_native=lambda x: _is_instance(x, "tensorflow", "Tensor") or _is_instance(x, "tensorflow", "Variable"),
        model_files=model_files.KERAS_SUFFIXES, load_model_file=model_files.load_keras_file,
        load_weights=model_files.load_keras_weights,
    ),
    Framework(
        "numpy", "NumPy callable", models="a callable over NumPy arrays (xt.NumpyModel)",
        channel_axis=-1, gradients=False,
    ),
)


def _is_instance(x: Any, module: str, cls: str) -> bool:
    """``isinstance(x, module.cls)`` if ``module`` was imported (else no such tensor exists)."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(x, getattr(loaded, cls))


@hookimpl
def register_frameworks(register: Callable[[Framework], None]) -> None:
    for framework in FRAMEWORKS:
        register(framework)


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
