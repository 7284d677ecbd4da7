"""Empirical neural tangent kernels (trace over the output axis).

K(x, x') = Σ_c ∇_θ f_c(x) · ∇_θ f_c(x'), f = logits: the paper's multi-class
kernel, each C×C block replaced by its trace (neural-tangents'
``trace_axes=(-1,)`` returns this divided by C).

Restricted to the last layer f = Wᵀh + b (W: D×C), the kernel has a closed
form from the penultimate features h:  K(x, x') = C · (h·h' + 1).  It is the
Gram matrix of the explicit feature map φ(x) = √C · [h, 1], which lets NPC
score candidate batches from (n, D+1) features without differentiating.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def last_layer_feature_map(features: jax.Array, num_classes: int) -> jax.Array:
    """φ with φ(x)·φ(x') = the last-layer trace-NTK on logits.

    Args:
      features: (n, D) penultimate features h.
      num_classes: C.

    Returns:
      (n, D + 1) float32: √C · [h, 1].
    """
    features = jnp.asarray(features, jnp.float32)
    ones = jnp.ones((features.shape[0], 1), features.dtype)
    return jnp.sqrt(float(num_classes)) * jnp.concatenate([features, ones], axis=1)


def last_layer_ntk(features1: jax.Array, features2: jax.Array,
                   num_classes: int) -> jax.Array:
    """Closed-form last-layer trace-NTK on logits: (n1, D), (n2, D) -> (n1, n2)."""
    return num_classes * (features1 @ features2.T + 1.0)
