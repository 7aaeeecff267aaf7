"""The main job: the demo pipeline end to end in each framework, its settings, and a sanity
check that good methods localise the objects of the embedded model better than chance."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.cli import main
from xai_toolbox.demo_job import (
    DEFAULT_EXCLUDED_METRICS,
    DEMO_PARAMS,
    QUICK_PARAMS,
    demo_settings,
    run_demo,
)
from xai_toolbox.errors import ParameterError, UnknownNameError

pytest.importorskip("PIL")

VOID = {"br", "img", "meta", "hr", "input", "link"}

# Smaller than --quick: the test checks the pipeline, not the explanations.
TINY = {
    "methods": {
        "rise": {"nb_samples": 32, "grid_size": 4, "seed": 0},
        "sobol": {"nb_design": 4, "grid_size": 4},
        "hsic": {"nb_design": 32, "grid_size": 4, "seed": 0},
        "opticam": {"max_iter": 3},
        "occlusion": {"patch_size": 32, "stride": 32},
        "integrated_gradients": {"steps": 4},
        "smoothgrad": {"nb_samples": 4, "seed": 0},
    },
    "metrics": {
        "deletion": {"steps": 4},
        "insertion": {"steps": 4},
        "mufidelity": {"nb_samples": 8, "seed": 0},
    },
}

DEMO_FRAMEWORKS = ("torch", "tf")  # the twins of the demo model


class Page(HTMLParser):
    """Balanced tags, image sources, the scores table's method column."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.bad: list[str] = []
        self.srcs: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.srcs.append(str(values.get("src")))
        for key in ("href", "src"):
            if values.get(key) and not str(values[key]).startswith(("data:", "#")):
                self.external.append(str(values[key]))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.bad.append(tag)


def _parse(path: Path) -> tuple[str, Page]:
    page = path.read_text(encoding="utf-8")
    parser = Page()
    parser.feed(page)
    parser.close()
    return page, parser


@pytest.mark.frameworks(*DEMO_FRAMEWORKS)
def test_demo_end_to_end(framework: str, tmp_path: Path) -> None:
    result = run_demo(
        framework, n_images=2, quick=True, params=TINY, out=tmp_path / "demo", progress=False,
        echo=None, keep_going=False,
    )
    methods = xt.list_methods()
    metrics = [m for m in xt.list_metrics() if m not in DEFAULT_EXCLUDED_METRICS]
    assert not result.run.failures
    assert set(result.run.maps) == set(methods)
    for method in methods:
        assert result.run.maps[method].shape == (2, 64, 64)
        assert set(result.run.results[method]) == set(metrics)
    assert result.report == tmp_path / "demo" / "report.html"

    page, parser = _parse(result.report)
    assert page.startswith("<!DOCTYPE html>")
    assert not parser.bad and not parser.stack, (parser.bad, parser.stack)
    assert not parser.external
    assert len(parser.srcs) == 2 * (1 + len(methods))
    assert all(src.startswith("data:image/png;base64,") for src in parser.srcs)
    tables = re.findall(r'<table class="scores">.*?</table>', page, re.DOTALL)  # one per family past 9 metrics
    scores = "".join(tables)
    for method in methods:  # names may wrap after their underscores
        assert f'<td class="method">{method.replace("_", "_<wbr/>")}</td>' in scores
    for metric in metrics:
        assert f"<th>{metric.replace('_', '_<wbr/>')} " in scores
    assert all(table.count("<tr>") == 1 + len(methods) for table in tables)
    # The settings section shows the demo's parameters as used.
    settings = page[page.index('<section id="settings">') :]
    assert "<th>nb_samples</th><td><strong>32</strong></td>" in settings  # given: bold
    for method in methods:  # every parameter of every method, defaults included
        assert f"<caption>{method}</caption>" in settings
    # The terminal summary ranks every method.
    assert all(method in result.summary for method in methods)
    assert result.labels.shape == result.predictions.shape == (2,)


@pytest.fixture
def first_framework(pytestconfig: pytest.Config) -> str:
    """One framework under test with the demo model, for checks that need not run in both."""
    demo = [f for f in pytestconfig.frameworks if f in DEMO_FRAMEWORKS]  # type: ignore[attr-defined]
    if not demo:
        pytest.skip("the demo model is built in PyTorch and Keras: select torch or tf")
    return demo[0]


def test_demo_explicit_selection_with_randomization(first_framework: str, tmp_path: Path) -> None:
    if "randomization" not in xt.list_metrics():
        pytest.skip("no randomization metric registered")
    framework = first_framework
    result = run_demo(
        framework, methods=["gradcam", "saliency"], metrics=["randomization", "pointing_game"], n_images=2,
        out=tmp_path, progress=False, echo=None, keep_going=False,
    )
    assert list(result.run.maps) == ["gradcam", "saliency"]  # the user's order
    for method in ("gradcam", "saliency"):
        assert set(result.run.results[method]) == {"randomization", "pointing_game"}
        assert result.run.results[method]["randomization"].scores.shape == (2,)
    page, _ = _parse(result.report)
    assert "randomization" in page and "Left out by default" not in page


