"""The command line: help, one-line errors, explain/evaluate on TorchScript and .keras models,
safe loading, safe output names and escaping in the report."""

from __future__ import annotations

import csv
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.cli import main
from xai_toolbox.io import (
    ImageLoadError,
    load_images,
    normalize,
    output_path,
    safe_stem,
    unique_stems,
)
from xai_toolbox.testing import as_numpy, cnn

PIL = pytest.importorskip("PIL")
# torch.jit.script is deprecated in recent PyTorch, but TorchScript files are what users have.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
from PIL import Image  # noqa: E402

EVIL = "<script>alert(1)</script>"
VOID = {"br", "img", "meta", "hr", "input", "link"}


# -- helpers ----------------------------------------------------------------------------------------
def write_images(folder: Path, n: int = 3, size: int = 16, seed: int = 0, names: list[str] | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / (names[i] if names else f"img{i}.png")
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line and not line.startswith("xai-toolbox: warning:")]


def assert_one_error_line(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = error_lines(err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("xai-toolbox: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


class Balanced(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.bad: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(str(dict(attrs).get("src")))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.bad.append(tag)


def check_report(path: Path, *names: str) -> str:
    page = path.read_text(encoding="utf-8")
    parser = Balanced()
    parser.feed(page)
    assert not parser.bad and not parser.stack
    assert parser.srcs and all(s.startswith("data:image/png;base64,") for s in parser.srcs)
    for name in names:
        assert name in page
    return page


def saved_map(out: Path, stem: str, method: str) -> np.ndarray:
    array = np.load(out / f"{stem}_{method}.npy")
    with Image.open(out / f"{stem}_{method}.png") as overlay:
        assert overlay.size == (array.shape[1], array.shape[0]) and overlay.mode == "RGB"
    return array


# -- help and errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["list"], ["demo"], ["explain"], ["evaluate"]])
def test_help_shows_an_example(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and "xai-toolbox" in out
    if command in (["explain"], ["evaluate"]):
        assert "--trust-model-code" in out and "arbitrary code" in out


def test_list_names_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert "saliency" in out and "gradcam" in out and "metrics:" in out


@pytest.fixture
def images(tmp_path: Path) -> Path:
    write_images(tmp_path / "imgs")
    return tmp_path / "imgs"


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing_image", ["image file not found", "nope.png"]),
        ("missing_model", ["model file not found", "missing.pt"]),
        ("unreadable_image", ["cannot read image", "bad.png", "not an image"]),
        ("unknown_method", ["unknown method 'nope'", "available methods", "saliency"]),
        ("unknown_metric", ["unknown metric 'nope'", "available metrics"]),
        ("bad_param", ["NAME.KEY=VALUE"]),
        ("empty_folder", ["contains no image files"]),
        ("bad_target", ["--target must be 'top1' or a class index"]),
        ("bad_option", ["unrecognized arguments: --bogus"]),
    ],
)
def test_cli_errors_are_one_line(
    case: str, fragments: list[str], images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"never loaded: the checks come first")
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad.png"
    bad.write_text("not a PNG")
    argv = {
        "missing_image": ["explain", "--model", model, tmp_path / "nope.png"],
        "missing_model": ["explain", "--model", tmp_path / "missing.pt", images],
        "unreadable_image": ["explain", "--model", model, images, bad],
        "unknown_method": ["explain", "--model", model, "--method", "nope", images],
        "unknown_metric": ["evaluate", "--model", model, "--metric", "nope", images],
        "bad_param": ["explain", "--model", model, "--param", "rise-nb=3", images],
        "empty_folder": ["explain", "--model", model, tmp_path / "empty"],
        "bad_target": ["explain", "--model", model, "--target", "cat", images],
        "bad_option": ["explain", "--model", model, "--bogus", images],
    }[case]
    if case == "bad_option":
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in argv])
        code, err = int(exit_info.value.code or 0), capsys.readouterr().err
    else:
        code, _, err = run(capsys, *argv)
    assert_one_error_line(code, err, *fragments)


def test_cli_error_through_the_real_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "xai_toolbox.cli", "explain", "--model", "m.pt", str(tmp_path / "x.png")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,  # the installed package
    )
    assert proc.returncode == 2  # refused before anything ran
    assert_one_error_line(proc.returncode, proc.stderr, "image file not found")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError):
        main(["--debug", "explain", "--model", "m.pt", str(tmp_path / "x.png")])
    with pytest.raises(ImageLoadError):  # also after the command
        main(["explain", "--debug", "--model", "m.pt", str(tmp_path / "x.png")])


