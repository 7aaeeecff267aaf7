"""``xt.explain_dataset``: several methods and metrics over a whole dataset, streamed, stored on
disk, resumable, on one machine or a Ray cluster."""

from __future__ import annotations

import collections
import datetime as _dt
import hashlib
import inspect
import itertools
import math
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import _validation as v
from ..errors import ParameterError
from .plan import Entry, ModelSpec, Plan, components, import_callable
from .sources import Source, as_source, first_readable
from .store import ResultStore, StoreError, StoreIndex, needs_extra
from .work import GroupResult, GroupTask, MethodTask

__all__ = ["DatasetResults", "DatasetRun", "explain_dataset", "open_results"]

ENGINES = ("local", "ray")
MAP_DTYPES = ("float32", "float16")
Echo = Callable[[str], None]


# -- reading a store -------------------------------------------------------------------------------
class DatasetResults:
    """The results in a store folder (see :mod:`xai_toolbox.datasets.store` for the layout).

    Example:
        >>> results = xt.datasets.open_results("imagenet-run")
        >>> results.records()          # a pandas DataFrame, one row per image × method (× metric)
        >>> results.scores()           # mean score per method and metric
        >>> results.maps("rise")[17]   # the RISE map of the image at position 17 (Zarr array)
    """

    def __init__(self, path: str | Path) -> None:
        self.store = ResultStore(path)
        self.info = self.store.info()

    @property
    def path(self) -> Path:
        return self.store.path

    def records(self) -> Any:
        """Every committed record as a pandas ``DataFrame`` (columns: see the store docs; integer
        columns are nullable ``Int64``, so 63-bit seeds stay exact)."""
        import pandas as pd
        import pyarrow as pa

        return self.store.records().to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)

    def scores(self) -> Any:
        """Mean scores, a ``DataFrame`` indexed by method with one column per metric (named
        ``name-hash`` where the store holds several configurations of one name)."""
        frame = self.records()
        scored = frame[frame["metric"].notna() & frame["error"].isna()].copy()
        for name, digest in (("method", "method_hash"), ("metric", "metric_hash")):
            several = scored.groupby(name)[digest].transform("nunique") > 1
            scored[name] = scored[name].where(~several, scored[name] + "-" + scored[digest])
        return scored.pivot_table(index="method", columns="metric", values="score", aggfunc="mean")

    def method_keys(self) -> list[str]:
        """The keys (``name-hash``) of the method configurations in the store."""
        return [k for k, c in self.info.get("components", {}).items() if c["kind"] == "method"]

    def maps(self, method: str) -> Any:
        """The Zarr array ``(N, H, W)`` of ``method``: a key, or a name if the store holds one
        configuration of it."""
        keys = self.method_keys()
        if method not in keys:
            matching = [k for k in keys if k.rsplit("-", 1)[0] == method]
            if len(matching) != 1:
                raise KeyError(f"{method!r} names {len(matching)} method configurations in the store; use one of {keys}")
            method = matching[0]
        return self.store.maps_array(method)


def open_results(path: str | Path) -> DatasetResults:
    """The results stored in ``path`` by :func:`explain_dataset` or ``xai-toolbox run``."""
    needs_extra()
    return DatasetResults(path)


class DatasetRun(DatasetResults):
    """What :func:`explain_dataset` did, and the store it wrote (a :class:`DatasetResults`).

    Attributes:
        images: images in the dataset (``None`` for a stream of unknown length).
        computed: images explained or scored by this run.
        skipped: images whose results were already stored.
        failed: records of this run with an error (per image and method or metric).
        failures: the number of failed records per error type.
        seconds: wall time of the run.
        status: ``"complete"`` or ``"interrupted"``.
    """

    def __init__(self, path: str | Path, images: int | None) -> None:
        super().__init__(path)
        self.images = images
        self.computed = 0
        self.skipped = 0
        self.failed = 0
        self.failures: dict[str, int] = {}
        self.seconds = 0.0
        self.status = "running"

    @property
    def images_per_second(self) -> float:
        """Images computed per second of wall time."""
        return self.computed / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        return (
            f"{self.computed} image(s) computed, {self.skipped} already stored, {self.failed} failed "
            f"record(s), in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s) -> {self.path}"
        )


