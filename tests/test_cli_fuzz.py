"""Fuzzing the command line's options (hypothesis): any invalid combination of options of
``explain`` / ``evaluate`` exits with status 2 and one line on stderr, before the model is
loaded; any valid one gets as far as loading the model.

The parser and the checks run in-process (fast); a few combinations also run through the real
entry point in a subprocess.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from _reliability import MARKING_FACTORY, cli_many, error_lines, write_png_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xai_toolbox.io
from xai_toolbox.cli import main

PIL = pytest.importorskip("PIL")

SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}

# Each option: values that pass the checks, and values that must be refused.
VALID: dict[str, list[list[str]]] = {
    "--batch-size": [["1"], ["64"], ["7"]],
    "--alpha": [["0"], ["0.5"], ["1"]],
    "--cmap": [["jet"], ["viridis"], ["gray"]],
    "--mean": [["0.5"], ["0.485", "0.456", "0.406"], ["-0.5"]],
    "--std": [["0.25"], ["0.229", "0.224", "0.225"], ["1e-3"]],
    "--size": [["8"], ["16", "24"], ["32"]],
    "--target": [["top1"], ["0"], ["99"]],
    "--max-report-images": [["0"], ["3"]],
}
INVALID: dict[str, list[list[str]]] = {
    "--batch-size": [["0"], ["-3"], ["abc"], ["1.5"]],
    "--alpha": [["5"], ["-0.1"], ["nan"], ["inf"], ["x"]],
    "--cmap": [["no-such-map"], [""]],
    "--mean": [["nan"], ["inf"], ["0.1", "0.2"], ["a"]],
    "--std": [["0"], ["-1"], ["inf"], ["nan"], ["1", "2"]],
    "--size": [["0"], ["-5"], ["8", "8", "8"], ["1000000"]],
    "--target": [["-1"], ["cat"]],
    "--max-report-images": [["-1"], ["x"]],
    "--out": [["a-file"], ["a-file/sub"]],
    "--weights": [["missing.pth"]],
    "--bogus": [[]],
}
METHOD_PARAMS_VALID = ["rise.nb_samples=8", "rise.grid_size=4", "deletion.steps=3"]
METHOD_PARAMS_INVALID = [
    "rise.nb_sample=8",          # a typo
    "rise.nb_samples=-1",        # a bad value
    "rise.nb_samples=1000000000",  # too much work
    "rise-nb=3",                 # not NAME.KEY=VALUE
    "gradcam.layer=conv1",       # for a method that is not selected
]


class _ModelLoaded(BaseException):
    """Raised instead of loading the model: the checks all passed (a BaseException, so the
    command line's error handling lets it through)."""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    write_png_images(root / "imgs", n=2)
    (root / "a-file").write_text("not a folder")
    (root / "factory.py").write_text(MARKING_FACTORY)
    return root


@st.composite
def commands(draw: Any) -> tuple[list[str], list[str]]:
    """``(argv, reasons)``: a command line and why it is invalid (empty when valid). Half the
    examples draw only valid values, so the accepting side is exercised as much."""
    command = draw(st.sampled_from(["explain", "evaluate"]))
    argv = [command, "--model", "factory.py:build", "--no-progress"]
    reasons = []
    valid_only = draw(st.booleans())
    names = ["saliency", "rise"] if valid_only else ["saliency", "rise", "salency"]
    methods = draw(st.lists(st.sampled_from(names), min_size=0, max_size=2, unique=True))
    for method in methods:
        argv += ["--method", method]
    if "salency" in methods:
        reasons.append("unknown method")
    selected = set(methods or ["saliency"])
    if command == "evaluate":
        argv += ["--metric", draw(st.sampled_from(["deletion"] if valid_only else ["deletion", "deletion", "nope"]))]
        selected.add(argv[-1])
        if argv[-1] == "nope":
            reasons.append("unknown metric")
    for option in sorted(set(VALID) | set(INVALID)):
        if option == "--max-report-images" and command != "evaluate":
            continue
        choice = draw(st.sampled_from(["absent", "valid"] if valid_only else ["absent", "absent", "valid", "invalid"]))
        if choice == "valid" and option in VALID:
            argv += [option, *draw(st.sampled_from(VALID[option]))]
        elif choice == "invalid" and option in INVALID:
            argv += [option, *draw(st.sampled_from(INVALID[option]))]
            reasons.append(option)
    pool = [p for p in METHOD_PARAMS_VALID if p.split(".")[0] in selected] if valid_only else (
        METHOD_PARAMS_VALID + METHOD_PARAMS_INVALID
    )
    for param in draw(st.lists(st.sampled_from(pool), max_size=2)) if pool else []:
        argv += ["--param", param]
        name = param.split(".")[0]
        if param in METHOD_PARAMS_INVALID or name not in selected:
            reasons.append(f"--param {param}")
    return argv, reasons


def _run(argv: list[str], out: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int | str, list[str]]:
    calls: list[str] = []

    def load_model(*args: Any, **kwargs: Any) -> Any:
        calls.append("loaded")
        raise _ModelLoaded()

    monkeypatch.setattr(xai_toolbox.io, "load_model", load_model)
    if "--out" not in argv:
        argv = [*argv, "--out", str(out)]
    try:
        code: int | str = main([*argv, "imgs"])
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    except _ModelLoaded:
        code = "model loaded"
    assert (code == "model loaded") == bool(calls)
    return code, calls


_counter = itertools.count()


@settings(max_examples=300, **SETTINGS)
@given(case=commands())
def test_any_invalid_option_combination_exits_2_with_one_line_before_the_model_loads(
    case: tuple[list[str], list[str]], workspace: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv, reasons = case
    monkeypatch.chdir(workspace)
    capsys.readouterr()
    code, _ = _run(argv, workspace / f"out-{next(_counter)}", monkeypatch)
    err = capsys.readouterr().err
    if reasons:
        assert code == 2, (argv, reasons, err)
        lines = error_lines(err)
        assert len(lines) == 1 and lines[0].startswith("xai-toolbox: error: "), (argv, err)
        assert "Traceback" not in err
    else:
        assert code == "model loaded", (argv, err)
    assert not (workspace / "MODEL_LOADED").exists()


def test_a_few_invalid_combinations_through_the_real_entry_point(workspace: Path) -> None:
    cases = {
        "three bad options": ["explain", "--model", "factory.py:build", "--batch-size", "0", "--alpha", "7",
                              "--std", "inf", "imgs"],
        "typo and bad colormap": ["evaluate", "--model", "factory.py:build", "--method", "rise", "--param",
                                  "rise.nb_sample=3", "--cmap", "nope", "imgs"],
        "huge size and a file as --out": ["explain", "--model", "factory.py:build", "--size", "1000000",
                                          "--out", "a-file", "imgs"],
    }
    for name, proc in cli_many(cases, cwd=workspace).items():
        assert proc.returncode == 2, (name, proc.stderr)
        lines = error_lines(proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("xai-toolbox: error: "), (name, proc.stderr)
    assert not (workspace / "MODEL_LOADED").exists()
