"""Sensitivity-Max, Local Lipschitz and Infidelity: Captum parity on the same perturbations,
analytic values on linear models, loop references, twins, bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _shared import CountedModel

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.metrics.robustness import Infidelity, LocalLipschitz, SensitivityMax
from xai_toolbox.testing import as_numpy, check_metric, cnn, linear_model, to_framework, twin_cnn


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


def uniform_noise(seed: int, n_items: int, n: int, radius: float, shape: tuple[int, ...]) -> np.ndarray:
    """The documented draw: input ``i`` from ``default_rng([seed, i])``, channels first."""
    return np.concatenate([
        np.random.default_rng([seed, i]).uniform(-radius, radius, (n, *shape)).astype(np.float32)
        for i in range(n_items)
    ])


def normal_noise(seed: int, n_items: int, n: int, std: float, shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([
        xe.standard_normal(np.random.default_rng([seed, i]), (n, *shape)) * np.float32(std)
        for i in range(n_items)
    ])


def test_sensitivity_max_matches_captum(torch: Any) -> None:
    captum_metrics = pytest.importorskip("captum.metrics")
    model = cnn("torch", seed=1)
    images, targets = _images(), torch.tensor([0, 2, 3])
    x = torch.from_numpy(images)
    noise = torch.from_numpy(uniform_noise(7, 3, 5, 0.05, (3, 16, 16)))

    def explanation_func(inputs: Any, target: Any) -> Any:
        if isinstance(inputs, tuple):  # Captum's first call: a tuple in, a tuple out
            return (xt.Saliency(model)(inputs[0], target),)
        return xt.Saliency(model)(inputs, target)

    expected = captum_metrics.sensitivity_max(
        explanation_func, x, perturb_func=lambda inputs, radius: inputs + noise,
        perturb_radius=0.05, n_perturb_samples=5, target=targets,
    )
    result = SensitivityMax(model, radius=0.05, nb_samples=5, seed=7)(x, targets)
    np.testing.assert_allclose(result.scores, expected.numpy(), rtol=1e-5, atol=1e-7)


def test_infidelity_matches_captum(torch: Any) -> None:
    captum_metrics = pytest.importorskip("captum.metrics")
    model = cnn("torch", seed=2)
    images, targets = _images(seed=1), torch.tensor([1, 0, 3])
    x = torch.from_numpy(images)
    maps = xt.GradientInput(model)(x, targets)
    perturbation = torch.from_numpy(normal_noise(3, 3, 6, 0.05, (3, 16, 16)))
    attributions = maps[:, None].expand(-1, 3, -1, -1)  # the map weighs every channel
    for normalize in (False, True):
        expected = captum_metrics.infidelity(
            model, lambda inputs: (perturbation, inputs - perturbation), x, attributions,
            target=targets, n_perturb_samples=6, normalize=normalize,
        )
        result = Infidelity(model, std=0.05, nb_samples=6, seed=3, normalize=normalize)(x, targets, maps)
        np.testing.assert_allclose(result.scores, expected.numpy(), rtol=1e-4, atol=1e-9)


def test_linear_model_references(framework: str) -> None:
    weight = np.random.default_rng(4).normal(size=(3, 1, 8, 8)).astype(np.float32)
    model = linear_model(framework, weight)
    images = np.random.default_rng(5).random((2, 1, 8, 8), dtype=np.float32)
    x, targets = to_framework(images, framework), np.array([0, 2])
    # Saliency of a linear model does not depend on x: no sensitivity, Lipschitz estimate 0.
    np.testing.assert_allclose(SensitivityMax(model, nb_samples=4)(x, targets).scores, 0.0, atol=1e-6)
    np.testing.assert_allclose(LocalLipschitz(model, nb_samples=4)(x, targets).scores, 0.0, atol=1e-6)
    # The exact signed gradient is perfectly faithful to any perturbation; twice it only up to β.
    exact = weight[targets, 0]
    np.testing.assert_allclose(Infidelity(model, std=0.1)(x, targets, exact).scores, 0.0, atol=1e-8)
    assert Infidelity(model, std=0.1)(x, targets, 2 * exact).mean > 1e-3
    np.testing.assert_allclose(Infidelity(model, std=0.1, normalize=True)(x, targets, 2 * exact).scores, 0.0, atol=1e-8)


def test_local_lipschitz_matches_a_loop_reference(framework: str) -> None:
    model = cnn(framework, seed=3)
    images, targets = _images(2, seed=2), np.array([2, 1])
    result = LocalLipschitz(model, nb_samples=3, std=0.05, seed=9)(to_framework(images, framework), targets)
    saliency = xt.Saliency(model)
    expected = []
    for i, (image, target) in enumerate(zip(images, targets, strict=True)):
        noise = normal_noise(9, i + 1, 3, 0.05, (3, 16, 16))[3 * i :]
        base = as_numpy(saliency(to_framework(image[None], framework), [target]))[0]
        moved = as_numpy(saliency(to_framework(image[None] + noise, framework), [target] * 3))
        expected.append(max(np.linalg.norm(m - base) / (np.linalg.norm(d) + 1e-10) for m, d in zip(moved, noise, strict=True)))
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4)
    assert result.details["ratios"].shape == (2, 3)


def test_twins_agree(both: None) -> None:
    torch_model, keras_model = twin_cnn(seed=5)
    images, targets = _images(2, seed=3), [3, 1]
    for cls, params in ((SensitivityMax, {"nb_samples": 3}), (LocalLipschitz, {"nb_samples": 3}), (Infidelity, {"std": 0.05})):
        maps = np.random.default_rng(0).random((2, 16, 16), dtype=np.float32)
        a = cls(torch_model, **params)(to_framework(images, "torch"), targets, maps)
        b = cls(keras_model, **params)(to_framework(images, "tf"), targets, maps)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize(
    ("cls", "params"),
    [(SensitivityMax, {"nb_samples": 3}), (LocalLipschitz, {"nb_samples": 3}), (Infidelity, {"nb_samples": 4})],
)
def test_contract(cls: type, params: dict, pytestconfig: pytest.Config) -> None:
    check_metric(cls, params, frameworks=pytestconfig.frameworks)


def test_bad_configuration_fails_before_model_calls(framework: str) -> None:
    counted = CountedModel(framework)
    for cls, bad in (
        (SensitivityMax, {"radius": -1}), (SensitivityMax, {"nb_samples": 0}), (SensitivityMax, {"method": 3}),
        (LocalLipschitz, {"std": 0}), (Infidelity, {"std": -0.1}), (Infidelity, {"activation": "tanh"}),
        (Infidelity, {"seed": -1}),
    ):
        with pytest.raises(xt.ParameterError):
            cls(counted.model, **bad)
    x = to_framework(np.zeros((2, 3, 16, 16), np.float32), framework)
    with pytest.raises(xt.ExplanationShapeError):
        Infidelity(counted.model)(x, [0, 1], np.zeros((2, 8, 8), np.float32))
    assert counted.calls == 0
