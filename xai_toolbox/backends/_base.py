"""The contract every framework adapter fulfils.

An adapter owns everything framework-specific: moving data to the model's device, forward
passes in eval mode, gradients with respect to inputs or inner activations, and layer lookup.
Methods and metrics see only :mod:`eagerpy` tensors and this interface, which is why one
implementation of each method runs on every framework.
"""

from __future__ import annotations

import contextlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
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
    ScoreFunctionError,
    UnsupportedModelError,
    XaiToolboxError,
)

#: ``fn(outputs) -> scores``: maps model outputs ``(B, K)`` to one score per input ``(B,)``.
ScoreOf = Callable[[ep.Tensor], ep.Tensor]


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


_memory: ContextVar[_MemoryState | None] = ContextVar("xai_toolbox_memory", default=None)
_window: ContextVar[tuple[int, int, int] | None] = ContextVar("xai_toolbox_rows", default=None)


@contextlib.contextmanager
def memory_scope() -> Iterator[None]:
    """Scope of one method or metric call (the base classes open it).

    Inside it, a batch size halved after an out-of-memory error stays halved for every later
    pass of the same kind (so the error is not hit again on every chunk), and the
    :class:`~xai_toolbox.errors.OutOfMemoryWarning` is given once. Contexts are per thread.
    """
    token = _memory.set(_MemoryState())
    try:
        yield
    finally:
        _memory.reset(token)


def current_rows() -> tuple[int, int, int] | None:
    """``(lo, hi, total)`` while an adapter retries rows ``[lo, hi)`` of a batch of ``total``.

    ``None`` when the whole batch is being computed (the usual case).
    """
    return _window.get()


def weighted_score(outputs: ep.Tensor, weights: ep.Tensor) -> ep.Tensor:
    """``Σ_k outputs[:, k] · weights[:, k]`` per row, for ``(N, K)`` outputs."""
    if outputs.ndim != 2:
        raise ScoreFunctionError(
            f"the model returned outputs of shape {tuple(outputs.shape)}; the default score needs "
            "(N, K) outputs — pass score_fn=... for other outputs"
        )
    return (outputs * weights).sum(axis=1)


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