# -- the run ---------------------------------------------------------------------------------------
def explain_dataset(
    data: Any,
    model: Any = None,
    *,
    out: str | Path,
    methods: Iterable[Entry],
    metrics: Iterable[Entry] = (),
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    metric_params: Mapping[str, Mapping[str, Any]] | None = None,
    model_factory: Callable[[], Any] | None = None,
    weights: str | None = None,
    trust_model_code: bool = False,
    labels: Any = None,
    ids: Sequence[str] | None = None,
    size: int | Sequence[int] | None = None,
    channels: int = 3,
    preprocess: Callable[[Any], Any] | str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    targets: str | int = "top1",
    batch_size: int = 64,
    group_size: int = 16,
    seed: int = 0,
    map_dtype: str = "float32",
    engine: str = "local",
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    address: str | None = None,
    ray_init: Mapping[str, Any] | None = None,
    window: int = 64,
    commit_every: float = 10.0,
    progress: bool | None = None,
    echo: Echo | None = None,
) -> DatasetRun:
    """Explain every image of a dataset with each method, score each explanation with each
    metric, and store maps and per-image records in ``out``; a second call with the same
    arguments computes only what is missing.

    Args:
        data: a folder of images (class sub-folders as labels), a ``.npy`` file or an array
            ``(N, ...)`` in the model's layout, a PyTorch ``Dataset`` / ``DataLoader``, a
            ``tf.data.Dataset``, a Ray Dataset, or any iterable of images, ``(image, label)``
            or dicts (see :func:`xai_toolbox.datasets.as_source`).
        model: the model: a file or ``"package.module:factory"`` / ``"file.py:factory"``
            string (loaded as ``xai-toolbox explain`` does), or a model object (local engine).
        out: the store folder (created; reused to resume).
        methods: names, ``(name, params)`` pairs or instances, as for ``xt.evaluate``.
        metrics: the same for metrics; every metric scores every method.
        method_params / metric_params: parameters per name.
        model_factory: instead of ``model``, a picklable zero-argument function building the
            model (each Ray actor calls it once).
        weights / trust_model_code: as for :func:`xai_toolbox.io.load_model`.
        labels, ids: labels file (folders), labels array and ids (arrays).
        size, channels: how image files are read (resize to ``(H, W)``; 3 or 1 channels).
        preprocess: ``f(raw image) -> model input`` (``"module:function"`` too), or
            ``"model"``: the ``preprocess`` function of the model factory's module. Default:
            files are normalised with ``mean``/``std`` and put in the model's layout; arrays
            are used as given.
        targets: ``"top1"`` (the model's prediction, default), ``"label"`` or a class index.
        batch_size: model inputs per forward pass (not part of the results' identity).
        group_size: images per unit of work: one batch of a deterministic method, one Zarr
            chunk, one commit (fixed for a store).
        seed: base seed of the stochastic methods and metrics given no ``seed`` of their own;
            each image gets ``derive_seed(base, image_id, name)``.
        map_dtype: ``"float32"`` or ``"float16"`` maps on disk.
        engine: ``"local"`` (this process) or ``"ray"``.
        workers, gpus_per_worker, cpus_per_worker: the Ray actor pool.
        address: a Ray cluster to connect to (``"auto"``, ``"ray://host:10001"``); ``None``
            starts a local one (or uses the one already initialised).
        ray_init: more ``ray.init`` arguments (``num_cpus``, ``runtime_env``, ...).
        window: groups sent to Ray at a time from a source read in order (a stream).
        commit_every: seconds between record commits (0: after every group).
        progress: a progress bar with ETA (``None``: on a terminal).
        echo: called with a summary line at the end (e.g. ``print``).

    Returns:
        A :class:`DatasetRun`: counts, timing and access to the stored results.

    Raises:
        ParameterError: bad settings, before any model is built or image read.
        UnknownNameError: an unknown method or metric, before any model is built.
        StoreError: ``out`` holds results of other data, model or inputs, or another run is
            writing to it.

    Example:
        >>> run = xt.explain_dataset("imagenet/val", "resnet.py:build", out="runs/val",
        ...                          size=224, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
        ...                          methods=["gradcam", ("rise", {"nb_samples": 4000})],
        ...                          metrics=["deletion", "insertion"], targets="label")
        >>> run.scores()
    """
    return _prepare(**locals()).run()


def prepare_run(*args: Any, **kwargs: Any) -> _Job:
    """:func:`explain_dataset` in two steps: its checks (of everything but the model, which is
    not built yet; the first image is read), then ``.run()``. The command line tells bad
    settings (exit status 2) from failures of the run (1) this way.

    Example:
        >>> job = prepare_run("val/", "model.py:build", out="runs/val", methods=["gradcam"])
        >>> run = job.run()
    """
    bound = inspect.signature(explain_dataset).bind(*args, **kwargs)
    bound.apply_defaults()
    return _prepare(**bound.arguments)


