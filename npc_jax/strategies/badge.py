"""BADGE (Ash et al., ICLR 2020): k-means++ seeding on gradient embeddings.

The gradient embedding of sample x is the gradient of the cross-entropy at
the model's *predicted* label ŷ = argmax p with respect to the last layer's
weights: g_x = a_x ⊗ h_x, with a_x = p_x − onehot(ŷ_x) (C,) and h_x the
penultimate features (D,). g_x has C·D entries (1280 for C = 10, D = 128);
it is never built for the pool. Inner products and norms factor:

    g_x · g_y = (a_x · a_y)(h_x · h_y),    ‖g_x‖² = ‖a_x‖² ‖h_x‖²,
    ‖g_x − g_y‖² = ‖a_x‖²‖h_x‖² + ‖a_y‖²‖h_y‖² − 2 (a_x·a_y)(h_x·h_y),

so the distance of every sample to a new center costs two matrix-vector
products, (N, C)·(C,) and (N, D)·(D,), i.e. O(N (C + D)) instead of
O(N C D); memory is O(N (C + D)).

k-means++ seeding over the unlabeled samples (as BADGE's reference code):
the first center is the sample of largest ‖g‖; each next center is drawn
with probability ∝ D²(x) = min over chosen centers ‖g_x − g_c‖². The draw is
an exponential race (argmin E_x / D²(x), E_x ~ Exp(1) i.i.d.), which samples
exactly ∝ D² without a float32 cumulative sum over the pool. Squared
distances below `COPY_TOLERANCE` (‖g_x‖² + ‖g_c‖²) — the factored form's
float32 rounding is ≈ 2e-7 of that (measured) — are set to 0: a copy of a
center has D² = 0 and is never drawn while some sample has D² > 0. If every
remaining sample has D² = 0 (only copies left), the draw is uniform over the
remaining ones; picks are always distinct. The loop is one jitted
`lax.fori_loop` (one compilation per (N, C, D, q)).

Devices: with D > 1 local devices the factors, features and D² are sharded
over the pool axis (`pool_mesh`, N padded to a multiple of D with rows that
are never drawn): each device updates its rows' D², the race's exponentials
are the same (N,) draw as on one device, and the argmin (the first minimum in
pool order) and the drawn row cross the devices, so the picks are those of one
device (tested on 8 fake CPU devices, tests/test_multidevice.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import PartitionSpec

from npc_jax.data import Pool
from npc_jax.strategies import pool_mesh
from npc_jax.strategies.base import Acquisition, AcquisitionContext, check_query
from npc_jax.strategies.coreset import COPY_TOLERANCE
from npc_jax.inference import check_finite
from npc_jax.strategies.pool_outputs import DEFAULT_CHUNK, map_pool, softmax

__all__ = [
    "Badge",
    "factored_sq_distances",
    "gradient_embeddings",
    "gradient_factor",
    "kmeans_pp_gradient",
]


def gradient_factor(logits: np.ndarray) -> np.ndarray:
    """(n, C) logits -> (n, C) float32 a = p − onehot(argmax p)."""
    probs = softmax(logits)
    probs[np.arange(len(probs)), probs.argmax(axis=1)] -= 1.0
    return probs.astype(np.float32)


def gradient_embeddings(factors: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The explicit (n, C·D) embeddings a ⊗ h (reference for small n only)."""
    return (factors[:, :, None] * features[:, None, :]).reshape(len(factors), -1)


def factored_sq_distances(factors, features, center: int):
    """(n,) ‖g_x − g_center‖² for all rows, by the factored form (no C·D array).

    factors (n, C), features (n, D); copies of the center get exactly 0.
    """
    factors, features = jnp.asarray(factors), jnp.asarray(features)
    sq_norms = jnp.sum(factors ** 2, 1) * jnp.sum(features ** 2, 1)
    return _sq_distances(factors, features, sq_norms, center)


