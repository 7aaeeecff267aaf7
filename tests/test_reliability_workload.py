"""Work and memory are checked before the first model pass, and the device constant cache is
bounded by bytes (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import time
from typing import Any

import numpy as np
import pytest
from _reliability import wrapped_cnn

import xai_toolbox as xt
from xai_toolbox import _budget, ops
from xai_toolbox import extend as xe
from xai_toolbox.testing import cnn

HUGE = {
    "rise": ("method", {"nb_samples": 10**9}),
    "smoothgrad": ("method", {"nb_samples": 10**9}),
    "integrated_gradients": ("method", {"steps": 10**9}),
    "hsic": ("method", {"nb_design": 10**9, "grid_size": 4}),
    "opticam": ("method", {"max_iter": 10**9}),
    "sobol": ("method", {"nb_design": 2**30, "grid_size": 4}),
    "deletion": ("metric", {"steps": 10**9}),
    "insertion": ("metric", {"steps": 10**9}),
    "mufidelity": ("metric", {"nb_samples": 10**9}),
}


def _rss_mb() -> float:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _counting(torch: Any) -> tuple[Any, list[int]]:
    """The test CNN, and the list its forward passes are counted in."""
    calls: list[int] = []

    def forward(net: Any, x: Any) -> Any:
        calls.append(int(x.shape[0]))
        return net(x)

    return wrapped_cnn(torch, forward), calls


@pytest.mark.parametrize("name", list(HUGE))
def test_a_huge_sample_count_is_refused_up_front(torch: Any, name: str) -> None:
    """``nb_samples=10**9`` and the like: a WorkloadError that says the numbers, in well under a
    second, before any model pass and without allocating (RISE grew by 100 MB/s; others ended
    in a bare NumPy MemoryError)."""
    kind, params = HUGE[name]
    model, calls = _counting(torch)
    x = torch.rand(2, 3, 16, 16)
    obj = (xt.method if kind == "method" else xt.metric)(name, model, **params)
    rss = _rss_mb()
    start = time.perf_counter()
    with pytest.raises(xt.WorkloadError) as info:
        obj(x, [0, 1]) if kind == "method" else obj(x, [0, 1], np.ones((2, 16, 16), np.float32))
    assert time.perf_counter() - start < 5.0  # about 0.01 s; generous for a loaded machine
    assert _rss_mb() - rss < 50
    assert not calls
    message = str(info.value)
    assert message.startswith(f"{name}: this call would run the model on ") and "more than the limit of 100,000,000" in message
    assert "XAI_TOOLBOX_MAX_MODEL_INPUTS" in message


def test_memory_is_checked_against_what_the_machine_has(torch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(2, 3, 16, 16)
    monkeypatch.setattr(_budget, "available_memory", lambda: 100_000)  # 100 kB free
    with pytest.raises(xt.WorkloadError, match=r"needs at least 192\.0 KiB of memory at once.*only 97\.7 KiB"):
        xt.Rise(cnn("torch"), nb_samples=100, batch_size=64)(x, [0, 1])  # 64 inputs of 3 KiB per pass
    xt.Rise(cnn("torch"), nb_samples=8, batch_size=8, grid_size=4)(x, [0, 1])  # 96 KiB: runs
    with pytest.raises(xt.WorkloadError, match="mufidelity: .*nb_samples=10000 subsets of 81 cells"):
        xt.MuFidelity(cnn("torch"), nb_samples=10_000)(x, [0, 1], np.ones((2, 16, 16), np.float32))


def test_the_limit_can_be_raised_or_lowered(torch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(2, 3, 16, 16)
    monkeypatch.setenv("XAI_TOOLBOX_MAX_MODEL_INPUTS", "10")
    with pytest.raises(xt.WorkloadError, match="16 inputs .* limit of 10 per call"):
        xt.Rise(cnn("torch"), nb_samples=8, grid_size=4)(x, [0, 1])
    monkeypatch.setenv("XAI_TOOLBOX_MAX_MODEL_INPUTS", "lots")
    with pytest.raises(xt.ParameterError, match="XAI_TOOLBOX_MAX_MODEL_INPUTS must be a positive integer"):
        xt.Rise(cnn("torch"), nb_samples=8, grid_size=4)(x, [0, 1])


def test_check_workload_and_available_memory_are_public() -> None:
    assert (xe.available_memory() or 1) > 0
    xe.check_workload("plugin", model_inputs=10, held_bytes=10)
    with pytest.raises(xt.WorkloadError, match=r"plugin: .* \(steps=7\)"):
        xe.check_workload("plugin", model_inputs=10**12, cause="steps=7")


def test_chunks_are_made_when_asked_for() -> None:
    """A call's chunk list no longer grows with its sample count (RISE built 10**9/64 chunk
    objects before its first pass)."""
    todo = xe.chunks(10**6, 10**6, 1)
    assert len(todo) == 10**12
    last = todo[-1]
    assert (last.start, last.stop) == (10**12 - 1, 10**12) and todo[0].items.tolist() == [0]
    assert [(c.start, c.stop) for c in xe.chunks(2, 3, 4)] == [(0, 4), (4, 6)]
    assert [(c.start, c.stop) for c in xe.chunks(2, 3, 4)[::-1]] == [(4, 6), (0, 4)]


# -- the device constant cache -------------------------------------------------------------------
def test_the_device_cache_is_bounded_by_bytes(torch: Any) -> None:
    """Resizing to many sizes keeps at most DEVICE_CACHE_BYTES between calls (it was bounded by
    count only: RISE over 80 image heights kept 0.9 GB)."""
    import eagerpy as ep

    x = ep.astensor(torch.ones((1, 4, 4)))
    for size in range(500, 3000, 100):  # 2 to 12 MB interpolation matrices
        ops.resize(x, (size, 3), "bilinear")
        assert ops.device_cache_bytes() <= ops.DEVICE_CACHE_BYTES
    big = ep.astensor(torch.ones((1, 4, 4)))
    table = np.ones((ops.DEVICE_CACHE_BYTES // 4 // 4 + 1,), np.float32)  # over a quarter of the cache
    with ops.constants_scope():
        first = ops.on_device(big, ("test-big-table",), table)
        assert ops.on_device(big, ("test-big-table",), table) is first  # held for the call
    assert not any("test-big-table" in key for key in ops._device_cache)  # gone with it


def test_rise_over_many_image_heights_keeps_no_more_than_the_bound(torch: Any) -> None:
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4)).eval()
    method = xt.Rise(model, nb_samples=1, grid_size=7, seed=0)
    for height in range(100, 1300, 60):  # 20 heights, 0.6 to 9 MB of crop tables each
        method(torch.rand(1, 3, height, 32), [0])
        assert ops.device_cache_bytes() <= ops.DEVICE_CACHE_BYTES
    assert ops._call_constants.get() is None  # no call's constants outlive it


def test_the_cpu_allocators_error_is_retried_on_smaller_batches(torch: Any) -> None:
    """PyTorch's CPU allocator says "can't allocate memory", not "out of memory": a batch too
    large for the host is now halved like one too large for a GPU (it was a ModelError)."""
    base = cnn("torch")

    def greedy(net: Any, x: Any) -> Any:
        if x.shape[0] > 4:
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                "memory: you tried to allocate 65536000000 bytes. Error code 12 (Cannot allocate memory)"
            )
        return net(x)

    x = torch.rand(2, 3, 16, 16)
    params = {"nb_samples": 32, "grid_size": 4, "seed": 0, "batch_size": 16}
    expected = xt.Rise(base, **params)(x, [0, 1])
    with pytest.warns(xt.OutOfMemoryWarning, match="retrying with 8 inputs per pass"):
        got = xt.Rise(wrapped_cnn(torch, greedy, base), **params)(x, [0, 1])
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)
