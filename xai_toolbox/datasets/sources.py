"""Where a dataset's images come from, read one image at a time and in a fixed order.

:func:`as_source` turns what the user has into a :class:`Source`:

* a folder of images (class sub-folders as labels, or a labels file) — :class:`ImageFolder`;
* a NumPy array or a ``.npy`` file (memory-mapped) — :class:`ArraySource`;
* anything indexable with a length: a PyTorch ``Dataset``, a list — :class:`MapSource`;
* anything iterable: a generator, a PyTorch ``DataLoader``, a ``tf.data.Dataset``, a Ray
  Dataset — :class:`StreamSource` (batches are split into images).

A source gives :class:`Sample` objects with an id (the file's path relative to the folder, else
the position as text, or an ``id`` the sample carries), a label where known, and the raw image —
or the reason it could not be read. Sources are duck-typed: no framework is imported here;
tensors are converted with :func:`xai_toolbox.backends.adapter.to_numpy`.

*Addressable* sources (folders, arrays, indexable datasets) can load any image by position, so
a resumed run reads only what is missing and Ray actors read their own images; the others are
read in order by the process that runs the engine.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..backends.adapter import to_numpy
from ..errors import InputError, ParameterError
from ..io import IMAGE_SUFFIXES, load_images

__all__ = [
    "ArraySource",
    "ImageFolder",
    "MapSource",
    "Sample",
    "Source",
    "StreamSource",
    "as_source",
]


@dataclass
class Sample:
    """One image of a dataset as read.

    Attributes:
        position: its index in the dataset's order (its row in the stored maps).
        id: its stable id (file path relative to the folder, or the position as text).
        label: its class, where known.
        image: the raw image (``None`` when it could not be read).
        error: why it could not be read.
        path: the file it came from, if any (the report shows it again).
    """

    position: int
    id: str
    label: int | None
    image: np.ndarray | None
    error: str | None = None
    path: str | None = None


class Source(ABC):
    """A dataset read in a fixed order (see the module docs)."""

    #: Whether raw images are ``(H, W, C)`` pictures in ``[0, 1]`` read from files.
    files: ClassVar[bool] = False
    #: Whether any image can be loaded by position (:meth:`load`, :meth:`ids`).
    addressable: ClassVar[bool] = False
    class_names: list[str] | None = None

    @property
    @abstractmethod
    def length(self) -> int | None:
        """The number of images, where known in advance."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the data is, for the store's record of the run (compared on resume)."""

    def samples(self) -> Iterator[Sample]:
        """Every image, in order."""
        assert self.length is not None
        step = 64
        for start in range(0, self.length, step):
            yield from self.load(range(start, min(start + step, self.length)))

    def load(self, positions: Sequence[int]) -> list[Sample]:
        """The images at ``positions`` (addressable sources)."""
        raise NotImplementedError

    def ids(self, positions: Sequence[int]) -> list[str]:
        """The ids of the images at ``positions``, without reading them (addressable sources)."""
        return [str(p) for p in positions]


