"""Loading the user's model and images for the command line, and naming output files safely.

Models (see :func:`load_model`):

* PyTorch: a TorchScript archive (``torch.jit.load``), or ``package.module:factory`` /
  ``path/to/file.py:factory`` returning an ``nn.Module``, optionally with a state dict
  (``--weights model.pt``) read by ``torch.load(weights_only=True)``;
* Keras 3: a ``.keras`` file, read with ``keras.models.load_model(path, safe_mode=True)``, or a
  factory returning a ``keras.Model`` (optionally with ``--weights model.weights.h5``).

Formats that hold code which runs with your privileges (a TorchScript archive — its scripted
``forward`` can read and write files —, a whole pickled ``nn.Module``, a legacy ``.h5`` model, a
``.keras`` file with ``Lambda`` layers) are refused unless ``trust_model_code=True``. The safe
path needs no trust: a factory you name (your own code) and a state dict read with
``torch.load(weights_only=True)``, or a ``.keras`` file read in safe mode.

Images are PNG/JPEG/TIFF/... files read by Pillow as float32 ``(N, H, W, C)`` in ``[0, 1]``:
8- and 16-bit integers scaled by their range, float images taken as they are (values in
``[0, 1]`` required), transparency composited over white.

Every output file is written by :func:`write_output`: inside its folder only, never through a
symbolic link, atomically (a reader never sees a half-written file).

Example:
    >>> from xai_toolbox.io import load_images, load_model
    >>> loaded = load_model("resnet.ts")
    >>> batch = load_images(["cat.png", "photos/"], size=(224, 224))
    >>> batch.images.shape, batch.names
    ((3, 224, 224, 3), ['cat.png', 'dog.jpg', 'owl.jpg'])
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import re
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import adapt, framework_info, frameworks
from .errors import InputError, ModelLoadError, UnsupportedModelError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageBatch",
    "ImageLoadError",
    "LoadedModel",
    "ModelLoadError",
    "OutputWriteError",
    "check_output_name",
    "find_images",
    "image_sizes",
    "load_images",
    "load_model",
    "normalize",
    "npy_bytes",
    "output_path",
    "printable_name",
    "probe_images",
    "safe_stem",
    "to_model_layout",
    "unique_stems",
    "write_output",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
class ImageLoadError(InputError):
    """An image file is missing, unreadable or inconsistent with the others."""


# -- file names -----------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_stem(name: str, default: str = "image") -> str:
    """A file-name stem that is safe to create inside an output folder.

    Keeps the base name only (both ``/`` and ``\\`` separators), drops the extension,
    replaces every character outside ``[A-Za-z0-9._-]`` by ``_``, removes leading dots
    (no hidden files, no ``..``) and caps the length at 80 characters.

    Example:
        >>> safe_stem("../../x.png"), safe_stem("<img src=x>.png"), safe_stem("..")
        ('x', 'img_src_x', 'image')
    """
    base = re.split(r"[\\/]", str(name))[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    stem = _UNSAFE.sub("_", stem).strip("_").lstrip(".")
    stem = stem.strip("_")[:80]
    return stem or default


def unique_stems(names: Sequence[str]) -> list[str]:
    """:func:`safe_stem` of each name, made unique by suffixing ``_2``, ``_3``, ...

    Example:
        >>> unique_stems(["a/x.png", "b/x.png"])
        ['x', 'x_2']
    """
    seen: dict[str, int] = {}
    out = []
    for name in names:
        stem = safe_stem(name)
        key = stem.lower()  # case-insensitive file systems
        seen[key] = seen.get(key, 0) + 1
        out.append(stem if seen[key] == 1 else f"{stem}_{seen[key]}")
    return out


def output_path(folder: str | Path, *parts: str, suffix: str) -> Path:
    """``folder / "<part1>_<part2>...<suffix>"`` with every part sanitised by :func:`safe_stem`.

    The result is guaranteed to lie directly inside ``folder`` (checked after resolving), and
    not to be a symbolic link (see :func:`check_output_name`).

    Example:
        >>> output_path("out", "../../x.png", "gradcam", suffix=".npy")
        PosixPath('out/x_gradcam.npy')
    """
    folder = Path(folder)
    name = "_".join(safe_stem(p) for p in parts) + suffix
    path = check_output_name(folder, name)  # a planted link is named as such
    if path.resolve().parent != folder.resolve():  # defence in depth: never leave the folder
        raise InputError(f"refusing to write outside the output folder: {name!r}")
    return path


class OutputWriteError(InputError):
    """An output file cannot be written where asked (a symbolic link, outside its folder)."""


def check_output_name(folder: str | Path, name: str) -> Path:
    """``folder / name`` if an output may be written there: ``name`` is a plain file name and
    nothing there is a symbolic link (or a folder) that a write would go through.

    Raises:
        OutputWriteError: otherwise (checked again by :func:`write_output` when it writes).

    Example:
        >>> check_output_name("out", "report.html")
        PosixPath('out/report.html')
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise OutputWriteError(f"refusing to write {name!r}: not a plain file name")
    path = Path(folder) / name
    if path.is_symlink():
        raise OutputWriteError(
            f"refusing to write {str(path)!r}: it is a symbolic link (to {os.readlink(path)!r}), and "
            "nothing is ever written outside the output folder; remove the link or pick another --out"
        )
    if path.exists() and not path.is_file():
        raise OutputWriteError(f"refusing to write {str(path)!r}: it exists and is not a file")
    return path


