"""Checks on user inputs that run before any model call."""

from __future__ import annotations

import math
from typing import Any

import eagerpy as ep
import numpy as np

from .backends import ModelAdapter
from .errors import (
    ExplanationShapeError,
    InputDtypeError,
    InputError,
    LayerError,
    LayoutError,
    NonFiniteInputError,
    ParameterError,
)

_LIKELY_CHANNELS = (1, 3, 4)


def dtype_name(x: Any) -> str:
    dtype = getattr(x, "dtype", None)
    name = getattr(dtype, "name", None) or str(dtype)
    return name.replace("torch.", "")


def is_floating(x: Any) -> bool:
    name = dtype_name(x)
    return name.startswith(("float", "bfloat", "half", "double"))


def is_numeric(x: Any, *, allow_bool: bool = False) -> bool:
    """Floating point or integer (booleans only when asked): not strings, objects, complex."""
    name = dtype_name(x)
    if name == "bool":
        return allow_bool
    return is_floating(x) or name.startswith(("int", "uint"))


def as_array_like(x: Any, what: str = "inputs") -> Any:
    """Lists and scalars become NumPy arrays; tensors and arrays are returned unchanged."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as exc:  # ragged nested lists, unconvertible objects
        error = InputError if what == "inputs" else ExplanationShapeError
        raise error(f"the {what} could not be read as an array: {exc}") from None


def check_inputs(adapter: ModelAdapter, inputs: Any) -> None:
    """Rank, emptiness, dtype and layout of a batch, before conversion and any model call."""
    shape = tuple(int(d) for d in inputs.shape)
    layout = "(N, C, H, W)" if adapter.channel_axis == 1 else "(N, H, W, C)"
    if len(shape) < 2:
        raise InputError(
            f"expected a batch of inputs with a leading batch axis, e.g. images {layout} for a "
            f"{adapter.display_name} model; got shape {shape} — add a batch axis with x[None]"
        )
    if shape[0] == 0:
        raise InputError("the batch is empty (shape[0] == 0); pass at least one input")
    if 0 in shape[1:]:
        raise InputError(f"the inputs have an empty axis: shape {shape}")
    if not is_floating(inputs):
        raise InputDtypeError(
            f"inputs must be floating point (float32 recommended), got dtype {dtype_name(inputs)}; "
            "convert with x.float() / tf.cast(x, tf.float32) / x.astype(np.float32)"
        )
    rank, channels = adapter.expected_input()
    if rank is not None and len(shape) != rank:
        what = {4: f"images {layout}", 3: "series", 2: "rows (N, F)"}.get(rank, f"rank {rank}")
        raise InputError(
            f"the {adapter.display_name} model expects {what} (rank {rank}); got shape {shape}"
        )
    if len(shape) == 4:
        _check_layout(adapter, shape, channels, layout)


def _check_layout(
    adapter: ModelAdapter, shape: tuple[int, ...], channels: int | None, layout: str
) -> None:
    here = shape[adapter.channel_axis]
    there = shape[-1] if adapter.channel_axis == 1 else shape[1]
    flipped = "(N, H, W, C)" if adapter.channel_axis == 1 else "(N, C, H, W)"
    if channels is not None:
        if here == channels:
            return
        if there == channels:
            raise LayoutError(
                f"the {adapter.display_name} model expects images {layout} with {channels} "
                f"channels, but got shape {shape}, which looks like {flipped}; transpose it first"
            )
        raise InputError(
            f"the {adapter.display_name} model expects {channels} channels in {layout}, got shape {shape}"
        )
    if here not in _LIKELY_CHANNELS and there in _LIKELY_CHANNELS:
        raise LayoutError(
            f"the {adapter.display_name} model takes images {layout}, but shape {shape} looks like "
            f"{flipped}; transpose it first"
        )


def has_non_finite(x: ep.Tensor) -> bool:
    """Whether ``x`` (floating point) holds a NaN or an infinity (one reduction, one host read).

    Example:
        >>> has_non_finite(ep.astensor(np.array([1.0, np.inf])))
        True
    """
    # A finite sum proves every value finite (a NaN or an infinity would propagate): one
    # reduction and one host sync in the usual case. Only a non-finite sum (which a sum of
    # huge finite values can also give, by overflow) needs the exact check: 0 * v is NaN
    # exactly when v is NaN or infinite, and a sum of zeros cannot overflow.
    with np.errstate(over="ignore", invalid="ignore"):  # NumPy would warn on what we test for
        if math.isfinite(float(x.sum().item())):
            return False
        return bool((x * 0).sum().isnan().item())


def check_finite(x: ep.Tensor, what: str = "inputs") -> None:
    if not has_non_finite(x):
        return
    raise NonFiniteInputError(f"the {what} contain NaN or infinite values; clean them first")


def check_explanations(inputs_shape: tuple[int, ...], maps_shape: tuple[int, ...], channel_axis: int) -> None:
    """Explanations must be ``(N, *positions)`` or the inputs' own shape."""
    positions = explanation_shape(inputs_shape, channel_axis)
    if tuple(maps_shape) not in (positions, tuple(inputs_shape)):
        raise ExplanationShapeError(
            f"explanations of shape {tuple(maps_shape)} do not match inputs of shape "
            f"{tuple(inputs_shape)}: expected {positions} (one value per position) or "
            f"{tuple(inputs_shape)} (one per input value)"
        )


