"""Uncertainty sampling: margin, entropy, least confidence (top-q of a score).

Each scores every unlabeled sample from the model's softmax p (C classes)
and takes the q most uncertain. All three are myopic: the batch is the q
best single scores, so exact duplicates of an uncertain sample are picked
together (they score the same).

  least_confidence  score = 1 − max_c p_c                 (larger = picked)
  margin            score = −(p_(1) − p_(2)), the gap between the top two
                    probabilities, negated (smallest gap picked first)
  entropy           score = −Σ_c p_c log p_c

Probabilities are computed in float64 from the float32 logits (log-softmax
for the entropy), chunk by chunk: only the (N_U,) scores are kept.
Exact ties are broken uniformly at random with the key (`top_q`).
"""
from __future__ import annotations

import jax
import numpy as np

from npc_jax.data import Pool
from npc_jax.strategies.base import Acquisition, AcquisitionContext, check_query
from npc_jax.strategies.pool_outputs import DEFAULT_CHUNK, map_pool, softmax, top_q

__all__ = [
    "Entropy",
    "LeastConfidence",
    "Margin",
    "SCORES",
    "UncertaintySampling",
    "entropy_scores",
    "least_confidence_scores",
    "margin_scores",
]


def least_confidence_scores(logits: np.ndarray) -> np.ndarray:
    """(n, C) logits -> (n,) 1 − max probability, float64 in [0, 1 − 1/C]."""
    return 1.0 - softmax(logits).max(axis=1)


def margin_scores(logits: np.ndarray) -> np.ndarray:
    """(n, C) logits -> (n,) −(p_(1) − p_(2)), float64 in [−1, 0]."""
    probs = softmax(logits)
    top_two = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
    return -(top_two[:, 1] - top_two[:, 0])


def entropy_scores(logits: np.ndarray) -> np.ndarray:
    """(n, C) logits -> (n,) Shannon entropy in nats, float64 in [0, log C]."""
    shifted = np.asarray(logits, np.float64)
    shifted = shifted - shifted.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    # p log p with p = 0 underflows to 0 · (−inf): exp(log p) · log p is 0 · finite.
    return -(np.exp(log_probs) * log_probs).sum(axis=1)


SCORES = {
    "least_confidence": least_confidence_scores,
    "margin": margin_scores,
    "entropy": entropy_scores,
}


class UncertaintySampling:
    """Top-q unlabeled samples by an uncertainty score of the softmax.

    Args:
      score: "least_confidence", "margin" or "entropy".
      chunk_size: pool images per inference call.
    """

    def __init__(self, score: str, chunk_size: int = DEFAULT_CHUNK):
        if score not in SCORES:
            raise ValueError(f"Unknown uncertainty score {score!r}; one of {sorted(SCORES)}.")
        self.name = score
        self.score_fn = SCORES[score]
        self.chunk_size = chunk_size

    def pool_scores(self, ctx: AcquisitionContext, indices: np.ndarray) -> np.ndarray:
        """(n,) float64 scores of pool `indices` (larger = more uncertain)."""
        return map_pool(ctx, indices, lambda logits, _: self.score_fn(logits),
                        chunk_size=self.chunk_size)

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition:
        check_query(pool, q)
        unlabeled = pool.unlabeled_indices
        scores = self.pool_scores(ctx, unlabeled)
        chosen = top_q(scores, q, key)
        objective = {
            "score": self.name,
            "mean_score": float(scores[chosen].mean()),
            "min_score": float(scores[chosen].min()),
            "pool_mean_score": float(scores.mean()),
        }
        return Acquisition(unlabeled[chosen].astype(np.int64), objective)


def LeastConfidence(**options) -> UncertaintySampling:
    return UncertaintySampling("least_confidence", **options)


def Margin(**options) -> UncertaintySampling:
    return UncertaintySampling("margin", **options)


def Entropy(**options) -> UncertaintySampling:
    return UncertaintySampling("entropy", **options)