def write_output(folder: str | Path, name: str, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``folder / name``, safely.

    * only there: ``name`` is a plain file name, and a symbolic link (or a folder) in its place
      is refused — a link planted in the output folder cannot redirect the write;
    * atomically: the bytes go to a new file in ``folder`` (created exclusively, so never
      through a link), which then replaces ``name``; a reader (or an interrupted run) never sees
      a half-written or empty file, and a hard link to another file is replaced, not written
      through.

    Raises:
        OutputWriteError: ``name`` is not a plain name, or is a symbolic link or a folder.
        OSError: the folder cannot be written.

    Example:
        >>> write_output("out", "scores.csv", "method,metric\\n")
        PosixPath('out/scores.csv')
    """
    path = check_output_name(folder, name)
    # Text from file names that are not UTF-8 (surrogate escapes) becomes "?", not an error.
    payload = data.encode("utf-8", "replace") if isinstance(data, str) else bytes(data)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    while True:
        temporary = Path(folder) / f".{name[:60]}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(temporary, flags, 0o666)  # the umask applies, as for any new file
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(temporary, path)  # replaces a link planted since the check, never follows it
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def printable_name(name: str) -> str:
    """A file name as text that can be shown and written as UTF-8: bytes that are not UTF-8
    (kept by Python as surrogate escapes) become U+FFFD.

    Example:
        >>> printable_name(os.fsdecode(b"caf\\xe9.png"))
        'caf\\ufffd.png'
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in the ``.npy`` format, as bytes (for :func:`write_output`)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# -- images ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageBatch:
    """Images read from files.

    Attributes:
        images: float32 ``(N, H, W, C)`` in ``[0, 1]`` (channels last, whatever the framework).
        names: the file names (base names), for captions.
        paths: the files read.
    """

    images: np.ndarray
    names: list[str]
    paths: list[Path]


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``paths``: files as given, folders expanded (sorted, not recursive).

    Raises:
        ImageLoadError: a path does not exist, or a folder holds no image file.

    Example:
        >>> find_images(["photos/"])
        [PosixPath('photos/cat.png'), PosixPath('photos/dog.jpg')]
    """
    if not paths:
        raise ImageLoadError("no images given: pass image files or a folder")
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ImageLoadError(
                    f"folder {str(path)!r} contains no image files ({', '.join(IMAGE_SUFFIXES)})"
                )
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise ImageLoadError(f"image file not found: {str(path)!r}")
    return found


def probe_images(paths: Sequence[str | Path]) -> list[Path]:
    """:func:`find_images`, then check that Pillow recognises each file (header only, cheap).

    Lets the command line reject a bad image before it loads a model.

    Raises:
        ImageLoadError: a path is missing or a file is not an image Pillow can read.
    """
    return [path for path, _ in image_sizes(paths)]


def image_sizes(paths: Sequence[str | Path]) -> list[tuple[Path, tuple[int, int]]]:
    """Each image file of :func:`find_images` with its ``(H, W)``, from its header (no decoding).

    Raises:
        ImageLoadError: a path is missing, a file is not an image Pillow can read, or its
            declared size is one Pillow refuses as a decompression bomb.

    Example:
        >>> image_sizes(["cat.png"])
        [(PosixPath('cat.png'), (480, 640))]
    """
    Image, unidentified = _pillow()
    found = []
    for path in find_images(paths):
        try:
            with Image.open(path) as img:
                found.append((path, (int(img.size[1]), int(img.size[0]))))
        except unidentified as exc:
            raise ImageLoadError(f"cannot read image {_shown(path)}: not an image file Pillow can read") from exc
        except (OSError, Image.DecompressionBombError) as exc:
            raise ImageLoadError(f"cannot read image {_shown(path)}: {exc}") from exc
    return found


def _pillow() -> tuple[Any, type[Exception]]:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - Pillow is in the plot/all extras
        raise ImageLoadError("reading images needs Pillow: pip install pillow") from exc
    return Image, UnidentifiedImageError


def _shown(path: Path) -> str:
    return repr(printable_name(str(path)))


def _parse_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    values = [size] if isinstance(size, int) else list(size)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in values):
        raise InputError(f"size must be one positive int or two (H W), got {size!r}")
    return int(values[0]), int(values[1])


def load_images(
    paths: Sequence[str | Path], size: int | Sequence[int] | None = None, channels: int = 3
) -> ImageBatch:
    """Read image files (or folders of them) into one float32 batch ``(N, H, W, C)`` in ``[0, 1]``.

    8-bit images are divided by 255 and 16-bit ones (``I;16`` PNGs and TIFFs) by 65 535;
    float images (``F`` TIFFs) are taken as they are and must lie in ``[0, 1]``. Transparent
    pixels (RGBA, LA, palette or colour-key transparency) are composited over white.

    Args:
        paths: image files and/or folders (see :func:`find_images`).
        size: ``(H, W)`` or one int for square images; images are resized bilinearly
            (with antialiasing). ``None``: keep the files' size, which must then agree.
        channels: 3 (RGB) or 1 (grayscale).

    Raises:
        ImageLoadError: a file is missing or not an image Pillow can read, a float image
            leaves ``[0, 1]``, sizes differ without ``size``, or the batch would not fit in
            the memory available.

    Example:
        >>> load_images(["cat.png"], size=64).images.shape
        (1, 64, 64, 3)
    """
    from ._budget import check_workload
    from .errors import WorkloadError

    Image, unidentified = _pillow()
    if channels not in (1, 3):
        raise ImageLoadError(f"channels must be 1 or 3, got {channels}")
    hw = _parse_size(size)
    sized = image_sizes(paths)
    files = [path for path, _ in sized]
    biggest = max(h * w for _, (h, w) in sized) if hw is None else hw[0] * hw[1]
    try:  # the batch and the float copies of one picture, before any is decoded
        check_workload("load_images", held_bytes=(len(files) + 2) * biggest * 4 * max(channels, 3),
                       cause=f"{len(files)} image(s) of up to {biggest:,} pixels")
    except WorkloadError as exc:
        raise ImageLoadError(str(exc)) from None
    arrays = []
    for path in files:
        try:
            with Image.open(path) as img:
                img.load()
                array = _picture(img, channels, hw, Image)
        except ImageLoadError as exc:
            raise ImageLoadError(f"cannot read image {_shown(path)}: {exc}") from None
        except (unidentified, OSError, ValueError, Image.DecompressionBombError) as exc:
            detail = "not an image file Pillow can read" if isinstance(exc, unidentified) else str(exc)
            raise ImageLoadError(f"cannot read image {_shown(path)}: {detail}") from exc
        arrays.append(array)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        listed = ", ".join(f"{p.name}: {a.shape[1]}x{a.shape[0]}" for p, a in list(zip(files, arrays, strict=True))[:4])
        raise ImageLoadError(
            f"images have different sizes ({printable_name(listed)}, ...); pass --size H W to resize them"
        )
    return ImageBatch(np.stack(arrays).astype(np.float32), [printable_name(p.name) for p in files], files)


def _picture(img: Any, channels: int, hw: tuple[int, int] | None, Image: Any) -> np.ndarray:  # noqa: N803
    """One opened image as float32 ``(H, W, channels)`` in ``[0, 1]`` (see :func:`load_images`)."""
    if img.mode.startswith("I") or img.mode == "F":
        return _high_depth(img, channels, hw, Image)
    if img.has_transparency_data:  # composite over white instead of dropping alpha
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    picture = img.convert("L" if channels == 1 else "RGB")
    if hw is not None and picture.size != (hw[1], hw[0]):
        picture = picture.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
    array = np.asarray(picture, dtype=np.float32) / 255.0
    return array[..., None] if array.ndim == 2 else array


def _high_depth(img: Any, channels: int, hw: tuple[int, int] | None, Image: Any) -> np.ndarray:  # noqa: N803
    """A 16/32-bit integer or float single-channel image, scaled to ``[0, 1]`` without going
    through 8 bits (Pillow's ``convert("L")`` would clip a 16-bit image at 255)."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
            low, high = np.nanmin(values), np.nanmax(values)
            raise ImageLoadError(
                f"a float image with values in [{low:g}, {high:g}] (or NaN); float images must lie in "
                "[0, 1] — rescale it, or save it as an 8- or 16-bit image"
            )
        scaled = values
    else:  # I;16 variants, and mode I as Pillow opens 16-bit PNGs
        if values.min() < 0 or values.max() > 65535:
            raise ImageLoadError(
                f"a 32-bit integer image with values in [{values.min():g}, {values.max():g}]; only "
                "8- and 16-bit integer images are read (save it as 16-bit, or as float in [0, 1])"
            )
        scaled = values / 65535.0
    plane = Image.fromarray(scaled.astype(np.float32), mode="F")
    if hw is not None and plane.size != (hw[1], hw[0]):
        plane = plane.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
    array = np.clip(np.asarray(plane, dtype=np.float32), 0.0, 1.0)[..., None]
    return array if channels == 1 else np.repeat(array, 3, axis=-1)


def normalize(
    images: np.ndarray, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> np.ndarray:
    """``(images - mean) / std`` per channel on ``(N, H, W, C)`` images (one value = every channel).

    Example:
        >>> normalize(x, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    """
    channels = images.shape[-1]

    def per_channel(values: Sequence[float] | None, default: float, what: str) -> np.ndarray:
        if values is None:
            return np.full(channels, default, dtype=np.float32)
        v = np.asarray(list(values), dtype=np.float32).reshape(-1)
        if v.size == 1:
            v = np.repeat(v, channels)
        if v.size != channels:
            raise InputError(f"--{what} has {v.size} values for images with {channels} channels")
        return v

    m = per_channel(mean, 0.0, "mean")
    s = per_channel(std, 1.0, "std")
    if not np.all(np.isfinite(m)):
        raise InputError(f"--mean values must be finite numbers, got {m.tolist()}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise InputError(f"--std values must be positive finite numbers, got {s.tolist()}")
    return ((images - m) / s).astype(np.float32)


def to_model_layout(images_nhwc: np.ndarray, framework: str) -> np.ndarray:
    """``(N, H, W, C)`` images in the layout of ``framework`` (channels first for PyTorch).

    Example:
        >>> to_model_layout(np.zeros((2, 8, 8, 3)), "torch").shape
        (2, 3, 8, 8)
    """
    if framework_info(framework).channel_axis == 1:
        return np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))
    return np.ascontiguousarray(images_nhwc)


# -- models ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedModel:
    """A model loaded for the command line.

    Attributes:
        model: the ``nn.Module`` / ``keras.Model`` (or a model of another registered framework).
        framework: its canonical framework name (``"torch"``, ``"tf"``, ...).
        source: how it was loaded, for the report's settings.
        input_size: ``(H, W)`` the model declares (Keras), else ``None``.
        channels: the number of input channels the model declares, else ``None``.
    """

    model: Any
    framework: str
    source: str
    input_size: tuple[int, int] | None = None
    channels: int | None = None


_FACTORY = re.compile(r"^(?P<module>.+):(?P<attr>[A-Za-z_][A-Za-z0-9_.]*)$")


def _split_factory(spec: str) -> tuple[str, str] | None:
    match = _FACTORY.match(spec)
    if match is None:
        return None
    module = match.group("module")
    if len(module) == 1 and module.isalpha():  # "C:..." is a Windows drive, not a module
        return None
    return module, match.group("attr")


def _import_factory(module_spec: str, attr: str) -> Any:
    if module_spec.endswith(".py"):
        path = Path(module_spec)
        if not path.is_file():
            raise ModelLoadError(f"model factory file not found: {module_spec!r}")
        name = f"_xai_toolbox_user_{safe_stem(path.stem)}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"cannot import {module_spec!r} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ModelLoadError(f"importing {module_spec!r} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(module_spec)
        except ImportError as exc:
            raise ModelLoadError(
                f"cannot import module {module_spec!r} ({exc}); use package.module:factory with the "
                "package on PYTHONPATH, or path/to/file.py:factory"
            ) from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelLoadError(f"{module_spec!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelLoadError(f"{module_spec}:{attr} is not callable; it must build and return the model")
    return target


def load_model(
    spec: str | Path,
    *,
    weights: str | Path | None = None,
    trust_model_code: bool = False,
) -> LoadedModel:
    """Load a PyTorch or Keras model from a file or a factory (see the module docs).

    Args:
        spec: a TorchScript file, a ``.keras`` file, ``package.module:factory`` or
            ``path/to/file.py:factory`` (the factory is called without arguments).
        weights: a PyTorch state dict (``.pt``/``.pth``, read with ``weights_only=True``) or a
            Keras ``.weights.h5`` file, loaded into the factory's model.
        trust_model_code: allow formats that may execute code while loading (pickled
            modules, legacy ``.h5`` models, ``.keras`` files with ``Lambda`` layers).

    Raises:
        ModelLoadError: the file is missing, of an unknown kind, unsafe without
            ``trust_model_code``, or does not hold a model.

    Example:
        >>> load_model("model.keras").framework
        'tf'
        >>> load_model("mypkg.models:build_resnet", weights="resnet.pth").framework
        'torch'
    """
    text = str(spec)
    path = Path(text)
    weights_path = Path(weights) if weights is not None else None
    factory = None if path.exists() else _split_factory(text)
    if factory is not None:
        return _from_factory(text, factory, weights_path, trust_model_code)
    if not path.exists():
        raise ModelLoadError(
            f"model file not found: {text!r} (expected {_file_kinds()}, or package.module:factory)"
        )
    if path.is_dir():
        raise ModelLoadError(
            f"{text!r} is a folder; TensorFlow SavedModel folders are not supported by Keras 3 — "
            "save the model as .keras (model.save('model.keras'))"
        )
    if weights_path is not None:
        raise ModelLoadError("--weights needs a factory (--model package.module:factory); a model file holds its weights")
    suffix = path.suffix.lower()
    readers = [f for f in frameworks() if suffix in f.model_files and f.load_model_file is not None]
    # Several frameworks read .keras files (Keras on each backend): the one configured here reads
    # it; when none can run, the first one's loader says what is missing.
    readers.sort(key=lambda f: not f.available())
    if readers:
        model, source = readers[0].load_model_file(path, trust_model_code)
        return _finish(model, readers[0].name, source)
    raise ModelLoadError(
        f"unknown model file type {suffix or '(none)'!r} for {text!r}; expected {_file_kinds()}, "
        "or package.module:factory"
    )


def _from_factory(text: str, factory: tuple[str, str], weights: Path | None, trust: bool) -> LoadedModel:
    build = _import_factory(*factory)
    try:
        model = build()
    except Exception as exc:
        raise ModelLoadError(f"calling {text} failed: {type(exc).__name__}: {exc}") from exc
    try:
        framework = framework_info(adapt(model).framework)
    except UnsupportedModelError as exc:
        raise ModelLoadError(f"the factory {text} returned a model no backend accepts: {exc}") from None
    if weights is not None:
        if not weights.is_file():
            raise ModelLoadError(f"weights file not found: {str(weights)!r}")
        if framework.load_weights is None:
            raise ModelLoadError(f"{framework.display_name} models take no --weights file")
        framework.load_weights(model, weights, trust)
    source = f"factory {text}" + (f" with weights {weights.name}" if weights else "")
    return _finish(model, framework.name, source)


def _file_kinds() -> str:
    kinds = [
        f"a {f.display_name} file ({', '.join(f.model_files)})" for f in frameworks() if f.model_files
    ]
    return " or ".join(kinds) or "a model file of a registered framework"


def _finish(model: Any, framework: str, source: str) -> LoadedModel:
    adapter = adapt(model, framework)
    _, channels = adapter.expected_input()
    return LoadedModel(model, framework, source, adapter.expected_image_size(), channels)
