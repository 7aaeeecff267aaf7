"""The results of a dataset run on disk, in formats other tools read.

Layout of a store folder::

    run.json                       what the store holds: the data, model and inputs it is bound
                                   to, every method and metric configuration, a log of the runs
    maps/<method>-<hash>.zarr      one Zarr array (N, H, W) per method configuration, one chunk
                                   per group of images (float32, or float16 on request); rows of
                                   images that failed are NaN
    records/part-*.parquet         the per-image records (one Parquet dataset: read the folder)

Records are "tidy": one row per image and method (``metric`` null: the explanation) and per
image, method and metric (``score``). Columns: ``image_id, position, label, path, prediction,
target, method, method_hash, metric, metric_hash, score, higher_is_better, seed, time_s,
error``.

Commits are atomic. A group's maps are written first (Zarr writes each chunk to a temporary
file and renames it), then its records, buffered and written as a new Parquet file under a
temporary name and renamed. The records are the commit: a group counts as done only once its
records are in a part file, so a run killed at any point leaves either a committed group or
nothing of it that a resumed run would read. One writer at a time holds ``.lock``.

Example:
    >>> import pandas as pd
    >>> pd.read_parquet("run-dir/records")                    # any Parquet reader
    >>> zarr.open_array("run-dir/maps/rise-3f2a9c0d1e.zarr")  # any Zarr reader
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import XaiToolboxError

__all__ = ["FORMAT", "RECORD_COLUMNS", "ResultStore", "StoreError", "StoreIndex", "needs_extra"]

FORMAT = "xai-toolbox-dataset/1"

RECORD_COLUMNS = (
    "image_id", "position", "label", "path", "prediction", "target", "method", "method_hash",
    "metric", "metric_hash", "score", "higher_is_better", "seed", "time_s", "error",
)


class StoreError(XaiToolboxError):
    """The store cannot be used: bound to other data or another model, locked by another run,
    or unreadable."""


def needs_extra() -> None:
    """Raise an ``ImportError`` naming the extra when Zarr or PyArrow is missing."""
    missing = []
    for module in ("zarr", "pyarrow"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(
            f"dataset runs store their results with {' and '.join(missing)}: "
            "pip install 'xai-toolbox[datasets]'"
        )


def _schema() -> Any:
    import pyarrow as pa

    string, int64, float64 = pa.string(), pa.int64(), pa.float64()
    types = {
        "image_id": string, "position": int64, "label": int64, "path": string, "prediction": int64,
        "target": int64, "method": string, "method_hash": string, "metric": string,
        "metric_hash": string, "score": float64, "higher_is_better": pa.bool_(), "seed": int64,
        "time_s": float64, "error": string,
    }
    return pa.schema([(name, types[name]) for name in RECORD_COLUMNS])


@dataclass
class StoreIndex:
    """What the committed records say is done.

    Attributes:
        ids: ``{position: image_id}`` of every image with a record.
        done: ``{(method_hash, metric_hash or "")): positions}`` with a record.
        failed: ``{method_hash: {position: reason}}`` of explanations that failed.
    """

    ids: dict[int, str] = field(default_factory=dict)
    done: dict[tuple[str, str], set[int]] = field(default_factory=lambda: defaultdict(set))
    failed: dict[str, dict[int, str]] = field(default_factory=lambda: defaultdict(dict))


class ResultStore:
    """A store folder (see the module docs); :meth:`writer` for a run that writes to it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._buffer: list[dict[str, Any]] = []
        self._lock: Any = None
        self._arrays: dict[str, Any] = {}
        self._last_flush = time.monotonic()

    # -- opening -----------------------------------------------------------------------------------
    @property
    def records_dir(self) -> Path:
        return self.path / "records"

    @property
    def maps_dir(self) -> Path:
        return self.path / "maps"

    def exists(self) -> bool:
        return (self.path / "run.json").is_file()

    def info(self) -> dict[str, Any]:
        """The contents of ``run.json``."""
        try:
            return json.loads((self.path / "run.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{str(self.path)!r} is not a dataset results folder (no run.json)") from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {str(self.path / 'run.json')!r}: {exc}") from exc

    def acquire(self) -> None:
        """Take the writer's lock (released by :meth:`release`, or by the OS if the process dies)."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        self.records_dir.mkdir(exist_ok=True)
        self.maps_dir.mkdir(exist_ok=True)
        handle = (self.path / ".lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise StoreError(f"another run is writing to {str(self.path)!r}; wait for it or use another folder") from None
        self._lock = handle

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def bind(self, binding: Mapping[str, Any], components: Mapping[str, Any], class_names: list[str] | None) -> None:
        """Record what the store holds; a store made for other data, another model or other
        inputs is refused (its positions and maps would not mean the same)."""
        binding = json.loads(json.dumps(binding))
        if self.exists():
            info = self.check_binding(binding)
        else:
            info = {"format": FORMAT, "binding": binding, "components": {}, "class_names": class_names, "runs": []}
        info["components"].update(json.loads(json.dumps(components)))
        self._write_info(info)

    def check_binding(self, binding: Mapping[str, Any]) -> dict[str, Any]:
        """The store's ``run.json``, if it was made for ``binding`` (else a :class:`StoreError`
        naming what differs)."""
        binding = json.loads(json.dumps(binding))
        info = self.info()
        if info.get("format") != FORMAT:
            raise StoreError(f"{str(self.path)!r} holds results of format {info.get('format')!r}, not {FORMAT!r}")
        old = info.get("binding", {})
        differs = sorted(k for k in set(old) | set(binding) if old.get(k) != binding.get(k))
        if differs:
            what = "; ".join(f"{k}: stored {old.get(k)!r}, now {binding.get(k)!r}" for k in differs)
            raise StoreError(f"{str(self.path)!r} holds results of another run setup ({what}); write to a new folder")
        return info

    def log_run(self, entry: Mapping[str, Any]) -> None:
        """Add or update (by ``entry["id"]``) a run in ``run.json``'s log."""
        info = self.info()
        runs = [r for r in info.get("runs", []) if r.get("id") != entry["id"]]
        info["runs"] = [*runs, json.loads(json.dumps(entry))]
        self._write_info(info)

    def _write_info(self, info: Mapping[str, Any]) -> None:
        _atomic_write(self.path / "run.json", (json.dumps(info, indent=2) + "\n").encode())

    # -- what is done ------------------------------------------------------------------------------
    def index(self) -> StoreIndex:
        """What the committed records say is done (read once when a run starts)."""
        table = self.records(["position", "image_id", "method_hash", "metric_hash", "error"])
        index = StoreIndex()
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
        for position, image_id, method, metric, error in zip(*columns.values(), strict=True):
            index.ids[position] = image_id
            index.done[(method, metric or "")].add(position)
            if metric is None and error is not None:
                index.failed[method][position] = error
        return index

    def records(self, columns: Iterable[str] | None = None) -> Any:
        """The committed records as a ``pyarrow.Table`` (``.to_pandas()`` for a DataFrame)."""
        import pyarrow.parquet as pq

        schema = _schema()
        names = list(columns) if columns is not None else list(RECORD_COLUMNS)
        parts = sorted(self.records_dir.glob("part-*.parquet")) if self.records_dir.is_dir() else []
        if not parts:
            return schema.empty_table().select(names)
        try:
            return pq.read_table([str(p) for p in parts], columns=names, schema=schema)
        except TypeError:  # pyarrow versions that take one path or a list only through a dataset
            import pyarrow.dataset as ds

            return ds.dataset([str(p) for p in parts], schema=schema, format="parquet").to_table(columns=names)

    # -- writing -----------------------------------------------------------------------------------
    def write_maps(
        self, key: str, start: int, block: np.ndarray, *, length: int | None, chunk: int, dtype: str,
        attrs: Mapping[str, Any],
    ) -> None:
        """Write the maps of positions ``start .. start + len(block) - 1`` of method ``key``."""
        array = self._array(key, block.shape[1:], length or start + len(block), chunk, dtype, attrs)
        end = start + len(block)
        if end > array.shape[0]:  # a stream of unknown length grows its arrays
            array.resize((end, *array.shape[1:]))
        if tuple(array.shape[1:]) != tuple(block.shape[1:]):
            raise StoreError(f"maps of {key} are {tuple(block.shape[1:])}; the store's are {tuple(array.shape[1:])}")
        array[start:end] = block.astype(array.dtype)

    def read_maps(self, key: str, start: int, count: int) -> np.ndarray:
        """Stored maps of method ``key`` at positions ``start .. start + count - 1`` (float32)."""
        array = self.maps_array(key)
        return np.asarray(array[start : start + count], dtype=np.float32)

    def maps_array(self, key: str) -> Any:
        """The Zarr array of method ``key`` (opened read-only)."""
        import zarr

        path = self.maps_dir / f"{key}.zarr"
        if not path.exists():
            raise StoreError(f"no maps of {key!r} in {str(self.path)!r}")
        return zarr.open_array(str(path), mode="r")

    def maps_dtype(self, key: str) -> str | None:
        path = self.maps_dir / f"{key}.zarr"
        return str(self.maps_array(key).dtype) if path.exists() else None

    def _array(self, key: str, shape: tuple[int, ...], length: int, chunk: int, dtype: str, attrs: Mapping[str, Any]) -> Any:
        array = self._arrays.get(key)
        if array is not None:
            return array
        import zarr

        path = self.maps_dir / f"{key}.zarr"
        if path.exists():
            array = zarr.open_array(str(path), mode="r+")
        else:
            array = zarr.create_array(
                str(path), shape=(length, *shape), chunks=(chunk, *shape), dtype=dtype,
                fill_value=np.nan, zarr_format=2,
            )
            array.attrs.update(json.loads(json.dumps(attrs)))
        self._arrays[key] = array
        return array

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        """Buffer records of groups whose maps are written (committed by :meth:`flush`)."""
        self._buffer.extend(records)

    def flush_due(self, every: float) -> bool:
        return bool(self._buffer) and time.monotonic() - self._last_flush >= every

    def flush(self) -> None:
        """Commit the buffered records as one new Parquet part file (atomically)."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _schema()
        table = pa.Table.from_pylist([{k: r.get(k) for k in RECORD_COLUMNS} for r in self._buffer], schema=schema)
        name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = self.records_dir / f".{name}.tmp"
        pq.write_table(table, tmp)
        _fsync(tmp)
        os.replace(tmp, self.records_dir / name)
        _fsync(self.records_dir)
        self._buffer.clear()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
