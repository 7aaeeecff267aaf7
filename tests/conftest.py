"""Test configuration: ``--framework NAME`` (repeatable) picks the frameworks under test.

The choices are the registered frameworks whose plugin ships test models (``torch``, ``tf``,
``jax``, ``keras-jax``, ``keras-torch``, and any adapter plugin's). Without the option the
installed ones of PyTorch and TensorFlow are tested: the whole suite's helpers (reference
outputs, counted models, layer names) are written for those two, while JAX and Keras on other
backends are covered by their own files and the three-framework twins, run with an explicit
``--framework`` (tox's ``jax`` and ``keras-torch`` envs). Asking for a framework that is not
installed is a usage error, never a silent skip. Keras runs on the backend ``KERAS_BACKEND`` names (TensorFlow unless the
environment says otherwise: tox's ``jax`` and ``keras-torch`` envs set it), one per process.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from typing import Any  # noqa: E402

import pytest  # noqa: E402

from xai_toolbox.backends import frameworks  # noqa: E402
from xai_toolbox.backends.test_models import TEST_DEVICE_VARIABLE, torch_test_device  # noqa: E402
from xai_toolbox.testing import installed_frameworks  # noqa: E402

DEFAULT_FRAMEWORKS = ("torch", "tf")  # under test when --framework is not given


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--framework",
        action="append",
        choices=[f.name for f in frameworks() if f.build_test_model is not None],
        default=None,
        help="framework to test (repeatable); default: torch and tf where installed",
    )
    parser.addoption(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="device of the PyTorch test models (default cpu, or $XAI_TOOLBOX_TEST_DEVICE); the "
        "inputs stay NumPy arrays and CPU tensors, as a user's often are",
    )


def pytest_configure(config: pytest.Config) -> None:
    installed = installed_frameworks()
    chosen = config.getoption("framework") or [f for f in installed if f in DEFAULT_FRAMEWORKS] or installed
    missing = [f for f in chosen if f not in installed_frameworks()]
    if missing:
        raise pytest.UsageError(f"--framework {' '.join(missing)} requested but not installed")
    config.frameworks = list(dict.fromkeys(chosen))  # type: ignore[attr-defined]
    device = config.getoption("device")
    if device is not None:  # read by the test-model builders, in xdist's workers too
        os.environ[TEST_DEVICE_VARIABLE] = device
    if torch_test_device() == "cuda" and "torch" in config.frameworks:  # type: ignore[attr-defined]
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--device cuda: torch.cuda.is_available() is False here")


def pytest_report_header(config: pytest.Config) -> str:
    frameworks_ = ", ".join(config.frameworks) or "none"  # type: ignore[attr-defined]
    return f"xai-toolbox frameworks under test: {frameworks_}; PyTorch test models on {torch_test_device()}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "framework" in metafunc.fixturenames:
        chosen = metafunc.config.frameworks  # type: ignore[attr-defined]
        # ``@pytest.mark.frameworks("torch", "tf")``: a test of something only those provide
        # (the demo model's twins) runs on those of the chosen frameworks
        only = metafunc.definition.get_closest_marker("frameworks")
        if only is not None:
            chosen = [f for f in chosen if f in only.args]
        metafunc.parametrize("framework", chosen)


def _require(config: pytest.Config, framework: str) -> None:
    if framework not in config.frameworks:  # type: ignore[attr-defined]
        pytest.skip(f"{framework} not selected (--framework {framework})")


@pytest.fixture
def torch(pytestconfig: pytest.Config) -> Any:
    """The torch module, when torch is under test (else the test is skipped)."""
    _require(pytestconfig, "torch")
    import torch as module

    return module


@pytest.fixture
def tf(pytestconfig: pytest.Config) -> Any:
    """The tensorflow module, when tf is under test (else the test is skipped)."""
    _require(pytestconfig, "tf")
    import tensorflow as module

    return module


@pytest.fixture
def keras(tf: Any) -> Any:
    import keras as module

    return module


@pytest.fixture
def jax(pytestconfig: pytest.Config) -> Any:
    """The jax module, when jax is under test (else the test is skipped)."""
    _require(pytestconfig, "jax")
    import jax as module

    return module


@pytest.fixture
def both(pytestconfig: pytest.Config) -> None:
    """Cross-framework tests run only when both frameworks are under test."""
    _require(pytestconfig, "torch")
    _require(pytestconfig, "tf")


@pytest.fixture
def plugin_path(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A folder on sys.path for fake distributions; the registry is reloaded afterwards."""
    import sys

    import xai_toolbox as xt

    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    monkeypatch.undo()
    prefixes = ("xai_toolbox_example", "broken_plugin", "dup_plugin")
    for name in [m for m in sys.modules if m.startswith(prefixes)]:
        del sys.modules[name]
    xt.reload_plugins()


@pytest.fixture
def example_plugin(plugin_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The real example package in tests/example_plugin, discovered through its entry point."""
    from pathlib import Path

    from _shared import install_dist

    import xai_toolbox as xt

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "example_plugin"))
    install_dist(plugin_path, "xai-toolbox-example", "example = xai_toolbox_example\n", {})
    xt.reload_plugins()
    return plugin_path
