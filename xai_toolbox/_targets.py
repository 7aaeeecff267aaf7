"""Which score is explained: class indices, one-hot/score weights, top-1, or a ``score_fn``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import eagerpy as ep
import numpy as np

from ._streaming import batched_forward
from ._validation import dtype_name, is_floating
from .backends import ModelAdapter
from .backends.adapter import current_rows, to_numpy, weighted_score
from .errors import ScoreFunctionError, TargetError

ScoreFn = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class Targets:
    """Resolved targets for a batch of ``n`` inputs: what a method or metric explains.

    Exactly one representation is used: ``weights`` ``(n, K)`` for the built-in score
    ``sum(outputs * weights, axis=1)``, or ``raw`` (the user's targets, native, possibly
    ``None``) passed to ``score_fn``. ``labels`` holds class indices where they are known.
    The base classes resolve them before :meth:`~xai_toolbox.AttributionMethod.explain_batch`
    runs; plugins score outputs and take gradients through them, so a ``score_fn`` works in
    every method without the method knowing.

    Example:
        >>> scores = targets.take(chunk.items).score(adapter.forward(perturbed))     # (B,)
        >>> grads = targets.take(slice(0, 8)).input_gradient(adapter, x[:8])         # like x[:8]
    """

    n: int
    weights: ep.Tensor | None = None
    labels: np.ndarray | None = None
    raw: Any = None
    score_fn: ScoreFn | None = None

    def native(self) -> Any:
        """The targets in a form every method and metric accepts again: the user's targets for
        a ``score_fn``, else class indices, else the weights as NumPy (e.g. to re-run a method
        on a modified model with the same targets)."""
        if self.score_fn is not None:
            return self.raw
        if self.labels is not None:
            return self.labels
        assert self.weights is not None
        return self.weights.numpy()

    def take(self, items: np.ndarray | slice) -> Targets:
        """The targets of a subset (a slice or item indices, repeats allowed)."""
        labels = None if self.labels is None else self.labels[items]
        n = len(labels) if labels is not None else len(np.arange(self.n)[items])
        weights = None if self.weights is None else _take(self.weights, items)
        raw = self.raw
        if raw is not None and self.score_fn is not None:
            raw = _take_native(raw, items)
        return Targets(n, weights, labels, raw, self.score_fn)

    def score(self, outputs: ep.Tensor) -> ep.Tensor:
        """One score per row of ``outputs``.

        When an adapter retries a part of the batch after running out of memory, ``outputs``
        holds only those rows, and so do the targets used (see :func:`xai_toolbox.extend.rows`).
        """
        part = self._rows_being_computed(outputs.shape[0] if outputs.ndim else -1)
        if part is not None:
            return part.score(outputs)
        if self.score_fn is None:
            assert self.weights is not None
            return weighted_score(outputs, self.weights)
        value = self.score_fn(outputs.raw, self.raw)
        if not hasattr(value, "shape"):
            raise ScoreFunctionError(
                f"score_fn must return a tensor of shape ({outputs.shape[0]},), got {type(value).__name__}"
            )
        try:
            scores = ep.astensor(value)
        except ValueError:  # not a tensor of any framework EagerPy knows
            scores = None
        if type(scores) is not type(outputs):  # e.g. NumPy: no gradient could flow through it
            raise ScoreFunctionError(
                f"score_fn returned a {type(value).__module__}.{type(value).__name__}; it must return "
                f"a tensor of the model's framework, like the outputs it is given "
                f"({type(outputs.raw).__module__}.{type(outputs.raw).__name__}), computed with that "
                "framework's operations so gradients can flow through it"
            )
        if tuple(scores.shape) != (outputs.shape[0],):
            raise ScoreFunctionError(
                f"score_fn must return one score per input, shape ({outputs.shape[0]},); "
                f"it returned shape {tuple(scores.shape)}"
            )
        return scores.astype(outputs.dtype) if scores.dtype != outputs.dtype else scores


    # The passes below take the adapter's tensor-only entry points for the built-in score, which
    # an adapter may compile (Keras does); a score_fn is any Python function, taped as it is.
    def input_gradient(self, adapter: ModelAdapter, x: ep.Tensor) -> ep.Tensor:
        """The gradient of each row's score with respect to that row of ``x``.

        The built-in score takes the adapter's compilable entry point
        (:meth:`~xai_toolbox.extend.ModelAdapter.weighted_value_and_grad`); a ``score_fn`` is
        taped as it is. Parameters never receive gradients.

        Example:
            >>> grads = targets.take(rows).input_gradient(self.adapter, x[rows])
        """
        if self.score_fn is None:
            assert self.weights is not None
            return adapter.weighted_value_and_grad(x, self.weights)[1]
        return adapter.value_and_grad(lambda z: self.score(adapter.differentiable_forward(z)), x)[1]

    def layer_gradient(
        self, adapter: ModelAdapter, x: ep.Tensor, layer: str
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        """``layer``'s activations for ``x``, the scores' gradient with respect to them, and
        the model outputs (activations in the framework's layout).

        Example:
            >>> acts, grads, outputs = targets.layer_gradient(self.adapter, x, "layer4")
        """
        if self.score_fn is None:
            assert self.weights is not None
            return adapter.weighted_layer_activations(x, layer, self.weights)
        return adapter.layer_activations(x, layer, self.score)

    def _rows_being_computed(self, rows: int) -> Targets | None:
        window = current_rows()
        if window is None or rows == self.n:
            return None
        lo, hi, total = window
        return self.take(slice(lo, hi)) if total == self.n and hi - lo == rows else None


def _take(t: ep.Tensor, items: np.ndarray | slice) -> ep.Tensor:
    if isinstance(items, slice):
        return t[items]
    return t[ep.from_numpy(t, np.asarray(items, dtype=np.int64))]


def _take_native(raw: Any, items: np.ndarray | slice) -> Any:
    if isinstance(items, slice):
        return raw[items]
    if isinstance(raw, np.ndarray):
        return raw[items]
    if isinstance(raw, list | tuple):  # e.g. one dict of boxes per image for a score_fn
        return type(raw)(raw[int(i)] for i in items)
    return _take(ep.astensor(raw), items).raw


def _to_numpy(targets: Any) -> np.ndarray:
    try:
        return to_numpy(targets)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise TargetError(
            f"targets could not be read as an array ({exc}); pass None, an int, class indices "
            "(N,) or score weights (N, K)"
        ) from None


def _check_target_dtype(array: np.ndarray, targets: Any) -> None:
    """Class indices and weights are numbers: strings, booleans and objects are mistakes."""
    kind = array.dtype.kind
    if kind in "iuf" or (kind == "b" and array.ndim == 2):  # a boolean one-hot (N, K) is fine
        return
    what = {
        "b": "booleans (a mask?) — pass class indices, or a one-hot (N, K) array",
        "U": "strings — map class names to indices first",
        "S": "bytes — map class names to indices first",
        "O": "Python objects — pass numbers",
        "c": "complex numbers",
    }.get(kind, f"dtype {array.dtype}")
    raise TargetError(
        f"targets must be integer class indices (N,) or numeric score weights (N, K); got "
        f"{what} (dtype {dtype_name(targets) if hasattr(targets, 'dtype') else array.dtype})"
    )


def resolve_targets(
    adapter: ModelAdapter,
    x: ep.Tensor,
    targets: Any,
    score_fn: ScoreFn | None,
    batch_size: int,
) -> Targets:
    """Validate ``targets`` against the batch ``x`` and turn them into :class:`Targets`.

    Accepts ``None`` (the model's top-1 class), an int (same class for every input), integer
    indices ``(N,)``, or one-hot / score weights ``(N, K)``. With ``score_fn`` the targets are
    passed to it unchanged (``None`` stays ``None``), after a length check.
    """
    n = x.shape[0]
    if score_fn is not None:
        if not callable(score_fn):
            raise ScoreFunctionError(f"score_fn must be callable, got {type(score_fn).__name__}")
        if targets is not None:
            native = targets
            if not adapter.is_native(targets):
                try:
                    native = adapter.to_model(targets)
                except (ValueError, TypeError):  # not numbers (e.g. boxes): given as they are
                    native = targets
            length = _length(native)
            if length is not None and length != n:
                raise TargetError(f"got {length} targets for {n} inputs; pass one per input")
            targets = native.raw if isinstance(native, ep.Tensor) else native
        return Targets(n, raw=targets, score_fn=score_fn)

    if targets is None:
        outputs = batched_forward(adapter, x, batch_size)
        if outputs.ndim != 2:
            raise ScoreFunctionError(
                f"the model returned outputs of shape {tuple(outputs.shape)}; top-1 targets need (N, K) "
                "outputs — pass targets and score_fn=... for other outputs"
            )
        labels = outputs.argmax(axis=1).numpy().astype(np.int64)
        return _from_labels(adapter, x, labels, outputs.shape[1])

    array = _to_numpy(targets)
    if array.ndim == 0:
        array = np.full(n, array.item())
    if array.dtype.kind == "O" and array.ndim == 1:
        array = _python_ints(array, adapter, x)  # 10**30 is an index out of range, not an object
    _check_target_dtype(array, targets)
    if array.ndim == 1:
        integral = np.issubdtype(array.dtype, np.integer) or (
            is_floating(array) and np.all(np.isfinite(array)) and np.all(array == np.round(array))
        )
        if not integral:
            raise TargetError(
                f"targets of shape ({len(array)},) must be integer class indices, got dtype "
                f"{dtype_name(targets)} with non-integer values; for score weights pass shape (N, K)"
            )
        if len(array) != n:
            raise TargetError(f"got {len(array)} targets for {n} inputs; pass one per input (or an int)")
        width = _output_width(adapter, x)
        values = array.astype(np.float64)  # range check before the cast: 1e30 must not wrap around
        bad = (values < 0) | (values >= width)
        if bad.any():
            raise TargetError(
                f"target index {int(values[bad][0])} is out of range for a model with {width} "
                f"outputs; valid indices are 0..{width - 1}"
            )
        return _from_labels(adapter, x, array.astype(np.int64), width)
    if array.ndim == 2:
        if array.shape[0] != n:
            raise TargetError(f"got {array.shape[0]} target rows for {n} inputs; pass one per input")
        width = _output_width(adapter, x)
        if array.shape[1] != width:
            raise TargetError(
                f"one-hot/weight targets must have one column per model output: expected shape "
                f"({n}, {width}), got {array.shape}"
            )
        if not np.all(np.isfinite(array.astype(np.float64))):
            raise TargetError("target weights contain NaN or infinite values")
        weights = ep.from_numpy(x, array.astype(np.float32))
        is_onehot = np.all((array == 0) | (array == 1)) and np.all(array.sum(axis=1) == 1)
        labels = array.argmax(axis=1).astype(np.int64) if is_onehot else None
        return Targets(n, weights=weights, labels=labels)
    raise TargetError(
        f"targets must be None, an int, indices (N,) or weights (N, K); got shape {array.shape}"
    )


def _python_ints(array: np.ndarray, adapter: ModelAdapter, x: ep.Tensor) -> np.ndarray:
    """Class indices given as Python ints too large for int64 (NumPy keeps them as objects):
    checked against the output width exactly, so the error names the index as given."""
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in array):
        return array
    width = _output_width(adapter, x)
    for value in array:
        if not 0 <= value < width:
            raise TargetError(
                f"target index {value} is out of range for a model with {width} outputs; "
                f"valid indices are 0..{width - 1}"
            )
    return array.astype(np.int64)


def _length(targets: Any) -> int | None:
    shape = getattr(targets, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else None
    return len(targets) if isinstance(targets, list | tuple) else None


def _from_labels(adapter: ModelAdapter, x: ep.Tensor, labels: np.ndarray, width: int) -> Targets:
    onehot = np.zeros((len(labels), width), dtype=np.float32)
    onehot[np.arange(len(labels)), labels] = 1.0
    return Targets(len(labels), weights=ep.from_numpy(x, onehot), labels=labels)


def _output_width(adapter: ModelAdapter, x: ep.Tensor) -> int:
    width = adapter.output_width()
    if width is None:  # unknown statically: one forward pass on one input tells
        # Remembered per adapter, input shape and last parameter (a new head misses the
        # cache): the probe is ~10% of a Saliency call on a few images (docs/benchmarks.md).
        key = _probe_key(adapter, x)
        probed: dict[Any, int] = adapter.__dict__.setdefault("_probed_widths", {})
        if key is not None and key in probed:
            return probed[key]
        outputs = adapter.forward(x[:1])
        if outputs.ndim != 2:
            raise ScoreFunctionError(
                f"the model returned outputs of shape {tuple(outputs.shape)}; class targets need (N, K) "
                "outputs — pass score_fn=... for other outputs"
            )
        width = outputs.shape[1]
        if key is not None:
            probed[key] = int(width)
    return int(width)


def _probe_key(adapter: ModelAdapter, x: ep.Tensor) -> tuple[Any, ...] | None:
    """What a probed output width depends on; ``None`` for models without parameters."""
    last = adapter.last_parameter()
    if last is None:
        return None
    return tuple(x.shape[1:]), id(last), tuple(last.shape)
