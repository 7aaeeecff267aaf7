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


def test_parameters_reach_the_methods(harness: Any) -> None:
    """Cases' parameters are passed on under the names a class takes (once, every case ran at
    its defaults: the tables said 512 masks while 4000 ran)."""
    import xai_toolbox as xt
    from benchmarks.building import build_params

    kwargs, notes = build_params(xt.Rise, {"nb_samples|nb_masks": 12, "window": 3})
    assert kwargs == {"nb_samples": 12} and len(notes) == 1 and "window" in notes[0]


def test_naive_section_replays_contiguous_passes(harness: Any, torch: Any, tmp_path: Path) -> None:
    """The naive reference feeds the model contiguous NCHW batches (what a user's loop does),
    whatever layout the toolbox chose, and the row reports images/s and the speed-up."""
    from benchmarks.runners import NAIVE, run_overhead_case
    from benchmarks.workbench import Workbench

    cfg = tiny_config(harness, "torch", tmp_path)
    bench = Workbench(cfg)
    seen: list[bool] = []
    hook = bench.model.register_forward_pre_hook(lambda _m, a: seen.append(a[0].is_contiguous()))
    try:
        replay = bench.bare.prepare([("forward", 4)], [bench.x.repeat(2, 1, 1, 1).contiguous(
            memory_format=torch.channels_last)], naive=True)
        replay()
    finally:
        hook.remove()
    assert seen == [True]
    from benchmarks.config import Case

    row = run_overhead_case(Case("bench_tiny", cls=TinyPerturbation), bench, cfg, NAIVE)
    assert row["status"] == "ok" and row["reference"] == NAIVE
    assert row["images_per_s"] > 0 and row["speedup"] == pytest.approx(1 / row["ratio"])


def test_xplique_section_is_skipped_with_a_note_without_its_environment(
    harness: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.report import markdown
    from benchmarks.xplique import run_xplique

    monkeypatch.setenv("XPLIQUE_PYTHON", str(tmp_path / "no-such-python"))
    cfg = tiny_config(harness, "torch", tmp_path)
    section = run_xplique(cfg)
    assert section["status"] == "skipped" and "scripts/peers/README.md" in section["note"]
    results = {"environment": {"framework": "torch", "device": "cpu", "cpu": "x", "cpu_count": 2, "numpy": "2",
                               "python": "3.11"}, "model": {"name": "m", "input": [3, 8, 8], "parameters": 10,
                                                            "n_images": 1, "batch_size": 2},
               "config": {"quick": True}, "xplique": section}
    assert "Skipped: Xplique's environment not found" in markdown(results)


def test_new_sections_render_wellformed_tables(harness: Any) -> None:
    from benchmarks.report import markdown

    timing = {"status": "ok", "median_s": 1.0, "reference_median_s": 2.0, "ratio": 0.5, "ratio_quartiles": [0.4, 0.6]}
    results = {
        "environment": {"framework": "torch", "device": "cpu", "cpu": "x", "cpu_count": 2, "numpy": "2",
                        "python": "3.11"},
        "model": {"name": "m", "input": [3, 8, 8], "parameters": 10, "n_images": 1, "batch_size": 2},
        "config": {"quick": True},
        "naive": [{**timing, "name": "rise", "passes": {"passes": 2, "inputs": 16}, "images_per_s": 4.0,
                   "speedup": 2.0}],
        "xplique": {"status": "ok", "environment": {"xplique": "2.0.2", "tensorflow": "2.20.0"},
                    "settings": {"size": 64, "n_images": 2, "batch_size": 128},
                    "rows": [{**timing, "name": "rise", "kind": "method", "agreement": 0.9},
                             {**timing, "name": "deletion", "kind": "metric", "ours_score": 0.1, "xplique_score": 0.2}]},
        "quality": [{"model": "m", "method": "rise", "kind": "method", "reference": {"nb_samples": 64},
                     "candidates": [{"label": "a", "passes": 4.0, "correlation": 0.9, "seed_correlation": 0.8,
                                     "passes_for_target": 20.0, "deletion": 0.1, "insertion": 0.5}]},
                    {"model": "m", "method": "mufidelity", "kind": "metric", "reference": {"nb_samples": 64},
                     "candidates": [{"label": "b", "passes": 4.0, "max_error": 0.01, "seed_spread": None}]}],
        "compile": [{**timing, "name": "rise", "first_call_s": 9.0, "eager_first_call_s": 1.0, "speedup": 2.0,
                     "pays_after_calls": 7.5}],
    }
    text = markdown(results)
    assert check_markdown_tables(text) == 5
    assert "2.00× (1.67–2.50)" in text and "8 calls" in text and "0.100 / 0.200" in text
    assert "ours on `xt.adapt(model)`" in text
    results["xplique"]["settings"]["ours"] = {"compile": True}
    assert "ours on `xt.adapt(model, compile=True)`" in markdown(results)


def test_our_adapter_options_for_the_xplique_section(harness: Any) -> None:
    from benchmarks.__main__ import adapter_options, parse

    assert adapter_options("compile=true, memory_format=channels_last") == {
        "compile": True, "memory_format": "channels_last"}
    assert adapter_options("") == {}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        adapter_options("compile")
    assert parse(["--ours", "compile=true"]).ours == "compile=true"


def test_quality_extrapolates_passes_by_the_monte_carlo_law(harness: Any) -> None:
    from benchmarks.quality import _correlations, _passes_for, quality_cases

    # r = 0.9 at 1000 passes: noise/signal variance 0.2346; 0.99 needs 0.0203 → 11.5× more.
    assert _passes_for(0.9, 1000) == pytest.approx(1000 * (1 / 0.81 - 1) / (1 / 0.9801 - 1))
    assert _passes_for(0.995, 1000) < 1000 and _passes_for(-0.1, 10) is None
    a = np.random.default_rng(0).random((2, 3, 3))
    np.testing.assert_allclose(_correlations(a, 2 * a + 1), [1.0, 1.0])
    quick = {c.method: c for c in quality_cases(quick=True)}
    assert quick["rise"].reference["nb_samples"] == 8000 and set(quick) == {"rise", "sobol", "hsic", "mufidelity"}


def test_hsic_sampler_comparison_prints_a_row_per_sampler(
    harness: Any, torch: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.hsic_samplers import main

    main(["--images", "1", "--seeds", "1", "--masks", "32"])
    out = capsys.readouterr().out
    assert out.count("the two references correlate") == 2  # the ResNet and the demo CNN
    rows = [line for line in out.splitlines() if line.startswith(("| lhs |", "| orthogonal |"))]
    assert len(rows) == 4
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for pair in cells[1:4]:
            mean, worst = (float(v) for v in pair.split(","))
            assert -1.0 <= worst <= mean <= 1.0
        assert float(cells[4]) > 0  # passes for r = 0.99 (inf where r <= 0)
        areas = [float(v) for c in cells[5:7] for v in c.split(",")]  # deletion, insertion: logit, prob.
        assert len(areas) == 4 and np.isfinite(areas).all()
