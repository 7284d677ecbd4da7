"""Coreset (Sener & Savarese, ICLR 2018): k-center greedy on penultimate features.

The labeled set is the initial set of centers. Each pick takes the unlabeled
sample farthest from its nearest center, then makes it a center:

    δ(x) = min_{c ∈ centers} ‖h_x − h_c‖²        (an O(N) vector)
    pick  x* = argmax_{x unlabeled} δ(x);   δ ← min(δ, ‖h − h_{x*}‖²)

so a pick costs one (N, D)·(D,) matrix-vector product. The initial δ against
the L labeled centers is computed in row chunks of the (N, L) distance
matrix; nothing N×N is ever built. The greedy loop runs as one jitted
`lax.fori_loop` (one compilation per (N, D, q); the pool size N is fixed for
a run, so once per run).

Distances use the expanded form ‖x‖² + ‖c‖² − 2 x·c. Its rounding error is
≈ 2e-7 (‖x‖² + ‖c‖²) in float32 (measured); distances below
`COPY_TOLERANCE` (‖x‖² + ‖c‖²) are set to exactly 0, i.e. such a sample is
treated as a copy of the center. So a duplicate of a center (labeled or
picked) has δ = 0 and is never picked while a sample at positive distance
remains; chosen samples get δ = −inf, so the q picks are distinct.
With no labeled sample the first center is drawn uniformly with the key;
otherwise the selection is deterministic (exact ties: lowest index).

Devices: with D > 1 local devices the pool's features, δ and the distances
are sharded over the pool axis (`pool_mesh`: N padded to a multiple of D with
rows that are never picked); each device computes its rows' distances, the
argmax is reduced across the devices (the first maximum in pool order, as on
one device) and the picked row is sent to all of them. The picks are those of
one device (tested on 8 fake CPU devices, tests/test_multidevice.py).
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
from npc_jax.inference import check_finite, numpy_rng, pad_rows
from npc_jax.strategies.pool_outputs import DEFAULT_CHUNK, map_pool

__all__ = [
    "COPY_TOLERANCE",
    "Coreset",
    "k_center_greedy",
    "min_sq_distances",
]

# Relative squared distance below which two samples count as copies
# (50× the measured float32 rounding of the expanded form).
COPY_TOLERANCE = 1e-5


def _padded_centers(centers: np.ndarray) -> np.ndarray:
    """Pads (L, D) centers to a power-of-two count with copies of the last one.

    Copies leave every minimum distance unchanged, and the bucketed count
    bounds the number of compilations as the labeled set grows."""
    size = 1 << max(int(len(centers)) - 1, 0).bit_length()
    return pad_rows(centers, size)


def _block_rows(num_centers: int) -> int:
    # Rows per (rows, L) distance block: ≈ 4M floats (16 MB) at a time.
    return max(256, min(8192, (1 << 22) // max(num_centers, 1)))


def _sq_distances_to(features, sq_norms, center_features, center_sq):
    """(n,) ‖x − c‖² for one center, copies of it exactly 0."""
    scale = sq_norms + center_sq
    dist = scale - 2.0 * (features @ center_features)
    return jnp.where(dist <= COPY_TOLERANCE * scale, 0.0, dist)


@functools.partial(jax.jit, static_argnames=("block_rows",))
def _min_sq_distances(features, centers, block_rows):
    """(N,) min over the (L, D) centers of the squared distance, by row blocks."""
    n = features.shape[0]
    num_blocks = -(-n // block_rows)
    padded = jnp.pad(features, ((0, num_blocks * block_rows - n), (0, 0)))
    center_sq = jnp.sum(centers ** 2, 1)

    def block_min(block):
        block_sq = jnp.sum(block ** 2, 1)
        scale = block_sq[:, None] + center_sq[None, :]
        dist = scale - 2.0 * (block @ centers.T)
        return jnp.where(dist <= COPY_TOLERANCE * scale, 0.0, dist).min(axis=1)

    blocks = padded.reshape(num_blocks, block_rows, -1)
    return jax.lax.map(block_min, blocks).reshape(-1)[:n]


@functools.partial(jax.jit, static_argnames=("block_rows", "mesh"))
def _min_sq_distances_sharded(features, centers, block_rows, mesh):
    """`_min_sq_distances` of features (N, D) sharded ``P("rows")``, per device."""
    spec = pool_mesh.rows_spec(mesh)
    return pool_mesh.shard_map(lambda f, c: _min_sq_distances(f, c, block_rows), mesh,
                               (spec, PartitionSpec()), spec)(features, centers)


def _min_sq_distances_on(features, centers: np.ndarray, mesh):
    """(N,) device array: `min_sq_distances` of features already on the device(s)."""
    centers = _padded_centers(np.asarray(centers, np.float32))
    if mesh is None:
        return _min_sq_distances(features, centers, _block_rows(len(centers)))
    return _min_sq_distances_sharded(features, centers, _block_rows(len(centers)), mesh)


def _on_devices(features: np.ndarray, mesh):
    """features (N, D) on the device, or padded with zero rows and sharded over `mesh`."""
    if mesh is None:
        return jnp.asarray(features, jnp.float32)
    padded = pool_mesh.pad_to(np.asarray(features, np.float32),
                              pool_mesh.padded_length(len(features), mesh))
    return pool_mesh.place(padded, mesh)


def min_sq_distances(features: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared distance of every row of `features` to its nearest center.

    Args:
      features: (N, D) float32.
      centers: (L, D) float32, L >= 1.

    Returns:
      (N,) float32, >= 0; exactly 0 for copies of a center (see COPY_TOLERANCE).
      Computed in row blocks of the (N, L) distance matrix (≈ 16 MB each); with
      D > 1 local devices the rows are sharded over them (`pool_mesh`).
    """
    mesh = pool_mesh.mesh()
    if mesh is None:
        centers = _padded_centers(np.asarray(centers, np.float32))
        return np.asarray(_min_sq_distances(jnp.asarray(features, jnp.float32), centers,
                                            _block_rows(len(centers))))
    features = np.asarray(features, np.float32)
    placed = _on_devices(features, mesh)
    return np.asarray(_min_sq_distances_on(placed, centers, mesh))[:len(features)]


