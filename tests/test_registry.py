"""Plugin discovery end to end: entry points, broken plugins, duplicates, disabling."""

from __future__ import annotations

import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _shared import install_dist as _install_dist

import xai_toolbox as xt
from xai_toolbox.errors import PluginError, UnknownNameError
from xai_toolbox.registry import PluginWarning

BUILTIN_METHODS = {"saliency", "gradient_input", "integrated_gradients", "smoothgrad", "gradcam", "gradcampp"}


def test_builtins_are_found_through_entry_points() -> None:
    registry = xt.reload_plugins()
    assert set(xt.list_methods()) >= BUILTIN_METHODS
    for name in BUILTIN_METHODS:
        assert registry.method(name).package == "xai-toolbox"
    assert xt.GradCAM is registry.method("gradcam").cls
    assert "Saliency" in dir(xt)


def test_third_party_plugin_adds_a_method(example_plugin: Path, framework: str) -> None:
    xt.reload_plugins()
    assert "center_prior" in xt.list_methods()
    entry = xt.api.get_registry().method("center_prior")
    assert (entry.package, entry.plugin) == ("xai-toolbox-example", "example")
    model = xt.testing.cnn(framework)
    images = xt.testing.to_framework(np.zeros((2, 3, 16, 16), np.float32), framework)
    maps = xt.testing.as_numpy(xt.method("center_prior", model, sigma=0.2)(images, [0, 1]))
    assert maps.shape == (2, 16, 16)
    assert np.unravel_index(maps[0].argmax(), (16, 16)) in {(7, 7), (7, 8), (8, 7), (8, 8)}
    assert xt.CenterPrior is entry.cls


def test_broken_plugin_warns_with_its_name_and_others_still_load(plugin_path: Path) -> None:
    _install_dist(
        plugin_path, "broken-dist", "broken = broken_plugin\n",
        {"broken_plugin": "raise ImportError('missing dependency frobnicate')\n"},
    )
    with pytest.warns(PluginWarning, match=r"'broken'.*broken-dist.*frobnicate"):
        xt.reload_plugins()
    assert set(xt.list_methods()) >= BUILTIN_METHODS
    with pytest.raises(UnknownNameError, match="failed to load:.*broken"):
        xt.method("nope", None)


