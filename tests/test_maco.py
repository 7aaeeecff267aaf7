"""MACO: the Fourier parametrisation (inverse DFT, trigonometry, kept magnitude), the crops
(TensorFlow's crop_and_resize), the shipped spectrum, objectives and their input gradients
through inner layers, twins, errors, and on the demo model the model's own verdict."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import eagerpy as ep
import numpy as np
import pytest
from _shared import CountedModel

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.plugins import maco as M
from xai_toolbox.testing import as_numpy, cnn, to_framework

SMALL = {"nb_steps": 3, "image_size": 24, "nb_crops": 3, "values_range": (0.0, 1.0)}
ROOT = Path(__file__).resolve().parents[1]


def _shape(framework: str, size: int = 16) -> tuple[int, int, int]:
    return (3, size, size) if framework == "torch" else (size, size, 3)


# -- the parametrisation ----------------------------------------------------------------------------
def _check_sin_cos(t: ep.Tensor) -> None:
    s, c = M.sin_cos(t)
    exact = xe.to_numpy(t).astype(np.float64)
    np.testing.assert_allclose(xe.to_numpy(s), np.sin(exact), atol=3e-6)
    np.testing.assert_allclose(xe.to_numpy(c), np.cos(exact), atol=3e-6)


def test_sin_cos_from_eagerpy_operations(framework: str) -> None:
    t = np.linspace(-60.0, 60.0, 20001, dtype=np.float32)
    _check_sin_cos(ep.astensor(t))
    _check_sin_cos(ep.astensor(to_framework(t, framework)))


@pytest.mark.parametrize(("height", "width"), [(8, 8), (7, 9), (16, 12)])
def test_irfft2_is_numpys(height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    re = rng.normal(size=(2, 3, height, width // 2 + 1)).astype(np.float32)
    im = rng.normal(size=re.shape).astype(np.float32)
    mats = [ep.astensor(m) for m in M.inverse_dft_matrices(height, width)]
    out = M.irfft2(ep.astensor(re), ep.astensor(im), mats).numpy()
    np.testing.assert_allclose(out, np.fft.irfft2(re + 1j * im, s=(height, width)), atol=1e-6)


def test_only_the_phase_changes_the_magnitude_stays() -> None:
    """Without the standardisations, ``|rfft2(irfft2(r e^{iφ}))| = r`` except on the constant
    and Nyquist columns (whose imaginary parts irfft2 drops)."""
    rng = np.random.default_rng(1)
    r = M.magnitude(3, 16, 16)
    phase = rng.normal(size=r.shape).astype(np.float32)
    s, c = M.sin_cos(ep.astensor(phase))
    mats = [ep.astensor(m) for m in M.inverse_dft_matrices(16, 16)]
    image = M.irfft2(ep.astensor(r) * c, ep.astensor(r) * s, mats).numpy()
    kept = np.abs(np.fft.rfft2(image))[..., 1:-1]
    np.testing.assert_allclose(kept, r[..., 1:-1], rtol=1e-3, atol=1e-3 * r.max())


@pytest.mark.parametrize(("channels", "size"), [(3, (12, 10)), (1, (9, 7))])
def test_the_phase_gradient_by_hand_is_the_tapes(framework: str, channels: int, size: tuple[int, int]) -> None:
    """Each step goes back through the parametrisation by hand (the forward's values, no second
    forward): it is what the framework's tape gives for the same forward."""
    maco = xt.Maco(cnn(framework), **{**SMALL, "values_range": (-0.5, 2.0)})
    adapter = maco.adapter
    like = adapter.to_model(np.zeros((1, *_shape(framework)), np.float32))
    rng = np.random.default_rng(3)
    height, width = size
    r = adapter.from_numpy(like, M.magnitude(channels, height, width)[None])
    matrices = M._matrices_on_device(like, height, width)
    phase = adapter.from_numpy(like, rng.normal(size=(1, channels, height, width // 2 + 1)).astype(np.float32))
    grad_image = adapter.from_numpy(like, rng.normal(size=(1, channels, height, width)).astype(np.float32))
    image, saved = maco._image(phase, r, matrices)
    by_hand = xe.to_numpy(maco._phase_gradient(image, grad_image, r, matrices, saved))
    _, by_tape = adapter.value_and_grad(lambda p: (maco.image(p, r, matrices) * grad_image).sum(axis=(1, 2, 3)), phase)
    by_tape = xe.to_numpy(by_tape)
    assert np.abs(by_tape).max() > 0
    np.testing.assert_allclose(by_hand, by_tape, rtol=1e-4, atol=1e-5 * np.abs(by_tape).max())


def test_image_lies_in_values_range_and_crops_are_tensorflows(tf: Any) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((1, 3, 20, 30)).astype(np.float32)
    start_r, stop_r = np.array([-0.1, 0.2, 0.5]), np.array([0.5, 0.9, 1.2])
    start_c, stop_c = np.array([0.0, 0.3, -0.2]), np.array([1.0, 0.6, 0.4])
    rows, cols = M._Sampling.of(start_r, stop_r, 20, 11), M._Sampling.of(start_c, stop_c, 30, 13)
    boxes = np.stack([start_r, start_c, stop_r, stop_c], axis=1).astype(np.float32)
    expected = tf.image.crop_and_resize(image.transpose(0, 2, 3, 1), boxes, [0, 0, 0], (11, 13)).numpy()
    for part in (slice(None), slice(1, 3)):
        crops = M.crop_and_resize(
            ep.astensor(image), tuple(ep.astensor(a) for a in rows.part(part)),
            tuple(ep.astensor(a) for a in cols.part(part, stacked=True)), (11, 13),
        ).numpy()
        np.testing.assert_allclose(crops, expected[part].transpose(0, 3, 1, 2), atol=1e-5)


@pytest.mark.parametrize(("values_range", "middle"), [((0.0, 1.0), 0.5), ((-1.0, 1.0), 0.0), ((-0.5, 2.5), 1.0)])
def test_crops_reaching_outside_the_image_take_the_middle_of_values_range(
    framework: str, values_range: tuple[float, float], middle: float
) -> None:
    """crop_and_resize fills with zero, the middle of Xplique's (-1, 1) but black for (0, 1):
    here the fill is the middle of values_range. Canvas-sized crops of a uniform image at
    ``low`` (noise off) move off the canvas (centres 0.5 + N(0, 0.15)): every pixel is ``low``
    inside or ``middle`` outside, and both occur; the gradient flows from the inside only."""
    maco = xt.Maco(cnn(framework), **{**SMALL, "box_size": 1.0, "noise": 0.0, "nb_crops": 6, "values_range": values_range})
    adapter = maco.adapter
    low = values_range[0]
    like = adapter.to_model(np.zeros((1, *_shape(framework)), np.float32))
    image = adapter.from_numpy(like, np.full((1, 3, 24, 24), low, np.float32))
    seen: list[np.ndarray] = []

    def record(crops: ep.Tensor) -> ep.Tensor:
        seen.append(xe.to_numpy(crops))
        return crops.sum(axis=(1, 2, 3))

    _, grad = maco._crops_gradient(image, record, step=0, input_size=(16, 16))
    crops = np.concatenate(seen)
    inside = np.isclose(crops, low, atol=1e-6)
    outside = np.isclose(crops, middle, atol=1e-6)
    assert np.all(inside | outside) and inside.any() and outside.any()
    # Each inside pixel of a crop passes ∂/∂image of total weight 1 / nb_crops, outside ones 0.
    np.testing.assert_allclose(float(xe.to_numpy(grad).sum()), inside.sum() / 6, rtol=1e-4)


def test_the_shipped_spectrum_is_what_the_script_computes() -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("PIL")
    from sklearn.datasets import load_sample_images

    spec = importlib.util.spec_from_file_location("make_maco_spectrum", ROOT / "scripts" / "make_maco_spectrum.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    np.testing.assert_allclose(script.COLOR_CORRELATION, M.COLOR_CORRELATION, atol=1e-7)
    images = [np.asarray(i, dtype=np.float64) / 255.0 for i in load_sample_images().images]
    computed = script.natural_spectrum(images)
    shipped = M.natural_spectrum()
    assert shipped.shape == (3, 256, 129) and shipped.max() == 1.0
    np.testing.assert_allclose(computed / computed.max(), shipped, rtol=2e-3, atol=1e-7)


# -- the method --------------------------------------------------------------------------------------
def test_result_determinism_and_invariances(framework: str) -> None:
    model = cnn(framework, training=True)
    before = xt.adapt(model).model_state()
    vis = xt.featurevis("maco", model, **SMALL)(1, input_shape=_shape(framework))
    assert xt.adapt(model).model_state() == before
    assert vis.objective.describe() == "logit 1" and vis.method == "maco"
    assert vis.image.shape == (24, 24, 3) and vis.image.dtype == np.float32
    assert vis.image.min() >= 0.0 and vis.image.max() <= 1.0
    assert vis.transparency is not None and vis.transparency.shape == (24, 24, 3) and vis.transparency.min() >= 0
    assert vis.history is not None and vis.history.shape == (3,)
    assert xt.adapt(model).is_native(vis.model_input) and tuple(vis.model_input.shape) == (1, *_shape(framework))
    again = xt.Maco(model, **SMALL, batch_size=1)(xt.Objective.logit(1), _shape(framework))
    np.testing.assert_allclose(again.image, vis.image, atol=1e-5)
    np.testing.assert_allclose(again.transparency, vis.transparency, rtol=1e-4, atol=1e-7)
    other = xt.Maco(model, **{**SMALL, "seed": 1})(1, _shape(framework))
    assert not np.allclose(other.image, vis.image)
    # The transparency only accumulates: the first step is the same with more steps.
    one = xt.Maco(model, **{**SMALL, "nb_steps": 1})(1, _shape(framework))
    assert np.all(vis.transparency >= one.transparency - 1e-7)
    assert vis.alpha().shape == (24, 24) and vis.alpha().min() >= 0 and vis.alpha().max() == pytest.approx(1.0)
    assert vis.display().shape == (24, 24, 3)


def test_torch_and_keras_twins_follow_the_same_trajectory(both: None) -> None:
    results = {f: xt.Maco(cnn(f), **SMALL, batch_size=2)(xt.Objective.channel("relu2", 3), _shape(f)) for f in ("torch", "tf")}
    a, b = results["torch"], results["tf"]
    np.testing.assert_allclose(a.history, b.history, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.image, b.image, atol=1e-4)
    np.testing.assert_allclose(a.transparency, b.transparency, rtol=1e-3, atol=1e-6)


def test_a_score_fn_replaces_the_logit(framework: str) -> None:
    """Adam ignores the gradient's scale: twice the logit follows the logit's trajectory."""
    if framework == "torch":
        def doubled(outputs: Any, labels: Any) -> Any:
            return 2 * outputs.gather(1, labels[:, None].long())[:, 0]
    else:
        import tensorflow as tf

        def doubled(outputs: Any, labels: Any) -> Any:
            return 2 * tf.gather(outputs, tf.cast(labels, tf.int32), batch_dims=1)
    model = cnn(framework)
    plain = xt.Maco(model, **SMALL)(2, _shape(framework))
    scored = xt.Maco(model, **SMALL, score_fn=doubled)(2, _shape(framework))
    np.testing.assert_allclose(scored.history, 2 * plain.history, rtol=1e-3, atol=1e-5)
    with pytest.raises(xt.ParameterError, match="score_fn"):
        xt.Maco(model, **SMALL, score_fn=doubled)(xt.Objective.channel("relu2", 0), _shape(framework))


@pytest.mark.parametrize("kind", ["channel", "direction", "log_probability"])
def test_the_optimisation_raises_its_objective(framework: str, kind: str) -> None:
    model = cnn(framework)
    adapter = xt.adapt(model)
    # A channel that is alive on images like the visualisations (a dead ReLU has no gradient).
    grey = adapter.to_model(np.full((1, *_shape(framework)), 0.5, np.float32))
    alive = int(as_numpy(xe.channels_first(adapter.layer_activations(grey, "relu2")[0], adapter.channel_axis)).mean(axis=(0, 2, 3)).argmax())
    objective = {
        "channel": xt.Objective.channel("relu2", alive),
        "direction": xt.Objective.direction("relu2", np.linspace(1.0, 0.0, 16)),
        "log_probability": xt.Objective.log_probability(3),
    }[kind]
    params = {**SMALL, "box_size": 1.0, "noise": 0.0, "nb_crops": 2}
    like = adapter.to_model(np.zeros((1, *_shape(framework)), np.float32))
    score = objective.bind(adapter, like)
    values = [
        float(as_numpy(score(adapter.to_model(xt.Maco(model, **{**params, "nb_steps": steps})(objective, _shape(framework)).model_input)))[0])
        for steps in (1, 12)
    ]
    assert values[1] > values[0], f"{objective.describe()}: {values}"


def test_inner_layer_gradients_with_respect_to_the_inputs(framework: str) -> None:
    """The adapter capability behind channel and direction objectives: the output layer gives
    the logit gradient exactly, and the mean of a channel of the first convolution (linear in
    the input) has the analytic gradient: at interior pixels, the sum of the channel's kernel
    over its taps divided by the number of positions."""
    from xai_toolbox.testing import cnn_weights

    adapter = xt.adapt(cnn(framework))
    images = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    x = adapter.to_model(to_framework(images, framework))
    by_layer = adapter.value_and_grad(lambda z: adapter.differentiable_activations(z, "fc")[0][:, 1], x)
    by_output = adapter.value_and_grad(lambda z: adapter.differentiable_forward(z)[:, 1], x)
    np.testing.assert_allclose(as_numpy(by_layer[1]), as_numpy(by_output[1]), atol=1e-6)
    np.testing.assert_allclose(as_numpy(by_layer[0]), as_numpy(by_output[0]), atol=1e-6)

    def channel(z: ep.Tensor) -> ep.Tensor:
        acts, outputs = adapter.differentiable_activations(z, "conv1")
        assert outputs.shape == (z.shape[0], 4)
        return xe.channels_first(acts, adapter.channel_axis)[:, 3].mean(axis=(1, 2))

    _, grads = adapter.value_and_grad(channel, x)
    grads = as_numpy(xe.channels_first(grads, adapter.channel_axis))
    kernel = cnn_weights(0)["conv1.weight"][3]                                       # (3, 3, 3)
    expected = np.broadcast_to(kernel.sum(axis=(1, 2))[:, None, None] / 256, (2, 3, 14, 14))
    np.testing.assert_allclose(grads[:, :, 1:-1, 1:-1], expected, rtol=1e-5, atol=1e-8)
    with pytest.raises(xt.LayerError, match="not found"):
        adapter.value_and_grad(lambda z: adapter.differentiable_activations(z, "nope")[0].sum(axis=1), x)


def test_frameworks_without_gradients_or_layers_are_refused() -> None:
    adapter = xt.adapt(xt.NumpyModel(lambda a: a.reshape(len(a), -1)[:, :2]))
    with pytest.raises(xt.UnsupportedModelError):
        adapter.differentiable_activations(adapter.to_model(np.zeros((1, 3, 4, 4), np.float32)), "conv")
    with pytest.raises(xt.UnsupportedModelError):
        xt.Maco(adapter.model, **SMALL)(0, (3, 4, 4))


@pytest.mark.parametrize(
    ("objective", "shape", "params", "error", "match"),
    [
        ("three", None, {}, xt.ParameterError, "objective must be an xt.Objective"),
        (True, None, {}, xt.ParameterError, "objective must be"),
        (xt.Objective.channel("nope", 0), None, {}, xt.LayerError, "not found.*relu2"),
        (0, (3, 16), {}, xt.InputError, "rank 4|images"),
        (0, "big", {}, xt.ParameterError, "input_shape"),
        (0, "flipped", {}, xt.LayoutError, "transpose"),
        (0, None, {"nb_steps": 0}, xt.ParameterError, "nb_steps"),
        (0, None, {"values_range": (1, 0)}, xt.ParameterError, "low < high"),
        (0, None, {"values_range": 3}, xt.ParameterError, "values_range"),
        (0, None, {"image_size": "big"}, xt.ParameterError, "image_size"),
        (0, None, {"box_size": 0.0}, xt.ParameterError, "box_size"),
        (0, None, {"lr": 0}, xt.ParameterError, "lr"),
        (0, None, {"nb_crops": -1}, xt.ParameterError, "nb_crops"),
    ],
)
def test_bad_calls_fail_before_any_model_call(
    framework: str, objective: Any, shape: Any, params: dict[str, Any], error: type, match: str
) -> None:
    counted = CountedModel(framework)
    if shape is None:
        shape = _shape(framework)
    elif shape == "flipped":
        shape = _shape(framework)[::-1]
    with pytest.raises(error, match=match):
        xt.featurevis("maco", counted.model, **{**SMALL, **params})(objective, shape)
    assert counted.calls == 0


def test_indices_and_directions_are_checked(framework: str) -> None:
    maco = xt.Maco(cnn(framework), **SMALL)
    with pytest.raises(xt.ParameterError, match="channel 99 is out of range.*16 channels"):
        maco(xt.Objective.channel("relu2", 99), _shape(framework))
    with pytest.raises(xt.ParameterError, match="direction has 3 values.*16 channels"):
        maco(xt.Objective.direction("relu2", np.ones(3)), _shape(framework))
    with pytest.raises(xt.ParameterError, match="class 7 is out of range"):
        maco(xt.Objective.log_probability(7), _shape(framework))
    with pytest.raises(xt.ParameterError, match="not all zeros"):
        xt.Objective.direction("relu2", np.zeros(16))
    with pytest.raises(xt.UnknownNameError, match="unknown feature visualisation 'mac'.*did you mean 'maco'"):
        xt.featurevis("mac", None)


def test_plots(framework: str) -> None:
    pytest.importorskip("matplotlib")
    from xai_toolbox import plot_concepts

    maco = xt.Maco(cnn(framework), **SMALL)
    visualizations = [maco(c, _shape(framework)) for c in (0, 1)]
    assert len(visualizations[0].plot().axes) == 1
    assert len(plot_concepts.featurevis_grid(visualizations, titles=["a", "b"], both=True).axes) == 4


# -- meaningfulness on the demo model -------------------------------------------------------------
#: MACO at the demo's scale (64 × 64 inputs in [0, 1]), as docs/concepts/maco.md explains: the
#: canvas is the model's input, so the crops are canvas-sized (objects at the scale the model
#: was trained on; Xplique's schedule ends at crops of 0.05 of the canvas, 3 pixels here), and
#: the noise is Xplique's 0.08 relative to its (-1, 1) range, 0.04 for (0, 1).
DEMO_MACO = {"image_size": 64, "box_size": 1.0, "noise": 0.04, "nb_crops": 8, "values_range": (0.0, 1.0)}


def _demo_verdicts(framework: str, objective: Any, nb_steps: int, seed: int) -> list[tuple[int, float]]:
    """For each class c: the rank (1 = first) of c and its softmax probability in the demo
    model's outputs on MACO's visualisation of ``objective(c)``, the image as the model's input."""
    from xai_toolbox.demo import CLASS_NAMES, load_demo_model

    model = load_demo_model(framework)
    adapter = xt.adapt(model)
    maco = xt.featurevis("maco", model, nb_steps=nb_steps, seed=seed, **DEMO_MACO)
    verdicts = []
    for label in range(len(CLASS_NAMES)):
        vis = maco(objective(label), _shape(framework, 64))
        logits = as_numpy(adapter.forward(adapter.to_model(vis.model_input)))[0].astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        verdicts.append((int((logits > logits[label]).sum()) + 1, round(float(probabilities[label]), 4)))
    return verdicts


def test_demo_class_visualisations_are_recognised(framework: str) -> None:
    """Issue #17: the model classifies MACO's visualisation of each class as that class with
    high confidence — every class first, probability at least 0.9, for two seeds. The objective
    is the class's log-probability (a logit is no contrast: the triangle and cross logits'
    visualisations come out as ring). Measured at these 24 steps, both frameworks (the twins
    agree to 0.001): lowest 0.967 (seed 0, circle) and 0.943 (seed 1, square); over seeds 0-5
    the lowest is 0.924. Without the optimisation the five images would be one (the initial
    phase depends on the seed alone), so at most one class could pass."""
    for seed in (0, 1):
        verdicts = _demo_verdicts(framework, xt.Objective.log_probability, nb_steps=24, seed=seed)
        assert all(rank == 1 and p >= 0.9 for rank, p in verdicts), f"seed {seed}, (rank, probability) per class: {verdicts}"


@pytest.mark.slow
def test_demo_class_visualisations_at_more_steps(framework: str, pytestconfig: pytest.Config) -> None:
    """With 64 steps and four seeds every class's visualisation is classified as the class with
    probability at least 0.95 (measured: lowest 0.967, seed 3, circle); the logits'
    visualisations have their class in the top two of five (all five by chance: 1 %), and
    triangle and cross not first (ring is: its row of the last layer has the largest norm)."""
    if "slow" not in (pytestconfig.getoption("markexpr") or ""):
        pytest.skip("slow (a minute or two): run with -m slow")  # as tests/test_reliability_long_runs.py
    for seed in range(4):
        verdicts = _demo_verdicts(framework, xt.Objective.log_probability, nb_steps=64, seed=seed)
        assert all(rank == 1 and p >= 0.95 for rank, p in verdicts), f"seed {seed}: {verdicts}"
    ranks = [rank for rank, _ in _demo_verdicts(framework, xt.Objective.logit, nb_steps=64, seed=0)]
    assert max(ranks) <= 2 and ranks[2] == ranks[3] == 2, f"logit objective, ranks per class: {ranks}"
