"""Complexity (entropy) and Sparseness (Gini): analytic values, edge cases, Xplique's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.metrics.complexity import Complexity, Sparseness, entropy, gini
from xai_toolbox.testing import check_metric, cnn, to_framework

PEERS = Path(__file__).parent / "data" / "peers"


def reference_gini(a: np.ndarray) -> float:
    """Gini as the mean absolute difference over twice the mean (an independent formula)."""
    a = np.abs(a.ravel()).astype(np.float64)
    return float(np.abs(a[:, None] - a[None, :]).sum() / (2 * a.size**2 * a.mean()))


def test_analytic_values() -> None:
    uniform, one_hot = np.ones((1, 8, 8)), np.zeros((1, 8, 8))
    one_hot[0, 3, 4] = -2.0  # absolute values: the sign does not matter
    assert entropy(uniform)[0] == pytest.approx(np.log(64), rel=1e-6)
    assert entropy(one_hot)[0] == pytest.approx(0.0, abs=1e-6)
    assert gini(uniform)[0] == pytest.approx(0.0, abs=1e-7)
    assert gini(one_hot)[0] == pytest.approx(63 / 64, rel=1e-6)
    maps = np.random.default_rng(0).random((4, 6, 6)) ** 3
    np.testing.assert_allclose(gini(maps), [reference_gini(m) for m in maps], rtol=1e-6)
    p = maps.reshape(4, -1) / maps.reshape(4, -1).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(entropy(maps), -(p * np.log(p)).sum(axis=1), rtol=1e-6)
    # scale-invariant
    np.testing.assert_allclose(gini(maps * 7.5), gini(maps), rtol=1e-6)
    np.testing.assert_allclose(entropy(maps * 7.5), entropy(maps), rtol=1e-6)


def test_all_zero_map_is_undefined(framework: str) -> None:
    model = cnn(framework)
    x = to_framework(np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32), framework)
    maps = np.zeros((2, 16, 16), np.float32)
    maps[1, 0, 0] = 1.0
    for cls in (Complexity, Sparseness):
        result = cls(model)(x, [0, 1], maps)
        assert np.isnan(result.scores[0]) and np.isfinite(result.scores[1])
        assert result.mean == result.scores[1] and result.family == "complexity"


def test_channels_are_averaged(framework: str) -> None:
    model = cnn(framework)
    images = np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32)
    per_value = np.random.default_rng(2).random((2, 3, 16, 16), dtype=np.float32)
    x = to_framework(images, framework)
    result = Complexity(model)(x, [0, 1], to_framework(per_value, framework))
    np.testing.assert_allclose(result.scores, entropy(per_value.mean(axis=1)), rtol=1e-5)


def test_matches_xplique(framework: str) -> None:
    """Numbers recorded from Xplique 2.0.2 (scripts/peers/record_xplique_metrics.py): same
    definition, float32 in Xplique, hence the tolerance."""
    recorded = json.loads((PEERS / "xplique_metrics.json").read_text())
    inputs = np.load(PEERS / "inputs.npz")
    model = cnn(framework)
    x = to_framework(inputs["images"], framework)
    maps = inputs["explanations"]
    np.testing.assert_allclose(Complexity(model)(x, inputs["labels"], maps).scores, recorded["complexity"], atol=1e-5)
    np.testing.assert_allclose(Sparseness(model)(x, inputs["labels"], maps).scores, recorded["sparseness"], atol=1e-5)


@pytest.mark.parametrize("cls", [Complexity, Sparseness])
def test_contract(cls: type, pytestconfig: pytest.Config) -> None:
    check_metric(cls, frameworks=pytestconfig.frameworks)


def test_registered_with_direction() -> None:
    assert not xt.metric("complexity", None).higher_is_better
    assert xt.metric("sparseness", None).higher_is_better
    with pytest.raises(xt.ParameterError):
        Complexity(None, steps=3)
