"""AverageStability and MeGe/ReCo: references, Xplique's recorded numbers, twins, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _shared import CountedModel
from scipy import stats

import xai_toolbox as xt
from xai_toolbox.metrics.stability import AverageStability, MeGe, reco
from xai_toolbox.testing import as_numpy, check_metric, cnn, linear_model, to_framework, twin_cnn

PEERS = Path(__file__).parent / "data" / "peers"


def _recorded() -> tuple[dict, np.lib.npyio.NpzFile]:
    return json.loads((PEERS / "xplique_metrics.json").read_text()), np.load(PEERS / "inputs.npz")


def test_average_stability_matches_a_loop_reference(framework: str) -> None:
    model = cnn(framework, seed=1)
    images, targets = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32), np.array([1, 3])
    result = AverageStability(model, nb_samples=3, radius=0.2, seed=5, distance="l1")(to_framework(images, framework), targets)
    offsets = np.random.default_rng(5).uniform(0, 0.2, (3, 3, 16, 16)).astype(np.float32)
    saliency = xt.Saliency(model)
    expected = []
    for image, target in zip(images, targets, strict=True):
        base = as_numpy(saliency(to_framework(image[None], framework), [target]))[0]
        neighbours = as_numpy(saliency(to_framework(image[None] + offsets, framework), [target] * 3))
        expected.append(np.mean([np.abs(n - base).sum() for n in neighbours]))
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4)
    assert result.details["distances"].shape == (2, 3) and result.family == "stability"


def test_saliency_of_a_linear_model_is_perfectly_stable(framework: str) -> None:
    weight = np.random.default_rng(2).normal(size=(3, 1, 8, 8)).astype(np.float32)
    model = linear_model(framework, weight)
    images = np.random.default_rng(3).random((2, 1, 8, 8), dtype=np.float32)
    result = AverageStability(model, nb_samples=4)(to_framework(images, framework), [0, 2])
    np.testing.assert_allclose(result.scores, 0.0, atol=1e-6)


def test_average_stability_matches_xplique(framework: str) -> None:
    """Xplique 2.0.2's AverageStability with its offsets replaced by the documented draw."""
    recorded, inputs = _recorded()
    params = recorded["average_stability"]
    metric = AverageStability(cnn(framework), radius=params["radius"], nb_samples=params["nb_samples"], seed=params["seed"])
    result = metric(to_framework(inputs["images"], framework), inputs["labels"])
    np.testing.assert_allclose(result.scores, params["scores"], rtol=1e-4, atol=1e-8)
    assert result.mean == pytest.approx(params["mean"], rel=1e-4)


def test_mege_matches_xplique(framework: str) -> None:
    """Xplique 2.0.2's MeGe with the four models handed back by the learning algorithm."""
    recorded, inputs = _recorded()
    models = [cnn(framework, seed) for seed in range(4)]
    result = MeGe(models[0], models=models)(to_framework(inputs["images"], framework), recorded["mege"]["labels"])
    assert result.details["mege"] == pytest.approx(recorded["mege"]["mege"], abs=1e-6)
    assert result.details["reco"] == pytest.approx(recorded["mege"]["reco"], abs=1e-6)
    assert result.mean == pytest.approx(result.details["mege"], abs=0.01)  # per-input form, near it
    sets = recorded["reco_sets"]
    assert reco(np.array(sets["s_equal"]), np.array(sets["s_different"])) == pytest.approx(sets["reco"], abs=1e-12)


def test_mege_reference_and_learning_algorithm(framework: str) -> None:
    images = np.random.default_rng(4).random((4, 3, 16, 16), dtype=np.float32)
    x = to_framework(images, framework)
    same = [cnn(framework, 0), cnn(framework, 0)]
    labels = as_numpy(same[0](x)).argmax(axis=1)
    identical = MeGe(same[0], models=same)(x, labels)
    np.testing.assert_allclose(identical.scores, 1.0)  # identical explanations: distance 0
    assert identical.details["mege"] == 1.0 and identical.details["s_different"].size == 0

    calls = []

    def learning_algorithm(x_train, y_train, x_test, y_test):  # type: ignore[no-untyped-def]
        calls.append((len(x_train), len(x_test)))
        return cnn(framework, len(calls))

    trained = MeGe(same[0], learning_algorithm=learning_algorithm, k_splits=2)(x, labels)
    assert calls == [(2, 2), (2, 2)]
    # Reference: model 1 (trained without fold 0) vs model 2, on every input, Spearman distance.
    models = [cnn(framework, 1), cnn(framework, 2)]
    maps = [as_numpy(xt.Saliency(m)(x, labels)).reshape(4, -1) for m in models]
    predictions = [as_numpy(m(x)).argmax(axis=1) for m in models]
    expected = []
    for n in range(4):
        correct = predictions[0][n] == labels[n] or predictions[1][n] == labels[n]
        if correct and predictions[0][n] == predictions[1][n]:
            expected.append(1 / (1 + np.sqrt(1 - abs(stats.spearmanr(maps[0][n], maps[1][n])[0]))))
        else:
            expected.append(np.nan)
    np.testing.assert_allclose(trained.scores, expected, rtol=1e-6)


def test_twins_agree(both: None) -> None:
    torch_model, keras_model = twin_cnn(seed=3)
    images, targets = np.random.default_rng(6).random((2, 3, 16, 16), dtype=np.float32), [0, 2]
    params = {"method": "gradient_input", "nb_samples": 3, "seed": 1}
    a = AverageStability(torch_model, **params)(to_framework(images, "torch"), targets)
    b = AverageStability(keras_model, **params)(to_framework(images, "tf"), targets)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4)


def test_contract(pytestconfig: pytest.Config) -> None:
    check_metric(AverageStability, {"nb_samples": 3}, frameworks=pytestconfig.frameworks)


def test_bad_configuration_fails_before_model_calls(framework: str) -> None:
    counted = CountedModel(framework)
    for bad in ({"radius": 0}, {"nb_samples": 0}, {"distance": "cosine"}, {"method": "no_such_method"}):
        with pytest.raises(xt.XaiToolboxError):
            AverageStability(counted.model, **bad)
    with pytest.raises(xt.ParameterError, match="exactly one"):
        MeGe(counted.model)
    with pytest.raises(xt.ParameterError):
        MeGe(counted.model, models=[counted.model])
    x = to_framework(np.zeros((3, 3, 16, 16), np.float32), framework)
    with pytest.raises(xt.InputError, match="multiple of 2"):
        MeGe(counted.model, models=[counted.model, counted.model])(x, [0, 1, 2])
    assert counted.calls == 0