def _sq_distances(factors, features, sq_norms, center):
    scale = sq_norms + sq_norms[center]
    dist = scale - 2.0 * (factors @ factors[center]) * (features @ features[center])
    return jnp.where(dist <= COPY_TOLERANCE * scale, 0.0, dist)


@functools.partial(jax.jit, static_argnames=("q",))
def _kmeans_pp(factors, features, candidates, key, q):
    """k-means++ seeding. factors (N, C), features (N, D), candidates (N,) bool.

    Returns (picks (q,) int32, D² of each pick when drawn (q,); the first
    pick's entry is its ‖g‖²)."""
    sq_norms = jnp.sum(factors ** 2, 1) * jnp.sum(features ** 2, 1)
    first = jnp.argmax(jnp.where(candidates, sq_norms, -jnp.inf))
    available = candidates.at[first].set(False)
    min_dist = _sq_distances(factors, features, sq_norms, first)

    def draw(i, carry):
        min_dist, available, picks, drawn = carry
        weights = jnp.where(available, min_dist, 0.0)
        # Only copies of centers left: uniform over what remains.
        weights = jnp.where(weights.sum() > 0, weights, available.astype(weights.dtype))
        race = jax.random.exponential(jax.random.fold_in(key, i), weights.shape,
                                      weights.dtype)
        pick = jnp.argmin(jnp.where(weights > 0, race / weights, jnp.inf))
        drawn = drawn.at[i].set(min_dist[pick])
        min_dist = jnp.minimum(min_dist, _sq_distances(factors, features, sq_norms, pick))
        return min_dist, available.at[pick].set(False), picks.at[i].set(pick), drawn

    picks = jnp.zeros((q,), jnp.int32).at[0].set(first)
    drawn = jnp.zeros((q,), factors.dtype).at[0].set(sq_norms[first])
    _, _, picks, drawn = jax.lax.fori_loop(1, q, draw, (min_dist, available, picks, drawn))
    return picks, drawn


@functools.partial(jax.jit, static_argnames=("q", "n", "mesh"))
def _kmeans_pp_sharded(factors, features, candidates, key, q, n, mesh):
    """`_kmeans_pp` with factors, features, candidates (N_pad, ...) sharded ``P("rows")``
    over `mesh`, the first n rows real (the padding: candidates False, never drawn)."""
    axis, spec, replicated = mesh.axis_names[0], pool_mesh.rows_spec(mesh), PartitionSpec()

    def start(factors, features, candidates):
        sq_norms = jnp.sum(factors ** 2, 1) * jnp.sum(features ** 2, 1)
        first, first_sq = pool_mesh.first_max(jnp.where(candidates, sq_norms, -jnp.inf), axis)
        min_dist = _sharded_distances(factors, features, sq_norms, first, axis)
        return sq_norms, first, first_sq, min_dist, pool_mesh.mask_row(candidates, first,
                                                                          False, axis)

    def step(min_dist, available, race, factors, features, sq_norms):
        weights = jnp.where(available, min_dist, 0.0)
        # Only copies of centers left: uniform over what remains.
        positive = jax.lax.pmax(jnp.any(weights > 0).astype(jnp.int32), axis) > 0
        weights = jnp.where(positive, weights, available.astype(weights.dtype))
        pick, _ = pool_mesh.first_min(jnp.where(weights > 0, race / weights, jnp.inf), axis)
        drawn = pool_mesh.owner_row(min_dist, pick, axis)
        min_dist = jnp.minimum(min_dist,
                               _sharded_distances(factors, features, sq_norms, pick, axis))
        return min_dist, pool_mesh.mask_row(available, pick, False, axis), pick, drawn

    sq_norms, first, first_sq, min_dist, available = pool_mesh.shard_map(
        start, mesh, (spec, spec, spec), (spec, replicated, replicated, spec, spec))(
        factors, features, candidates)
    step = pool_mesh.shard_map(step, mesh, (spec,) * 6, (spec, spec, replicated, replicated))

    def draw(i, carry):
        min_dist, available, picks, drawn = carry
        # The same (n,) exponentials as one device's, padded (the padding is never drawn).
        race = jax.random.exponential(jax.random.fold_in(key, i), (n,), min_dist.dtype)
        race = jnp.pad(race, (0, min_dist.shape[0] - n), constant_values=1.0)
        min_dist, available, pick, value = step(min_dist, available, race, factors, features,
                                                sq_norms)
        return min_dist, available, picks.at[i].set(pick), drawn.at[i].set(value)

    picks = jnp.zeros((q,), jnp.int32).at[0].set(first)
    drawn = jnp.zeros((q,), factors.dtype).at[0].set(first_sq)
    _, _, picks, drawn = jax.lax.fori_loop(1, q, draw, (min_dist, available, picks, drawn))
    return picks, drawn


