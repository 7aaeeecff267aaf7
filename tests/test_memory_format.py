"""PyTorch memory format (channels-last) and compilation options: the ``"auto"`` rule (no
extra passes on a CPU), the ``"measure"`` trial and its decision rule, results equal to contiguous runs (forward, gradients, CAM layers), models that
cannot run channels-last, the options of ``xt.adapt`` and their errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.testing import as_numpy, cnn

torch = pytest.importorskip("torch")
from xai_toolbox.backends import torch as torch_backend  # noqa: E402

IMAGES = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
TARGETS = [0, 3, 1]


@pytest.fixture(autouse=True)
def _needs_torch(pytestconfig: pytest.Config) -> None:
    if "torch" not in pytestconfig.frameworks:
        pytest.skip("PyTorch not selected (--framework)")


def measured(model: Any) -> Any:
    """The model with the timing trial on (``memory_format="measure"``)."""
    return xt.adapt(model, memory_format="measure")


def trial_of(model: Any, shape: tuple[int, ...], kind: str = "forward") -> Any:
    return torch_backend._trials.get(model, {}).get(("cpu", shape, kind, None))


# -- the decision rule ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("contiguous", "channels_last", "expected"),
    [
        ([9.0, 1.0, 1.1], [9.0, 0.5, 0.6], True),        # 2× faster: channels-last
        ([9.0, 1.0, 1.1], [0.1, 1.0, 1.2], True),         # a tie goes to channels-last
        ([9.0, 1.0, 1.1], [0.1, 1.05, 1.2], False),       # 5 % slower: contiguous
        ([1.0, 1.0, 1.0], [0.01, 2.0, 2.0], False),       # only its warm-up pass was fast
    ],
)
def test_the_rule_drops_warm_ups_and_keeps_channels_last_unless_slower(
    contiguous: list[float], channels_last: list[float], expected: bool
) -> None:
    assert torch_backend.prefers_channels_last({False: contiguous, True: channels_last}) is expected


def test_the_trial_times_both_layouts_before_the_first_result() -> None:
    model = cnn("torch", 2)
    xt.Rise(measured(model), nb_samples=8, grid_size=4, batch_size=8)(IMAGES[:1], [0])  # one pass
    trial = trial_of(model, (3, 16, 16))
    assert [len(t) for t in trial.times.values()] == [torch_backend.TRIAL_PASSES] * 2
    assert trial.decided is torch_backend.prefers_channels_last(trial.times)
    xt.Saliency(measured(model))(IMAGES[:1], [0])
    assert trial_of(model, (3, 16, 16), "gradient").decided is not None  # its own trial


def test_repeated_calls_give_identical_results() -> None:
    model = cnn("torch", 3)
    x = torch.from_numpy(IMAGES)
    first = [as_numpy(xt.method(m, model, batch_size=2)(x, TARGETS)) for m in ("gradcam", "saliency")]
    again = [as_numpy(xt.method(m, model, batch_size=2)(x, TARGETS)) for m in ("gradcam", "saliency")]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


# -- results do not depend on the layout ------------------------------------------------------------
def layouts(model: Any) -> dict[str, Any]:
    return {f: xt.adapt(model, memory_format=f) for f in ("contiguous", "channels_last", "measure", "auto")}


def test_perturbation_maps_are_equal_in_every_layout() -> None:
    model = cnn("torch", 0)
    x = torch.from_numpy(IMAGES)
    maps = {f: as_numpy(xt.Rise(a, nb_samples=96, grid_size=4, batch_size=16)(x, TARGETS)) for f, a in layouts(model).items()}
    for f in ("channels_last", "measure", "auto"):
        np.testing.assert_allclose(maps[f], maps["contiguous"], rtol=1e-5, atol=1e-6)
    assert measured(model).layout_choice(x) in ("channels_last", "contiguous")


@pytest.mark.parametrize("method", ["saliency", "gradcam", "integrated_gradients"])
def test_gradient_and_layer_passes_are_equal_in_every_layout(method: str) -> None:
    model = cnn("torch", 0)
    x = torch.from_numpy(IMAGES)
    maps = {f: as_numpy(xt.method(method, a, batch_size=2)(x, TARGETS)) for f, a in layouts(model).items()}
    for f in ("channels_last", "measure", "auto"):
        np.testing.assert_allclose(maps[f], maps["contiguous"], rtol=1e-4, atol=1e-6)


def test_channels_last_inputs_really_reach_the_model() -> None:
    model = cnn("torch", 0)
    seen: list[bool] = []
    handle = model.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    try:
        xt.Rise(xt.adapt(model, memory_format="channels_last"), nb_samples=8, grid_size=4)(IMAGES[:1], [0])
        forced = seen[-1]
        xt.Rise(xt.adapt(model, memory_format="contiguous"), nb_samples=8, grid_size=4)(IMAGES[:1], [0])
        assert forced and not seen[-1]
    finally:
        handle.remove()


def test_the_decision_is_shared_by_every_adapter_of_a_model() -> None:
    model = cnn("torch", 1)
    xt.Rise(measured(model), nb_samples=64, grid_size=4, batch_size=8)(IMAGES[:1], [0])
    trial = trial_of(model, (3, 16, 16))
    assert trial is not None and trial.decided is not None
    before = {k: list(v) for k, v in trial.times.items()}
    xt.Rise(measured(model), nb_samples=64, grid_size=4, batch_size=8)(IMAGES[:1], [0])  # a new adapter
    assert {k: list(v) for k, v in trial.times.items()} == before  # no second trial


class ViewsItsActivations(torch.nn.Module):
    """``x.view(n, -1)`` after a convolution: fails on channels-last activations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 * 14 * 14, 5)

    def forward(self, x: Any) -> Any:
        h = self.conv(x)
        return self.fc(h.view(h.shape[0], -1))


