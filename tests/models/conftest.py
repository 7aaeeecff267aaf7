"""The real-architecture matrix runs only when asked for: ``pytest -m models`` (``tox -e models``).

It builds models of ``transformers``, ``keras.applications`` and ``keras_hub`` from configs with
random weights (no download: ``HF_HUB_OFFLINE=1``); elsewhere its tests are skipped.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "models" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="real-architecture matrix: run with -m models (tox -e models)")
    for item in items:
        if item.get_closest_marker("models") is not None:
            item.add_marker(skip)
