"""The ``local`` engine: every group in this process, one after the other (nothing to install
or start). Memory holds one group of images and its maps at a time."""

from __future__ import annotations

from collections.abc import Iterator

from .plan import ModelSpec, Plan
from .sources import Source
from .work import GroupResult, GroupTask, Processor

__all__ = ["run_local"]


def run_local(plan: Plan, spec: ModelSpec, source: Source, tasks: Iterator[GroupTask]) -> Iterator[GroupResult]:
    """Results of ``tasks`` in order; the model is built (or loaded) once, before the first."""
    processor = Processor(plan, spec.build(), source if source.addressable else None)
    for task in tasks:
        yield processor.run(task)
