"""Benchmark settings: the cases measured, the run's configuration and the published targets.

:func:`default_config` holds the settings of ``python -m benchmarks`` (with ``--quick`` a
smaller workload under the same protocol); the command line and the tests adjust its fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# What the published numbers are held to (shown in the Markdown tables).
TARGET_OVERHEAD = 1.15
TARGET_PEER = 1.0
TARGET_MEMORY = 1.2
#: Black-box methods against the model's naive passes (section ``naive``): at least this speed-up.
TARGET_NAIVE_SPEEDUP = 1.4
#: Our time ÷ Xplique's on the same model and settings (section ``xplique``), per framework.
TARGET_XPLIQUE = {"torch": 0.7, "tf": 1.0}

#: glibc returns blocks of at least this size to the system as soon as they are freed, so the
#: RSS follows the live tensors; its default threshold adapts upwards after the first large
#: free, after which freed chunk buffers are kept in the heap (bounded, but it blurs growth).
#: The memory children run with it as ``MALLOC_MMAP_THRESHOLD_`` (:mod:`benchmarks.memory`).
MMAP_THRESHOLD = 1 << 20


@dataclass
class Case:
    """One method or metric of the overhead table.

    ``params`` keys may list alternative spellings, ``"nb_samples|nb_masks"``: the first one
    the class accepts is used (plugins are written concurrently with this harness).
    """

    name: str
    kind: str = "method"  # "method" | "metric"
    params: dict[str, Any] = field(default_factory=dict)
    cls: type | None = None  # an explicit class instead of the registry entry (tests)


@dataclass
class PeerCase:
    """One of our methods against a Captum attribution with identical settings."""

    name: str
    params: dict[str, Any]
    captum: str  # "saliency" | "integrated_gradients" | "occlusion" | "smoothgrad" | "guided_backprop" | ...


@dataclass
class XpliqueCase:
    """One method or metric in ours and in Xplique with the same settings."""

    name: str
    kind: str
    ours: dict[str, Any]
    theirs: dict[str, Any]


@dataclass
class CompileCase:
    """One method timed eager and with ``xt.adapt(model, compile=True)``."""

    name: str
    kind: str = "method"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class MemoryCase:
    """Peak memory of ``name`` as ``param`` goes from ``values[0]`` to ``values[1]``."""

    name: str
    param: str
    values: tuple[int, int]
    params: dict[str, Any] = field(default_factory=dict)
    n_images: int = 1


@dataclass
class Config:
    """Everything a run depends on; :func:`default_config` fills in the benchmark's cases."""

    framework: str
    device: str = "cpu"
    quick: bool = False
    out: str = "bench-out"
    size: int = 112
    width: int = 32
    classes: int = 10
    n_images: int = 4
    batch_size: int = 64
    warmup: int = 1
    repeats: int = 3
    #: Calls that take less than this get more repeats (up to ``max_repeats``): cheap calls are noisy.
    short_call_s: float = 0.25
    max_repeats: int = 21
    #: Intra-op threads; ``None`` leaves the framework's setting alone (inside a test run).
    threads: int | None = 2
    seed: int = 0
    #: ``"resnet"`` (the benchmark model, :mod:`benchmarks.models`) or ``"cnn"`` (the tiny test
    #: CNN of :mod:`xai_toolbox.testing`, for smoke tests).
    model: str = "resnet"
    overhead: list[Case] = field(default_factory=list)
    gradients: list[Case] = field(default_factory=list)
    peers: list[PeerCase] = field(default_factory=list)
    peer_images: int = 8
    memory: list[MemoryCase] = field(default_factory=list)
    #: Forward-only methods/metrics (names from ``overhead``) timed with and without
    #: ``xt.autocast()`` (PyTorch only).
    precision: list[str] = field(default_factory=list)
    #: Run each memory setting in a fresh subprocess (the only meaningful way for RSS).
    isolate_memory: bool = True
    #: Xplique side by side (section ``xplique``): cases, image size, images, inputs per pass.
    xplique: list[XpliqueCase] = field(default_factory=list)
    xplique_size: int = 64
    xplique_images: int = 2
    xplique_batch: int = 128
    #: Options of our adapter in the Xplique section (``xt.adapt(model, **options)``), e.g.
    #: ``{"compile": True}`` or ``{"memory_format": "channels_last"}``; empty: the defaults.
    xplique_adapter: dict[str, Any] = field(default_factory=dict)
    #: Compilation (section ``compile``): cases timed eager and compiled.
    compiling: list[CompileCase] = field(default_factory=list)
    #: Quality (section ``quality``): every sample count divided by this (``None``: 8 with
    #: ``quick``, else 1), and 2 images instead of 4 when set.
    quality_divisor: int | None = None

    def public(self) -> dict[str, Any]:
        """The settings as plain data for the results file (explicit classes left out)."""
        d = dataclasses.asdict(self)
        for key in ("overhead", "gradients", "peers", "memory"):
            for item in d[key]:
                item.pop("cls", None)
        return d


