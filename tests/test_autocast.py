"""``xt.autocast()``: forward-only passes of PyTorch models in mixed precision."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox._precision import requested
from xai_toolbox.testing import as_numpy, cnn, to_framework

TARGETS = [0, 1, 2]


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 3, 16, 16)).astype(np.float32)


def _conv_dtypes(torch: Any, net: Any) -> list[Any]:
    seen: list[Any] = []
    net.conv1.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def test_forward_passes_run_in_bfloat16_and_return_float32(torch) -> None:
    net = cnn("torch")
    seen = _conv_dtypes(torch, net)
    adapter = xt.adapt(net)
    x = adapter.to_model(_images())
    with xt.autocast():
        outputs = adapter.forward(x)
    # On the CPU, the device's usual reduced precision (the memory-format trial's passes too).
    assert set(seen) == {torch.bfloat16}
    assert outputs.raw.dtype == torch.float32
    plain = adapter.forward(x)
    assert seen[-1] == torch.float32  # the block is over
    np.testing.assert_allclose(outputs.numpy(), plain.numpy(), atol=0.05)


@pytest.mark.parametrize(("kind", "name", "params", "min_r"), [
    ("method", "rise", {"nb_samples": 128, "grid_size": 4, "seed": 0}, 0.99),
    # Occlusion maps are differences of close scores: bfloat16's 8-bit mantissa shows most.
    ("method", "occlusion", {"patch_size": 4, "stride": 4}, 0.95),
    ("metric", "deletion", {"steps": 8}, 0.99),
])
def test_black_box_results_agree_with_float32(
    torch, kind: str, name: str, params: dict[str, Any], min_r: float
) -> None:
    if name not in (xt.list_methods() if kind == "method" else xt.list_metrics()):
        pytest.skip(f"{name} not registered")
    net = cnn("torch", seed=1)
    seen = _conv_dtypes(torch, net)
    x = to_framework(_images(), "torch")

    def run() -> np.ndarray:
        if kind == "method":
            return as_numpy(xt.method(name, net, **params)(x, TARGETS))
        maps = np.random.default_rng(2).uniform(size=(3, 16, 16)).astype(np.float32)
        return xt.metric(name, net, **params)(x, TARGETS, maps).curves

    plain = run()
    with xt.autocast("bfloat16"):
        mixed = run()
    assert torch.bfloat16 in seen
    assert mixed.dtype == plain.dtype
    r = np.corrcoef(plain.ravel(), mixed.ravel())[0, 1]
    assert r > min_r, r


def test_gradient_passes_stay_in_float32(torch) -> None:
    net = cnn("torch")
    seen = _conv_dtypes(torch, net)
    x = to_framework(_images(), "torch")
    plain = as_numpy(xt.Saliency(net)(x, TARGETS))
    seen.clear()
    with xt.autocast():
        inside = as_numpy(xt.Saliency(net)(x, TARGETS))
    assert seen and all(d == torch.float32 for d in seen)
    np.testing.assert_array_equal(inside, plain)


def test_keras_and_numpy_models_are_refused_before_any_model_call(tf) -> None:
    keras_model = cnn("tf")
    calls: list[int] = []

    def numpy_model(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return np.zeros((len(batch), 4), np.float32)

    with xt.autocast():
        with pytest.raises(xt.UnsupportedModelError, match="mixed_precision.set_global_policy"):
            xt.method("occlusion", keras_model, patch_size=4, stride=4)(to_framework(_images(), "tf"), TARGETS)
        with pytest.raises(xt.UnsupportedModelError, match="autocast"):
            xt.method("occlusion", xt.NumpyModel(numpy_model, channel_axis=1), patch_size=4, stride=4)(_images(), TARGETS)
    assert calls == []


def test_dtype_is_checked_and_blocks_nest_per_thread() -> None:
    with pytest.raises(xt.ParameterError, match="float16, bfloat16"), xt.autocast("float8"):
        pass
    assert requested() is None
    seen_in_thread: list[str | None] = []
    with xt.autocast():
        assert requested() == "auto"
        with xt.autocast("float16"):
            assert requested() == "float16"
        assert requested() == "auto"
        worker = threading.Thread(target=lambda: seen_in_thread.append(requested()))
        worker.start()
        worker.join()
    assert requested() is None
    assert seen_in_thread == [None]  # another thread's calls are not affected
