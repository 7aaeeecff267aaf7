"""Helpers of the reliability tests: the command line run as a user runs it (a subprocess of the
real entry point), several invocations at once so the suite stays fast."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def cli_command(argv: Sequence[Any]) -> list[str]:
    """``xai-toolbox ARGV`` as a command line (the package's ``__main__`` entry point)."""
    return [sys.executable, "-m", "xai_toolbox.cli", *map(str, argv)]


def interruptible_cli_command(argv: Sequence[Any]) -> list[str]:
    """:func:`cli_command` with Ctrl-C delivered as at a terminal. A process started in the
    background by a non-interactive shell (``cmd &``, as CI may run the suite) ignores SIGINT,
    its children inherit that, and Python then keeps ignoring it: the command would never see
    the test's Ctrl-C. The wrapper restores Python's handler, then runs the entry point as
    ``-m`` does."""
    script = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('xai_toolbox.cli', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", script, *map(str, argv)]


def cli(*argv: Any, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``xai-toolbox ARGV`` in a fresh process."""
    return subprocess.run(cli_command(argv), capture_output=True, text=True, timeout=timeout, cwd=cwd, env=ENV)


def cli_many(cases: Mapping[str, Sequence[Any]], cwd: Path, timeout: float = 300) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each ``argv`` of ``cases`` run as ``xai-toolbox ARGV`` in its own process, all at once."""
    running = {
        key: subprocess.Popen(cli_command(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=ENV)
        for key, argv in cases.items()
    }
    done = {}
    for key, proc in running.items():
        out, err = proc.communicate(timeout=timeout)
        done[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def communicate_or_explain(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """``proc.communicate(timeout=timeout)``; if the process is still running then, the test
    fails with what each of its threads was doing (state and kernel wait channel from
    ``/proc``, and Python's stacks: it runs with ``PYTHONFAULTHANDLER=1`` when started with
    :data:`FAULT_ENV`, and is aborted to print them) instead of a bare ``TimeoutExpired``."""
    import signal

    import pytest

    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    threads = []
    for task in sorted(Path(f"/proc/{proc.pid}/task").glob("*")):
        try:
            comm = (task / "comm").read_text().strip()
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            wchan = (task / "wchan").read_text().strip()
        except OSError:
            continue
        threads.append(f"{task.name} {comm} state={state} wchan={wchan}")
    proc.send_signal(signal.SIGABRT)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    pytest.fail(
        f"still running after {timeout} s; threads:\n" + "\n".join(threads)
        + f"\nstdout:\n{out[-2000:]}\nstderr (Python's stacks after SIGABRT):\n{err[-6000:]}"
    )


#: The environment of a process whose stacks :func:`communicate_or_explain` may need.
FAULT_ENV = {**os.environ, "PYTHONFAULTHANDLER": "1"}


def error_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are not warnings."""
    return [line for line in stderr.splitlines() if line and not line.startswith("xai-toolbox: warning:")]


def write_png_images(folder: Path, n: int = 2, size: int = 16, names: Sequence[str] | None = None) -> list[Path]:
    """``n`` random RGB PNGs in ``folder``."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / (names[i] if names else f"img{i}.png")
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


#: A model factory that leaves ``MODEL_LOADED`` beside itself when called: a test can tell
#: whether the command line got as far as building the model.
MARKING_FACTORY = (
    "from pathlib import Path\n"
    "from xai_toolbox.testing import cnn\n\n"
    "def build():\n"
    "    Path(__file__).with_name('MODEL_LOADED').touch()\n"
    "    return cnn('torch', seed=0)\n"
)


def wrapped_cnn(torch: Any, forward: Any, net: Any = None) -> Any:
    """A PyTorch module around ``net`` (default: the test CNN) whose forward is
    ``forward(net, x)``: a model that fails, counts or returns other structures."""
    from xai_toolbox.testing import cnn

    inner = cnn("torch") if net is None else net

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x: Any) -> Any:
            return forward(self.net, x)

    return Wrapped()