def test_demo_parameters_fit_the_registered_plugins() -> None:
    """Every DEMO_PARAMS / QUICK_PARAMS entry is accepted by its plugin's constructor."""
    model = object()  # constructors only store and validate their parameters
    for settings in (demo_settings(False), demo_settings(True)):
        for name, params in settings["methods"].items():
            if name in xt.list_methods():
                xt.method(name, model, batch_size=256, **params)
        for name, params in settings["metrics"].items():
            if name in xt.list_metrics():
                xt.metric(name, model, batch_size=256, **params)
    # --quick overrides name by name: what it does not mention keeps the demo's value.
    quick = demo_settings(True)["metrics"]["deletion"]
    assert quick == {**DEMO_PARAMS["metrics"]["deletion"], **QUICK_PARAMS["metrics"]["deletion"]}
    assert demo_settings(False) == DEMO_PARAMS and demo_settings(False) is not DEMO_PARAMS
    assert set(QUICK_PARAMS["methods"]) <= set(DEMO_PARAMS["methods"])
    assert set(QUICK_PARAMS["metrics"]) <= set(DEMO_PARAMS["metrics"])


def test_demo_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="reserved for training"):
        run_demo("torch", seed=1000, out=tmp_path, echo=None)
    with pytest.raises(UnknownNameError, match="available methods"):
        run_demo("torch", methods=["nope"], out=tmp_path, echo=None)
    with pytest.raises(ParameterError, match="framework"):
        run_demo("jax", out=tmp_path, echo=None)
    with pytest.raises(ParameterError, match="n_images"):
        run_demo("torch", n_images=0, out=tmp_path, echo=None)


def test_demo_command(first_framework: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    framework = first_framework
    code = main([
        "demo", "--framework", framework, "--methods", "gradcam", "saliency", "--metrics", "deletion",
        "pointing_game", "--n-images", "2", "--quick", "--out", str(tmp_path / "d"), "--no-progress",
    ])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "held-out" in out and "report:" in out
    table = out[out.index("rank") :]
    assert "gradcam" in table and "saliency" in table and "deletion ↓" in table and "pointing_game ↑" in table
    assert (tmp_path / "d" / "report.html").is_file()


def test_evaluate_keep_going_records_or_raises_failures(first_framework: str) -> None:
    """The loop under the demo and the CLI: xt.evaluate with keep_going and echo."""
    from xai_toolbox.testing import cnn

    framework = first_framework
    model = cnn(framework)
    x = np.random.default_rng(0).random((2, 3, 16, 16) if framework == "torch" else (2, 16, 16, 3), dtype=np.float32)
    lines: list[str] = []
    run = xt.evaluate(
        model, x, [0, 1], methods=["saliency", "gradcam"], metrics=["deletion"],
        method_params={"gradcam": {"layer": "no_such_layer"}}, metric_params={"deletion": {"steps": 3}},
        progress=False, echo=lines.append, keep_going=True,
    )
    assert list(run.maps) == ["saliency"] and "gradcam" in run.failures
    assert "no_such_layer" in run.failures["gradcam"]
    assert run.results["saliency"]["deletion"].curves.shape == (2, 4)
    assert any("FAILED" in line for line in lines) and any("saliency" in line for line in lines)
    with pytest.raises(xt.LayerError):
        xt.evaluate(model, x, [0, 1], methods=["gradcam"], method_params={"gradcam": {"layer": "nope"}},
                    progress=False, keep_going=False)


def _random_map_hit_rate(masks: np.ndarray, tolerance: float) -> float:
    """Expected pointing-game score of a map whose maximum is a uniformly random pixel."""
    from scipy.ndimage import distance_transform_edt

    rates = []
    for mask in masks.astype(bool):
        distance = distance_transform_edt(~mask)  # 0 on the object
        rates.append(float(np.mean(distance < max(tolerance, 1e-9)) if tolerance > 0 else mask.mean()))
    return float(np.mean(rates))


def test_gradcam_and_rise_beat_random_maps_on_the_pointing_game(first_framework: str) -> None:
    # One framework is enough: the twins give the same maps (tested with the methods).
    from xai_toolbox.demo import DEMO_SEEDS, load_demo_model, make_shapes
    from xai_toolbox.io import to_model_layout

    framework = first_framework
    if "pointing_game" not in xt.list_metrics():
        pytest.skip("no pointing_game metric registered")
    data = make_shapes(16, seed=DEMO_SEEDS.heldout + 1)
    model = load_demo_model(framework)
    x = to_model_layout(data.images, framework)
    masks = data.masks.astype(np.float32)
    tolerance = DEMO_PARAMS["metrics"]["pointing_game"]["tolerance"]
    game = xt.metric("pointing_game", model, tolerance=tolerance)
    chance = _random_map_hit_rate(data.masks, tolerance)
    rng = np.random.default_rng(0)
    random_maps = rng.random((16, 64, 64), dtype=np.float32)
    random_score = game(x, data.labels, random_maps, masks=masks).mean
    scores: dict[str, float] = {}
    for method, params in (("gradcam", {}), ("rise", {"nb_samples": 200, "grid_size": 7, "seed": 0})):
        maps = xt.method(method, model, batch_size=128, **params)(x, data.labels)
        scores[method] = game(x, data.labels, maps, masks=masks).mean
    # Chance is well below one half here: the objects cover a small part of the image.
    assert chance < 0.5
    for method, score in scores.items():
        assert score >= chance + 0.3, (method, score, chance, random_score)
        assert score > random_score, (method, score, random_score)

