"""FreeMatch's self-adaptive confidence thresholds (Wang et al., ICLR 2023, Sec. 3.2).

FixMatch keeps a pseudo-label when its confidence reaches a fixed τ = 0.95.
Early in training almost nothing passes; a class the model finds hard passes
last. FreeMatch replaces τ by thresholds that follow the model's own
confidence, per class, with exponential moving averages (EMA, decay λ) over
the unlabeled batches' pseudo-label distributions q_b (B_u, C):

    τ_t     = λ τ_{t−1} + (1 − λ) · mean_b max_c q_b(c)         (global)
    p̃_t(c) = λ p̃_{t−1}(c) + (1 − λ) · mean_b q_b(c)            (per class)
    τ_t(c)  = p̃_t(c) / max_c' p̃_t(c') · τ_t                     (class thresholds)

both started at 1/C. A sample is kept when max_c q_b(c) ≥ τ_t(argmax_c q_b).
The update comes first, so a step thresholds with the averages that include
its own batch, as in the reference implementation.

The state is a small pytree carried in the training state.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["FreeMatchState", "class_thresholds", "freematch_init", "freematch_update"]


class FreeMatchState(NamedTuple):
    global_confidence: jax.Array   # () float32, τ_t
    class_confidence: jax.Array    # (C,) float32, p̃_t


def freematch_init(num_classes: int) -> FreeMatchState:
    """τ_0 = 1/C and p̃_0 = 1/C for every class."""
    return FreeMatchState(jnp.asarray(1.0 / num_classes, jnp.float32),
                          jnp.full((num_classes,), 1.0 / num_classes, jnp.float32))


def freematch_update(state: FreeMatchState, probs: jax.Array, decay: float) -> FreeMatchState:
    """One EMA step on a batch's pseudo-label distributions `probs` (B_u, C)."""
    probs = jax.lax.stop_gradient(probs).astype(jnp.float32)
    return FreeMatchState(
        decay * state.global_confidence + (1 - decay) * jnp.mean(jnp.max(probs, axis=-1)),
        decay * state.class_confidence + (1 - decay) * jnp.mean(probs, axis=0))


def class_thresholds(state: FreeMatchState) -> jax.Array:
    """(C,) τ_t(c) = p̃_t(c) / max p̃_t · τ_t."""
    return state.class_confidence / jnp.max(state.class_confidence) * state.global_confidence