def test_a_model_that_cannot_run_channels_last_stays_contiguous() -> None:
    torch.manual_seed(0)
    model = ViewsItsActivations().eval()
    x = torch.from_numpy(IMAGES)
    auto = as_numpy(xt.Rise(measured(model), nb_samples=32, grid_size=4, batch_size=8)(x, [0, 1, 2]))
    plain = as_numpy(xt.Rise(xt.adapt(model, memory_format="contiguous"), nb_samples=32, grid_size=4)(x, [0, 1, 2]))
    np.testing.assert_allclose(auto, plain, rtol=1e-5, atol=1e-6)
    assert trial_of(model, (3, 16, 16)).decided is False
    with pytest.raises(xt.ModelError, match="view"):  # asked for explicitly: the model's error
        xt.Rise(xt.adapt(model, memory_format="channels_last"), nb_samples=8, grid_size=4)(x, [0, 1, 2])


def test_models_without_convolutions_and_non_image_inputs_get_no_trial() -> None:
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4)).eval()
    xt.Rise(measured(mlp), nb_samples=16, grid_size=4)(IMAGES, TARGETS)
    assert mlp not in torch_backend._trials
    tabular = torch.nn.Sequential(torch.nn.Linear(6, 2)).eval()
    xt.Rise(measured(tabular), nb_samples=16)(np.ones((2, 6), np.float32), [0, 1])
    assert tabular not in torch_backend._trials


def test_the_default_adds_no_pass_on_a_cpu() -> None:
    """``"auto"`` is a rule: the user's model sees exactly the method's passes, as given."""
    model = cnn("torch", 4)
    seen: list[bool] = []
    handle = model.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    try:
        xt.Rise(model, nb_samples=16, grid_size=4, batch_size=8)(IMAGES[:1], [0])
        assert len(seen) == 2 and not any(seen)  # 16 masks in chunks of 8
        seen.clear()
        xt.Rise(measured(model), nb_samples=16, grid_size=4, batch_size=8)(IMAGES[:1], [0])
        assert len(seen) == 2 + 2 * torch_backend.TRIAL_PASSES  # the trial's passes come first
    finally:
        handle.remove()
    assert trial_of(model, (3, 16, 16)) is not None


# -- options -------------------------------------------------------------------------------------------
def test_adapt_options_are_validated_kept_and_cloned() -> None:
    model = cnn("torch", 0)
    adapter = xt.adapt(model, memory_format="channels_last")
    assert adapter.memory_format == "channels_last" and not adapter.compile
    assert xt.adapt(adapter) is adapter                          # None keeps what it has
    assert xt.adapt(adapter, output=0).memory_format == "channels_last"
    assert adapter.clone().memory_format == "channels_last"
    assert xt.adapt(model).memory_format == "auto"
    with pytest.raises(xt.ParameterError, match="memory_format must be one of"):
        xt.adapt(model, memory_format="nhwc")
    with pytest.raises(xt.ParameterError, match="compile must be True or False"):
        xt.adapt(model, compile="yes")


def test_adapters_that_cannot_honour_an_option_say_so() -> None:
    numpy_model = xt.NumpyModel(lambda b: b.reshape(len(b), -1)[:, :2], channel_axis=1)
    with pytest.raises(xt.ParameterError, match="not compiled by this toolbox"):
        xt.adapt(numpy_model, compile=True)
    with pytest.raises(xt.ParameterError, match="memory_format must be one of 'auto'"):
        xt.adapt(numpy_model, memory_format="channels_last")


@pytest.mark.slow
def test_compiled_passes_give_the_eager_results() -> None:
    """``torch.compile`` of the forward and of the gradient path (tens of seconds to compile)."""
    model = cnn("torch", 0)
    x = torch.from_numpy(IMAGES)
    compiled = xt.adapt(model, compile=True)
    for method, params in (("rise", {"nb_samples": 32, "grid_size": 4}), ("saliency", {})):
        eager = as_numpy(xt.method(method, model, **params)(x, TARGETS))
        got = as_numpy(xt.method(method, compiled, **params)(x, TARGETS))
        np.testing.assert_allclose(got, eager, rtol=1e-4, atol=1e-6)
    assert model in torch_backend._compiled_modules
    # Layer passes (forward hooks) run the eager model: Grad-CAM still works.
    np.testing.assert_allclose(
        as_numpy(xt.method("gradcam", compiled)(x, TARGETS)), as_numpy(xt.method("gradcam", model)(x, TARGETS)),
        rtol=1e-4, atol=1e-6,
    )