def _sharded_distances(factors, features, sq_norms, center, axis):
    """Inside shard_map: `_sq_distances` of the local rows to the (global) row `center`."""
    center_sq = pool_mesh.owner_row(sq_norms, center, axis)
    scale = sq_norms + center_sq
    dist = scale - 2.0 * ((factors @ pool_mesh.owner_row(factors, center, axis))
                          * (features @ pool_mesh.owner_row(features, center, axis)))
    return jnp.where(dist <= COPY_TOLERANCE * scale, 0.0, dist)


def kmeans_pp_gradient(factors: np.ndarray, features: np.ndarray, candidates: np.ndarray,
                       q: int, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """BADGE's k-means++ seeding on the embeddings a ⊗ h, factored.

    Args:
      factors: (N, C) float32, a = p − onehot(ŷ) (`gradient_factor`).
      features: (N, D) float32 penultimate features.
      candidates: (N,) bool, the samples that may be picked; at least q.
      q: number of picks.
      key: PRNG key of the draws.

    Returns:
      (q,) int64 picks in draw order, and (q,) float32 their D² when drawn
      (the first entry: the first center's ‖g‖²).
    """
    candidates = np.asarray(candidates, bool)
    if candidates.sum() < q:
        raise ValueError(f"kmeans_pp_gradient: {candidates.sum()} candidates for q={q} picks.")
    check_finite(factors, "gradient factors")
    check_finite(features, "features")
    mesh = pool_mesh.mesh()
    if mesh is None:
        picks, drawn = _kmeans_pp(jnp.asarray(factors, jnp.float32),
                                  jnp.asarray(features, jnp.float32),
                                  jnp.asarray(candidates), key, q)
    else:
        n = len(candidates)
        length = pool_mesh.padded_length(n, mesh)
        factors, features, candidates = (
            pool_mesh.place(pool_mesh.pad_to(np.asarray(a, dtype), length), mesh)
            for a, dtype in ((factors, np.float32), (features, np.float32), (candidates, bool)))
        picks, drawn = _kmeans_pp_sharded(factors, features, candidates, key, q, n, mesh)
    return np.asarray(picks, np.int64), np.asarray(drawn)


class Badge:
    """BADGE: k-means++ on gradient embeddings at the predicted labels.

    Args:
      chunk_size: pool images per inference call.
    """

    name = "badge"

    def __init__(self, chunk_size: int = DEFAULT_CHUNK):
        self.chunk_size = chunk_size

    def pool_factors(self, ctx: AcquisitionContext, indices: np.ndarray):
        """(a (n, C), h (n, D)) float32 for pool `indices`."""
        return map_pool(ctx, indices, lambda logits, h: (gradient_factor(logits), h),
                        chunk_size=self.chunk_size)

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition:
        check_query(pool, q)
        # The whole pool with the unlabeled ones as candidates (not the unlabeled
        # subset): the arrays keep one shape across rounds, so one compilation
        # serves the whole run.
        factors, features = self.pool_factors(ctx, np.arange(pool.num_samples))
        picks, drawn = kmeans_pp_gradient(factors, features, ~pool.labeled_mask, q, key)
        objective = {"first_sq_norm": float(drawn[0]),
                     "mean_sq_distance_drawn": float(drawn[1:].mean()) if q > 1 else None}
        return Acquisition(picks, objective)
