"""Security: nothing is written outside the output folder, and model files that hold code run
only when trusted (docs/reliability.md, SECURITY.md).

The command-line cases run through the real entry point in a subprocess, as a user (or an
attacker who can plant files in the output folder) would hit them.
"""

from __future__ import annotations

import os
import pathlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _reliability import MARKING_FACTORY, cli, cli_many, error_lines, write_png_images

from xai_toolbox.io import OutputWriteError, load_model, write_output

PIL = pytest.importorskip("PIL")

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning",
    "ignore:`torch.jit.load` is deprecated:DeprecationWarning",
)

VICTIM_TEXT = b"the victim's own content\n"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """Images, a factory that leaves a marker when the model is built, and a victim file."""
    write_png_images(tmp_path / "imgs")
    (tmp_path / "factory.py").write_text(MARKING_FACTORY)
    (tmp_path / "victim").write_bytes(VICTIM_TEXT)
    return tmp_path


# -- outputs: never through a planted link --------------------------------------------------------
PLANTED = {
    "report.html": "evaluate",
    "scores.csv": "evaluate",
    "img0_saliency.npy": "evaluate",
    "img1_saliency.png": "explain",
}


def test_a_link_planted_in_the_output_folder_is_refused_before_the_model_loads(torch: Any, workspace: Path) -> None:
    """``ln -s ~/victim out/report.html`` then ``xai-toolbox evaluate ... --out out``: exit 2,
    one line naming the link, the victim untouched, the model never built (every file the
    command writes is checked, not only the per-image ones)."""
    cases = {}
    for planted, command in PLANTED.items():
        out = workspace / f"out-{planted}"
        out.mkdir()
        (out / planted).symlink_to(workspace / "victim")
        extra = ["--metric", "deletion", "--param", "deletion.steps=2"] if command == "evaluate" else []
        cases[planted] = [command, "--model", "factory.py:build", "--method", "saliency", *extra, "--out", out, "imgs"]
    for planted, proc in cli_many(cases, cwd=workspace).items():
        assert proc.returncode == 2, (planted, proc.stderr)
        lines = error_lines(proc.stderr)
        assert len(lines) == 1 and "symbolic link" in lines[0] and planted in lines[0], lines
    assert (workspace / "victim").read_bytes() == VICTIM_TEXT
    assert not (workspace / "MODEL_LOADED").exists()  # refused before the model was built


def test_write_output_never_writes_through_a_link_or_a_hard_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM_TEXT)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").symlink_to(victim)
    with pytest.raises(OutputWriteError, match="symbolic link"):
        write_output(out, "report.html", "<html>")
    # A hard link (same file system) is replaced, not written through.
    os.link(victim, out / "scores.csv")
    write_output(out, "scores.csv", "method,metric\n")
    assert (out / "scores.csv").read_text() == "method,metric\n"
    assert victim.read_bytes() == VICTIM_TEXT
    for name in ("../escape.txt", "a/b.txt", "..", "", "a\\b.txt"):
        with pytest.raises(OutputWriteError, match="plain file name"):
            write_output(out, name, b"x")
    assert not (tmp_path / "escape.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "scores.csv"]  # no temporary left


def test_write_output_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half-way leaves the previous file whole (never an empty one)."""
    write_output(tmp_path, "report.html", "first version")

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write_output(tmp_path, "report.html", "second version")
    assert (tmp_path / "report.html").read_text() == "first version"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_write_output_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_output(tmp_path, "scores.csv", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_the_demo_report_is_not_written_through_a_link(tmp_path: Path) -> None:
    from xai_toolbox.report import write_report

    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM_TEXT)
    (tmp_path / "report.html").symlink_to(victim)
    with pytest.raises(OutputWriteError, match="symbolic link"):
        write_report(tmp_path / "report.html", images=np.zeros((1, 8, 8, 3)), maps={}, channels_first=False)
    assert victim.read_bytes() == VICTIM_TEXT


# -- model files that hold code ---------------------------------------------------------------
EVIL_MODEL = """
import torch


class Evil(torch.nn.Module):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.fc = torch.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mapped = torch.from_file(self.target, True, 4, dtype=torch.uint8)
        mapped.fill_(88)
        return self.fc(x.mean(dim=(2, 3))) + mapped[:1].float() * 0
"""


def _evil_torchscript(torch: Any, path: Path, victim: Path) -> None:
    """A TorchScript model whose forward overwrites ``victim`` (``torch.from_file``, shared), as
    in the report (TorchScript needs the class's source in a file)."""
    import importlib.util

    source = path.with_name("evil_model.py")
    source.write_text(EVIL_MODEL)
    spec = importlib.util.spec_from_file_location("evil_model", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.jit.script(module.Evil(str(victim))).save(str(path))


def test_torchscript_runs_only_when_trusted(torch: Any, workspace: Path) -> None:
    victim = workspace / "victim"
    _evil_torchscript(torch, workspace / "evil.pt", victim)
    proc = cli("explain", "--model", "evil.pt", "--out", "out", "imgs", cwd=workspace)
    assert proc.returncode == 1, proc.stderr
    (line,) = error_lines(proc.stderr)
    assert "TorchScript archive" in line and "--trust-model-code" in line and "--weights" in line
    assert victim.read_bytes() == VICTIM_TEXT
    assert not (workspace / "out").exists() or not any((workspace / "out").iterdir())

    # In Python too; and trusted, the file's code does run: that is what trusting means.
    from xai_toolbox.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="trust_model_code=True"):
        load_model(workspace / "evil.pt")
    loaded = load_model(workspace / "evil.pt", trust_model_code=True)
    assert "trusted" in loaded.source
    loaded.model(torch.rand(1, 3, 4, 4))
    assert victim.read_bytes()[:4] == b"XXXX"


class _Planted:
    """Unpickling this writes a file: what a malicious weights file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return pathlib.Path.write_text, (self.marker, "pwned")


def test_the_safe_path_needs_no_trust_and_refuses_pickled_code(
    torch: Any, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xai_toolbox.cli import main
    from xai_toolbox.testing import cnn

    torch.save(cnn("torch", seed=0).state_dict(), workspace / "state.pth")
    out = workspace / "out"
    code = main(["explain", "--model", f"{workspace / 'factory.py'}:build", "--weights", str(workspace / "state.pth"),
                 "--out", str(out), "--no-progress", str(workspace / "imgs")])
    assert code == 0, capsys.readouterr().err
    assert (out / "img0_saliency.npy").is_file()

    marker = workspace / "PWNED"
    with (workspace / "evil.pth").open("wb") as f:
        pickle.dump({"weight": _Planted(marker)}, f)
    proc = cli("explain", "--model", "factory.py:build", "--weights", "evil.pth", "--out", "out2", "imgs", cwd=workspace)
    assert proc.returncode == 1
    (line,) = error_lines(proc.stderr)
    assert "weights_only=True" in line and "--trust-model-code" in line
    assert not marker.exists()


def test_help_says_torchscript_needs_trust(capsys: pytest.CaptureFixture[str]) -> None:
    from xai_toolbox.cli import main

    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "TorchScript archives (their scripted forward runs on every call and can read and write files)" in text
    assert "the factory + --weights path needs no trust" in text
