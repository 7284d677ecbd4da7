"""NPC, Neural Pre-Conditioning (Kong et al., NeurIPS 2022, Algorithm 1).

Choose the batch X_u of q unlabeled points maximising λ_min of the
empirical-NTK Gram matrix over X_L ∪ X_u (Eq. 3), by random search: draw m
batches uniformly (distinct points within a batch), score each, keep the best.

The kernel here is the last layer's (Sec. 3.4) on logits, K = C·(h·h' + 1),
scored through its explicit feature map φ (see `npc_jax.ntk`): the labeled
block K(X_L, X_L) = Φ_L Φ_Lᵀ is computed once per round and reused by every
candidate; a candidate adds only its (L, q) and (q, q) blocks.
Proposition 1: a batch holding a duplicate (of itself or of a labeled point)
has λ_min = 0, so it never wins while a non-degenerate batch exists.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from npc_jax import ntk
from npc_jax.data import Pool
from npc_jax.strategies.base import Acquisition, AcquisitionContext, check_query


def sample_batches(key: jax.Array, candidates: np.ndarray, num_batches: int,
                   q: int) -> np.ndarray:
    """(num_batches, q) batches of distinct entries of `candidates`, uniformly.

    Deterministic per key. Uses a numpy Generator seeded from the key: drawing q
    of N without replacement is O(q) there, whereas a JAX permutation costs O(N)
    per batch.
    """
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    return np.stack([rng.choice(len(candidates), q, replace=False)
                     for _ in range(num_batches)]).astype(np.int64)


@jax.jit
def _score_batches(gram_labeled, phi_labeled, phi_batches):
    """λ_min of [[K_LL, K_Lb], [K_bL, K_bb]] for each batch b.

    gram_labeled (L, L), phi_labeled (L, F), phi_batches (b, q, F) -> (b,).
    """
    cross = jnp.einsum("lf,bqf->blq", phi_labeled, phi_batches)
    within = jnp.einsum("bqf,brf->bqr", phi_batches, phi_batches)
    top = jnp.concatenate(
        [jnp.broadcast_to(gram_labeled, (phi_batches.shape[0], *gram_labeled.shape)), cross], 2)
    bottom = jnp.concatenate([jnp.swapaxes(cross, 1, 2), within], 2)
    gram = jnp.concatenate([top, bottom], 1)
    return jnp.maximum(jnp.linalg.eigvalsh(gram)[:, 0], 0.0)


def score_batches(phi_labeled: np.ndarray, phi_batches: np.ndarray, *,
                  chunk_size: int = 128) -> np.ndarray:
    """λ_min for every candidate batch, the labeled block computed once.

    Args:
      phi_labeled: (L, F) feature map of the labeled points.
      phi_batches: (m, q, F) feature maps of the candidates, batch by batch.
      chunk_size: batches per compiled call (memory: chunk·(L+q)² floats).

    Returns:
      (m,) float32 λ_min, clipped at 0.
    """
    phi_labeled = jnp.asarray(phi_labeled, jnp.float32)
    gram_labeled = phi_labeled @ phi_labeled.T
    m = len(phi_batches)
    scores = []
    for start in range(0, m, chunk_size):
        chunk = np.asarray(phi_batches[start:start + chunk_size], np.float32)
        real = len(chunk)
        if real < chunk_size:  # pad so that every call has one shape
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], chunk_size - real, 0)])
        scores.append(np.asarray(_score_batches(gram_labeled, phi_labeled, chunk))[:real])
    return np.concatenate(scores)


class NPC:
    """NPC with the last-layer kernel on logits, random search over m batches.

    Args:
      num_candidates: m, the number of random batches scored (paper: 1000), or
        "pool" for m = the number of unlabeled samples.
      normalize: score the cosine-normalised kernel K_ij / √(K_ii K_jj).
      chunk_size: candidate batches per eigvalsh call.
    """

    name = "npc"

    def __init__(self, num_candidates: int | str = 1000, normalize: bool = False,
                 chunk_size: int = 128):
        if num_candidates != "pool" and (int(num_candidates) != num_candidates
                                         or num_candidates <= 0):
            raise ValueError(f"num_candidates must be a positive int or 'pool', "
                             f"got {num_candidates!r}.")
        self.num_candidates = num_candidates
        self.normalize = normalize
        self.chunk_size = chunk_size

    def feature_map(self, ctx: AcquisitionContext, indices: np.ndarray) -> np.ndarray:
        _, features = ctx.logits_and_features(indices)
        phi = np.asarray(ntk.last_layer_feature_map(features, ctx.num_classes))
        if not np.all(np.isfinite(phi)):
            raise FloatingPointError("Non-finite features: the trained model diverged.")
        if self.normalize:
            phi = phi / np.linalg.norm(phi, axis=1, keepdims=True)
        return phi

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition:
        check_query(pool, q)
        unlabeled = pool.unlabeled_indices
        m = len(unlabeled) if self.num_candidates == "pool" else int(self.num_candidates)
        batches = sample_batches(key, unlabeled, m, q)          # positions in `unlabeled`
        used, inverse = np.unique(batches, return_inverse=True)
        phi_used = self.feature_map(ctx, unlabeled[used])
        phi_labeled = self.feature_map(ctx, pool.labeled_indices)
        scores = score_batches(phi_labeled, phi_used[inverse.reshape(batches.shape)],
                               chunk_size=self.chunk_size)
        best = int(np.argmax(scores))
        objective = {
            "lambda_min": float(scores[best]),
            "random_batches": {
                "num": m, "mean": float(scores.mean()), "std": float(scores.std()),
                "quantiles": {str(p): float(np.quantile(scores, p))
                              for p in (0.0, 0.25, 0.5, 0.75, 1.0)}},
            "kernel": "last", "output": "logits", "normalize": self.normalize,
        }
        return Acquisition(unlabeled[batches[best]].astype(np.int64), objective)
