"""The docs' and the README's Python examples run, so they cannot drift from the library.

Every ```python block of ``README.md`` and of every page under ``docs/`` is executed, page by
page, in order, in one namespace per page — the blocks of the tabbed sections and the
tutorials' ``exec="on"`` blocks included. What each page finds predefined:

* the tutorials, ``getting-started.md``, ``index.md`` and the README: nothing (they build
  everything themselves, from the embedded demo model);
* ``plugin-guide.md``: a small PyTorch CNN on 16×16 images and the example plugin installed;
* every other page: the demo model (PyTorch), two held-out images ``images`` (a torch tensor;
  ``images_nhwc`` as NumPy NHWC), ``labels``, the object ``masks`` (also as ``boxes``), the
  maps ``maps``, ``cam`` and ``rise``, an evaluation ``table`` of ``rise`` and ``saliency`` on
  deletion and its per-image ``scores``, ``file_names``, ``classes``, reference images
  ``refs``/``train_images``, two copies of the model as ``models`` (MeGe's fold models), and
  scikit-learn black boxes: ``clf`` on tabular ``rows``, ``sklearn_pipeline`` on images.

A block that cannot run here (it needs your own model file, a data set, a GPU) is marked as
illustrative by an HTML comment on the line before it, which the rendered page does not show:
``<!-- illustrative: why -->``. Blocks that include files with ``--8<--`` are tested by the
included files' own tests.
"""

from __future__ import annotations

import importlib.util
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: The marker of a block that is shown, not run (on the line before the block).
ILLUSTRATIVE = "<!-- illustrative"
BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)```python(?P<attrs>[^\n]*)\n(?P<code>.*?)^(?P=indent)```", re.DOTALL | re.MULTILINE
)
#: Pages that define everything they use (they need these frameworks).
SELF_CONTAINED = {
    "README.md": ("torch",),
    "docs/index.md": ("torch",),
    "docs/getting-started.md": ("torch", "tensorflow"),
    "docs/tutorials/pytorch-quickstart.md": ("torch",),
    "docs/tutorials/keras-quickstart.md": ("torch", "tensorflow"),
    "docs/tutorials/writing-a-plugin.md": ("torch", "tensorflow"),
    "docs/gallery.md": (),
}


def python_blocks(text: str) -> list[str]:
    """The runnable Python blocks of a Markdown text: illustrative and snippet-including
    blocks left out, indented (tabbed) blocks dedented."""
    blocks = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        if before and before[-1].strip().startswith(ILLUSTRATIVE):
            continue
        code = textwrap.dedent(match.group("code"))
        if "--8<--" not in code:
            blocks.append(code)
    return blocks


def _pages() -> list[str]:
    pages = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md"))
    return [p for p in pages if python_blocks((ROOT / p).read_text(encoding="utf-8"))]


def run_blocks(page: str, namespace: dict[str, Any]) -> None:
    for i, block in enumerate(python_blocks((ROOT / page).read_text(encoding="utf-8"))):
        try:
            exec(compile(block, f"{page}[block {i}]", "exec"), namespace)  # noqa: S102
        except Exception as exc:
            raise AssertionError(f"{page}: example block {i} failed:\n{block}") from exc


def _require(*modules: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"this page's examples need {module}, which is not installed")


def _demo_namespace() -> dict[str, Any]:
    """The demo model, two held-out images and what the reference pages' examples use."""
    import torch

    import xai_toolbox as xt
    from xai_toolbox.demo import (
        CLASS_NAMES,
        DEMO_SEEDS,
        load_demo_model,
        make_shapes,
        to_channels_first,
    )

    data = make_shapes(2, seed=DEMO_SEEDS.heldout)
    model = load_demo_model("torch")
    images = torch.from_numpy(to_channels_first(data.images))
    labels = np.asarray(data.labels)
    cam = xt.explain(model, images, labels, method="gradcam")
    rise = xt.method("rise", model, nb_samples=200, seed=0)(images, labels)
    table = xt.evaluate(model, images, labels, methods=["rise", "saliency"], metrics=["deletion"],
                        method_params={"rise": {"nb_samples": 200, "seed": 0}})
    others = make_shapes(4, seed=DEMO_SEEDS.heldout + 1)
    masks = data.masks.astype(np.float32)
    return {
        "xt": xt, "np": np, "model": model, "images": images, "labels": labels,
        "masks": masks, "boxes": masks, "maps": cam, "cam": cam, "rise": rise,
        "table": table, "scores": table.results["rise"]["deletion"].scores,
        "file_names": [f"image{i}.png" for i in range(2)], "classes": list(CLASS_NAMES),
        "refs": torch.from_numpy(to_channels_first(others.images)),  # reference images (baselines)
        "train_images": torch.from_numpy(to_channels_first(others.images)),
        "models": [load_demo_model("torch") for _ in range(2)],  # as MeGe's fold models (2 folds of 2 images)
        **_black_boxes(data.images, data.labels),
    }


def _black_boxes(images_nhwc: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The scikit-learn models the black-box pages explain: ``clf`` on tabular ``rows``, and
    ``sklearn_pipeline`` on flattened NHWC images ``images_nhwc``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(20, 6)).astype(np.float32)
    clf = LogisticRegression().fit(rows, (rows[:, 0] > 0).astype(int))
    flatten = FunctionTransformer(lambda x: np.asarray(x).reshape(len(x), -1))
    pipeline = make_pipeline(flatten, LogisticRegression(max_iter=200))
    training = rng.random((10, *images_nhwc.shape[1:]), dtype=np.float32)
    pipeline.fit(training, np.arange(10) % 5)  # the demo's five classes, so `labels` fit both
    return {"rows": rows, "clf": clf, "sklearn_pipeline": pipeline, "images_nhwc": images_nhwc,
            "labels_nhwc": labels}


PAGES = _pages()


def test_every_page_with_examples_is_collected() -> None:
    assert {"README.md", "docs/plugin-guide.md", "docs/tutorials/pytorch-quickstart.md"} <= set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_docs_examples_run(page: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                           tmp_path: Path) -> None:
    if page in SELF_CONTAINED:
        _require(*SELF_CONTAINED[page])
        namespace: dict[str, Any] = {"__name__": "__docs__"}
    elif page == "docs/plugin-guide.md":
        _require("torch")
        request.getfixturevalue("example_plugin")
        from xai_toolbox.testing import cnn, to_framework

        images = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
        namespace = {"model": cnn("torch"), "images": to_framework(images, "torch"), "labels": np.array([0, 1])}
    else:
        _require("torch")
        namespace = _demo_namespace()
    # The files examples write (reports, pictures) go to a temporary folder; the gallery reads
    # docs/ from the repository root, where the docs build runs it.
    monkeypatch.chdir(ROOT if page == "docs/gallery.md" else tmp_path)
    run_blocks(page, namespace)