def _prepare(
    data: Any,
    model: Any,
    *,
    out: str | Path,
    methods: Iterable[Entry],
    metrics: Iterable[Entry],
    method_params: Mapping[str, Mapping[str, Any]] | None,
    metric_params: Mapping[str, Mapping[str, Any]] | None,
    model_factory: Callable[[], Any] | None,
    weights: str | None,
    trust_model_code: bool,
    labels: Any,
    ids: Sequence[str] | None,
    size: int | Sequence[int] | None,
    channels: int,
    preprocess: Callable[[Any], Any] | str | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    targets: str | int,
    batch_size: int,
    group_size: int,
    seed: int,
    map_dtype: str,
    engine: str,
    workers: int,
    gpus_per_worker: float,
    cpus_per_worker: float,
    address: str | None,
    ray_init: Mapping[str, Any] | None,
    window: int,
    commit_every: float,
    progress: bool | None,
    echo: Echo | None,
) -> _Job:
    settings = _check_settings(
        targets=targets, batch_size=batch_size, group_size=group_size, seed=seed, map_dtype=map_dtype,
        engine=engine, workers=workers, commit_every=commit_every, window=window,
    )
    needs_extra()
    method_list = components("method", methods, method_params, batch_size=batch_size, seed=seed)
    if not method_list:
        raise ParameterError("explain_dataset needs at least one method")
    metric_list = components("metric", metrics, metric_params, batch_size=batch_size, seed=seed)
    spec = _model_spec(model, model_factory, weights, trust_model_code)
    if engine == "ray":
        _check_ray(spec)
    function = _preprocess(preprocess, spec)
    source = as_source(data, labels=labels, ids=ids, size=size, channels=channels)
    if targets == "label" and source.addressable and not _has_labels(source):
        raise ParameterError("targets='label' needs labels: the data has none (pass labels=...)")
    first, stream = _first_image(source)
    plan = Plan(
        tuple(method_list), tuple(metric_list), settings["targets"], batch_size, function, source.files,
        None if mean is None else tuple(float(m) for m in mean), None if std is None else tuple(float(s) for s in std),
        tuple(first.image.shape),
    )
    binding = {
        "data": source.describe(), "model": spec.describe(),
        "inputs": {"preprocess": _name_of(preprocess), "mean": mean, "std": std, "image_shape": list(plan.image_shape)},
        "targets": settings["targets"], "group_size": group_size,
        # A fingerprint of the data's content too: the first readable image.
        "first_image": hashlib.sha256(np.ascontiguousarray(first.image).tobytes()).hexdigest()[:16],
    }
    store = ResultStore(out)
    if store.path.exists() and not store.path.is_dir():
        raise ParameterError(f"out {str(out)!r} exists and is not a folder")
    if store.exists():
        store.check_binding(binding)
    return _Job(plan, spec, source, stream, store, binding, settings, progress, echo,
                dict(workers=workers, gpus=gpus_per_worker, cpus=cpus_per_worker, address=address,
                     init=dict(ray_init or {}), window=window))


@dataclass
class _Job:
    """A checked run, ready to start."""

    plan: Plan
    spec: ModelSpec
    source: Source
    stream: Iterator[Any] | None
    store: ResultStore
    binding: dict[str, Any]
    settings: dict[str, Any]
    progress: bool | None
    echo: Echo | None
    ray: dict[str, Any]

    def run(self) -> DatasetRun:
        store, plan = self.store, self.plan
        store.acquire()
        try:
            store.bind(self.binding, {c.key: c.describe() for c in (*plan.methods, *plan.metrics)},
                       self.source.class_names)
            return _Runner(plan, self.spec, self.source, self.stream, store, self.settings, self.progress,
                           self.echo, self.ray).run()
        finally:
            store.release()


def _check_settings(**s: Any) -> dict[str, Any]:
    v.positive_int("batch_size", s["batch_size"])
    v.positive_int("group_size", s["group_size"])
    v.positive_int("window", s["window"])
    v.positive_int("workers", s["workers"])
    if v.seed("seed", s["seed"]) is None:
        raise ParameterError("seed must be a non-negative integer (dataset runs are reproducible)")
    if s["map_dtype"] not in MAP_DTYPES:
        raise ParameterError(f"map_dtype must be one of {MAP_DTYPES}, got {s['map_dtype']!r}")
    if s["engine"] not in ENGINES:
        raise ParameterError(f"engine must be one of {ENGINES}, got {s['engine']!r}")
    if not isinstance(s["commit_every"], int | float) or s["commit_every"] < 0:
        raise ParameterError(f"commit_every must be a number of seconds >= 0, got {s['commit_every']!r}")
    target = s["targets"]
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    if not (target in ("top1", "label") or (isinstance(target, int) and not isinstance(target, bool) and target >= 0)):
        raise ParameterError(f"targets must be 'top1', 'label' or a class index, got {s['targets']!r}")
    return {**s, "targets": target}


