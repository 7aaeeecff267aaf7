"""Concept and feature-visualisation methods as plugin kinds: their own hooks, the same
discovery and error standards as methods and metrics, public base classes third parties
build on, and `xai-toolbox list`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _shared import install_dist

import xai_toolbox as xt
from xai_toolbox.errors import PluginError, UnknownNameError
from xai_toolbox.registry import PluginWarning
from xai_toolbox.testing import as_numpy, cnn, to_framework

THIRD_PARTY = """
    import numpy as np
    import xai_toolbox as xt
    from xai_toolbox import extend as xe

    class MeanConcept(xe.ConceptMethod):
        '''One concept: the mean activation of a layer over the images.'''
        name = "mean_concept"

        def __init__(self, model, *, layer="relu2", **kwargs):
            super().__init__(model, **kwargs)
            self.layer = xe.layer_name("layer", layer)

        def fit_batch(self, x, targets):
            acts, _, _ = self.adapter.layer_activations(x, self.layer)
            bank = xe.channels_first(acts, self.adapter.channel_axis).mean(axis=(0, 2, 3))
            return xe.Concepts(self.name, targets.labels, xe.to_numpy(bank)[None], np.ones(1))

    class Ascent(xe.FeatureVisualization):
        '''Plain gradient ascent on the input.'''
        name = "ascent"

        def visualize(self, like, score, objective):
            x = like
            for _ in range(3):
                _, g = self.adapter.value_and_grad(score, x)
                x = x + 0.1 * g
            image = xe.to_numpy(xe.channels_first(x, self.adapter.channel_axis))[0].transpose(1, 2, 0)
            return xe.Visualization(self.name, objective, image, self.adapter.restore(x, like.raw))

    class Broken(xe.ConceptMethod):
        name = "broken_concept"

        def fit_batch(self, x, targets):
            return "not concepts"

    @xt.hookimpl
    def register_concepts(register):
        register(MeanConcept.name, MeanConcept)
        register(Broken.name, Broken)

    @xt.hookimpl
    def register_featurevis(register):
        register(Ascent.name, Ascent)
"""


def test_builtins_are_registered_under_their_own_kinds() -> None:
    registry = xt.reload_plugins()
    assert "craft" in xt.list_concepts() and "maco" in xt.list_featurevis()
    assert "craft" not in xt.list_methods() and "maco" not in xt.list_methods()
    assert registry.concept("craft").package == "xai-toolbox"
    assert xt.Craft is registry.concept("craft").cls and xt.Maco is registry.feature_visualization("maco").cls
    assert issubclass(xt.Craft, xt.extend.ConceptMethod) and issubclass(xt.Maco, xt.extend.FeatureVisualization)
    assert {"Craft", "Maco"} <= set(dir(xt))
    assert "nb_design" in xt.Craft.param_names() and "batch_size" in xt.Maco.param_names()


def test_a_third_party_plugin_adds_both_kinds(plugin_path: Path, framework: str) -> None:
    install_dist(plugin_path, "concept-dist", "concepts = dup_plugin_concepts\n", {"dup_plugin_concepts": THIRD_PARTY})
    xt.reload_plugins()
    assert {"craft", "mean_concept"} <= set(xt.list_concepts()) and {"maco", "ascent"} <= set(xt.list_featurevis())
    model = cnn(framework)
    images = to_framework(np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32), framework)
    found = xt.concepts("mean_concept", model)(images, 1)
    assert found.bank.shape == (1, 16) and list(found.class_id) == [1, 1] and len(found) == 1
    shape = (3, 16, 16) if framework == "torch" else (16, 16, 3)
    vis = xt.featurevis("ascent", model)(xt.Objective.channel("relu2", 2), shape)
    assert vis.image.shape == (16, 16, 3) and as_numpy(vis.model_input).shape == (1, *shape)
    with pytest.raises(PluginError, match=r"concept method 'broken_concept' returned str; expected Concepts"):
        xt.concepts("broken_concept", model)(images, 0)


def test_two_plugins_claiming_one_concept_name_are_both_disabled(plugin_path: Path) -> None:
    source = """
        import xai_toolbox as xt
        from xai_toolbox.plugins.craft import Craft

        @xt.hookimpl
        def register_concepts(register):
            register("craft", Craft)
    """
    install_dist(plugin_path, "dup-dist", "dup = dup_plugin\n", {"dup_plugin": source})
    with pytest.warns(PluginWarning, match=r"concept 'craft'.*'craft'.*xai-toolbox.*'dup'.*both are disabled"):
        registry = xt.reload_plugins()
    assert set(registry.disabled) == {"dup", "craft"}
    assert "craft" not in xt.list_concepts() and "maco" in xt.list_featurevis()
    with pytest.raises(UnknownNameError, match="unknown concept method 'craft'.*disabled because they claim the same names"):
        xt.concepts("craft", None)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "import xai_toolbox as xt\n@xt.hookimpl\ndef register_concept(register):\n    pass\n",
            r"register_concept.*did you mean register_concepts",
        ),
        (
            "def register_featurevis(register):\n    register('forgotten', object)\n",
            r"register_featurevis\(\) is not marked as a hook",
        ),
    ],
    ids=["misspelled hook", "missing @hookimpl"],
)
def test_hook_mistakes_are_reported(plugin_path: Path, source: str, message: str) -> None:
    install_dist(plugin_path, "typo-dist", "typo = broken_plugin_kinds\n", {"broken_plugin_kinds": source})
    with pytest.warns(PluginWarning, match=message):
        registry = xt.reload_plugins()
    assert "typo" in registry.failed and "craft" in xt.list_concepts()


def test_unknown_names_list_the_available_ones() -> None:
    xt.reload_plugins()
    with pytest.raises(UnknownNameError, match=r"unknown concept method 'crft' \(did you mean 'craft'\?\); available concept methods: .*craft"):
        xt.concepts("crft", None)
    with pytest.raises(UnknownNameError, match=r"unknown feature visualisation 'macco'.*available feature visualisations: .*maco"):
        xt.featurevis("macco", None)
    with pytest.raises(xt.ParameterError, match="unknown parameter 'nb_step' \\(did you mean 'nb_steps'\\?\\)"):
        xt.featurevis("maco", None, nb_step=3)


def test_cli_list_shows_the_new_kinds(capsys: Any) -> None:
    from xai_toolbox.cli import main

    xt.reload_plugins()
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    concepts = out[out.index("concept methods:") : out.index("feature visualisations:")]
    featurevis = out[out.index("feature visualisations:") : out.index("frameworks:")]
    row = next(line for line in concepts.splitlines() if line.strip().startswith("craft "))
    assert "Craft" in row and "concepts" in row and "xai-toolbox (craft)" in row
    row = next(line for line in featurevis.splitlines() if line.strip().startswith("maco "))
    assert "Maco" in row and "8192" in row and "xai-toolbox (maco)" in row  # 256 steps × 32 crops
