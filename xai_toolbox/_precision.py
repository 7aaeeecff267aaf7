"""Mixed precision for the forward-only passes of methods and metrics: ``xt.autocast()``.

Perturbation methods (RISE, Sobol, HSIC, Occlusion) and the fidelity metrics spend nearly all
their time in forward passes whose outputs are only compared with each other, which is where
half precision pays on a GPU (tensor cores, half the memory traffic). Gradient passes stay in
float32: input gradients through a half-precision network lose most of their digits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from .errors import ParameterError

#: Reduced-precision types ``autocast`` accepts; ``None`` picks the device's usual one.
DTYPES = ("float16", "bfloat16")

_requested: ContextVar[str | None] = ContextVar("xai_toolbox_autocast", default=None)


@contextlib.contextmanager
def autocast(dtype: str | None = None) -> Iterator[None]:
    """Run the forward-only passes of methods and metrics in mixed precision (PyTorch).

    Inside the block, every forward pass that is not differentiated runs under
    :class:`torch.autocast` on the model's device — float16 on CUDA, bfloat16 elsewhere, or
    ``dtype`` — and its outputs come back as float32, so scores, softmax and curves are
    computed as usual. Gradient passes (Saliency, Integrated Gradients, SmoothGrad, the CAMs,
    Opti-CAM) are not affected. The setting is per thread (and per asyncio task).

    Whether it is faster depends on the hardware: on a GPU with tensor cores a forward pass
    takes about half the time; on a CPU without native bfloat16 it is usually slower. Expect
    maps close to the float32 ones, not identical: on the test models RISE maps and Deletion
    curves correlate above 0.99 with them; Occlusion maps, differences of close scores, about
    0.97 in bfloat16 (float16 keeps 3 more bits).

    Keras models are not converted on the fly: build them under
    ``keras.mixed_precision.set_global_policy("mixed_float16")`` instead. Calling a method or
    metric on a Keras model or a NumPy callable inside the block raises
    :class:`~xai_toolbox.errors.UnsupportedModelError`.

    Args:
        dtype: ``"float16"``, ``"bfloat16"`` or ``None`` (the device's usual choice).

    Example:
        >>> rise = xt.method("rise", model, nb_samples=4000)
        >>> with xt.autocast():
        ...     maps = rise(images, labels)
        ...     deletion = xt.metric("deletion", model)(images, labels, maps)
    """
    if dtype is not None and dtype not in DTYPES:
        raise ParameterError(f"autocast dtype must be one of {', '.join(DTYPES)} or None, got {dtype!r}")
    token = _requested.set(dtype or "auto")
    try:
        yield
    finally:
        _requested.reset(token)


def requested() -> str | None:
    """The precision asked for by the innermost :func:`autocast` block (``"auto"`` for the
    device's usual one), or ``None`` outside any block."""
    return _requested.get()
