"""Keras on TensorFlow with ``xt.adapt(model, compile=True)``: the compiled passes are
XLA-compiled (``jit_compile``) beside the plain ones, with the same results, once per shape."""

from __future__ import annotations

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.testing import as_numpy, cnn

IMAGES = np.random.default_rng(0).random((3, 16, 16, 3), dtype=np.float32)


@pytest.mark.parametrize(
    ("method", "params"),
    [("rise", {"nb_samples": 40, "grid_size": 4}), ("saliency", {}), ("gradcam", {})],
)
def test_xla_passes_give_the_plain_results(tf: object, method: str, params: dict) -> None:
    model = cnn("tf", 0)
    plain = as_numpy(xt.method(method, model, **params, batch_size=16)(IMAGES, [0, 1, 2]))
    compiled = xt.adapt(model, compile=True)
    got = as_numpy(xt.method(method, compiled, **params, batch_size=16)(IMAGES, [0, 1, 2]))
    np.testing.assert_allclose(got, plain, rtol=1e-4, atol=1e-6)
    # Traced beside the plain passes (the key says which), never instead of them.
    assert {key[-2] for key in compiled._compiled} == {False, True}
    traces = compiled.traces
    xt.method(method, compiled, **params, batch_size=16)(IMAGES, [0, 1, 2])
    assert compiled.traces == traces  # no retrace on a second call


def test_keras_layout_is_channels_last_only(tf: object) -> None:
    model = cnn("tf", 0)
    assert xt.adapt(model, memory_format="channels_last").memory_format == "channels_last"
    with pytest.raises(xt.ParameterError, match="memory_format must be one of 'auto', 'channels_last'"):
        xt.adapt(model, memory_format="contiguous")
