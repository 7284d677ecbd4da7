"""Self-supervised pretraining of a classifier's encoder on the unlabeled pool.

The pool is unlabeled by definition, so a representation learned from it
costs no label; it is learned once per (dataset, model, recipe) and shared by
every strategy, seed and round that names it (`npc_jax.ssl.pretrain_cache`).

Methods (`PretrainConfig.method`), both on the network that later fine-tunes
(its penultimate features, through a projection head that is dropped after):

* ``"simclr"`` (Chen et al., 2020): two `augment.contrastive_view`s of each of
  B images; the NT-Xent loss over the 2B projections z (L2-normalised),

      L = −(1/2B) Σ_i log( exp(z_i·z_j(i)/τ) / Σ_{k≠i} exp(z_i·z_k/τ) ),

  j(i) being the other view of i's image.
* ``"simsiam"`` (Chen & He, 2021): a projector and a predictor p;
  L = −½ cos(p_1, sg(z_2)) − ½ cos(p_2, sg(z_1)), no negatives.

The step is pure, ``(state, data, key) -> (state, metrics)``: it draws its
images from the device-resident pool with its key (``fold_in(key, step)``),
so a training resumed from a checkpoint at step s continues exactly as an
uninterrupted one. Optimiser: AdamW with a linear warm-up and a cosine decay.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from npc_jax.data import images_to_float
from npc_jax.models import Model
from npc_jax.ssl import augment

__all__ = [
    "METHODS",
    "PretrainConfig",
    "PretrainState",
    "init_state",
    "jitted_step",
    "nt_xent_loss",
    "pretrain_step",
    "simsiam_loss",
]

METHODS = ("simclr", "simsiam")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """A pretraining recipe. Every field is part of the cache key.

    method: "simclr" or "simsiam".
    steps: optimiser steps; batch_size: images per step (2 views each).
    lr, weight_decay, warmup_steps: AdamW, linear warm-up then cosine to 0.
    temperature: τ of NT-Xent (simclr).
    projection_dim, hidden_dim: the projection head, hidden_dim -> projection_dim
      (simsiam's predictor has hidden_dim // 4 units).
    crop_scale: area range of the random resized crops; flip: mirror views.
    jitter: brightness/contrast jitter strength (applied with probability 0.8).
    randaugment_ops, randaugment_probability: each view then gets that many
      RandAugment ops with that probability (`augment.contrastive_view`; 0: none).
    """

    method: str = "simclr"
    steps: int = 3000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    temperature: float = 0.2
    projection_dim: int = 64
    hidden_dim: int = 256
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip: bool = True
    jitter: float = 0.4
    randaugment_ops: int = 0
    randaugment_probability: float = 0.5

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"PretrainConfig.method must be one of {METHODS}, got "
                             f"{self.method!r}.")
        for name in ("steps", "batch_size", "projection_dim", "hidden_dim"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"PretrainConfig.{name} must be a positive integer, got "
                                 f"{getattr(self, name)!r}.")
        if not (self.lr > 0 and self.temperature > 0 and self.weight_decay >= 0
                and 0 <= self.warmup_steps < self.steps):
            raise ValueError("PretrainConfig needs lr > 0, temperature > 0, weight_decay >= 0 "
                             f"and 0 <= warmup_steps < steps; got {self}.")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"PretrainConfig.crop_scale must satisfy 0 < low <= high <= 1, "
                             f"got {self.crop_scale}.")
        object.__setattr__(self, "crop_scale", (float(low), float(high)))
        if int(self.randaugment_ops) != self.randaugment_ops or self.randaugment_ops < 0 \
                or not 0 <= self.randaugment_probability <= 1:
            raise ValueError("PretrainConfig.randaugment_ops must be an integer >= 0 and "
                             "randaugment_probability in [0, 1]; got "
                             f"{self.randaugment_ops!r}, {self.randaugment_probability!r}.")


class _Head(nn.Module):
    """Projection head (and, for simsiam, the predictor): features -> (z, p)."""

    hidden_dim: int
    projection_dim: int
    predictor: bool

    @nn.compact
    def __call__(self, features, *, train: bool):
        norm = lambda name, **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                               name=name, **kw)
        h = nn.relu(norm("bn1")(nn.Dense(self.hidden_dim, name="dense1")(features)))
        z = nn.Dense(self.projection_dim, name="dense2")(h)
        if not self.predictor:
            return z, z
        z = norm("bn2", use_scale=False, use_bias=False)(z)
        q = nn.relu(norm("pred_bn")(nn.Dense(self.hidden_dim // 4, name="pred1")(z)))
        return z, nn.Dense(self.projection_dim, name="pred2")(q)


def _head(config: PretrainConfig) -> _Head:
    return _Head(config.hidden_dim, config.projection_dim, config.method == "simsiam")


class PretrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any          # {"encoder": model params, "head": head params}
    batch_stats: Any     # the same two keys
    opt_state: Any

    @property
    def encoder_variables(self):
        """``{"params", "batch_stats"}`` of the pretrained network (the classifier
        layer included, still at its initialisation: fine-tuning replaces it)."""
        return {"params": self.params["encoder"], "batch_stats": self.batch_stats["encoder"]}


def make_optimizer(config: PretrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.lr, config.warmup_steps, config.steps)
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: path[-1].key == "kernel", params)
    return optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)


def init_state(model: Model, config: PretrainConfig, key: jax.Array) -> PretrainState:
    """A fresh network and head, initialised from `key` (split into two)."""
    encoder_key, head_key = jax.random.split(key)
    encoder = model.init(encoder_key)
    features = model.apply_with_features(encoder, jnp.zeros((2, *model.input_shape)))[1]
    head = _head(config).init(head_key, features, train=False)
    params = {"encoder": encoder["params"], "head": head["params"]}
    return PretrainState(step=jnp.zeros((), jnp.int32), params=params,
                         batch_stats={"encoder": encoder["batch_stats"],
                                      "head": head.get("batch_stats", {})},
                         opt_state=make_optimizer(config).init(params))


def nt_xent_loss(z: jax.Array, temperature: float) -> jax.Array:
    """SimCLR's NT-Xent loss.

    Args:
      z: (2B, D) projections; rows i and i + B are the two views of one image.
      temperature: τ > 0.

    Returns:
      () the mean over the 2B rows of −log softmax_k≠i(z_i·z_k/τ) at k = j(i),
      with z L2-normalised first.
    """
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12)
    n = z.shape[0]
    logits = (z @ z.T) / temperature
    logits = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, logits)
    positives = (jnp.arange(n) + n // 2) % n
    return -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[jnp.arange(n), positives])


def simsiam_loss(z: jax.Array, p: jax.Array) -> jax.Array:
    """SimSiam's loss: −½ cos(p_1, sg(z_2)) − ½ cos(p_2, sg(z_1)).

    Args:
      z, p: (2B, D) projections and predictions; rows i and i + B are the two
        views of one image.

    Returns:
      () in [−1, 1]; the gradient reaches p only.
    """
    half = z.shape[0] // 2
    target = jax.lax.stop_gradient(jnp.concatenate([z[half:], z[:half]]))
    cosine = jnp.sum(p * target, axis=-1) / (
        jnp.linalg.norm(p, axis=-1) * jnp.linalg.norm(target, axis=-1)).clip(1e-12)
    return -jnp.mean(cosine)


def pretrain_step(state: PretrainState, images: jax.Array, key: jax.Array, *,
                  model: Model, config: PretrainConfig):
    """One step on a batch of `config.batch_size` pool images drawn with `key`.

    Args:
      state: the training state.
      images: (N, H, W, C) the whole pool (uint8 or float in [0, 1]), on device.
      key: this step's key (split into the draw and the two views).

    Returns:
      (new state, {"loss", "positive_similarity"}): the second is the mean
      cosine similarity of the two views' projections (diagnostic).
    """
    draw_key, view1_key, view2_key = jax.random.split(key, 3)
    index = jax.random.randint(draw_key, (config.batch_size,), 0, images.shape[0])
    x = images_to_float(images[index])
    view = functools.partial(augment.contrastive_view, scale=config.crop_scale,
                             flip=config.flip, jitter=config.jitter,
                             randaugment_ops=config.randaugment_ops,
                             randaugment_probability=config.randaugment_probability)
    views = jnp.concatenate([view(view1_key, x), view(view2_key, x)])
    head = _head(config)

    def loss_fn(params):
        features, encoder_stats = model.features_train(
            {"params": params["encoder"], "batch_stats": state.batch_stats["encoder"]}, views)
        (z, p), head_updates = head.apply(
            {"params": params["head"], "batch_stats": state.batch_stats["head"]}, features,
            train=True, mutable=["batch_stats"])
        loss = (nt_xent_loss(z, config.temperature) if config.method == "simclr"
                else simsiam_loss(z, p))
        stats = {"encoder": encoder_stats, "head": head_updates["batch_stats"]}
        return loss, (stats, z)

    (loss, (batch_stats, z)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = make_optimizer(config).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12)
    half = z.shape[0] // 2
    metrics = {"loss": loss, "positive_similarity": jnp.mean(jnp.sum(z[:half] * z[half:], -1))}
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), metrics


@functools.partial(jax.jit, static_argnames=("model", "config"), donate_argnums=(0,))
def jitted_step(state: PretrainState, images: jax.Array, key: jax.Array, *,
                model: Model, config: PretrainConfig):
    """`pretrain_step` with the step's key ``fold_in(key, state.step)``, compiled once."""
    return pretrain_step(state, images, jax.random.fold_in(key, state.step), model=model,
                         config=config)
