"""Streaming many model inputs through the model in chunks of ``batch_size``.

A perturbation method asks for ``n_per_item`` model inputs for each of ``n_items`` images.
We enumerate the ``n_items * n_per_item`` (image, sample) pairs in order and cut them into
chunks of ``batch_size`` regardless of image boundaries, so every forward pass is full and
peak memory depends on ``batch_size`` only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

import eagerpy as ep
import numpy as np

from .backends import ModelAdapter
from .backends.adapter import finish_built, split_built, weighted_score

if TYPE_CHECKING:
    from ._targets import Targets

T = TypeVar("T")


@dataclass(frozen=True)
class Chunk:
    """A contiguous range ``[start, stop)`` of (item, sample) pairs.

    Example:
        >>> chunk = Chunk(start=3, stop=7, n_per_item=4)
        >>> chunk.items, chunk.samples
        (array([0, 1, 1, 1]), array([3, 0, 1, 2]))
    """

    start: int
    stop: int
    n_per_item: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def items(self) -> np.ndarray:
        """Item (image) index of each pair."""
        return np.arange(self.start, self.stop) // self.n_per_item

    @property
    def samples(self) -> np.ndarray:
        """Sample index (within its item) of each pair."""
        return np.arange(self.start, self.stop) % self.n_per_item

    def runs(self) -> Iterator[tuple[int, int, int]]:
        """``(item, lo, hi)``: the positions ``[lo, hi)`` of this chunk that belong to ``item``."""
        pos = self.start
        while pos < self.stop:
            item = pos // self.n_per_item
            end = min(self.stop, (item + 1) * self.n_per_item)
            yield item, pos - self.start, end - self.start
            pos = end


class _Chunks(Sequence[Chunk]):
    """The chunks of :func:`chunks`, made when asked for: a call with millions of model inputs
    holds no list of millions of chunk objects before its first pass."""

    def __init__(self, total: int, n_per_item: int, batch_size: int) -> None:
        self.total, self.n_per_item, self.batch_size = total, n_per_item, batch_size

    def __len__(self) -> int:
        return -(-self.total // self.batch_size)

    @overload
    def __getitem__(self, index: int) -> Chunk: ...
    @overload
    def __getitem__(self, index: slice) -> list[Chunk]: ...
    def __getitem__(self, index: int | slice) -> Chunk | list[Chunk]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"chunk {index} of {len(self)}")
        start = index * self.batch_size
        return Chunk(start, min(start + self.batch_size, self.total), self.n_per_item)

    def __iter__(self) -> Iterator[Chunk]:
        for start in range(0, self.total, self.batch_size):
            yield Chunk(start, min(start + self.batch_size, self.total), self.n_per_item)

    def __repr__(self) -> str:
        return f"chunks({self.total} pairs, batch_size={self.batch_size})"


def chunks(n_items: int, n_per_item: int, batch_size: int) -> Sequence[Chunk]:
    """The ``n_items × n_per_item`` (item, sample) pairs cut into chunks of ``batch_size``,
    across item boundaries (every forward pass is full).

    A sequence (``len``, indexing, iteration) whose chunks are made when asked for, so its
    memory does not grow with the number of pairs.

    Example:
        >>> [(c.start, c.stop) for c in chunks(2, 3, batch_size=4)]
        [(0, 4), (4, 6)]
    """
    return _Chunks(n_items * n_per_item, n_per_item, batch_size)


class ItemSums:
    """Per-item sums of per-pair values, accumulated chunk by chunk on the device.

    Where the adapter's tensors are mutable (PyTorch, NumPy), sums are added in place into one
    ``(n_items, ...)`` buffer: a fresh sum tensor per item and chunk would leave small live
    blocks between the large ones each chunk frees, which glibc cannot reuse (see
    :class:`PairScores`). Immutable tensors (TensorFlow, JAX) are summed functionally.

    Example:
        >>> sums = ItemSums(n_items=2, adapter=adapter)
        >>> for chunk in chunks(2, 3, batch_size=4):
        ...     sums.add(chunk, values_of(chunk))          # (chunk.size, ...)
        >>> sums.result().shape                             # (2, ...)
    """

    def __init__(self, n_items: int, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        self._sums: list[ep.Tensor | None] = [None] * n_items
        self._buffer: Any = None
        self._added = np.zeros(n_items, dtype=bool)

    def add(self, chunk: Chunk, values: ep.Tensor) -> None:
        """Add the chunk's per-pair ``values`` ``(chunk.size, ...)`` to their items' sums."""
        for item, lo, hi in chunk.runs():
            self.add_to(item, values[lo:hi].sum(axis=0))

    def add_to(self, item: int, part: ep.Tensor) -> None:
        """Add ``part``, already summed over pairs (e.g. by a matrix product), to ``item``'s sum.

        Example:
            >>> for item, lo, hi in chunk.runs():
            ...     sums.add_to(item, matmul(weights[:, lo:hi], masks[lo:hi]))
        """
        item = int(item)
        if self.adapter.mutable_tensors:
            if self._buffer is None:
                self._buffer = ep.zeros(part, (len(self._sums), *part.shape)).raw
            self.adapter.write_rows(self._buffer, item, part.raw, add=True)
        else:
            current = self._sums[item]
            self._sums[item] = part if current is None else current + part
        self._added[item] = True

    def result(self) -> ep.Tensor:
        """The sums, ``(n_items, ...)``."""
        missing = np.flatnonzero(~self._added).tolist()
        if missing:
            raise RuntimeError(f"no values were added for items {missing}")
        if self._buffer is not None:
            return ep.astensor(self._buffer)
        return ep.stack(self._sums, axis=0)  # type: ignore[arg-type]


class PairScores:
    """One value per (item, sample) pair, written chunk by chunk into a buffer allocated once.

    Why not a list of per-chunk tensors concatenated at the end: each chunk frees megabytes of
    perturbed inputs and activations, and a small tensor kept alive from every chunk lands in
    those holes. glibc then cannot reuse them for the next chunk's large blocks, and the
    process grows by about one chunk of inputs per chunk (2 GB of RSS for Sobol on 8 images of
    64x64 instead of 0.35 GB). Mutable tensors (PyTorch, NumPy) are written in place into one
    buffer on the values' device (no host synchronisation); immutable ones (TensorFlow has its
    own allocator) are gathered and concatenated.

    Example:
        >>> scores = PairScores(n_items=2, n_per_item=3, adapter=adapter)
        >>> for chunk in chunks(2, 3, batch_size=4):
        ...     scores.put(chunk, values_of(chunk))   # (chunk.size,) or (chunk.size, ...)
        >>> scores.result().shape                      # (2, 3)
    """

    def __init__(self, n_items: int, n_per_item: int, adapter: ModelAdapter) -> None:
        self.n_items, self.n_per_item, self.adapter = n_items, n_per_item, adapter
        self._buffer: Any = None
        self._parts: list[ep.Tensor] = []
        self._filled = 0

    def put(self, chunk: Chunk, values: ep.Tensor) -> None:
        """Store the chunk's values ``(chunk.size, ...)``; chunks come in order."""
        if values.shape[0] != chunk.size:
            raise ValueError(f"{values.shape[0]} values for a chunk of {chunk.size} pairs")
        if chunk.start != self._filled:
            raise ValueError(f"chunks must come in order: expected start {self._filled}, got {chunk.start}")
        self._filled = chunk.stop
        if not self.adapter.mutable_tensors:
            self._parts.append(values)
            return
        if self._buffer is None:
            self._buffer = ep.zeros(values, (self.n_items * self.n_per_item, *values.shape[1:])).raw
        self.adapter.write_rows(self._buffer, slice(chunk.start, chunk.stop), values.raw)

    def result(self) -> ep.Tensor:
        """The values, shaped ``(n_items, n_per_item, ...)``."""
        total = self.n_items * self.n_per_item
        if self._filled != total:
            raise RuntimeError(f"{self._filled} of {total} pair values were put")
        if self._buffer is not None:
            joined = ep.astensor(self._buffer)
        else:
            joined = self._parts[0] if len(self._parts) == 1 else ep.concatenate(self._parts, axis=0)
        return joined.reshape((self.n_items, self.n_per_item, *joined.shape[1:]))