def explanation_shape(inputs_shape: tuple[int, ...], channel_axis: int) -> tuple[int, ...]:
    """The shape of an explanation for inputs of ``inputs_shape``: channels removed.

    Example:
        >>> explanation_shape((8, 3, 32, 32), channel_axis=1)
        (8, 32, 32)
    """
    shape = tuple(int(d) for d in inputs_shape)
    if len(shape) <= 2:
        return shape
    axis = 1 if channel_axis == 1 else len(shape) - 1
    return shape[:axis] + shape[axis + 1 :]


# -- parameters ----------------------------------------------------------------------------
# Each validator returns the value normalised (Python int/float/bool) or raises
# ParameterError naming the parameter: constructors call them before storing anything.
def positive_int(name: str, value: Any) -> int:
    """An integer ≥ 1 (booleans refused).

    Example:
        >>> positive_int("steps", 10)
        10
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ParameterError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    """An integer ≥ 0 (booleans refused).

    Example:
        >>> non_negative_int("max_iter", 0)
        0
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ParameterError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def flag(name: str, value: Any) -> bool:
    """``True`` or ``False`` (not a truthy object).

    Example:
        >>> flag("absolute", True)
        True
    """
    if not isinstance(value, bool | np.bool_):
        raise ParameterError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def number(name: str, value: Any) -> float:
    """A finite real number (a baseline, a strength).

    Example:
        >>> number("baseline", 0)
        0.0
    """
    ok = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if not ok or not np.isfinite(float(value)):
        raise ParameterError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def activation(name: str, value: Any) -> str | None:
    """An output activation: ``None`` (scores as given), ``"softmax"`` or ``"sigmoid"``.

    Example:
        >>> activation("activation", "softmax")
        'softmax'
    """
    return one_of(name, value, (None, "softmax", "sigmoid"))


def layer_name(name: str, value: Any) -> str | None:
    """``None`` (the method's default layer) or a layer name.

    Raises :class:`~xai_toolbox.errors.LayerError` for anything else.

    Example:
        >>> layer_name("layer", "layer4")
        'layer4'
    """
    if value is not None and (not isinstance(value, str) or not value):
        raise LayerError(f"{name} must be a layer name (str) or None, got {value!r}")
    return value


def in_range(name: str, value: Any, low: float, high: float, *, inclusive: bool = False) -> float:
    """A real number in ``(low, high)`` (``[low, high]`` with ``inclusive``).

    Example:
        >>> in_range("noise", 0.2, 0.0, 1.0)
        0.2
    """
    ok = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if ok:
        ok = (low <= value <= high) if inclusive else (low < value < high)
    if not ok:
        brackets = "[{}, {}]" if inclusive else "({}, {})"
        raise ParameterError(f"{name} must lie in {brackets.format(low, high)}, got {value!r}")
    return float(value)


def one_of(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """One of ``choices``.

    Example:
        >>> one_of("rule", "trapezoid", ("trapezoid", "riemann_middle"))
        'trapezoid'
    """
    if value not in choices:
        raise ParameterError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def power_of_two(name: str, value: Any) -> int:
    """A power of two (the message suggests the two nearest).

    Example:
        >>> power_of_two("nb_design", 32)
        32
    """
    value = positive_int(name, value)
    if value & (value - 1):
        lower = 1 << (value.bit_length() - 1)
        raise ParameterError(
            f"{name} must be a power of two (Sobol sequences balance only then), got {value}; "
            f"try {lower} or {lower * 2}"
        )
    return value


def seed(name: str, value: Any) -> int | None:
    """``None`` (fresh randomness) or a non-negative integer, as NumPy's generators take.

    Example:
        >>> seed("seed", 0)
        0
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ParameterError(f"{name} must be None or a non-negative integer, got {value!r}")
    return int(value)
