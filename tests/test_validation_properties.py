"""Property-based tests of the validation layer (hypothesis).

Random shapes, dtypes, layouts, values, targets, explanations, masks and hyper-parameters
either work or raise an :class:`~xai_toolbox.XaiToolboxError` — never another exception
(no ``IndexError`` from NumPy, no ``RuntimeError`` from a framework). Where a call works, the
result has the documented shape.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np
import pytest
from _shared import CountedModel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xai_toolbox as xt
from xai_toolbox.testing import cnn

# derandomize: the same examples on every run (reproducible CI), still far more than by hand.
SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}

_models: dict[str, Any] = {}


def _model(framework: str) -> Any:
    if framework not in _models:
        _models[framework] = cnn(framework)
    return _models[framework]


DTYPES = ["float32", "float64", "float16", "int32", "uint8", "bool", "complex64"]


@st.composite
def batches(draw: Any, framework: str) -> dict[str, Any]:
    """A batch: rank 1–5, small dims, a dtype, the channels first or last, odd values.

    One in two is a valid image batch for ``framework``, so the success path is exercised too.
    """
    if draw(st.booleans()):
        n, side = draw(st.integers(1, 3)), draw(st.sampled_from([2, 4, 16]))
        shape = (n, 3, side, side) if framework == "torch" else (n, side, side, 3)
        dtype = draw(st.sampled_from(["float32", "float64", "float16"]))
        return {"shape": shape, "dtype": dtype, "special": None, "as_list": False}
    rank = draw(st.integers(1, 5))
    n = draw(st.integers(0, 3))
    dims = [draw(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 16])) for _ in range(rank - 1)]
    if rank == 4 and draw(st.booleans()):  # mostly plausible images, channels somewhere
        side = draw(st.sampled_from([1, 2, 4, 16]))
        channels = draw(st.sampled_from([1, 3, 4]))
        dims = [channels, side, side] if draw(st.booleans()) else [side, side, channels]
    shape = (n, *dims)[:rank] if rank > 1 else (draw(st.integers(0, 4)),)
    dtype = draw(st.sampled_from(DTYPES))
    special = draw(st.sampled_from([None, np.nan, np.inf, -np.inf, 1e30]))
    return {"shape": shape, "dtype": dtype, "special": special, "as_list": draw(st.booleans()) and len(shape) <= 2}


def _make_inputs(spec: dict[str, Any], framework: str, native: bool) -> Any:
    rng = np.random.default_rng(0)
    a = rng.random(spec["shape"]) * 2 - 1
    if spec["special"] is not None and a.size:
        a.flat[0] = spec["special"]
    with np.errstate(invalid="ignore", over="ignore"):
        a = a.astype(spec["dtype"])
    if spec["as_list"]:
        return a.tolist()
    if not native:
        return a
    if framework == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(a))
    import tensorflow as tf

    return tf.convert_to_tensor(a)


TARGETS = st.one_of(
    st.none(),
    st.integers(-3, 6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=3),
    st.lists(st.integers(-2, 6), max_size=4),
    st.lists(st.one_of(st.floats(-2, 6), st.just(float("nan"))), max_size=4),
    st.lists(st.booleans(), max_size=4),
    st.lists(st.sampled_from(["cat", "dog"]), max_size=4),
    st.lists(st.lists(st.integers(0, 1), max_size=5), max_size=4),  # one-hot rows, maybe ragged
    st.lists(st.lists(st.floats(-1, 1), min_size=4, max_size=4), min_size=1, max_size=4),
    st.builds(lambda n, k: np.eye(max(k, 1), dtype=bool)[np.arange(n) % max(k, 1)], st.integers(1, 4), st.integers(1, 5)),
    st.builds(lambda d: {"label": d}, st.integers()),
)


def _expected_shape(inputs: Any, framework: str) -> tuple[int, ...]:
    shape = tuple(np.shape(inputs)) if isinstance(inputs, list) else tuple(int(d) for d in inputs.shape)
    if len(shape) <= 2:
        return shape
    axis = 1 if framework == "torch" else len(shape) - 1
    return shape[:axis] + shape[axis + 1 :]


def _check(call: Any) -> Any:
    """Run ``call``; return its result, or None if it raised a toolbox error (anything else fails)."""
    try:
        return call()
    except xt.XaiToolboxError:
        return None


@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_random_inputs_and_targets_work_or_raise_toolbox_errors(framework: str, method: str) -> None:
    examples = 60 if framework == "torch" else 25

    outcomes = {"worked": 0, "rejected": 0}

    @settings(max_examples=examples, **SETTINGS)
    @given(spec=batches(framework), targets=st.one_of(st.none(), st.lists(st.integers(0, 3), min_size=3, max_size=3), TARGETS), native=st.booleans())
    def run(spec: dict[str, Any], targets: Any, native: bool) -> None:
        inputs = _make_inputs(spec, framework, native)
        if isinstance(targets, list) and len(targets) == 3 and spec["shape"] and all(isinstance(t, int) for t in targets):
            targets = targets[: spec["shape"][0]]  # integer labels, one per input
        maps = _check(lambda: xt.method(method, _model(framework))(inputs, targets))
        outcomes["worked" if maps is not None else "rejected"] += 1
        if maps is not None:
            assert tuple(np.shape(maps)) == _expected_shape(inputs, framework)
            assert np.all(np.isfinite(np.asarray(maps)))

    run()
    assert outcomes["worked"] and outcomes["rejected"], outcomes  # both paths were exercised


def test_random_targets_on_valid_images(framework: str) -> None:
    """Targets alone: every form either resolves to a valid map or raises a TargetError."""
    rng = np.random.default_rng(0)
    shape = (2, 3, 16, 16) if framework == "torch" else (2, 16, 16, 3)
    images = rng.random(shape, dtype=np.float32)

    @settings(max_examples=80 if framework == "torch" else 30, **SETTINGS)
    @given(targets=TARGETS)
    def run(targets: Any) -> None:
        try:
            maps = xt.Saliency(_model(framework))(images, targets)
        except xt.TargetError:
            return
        assert maps.shape == (2, 16, 16)

    run()


class MeanOfMaps(xt.Metric):
    """A trivial metric (mean explanation value per input) to drive the metric validation."""

    name = "mean_of_maps"

    def score_batch(self, x: ep.Tensor, targets: Any, maps: ep.Tensor | None, masks: ep.Tensor | None) -> Any:
        assert maps is not None
        scores = maps.reshape((maps.shape[0], -1)).mean(axis=1)
        if masks is not None:
            scores = scores + masks.reshape((masks.shape[0], -1)).mean(axis=1)
        return self.make_result(scores)


def test_random_explanations_and_masks_for_a_metric(framework: str) -> None:
    rng = np.random.default_rng(0)
    shape = (2, 3, 16, 16) if framework == "torch" else (2, 16, 16, 3)
    images = rng.random(shape, dtype=np.float32)
    shapes = st.sampled_from([(2, 16, 16), shape, (2, 16), (1, 16, 16), (2, 16, 16, 1), (2, 8, 8), (2,), (), (3, 16, 16)])
    arrays = st.builds(
        lambda s, d, special: _array(s, d, special),
        shapes, st.sampled_from(DTYPES + ["<U1", "object"]), st.sampled_from([None, np.nan, np.inf]),
    )

    @settings(max_examples=80 if framework == "torch" else 30, **SETTINGS)
    @given(maps=st.one_of(st.none(), arrays, st.lists(st.integers(), max_size=3)), masks=st.one_of(st.none(), arrays))
    def run(maps: Any, masks: Any) -> None:
        result = _check(lambda: MeanOfMaps(_model(framework))(images, [0, 1], maps, masks))
        if result is not None:
            assert result.scores.shape == (2,)

    run()


def _array(shape: tuple[int, ...], dtype: str, special: float | None) -> np.ndarray:
    a = np.random.default_rng(0).random(shape)
    if special is not None and a.size:
        a.flat[0] = special
    if dtype in ("<U1", "object"):
        return a.astype(str).astype(dtype)
    with np.errstate(invalid="ignore"):
        return a.astype(dtype)


def _keyword_params(cls: type) -> list[str]:
    return [p for p in cls.param_names() if p not in ("progress", "framework")]  # type: ignore[attr-defined]


def _defaults(cls: type) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = vars(klass).get("__init__")
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                found[p.name] = p.default
    return found


# Keep the runs of expensive methods short whatever parameter is being varied.
_SMALL = {
    "steps": 3, "nb_samples": 4, "nb_design": 8, "max_iter": 2, "grid_size": 4,
    "patch_size": 8, "stride": 8,
}


def _small(cls: type, varied: str) -> dict[str, Any]:
    names = _keyword_params(cls)
    small = {k: v for k, v in _SMALL.items() if k in names and k != varied}
    if "nb_design" in small and cls.__name__.lower().startswith("hsic"):
        small["nb_design"] = 16
    return small


def _registered_classes() -> list[tuple[str, type]]:
    registry = xt.registry.get_registry()
    return [("method", registry.method(n).cls) for n in xt.list_methods()] + [
        ("metric", registry.metric(n).cls) for n in xt.list_metrics()
    ]


def _build_and_run(kind: str, cls: type, param: str, value: Any) -> None:
    model = _model("torch")
    images = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    maps = np.random.default_rng(1).random((1, 16, 16), dtype=np.float32)
    tool = cls(model, **{param: value, **_small(cls, param)})
    if kind == "method":
        tool(images, [0])
    else:
        tool(images, [0], maps, (maps > 0.5).astype(np.float32))


BAD_VALUES = [None, True, -3, -1, 0, 0.5, -0.5, float("nan"), float("inf"), 1e9, "", "nonsense", [1], [], object()]
CLASSES = _registered_classes()


@pytest.mark.parametrize(("kind", "cls"), CLASSES, ids=[f"{k}-{c.name}" for k, c in CLASSES])
def test_every_parameter_of_every_plugin_rejects_bad_values_cleanly(torch, kind: str, cls: type) -> None:
    """Every constructor parameter of every registered method and metric, found by
    introspection, given odd values: the plugin works or raises an XaiToolboxError (at
    construction or at call time) — never a bare TypeError/ValueError from deep inside.
    NaN is accepted by no parameter (boolean flags aside), nor is -1 by integer ones."""
    defaults = _defaults(cls)
    unclean, accepted = [], []
    for param in _keyword_params(cls):
        for value in BAD_VALUES:
            if param == "batch_size" and value == 1e9:
                continue  # valid, just slow
            try:
                _build_and_run(kind, cls, param, value)
            except xt.XaiToolboxError:
                continue
            except Exception as exc:
                unclean.append(f"{param}={value!r}: {type(exc).__name__}: {exc}")
                continue
            default = defaults.get(param)
            nan = isinstance(value, float) and np.isnan(value) and not isinstance(default, bool)
            negative_int = value == -1 and type(default) is int
            if nan or negative_int:
                accepted.append(f"{param}={value!r}")
    assert not unclean, f"{cls.name}: non-toolbox errors for " + "; ".join(unclean[:5])
    assert not accepted, f"{cls.name}: accepted " + ", ".join(accepted)


# -- explicit catalogue entries (docs/reliability.md) not covered by tests/test_validation.py ---
def _good(framework: str, n: int = 2) -> np.ndarray:
    x = np.random.default_rng(0).random((n, 3, 16, 16), dtype=np.float32)
    return x if framework == "torch" else x.transpose(0, 2, 3, 1).copy()


INPUT_CASES: dict[str, tuple[Callable[[str], Any], Any, type, str]] = {
    "ragged nested lists": (lambda fw: [[0.0, 1.0], [2.0]], [0, 1], xt.InputError, "could not be read as an array"),
    "an empty axis": (lambda fw: _good(fw)[:, :0] if fw == "torch" else _good(fw)[:, :, :, :0], [0, 1], xt.InputError, "empty axis"),
    "the wrong number of channels": (lambda fw: _good(fw)[:, :2] if fw == "torch" else _good(fw)[..., :2], [0, 1], xt.InputError, "expects 3 channels"),
    "tabular rows for an image model": (lambda fw: _good(fw).reshape(2, -1), [0, 1], xt.InputError, r"expects images .* \(rank 4\)"),
    "complex inputs": (lambda fw: _good(fw).astype(np.complex64), [0, 1], xt.InputDtypeError, "floating point"),
    "boolean inputs": (lambda fw: _good(fw) > 0.5, [0, 1], xt.InputDtypeError, "floating point"),
    "string targets": (_good, ["cat", "dog"], xt.TargetError, "strings — map class names to indices"),
    "boolean targets": (_good, [True, False], xt.TargetError, "booleans"),
    "a boolean target": (_good, True, xt.TargetError, "booleans"),
    "object targets": (_good, [{"a": 1}, 2], xt.TargetError, "Python objects"),
    "ragged targets": (_good, [[0, 1], [1]], xt.TargetError, "could not be read as an array"),
    "a huge target index": (_good, [0, 1e30], xt.TargetError, "out of range"),
    "NaN target weights": (_good, np.array([[1, 0, 0, np.nan], [0, 1, 0, 0]]), xt.TargetError, "NaN"),
    "complex target weights": (_good, np.eye(4, dtype=np.complex64)[:2], xt.TargetError, "complex"),
}


@pytest.mark.parametrize("case", sorted(INPUT_CASES))
def test_catalogue_inputs_and_targets(framework: str, case: str) -> None:
    make, targets, error, message = INPUT_CASES[case]
    counted = CountedModel(framework)
    with pytest.raises(error, match=message):
        xt.Saliency(counted.model)(make(framework), targets)
    assert counted.calls == 0


def test_catalogue_boolean_one_hot_targets_are_accepted(framework: str) -> None:
    """A boolean (N, K) one-hot is unambiguous, unlike boolean (N,) labels."""
    model = cnn(framework)
    onehot = np.eye(4, dtype=bool)[[0, 3]]
    np.testing.assert_allclose(
        np.asarray(xt.Saliency(model)(_good(framework), onehot)), np.asarray(xt.Saliency(model)(_good(framework), [0, 3]))
    )


def _explanations_case(framework: str, case: str) -> tuple[Any, Any]:
    """(explanations, masks) for a metric catalogue case."""
    good = np.random.default_rng(1).random((2, 16, 16), dtype=np.float32)
    masks = (good > 0.5).astype(np.float32)
    nan = good.copy()
    nan[0, 0, 0] = np.nan
    return {
        "explanations missing": (None, masks),
        "explanations of the wrong size": (good[:, :8, :8], masks),
        "explanations for one input fewer": (good[:1], masks),
        "explanations with NaN": (nan, masks),
        "string explanations": (good.astype(str), masks),
        "ragged explanations": ([[0.0, 1.0], [2.0]], masks),
        "masks missing": (good, None),
        "masks of the wrong size": (good, masks[:, :8]),
        "masks with NaN": (good, nan),
        "string masks": (good, masks.astype(str)),
    }[case]


METRIC_CASES = {
    "explanations missing": (xt.ExplanationShapeError, "needs explanations"),
    "explanations of the wrong size": (xt.ExplanationShapeError, r"explanations of shape \(2, 8, 8\) do not match"),
    "explanations for one input fewer": (xt.ExplanationShapeError, r"expected \(2, 16, 16\)"),
    "explanations with NaN": (xt.NonFiniteInputError, "explanations contain NaN"),
    "string explanations": (xt.ExplanationShapeError, "must be numbers"),
    "ragged explanations": (xt.ExplanationShapeError, "could not be read as an array"),
    "masks missing": (xt.ExplanationShapeError, "needs ground-truth masks"),
    "masks of the wrong size": (xt.ExplanationShapeError, r"masks of shape \(2, 8, 16\)"),
    "masks with NaN": (xt.NonFiniteInputError, "masks contain NaN"),
    "string masks": (xt.ExplanationShapeError, "booleans or numbers"),
}


class MaskedMean(MeanOfMaps):
    name = "masked_mean"
    needs_masks = True


@pytest.mark.parametrize("case", sorted(METRIC_CASES))
def test_catalogue_metric_explanations_and_masks(framework: str, case: str) -> None:
    error, message = METRIC_CASES[case]
    counted = CountedModel(framework)
    explanations, masks = _explanations_case(framework, case)
    with pytest.raises(error, match=message):
        MaskedMean(counted.model)(_good(framework), [0, 1], explanations, masks)
    assert counted.calls == 0


def test_catalogue_model_failing_on_validated_inputs(framework: str) -> None:
    """1×1 images pass validation but the CNN's pooling cannot take them: a ModelError that
    names the shape, with the framework's own error chained."""
    x = np.ones((2, 3, 1, 1), np.float32) if framework == "torch" else np.ones((2, 1, 1, 3), np.float32)
    with pytest.raises(xt.ModelError, match=r"model failed on inputs of shape \(") as info:
        xt.Saliency(cnn(framework))(x)
    assert info.value.__cause__ is not None


