"""The Ray engine gives the local engine's results, bit for bit: deterministic and seeded methods
and metrics, actors reading an image folder (corrupt files included), a stream sent in windows,
a Ray Dataset as the data, the command line on an existing cluster. One local Ray cluster of 2 CPUs is started for the
module and shut down after it (tox env ``ray``; skipped where Ray is not installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray", reason="the ray engine needs the ray extra: pip install 'xai-toolbox[ray]'")
pytest.importorskip("ray.data", reason="the ray engine needs Ray Data: pip install 'xai-toolbox[ray]'")
pytest.importorskip("zarr", reason="dataset runs need the datasets extra")
pytest.importorskip("torch", reason="the Ray tests explain the PyTorch demo model")

from test_datasets import (  # noqa: E402
    DELETION,
    MUFIDELITY,
    RISE,
    assert_same_store,
    factory,
    factory_file,
    shapes,
    write_pictures,
)

from xai_toolbox.cli import main  # noqa: E402
from xai_toolbox.datasets import explain_dataset, open_results  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


def test_ray_matches_local_bit_for_bit(torch: Any, ray_cluster: Any, tmp_path: Path) -> None:
    x, labels = shapes(12, "torch")
    kw = dict(model_factory=factory("torch"), labels=labels, methods=["saliency", RISE],
              metrics=[DELETION, MUFIDELITY], group_size=4, seed=5)
    local = explain_dataset(x, out=tmp_path / "local", **kw)
    ray_run = explain_dataset(x, out=tmp_path / "ray", engine="ray", workers=2, **kw)
    assert ray_run.computed == local.computed == 12 and ray_run.failed == 0
    assert_same_store(tmp_path / "local", tmp_path / "ray")
    again = explain_dataset(x, out=tmp_path / "ray", engine="ray", workers=2, **kw)
    assert (again.computed, again.skipped) == (0, 12)
    assert ray_cluster.is_initialized()  # a cluster the caller started is left running


def test_ray_reads_folders_in_actors_and_streams_in_windows(torch: Any, ray_cluster: Any, tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_pictures(root / "a", 3, seed=1)
    write_pictures(root / "b", 3, seed=2)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG broken")
    model = f"{factory_file(tmp_path)}:build"
    kw = dict(methods=["saliency"], metrics=[DELETION], preprocess="model", group_size=3, targets="label")
    explain_dataset(root, model, out=tmp_path / "folder-local", **kw)
    explain_dataset(root, model, out=tmp_path / "folder-ray", engine="ray", workers=2, **kw)
    assert_same_store(tmp_path / "folder-local", tmp_path / "folder-ray")
    failed = open_results(tmp_path / "folder-ray").records().dropna(subset=["error"])
    assert set(failed.image_id) == {"b/broken.png"}

    x, labels = shapes(5, "torch")
    rows = [(x[i], labels[i]) for i in range(5)]
    kw = dict(model_factory=factory("torch"), methods=["saliency", RISE], group_size=2)
    explain_dataset(iter(rows), out=tmp_path / "stream-local", **kw)
    explain_dataset(iter(rows), out=tmp_path / "stream-ray", engine="ray", workers=2, window=2, **kw)
    assert_same_store(tmp_path / "stream-local", tmp_path / "stream-ray")
    # A Ray Dataset as the data (read by the driver, in order): the same results again.
    items = [{"image": x[i], "label": int(labels[i]), "id": str(i)} for i in range(5)]
    explain_dataset(ray_cluster.data.from_items(items), out=tmp_path / "ray-dataset", **kw)
    assert_same_store(tmp_path / "stream-local", tmp_path / "ray-dataset")


def test_ray_command_line(torch: Any, ray_cluster: Any, tmp_path: Path) -> None:
    x, _ = shapes(6, "torch")
    np.save(tmp_path / "x.npy", x)
    common = [str(tmp_path / "x.npy"), "--model", f"{factory_file(tmp_path)}:build", "--method", "gradcam",
              "--metric", "deletion", "--param", "deletion.steps=6", "--group-size", "3", "--no-progress"]
    assert main(["run", *common, "--out", str(tmp_path / "local")]) == 0
    assert main(["run", *common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"]) == 0
    assert_same_store(tmp_path / "local", tmp_path / "ray")
    assert open_results(tmp_path / "ray").info["runs"][-1]["engine"] == "ray"