def batched_forward(adapter: ModelAdapter, x: ep.Tensor, batch_size: int) -> ep.Tensor:
    """Model outputs for all of ``x``, ``batch_size`` inputs per forward pass.

    Example:
        >>> outputs = batched_forward(self.adapter, x, self.batch_size)     # (N, K)
    """
    if x.shape[0] <= batch_size:
        return adapter.forward(x)
    parts = [adapter.forward(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return ep.concatenate(parts, axis=0)


def batched_scores(
    adapter: ModelAdapter, targets: Targets, x: ep.Tensor, batch_size: int, activation: str | None = None
) -> ep.Tensor:
    """``(N,)`` target scores of the inputs ``x`` themselves, ``batch_size`` per forward pass,
    after the output ``activation`` (``None``, ``"softmax"``, ``"sigmoid"``).

    Example:
        >>> p = batched_scores(self.adapter, targets, x, self.batch_size, "softmax")
    """
    from .ops import activate

    return targets.score(activate(batched_forward(adapter, x, batch_size), activation))


def progress(iterable: Iterable[T], *, enabled: bool | None, total: int, desc: str) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar. ``enabled=None``: only on an interactive terminal.

    Example:
        >>> for chunk in progress(todo, enabled=self.progress, total=len(todo), desc=self.name):
        ...     ...
    """
    if enabled is None:
        enabled = sys.stderr.isatty() and not os.environ.get("CI") and total > 1
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


def built_scores(
    adapter: ModelAdapter,
    build: Callable[..., Any],
    *tensors: ep.Tensor,
    targets: Targets,
    items: np.ndarray,
    activation: str | None = None,
    finish: Callable[..., Any] | None = None,
    key: Any = (),
) -> Any:
    """Target scores ``(B,)`` of one chunk of model inputs built on the device, as one pass
    that the adapter may compile (:meth:`~xai_toolbox.extend.ModelAdapter.forward_built`).

    ``build(*tensors)`` returns the chunk's model inputs, or a tuple ``(inputs, *extras)``
    (masks, per-pair values); the model runs on them; the outputs are scored for the targets of
    ``items`` (the image of each input) after ``activation`` (``None``, ``"softmax"``,
    ``"sigmoid"``); and ``finish(scores, *extras)`` makes the result — by default the scores,
    or ``(scores, *extras)``. ``build`` and ``finish`` follow the rules of ``forward_built``:
    pure EagerPy functions of their tensors, closing over numbers, strings, booleans, ``None``,
    tuples and functions only. On TensorFlow the whole chunk is one ``tf.function`` traced once
    per input shape, so the eager element-wise work of building the batch and scoring it goes;
    with a ``score_fn`` (any Python function of the user's targets) the outputs are scored, and
    ``finish`` run, after the pass.

    Example:
        >>> def build(rows, masks):                   # rows (1 or B, ...), masks (B, H, W)
        ...     return xe.perturb(rows, masks, channel_axis, "inpainting", 0.0), masks
        >>> rows = adapter.broadcast_rows(x, chunk.items)
        >>> masks = xe.upsample_cells(adapter.from_numpy(x, low_res), positions)
        >>> scores, masks = xe.built_scores(adapter, build, rows, masks, targets=targets, items=chunk.items)
    """
    from .ops import activate

    if targets.score_fn is not None or targets.weights is None:
        outputs, extras = split_built(adapter.forward_built(build, *tensors, key=key))
        values = targets.take(items).score(activate(outputs, activation))
        return finish_built(finish, values, extras)
    index = adapter.from_numpy(tensors[0] if tensors else targets.weights, np.asarray(items, dtype=np.int64))
    given = len(tensors)

    def build_scored(*args: ep.Tensor) -> tuple[ep.Tensor, ...]:
        inputs, extras = split_built(build(*args[:given]))
        return (inputs, *extras, args[given], args[given + 1])  # the weights and the items

    def finish_scored(outputs: ep.Tensor, *rest: ep.Tensor) -> Any:
        *extras, weights, index = rest
        values = weighted_score(activate(outputs, activation), weights[index])
        return finish_built(finish, values, tuple(extras))

    return adapter.forward_built(build_scored, *tensors, targets.weights, index, finish=finish_scored, key=key)


def stream_scores(
    adapter: ModelAdapter,
    targets: Targets,
    n_items: int,
    n_per_item: int,
    build: Callable[..., ep.Tensor],
    *,
    batch_size: int,
    activation: str | None = None,
    progress_bar: bool | None = None,
    desc: str = "",
    extra: Callable[[Chunk], ep.Tensor] | None = None,
    tensors: Callable[[Chunk], tuple[ep.Tensor, ...]] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores ``(n_items, n_per_item)`` (NumPy float64) of the perturbed inputs ``build(chunk)``
    returns, streamed ``batch_size`` model inputs at a time across items.

    ``activation`` (``None``, ``"softmax"``, ``"sigmoid"``) is applied to the outputs before the
    target score. ``extra(chunk)`` optionally computes one more per-pair value on the device
    (MuFidelity's attribution sums); it comes back with the same shape. Scores stay on the
    device until the end: one host copy per call, not one per chunk.

    With ``tensors(chunk)`` (the chunk's rows, indices, low-resolution masks as tensors),
    ``build`` is instead a pure function of those tensors, and building, the forward pass and
    the score run as one pass the adapter may compile (see :func:`built_scores`).

    Example:
        >>> def build(chunk):                   # perturbed inputs (chunk.size, *x.shape[1:])
        ...     return adapter.broadcast_rows(x, chunk.items) * masks_of(chunk)
        >>> scores, _ = stream_scores(adapter, targets, len(x), 16, build, batch_size=64)
        >>> scores, _ = stream_scores(                 # the same, built inside the compiled pass
        ...     adapter, targets, len(x), 16, lambda rows, m: rows * m, batch_size=64,
        ...     tensors=lambda chunk: (adapter.broadcast_rows(x, chunk.items), masks_of(chunk)))
    """
    from .ops import activate

    scores = PairScores(n_items, n_per_item, adapter)
    extras = PairScores(n_items, n_per_item, adapter)
    todo = chunks(n_items, n_per_item, batch_size)
    for chunk in progress(todo, enabled=progress_bar, total=len(todo), desc=desc):
        if tensors is None:
            outputs = adapter.forward(build(chunk))
            scores.put(chunk, targets.take(chunk.items).score(activate(outputs, activation)))
        else:
            scores.put(
                chunk, built_scores(adapter, build, *tensors(chunk), targets=targets, items=chunk.items, activation=activation)
            )
        if extra is not None:
            extras.put(chunk, extra(chunk))
    values = scores.result().numpy().astype(np.float64)
    return values, (extras.result().numpy().astype(np.float64) if extra is not None else None)


def index_column(adapter: ModelAdapter, like: ep.Tensor, values: np.ndarray, ndim: int) -> ep.Tensor:
    """``values`` ``(B,)`` beside ``like`` as float32, shaped ``(B, 1, ..., 1)`` to broadcast
    over ``ndim`` axes (uploaded without a device synchronisation).

    Example:
        >>> k = index_column(adapter, x, counts[chunk.samples], ranks.ndim)   # (B, 1, 1)
    """
    t = adapter.from_numpy(like, np.asarray(values, dtype=np.float32))
    return t.reshape((len(values),) + (1,) * (ndim - 1))
