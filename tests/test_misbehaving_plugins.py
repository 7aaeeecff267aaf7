"""A misbehaving plugin is caught at call time with a PluginError naming it.

Methods returning the wrong shape, rank, type (NumPy, a raw tensor, another framework's
tensor, ``None``), device, or NaN/inf values; metrics returning the wrong number of scores,
something other than a MetricResult, non-numeric scores or curves of the wrong shape. A
plugin that raises keeps its exception type (so out-of-memory errors and a user's own
exceptions stay catchable as what they are) with a note naming the plugin, and the model is
left as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.errors import PluginError
from xai_toolbox.testing import cnn, to_framework


def _images(framework: str, n: int = 2) -> Any:
    return to_framework(np.random.default_rng(0).random((n, 3, 16, 16), dtype=np.float32), framework)


def method_returning(make: Callable[[ep.Tensor], Any], name: str = "rogue") -> type:
    """A method plugin whose ``_explain`` returns ``make(x)``."""

    class Rogue(xt.AttributionMethod):
        def explain_batch(self, x: ep.Tensor, targets: Any) -> Any:
            return make(x)

    Rogue.name = name
    return Rogue


def _maps(x: ep.Tensor) -> ep.Tensor:
    """Correct explanations ``(N, H, W)`` for either layout."""
    shape = (x.shape[0], *x.shape[2:]) if x.shape[1] == 3 else x.shape[:3]
    return ep.zeros(x, shape)


BAD_METHOD_RESULTS: dict[str, tuple[Callable[[ep.Tensor], Any], str]] = {
    "wrong shape": (lambda x: _maps(x)[:, :8], r"shape \(2, 8, 16\); expected \(2, 16, 16\)"),
    "channels kept": (lambda x: x, r"expected \(2, 16, 16\)"),
    "one map short": (lambda x: _maps(x)[:1], r"shape \(1, 16, 16\)"),
    "NumPy instead of a tensor": (lambda x: _maps(x).numpy(), "returned ndarray; expected an EagerPy tensor"),
    "raw tensor, not EagerPy": (lambda x: _maps(x).raw, "expected an EagerPy tensor"),
    "None": (lambda x: None, "returned NoneType"),
    "NaN": (lambda x: _maps(x) + float("nan"), "NaN or infinite"),
    "inf": (lambda x: ep.where(_maps(x) == 0, float("inf"), 0.0), "NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(BAD_METHOD_RESULTS))
def test_bad_method_results_raise_plugin_errors_naming_the_plugin(framework: str, case: str) -> None:
    make, message = BAD_METHOD_RESULTS[case]
    cls = method_returning(make, name="rogue_method")
    with pytest.raises(PluginError, match=f"method 'rogue_method' returned.*{message}|{message}") as info:
        cls(cnn(framework))(_images(framework), [0, 1])
    assert "'rogue_method'" in str(info.value)


def test_another_frameworks_tensor_is_rejected(both: None) -> None:
    import tensorflow as tf

    cls = method_returning(lambda x: ep.astensor(tf.zeros((x.shape[0], 16, 16))), name="wrong_framework")
    with pytest.raises(PluginError, match="'wrong_framework' returned TensorFlowTensor.*PyTorchTensor"):
        cls(cnn("torch"))(_images("torch"), [0, 1])


def test_wrong_device_is_rejected(torch) -> None:
    """Explanations on another device than the inputs ('meta' stands in for a second GPU)."""
    cls = method_returning(lambda x: ep.astensor(torch.zeros((x.shape[0], 16, 16), device="meta")), name="far_away")
    with pytest.raises(PluginError, match="'far_away' returned explanations on device meta; expected the inputs' device cpu"):
        cls(cnn("torch"))(_images("torch"), [0, 1])


def test_integer_maps_are_accepted_as_float32(framework: str) -> None:
    """Counts (e.g. votes) are fine: the base class converts them to float32."""
    def counts(x: ep.Tensor) -> ep.Tensor:
        ones = (_maps(x) + 1).raw
        if hasattr(ones, "detach"):
            return ep.astensor(ones.int())
        import tensorflow as tf

        return ep.astensor(tf.cast(ones, tf.int32))

    cls = method_returning(counts, name="counts")
    maps = np.asarray(cls(cnn(framework))(_images(framework), [0, 1]))
    assert maps.dtype == np.float32 and np.all(maps == 1)


class PluginBug(Exception):
    """A bug inside a plugin."""


def test_a_raising_plugin_keeps_its_exception_with_a_note(torch) -> None:
    model = cnn("torch").train()

    def explode(x: ep.Tensor) -> Any:
        raise PluginBug("index out of range somewhere in the plugin")

    cls = method_returning(explode, name="exploding")
    with pytest.raises(PluginBug) as info:
        cls(model)(_images("torch"), [0, 1])
    assert any("'exploding'" in note and "Rogue" in note for note in info.value.__notes__)
    assert model.training


def test_toolbox_errors_of_plugins_pass_unchanged(framework: str) -> None:
    def refuse(x: ep.Tensor) -> Any:
        raise xt.LayerError("no spatial layer")

    with pytest.raises(xt.LayerError, match="no spatial layer") as info:
        method_returning(refuse)(cnn(framework))(_images(framework), [0, 1])
    assert not getattr(info.value, "__notes__", None)


# -- metrics -----------------------------------------------------------------------------------
def metric_returning(make: Callable[[Any, ep.Tensor], Any], name: str = "rogue_metric") -> type:
    class RogueMetric(xt.Metric):
        def score_batch(self, x: ep.Tensor, targets: Any, maps: Any, masks: Any) -> Any:
            return make(self, maps)

    RogueMetric.name = name
    return RogueMetric


def _row_means(maps: ep.Tensor) -> ep.Tensor:
    return maps.reshape((maps.shape[0], -1)).mean(axis=1)


BAD_METRIC_RESULTS: dict[str, tuple[Callable[[Any, ep.Tensor], Any], str]] = {
    "one score short": (lambda m, maps: m.make_result(_row_means(maps)[:1]), r"scores of shape \(1,\) for 2 inputs"),
    "one score per pixel": (lambda m, maps: m.make_result(maps), r"scores of shape \(512,\) for 2 inputs"),
    "a single mean": (lambda m, maps: m.make_result(_row_means(maps).mean()), r"scores of shape \(1,\) for 2 inputs"),
    "a dict": (lambda m, maps: {"score": 1.0}, "returned dict; expected a MetricResult"),
    "NumPy scores": (lambda m, maps: _row_means(maps).numpy(), "returned ndarray; expected a MetricResult"),
    "string scores": (
        lambda m, maps: xt.MetricResult("rogue_metric", np.array(["a", "b"]), True),
        "non-numeric scores",
    ),
    "curves of the wrong length": (
        lambda m, maps: m.make_result(_row_means(maps), curves=np.zeros((3, 5))),
        r"curves of shape \(3, 5\) for 2 inputs",
    ),
    "flat curves": (
        lambda m, maps: m.make_result(_row_means(maps), curves=np.zeros(5)),
        r"curves of shape \(5,\)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_METRIC_RESULTS))
def test_bad_metric_results_raise_plugin_errors_naming_the_plugin(framework: str, case: str) -> None:
    make, message = BAD_METRIC_RESULTS[case]
    metric = metric_returning(make)(cnn(framework))
    explanations = np.random.default_rng(1).random((2, 16, 16), dtype=np.float32)
    with pytest.raises(PluginError, match=f"metric 'rogue_metric' .*{message}|{message}") as info:
        metric(_images(framework), [0, 1], explanations)
    assert "'rogue_metric'" in str(info.value)


def test_nan_scores_are_allowed_for_metrics(framework: str) -> None:
    """A score can be undefined for an input (e.g. an empty mask): NaN is reported, not refused."""
    metric = metric_returning(lambda m, maps: m.make_result(_row_means(maps) * float("nan")))(cnn(framework))
    result = metric(_images(framework), [0, 1], np.ones((2, 16, 16), np.float32))
    assert np.isnan(result.scores).all() and np.isnan(result.mean)


def test_a_raising_metric_keeps_its_exception_with_a_note(torch) -> None:
    model = cnn("torch").train()

    def explode(m: Any, maps: ep.Tensor) -> Any:
        raise PluginBug("division by zero somewhere in the metric")

    with pytest.raises(PluginBug) as info:
        metric_returning(explode, name="exploding_metric")(model)(_images("torch"), [0, 1], np.ones((2, 16, 16), np.float32))
    assert any("metric 'exploding_metric'" in note for note in info.value.__notes__)
    assert model.training


def test_registered_plugins_pass_the_same_checks(framework: str) -> None:
    """The checks see the registry name of a plugin loaded from an entry point too."""
    cls = xt.registry.get_registry().method("saliency").cls

    class Broken(cls):  # type: ignore[misc,valid-type]
        def explain_batch(self, x: ep.Tensor, targets: Any) -> ep.Tensor:
            return super().explain_batch(x, targets)[:, :4]

    with pytest.raises(PluginError, match="method 'saliency' returned explanations of shape"):
        Broken(cnn(framework))(_images(framework), [0, 1])
