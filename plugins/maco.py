"""MACO — MAgnitude Constrained Optimization (Fel, Boissin, Boutin, Picard, Novello, Colin,
Linsley, Rousseau, Cadène, Goetschalckx, Gardes, Serre — NeurIPS 2023; arXiv 2306.06805).

A feature visualisation that stays natural-looking: the image is parametrised in the Fourier
domain, its magnitude spectrum fixed to that of natural images and only its phase optimised,

    φ* = argmax_φ  E_crops[ objective( crop( F⁻¹(r · e^{iφ}) ) ) ],

and the input gradients accumulated during the optimisation give a transparency map of where
the objective looked. Everything here — the inverse Fourier transform (as matrix products),
the crops (as gathers), the noise, the Adam optimiser — is written once in EagerPy with NumPy
draws, so PyTorch and Keras models follow the same trajectory.

The magnitude spectrum ships with the package (``maco_spectrum.npy``, made by
``scripts/make_maco_spectrum.py`` from scikit-learn's two sample photographs).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.plugins.opticam import adam_step

SPECTRUM_PATH = Path(__file__).with_name("maco_spectrum.npy")

#: The colour recorrelation of MACO (and Lucid): the square root of the colour correlation of
#: natural images, column-normalised and transposed; ``rgb = decorrelated @ COLOR_CORRELATION``.
COLOR_CORRELATION = np.array(
    [[0.56282854, 0.58447580, 0.58447580], [0.19482528, 0.0, -0.19482528], [0.04329450, -0.10823626, 0.06494176]],
    dtype=np.float32,
)

_STD_EPS = 1e-5  # Xplique's epsilon in both standardisations
_CENTRE_STD = 0.15  # crop centres: 0.5 + N(0, 0.15) per axis
_SIDE_STD = 0.05  # crop sides: N(box size, 0.05) clipped to [0.05, 1]
_BOX_SCHEDULE = (0.5, 0.05)  # box_size=None: the mean side shrinks linearly over the steps


@functools.lru_cache(maxsize=1)
def natural_spectrum() -> np.ndarray:
    """The shipped magnitude spectrum ``(3, 256, 129)`` float32, in MACO's decorrelated colour
    space (see ``scripts/make_maco_spectrum.py``)."""
    return np.load(SPECTRUM_PATH).astype(np.float32)


@functools.lru_cache(maxsize=16)
def magnitude(channels: int, height: int, width: int) -> np.ndarray:
    """The magnitude ``r`` for ``channels × height × width`` images, ``(channels, height,
    width // 2 + 1)``: the shipped spectrum resized bilinearly (as Xplique resizes its own),
    the mean over colours for images that are not RGB, scaled so that an image of random
    phases has unit power (only relative magnitudes matter: the image is standardised)."""
    spectrum = natural_spectrum()
    rows = xe.interpolation_matrix(spectrum.shape[1], height, "bilinear")
    cols = xe.interpolation_matrix(spectrum.shape[2], width // 2 + 1, "bilinear")
    r = np.einsum("hk,ckl,wl->chw", rows, spectrum, cols).astype(np.float64)
    if channels != 3:
        r = np.repeat(r.mean(axis=0, keepdims=True), channels, axis=0)
    weight = np.full(r.shape[-1], 2.0)  # each rfft column stands for itself and its mirror
    weight[0] = 1.0
    if width % 2 == 0:
        weight[-1] = 1.0
    power = float((r**2 * weight).sum()) / channels
    return (r * (height * width) / math.sqrt(power)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def inverse_dft_matrices(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(Ch, Sh, Cw, Sw)``: the inverse real 2-D DFT as matrix products (see :func:`irfft2`).

    ``Ch, Sh`` ``(H, H)``: cosine and sine of ``2π h k / H`` over ``H``; ``Cw, Sw``
    ``(W // 2 + 1, W)``: ``c_l cos(2π l w / W) / W`` and the sine, ``c_l`` = 1 for the
    constant and Nyquist columns, 2 for the others (each stands for its mirror too).
    """
    h = np.arange(height)
    angle_h = 2.0 * np.pi * np.outer(h, h) / height
    column, w = np.arange(width // 2 + 1), np.arange(width)
    c = np.full(len(column), 2.0)
    c[0] = 1.0
    if width % 2 == 0:
        c[-1] = 1.0
    angle_w = 2.0 * np.pi * np.outer(column, w) / width
    return (
        (np.cos(angle_h) / height).astype(np.float32),
        (np.sin(angle_h) / height).astype(np.float32),
        (c[:, None] * np.cos(angle_w) / width).astype(np.float32),
        (c[:, None] * np.sin(angle_w) / width).astype(np.float32),
    )


def irfft2(real: ep.Tensor, imag: ep.Tensor, matrices: tuple[ep.Tensor, ...]) -> ep.Tensor:
    """The inverse real 2-D DFT of the half spectrum ``real + i·imag`` ``(..., H, W // 2 + 1)``,
    as ``numpy.fft.irfft2`` with ``s=(H, W)`` (imaginary parts of the constant and Nyquist
    columns ignored), by matrix products: differentiable, the same in every framework.

    Example:
        >>> mats = [ep.astensor(m) for m in inverse_dft_matrices(8, 8)]
        >>> irfft2(ep.astensor(re), ep.astensor(im), mats).shape      # (..., 8, 8)
    """
    ch, sh, cw, sw = matrices[:4]
    yr = xe.matmul(ch, real) - xe.matmul(sh, imag)  # inverse complex DFT along the rows
    yi = xe.matmul(sh, real) + xe.matmul(ch, imag)
    return xe.matmul(yr, cw) - xe.matmul(yi, sw)  # inverse real DFT along the columns


# Taylor coefficients of sin(r)/r and cos(r) in r², up to r^18 and r^20: below 1e-7 on [-π, π].
_SIN = [(-1.0) ** k / math.factorial(2 * k + 1) for k in range(10)]
_COS = [(-1.0) ** k / math.factorial(2 * k) for k in range(11)]


def sin_cos(t: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
    """``(sin t, cos t)`` from EagerPy's operations (it has no trigonometry): ``t`` reduced to
    ``[-π, π]`` by a whole number of turns, then Taylor polynomials (error below 1e-6 in
    float32). Differentiable: the number of turns is constant almost everywhere.

    Example:
        >>> s, c = sin_cos(ep.astensor(np.array([0.0, np.pi / 2])))
    """
    turns = t / (2.0 * math.pi) + 0.5
    whole = turns.astype(ep.arange(t, 1).dtype).astype(t.dtype)  # toward zero
    whole = whole - ep.where(turns < whole, ep.ones_like(whole), ep.zeros_like(whole))  # floor
    r = t - whole * (2.0 * math.pi)
    r2 = r * r
    s = ep.full_like(r, _SIN[-1])
    for coef in reversed(_SIN[:-1]):
        s = s * r2 + coef
    c = ep.full_like(r, _COS[-1])
    for coef in reversed(_COS[:-1]):
        c = c * r2 + coef
    return s * r, c


def _standardize(t: ep.Tensor) -> tuple[ep.Tensor, tuple[ep.Tensor, ep.Tensor]]:
    """``(t − mean) / (std + ε)`` (population std, over everything), and what its backward
    needs."""
    centred = t - t.mean()
    std = (centred * centred).mean().sqrt()
    return centred / (std + _STD_EPS), (centred, std)


def _standardize_backward(grad: ep.Tensor, saved: tuple[ep.Tensor, ep.Tensor]) -> ep.Tensor:
    """The gradient with respect to ``t`` of :func:`_standardize` given ``grad`` for its output:
    with ``c = t − mean t``, ``d = std + ε`` and ``n`` values,
    ``∂/∂c = grad / d − c · Σ(grad · c) / (d² · std · n)``, then centred (``∂c/∂t``)."""
    centred, std = saved
    d = std + _STD_EPS
    n = float(np.prod(centred.shape))
    by_centred = grad / d - centred * ((grad * centred).sum() / (d * d * std * n))
    return by_centred - by_centred.mean()


class Maco(xe.FeatureVisualization):
    """MACO (Fel et al., NeurIPS 2023): phase-only feature visualisation under a natural-image
    magnitude spectrum, with a transparency map from the accumulated input gradients.

    The image (``image_size``, channels as the model's input) is ``F⁻¹(r · e^{iφ̂})`` with
    ``φ̂`` the standardised phase, standardised, recorrelated to RGB (3 channels) and squashed
    into ``values_range`` by a sigmoid. Each step, ``nb_crops`` random square crops (centres
    ``0.5 + N(0, 0.15)``, sides ``N(box, 0.05)`` clipped to ``[0.05, 1]``, ``box`` shrinking
    linearly from 0.5 to 0.05 unless ``box_size`` is given) are resized to the model's input
    (bilinear, as ``tf.image.crop_and_resize``), get ``N(0, noise²) + U(−noise/2, noise/2)``
    noise, and the mean objective over the crops is maximised by Adam on ``φ``;
    ``|∂objective/∂image|`` is summed over the steps into the transparency map.

    Where a crop reaches outside the image it takes the middle of ``values_range``.
    ``tf.image.crop_and_resize`` (Xplique) fills with zero: the middle of Xplique's default
    ``(-1, 1)``, so the same there, but black for a ``(0, 1)`` model, whose crops then carry
    hard black borders and corners the visualisation has to fight (on the demo model they cost
    the circle and triangle visualisations probability: see ``docs/concepts/maco.md``).

    To visualise a class so that the model *recognises* it, maximise
    ``xt.Objective.log_probability(k)``, not the logit: a logit can rise with other classes'
    logits (on the demo model the triangle and cross logits' visualisations are classified as
    ring).

    Args:
        nb_steps: optimisation steps (Xplique: 256).
        lr: learning rate of Adam on the phase (Xplique's NAdam: 1.0).
        image_size: side (or ``(H, W)``) of the visualisation (Xplique: 512).
        nb_crops: crops per step (Xplique: 32); at most ``batch_size`` go through the model
            at once.
        box_size: the mean relative side of the crops, or ``None`` for the schedule.
        noise: strength of the noise added to the crops, in the model's input units
            (Xplique: 0.08, for its ``(-1, 1)`` range; the same relative strength is 0.04 for
            a ``(0, 1)`` model).
        values_range: ``(low, high)`` of the image: the model's input range (Xplique:
            ``(-1, 1)``; ``(0, 1)`` for models taking images in ``[0, 1]``).
        seed: the initial phase and every crop and noise draw.

    Example:
        >>> maco = xt.featurevis("maco", model, values_range=(0, 1), noise=0.04)
        >>> vis = maco(xt.Objective.log_probability(3), input_shape=(3, 224, 224))
        >>> vis.plot().savefig("maco.png")
    """

    name = "maco"

    def __init__(
        self,
        model: Any,
        *,
        nb_steps: int = 256,
        lr: float = 1.0,
        image_size: int | tuple[int, int] = 512,
        nb_crops: int = 32,
        box_size: float | None = None,
        noise: float = 0.08,
        values_range: tuple[float, float] = (-1.0, 1.0),
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.nb_steps = xe.positive_int("nb_steps", nb_steps)
        self.lr = xe.in_range("lr", lr, 0.0, math.inf)
        self.image_size = _size(image_size)
        self.nb_crops = xe.positive_int("nb_crops", nb_crops)
        self.box_size = None if box_size is None else xe.in_range("box_size", box_size, 0.0, 1.0, inclusive=True)
        if self.box_size == 0.0:
            raise xt.ParameterError("box_size must be above 0")
        self.noise = xe.in_range("noise", noise, 0.0, math.inf, inclusive=True)
        self.values_range = _values_range(values_range)
        self.seed = seed

    def passes_per_image(self) -> int | None:
        """Crops through the model (forward and backward) for one visualisation."""
        return self.nb_steps * self.nb_crops

    # -- the image ---------------------------------------------------------------------
    def image(self, phase: ep.Tensor, r: ep.Tensor, matrices: tuple[ep.Tensor, ...]) -> ep.Tensor:
        """The image ``(1, C, H, W)`` (channels first) of the phase ``φ`` ``(1, C, H, W//2+1)``."""
        return self._image(phase, r, matrices)[0]

    def _image(self, phase: ep.Tensor, r: ep.Tensor, matrices: tuple[ep.Tensor, ...]) -> tuple[ep.Tensor, tuple[Any, ...]]:
        """The image and what :meth:`_phase_gradient` needs of its computation."""
        standard_phase, saved_phase = _standardize(phase)
        s, c = sin_cos(standard_phase)
        x, saved_image = _standardize(irfft2(r * c, r * s, matrices))
        if x.shape[1] == 3:
            colours = xe.on_device(x, ("maco-colours",), COLOR_CORRELATION)
            x = xe.matmul(x.transpose((0, 2, 3, 1)), colours).transpose((0, 3, 1, 2))
        low, high = self.values_range
        image = low + (high - low) * 0.5 * (ep.tanh(0.5 * x) + 1.0)  # the sigmoid, overflow-free
        return image, (saved_phase, s, c, saved_image)

    def _phase_gradient(
        self, image: ep.Tensor, grad_image: ep.Tensor, r: ep.Tensor, matrices: tuple[ep.Tensor, ...],
        saved: tuple[Any, ...],
    ) -> ep.Tensor:
        """``(∂image/∂φ)ᵀ grad_image``, backward through :meth:`_image` by hand: what a tape
        gives (checked by the tests), from the forward's values instead of a second forward
        and the tape's walk back through the trigonometry's polynomials (a third of a step's
        operations; eager TensorFlow pays per operation)."""
        saved_phase, s, c, saved_image = saved
        low, high = self.values_range
        grad = grad_image * (image - low) * (high - image) / (high - low)  # the sigmoid's slope
        if grad.shape[1] == 3:
            colours_t = xe.on_device(grad, ("maco-colours-t",), np.ascontiguousarray(COLOR_CORRELATION.T))
            grad = xe.matmul(grad.transpose((0, 2, 3, 1)), colours_t).transpose((0, 3, 1, 2))
        grad = _standardize_backward(grad, saved_image)
        ch, sh, _, _, cw_t, sw_t = matrices  # ch and sh are symmetric
        by_cw, by_sw = xe.matmul(grad, cw_t), xe.matmul(grad, sw_t)
        grad_real = xe.matmul(ch, by_cw) - xe.matmul(sh, by_sw)
        grad_imag = -(xe.matmul(sh, by_cw) + xe.matmul(ch, by_sw))
        return _standardize_backward(r * (grad_imag * c - grad_real * s), saved_phase)

    # -- the optimisation --------------------------------------------------------------
    def visualize(
        self, like: ep.Tensor, score: Callable[[ep.Tensor], ep.Tensor], objective: xe.Objective
    ) -> xe.Visualization:
        adapter = self.adapter
        axis = adapter.channel_axis
        channels = int(like.shape[axis])
        input_size = xe.image_size(like, axis, self.name)
        height, width = self.image_size
        r = adapter.from_numpy(like, magnitude(channels, height, width)[None])
        matrices = _matrices_on_device(like, height, width)
        rng = np.random.default_rng(self.seed)
        phase = adapter.from_numpy(like, xe.standard_normal(rng, (1, channels, height, width // 2 + 1)))
        m, s = ep.zeros_like(phase), ep.zeros_like(phase)
        transparency = ep.zeros(like, (1, channels, height, width))
        history = []
        steps = xe.progress(range(self.nb_steps), enabled=self.progress, total=self.nb_steps, desc=self.name)
        for step in steps:
            image, saved = self._image(phase, r, matrices)
            value, grad_image = self._crops_gradient(image, score, step, input_size)
            transparency = transparency + grad_image.abs()
            history.append(value)
            # ∂objective/∂φ = (∂image/∂φ)ᵀ ∂objective/∂image: the model is not run again.
            grad_phase = self._phase_gradient(image, grad_image, r, matrices, saved)
            phase, m, s = adam_step(phase, -grad_phase, m, s, step + 1, self.lr)  # ascent
        image = self.image(phase, r, matrices)
        model_input = xe.resize(image, input_size, "bilinear")
        model_input = model_input if axis == 1 else model_input.transpose((0, 2, 3, 1))
        return xe.Visualization(
            method=self.name,
            objective=objective,
            image=xe.to_numpy(image)[0].transpose(1, 2, 0),
            model_input=adapter.restore(model_input, like.raw),
            transparency=xe.to_numpy(transparency)[0].transpose(1, 2, 0),
            history=xe.to_numpy(ep.stack(history)).astype(np.float64) if history else np.zeros(0),
            values_range=self.values_range,
        )

    def _crops_gradient(
        self, image: ep.Tensor, score: Callable[[ep.Tensor], ep.Tensor], step: int, input_size: tuple[int, int]
    ) -> tuple[ep.Tensor, ep.Tensor]:
        """The mean objective over this step's crops and its gradient with respect to the
        image, the crops going through the model ``batch_size`` at a time."""
        adapter = self.adapter
        rows, cols, noise = self.draws(step, image.shape[1], image.shape[2:], input_size)
        # Outside the image the crops take the middle of values_range: crop_and_resize fills
        # with zero, which is the middle of Xplique's (-1, 1) but black for (0, 1) (see
        # ``Maco``); the crop is linear, so shifting by the middle moves only the fill.
        middle = 0.5 * (self.values_range[0] + self.values_range[1])
        total, grad = None, None
        for start in range(0, self.nb_crops, self.batch_size):
            part = slice(start, min(start + self.batch_size, self.nb_crops))
            by_row = tuple(adapter.from_numpy(image, a) for a in rows.part(part))
            by_col = tuple(adapter.from_numpy(image, a) for a in cols.part(part, stacked=True))
            extra = adapter.from_numpy(image, noise[part])

            def objective(
                z: ep.Tensor, by_row: tuple[ep.Tensor, ...] = by_row, by_col: tuple[ep.Tensor, ...] = by_col,
                extra: ep.Tensor = extra,
            ) -> ep.Tensor:
                crops = crop_and_resize(z - middle, by_row, by_col, input_size) + (extra + middle)
                crops = crops if adapter.channel_axis == 1 else crops.transpose((0, 2, 3, 1))
                return (score(crops).sum() / self.nb_crops).reshape((1,))

            value, g = adapter.value_and_grad(objective, image)
            total = value if total is None else total + value
            grad = g if grad is None else grad + g
        assert total is not None and grad is not None
        return total[0], grad

    def draws(
        self, step: int, channels: int, image_shape: tuple[int, int], input_size: tuple[int, int]
    ) -> tuple[_Sampling, _Sampling, np.ndarray]:
        """Step ``step``'s crops (bilinear sampling of the rows and of the columns) and noise
        ``(nb_crops, C, *input_size)``, from ``seed`` and the step alone."""
        rng = np.random.default_rng(None if self.seed is None else [self.seed, step])
        n = self.nb_crops
        box = self.box_size
        if box is None:
            start, stop = _BOX_SCHEDULE
            box = start + (stop - start) * (step / max(1, self.nb_steps - 1))
        centres = 0.5 + _CENTRE_STD * rng.standard_normal((n, 2))
        sides = np.clip(box + _SIDE_STD * rng.standard_normal(n), 0.05, 1.0)
        rows = _Sampling.of(centres[:, 0] - sides / 2, centres[:, 0] + sides / 2, image_shape[0], input_size[0])
        cols = _Sampling.of(centres[:, 1] - sides / 2, centres[:, 1] + sides / 2, image_shape[1], input_size[1])
        shape = (n, channels, *input_size)
        noise = self.noise * xe.standard_normal(rng, shape) + self.noise * (rng.random(shape, dtype=np.float32) - 0.5)
        return rows, cols, noise.astype(np.float32)


class _Sampling:
    """Bilinear sampling of one axis for a batch of crops: for output pixel ``j`` of crop
    ``b``, the source pixels ``low[b, j]``/``low[b, j] + 1`` with weights ``w_low``/``w_high``
    (zero outside the image, as ``tf.image.crop_and_resize``'s extrapolation value)."""

    def __init__(self, low: np.ndarray, w_low: np.ndarray, w_high: np.ndarray, size: int) -> None:
        self.low, self.w_low, self.w_high, self.size = low, w_low, w_high, size

    @classmethod
    def of(cls, start: np.ndarray, stop: np.ndarray, size: int, out: int) -> _Sampling:
        """Crops ``[start, stop]`` (relative, per crop) of an axis of ``size`` pixels, ``out``
        samples each, placed as ``tf.image.crop_and_resize`` places them."""
        steps = np.arange(out) / (out - 1) if out > 1 else np.full(1, 0.5)
        pos = (start[:, None] + (stop - start)[:, None] * steps[None, :]) * (size - 1)
        inside = (pos >= 0) & (pos <= size - 1)
        low = np.clip(np.floor(pos), 0, size - 1)
        frac = np.where(inside, pos - low, 0.0)
        return cls(low.astype(np.int64), ((1 - frac) * inside).astype(np.float32), (frac * inside).astype(np.float32), size)

    def part(self, crops: slice, *, stacked: bool = False) -> tuple[np.ndarray, ...]:
        """``(low, high, w_low, w_high)`` of the crops ``crops``, flattened (``(B · out,)``);
        ``stacked``: indices into ``B`` copies of the axis laid end to end (crop ``b``'s
        copy starts at ``b · size``)."""
        low = self.low[crops]
        high = np.minimum(low + 1, self.size - 1)
        if stacked:
            offset = (np.arange(len(low)) * self.size)[:, None]
            low, high = low + offset, high + offset
        return low.ravel(), high.ravel(), self.w_low[crops].ravel(), self.w_high[crops].ravel()


def _matrices_on_device(like: ep.Tensor, height: int, width: int) -> tuple[ep.Tensor, ...]:
    """:func:`inverse_dft_matrices` beside ``like`` (cached), with the transposes of the
    column matrices for :meth:`Maco._phase_gradient`."""
    ch, sh, cw, sw = inverse_dft_matrices(height, width)
    return tuple(
        xe.on_device(like, ("maco-idft", height, width, k), np.ascontiguousarray(m))
        for k, m in enumerate((ch, sh, cw, sw, cw.T, sw.T))
    )


def crop_and_resize(image: ep.Tensor, rows: tuple[ep.Tensor, ...], cols: tuple[ep.Tensor, ...], out: tuple[int, int]) -> ep.Tensor:
    """Crops ``(B, C, out_h, out_w)`` of one image ``(1, C, H, W)`` by bilinear sampling: the
    rows, then the columns, each as two weighted gathers (``rows`` from
    ``_Sampling.part(...)``, ``cols`` from ``_Sampling.part(..., stacked=True)``).
    Differentiable with respect to the image."""
    _, c, h, w = image.shape
    out_h, out_w = out
    b = rows[0].shape[0] // out_h
    pixels = image[0].transpose((1, 2, 0)).reshape((h, w * c))                 # (H, W·C)
    low, high, w_low, w_high = rows
    picked = pixels[low] * w_low.reshape((-1, 1)) + pixels[high] * w_high.reshape((-1, 1))
    picked = picked.reshape((b, out_h, w, c)).transpose((0, 2, 1, 3)).reshape((b * w, out_h * c))
    low, high, w_low, w_high = cols
    crops = picked[low] * w_low.reshape((-1, 1)) + picked[high] * w_high.reshape((-1, 1))
    return crops.reshape((b, out_w, out_h, c)).transpose((0, 3, 2, 1))


def _size(value: Any) -> tuple[int, int]:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        pair: tuple[Any, ...] = (value, value)
    elif isinstance(value, tuple | list) and len(value) == 2:
        pair = tuple(value)
    else:
        raise xt.ParameterError(f"image_size must be an int or (H, W), got {value!r}")
    return xe.positive_int("image_size", pair[0]), xe.positive_int("image_size", pair[1])


def _values_range(value: Any) -> tuple[float, float]:
    try:
        low, high = (xe.number("values_range", v) for v in value)
    except (TypeError, ValueError):
        raise xt.ParameterError(f"values_range must be (low, high), got {value!r}") from None
    if not low < high:
        raise xt.ParameterError(f"values_range must have low < high, got {value!r}")
    return low, high


@xt.hookimpl
def register_featurevis(register: Callable[[str, type], None]) -> None:
    register(Maco.name, Maco)
