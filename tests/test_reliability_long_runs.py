"""No growth over long runs: hooks, caches, traces and memory stay flat across many calls.

The slow variant makes 300 consecutive calls of every registered method (and metric) on a
tiny model with 1–2 images; the default run makes 30. After every call: no PyTorch hook is
left on any module, no Keras layer is left with a wrapped ``call``. After the first call: the
device constant cache, the Keras adapter's compiled functions and its trace count do not
change. Memory: between call 50 and call 300, resident memory grows by less than
``RSS_BOUND_MB`` and the number of live Python objects by less than ``OBJECTS_BOUND``
(measured on 2 CPU cores: at most 2.5 MB — allocator warm-up, flat over 1 500 calls — and
±2 objects).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
from typing import Any

import numpy as np
import pytest
from _shared import FAST_METHOD_PARAMS as METHOD_PARAMS
from _shared import FAST_METRIC_PARAMS as METRIC_PARAMS

import xai_toolbox as xt
from xai_toolbox import ops
from xai_toolbox.testing import cnn, to_framework

RSS_BOUND_MB = 5.0
OBJECTS_BOUND = 100
# The randomisation metric copies the model on every call, and TensorFlow keeps a few KB of
# C++ state per traced copy (flat when the copies run eagerly: measured 1 MB per 250 calls in a
# plain process, up to 13 MB inside pytest; Python objects stay flat). Reusing one copy per
# metric would remove it; until then the bound catches a copy or graph kept per call.
RSS_BOUND_MB_FOR = {("tf", "randomization"): 25.0}



def _rss_mb() -> float:
    """Resident memory after giving freed heap pages back to the OS (glibc keeps them per
    thread arena otherwise, which makes RSS jump by tens of MB with no live allocation)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: plain RSS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _torch_hooks(model: Any) -> dict[str, int]:
    import torch

    attrs = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    found = {
        f"{name or '<model>'}.{attr}": len(getattr(module, attr))
        for name, module in model.named_modules()
        for attr in attrs
        if len(getattr(module, attr, ()))
    }
    module = torch.nn.modules.module
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if len(getattr(module, attr, ())):
            found[attr] = len(getattr(module, attr))
    return found


def _keras_patched(model: Any) -> list[str]:
    return [layer.name for layer in model._flatten_layers(include_self=True) if "call" in layer.__dict__]


def _leftovers(framework: str, model: Any) -> Any:
    return _torch_hooks(model) if framework == "torch" else _keras_patched(model)


def _caches(framework: str, tool: Any) -> dict[str, int]:
    adapter = tool.adapter
    sizes = {"ops._device_cache": len(ops._device_cache)}
    if framework == "tf":
        sizes["compiled functions"] = len(adapter._compiled)
        sizes["traces"] = adapter.traces
        sizes["default layers"] = len(adapter._default_layers)
    return sizes


def _build(kind: str, name: str, model: Any) -> Any:
    if kind == "method":
        return xt.method(name, model, **METHOD_PARAMS.get(name, {}))
    return xt.metric(name, model, **METRIC_PARAMS.get(name, {}))


def _long_run(framework: str, kind: str, name: str, calls: int, measure_from: int | None) -> None:
    rng = np.random.default_rng(0)
    batches = [to_framework(rng.random((n, 3, 16, 16), dtype=np.float32), framework) for n in (1, 2)]
    targets = [np.array([1]), np.array([0, 3])]
    maps = [rng.random((n, 16, 16), dtype=np.float32) for n in (1, 2)]
    model = cnn(framework)
    tool = _build(kind, name, model)
    masks = [np.ones((n, 16, 16), np.float32) for n in (1, 2)] if getattr(tool, "needs_masks", False) else [None, None]

    def call(i: int) -> None:
        j = i % 2  # 1 and 2 images in turn: a new batch size must not retrace
        if kind == "method":
            tool(batches[j], targets[j])
        else:
            tool(batches[j], targets[j], maps[j], masks[j])

    call(0)
    call(1)
    caches = _caches(framework, tool)
    assert len(ops._device_cache) <= 513, "the device constant cache is unbounded"
    start: tuple[float, int] | None = None
    for i in range(calls):
        call(i)
        assert not _leftovers(framework, model), f"{name}, call {i}: left {_leftovers(framework, model)}"
        if i == measure_from:
            gc.collect()
            start = (_rss_mb(), len(gc.get_objects()))
    assert _caches(framework, tool) == caches, f"{name}: caches or traces grew"
    if framework == "torch":
        from xai_toolbox.backends.torch import _mode_users

        assert model not in _mode_users, "the eval-mode bookkeeping kept the model"
    if start is not None:
        gc.collect()
        rss, objects = _rss_mb() - start[0], len(gc.get_objects()) - start[1]
        bound = RSS_BOUND_MB_FOR.get((framework, name), RSS_BOUND_MB)
        assert rss < bound, f"{name}: resident memory grew by {rss:.1f} MB over {calls - measure_from} calls"
        assert objects < OBJECTS_BOUND, f"{name}: {objects} more live Python objects after {calls} calls"