@functools.partial(jax.jit, static_argnames=("q",))
def _greedy(features, min_dist, q):
    """q k-center picks. features (N, D), min_dist (N,) with −inf where a
    sample may not be picked. Returns (picks (q,), δ at each pick (q,),
    final δ (N,))."""
    sq_norms = jnp.sum(features ** 2, 1)

    def pick(i, carry):
        min_dist, picks, radii = carry
        best = jnp.argmax(min_dist)
        dist = _sq_distances_to(features, sq_norms, features[best], sq_norms[best])
        min_dist, radius = jnp.minimum(min_dist, dist).at[best].set(-jnp.inf), min_dist[best]
        return min_dist, picks.at[i].set(best), radii.at[i].set(radius)

    init = (min_dist, jnp.zeros((q,), jnp.int32), jnp.zeros((q,), features.dtype))
    min_dist, picks, radii = jax.lax.fori_loop(0, q, pick, init)
    return picks, radii, min_dist


@functools.partial(jax.jit, static_argnames=("q", "mesh"))
def _greedy_sharded(features, min_dist, q, mesh):
    """`_greedy` with features (N, D) and min_dist (N,) sharded ``P("rows")`` over `mesh`:
    each device updates its rows' δ; the argmax and the picked row cross the devices."""
    axis, spec, replicated = mesh.axis_names[0], pool_mesh.rows_spec(mesh), PartitionSpec()

    def local(features, min_dist):
        sq_norms = jnp.sum(features ** 2, 1)

        def pick(i, carry):
            min_dist, picks, radii = carry
            best, radius = pool_mesh.first_max(min_dist, axis)
            dist = _sq_distances_to(features, sq_norms, pool_mesh.owner_row(features, best, axis),
                                    pool_mesh.owner_row(sq_norms, best, axis))
            min_dist = pool_mesh.mask_row(jnp.minimum(min_dist, dist), best, -jnp.inf, axis)
            return min_dist, picks.at[i].set(best), radii.at[i].set(radius)

        init = (min_dist, jnp.zeros((q,), jnp.int32), jnp.zeros((q,), features.dtype))
        min_dist, picks, radii = jax.lax.fori_loop(0, q, pick, init)
        return picks, radii, min_dist

    return pool_mesh.shard_map(local, mesh, (spec, spec), (replicated, replicated, spec))(
        features, min_dist)


