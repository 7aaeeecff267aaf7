"""A deterministic synthetic "shapes" data set, generated in pure NumPy.

Each image shows one object (a circle, square, triangle, cross or ring) of random size,
position, rotation and colour on a textured background (smooth low-frequency colour noise)
with a few low-contrast distractor lines and dots. The class depends only on the object's
*shape*: colour, size and position are drawn independently of the label, and the distractors
are drawn for every class alike. Because the generator also returns the object's pixel mask,
the data set gives explanation methods a ground truth to be scored against ("does the
saliency fall on the object?").

No framework is imported here, so the data can be generated without PyTorch or TensorFlow.

Example:
    >>> from xai_toolbox.demo.data import CLASS_NAMES, make_shapes
    >>> data = make_shapes(8, seed=0)
    >>> data.images.shape, data.images.dtype, data.labels.shape, data.masks.shape
    ((8, 64, 64, 3), dtype('float32'), (8,), (8, 64, 64))
    >>> data.class_names == CLASS_NAMES
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xai_toolbox.errors import ParameterError

__all__ = ["CLASS_NAMES", "MIN_IMAGE_SIZE", "ShapesData", "make_shapes", "to_channels_first"]

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
"""The shape classes; ``labels`` index into this tuple."""

MIN_IMAGE_SIZE = 32
"""Below this the smallest objects are only a few pixels wide and the shapes blur together."""

# Object size (diameter / side / arm span) as a fraction of the image side: 12-28 px at 64 px.
_OBJECT_SIZE_RANGE = (12 / 64, 28 / 64)
# Farthest object pixel from the object's centre, in units of the object size; the square's
# corner (1/sqrt(2)) is the worst case over all classes and rotations. Used to keep every
# object fully inside the image.
_MAX_EXTENT = 0.5 * np.sqrt(2.0)
_RING_INNER_RATIO = 0.55  # hole radius / outer radius: a hole of >= 6 px at the smallest size
_CROSS_ARM_RATIO = 1 / 3  # arm width / arm span
_NOISE_GRID = 5  # control points per side of the low-frequency background noise
_BACKGROUND_AMPLITUDE = 0.12  # +- amplitude of the background texture around its tint
_PIXEL_NOISE_STD = 0.03
_N_LINES, _N_DOTS = 2, 3  # distractors per image


@dataclass(frozen=True)
class ShapesData:
    """A batch of synthetic shape images with labels and ground-truth object masks.

    Attributes:
        images: ``float32`` array ``(n, size, size, 3)`` in ``[0, 1]``, channels last.
        labels: ``int64`` array ``(n,)`` of indices into ``class_names``.
        masks: ``bool`` array ``(n, size, size)``, ``True`` on the object's pixels only
            (background and distractors are ``False``).
        class_names: the class names, ``class_names[labels[i]]`` is image ``i``'s shape.

    Example:
        >>> data = make_shapes(4, seed=1)
        >>> data.class_names[int(data.labels[0])] in CLASS_NAMES
        True
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def make_shapes(n: int, seed: int, size: int = 64) -> ShapesData:
    """Generate ``n`` shape images, reproducibly from ``seed``.

    The same ``(n, seed, size)`` always gives identical arrays (bit for bit, on any platform
    NumPy's ``PCG64`` generator runs on); a different seed gives different images. Classes
    are balanced: every class occurs ``n // 5`` or ``n // 5 + 1`` times, in random order.
    Changing ``n`` changes every image, not just the tail, because each random quantity is
    drawn for the whole batch at once.

    Args:
        n: number of images (``>= 0``).
        seed: seed of the random generator.
        size: side of the square images in pixels (``>= 32``); object sizes scale with it.

    Returns:
        A :class:`ShapesData` with ``images`` ``(n, size, size, 3)`` float32 in ``[0, 1]``,
        ``labels`` ``(n,)`` int64, ``masks`` ``(n, size, size)`` bool.

    Raises:
        ParameterError: ``n`` is negative or ``size`` is below 32.

    Example:
        >>> a, b = make_shapes(16, seed=3), make_shapes(16, seed=3)
        >>> bool((a.images == b.images).all() and (a.labels == b.labels).all())
        True
        >>> bool((a.images == make_shapes(16, seed=4).images).all())
        False
        >>> bool(a.masks.reshape(16, -1).any(axis=1).all())  # every image has an object
        True
    """
    n, size = int(n), int(size)
    if n < 0:
        raise ParameterError(f"n must be >= 0, got {n}")
    if size < MIN_IMAGE_SIZE:
        raise ParameterError(f"size must be >= {MIN_IMAGE_SIZE}, got {size}")

    rng = np.random.default_rng(seed)
    n_classes = len(CLASS_NAMES)
    # Balanced labels, so even small samples contain every class.
    labels = rng.permutation(np.arange(n) % n_classes).astype(np.int64)

    tint = rng.uniform(0.15, 0.85, size=(n, 3)).astype(np.float32)
    # Shift every channel by 0.35-0.65 (wrapping around 1) from the background tint: each
    # channel then differs by >= 0.35, so the object always stands out, whatever its hue.
    colour = np.mod(tint + rng.uniform(0.35, 0.65, size=(n, 3)), 1.0).astype(np.float32)

    images = _background(rng, tint, size)
    _draw_distractors(rng, images, tint, colour)
    masks = _object_masks(rng, labels, size)
    np.copyto(
        images, np.broadcast_to(colour[:, None, None, :], images.shape), where=masks[..., None]
    )
    images += _PIXEL_NOISE_STD * rng.standard_normal(size=images.shape, dtype=np.float32)
    np.clip(images, 0.0, 1.0, out=images)
    return ShapesData(
        images=images.astype(np.float32, copy=False),
        labels=labels,
        masks=masks,
        class_names=CLASS_NAMES,
    )