def _cases() -> list[tuple[str, str]]:
    return [("method", m) for m in xt.list_methods()] + [("metric", m) for m in xt.list_metrics()]


@pytest.mark.parametrize("name", xt.list_methods())
def test_30_calls_leave_no_hooks_and_no_new_traces(framework: str, name: str) -> None:
    _long_run(framework, "method", name, calls=30, measure_from=None)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), _cases(), ids=[f"{k}-{n}" for k, n in _cases()])
def test_300_calls_keep_memory_flat(framework: str, kind: str, name: str, pytestconfig: pytest.Config) -> None:
    if "slow" not in (pytestconfig.getoption("markexpr") or ""):
        pytest.skip("slow (minutes): run with -m slow")  # until addopts deselects slow tests
    _long_run(framework, kind, name, calls=300, measure_from=50)


def test_one_shot_calls_in_a_loop_do_not_accumulate(framework: str) -> None:
    """``xt.explain`` builds a new adapter per call: nothing may pile up across them, and a
    Keras model is traced once, not once per call."""
    model = cnn(framework)
    x = to_framework(np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32), framework)
    xt.explain(model, x, [0, 1], method="gradcam")
    xt.explain(model, x, [0, 1], method="saliency")
    traces = getattr(xt.adapt(model), "traces", None)
    gc.collect()
    objects = len(gc.get_objects())
    for _ in range(20):
        xt.explain(model, x, [0, 1], method="gradcam")
        xt.explain(model, x, [0, 1], method="saliency")
    gc.collect()
    assert len(gc.get_objects()) - objects < OBJECTS_BOUND
    assert not _leftovers(framework, model)
    if framework == "tf":
        # Grad-CAM's layer pass and Saliency's gradient: each traced once, not once per call.
        assert traces == 2 and xt.adapt(model).traces == 2
        assert {key[-1] for key in xt.adapt(model)._compiled} == {"gradient", f"layer {_gradcam_layer(model)} gradient"}


def _gradcam_layer(model: Any) -> str:
    adapter = xt.adapt(model)
    return adapter.default_layer(adapter.to_model(np.zeros((1, 16, 16, 3), np.float32)))


def test_dropped_keras_models_are_collected_with_their_traces(tf) -> None:
    """The compiled forwards shared per model hold it weakly: a model copy made for each call
    (as the randomisation metric does) is freed with its traces."""
    import weakref

    from xai_toolbox.backends.tensorflow import _compiled_by_model

    x = to_framework(np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32), "tf")
    refs = []
    for seed in range(3):
        model = cnn("tf", seed)
        xt.Saliency(model)(x, [0, 1])
        xt.GradCAM(model)(x, [0, 1])
        refs.append(weakref.ref(model))
    del model
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert not any(ref() in _compiled_by_model for ref in refs)


def test_device_cache_stays_bounded_over_many_sizes(torch) -> None:
    """Resizing to many sizes (e.g. a stream of differently sized images) cannot grow the cache."""
    import eagerpy as ep

    x = ep.astensor(torch.ones((1, 4, 4)))
    for size in range(2, 400):
        ops.resize(x, (size, 3), "bilinear")
        assert len(ops._device_cache) <= 513
