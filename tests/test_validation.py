"""Bad input fails before any model call, with an XaiToolboxError saying what was expected."""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np
import pytest
from _shared import CountedModel

import xai_toolbox as xt
from xai_toolbox import errors
from xai_toolbox.testing import cnn, to_framework


def _images(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).random((n, 3, 16, 16), dtype=np.float32)


def _native(framework: str, x: np.ndarray) -> Any:
    return to_framework(x, framework)


CASES = {
    "wrong rank": (lambda fw: _native(fw, _images())[0], [0], errors.InputError, "batch axis|rank"),
    "empty batch": (lambda fw: _native(fw, _images())[:0], [], errors.InputError, "empty"),
    "integer dtype": (lambda fw: (_images() * 255).astype(np.uint8) if fw == "torch"
                      else (_images() * 255).astype(np.uint8).transpose(0, 2, 3, 1), [0, 1],
                      errors.InputDtypeError, "floating point"),
    "NaN": (lambda fw: _native(fw, np.where(np.arange(16) == 3, np.nan, _images()).astype(np.float32)),
            [0, 1], errors.NonFiniteInputError, "NaN"),
    "inf": (lambda fw: _native(fw, np.where(np.arange(16) == 3, np.inf, _images()).astype(np.float32)),
            [0, 1], errors.NonFiniteInputError, "infinite"),
    "target out of range": (lambda fw: _native(fw, _images()), [0, 4], errors.TargetError, r"index 4.*0\.\.3"),
    "negative target": (lambda fw: _native(fw, _images()), [-1, 0], errors.TargetError, "out of range"),
    "target length": (lambda fw: _native(fw, _images()), [0, 1, 2], errors.TargetError, "3 targets for 2 inputs"),
    "fractional targets": (lambda fw: _native(fw, _images()), np.array([0.5, 1.0]), errors.TargetError, "integer"),
    "one-hot width": (lambda fw: _native(fw, _images()), np.eye(5)[:2], errors.TargetError, r"expected shape \(2, 4\)"),
    "target rank": (lambda fw: _native(fw, _images()), np.zeros((2, 4, 1)), errors.TargetError, "shape"),
}


def _flipped(framework: str) -> Any:
    """Channels on the other framework's axis."""
    x = _images()
    if framework == "torch":
        import torch

        return torch.from_numpy(x.transpose(0, 2, 3, 1).copy())
    import tensorflow as tf

    return tf.convert_to_tensor(x)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_bad_input_fails_before_any_model_call(framework: str, case: str, method: str) -> None:
    make, targets, error, message = CASES[case]
    counter = CountedModel(framework)
    with pytest.raises(error, match=message) as info:
        xt.method(method, counter.model)(make(framework), targets)
    assert isinstance(info.value, xt.XaiToolboxError)
    assert counter.calls == 0


def test_channels_in_the_wrong_position(framework: str) -> None:
    counter = CountedModel(framework)
    expected = r"\(N, C, H, W\)" if framework == "torch" else r"\(N, H, W, C\)"
    with pytest.raises(errors.LayoutError, match=f"expects images {expected}.*transpose"):
        xt.Saliency(counter.model)(_flipped(framework), [0, 1])
    assert counter.calls == 0


def test_unknown_layer_before_the_forward(framework: str) -> None:
    counter = CountedModel(framework)
    with pytest.raises(errors.LayerError, match="available layers"):
        xt.GradCAM(counter.model, layer="nope")(_native(framework, _images()), [0, 1])
    assert counter.calls == 0


def test_score_fn_of_the_wrong_shape(framework: str) -> None:
    model = cnn(framework)
    with pytest.raises(errors.ScoreFunctionError, match=r"one score per input, shape \(2,\)"):
        xt.Saliency(model, score_fn=lambda out, t: out)(_native(framework, _images()))


def test_parameters_out_of_range() -> None:
    with pytest.raises(errors.ParameterError, match="batch_size must be a positive integer"):
        xt.Saliency(None, batch_size=0)
    with pytest.raises(errors.ParameterError, match="steps"):
        xt.IntegratedGradients(None, steps=-3)
    with pytest.raises(errors.ParameterError, match="rule must be one of"):
        xt.IntegratedGradients(None, rule="simpson")
    with pytest.raises(errors.ParameterError, match="noise"):
        xt.SmoothGrad(None, noise=-1.0)
    with pytest.raises(errors.LayerError, match="layer must be a layer name"):
        xt.GradCAM(None, layer=3)


def test_unsupported_model_and_gradients_of_callables() -> None:
    with pytest.raises(errors.UnsupportedModelError, match="no backend accepts"):
        xt.Saliency(object())(np.zeros((1, 4), np.float32), [0])
    with pytest.raises(errors.UnsupportedModelError, match="needs gradients"):
        xt.Saliency(lambda x: x[:, :2])(np.zeros((1, 4), np.float32), [0])


def test_targets_are_checked_against_the_output_width_without_static_info(torch) -> None:
    class Custom(torch.nn.Module):  # not Sequential: output width only known by running it
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(errors.TargetError, match="model with 3 outputs"):
        xt.Saliency(Custom())(np.ones((2, 4), np.float32), [0, 3])


def test_errors_are_one_family() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.XaiToolboxError)
        assert getattr(xt, name) is getattr(errors, name)


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1.0, -2.0, 0.0], False),
        ([3e38, 3e38, 3e38], False),  # the sum overflows, the values are finite
        ([-3e38, -3e38, 1.0], False),
        ([1.0, float("nan"), 2.0], True),
        ([1.0, float("inf"), 2.0], True),
        ([float("-inf"), 3e38, 3e38], True),
        ([float("inf"), float("-inf"), 0.0], True),
    ],
)
def test_has_non_finite_is_exact(values: list[float], expected: bool) -> None:
    from xai_toolbox._validation import has_non_finite

    x = ep.astensor(np.asarray(values, dtype=np.float32))
    assert has_non_finite(x) is expected


def test_nested_sequential_models_are_read_statically(torch) -> None:
    from xai_toolbox.backends.torch import TorchAdapter

    head = torch.nn.Linear(8, 5)
    model = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU()),
        torch.nn.Flatten(),
        torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Sequential(head)),
    )
    adapter = TorchAdapter(model)
    assert adapter.expected_input() == (4, 3) and adapter.output_width() == 5
    with pytest.raises(errors.TargetError, match="model with 5 outputs"):
        xt.Saliency(model)(np.ones((1, 3, 4, 4), np.float32), [5])
    model[2][1][0] = torch.nn.Linear(8, 7)  # a replaced head is seen on the next call
    assert adapter.output_width() == 7
    assert TorchAdapter(torch.nn.Sequential()).output_width() is None
