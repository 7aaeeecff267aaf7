"""Section b: Xplique side by side — same model, same settings, both toolboxes timed in turn.

Xplique is never a dependency: it runs in its own environment (``XPLIQUE_PYTHON``, default
``/work/peers/xplique-venv/bin/python``; see ``scripts/peers/README.md``), in a long-lived
subprocess (:mod:`benchmarks.xplique_worker`) that builds the same benchmark ResNet from the
weights saved here (an ``.npz``) and times Xplique's explainer or metric on request. Our call
and Xplique's alternate, repeat after repeat (the order alternating too), so the paired ratio
``ours ÷ Xplique`` cancels slow drifts of a shared machine, as in the Captum section. Where the
environment is absent the section is skipped with a note saying how to create it.

Both run on the same inputs: ``xplique_images`` images of ``xplique_size`` pixels, labels from
the model, random explanations for the metrics; ``xplique_batch`` inputs per forward pass. The
agreement column compares the maps (correlation) or the mean scores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .building import make, resolve
from .config import Case, Config, XpliqueCase
from .report import log, log_row
from .runners import _correlation, _np
from .timing import paired, timed
from .workbench import Workbench

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PYTHON = "/work/peers/xplique-venv/bin/python"


def xplique_python() -> tuple[str | None, str]:
    """The side environment's interpreter and a note (why it cannot be used, if so)."""
    python = os.environ.get("XPLIQUE_PYTHON", DEFAULT_PYTHON)
    if not Path(python).exists():
        return None, (
            f"Xplique's environment not found ({python}); create it as scripts/peers/README.md says "
            "(and pip install torch there for the PyTorch comparison), or set XPLIQUE_PYTHON"
        )
    return python, ""


class Worker:
    """The Xplique subprocess: one JSON command per line in, one reply per line out."""

    def __init__(self, python: str, framework: str, data: Path, threads: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS=str(threads))
        self.stderr = open(data / "worker.log", "w")  # noqa: SIM115  (closed in close())
        self.proc = subprocess.Popen(
            [python, "-m", "benchmarks.xplique_worker", "--data", str(data), "--framework", framework,
             "--threads", str(threads)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )
        self.data = data
        self.ready = self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stderr.flush()
            tail = (self.data / "worker.log").read_text()[-2000:]
            raise RuntimeError(f"the Xplique worker stopped: {tail}")
        return json.loads(line)

    def run(self, case: str, params: dict[str, Any], save: Path | None = None) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "run", "case": case, "params": params,
                                          "save": str(save) if save else None}) + "\n")
        self.proc.stdin.flush()
        reply = self._reply()
        if "error" in reply:
            raise RuntimeError(f"Xplique: {reply['error']}")
        return float(reply["seconds"])

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.stderr.close()


def run_xplique(cfg: Config) -> dict[str, Any]:
    """The side-by-side section: ``{"status", "note", "environment", "rows"}``."""
    python, note = xplique_python()
    if python is None:
        log(f"    skipped: {note}")
        return {"status": "skipped", "note": note, "rows": []}
    side = dataclasses.replace(
        cfg, size=cfg.xplique_size, n_images=cfg.xplique_images, batch_size=cfg.xplique_batch, model="resnet"
    )
    bench = Workbench(side)
    with tempfile.TemporaryDirectory(prefix="xplique-bench-") as tmp:
        data = Path(tmp)
        _write_inputs(side, bench, data)
        try:
            worker = Worker(python, cfg.framework, data, cfg.threads or 2)
        except Exception as exc:
            note = f"the Xplique worker did not start: {exc}"
            log(f"    skipped: {note}")
            return {"status": "skipped", "note": note, "rows": []}
        rows = []
        try:
            for case in cfg.xplique:
                log(f"[xplique] {case.name} ...")
                row = _run_case(case, bench, side, worker, data)
                log_row(row)
                rows.append(row)
        finally:
            worker.close()
    return {"status": "ok", "environment": worker.ready, "settings": {
        "size": side.size, "n_images": side.n_images, "batch_size": side.batch_size,
        "ours": dict(cfg.xplique_adapter)}, "rows": rows}


def _write_inputs(cfg: Config, bench: Workbench, data: Path) -> None:
    from .models import resnet_weights

    weights = resnet_weights(cfg.seed, width=cfg.width, classes=cfg.classes)
    np.savez(data / "weights.npz", **weights)
    (data / "spec.json").write_text(json.dumps({"size": cfg.size, "width": cfg.width, "classes": cfg.classes}))
    maps = _np(bench.maps)
    np.savez(
        data / "inputs.npz",
        images_nhwc=np.ascontiguousarray(bench.images.transpose(0, 2, 3, 1)),
        one_hot=np.eye(cfg.classes, dtype=np.float32)[bench.labels],
        explanations=maps.astype(np.float32),
    )


def _run_case(case: XpliqueCase, bench: Workbench, cfg: Config, worker: Worker, data: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"name": case.name, "kind": case.kind, "peer": f"xplique.{case.name}",
                           "xplique_settings": case.theirs}
    cls, note = resolve(Case(case.name, case.kind), case.kind)
    if cls is None:
        return {**row, "status": "skipped", "note": note}
    import xai_toolbox as xt

    model = xt.adapt(bench.model, **cfg.xplique_adapter) if cfg.xplique_adapter else None
    obj, notes = make(cls, bench, case.ours, cfg.batch_size, model)
    row["params"] = {k: v for k, v in obj.get_params().items() if k not in ("score_fn", "progress", "framework")}
    row["notes"] = notes
    theirs_params = {**case.theirs, "batch_size": cfg.batch_size}

    def ours() -> Any:
        with bench.context():
            if case.kind == "metric":
                return obj(bench.x, bench.labels, bench.maps)
            return obj(bench.x, bench.labels)

    seconds: list[float] = []

    def theirs() -> None:
        seconds.append(worker.run(case.name, theirs_params))

    try:
        first = timed(ours, bench.sync)
        ours_value = ours()
        saved = data / f"{case.name}.npy"
        first_theirs = worker.run(case.name, theirs_params, save=saved)
        their_value = np.load(saved)
    except Exception as exc:
        return {**row, "status": "error", "note": f"{type(exc).__name__}: {exc}"}
    # Xplique's time is measured inside its process (construction and call, no IPC); ours
    # here. ``paired`` times both calls; the worker's own figure replaces the outer one.
    timing = paired(ours, theirs, bench.sync, cfg, first)
    timing["reference_times_s"] = seconds
    ratios = [a / b for a, b in zip(timing["times_s"], seconds, strict=True)]
    timing.update(_summary(ratios, timing["times_s"], seconds))
    row.update(status="ok", first_call_s=first, reference_first_call_s=first_theirs, **timing)
    if case.kind == "metric":
        row["ours_score"] = float(ours_value.mean)
        row["xplique_score"] = float(np.mean(their_value))
    else:
        row["agreement"] = _correlation(_np(ours_value), their_value)
    return row


def _summary(ratios: list[float], ours: list[float], theirs: list[float]) -> dict[str, Any]:
    import statistics

    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "median_s": statistics.median(ours),
        "reference_median_s": statistics.median(theirs),
        "ratio": statistics.median(ratios),
        "ratio_quartiles": [quartiles[0], quartiles[2]],
    }
