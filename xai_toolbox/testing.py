"""The plugin contract as a reusable check, and the tiny twin models it runs on.

Plugin authors call :func:`check_method` / :func:`check_metric` on their classes in their own
test suites; the built-ins pass the same checks.

Example:
    >>> from xai_toolbox.testing import check_method
    >>> check_method(MyMethod, params={"nb_samples": 16})     # raises AssertionError on failure
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .backends import adapt, framework_info, frameworks
from .backends.adapter import to_numpy
from .backends.test_models import keras_layout

__all__ = [
    "as_numpy",
    "check_adapter",
    "check_method",
    "check_metric",
    "cnn",
    "cnn_weights",
    "copy_model",
    "installed_frameworks",
    "keras_layout",
    "linear_model",
    "normalized",
    "to_framework",
    "twin_cnn",
]


def installed_frameworks() -> list[str]:
    """The registered frameworks installed here whose plugin ships test models (the built-ins:
    ``"torch"``, ``"tf"``; an adapter plugin adds its own).

    Example:
        >>> installed_frameworks()
        ['tf', 'torch']
    """
    return [f.name for f in frameworks(installed=True) if f.build_test_model is not None]


def _builder(framework: str) -> Callable[..., Any]:
    info = framework_info(framework)
    if info.build_test_model is None:
        raise AssertionError(
            f"framework {info.name!r} ({info.display_name}) registers no test models: its plugin's "
            "Framework(build_test_model=...) is needed to run the contract on it"
        )
    if not info.available():
        raise AssertionError(f"framework {info.name!r} is not installed (import {info.module!r} failed)")
    return info.build_test_model


# -- twin models ---------------------------------------------------------------------------
def cnn_weights(seed: int = 0, *, channels: int = 3, classes: int = 4, width: int = 8) -> dict[str, np.ndarray]:
    """Random weights (PyTorch layout) of the test CNN, from NumPy so no framework is needed."""
    rng = np.random.default_rng(seed)

    def uniform(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        bound = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, shape).astype(np.float32)

    return {
        "conv1.weight": uniform((width, channels, 3, 3), channels * 9),
        "conv1.bias": uniform((width,), channels * 9),
        "conv2.weight": uniform((2 * width, width, 3, 3), width * 9),
        "conv2.bias": uniform((2 * width,), width * 9),
        "fc.weight": uniform((classes, 2 * width), 2 * width),
        "fc.bias": uniform((classes,), 2 * width),
    }


def cnn(
    framework: str,
    seed: int = 0,
    *,
    channels: int = 3,
    size: int = 16,
    classes: int = 4,
    width: int = 8,
    training: bool = False,
) -> Any:
    """A small CNN ``conv1 → relu1 → pool1 → conv2 → relu2 → gap → fc`` in ``framework``
    (any registered framework whose plugin builds test models).

    The same ``seed`` gives the same weights in every framework (kernels transposed), so twin
    models compute the same function on ``(N, C, H, W)`` / ``(N, H, W, C)`` inputs.
    ``training=True`` hands the model over in training mode where the framework has one.

    Example:
        >>> torch_model, keras_model = cnn("torch"), cnn("tf")      # twins
    """
    weights = cnn_weights(seed, channels=channels, classes=classes, width=width)
    return _builder(framework)(
        "cnn", weights=weights, channels=channels, size=size, classes=classes, width=width, training=training
    )


def twin_cnn(seed: int = 0, **kwargs: Any) -> tuple[Any, Any]:
    """``(torch_model, keras_model)``: :func:`cnn` in both frameworks with the same weights."""
    return cnn("torch", seed, **kwargs), cnn("tf", seed, **kwargs)


def linear_model(framework: str, weight: np.ndarray, bias: np.ndarray | None = None) -> Any:
    """``f(x) = W · flatten(x) (+ b)`` in ``framework``; ``weight`` is ``(K, *input_shape)`` with
    the input shape channels-first (as PyTorch sees it), e.g. ``(K, C, H, W)`` or ``(K, F)``.

    Channels-last frameworks get the weight permuted, so every model computes the same scores
    for the same images in its own layout.

    Example:
        >>> model = linear_model("tf", np.ones((2, 3, 4, 4)))
    """
    return _builder(framework)("linear", weight=weight, bias=bias)


def to_framework(images_nchw: np.ndarray, framework: str) -> Any:
    """NumPy images ``(N, C, H, W)`` as the framework's native batch (layout included).

    Example:
        >>> to_framework(np.zeros((1, 3, 8, 8), np.float32), "tf").shape
        TensorShape([1, 8, 8, 3])
    """
    info = framework_info(framework)
    images = _framework_layout(np.ascontiguousarray(images_nchw, dtype=np.float32), info.channel_axis)
    return images if info.to_native is None else info.to_native(images)


def _framework_layout(images_nchw: np.ndarray, channel_axis: int) -> np.ndarray:
    if channel_axis == 1 or images_nchw.ndim < 3:
        return images_nchw
    return np.ascontiguousarray(np.moveaxis(images_nchw, 1, -1))


def as_numpy(t: Any) -> np.ndarray:
    """Any tensor or array as NumPy (a host copy for device tensors)."""
    return to_numpy(t)


def normalized(maps: np.ndarray) -> np.ndarray:
    """Per-item min-max normalisation, for comparing maps up to scale and offset."""
    maps = np.asarray(maps, dtype=np.float64)
    axes = tuple(range(1, maps.ndim))
    lo, hi = maps.min(axis=axes, keepdims=True), maps.max(axis=axes, keepdims=True)
    return (maps - lo) / np.where(hi - lo > 0, hi - lo, 1.0)


# -- the contract ----------------------------------------------------------------------------
def _chosen(frameworks: Sequence[str] | None) -> list[str]:
    chosen = [framework_info(f).name for f in frameworks] if frameworks else installed_frameworks()
    for name in chosen:
        _builder(name)  # not installed, or no test models: an AssertionError that says so
    if not chosen:
        raise AssertionError("no framework with test models is installed")
    return chosen


def _images(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((3, 3, 16, 16), dtype=np.float32), np.array([0, 1, 3])


def check_method(
    cls: type,
    params: dict[str, Any] | None = None,
    *,
    frameworks: Sequence[str] | None = None,
    atol: float = 1e-4,
    seed: int = 0,
) -> None:
    """Run the method contract on ``cls`` and raise ``AssertionError`` naming what failed.

    Checks, in each framework (default: every installed one with test models; any registered
    framework can be named): output shape ``(N, H, W)``, float32, the inputs' type (native in
    → native out, NumPy in → NumPy out), finite values; the model left as it was (weights,
    training flags, gradients: :meth:`~xai_toolbox.extend.ModelAdapter.model_state`); the
    same map for ``batch_size=1`` and a larger batch; the same map twice (seeded methods: same
    ``seed``). Across frameworks: the same map for twin models with identical weights, after
    per-image min-max normalisation, within ``atol``.

    Example:
        >>> check_method(MyMethod, {"nb_samples": 16})
        >>> check_method(MyMethod, frameworks=["torch"])
    """
    params = dict(params or {})
    images, targets = _images(seed)
    name = getattr(cls, "name", "") or cls.__name__
    maps: dict[str, np.ndarray] = {}
    for framework in _chosen(frameworks):
        where = f"{name} on {framework}"
        model = cnn(framework, seed, training=True)  # a call must switch to inference and back
        x = to_framework(images, framework)
        adapter = adapt(model, framework)
        before = adapter.model_state()
        out = cls(model, **params)(x, targets)
        assert type(out) is type(x), f"{where}: returned {type(out).__name__} for a {type(x).__name__} input"
        result = as_numpy(out)
        assert result.shape == (3, 16, 16), f"{where}: shape {result.shape}, expected (3, 16, 16)"
        assert result.dtype == np.float32, f"{where}: dtype {result.dtype}, expected float32"
        assert np.all(np.isfinite(result)), f"{where}: non-finite values"
        assert adapter.model_state() == before, (
            f"{where}: the model was left changed (weights, training flags or gradients)"
        )
        as_array = as_numpy(x)
        from_numpy = cls(model, **params)(as_array, targets)
        assert isinstance(from_numpy, np.ndarray), f"{where}: NumPy inputs must give NumPy explanations"
        np.testing.assert_allclose(from_numpy, result, atol=atol, rtol=1e-4, err_msg=f"{where}: not repeatable")
        one = as_numpy(cls(model, **{**params, "batch_size": 1})(x, targets))
        np.testing.assert_allclose(
            normalized(one), normalized(result), atol=atol, err_msg=f"{where}: depends on batch_size"
        )
        if getattr(cls, "stochastic", False):
            _check_seed(cls, params, model, x, targets, result, where)
        maps[framework] = result
    _twins_agree(name, maps, atol)


def _check_seed(cls: type, params: dict[str, Any], model: Any, x: Any, targets: Any, result: np.ndarray, where: str) -> None:
    """A method declaring ``stochastic = True`` takes a ``seed``, and another seed draws anew."""
    assert "seed" in cls.param_names(), f"{where}: stochastic = True but no seed parameter"
    seed = params.get("seed", cls(model).get_params().get("seed"))
    other = as_numpy(cls(model, **{**params, "seed": (seed or 0) + 1})(x, targets))
    assert not np.array_equal(other, result) or np.ptp(result) == 0, f"{where}: the seed changes nothing"


def _twins_agree(name: str, results: dict[str, np.ndarray], atol: float, *, normalize: bool = True) -> None:
    first, *others = results
    for other in others:
        a, b = results[first], results[other]
        if normalize:
            a, b = normalized(a), normalized(b)
        np.testing.assert_allclose(a, b, atol=atol, err_msg=f"{name}: {first} and {other} twins disagree")


def check_metric(
    cls: type,
    params: dict[str, Any] | None = None,
    *,
    frameworks: Sequence[str] | None = None,
    atol: float = 1e-4,
    seed: int = 0,
    masks: bool = False,
) -> None:
    """Run the metric contract on ``cls`` and raise ``AssertionError`` naming what failed.

    Checks: a :class:`~xai_toolbox.MetricResult` with ``(N,)`` finite scores; repeatable;
    independent of ``batch_size``; the model left as it was; and the same scores for twin
    models in every framework checked (within ``atol``).

    Example:
        >>> check_metric(MyMetric, {"steps": 4})
        >>> check_metric(MyLocalisationMetric, masks=True)
    """
    from .base import MetricResult

    params = dict(params or {})
    images, targets = _images(seed)
    rng = np.random.default_rng(seed + 1)
    explanations = rng.random((3, 16, 16), dtype=np.float32)
    gt = np.zeros((3, 16, 16), dtype=np.float32)
    gt[:, 4:10, 5:12] = 1
    kwargs = {"masks": gt} if masks else {}
    name = getattr(cls, "name", "") or cls.__name__
    scores: dict[str, np.ndarray] = {}
    for framework in _chosen(frameworks):
        where = f"{name} on {framework}"
        model = cnn(framework, seed, training=True)
        x = to_framework(images, framework)
        adapter = adapt(model, framework)
        before = adapter.model_state()
        result = cls(model, **params)(x, targets, explanations, **kwargs)
        assert isinstance(result, MetricResult), f"{where}: returned {type(result).__name__}"
        assert result.scores.shape == (3,), f"{where}: scores shape {result.scores.shape}, expected (3,)"
        assert np.all(np.isfinite(result.scores)), f"{where}: non-finite scores"
        again = cls(model, **{**params, "batch_size": 1})(x, targets, explanations, **kwargs)
        np.testing.assert_allclose(again.scores, result.scores, atol=atol, err_msg=f"{where}: depends on batch_size")
        assert adapter.model_state() == before, (
            f"{where}: the model was left changed (weights, training flags or gradients)"
        )
        scores[framework] = result.scores
    _twins_agree(name, scores, atol, normalize=False)


def copy_model(model: Any) -> Any:
    """An independent copy of a model of any registered framework (weights included)."""
    return adapt(model).clone().model


# -- the adapter contract ---------------------------------------------------------------------
def check_adapter(framework: str, *, atol: float = 1e-4, seed: int = 0) -> None:
    """Run the adapter contract on a registered framework and raise ``AssertionError`` naming
    what failed.

    On the framework's test CNN (see :class:`~xai_toolbox.extend.Framework`): the adapter the
    ``adapt_model`` hooks return is the framework's, with ``display_name`` and its layout;
    conversions (NumPy and native in, the caller's type out); forward passes; an error of the
    model wrapped in :class:`~xai_toolbox.errors.ModelError`; gradients (where the framework
    has them) equal through the generic and the built-in-score entry points and with the
    retried-rows window; inner layers (names, resolution, the default CAM layer, activations
    and their gradients, unknown names listed); seeded device draws; row gathers and in-place
    writes; model state left as found by a method call; weights, re-initialisation and copies.
    Everything numeric is compared with the twin model of every other installed framework.

    Example:
        >>> check_adapter("tf")
    """
    from .errors import LayerError, ModelError

    info = framework_info(framework)
    name = info.name
    images, targets = _images(seed)
    model = cnn(name, seed)
    adapter = adapt(model)
    assert adapter.framework == name, f"{name}: adapt() chose the {adapter.framework!r} adapter"
    assert isinstance(adapter.display_name, str) and adapter.display_name, f"{name}: no display_name"
    assert adapter.channel_axis == info.channel_axis, f"{name}: channel_axis differs from its Framework"
    assert adapter.supports_gradients == info.gradients, f"{name}: gradients differ from its Framework"
    native = to_framework(images, name)
    assert adapter.is_native(native), f"{name}: is_native() rejects the framework's own tensor"
    x = adapter.to_model(native)
    np.testing.assert_array_equal(as_numpy(x), as_numpy(adapter.to_model(as_numpy(native))))
    assert isinstance(adapter.restore(x, as_numpy(native)), np.ndarray), f"{name}: restore(like=NumPy)"
    assert adapter.is_native(adapter.restore(x, native)), f"{name}: restore(like=native)"
    try:
        adapter.forward(x[:, :1] if info.channel_axis == 1 else x[..., :1])
    except ModelError:
        pass
    else:
        raise AssertionError(f"{name}: a model failing on bad inputs was not reported as ModelError")
    assert adapter.is_out_of_memory(MemoryError()), f"{name}: MemoryError is not treated as out of memory"

    results = {name: _adapter_results(adapter, x, targets, seed)}
    for other in installed_frameworks():
        if other != name:
            other_adapter = adapt(cnn(other, seed))
            results[other] = _adapter_results(other_adapter, other_adapter.to_model(to_framework(images, other)), targets, seed)
    reference = results[name]
    for other, values in results.items():
        for key, value in reference.items():
            if key in values:
                np.testing.assert_allclose(
                    value, values[key], atol=atol, rtol=1e-4, err_msg=f"{name} vs {other}: {key} differ"
                )

    _check_rows_and_draws(adapter, x, name)
    if adapter.supports_layers:
        try:
            adapter.resolve_layer("no_such_layer")
        except LayerError as error:
            assert "conv2" in str(error), f"{name}: the unknown-layer error does not list the layers"
        else:
            raise AssertionError(f"{name}: an unknown layer name was accepted")
    if adapter.supports_gradients:
        from .api import method

        before = adapter.model_state()

        method("saliency", model)(native, targets)
        assert adapter.model_state() == before, f"{name}: a method call left the model changed"
    _check_weights(adapter, x, name)


def _adapter_results(adapter: Any, x: Any, targets: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Everything comparable across twin frameworks, channels first."""
    from . import extend as xe

    axis = adapter.channel_axis
    out: dict[str, np.ndarray] = {"forward": as_numpy(adapter.forward(x))}
    weights = adapter.from_numpy(x, np.eye(4, dtype=np.float32)[targets])
    out["built pass"] = _built_pass(adapter, x, weights, seed)
    if adapter.supports_gradients:
        values, grads = adapter.weighted_value_and_grad(x, weights)
        generic = adapter.value_and_grad(
            lambda z: (adapter.differentiable_forward(z) * xe.rows(weights)).sum(axis=1), x
        )
        np.testing.assert_allclose(as_numpy(values), as_numpy(generic[0]), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(as_numpy(grads), as_numpy(generic[1]), atol=1e-5, rtol=1e-5)
        out["score"] = as_numpy(values)
        out["input gradient"] = as_numpy(xe.channels_first(grads, axis))
        out.update(_relu_rule_gradients(adapter, x, weights, out["input gradient"]))
    if adapter.supports_layers:
        layer = adapter.resolve_layer("conv2")
        default = adapter.default_layer(x)
        assert adapter.resolve_layer(default) == adapter.resolve_layer("relu2"), (
            f"{adapter.framework}: default CAM layer {default!r}, expected the last spatial layer relu2"
        )
        acts, _, outputs = adapter.layer_activations(x, layer)
        out["activations"] = as_numpy(xe.channels_first(acts, axis))
        np.testing.assert_allclose(as_numpy(outputs), out["forward"], atol=1e-5, rtol=1e-5)
        # The rest of the network from given activations: its own give the forward pass back.
        again = adapter.forward_with_activations(x, layer, acts)
        np.testing.assert_allclose(as_numpy(again), out["forward"], atol=1e-5, rtol=1e-5)
        out["head of zeros"] = as_numpy(adapter.forward_with_activations(x, layer, acts * 0.0))
        if adapter.supports_gradients:
            _, layer_grads, _ = adapter.weighted_layer_activations(x, layer, weights)
            assert layer_grads is not None
            out["layer gradient"] = as_numpy(xe.channels_first(layer_grads, axis))
    return out


def _built_pass(adapter: Any, x: Any, weights: Any, seed: int) -> np.ndarray:
    """Scores of masked inputs through ``forward_built`` (build, model, finish as one pass),
    checked against the same steps run in turn, for a chunk of rows and a smaller chunk of one
    image's row broadcast; compared across twins."""
    from . import extend as xe

    axis = adapter.channel_axis
    size = tuple(x.shape[2:]) if axis == 1 else tuple(x.shape[1:3])
    keep = np.random.default_rng(seed + 7).random((x.shape[0], *size)) > 0.5
    masks = adapter.from_numpy(x, keep.astype(np.float32))

    def build(rows: Any, m: Any, w: Any) -> Any:
        return xe.perturb(rows, m, axis, "inpainting", 0.5), w

    def finish(outputs: Any, w: Any) -> Any:
        return xe.weighted_score(outputs, w)

    results = []
    for rows, m, w in ((x, masks, weights), (x[:1], masks[1:], weights[1:])):
        built = as_numpy(adapter.forward_built(build, rows, m, w, finish=finish))
        steps = as_numpy(finish(adapter.forward(build(rows, m, w)[0]), w))
        np.testing.assert_allclose(
            built, steps, atol=1e-5, rtol=1e-5, err_msg=f"{adapter.framework}: forward_built differs from its steps"
        )
        results.append(built)
    return np.concatenate(results)


def _relu_rule_gradients(adapter: Any, x: Any, weights: Any, plain: np.ndarray) -> dict[str, np.ndarray]:
    """Input gradients under the ReLU rules where the adapter has them (compared across twins),
    and ordinary gradients unchanged after each block (a rule must not leak into cached passes)."""
    from . import extend as xe
    from .errors import UnsupportedModelError

    out: dict[str, np.ndarray] = {}
    for rule in ("guided", "deconv"):
        try:
            with adapter.relu_backward(rule):
                grads = adapter.weighted_value_and_grad(x, weights)[1]
        except UnsupportedModelError:
            return out
        out[f"{rule} gradient"] = as_numpy(xe.channels_first(grads, adapter.channel_axis))
        after = as_numpy(xe.channels_first(adapter.weighted_value_and_grad(x, weights)[1], adapter.channel_axis))
        np.testing.assert_allclose(after, plain, atol=1e-6, err_msg=f"{adapter.framework}: {rule} rule leaked")
    return out


def _check_rows_and_draws(adapter: Any, x: Any, name: str) -> None:
    items = np.array([2, 2, 0, 1, 1])
    expected = as_numpy(x)[items]
    np.testing.assert_array_equal(as_numpy(adapter.take_rows(x, items)), expected, err_msg=f"{name}: take_rows")
    one = adapter.broadcast_rows(x, np.array([1, 1, 1]))
    assert tuple(one.shape)[0] in (1, 3), f"{name}: broadcast_rows shape {tuple(one.shape)}"
    a = as_numpy(adapter.random_normal(x, (2000,), 7))
    assert np.array_equal(a, as_numpy(adapter.random_normal(x, (2000,), 7))), f"{name}: draws not seeded"
    assert not np.array_equal(a, as_numpy(adapter.random_normal(x, (2000,), 8))), f"{name}: seed ignored"
    assert abs(a.mean()) < 0.1 and abs(a.std() - 1) < 0.1, f"{name}: draws are not standard normal"
    if adapter.mutable_tensors:
        buffer = adapter.from_numpy(x, np.zeros((3, 2), np.float32)).raw
        adapter.write_rows(buffer, slice(0, 2), adapter.from_numpy(x, np.ones((2, 2), np.float32)).raw)
        adapter.write_rows(buffer, 1, adapter.from_numpy(x, np.ones(2, np.float32)).raw, add=True)
        np.testing.assert_array_equal(as_numpy(buffer), [[1, 1], [2, 2], [0, 0]], err_msg=f"{name}: write_rows")


def _check_weights(adapter: Any, x: Any, name: str) -> None:
    try:
        layers = adapter.weight_layers()
    except Exception:  # the framework does not expose weights: model randomisation is out
        return
    assert [n.replace(".", "/").rsplit("/", 1)[-1] for n in layers] == ["conv1", "conv2", "fc"], (
        f"{name}: weight_layers() gave {layers}"
    )
    before = as_numpy(adapter.forward(x))
    clone = adapter.clone()
    assert clone.model is not adapter.model, f"{name}: clone() returned the same model"
    clone.reinitialize([layers[-1]], lambda shapes: [np.zeros(s, np.float32) for s in shapes])
    np.testing.assert_array_equal(as_numpy(clone.forward(x)), 0.0, err_msg=f"{name}: reinitialize")
    # (to float rounding: a shared, zeroed head would give zeros)
    np.testing.assert_allclose(as_numpy(adapter.forward(x)), before, rtol=1e-5, atol=1e-7, err_msg=f"{name}: clone shares weights")