def _model_spec(model: Any, factory: Any, weights: str | None, trust: bool) -> ModelSpec:
    if (model is None) == (factory is None):
        raise ParameterError("pass exactly one of model (a file, 'module:factory' or a model object) and model_factory")
    if factory is not None:
        if not callable(factory):
            raise ParameterError(f"model_factory must be a function, got {type(factory).__name__}")
        return ModelSpec(factory=factory, weights=None, trust_model_code=trust)
    if isinstance(model, str | Path):
        return ModelSpec(spec=str(model), weights=None if weights is None else str(weights), trust_model_code=trust)
    if weights is not None:
        raise ParameterError("weights= needs a model file or factory string, not a model object")
    return ModelSpec(obj=model)


def _check_ray(spec: ModelSpec) -> None:
    if not spec.rebuildable:
        raise ParameterError(
            "the ray engine builds the model in each actor: pass the model as a file or "
            "'package.module:factory' string, or model_factory=a picklable function"
        )
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError("engine='ray' needs Ray Data: pip install 'xai-toolbox[ray]'") from exc


def _preprocess(preprocess: Any, spec: ModelSpec) -> Callable[[Any], Any] | None:
    if preprocess is None or callable(preprocess):
        return preprocess
    if preprocess == "model":
        return spec.own_preprocess()
    if isinstance(preprocess, str):
        return import_callable(preprocess, "preprocess")
    raise ParameterError(f"preprocess must be a function, 'module:function' or 'model', got {type(preprocess).__name__}")


def _name_of(preprocess: Any) -> str | None:
    if preprocess is None or isinstance(preprocess, str):
        return preprocess
    return f"{getattr(preprocess, '__module__', '?')}.{getattr(preprocess, '__qualname__', type(preprocess).__name__)}"


def _has_labels(source: Source) -> bool:
    return getattr(source, "labels", True) is not None


def _first_image(source: Source) -> tuple[Any, Iterator[Any] | None]:
    """The first readable sample (its shape is every image's), and the stream to read on."""
    if source.addressable:
        for start in range(0, source.length or 0, 64):
            for sample in source.load(range(start, min(start + 64, source.length or 0))):
                if sample.image is not None:
                    return sample, None
        raise ParameterError("no image of the dataset can be read")
    first, stream = first_readable(source.samples())
    if first is None:
        raise ParameterError("no image of the dataset can be read")
    return first, stream


