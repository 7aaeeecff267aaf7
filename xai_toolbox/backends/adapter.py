"""The adapter contract: what every framework adapter provides, under public names.

An adapter owns everything framework-specific: moving data to the model's device, forward
passes in eval mode, gradients with respect to inputs or inner activations, layer lookup,
device-side random draws, in-place accumulation, weights (for model randomisation) and copies
of the model. Methods and metrics see only :mod:`eagerpy` tensors and this interface, which is
why one implementation of each method runs on every framework — and why a new framework (JAX,
ONNX Runtime, ...) is one plugin module: subclass :class:`ModelAdapter`, implement the abstract
methods (and the optional ones the framework can do), return it from an ``adapt_model`` hook.

What an adapter implements (one pass over the batch it is given, no retries):

* required: :meth:`~ModelAdapter.is_native`, :meth:`~ModelAdapter.to_model`,
  :meth:`~ModelAdapter.restore`, :meth:`~ModelAdapter.forward_pass`, and the class
  attributes ``framework`` and ``display_name`` (a subclass without them fails at definition);
* for gradient methods: :meth:`~ModelAdapter.differentiable_forward`,
  :meth:`~ModelAdapter.value_and_grad_pass` (and ``supports_gradients = True``);
* for CAM methods: :meth:`~ModelAdapter.layer_activations_pass`,
  :meth:`~ModelAdapter.layer_names`, :meth:`~ModelAdapter.resolve_layer`,
  :meth:`~ModelAdapter.default_layer`;
* for feature visualisation of inner units: :meth:`~ModelAdapter.differentiable_activations`;
* for model randomisation: :meth:`~ModelAdapter.weight_layers`,
  :meth:`~ModelAdapter.reinitialize`, :meth:`~ModelAdapter.clone`;
* for Guided Backprop and DeconvNet: :meth:`~ModelAdapter.relu_backward` (ReLU backward
  rules for the duration of a block);
* optional speed-ups with generic defaults: :meth:`~ModelAdapter.weighted_value_and_grad_pass`,
  :meth:`~ModelAdapter.weighted_layer_activations_pass` (compiled paths),
  :meth:`~ModelAdapter.forward_built_pass` (a chunk's batch construction, forward pass and
  scoring compiled together),
  :meth:`~ModelAdapter.from_numpy` (asynchronous uploads), :meth:`~ModelAdapter.repeated_row`
  (broadcast views), :meth:`~ModelAdapter.random_normal` (device generators),
  ``mutable_tensors`` + :meth:`~ModelAdapter.write_rows` (in-place accumulators),
  :meth:`~ModelAdapter.is_out_of_memory` + :meth:`~ModelAdapter.release_memory` (OOM retries).

What methods call (templates that retry on halves of the batch after an out-of-memory
error, then call the passes above): :meth:`~ModelAdapter.forward`,
:meth:`~ModelAdapter.value_and_grad`, :meth:`~ModelAdapter.weighted_value_and_grad`,
:meth:`~ModelAdapter.layer_activations`, :meth:`~ModelAdapter.weighted_layer_activations`,
:meth:`~ModelAdapter.forward_built`.

:func:`xai_toolbox.testing.check_adapter` runs this contract on an adapter.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import functools
import inspect
import math
import types
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

import eagerpy as ep
import numpy as np

from ..errors import (
    InputError,
    LayerError,
    ModelError,
    OutOfMemoryWarning,
    ParameterError,
    ScoreFunctionError,
    UnsupportedModelError,
    XaiToolboxError,
)

#: ``fn(outputs) -> scores``: maps model outputs ``(B, K)`` to one score per input ``(B,)``.
ScoreOf = Callable[[ep.Tensor], ep.Tensor]

#: ``draw(shapes) -> arrays``: new values for the trainable parameters of one layer, given
#: their shapes in the canonical (PyTorch, channels-first) layout; see
#: :meth:`ModelAdapter.reinitialize`.
Draw = Callable[[list[tuple[int, ...]]], list[np.ndarray]]


# -- out-of-memory retries -------------------------------------------------------------------
# A pass that runs out of memory is retried on halves of its batch. Scores, gradients and
# activations are per input (row), so the halves concatenated equal the whole. Functions that
# close over per-row data of the whole batch (the targets) see the rows being computed through
# ``current_rows()``/``rows()``: ``Targets.score`` uses it, which makes every built-in path
# splittable without the methods knowing.


@dataclass
class _MemoryState:
    """What one method/metric call learnt: the largest batch per kind of pass that fitted."""

    limits: dict[str, int] = field(default_factory=dict)
    warned: bool = False
    #: Per kind of model value ("outputs", "gradients"): a device scalar that is 0 while every
    #: value seen was finite and NaN after the first NaN or infinity (read only on failure).
    non_finite: dict[str, Any] = field(default_factory=dict)
    #: A built pass (:meth:`ModelAdapter.forward_built`) ran out of memory: the rest of the
    #: call builds, runs and finishes its chunks apart, so the forward passes can be split.
    unfused: bool = False


_memory: ContextVar[_MemoryState | None] = ContextVar("xai_toolbox_memory", default=None)
_window: ContextVar[tuple[int, int, int] | None] = ContextVar("xai_toolbox_rows", default=None)
_tracing: ContextVar[bool] = ContextVar("xai_toolbox_tracing", default=False)


@contextlib.contextmanager
def memory_scope() -> Iterator[None]:
    """Scope of one method or metric call (the base classes open it).

    Inside it, a batch size halved after an out-of-memory error stays halved for every later
    pass of the same kind (so the error is not hit again on every chunk), and the
    :class:`~xai_toolbox.errors.OutOfMemoryWarning` is given once. Contexts are per thread.

    Example:
        >>> with memory_scope():
        ...     outputs = adapter.forward(x)       # retried on halves if it runs out of memory
    """
    token = _memory.set(_MemoryState())
    try:
        yield
    finally:
        _memory.reset(token)


def _note_values(kind: str, *values: Any) -> None:
    """Remember, on the device and without a host read, whether the model's ``values`` of one
    pass held a NaN or an infinity, for :func:`model_non_finite`: ``0 · Σ v`` is NaN when one
    is (or when the sum overflows, which only values near the float limit make it do). One
    reduction, no temporary the size of ``values``."""
    state = _memory.get()
    if state is None:
        return
    for t in values:
        if t is None or "float" not in str(getattr(t, "dtype", "")):
            continue
        probe = t.sum().float32() * 0
        seen = state.non_finite.get(kind)
        state.non_finite[kind] = probe if seen is None else seen + probe


def model_non_finite() -> list[str]:
    """The kinds of model values (``"outputs"``, ``"gradients"``) that held NaN or infinite
    values in the passes of the current method or metric call (see :func:`memory_scope`).

    The base classes ask when a result is not finite, to tell a model that returned NaN from a
    plugin that made one. One host read per kind, only when asked.

    Example:
        >>> with memory_scope():
        ...     adapter.forward(x)
        ...     model_non_finite()
        []
    """
    state = _memory.get()
    if state is None:
        return []
    return [kind for kind, seen in state.non_finite.items() if not math.isfinite(float(seen.item()))]


def current_rows() -> tuple[int, int, int] | None:
    """``(lo, hi, total)`` while an adapter retries rows ``[lo, hi)`` of a batch of ``total``.

    ``None`` when the whole batch is being computed (the usual case).

    Example:
        >>> current_rows() is None       # outside a retried pass
        True
    """
    return _window.get()


def weighted_score(outputs: ep.Tensor, weights: ep.Tensor) -> ep.Tensor:
    """``Σ_k outputs[:, k] · weights[:, k]`` per row, for ``(N, K)`` outputs: the built-in score.

    Example:
        >>> weighted_score(ep.astensor(np.eye(2)), ep.astensor(np.ones((2, 2)))).numpy()
        array([1., 1.])
    """
    if outputs.ndim != 2:
        raise ScoreFunctionError(
            f"the model returned outputs of shape {tuple(outputs.shape)}; the default score needs "
            "(N, K) outputs — pass score_fn=... for other outputs"
        )
    return (outputs * weights).sum(axis=1)


# -- model outputs ---------------------------------------------------------------------------
# Models return tensors, tuples, dicts, dataclasses (Hugging Face ``ModelOutput``) or Keras dict
# outputs. Every adapter passes the raw result of each model call through
# ``ModelAdapter.select_output``, which picks the one tensor that is explained: by the
# ``output=`` selector when one is given, else the obvious one (``logits``, or the only tensor).

#: What ``output=`` accepts: ``None`` (the obvious tensor: a tensor as it is, the ``logits``
#: of a dict or dataclass, the only tensor of a tuple), a key or attribute name (``"logits"``),
#: an index into a tuple or list (``0``), or a callable ``fn(outputs) -> tensor``.
OutputSelector = str | int | Callable[[Any], Any] | None

_SHOWN_ITEMS = 6


def output_selector(name: str, value: Any) -> OutputSelector:
    """Validate an ``output=`` selector (see :data:`OutputSelector`).

    Raises :class:`~xai_toolbox.errors.ParameterError` for anything else.

    Example:
        >>> output_selector("output", "logits")
        'logits'
    """
    if value is None or callable(value) or (isinstance(value, str) and value):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    raise ParameterError(
        f"{name} must be None (automatic), a key or attribute name (str), an index (int) or a "
        f"callable fn(outputs) -> tensor; got {value!r}"
    )


def _fields(outputs: Any) -> list[tuple[str | int, Any]] | None:
    """``(key, value)`` pairs of a structured output, or ``None`` for a leaf."""
    if isinstance(outputs, Mapping):  # dicts, Hugging Face ModelOutput (its non-None fields)
        return list(outputs.items())
    if dataclasses.is_dataclass(outputs) and not isinstance(outputs, type):
        return [(f.name, getattr(outputs, f.name)) for f in dataclasses.fields(outputs)]
    if isinstance(outputs, tuple) and hasattr(outputs, "_fields"):  # named tuples
        return list(zip(outputs._fields, outputs, strict=True))
    if isinstance(outputs, tuple | list):
        return list(enumerate(outputs))
    return None


def describe_output(outputs: Any, is_tensor: Callable[[Any], bool], depth: int = 0) -> str:
    """A one-line description of a model's outputs: the structure and each tensor's shape.

    Used in the errors of :func:`select_output`, so a user sees what the model returned.

    Example:
        >>> describe_output({"logits": np.zeros((2, 10)), "aux": (np.zeros(2),)}, lambda t: isinstance(t, np.ndarray))
        "dict(logits=tensor (2, 10), aux=(tensor (2,)))"
    """
    if is_tensor(outputs):
        dims = ["N" if d is None else str(int(d)) for d in outputs.shape]
        return f"tensor ({', '.join(dims)}{',' if len(dims) == 1 else ''})"
    fields = _fields(outputs)
    if fields is None:
        return "None" if outputs is None else type(outputs).__name__
    if depth >= 2:
        return f"{type(outputs).__name__} of {len(fields)}"
    parts = [
        (f"{k}=" if isinstance(k, str) else "") + describe_output(v, is_tensor, depth + 1)
        for k, v in fields[:_SHOWN_ITEMS]
    ]
    if len(fields) > _SHOWN_ITEMS:
        parts.append(f"... {len(fields)} in all")
    inner = ", ".join(parts)
    if type(outputs) in (tuple, list):
        return f"({inner})" if type(outputs) is tuple else f"[{inner}]"
    return f"{type(outputs).__name__}({inner})"


def select_output(outputs: Any, selector: OutputSelector, is_tensor: Callable[[Any], bool]) -> Any:
    """The one tensor to explain among a model's raw ``outputs`` (see :data:`OutputSelector`).

    Without a selector: a tensor is returned as it is; a dict or dataclass with a ``logits``
    entry gives it (Hugging Face ``ModelOutput``); a tuple, list or dict holding exactly one
    tensor gives that one. Anything else raises
    :class:`~xai_toolbox.errors.UnsupportedModelError` showing the structure and the
    ``output=`` that would pick a tensor; a selector that does not fit the structure raises
    :class:`~xai_toolbox.errors.ParameterError` the same way.

    Example:
        >>> is_array = lambda t: isinstance(t, np.ndarray)
        >>> select_output({"logits": np.ones((2, 3))}, None, is_array).shape
        (2, 3)
        >>> select_output((np.ones((2, 3)), np.ones((2, 5))), 1, is_array).shape
        (2, 5)
    """
    if selector is None:
        if is_tensor(outputs):
            return outputs
        return _obvious_output(outputs, is_tensor)
    if callable(selector):
        picked = selector(outputs)
        if not is_tensor(picked):
            raise ParameterError(
                f"output= {getattr(selector, '__name__', type(selector).__name__)} returned "
                f"{describe_output(picked, is_tensor)}; it must return one tensor of the model's "
                f"framework (the model returned {describe_output(outputs, is_tensor)})"
            )
        return picked
    shown = describe_output(outputs, is_tensor)
    if is_tensor(outputs):
        raise ParameterError(
            f"output={selector!r} selects among structured outputs, but the model returns a single "
            f"{shown}; leave output=None"
        )
    fields = _fields(outputs)
    picked, found = None, False
    if isinstance(selector, str):
        named = dict(fields or [])
        if selector in named:
            picked, found = named[selector], True
        elif fields is None and hasattr(outputs, selector):
            picked, found = getattr(outputs, selector), True
    elif fields is not None and -len(fields) <= selector < len(fields):
        picked, found = fields[selector][1], True
    if not found:
        raise ParameterError(f"output={selector!r} is not in the model's outputs: {shown}; {_fix(outputs, is_tensor)}")
    if not is_tensor(picked):
        raise ParameterError(
            f"output={selector!r} is {describe_output(picked, is_tensor)}, not a tensor (the model "
            f"returned {shown}); select further with a callable, e.g. output=lambda out: ..."
        )
    return picked


def _obvious_output(outputs: Any, is_tensor: Callable[[Any], bool]) -> Any:
    fields = _fields(outputs)
    if fields is None:
        logits = getattr(outputs, "logits", None)
        if is_tensor(logits):
            return logits
        raise UnsupportedModelError(
            f"the model returned {describe_output(outputs, is_tensor)}, not a tensor; pass "
            "output=lambda out: ... returning the tensor to explain"
        )
    named = dict(fields)
    if is_tensor(named.get("logits")):
        return named["logits"]
    tensors = [v for _, v in fields if is_tensor(v)]
    if len(tensors) == 1:
        return tensors[0]
    raise UnsupportedModelError(
        f"the model returned {describe_output(outputs, is_tensor)}: which output to explain is "
        f"ambiguous; {_fix(outputs, is_tensor)}"
    )


def _fix(outputs: Any, is_tensor: Callable[[Any], bool]) -> str:
    """What to pass as ``output=``, from the tensors that the structure holds."""
    fields = _fields(outputs) or []
    choices = [repr(k) for k, v in fields if is_tensor(v)]
    if choices:
        return f"pass output= one of {', '.join(choices)} (or a callable fn(outputs) -> tensor)"
    return "pass output=lambda out: ... returning the tensor to explain"


def rows(t: Any) -> Any:
    """The rows of ``t`` that the current pass computes, when ``t`` holds one row per input.

    A function given to :meth:`ModelAdapter.value_and_grad` that closes over per-input data
    of the whole batch (weights, masks, targets) wraps it in ``rows(...)``, so it stays
    correct when the adapter splits the batch after running out of memory. Outside a split
    pass, or for data of another length, ``t`` is returned unchanged.

    Example:
        >>> fn = lambda z: (adapter.differentiable_forward(z) * rows(weights)).sum(axis=1)
    """
    window = _window.get()
    if window is None or t is None:
        return t
    lo, hi, total = window
    shape = getattr(t, "shape", None)
    if shape is not None:
        length = int(shape[0]) if len(shape) else -1
    else:
        length = len(t) if isinstance(t, list | tuple) else -1
    return t[lo:hi] if length == total else t


def to_numpy(x: Any) -> np.ndarray:
    """Any tensor — EagerPy, or a native tensor of a framework EagerPy knows — or array-like
    as a NumPy array (a host copy for device tensors).

    The one conversion every part of the toolbox uses; it asks EagerPy, so no framework is
    named here.

    Example:
        >>> to_numpy([1.0, 2.0])
        array([1., 2.])
    """
    if isinstance(x, np.ndarray):
        return x
    try:
        a = (x if isinstance(x, ep.Tensor) else ep.astensor(x)).numpy()
    except ValueError:  # not a tensor EagerPy knows: lists, scalars, array-likes
        return np.asarray(x)
    if not a.flags.writeable:  # EagerPy marks its views read-only; the frameworks' own are not
        try:
            a.flags.writeable = True
        except ValueError:
            a = a.copy()
    return a


def as_type_of(array: np.ndarray, like: Any) -> Any:
    """``array`` as the type of ``like``: a NumPy array, or a native tensor of ``like``'s
    framework on ``like``'s device (through EagerPy, so no framework is named here).

    Adapters use it to give results back in the caller's framework when the caller passed
    another framework's tensor than the model's.

    Example:
        >>> as_type_of(np.zeros(2), [1.0, 2.0])       # not a tensor: NumPy
        array([0., 0.])
    """
    if isinstance(like, np.ndarray):
        return array
    try:
        return ep.from_numpy(ep.astensor(like), array).raw
    except ValueError:  # not a tensor EagerPy knows
        return array


def float32_array(x: Any) -> np.ndarray:
    """``x`` (an array, nested lists, a number, another framework's tensor) as float32 NumPy.

    Raises :class:`~xai_toolbox.errors.InputError` for what is not numbers (strings, objects,
    complex values, ragged lists) instead of NumPy's ``ValueError``/``TypeError``.

    Example:
        >>> float32_array([[1, 2]]).dtype
        dtype('float32')
    """
    try:
        a = to_numpy(x)
        if a.dtype.kind not in "biufO":
            raise TypeError(f"dtype {a.dtype}")
        return np.ascontiguousarray(a, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise InputError(f"expected an array of real numbers, got {type(x).__name__} ({exc})") from None


def check_replacement(layer: str, produced: tuple[int, ...], given: tuple[int, ...]) -> None:
    """The activations given to replace ``layer``'s output must have the shape it produces
    (the batch axis aside).

    Example:
        >>> check_replacement("conv2", (4, 16, 8, 8), (4, 16, 8, 8))
    """
    if tuple(produced)[1:] != tuple(given)[1:]:  # batch axes may be unknown while tracing
        raise LayerError(
            f"activations of shape {_shape(given)} cannot replace the output of layer {layer!r}, "
            f"which is {_shape(produced)} for these inputs"
        )


def _shape(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def pick_default_layer(records: list[tuple[str, tuple[int, ...]]], channel_axis: int) -> str | None:
    """The last ``(name, shape)`` record with a rank-4 output of more than one position.

    Adapters record the output shape of every layer during one forward pass and ask this for
    the default CAM layer, so every framework picks by the same rule.

    Example:
        >>> pick_default_layer([("conv", (1, 8, 4, 4)), ("fc", (1, 10))], channel_axis=1)
        'conv'
    """
    for name, shape in reversed(records):
        if len(shape) != 4:
            continue
        spatial = [d for i, d in enumerate(shape) if i not in (0, channel_axis % 4)]
        if np.prod(spatial) > 1:
            return name
    return None


#: Leading tokens (class, distillation, register tokens) a token layer may carry before its
#: patch tokens.
MAX_PREFIX_TOKENS = 16


def token_grid(tokens: int, size: tuple[int, int]) -> tuple[int, int, int] | None:
    """``(prefix, h, w)``: how a token layer's ``tokens`` cover images of ``size`` ``(H, W)``:
    the fewest leading tokens (class, distillation, register tokens; at most
    :data:`MAX_PREFIX_TOKENS`, and fewer than half the patches) whose removal leaves an
    ``h × w`` grid (more than one cell) of square patches ``p × p`` tiling the image
    (``H = h·p``, ``W = w·p``); ``None`` if there is none.

    Patch tokens are in row-major order, as every ViT flattens its patch grid.

    Example:
        >>> token_grid(197, (224, 224))        # ViT-B/16: a class token and 14 × 14 patches
        (1, 14, 14)
        >>> token_grid(49, (224, 224))         # Swin's last stage: 7 × 7, no class token
        (0, 7, 7)
    """
    height, width = size
    for prefix in range(min(MAX_PREFIX_TOKENS, tokens - 2) + 1):
        n = tokens - prefix
        if prefix and 2 * prefix >= n:  # leading tokens are few beside the patches
            break
        h = max(1, round(math.sqrt(n * height / width)))
        for rows in (h - 1, h, h + 1):  # rounding of the aspect ratio
            if rows < 1 or n % rows:
                continue
            cols = n // rows
            if height % rows == 0 and width % cols == 0 and height // rows == width // cols:
                return prefix, rows, cols
    return None


def token_layers(
    records: list[tuple[str, tuple[int, ...]]], size: tuple[int, int], norms: set[str] | frozenset[str] = frozenset()
) -> list[tuple[str, int]]:
    """``(name, prefix)`` of the token layers of a transformer: the records after the last
    feature map of the image (a rank-4 output whose grid tiles it: a patch embedding, not an
    attention tensor) whose output ``(N, tokens, C)`` is a patch grid of images of ``size`` (see
    :func:`token_grid`), the normalisation layers among them (names in ``norms``) only when
    there are any. Empty for convolutional networks.

    Adapters pick the default CAM layer of a transformer among these: the last one on whose
    patch tokens the model's outputs depend. For a ViT whose head reads the class token this
    is the normalisation at the input of the last block (``blocks[-1].norm1``, the layer
    pytorch-grad-cam recommends: after it, patch tokens no longer reach the class token);
    for a model that pools its patch tokens, the final normalisation.

    Example:
        >>> token_layers([("patch", (1, 8, 4, 4)), ("norm1", (1, 17, 8)), ("fc", (1, 10))], (16, 16), {"norm1"})
        [('norm1', 1)]
    """
    last_spatial = max((i for i, (_, shape) in enumerate(records) if _tiles(shape, size)), default=-1)
    found = []
    for name, shape in records[last_spatial + 1 :]:
        grid = token_grid(int(shape[1]), size) if len(shape) == 3 else None
        if grid is not None:
            found.append((name, grid[0]))
    normalised = [(name, prefix) for name, prefix in found if name in norms]
    return normalised or found


def _tiles(shape: tuple[int, ...], size: tuple[int, int]) -> bool:
    """Whether a rank-4 output is a feature map of the image (channels first or last): a grid
    of square cells tiling it, so attention tensors ``(N, tokens, heads, d)`` are not."""
    if len(shape) != 4:
        return False
    for h, w in ((shape[2], shape[3]), (shape[1], shape[2])):
        if h and w and size[0] % h == 0 and size[1] % w == 0 and size[0] // h == size[1] // w:
            return True
    return False


def last_informative(candidates: list[tuple[str, int]], patch_gradients: dict[str, float]) -> str:
    """The last of ``candidates`` (from :func:`token_layers`) whose patch tokens received a
    non-zero gradient of the model's outputs (``patch_gradients``: largest absolute value per
    name); the last candidate when none did.

    Example:
        >>> last_informative([("a", 1), ("b", 1)], {"a": 0.3, "b": 0.0})
        'a'
    """
    for name, _ in reversed(candidates):
        if patch_gradients.get(name, 0.0) > 0.0:
            return name
    return candidates[-1][0]


def resolve_qualified(layer: str, names: list[str], display_name: str) -> str:
    """The one naming rule for layers of nested models: ``layer`` is a full qualified name from
    ``names`` (``"outer/inner"`` or ``"outer.inner"``), or the last part of exactly one of them.

    Raises :class:`~xai_toolbox.errors.LayerError` for an ambiguous short name (listing the
    candidates) or an unknown one (listing the available names).

    Example:
        >>> resolve_qualified("conv", ["block/conv", "fc"], "Keras")
        'block/conv'
    """
    if layer in names:
        return layer
    short = [n for n in names if _last_part(n) == layer]
    if len(short) == 1:
        return short[0]
    if len(short) > 1:
        raise LayerError(
            f"layer name {layer!r} is ambiguous in this {display_name} model; use one of: "
            + ", ".join(repr(n) for n in short)
        )
    shown = ", ".join(repr(n) for n in names[:40])
    more = f" (and {len(names) - 40} more)" if len(names) > 40 else ""
    raise LayerError(f"layer {layer!r} not found in the {display_name} model; available layers: {shown}{more}")


def _last_part(name: str) -> str:
    return name.replace(".", "/").rsplit("/", 1)[-1]


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 values of ``shape``, by the Box–Muller transform of uniforms.

    NumPy's ``standard_normal`` (a ziggurat) draws one value at a time; this is one uniform
    draw and a few vectorised ufuncs over whole arrays, about 2.4× faster. Each pair ``(u, v)``
    of uniforms gives the two independent normals ``√(−2 ln(1 − u)) · (cos 2πv, sin 2πv)``;
    ``1 − u`` lies in ``(0, 1]``, so the logarithm is finite and the largest value is
    √(2 · 24 ln 2) ≈ 5.8.

    Example:
        >>> standard_normal(np.random.default_rng(0), (2, 3)).shape
        (2, 3)
    """
    count = math.prod(shape)
    half = (count + 1) // 2
    uniform = rng.random(2 * half, dtype=np.float32)
    radius, angle = uniform[:half], uniform[half:]
    np.subtract(np.float32(1.0), radius, out=radius)
    np.log(radius, out=radius)
    np.multiply(radius, np.float32(-2.0), out=radius)
    np.sqrt(radius, out=radius)
    np.multiply(angle, np.float32(2.0 * np.pi), out=angle)
    out = np.empty(2 * half, dtype=np.float32)
    np.cos(angle, out=out[:half])
    np.sin(angle, out=out[half:])
    np.multiply(out[:half], radius, out=out[:half])
    np.multiply(out[half:], radius, out=out[half:])
    return out[:count].reshape(shape)


