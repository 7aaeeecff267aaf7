"""Structured model outputs: tuples, dicts, dataclasses (Hugging Face ``ModelOutput``), Keras
dict and list outputs, picked automatically or by ``output=`` in every method, metric,
``xt.evaluate`` and the CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.backends.adapter import describe_output, select_output
from xai_toolbox.cli import main
from xai_toolbox.evaluation import top1
from xai_toolbox.testing import cnn, to_framework

IMAGES = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
LABELS = np.array([0, 3])


def is_array(t: Any) -> bool:
    return isinstance(t, np.ndarray)


# -- the selection rule, framework-free -------------------------------------------------------------
@dataclasses.dataclass
class Output:  # what a Hugging Face ModelOutput looks like without transformers
    logits: Any
    hidden_states: Any = None


class Pair(NamedTuple):
    scores: Any
    boxes: Any


def test_obvious_outputs_are_picked() -> None:
    a, b = np.ones((2, 3)), np.zeros((2, 5))
    assert select_output(a, None, is_array) is a
    assert select_output({"logits": a, "aux": b}, None, is_array) is a
    assert select_output(Output(a, (b, b)), None, is_array) is a
    assert select_output((a,), None, is_array) is a
    assert select_output((a, (b, b)), None, is_array) is a  # hidden states are not a tensor
    assert select_output({"out": a}, None, is_array) is a


def test_selectors_pick_by_key_index_attribute_and_callable() -> None:
    a, b = np.ones((2, 3)), np.zeros((2, 5))
    assert select_output((a, b), 1, is_array) is b
    assert select_output((a, b), -1, is_array) is b
    assert select_output({"x": a, "y": b}, "y", is_array) is b
    assert select_output({"x": a, "y": b}, 0, is_array) is a
    assert select_output(Pair(a, b), "boxes", is_array) is b
    assert select_output(Output(a, b), "hidden_states", is_array) is b
    assert select_output(Output(a, (a, b)), lambda out: out.hidden_states[-1], is_array) is b


def test_ambiguous_and_wrong_selections_show_the_structure_and_the_fix() -> None:
    a, b = np.ones((2, 3)), np.zeros((2, 5))
    with pytest.raises(xt.UnsupportedModelError, match=r"\(tensor \(2, 3\), tensor \(2, 5\)\).*ambiguous.*output= one of 0, 1"):
        select_output((a, b), None, is_array)
    with pytest.raises(xt.UnsupportedModelError, match=r"dict\(p=tensor \(2, 3\), q=tensor \(2, 5\)\).*'p', 'q'"):
        select_output({"p": a, "q": b}, None, is_array)
    with pytest.raises(xt.ParameterError, match=r"output='z' is not in .*'x', 'y'"):
        select_output({"x": a, "y": b}, "z", is_array)
    with pytest.raises(xt.ParameterError, match=r"output=2 is not in"):
        select_output((a, b), 2, is_array)
    with pytest.raises(xt.ParameterError, match=r"is \(tensor \(2, 3\), tensor \(2, 5\)\), not a tensor.*callable"):
        select_output(Output(a, (a, b)), "hidden_states", is_array)
    with pytest.raises(xt.ParameterError, match="single tensor"):
        select_output(a, 0, is_array)
    with pytest.raises(xt.ParameterError, match="must return one tensor"):
        select_output((a, b), lambda out: list(out), is_array)
    with pytest.raises(xt.UnsupportedModelError, match="not a tensor"):
        select_output("text", None, is_array)


def test_long_structures_are_shortened() -> None:
    text = describe_output(tuple(np.zeros((1, i + 1)) for i in range(20)), is_array)
    assert text.count("tensor") == 6 and "20 in all" in text


@pytest.mark.parametrize("bad", [1.5, True, "", b"logits", [0]])
def test_bad_selectors_fail_in_the_constructor(bad: Any) -> None:
    with pytest.raises(xt.ParameterError, match="output must be None"):
        xt.Saliency(None, output=bad)
    with pytest.raises(xt.ParameterError, match="output must be None"):
        xt.Deletion(None, output=bad)


def test_output_is_a_standard_parameter() -> None:
    assert "output" in xt.Saliency.param_names() and "output" in xt.Deletion.param_names()
    assert xt.GradCAM(None, output="logits").get_params()["output"] == "logits"


# -- PyTorch ------------------------------------------------------------------------------------------
def torch_wrapped(torch: Any, kind: str) -> tuple[Any, Any]:
    net = cnn("torch")

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            logits = self.net(x)
            if kind == "dict":
                return {"logits": logits, "features": x.mean(dim=(2, 3))}
            if kind == "dataclass":
                return Output(logits, (x, x))
            if kind == "tuple1":
                return (logits,)
            return (logits, 2 * logits)  # ambiguous

    return net, Wrapped()


@pytest.mark.parametrize("kind", ["dict", "dataclass", "tuple1"])
def test_torch_structured_outputs_work_unwrapped(torch: Any, kind: str) -> None:
    net, wrapped = torch_wrapped(torch, kind)
    x = torch.from_numpy(IMAGES)
    for method in ("saliency", "gradcam", "integrated_gradients"):
        np.testing.assert_allclose(
            xt.explain(wrapped, x, LABELS, method=method).numpy(), xt.explain(net, x, LABELS, method=method).numpy(),
            atol=1e-6,
        )
    maps = xt.Saliency(net)(x, LABELS)
    assert xt.Deletion(wrapped, steps=4)(x, None, maps).mean == pytest.approx(xt.Deletion(net, steps=4)(x, None, maps).mean)


def test_torch_ambiguous_output_and_explicit_selection(torch: Any) -> None:
    net, wrapped = torch_wrapped(torch, "pair")
    x = torch.from_numpy(IMAGES)
    with pytest.raises(xt.UnsupportedModelError, match=r"ambiguous; pass output= one of 0, 1"):
        xt.Saliency(wrapped)(x, LABELS)
    reference = xt.Saliency(net)(x, LABELS).numpy()
    np.testing.assert_allclose(xt.Saliency(wrapped, output=0)(x, LABELS).numpy(), reference, atol=1e-6)
    np.testing.assert_allclose(xt.Saliency(wrapped, output=1)(x, LABELS).numpy(), 2 * reference, rtol=1e-5)
    np.testing.assert_allclose(
        xt.Saliency(wrapped, output=lambda out: out[0] - out[1])(x, LABELS).numpy(), reference, rtol=1e-5
    )
    np.testing.assert_allclose(
        xt.GradCAM(wrapped, output=0)(x, LABELS).numpy(), xt.GradCAM(net)(x, LABELS).numpy(), atol=1e-6
    )
    # a metric that re-runs a method passes its output on
    result = xt.metric("randomization", wrapped, output=0, layers=["fc"])(x, LABELS)
    assert np.all(np.isfinite(result.scores))


def test_evaluate_and_top1_take_output(torch: Any) -> None:
    net, wrapped = torch_wrapped(torch, "pair")
    x = torch.from_numpy(IMAGES)
    assert np.array_equal(top1(wrapped, x, output=0).classes, top1(net, x).classes)
    table = xt.evaluate(wrapped, x, methods=["saliency"], metrics=["deletion"], output=0,
                        metric_params={"deletion": {"steps": 4}})
    reference = xt.evaluate(net, x, methods=["saliency"], metrics=["deletion"], metric_params={"deletion": {"steps": 4}})
    np.testing.assert_allclose(table.maps["saliency"], reference.maps["saliency"], atol=1e-6)
    assert table.pivot()["saliency"]["deletion"] == pytest.approx(reference.pivot()["saliency"]["deletion"])
    with pytest.raises(xt.UnsupportedModelError, match="ambiguous"):
        xt.evaluate(wrapped, x, methods=["saliency"])


def test_adapter_with_output_is_a_copy(torch: Any) -> None:
    net, wrapped = torch_wrapped(torch, "pair")
    adapter = xt.adapt(wrapped)
    assert adapter.output is None
    chosen = xt.adapt(adapter, output=1)
    assert chosen is not adapter and chosen.output == 1 and adapter.output is None
    assert xt.adapt(chosen) is chosen
    assert chosen.clone().output == 1


# -- Keras --------------------------------------------------------------------------------------------
def keras_models(keras: Any) -> tuple[Any, Any, Any]:
    net = cnn("tf")
    inputs = keras.Input((16, 16, 3))
    logits = net(inputs)
    probs = keras.layers.Softmax()(logits)
    as_dict = keras.Model(inputs, {"logits": logits, "probs": probs})
    as_list = keras.Model(inputs, [logits, probs])
    return net, as_dict, as_list


def test_keras_dict_and_list_outputs(keras: Any) -> None:
    net, as_dict, as_list = keras_models(keras)
    x = to_framework(IMAGES, "tf")
    reference = xt.Saliency(net)(x, LABELS).numpy()
    np.testing.assert_allclose(xt.Saliency(as_dict)(x, LABELS).numpy(), reference, atol=1e-6)
    np.testing.assert_allclose(xt.Saliency(as_list, output=0)(x, LABELS).numpy(), reference, atol=1e-6)
    probs = xt.Saliency(as_dict, output="probs")(x, LABELS).numpy()
    assert not np.allclose(probs, reference)
    np.testing.assert_allclose(
        xt.GradCAM(as_list, output=0)(x, LABELS).numpy(), xt.GradCAM(net)(x, LABELS).numpy(), atol=1e-6
    )
    maps = xt.Saliency(net)(x, LABELS)
    assert xt.Deletion(as_dict, steps=4)(x, LABELS, maps).mean == pytest.approx(xt.Deletion(net, steps=4)(x, LABELS, maps).mean)


def test_keras_ambiguous_output_raises_the_toolbox_error_not_a_tracing_error(keras: Any) -> None:
    _, as_dict, as_list = keras_models(keras)
    x = to_framework(IMAGES, "tf")
    for method in (xt.Saliency(as_list), xt.GradCAM(as_list), xt.Occlusion(as_list, patch_size=8, stride=8)):
        with pytest.raises(xt.UnsupportedModelError) as info:
            method(x, LABELS)
        message = str(info.value)
        assert message.startswith("the model returned [tensor (") and "in user code" not in message
        assert "pass output= one of 0, 1" in message
    # the failed trace was not kept: the same adapter works once told which output to use
    np.testing.assert_allclose(
        xt.Saliency(as_list, output=1)(x, LABELS).numpy(), xt.Saliency(as_dict, output="probs")(x, LABELS).numpy(), atol=1e-6
    )


# -- the command line ---------------------------------------------------------------------------------
def test_cli_output_option(torch: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    for i in range(2):
        Image.fromarray((IMAGES[i].transpose(1, 2, 0) * 255).astype(np.uint8)).save(tmp_path / f"img{i}.png")
    factory = tmp_path / "pair_factory.py"
    factory.write_text(
        "import torch\nfrom xai_toolbox.testing import cnn\n\n"
        "class Pair(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.net = cnn('torch')\n"
        "    def forward(self, x):\n        logits = self.net(x)\n        return logits, -logits\n\n"
        "def build():\n    return Pair()\n"
    )
    images = [tmp_path / "img0.png", tmp_path / "img1.png"]
    code = main(["explain", "--model", f"{factory}:build", "--method", "saliency", "--out", str(tmp_path / "a"),
                 "--no-progress", *map(str, images)])
    _, err = capsys.readouterr()
    assert code != 0 and "ambiguous" in err and "output= one of 0, 1" in err
    code = main(["explain", "--model", f"{factory}:build", "--output", "0", "--method", "saliency",
                 "--out", str(tmp_path / "b"), "--no-progress", *map(str, images)])
    _, err = capsys.readouterr()
    assert code == 0, err
    got = np.load(tmp_path / "b" / "img1_saliency.npy")
    batch = np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255 for p in images]).transpose(0, 3, 1, 2)
    expected = xt.Saliency(cnn("torch"))(batch)[1]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
