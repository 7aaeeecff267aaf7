"""Reading model files and weight files of the built-in frameworks (for the command line).

Each framework's :class:`~xai_toolbox.backends.frameworks.Framework` points at its loaders;
:func:`xai_toolbox.io.load_model` picks one by file suffix. The frameworks are imported inside
the functions, so importing this module imports neither.

Formats that hold code are refused unless ``trust`` is true: those that unpickle arbitrary
Python on load (a whole pickled ``nn.Module``, a legacy ``.h5`` model, a ``.keras`` file with
``Lambda`` layers), and TorchScript archives, whose scripted ``forward`` is a program that runs
with the user's privileges on every call (``torch.from_file``, ``torch.save`` and friends can
read and write any file). The safe path needs no trust: a factory the user names (their own
code) with a state dict read by ``torch.load(weights_only=True)``, or a ``.keras`` file in safe
mode. The archive is recognised from its zip listing, without loading it.
"""

from __future__ import annotations

import zipfile
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


SAFE_PATH_HINT = (
    "the safe path needs no trust: build the architecture with your own code and load the "
    "weights as data — --model package.module:factory --weights state.pth (a state dict, read "
    "with torch.load(weights_only=True))"
)


def is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with a ``code/`` folder), from its zip
    listing alone: nothing in it is loaded or run.

    Example:
        >>> is_torchscript_archive(Path("net.pt"))
        True
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in f"/{name}" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_torch_file(path: Path, trust: bool) -> tuple[Any, str]:
    """A TorchScript archive or a pickled ``nn.Module`` in eval mode, and how it was read —
    both only with ``trust``: a TorchScript ``forward`` is code that runs on every call, and
    unpickling runs code while loading."""
    scripted = is_torchscript_archive(path)
    if not trust:
        if scripted:
            raise ModelLoadError(
                f"{str(path)!r} is a TorchScript archive: its scripted code runs with your privileges "
                "on every call (it can read and write files), so it runs only with "
                "--trust-model-code (trust_model_code=True in Python), for a file you trust; "
                f"{SAFE_PATH_HINT}"
            )
        raise ModelLoadError(
            f"{str(path)!r} is not a TorchScript archive but a pickled file, and unpickling runs "
            f"code; {SAFE_PATH_HINT}. A pickled whole model needs --trust-model-code: {TRUST_HINT}"
        )
    try:
        import torch
    except ImportError as exc:
        raise ModelLoadError("loading a PyTorch model needs PyTorch: pip install 'xai-toolbox[torch]'") from exc
    if scripted:
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(f"cannot load TorchScript archive {str(path)!r}: {exc}") from exc
        return model.eval(), f"TorchScript file {path.name} (trusted)"
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {str(path)!r} with torch.load: {type(exc).__name__}: {exc}") from exc
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
