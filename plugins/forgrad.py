"""FORGrad (Muzellec, Fel et al., *Gradient strikes back: How filtering out high frequencies
improves explanations*, 2023): an ideal low-pass filter on explanation maps.

``φ_σ = |F⁻¹(F(|φ|) ⊙ 1[‖k‖ ≤ σ])|``: the absolute map is transformed by a 2-D discrete
Fourier transform, every frequency farther than ``σ`` bins from zero is dropped, and the
absolute value of the inverse transform is kept (Xplique's ``forgrad``). Two public forms:

* :func:`forgrad`, on maps already computed by any method (native tensors or NumPy), and
* the method ``"forgrad"`` (:class:`FORGrad`), which runs a method and filters its maps.

The transforms are products with cosine and sine matrices on the maps' device (EagerPy has no
FFT), so the same numbers come out in every framework and the maps never leave the device.
"""

from __future__ import annotations

import functools
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Targets

#: The paper's cut-off, in frequency bins, for 224 × 224 maps.
PAPER_SIGMA, PAPER_SIZE = 15.0, 224


def default_sigma(height: int, width: int) -> float:
    """The paper's ``σ = 15`` bins at 224 px, scaled to the smaller side of the maps (so the
    same share of the spectrum is kept at every size).

    Example:
        >>> default_sigma(224, 224), default_sigma(64, 64)
        (15.0, 4.285714285714286)
    """
    return PAPER_SIGMA * min(height, width) / PAPER_SIZE


