"""Plain callables over NumPy arrays (e.g. a scikit-learn pipeline): black-box methods only."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import is_dataclass
from typing import Any

import eagerpy as ep
import numpy as np

from ..errors import UnsupportedModelError
from .adapter import ModelAdapter, as_type_of, float32_array, select_output


class NumpyModel:
    """Declare a NumPy callable as a model, with the layout of its image inputs.

    Args:
        fn: ``fn(batch) -> scores``, a NumPy array in, ``(B, K)`` array-like out.
        channel_axis: where channels sit in rank-3/4 inputs: ``-1`` (NHWC, default) or ``1``.

    Example:
        >>> import numpy as np, xai_toolbox as xt
        >>> model = xt.NumpyModel(lambda x: x.reshape(len(x), -1) @ np.ones((12, 2)), channel_axis=1)
        >>> maps = xt.explain(model, np.ones((1, 3, 2, 2), np.float32), 0, method="occlusion",
        ...                   patch_size=1, stride=1)
    """

    def __init__(self, fn: Callable[[np.ndarray], Any], channel_axis: int = -1) -> None:
        if channel_axis not in (1, -1):
            raise ValueError("channel_axis must be 1 (channels first) or -1 (channels last)")
        self.fn = fn
        self.channel_axis = channel_axis

    def __call__(self, x: np.ndarray) -> Any:
        return self.fn(x)

    def __repr__(self) -> str:
        return f"NumpyModel({self.fn!r}, channel_axis={self.channel_axis})"


class NumpyAdapter(ModelAdapter):
    """Adapter for plain callables: forward passes only (no gradients, no inner layers)."""

    framework = "numpy"
    display_name = "NumPy callable"
    supports_gradients = False
    supports_layers = False
    mutable_tensors = True

    def __init__(self, model: Callable[[np.ndarray], Any]) -> None:
        super().__init__(model, channel_axis=getattr(model, "channel_axis", -1))

    def is_native(self, x: Any) -> bool:
        return isinstance(x, np.ndarray)

    def to_model(self, x: Any) -> ep.Tensor:
        return ep.astensor(float32_array(x))

    def restore(self, t: ep.Tensor, like: Any) -> Any:
        return as_type_of(np.asarray(t.raw), like)

    def write_rows(self, buffer: Any, index: Any, values: Any, *, add: bool = False) -> None:
        if add:
            buffer[index] += values
        else:
            buffer[index] = values

    def forward_pass(self, x: ep.Tensor) -> ep.Tensor:
        with self.calling_model(x):
            raw = self.model(x.raw)
            if self.output is not None or isinstance(raw, Mapping) or is_dataclass(raw):
                raw = select_output(raw, self.output, lambda t: hasattr(t, "shape") and hasattr(t, "dtype"))
            out = np.asarray(raw, dtype=np.float32)
        if out.ndim == 1:
            out = out[:, None]
        if out.ndim != 2 or out.shape[0] != x.shape[0]:
            raise UnsupportedModelError(
                f"the NumPy model must return one row of scores per input, shape ({x.shape[0]}, K); "
                f"it returned shape {out.shape}"
            )
        return ep.astensor(out)
