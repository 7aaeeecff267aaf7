"""Opti-CAM (Zhang, Torres, Sicre, Avrithis, Ayache — CVIU 248:104101, 2024; arXiv 2301.07002).

The saliency map is a convex combination of the ReLU feature maps of one layer, whose weights
``softmax(u)`` are optimised per image so that the masked image ``x ⊙ S(u)`` keeps the class
score as high as possible:

    S(u) = normalize(upsample(Σ_k softmax(u)_k · ReLU(A_k))),   u* = argmax_u  g_c(f(x ⊙ S(u)))

Everything below — the map, the objective and the Adam optimiser — is written once in EagerPy,
so PyTorch and Keras models follow the same trajectory; the framework adapter only supplies
the forward pass and the gradient of the masked score with respect to ``u``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import (
    CAMMethod,
    Explanation,
    ModelAdapter,
    Targets,
    expand_to_inputs,
    resize,
)

# torch.optim.Adam's defaults, which the official code uses.
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


def adam_step(
    u: ep.Tensor, grad: ep.Tensor, m: ep.Tensor, s: ep.Tensor, step: int, lr: float
) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
    """One Adam update (Kingma & Ba), in the form of ``torch.optim.Adam`` with its defaults.

    ``step`` counts from 1. Returns the new ``(u, m, s)`` where ``m``/``s`` are the first and
    second moment estimates. Each row of ``u`` only ever sees its own gradient, so the state
    is per image.

    Example:
        >>> u, m, s = adam_step(u, grad, m, s, step=1, lr=0.1)
    """
    m = _BETA1 * m + (1.0 - _BETA1) * grad
    s = _BETA2 * s + (1.0 - _BETA2) * grad * grad
    correction1 = 1.0 - _BETA1**step
    correction2_sqrt = math.sqrt(1.0 - _BETA2**step)
    return u - (lr / correction1) * m / (s.sqrt() / correction2_sqrt + _EPS), m, s


@dataclass
class _Running:
    """The images of a chunk whose optimisation is still running, with their state."""

    rows: np.ndarray  # indices of these images in the chunk
    x: ep.Tensor
    acts: ep.Tensor  # ReLU feature maps (B, K, h, w)
    targets: Targets
    base: ep.Tensor | None  # score of the unmasked image ('norm' loss only)
    u: ep.Tensor
    m: ep.Tensor
    s: ep.Tensor
    best_u: ep.Tensor  # u at the last early-stopping checkpoint
    best_loss: np.ndarray  # loss there
    best_step: np.ndarray  # Adam updates behind best_u

    def keep(self, adapter: ModelAdapter, mask: np.ndarray) -> _Running:
        idx = np.flatnonzero(mask)
        take = adapter.take_rows
        base = None if self.base is None else take(self.base, idx)
        return _Running(
            self.rows[idx], take(self.x, idx), take(self.acts, idx),
            self.targets.take(idx), base, take(self.u, idx), take(self.m, idx),
            take(self.s, idx), take(self.best_u, idx), self.best_loss[idx],
            self.best_step[idx],
        )


class OptiCAM(CAMMethod):
    """Opti-CAM (Zhang et al., CVIU 2024): feature-map weights optimised on the masked score.

    ``S(u) = normalize(upsample(Σ_k softmax(u)_k ReLU(A_k)))`` with ``A`` the activations of
    ``layer``; ``u`` starts at ``0.5·1`` (the mean of the feature maps) and Adam maximises the
    score of ``x ⊙ S(u)`` (the logit of the target class by default). Each iteration is one
    forward and one backward pass over ``batch_size`` images; every image has its own ``u``,
    optimiser state and early stop, so results do not depend on ``batch_size``.

    The mask multiplies the input *as given*: masked pixels become 0 in the model's input
    space. The official code masks ``[0, 1]`` images and normalises inside the model (masked
    pixels are black); give inputs the same way to reproduce it.

    Args:
        layer: layer whose feature maps are combined (as for Grad-CAM); default: the last
            spatial layer.
        max_iter: Adam iterations (paper: 100; ``0`` returns the initial mean-feature map).
        lr: Adam learning rate (paper and official driver: 0.1).
        loss: ``"plain"`` maximises the masked score (the paper's objective, Eq. 9–10);
            ``"norm"`` minimises ``|f(x) − f(x ⊙ S)|`` (the official class's default).
        normalization: ``"max_min"`` (default), ``"sigmoid"`` (``½(tanh(S/2) + 1)``) or
            ``"max"`` (``S / max S``), applied per image after upsampling.
        early_stop: the official code's stopping rule, per image: every ``max(1, max_iter // 10)``
            iterations, stop when the loss is worse than at the previous checkpoint; the end of
            the run is a last checkpoint. The map returned is the previous (better) checkpoint's.
        return_scores: calls return ``(maps, scores)``: the final masked scores ``(N,)`` of
            the returned maps, in the inputs' type.

    :meth:`~xai_toolbox.AttributionMethod.explain_with_extras` returns, beside the maps,
    ``extras["scores"]`` (the final masked scores), ``extras["history"]`` (the masked score of
    ``S(u_t)`` for ``t = 0..max_iter``, NumPy ``(N, max_iter + 1)``, NaN after an image
    stopped), ``extras["n_iter"]`` (Adam updates behind each returned map) and
    ``extras["layer"]``. For convenience a call also sets ``history_`` and ``n_iter_`` on the
    method (the last call's; use the extras when threads share an instance).

    Example:
        >>> maps = xt.OptiCAM(model, layer="layer4")(images, labels)
        >>> maps, scores = xt.OptiCAM(model, max_iter=50, return_scores=True)(images, labels)
    """

    name = "opticam"

    def passes_per_image(self) -> int | None:
        """At most: one to capture the layer, ``max_iter`` forward and backward passes, and
        one to score the last iterate (early stopping ends sooner)."""
        return self.max_iter + 2

    def __init__(
        self,
        model: Any,
        *,
        max_iter: int = 100,
        lr: float = 0.1,
        loss: str = "plain",
        normalization: str = "max_min",
        early_stop: bool = True,
        return_scores: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.max_iter = xe.non_negative_int("max_iter", max_iter)
        self.lr = xe.in_range("lr", lr, 0.0, math.inf)
        self.loss = xe.one_of("loss", loss, ("plain", "norm"))
        self.normalization = xe.one_of("normalization", normalization, ("max_min", "sigmoid", "max"))
        self.early_stop = xe.flag("early_stop", early_stop)
        self.return_scores = xe.flag("return_scores", return_scores)

    def __call__(self, inputs: Any, targets: Any = None) -> Any:
        """Explain ``inputs``; ``(maps, scores)`` when ``return_scores=True``."""
        maps, extras = self.explain_with_extras(inputs, targets)
        self.history_, self.n_iter_ = extras["history"], extras["n_iter"]
        return (maps, extras["scores"]) if self.return_scores else maps

    explain = __call__

    # -- the map ---------------------------------------------------------------------------
    def saliency(self, u: ep.Tensor, acts: ep.Tensor, size: tuple[int, int]) -> ep.Tensor:
        """``S(u)``: ``(B, H, W)`` from weights ``u`` ``(B, K)`` and ReLU features ``(B, K, h, w)``."""
        weights = u.softmax(axis=1)
        cam = (weights[:, :, None, None] * acts).sum(axis=1)
        return self._normalize(resize(cam, size, "bilinear"))

    def _normalize(self, cam: ep.Tensor) -> ep.Tensor:
        if self.normalization == "max_min":
            return xe.normalize_per_item(cam)
        if self.normalization == "sigmoid":
            return 0.5 * (ep.tanh(cam / 2) + 1.0)
        top = cam.reshape((cam.shape[0], -1)).max(axis=1)[:, None, None]
        return cam / ep.where(top > 0, top, ep.ones_like(top))

    def _masked_scores(
        self, x: ep.Tensor, acts: ep.Tensor, targets: Targets, u: ep.Tensor, size: tuple[int, int],
        grad: bool,
    ) -> Any:
        """Scores of ``x ⊙ S(u)`` ``(B,)``; with ``grad``, also their gradient w.r.t. ``u``."""
        adapter = self.adapter

        def score(w: ep.Tensor) -> ep.Tensor:
            # rows(): after an out-of-memory error the adapter differentiates parts of the batch.
            xs, features = xe.rows(x), xe.rows(acts)
            masked = xs * expand_to_inputs(self.saliency(w, features, size), xs.ndim, adapter.channel_axis)
            out = adapter.differentiable_forward(masked) if grad else adapter.forward(masked)
            return targets.score(out)

        return adapter.value_and_grad(score, u) if grad else score(u)

    def _loss(self, scores: ep.Tensor, base: ep.Tensor | None) -> ep.Tensor:
        # 'plain': f(x) − f(x ⊙ S) up to the constant f(x), which changes no gradient and no
        # early-stopping comparison.
        return -scores if base is None else (base - scores).abs()

    # -- optimisation --------------------------------------------------------------------
    def explain_batch(self, x: ep.Tensor, targets: Targets) -> Explanation:
        size = xe.input_size(x, self.adapter.channel_axis, self.name)
        layer = self.layer_for(x)
        n = x.shape[0]
        history = np.full((n, self.max_iter + 1), np.nan)
        n_iter = np.zeros(n, dtype=np.int64)
        maps = []
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            maps.append(self._explain_chunk(
                x[start:stop], targets.take(slice(start, stop)), layer, size,
                history[start:stop], n_iter[start:stop],
            ))
        # The score of each returned map was recorded when its iterate was scored.
        scores = history[np.arange(n), n_iter].astype(np.float32)
        return Explanation(
            maps[0] if len(maps) == 1 else ep.concatenate(maps, axis=0),
            {"scores": self.adapter.from_numpy(x, scores), "history": history, "n_iter": n_iter, "layer": layer},
        )

    def _explain_chunk(
        self, x: ep.Tensor, targets: Targets, layer: str, size: tuple[int, int],
        history: np.ndarray, n_iter: np.ndarray,
    ) -> ep.Tensor:
        n = x.shape[0]
        acts = self._activations(x, targets, layer).maximum(0.0)
        base = targets.score(self.adapter.forward(x)) if self.loss == "norm" else None
        u = ep.full(acts, (n, acts.shape[1]), 0.5)  # softmax(u) uniform: the mean feature map
        zeros = ep.zeros_like(u)
        run = _Running(
            np.arange(n), x, acts, targets, base, u, zeros, zeros, u,
            np.full(n, np.inf), np.zeros(n, dtype=np.int64),
        )
        done: list[tuple[np.ndarray, ep.Tensor]] = []  # (rows, final u) of stopped images
        recorded: list[tuple[int, np.ndarray, ep.Tensor]] = []
        every = max(1, self.max_iter // 10)  # the official check interval (guarded for < 10)
        steps = xe.progress(range(self.max_iter), enabled=self.progress, total=self.max_iter, desc=self.name)
        for step in steps:
            scores, grad = self._masked_scores(run.x, run.acts, run.targets, run.u, size, grad=True)
            recorded.append((step, run.rows, scores))
            loss = self._loss(scores, run.base)
            # d(loss)/du from ds/du, image by image: 'plain' −ds/du, 'norm' −sign(f(x) − s)·ds/du.
            sign = 1.0 if run.base is None else (run.base - scores).sign()[:, None]
            grad = -sign * grad
            if self.early_stop and step % every == 0:
                value = loss.numpy().astype(np.float64)  # one host sync per checkpoint
                worse = value > run.best_loss
                if worse.any():
                    idx = np.flatnonzero(worse)
                    done.append((run.rows[idx], self.adapter.take_rows(run.best_u, idx)))
                    n_iter[run.rows[idx]] = run.best_step[idx]
                    keep = ~worse
                    run = run.keep(self.adapter, keep)
                    grad, value = self.adapter.take_rows(grad, np.flatnonzero(keep)), value[keep]
                    if not len(run.rows):
                        break
                run.best_u, run.best_loss = run.u, value
                run.best_step = np.full(len(run.rows), step)
            run.u, run.m, run.s = adam_step(run.u, grad, run.m, run.s, step + 1, self.lr)
        else:
            self._finish(run, size, done, recorded, n_iter)

        for step, rows, values in recorded:
            history[rows, step] = values.numpy()
        return self.saliency(_assemble(self.adapter, done, n), acts, size)

    def _activations(self, x: ep.Tensor, targets: Targets, layer: str) -> ep.Tensor:
        """The layer's activations ``(B, K, h, w)`` (no gradients: they are not used)."""
        acts = []
        for start in range(0, x.shape[0], self.batch_size):
            rows = slice(start, start + self.batch_size)
            a, _, _ = self.adapter.layer_activations(x[rows], layer)
            acts.append(self.feature_maps(x[rows], layer, a))  # spatial or token layers
        return acts[0] if len(acts) == 1 else ep.concatenate(acts, axis=0)

    def _finish(
        self, run: _Running, size: tuple[int, int], done: list[tuple[np.ndarray, ep.Tensor]],
        recorded: list[tuple[int, np.ndarray, ep.Tensor]], n_iter: np.ndarray,
    ) -> None:
        """After the last update: record its score; with early stopping it is one more checkpoint."""
        n_iter[run.rows] = self.max_iter
        u = run.u
        scores = self._masked_scores(run.x, run.acts, run.targets, u, size, grad=False)
        recorded.append((self.max_iter, run.rows, scores))
        if self.early_stop:
            worse = self._loss(scores, run.base).numpy().astype(np.float64) > run.best_loss
            if worse.any():
                u = ep.where(ep.from_numpy(u, worse[:, None]), run.best_u, u)
                n_iter[run.rows[worse]] = run.best_step[worse]
        done.append((run.rows, u))


def _assemble(adapter: ModelAdapter, parts: list[tuple[np.ndarray, ep.Tensor]], n: int) -> ep.Tensor:
    """Rows given in pieces, ``(rows, values)``, put back in order ``0..n-1``."""
    rows = np.concatenate([r for r, _ in parts])
    values = parts[0][1] if len(parts) == 1 else ep.concatenate([t for _, t in parts], axis=0)
    order = np.argsort(rows, kind="stable")
    assert np.array_equal(rows[order], np.arange(n))
    return values if np.array_equal(order, np.arange(n)) else adapter.take_rows(values, order)


@xt.hookimpl
def register_methods(register: Callable[[str, type], None]) -> None:
    register(OptiCAM.name, OptiCAM)