def float32_array(x: Any) -> np.ndarray:
    """``x`` (an array, nested lists, a number, another framework's tensor) as float32 NumPy.

    Raises :class:`~xai_toolbox.errors.InputError` for what is not numbers (strings, objects,
    complex values, ragged lists) instead of NumPy's ``ValueError``/``TypeError``.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    elif hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    try:
        a = np.asarray(x)
        if a.dtype.kind not in "biufO":
            raise TypeError(f"dtype {a.dtype}")
        return np.ascontiguousarray(a, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise InputError(f"expected an array of real numbers, got {type(x).__name__} ({exc})") from None


class ModelAdapter(ABC):
    """Wraps one model of one framework behind the interface the methods use.

    Subclasses set :attr:`framework` and :attr:`channel_axis` and implement the abstract
    methods. All tensors in and out are :class:`eagerpy.Tensor` on the model's device.
    """

    framework: ClassVar[str]
    #: Name of the framework as users spell it in messages ("PyTorch", "TensorFlow/Keras").
    display_name: ClassVar[str]
    #: Whether the model can be differentiated (white-box methods need it).
    supports_gradients: ClassVar[bool] = True
    #: Whether :func:`xai_toolbox.autocast` can run the model's forward passes in mixed precision.
    supports_autocast: ClassVar[bool] = False

    def __init__(self, model: Any, channel_axis: int) -> None:
        self.model = model
        #: Axis of the channels in image (rank 4) and series (rank 3) inputs.
        self.channel_axis = channel_axis

    # -- data --------------------------------------------------------------------------
    @abstractmethod
    def is_native(self, x: Any) -> bool:
        """Whether ``x`` is a tensor of this adapter's framework."""

    @abstractmethod
    def to_model(self, x: Any) -> ep.Tensor:
        """Convert a native tensor or NumPy array to a float32 tensor on the model's device."""

    @abstractmethod
    def restore(self, t: ep.Tensor, like: Any) -> Any:
        """Return ``t`` with the type and device of ``like`` (a native tensor or NumPy array)."""

    def from_numpy(self, like: ep.Tensor, a: np.ndarray) -> ep.Tensor:
        """A NumPy array as a tensor on the same device as ``like``."""
        return ep.from_numpy(like, np.ascontiguousarray(a))

    # -- model -------------------------------------------------------------------------
    # The three passes below are templates: they retry on halves of the batch when the
    # framework runs out of memory (see ``_split_on_oom``). Adapters implement the
    # underscored versions, which compute one batch as given.
    def forward(self, x: ep.Tensor) -> ep.Tensor:
        """Model outputs for ``x`` (no gradient tracking, eval mode).

        Retried on halves of ``x`` if the framework runs out of memory.
        """
        (outputs,) = self._split_on_oom("forward", x, lambda part: (self._forward(part),))
        return outputs

    def value_and_grad(
        self, fn: Callable[[ep.Tensor], ep.Tensor], x: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor]:
        """``fn(x)`` (shape ``(B,)``) and the gradient of ``fn(x).sum()`` with respect to ``x``.

        ``fn`` may call :meth:`differentiable_forward` and any EagerPy operation; it must
        score each row of ``x`` on its own, because the batch is split into halves if the
        framework runs out of memory (wrap per-row data it closes over in :func:`rows`;
        :class:`~xai_toolbox._targets.Targets` does so itself). Parameters of the model never
        receive a ``.grad``.
        """
        values, grads = self._split_on_oom("gradient", x, lambda part: self._value_and_grad(fn, part))
        return values, grads

    def weighted_value_and_grad(self, x: ep.Tensor, weights: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        """The built-in score ``Σ_k outputs[:, k] · weights[:, k]`` of each row of ``x`` and
        its gradient with respect to ``x``: :meth:`value_and_grad` for the score every gradient
        method uses unless given a ``score_fn``.

        A separate entry point because its only inputs are tensors, so an adapter can compile
        the forward and the backward pass together, once per input shape (the Keras adapter
        does: a ``tf.function`` around the tape is much faster than a tape around a compiled
        forward). Retried on halves of ``x`` if the framework runs out of memory.
        """
        return self._split_on_oom(
            "gradient", x, lambda part: self._weighted_value_and_grad(part, rows(weights))
        )

    def _weighted_value_and_grad(self, x: ep.Tensor, weights: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        return self._value_and_grad(lambda z: weighted_score(self.differentiable_forward(z), weights), x)

    def differentiable_forward(self, x: ep.Tensor) -> ep.Tensor:
        """Model outputs for ``x`` inside :meth:`value_and_grad` (gradients tracked)."""
        raise UnsupportedModelError(self._no_gradients_message())

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
            kind, x, lambda part: self._layer_activations(part, layer, score_of)
        )
        return acts, grads, outputs

    def weighted_layer_activations(
        self, x: ep.Tensor, layer: str, weights: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        """:meth:`layer_activations` for the built-in score ``Σ_k outputs[:, k] · weights[:, k]``:
        tensors only, so an adapter can compile it (see :meth:`weighted_value_and_grad`)."""
        acts, grads, outputs = self._split_on_oom(
            "gradient", x, lambda part: self._weighted_layer_activations(part, layer, rows(weights))
        )
        return acts, grads, outputs

    def _weighted_layer_activations(
        self, x: ep.Tensor, layer: str, weights: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        return self._layer_activations(x, layer, lambda outputs: weighted_score(outputs, weights))

    # What adapters implement: one pass over the batch they are given.
    @abstractmethod
    def _forward(self, x: ep.Tensor) -> ep.Tensor:
        """Model outputs for the whole of ``x`` in one pass (see :meth:`forward`)."""

    def _value_and_grad(
        self, fn: Callable[[ep.Tensor], ep.Tensor], x: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor]:
        """One pass of :meth:`value_and_grad`."""
        raise UnsupportedModelError(self._no_gradients_message())

    def _layer_activations(
        self, x: ep.Tensor, layer: str, score_of: ScoreOf | None
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        """One pass of :meth:`layer_activations`."""
        raise UnsupportedModelError(
            f"{self.display_name} models given as plain callables have no inner layers; "
            "use a black-box method (rise, sobol, hsic, occlusion)."
        )

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the framework's out-of-memory error (retried on a smaller batch)."""
        return isinstance(exc, MemoryError)

    def _release_memory(self) -> None:
        """Called after an out-of-memory error, before the retry (e.g. empty a GPU cache)."""
        return None

    def layer_names(self) -> list[str]:
        """Names accepted by ``layer=``, in model order."""
        return []

    def default_layer(self, x: ep.Tensor) -> str:
        """The last layer whose output is spatial (rank 4 with more than one position)."""
        raise UnsupportedModelError(
            f"{self.display_name} models have no inner layers to choose from."
        )

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

    @contextlib.contextmanager
    def preserved(self) -> Iterator[None]:
        """Put the model in inference mode for a call and restore its state afterwards."""
        yield

    # -- failures ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _calling_model(self, x: Any, doing: str = "ran") -> Iterator[None]:
        """Turn the model's own exceptions into :class:`ModelError` (naming the input shape).

        Toolbox errors and out-of-memory errors pass through unchanged.
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
            self._release_memory()
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
                    "row on its own — wrap per-row data in xai_toolbox.backends._base.rows(...))"
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

    # -- helpers -----------------------------------------------------------------------
    def unknown_layer(self, layer: str) -> LayerError:
        names = self.layer_names()
        shown = ", ".join(repr(n) for n in names[:40])
        more = f" (and {len(names) - 40} more)" if len(names) > 40 else ""
        return LayerError(
            f"layer {layer!r} not found in the {self.display_name} model; "
            f"available layers: {shown}{more}"
        )

    def _no_gradients_message(self) -> str:
        return (
            f"this {self.display_name} model cannot be differentiated: gradient-based methods "
            "need a PyTorch or Keras model; use a black-box method (rise, sobol, hsic, occlusion)."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__})"


def pick_default_layer(records: list[tuple[str, tuple[int, ...]]], channel_axis: int) -> str | None:
    """The last ``(name, shape)`` record with a rank-4 output of more than one position."""
    for name, shape in reversed(records):
        if len(shape) != 4:
            continue
        spatial = [d for i, d in enumerate(shape) if i not in (0, channel_axis % 4)]
        if np.prod(spatial) > 1:
            return name
    return None
