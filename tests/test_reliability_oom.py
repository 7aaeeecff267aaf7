"""Out-of-memory recovery: a pass that raises the framework's OOM error is retried on halves.

The test models raise the real error types (``torch.OutOfMemoryError``,
``tf.errors.ResourceExhaustedError``) whenever a pass holds more inputs than a threshold, in
the forward pass or only in the backward pass. Every built-in path goes through the adapter
templates (``forward``, ``value_and_grad``, ``layer_activations``): gradient methods, CAMs,
black-box methods, target resolution and metrics. The results must equal a run that never hit
the error, with one :class:`OutOfMemoryWarning` per call.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.errors import ModelError, OutOfMemoryWarning
from xai_toolbox.testing import as_numpy, cnn, to_framework

LIMIT = 3  # the largest pass the test models accept
N = 5

# (name, params): one per built-in path; black-box methods and metrics only if registered.
METHODS = [
    ("saliency", {}),
    ("integrated_gradients", {"steps": 8}),
    ("smoothgrad", {"nb_samples": 4}),
    ("gradcam", {}),
    ("gradcampp", {}),
    ("occlusion", {"patch_size": 8, "stride": 8}),
    ("rise", {"nb_samples": 16, "grid_size": 4}),
    ("sobol", {"grid_size": 2, "nb_design": 8}),
    ("hsic", {"grid_size": 2, "nb_design": 8}),
    ("opticam", {"max_iter": 3}),
]
METRICS = [
    ("deletion", {"steps": 4}),
    ("insertion", {"steps": 4}),
    ("mufidelity", {"grid_size": 4, "nb_samples": 12}),
    ("average_drop", {}),
]


def _images(n: int = N) -> np.ndarray:
    return np.random.default_rng(0).random((n, 3, 16, 16), dtype=np.float32)


TARGETS = np.array([0, 1, 2, 3, 1])


def _registered(name: str, kind: str) -> None:
    names = xt.list_methods() if kind == "method" else xt.list_metrics()
    if name not in names:
        pytest.skip(f"{kind} {name!r} is not registered")


# -- test models -----------------------------------------------------------------------------
def torch_limited(limit: int | None, *, in_backward: bool = False) -> Any:
    """The test CNN behind a gate raising ``torch.OutOfMemoryError`` above ``limit`` inputs."""
    import torch

    class _BackwardGate(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, model: Any) -> Any:
            ctx.model = model
            return x.view_as(x)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            ctx.model.check(grad.shape[0])
            return grad, None

    class Limited(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = cnn("torch")
            self.limit, self.in_backward, self.ooms, self.passes = limit, in_backward, 0, []

        def check(self, n: int) -> None:
            if self.limit is not None and n > self.limit:
                self.ooms += 1
                raise torch.OutOfMemoryError(f"CUDA out of memory (test): {n} inputs > {self.limit}")

        def forward(self, x: Any) -> Any:
            self.passes.append(int(x.shape[0]))
            if not self.in_backward:
                self.check(x.shape[0])
            out = self.inner(x)
            if self.in_backward and out.requires_grad:  # fails only when differentiated
                out = _BackwardGate.apply(out, self)
            return out

    return Limited()


def keras_limited(limit: int | None, *, compiled: bool) -> Any:
    """The test CNN behind a gate raising ``tf.errors.ResourceExhaustedError`` above ``limit``.

    ``compiled=True``: the gate is a graph op (a ``tf.py_function`` raising ``MemoryError``,
    which TensorFlow turns into ``ResourceExhaustedError``), so the adapter's compiled
    ``tf.function`` raises it. ``compiled=False``: a Python check that cannot be traced, so the
    adapter falls back to eager calls and the error comes from eager execution.
    """
    import keras
    import tensorflow as tf

    class Limited(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.inner = cnn("tf")
            self.limit, self.compiled_gate, self.ooms = limit, compiled, 0

        def _gate(self, n: Any) -> Any:
            if self.limit is not None and int(n) > self.limit:
                self.ooms += 1
                raise MemoryError(f"OOM (test): {int(n)} inputs > {self.limit}")
            return tf.constant(0.0)

        def call(self, x: Any, training: bool = False) -> Any:
            if self.compiled_gate:
                zero = tf.reshape(tf.py_function(self._gate, [tf.shape(x)[0]], tf.float32), [])
                x = x + zero
            else:
                n = int(x.shape[0])  # TypeError while tracing (unknown batch): eager fallback
                if self.limit is not None and n > self.limit:
                    self.ooms += 1
                    raise tf.errors.ResourceExhaustedError(None, None, f"OOM (test): {n} inputs")
            return self.inner(x, training=training)

    return Limited()


def _run(make: Any, *args: Any) -> tuple[Any, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = make(*args)
    return out, [w for w in caught if issubclass(w.category, OutOfMemoryWarning)]


def _compare(name: str, got: np.ndarray, expected: np.ndarray) -> None:
    # Same computations on smaller passes: equal up to the float summation order of the
    # framework's batched kernels (measured: at most ~1e-9 here; Opti-CAM iterates, ~1e-6).
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=name)


# -- PyTorch -----------------------------------------------------------------------------------
GRADIENT_METHODS = {"saliency", "integrated_gradients", "smoothgrad", "gradcam", "gradcampp", "opticam"}
CASES = [(m, p, False) for m, p in METHODS] + [(m, p, True) for m, p in METHODS if m in GRADIENT_METHODS]


@pytest.mark.parametrize(
    ("name", "params", "in_backward"), CASES,
    ids=[f"{m}-{'backward' if b else 'forward'}" for m, _, b in CASES],
)
def test_torch_methods_retry_on_half_batches(torch, name: str, params: dict, in_backward: bool) -> None:
    _registered(name, "method")
    x = to_framework(_images(), "torch")
    reference = as_numpy(xt.method(name, torch_limited(None), batch_size=16, **params)(x, TARGETS))
    model = torch_limited(LIMIT, in_backward=in_backward)
    method = xt.method(name, model, batch_size=16, **params)
    model.train()
    maps, oom_warnings = _run(method, x, TARGETS)
    assert model.ooms >= 1, "the test model never ran out of memory"
    assert len(oom_warnings) == 1, [str(w.message) for w in oom_warnings]
    assert "retrying with" in str(oom_warnings[0].message)
    _compare(name, as_numpy(maps), reference)
    assert model.training, "training flag not restored after the retries"
    # The halved size is remembered: a few OOMs per kind of pass, not one per chunk.
    # 16 → 8 → 4 → 2 is 3 halvings per kind of pass (forward, gradient).
    assert model.ooms <= 6, model.ooms


def test_torch_retry_is_exact_for_per_input_passes(torch) -> None:
    """Saliency after OOM equals, bit for bit, a clean run with the retried pass size."""
    x = to_framework(_images(), "torch")
    model = torch_limited(LIMIT)
    maps, caught = _run(xt.Saliency(model, batch_size=16), x, TARGETS)
    # 5 inputs → OOM → passes of 2 (5 // 2): the same passes as batch_size=2 without an error.
    clean = xt.Saliency(torch_limited(None), batch_size=2)(x, TARGETS)
    assert len(caught) == 1
    assert np.array_equal(as_numpy(maps), as_numpy(clean))
    assert model.passes[-3:] == [2, 2, 1]


@pytest.mark.parametrize(("name", "params"), METRICS, ids=[m for m, _ in METRICS])
def test_torch_metrics_retry_on_half_batches(torch, name: str, params: dict) -> None:
    _registered(name, "metric")
    x = to_framework(_images(), "torch")
    maps = np.random.default_rng(1).random((N, 16, 16), dtype=np.float32)
    reference = xt.metric(name, torch_limited(None), batch_size=16, **params)(x, TARGETS, maps)
    model = torch_limited(LIMIT)
    result, caught = _run(xt.metric(name, model, batch_size=16, **params), x, TARGETS, maps)
    assert model.ooms >= 1 and len(caught) == 1
    _compare(name, result.scores, reference.scores)
    if reference.curves is not None:
        _compare(name, result.curves, reference.curves)


def test_torch_top1_targets_are_resolved_with_retries(torch) -> None:
    x = to_framework(_images(), "torch")
    model = torch_limited(LIMIT)
    maps, caught = _run(xt.Saliency(model, batch_size=16), x, None)
    clean = xt.Saliency(torch_limited(None), batch_size=16)(x, None)
    assert len(caught) == 1  # the forward (targets) and the backward share one warning
    _compare("saliency top-1", as_numpy(maps), as_numpy(clean))


def test_torch_oom_at_one_input_is_raised_as_is(torch) -> None:
    model = torch_limited(0)  # even a single input is too much
    model.train()
    x = to_framework(_images(), "torch")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(torch.OutOfMemoryError, match="1 inputs > 0"):
            xt.Saliency(model, batch_size=4)(x)  # top-1 targets: a forward pass of 4 first
    assert sum(issubclass(w.category, OutOfMemoryWarning) for w in caught) == 1
    assert model.passes[-1] == 1  # halved all the way down before giving up
    assert model.training


def test_other_model_errors_are_not_retried(torch) -> None:
    calls = []

    class Broken(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            calls.append(x.shape[0])
            raise RuntimeError("shape mismatch inside the user's model")

    with pytest.raises(ModelError, match=r"PyTorch model failed on inputs of shape \(5, 4\).*shape mismatch") as info:
        xt.Saliency(Broken())(np.ones((5, 4), np.float32))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert isinstance(info.value, RuntimeError)  # `except RuntimeError` still catches it
    assert calls == [5]


def test_adapter_retry_outside_a_method_call(torch) -> None:
    """Direct adapter use (plugin authors): retried too, one warning per pass."""
    adapter = xt.adapt(torch_limited(LIMIT))
    x = adapter.to_model(_images())
    out, caught = _run(adapter.forward, x)
    assert out.shape == (N, 4) and len(caught) == 1
    ref = xt.adapt(torch_limited(None)).forward(x)
    _compare("forward", out.numpy(), ref.numpy())


def test_value_and_grad_fn_closing_over_rows(torch) -> None:
    """A function closing over per-input data uses rows(); one that does not is reported."""
    from xai_toolbox.extend import rows

    adapter = xt.adapt(torch_limited(LIMIT, in_backward=True))
    x = adapter.to_model(_images())
    weights = adapter.from_numpy(x, np.eye(4, dtype=np.float32)[TARGETS])

    def good(z: Any) -> Any:
        return (adapter.differentiable_forward(z) * rows(weights)).sum(axis=1)

    (values, grads), caught = _run(adapter.value_and_grad, good, x)
    ref_adapter = xt.adapt(torch_limited(None))
    ref_values, ref_grads = ref_adapter.value_and_grad(
        lambda z: (ref_adapter.differentiable_forward(z) * weights).sum(axis=1), x
    )
    assert len(caught) == 1
    _compare("values", values.numpy(), ref_values.numpy())
    _compare("grads", grads.numpy(), ref_grads.numpy())

    def bad(z: Any) -> Any:  # whole-batch weights against a part of the batch
        return (adapter.differentiable_forward(z) * weights).sum(axis=1)

    with pytest.raises(RuntimeError) as info, pytest.warns(OutOfMemoryWarning):
        adapter.value_and_grad(bad, x)
    assert any("score each row on its own" in note for note in getattr(info.value, "__notes__", []))


# -- TensorFlow / Keras ------------------------------------------------------------------------
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "eager"])
@pytest.mark.parametrize(
    ("name", "params"),
    [m for m in METHODS if m[0] in ("saliency", "integrated_gradients", "gradcam", "occlusion", "rise")],
    ids=["saliency", "integrated_gradients", "gradcam", "occlusion", "rise"],
)
def test_keras_methods_retry_on_half_batches(tf, name: str, params: dict, compiled: bool) -> None:
    _registered(name, "method")
    x = to_framework(_images(), "tf")
    reference = as_numpy(xt.method(name, keras_limited(None, compiled=compiled), batch_size=16, **params)(x, TARGETS))
    model = keras_limited(LIMIT, compiled=compiled)
    method = xt.method(name, model, batch_size=16, **params)
    maps, caught = _run(method, x, TARGETS)
    assert model.ooms >= 1
    assert len(caught) == 1, [str(w.message) for w in caught]
    _compare(name, as_numpy(maps), reference)
    if compiled:
        # The OOM on the first compiled run does not cause retraces for the smaller passes:
        # one trace per compiled path (the forward, and the gradient for gradient methods).
        paths = {key[-1] for key in method.adapter._compiled}
        assert method.adapter.traces == len(method.adapter._compiled) == len(paths)


def test_keras_metric_retries(tf) -> None:
    _registered("deletion", "metric")
    x = to_framework(_images(), "tf")
    maps = np.random.default_rng(1).random((N, 16, 16), dtype=np.float32)
    reference = xt.metric("deletion", keras_limited(None, compiled=True), batch_size=16, steps=4)(x, TARGETS, maps)
    model = keras_limited(LIMIT, compiled=True)
    result, caught = _run(xt.metric("deletion", model, batch_size=16, steps=4), x, TARGETS, maps)
    assert model.ooms >= 1 and len(caught) == 1
    _compare("deletion", result.scores, reference.scores)


def test_keras_oom_at_one_input_is_raised_as_is(tf) -> None:
    model = keras_limited(0, compiled=True)
    x = to_framework(_images(), "tf")
    with pytest.warns(OutOfMemoryWarning), pytest.raises(tf.errors.ResourceExhaustedError):
        xt.Saliency(model, batch_size=4)(x)
