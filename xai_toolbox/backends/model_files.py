"""Reading model files and weight files of the built-in frameworks (for the command line).

Each framework's :class:`~xai_toolbox.backends.frameworks.Framework` points at its loaders;
:func:`xai_toolbox.io.load_model` picks one by file suffix. The frameworks are imported inside
the functions, so importing this module imports neither.

Formats that unpickle arbitrary Python code on load (a whole pickled ``nn.Module``, a legacy
``.h5`` model, a ``.keras`` file with ``Lambda`` layers) are refused unless ``trust`` is true.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

#: File suffixes read as TorchScript archives.
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit", ".zip")
#: File suffixes read by Keras (``.keras``; legacy HDF5 only when trusted).
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")

TRUST_HINT = (
    "it can run arbitrary code while loading; pass --trust-model-code only for a file you "
    "trust (trust_model_code=True in Python)"
)


def load_torch_file(path: Path, trust: bool) -> tuple[Any, str]:
    """A TorchScript archive (or, trusted, a pickled ``nn.Module``) in eval mode, and how it
    was read."""
    try:
        import torch
    except ImportError as exc:
        raise ModelLoadError("loading a PyTorch model needs PyTorch: pip install 'xai-toolbox[torch]'") from exc
    try:
        model = torch.jit.load(str(path), map_location="cpu")
        return model.eval(), f"TorchScript file {path.name}"
    except Exception as jit_error:
        if not trust:
            raise ModelLoadError(
                f"{str(path)!r} is not a TorchScript archive ({type(jit_error).__name__}). Save the "
                "model with torch.jit.script(model).save(path), or pass a factory and the state "
                "dict: --model package.module:factory --weights model.pth. A pickled whole model "
                f"needs --trust-model-code: {TRUST_HINT}"
            ) from jit_error
    model = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(
            f"{str(path)!r} holds a {type(model).__name__}, not a torch.nn.Module; for a state dict "
            "pass --model package.module:factory --weights FILE"
        )
    return model.eval(), f"pickled PyTorch model {path.name} (trusted)"


def load_torch_weights(model: Any, weights: Path, trust: bool) -> None:
    """A state dict (read with ``torch.load(weights_only=True)`` unless trusted) into ``model``."""
    import torch

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not trust:
            raise ModelLoadError(
                f"{str(weights)!r} cannot be read with torch.load(weights_only=True) ({type(exc).__name__}); "
                f"it holds pickled Python objects — {TRUST_HINT}"
            ) from exc
        state = torch.load(weights, map_location="cpu", weights_only=False)
    if hasattr(state, "state_dict") and callable(state.state_dict):
        state = state.state_dict()
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{str(weights)!r} holds a {type(state).__name__}, not a state dict (name -> tensor)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(f"the weights in {str(weights)!r} do not fit the model: {first}") from exc
    model.eval()


def load_keras_file(path: Path, trust: bool) -> tuple[Any, str]:
    """A ``.keras`` file read in safe mode (legacy HDF5 and unsafe mode only when trusted)."""
    legacy = path.suffix.lower() != ".keras"
    if legacy and not trust:
        raise ModelLoadError(
            f"{str(path)!r} is a legacy HDF5 model, which Keras deserialises without safe mode; "
            f"{TRUST_HINT}. Prefer model.save('model.keras')"
        )
    try:
        import keras
    except ImportError as exc:
        raise ModelLoadError("loading a Keras model needs TensorFlow/Keras: pip install 'xai-toolbox[tf]'") from exc
    try:
        if legacy:
            model = keras.models.load_model(str(path), compile=False)
        else:
            model = keras.models.load_model(str(path), compile=False, safe_mode=not trust)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
            message = f"it contains Python code (e.g. a Lambda layer) that safe mode refuses; {TRUST_HINT}"
        raise ModelLoadError(f"cannot load Keras model {str(path)!r}: {message}") from exc
    return model, f"Keras file {path.name}" + (" (trusted)" if trust else " (safe_mode=True)")


def load_keras_weights(model: Any, weights: Path, trust: bool) -> None:
    """A ``.weights.h5`` file (``model.save_weights``) into ``model``."""
    if not str(weights).endswith(".weights.h5"):
        raise ModelLoadError(f"Keras weights must be a .weights.h5 file (model.save_weights), got {str(weights)!r}")
    try:
        model.load_weights(str(weights))
    except Exception as exc:
        raise ModelLoadError(f"loading Keras weights {str(weights)!r} failed: {exc}") from exc
