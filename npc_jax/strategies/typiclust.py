"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022, "Active Learning on a Budget").

On an embedding z (N, d) of the pool (`pool_embedding`: the run's
self-supervised encoder, the model's penultimate features, or a user's
`embed_fn`):

1. k-means into K = min(|L| + Q, max_clusters) clusters (`kmeans.kmeans`;
   the paper caps K at 500 for large budgets);
2. rank the clusters as the paper's code does: fewest labeled points first,
   then largest; clusters of at most `min_cluster_size` points go last (the
   paper drops them; here they are used only when nothing else is left);
3. the i-th pick is the most typical not-yet-chosen unlabeled point of the
   i-th ranked cluster (cycling when Q exceeds the clusters), with

       typicality(x) = 1 / ((1/k) Σ_{j ∈ kNN(x)} ‖z_x − z_j‖),

   the kNN taken among the cluster's unlabeled, not-yet-chosen points, k =
   min(`typicality_k`, m − 1) for a cluster of m such points (k = 20 in the
   paper; a cluster of one point has typicality 1).

With K = |L| + Q at least Q clusters hold no labeled point, so the Q picks
come from the Q largest uncovered clusters, as in scikit-activeml's
`TypiClust` (which then falls back to random picks where this cycles, and
adds eps = 1e-7 to the distance sum; identical picks otherwise, tested).
Cold start (|L| = 0) is the same rule. Exact ties between cluster sizes are
broken uniformly at random with the key; the result is deterministic per key.

Memory: the (N, d) embedding, k-means' (rows, K) blocks, and one
(rows, m) kNN block of a cluster at a time: never N×N. Time: O(N K d) per
Lloyd iteration plus O(Σ m_c² d) over the Q picked clusters.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from npc_jax.data import Pool
from npc_jax.inference import numpy_rng
from npc_jax.strategies.base import Acquisition, AcquisitionContext, check_query
from npc_jax.strategies.embedding import pool_embedding
from npc_jax.strategies.kmeans import kmeans
from npc_jax.strategies.neighbours import knn_mean_distance

__all__ = ["TypiClust", "cluster_order", "typicality", "typiclust_picks"]


def typicality(z: np.ndarray, k: int) -> np.ndarray:
    """(m,) typicality of each row among the rows of z (m, d): 1 / mean kNN distance.

    k is clipped to m − 1; a single row has typicality 1; a zero mean
    distance (k + 1 copies) gives inf (the most typical).
    """
    if len(z) == 1:
        return np.ones(1)
    mean = knn_mean_distance(z, min(int(k), len(z) - 1)).astype(np.float64)
    with np.errstate(divide="ignore"):
        return 1.0 / mean


def cluster_order(clusters: np.ndarray, labeled_mask: np.ndarray, num_clusters: int,
                  min_cluster_size: int, rng: np.random.Generator) -> np.ndarray:
    """Non-empty cluster ids ranked: (no small size, fewest labeled, largest, random tie).

    Args:
      clusters: (N,) int cluster id of each pool point.
      labeled_mask: (N,) bool.
      num_clusters: K.
      min_cluster_size: clusters of at most this many points rank last.
      rng: breaks exact ties.
    """
    sizes = np.bincount(clusters, minlength=num_clusters)
    labeled = np.bincount(clusters[labeled_mask], minlength=num_clusters)
    tie = rng.permutation(num_clusters)
    # np.lexsort sorts by its last key first.
    order = np.lexsort((tie, -sizes, labeled, sizes <= min_cluster_size))
    return order[sizes[order] > 0]