def to_channels_first(images: np.ndarray) -> np.ndarray:
    """Turn ``(n, h, w, c)`` images into the ``(n, c, h, w)`` layout PyTorch models take.

    Returns a contiguous copy, so the result can go straight into ``torch.from_numpy``.

    Example:
        >>> to_channels_first(make_shapes(2, seed=0).images).shape
        (2, 3, 64, 64)
    """
    if images.ndim != 4:
        raise ParameterError(f"expected a 4-D (n, h, w, c) array, got shape {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def _background(rng: np.random.Generator, tint: np.ndarray, size: int) -> np.ndarray:
    """Smooth random colour texture around each image's tint, ``(n, size, size, 3)``.

    Random values on a coarse grid are bilinearly upsampled with one interpolation matrix,
    which keeps the whole batch a pair of matrix products instead of a per-image loop.
    """
    n = tint.shape[0]
    coarse = rng.uniform(-1.0, 1.0, size=(n, 3, _NOISE_GRID, _NOISE_GRID)).astype(np.float32)
    interp = _bilinear_matrix(size, _NOISE_GRID)
    smooth = interp @ coarse @ interp.T  # (n, 3, size, size), batched matrix products
    smooth *= _BACKGROUND_AMPLITUDE
    smooth += tint[:, :, None, None]
    return np.ascontiguousarray(smooth.transpose(0, 2, 3, 1))


def _bilinear_matrix(size: int, grid: int) -> np.ndarray:
    """``(size, grid)`` matrix mapping ``grid`` control values to ``size`` linearly interpolated ones."""
    pos = np.linspace(0.0, grid - 1, size)
    left = np.minimum(np.floor(pos).astype(int), grid - 2)
    frac = (pos - left).astype(np.float32)
    matrix = np.zeros((size, grid), dtype=np.float32)
    rows = np.arange(size)
    matrix[rows, left] = 1.0 - frac
    matrix[rows, left + 1] = frac
    return matrix


def _draw_distractors(
    rng: np.random.Generator, images: np.ndarray, tint: np.ndarray, colour: np.ndarray
) -> None:
    """Paint thin lines and small dots, in place, at 20-45 % of the object's contrast.

    They make "any pixel that differs from the background" an insufficient cue, so a model
    must look at the object's outline; they are not part of the ground-truth mask.
    """
    n, size = images.shape[0], images.shape[1]
    ys, xs = _pixel_grid(size)

    # Lines: pixels within half a pixel of a random segment.
    start = rng.uniform(0, size, size=(n, _N_LINES, 2)).astype(np.float32)[..., None, None]
    end = rng.uniform(0, size, size=(n, _N_LINES, 2)).astype(np.float32)[..., None, None]
    seg_x, seg_y = end[:, :, 0] - start[:, :, 0], end[:, :, 1] - start[:, :, 1]
    rel_x, rel_y = xs - start[:, :, 0], ys - start[:, :, 1]
    # Position of the closest point along the segment, clamped to its end points.
    t = (rel_x * seg_x + rel_y * seg_y) / np.maximum(seg_x**2 + seg_y**2, 1e-6)
    np.clip(t, 0.0, 1.0, out=t)
    lines = ((rel_x - t * seg_x) ** 2 + (rel_y - t * seg_y) ** 2 <= 0.25).any(axis=1)

    # Dots: discs of radius 1-2.5 px, well below the smallest object (6 px radius at 64 px).
    centres = rng.uniform(0, size, size=(n, _N_DOTS, 2)).astype(np.float32)
    radii = rng.uniform(1.0, 2.5, size=(n, _N_DOTS)).astype(np.float32)
    dots = (
        (xs - centres[..., 0, None, None]) ** 2 + (ys - centres[..., 1, None, None]) ** 2
        <= radii[..., None, None] ** 2
    ).any(axis=1)

    alpha = rng.uniform(0.2, 0.45, size=(n, 1)).astype(np.float32)
    faint = (tint + alpha * (colour - tint))[:, None, None, :]
    np.copyto(images, np.broadcast_to(faint, images.shape), where=(lines | dots)[..., None])


def _object_masks(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """Boolean ``(n, size, size)`` masks of each image's object, of shape ``labels[i]``."""
    n = labels.shape[0]
    lo, hi = _OBJECT_SIZE_RANGE
    extent = rng.uniform(lo * size, hi * size, size=n).astype(np.float32)
    # Keep a one-pixel margin so the object is fully inside the image for every rotation.
    margin = _MAX_EXTENT * extent + 1.0
    centre = margin[:, None] + rng.uniform(0, 1, size=(n, 2)) * (size - 1 - 2 * margin[:, None])
    angle = rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)

    ys, xs = _pixel_grid(size)
    dx = xs - centre[:, 0, None, None].astype(np.float32)
    dy = ys - centre[:, 1, None, None].astype(np.float32)
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    # Object-frame coordinates (rotated by -angle), so each shape is drawn axis-aligned.
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    half = (extent / 2)[:, None, None]

    masks = np.zeros((n, size, size), dtype=bool)
    for label, name in enumerate(CLASS_NAMES):
        idx = labels == label
        masks[idx] = _SHAPE_FUNCS[name](u[idx], v[idx], half[idx])
    return masks


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates of the pixel centres, broadcastable to ``(size, size)``."""
    coords = np.arange(size, dtype=np.float32)
    return coords[:, None], coords[None, :]


def _circle(u: np.ndarray, v: np.ndarray, half: np.ndarray) -> np.ndarray:
    return u**2 + v**2 <= half**2


def _ring(u: np.ndarray, v: np.ndarray, half: np.ndarray) -> np.ndarray:
    r2 = u**2 + v**2
    return (r2 <= half**2) & (r2 >= (_RING_INNER_RATIO * half) ** 2)


def _square(u: np.ndarray, v: np.ndarray, half: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= half


def _triangle(u: np.ndarray, v: np.ndarray, half: np.ndarray) -> np.ndarray:
    # Equilateral triangle of side 2*half centred on its centroid: inside all three edges'
    # half-planes, whose outward normals are 120 degrees apart at distance = the inradius.
    inradius = half / np.sqrt(3.0)
    inside = np.ones(u.shape, dtype=bool)
    for normal in np.pi / 2 + np.array([0.0, 2.0, 4.0], dtype=np.float32) * np.pi / 3:
        inside &= u * np.cos(normal) + v * np.sin(normal) <= inradius
    return inside


def _cross(u: np.ndarray, v: np.ndarray, half: np.ndarray) -> np.ndarray:
    arm = _CROSS_ARM_RATIO * half
    au, av = np.abs(u), np.abs(v)
    return ((au <= arm) & (av <= half)) | ((av <= arm) & (au <= half))


_SHAPE_FUNCS = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
}
