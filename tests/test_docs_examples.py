"""The docs' Python examples run: every ```python block of the pages below is executed in
order in one namespace (blocks that include files from the example package are tested by that
package's own tests), with a small PyTorch model and images predefined."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xai_toolbox.testing import cnn, to_framework

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["plugin-guide.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page: str) -> list[str]:
    """The runnable Python blocks of a docs page (snippet includes left out)."""
    return [b for b in BLOCK.findall((DOCS / page).read_text()) if "--8<--" not in b]


@pytest.mark.parametrize("page", PAGES)
def test_docs_examples_run(page: str, torch: Any, example_plugin: Any) -> None:
    blocks = python_blocks(page)
    assert blocks, f"{page} has no runnable example"
    images = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    namespace: dict[str, Any] = {
        "model": cnn("torch"), "images": to_framework(images, "torch"), "labels": np.array([0, 1]),
    }
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{page}[block {i}]", "exec"), namespace)  # noqa: S102
        except Exception as exc:
            raise AssertionError(f"{page}: example block {i} failed:\n{block}") from exc
