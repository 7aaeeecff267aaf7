"""Fixes for EagerPy 0.30.0 (its last release, 2021) on current NumPy / frameworks.

Kept in one place so the list of patches is visible and tested (tests/test_compat.py).

* NumPy 2 removed ``np.find_common_type``; EagerPy's TensorFlow backend calls it whenever an
  operation mixes dtypes (``float32 tensor * int64 tensor``). We give that module a NumPy
  proxy that provides the function through ``np.result_type`` instead of patching the global
  ``numpy`` module for everybody.
* EagerPy's PyTorch ``max``/``min`` over axes loop over ``torch.max(dim)``, which also computes
  the arg-max indices (one pass per axis, about 2x the time of a plain reduction, on every
  saliency map and normalisation). We use ``torch.amax``/``torch.amin`` (one pass over all the
  axes). Their gradient splits evenly between tied extremes, as TensorFlow's does, where
  ``torch.max(dim)`` sent it all to one of them.
* EagerPy's JAX ``index_update`` calls ``jax.ops.index_update``, removed in JAX 0.3.2; we use
  the ``x.at[indices].set(values)`` that replaced it. (The rest of its JAX tensor works with
  current JAX: ``tests/test_compat.py`` runs the operations the toolbox uses.)
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Any

import numpy as np

_applied = False


class _NumpyWithFindCommonType(types.ModuleType):
    """A stand-in for ``numpy`` that adds the removed ``find_common_type``."""

    def __init__(self) -> None:
        super().__init__("numpy")

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def find_common_type(array_types: list[Any], scalar_types: list[Any]) -> np.dtype:
        return np.result_type(*array_types, *scalar_types)


def apply() -> None:
    """Apply the patches once (idempotent). Called when :mod:`xai_toolbox` is imported."""
    global _applied
    if _applied:
        return
    _applied = True
    _patch_torch_extrema()
    _patch_jax_index_update()
    if hasattr(np, "find_common_type"):
        return
    import eagerpy.tensor.tensorflow as ep_tf

    ep_tf.np = _NumpyWithFindCommonType()  # type: ignore[assignment]


def _torch_extremum(reduce_all: str, reduce_dims: str) -> Any:
    def extremum(self: Any, axis: Any = None, keepdims: bool = False) -> Any:
        if axis is None and not keepdims:
            return type(self)(getattr(self.raw, reduce_all)())
        dims = tuple(range(self.ndim)) if axis is None else tuple(axis) if isinstance(axis, Iterable) else (axis,)
        return type(self)(getattr(self.raw, reduce_dims)(dim=dims, keepdim=keepdims))

    extremum.__name__ = reduce_all
    extremum.__doc__ = f"``{reduce_dims}`` over the axes (patched by xai_toolbox._compat)."
    return extremum


def _patch_torch_extrema() -> None:
    # eagerpy.tensor.pytorch imports torch lazily, so this does not import PyTorch.
    from eagerpy.tensor.pytorch import PyTorchTensor

    PyTorchTensor.max = _torch_extremum("max", "amax")  # type: ignore[method-assign]
    PyTorchTensor.min = _torch_extremum("min", "amin")  # type: ignore[method-assign]


def _jax_index_update(self: Any, indices: Any, values: Any) -> Any:
    """``x.at[indices].set(values)`` (patched by xai_toolbox._compat: EagerPy called the
    removed ``jax.ops.index_update``)."""
    from eagerpy.tensor.base import unwrap_

    indices, values = unwrap_(indices, values)
    if isinstance(indices, tuple):
        indices = unwrap_(*indices)
    return type(self)(self.raw.at[indices].set(values))


def _patch_jax_index_update() -> None:
    # eagerpy.tensor.jax imports jax lazily, so this does not import JAX.
    from eagerpy.tensor.jax import JAXTensor

    JAXTensor.index_update = _jax_index_update  # type: ignore[method-assign]
