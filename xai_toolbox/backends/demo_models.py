"""The demo CNN of :mod:`xai_toolbox.demo` in PyTorch and Keras 3, and converting PyTorch
weights to Keras (framework code, so it lives with the adapters).

Architecture (about 24 k parameters, fast on a CPU)::

    normalize (fixed per-channel affine: 4 * (x - 0.5), i.e. [0, 1] -> [-2, 2])
    conv1 (3x3, 3->16, same) -> relu1 -> pool1 (max 2x2)
    conv2 (3x3, 16->32, same) -> relu2 -> pool2 (max 2x2)
    conv3 (3x3, 32->64, same) -> relu3 -> gap (global average pool) -> fc (64->classes, logits)

See :mod:`xai_toolbox.demo.model` for why it looks like this; the frameworks are imported inside
the functions, so importing this module imports neither.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..demo.data import CLASS_NAMES
from ..errors import LayerError, ParameterError

if TYPE_CHECKING:
    import keras
    import torch

DEMO_IMAGE_SIZE = 64
"""Side, in pixels, of the images the demo model was trained on."""

# Output channels of conv1..conv3. Both builders loop over this one tuple, so the twins
# cannot drift apart.
_CONV_CHANNELS = (16, 32, 64)
# The fixed input normalisation x -> _NORM_SCALE * x + _NORM_OFFSET maps [0, 1] to [-2, 2],
# roughly zero mean and unit variance on the demo images.
_NORM_SCALE, _NORM_OFFSET = 4.0, -2.0


def build_torch_model(num_classes: int = len(CLASS_NAMES)) -> torch.nn.Module:
    """Build the (untrained) PyTorch demo CNN, an ``nn.Sequential`` with named parts.

    Submodules are ``normalize, conv1, relu1, pool1, conv2, relu2, pool2, conv3, relu3, gap,
    fc``; ``normalize`` is a frozen per-channel affine map (a depthwise 1x1 convolution with
    ``requires_grad=False``, see the module docstring); ``gap`` averages over height and width and flattens, so its output is ``(N, 64)`` like
    the Keras twin's. ReLUs are not in-place, because in-place ops break the backward hooks
    that gradient-based explanation methods register on layers.

    Example:
        >>> model = build_torch_model(5)
        >>> [name for name, _ in model.named_children()][-3:]
        ['relu3', 'gap', 'fc']
    """
    from torch import nn

    _check_num_classes(num_classes)
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    normalize = nn.Conv2d(3, 3, kernel_size=1, groups=3)
    nn.init.constant_(normalize.weight, _NORM_SCALE)
    nn.init.constant_(normalize.bias, _NORM_OFFSET)
    normalize.requires_grad_(False)
    parts["normalize"] = normalize
    in_channels = 3
    for i, out_channels in enumerate(_CONV_CHANNELS, start=1):
        parts[f"conv{i}"] = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        parts[f"relu{i}"] = nn.ReLU()
        if i < len(_CONV_CHANNELS):
            parts[f"pool{i}"] = nn.MaxPool2d(2)
        in_channels = out_channels
    parts["gap"] = nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
    parts["fc"] = nn.Linear(in_channels, num_classes)
    return nn.Sequential(parts)


def build_keras_model(
    num_classes: int = len(CLASS_NAMES), size: int | None = DEMO_IMAGE_SIZE
) -> keras.Model:
    """Build the (untrained) Keras 3 twin of :func:`build_torch_model`.

    A functional model with layers ``normalize, conv1, relu1, pool1, ..., conv3, relu3, gap,
    fc`` (``normalize`` frozen with ``trainable=False``); the
    ReLUs are separate layers (not ``activation=`` of the convolutions) so the post-ReLU
    feature maps can be addressed by name. ``size=None`` accepts any image size (the global
    pooling makes the head size-independent).

    Example:
        >>> model = build_keras_model(5)
        >>> model.input_shape, model.output_shape
        ((None, 64, 64, 3), (None, 5))
    """
    import keras
    from keras import layers

    _check_num_classes(num_classes)
    # data_format is pinned so a user's global "channels_first" Keras config cannot silently
    # transpose the twin.
    fmt = "channels_last"
    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = layers.Conv2D(
        3,
        1,
        groups=3,
        data_format=fmt,
        kernel_initializer=keras.initializers.Constant(_NORM_SCALE),
        bias_initializer=keras.initializers.Constant(_NORM_OFFSET),
        trainable=False,
        name="normalize",
    )(inputs)
    for i, out_channels in enumerate(_CONV_CHANNELS, start=1):
        x = layers.Conv2D(out_channels, 3, padding="same", data_format=fmt, name=f"conv{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if i < len(_CONV_CHANNELS):
            x = layers.MaxPooling2D(2, data_format=fmt, name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(data_format=fmt, name="gap")(x)
    outputs = layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, outputs, name="demo_cnn")


def copy_torch_weights_to_keras(
    torch_model: torch.nn.Module,
    keras_model: keras.Model,
    layer_map: Mapping[str, str] | None = None,
) -> None:
    """Copy every parametrised layer of a PyTorch model into its Keras twin, in place.

    Supported layers: ``Conv1d``, ``Conv2d`` (including grouped), ``Linear`` and
    ``BatchNorm1d/2d`` (give the Keras ``BatchNormalization`` the same ``epsilon``; PyTorch's
    default is ``1e-5``, Keras' ``1e-3``). Kernels are transposed to Keras layout:
    conv2d ``(out, in, kh, kw) -> (kh, kw, in, out)``, conv1d ``(out, in, k) -> (k, in, out)``,
    linear ``(out, in) -> (in, out)``. Only the weights are copied: the architectures must
    already match (e.g. ``padding=k//2`` vs ``"same"`` at stride 1, and a ``Flatten`` before a
    dense layer sees channels last in Keras, first in PyTorch).

    Args:
        torch_model: the source model.
        keras_model: the target model; layers are looked up with ``get_layer``.
        layer_map: torch module name (dotted, as in ``named_modules``) -> Keras layer name,
            for the layers whose names differ; unlisted layers keep their torch name.

    Raises:
        LayerError: a parametrised torch module has an unsupported type, a Keras layer is
            missing or has differently shaped weights, or a Keras layer with weights
            received none (the twins would silently disagree).

    Example:
        >>> torch_model, keras_model = build_torch_model(5), build_keras_model(5)
        >>> copy_torch_weights_to_keras(torch_model, keras_model)
    """
    from torch import nn

    supported = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
    for name, module in torch_model.named_modules():
        owns_tensors = (
            next(module.parameters(recurse=False), None) is not None
            or next(module.buffers(recurse=False), None) is not None
        )
        if owns_tensors and not isinstance(module, supported):
            raise LayerError(
                f"cannot copy torch module {name!r} of type {type(module).__name__}: "
                "only Conv1d, Conv2d, Linear and BatchNorm1d/2d are supported"
            )
    state = {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()}
    copy_state_dict_to_keras(state, keras_model, layer_map)


def copy_state_dict_to_keras(
    state: Mapping[str, np.ndarray],
    keras_model: keras.Model,
    layer_map: Mapping[str, str] | None = None,
) -> None:
    """Like :func:`copy_torch_weights_to_keras`, from a NumPy ``state_dict`` (no torch needed).

    The layer kind is read from the tensors: ``running_mean`` means batch norm, otherwise a
    4-, 3- or 2-D ``weight`` means conv2d, conv1d or linear.

    Example:
        >>> keras_model = build_keras_model(5)
        >>> copy_state_dict_to_keras(load_demo_weights(), keras_model)
    """
    layer_map = dict(layer_map or {})
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        module_name, _, tensor_name = key.rpartition(".")
        modules.setdefault(module_name, {})[tensor_name] = np.asarray(value)

    assigned: set[str] = set()
    for module_name, tensors in modules.items():
        weights = _to_keras_weights(module_name, tensors)
        if not weights:  # e.g. only num_batches_tracked
            continue
        keras_name = layer_map.get(module_name, module_name)
        layer = _get_keras_layer(keras_model, keras_name, module_name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(w.shape) for w in weights]
        if expected != got:
            raise LayerError(
                f"torch module {module_name!r} -> Keras layer {keras_name!r}: weight shapes "
                f"{got} (converted to Keras layout) do not match the layer's {expected}"
            )
        layer.set_weights(weights)
        assigned.add(layer.name)

    missed = [
        layer.name for layer in keras_model.layers if layer.weights and layer.name not in assigned
    ]
    if missed:
        raise LayerError(
            f"Keras layers {missed} have weights but no torch module was copied into them; "
            "map them with layer_map={torch_name: keras_name}"
        )


def _to_keras_weights(module_name: str, tensors: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """One torch module's tensors, reordered and transposed into ``layer.set_weights`` order."""
    if "running_mean" in tensors:
        # Keras BatchNormalization order: gamma, beta (each only if enabled), mean, variance.
        order = ("weight", "bias", "running_mean", "running_var")
        return [tensors[k] for k in order if k in tensors]
    if "weight" not in tensors:
        return []
    kernel = tensors["weight"]
    axes = {2: (1, 0), 3: (2, 1, 0), 4: (2, 3, 1, 0)}.get(kernel.ndim)
    if axes is None:
        raise LayerError(
            f"torch module {module_name!r}: cannot convert a {kernel.ndim}-D weight; only "
            "Linear (2-D), Conv1d (3-D) and Conv2d (4-D) kernels are supported"
        )
    weights = [np.ascontiguousarray(kernel.transpose(axes))]
    if "bias" in tensors:
        weights.append(tensors["bias"])
    return weights


def _get_keras_layer(keras_model: keras.Model, keras_name: str, module_name: str) -> Any:
    try:
        return keras_model.get_layer(keras_name)
    except ValueError:
        names = [layer.name for layer in keras_model.layers if layer.weights]
        raise LayerError(
            f"torch module {module_name!r} maps to Keras layer {keras_name!r}, which the Keras "
            f"model does not have (layers with weights: {names}); pass layer_map"
        ) from None


def _check_num_classes(num_classes: int) -> None:
    if int(num_classes) < 1:
        raise ParameterError(f"num_classes must be >= 1, got {num_classes}")
