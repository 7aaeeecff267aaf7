"""A small Vision Transformer in PyTorch and in Keras with identical weights (twins).

``patch embedding (conv, stride = patch) → class token + positions → blocks → norm → head``,
each block ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` (one attention head, GELU MLP),
the head reading the class token (``pool="cls"``) or the mean of the patch tokens
(``pool="mean"``). Layer names: ``patch``, ``blocks.{i}.norm1`` (Keras ``block{i}_norm1``),
``blocks.{i}.q/k/v/o``, ``blocks.{i}.norm2``, ``blocks.{i}.fc1/fc2``, ``norm``, ``head``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-5


def vit_weights(
    seed: int = 0, *, channels: int = 3, size: int = 16, patch: int = 4, dim: int = 8, depth: int = 2,
    classes: int = 5,
) -> dict[str, np.ndarray]:
    """Random weights in PyTorch's layout."""
    rng = np.random.default_rng(seed)
    tokens = (size // patch) ** 2 + 1

    def normal(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    w = {
        "patch.weight": normal(dim, channels, patch, patch), "patch.bias": normal(dim),
        "cls": normal(1, 1, dim), "pos": normal(1, tokens, dim),
        "norm.weight": 1 + normal(dim, scale=0.1), "norm.bias": normal(dim, scale=0.1),
        "head.weight": normal(classes, dim), "head.bias": normal(classes),
    }
    for i in range(depth):
        for part in ("norm1", "norm2"):
            w[f"blocks.{i}.{part}.weight"] = 1 + normal(dim, scale=0.1)
            w[f"blocks.{i}.{part}.bias"] = normal(dim, scale=0.1)
        for part, (out, inp) in {"q": (dim, dim), "k": (dim, dim), "v": (dim, dim), "o": (dim, dim),
                                 "fc1": (2 * dim, dim), "fc2": (dim, 2 * dim)}.items():
            w[f"blocks.{i}.{part}.weight"] = normal(out, inp, scale=1 / np.sqrt(inp))
            w[f"blocks.{i}.{part}.bias"] = normal(out, scale=0.1)
    return w


def torch_vit(weights: dict[str, np.ndarray], *, pool: str = "cls") -> Any:
    import torch
    from torch import nn

    dim = weights["cls"].shape[-1]
    channels, patch = weights["patch.weight"].shape[1], weights["patch.weight"].shape[2]
    depth = len({k.split(".")[1] for k in weights if k.startswith("blocks.")})

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(dim, eps=EPS), nn.LayerNorm(dim, eps=EPS)
            self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
            self.fc1, self.fc2, self.act = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim), nn.GELU()

        def forward(self, x: Any) -> Any:
            h = self.norm1(x)
            att = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / dim**0.5, dim=-1)
            x = x + self.o(att @ self.v(h))
            return x + self.fc2(self.act(self.fc1(self.norm2(x))))

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(channels, dim, patch, stride=patch)
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos = nn.Parameter(torch.zeros(weights["pos"].shape))
            self.blocks = nn.ModuleList(Block() for _ in range(depth))
            self.norm = nn.LayerNorm(dim, eps=EPS)
            self.head = nn.Linear(dim, weights["head.weight"].shape[0])

        def forward(self, x: Any) -> Any:
            t = self.patch(x).flatten(2).transpose(1, 2)                       # (N, h·w, D) row-major
            t = torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1) + self.pos
            for block in self.blocks:
                t = block(t)
            t = self.norm(t)
            return self.head(t[:, 0] if pool == "cls" else t[:, 1:].mean(dim=1))

    model = ViT()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return model.eval()


def keras_vit(weights: dict[str, np.ndarray], *, pool: str = "cls", size: int = 16) -> Any:
    import keras
    from keras import ops

    from xai_toolbox.testing import keras_layout

    dim = weights["cls"].shape[-1]
    channels, patch = weights["patch.weight"].shape[1], weights["patch.weight"].shape[2]
    depth = len({k.split(".")[1] for k in weights if k.startswith("blocks.")})

    class Tokens(keras.layers.Layer):  # class token in front, positions added
        def build(self, shape: Any) -> None:
            self.cls = self.add_weight(shape=(1, 1, dim), name="cls")
            self.pos = self.add_weight(shape=weights["pos"].shape, name="pos")

        def call(self, t: Any) -> Any:
            cls = ops.broadcast_to(self.cls, (ops.shape(t)[0], 1, dim))
            return ops.concatenate([cls, t], axis=1) + self.pos

    class Attend(keras.layers.Layer):
        def call(self, qkv: Any) -> Any:
            q, k, v = qkv
            att = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 2, 1))) / dim**0.5, axis=-1)
            return ops.matmul(att, v)

    class Pool(keras.layers.Layer):
        def call(self, t: Any) -> Any:
            return t[:, 0] if pool == "cls" else ops.mean(t[:, 1:], axis=1)

    inputs = keras.Input((size, size, channels))
    t = keras.layers.Conv2D(dim, patch, strides=patch, name="patch")(inputs)
    t = keras.layers.Reshape((-1, dim), name="flatten")(t)
    t = Tokens(name="tokens")(t)
    for i in range(depth):
        h = keras.layers.LayerNormalization(epsilon=EPS, name=f"block{i}_norm1")(t)
        q, k, v = (keras.layers.Dense(dim, name=f"block{i}_{p}")(h) for p in "qkv")
        a = keras.layers.Dense(dim, name=f"block{i}_o")(Attend(name=f"block{i}_attend")([q, k, v]))
        t = keras.layers.Add(name=f"block{i}_add1")([t, a])
        h = keras.layers.LayerNormalization(epsilon=EPS, name=f"block{i}_norm2")(t)
        h = keras.layers.Dense(2 * dim, activation="gelu", name=f"block{i}_fc1")(h)
        t = keras.layers.Add(name=f"block{i}_add2")([t, keras.layers.Dense(dim, name=f"block{i}_fc2")(h)])
    t = keras.layers.LayerNormalization(epsilon=EPS, name="norm")(t)
    outputs = keras.layers.Dense(weights["head.weight"].shape[0], name="head")(Pool(name="pool")(t))
    model = keras.Model(inputs, outputs, name="tiny_vit")

    def dense(name: str, prefix: str) -> None:
        model.get_layer(name).set_weights([keras_layout(weights[f"{prefix}.weight"]), weights[f"{prefix}.bias"]])

    model.get_layer("patch").set_weights([keras_layout(weights["patch.weight"]), weights["patch.bias"]])
    model.get_layer("tokens").set_weights([weights["cls"], weights["pos"]])
    for i in range(depth):
        for part in ("norm1", "norm2"):
            model.get_layer(f"block{i}_{part}").set_weights(
                [weights[f"blocks.{i}.{part}.weight"], weights[f"blocks.{i}.{part}.bias"]]
            )
        for part in ("q", "k", "v", "o", "fc1", "fc2"):
            dense(f"block{i}_{part}", f"blocks.{i}.{part}")
    model.get_layer("norm").set_weights([weights["norm.weight"], weights["norm.bias"]])
    dense("head", "head")
    return model


def twin_vit(seed: int = 0, *, pool: str = "cls", **kwargs: Any) -> tuple[Any, Any]:
    weights = vit_weights(seed, **kwargs)
    return torch_vit(weights, pool=pool), keras_vit(weights, pool=pool, size=kwargs.get("size", 16))
