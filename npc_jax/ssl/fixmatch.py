"""FixMatch's losses (Sohn et al., 2020), as pure functions of logits.

The train step (`npc_jax.train`) runs the network once on the concatenation
[weak(labeled), weak(unlabeled), strong(unlabeled)] and hands the pieces here.
Pseudo-labels come from the weak view's probabilities (optionally refined by
DARP); they are constants for the gradient.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from npc_jax.ssl import propagation

__all__ = [
    "UnlabeledLossInfo",
    "cross_entropy",
    "pseudo_label_loss",
    "weighted_pseudo_label_loss",
]


class UnlabeledLossInfo(NamedTuple):
    mask: jax.Array          # (B_u,) float32, 1 where the pseudo-label is confident
    pseudo_labels: jax.Array  # (B_u,) int32, argmax of the (refined) weak distribution
    confidence: jax.Array    # (B_u,) float32, its max probability


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy. logits (B, C) float, labels (B,) int -> ()."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def pseudo_label_loss(strong_logits: jax.Array, pseudo_distribution: jax.Array,
                      threshold) -> tuple[jax.Array, UnlabeledLossInfo]:
    """FixMatch's unlabeled loss.

    Args:
      strong_logits: (B_u, C) logits of the strongly augmented views.
      pseudo_distribution: (B_u, C) class distribution of the weak views (the
        softmax, or DARP's refinement of it); treated as a constant.
      threshold: τ, a scalar, or (C,) per-class thresholds (a sample is held
        to the threshold of its pseudo-label, e.g. FreeMatch's); samples whose
        max probability is below it are masked out.

    Returns:
      The loss Σ_b mask_b · CE(strong_b, argmax_b) / B_u (FixMatch averages over
      the whole unlabeled batch, masked samples included), and diagnostics.
    """
    pseudo_distribution = jax.lax.stop_gradient(pseudo_distribution)
    confidence = jnp.max(pseudo_distribution, axis=-1)
    pseudo_labels = jnp.argmax(pseudo_distribution, axis=-1).astype(jnp.int32)
    threshold = jnp.asarray(threshold, confidence.dtype)
    if threshold.ndim:
        threshold = threshold[pseudo_labels]
    mask = (confidence >= threshold).astype(jnp.float32)
    per_sample = optax.softmax_cross_entropy_with_integer_labels(
        strong_logits, pseudo_labels)
    loss = jnp.mean(per_sample * mask)
    return loss, UnlabeledLossInfo(mask, pseudo_labels, confidence)


def weighted_pseudo_label_loss(strong_logits: jax.Array, pseudo_distribution: jax.Array
                               ) -> tuple[jax.Array, UnlabeledLossInfo]:
    """The unlabeled loss on given targets (e.g. propagated labels), each sample
    weighted by its certainty (Iscen et al., 2019) instead of a threshold.

    Args:
      strong_logits: (B_u, C) logits of the strongly augmented views.
      pseudo_distribution: (B_u, C) target class distributions (constants).

    Returns:
      Σ_b w_b · CE(strong_b, argmax_b) / B_u with w_b = 1 − H(p_b) / log C, and
      diagnostics whose ``mask`` is w (so its mean is the mean weight).
    """
    p = jax.lax.stop_gradient(pseudo_distribution)
    weight = propagation.certainty(p)
    pseudo_labels = jnp.argmax(p, axis=-1).astype(jnp.int32)
    per_sample = optax.softmax_cross_entropy_with_integer_labels(strong_logits, pseudo_labels)
    return (jnp.mean(weight * per_sample),
            UnlabeledLossInfo(weight, pseudo_labels, jnp.max(p, axis=-1)))
