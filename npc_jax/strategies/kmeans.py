"""k-means in JAX: k-means++ seeding, then Lloyd iterations, memory-bounded.

Used by TypiClust (|L| + Q clusters) and ProbCover's purity rule (C clusters).

    result = kmeans(key, x, k)      # x (N, d) float32
    result.centers (k, d), result.labels (N,) int32

Seeding (Arthur & Vassilvitskii 2007): the first center uniform, each next
one drawn ∝ D²(x), the squared distance to the nearest chosen center:
"greedy" seeding as scikit-learn's, 2 + ⌊ln k⌋ draws (Gumbel-max, no float32
cumulative sum over the pool) of which the one lowering Σ D² most is kept;
plain one-draw seeding lands in merged-blob local optima noticeably more
often (measured on 3000 × 8 blobs, 10 centers). Lloyd: assign each point to its nearest center, move each center to
its points' mean, until the total squared center shift is at most
`tol` × the mean per-feature variance (scikit-learn's rule) or `max_iter`.
A cluster left empty keeps its previous center.

Memory: the assignment runs over row blocks of `block_rows` × k distances
(≈ 16 MB each), so besides x it holds O(N + k d). Time per iteration
O(N k d). Everything runs under one `jit` per (N, d, k).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from npc_jax.inference import check_finite

__all__ = ["KMeansResult", "kmeans"]


class KMeansResult(NamedTuple):
    centers: np.ndarray   # (k, d) float32
    labels: np.ndarray    # (N,) int32 in 0..k-1: the nearest center of each row
    inertia: float        # Σ_x ‖x − center(x)‖²
    iterations: int       # Lloyd iterations run


def _block_rows(k: int) -> int:
    # Rows per (rows, k) distance block: ≈ 4M floats (16 MB).
    return max(256, min(16384, (1 << 22) // max(k, 1)))


def _sq_dist(a, a_sq, b):
    """(n, m) squared distances ‖a_i − b_j‖², clipped at 0 (expanded form)."""
    return jnp.maximum(a_sq[:, None] + jnp.sum(b ** 2, 1)[None, :] - 2.0 * (a @ b.T), 0.0)


def _seed(key, x, x_sq, k):
    """(k, d) greedy k-means++ seeds (scikit-learn's variant)."""
    n = x.shape[0]
    trials = 2 + int(np.log(k))
    first_key, draw_key = jax.random.split(key)
    first = jax.random.randint(first_key, (), 0, n)
    min_d = _sq_dist(x, x_sq, x[first][None])[:, 0]
    centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])

    def step(i, carry):
        centers, min_d = carry
        # D² = 0 everywhere (only copies of centers left): draw uniformly.
        weights = jnp.where(jnp.max(min_d) > 0, min_d, 1.0)
        picks = jax.random.categorical(jax.random.fold_in(draw_key, i), jnp.log(weights),
                                       shape=(trials,))
        # Keep the trial that lowers the potential Σ D² most.
        new_d = jnp.minimum(min_d[:, None], _sq_dist(x, x_sq, x[picks]))
        best = jnp.argmin(jnp.sum(new_d, 0))
        return centers.at[i].set(x[picks[best]]), new_d[:, best]

    return jax.lax.fori_loop(1, k, step, (centers, min_d))[0]


def _assign(blocks, block_sq, centers):
    """Nearest center (labels, squared distance) of every row of (B, rows, d) blocks."""
    def one(args):
        block, sq = args
        dist = _sq_dist(block, sq, centers)
        return jnp.argmin(dist, 1).astype(jnp.int32), jnp.min(dist, 1)

    labels, dist = jax.lax.map(one, (blocks, block_sq))
    return labels.reshape(-1), dist.reshape(-1)


@functools.partial(jax.jit, static_argnames=("k", "block_rows", "max_iter"))
def _kmeans(key, x, k, block_rows, max_iter, tol):
    n, d = x.shape
    x_sq = jnp.sum(x ** 2, 1)
    num_blocks = -(-n // block_rows)
    pad = num_blocks * block_rows - n
    blocks = jnp.pad(x, ((0, pad), (0, 0))).reshape(num_blocks, block_rows, d)
    block_sq = jnp.pad(x_sq, (0, pad)).reshape(num_blocks, block_rows)
    valid = jnp.arange(num_blocks * block_rows) < n
    threshold = tol * jnp.mean(jnp.var(x, 0))

    def update(carry):
        centers, _, it = carry
        labels, _ = _assign(blocks, block_sq, centers)
        labels = jnp.where(valid, labels, k)          # padding rows go to a dropped segment
        sums = jax.ops.segment_sum(blocks.reshape(-1, d), labels, k + 1)[:k]
        counts = jax.ops.segment_sum(valid.astype(x.dtype), labels, k + 1)[:k]
        new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centers)
        return new, jnp.sum((new - centers) ** 2), it + 1

    def not_done(carry):
        _, shift, it = carry
        return (it < max_iter) & (shift > threshold)

    centers = _seed(key, x, x_sq, k)
    centers, _, iterations = jax.lax.while_loop(
        not_done, update, (centers, jnp.asarray(jnp.inf, x.dtype), 0))
    labels, dist = _assign(blocks, block_sq, centers)
    return centers, labels[:n], jnp.sum(jnp.where(valid, dist, 0.0)), iterations


def kmeans(key: jax.Array, x, k: int, *, max_iter: int = 300,
           tol: float = 1e-4) -> KMeansResult:
    """k-means++ seeded Lloyd k-means.

    Args:
      key: PRNG key for the seeding (the result is deterministic per key).
      x: (N, d) float array, finite.
      k: number of clusters, 1 <= k <= N.
      max_iter: most Lloyd iterations.
      tol: stop when the total squared center shift is <= tol × mean variance.

    Returns:
      KMeansResult with centers (k, d) float32 and labels (N,) int32.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"kmeans needs (N, d) data, got shape {x.shape}.")
    if not 1 <= int(k) <= x.shape[0]:
        raise ValueError(f"kmeans: k={k} clusters must lie in 1..{x.shape[0]} (the number of "
                         "points); ask for fewer clusters or a larger pool.")
    check_finite(x, "k-means input")
    centers, labels, inertia, iterations = _kmeans(key, x, int(k), _block_rows(int(k)),
                                                   int(max_iter), float(tol))
    return KMeansResult(np.asarray(centers), np.asarray(labels), float(inertia),
                        int(iterations))
