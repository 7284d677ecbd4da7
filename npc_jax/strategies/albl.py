"""ALBL, Active Learning By Learning (Hsu & Lin, AAAI 2015), in batch mode.

A bandit learns, round by round, which of several strategies ("arms") to
trust. The arms here are least_confidence and coreset (the NPC paper's
ALBL) plus, by default, uniform random sampling (`uniform_arm=True`, as
in Hsu & Lin's own libact implementation and BADGE's batch code): without
it, samples outside both deterministic batches have query probability 0 and
the importance-weighted accuracy below is biased. K = number of arms.

Per round t (one `select` call):

1. Reward of the previous round (skipped at t = 0). The model has just been
   retrained with the labels of every batch queried so far; their labels are
   now visible in ``ctx.labels``. The reward is the paper's importance-
   weighted accuracy over *all* samples the bandit has queried,

       r = IW-ACC = (1 / (n T)) Σ_{queried x} W_x · [f(x) = y_x],

   with f the current model's prediction, n the pool size, T = `horizon`
   (the number of rounds the bandit plays) and W_x = 1 / π_x, π_x the
   probability that x was queried in its round (step 4). With the uniform
   arm every unlabeled sample has π_x > 0, so each round's sum
   Σ_{x ∈ batch} W_x [f(x) = y_x] is an unbiased estimate of the number of
   samples (unlabeled at that round) that f classifies correctly — as one
   query's W [f(x) = y] is in the point-mode original — and
   r ≈ (t / T) · accuracy. The labels read are ``ctx.labels`` at those
   (now labeled) indices; nothing else of ``ctx.labels`` is read.
2. EXP4.P update with identity advice (each arm is an expert recommending
   itself; the action is the arm, not the sample — the batch-mode change):
   for every arm k,
       r̂_k = r · [k = k_{t−1}] / p_{k_{t−1}},   v̂_k = 1 / p_k,
       log w_k += (p_min / 2) (r̂_k + v̂_k √(ln(K / δ) / (K T))),
   with p the arm probabilities of the previous round. Log-weights avoid
   overflow over long runs.
3. Arm probabilities p_k = (1 − K p_min) w_k / Σ w + p_min; draw k_t ~ p.
4. Every arm proposes its batch of q (from one inference pass over the
   pool); the bandit queries arm k_t's batch. Each queried x gets
   π_x = Σ_{deterministic j} p_j [x ∈ batch_j] + p_uniform · q / N_U
   (its probability of being in the queried batch under step 3's draw).

Defaults: δ = 0.1 (libact), p_min = min(√(ln K / (K T)), 1 / (2K)) — the
Exp4.P / libact value, capped so that the weights always decide at least
half of the choice (for short horizons the uncapped value exceeds 1/K).

The whole bandit state (log-weights, the arm probabilities and arm of the
pending round, every queried sample with its weight, past rewards) is a
JSON-able dict (`state_dict` / `load_state_dict`): the loop stores it in
each round's record, so a resumed run continues the same bandit.
"""
from __future__ import annotations

import math

import jax
import numpy as np

from npc_jax.data import Pool
from npc_jax.inference import numpy_rng
from npc_jax.strategies.base import Acquisition, AcquisitionContext, check_query
from npc_jax.strategies.coreset import k_center_greedy
from npc_jax.strategies.pool_outputs import DEFAULT_CHUNK, map_pool, top_q
from npc_jax.strategies.uncertainty import least_confidence_scores

__all__ = ["ALBL", "arm_probabilities", "exp4p_update", "importance_weighted_accuracy"]

ARMS = ("least_confidence", "coreset")


def arm_probabilities(log_weights: np.ndarray, p_min: float) -> np.ndarray:
    """(K,) EXP4.P arm probabilities (1 − K p_min) w / Σw + p_min."""
    log_weights = np.asarray(log_weights, np.float64)
    w = np.exp(log_weights - log_weights.max())
    return (1.0 - len(w) * p_min) * w / w.sum() + p_min


def exp4p_update(log_weights: np.ndarray, probabilities: np.ndarray, arm: int,
                 reward: float, *, p_min: float, delta: float, horizon: int) -> np.ndarray:
    """One EXP4.P step with identity advice; returns the new (K,) log-weights.

    Args:
      log_weights: (K,) current log w.
      probabilities: (K,) the arm probabilities the chosen arm was drawn with.
      arm: the arm drawn.
      reward: the observed reward r of that round.
    """
    k = len(log_weights)
    reward_estimate = np.zeros(k)
    reward_estimate[arm] = reward / probabilities[arm]
    variance_bound = 1.0 / np.asarray(probabilities, np.float64)
    confidence = math.sqrt(math.log(k / delta) / (k * horizon))
    return (np.asarray(log_weights, np.float64)
            + p_min / 2.0 * (reward_estimate + variance_bound * confidence))


def importance_weighted_accuracy(correct: np.ndarray, weights: np.ndarray, *,
                                 pool_size: int, horizon: int) -> float:
    """IW-ACC = Σ W_x [f(x) = y_x] / (n T). correct, weights: (m,)."""
    return float(np.sum(np.asarray(weights) * np.asarray(correct)) / (pool_size * horizon))


