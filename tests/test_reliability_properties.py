"""Property-based tests (hypothesis) of what users bring beyond tensors: image files of any
common mode and bit depth, models in any floating dtype, outputs of any structure.

* Files: PNG and TIFF in modes 1, L, LA, P (with and without transparency), RGB, RGBA, I;16 and
  F read as the documented float32 ``[0, 1]`` values (8-bit / 255, 16-bit / 65 535, float as is,
  transparency over white), or refused with an ``ImageLoadError`` (float out of ``[0, 1]``).
* Models: float32/float64/float16/bfloat16 PyTorch models returning a tensor, a 1-tuple, a dict
  or a dataclass with ``logits``, or an ambiguous tuple/dict: every method call either gives
  float32 maps of the documented shape close to the float32 model's, or — only for the
  ambiguous structures — a toolbox error that says ``output=``.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _reliability import wrapped_cnn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xai_toolbox as xt
from xai_toolbox.io import ImageLoadError, load_images
from xai_toolbox.testing import as_numpy, cnn

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}


# -- image files --------------------------------------------------------------------------------
MODES = ["1", "L", "LA", "P", "P+transparency", "RGB", "RGBA", "I;16", "F", "F out of range"]


@st.composite
def image_files(draw: Any) -> dict[str, Any]:
    mode = draw(st.sampled_from(MODES))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    suffix = ".tif" if mode.startswith("F") else draw(st.sampled_from([".png", ".tif"]))
    seed = draw(st.integers(0, 2**16))
    return {"mode": mode, "shape": (h, w), "suffix": suffix, "seed": seed}


def _write(spec: dict[str, Any], path: Path) -> np.ndarray:
    """Write the file; return the RGB float values it must be read as."""
    rng = np.random.default_rng(spec["seed"])
    h, w = spec["shape"]
    mode = spec["mode"]
    bytes_ = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    alpha = bytes_[..., 3:4].astype(np.float64) / 255
    if mode == "I;16":
        values = rng.integers(0, 65536, (h, w)).astype(np.uint16)
        Image.fromarray(values).save(path)
        return np.repeat((values / 65535.0)[..., None], 3, axis=-1)
    if mode.startswith("F"):
        values = rng.random((h, w), dtype=np.float32) * (3.0 if "out" in mode else 1.0)
        Image.fromarray(values, mode="F").save(path)
        return np.repeat(values[..., None].astype(np.float64), 3, axis=-1)
    if mode == "1":
        bits = bytes_[..., 0] > 127
        Image.fromarray(bits).save(path)
        return np.repeat(bits[..., None].astype(np.float64), 3, axis=-1)
    if mode in ("L", "LA"):
        grey = bytes_[..., :1].astype(np.float64) / 255
        if mode == "L":
            Image.fromarray(bytes_[..., 0], mode="L").save(path)
            return np.repeat(grey, 3, axis=-1)
        Image.fromarray(bytes_[..., [0, 3]], mode="LA").save(path)
        return np.repeat(grey * alpha + (1 - alpha), 3, axis=-1)
    if mode.startswith("P"):
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
        index = bytes_[..., 0]
        picture = Image.fromarray(index, mode="P")
        picture.putpalette(palette.reshape(-1).tolist())
        rgb = palette[index].astype(np.float64) / 255
        if mode == "P+transparency":  # palette entry 0 fully transparent: white
            picture.info["transparency"] = 0
            picture.save(path, transparency=0)
            return np.where((index == 0)[..., None], 1.0, rgb)
        picture.save(path)
        return rgb
    rgb = bytes_[..., :3].astype(np.float64) / 255
    if mode == "RGB":
        Image.fromarray(bytes_[..., :3], mode="RGB").save(path)
        return rgb
    Image.fromarray(bytes_, mode="RGBA").save(path)
    return rgb * alpha + (1 - alpha)


@settings(max_examples=120, **SETTINGS)
@given(spec=image_files())
def test_image_files_of_any_mode_read_as_documented(spec: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("img") / f"picture{spec['suffix']}"
    expected = _write(spec, path)
    if spec["mode"] == "F out of range" and expected.max() > 1:
        with pytest.raises(ImageLoadError, match=r"float images must lie in \[0, 1\]"):
            load_images([path])
        return
    batch = load_images([path])
    assert batch.images.dtype == np.float32 and batch.images.shape == (1, *spec["shape"], 3)
    # 16-bit and float files keep their precision; Pillow composites and converts 8-bit ones
    # in 8 bits (one step of 1/255 at most).
    exact = spec["mode"] in ("I;16", "F", "F out of range")
    np.testing.assert_allclose(batch.images[0], expected, atol=1e-6 if exact else 1.01 / 255, rtol=0)
    grey = load_images([path], channels=1, size=(5, 7)).images
    assert grey.shape == (1, 5, 7, 1) and grey.min() >= 0.0 and grey.max() <= 1.0


# -- model dtypes and output structures --------------------------------------------------------
@dataclasses.dataclass
class _WithLogits:
    logits: Any
    hidden: Any


STRUCTURES = ["tensor", "1-tuple", "dict with logits", "dataclass with logits", "ambiguous tuple", "ambiguous dict"]
METHODS = {
    "saliency": {},
    "gradcam": {},
    "rise": {"nb_samples": 8, "grid_size": 4, "seed": 0},
    "occlusion": {"patch_size": 8, "stride": 8},
}
TOLERANCE = {"float32": 1e-6, "float64": 1e-5, "float16": 0.05, "bfloat16": 0.2}

_reference: dict[str, np.ndarray] = {}


def _wrapped(torch: Any, base: Any, structure: str) -> Any:
    def forward(net: Any, x: Any) -> Any:
        out = net(x)
        return {
            "tensor": lambda: out,
            "1-tuple": lambda: (out,),
            "dict with logits": lambda: {"logits": out, "hidden": out[:, :2]},
            "dataclass with logits": lambda: _WithLogits(out, out[:, :2]),
            "ambiguous tuple": lambda: (out, out[:, :2]),
            "ambiguous dict": lambda: {"a": out, "b": out[:, :2]},
        }[structure]()

    return wrapped_cnn(torch, forward, base)


@settings(max_examples=40, **SETTINGS)
@given(
    dtype=st.sampled_from(list(TOLERANCE)),
    structure=st.sampled_from(STRUCTURES),
    method=st.sampled_from(list(METHODS)),
)
def test_models_of_any_dtype_and_output_structure(torch: Any, dtype: str, structure: str, method: str) -> None:
    base = cnn("torch", seed=0)
    x = torch.from_numpy(np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32))
    if method not in _reference:
        _reference[method] = as_numpy(xt.explain(base, x, [0, 1], method=method, **METHODS[method]))
    model = _wrapped(torch, copy.deepcopy(base).to(getattr(torch, dtype)), structure)
    if structure.startswith("ambiguous"):
        with pytest.raises(xt.XaiToolboxError, match="output="):
            xt.explain(model, x, [0, 1], method=method, **METHODS[method])
        return
    maps = xt.explain(model, x, [0, 1], method=method, **METHODS[method])
    assert maps.dtype == torch.float32 and tuple(maps.shape) == (2, 16, 16)
    reference = _reference[method]
    error = np.abs(as_numpy(maps) - reference).max()
    assert error <= TOLERANCE[dtype] * max(np.abs(reference).max(), 1e-12), (dtype, structure, method, error)