# -- PyTorch: TorchScript, factories, unsafe files ---------------------------------------------------------
def _torch_reference(torch: Any, model: Any, folder: Path, method: str, mean: float = 0.0, std: float = 1.0, **params: Any) -> np.ndarray:
    """The CLI's result computed independently: read, normalise, transpose, explain top-1."""
    pictures = [np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 for p in sorted(folder.glob("*.png"))]
    x = torch.from_numpy(((np.stack(pictures) - mean) / std).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        top1 = model(x).argmax(1)
    return as_numpy(xt.explain(model, x, top1, method=method, **params))


def test_explain_and_evaluate_torchscript(torch: Any, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn("torch", seed=0)
    path = tmp_path / "net.pt"
    torch.jit.script(model).save(str(path))
    out = tmp_path / "out"
    code, stdout, err = run(
        capsys, "explain", "--model", path, "--trust-model-code", "--method", "saliency", "--method", "rise",
        "--param", "rise.nb_samples=32", "--param", "rise.grid_size=4", "--mean", "0.5", "--std", "0.25",
        "--out", out, "--no-progress", images,
    )
    assert code == 0, err
    assert "TorchScript" in stdout
    for stem in ("img0", "img1", "img2"):
        for method in ("saliency", "rise"):
            assert saved_map(out, stem, method).shape == (16, 16)
    expected = _torch_reference(torch, model, images, "saliency", mean=0.5, std=0.25)
    got = np.stack([np.load(out / f"img{i}_saliency.npy") for i in range(3)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    rise = _torch_reference(torch, model, images, "rise", 0.5, 0.25, nb_samples=32, grid_size=4)
    np.testing.assert_allclose(np.load(out / "img1_rise.npy"), rise[1], rtol=1e-4, atol=1e-6)

    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(3):
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 255
        Image.fromarray(mask).save(masks / f"img{i}.png")
    eval_out = tmp_path / "eval"
    code, stdout, err = run(
        capsys, "evaluate", "--model", path, "--trust-model-code", "--method", "saliency", "--metric", "deletion",
        "--metric", "pointing_game", "--masks", masks, "--param", "deletion.steps=4",
        "--out", eval_out, "--no-progress", images,
    )
    assert code == 0, err
    assert "deletion" in stdout and "rank" in stdout  # the summary table
    check_report(eval_out / "report.html", "saliency", "deletion", "pointing_game", "img0.png")
    rows = list(csv.DictReader((eval_out / "scores.csv").open()))
    assert {(r["method"], r["metric"]) for r in rows} == {("saliency", "deletion"), ("saliency", "pointing_game")}
    assert (eval_out / "img2_saliency.npy").is_file()


def test_torchscript_cam_failure_explains_the_fix(torch: Any, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "net.pt"
    torch.jit.script(cnn("torch")).save(str(path))
    code, _, err = run(capsys, "explain", "--model", path, "--trust-model-code", "--method", "gradcam", "--out", tmp_path / "o", images)
    assert_one_error_line(code, err, "gradcam failed", "factory")


def test_factory_with_state_dict_and_trust_flag(torch: Any, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trained = cnn("torch", seed=0)
    torch.save(trained.state_dict(), tmp_path / "state.pth")
    torch.save(trained, tmp_path / "whole.pth")  # a pickled module: unpickling runs code
    factory = tmp_path / "factory.py"
    factory.write_text("from xai_toolbox.testing import cnn\n\ndef build():\n    return cnn('torch', seed=5)\n")
    expected = _torch_reference(torch, trained, images, "gradcam")

    out = tmp_path / "f"
    code, stdout, err = run(capsys, "explain", "--model", f"{factory}:build", "--weights", tmp_path / "state.pth",
                            "--method", "gradcam", "--out", out, images)
    assert code == 0, err
    np.testing.assert_allclose(np.load(out / "img0_gradcam.npy"), expected[0], rtol=1e-5, atol=1e-6)

    code, _, err = run(capsys, "explain", "--model", tmp_path / "whole.pth", "--method", "saliency", images)
    assert_one_error_line(code, err, "--trust-model-code", "not a TorchScript archive")
    code, _, err = run(capsys, "explain", "--model", f"{factory}:build", "--weights", tmp_path / "whole.pth", images)
    assert_one_error_line(code, err, "weights_only=True", "--trust-model-code")
    out = tmp_path / "t"
    code, stdout, err = run(capsys, "explain", "--model", tmp_path / "whole.pth", "--trust-model-code",
                            "--method", "gradcam", "--out", out, images)
    assert code == 0, err
    np.testing.assert_allclose(np.load(out / "img0_gradcam.npy"), expected[0], rtol=1e-5, atol=1e-6)

    code, _, err = run(capsys, "explain", "--model", f"{factory}:nope", images)
    assert_one_error_line(code, err, "has no attribute 'nope'")


def test_target_out_of_range(torch: Any, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "net.pt"
    torch.jit.script(cnn("torch")).save(str(path))
    code, _, err = run(capsys, "explain", "--model", path, "--trust-model-code", "--target", "9", images)
    assert_one_error_line(code, err, "--target 9 is out of range", "4 outputs")


# -- Keras ------------------------------------------------------------------------------------------------
def test_explain_and_evaluate_keras(keras: Any, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn("tf", seed=0)
    path = tmp_path / "net.keras"
    model.save(path)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "explain", "--model", path, "--method", "gradcam", "--method", "saliency",
                            "--target", "2", "--out", out, images)
    assert code == 0, err
    assert "safe_mode=True" in stdout
    pictures = np.stack([np.asarray(Image.open(p), np.float32) / 255 for p in sorted(images.glob("*.png"))])
    expected = as_numpy(xt.explain(model, pictures, 2, method="gradcam"))
    got = np.stack([saved_map(out, f"img{i}", "gradcam") for i in range(3)])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)

    eval_out = tmp_path / "eval"
    code, stdout, err = run(capsys, "evaluate", "--model", path, "--method", "gradcam", "--metric", "insertion",
                            "--param", "insertion.steps=4", "--out", eval_out, images)
    assert code == 0, err
    check_report(eval_out / "report.html", "gradcam", "insertion", "net.keras")


def test_keras_lambda_layers_need_trust(keras: Any, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    path = tmp_path / "lambda.keras"
    model.save(path)
    code, _, err = run(capsys, "explain", "--model", path, "--out", tmp_path / "o", images)
    assert_one_error_line(code, err, "--trust-model-code", "Lambda")
    code, _, err = run(capsys, "explain", "--model", path, "--trust-model-code", "--out", tmp_path / "o", images)
    assert code == 0, err


# -- output names and escaping -----------------------------------------------------------------------
def test_safe_names() -> None:
    assert safe_stem("../../x.png") == "x"
    assert safe_stem("..\\..\\evil.jpg") == "evil"
    assert safe_stem("..") == "image" and safe_stem("") == "image" and safe_stem(".bashrc") == "bashrc"
    assert safe_stem("<img src=x onerror=alert(1)>.png") == "img_src_x_onerror_alert_1"
    assert unique_stems(["a/x.png", "b/x.png", "X.jpg"]) == ["x", "x_2", "X_3"]
    out = Path("out")
    for name in ("../../x.png", "/etc/passwd", "..", "a/../../b.png"):
        path = output_path(out, name, "../gradcam", suffix=".png")
        assert path.parent == out and not path.name.startswith(".")


def test_report_and_outputs_are_safe(torch: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil_file = "<img src=x onerror=alert(1)>.png"
    folder = tmp_path / "in"
    write_images(folder, n=2, names=[evil_file, "ok.png"])
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join([EVIL, "b", "c", "d"]) + "\n", encoding="utf-8")
    path = tmp_path / "net.pt"
    torch.jit.script(cnn("torch")).save(str(path))
    out = tmp_path / "deep" / "out"
    before = {p for p in tmp_path.rglob("*")}
    code, _, err = run(capsys, "evaluate", "--model", path, "--trust-model-code", "--method", "saliency", "--metric", "deletion",
                       "--param", "deletion.steps=3", "--target", "0", "--class-names", classes, "--out", out,
                       folder / evil_file, folder / "ok.png")
    assert code == 0, err
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(p == out or p.parent == out or p in (out.parent,) for p in created), created
    assert (out / "img_src_x_onerror_alert_1_saliency.png").is_file()
    page = check_report(out / "report.html")
    assert "<script" not in page and "onerror=alert(1)>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in page


# -- io units -------------------------------------------------------------------------------------------
def test_load_images_sizes_folders_and_normalisation(tmp_path: Path) -> None:
    write_images(tmp_path / "a", n=2, size=8)
    write_images(tmp_path / "b", n=1, size=12, seed=1, names=["z.png"])
    (tmp_path / "a" / "notes.txt").write_text("ignored: not an image suffix")
    with pytest.raises(ImageLoadError, match="different sizes"):
        load_images([tmp_path / "a", tmp_path / "b"])
    batch = load_images([tmp_path / "b", tmp_path / "a"], size=[6, 10])
    assert batch.images.shape == (3, 6, 10, 3) and batch.names == ["z.png", "img0.png", "img1.png"]
    assert batch.images.dtype == np.float32 and batch.images.min() >= 0.0 and batch.images.max() <= 1.0
    gray = load_images([tmp_path / "a"], size=4, channels=1)
    assert gray.images.shape == (2, 4, 4, 1)
    x = np.ones((1, 2, 2, 3), np.float32)
    np.testing.assert_allclose(normalize(x, [0.5, 0.0, 1.0], [0.5, 2.0, 1.0])[0, 0, 0], [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="2 values for images with 3 channels"):
        normalize(x, [0.1, 0.2])
    with pytest.raises(ValueError, match="positive"):
        normalize(x, std=[0.0])