def k_center_greedy(features: np.ndarray, is_center: np.ndarray, candidates: np.ndarray,
                    q: int, key: jax.Array | None = None) -> tuple[np.ndarray, dict]:
    """k-center greedy from the given centers.

    Args:
      features: (N, D) float32 features of the whole pool.
      is_center: (N,) bool, the initial centers (the labeled set).
      candidates: (N,) bool, the samples that may be picked (the unlabeled
        ones); must hold at least q, disjoint from `is_center`.
      q: number of picks.
      key: draws the first center when there is no initial center.

    Returns:
      (q,) int64 picked indices in pick order, and a dict with the covering
      radius (max over candidates of the distance to the nearest center)
      before and after the picks.
    """
    features = np.asarray(features, np.float32)
    check_finite(features, "features")
    is_center, candidates = np.asarray(is_center, bool), np.asarray(candidates, bool)
    if (is_center & candidates).any():
        raise ValueError("k_center_greedy: a sample is both a center and a candidate.")
    if candidates.sum() < q:
        raise ValueError(f"k_center_greedy: {candidates.sum()} candidates for q={q} picks.")
    mesh = pool_mesh.mesh()
    n = len(features)
    on_device = _on_devices(features, mesh)  # one host→device copy for both jitted calls
    first = []
    if is_center.any():
        min_dist = _min_sq_distances_on(on_device, features[is_center], mesh)
    else:
        if key is None:
            raise ValueError("k_center_greedy without initial centers needs a key.")
        start = int(numpy_rng(key).choice(np.flatnonzero(candidates)))
        first = [start]
        min_dist = _min_sq_distances_on(on_device, features[start:start + 1], mesh)
        candidates = candidates.copy()
        candidates[start] = False
    min_dist = np.where(candidates, np.asarray(min_dist)[:n], -np.inf).astype(np.float32)
    radius_before = float(np.sqrt(max(min_dist.max(), 0.0)))
    remaining = q - len(first)
    picks, final = np.zeros((0,), np.int64), min_dist
    if remaining and mesh is None:
        picks, _, final = _greedy(on_device, min_dist, remaining)
        picks, final = np.asarray(picks, np.int64), np.asarray(final)
    elif remaining:   # δ padded with −inf: padding rows are never picked
        padded = pool_mesh.pad_to(min_dist, len(on_device), -np.inf)
        picks, _, final = _greedy_sharded(on_device, pool_mesh.place(padded, mesh), remaining,
                                          mesh)
        picks, final = np.asarray(picks, np.int64), np.asarray(final)[:n]
    top = final.max()
    radius_after = float(np.sqrt(top)) if np.isfinite(top) and top > 0 else 0.0
    chosen = np.concatenate([np.asarray(first, np.int64), picks])
    return chosen, {"radius_before": radius_before, "radius_after": radius_after}


class Coreset:
    """k-center greedy on penultimate features, labeled samples as centers.

    Args:
      chunk_size: pool images per inference call.
    """

    name = "coreset"

    def __init__(self, chunk_size: int = DEFAULT_CHUNK):
        self.chunk_size = chunk_size

    def pool_features(self, ctx: AcquisitionContext, num_samples: int) -> np.ndarray:
        """(N, D) float32 penultimate features of the whole pool."""
        return map_pool(ctx, np.arange(num_samples), lambda _, features: features,
                        chunk_size=self.chunk_size)

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition:
        check_query(pool, q)
        features = self.pool_features(ctx, pool.num_samples)
        chosen, radii = k_center_greedy(features, pool.labeled_mask, ~pool.labeled_mask, q, key)
        return Acquisition(chosen, {"distance": "euclidean", **radii})
