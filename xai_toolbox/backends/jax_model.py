"""``xt.JaxModel``: declare a JAX function (with its parameters) as a model, without importing JAX."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class JaxModel:
    """A JAX model for the toolbox: a function of the inputs, or of parameters and inputs.

    The JAX adapter also takes Flax models as they are (an ``nnx.Module``, a bound Linen
    module, ``functools.partial(module.apply, variables)``) and ``jax.jit`` functions; wrap
    what it cannot recognise: a plain ``jax.numpy`` function, a function of ``(params, x)``
    with its parameters (a pytree: given as a jit argument, so they are never baked into the
    compiled program), or a Linen module with its variables and call options.

    Args:
        fn: ``fn(x) -> outputs`` (``params=None``), ``fn(params, x) -> outputs``, or a Flax Linen
            module (then ``params`` are its variables, ``module.apply(params, x, **call_kwargs)``
            runs it and its submodules are the layers CAMs can use).
        params: the parameters (a pytree of arrays), or ``None``.
        channel_axis: where channels sit in image inputs: ``-1`` (NHWC, Flax's layout; default)
            or ``1`` (NCHW).
        **call_kwargs: passed to every call (``train=False``, ``method=...``).

    Example:
        >>> import jax.numpy as jnp, xai_toolbox as xt
        >>> model = xt.JaxModel(lambda p, x: x.reshape(len(x), -1) @ p["w"], {"w": jnp.ones((48, 3))})
        >>> maps = xt.explain(model, jnp.ones((1, 4, 4, 3)), 0, method="saliency")
        >>> linen = xt.JaxModel(module, variables, train=False)     # a Flax Linen module
    """

    def __init__(self, fn: Callable[..., Any], params: Any = None, *, channel_axis: int = -1, **call_kwargs: Any) -> None:
        if channel_axis not in (1, -1):
            raise ValueError("channel_axis must be 1 (channels first) or -1 (channels last)")
        if not callable(fn):
            raise TypeError(f"fn must be a callable (a function or a Flax Linen module), got {type(fn).__name__}")
        self.fn = fn
        self.params = params
        self.channel_axis = channel_axis
        self.call_kwargs = call_kwargs

    def __call__(self, x: Any) -> Any:
        if self.params is None:
            return self.fn(x, **self.call_kwargs)
        if is_linen_module(self.fn):
            return self.fn.apply(self.params, x, **self.call_kwargs)
        return self.fn(self.params, x, **self.call_kwargs)

    def __repr__(self) -> str:
        params = "" if self.params is None else ", params=..."
        return f"JaxModel({getattr(self.fn, '__name__', type(self.fn).__name__)}{params}, channel_axis={self.channel_axis})"


def is_linen_module(obj: Any) -> bool:
    """Whether ``obj`` is a Flax Linen module (without importing Flax: one exists only if it was)."""
    linen = sys.modules.get("flax.linen")
    return linen is not None and isinstance(obj, linen.Module)
