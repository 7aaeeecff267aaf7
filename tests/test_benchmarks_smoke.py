"""Smoke test of the benchmark harness (``python -m benchmarks``) on a tiny model.

No timing is asserted: a shared CI machine makes timings meaningless in a test. What is
checked is the plumbing the published numbers rely on — forward passes counted exactly and
replayed by the baseline, the Keras adapter tracing once per input shape, unregistered methods
reported as skipped, and well-formed JSON and Markdown outputs.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import eagerpy as ep
import numpy as np
import pytest

from xai_toolbox.extend import AttributionMethod, ItemSums, chunks

ROOT = Path(__file__).resolve().parents[1]
PER_ITEM = 5  # model inputs the tiny method makes per image


@pytest.fixture
def harness() -> Any:
    """``benchmarks.harness`` from the repository (the package is not installed)."""
    sys.path.insert(0, str(ROOT))
    try:
        yield importlib.import_module("benchmarks.harness")
    finally:
        sys.path.remove(str(ROOT))


class TinyPerturbation(AttributionMethod):
    """A forward-only method: ``PER_ITEM`` scaled copies of each image, streamed in chunks."""

    name = "bench_tiny"

    def explain_batch(self, x: ep.Tensor, targets: Any) -> ep.Tensor:
        sums = ItemSums(x.shape[0], self.adapter)
        for chunk in chunks(x.shape[0], PER_ITEM, self.batch_size):
            scale = self.adapter.from_numpy(x, (1.0 + chunk.samples / PER_ITEM).astype(np.float32))
            rows = self.adapter.take_rows(x, chunk.items) * scale.reshape((-1,) + (1,) * (x.ndim - 1))
            scores = targets.take(chunk.items).score(self.adapter.forward(rows))
            sums.add(chunk, scores)
        per_item = sums.result()
        shape = self.explanation_shape(x)
        return ep.zeros(x, shape) + per_item.reshape((-1,) + (1,) * (len(shape) - 1))


def tiny_config(harness: Any, framework: str, out: Path) -> Any:
    from benchmarks.config import Case, Config, MemoryCase, PeerCase

    cfg = Config(
        framework=framework,
        out=str(out),
        size=16,
        width=4,
        classes=4,
        n_images=2,
        batch_size=8,
        repeats=1,
        short_call_s=0.0,
        isolate_memory=False,
        threads=None,  # leave this test process's thread settings alone
        model="cnn",  # the tiny test CNN: the harness is under test here, not the ResNet
    )
    cfg.overhead = [
        Case("bench_tiny", cls=TinyPerturbation),
        Case("no_such_method", params={"nb_samples": 4}),
        Case("deletion", "metric", {"steps": 4}),
    ]
    cfg.gradients = [Case("saliency")]
    cfg.peers = [PeerCase("saliency", {}, "saliency")] if framework == "torch" else []
    cfg.peer_images = 2
    cfg.memory = [MemoryCase("saliency", "batch_size", (4, 8))]
    cfg.precision = ["bench_tiny"] if framework == "torch" else []
    return cfg


def check_markdown_tables(text: str) -> int:
    """Every table row has as many cells as its header; returns the number of tables."""
    tables = 0
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---") or line.startswith("|--"):
            tables += 1
            header = lines[i - 1]
            assert header.startswith("|"), header
            width = header.count("|")
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert lines[j].count("|") == width, (header, lines[j])
                j += 1
            assert j > i + 1, f"empty table under {header!r}"
    return tables


def test_harness_writes_wellformed_results(harness: Any, framework: str, tmp_path: Path) -> None:
    from benchmarks.report import _json_default

    cfg = tiny_config(harness, framework, tmp_path)
    results = harness.run(cfg)

    json_path = tmp_path / f"bench-{framework}-cpu.json"
    md_path = tmp_path / f"bench-{framework}-cpu.md"
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(results, default=_json_default))
    data = json.loads(json_path.read_text())
    assert data["environment"]["framework"] == framework
    steal = data["environment"]["cpu_steal_share"]
    assert steal is None or 0.0 <= steal <= 1.0
    assert {"overhead", "gradients", "memory", "config", "model"} <= set(data)

    rows = {r["name"]: r for r in data["overhead"]}
    assert rows["no_such_method"]["status"] == "skipped"
    assert "not registered" in rows["no_such_method"]["note"]

    tiny = rows["bench_tiny"]
    assert tiny["status"] == "ok", tiny
    # 2 images × 5 inputs in chunks of 8 across images: one pass of 8 and one of 2, nothing
    # else but (in PyTorch, where the output width is not static) a 1-input probe of the targets.
    sizes = tiny["passes"]["batch_sizes"]
    assert sizes.pop("8") == 1 and sizes.pop("2") == 1
    assert sizes in ({}, {"1": 1})
    assert tiny["passes"]["forward"]["inputs"] == 2 * PER_ITEM + sum(int(k) * c for k, c in sizes.items())
    assert "gradient" not in tiny["passes"]
    assert len(tiny["times_s"]) == len(tiny["reference_times_s"]) == 1
    assert tiny["ratio"] > 0 and tiny["median_s"] > 0 and tiny["reference_median_s"] > 0
    low, high = tiny["ratio_quartiles"]
    assert low <= tiny["ratio"] <= high
    if framework == "tf":
        # The compiled forward traces once per input shape, however many chunks ran.
        assert tiny["traces_after_first_call"] == 1
        assert tiny["traces_after_all_calls"] == 1

    grad = data["gradients"][0]
    assert grad["status"] == "ok", grad
    assert grad["passes"]["gradient"]["inputs"] == 2

    if "deletion" in rows and rows["deletion"]["status"] == "ok":
        # steps + 1 points per image, streamed in chunks of 8.
        assert rows["deletion"]["passes"]["forward"]["inputs"] >= 2 * 5

    if framework == "torch":
        peer = data["peers"][0]
        if peer["status"] == "ok":
            assert peer["agreement"] == pytest.approx(1.0, abs=1e-4)  # same gradients as Captum
        mixed = data["precision"][0]
        assert mixed["status"] == "ok", mixed
        assert mixed["speedup"] > 0 and mixed["agreement"] > 0.9
    else:
        assert "precision" not in data  # autocast is PyTorch-only

    mem = data["memory"][0]
    assert mem["status"] == "ok", mem
    assert [s["value"] for s in mem["settings"]] == [4, 8]
    assert all(s["peak_mb"] > 0 for s in mem["settings"])

    text = md_path.read_text()
    assert text.startswith("### ")
    assert check_markdown_tables(text) >= 3
    assert "bench_tiny" in text and "no_such_method" in text


def test_benchmark_models_are_twins(harness: Any, both: None) -> None:
    """The PyTorch and Keras benchmark ResNets compute the same function (tiny width)."""
    import torch

    from benchmarks.models import resnet

    images = np.random.default_rng(1).uniform(0, 1, (3, 3, 24, 24)).astype(np.float32)
    t_model = resnet("torch", 3, size=24, width=4, classes=5)
    k_model = resnet("tf", 3, size=24, width=4, classes=5)
    with torch.no_grad():
        t_out = t_model(torch.from_numpy(images)).numpy()
    k_out = np.asarray(k_model(images.transpose(0, 2, 3, 1), training=False))
    assert t_out.shape == (3, 5)
    np.testing.assert_allclose(k_out, t_out, rtol=1e-4, atol=1e-4 * np.abs(t_out).max())


def test_ratios_are_shown_with_their_quartiles(harness: Any) -> None:
    from benchmarks.report import _ratio

    assert _ratio({"ratio": 1.0123, "ratio_quartiles": [0.98, 1.041]}, 2) == "1.01 (0.98–1.04)"
    assert _ratio({"ratio": 1.0123}, 3) == "1.012"  # results recorded before the quartiles


def test_stolen_cpu_time_is_the_steal_counters_share(harness: Any) -> None:
    from benchmarks.machine import steal_share
    from benchmarks.report import _steal

    start = [100, 0, 50, 800, 0, 0, 0, 50]  # user nice system idle iowait irq softirq steal
    end = [200, 0, 100, 900, 0, 0, 0, 100]  # 300 ticks later, 50 of them stolen
    assert steal_share(start, end) == pytest.approx(50 / 300)
    assert steal_share(None, end) is None and steal_share(start, start) is None
    assert "stolen by the hypervisor 17 %" in _steal({"cpu_steal_share": 50 / 300})
    assert _steal({}) == ""
