"""What the command line says: tables that fit the terminal, no framework start-up noise, which
class and layer were explained, constant maps flagged, warm-up kept out of the timings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.base import MetricResult
from xai_toolbox.evaluation import ConstantMapWarning, constant_maps
from xai_toolbox.report import collect_scores, format_summary

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795986794.161650   18681 port.cc:153] oneDNN custom operations are on.",
    "I0000 00:00:1795986794.162016   18681 cudart_stub.cc:31] Could not find cuda drivers on your machine.",
    "E0000 00:00:1795986822.775709   18681 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
]


def test_native_start_up_noise_is_filtered_and_everything_else_kept() -> None:
    script = textwrap.dedent(f"""
        import os, sys
        from xai_toolbox.backends.native_logs import native_logs_filtered
        with native_logs_filtered():
            for line in {NOISE!r}:
                os.write(2, (line + "\\n").encode())          # as C++ code writes: straight to fd 2
            os.write(2, b"E0000 00:00:17.5 1 other.cc:3] a real native error\\n")
            print("a Python warning", file=sys.stderr, flush=True)
            os.write(2, b"no newline at the end")
        print("after", file=sys.stderr)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "E0000 00:00:17.5 1 other.cc:3] a real native error", "a Python warning",
        "no newline at the endafter",  # a partial line is passed on as it is, when the filter stops
    ]


def test_a_hung_filtered_process_still_shows_its_stacks() -> None:
    """With PYTHONFAULTHANDLER=1, the stacks dumped on SIGABRT reach the real stderr even while
    the filter's thread cannot run (the main thread holds the GIL in a loop)."""
    import signal
    import time

    script = textwrap.dedent("""
        import os, sys
        from xai_toolbox.backends.native_logs import native_logs_filtered
        def spin_here():
            while True:
                pass
        with native_logs_filtered():
            os.write(1, b"ready\\n")
            spin_here()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.2)
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert b"Fatal Python error: Aborted" in err
    assert b"in spin_here" in err


def _scores(n_metrics: int) -> list[Any]:
    rng = np.random.default_rng(0)
    results = {
        method: {f"metric_number_{j}": MetricResult(f"metric_number_{j}", rng.random(5), j % 2 == 0)
                 for j in range(n_metrics)}
        for method in ("integrated_gradients", "gradcam", "rise")
    }
    return collect_scores(results)


@pytest.mark.parametrize("width", [60, 80, 120])
def test_summary_fits_the_terminal_width(width: int) -> None:
    scores = _scores(12)
    text = format_summary(scores, {"rise": 2.0}, width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    for j in range(12):  # every metric is still there, cut into blocks
        assert f"metric_number_{j} " in text
    blocks = [line for line in text.splitlines() if line.startswith("rank")]
    assert len(blocks) > 1 and all("method" in b for b in blocks)  # each block names the methods
    wide = format_summary(scores, {"rise": 2.0})
    assert sum(line.startswith("rank") for line in wide.splitlines()) == 1
    assert max(len(line) for line in wide.splitlines()) > 120


def test_constant_maps_are_found() -> None:
    maps = np.stack([np.zeros((4, 4)), np.eye(4), np.full((4, 4), np.nan), np.full((4, 4), 2.0)])
    assert constant_maps(maps) == [0, 2, 3]


class _Zeros(xt.AttributionMethod):
    """A method whose maps are all zero (a dead layer, say)."""

    name = "zeros"

    def passes_per_image(self) -> int:
        return 0

    def explain_batch(self, x: Any, targets: Any) -> Any:
        return xt.extend.reduce_channels(x * 0.0, self.adapter.channel_axis, "sum")


def test_explain_lines_name_the_layer_and_flag_constant_maps(torch: Any) -> None:
    from xai_toolbox.testing import cnn, to_framework

    model = cnn("torch", seed=0)
    x = to_framework(np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32), "torch")
    lines: list[str] = []
    with pytest.warns(ConstantMapWarning, match="zeros: 2 of 2 maps are constant"):
        table = xt.evaluate(model, x, [0, 1], methods=[_Zeros(model), "gradcam"], echo=lines.append)
    zeros, gradcam = lines
    assert "scored" not in zeros and "WARNING: 2 of 2 maps are constant" in zeros  # no metrics
    assert f"(layer {table.resolved_params['methods']['gradcam']['layer']})" in gradcam
    lines.clear()
    xt.evaluate(model, x, [0, 1], methods=["saliency"], metrics=["sparseness"], echo=lines.append)
    assert "scored in" in lines[0] and "layer" not in lines[0]


def test_warm_up_runs_the_model_before_the_first_method_is_timed(torch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import xai_toolbox.evaluation as evaluation
    from xai_toolbox.testing import cnn, to_framework

    model = cnn("torch", seed=0)
    calls: list[str] = []
    model.register_forward_hook(lambda *_: calls.append("pass"))

    class Probe(_Zeros):
        name = "probe"

        def explain_batch(self, x: Any, targets: Any) -> Any:
            calls.append("explain")
            return super().explain_batch(x, targets)

    x = to_framework(np.random.default_rng(2).random((2, 3, 16, 16), dtype=np.float32), "torch")

    def passes_before_the_first_method() -> int:
        calls.clear()
        with pytest.warns(ConstantMapWarning):
            xt.evaluate(model, x, [0, 1], methods=[Probe(model), "saliency"])
        return calls.index("explain")

    with_warm_up = passes_before_the_first_method()
    monkeypatch.setattr(evaluation, "_warm_up", lambda *args, **kwargs: None)
    # At least a forward and a gradient pass, untimed, before the first method runs (an adapter
    # may add its own one-time work there, e.g. choosing a memory layout).
    assert passes_before_the_first_method() == 0 and with_warm_up >= 2


def test_cli_says_which_class_it_explains(tmp_path: Path, torch: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from xai_toolbox.cli import main

    (tmp_path / "factory.py").write_text(
        "from xai_toolbox.demo import load_demo_model\n\ndef build():\n    return load_demo_model('torch')\n"
    )
    from xai_toolbox.demo import make_shapes

    data = make_shapes(2, seed=7)
    for i, image in enumerate(data.images):
        Image.fromarray((image * 255).astype("uint8")).save(tmp_path / f"img{i}.png")
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(["circle", "square", "triangle", "cross", "ring"]))
    status = main(["explain", "--model", f"{tmp_path / 'factory.py'}:build", "--method", "gradcam",
                   "--class-names", str(names), "--out", str(tmp_path / "out"), "--no-progress",
                   str(tmp_path / "img0.png"), str(tmp_path / "img1.png")])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "explaining each image's top-1 class: img0.png: " in out
    assert "(layer " in out and "scored in" not in out
    status = main(["explain", "--model", f"{tmp_path / 'factory.py'}:build", "--method", "saliency",
                   "--target", "2", "--class-names", str(names), "--out", str(tmp_path / "out2"),
                   "--no-progress", str(tmp_path / "img0.png")])
    assert status == 0 and "explaining class 2 (triangle) for every image (--target)" in capsys.readouterr().out
