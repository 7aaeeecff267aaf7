"""Fixes for EagerPy 0.30.0 (its last release, 2021) on current NumPy / frameworks.

Kept in one place so the list of patches is visible and tested (tests/test_compat.py).

* NumPy 2 removed ``np.find_common_type``; EagerPy's TensorFlow backend calls it whenever an
  operation mixes dtypes (``float32 tensor * int64 tensor``). We give that module a NumPy
  proxy that provides the function through ``np.result_type`` instead of patching the global
  ``numpy`` module for everybody.
"""

from __future__ import annotations

import types
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
    if hasattr(np, "find_common_type"):
        return
    import eagerpy.tensor.tensorflow as ep_tf

    ep_tf.np = _NumpyWithFindCommonType()  # type: ignore[assignment]