@functools.lru_cache(maxsize=32)
def _dft(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(cos, sin)`` of ``2π k m / n``, ``(n, n)`` float32: the real and (negated) imaginary
    parts of the DFT matrix."""
    k = np.arange(n)
    angle = 2.0 * np.pi * np.outer(k, k) / n
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


@functools.lru_cache(maxsize=32)
def low_pass_mask(height: int, width: int, sigma: float) -> np.ndarray:
    """``1[√(k_y² + k_x²) ≤ σ]`` over the DFT's frequencies (signed, in bins, NumPy's
    ``fftfreq`` order), ``(height, width)`` float32.

    Example:
        >>> int(low_pass_mask(8, 8, 1.0).sum())                    # DC and (±1, 0), (0, ±1)
        5
    """
    ky = np.fft.fftfreq(height) * height
    kx = np.fft.fftfreq(width) * width
    return (np.hypot(ky[:, None], kx[None, :]) <= sigma).astype(np.float32)


def _low_pass(maps: ep.Tensor, sigma: float) -> ep.Tensor:
    """``F⁻¹(F(maps) ⊙ mask)`` for real maps ``(N, H, W)``, as real matrix products.

    With ``F = C − iS`` per axis: ``F A Fᵀ = (C A Cᵀ − S A Sᵀ) − i (C A Sᵀ + S A Cᵀ)``; the
    mask is symmetric in ``k ↔ −k``, so the inverse ``(1/HW) (C + iS) Z (C + iS)ᵀ`` is real.
    """
    h, w = maps.shape[-2:]
    ch, sh = (xe.on_device(maps, ("forgrad-dft", h, part), m) for part, m in zip("cs", _dft(h), strict=True))
    cw, sw = (xe.on_device(maps, ("forgrad-dft", w, part), m) for part, m in zip("cs", _dft(w), strict=True))
    mask = xe.on_device(maps, ("forgrad-mask", h, w, float(sigma)), low_pass_mask(h, w, float(sigma)))
    mm = xe.matmul
    c_rows, s_rows = mm(ch, maps), mm(sh, maps)
    real = (mm(c_rows, cw) - mm(s_rows, sw)) * mask
    imag = -(mm(c_rows, sw) + mm(s_rows, cw)) * mask
    c_real, s_real, c_imag, s_imag = mm(ch, real), mm(sh, real), mm(ch, imag), mm(sh, imag)
    back = mm(c_real, cw) - mm(s_real, sw) - mm(c_imag, sw) - mm(s_imag, cw)
    return back / float(h * w)


def forgrad_tensor(maps: ep.Tensor, sigma: float | None = None) -> ep.Tensor:
    """:func:`forgrad` on an EagerPy tensor of maps ``(N, H, W)`` (for plugins composing it).

    Example:
        >>> filtered = forgrad_tensor(maps, sigma=4.0)             # beside maps
    """
    if maps.ndim != 3:
        raise xt.InputError(
            f"FORGrad filters image maps of shape (N, H, W); got shape {tuple(maps.shape)}"
        )
    h, w = maps.shape[1:]
    cutoff = default_sigma(h, w) if sigma is None else check_sigma(sigma)
    return _low_pass(maps.float32().abs(), cutoff).abs()


def check_sigma(sigma: Any) -> float:
    """A cut-off ``σ > 0`` in frequency bins (``ParameterError`` otherwise).

    Example:
        >>> check_sigma(15)
        15.0
    """
    value = xe.number("sigma", sigma)
    if value <= 0:
        raise xt.ParameterError(f"sigma must be a positive number of frequency bins, got {sigma!r}")
    return value


def forgrad(maps: Any, sigma: float | None = None) -> Any:
    """FORGrad: the low-pass filtered absolute maps ``|F⁻¹(F(|φ|) ⊙ 1[‖k‖ ≤ σ])|``.

    Args:
        maps: explanations ``(N, H, W)`` of any method: a PyTorch or TensorFlow tensor (the
            result stays on its device) or a NumPy array.
        sigma: cut-off radius in frequency bins; ``None`` (default) scales the paper's 15
            bins at 224 px to the maps' smaller side (:func:`default_sigma`).

    Returns:
        Maps of the same shape and type, float32, non-negative.

    Example:
        >>> from xai_toolbox.plugins.forgrad import forgrad
        >>> smooth = forgrad(xt.Saliency(model)(images, labels))
    """
    if isinstance(maps, list | tuple):
        maps = np.asarray(maps, dtype=np.float32)
    return forgrad_tensor(ep.astensor(maps), sigma).raw


class FORGrad(xt.AttributionMethod):
    """FORGrad as a method: runs ``method`` and low-pass filters its maps (see the module).

    Args:
        method: the method whose maps are filtered: a registered name (default
            ``"saliency"``, the paper's main case), an :class:`~xai_toolbox.AttributionMethod`
            class, or an instance (its parameters are reused).
        method_params: keyword parameters of the method (with a name or a class); the
            standard ones (``batch_size``, ``score_fn``, ``framework``) are passed on unless
            given here.
        sigma: cut-off radius in frequency bins (``None``: 15 bins at 224 px, scaled).

    Example:
        >>> maps = xt.method("forgrad", model, method="smoothgrad", method_params={"seed": 0})(images, labels)
    """

    name = "forgrad"
    family = "enhancer"
    input_kinds = ("image",)

    def __init__(
        self,
        model: Any,
        *,
        method: Any = "saliency",
        method_params: dict[str, Any] | None = None,
        sigma: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        is_class = isinstance(method, type) and issubclass(method, xt.AttributionMethod)
        if not (isinstance(method, str) or is_class or isinstance(method, xt.AttributionMethod)):
            raise xt.ParameterError(
                "method must be a registered method name, an AttributionMethod class or an "
                f"instance; got {type(method).__name__}"
            )
        self.method = method
        if method_params is not None and not isinstance(method_params, dict):
            raise xt.ParameterError(f"method_params must be a dict, got {type(method_params).__name__}")
        self.method_params = dict(method_params or {})
        self.sigma = None if sigma is None else check_sigma(sigma)
        self.inner(model)  # an unknown name or bad parameters fail now, before any model call

    def inner(self, model: Any) -> xt.AttributionMethod:
        """The wrapped method, built for ``model`` (a model or an adapter)."""
        method = self.method
        if isinstance(method, xt.AttributionMethod):
            return type(method)(model, **{**method.get_params(), **self.method_params})
        standard = {"batch_size": self.batch_size, "score_fn": self.score_fn, "framework": self.framework}
        params = {**{k: v for k, v in standard.items() if v is not None}, **self.method_params}
        if isinstance(method, str):
            return xt.method(method, model, **params)
        return method(model, **params)

    def passes_per_image(self) -> int | None:
        return self.inner(None).passes_per_image()

    def check_call(self, x: ep.Tensor) -> None:
        if x.ndim != 4:
            raise xt.InputError(f"FORGrad filters image maps; got inputs of shape {tuple(x.shape)}, not images")

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> ep.Tensor:
        maps = self.inner(self.adapter)(x.raw, targets.native())
        return forgrad_tensor(ep.astensor(maps), self.sigma)


@xt.hookimpl
def register_methods(register: Any) -> None:
    register(FORGrad.name, FORGrad)
