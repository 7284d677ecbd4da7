"""k-means in JAX: k-means++ seeding, then Lloyd iterations, memory-bounded.

Used by TypiClust (|L| + Q clusters) and ProbCover's purity rule (C clusters).

    result = kmeans(key, x, k)      # x (N, d) float32
    result.centers (k, d), result.labels (N,) int32

Seeding (Arthur & Vassilvitskii 2007): the first center uniform, each next
one drawn ∝ D²(x), the squared distance to the nearest chosen center:
"greedy" seeding as scikit-learn's, 2 + ⌊ln k⌋ draws (each by inverse CDF
from one uniform: N Gumbels per draw were ≈ 40 % of the seeding time) of
which the one lowering Σ D² most is kept; plain one-draw seeding lands in
merged-blob local optima noticeably more often (measured on 3000 × 8 blobs,
10 centers). Lloyd: assign each point to its nearest center (argmax of
x·c − ½‖c‖², one matmul), move each center to its points' mean (one-hot
matmuls: XLA's CPU scatter cost as much as the distances), until the total
squared center shift is at most `tol` × the mean per-feature variance
(scikit-learn's rule) or `max_iter`. A cluster left empty keeps its previous
center.

Compilation: k is a traced value and the centres live in `bucket(k)` (the
next power of two) slots, the unused ones masked; so TypiClust, whose
K = |L| + Q grows every round, compiles once per doubling of K (one
`jit` per (N, d, bucket)), and the result does not depend on the bucket.
Measured on 60k × 128, K = 30, 2 loaded cores: 2.5 s with compilation,
0.8 s without (was 6.5 s and 4.6 s: per-K compilation, scatter, Gumbels).

Memory: the assignment runs over row blocks of `block_rows` × slots scores
(≈ 16 MB each), so besides x it holds O(N + k d). Time per iteration
O(N k d).

Devices: with D > 1 local devices and at least two row blocks, Lloyd's
assignment and per-block statistics run sharded over the blocks
(`pool_mesh`: the blocks padded to a multiple of D with empty ones, each
device its share); the per-block sums and counts are gathered and added in
block order. The seeding's distances are sharded over the rows and
all-gathered; its draws and sums run on every device alike. Measured on 8
fake CPU devices: the same seeds and labels as one device, the centres within
1 ulp (a block's one-hot matmul may round differently on another device's
threads), the same iterations and inertia (tests/test_multidevice.py).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import PartitionSpec

from npc_jax.inference import check_finite
from npc_jax.strategies import pool_mesh

__all__ = ["KMeansResult", "bucket", "kmeans"]


class KMeansResult(NamedTuple):
    centers: np.ndarray   # (k, d) float32
    labels: np.ndarray    # (N,) int32 in 0..k-1: the nearest center of each row
    inertia: float        # Σ_x ‖x − center(x)‖²
    iterations: int       # Lloyd iterations run


def _block_rows(k: int) -> int:
    # Rows per (rows, k) score block: ≈ 4M floats (16 MB).
    return max(256, min(16384, (1 << 22) // max(k, 1)))


def bucket(k: int) -> int:
    """The compiled number of centre slots for k clusters: the next power of two.

    A run whose K changes every round (TypiClust's |L| + Q) then compiles
    once per doubling of K, not once per round; the unused slots are masked.
    """
    return 1 << max(int(k) - 1, 0).bit_length()


def _sq_dist(a, a_sq, b):
    """(n, m) squared distances ‖a_i − b_j‖², clipped at 0 (expanded form)."""
    return jnp.maximum(a_sq[:, None] + jnp.sum(b ** 2, 1)[None, :] - 2.0 * (a @ b.T), 0.0)


def _draw(key, weights):
    """One index drawn ∝ weights (>= 0, not all 0) by inverse CDF.

    u ∈ (0, total] and the first index whose cumulative sum reaches u: a
    zero-weight index never has the first cumulative value >= u > 0. One
    uniform instead of N Gumbels (the draw was ≈ 40 % of the seeding time).
    """
    cumulative = jnp.cumsum(weights)
    u = (1.0 - jax.random.uniform(key, ())) * cumulative[-1]
    return jnp.minimum(jnp.searchsorted(cumulative, u, side="left"), weights.shape[0] - 1)


def _seed(key, x, x_sq, k, trials, max_trials, slots, distances=None):
    """(slots, d) greedy k-means++ seeds (scikit-learn's variant) in rows 0..k-1.

    `trials` (traced, 2 + ⌊ln k⌋) of `max_trials` candidate draws are used;
    each draw has its own key, so the seeds do not depend on `slots`.
    `distances(points (m, d)) -> (N, m)` the squared distances of every row to
    `points` (default `_sq_dist` on this device; sharded over rows with a mesh).
    """
    n = x.shape[0]
    if distances is None:
        distances = lambda points: _sq_dist(x, x_sq, points)
    first_key, draw_key = jax.random.split(key)
    first = jax.random.randint(first_key, (), 0, n)
    min_d = distances(x[first][None])[:, 0]
    centers = jnp.zeros((slots, x.shape[1]), x.dtype).at[0].set(x[first])

    def step(i, carry):
        centers, min_d = carry
        # D² = 0 everywhere (only copies of centers left): draw uniformly.
        weights = jnp.where(jnp.max(min_d) > 0, min_d, 1.0)
        step_key = jax.random.fold_in(draw_key, i)
        # fold_in per trial (not split(·, max_trials)): trial t's draw is the same for any bucket.
        keys = jax.vmap(lambda t: jax.random.fold_in(step_key, t))(jnp.arange(max_trials))
        picks = jax.vmap(_draw, (0, None))(keys, weights)
        # Keep the trial that lowers the potential Σ D² most (unused trials: +inf).
        new_d = jnp.minimum(min_d[:, None], distances(x[picks]))
        potential = jnp.where(jnp.arange(max_trials) < trials, jnp.sum(new_d, 0), jnp.inf)
        best = jnp.argmin(potential)
        return centers.at[i].set(x[picks[best]]), new_d[:, best]

    return jax.lax.fori_loop(1, k, step, (centers, min_d))[0]


def _assign_block(block, block_sq, centers, half_sq):
    """Nearest valid centre of each row: (labels (rows,), squared distances (rows,)).

    Maximises x·c − ½‖c‖² (the same argmin as ‖x − c‖², one matmul and no
    (rows, k) distance temporaries); masked slots have half_sq = +inf.
    Exact ties go to the smallest index, as argmin's.
    """
    slots = centers.shape[0]
    score = block @ centers.T - half_sq[None, :]
    best = jnp.max(score, 1)
    labels = jnp.min(jnp.where(score == best[:, None], jnp.arange(slots)[None, :], slots), 1)
    return labels.astype(jnp.int32), jnp.maximum(block_sq - 2.0 * best, 0.0)


def _block_stats(block, block_sq, valid, centers, half_sq):
    """Per-slot (Σ rows (slots, d), count (slots,)) of a block, by one-hot matmuls:
    XLA's CPU scatter (segment_sum) took as long as the distance matmul."""
    labels, dist = _assign_block(block, block_sq, centers, half_sq)
    one_hot = (labels[:, None] == jnp.arange(centers.shape[0])[None, :]) & valid[:, None]
    one_hot = one_hot.astype(block.dtype)
    return one_hot.T @ block, jnp.sum(one_hot, 0), labels, jnp.where(valid, dist, 0.0)


def _all_block_stats(blocks, block_sq, valid, centers, half_sq, mesh, num_blocks):
    """`_block_stats` of every block (nb, ...): one device's lax.map, or with a mesh each
    device's share of the blocks, all-gathered and cut back to the nb real blocks."""
    if mesh is None:
        return jax.lax.map(lambda b: _block_stats(*b, centers, half_sq),
                           (blocks, block_sq, valid))
    axis, spec, replicated = mesh.axis_names[0], pool_mesh.rows_spec(mesh), PartitionSpec()

    def local(blocks, block_sq, valid, centers, half_sq):
        out = jax.lax.map(lambda b: _block_stats(*b, centers, half_sq),
                          (blocks, block_sq, valid))
        return tuple(jax.lax.all_gather(o, axis, tiled=True) for o in out)

    extra = pool_mesh.padded_length(num_blocks, mesh) - num_blocks   # empty blocks
    padded = [jnp.pad(a, ((0, extra),) + ((0, 0),) * (a.ndim - 1)) for a in
              (blocks, block_sq, valid)]
    out = pool_mesh.shard_map(local, mesh, (spec,) * 3 + (replicated,) * 2,
                              (replicated,) * 4)(*padded, centers, half_sq)
    return tuple(o[:num_blocks] for o in out)


def _sharded_distances(x, x_sq, mesh):
    """``distances(points (m, d)) -> (N, m)`` `_sq_dist` with x's rows split over `mesh` and
    the (N, m) result all-gathered (the seeding's O(N m d) part per device)."""
    n = x.shape[0]
    axis, spec, replicated = mesh.axis_names[0], pool_mesh.rows_spec(mesh), PartitionSpec()
    extra = pool_mesh.padded_length(n, mesh) - n
    x, x_sq = jnp.pad(x, ((0, extra), (0, 0))), jnp.pad(x_sq, (0, extra))
    local = pool_mesh.shard_map(
        lambda x, x_sq, points: jax.lax.all_gather(_sq_dist(x, x_sq, points), axis, tiled=True),
        mesh, (spec, spec, replicated), replicated)
    return lambda points: local(x, x_sq, points)[:n]


@functools.partial(jax.jit, static_argnames=("slots", "max_trials", "block_rows", "max_iter",
                                             "mesh"))
def _kmeans(key, x, k, trials, slots, max_trials, block_rows, max_iter, tol, mesh=None):
    n, d = x.shape
    x_sq = jnp.sum(x ** 2, 1)
    num_blocks = -(-n // block_rows)
    pad = num_blocks * block_rows - n
    blocks = jnp.pad(x, ((0, pad), (0, 0))).reshape(num_blocks, block_rows, d)
    block_sq = jnp.pad(x_sq, (0, pad)).reshape(num_blocks, block_rows)
    valid = (jnp.arange(num_blocks * block_rows) < n).reshape(num_blocks, block_rows)
    used = jnp.arange(slots) < k
    threshold = tol * jnp.mean(jnp.var(x, 0))

    def stats(centers):
        half_sq = jnp.where(used, 0.5 * jnp.sum(centers ** 2, 1), jnp.inf)
        sums, counts, labels, dist = _all_block_stats(blocks, block_sq, valid, centers,
                                                      half_sq, mesh, num_blocks)
        return sums.sum(0), counts.sum(0), labels.reshape(-1), dist.reshape(-1)

    def update(carry):
        centers, _, it = carry
        sums, counts, _, _ = stats(centers)
        new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centers)
        return new, jnp.sum((new - centers) ** 2), it + 1

    def not_done(carry):
        _, shift, it = carry
        return (it < max_iter) & (shift > threshold)

    centers = _seed(key, x, x_sq, k, trials, max_trials, slots,
                    None if mesh is None else _sharded_distances(x, x_sq, mesh))
    centers, _, iterations = jax.lax.while_loop(
        not_done, update, (centers, jnp.asarray(jnp.inf, x.dtype), 0))
    _, _, labels, dist = stats(centers)
    return centers, labels[:n], jnp.sum(dist), iterations


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
    k, slots = int(k), bucket(int(k))
    block_rows = _block_rows(slots)
    # One block: nothing to spread over the devices (the single-device call).
    mesh = pool_mesh.mesh() if x.shape[0] > block_rows else None
    options = {} if mesh is None else {"mesh": mesh}
    centers, labels, inertia, iterations = _kmeans(
        key, x, k, 2 + int(np.log(k)), slots, 2 + int(np.log(slots)), block_rows,
        int(max_iter), float(tol), **options)
    return KMeansResult(np.asarray(centers)[:k], np.asarray(labels), float(inertia),
                        int(iterations))
