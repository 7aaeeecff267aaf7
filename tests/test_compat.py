"""EagerPy 0.30 on NumPy 2: the TensorFlow backend's mixed-dtype operations work."""

from __future__ import annotations

import eagerpy as ep
import numpy as np
import pytest

from xai_toolbox import _compat


def test_find_common_type_shim_uses_result_type() -> None:
    shim = _compat._NumpyWithFindCommonType()
    assert shim.find_common_type([np.dtype("float32"), np.dtype("int64")], []) == np.result_type(np.float32, np.int64)
    assert shim.float32 is np.float32  # everything else is numpy itself


def test_global_numpy_is_not_patched() -> None:
    _compat.apply()
    assert not hasattr(np, "find_common_type") or np.__version__.startswith("1.")


def test_mixed_dtype_tensorflow_comparisons(tf, monkeypatch) -> None:
    """EagerPy's TF comparisons call ``np.find_common_type`` whenever the dtypes differ."""
    import eagerpy.tensor.tensorflow as ep_tf

    _compat.apply()
    a = ep.astensor(tf.constant([1.5, 2.5], tf.float32))
    b = ep.astensor(tf.constant([1, 3], tf.int32))
    np.testing.assert_array_equal((a > b).numpy(), [True, False])
    np.testing.assert_array_equal((a == b).numpy(), [False, False])
    if not hasattr(np, "find_common_type"):  # NumPy 2: without the shim this breaks
        monkeypatch.setattr(ep_tf, "np", np)
        with pytest.raises(AttributeError, match="find_common_type"):
            _ = a > b


@pytest.mark.parametrize("axis", [None, 0, 1, (1, 2), (0, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_torch_max_min_match_numpy(torch, axis, keepdims) -> None:
    _compat.apply()
    values = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    t = ep.astensor(torch.from_numpy(values))
    np.testing.assert_array_equal(t.max(axis=axis, keepdims=keepdims).numpy(), values.max(axis=axis, keepdims=keepdims))
    np.testing.assert_array_equal(t.min(axis=axis, keepdims=keepdims).numpy(), values.min(axis=axis, keepdims=keepdims))


def test_torch_max_gradient_splits_between_ties_like_tensorflow(torch) -> None:
    """One reduction without arg-max indices: the gradient goes evenly to tied maxima."""
    _compat.apply()
    leaf = torch.tensor([[1.0, 3.0, 3.0], [0.0, 0.0, 2.0]], requires_grad=True)
    ep.astensor(leaf).max(axis=1).raw.sum().backward()
    np.testing.assert_allclose(leaf.grad.numpy(), [[0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    leaf.grad = None
    ep.astensor(leaf).min(axis=1).raw.sum().backward()
    np.testing.assert_allclose(leaf.grad.numpy(), [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])


def test_jax_index_update_uses_at_set(jax) -> None:
    """EagerPy's JAX ``index_update`` called ``jax.ops.index_update`` (removed from JAX)."""
    import jax.numpy as jnp

    _compat.apply()
    t = ep.astensor(jnp.zeros((2, 3)))
    updated = t.index_update((1, ep.astensor(jnp.array([0, 2]))), 5.0)
    np.testing.assert_array_equal(updated.numpy(), [[0, 0, 0], [5, 0, 5]])
    np.testing.assert_array_equal(t.numpy(), 0)  # arrays are immutable: a new one


def test_eagerpy_jax_tensor_ops_the_toolbox_uses(jax) -> None:
    """EagerPy 0.30's JAX tensor on current JAX: the operations methods and metrics call."""
    import jax.numpy as jnp

    values = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    t = ep.astensor(jnp.asarray(values))
    np.testing.assert_allclose(t.sum(axis=(1, 2)).numpy(), values.sum(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(t.max(axis=1).numpy(), values.max(axis=1))
    np.testing.assert_allclose(t.abs().mean(axis=-1, keepdims=True).numpy(), np.abs(values).mean(-1, keepdims=True), rtol=1e-5)
    np.testing.assert_array_equal(t.argsort(axis=-1).numpy(), values.argsort(axis=-1))
    np.testing.assert_array_equal(t[ep.astensor(jnp.array([1, 1, 0]))].numpy(), values[[1, 1, 0]])
    np.testing.assert_allclose(ep.where(t > 0, t, 0.0).numpy(), np.maximum(values, 0))
    np.testing.assert_allclose(ep.concatenate([t, t], axis=0).numpy(), np.concatenate([values, values]))
    np.testing.assert_allclose(t.transpose((0, 2, 1)).reshape((2, -1)).numpy(), values.transpose(0, 2, 1).reshape(2, -1))
    np.testing.assert_allclose(t.softmax(axis=-1).numpy().sum(-1), 1.0, rtol=1e-5)
    values_and_grads = ep.value_and_grad(lambda z: (z * z).sum(), t)
    np.testing.assert_allclose(values_and_grads[1].numpy(), 2 * values, rtol=1e-6)
    assert t.numpy().dtype == np.float32 and ep.from_numpy(t, np.ones(2)).shape == (2,)