# -- image folders ------------------------------------------------------------------------------
class ImageFolder(Source):
    """Image files under ``root``: directly in it (unlabelled unless a labels file is given), or
    in class sub-folders (any depth below them), the classes being the sorted sub-folder names.

    Args:
        root: the folder.
        labels: a labels file, one line per image: ``relative/path<sep>label`` (sep: comma,
            tab or spaces; the base name alone also matches; the label an index or a class
            name), or one label per line in the images' sorted order (as ImageNet's
            validation ground truth).
        size: resize every image to ``(H, W)`` (or one int); ``None`` keeps the files' size.
        channels: 3 (RGB) or 1 (grayscale).

    Example:
        >>> source = ImageFolder("val/", size=224)
        >>> source.length, source.class_names[:2], source.ids([0])
        (50000, ['n01440764', 'n01443537'], ['n01440764/ILSVRC2012_val_00000293.JPEG'])
    """

    files = True
    addressable = True

    def __init__(
        self,
        root: str | Path,
        *,
        labels: str | Path | None = None,
        size: int | Sequence[int] | None = None,
        channels: int = 3,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"image folder not found: {str(root)!r}")
        if channels not in (1, 3):
            raise ParameterError(f"channels must be 1 or 3, got {channels!r}")
        self.size = _size(size)
        self.channels = channels
        self.labels_file = None if labels is None else str(labels)
        self.paths = _image_files(self.root)
        if not self.paths:
            raise InputError(f"folder {str(root)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        self.rel = [p.relative_to(self.root).as_posix() for p in self.paths]
        self.labels, self.class_names = self._labels(labels)

    @property
    def length(self) -> int:
        return len(self.paths)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "image folder", "root": str(self.root.resolve()), "images": self.length,
            "labels": self.labels_file or ("class sub-folders" if self.class_names else None),
            "size": list(self.size) if self.size else None, "channels": self.channels,
        }

    def ids(self, positions: Sequence[int]) -> list[str]:
        return [self.rel[p] for p in positions]

    def load(self, positions: Sequence[int]) -> list[Sample]:
        out = []
        for p in positions:
            label = None if self.labels is None else self.labels[p]
            path = str(self.paths[p])
            try:
                image = load_images([self.paths[p]], size=self.size, channels=self.channels).images[0]
            except Exception as exc:  # a corrupt file is recorded as failed; the run goes on
                out.append(Sample(p, self.rel[p], label, None, _describe(exc), path))
                continue
            out.append(Sample(p, self.rel[p], label, image, None, path))
        return out

    def _labels(self, labels: str | Path | None) -> tuple[list[int | None] | None, list[str] | None]:
        if labels is not None:
            return _read_labels_file(Path(labels), self.rel)
        tops = [r.split("/", 1)[0] if "/" in r else None for r in self.rel]
        if all(t is None for t in tops):
            return None, None
        if any(t is None for t in tops):
            raise InputError(
                f"folder {str(self.root)!r} mixes images at its top level with class sub-folders; "
                "put every image in a class folder, or give a labels file"
            )
        names = sorted(set(tops))  # type: ignore[arg-type]
        index = {n: i for i, n in enumerate(names)}
        return [index[t] for t in tops], names  # type: ignore[index]


