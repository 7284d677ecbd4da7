"""Classifiers and the function views of them that the rest of the library uses.

Every model is a Flax module whose ``__call__(x, train=..., return_features=...)``
gives logits (and, on request, the penultimate features that feed the last
layer). `Model` wraps a module into the function views used elsewhere:

* ``apply_fn(variables, x) -> logits``: inference mode (BatchNorm running
  statistics), the neural-tangents calling convention used by kernels.
* ``apply_with_features(variables, x) -> (logits, features)``.
* ``apply_train(variables, x) -> (logits, new_batch_stats)``: train mode.

Images enter as float32 in [0, 1], shape (B, H, W, C).
The last layer is always a `Dense` named ``"classifier"`` so that last-layer
kernels (NPC, BADGE) can find it.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "CLASSIFIER",
    "Model",
    "SmallCNN",
    "Variables",
    "WideResNet",
    "count_params",
    "get_model",
]

Variables = Any  # {"params": ..., "batch_stats": ...}

CLASSIFIER = "classifier"


class SmallCNN(nn.Module):
    """A ~100k-parameter CNN with BatchNorm for CPU runs on 28x28 images.

    conv3x3(32, stride 2) -> conv3x3(64) -> conv3x3(64, stride 2) -> conv3x3(64)
    -> pool -> dense(feature_dim) -> classifier(num_classes).
    Each conv is followed by BatchNorm and ReLU (convs carry no bias: BN's does).

    `pooling` of the last (B, 7, 7, 64) map: ``"global"`` averages it to (B, 64),
    translation-invariant (the L1 model, ``"cnn"``); ``"grid"`` averages 3x3
    windows at stride 2 and flattens the (B, 3, 3, 64) result to (B, 576),
    keeping a coarse layout of the garment (``"cnn_grid"``). The self-supervised
    pretraining learns a better representation with the grid (BENCHMARKS.md
    P8: +4 kNN points at 1 label per class, +3.7 at 10, same steps, same cost).

    Downsampling is by strided convolutions, not max-pooling: on XLA:CPU the
    max-pool gradient and full-resolution activations dominated the train step
    (0.64 s vs 0.26 s per 480 images measured on 2 cores, same parameter count).

    The penultimate width (`feature_dim` = 128) is deliberately larger than the
    labeled sets NPC scores: the last-layer kernel on logits has rank at most
    feature_dim + 1, so a narrower head would make every batch's λ_min zero.
    """

    num_classes: int
    widths: Sequence[int] = (32, 64, 64, 64)
    strides: Sequence[int] = (2, 1, 2, 1)
    feature_dim: int = 128
    bn_momentum: float = 0.99
    pooling: str = "global"

    @nn.compact
    def __call__(self, x, *, train: bool = False, return_features: bool = False):
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
            epsilon=1e-5)
        for i, (width, stride) in enumerate(zip(self.widths, self.strides)):
            x = nn.Conv(width, (3, 3), strides=(stride, stride), use_bias=False,
                        name=f"conv{i}")(x)
            x = nn.relu(norm(name=f"bn{i}")(x))
        if self.pooling == "global":
            x = jnp.mean(x, axis=(1, 2))
        elif self.pooling == "grid":
            x = nn.avg_pool(x, (3, 3), strides=(2, 2)).reshape(x.shape[0], -1)
        else:
            raise ValueError(f"SmallCNN.pooling must be 'global' or 'grid', got "
                             f"{self.pooling!r}.")
        features = nn.relu(nn.Dense(self.feature_dim, name="hidden")(x))
        logits = nn.Dense(self.num_classes, name=CLASSIFIER)(features)
        return (logits, features) if return_features else logits


def _leaky_relu(x):
    return nn.leaky_relu(x, negative_slope=0.1)


# FixMatch's WRN initialises convs with He-normal on fan-out (gain of a leaky
# ReLU with slope 0.1) and the classifier with Glorot-normal.
_conv_init = nn.initializers.variance_scaling(2.0 / (1 + 0.1 ** 2), "fan_out", "normal")
_dense_init = nn.initializers.xavier_normal()


class _WideBlock(nn.Module):
    """Pre-activation basic block: BN-act-conv3x3(stride)-BN-act-conv3x3 + shortcut.

    The shortcut is the identity when shapes agree, else a 1x1 strided
    projection of the activated input. With `activate_before_residual` (first
    group) the identity path, too, starts from the activated input.
    """

    width: int
    stride: int
    activate_before_residual: bool
    norm: Callable[..., nn.Module]
    dtype: Any

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_conv_init,
                                 dtype=self.dtype)
        project = x.shape[-1] != self.width or self.stride != 1
        activated = _leaky_relu(self.norm(name="bn1")(x))
        if project or self.activate_before_residual:
            x = activated
        y = conv(self.width, (3, 3), strides=self.stride, name="conv1")(activated)
        y = conv(self.width, (3, 3), name="conv2")(_leaky_relu(self.norm(name="bn2")(y)))
        if project:
            x = conv(self.width, (1, 1), strides=self.stride, name="shortcut")(x)
        return x + y


class WideResNet(nn.Module):
    """WRN-depth-k as in FixMatch: 3 groups of (depth - 4) / 6 pre-activation blocks.

    conv3x3(16) -> groups of widths (16k, 32k, 64k), strides (1, 2, 2) ->
    BN -> leaky ReLU(0.1) -> global average pool (the features, 64k) ->
    classifier. No conv biases; BatchNorm momentum 0.999 (PyTorch's 0.001).
    WRN-28-2 has 1,467,610 parameters for 10 classes.

    `dtype` is the compute dtype (bfloat16 on GPUs); parameters, BatchNorm
    statistics and the logits stay float32.
    """

    num_classes: int
    depth: int = 28
    widen_factor: int = 2
    bn_momentum: float = 0.999
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False, return_features: bool = False):
        if (self.depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {self.depth}.")
        norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                                 momentum=self.bn_momentum, epsilon=1e-3, dtype=self.dtype)
        blocks = (self.depth - 4) // 6
        x = nn.Conv(16, (3, 3), use_bias=False, kernel_init=_conv_init, dtype=self.dtype,
                    name="stem")(x.astype(self.dtype))
        for group, (width, stride) in enumerate(zip((16, 32, 64), (1, 2, 2))):
            for i in range(blocks):
                x = _WideBlock(width * self.widen_factor, stride if i == 0 else 1,
                               activate_before_residual=group == 0 and i == 0,
                               norm=norm, dtype=self.dtype, name=f"group{group}_block{i}")(x)
        x = _leaky_relu(norm(name="bn_final")(x))
        features = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
        logits = nn.Dense(self.num_classes, kernel_init=_dense_init, name=CLASSIFIER)(features)
        return (logits, features) if return_features else logits


_MODULES: dict[str, Callable[..., nn.Module]] = {
    "cnn": SmallCNN,
    "cnn_grid": functools.partial(SmallCNN, pooling="grid"),
    "wrn28_2": functools.partial(WideResNet, depth=28, widen_factor=2),
}


@dataclasses.dataclass(frozen=True)
class Model:
    """A module together with the input shape it is built for.

    Attributes:
      name: registry name (e.g. ``"cnn"``).
      module: the Flax module.
      input_shape: (H, W, C) of one image.
      num_classes: C, the width of the logits.
    """

    name: str
    module: nn.Module
    input_shape: tuple[int, int, int]
    num_classes: int

    def init(self, key: jax.Array) -> Variables:
        """Returns ``{"params", "batch_stats"}`` for a fresh network."""
        dummy = jnp.zeros((1, *self.input_shape), jnp.float32)
        variables = self.module.init(key, dummy, train=False)
        return {"params": variables["params"],
                "batch_stats": variables.get("batch_stats", {})}

    def apply_fn(self, variables: Variables, x: jax.Array) -> jax.Array:
        """Inference-mode logits, (B, H, W, C) -> (B, num_classes)."""
        return self.module.apply(variables, x, train=False)

    def apply_with_features(self, variables: Variables, x: jax.Array):
        """Inference-mode (logits (B, C), penultimate features (B, D))."""
        return self.module.apply(variables, x, train=False, return_features=True)

    def batch_statistics(self, variables: Variables, x: jax.Array):
        """The BatchNorm statistics of batch `x` alone (same tree as ``batch_stats``).

        Runs train mode with BN momentum 0, so each running average is replaced
        by the batch's mean / variance. Modules must have a ``bn_momentum`` field.
        """
        _, updates = self.module.clone(bn_momentum=0.0).apply(
            variables, x, train=True, mutable=["batch_stats"])
        return updates["batch_stats"]

    def features_train(self, variables: Variables, x: jax.Array):
        """Train-mode penultimate features (B, D) and the updated ``batch_stats``
        (self-supervised pretraining trains the encoder through these)."""
        (_, features), updates = self.module.apply(
            variables, x, train=True, return_features=True, mutable=["batch_stats"])
        return features, updates["batch_stats"]

    def apply_train(self, variables: Variables, x: jax.Array):
        """Train-mode logits (B, C) and the updated ``batch_stats``."""
        logits, updates = self.module.apply(
            variables, x, train=True, mutable=["batch_stats"])
        return logits, updates["batch_stats"]


def get_model(name: str, num_classes: int,
              input_shape: tuple[int, int, int] = (28, 28, 1), **kwargs) -> Model:
    """Builds a registered model: ``"cnn"`` (the small CPU CNN), ``"cnn_grid"``
    (the same with a spatial grid before its dense layer) or ``"wrn28_2"``.

    `kwargs` go to the module (e.g. ``dtype=jnp.bfloat16`` for WRN's compute).
    """
    if name not in _MODULES:
        raise ValueError(
            f"Unknown model {name!r}; choose one of {sorted(_MODULES)} "
            f"(config field `model`).")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
    module = _MODULES[name](num_classes=num_classes, **kwargs)
    return Model(name, module, tuple(int(d) for d in input_shape), num_classes)


def count_params(params) -> int:
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
