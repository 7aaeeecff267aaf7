"""Plugin discovery end to end: entry points, broken plugins, duplicates, disabling."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.errors import PluginError, UnknownNameError
from xai_toolbox.registry import PluginWarning

EXAMPLE = Path(__file__).parent / "example_plugin"
BUILTIN_METHODS = {"saliency", "gradient_input", "integrated_gradients", "smoothgrad", "gradcam", "gradcampp"}


def _install_dist(root: Path, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    """Make ``dist`` importable and discoverable: a dist-info with entry points on sys.path."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[xai_toolbox]\n" + textwrap.dedent(entry_points))
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder on sys.path for fake distributions; the registry is reloaded afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    monkeypatch.undo()
    for name in [m for m in sys.modules if m.startswith(("xai_toolbox_example", "broken_plugin", "dup_plugin"))]:
        del sys.modules[name]
    xt.reload_plugins()


@pytest.fixture
def example_plugin(plugin_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real example package in tests/example_plugin, discovered through its entry point."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    _install_dist(plugin_path, "xai-toolbox-example", "example = xai_toolbox_example\n", {})
    return plugin_path


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


def test_example_plugin_passes_the_contract(example_plugin: Path) -> None:
    xt.reload_plugins()
    xt.testing.check_method(xt.api.get_registry().method("center_prior").cls, {"sigma": 0.3})


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


def test_two_plugins_claiming_one_name_is_an_error_naming_both(plugin_path: Path) -> None:
    source = """
        import xai_toolbox as xt
        from xai_toolbox.plugins.gradients import Saliency

        class MySaliency(Saliency):
            pass

        @xt.hookimpl
        def register_methods(register):
            register("saliency", MySaliency)
    """
    _install_dist(plugin_path, "dup-dist", "dup = dup_plugin\n", {"dup_plugin": source})
    with pytest.raises(PluginError, match=r"'saliency'.*'gradients'.*xai-toolbox.*'dup'.*dup-dist"):
        xt.reload_plugins()


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