class ALBL:
    """Active Learning By Learning over least_confidence and coreset (batch mode).

    Args:
      horizon: T, the number of rounds the bandit plays (the run's rounds).
      uniform_arm: add uniform random sampling as an arm (see module doc).
      delta: EXP4.P's confidence parameter δ.
      p_min: minimum arm probability, < 1/K; default see module doc.
      chunk_size: pool images per inference call.
    """

    name = "albl"

    def __init__(self, horizon: int = 10, uniform_arm: bool = True, delta: float = 0.1,
                 p_min: float | None = None, chunk_size: int = DEFAULT_CHUNK):
        if int(horizon) != horizon or horizon <= 0:
            raise ValueError(f"horizon must be a positive int (the number of rounds), "
                             f"got {horizon!r}.")
        self.arms = ARMS + (("uniform",) if uniform_arm else ())
        k = len(self.arms)
        if p_min is None:
            p_min = min(math.sqrt(math.log(k) / (k * horizon)), 1.0 / (2 * k))
        if not 0.0 <= p_min < 1.0 / k:
            raise ValueError(f"p_min must lie in [0, 1/K) = [0, {1.0 / k:.4g}), got {p_min}.")
        if delta <= 0:
            raise ValueError(f"delta must be positive, got {delta}.")
        self.horizon, self.delta, self.p_min = int(horizon), float(delta), float(p_min)
        self.chunk_size = chunk_size
        self.load_state_dict(None)

    # -- state ---------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "arms": list(self.arms),
            "log_weights": self.log_weights.tolist(),
            "round": self.round,
            "pending": self.pending,          # {"arm": k, "probabilities": [...]} or None
            "queried": self.queried,          # [[pool index, importance weight], ...]
            "rewards": self.rewards,
            "arm_history": self.arm_history,
        }

    def load_state_dict(self, state: dict | None) -> None:
        """Restores `state_dict()`'s output; None resets to the initial bandit."""
        if state is None:
            state = {"arms": list(self.arms), "log_weights": [0.0] * len(self.arms),
                     "round": 0, "pending": None, "queried": [], "rewards": [],
                     "arm_history": []}
        if list(state["arms"]) != list(self.arms):
            raise ValueError(f"ALBL state is for arms {state['arms']}, this strategy has "
                             f"{list(self.arms)}; use the same uniform_arm setting to resume.")
        self.log_weights = np.asarray(state["log_weights"], np.float64)
        self.round = int(state["round"])
        self.pending = state["pending"]
        self.queried = [[int(i), float(w)] for i, w in state["queried"]]
        self.rewards = [float(r) for r in state["rewards"]]
        self.arm_history = [str(a) for a in state["arm_history"]]

    # -- one round -----------------------------------------------------------

    def _reward(self, ctx: AcquisitionContext, pool: Pool) -> float:
        """IW-ACC of the current model on every sample queried so far."""
        indices = np.asarray([i for i, _ in self.queried], np.int64)
        weights = np.asarray([w for _, w in self.queried])
        if not pool.labeled_mask[indices].all():
            raise ValueError("ALBL's queried samples are not all labeled in this pool: the "
                             "strategy's state belongs to another run; build a new strategy.")
        predictions = map_pool(ctx, indices, lambda logits, _: logits.argmax(axis=1),
                               chunk_size=self.chunk_size)
        correct = predictions == np.asarray(ctx.labels)[indices]
        return importance_weighted_accuracy(correct, weights, pool_size=pool.num_samples,
                                            horizon=self.horizon)

    def _arm_batches(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
                     q: int) -> dict[str, np.ndarray]:
        """Every arm's batch of q pool indices, from one pass over the pool."""
        all_indices = np.arange(pool.num_samples)
        scores, features = map_pool(
            ctx, all_indices, lambda logits, h: (least_confidence_scores(logits), h),
            chunk_size=self.chunk_size)
        unlabeled = pool.unlabeled_indices
        tie_key, coreset_key, uniform_key = jax.random.split(key, 3)
        batches = {
            "least_confidence": unlabeled[top_q(scores[unlabeled], q, tie_key)],
            "coreset": k_center_greedy(features, pool.labeled_mask, ~pool.labeled_mask, q,
                                       coreset_key)[0],
        }
        if "uniform" in self.arms:
            batches["uniform"] = numpy_rng(uniform_key).choice(unlabeled, q, replace=False)
        return {name: np.asarray(b, np.int64) for name, b in batches.items()}

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition:
        check_query(pool, q)
        reward = None
        if self.pending is not None:
            reward = self._reward(ctx, pool)
            self.log_weights = exp4p_update(
                self.log_weights, np.asarray(self.pending["probabilities"]),
                self.pending["arm"], reward, p_min=self.p_min, delta=self.delta,
                horizon=self.horizon)
            self.rewards.append(reward)
        probabilities = arm_probabilities(self.log_weights, self.p_min)
        arm_key, batch_key = jax.random.split(key)
        arm = int(numpy_rng(arm_key).choice(len(self.arms), p=probabilities))
        batches = self._arm_batches(batch_key, ctx, pool, q)
        chosen = batches[self.arms[arm]]
        inclusion = np.zeros(len(chosen))
        for k, name in enumerate(self.arms):
            if name == "uniform":
                inclusion += probabilities[k] * q / pool.num_unlabeled
            else:
                inclusion += probabilities[k] * np.isin(chosen, batches[name])
        self.queried += [[int(i), float(1.0 / p)] for i, p in zip(chosen, inclusion)]
        self.pending = {"arm": arm, "probabilities": probabilities.tolist()}
        self.arm_history.append(self.arms[arm])
        self.round += 1
        objective = {
            "arm": self.arms[arm],
            "arm_probabilities": dict(zip(self.arms, probabilities.tolist())),
            "reward": reward,
            "overlap_least_confidence_coreset": int(np.isin(
                batches["least_confidence"], batches["coreset"]).sum()),
        }
        return Acquisition(chosen, objective)
