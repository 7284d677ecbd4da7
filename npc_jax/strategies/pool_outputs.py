"""Helpers shared by the score-based baselines: chunked pool inference, top-q.

The pool holds 60k–1M images. `map_pool` runs the model over index chunks
and reduces each chunk right away (to scores, or to features), so memory is
one chunk of images plus the reduced outputs — never the pool's images copied
whole, never the pool's logits when only a score is needed.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from npc_jax.inference import check_finite, numpy_rng
from npc_jax.strategies.base import AcquisitionContext

__all__ = [
    "DEFAULT_CHUNK",
    "map_pool",
    "softmax",
    "top_q",
]

# Images per call of ctx.logits_and_features: bounds the copy of pool images
# (``ctx.images[indices]``) at 16k images (≈ 50 MB at 32×32×3 uint8).
DEFAULT_CHUNK = 16384


def map_pool(ctx: AcquisitionContext, indices: np.ndarray,
             reduce_fn: Callable[[np.ndarray, np.ndarray], np.ndarray | tuple],
             *, chunk_size: int = DEFAULT_CHUNK):
    """Applies `reduce_fn(logits, features)` chunk by chunk over pool `indices`.

    Args:
      ctx: the model and the pool's images.
      indices: (n,) int pool indices.
      reduce_fn: maps a chunk's logits (b, C) float32 and features (b, D)
        float32 to an array (b, ...) or a tuple of such arrays.
      chunk_size: images per inference call.

    Returns:
      The per-chunk outputs concatenated along axis 0 (array or tuple).

    Raises:
      ValueError: the model's logits or features are non-finite.
    """
    indices = np.asarray(indices, np.int64)
    outputs = []
    for start in range(0, len(indices), chunk_size):
        chunk = indices[start:start + chunk_size]
        logits, features = ctx.logits_and_features(chunk)
        logits = np.asarray(logits, np.float32)
        features = np.asarray(features, np.float32)
        check_finite(logits, "logits", indices=chunk)
        check_finite(features, "penultimate features", indices=chunk)
        outputs.append(reduce_fn(logits, features))
    if not outputs:
        raise ValueError("map_pool needs at least one index.")
    if isinstance(outputs[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*outputs))
    return np.concatenate(outputs)


def softmax(logits: np.ndarray) -> np.ndarray:
    """(n, C) logits -> (n, C) float64 probabilities (max-shifted, stable)."""
    shifted = np.asarray(logits, np.float64)
    shifted = shifted - shifted.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def top_q(scores: np.ndarray, q: int, key: jax.Array) -> np.ndarray:
    """Positions of the q largest scores, exact ties broken uniformly at random.

    O(n): a partition finds the q-th largest value; every score above it is
    taken, and the remaining places go to a random subset of the scores equal
    to it (drawn with `key`). Without random tie-breaking, a model that scores
    many samples alike (e.g. untrained, or saturated softmax) would always
    pick the lowest pool indices.

    Args:
      scores: (n,) finite float scores, larger = picked first.
      q: 1 <= q <= n.
      key: PRNG key for the ties.

    Returns:
      (q,) int64 positions into `scores`, ordered by decreasing score.
    """
    scores = np.asarray(scores)
    n = len(scores)
    if not 1 <= q <= n:
        raise ValueError(f"top_q needs 1 <= q <= {n}, got q={q}.")
    kth = np.partition(scores, n - q)[n - q]            # the q-th largest value
    above = np.flatnonzero(scores > kth)
    tied = np.flatnonzero(scores == kth)
    extra = numpy_rng(key).choice(tied, q - len(above), replace=False)
    chosen = np.concatenate([above, np.sort(extra)])
    order = np.argsort(-scores[chosen], kind="stable")
    return chosen[order].astype(np.int64)
