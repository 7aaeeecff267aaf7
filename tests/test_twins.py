"""Every built-in method and metric on every framework under test, twin models compared.

The twins are the test CNN (``xai_toolbox.testing.cnn``) built with the same weights in each
framework: PyTorch, Keras on TensorFlow, JAX (Flax NNX), Keras on JAX and Keras on PyTorch.
:func:`~xai_toolbox.testing.check_method` / :func:`~xai_toolbox.testing.check_metric` run the
contract in each framework and compare the maps (scores) across all of them. Keras's backend is
chosen once per process, so each tox env compares the frameworks it can hold: ``all`` PyTorch
and Keras-on-TensorFlow (there each family's own ``test_contract`` compares them, so this file
skips), ``jax`` PyTorch, JAX and Keras-on-JAX, ``keras-torch`` PyTorch and Keras-on-PyTorch;
PyTorch is the twin they share.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.registry import get_registry
from xai_toolbox.testing import as_numpy, check_method, check_metric, cnn, to_framework

#: Fast settings of every built-in method (the values of each family's own contract test).
METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "saliency": {}, "gradient_input": {}, "integrated_gradients": {"steps": 8},
    "smoothgrad": {"nb_samples": 6, "seed": 3}, "squaregrad": {"nb_samples": 6, "seed": 3},
    "vargrad": {"nb_samples": 6, "seed": 3}, "gradient_shap": {"nb_samples": 8, "seed": 1},
    "guided_backprop": {}, "deconvnet": {}, "forgrad": {"method": "saliency", "sigma": 4.0},
    "gradcam": {}, "gradcampp": {}, "xgradcam": {}, "layercam": {}, "hirescam": {},
    "eigencam": {}, "fem": {}, "scorecam": {"batch_size": 7}, "ablationcam": {"batch_size": 7},
    "opticam": {"max_iter": 5},
    "rise": {"nb_samples": 40, "grid_size": 4, "seed": 1}, "sobol": {"nb_design": 4, "grid_size": 3},
    "hsic": {"nb_design": 40, "grid_size": 4, "seed": 1}, "occlusion": {"patch_size": 5, "stride": 4},
    "lime": {"nb_samples": 64, "grid_size": 4, "seed": 1}, "kernel_shap": {"nb_samples": 64, "grid_size": 4, "seed": 1},
    "shapley_value_sampling": {"nb_samples": 3, "grid_size": 4, "seed": 1}, "feature_ablation": {"grid_size": 4},
}

#: Fast settings of every built-in metric but MeGe (which takes its own models: below).
METRIC_PARAMS: dict[str, dict[str, Any]] = {
    "deletion": {"steps": 4}, "insertion": {"steps": 4}, "mufidelity": {"nb_samples": 12, "seed": 1},
    "average_drop": {}, "average_increase": {}, "average_gain": {}, "average_stability": {"nb_samples": 3},
    "complexity": {}, "sparseness": {}, "infidelity": {"nb_samples": 4}, "sensitivity_max": {"nb_samples": 3},
    "local_lipschitz": {"nb_samples": 3}, "random_logit": {}, "randomization": {},
    "road_lerf": {"percentiles": [0.2, 0.6]}, "road_morf": {"percentiles": [0.2, 0.6]},
    "pointing_game": {}, "energy_pointing_game": {}, "relevance_mass_accuracy": {}, "relevance_rank_accuracy": {},
}
#: Metrics scored against ground-truth masks.
MASK_METRICS = {"pointing_game", "energy_pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy"}


def _builtins(kind: str) -> set[str]:
    table = get_registry().methods if kind == "method" else get_registry().metrics
    return {name for name, entry in table.items() if entry.package == "xai-toolbox"}


def _twins(pytestconfig: pytest.Config) -> list[str]:
    frameworks = list(pytestconfig.frameworks)  # type: ignore[attr-defined]
    if len(frameworks) < 2 or set(frameworks) <= {"torch", "tf"}:
        pytest.skip("twins beyond PyTorch and Keras-on-TensorFlow need another framework under test "
                    "(tox -e jax, -e keras-torch); those two are compared by each family's test_contract")
    return frameworks


def test_every_builtin_method_and_metric_has_twin_settings() -> None:
    assert _builtins("method") == set(METHOD_PARAMS)
    assert _builtins("metric") == {*METRIC_PARAMS, "mege"}


@pytest.mark.parametrize("name", sorted(METHOD_PARAMS))
def test_method_twins(name: str, pytestconfig: pytest.Config) -> None:
    check_method(get_registry().method(name).cls, METHOD_PARAMS[name], frameworks=_twins(pytestconfig))


@pytest.mark.parametrize("name", sorted(METRIC_PARAMS))
def test_metric_twins(name: str, pytestconfig: pytest.Config) -> None:
    cls = get_registry().metric(name).cls
    check_metric(cls, METRIC_PARAMS[name], frameworks=_twins(pytestconfig), masks=name in MASK_METRICS)


def test_mege_twins(pytestconfig: pytest.Config) -> None:
    """MeGe on four models of each framework (the same four weights everywhere)."""
    images = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    targets = np.array([0, 1, 2, 3])
    scores = {}
    for framework in _twins(pytestconfig):
        models = [cnn(framework, seed) for seed in range(4)]
        result = xt.metric("mege", models[0], models=models, method="saliency")(to_framework(images, framework), targets)
        scores[framework] = as_numpy(result.scores)
    first, *others = scores
    for other in others:
        np.testing.assert_allclose(scores[other], scores[first], atol=1e-4, err_msg=f"mege: {first} vs {other}")