def test_catalogue_score_fn_and_outputs(framework: str) -> None:
    model = cnn(framework)
    with pytest.raises(xt.ParameterError, match="score_fn must be callable"):
        xt.Saliency(model, score_fn="logits")
    with pytest.raises(xt.ScoreFunctionError, match=r"must return a tensor of shape \(2,\)"):
        xt.Saliency(model, score_fn=lambda out, t: 1.0)(_good(framework))


def test_catalogue_outputs_that_are_not_class_scores(torch) -> None:
    """A model returning (N,) (a regressor) needs a score_fn for class targets."""
    regressor = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1), torch.nn.Flatten(0))
    with pytest.raises(xt.ScoreFunctionError, match="pass targets and score_fn"):
        xt.Saliency(regressor)(np.ones((2, 4), np.float32))
    maps = xt.Saliency(regressor, score_fn=lambda out, t: out)(np.ones((2, 4), np.float32))
    assert maps.shape == (2, 4)


def test_catalogue_seed_convention() -> None:
    """Every plugin's ``seed`` is checked by the engine when stored (None or an int >= 0)."""
    for bad in (-1, 0.5, "0", True):
        with pytest.raises(xt.ParameterError, match="seed must be None or a non-negative integer"):
            xt.SmoothGrad(None, seed=bad)
    assert xt.SmoothGrad(None, seed=np.int64(3)).seed == 3


def test_catalogue_evaluate_with_something_else_than_a_method(torch) -> None:
    with pytest.raises(xt.ParameterError, match="method must be an AttributionMethod"):
        MeanOfMaps(cnn("torch")).evaluate(42, _good("torch"), [0, 1])