def typiclust_picks(z: np.ndarray, clusters: np.ndarray, labeled_mask: np.ndarray, q: int,
                    *, k: int = 20, min_cluster_size: int = 5,
                    rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """TypiClust's q picks given the clustering.

    Args:
      z: (N, d) float32 embedding.
      clusters: (N,) int cluster ids in 0..K-1.
      labeled_mask: (N,) bool; at least q points unlabeled.
      q: picks.
      k: typicality neighbours (clipped per cluster).
      min_cluster_size: see `cluster_order`.
      rng: breaks cluster-size ties.

    Returns:
      (q,) int64 picks in pick order, and per pick its cluster, that
      cluster's size and the pick's typicality.
    """
    clusters = np.asarray(clusters, np.int64)
    num_clusters = int(clusters.max()) + 1
    order = cluster_order(clusters, labeled_mask, num_clusters, min_cluster_size, rng)
    available = ~np.asarray(labeled_mask, bool)
    picks, info = [], {"clusters": [], "cluster_sizes": [], "typicality": []}
    sizes = np.bincount(clusters, minlength=num_clusters)
    step = 0
    while len(picks) < q:
        cluster = int(order[step % len(order)])
        step += 1
        members = np.flatnonzero((clusters == cluster) & available)
        if members.size == 0:   # every point of this cluster is labeled or chosen
            continue
        scores = typicality(z[members], k)
        best = int(np.argmax(scores))
        picks.append(int(members[best]))
        available[members[best]] = False
        info["clusters"].append(cluster)
        info["cluster_sizes"].append(int(sizes[cluster]))
        # inf (k + 1 exact copies) is not JSON: recorded as None.
        info["typicality"].append(float(scores[best]) if np.isfinite(scores[best]) else None)
    return np.asarray(picks, np.int64), info


class TypiClust:
    """TypiClust on a pool embedding (see the module docstring).

    Args:
      embedding: "auto", "pretrained" or "features" (`pool_embedding`); recorded.
      embed_fn: optional callable images (n, H, W, C) -> (n, d) (Python
        only); overrides `embedding`.
      typicality_k: neighbours for typicality (20 in the paper); must be
        below the pool size.
      max_clusters: cap on K = |L| + Q (500 in the paper's code).
      min_cluster_size: clusters this small rank last (5 in the paper's code).
      kmeans_iter: most Lloyd iterations.
    """

    name = "typiclust"

    def __init__(self, embedding: str = "auto", embed_fn: Callable | None = None,
                 typicality_k: int = 20, max_clusters: int = 500, min_cluster_size: int = 5,
                 kmeans_iter: int = 300):
        for option, value in (("typicality_k", typicality_k), ("max_clusters", max_clusters),
                              ("kmeans_iter", kmeans_iter)):
            if int(value) != value or value < 1:
                raise ValueError(f"typiclust: {option} must be an int >= 1, got {value!r}.")
        self.embedding, self.embed_fn = embedding, embed_fn
        self.typicality_k, self.max_clusters = int(typicality_k), int(max_clusters)
        self.min_cluster_size, self.kmeans_iter = int(min_cluster_size), int(kmeans_iter)

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition:
        check_query(pool, q)
        if self.typicality_k >= pool.num_samples:
            raise ValueError(f"typiclust: typicality_k={self.typicality_k} neighbours need a "
                             f"pool of more than {self.typicality_k} samples (pool of "
                             f"{pool.num_samples}); lower typicality_k.")
        z = pool_embedding(ctx, self.embedding, self.embed_fn)
        num_clusters = min(pool.num_labeled + q, self.max_clusters, pool.num_samples)
        kmeans_key, tie_key = jax.random.split(key)
        clustering = kmeans(kmeans_key, z, num_clusters, max_iter=self.kmeans_iter)
        picks, info = typiclust_picks(z, clustering.labels, pool.labeled_mask, q,
                                      k=self.typicality_k,
                                      min_cluster_size=self.min_cluster_size,
                                      rng=numpy_rng(tie_key))
        objective = {"embedding": "embed_fn" if self.embed_fn else self.embedding,
                     "num_clusters": num_clusters, "typicality_k": self.typicality_k,
                     "kmeans_inertia": clustering.inertia, **info}
        return Acquisition(picks, objective)