def _image_files(root: Path) -> list[Path]:
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _read_labels_file(path: Path, rel: list[str]) -> tuple[list[int | None], list[str] | None]:
    if not path.is_file():
        raise InputError(f"labels file not found: {str(path)!r}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [line.replace(",", " ").replace("\t", " ").split() for line in lines]
    if rows and all(len(r) == 1 for r in rows):  # one label per line, in the images' order
        if len(rows) != len(rel):
            raise InputError(f"labels file {str(path)!r} has {len(rows)} lines for {len(rel)} images")
        return _label_values([r[0] for r in rows], str(path))
    # Lines naming no image (a CSV header, other files) are never looked up.
    by_name = {r[0]: r[-1] for r in rows if len(r) >= 2}
    found = [by_name.get(r, by_name.get(r.rsplit("/", 1)[-1])) for r in rel]
    missing = [r for r, f in zip(rel, found, strict=True) if f is None]
    if missing:
        raise InputError(f"labels file {str(path)!r} has no label for {len(missing)} image(s), e.g. {missing[0]!r}")
    return _label_values(found, str(path))  # type: ignore[arg-type]


def _label_values(values: list[str], where: str) -> tuple[list[int | None], list[str] | None]:
    if all(_is_int(v) for v in values):
        return [int(v) for v in values], None
    names = sorted(set(values))
    index = {n: i for i, n in enumerate(names)}
    return [index[v] for v in values], names


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    values = [size] if isinstance(size, int) else list(size)
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not all(isinstance(v, int | np.integer) and v >= 1 for v in values):
        raise ParameterError(f"size must be one positive int or (H, W), got {size!r}")
    return int(values[0]), int(values[1])


# -- arrays and indexable datasets -----------------------------------------------------------------
class ArraySource(Source):
    """Images as one array ``(N, ...)`` in the model's layout, or a ``.npy`` file of one
    (memory-mapped: only the images being explained are in memory).

    Args:
        images: the array, or the path of a ``.npy`` file.
        labels: ``(N,)`` class indices (an array or a ``.npy`` path), or ``None``.
        ids: one id per image (default: the position as text).

    Example:
        >>> ArraySource("val_images.npy", labels="val_labels.npy").length
        50000
    """

    addressable = True

    def __init__(self, images: Any, *, labels: Any = None, ids: Sequence[str] | None = None) -> None:
        self.file = str(images) if isinstance(images, str | Path) else None
        self.images = _array(images, "images")
        if self.images.ndim < 2:
            raise InputError(f"images must be an array (N, ...) of images, got shape {self.images.shape}")
        n = len(self.images)
        self.labels = None if labels is None else _array(labels, "labels").reshape(-1).astype(np.int64)
        if self.labels is not None and len(self.labels) != n:
            raise InputError(f"got {len(self.labels)} labels for {n} images")
        self.given_ids = None if ids is None else [str(i) for i in ids]
        if self.given_ids is not None and (len(self.given_ids) != n or len(set(self.given_ids)) != n):
            raise InputError(f"ids must be {n} distinct values, one per image")

    @property
    def length(self) -> int:
        return len(self.images)

    def describe(self) -> dict[str, Any]:
        return {"kind": "array", "file": self.file, "shape": list(self.images.shape), "dtype": str(self.images.dtype),
                "labels": self.labels is not None}

    def ids(self, positions: Sequence[int]) -> list[str]:
        return [self.given_ids[p] for p in positions] if self.given_ids else [str(p) for p in positions]

    def load(self, positions: Sequence[int]) -> list[Sample]:
        ids = self.ids(positions)
        return [
            Sample(p, i, None if self.labels is None else int(self.labels[p]), np.asarray(self.images[p]))
            for p, i in zip(positions, ids, strict=True)
        ]


def _array(value: Any, what: str) -> np.ndarray:
    if isinstance(value, str | Path):
        if not Path(value).is_file():
            raise InputError(f"{what} file not found: {str(value)!r}")
        try:
            return np.load(value, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {what} file {str(value)!r} as a .npy array: {exc}") from exc
    return np.asarray(to_numpy(value) if not isinstance(value, np.ndarray) else value)


class MapSource(Source):
    """Any indexable dataset with a length (a PyTorch ``Dataset``, a list): item ``i`` is an
    image, ``(image, label)``, ``(image, label, id)`` or a dict with ``image`` (and ``label``,
    ``id``); tensors are converted to NumPy. A read that raises is recorded as failed.

    Example:
        >>> MapSource(torchvision.datasets.ImageFolder("val/", transform=tf)).length
    """

    addressable = True

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    @property
    def length(self) -> int:
        return len(self.dataset)

    def describe(self) -> dict[str, Any]:
        return {"kind": "indexable dataset", "type": _type_name(self.dataset), "images": self.length}

    def load(self, positions: Sequence[int]) -> list[Sample]:
        out = []
        for p in positions:
            try:
                out.append(_sample(p, self.dataset[p]))
            except Exception as exc:
                out.append(Sample(p, str(p), None, None, _describe(exc)))
        return out


# -- streams -------------------------------------------------------------------------------------
class StreamSource(Source):
    """Any iterable, read once in order: a generator, a PyTorch ``DataLoader`` (unshuffled), a
    ``tf.data.Dataset``, a Ray Dataset, an iterator. Elements are as for :class:`MapSource`;
    an element whose image has 4 dimensions is a batch and is split into images.

    Example:
        >>> StreamSource(tf.data.Dataset.from_tensor_slices((x, y)).batch(32))
    """

    def __init__(self, data: Any, *, length: int | None = None) -> None:
        self.data = data
        self._length = length

    @property
    def length(self) -> int | None:
        return self._length

    def describe(self) -> dict[str, Any]:
        return {"kind": "stream", "type": _type_name(self.data), "images": self._length}

    def samples(self) -> Iterator[Sample]:
        position = 0
        for element in self._elements():
            for sample in _split(position, element):
                yield sample
                position += 1

    def _elements(self) -> Iterable[Any]:
        data = self.data
        if hasattr(data, "as_numpy_iterator"):  # tf.data.Dataset: NumPy elements, no tensors
            return data.as_numpy_iterator()
        if _type_name(data).startswith("ray.data"):
            return data.iter_rows()
        return data


def _split(position: int, element: Any) -> Iterator[Sample]:
    image, label, ident = _unpack(element)
    array = np.asarray(to_numpy(image) if not isinstance(image, np.ndarray) else image)
    if array.ndim < 4:
        yield _sample(position, (array, label, ident))
        return
    labels = None if label is None else np.asarray(to_numpy(label)).reshape(-1)
    idents = None if ident is None else list(np.asarray(ident).reshape(-1))
    for i in range(len(array)):
        row_label = None if labels is None else labels[i]
        row_id = None if idents is None else idents[i]
        yield _sample(position + i, (array[i], row_label, row_id))


def _sample(position: int, element: Any) -> Sample:
    image, label, ident = _unpack(element)
    array = image if isinstance(image, np.ndarray) else to_numpy(image)
    label_value = None if label is None else int(np.asarray(to_numpy(label)).reshape(()))
    text_id = str(position) if ident is None else _text(ident)
    return Sample(position, text_id, label_value, np.asarray(array))


def _unpack(element: Any) -> tuple[Any, Any, Any]:
    """``(image, label, id)`` of an element (the last two may be ``None``)."""
    if isinstance(element, Mapping):
        if "image" not in element:
            raise InputError(f"a dict sample needs an 'image' entry, got keys {sorted(element)}")
        return element["image"], element.get("label"), element.get("id")
    if isinstance(element, tuple | list) and not isinstance(element, np.ndarray):
        if len(element) not in (1, 2, 3):
            raise InputError(f"a sample must be image, (image, label) or (image, label, id); got {len(element)} items")
        padded = [*element, None, None]
        return padded[0], padded[1], padded[2]
    return element, None, None


def _text(value: Any) -> str:
    value = value.item() if isinstance(value, np.generic) else value
    return value.decode() if isinstance(value, bytes) else str(value)


def _type_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- choosing a source ---------------------------------------------------------------------------
def as_source(
    data: Any,
    *,
    labels: Any = None,
    ids: Sequence[str] | None = None,
    size: int | Sequence[int] | None = None,
    channels: int = 3,
) -> Source:
    """The :class:`Source` for ``data`` (see the module docs).

    Args:
        data: a folder, a ``.npy`` file, an array, an indexable dataset, an iterable, or a
            :class:`Source`.
        labels: a labels file (folders) or labels array / ``.npy`` (arrays).
        ids: ids of the images of an array.
        size, channels: how image files are read (folders only).

    Raises:
        InputError: a missing path or an unreadable file.
        ParameterError: options that do not apply to ``data`` (a shuffled ``DataLoader`` too:
            its order, and so the ids, change every run).
    """
    if isinstance(data, Source):
        _only(data, labels=labels, ids=ids, size=size)
        return data
    if isinstance(data, str | Path):
        path = Path(data)
        if path.is_dir():
            _only(data, ids=ids)
            return ImageFolder(path, labels=labels, size=size, channels=channels)
        if path.suffix.lower() == ".npy":
            _only(data, size=size)
            return ArraySource(path, labels=labels, ids=ids)
        raise InputError(f"{str(data)!r} is neither a folder of images nor a .npy file")
    if isinstance(data, np.ndarray):
        _only(data, size=size)
        return ArraySource(data, labels=labels, ids=ids)
    _only(data, labels=labels, ids=ids, size=size)
    if hasattr(data, "dataset") and hasattr(data, "batch_size") and hasattr(data, "__iter__"):
        if type(getattr(data, "sampler", None)).__name__ == "RandomSampler":
            raise ParameterError(
                "the DataLoader shuffles (shuffle=True): images would get other ids on every run, "
                "so results could not be resumed; use shuffle=False"
            )
        return StreamSource(data, length=_length_of(getattr(data, "dataset", None)))
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not hasattr(data, "as_numpy_iterator"):
        return MapSource(data)
    if hasattr(data, "__iter__") or hasattr(data, "as_numpy_iterator"):
        length = _length_of(data) if _type_name(data).startswith("ray.data") else None
        return StreamSource(data, length=length)
    raise ParameterError(
        f"cannot read images from a {_type_name(data)}: pass a folder, a .npy file, an array, a "
        "dataset with __getitem__ and __len__, or an iterable"
    )


def _length_of(obj: Any) -> int | None:
    try:
        if _type_name(obj).startswith("ray.data"):
            return int(obj.count())
        return len(obj)
    except Exception:
        return None


def _only(data: Any, **options: Any) -> None:
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise ParameterError(f"{', '.join(given)} do not apply to a {_type_name(data)} source")


def first_readable(samples: Iterator[Sample]) -> tuple[Sample | None, Iterator[Sample]]:
    """The first sample with an image, and an iterator over every sample (that one included)."""
    seen: list[Sample] = []
    for sample in samples:
        seen.append(sample)
        if sample.image is not None:
            return sample, itertools.chain(seen, samples)
    return None, iter(seen)
