"""Guided Backprop and DeconvNet: the input gradient with the ReLUs' backward pass changed.

The forward pass is the model's own. Backwards, every ReLU with input ``z`` that receives the
gradient ``R`` sends ``relu(R) · 1[z > 0]`` (Guided Backprop) or ``relu(R)`` (DeconvNet) to
``z`` instead of ``R · 1[z > 0]``. The rules come from the adapter
(:meth:`~xai_toolbox.extend.ModelAdapter.relu_backward`) and hold for the duration of the call
only: the model is left exactly as it was, and other gradients are not affected.
"""

from __future__ import annotations

from typing import Any, ClassVar

import eagerpy as ep

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Targets, reduce_channels

from .gradient_stats import REDUCERS
from .gradients import _GradientMethod


class _ReluRuleGradient(_GradientMethod):
    rule: ClassVar[str]

    def __init__(self, model: Any, *, reducer: str = "mean", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.reducer = xe.one_of("reducer", reducer, REDUCERS)

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> ep.Tensor:
        with self.adapter.relu_backward(self.rule):
            grads = self._gradients(x, targets)
        return reduce_channels(grads, self.adapter.channel_axis, self.reducer)


class GuidedBackprop(_ReluRuleGradient):
    """Guided Backpropagation (Springenberg, Dosovitskiy, Brox, Riedmiller, *Striving for
    Simplicity: The All Convolutional Net*, ICLR 2015 workshop).

    The input gradient of the score with every ReLU passing back only positive gradients,
    and only where its input was positive: ``relu(R) · 1[z > 0]``. Signed, averaged over
    channels (Xplique's ``reducer="mean"``; Captum returns the channels as they are).

    Only ReLUs are changed: PyTorch ``nn.ReLU`` modules and ``F.relu``/``torch.relu``/
    ``Tensor.relu`` calls; Keras ``ReLU()`` layers and ``activation="relu"``. Other activations
    (GELU, SiLU, ReLU6, leaky ReLU) back-propagate normally; a model with no ReLU the adapter
    can reach raises :class:`~xai_toolbox.errors.UnsupportedModelError`.

    Args:
        reducer: channel reduction (``"mean"``, ``"sum"`` or ``"max"``).

    Example:
        >>> maps = xt.GuidedBackprop(model)(images, labels)          # (N, H, W)
    """

    name = "guided_backprop"
    rule = "guided"


class DeconvNet(_ReluRuleGradient):
    """DeconvNet (Zeiler & Fergus, *Visualizing and Understanding Convolutional Networks*,
    ECCV 2014), as a gradient rule: every ReLU passes back the positive part of the gradient
    it receives, ``relu(R)``, whatever its input was. Signed, averaged over channels.

    The same ReLUs as :class:`GuidedBackprop` are changed, with the same error for a model
    without any.

    Args:
        reducer: channel reduction (``"mean"``, ``"sum"`` or ``"max"``).

    Example:
        >>> maps = xt.method("deconvnet", model)(images, labels)
    """

    name = "deconvnet"
    rule = "deconv"


@xt.hookimpl
def register_methods(register: Any) -> None:
    for cls in (GuidedBackprop, DeconvNet):
        register(cls.name, cls)
