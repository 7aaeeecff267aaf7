"""Explaining from several threads at once with one model gives the sequential results.

Four threads share one PyTorch model (in training mode, with Dropout, so a call that ran in
training mode would be visible) and run Saliency, Grad-CAM, Integrated Gradients and a
black-box method in different orders, so hook-based captures (Grad-CAM) overlap plain
forward/backward passes of other threads. Each map must equal the one computed
sequentially; afterwards the model is back in training mode with no hook left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.testing import as_numpy, cnn, to_framework

THREADS = 4
ROUNDS = 3
METHODS: list[tuple[str, dict[str, Any]]] = [
    ("saliency", {}),
    ("gradcam", {}),
    ("integrated_gradients", {"steps": 8}),
    ("occlusion", {"patch_size": 4, "stride": 4}),
    ("rise", {"nb_samples": 32, "grid_size": 4}),
]


def _methods() -> list[tuple[str, dict[str, Any]]]:
    return [(name, params) for name, params in METHODS if name in xt.list_methods()]


def _run_threads(work: Callable[[int], None]) -> None:
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def _torch_model_with_dropout(torch: Any) -> Any:
    base = cnn("torch")
    model = torch.nn.Sequential()
    for name, module in base.named_children():
        model.add_module(name, module)
        if name == "relu2":
            model.add_module("drop", torch.nn.Dropout(0.5))
    return model.train()


@pytest.mark.parametrize("shared", [True, False], ids=["shared-explainers", "per-thread-explainers"])
def test_torch_threads_match_sequential(torch, shared: bool) -> None:
    model = _torch_model_with_dropout(torch)
    rng = np.random.default_rng(0)
    images = [to_framework(rng.random((2, 3, 16, 16), dtype=np.float32), "torch") for _ in range(THREADS)]
    targets = [rng.integers(0, 4, 2) for _ in range(THREADS)]
    methods = _methods()
    explainers = {name: xt.method(name, model, **params) for name, params in methods}
    expected = {
        (name, i): as_numpy(explainers[name](images[i], targets[i]))
        for name, _ in methods
        for i in range(THREADS)
    }
    assert model.training
    results: dict[tuple[str, int, int], np.ndarray] = {}

    def work(i: int) -> None:
        own = explainers if shared else {name: xt.method(name, model, **p) for name, p in methods}
        order = methods[i % len(methods):] + methods[: i % len(methods)]  # overlap different methods
        for r in range(ROUNDS):
            for name, _ in order:
                results[(name, i, r)] = as_numpy(own[name](images[i], targets[i]))

    _run_threads(work)
    for (name, i, r), got in results.items():
        np.testing.assert_allclose(got, expected[(name, i)], rtol=1e-6, atol=1e-7, err_msg=f"{name}, thread {i}, round {r}")
    assert len(results) == THREADS * ROUNDS * len(methods)
    assert model.training, "the training flag was not restored after the threads ended"
    assert all(m.training for m in model.modules())
    assert not any(len(m._forward_hooks) for m in model.modules()), "a hook was left behind"


def test_torch_hook_captures_do_not_catch_other_threads_passes(torch) -> None:
    """Grad-CAM's forward hook sits on a module that other threads' Saliency passes run through
    at the same time: neither may see the other's tensors."""
    model = _torch_model_with_dropout(torch)
    rng = np.random.default_rng(2)
    # 64×64 images: passes long enough (the GIL is released in the kernels) to overlap often;
    # without per-thread captures this fails in most runs.
    images = [to_framework(rng.random((2, 3, 64, 64), dtype=np.float32), "torch") for _ in range(THREADS)]
    makers = [xt.GradCAM, xt.Saliency] * (THREADS // 2)
    expected = [as_numpy(makers[i](model)(images[i], [i % 4, 1])) for i in range(THREADS)]
    bad: list[str] = []

    def work(i: int) -> None:
        method = makers[i](model)
        for r in range(25):
            got = as_numpy(method(images[i], [i % 4, 1]))
            if not np.allclose(got, expected[i], rtol=1e-6, atol=1e-7):
                bad.append(f"{type(method).__name__} in thread {i}, round {r}")

    _run_threads(work)
    assert not bad, bad[:5]
    assert model.training


def test_torch_threads_with_a_failing_call_restore_train_mode(torch) -> None:
    """One thread's call raising while others run must not leave the model in eval mode."""
    model = _torch_model_with_dropout(torch)
    x = to_framework(np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32), "torch")

    def work(i: int) -> None:
        for _ in range(ROUNDS):
            if i == 0:
                with pytest.raises(xt.TargetError):
                    xt.Saliency(model)(x, [0, 9])  # fails in target validation, inside eval mode
            else:
                xt.GradCAM(model)(x, [0, 1])

    _run_threads(work)
    assert model.training


def test_keras_threads_match_sequential(tf) -> None:
    model = cnn("tf")
    rng = np.random.default_rng(0)
    images = [to_framework(rng.random((2, 3, 16, 16), dtype=np.float32), "tf") for _ in range(THREADS)]
    targets = [rng.integers(0, 4, 2) for _ in range(THREADS)]
    methods = [m for m in _methods() if m[0] in ("saliency", "gradcam", "integrated_gradients")]
    explainers = {name: xt.method(name, model, **params) for name, params in methods}
    expected = {(n, i): as_numpy(explainers[n](images[i], targets[i])) for n, _ in methods for i in range(THREADS)}
    results: dict[tuple[str, int], np.ndarray] = {}

    def work(i: int) -> None:
        for name, _ in methods[i % len(methods):] + methods[: i % len(methods)]:
            results[(name, i)] = as_numpy(explainers[name](images[i], targets[i]))

    _run_threads(work)
    for (name, i), got in results.items():
        np.testing.assert_allclose(got, expected[(name, i)], rtol=1e-5, atol=1e-6, err_msg=f"{name}, thread {i}")
    assert not [layer.name for layer in model._flatten_layers() if "call" in layer.__dict__]