def item_seed(seed: int, item: int) -> int:
    """A 31-bit seed for item ``item``, derived from ``seed`` (independent streams per item).

    Example:
        >>> item_seed(0, 1) != item_seed(0, 2)
        True
    """
    return int(np.random.SeedSequence([seed, item]).generate_state(1)[0] >> 1)


#: The backward rules of :meth:`ModelAdapter.relu_backward`.
RELU_RULES = ("guided", "deconv")


def check_relu_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`RELU_RULES`, else a ``ValueError`` naming them (adapters
    implementing :meth:`ModelAdapter.relu_backward` call it first).

    Example:
        >>> check_relu_rule("guided")
        'guided'
    """
    if rule not in RELU_RULES:
        raise ValueError(f"ReLU backward rule must be one of {RELU_RULES}, got {rule!r}")
    return rule


# -- built passes (ModelAdapter.forward_built) -------------------------------------------------
@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """The block runs a function that an adapter is tracing into a compiled graph (the ``build``
    and ``finish`` of :meth:`ModelAdapter.forward_built`, inside a ``tf.function``).

    Inside it, :func:`~xai_toolbox.extend.on_device` constants are made for the trace (they
    become part of the graph) instead of being cached for later calls, where a traced tensor
    would be of no use. An adapter that traces built passes runs ``build`` and ``finish`` in
    this block; nothing else needs it.

    Example:
        >>> with tracing():
        ...     built = build(*symbolic_tensors)        # inside the adapter's traced function
    """
    token = _tracing.set(True)
    try:
        yield
    finally:
        _tracing.reset(token)


def is_tracing() -> bool:
    """Whether the calling code runs inside :func:`tracing` (see :func:`~xai_toolbox.extend.on_device`)."""
    return _tracing.get()


def run_built(
    forward: Callable[[ep.Tensor], ep.Tensor],
    build: Callable[..., Any],
    tensors: tuple[ep.Tensor, ...],
    finish: Callable[..., Any] | None = None,
) -> Any:
    """What :meth:`ModelAdapter.forward_built` computes, step by step: ``build(*tensors)`` gives
    the model inputs (or a tuple ``(inputs, *extras)``), ``forward`` runs the model on them, and
    ``finish(outputs, *extras)`` gives the result (without ``finish``: the outputs, or
    ``(outputs, *extras)`` when ``build`` returned extras).

    The generic default of :meth:`ModelAdapter.forward_built_pass` calls it with the adapter's
    :meth:`~ModelAdapter.forward`; an adapter that compiles built passes can call it inside its
    compiled function with the model's own forward.

    Example:
        >>> run_built(adapter.forward, lambda rows, m: rows * m, (rows, masks))     # the outputs
    """
    inputs, extras = split_built(build(*tensors))
    return finish_built(finish, forward(inputs), extras)


def split_built(built: Any) -> tuple[Any, tuple[Any, ...]]:
    """``(inputs, extras)`` of what a ``build`` returned: a tensor, or a tuple ``(inputs, *extras)``.

    Example:
        >>> split_built((inputs, masks))
        (inputs, (masks,))
    """
    if isinstance(built, tuple | list):
        if not built:
            raise ParameterError("build returned an empty tuple; it must return the model inputs first")
        return built[0], tuple(built[1:])
    return built, ()


def finish_built(finish: Callable[..., Any] | None, values: Any, extras: tuple[Any, ...]) -> Any:
    """``finish(values, *extras)``; without ``finish``: ``values``, or ``(values, *extras)``.

    Example:
        >>> finish_built(None, outputs, (masks,))
        (outputs, masks)
    """
    if finish is not None:
        return finish(values, *extras)
    return (values, *extras) if extras else values


#: Values a ``build`` or ``finish`` may close over: they become part of the compiled pass's key.
_PLAIN_VALUES = (
    type(None), bool, int, float, complex, str, bytes, range, type, types.ModuleType, enum.Enum, np.generic
)
#: Functions and callables that are the same function whatever the call (keyed by identity).
_PLAIN_CALLABLES = (types.BuiltinFunctionType, np.ufunc)
_MAX_SIGNATURE_DEPTH = 4


def built_signature(fn: Callable[..., Any] | None, what: str, is_tensor: Callable[[Any], bool], depth: int = 0) -> Hashable:
    """A hashable value that identifies what ``fn`` computes for given tensors: its code, and
    the Python values it closes over or takes as defaults (functions among them, recursively).

    :meth:`ModelAdapter.forward_built` keys its compiled passes by it, so two closures of one
    ``def`` with other numbers in them get passes of their own. A tensor or array among those
    values raises :class:`~xai_toolbox.errors.ParameterError` (a compiled pass would keep the
    first one it saw for every later chunk: pass it as one of the tensors), and so does any
    other object (an adapter, a method object, a dict), whose content could change unseen:
    read what is needed from it into a local number, string or tuple first.

    Example:
        >>> built_signature(lambda rows, m: rows * m, "build", adapter.is_native) is not None
        True
    """
    if fn is None:
        return None
    if isinstance(fn, functools.partial):
        return (
            "partial",
            built_signature(fn.func, what, is_tensor, depth + 1),
            tuple(_built_value(a, f"an argument of {what}", is_tensor, depth) for a in fn.args),
            tuple(sorted((k, _built_value(v, f"{what}'s {k}", is_tensor, depth)) for k, v in fn.keywords.items())),
        )
    if isinstance(fn, _PLAIN_CALLABLES):
        return fn
    if inspect.ismethod(fn) or not isinstance(fn, types.FunctionType):
        raise ParameterError(
            f"{what} must be a function (def or lambda) or a functools.partial of one, got "
            f"{type(fn).__name__}: a bound method or a callable object carries an object whose "
            "content a compiled pass cannot follow"
        )
    code = fn.__code__
    if depth >= _MAX_SIGNATURE_DEPTH:  # a local function calling itself: its code is enough
        return code
    values = []
    for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=True):
        try:
            value = cell.cell_contents
        except ValueError:  # a name assigned later in the enclosing function
            value = None
        values.append(_built_value(value, f"the variable {name!r} that {what} uses", is_tensor, depth))
    defaults = tuple(_built_value(v, f"a default of {what}", is_tensor, depth) for v in fn.__defaults__ or ())
    keywords = tuple(
        sorted((k, _built_value(v, f"a default of {what}", is_tensor, depth)) for k, v in (fn.__kwdefaults__ or {}).items())
    )
    return (code, tuple(values), defaults, keywords)


def _built_value(value: Any, where: str, is_tensor: Callable[[Any], bool], depth: int) -> Hashable:
    if isinstance(value, ep.Tensor | np.ndarray) or is_tensor(value):
        raise ParameterError(
            f"{where} is a tensor: pass it to forward_built as one of the tensors (a compiled pass "
            "would use the first value it saw for every later chunk)"
        )
    if isinstance(value, _PLAIN_VALUES):
        return (type(value), value)  # 1 and True, 0 and 0.0 are equal keys otherwise
    if isinstance(value, tuple | frozenset):
        return (type(value), tuple(_built_value(v, where, is_tensor, depth) for v in value))
    if callable(value) and not isinstance(value, type):
        return built_signature(value, where, is_tensor, depth + 1)
    raise ParameterError(
        f"{where} is a {type(value).__name__}: build and finish may use numbers, strings, "
        "booleans, None, tuples of them and functions (the key of their compiled pass); read "
        "what they need from other objects into such variables first, and pass tensors as arguments"
    )


#: Above this many runs of equal items a gather is cheaper than concatenating views.
_MAX_VIEW_RUNS = 8


class ModelAdapter(ABC):
    """Wraps one model of one framework behind the interface the methods use.

    All tensors in and out are :class:`eagerpy.Tensor` on the model's device. See the module
    documentation for which methods a new adapter must implement.

    Example:
        >>> class MyAdapter(xt.extend.ModelAdapter):
        ...     framework = "myfw"
        ...     display_name = "MyFramework"
        ...     def __init__(self, model): super().__init__(model, channel_axis=1)
        ...     def is_native(self, x): ...
        ...     def to_model(self, x): ...
        ...     def restore(self, t, like): ...
        ...     def forward_pass(self, x): ...
    """

    #: Canonical framework name, as in ``framework=`` and ``--framework`` ("torch", "tf", ...).
    framework: ClassVar[str]
    #: Name of the framework as users read it in messages ("PyTorch", "TensorFlow/Keras").
    display_name: ClassVar[str]
    #: Whether the model can be differentiated (gradient methods need it).
    supports_gradients: ClassVar[bool] = True
    #: Whether the model has inner layers to capture (CAM methods need them).
    supports_layers: ClassVar[bool] = True
    #: Whether :func:`xai_toolbox.autocast` can run the model's forward passes in mixed precision.
    supports_autocast: ClassVar[bool] = False
    #: Whether this framework's tensors can be written in place (see :meth:`write_rows`).
    mutable_tensors: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls):
            return
        missing = [a for a in ("framework", "display_name") if not isinstance(getattr(cls, a, None), str)]
        if missing:
            raise TypeError(
                f"{cls.__qualname__} must set the class attribute(s) {', '.join(missing)} "
                "(strings: the canonical framework name and the name shown in messages)"
            )

    #: The ``output=`` selector of this adapter (see :data:`OutputSelector`): which tensor
    #: among the model's outputs is explained. Set by :func:`~xai_toolbox.adapt`.
    output: OutputSelector = None

    def __init__(self, model: Any, channel_axis: int) -> None:
        self.model = model
        #: Axis of the channels in image (rank 4) and series (rank 3) inputs.
        self.channel_axis = channel_axis

    def select_output(self, outputs: Any) -> Any:
        """The native tensor to explain among the raw ``outputs`` of one model call, by
        :attr:`output` (see :func:`select_output`). Adapters call it on the result of every
        model call (forward, differentiable and layer passes), so methods only see tensors.

        Example:
            >>> logits = self.select_output(self.model(x.raw))
        """
        return select_output(outputs, self.output, self.is_native)

    def with_output(self, output: OutputSelector) -> ModelAdapter:
        """This adapter with another ``output`` selector: a shallow copy sharing the model (and
        its compiled passes), or ``self`` when the selector is the same.

        Example:
            >>> adapter.with_output("logits").output
            'logits'
        """
        output = output_selector("output", output)
        if output is self.output:
            return self
        other = copy.copy(self)
        other.output = output
        return other

    # == speed options ========================================================================
    #: Whether :meth:`configure` accepts ``compile=True`` (see :func:`~xai_toolbox.adapt`).
    supports_compile: ClassVar[bool] = False
    #: The ``memory_format`` values :meth:`configure` accepts (``"auto"`` always).
    memory_formats: ClassVar[tuple[str, ...]] = ("auto",)
    #: Compile the model's passes (``torch.compile``, XLA): set by :meth:`configure`.
    compile: bool = False
    #: Layout of image batches in the model's passes: set by :meth:`configure`.
    memory_format: str = "auto"

    def configure(self, *, compile: bool = False, memory_format: str = "auto") -> ModelAdapter:
        """This adapter with speed options, as a shallow copy sharing the model (``self`` when
        nothing changes); what :func:`~xai_toolbox.adapt` calls.

        Args:
            compile: compile the forward and gradient passes (an adapter with
                :attr:`supports_compile`); the first call of each input shape pays for it.
            memory_format: how image batches are laid out in memory for the model, among
                :attr:`memory_formats` (``"auto"``: the adapter's choice).

        Raises :class:`~xai_toolbox.errors.ParameterError` for a value this adapter cannot
        honour (never ignored silently).

        Example:
            >>> fast = adapter.configure(compile=True)
        """
        if not isinstance(compile, bool):
            raise ParameterError(f"compile must be True or False, got {compile!r}")
        if compile and not self.supports_compile:
            raise ParameterError(f"compile=True: {self.display_name} models are not compiled by this toolbox")
        if memory_format not in self.memory_formats:
            raise ParameterError(
                f"memory_format must be one of {', '.join(map(repr, self.memory_formats))} for a "
                f"{self.display_name} model, got {memory_format!r}"
            )
        if (compile, memory_format) == (self.compile, self.memory_format):
            return self
        other = copy.copy(self)
        other.compile, other.memory_format = compile, memory_format
        return other

    # == data =================================================================================
    @abstractmethod
    def is_native(self, x: Any) -> bool:
        """Whether ``x`` is a tensor of this adapter's framework."""

    @abstractmethod
    def to_model(self, x: Any) -> ep.Tensor:
        """Convert a native tensor or NumPy array to a float32 tensor on the model's device."""

    @abstractmethod
    def restore(self, t: ep.Tensor, like: Any) -> Any:
        """Return ``t`` with the type and device of ``like`` (a native tensor or NumPy array)."""

    def to_numpy(self, t: Any) -> np.ndarray:
        """``t`` (an EagerPy or native tensor) as a NumPy array on the host."""
        return to_numpy(t)

    def from_numpy(self, like: ep.Tensor, a: np.ndarray) -> ep.Tensor:
        """A host array (indices, low-resolution masks, constants) as a tensor beside ``like``.

        Called inside chunk loops: an adapter for an asynchronous device overrides it so the
        copy does not wait for the work queued before it (PyTorch on CUDA stages it in pinned
        memory).
        """
        return ep.from_numpy(like, np.ascontiguousarray(a))

    def repeated_row(self, x: ep.Tensor, item: int, count: int) -> ep.Tensor | None:
        """Row ``item`` of ``x`` repeated ``count`` times as a broadcast view, or ``None`` where
        the framework has no such views (then rows are gathered)."""
        return None

    def take_rows(self, x: ep.Tensor, items: np.ndarray) -> ep.Tensor:
        """``x[items]`` with a NumPy index (repeats allowed), on ``x``'s device, for reading.

        A chunk of perturbations repeats each image many times; consecutive repeats come as
        views where the framework has them (:meth:`repeated_row`), which saves a full-size
        copy and an index upload per chunk.

        Example:
            >>> adapter.take_rows(x, np.array([0, 0, 1]))      # (3, *x.shape[1:])
        """
        items = np.asarray(items)
        step = np.diff(items)
        if len(items) and np.all(step == 1):
            return x[int(items[0]) : int(items[-1]) + 1]
        if len(items) and np.all(step >= 0):
            starts = np.flatnonzero(np.r_[True, step != 0])
            if len(starts) <= _MAX_VIEW_RUNS:
                stops = np.r_[starts[1:], len(items)]
                parts = [self.repeated_row(x, int(items[a]), int(b - a)) for a, b in zip(starts, stops, strict=True)]
                if all(p is not None for p in parts):
                    return parts[0] if len(parts) == 1 else ep.concatenate(parts, axis=0)  # type: ignore[return-value]
        return x[self.from_numpy(x, items.astype(np.int64))]

    def broadcast_rows(self, x: ep.Tensor, items: np.ndarray) -> ep.Tensor:
        """``x[items]`` for an element-wise product with per-pair tensors of ``len(items)`` rows.

        When every pair belongs to one item (most chunks of a method with many samples per
        image), that item's row alone, ``(1, ...)``, which broadcasts in the product: frameworks
        without broadcast views then skip a full-size gather per chunk. Otherwise
        :meth:`take_rows`.
        """
        items = np.asarray(items)
        if len(items) and items[0] == items[-1] and np.all(items == items[0]):
            return x[int(items[0]) : int(items[0]) + 1]
        return self.take_rows(x, items)

    def write_rows(self, buffer: Any, index: Any, values: Any, *, add: bool = False) -> None:
        """``buffer[index] = values`` (or ``+=`` with ``add``), native tensors, in place.

        Only called when :attr:`mutable_tensors` is true: accumulators then write into one
        buffer allocated once instead of keeping a tensor per chunk (see
        :class:`xai_toolbox.extend.PairScores`).
        """
        raise UnsupportedModelError(f"{self.display_name} tensors cannot be written in place")

    def random_normal(self, like: ep.Tensor, shape: tuple[int, ...], seed: int | None) -> ep.Tensor:
        """Standard normal float32 values of ``shape`` beside ``like``, reproducible for a seed.

        The default draws on the host with NumPy and copies once; adapters override it to use
        the framework's own device generator (no host copy). ``seed=None`` draws fresh values.
        """
        rng = np.random.default_rng(seed)
        return self.from_numpy(like, standard_normal(rng, shape))

    # == model: what methods call ============================================================
    # These templates retry on halves of the batch when the framework runs out of memory
    # (see ``_split_on_oom``), then call the ``*_pass`` methods that adapters implement.
    def forward(self, x: ep.Tensor) -> ep.Tensor:
        """Model outputs for ``x`` (no gradient tracking, eval mode).

        Retried on halves of ``x`` if the framework runs out of memory.
        """
        (outputs,) = self._split_on_oom("forward", x, lambda part: (self.forward_pass(part),))
        _note_values("outputs", outputs)
        return outputs

    def value_and_grad(
        self, fn: Callable[[ep.Tensor], ep.Tensor], x: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor]:
        """``fn(x)`` (shape ``(B,)``) and the gradient of ``fn(x).sum()`` with respect to ``x``.

        ``fn`` may call :meth:`differentiable_forward` and any EagerPy operation; it must
        score each row of ``x`` on its own, because the batch is split into halves if the
        framework runs out of memory (wrap per-row data it closes over in :func:`rows`;
        :class:`~xai_toolbox.extend.Targets` does so itself). Parameters of the model never
        receive a gradient.
        """
        values, grads = self._split_on_oom("gradient", x, lambda part: self.value_and_grad_pass(fn, part))
        _note_values("gradients", grads)  # values are fn's (a score_fn's), not only the model's
        return values, grads

    def weighted_value_and_grad(self, x: ep.Tensor, weights: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        """The built-in score ``Σ_k outputs[:, k] · weights[:, k]`` of each row of ``x`` and
        its gradient with respect to ``x``: :meth:`value_and_grad` for the score every gradient
        method uses unless given a ``score_fn``.

        A separate entry point because its only inputs are tensors, so an adapter can compile
        the forward and the backward pass together, once per input shape (the Keras adapter
        does). Retried on halves of ``x`` if the framework runs out of memory.
        """
        values, grads = self._split_on_oom(
            "gradient", x, lambda part: self.weighted_value_and_grad_pass(part, rows(weights))
        )
        _note_values("outputs", values)  # weighted sums of the outputs: NaN iff one is not finite
        _note_values("gradients", grads)
        return values, grads

    def layer_activations(
        self, x: ep.Tensor, layer: str, score_of: ScoreOf | None = None
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        """Activations of ``layer`` for ``x``, their gradient, and the model outputs.

        With ``score_of`` the gradient of ``score_of(outputs).sum()`` with respect to the
        activations is returned too (else ``None``). Activations keep the framework's own
        layout (channels at :attr:`channel_axis`). Retried on halves of ``x`` if the
        framework runs out of memory.
        """
        kind = "forward" if score_of is None else "gradient"
        acts, grads, outputs = self._split_on_oom(
            kind, x, lambda part: self.layer_activations_pass(part, layer, score_of)
        )
        _note_values("outputs", outputs)
        _note_values("gradients", grads)
        return acts, grads, outputs

    def weighted_layer_activations(
        self, x: ep.Tensor, layer: str, weights: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        """:meth:`layer_activations` for the built-in score ``Σ_k outputs[:, k] · weights[:, k]``:
        tensors only, so an adapter can compile it (see :meth:`weighted_value_and_grad`)."""
        acts, grads, outputs = self._split_on_oom(
            "gradient", x, lambda part: self.weighted_layer_activations_pass(part, layer, rows(weights))
        )
        _note_values("outputs", outputs)
        _note_values("gradients", grads)
        return acts, grads, outputs

    def forward_with_activations(self, x: ep.Tensor, layer: str, activations: ep.Tensor) -> ep.Tensor:
        """Model outputs for ``x`` with ``layer``'s output replaced by ``activations`` (one row
        per row of ``x``, in the shape and layout the layer produces): what the rest of the
        network makes of given feature maps. Ablation-CAM ablates channels this way; CRAFT
        reads concept activations back through the head ``h``.

        Layers before ``layer`` still run on ``x`` (any input of the right shape will do when
        only the head matters), so it works for every architecture, nested or not. Retried
        on halves of ``x`` if the framework runs out of memory.

        Example:
            >>> ablated = acts * keep_channel_mask                     # (B, K, h, w) / (B, h, w, K)
            >>> outputs = adapter.forward_with_activations(x, "layer4", ablated)
        """
        (outputs,) = self._split_on_oom(
            "forward", x, lambda part: (self.forward_with_activations_pass(part, layer, rows(activations)),)
        )
        _note_values("outputs", outputs)
        return outputs

    def forward_built(
        self,
        build: Callable[..., Any],
        *tensors: ep.Tensor,
        finish: Callable[..., Any] | None = None,
        key: Hashable = (),
    ) -> Any:
        """One chunk of a perturbation method as one pass: ``build(*tensors)`` makes the model
        inputs on the device, the model runs on them (no gradient tracking, eval mode), and
        ``finish(outputs, *extras)`` makes what the method keeps — which an adapter may compile
        together, once per input shape (see :func:`run_built` for exactly what is computed).

        ``build`` returns the model inputs, or a tuple ``(inputs, *extras)`` whose extras (masks,
        rows of per-image data) are passed on to ``finish``; without ``finish`` the result is
        the outputs, or ``(outputs, *extras)``. Both are pure EagerPy functions of the tensors
        they are given: whatever changes from chunk to chunk (rows, indices, low-resolution
        masks) comes in as one of ``tensors`` — axis 0 of each may differ between chunks
        without a new trace, so use ``-1`` rather than ``t.shape[0]`` in reshapes — and they may
        close over numbers, strings, booleans, ``None``, tuples of them and other functions
        only, which key the compiled pass with their code (see :func:`built_signature`; a
        tensor or any other object raises :class:`~xai_toolbox.errors.ParameterError`).
        ``key`` adds a hashable value for anything else they depend on. They must not read
        values back to the host (``.numpy()``, ``float(t)``) or upload with
        :meth:`from_numpy` (do that outside); :func:`~xai_toolbox.extend.on_device`
        constants and the toolbox's operations (:func:`~xai_toolbox.extend.perturb`,
        :func:`~xai_toolbox.extend.resize`, :func:`~xai_toolbox.extend.matmul`, ...) are fine.

        The Keras adapter on TensorFlow compiles build, model and finish into one
        ``tf.function`` whose batch axes are unknown (the chunks of a call, a smaller last one
        included, share one trace; the ``traces`` counter counts it; the model runs through the
        forward pass's own trace), with build compiled by XLA for large inputs; other adapters
        run the three steps in turn. If the
        compiled pass runs out of memory, the rest of the call builds, runs and finishes
        apart, the forward passes retried on halves as :meth:`forward` does.

        Example:
            >>> def build(rows, masks):                    # (1 or B, C, H, W), (B, H, W)
            ...     return xe.perturb(rows, masks, 1, "inpainting", 0.0), masks
            >>> def finish(outputs, masks):                # outputs (B, K)
            ...     return outputs[:, 3], masks
            >>> scores, masks = adapter.forward_built(build, rows, masks, finish=finish)
        """
        for i, t in enumerate(tensors):
            if not isinstance(t, ep.Tensor):
                raise ParameterError(
                    f"forward_built takes EagerPy tensors after build; argument {i + 1} is a "
                    f"{type(t).__name__} (numbers belong in build's closure, arrays in from_numpy)"
                )
        try:
            hash(key)
        except TypeError:
            raise ParameterError(f"key must be hashable, got {type(key).__name__}") from None
        signature = (
            key, built_signature(build, "build", self.is_native), built_signature(finish, "finish", self.is_native)
        )
        state = _memory.get()
        if state is None or not state.unfused:
            try:
                result, check = self.forward_built_pass(signature, build, tensors, finish)
            except Exception as exc:
                if not self.is_out_of_memory(exc):
                    raise
            else:
                if check is not None:
                    _note_values("outputs", check)
                return result
            # Out of memory: from now on apart, outside the ``except`` block so the error's
            # frames (and the tensors they hold) are released first.
            if state is not None:
                state.unfused = True
            self.release_memory()
        return run_built(self.forward, build, tensors, finish)

    # == model: what adapters implement (one pass over the batch given) =====================
    @abstractmethod
    def forward_pass(self, x: ep.Tensor) -> ep.Tensor:
        """Model outputs ``(B, K)`` for the whole of ``x`` in one pass (see :meth:`forward`)."""

    def differentiable_forward(self, x: ep.Tensor) -> ep.Tensor:
        """Model outputs for ``x`` inside :meth:`value_and_grad` (gradients tracked)."""
        raise UnsupportedModelError(self.no_gradients_message())

    def differentiable_activations(self, x: ep.Tensor, layer: str) -> tuple[ep.Tensor, ep.Tensor]:
        """``layer``'s activations for ``x`` and the model outputs, inside
        :meth:`value_and_grad` (gradients tracked): what a score computed from an inner layer
        (a channel's mean, a direction in feature space) is differentiated through with
        respect to the inputs. Activations keep the framework's layout (channels at
        :attr:`channel_axis`).

        Adapters with gradients and layers implement it; the default raises
        :class:`~xai_toolbox.errors.UnsupportedModelError`.

        Example:
            >>> def channel_mean(z):
            ...     acts, _ = adapter.differentiable_activations(z, "layer4")
            ...     return xe.channels_first(acts, adapter.channel_axis)[:, 7].mean(axis=(1, 2))
            >>> values, grads = adapter.value_and_grad(channel_mean, x)     # grads like x
        """
        if not self.supports_gradients:
            raise UnsupportedModelError(self.no_gradients_message())
        raise UnsupportedModelError(self.no_layers_message())

    def value_and_grad_pass(
        self, fn: Callable[[ep.Tensor], ep.Tensor], x: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor]:
        """One pass of :meth:`value_and_grad`."""
        raise UnsupportedModelError(self.no_gradients_message())

    def weighted_value_and_grad_pass(self, x: ep.Tensor, weights: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        """One pass of :meth:`weighted_value_and_grad`; override to compile it."""
        return self.value_and_grad_pass(lambda z: weighted_score(self.differentiable_forward(z), weights), x)

    def layer_activations_pass(
        self, x: ep.Tensor, layer: str, score_of: ScoreOf | None
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        """One pass of :meth:`layer_activations`."""
        raise UnsupportedModelError(self.no_layers_message())

    def weighted_layer_activations_pass(
        self, x: ep.Tensor, layer: str, weights: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        """One pass of :meth:`weighted_layer_activations`; override to compile it."""
        return self.layer_activations_pass(x, layer, lambda outputs: weighted_score(outputs, weights))

    def forward_with_activations_pass(self, x: ep.Tensor, layer: str, activations: ep.Tensor) -> ep.Tensor:
        """One pass of :meth:`forward_with_activations`."""
        raise UnsupportedModelError(self.no_layers_message())

    def forward_built_pass(
        self,
        key: Hashable,
        build: Callable[..., Any],
        tensors: tuple[ep.Tensor, ...],
        finish: Callable[..., Any] | None,
    ) -> tuple[Any, ep.Tensor | None]:
        """One pass of :meth:`forward_built`: ``(result, check)``; override to compile it.

        ``key`` identifies ``build`` and ``finish`` (their code, what they close over and the
        caller's key; see :func:`built_signature`): a pass compiled for one key, input shapes
        and dtypes (axis 0 aside) serves every later call with equal ones. ``check`` is a scalar
        tensor that is not finite when the model's outputs were not (``outputs.sum() * 0``), or
        ``None`` when the outputs went through :meth:`forward`, which checks them itself. The
        default runs :func:`run_built` with :meth:`forward`.

        Example:
            >>> result, check = adapter.forward_built_pass(key, build, (rows, masks), None)
        """
        return run_built(self.forward, build, tensors, finish), None

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the framework's out-of-memory error (retried on a smaller batch)."""
        return isinstance(exc, MemoryError)

    def release_memory(self) -> None:
        """Called after an out-of-memory error, before the retry (e.g. empty a GPU cache)."""
        return None

    # == gradient rules (Guided Backprop, DeconvNet) ==========================================
    @contextlib.contextmanager
    def relu_backward(self, rule: str) -> Iterator[None]:
        """Inside the block, the gradients this adapter computes pass every ReLU of the model
        backwards by ``rule`` instead of by its derivative; the forward pass is unchanged.

        With ``z`` the ReLU's input and ``R`` the gradient arriving at its output, the value
        sent back to ``z`` is ``R · 1[z > 0]`` normally, ``relu(R) · 1[z > 0]`` for
        ``"guided"`` (Springenberg et al., 2015) and ``relu(R)`` for ``"deconv"`` (Zeiler &
        Fergus, 2014). Other activations keep their ordinary gradient. The model is left
        exactly as it was when the block ends, also on errors, and gradients outside the
        block (other threads' included) are not affected. A model in which no ReLU can be
        reached raises :class:`~xai_toolbox.errors.UnsupportedModelError` (rather than giving
        the plain gradient under another name). Adapters that cannot apply such rules keep
        this default, which raises it at once.

        Example:
            >>> with adapter.relu_backward("guided"):
            ...     grads = targets.input_gradient(adapter, x)
        """
        check_relu_rule(rule)
        raise UnsupportedModelError(
            f"the backward pass of a {self.display_name} model's ReLUs cannot be changed by this "
            "toolbox (Guided Backprop and DeconvNet need it: PyTorch and Keras models can)"
        )
        yield  # pragma: no cover  (a generator, for contextmanager)

    # == layers ===============================================================================
    def layer_names(self) -> list[str]:
        """Names accepted by ``layer=``, in model order (qualified names for nested models)."""
        return []

    def resolve_layer(self, layer: str) -> str:
        """The qualified name of ``layer`` (a full name, or the unique last part of one), or a
        :class:`~xai_toolbox.errors.LayerError` listing the available names.

        One rule for every method and metric that takes layer names (CAMs' ``layer=``, model
        randomisation's ``layers=``).
        """
        if not isinstance(layer, str) or not layer:
            raise LayerError(f"a layer name must be a non-empty string, got {layer!r}")
        return resolve_qualified(layer, self.layer_names(), self.display_name)

    def default_layer(self, x: ep.Tensor) -> str:
        """The default CAM layer for inputs like ``x``: the last layer whose output is spatial
        (rank 4 with more than one position) — or, for a transformer, the last token layer
        whose patch tokens the outputs depend on (see :func:`token_layers`)."""
        raise UnsupportedModelError(self.no_layers_message())

    def unknown_layer(self, layer: str) -> LayerError:
        """The error for a layer name the model does not have (listing the available ones)."""
        try:
            resolve_qualified(layer, self.layer_names(), self.display_name)
        except LayerError as error:
            return error
        return LayerError(f"layer {layer!r} cannot be used in the {self.display_name} model")

    # == weights (model randomisation) ========================================================
    def weight_layers(self) -> list[str]:
        """Qualified names of the layers that own trainable parameters, in model order."""
        raise UnsupportedModelError(
            f"a {self.display_name} model exposes no weights to this toolbox (model "
            "randomisation needs them)"
        )

    def reinitialize(self, layers: list[str], draw: Draw) -> None:
        """Re-initialise the trainable parameters of ``layers`` (from :meth:`weight_layers`), in
        place and in the order given: for each layer, ``draw(shapes)`` returns new values for its
        parameters given their shapes in the canonical layout (PyTorch's: convolution kernels
        ``(out, in, *k)``, dense weights ``(out, in)``), which the adapter converts to its own.
        Drawing in one layout is what gives twin models identical random weights."""
        raise UnsupportedModelError(
            f"a {self.display_name} model cannot be re-initialised by this toolbox"
        )

    def clone(self) -> ModelAdapter:
        """An adapter of an independent copy of the model (weights included)."""
        raise UnsupportedModelError(f"a {self.display_name} model cannot be copied by this toolbox")

    # == model facts ==========================================================================
    def output_width(self) -> int | None:
        """Number of model outputs if it can be known without running the model."""
        return None

    def last_parameter(self) -> Any:
        """The model's last parameter, if it has ``parameters()`` (else ``None``).

        Part of the key under which a probed output width is remembered: replacing the
        model's head changes it.
        """
        parameters = getattr(self.model, "parameters", None)
        if not callable(parameters):
            return None
        last = None
        for last in parameters():  # noqa: B007  (only the last one is wanted)
            pass
        return last

    def expected_input(self) -> tuple[int | None, int | None]:
        """``(rank, channels)`` of the inputs the model expects, where statically known."""
        return None, None

    def expected_image_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the images the model declares it takes, where statically known."""
        return None

    @contextlib.contextmanager
    def preserved(self) -> Iterator[None]:
        """Put the model in inference mode for a call and restore its state afterwards."""
        yield

    def model_state(self) -> Any:
        """A comparable snapshot of what a call must leave as it found it — weights, and where
        the framework has them, training flags and accumulated gradients — for the contract
        checks of :mod:`xai_toolbox.testing`. ``None``: nothing the toolbox can read."""
        return None

    # == failures =============================================================================
    @contextlib.contextmanager
    def calling_model(self, x: Any, doing: str = "ran") -> Iterator[None]:
        """Turn the model's own exceptions into :class:`~xai_toolbox.errors.ModelError`
        (naming the input shape); ``doing="differentiated"`` for backward passes.

        Toolbox errors and out-of-memory errors pass through unchanged.

        Example:
            >>> with self.calling_model(x):
            ...     outputs = self.model(x.raw)
        """
        try:
            yield
        except XaiToolboxError:
            raise
        except Exception as exc:
            if self.is_out_of_memory(exc):
                raise
            what = "differentiating the" if doing == "differentiated" else "the"
            raise ModelError(
                f"{what} {self.display_name} model failed on inputs of shape "
                f"{tuple(int(d) for d in x.shape)} with {type(exc).__name__}: {exc}"
            ) from exc

    def no_gradients_message(self) -> str:
        """Why this model cannot be differentiated, and what works instead."""
        from . import frameworks_where

        able = " or ".join(frameworks_where("supports_gradients")) or "a differentiable"
        return (
            f"this {self.display_name} model cannot be differentiated: gradient-based methods "
            f"need a {able} model; use a black-box method (rise, sobol, hsic, occlusion)"
        )

    def no_layers_message(self) -> str:
        """Why this model has no inner layers to capture, and what works instead."""
        instead = "a gradient or black-box method" if self.supports_gradients else (
            "a black-box method (rise, sobol, hsic, occlusion)"
        )
        return (
            f"{self.display_name} models have no inner layers to capture (CAM methods need "
            f"them); use {instead}"
        )

    def _split_on_oom(
        self, kind: str, x: ep.Tensor, run: Callable[[ep.Tensor], tuple[Any, ...]]
    ) -> tuple[Any, ...]:
        """``run(x)``, retried on halves of ``x`` (axis 0) after an out-of-memory error.

        The outputs of the parts are concatenated along axis 0 (``None`` stays ``None``).
        Down to one input per pass; an error at that size is raised as is. The batch size
        that fitted is remembered for the rest of the call (see :func:`memory_scope`).
        """
        n = int(x.shape[0])
        if n == 0:  # nothing to split (and nothing to concatenate)
            return run(x)
        state = _memory.get() or _MemoryState()  # outside a method call: this pass only
        size = min(n, state.limits.get(kind, n))
        parts: list[tuple[Any, ...]] = []
        lo = 0
        while lo < n:
            hi = min(lo + size, n)
            try:
                parts.append(self._run_rows(run, x, lo, hi, n))
                lo = hi
                continue
            except Exception as exc:
                if hi - lo <= 1 or not self.is_out_of_memory(exc):
                    raise
            # Retry outside the ``except`` block, so the error's traceback (and the tensors
            # its frames hold) is released first.
            failed, size = hi - lo, max(1, (hi - lo) // 2)
            state.limits[kind] = size
            self.release_memory()
            if not state.warned:
                state.warned = True
                warnings.warn(
                    OutOfMemoryWarning(
                        f"xai-toolbox: the {self.display_name} model ran out of memory on a "
                        f"{'backward' if kind == 'gradient' else 'forward'} pass of {failed} "
                        f"inputs; retrying with {size} inputs per pass (results are unchanged). "
                        f"Pass a smaller batch_size to avoid the retries."
                    ),
                    stacklevel=4,
                )
        if len(parts) == 1:
            return parts[0]
        return tuple(
            None if part is None else ep.concatenate([p[i] for p in parts], axis=0)
            for i, part in enumerate(parts[0])
        )

    def _run_rows(
        self, run: Callable[[ep.Tensor], tuple[Any, ...]], x: ep.Tensor, lo: int, hi: int, n: int
    ) -> tuple[Any, ...]:
        if (lo, hi) == (0, n):
            return run(x)
        token = _window.set((lo, hi, n))
        try:
            out = run(x[lo:hi])
        except Exception as exc:
            if not self.is_out_of_memory(exc):
                exc.add_note(
                    f"(raised while xai-toolbox retried rows {lo}:{hi} of a batch of {n} after "
                    "running out of memory; functions given to value_and_grad must score each "
                    "row on its own — wrap per-row data in xai_toolbox.extend.rows(...))"
                )
            raise
        finally:
            _window.reset(token)
        for t in out:
            if t is not None and (t.ndim == 0 or t.shape[0] != hi - lo):
                raise ModelError(
                    f"after running out of memory, xai-toolbox split a batch of {n} inputs, but "
                    f"a pass over {hi - lo} of them returned shape {tuple(t.shape)} instead of one "
                    f"row per input; lower batch_size instead"
                )
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__})"
