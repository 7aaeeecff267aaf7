"""xt.evaluate: the method × metric table, explanations computed once, errors, twins."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.evaluation import EvaluationTable
from xai_toolbox.testing import as_numpy, cnn, to_framework, twin_cnn


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


def _masks(n: int = 3) -> np.ndarray:
    masks = np.zeros((n, 16, 16), bool)
    masks[:, 3:11, 4:12] = True
    return masks


class CountingSaliency(xt.Saliency):
    """Saliency that counts how often it explains."""

    calls = 0

    def explain_batch(self, x, targets):  # type: ignore[no-untyped-def]
        type(self).calls += 1
        return super().explain_batch(x, targets)


def test_table_records_and_views(framework: str) -> None:
    model = cnn(framework, seed=0)
    x, targets = to_framework(_images(), framework), np.array([0, 1, 2])
    CountingSaliency.calls = 0
    table = xt.evaluate(
        model, x, targets,
        methods=[CountingSaliency(model), "gradcam"],
        metrics=["deletion", "mufidelity", "average_drop", "pointing_game"],
        masks=_masks(),
        metric_params={"mufidelity": {"nb_samples": 16}, "deletion": {"steps": 4}},
        batch_size=16,
    )
    assert isinstance(table, EvaluationTable) and len(table) == 8
    assert CountingSaliency.calls == 1  # one explanation per method, shared by the metrics
    assert [(r["method"], r["metric"]) for r in table[:4]] == [
        ("saliency", "deletion"), ("saliency", "mufidelity"), ("saliency", "average_drop"), ("saliency", "pointing_game"),
    ]
    # each record's score is what the metric gives on the method's explanations
    maps = xt.GradCAM(model)(x, targets)
    expected = xt.metric("deletion", model, steps=4)(x, targets, maps)
    record = next(r for r in table if (r["method"], r["metric"]) == ("gradcam", "deletion"))
    assert record["score"] == pytest.approx(expected.mean, abs=1e-6)
    np.testing.assert_allclose(record["result"].curves, expected.curves, atol=1e-6)
    assert record["higher_is_better"] is False

    pivot = table.pivot()
    assert set(pivot) == {"saliency", "gradcam"} and set(pivot["gradcam"]) == set(table.metrics)
    frame = table.to_pandas()
    assert list(frame.columns) == ["method", "metric", "score", "higher_is_better", "result"]
    assert len(frame) == 8
    text = str(table)
    assert "gradcam" in text and "deletion ↓" in text and "mufidelity ↑" in text
    assert f"{pivot['gradcam']['mufidelity']:.4f}" in text


def test_top1_targets_and_method_checks(framework: str) -> None:
    model = cnn(framework, seed=1)
    images = _images()
    x = to_framework(images, framework)
    table = xt.evaluate(model, x, methods=["saliency"], metrics=["randomization", "insertion"],
                        metric_params={"insertion": {"steps": 3}})
    labels = as_numpy(model(x)).argmax(axis=1)
    direct = xt.metric("insertion", model, steps=3)(x, labels, xt.Saliency(model)(x, labels))
    np.testing.assert_allclose(table[1]["result"].scores, direct.scores, atol=1e-6)
    # randomization checks the method of the row it is in
    table = xt.evaluate(model, x, labels, methods=["saliency", "gradcam"], metrics=["randomization"])
    gradcam = xt.metric("randomization", model, method="gradcam")(x, labels)
    np.testing.assert_allclose(table[1]["result"].scores, gradcam.scores, atol=1e-6)
    assert table[0]["score"] != pytest.approx(table[1]["score"])


def test_randomization_reuses_the_explanations(torch: object) -> None:
    model = cnn("torch", seed=2)
    x = to_framework(_images(2), "torch")
    CountingSaliency.calls = 0
    table = xt.evaluate(model, x, [0, 1], methods=[CountingSaliency(model)],
                        metrics=["randomization", "deletion"], metric_params={})
    assert CountingSaliency.calls == 2  # the shared "before" maps + the randomised model's maps
    direct = xt.metric("randomization", model)(x, [0, 1])
    np.testing.assert_allclose(table[0]["result"].scores, direct.scores, atol=1e-6)


def test_errors_are_raised_before_work(framework: str) -> None:
    model = cnn(framework, seed=0)
    x = to_framework(_images(), framework)
    CountingSaliency.calls = 0
    with pytest.raises(xt.ExplanationShapeError, match="pointing_game"):
        xt.evaluate(model, x, [0, 1, 2], methods=[CountingSaliency(model)], metrics=["deletion", "pointing_game"])
    assert CountingSaliency.calls == 0
    with pytest.raises(xt.ParameterError, match="gradcam"):
        xt.evaluate(model, x, [0, 1, 2], methods=["saliency"], metrics=["deletion"],
                    method_params={"gradcam": {"layer": "conv1"}})
    with pytest.raises(xt.UnknownNameError):
        xt.evaluate(model, x, [0, 1, 2], methods=["saliency"], metrics=["no_such_metric"])
    with pytest.raises(xt.ParameterError):
        xt.evaluate(model, x, [0, 1, 2], methods=[], metrics=["deletion"])


def test_duplicate_methods_get_distinct_labels(torch: object) -> None:
    model = cnn("torch", seed=0)
    x = to_framework(_images(2), "torch")
    table = xt.evaluate(model, x, [0, 1], methods=[xt.GradCAM(model, layer="conv1"), xt.GradCAM(model)],
                        metrics=["average_gain"])
    assert table.methods == ["gradcam", "gradcam#2"]


def test_to_pandas_without_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    table = EvaluationTable([{"method": "m", "metric": "deletion", "score": 0.5, "higher_is_better": False, "result": None}])
    with pytest.raises(ImportError, match="pip install pandas"):
        table.to_pandas()
    assert table.pivot() == {"m": {"deletion": 0.5}}
    assert "deletion ↓" in str(table) and "0.5000" in str(table)
    assert str(EvaluationTable()) == "EvaluationTable (empty)"


def test_twin_tables_agree(both: None) -> None:
    torch_model, keras_model = twin_cnn(seed=3)
    images, targets = _images(3, seed=4), np.array([2, 0, 1])
    kwargs = {
        "methods": ["saliency", "gradcam"],
        "metrics": ["mufidelity", "average_drop", "energy_pointing_game", "randomization"],
        "masks": _masks(),
        "metric_params": {"mufidelity": {"nb_samples": 20, "seed": 1}},
    }
    a = xt.evaluate(torch_model, to_framework(images, "torch"), targets, **kwargs).pivot()
    b = xt.evaluate(keras_model, to_framework(images, "tf"), targets, **kwargs).pivot()
    for method in a:
        for metric in a[method]:
            assert a[method][metric] == pytest.approx(b[method][metric], abs=1e-4), (method, metric)


def test_table_carries_maps_timings_params_and_explains_without_metrics(torch: object) -> None:
    model = cnn("torch", seed=0)
    x = to_framework(_images(2), "torch")
    lines: list[str] = []
    table = xt.evaluate(model, x, [0, 1], methods=["saliency", xt.GradCAM(model)], metrics=["deletion"],
                        metric_params={"deletion": {"steps": 3}}, batch_size=8, echo=lines.append)
    np.testing.assert_allclose(table.maps["saliency"], as_numpy(xt.Saliency(model)(x, [0, 1])), atol=1e-6)
    assert table.maps["gradcam"].dtype == np.float32 and table.maps["gradcam"].shape == (2, 16, 16)
    assert set(table.timings) == {"saliency", "gradcam"}
    assert set(table.metric_timings) == {("saliency", "deletion"), ("gradcam", "deletion")}
    assert table.params["metrics"] == {"deletion": {"batch_size": 8, "steps": 3}}
    # an instance's parameters, and the layer the CAM used (its default here)
    assert table.params["methods"]["gradcam"] == {**xt.GradCAM(model).get_params(), "layer used": "relu2"}
    assert table.results["gradcam"]["deletion"] is table[1]["result"] and not table.failures
    assert [line.split()[0] for line in lines] == ["saliency", "gradcam"]
    # No metric: the maps only (what `xai-toolbox explain` asks for).
    only_maps = xt.evaluate(model, x, [0, 1], methods=["saliency"])
    assert len(only_maps) == 0 and only_maps.results == {"saliency": {}}
    np.testing.assert_allclose(only_maps.maps["saliency"], table.maps["saliency"])


def test_keep_going_records_a_failing_metric_for_each_method(torch: object) -> None:
    model = cnn("torch", seed=0)
    x = to_framework(_images(2), "torch")
    kwargs = {"methods": ["saliency", "gradient_input"], "metrics": ["deletion", "average_drop"],
              "metric_params": {"deletion": {"steps": -1}}}
    with pytest.raises(xt.ParameterError, match="steps"):
        xt.evaluate(model, x, [0, 1], **kwargs)
    table = xt.evaluate(model, x, [0, 1], keep_going=True, **kwargs)
    assert set(table.failures) == {"saliency/deletion", "gradient_input/deletion"}
    assert table.failures["saliency/deletion"].startswith("ParameterError: ")
    assert [(r["method"], r["metric"]) for r in table] == [("saliency", "average_drop"), ("gradient_input", "average_drop")]
    with pytest.raises(xt.UnknownNameError):  # names are always checked before any work
        xt.evaluate(model, x, [0, 1], methods=["saliency"], metrics=["nope"], keep_going=True)


def test_top1_is_the_models_argmax(framework: str) -> None:
    from xai_toolbox.evaluation import top1

    model = cnn(framework, seed=1)
    x = to_framework(_images(5), framework)
    classes, n_classes = top1(model, x, batch_size=2)
    np.testing.assert_array_equal(classes, as_numpy(model(x)).argmax(axis=1))
    assert classes.dtype == np.int64 and n_classes == as_numpy(model(x)).shape[1]


def test_top1_needs_classifier_outputs(torch: Any) -> None:
    from xai_toolbox.evaluation import top1

    not_a_classifier = torch.nn.Conv2d(3, 2, 3)  # outputs (N, 2, 14, 14)
    x = to_framework(_images(2), "torch")
    with pytest.raises(xt.ScoreFunctionError, match="top-1 classes need"):
        top1(not_a_classifier, x)
    with pytest.raises(xt.ScoreFunctionError, match="pass targets"):
        xt.evaluate(not_a_classifier, x, methods=["saliency"], metrics=["deletion"])
