"""The streaming helpers: chunking across image boundaries and the per-pair score buffer."""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.extend import ItemSums, ModelAdapter, PairScores, chunks
from xai_toolbox.testing import cnn


def _adapter(kind: str) -> ModelAdapter:
    """An adapter of the kind whose tensors the accumulators hold."""
    if kind == "numpy":
        return xt.adapt(xt.NumpyModel(lambda x: x))
    return xt.adapt(cnn(kind))


def _tensor(framework: str, values: np.ndarray) -> ep.Tensor:
    if framework == "torch":
        import torch

        return ep.astensor(torch.from_numpy(values))
    if framework == "tf":
        import tensorflow as tf

        return ep.astensor(tf.constant(values))
    return ep.astensor(values)


def test_chunks_cover_every_pair_once_across_image_boundaries() -> None:
    todo = chunks(3, 5, batch_size=4)
    assert [(c.start, c.stop) for c in todo] == [(0, 4), (4, 8), (8, 12), (12, 15)]
    items = np.concatenate([c.items for c in todo])
    samples = np.concatenate([c.samples for c in todo])
    assert items.tolist() == [i for i in range(3) for _ in range(5)]
    assert samples.tolist() == list(range(5)) * 3
    assert list(todo[1].runs()) == [(0, 0, 1), (1, 1, 4)]


@pytest.mark.parametrize("backend", ["numpy", "framework"])
def test_pair_scores_reassemble_per_item_rows(framework: str, backend: str, request: Any) -> None:
    request.getfixturevalue("torch" if framework == "torch" else "tf")
    kind = "numpy" if backend == "numpy" else framework
    n_items, n_per_item = 3, 5
    expected = np.arange(n_items * n_per_item * 2, dtype=np.float32).reshape(n_items, n_per_item, 2)
    flat = expected.reshape(-1, 2)
    scores = PairScores(n_items, n_per_item, _adapter(kind))
    for chunk in chunks(n_items, n_per_item, batch_size=4):
        scores.put(chunk, _tensor(kind, flat[chunk.start : chunk.stop]))
    result = scores.result()
    assert type(result).__name__ == type(_tensor(kind, flat)).__name__  # stays on the framework
    np.testing.assert_array_equal(result.numpy(), expected)


def test_pair_scores_buffer_is_detached_from_autograd(torch: Any) -> None:
    weight = torch.ones(1, requires_grad=True)
    scores = PairScores(1, 2, _adapter("torch"))
    scores.put(chunks(1, 2, 2)[0], ep.astensor(torch.arange(2.0) * weight))
    assert not scores.result().raw.requires_grad


def test_pair_scores_reject_misuse() -> None:
    todo = chunks(2, 2, batch_size=2)
    scores = PairScores(2, 2, _adapter("numpy"))
    with pytest.raises(ValueError, match="chunks must come in order"):
        scores.put(todo[1], ep.astensor(np.zeros(2)))
    with pytest.raises(ValueError, match="3 values for a chunk of 2"):
        scores.put(todo[0], ep.astensor(np.zeros(3)))
    scores.put(todo[0], ep.astensor(np.zeros(2)))
    with pytest.raises(RuntimeError, match="2 of 4 pair values"):
        scores.result()


@pytest.mark.parametrize("backend", ["numpy", "framework"])
def test_item_sums_add_up_each_items_pairs(framework: str, backend: str, request: Any) -> None:
    request.getfixturevalue("torch" if framework == "torch" else "tf")
    kind = "numpy" if backend == "numpy" else framework
    values = np.random.default_rng(0).normal(size=(3 * 5, 2, 2)).astype(np.float32)
    sums = ItemSums(3, _adapter(kind))
    for chunk in chunks(3, 5, batch_size=4):
        sums.add(chunk, _tensor(kind, values[chunk.start : chunk.stop]))
    result = sums.result()
    assert type(result).__name__ == type(_tensor(kind, values)).__name__
    np.testing.assert_allclose(result.numpy(), values.reshape(3, 5, 2, 2).sum(axis=1), rtol=1e-5)


def test_item_sums_say_which_items_got_nothing() -> None:
    sums = ItemSums(3, _adapter("numpy"))
    sums.add(chunks(3, 2, batch_size=2)[0], ep.astensor(np.ones((2, 4), np.float32)))
    with pytest.raises(RuntimeError, match=r"items \[1, 2\]"):
        sums.result()


def test_broadcast_rows_gives_one_row_for_a_single_item_chunk(framework: str, request: Any) -> None:
    request.getfixturevalue("torch" if framework == "torch" else "tf")
    x = _tensor(framework, np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2))
    masks = _tensor(framework, np.random.default_rng(0).uniform(size=(4, 2, 2)).astype(np.float32))
    adapter = _adapter(framework)
    one = adapter.broadcast_rows(x, np.array([1, 1, 1, 1]))
    assert tuple(one.shape) == (1, 2, 2)  # no copy per pair: it broadcasts in the product
    mixed = adapter.broadcast_rows(x, np.array([0, 1, 1, 2]))
    assert tuple(mixed.shape) == (4, 2, 2)
    for items, rows in ((np.array([1, 1, 1, 1]), one), (np.array([0, 1, 1, 2]), mixed)):
        np.testing.assert_array_equal((rows * masks).numpy(), x.numpy()[items] * masks.numpy())
