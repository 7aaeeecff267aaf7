"""Whole datasets: explain and evaluate them with bounded memory, store the results on disk
(Zarr maps, Parquet records), resume after a crash, on one machine or a Ray cluster.

* :func:`explain_dataset` (also ``xt.explain_dataset``, and ``xai-toolbox run``) — the run;
* :func:`open_results` — what a run stored (records, scores, maps);
* :func:`write_dataset_report` (``xai-toolbox report``) — an HTML report of a store;
* :func:`as_source` and the source classes — what data can be read;
* :func:`derive_seed` — the per-image seed of a stochastic method or metric.

The modules: ``sources`` (reading), ``plan`` (configurations, hashes, seeds, the model),
``work`` (one group of images), ``store`` (the results on disk), ``local`` and
``ray_engine`` (the engines), ``runner`` (the run), ``report`` (the HTML report), ``cli``
(the command-line verbs). None imports a deep-learning framework; Zarr, PyArrow and Ray are
imported when used (extras ``datasets`` and ``ray``).

Example:
    >>> import xai_toolbox as xt
    >>> run = xt.explain_dataset("val/", "model.py:build", out="runs/val", size=224,
    ...                          methods=["gradcam", "rise"], metrics=["deletion"])
    >>> run.scores()
"""

from .plan import derive_seed
from .report import write_dataset_report
from .runner import DatasetResults, DatasetRun, explain_dataset, open_results
from .sources import ArraySource, ImageFolder, MapSource, Sample, Source, StreamSource, as_source
from .store import ResultStore, StoreError

__all__ = [
    "ArraySource",
    "DatasetResults",
    "DatasetRun",
    "ImageFolder",
    "MapSource",
    "ResultStore",
    "Sample",
    "Source",
    "StoreError",
    "StreamSource",
    "as_source",
    "derive_seed",
    "explain_dataset",
    "open_results",
    "write_dataset_report",
]