def default_config(framework: str, device: str = "cpu", *, quick: bool = False, out: str = "bench-out") -> Config:
    """The settings of ``python -m benchmarks`` (``quick``: a smaller workload, same protocol)."""
    if quick:
        n, rise, sobol_design, hsic, steps, mu = 2, 128, 4, 128, 64, 128
        ig_steps, sg_samples = 32, 32
        memory = [
            MemoryCase("rise", "nb_samples", (128, 1024), {"grid_size": 7, "seed": 0}),
            MemoryCase("sobol", "nb_design", (4, 32), {"grid_size": 8, "seed": 0}),
        ]
        peer_images = 4
    else:
        n, rise, sobol_design, hsic, steps, mu = 4, 512, 8, 512, 128, 256
        ig_steps, sg_samples = 64, 64
        memory = [
            MemoryCase("rise", "nb_samples", (256, 2048), {"grid_size": 7, "seed": 0}),
            MemoryCase("sobol", "nb_design", (4, 32), {"grid_size": 8, "seed": 0}),
        ]
        peer_images = 8
    overhead = [
        Case("rise", params={"nb_samples|nb_masks": rise, "grid_size": 7, "seed": 0}),
        Case("sobol", params={"grid_size": 8, "nb_design": sobol_design, "seed": 0}),
        Case("hsic", params={"grid_size": 8, "nb_design|nb_samples": hsic, "seed": 0}),
        Case(
            "occlusion",
            params={"patch_size|window|window_size|sliding_window": 16, "stride|patch_stride|strides": 8},
        ),
        Case("deletion", "metric", {"steps": steps}),
        Case("insertion", "metric", {"steps": steps}),
        Case("mufidelity", "metric", {"nb_samples": mu, "grid_size": 9, "subset_percent": 0.2, "seed": 0}),
    ]
    gradients = [
        Case("saliency"),
        Case("integrated_gradients", params={"steps": ig_steps, "rule": "gausslegendre"}),
        Case("smoothgrad", params={"nb_samples": sg_samples, "noise": 0.15, "seed": 0}),
    ]
    peers: list[PeerCase] = []
    if framework == "torch":
        peers = [
            PeerCase("saliency", {}, "saliency"),
            PeerCase("integrated_gradients", {"steps": 32, "rule": "gausslegendre"}, "integrated_gradients"),
            PeerCase(
                "occlusion",
                {"patch_size|window|window_size|sliding_window": 16, "stride|patch_stride|strides": 8},
                "occlusion",
            ),
            PeerCase("smoothgrad", {"nb_samples": 16, "noise": 0.15, "seed": 0}, "smoothgrad"),
            # Noise drawn on the device, as Captum does (not the same noise in both frameworks).
            PeerCase(
                "smoothgrad", {"nb_samples": 16, "noise": 0.15, "seed": 0, "noise_source": "device"}, "smoothgrad"
            ),
            PeerCase("guided_backprop", {}, "guided_backprop"),
            PeerCase("deconvnet", {}, "deconvolution"),
            PeerCase("gradient_shap", {"nb_samples": 16, "baselines": 0.0, "seed": 0}, "gradient_shap"),
            # Captum's NoiseTunnel: absolute noise, biased variance, noise drawn on the device.
            PeerCase("vargrad", {"nb_samples": 16, "noise": 0.2, "ddof": 0, "noise_source": "device", "seed": 0}, "vargrad"),
            PeerCase("squaregrad", {"nb_samples": 16, "noise": 0.2, "noise_source": "device", "seed": 0}, "smoothgrad_sq"),
        ]
    # The same work in both toolboxes (Xplique's names on the right); RISE's normalisation and
    # HSIC's estimator cost nothing beside the passes, so the estimators are left at defaults.
    rise_x, design_x, hsic_x, mu_x = (256, 4, 128, 64) if quick else (2000, 32, 500, 200)
    xplique = [
        XpliqueCase("rise", "method", {"nb_samples": rise_x, "grid_size": 7, "seed": 0},
                    {"nb_samples": rise_x, "grid_size": 7, "preservation_probability": 0.5, "mask_value": 0.0}),
        XpliqueCase("sobol", "method", {"nb_design": design_x, "grid_size": 8},
                    {"nb_design": design_x, "grid_size": 8, "perturbation_function": "inpainting"}),
        XpliqueCase("hsic", "method", {"nb_design": hsic_x, "grid_size": 8, "sampler": "sobol",
                                       "bandwidth": "median_output"},
                    {"nb_design": hsic_x, "grid_size": 8, "perturbation_function": "inpainting"}),
        XpliqueCase("occlusion", "method", {"patch_size": 8, "stride": 4},
                    {"patch_size": 8, "patch_stride": 4, "occlusion_value": 0.0}),
        XpliqueCase("mufidelity", "metric", {"nb_samples": mu_x, "grid_size": 9, "subset_percent": 0.2, "seed": 0},
                    {"nb_samples": mu_x, "grid_size": 9, "subset_percent": 0.2, "baseline_mode": 0.0}),
        XpliqueCase("deletion", "metric", {"steps": 10}, {"steps": 10, "baseline_mode": 0.0}),
        XpliqueCase("insertion", "metric", {"steps": 10}, {"steps": 10, "baseline_mode": 0.0}),
    ]
    compiling = [
        CompileCase("rise", params={"nb_samples": 256 if quick else 1024, "grid_size": 7, "seed": 0}),
        CompileCase("saliency"),
        CompileCase("integrated_gradients", params={"steps": 32 if quick else 64, "rule": "gausslegendre"}),
    ]
    return Config(
        framework=framework,
        device=device,
        quick=quick,
        out=out,
        xplique=xplique,
        compiling=compiling,
        n_images=n,
        repeats=3 if quick else 5,
        overhead=overhead,
        gradients=gradients,
        peers=peers,
        peer_images=peer_images,
        memory=memory,
        precision=["rise", "occlusion", "deletion"] if framework == "torch" else [],
    )