def test_broken_plugin_is_an_error_in_strict_mode(plugin_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_dist(plugin_path, "broken-dist", "broken = broken_plugin\n", {"broken_plugin": "1 / 0\n"})
    monkeypatch.setenv("XAI_TOOLBOX_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"'broken'.*ZeroDivisionError"):
        xt.reload_plugins()


DUPLICATE_SALIENCY = """
    import xai_toolbox as xt
    from xai_toolbox.plugins.gradients import Saliency

    class MySaliency(Saliency):
        pass

    @xt.hookimpl
    def register_methods(register):
        register("saliency", MySaliency)
"""


def test_two_plugins_claiming_one_name_are_both_disabled_and_the_rest_works(plugin_path: Path) -> None:
    _install_dist(plugin_path, "dup-dist", "dup = dup_plugin\n", {"dup_plugin": DUPLICATE_SALIENCY})
    with pytest.warns(PluginWarning, match=r"'saliency'.*'gradients'.*xai-toolbox.*'dup'.*dup-dist.*both are disabled"):
        registry = xt.reload_plugins()
    assert set(registry.disabled) == {"dup", "gradients"}
    methods = xt.list_methods()
    assert "saliency" not in methods and "integrated_gradients" not in methods  # the whole plugin
    assert {"gradcam", "rise", "sobol"} <= set(methods)  # every other plugin still works
    with pytest.raises(UnknownNameError, match="disabled because they claim the same names: dup, gradients"):
        xt.method("saliency", None)


def test_a_name_clash_is_an_error_in_strict_mode(plugin_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_dist(plugin_path, "dup-dist", "dup = dup_plugin\n", {"dup_plugin": DUPLICATE_SALIENCY})
    monkeypatch.setenv("XAI_TOOLBOX_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"'saliency'.*'gradients'.*'dup'"):
        xt.reload_plugins()


def test_a_plugin_may_use_builtin_classes_at_import_time(plugin_path: Path) -> None:
    """``xt.SmoothGrad`` inside a plugin module resolves while the registry loads (it used to
    re-enter the registry's lock and hang forever)."""
    source = """
        import xai_toolbox as xt

        class Noisier(xt.SmoothGrad):      # a lookup through the registry, at import time
            name = "noisier"

        @xt.hookimpl
        def register_methods(register):
            register(Noisier.name, Noisier)
    """
    _install_dist(plugin_path, "subclass-dist", "sub = broken_plugin_sub\n", {"broken_plugin_sub": source})
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(xt.reload_plugins()), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "loading a plugin that uses xt.SmoothGrad at import deadlocked"
    entry = done[0].method("noisier")
    assert issubclass(entry.cls, xt.SmoothGrad) and entry.package == "subclass-dist"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "import xai_toolbox as xt\n@xt.hookimpl\ndef register_method(register):\n    pass\n",
            r"'typo'.*register_method.*did you mean register_methods",
        ),
        (
            "def register_methods(register):\n    register('forgotten', object)\n",
            r"'typo'.*register_methods\(\) is not marked as a hook.*@xai_toolbox.hookimpl",
        ),
    ],
    ids=["misspelled hook", "missing @hookimpl"],
)
def test_hook_mistakes_are_reported_not_ignored(plugin_path: Path, source: str, message: str) -> None:
    _install_dist(plugin_path, "typo-dist", "typo = broken_plugin_typo\n", {"broken_plugin_typo": source})
    with pytest.warns(PluginWarning, match=message):
        registry = xt.reload_plugins()
    assert "typo" in registry.failed
    assert set(xt.list_methods()) >= BUILTIN_METHODS


def test_disable_plugins_by_name_and_all_third_party(
    example_plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XAI_TOOLBOX_DISABLE_PLUGINS", "example, cams")
    xt.reload_plugins()
    assert "center_prior" not in xt.list_methods() and "gradcam" not in xt.list_methods()
    monkeypatch.setenv("XAI_TOOLBOX_DISABLE_PLUGINS", "all")
    xt.reload_plugins()
    assert "center_prior" not in xt.list_methods() and "gradcam" in xt.list_methods()
    monkeypatch.delenv("XAI_TOOLBOX_DISABLE_PLUGINS")
    xt.reload_plugins()
    assert "center_prior" in xt.list_methods()


def test_unknown_method_lists_the_available_ones() -> None:
    xt.reload_plugins()
    with pytest.raises(UnknownNameError, match=r"unknown method 'salency'.*available methods:.*saliency") as err:
        xt.method("salency", None)
    assert isinstance(err.value, xt.XaiToolboxError)
    with pytest.raises(UnknownNameError, match="unknown metric"):
        xt.metric("nope", None)
    with pytest.raises(AttributeError):
        _ = xt.NoSuchMethod


def test_import_does_not_pull_in_frameworks_and_warns_nothing(tmp_path: Path) -> None:
    code = (
        "import sys, warnings; warnings.simplefilter('error');"
        "import xai_toolbox as xt; xt.list_methods();"
        "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))"
    )
    # Run outside the checkout so the installed package is imported, as a user gets it.
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "[]"


def test_cli_list_shows_each_method_with_its_package(capsys: pytest.CaptureFixture[str]) -> None:
    from xai_toolbox.cli import main

    xt.reload_plugins()
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.strip().startswith("gradcam "))
    assert "GradCAM" in line and "xai-toolbox" in line


def test_third_party_adapter_hook_takes_over(plugin_path: Path) -> None:
    source = """
        import xai_toolbox as xt
        from xai_toolbox.backends.numpy import NumpyAdapter

        class Doubler:
            def predict(self, x):
                return 2 * x.reshape(len(x), -1)[:, :2]

        @xt.hookimpl
        def adapt_model(model, framework):
            if isinstance(model, Doubler):
                return NumpyAdapter(model.predict)
    """
    _install_dist(plugin_path, "adapter-dist", "adapters = dup_plugin_adapter\n", {"dup_plugin_adapter": source})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xt.reload_plugins()
    module = sys.modules["dup_plugin_adapter"]
    adapter = xt.adapt(module.Doubler())
    assert adapter.framework == "numpy"
    del sys.modules["dup_plugin_adapter"]


def test_failure_from_a_source_checkout_says_how_to_fix_it(tmp_path: Path) -> None:
    from xai_toolbox.registry import _source_checkout_hint

    checkout = tmp_path / "checkout"
    (checkout / "xai_toolbox").mkdir(parents=True)
    (checkout / "plugins").mkdir()
    missing = ModuleNotFoundError("No module named 'xai_toolbox.plugins'", name="xai_toolbox.plugins")
    hint = _source_checkout_hint(missing, checkout / "xai_toolbox")
    assert str(checkout) in hint and "pip install -e ." in hint
    # An installed package (plugins inside it) or another module's failure gets no hint.
    installed = tmp_path / "site" / "xai_toolbox"
    (installed / "plugins").mkdir(parents=True)
    assert _source_checkout_hint(missing, installed) == ""
    other = ModuleNotFoundError("No module named 'scipy'", name="scipy")
    assert _source_checkout_hint(other, checkout / "xai_toolbox") == ""
    assert _source_checkout_hint(ValueError("boom"), checkout / "xai_toolbox") == ""
