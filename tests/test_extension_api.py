"""The extension API from the outside: the example plugin package in tests/example_plugin uses
only public names, and its method, metric and framework adapter pass the contract checks."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import eagerpy as ep
import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.testing import (
    check_adapter,
    check_method,
    check_metric,
    cnn,
    cnn_weights,
    to_framework,
)

EXAMPLE = Path(__file__).parent / "example_plugin" / "xai_toolbox_example"
ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "xai_toolbox":
                found.update(f"xai_toolbox.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("package", [EXAMPLE, ROOT / "plugins", ROOT / "metrics"], ids=["example", "plugins", "metrics"])
def test_plugins_import_only_the_public_api(package: Path) -> None:
    allowed = {"xai_toolbox", "xai_toolbox.extend", "eagerpy"}
    for path in sorted(package.glob("*.py")):
        engine = {
            m for m in _imports(path)
            if m.split(".")[0] in ("xai_toolbox", "eagerpy")
            and not m.startswith(("xai_toolbox.plugins.", "xai_toolbox.metrics."))  # other plugins
        }
        private = sorted(engine - allowed)  # NumPy and SciPy (any submodule) are free to use
        assert not private, f"{path.name} imports {private}: not the public API"


def test_every_extension_name_is_documented_with_an_example() -> None:
    for name in xe.__all__:
        obj = getattr(xe, name)
        if isinstance(obj, str | tuple) or name in ("ScoreFn", "ScoreOf", "Draw", "hookimpl"):
            continue  # constants, type aliases and the hook marker
        doc = obj.__doc__ or ""
        assert doc.strip(), f"xai_toolbox.extend.{name} has no docstring"
        assert "Example" in doc or ">>>" in doc, f"xai_toolbox.extend.{name} has no example"


def test_require_api() -> None:
    xe.require_api(xe.API_VERSION)
    major, minor = (int(p) for p in xe.API_VERSION.split("."))
    with pytest.raises(xt.PluginError, match="needs the xai-toolbox extension API"):
        xe.require_api(f"{major}.{minor + 1}")
    with pytest.raises(xt.PluginError, match="needs the xai-toolbox extension API"):
        xe.require_api(f"{major + 1}.0")
    with pytest.raises(xt.PluginError, match="MAJOR.MINOR"):
        xe.require_api("one")


def test_the_example_method_metric_and_framework_are_registered(example_plugin: Path) -> None:
    registry = xt.api.get_registry()
    assert {"center_prior", "masked_cam"} <= set(xt.list_methods())
    assert "concentration" in xt.list_metrics()
    assert registry.framework("tinynet").package == "xai-toolbox-example"
    assert ("example", "xai-toolbox-example") in registry.adapter_plugins()
    assert xt.extend.canonical_framework("tiny") == "tinynet"


def test_example_methods_and_metric_pass_the_contract(example_plugin: Path, pytestconfig: pytest.Config) -> None:
    frameworks = [*pytestconfig.frameworks, "tinynet"]  # twins agree across all of them
    check_method(xt.CenterPrior, {"sigma": 0.3}, frameworks=frameworks)
    check_method(xt.MaskedCAM, {"layer": "conv2", "batch_size": 7}, frameworks=frameworks)
    check_metric(xt.Concentration, frameworks=frameworks)


def test_example_adapter_passes_the_adapter_contract(example_plugin: Path) -> None:
    check_adapter("tinynet")


def test_builtin_adapters_pass_the_adapter_contract(pytestconfig: pytest.Config) -> None:
    for framework in pytestconfig.frameworks:
        check_adapter(framework)


def test_black_box_methods_run_on_the_third_party_framework(example_plugin: Path, framework: str) -> None:
    """A built-in method on a framework only a plugin knows gives the twin's map."""
    images = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    tiny = cnn("tinynet", seed=2)
    twin = cnn(framework, seed=2)
    for name, params in (("rise", {"nb_samples": 32, "grid_size": 4}), ("occlusion", {"patch_size": 4, "stride": 4})):
        a = xt.method(name, tiny, **params)(images, [0, 1])
        b = xt.testing.as_numpy(xt.method(name, twin, **params)(to_framework(images, framework), [0, 1]))
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=name)


def test_gradient_methods_refuse_the_framework_without_gradients(example_plugin: Path) -> None:
    model = cnn("tinynet")
    with pytest.raises(xt.UnsupportedModelError, match="saliency needs gradients, which a TinyNet cannot give"):
        xt.method("saliency", model)(np.zeros((1, 3, 16, 16), np.float32), [0])
    with pytest.raises(xt.UnsupportedModelError, match="gradcam needs gradients.*black-box"):
        xt.method("gradcam", model)(np.zeros((1, 3, 16, 16), np.float32), [0])


def test_masked_cam_weights_are_uniform_when_every_mask_scores_alike(example_plugin: Path) -> None:
    """Constant scores → channel softmax 1/K → the map is ReLU(mean_k A_k), upsampled (the
    reference's Score-CAM test)."""
    weights = cnn_weights(seed=1)
    weights["fc.weight"] = np.zeros_like(weights["fc.weight"])  # every input scores the bias
    from xai_toolbox_example import tiny_cnn

    model = tiny_cnn(weights)
    images = np.random.default_rng(3).random((2, 3, 16, 16), dtype=np.float32)
    maps = xt.method("masked_cam", model, layer="conv2")(images, [0, 2])
    _, (acts,) = model.run(images, ["conv2"])
    small = np.maximum(acts.mean(axis=1), 0.0)
    expected = xe.resize(ep.astensor(small), (16, 16), "bilinear").numpy()
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)


def test_cli_list_shows_frameworks_and_adapters(example_plugin: Path, capsys: Any) -> None:
    from xai_toolbox.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.strip().startswith("tinynet "))
    assert "TinyNet" in line and "xai-toolbox-example" in line
    assert any(row.strip().startswith("masked_cam ") for row in out.splitlines())


def test_the_import_contracts_name_every_engine_module() -> None:
    """The contracts in pyproject.toml list the engine's modules one by one (import-linter
    wildcards cannot exclude `extend`): a new engine module must be added there."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    public_only, frameworks, engine_only = contracts
    engine = {
        f"xai_toolbox.{p.stem if p.is_file() else p.name}"
        for p in (ROOT / "xai_toolbox").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())
    }
    hint = "list every engine module in the [tool.importlinter] contracts of pyproject.toml"
    missing = sorted(engine - {"xai_toolbox.extend"} - set(public_only["forbidden_modules"]))
    assert not missing, f"{missing} missing from the first contract's forbidden_modules: {hint}"
    missing = sorted(engine - set(engine_only["source_modules"]))
    assert not missing, f"{missing} missing from the third contract's source_modules: {hint}"
    assert set(public_only["forbidden_modules"]) == engine - {"xai_toolbox.extend"}, "stale names"
    assert set(engine_only["source_modules"]) == engine, "stale names"
    assert frameworks["source_modules"] == ["xai_toolbox"]
