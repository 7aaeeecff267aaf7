"""The command line as a careless user runs it: every bad option is refused before the model is
loaded (exit 2, one line), outputs survive odd file names and Ctrl-C (docs/reliability.md).

Each case runs through the real entry point in a subprocess; the refusals all at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _reliability import (
    FAULT_ENV,
    MARKING_FACTORY,
    cli_command,
    cli_many,
    communicate_or_explain,
    error_lines,
    interruptible_cli_command,
    write_png_images,
)

import xai_toolbox as xt

PIL = pytest.importorskip("PIL")

#: argv (after ``explain --model factory.py:build``) -> a fragment of the one error line.
REFUSED = {
    "batch size 0": (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    "batch size -3": (["--batch-size", "-3"], "argument --batch-size: must be >= 1, got -3"),
    "alpha 5": (["--alpha", "5"], "argument --alpha: must lie in [0, 1]"),
    "unknown colormap": (["--cmap", "no-such-map"], "unknown matplotlib colormap 'no-such-map'"),
    "parameter typo": (["--method", "rise", "--param", "rise.nb_sample=10"], "did you mean 'nb_samples'?"),
    "bad parameter value": (["--method", "rise", "--param", "rise.grid_size=-2"], "grid_size must be a positive integer"),
    "std inf": (["--std", "inf"], "argument --std: must be a finite number"),
    "std 0": (["--std", "0"], "argument --std: must be > 0"),
    "mean nan": (["--mean", "nan"], "argument --mean: must be a finite number"),
    "two means": (["--mean", "0.1", "0.2"], "--mean takes one value (every channel) or three"),
    "size 100000": (["--size", "100000", "--method", "saliency"], "GiB of memory at once"),
    "three sizes": (["--size", "8", "8", "8"], "--size takes one integer (square) or two (H W)"),
    "size 0": (["--size", "0"], "argument --size: must be >= 1"),
    "unwritable out": (["--out", "a-file/sub"], "--out 'a-file/sub' cannot be written"),
    "out is a file": (["--out", "a-file"], "--out 'a-file' exists and is not a folder"),
    "missing weights": (["--weights", "nope.pth"], "weights file not found: 'nope.pth'"),
    "negative target": (["--target", "-1"], "--target must be a non-negative class index"),
    "report images -1": (["--max-report-images", "-1"], None),  # evaluate only: see below
    "10**9 RISE masks": (["--method", "rise", "--param", "rise.nb_samples=1000000000"], "more than the limit"),
    "unknown method": (["--method", "salency"], "unknown method 'salency'"),
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    write_png_images(root / "imgs", n=3)
    (root / "factory.py").write_text(MARKING_FACTORY)
    (root / "a-file").write_text("not a folder")
    return root


#: The cases of the report, run through the real entry point (the rest run in-process).
THROUGH_THE_ENTRY_POINT = (
    "batch size 0", "batch size -3", "alpha 5", "unknown colormap", "parameter typo",
    "bad parameter value", "std inf", "size 100000", "unwritable out",
)


def _argv(case: str) -> list[str]:
    if case == "report images -1":
        return ["evaluate", "--model", "factory.py:build", "--max-report-images", "-1", "imgs"]
    if case == "weights with a model file":
        return ["explain", "--model", "a-file", "--weights", "a-file", "imgs"]
    argv = REFUSED[case][0]
    out = [] if "--out" in argv else ["--out", f"out-{case.replace(' ', '-')}"]
    return ["explain", "--model", "factory.py:build", *argv, *out, "imgs"]


@pytest.fixture(scope="module")
def refusals(workspace: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    return cli_many({case: _argv(case) for case in THROUGH_THE_ENTRY_POINT}, cwd=workspace)


def _in_process(case: str, workspace: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from xai_toolbox.cli import main

    cwd = os.getcwd()
    os.chdir(workspace)
    try:
        code = main(_argv(case))
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    finally:
        os.chdir(cwd)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", [*REFUSED, "weights with a model file"])
def test_a_bad_option_is_refused_before_the_model_loads(
    case: str, refusals: dict[str, subprocess.CompletedProcess[str]], workspace: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if case in refusals:
        code, err = refusals[case].returncode, refusals[case].stderr
    else:
        code, err = _in_process(case, workspace, capsys)
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("xai-toolbox: error: ") and "Traceback" not in err
    fragment = REFUSED.get(case, (None, "--weights needs a factory"))[1] or "--max-report-images: must be >= 0"
    assert fragment in lines[0], lines[0]
    assert not (workspace / "MODEL_LOADED").exists()


def _non_utf8_folder(root: Path) -> Path:
    folder = root / "odd"
    write_png_images(folder, n=1)
    os.rename(os.fsencode(folder / "img0.png"), os.fsencode(folder) + b"/caf\xe9 <b>.png")
    return folder


def test_non_utf8_file_names_and_ctrl_c(torch: Any, tmp_path: Path) -> None:
    """A file name that is not UTF-8 gives a complete report (it was a 0-byte report.html);
    Ctrl-C keeps the maps of the methods already done (each is written as it completes)."""
    write_png_images(tmp_path / "imgs", n=2)
    (tmp_path / "factory.py").write_text(MARKING_FACTORY)
    odd = _non_utf8_folder(tmp_path)
    report = subprocess.Popen(
        cli_command(["evaluate", "--model", "factory.py:build", "--method", "saliency", "--metric", "deletion",
                     "--param", "deletion.steps=2", "--out", "report-out", "--no-progress", odd]),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    slow = ["--method", "saliency", "--method", "rise", "--param", "rise.nb_samples=10000000", "--param", "rise.grid_size=4"]
    interrupted = subprocess.Popen(
        interruptible_cli_command(["explain", "--model", "factory.py:build", *slow, "--out", "maps", "--no-progress", "imgs"]),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=FAULT_ENV,
    )
    deadline = time.monotonic() + 240
    while not (tmp_path / "maps" / "img1_saliency.png").exists():  # saliency done, rise running
        assert interrupted.poll() is None, interrupted.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    interrupted.send_signal(signal.SIGINT)
    _, err = communicate_or_explain(interrupted, timeout=120)
    assert interrupted.returncode == 130, err
    assert "interrupted; wrote 4 files (.npy maps and .png overlays) for saliency to maps" in err
    assert np.load(tmp_path / "maps" / "img0_saliency.npy").shape == (16, 16)
    assert not list((tmp_path / "maps").glob("*rise*")) and not list((tmp_path / "maps").glob(".*"))

    _, err = report.communicate(timeout=240)
    assert report.returncode == 0, err
    page = (tmp_path / "report-out" / "report.html").read_text(encoding="utf-8")
    assert page.rstrip().endswith("</html>")
    assert "caf\ufffd &lt;b&gt;.png" in page  # shown with a replacement character, escaped
    assert (tmp_path / "report-out" / "caf_b_saliency.npy").is_file()


def test_normalize_refuses_values_that_would_zero_the_inputs() -> None:
    """``--std inf`` made every input zero and the run exited 0; in Python too, a non-finite or
    non-positive std (or a non-finite mean) is refused."""
    from xai_toolbox.io import normalize

    images = np.full((1, 2, 2, 3), 0.5, np.float32)
    for mean, std in ((None, [float("inf")]), (None, [0.0]), ([float("nan")], None), (None, [1.0, -1.0, 1.0])):
        with pytest.raises(xt.InputError, match="must be (positive )?finite"):
            normalize(images, mean, std)
    np.testing.assert_allclose(normalize(images, [0.25], [0.5]), np.full((1, 2, 2, 3), 0.5))
