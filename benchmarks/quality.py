"""Section c: quality per forward pass — how many passes a map needs, fixed or adaptive.

For RISE, Sobol and HSIC on two models (the benchmark ResNet with its random weights, and the
trained demo CNN on held-out shapes), at 64×64:

* a **reference** map from 16× the default number of samples (RISE with the control-variate
  estimator, whose expectation is the paper's);
* each **candidate** setting (the former fixed defaults, the other estimators or samplers, the
  adaptive ``"auto"`` defaults) run with two seeds: its passes per image, the correlation of its
  maps with the reference (the worst image), the seed-to-seed correlation (mean over images),
  and the Deletion and Insertion areas of its maps (what the maps are used for);
* the passes a candidate would need for a correlation of 0.99 with the reference,
  extrapolated from its measured correlation ``r`` at ``N`` passes by the Monte-Carlo law
  (noise variance ∝ 1/N): ``N · (1/r² − 1) / (1/0.99² − 1)``.

MuFidelity (one score per image and explanation): the reference from 16× the default subsets;
per candidate its passes, the largest absolute error against the reference and the
seed-to-seed spread.

This is how the defaults were chosen (``docs/benchmarks.md``); the maps do not depend on the
framework (twin models give the same maps), so one framework is enough.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import Config
from .report import log

#: The correlation with the reference a map should reach.
TARGET_CORRELATION = 0.99


@dataclass
class Candidate:
    label: str
    params: dict[str, Any]
    seeded: bool = True


@dataclass
class QualityCase:
    method: str
    reference: dict[str, Any]
    candidates: list[Candidate] = field(default_factory=list)
    kind: str = "method"


def quality_cases(quick: bool, divisor: int | None = None) -> list[QualityCase]:
    """The settings compared (``quick``: 1/8 of every sample count, for a smoke run;
    ``divisor``: 1/divisor of every count, whatever ``quick``)."""
    k = divisor or (8 if quick else 1)

    def n(value: int) -> int:
        return max(16, value // k)

    return [
        QualityCase(
            "rise",
            {"nb_samples": n(64000), "normalization": "control_variate"},
            [
                Candidate(f"{n(4000)}, expectation (former default)", {"nb_samples": n(4000), "normalization": "expectation"}),
                Candidate(f"{n(4000)}, mask_sum", {"nb_samples": n(4000), "normalization": "mask_sum"}),
                Candidate(f"{n(4000)}, control_variate", {"nb_samples": n(4000), "normalization": "control_variate"}),
                Candidate("auto, control_variate, tol 0.1", {"nb_samples": "auto", "normalization": "control_variate",
                                                              "tolerance": 0.1, "max_samples": n(8192)}),
                Candidate("auto, control_variate, tol 0.2", {"nb_samples": "auto", "normalization": "control_variate",
                                                              "tolerance": 0.2, "max_samples": n(8192)}),
            ],
        ),
        QualityCase(
            "sobol",
            {"nb_design": 512 // k},
            [
                Candidate(f"{32 // k} (former default)", {"nb_design": 32 // k}, seeded=False),
                Candidate("auto, tol 0.1", {"nb_design": "auto", "tolerance": 0.1, "max_design": 128 // k}, seeded=False),
                Candidate("auto, tol 0.2", {"nb_design": "auto", "tolerance": 0.2, "max_design": 128 // k}, seeded=False),
            ],
        ),
        QualityCase(
            "hsic",
            {"nb_design": n(24000), "sampler": "lhs"},
            [
                Candidate(f"{n(1500)}, lhs (former default)", {"nb_design": n(1500), "sampler": "lhs"}),
                Candidate(f"{n(1500)}, sobol (Xplique's)", {"nb_design": n(1500), "sampler": "sobol"}, seeded=False),
                Candidate(f"{n(1500)}, orthogonal", {"nb_design": n(1500), "sampler": "orthogonal"}),
                Candidate("auto, lhs, tol 0.1", {"nb_design": "auto", "sampler": "lhs", "tolerance": 0.1,
                                                 "max_design": n(4096)}),
                Candidate("auto, lhs, tol 0.2", {"nb_design": "auto", "sampler": "lhs", "tolerance": 0.2,
                                                 "max_design": n(4096)}),
            ],
        ),
        QualityCase(
            "mufidelity",
            {"nb_samples": n(3200)},
            [
                Candidate(f"{n(200)} (former default)", {"nb_samples": n(200)}),
                Candidate("auto, tol 0.05", {"nb_samples": "auto", "tolerance": 0.05, "max_samples": n(2048)}),
                Candidate("auto, tol 0.03", {"nb_samples": "auto", "tolerance": 0.03, "max_samples": n(2048)}),
            ],
            kind="metric",
        ),
    ]


def quality_models(cfg: Config, n_images: int) -> list[tuple[str, Any, Any, np.ndarray]]:
    """``(name, model, images, labels)`` for the benchmark ResNet and the demo CNN at 64×64."""
    from xai_toolbox.demo import DEMO_SEEDS, load_demo_model, make_shapes, to_channels_first

    from .models import resnet

    rng = np.random.default_rng(cfg.seed)
    random_images = rng.uniform(0.0, 1.0, (n_images, 3, 64, 64)).astype(np.float32)
    shapes = make_shapes(n_images, seed=DEMO_SEEDS.heldout)
    demo_images = to_channels_first(shapes.images)
    found = []
    for name, model, images in (
        (f"benchmark ResNet (random weights, width {cfg.width})",
         resnet(cfg.framework, cfg.seed, size=64, width=cfg.width, classes=cfg.classes), random_images),
        ("demo CNN (trained, held-out shapes)", load_demo_model(cfg.framework), demo_images),
    ):
        x = _native(cfg, images)
        labels = _np(_forward(cfg, model, x)).argmax(axis=1)
        found.append((name, model, x, labels))
    return found


def run_quality(cfg: Config) -> list[dict[str, Any]]:
    import xai_toolbox as xt

    rows: list[dict[str, Any]] = []
    n_images = 2 if cfg.quick or cfg.quality_divisor else 4
    for model_name, model, x, labels in quality_models(cfg, n_images):
        explanations = {
            "saliency": _np(xt.Saliency(model)(x, labels)),
            "rise": _np(xt.Rise(model, nb_samples=2000, normalization="control_variate", seed=7,
                                batch_size=cfg.batch_size, progress=False)(x, labels)),
        }
        deletion = xt.Deletion(model, batch_size=cfg.batch_size, progress=False)
        insertion = xt.Insertion(model, batch_size=cfg.batch_size, progress=False)
        for case in quality_cases(cfg.quick, cfg.quality_divisor):
            log(f"[quality] {model_name}: {case.method} reference {case.reference} ...")
            run = _runner(case, model, x, labels, explanations, cfg)
            started = time.perf_counter()
            reference, _ = run(case.reference, 0)
            row: dict[str, Any] = {"model": model_name, "method": case.method, "kind": case.kind,
                                   "reference": case.reference, "reference_s": time.perf_counter() - started,
                                   "status": "ok", "candidates": []}
            for cand in case.candidates:
                log(f"    {cand.label} ...")
                started = time.perf_counter()
                first, passes = run(cand.params, 0)
                seconds = time.perf_counter() - started
                second = run(cand.params, 1)[0] if cand.seeded else first
                entry: dict[str, Any] = {"label": cand.label, "params": cand.params, "passes": passes,
                                         "seconds": seconds}
                if case.kind == "metric":
                    entry["max_error"] = float(np.max(np.abs(first - reference)))
                    entry["seed_spread"] = float(np.max(np.abs(first - second))) / np.sqrt(2) if cand.seeded else None
                else:
                    r = _correlations(first, reference)
                    entry["correlation"] = float(r.min())
                    entry["seed_correlation"] = float(_correlations(first, second).mean()) if cand.seeded else None
                    entry["passes_for_target"] = _passes_for(float(r.min()), passes)
                    entry["deletion"] = float(deletion(x, labels, first).mean)
                    entry["insertion"] = float(insertion(x, labels, first).mean)
                log(f"      {entry}")
                row["candidates"].append(entry)
            rows.append(row)
    return rows


def _runner(
    case: QualityCase, model: Any, x: Any, labels: np.ndarray, explanations: dict[str, np.ndarray], cfg: Config
) -> Callable[[dict[str, Any], int], tuple[np.ndarray, float]]:
    """``run(params, seed) -> (maps or scores, mean passes per image)``."""
    import xai_toolbox as xt

    def run(params: dict[str, Any], seed: int) -> tuple[np.ndarray, float]:
        kwargs = {**params, "batch_size": cfg.batch_size, "progress": False}
        if case.method != "sobol":
            kwargs["seed"] = seed
        if case.kind == "metric":
            obj = xt.metric(case.method, model, **kwargs)
            scores, passes = [], []
            for maps in explanations.values():
                result = obj(x, labels, maps)
                scores.append(result.scores)
                used = result.details.get("nb_samples")
                passes.append(np.mean(used) if used is not None else obj.sampling().maximum)
            return np.concatenate(scores), float(np.mean(passes))
        obj = xt.method(case.method, model, **kwargs)
        maps, extras = obj.explain_with_extras(x, labels)
        used = extras.get("nb_samples", extras.get("nb_design"))
        per_unit = (obj.grid_size**2 + 1) if case.method == "sobol" else 1
        count = float(np.mean(used)) if used is not None else float(obj.sampling().maximum)
        return _np(maps), count * per_unit

    return run


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def _passes_for(r: float, passes: float) -> float | None:
    """Passes for a correlation of :data:`TARGET_CORRELATION` by the Monte-Carlo law."""
    if not np.isfinite(r) or r <= 0:
        return None
    return passes * (1 / r**2 - 1) / (1 / TARGET_CORRELATION**2 - 1)


def _native(cfg: Config, images: np.ndarray) -> Any:
    if cfg.framework == "torch":
        import torch

        return torch.from_numpy(images).to(cfg.device)
    import tensorflow as tf

    return tf.constant(images.transpose(0, 2, 3, 1))


def _forward(cfg: Config, model: Any, x: Any) -> Any:
    if cfg.framework == "torch":
        import torch

        with torch.no_grad():
            return model(x)
    return model(x, training=False)


def _np(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        return t.detach().cpu().numpy()
    return np.asarray(t)
