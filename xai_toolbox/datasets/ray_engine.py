"""The ``ray`` engine: groups explained by a pool of Ray actors through Ray Data.

Each actor builds the model once (from a file or ``module:factory`` string, or a picklable
factory) and runs groups with the same :class:`~xai_toolbox.datasets.work.Processor` as the
local engine, so results are the same: a group is a fixed range of positions and seeds derive
from image ids, whatever actor runs it. The driver (this process) plans, and writes what comes
back to the store: the cluster needs no shared file system for the results.

* Addressable sources (folders, arrays, ``.npy``, indexable datasets) are read by the actors:
  the driver sends positions only, all pending groups in one Ray Dataset, one actor pool.
* Streams (generators, ``DataLoader``, ``tf.data``, Ray Datasets) are read by the driver, in
  order, and sent in windows of ``window`` groups; each window is one Ray Dataset with its own
  actor pool (the model is built once per actor and window).

Ray is started here when no cluster is initialised and no ``address`` is given, and shut down
at the end; a cluster given by ``address`` (or initialised by the caller) is only used.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..errors import XaiToolboxError
from .plan import ModelSpec, Plan
from .sources import Source
from .work import GroupResult, GroupTask, Processor

__all__ = ["run_ray"]


class _Worker:
    """A Ray Data actor: builds the model once, then runs one group per call."""

    def __init__(self, plan: Plan, spec: ModelSpec, source: Source | None) -> None:
        self.processor = Processor(plan, spec.build(), source)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        out = [pickle.dumps(self.processor.run(pickle.loads(task))) for task in batch["task"]]
        return {"result": np.array(out, dtype=object)}


def run_ray(
    plan: Plan,
    spec: ModelSpec,
    source: Source,
    tasks: Iterator[GroupTask],
    *,
    workers: int,
    gpus: float,
    cpus: float,
    address: str | None,
    init: dict[str, Any],
    window: int,
) -> Iterator[GroupResult]:
    """Results of ``tasks`` as the actors finish them (in any order)."""
    import ray

    started = _connect(ray, address, init)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        if source.addressable:
            windows: Iterator[list[GroupTask]] = iter([list(tasks)])
        else:
            windows = iter(lambda: list(itertools.islice(tasks, window)), [])
        for chunk in windows:
            if chunk:
                yield from _execute(ray, chunk, plan, spec, source if source.addressable else None,
                                    workers=workers, gpus=gpus, cpus=cpus)
    finally:
        if started:
            ray.shutdown()


def _connect(ray: Any, address: str | None, init: dict[str, Any]) -> bool:
    """Connect to (or start) Ray unless it is initialised; whether this call started it."""
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, **{"logging_level": "warning", **init})
    return True


def _execute(
    ray: Any, chunk: list[GroupTask], plan: Plan, spec: ModelSpec, source: Source | None, *,
    workers: int, gpus: float, cpus: float,
) -> Iterator[GroupResult]:
    items = [{"task": pickle.dumps(task)} for task in chunk]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    dataset = dataset.map_batches(
        _Worker,
        fn_constructor_kwargs={"plan": plan, "spec": spec, "source": source},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(workers, len(items))),
        num_gpus=gpus,
        num_cpus=cpus,
    )
    try:
        for row in dataset.iter_rows():
            yield pickle.loads(row["result"])
    except Exception as exc:
        cause = _toolbox_error(exc)
        if cause is not None:
            raise cause from exc
        raise


def _toolbox_error(exc: BaseException) -> XaiToolboxError | None:
    """The toolbox error an actor raised, if that is what ``exc`` wraps."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, XaiToolboxError):
            return current
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None
