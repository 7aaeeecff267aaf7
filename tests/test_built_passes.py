"""Built passes (``ModelAdapter.forward_built``, ``xe.built_scores``): a chunk's batch built on
the device, the forward pass and the score as one pass — compiled on TensorFlow (one trace per
input shape, XLA for large inputs), the same steps in turn elsewhere, equal results."""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.testing import as_numpy, cnn, to_framework

TARGETS = np.array([0, 1, 3])


def _images(framework: str, n: int = 3, size: int = 16) -> Any:
    return to_framework(np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32), framework)


def _masks(adapter: xe.ModelAdapter, like: ep.Tensor, n: int, seed: int, size: int = 16) -> ep.Tensor:
    return adapter.from_numpy(like, (np.random.default_rng(seed).random((n, size, size)) > 0.5).astype(np.float32))


def _steps(channel_axis: int, baseline: float) -> tuple[Any, Any]:
    def build(rows: ep.Tensor, masks: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        return xe.perturb(rows, masks, channel_axis, "inpainting", baseline), masks

    def finish(outputs: ep.Tensor, masks: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        return outputs[:, 1] - outputs[:, 0], masks.reshape((-1, 256)).sum(axis=1)

    return build, finish


def test_forward_built_computes_build_forward_finish(framework: str) -> None:
    adapter = xt.adapt(cnn(framework))
    x = adapter.to_model(_images(framework))
    build, finish = _steps(adapter.channel_axis, 0.25)
    for n, rows in ((5, x[:1]), (3, x), (1, x[2:3])):  # one image's row broadcast, or one per input
        masks = _masks(adapter, x, n, seed=n)
        scores, sums = adapter.forward_built(build, rows, masks, finish=finish)
        expected = finish(adapter.forward(build(rows, masks)[0]), masks)
        np.testing.assert_allclose(scores.numpy(), expected[0].numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(sums.numpy(), expected[1].numpy())
        # without finish: the outputs, with build's extras after them
        outputs, again = adapter.forward_built(build, rows, masks)
        np.testing.assert_allclose(outputs.numpy(), adapter.forward(build(rows, masks)[0]).numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(again.numpy(), masks.numpy())
    only = adapter.forward_built(lambda rows: rows * 0.5, x)
    np.testing.assert_allclose(only.numpy(), adapter.forward(x * 0.5).numpy(), rtol=1e-6, atol=1e-6)


def test_built_passes_trace_once_per_input_shape(tf: Any) -> None:
    """Chunks of every size (a smaller last one, one image's row or one row per input) and new
    adapters of the same model share one trace; only new shapes trace."""
    model = cnn("tf")
    adapter = xt.adapt(model)
    x = adapter.to_model(_images("tf"))
    channel_axis = adapter.channel_axis

    def build(rows: ep.Tensor, masks: ep.Tensor, per_input: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        return xe.perturb(rows, masks, channel_axis, "inpainting", 0.0), per_input

    def finish(outputs: ep.Tensor, per_input: ep.Tensor) -> ep.Tensor:
        return outputs[:, :1] * per_input

    def run(on: xe.ModelAdapter, rows: ep.Tensor, n: int, width: int = 4) -> ep.Tensor:
        per_input = adapter.from_numpy(x, np.ones((n, width), np.float32))
        return on.forward_built(build, rows, _masks(adapter, x, n, n), per_input, finish=finish)

    run(adapter, x[:1], 7)
    traces = adapter.traces
    assert traces == 2  # the forward pass, and the built pass around it
    for n, rows in ((7, x[:1]), (3, x), (2, x[1:3]), (1, x[:1])):
        run(adapter, rows, n)
        run(xt.adapt(model), rows, n)
    assert adapter.traces == traces
    assert run(adapter, x, 3, width=6).shape == (3, 6)  # another input shape: a trace of its own
    assert adapter.traces == traces + 1


@pytest.mark.parametrize(("kind", "name", "params"), [
    ("method", "occlusion", {"patch_size": 5, "stride": 4}),
    ("method", "rise", {"nb_samples": 20, "grid_size": 4, "seed": 1}),
    ("metric", "deletion", {"steps": 6}),
    ("metric", "insertion", {"steps": 6, "baseline": "blur"}),
    ("metric", "mufidelity", {"nb_samples": 9, "grid_size": 4, "seed": 1, "baseline": 0.5, "activation": "softmax"}),
])
def test_methods_trace_one_built_pass_for_every_chunking(tf: Any, kind: str, name: str, params: dict[str, Any]) -> None:
    model = cnn("tf")
    maps = np.random.default_rng(1).random((3, 16, 16), dtype=np.float32)

    def run(batch_size: int, n: int = 3) -> Any:
        if kind == "method":
            obj = xt.method(name, model, batch_size=batch_size, **params)
            return obj, as_numpy(obj(_images("tf", n), TARGETS[:n]))
        obj = xt.metric(name, model, batch_size=batch_size, **params)
        return obj, obj(_images("tf", n), TARGETS[:n], maps[:n]).scores

    first, reference = run(7)
    traces = first.adapter.traces
    built = [key for key in first.adapter._compiled if key[-1][0] == "built"]
    assert len(built) == 1, built
    for batch_size, n in ((5, 3), (16, 3), (4, 2)):
        obj, result = run(batch_size, n)
        np.testing.assert_allclose(result, reference[:n], rtol=1e-5, atol=1e-6)
    assert obj.adapter.traces == traces, "a chunk size or image count traced again"


@pytest.mark.parametrize(("kind", "name", "params"), [
    ("method", "occlusion", {"patch_size": 16, "stride": 12}),
    ("method", "rise", {"nb_samples": 12, "grid_size": 4, "seed": 1}),
    ("metric", "deletion", {"steps": 4}),
    ("metric", "insertion", {"steps": 4, "baseline": "blur"}),
    ("metric", "mufidelity", {"nb_samples": 8, "grid_size": 4, "seed": 1, "baseline": 0.5}),
])
def test_xla_built_passes_equal_the_steps_run_in_turn(
    tf: Any, monkeypatch: pytest.MonkeyPatch, kind: str, name: str, params: dict[str, Any]
) -> None:
    """Large inputs (here 48×48 RGB, 6 912 values per row) build and finish with XLA."""
    from xai_toolbox.backends.tensorflow import XLA_BUILD_MIN_VALUES, KerasAdapter

    assert XLA_BUILD_MIN_VALUES <= 48 * 48 * 3
    model = cnn("tf", size=48)
    x = _images("tf", 2, size=48)
    maps = np.random.default_rng(1).random((2, 48, 48), dtype=np.float32)

    def run() -> tuple[Any, np.ndarray]:
        if kind == "method":
            obj = xt.method(name, model, batch_size=6, **params)
            return obj, as_numpy(obj(x, TARGETS[:2]))
        obj = xt.metric(name, model, batch_size=6, **params)
        return obj, obj(x, TARGETS[:2], maps).scores

    obj, compiled = run()
    (entry,) = [v for k, v in obj.adapter._compiled.items() if k[-1][0] == "built"]
    assert entry[0].xla, "large inputs were not built by XLA"
    monkeypatch.setattr(KerasAdapter, "forward_built_pass", xe.ModelAdapter.forward_built_pass)
    _, in_turn = run()
    np.testing.assert_allclose(compiled, in_turn, rtol=1e-5, atol=1e-5)


def test_what_a_build_closes_over_keys_its_pass(framework: str) -> None:
    adapter = xt.adapt(cnn(framework))
    x = adapter.to_model(_images(framework))
    for baseline in (0.0, 0.5, 1.0):  # one def, three closures: three passes, none stale
        build, _ = _steps(adapter.channel_axis, baseline)
        masks = _masks(adapter, x, 4, 2)
        got, _ = adapter.forward_built(build, x[:1], masks)
        np.testing.assert_allclose(got.numpy(), adapter.forward(build(x[:1], masks)[0]).numpy(), rtol=1e-6, atol=1e-6)


def test_a_build_closing_over_tensors_or_objects_is_refused(framework: str) -> None:
    adapter = xt.adapt(cnn(framework))
    x = adapter.to_model(_images(framework))
    array = np.ones(3, np.float32)
    settings = {"baseline": 0.0}
    with pytest.raises(xt.ParameterError, match="'x' that build uses is a tensor"):
        adapter.forward_built(lambda rows: rows * x, x)
    with pytest.raises(xt.ParameterError, match="'array' that build uses is a tensor"):
        adapter.forward_built(lambda rows: rows * float(array[0]), x)
    with pytest.raises(xt.ParameterError, match="'settings' that finish uses is a dict"):
        adapter.forward_built(lambda rows: rows, x, finish=lambda out: out + settings["baseline"])
    with pytest.raises(xt.ParameterError, match="bound method"):
        adapter.forward_built(adapter.forward, x)
    with pytest.raises(xt.ParameterError, match="argument 2 is a ndarray"):
        adapter.forward_built(lambda rows, m: rows, x, np.ones(3))


def test_an_untraceable_build_runs_its_steps_in_turn(tf: Any) -> None:
    adapter = xt.adapt(cnn("tf"))
    x = adapter.to_model(_images("tf"))

    def build(rows: ep.Tensor) -> ep.Tensor:
        return rows * float(rows.raw.numpy().mean())  # reads a value back: no graph can hold it

    for part in (x, x[:2]):
        got = adapter.forward_built(build, part)
        np.testing.assert_allclose(got.numpy(), adapter.forward(build(part)).numpy(), rtol=1e-6, atol=1e-6)
    assert "eager" in [v for k, v in adapter._compiled.items() if k[-1][0] == "built"]


def test_constants_made_while_tracing_stay_in_their_trace(tf: Any) -> None:
    """``xe.resize`` inside a build makes its matrices for the trace; the eager cache never
    receives a graph tensor (it would break every later eager resize)."""
    adapter = xt.adapt(cnn("tf"))
    x = adapter.to_model(_images("tf"))
    low = adapter.from_numpy(x, np.random.default_rng(3).random((3, 5, 5)).astype(np.float32))
    channel_axis = adapter.channel_axis

    def build(rows: ep.Tensor, cells: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        masks = xe.resize(cells, (16, 16), "bilinear")
        return rows * xe.expand_to_inputs(masks, 4, channel_axis), masks

    _, masks = adapter.forward_built(build, x, low)
    np.testing.assert_allclose(masks.numpy(), xe.resize(low, (16, 16), "bilinear").numpy(), rtol=1e-6, atol=1e-7)
    with xe.tracing():
        assert xe.on_device(x, ("test-built-constant",), np.ones(2, np.float32)) is not xe.on_device(
            x, ("test-built-constant",), np.ones(2, np.float32)
        )


def test_score_fn_targets_are_scored_after_the_pass(framework: str) -> None:
    """``xe.built_scores`` scores the built-in targets inside the pass and a ``score_fn``
    after it: the same numbers."""
    model = cnn(framework)
    x = _images(framework)
    weighted = xt.Occlusion(model, patch_size=5, stride=4, batch_size=7)(x, 1)
    custom = xt.Occlusion(model, patch_size=5, stride=4, batch_size=7, score_fn=lambda out, _: out[:, 1])(x)
    np.testing.assert_allclose(as_numpy(custom), as_numpy(weighted), rtol=1e-6, atol=1e-6)


def test_stream_scores_with_tensors_equals_the_chunk_builder(framework: str) -> None:
    adapter = xt.adapt(cnn(framework))
    x = adapter.to_model(_images(framework))
    targets = xt.extend.Targets(3, weights=adapter.from_numpy(x, np.eye(4, dtype=np.float32)[TARGETS]))
    low = np.random.default_rng(4).random((5, 4, 4)).astype(np.float32)
    channel_axis = adapter.channel_axis

    def masks_of(chunk: xe.Chunk) -> ep.Tensor:
        return xe.upsample_cells(adapter.from_numpy(x, low[chunk.samples]), (16, 16))

    def build(rows: ep.Tensor, masks: ep.Tensor) -> ep.Tensor:
        return xe.perturb(rows, masks, channel_axis, "inpainting", 0.0)

    plain, _ = xe.stream_scores(
        adapter, targets, 3, 5, lambda c: build(adapter.broadcast_rows(x, c.items), masks_of(c)),
        batch_size=4, activation="softmax",
    )
    built, _ = xe.stream_scores(
        adapter, targets, 3, 5, build, batch_size=4, activation="softmax",
        tensors=lambda c: (adapter.broadcast_rows(x, c.items), masks_of(c)),
    )
    np.testing.assert_allclose(built, plain, rtol=1e-6, atol=1e-7)
