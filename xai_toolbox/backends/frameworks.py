"""What the toolbox knows about a framework before it sees a model: :class:`Framework`.

Adapter plugins register one with the ``register_frameworks`` hook, next to their
``adapt_model`` hook. The registry then knows the framework's names (for ``framework=`` and
``--framework``), whether it is installed, how to build the test models that
:mod:`xai_toolbox.testing` runs the plugin contract on, and what to say in messages — so no
part of the toolbox keeps a fixed list of frameworks.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: ``build(architecture, **options) -> model``: a test model of the framework. Architectures:
#: ``"cnn"`` (options ``weights``: PyTorch-layout NumPy arrays of :func:`xai_toolbox.testing.cnn_weights`,
#: ``channels``, ``size``, ``classes``, ``width``) and ``"linear"`` (options ``weight``
#: ``(K, *input_shape)`` channels-first and ``bias``). Unknown architectures raise ``ValueError``.
TestModelBuilder = Callable[..., Any]


@dataclass(frozen=True)
class Framework:
    """A framework an adapter plugin serves.

    Attributes:
        name: canonical name (``framework="torch"``, ``--framework torch``).
        display_name: the name users read in messages (``"PyTorch"``).
        aliases: other spellings accepted for ``name`` (``"pytorch"``).
        module: the import that must succeed for the framework to count as installed
            (``None``: always available).
        models: what models it explains, for messages (``"a torch.nn.Module"``).
        channel_axis: where channels sit in image inputs (1: NCHW, -1: NHWC).
        gradients: whether its models can be differentiated (gradient methods, CAMs).
        build_test_model: see :data:`TestModelBuilder`; ``None`` if the plugin ships none
            (then :mod:`xai_toolbox.testing` cannot run the contract on this framework).
        to_native: a NumPy array (already in this framework's layout) as a native tensor;
            ``None``: NumPy arrays are the native tensors.
        is_native: whether an object is a tensor of this framework (without importing the
            framework: a tensor of it exists only if it was imported); ``None``: none is.
        model_files: file suffixes of saved models this framework reads (``".keras"``).
        load_model_file: ``load(path, trust) -> (model, description)`` for those files; must
            refuse formats that run code while loading unless ``trust`` (raise
            :class:`~xai_toolbox.errors.ModelLoadError`).
        load_weights: ``load(model, path, trust)``: a weights file into a model built by a
            factory (``--weights``).

    Example:
        >>> Framework("jax", "JAX", aliases=("flax",), module="jax", models="a JAX function")
    """

    name: str
    display_name: str
    aliases: tuple[str, ...] = ()
    module: str | None = None
    models: str = ""
    channel_axis: int = -1
    gradients: bool = True
    build_test_model: TestModelBuilder | None = field(default=None, compare=False)
    to_native: Callable[[np.ndarray], Any] | None = field(default=None, compare=False)
    is_native: Callable[[Any], bool] | None = field(default=None, compare=False)
    model_files: tuple[str, ...] = ()
    load_model_file: Callable[[Path, bool], tuple[Any, str]] | None = field(default=None, compare=False)
    load_weights: Callable[[Any, Path, bool], None] | None = field(default=None, compare=False)

    def available(self) -> bool:
        """Whether the framework can be imported here."""
        return self.module is None or importlib.util.find_spec(self.module) is not None

    def spellings(self) -> tuple[str, ...]:
        """Every name that selects this framework, lower-case."""
        return (self.name.lower(), *(a.lower() for a in self.aliases))
