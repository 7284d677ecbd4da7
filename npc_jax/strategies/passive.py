"""Passive learning: q unlabeled indices uniformly at random, without replacement."""
from __future__ import annotations

import jax
import numpy as np

from npc_jax.data import Pool
from npc_jax.strategies.base import Acquisition, AcquisitionContext, check_query

__all__ = [
    "Passive",
]


class Passive:
    name = "passive"

    def select(self, key: jax.Array, ctx: AcquisitionContext | None, pool: Pool,
               q: int) -> Acquisition:
        check_query(pool, q)
        unlabeled = pool.unlabeled_indices
        chosen = jax.random.choice(key, len(unlabeled), (q,), replace=False)
        return Acquisition(unlabeled[np.asarray(chosen)].astype(np.int64))