class _Runner:
    """One run: plans what is missing, hands it to the engine, commits what comes back."""

    def __init__(
        self, plan: Plan, spec: ModelSpec, source: Source, stream: Iterator[Any] | None, store: ResultStore,
        settings: dict[str, Any], progress: bool | None, echo: Echo | None, ray: dict[str, Any],
    ) -> None:
        self.plan, self.spec, self.source, self.stream, self.store = plan, spec, source, stream, store
        self.settings, self.progress, self.echo, self.ray = settings, progress, echo, ray
        self.index: StoreIndex = store.index()
        self.result = DatasetRun(store.path, images=source.length)
        self.bar: Any = None

    def run(self) -> DatasetRun:
        run_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        log = {
            "id": run_id, "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "engine": self.settings["engine"], "methods": [m.key for m in self.plan.methods],
            "metrics": [m.key for m in self.plan.metrics], "status": "running",
        }
        self.store.log_run(log)
        status = "interrupted"
        try:
            tasks = self._tasks()
            if self.source.addressable:  # plan first (metadata only): counts what is stored
                tasks = _drain(collections.deque(tasks))
            self._open_bar()
            for result in self._engine(tasks):
                self._commit(result)
            status = "complete"
        finally:
            self.store.flush()
            if self.bar is not None:
                self.bar.close()
            r = self.result
            r.seconds, r.status = time.perf_counter() - started, status
            self.store.log_run({**log, "status": status, "seconds": round(r.seconds, 3), "computed": r.computed,
                                "skipped": r.skipped, "failed_records": r.failed})
        if self.echo is not None:
            self.echo(self.result.summary())
        return self.result

    # -- planning ----------------------------------------------------------------------------------
    def _tasks(self) -> Iterator[GroupTask]:
        size = self.settings["group_size"]
        if self.source.addressable:
            n = self.source.length or 0
            for index in range(math.ceil(n / size)):
                start = index * size
                count = min(size, n - start)
                task = self._task(index, start, count, self.source.ids(range(start, start + count)))
                if task is not None:
                    yield task
            return
        assert self.stream is not None
        for index in itertools.count():
            samples = list(itertools.islice(self.stream, size))
            if not samples:
                return
            task = self._task(index, samples[0].position, len(samples), [s.id for s in samples])
            if task is not None:
                task.samples = samples
                yield task

    def _task(self, index: int, start: int, count: int, ids: list[str]) -> GroupTask | None:
        positions = range(start, start + count)
        for p, image_id in zip(positions, ids, strict=True):
            stored = self.index.ids.get(p)
            if stored is not None and stored != image_id:
                raise StoreError(
                    f"position {p} holds image {stored!r} in the store but is {image_id!r} now: the data "
                    "changed since the stored run; write to a new folder"
                )
        methods = []
        for method in self.plan.methods:
            recorded = self._done(method.digest, "", positions)
            missing = tuple(m.key for m in self.plan.metrics if not self._done(method.digest, m.digest, positions))
            if recorded and not missing:
                continue
            task = MethodTask(method.key, not recorded, missing)
            if recorded and self.settings["engine"] == "local" and self.store.maps_dtype(method.key) == "float32":
                # Score stored maps rather than explain again (float16 maps are explained again:
                # scores of rounded maps would differ from those of the other images).
                failed = self.index.failed.get(method.digest, {})
                task = MethodTask(method.key, False, missing, maps=_Lazy(self.store, method.key, start, count),  # type: ignore[arg-type]
                                  failed={p: failed[p] for p in positions if p in failed})
            methods.append(task)
        if not methods:
            self.result.skipped += count
            if self.bar is not None:
                self.bar.update(count)
            return None
        return GroupTask(index, start, count, methods)

    def _done(self, method: str, metric: str, positions: range) -> bool:
        done = self.index.done.get((method, metric), set())
        present = sum(p in done for p in positions)
        if 0 < present < len(positions):
            raise StoreError(
                f"the store has records of part of the group at positions {positions.start}-{positions.stop - 1} "
                "(it was written with another group_size or edited); write to a new folder"
            )
        return present == len(positions)

    # -- running -----------------------------------------------------------------------------------
    def _engine(self, tasks: Iterator[GroupTask]) -> Iterator[GroupResult]:
        if self.settings["engine"] == "ray":
            from .ray_engine import run_ray

            return run_ray(self.plan, self.spec, self.source, tasks, **self.ray)
        from .local import run_local

        return run_local(self.plan, self.spec, self.source, tasks)

    def _commit(self, result: GroupResult) -> None:
        attrs_of = {m.key: {"method": m.describe(), "rows": "dataset positions (see records/position)"} for m in self.plan.methods}
        for key, block in result.maps.items():
            self.store.write_maps(
                key, result.start, block, length=self.source.length, chunk=self.settings["group_size"],
                dtype=self.settings["map_dtype"], attrs=attrs_of[key],
            )
        self.store.add(result.records)
        if self.store.flush_due(self.settings["commit_every"]):
            self.store.flush()
        errors = [r["error"] for r in result.records if r.get("error")]
        self.result.computed += result.count
        self.result.failed += len(errors)
        for error in errors:
            reason = error.split(":", 1)[0]
            self.result.failures[reason] = self.result.failures.get(reason, 0) + 1
        if self.bar is not None:
            self.bar.update(result.count)

    def _open_bar(self) -> None:
        show = self.progress
        if show is None:
            show = sys.stderr.isatty()
        if not show:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.source.length, initial=self.result.skipped, unit="img",
                        desc="explain_dataset", file=sys.stderr, dynamic_ncols=True)


def _drain(pending: collections.deque[GroupTask]) -> Iterator[GroupTask]:
    """The planned tasks, each let go once handed out (stored maps it read are freed)."""
    while pending:
        yield pending.popleft()


class _Lazy:
    """Stored maps read only when the group is processed (not while planning)."""

    def __init__(self, store: ResultStore, key: str, start: int, count: int) -> None:
        self.store, self.key, self.start, self.count = store, key, start, count

    def __getitem__(self, i: int) -> np.ndarray:
        if not hasattr(self, "_maps"):
            self._maps = self.store.read_maps(self.key, self.start, self.count)
        return self._maps[i]

