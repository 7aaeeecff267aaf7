"""The unit of work of every engine: one group of consecutive images, explained by each method
and scored by each metric, with per-image records.

A group is a fixed range of positions (``group_size`` images, the last one shorter), so the
batches a deterministic method sees are the same in every engine and in every resumed run. A
seeded method or metric runs one image per call with the image's own seed (see
:mod:`xai_toolbox.datasets.plan`): the built-in stochastic methods draw one set of masks or
noise per call and share it across the call's images, so a batch of images with different
seeds cannot be one call — and a per-image call leaves nothing to depend on batch-mates. Its
model passes still come in chunks of ``batch_size`` (RISE's 4,000 masks of one image fill
many chunks).

A failure never stops the group: an image that cannot be read, has the wrong shape, or makes a
method or metric raise is recorded with the reason. When a batched call raises, it is retried
image by image, so one bad image does not fail its batch-mates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends import adapt
from ..backends.adapter import to_numpy
from ..errors import ParameterError
from ..evaluation import _describe, _score, top1
from ..io import normalize
from .plan import Component, Plan, _registered
from .sources import Sample, Source

__all__ = ["GroupResult", "GroupTask", "MethodTask", "Processor"]


@dataclass(frozen=True)
class MethodTask:
    """What a group still needs for one method.

    Attributes:
        method: the method's key.
        record: whether its explanations are still to record (maps written, records added).
        metrics: keys of the metrics still to score.
        maps: the stored maps of the group's positions, to score without explaining again
            (``None``: explain; the local engine reads float32 stores, the others explain
            again, which gives the same maps).
        failed: ``{position: reason}`` of the stored explanations that had failed.
    """

    method: str
    record: bool
    metrics: tuple[str, ...]
    maps: np.ndarray | None = None
    failed: dict[int, str] = field(default_factory=dict)


@dataclass
class GroupTask:
    """Positions ``start .. start + count - 1`` and what they need; ``samples`` carries the
    images of a source that cannot load them by position (a stream)."""

    index: int
    start: int
    count: int
    methods: list[MethodTask]
    samples: list[Sample] | None = None

    @property
    def positions(self) -> range:
        return range(self.start, self.start + self.count)


@dataclass
class GroupResult:
    """A group's maps ``{method key: (count, H, W)}`` (NaN rows where an image failed) and its
    records (one per image and method, and per image, method and metric)."""

    index: int
    start: int
    count: int
    maps: dict[str, np.ndarray]
    records: list[dict[str, Any]]


@dataclass
class _Batch:
    """The group's images that can be explained, with their model inputs and targets."""

    samples: list[Sample]
    x: np.ndarray
    predictions: np.ndarray
    targets: np.ndarray


