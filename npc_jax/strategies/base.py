"""What every acquisition strategy sees and returns.

A strategy is an object with ``name`` and
``select(key, ctx, pool, q) -> Acquisition``: given a PRNG key, the
`AcquisitionContext` (the trained model and the pool's images) and the
`Pool` (which indices are labeled), it returns q distinct unlabeled pool
indices, deterministically per key.

A strategy that learns across rounds (ALBL's bandit) is a `StatefulStrategy`:
it also has ``state_dict() -> JSON-able dict`` and ``load_state_dict(state)``;
the loop saves the state in every round's record and restores it on resume,
so a resumed run continues the same state. The state must be all such a
strategy carries between rounds.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np

from npc_jax.data import Pool
from npc_jax.models import Model
from npc_jax.inference import batched_apply

__all__ = ["EMBEDDING_SOURCES", "Acquisition", "AcquisitionContext", "StatefulStrategy", "Strategy", "check_query"]


EMBEDDING_SOURCES = ("auto", "pretrained", "features")


class Acquisition(NamedTuple):
    indices: np.ndarray   # (q,) int64 pool indices, distinct, all unlabeled
    objective: dict | None = None  # strategy-specific score of the choice (JSON-able)


@dataclasses.dataclass
class AcquisitionContext:
    """The trained model and the pool a strategy scores.

    Attributes:
      model: the network; `variables` its trained (EMA) variables.
      images: (N, H, W, C) the pool's images, uint8 or float32 in [0, 1].
      labels: (N,) int the labels the strategy may use: only entries at
        labeled indices are meaningful (a strategy must not read others).
      batch_size: forward-pass batch for chunked inference over the pool.
      embedding: (N, d) float32 embedding of the whole pool by the run's
        self-supervised encoder, or a function of no argument that returns it
        (the loop passes one that embeds the pool on first use and keeps it,
        so runs whose strategies never ask pay nothing), or None when the run
        has no pretraining. Read through `embed`.
    """

    model: Model
    variables: Any
    images: np.ndarray
    labels: np.ndarray
    batch_size: int = 1000
    embedding: np.ndarray | Callable[[], np.ndarray] | None = None

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def pretrained_embedding(self) -> np.ndarray | None:
        """(N, d) the run's pretrained embedding of the whole pool (made on first
        use when `embedding` is a function), or None without a pretraining."""
        return self.embedding() if callable(self.embedding) else self.embedding

    def embed(self, indices, source: str = "auto") -> np.ndarray:
        """(n, d) float32 representation of pool `indices` for embedding-based strategies.

        Args:
          indices: (n,) int pool indices.
          source: "pretrained" (the run's self-supervised encoder, `embedding`),
            "features" (the current model's penultimate features), or "auto"
            (pretrained when the run has one, else features).
        """
        indices = np.asarray(indices, np.int64)
        if source not in EMBEDDING_SOURCES:
            raise ValueError(f"embedding source must be one of {EMBEDDING_SOURCES}, got "
                             f"{source!r} (strategy option `embedding`).")
        if source == "pretrained" or (source == "auto" and self.embedding is not None):
            if self.embedding is None:
                raise ValueError("embedding='pretrained' needs a run with a self-supervised "
                                 "pretraining (config.init='pretrained'); use "
                                 "embedding='features' or 'auto'.")
            return np.asarray(self.pretrained_embedding()[indices], np.float32)
        _, features = self.logits_and_features(indices)
        return np.asarray(features, np.float32)

    def logits_and_features(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Inference-mode (logits (n, C), penultimate features (n, D)), chunked."""
        indices = np.asarray(indices)
        return batched_apply(self.model.apply_with_features, self.variables,
                             self.images[indices], batch_size=self.batch_size)


@runtime_checkable
class Strategy(Protocol):
    name: str

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition: ...


@runtime_checkable
class StatefulStrategy(Strategy, Protocol):
    """A strategy that carries state from round to round (saved in each record)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def check_query(pool: Pool, q: int) -> None:
    """Raises DataError if q is not a positive int or exceeds the unlabeled pool."""
    pool.check_budget(q, rounds=1)
