"""The built-in frameworks and ``adapt_model`` hook: PyTorch, Keras 3 (on its TensorFlow, JAX
and PyTorch backends), JAX/Flax and NumPy callables.

Frameworks are imported only when the model is one of theirs (checked through
``sys.modules``), so ``import xai_toolbox`` never pulls in TensorFlow, PyTorch or JAX.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UnsupportedModelError
from ..registry import hookimpl
from . import model_files
from .frameworks import Framework
from .jax_model import JaxModel
from .test_models import jax_model, jax_native, keras_model, keras_native, torch_model, torch_native

#: Keras 3's backends this toolbox runs natively, and the framework name of each.
KERAS_BACKENDS = {"tensorflow": "tf", "jax": "keras-jax", "torch": "keras-torch"}


def configured_keras_backend() -> str:
    """The Keras backend of this process: the imported Keras's, else the one it will choose
    (``KERAS_BACKEND``, else ``keras.json`` in ``KERAS_HOME`` or ``~/.keras``, else TensorFlow).

    Example:
        >>> configured_keras_backend()
        'tensorflow'
    """
    keras = sys.modules.get("keras")
    backend = getattr(getattr(keras, "backend", None), "backend", None)
    if callable(backend):
        return str(backend())
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    try:
        return str(json.loads((home / "keras.json").read_text()).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


@dataclass(frozen=True)
class KerasFramework(Framework):
    """Keras 3 on one backend: installed when the backend and Keras are, and Keras runs on it
    in this process (the backend is chosen once per process, at the first ``import keras``)."""

    keras_backend: str = "tensorflow"

    def available(self) -> bool:
        return (
            super().available()
            and importlib.util.find_spec("keras") is not None
            and configured_keras_backend() == self.keras_backend
        )

FRAMEWORKS = (
    Framework(
        "torch", "PyTorch", aliases=("pytorch",), module="torch", models="a torch.nn.Module",
        channel_axis=1, build_test_model=torch_model, to_native=torch_native,
        is_native=lambda x: _is_instance(x, "torch", "Tensor"),
        model_files=model_files.TORCHSCRIPT_SUFFIXES, load_model_file=model_files.load_torch_file,
        load_weights=model_files.load_torch_weights,
    ),
    KerasFramework(
        "tf", "TensorFlow/Keras", aliases=("tensorflow", "keras"), module="tensorflow",
        models="a keras.Model", channel_axis=-1, build_test_model=keras_model, to_native=keras_native,
        is_native=lambda x: _is_instance(x, "tensorflow", "Tensor") or _is_instance(x, "tensorflow", "Variable"),
        model_files=model_files.KERAS_SUFFIXES, load_model_file=model_files.load_keras_file,
        load_weights=model_files.load_keras_weights,
    ),
    # Keras 3 on JAX and on PyTorch: their tensors are JAX's and PyTorch's (``is_native`` stays
    # with those frameworks, which own the tensor types).
    KerasFramework(
        "keras-jax", "Keras (JAX backend)", aliases=("keras_jax",), module="jax",
        models="a keras.Model (KERAS_BACKEND=jax)", channel_axis=-1, build_test_model=keras_model,
        to_native=jax_native, model_files=model_files.KERAS_SUFFIXES,
        load_model_file=model_files.load_keras_file, load_weights=model_files.load_keras_weights,
        keras_backend="jax",
    ),
    KerasFramework(
        "keras-torch", "Keras (PyTorch backend)", aliases=("keras_torch",), module="torch",
        models="a keras.Model (KERAS_BACKEND=torch)", channel_axis=-1, build_test_model=keras_model,
        to_native=torch_native, model_files=model_files.KERAS_SUFFIXES,
        load_model_file=model_files.load_keras_file, load_weights=model_files.load_keras_weights,
        keras_backend="torch",
    ),
    Framework(
        "jax", "JAX", aliases=("flax",), module="jax",
        models="a JAX function or Flax model (xt.JaxModel, nnx.Module, Linen module.apply with variables)",
        channel_axis=-1, build_test_model=jax_model, to_native=jax_native,
        is_native=lambda x: _is_instance(x, "jax", "Array"),
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


def _is_jax(model: Any) -> bool:
    if isinstance(model, JaxModel):
        return True
    if "jax" not in sys.modules:
        return False
    from .jax import is_jax_model

    return is_jax_model(model)


def _keras_adapter(model: Any, framework: str | None) -> Any:
    """The adapter of a Keras model's backend (a Keras model on PyTorch is also a
    ``torch.nn.Module``: it still gets the Keras adapter, channels-last, torch autograd)."""
    backend = configured_keras_backend()
    wanted = KERAS_BACKENDS.get(backend)
    if wanted is None:
        raise UnsupportedModelError(
            f"Keras models on the {backend!r} backend cannot be explained: the TensorFlow, JAX and "
            "PyTorch backends can (set KERAS_BACKEND=tensorflow, jax or torch before importing keras)"
        )
    if framework not in (None, "tf", wanted):  # "tf" is also spelt "keras": any backend
        raise UnsupportedModelError(
            f"this Keras model runs on the {backend!r} backend: it is explained as framework "
            f"{wanted!r} (or leave framework unset), not {framework!r}"
        )
    if backend == "tensorflow":
        from .tensorflow import KerasAdapter

        return KerasAdapter(model)
    if backend == "jax":
        from .keras_jax import KerasJaxAdapter

        return KerasJaxAdapter(model)
    from .keras_torch import KerasTorchAdapter

    return KerasTorchAdapter(model)


@hookimpl(trylast=True)
def adapt_model(model: Any, framework: str | None) -> Any:
    if _is_keras(model) and framework in (None, "tf", "torch", *KERAS_BACKENDS.values()):
        return _keras_adapter(model, framework)
    if framework in (None, "torch") and _is_torch(model):
        from .torch import TorchAdapter

        return TorchAdapter(model)
    if (framework == "jax" and callable(model)) or (framework is None and _is_jax(model)):
        from .jax import JaxAdapter

        return JaxAdapter(model)
    if framework in (None, "numpy") and callable(model) and not (_is_torch(model) or _is_keras(model)):
        from .numpy import NumpyAdapter

        return NumpyAdapter(model)
    return None