class Processor:
    """Runs :class:`GroupTask` s on one model (built once per worker)."""

    def __init__(self, plan: Plan, model: Any, source: Source | None = None) -> None:
        self.plan = plan
        self.adapter = adapt(model)
        self.source = source
        self.components = {c.key: c for c in (*plan.methods, *plan.metrics)}
        classes = {m.key: _registered(m.kind, m.name) for m in plan.metrics}
        self.higher_is_better = {k: bool(getattr(c, "higher_is_better", True)) for k, c in classes.items()}
        # Metrics that re-run the method (model randomisation) need the image's own method.
        self.needs_method = {k: not getattr(c, "needs_explanations", True) for k, c in classes.items()}

    def run(self, task: GroupTask) -> GroupResult:
        if task.samples is not None:
            samples = task.samples
        else:
            assert self.source is not None, "an addressable source is needed to load images"
            samples = self.source.load(task.positions)
        failed: dict[int, str] = {}
        batch = self._batch(samples, failed)
        result = GroupResult(task.index, task.start, task.count, {}, [])
        for method_task in task.methods:
            self._method(method_task, samples, batch, failed, result)
        return result

    # -- inputs, predictions, targets ------------------------------------------------------------
    def _batch(self, samples: list[Sample], failed: dict[int, str]) -> _Batch:
        inputs: list[np.ndarray] = []
        good: list[Sample] = []
        for s in samples:
            if s.image is None:
                failed[s.position] = s.error or "the image could not be read"
                continue
            if tuple(s.image.shape) != self.plan.image_shape:
                failed[s.position] = (
                    f"InputError: image of shape {tuple(s.image.shape)}; the dataset's images are "
                    f"{self.plan.image_shape} (pass size=... to resize image files)"
                )
                continue
            try:
                x = self._preprocess(s.image)
            except Exception as exc:
                failed[s.position] = f"preprocess: {_describe(exc)}"
                continue
            if inputs and x.shape != inputs[0].shape:
                failed[s.position] = f"InputError: preprocessed to shape {x.shape}, the others to {inputs[0].shape}"
                continue
            inputs.append(x)
            good.append(s)
        x = np.stack(inputs) if inputs else np.zeros((0,), np.float32)
        predictions, errors, _ = _each(len(good), lambda: self._top1(x), lambda i: self._top1(x[i : i + 1])[0])
        keep = []
        for i, s in enumerate(good):
            if i in errors:
                failed[s.position] = f"predicting: {errors[i]}"
            elif self.plan.targets == "label" and s.label is None:
                failed[s.position] = "TargetError: the image has no label (targets='label')"
            else:
                keep.append(i)
        samples_kept = [good[i] for i in keep]
        preds = np.array([predictions[i] for i in keep], dtype=np.int64)
        return _Batch(samples_kept, x[keep] if keep else x[:0], preds, self._targets(samples_kept, preds))

    def _preprocess(self, image: np.ndarray) -> np.ndarray:
        plan = self.plan
        if plan.preprocess is not None:
            out = plan.preprocess(image)
            return np.asarray(out if isinstance(out, np.ndarray) else to_numpy(out), dtype=np.float32)
        if not plan.files:
            return np.asarray(image, dtype=np.float32)
        picture = normalize(image[None], plan.mean, plan.std)[0]  # (H, W, C)
        if self.adapter.channel_axis in (1, -3):
            picture = picture.transpose(2, 0, 1)
        return np.ascontiguousarray(picture, dtype=np.float32)

    def _top1(self, x: np.ndarray) -> np.ndarray:
        classes, n_classes = top1(self.adapter, x, batch_size=self.plan.batch_size)
        target = self.plan.targets
        if isinstance(target, int) and not isinstance(target, bool) and target >= n_classes:
            raise _RunError(f"targets={target} is out of range: the model has {n_classes} outputs")
        return classes

    def _targets(self, samples: list[Sample], predictions: np.ndarray) -> np.ndarray:
        target = self.plan.targets
        if target == "top1":
            return predictions
        if target == "label":
            return np.array([s.label for s in samples], dtype=np.int64)
        return np.full(len(samples), int(target), dtype=np.int64)

    # -- one method and its metrics ----------------------------------------------------------------
    def _method(
        self, task: MethodTask, samples: list[Sample], batch: _Batch, failed: dict[int, str], result: GroupResult
    ) -> None:
        method = self.components[task.method]
        n = len(batch.samples)
        ids = [s.id for s in batch.samples]
        if task.maps is None:
            maps, errors, times = self._explain(method, batch, ids)
            block = self._map_block(samples, batch, maps) if task.record else None
            if block is not None:
                result.maps[method.key] = block
        else:
            offset = samples[0].position if samples else 0
            maps = [task.maps[s.position - offset] for s in batch.samples]
            errors = {i: task.failed[s.position] for i, s in enumerate(batch.samples) if s.position in task.failed}
            times = [0.0] * n
        base = {i: self._row(s, batch, i, method) for i, s in enumerate(batch.samples)}
        if task.record:
            for i in range(n):
                result.records.append({**base[i], "seed": method.seed_for(ids[i]), "time_s": times[i],
                                       "error": errors.get(i)})
        for key in task.metrics:
            metric = self.components[key]
            scores, metric_errors, metric_times = self._score(method, metric, batch, ids, maps, errors)
            for i in range(n):
                error = metric_errors.get(i)
                result.records.append({
                    **base[i], "metric": metric.name, "metric_hash": metric.digest,
                    "score": None if error else float(scores[i]),
                    "higher_is_better": self.higher_is_better[key], "seed": metric.seed_for(ids[i]),
                    "time_s": metric_times[i], "error": error,
                })
        for s in samples:  # images that never reached the model
            if s.position in failed:
                rows = [None] if task.record else []
                rows += [self.components[k] for k in task.metrics]
                for metric in rows:
                    result.records.append(self._failed_row(s, method, metric, failed[s.position]))

    def _explain(self, method: Component, batch: _Batch, ids: list[str]) -> tuple[list[Any], dict[int, str], list[float]]:
        x, t = batch.x, batch.targets

        def one(i: int) -> np.ndarray:
            obj = method.build(self.adapter, method.seed_for(ids[i]))
            return to_numpy(obj(x[i : i + 1], t[i : i + 1]))[0].astype(np.float32)

        if method.seeded:
            return _each(len(ids), None, one)
        obj = method.build(self.adapter)
        return _each(len(ids), lambda: to_numpy(obj(x, t)).astype(np.float32), one)

    def _score(
        self, method: Component, metric: Component, batch: _Batch, ids: list[str], maps: list[Any],
        explain_errors: dict[int, str],
    ) -> tuple[list[Any], dict[int, str], list[float]]:
        ok = [i for i in range(len(ids)) if i not in explain_errors]
        scores: list[Any] = [None] * len(ids)
        errors = {i: f"no explanation ({e})" for i, e in explain_errors.items()}
        times = [0.0] * len(ids)
        if not ok:
            return scores, errors, times
        x, t = batch.x[ok], batch.targets[ok]
        stacked = np.stack([maps[i] for i in ok])

        def one(j: int) -> float:
            i = ok[j]
            obj = metric.build(self.adapter, metric.seed_for(ids[i]))
            explainer = method.build(self.adapter, method.seed_for(ids[i]))
            return float(_score(obj, explainer, x[j : j + 1], t[j : j + 1], stacked[j : j + 1], None).scores[0])

        per_image = metric.seeded or (method.seeded and self.needs_method[metric.key])
        if per_image:
            values, sub_errors, sub_times = _each(len(ok), None, one)
        else:
            obj, explainer = metric.build(self.adapter), method.build(self.adapter)
            values, sub_errors, sub_times = _each(
                len(ok), lambda: list(_score(obj, explainer, x, t, stacked, None).scores), one
            )
        for j, i in enumerate(ok):
            scores[i], times[i] = values[j], sub_times[j]
            if j in sub_errors:
                errors[i] = sub_errors[j]
        return scores, errors, times

    # -- records -----------------------------------------------------------------------------------
    def _map_block(self, samples: list[Sample], batch: _Batch, maps: list[Any]) -> np.ndarray | None:
        """The maps of the group's positions, NaN where an image failed (``None``: no map)."""
        shape = next((np.shape(m) for m in maps if m is not None), None)
        if shape is None:
            return None
        block = np.full((len(samples), *shape), np.nan, dtype=np.float32)
        offset = samples[0].position if samples else 0
        for s, m in zip(batch.samples, maps, strict=True):
            if m is not None:
                block[s.position - offset] = m
        return block

    def _row(self, s: Sample, batch: _Batch, i: int, method: Component) -> dict[str, Any]:
        return {
            "image_id": s.id, "position": s.position, "label": s.label, "path": s.path,
            "prediction": int(batch.predictions[i]), "target": int(batch.targets[i]),
            "method": method.name, "method_hash": method.digest, "metric": None, "metric_hash": None,
            "score": None, "higher_is_better": None,
        }

    def _failed_row(self, s: Sample, method: Component, metric: Component | None, error: str) -> dict[str, Any]:
        return {
            "image_id": s.id, "position": s.position, "label": s.label, "path": s.path,
            "prediction": None, "target": None, "method": method.name, "method_hash": method.digest,
            "metric": None if metric is None else metric.name,
            "metric_hash": None if metric is None else metric.digest, "score": None,
            "higher_is_better": None if metric is None else self.higher_is_better[metric.key],
            "seed": None, "time_s": 0.0, "error": error,
        }


class _RunError(ParameterError):
    """A problem of the run's settings found on the first batch: it stops the run."""


def _each(
    n: int, batch: Callable[[], Sequence[Any]] | None, one: Callable[[int], Any]
) -> tuple[list[Any], dict[int, str], list[float]]:
    """``batch()`` (values for ``n`` images), or ``one(i)`` per image when there is no batch
    call or it raised: ``(values, {i: error}, seconds per image)``."""
    if n == 0:
        return [], {}, []
    if batch is not None:
        start = time.perf_counter()
        try:
            values = list(batch())
            return values, {}, [(time.perf_counter() - start) / n] * n
        except _RunError:
            raise
        except Exception as exc:
            if n == 1:
                return [None], {0: _describe(exc)}, [time.perf_counter() - start]
    values, errors, times = [], {}, []
    for i in range(n):
        start = time.perf_counter()
        try:
            values.append(one(i))
        except _RunError:
            raise
        except Exception as exc:
            values.append(None)
            errors[i] = _describe(exc)
        times.append(time.perf_counter() - start)
    return values, errors, times

