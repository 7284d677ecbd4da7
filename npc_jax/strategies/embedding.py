"""The pool embedding the low-budget strategies (TypiClust, ProbCover, MaxHerding) work on.

One helper, `pool_embedding(ctx, source, embed_fn) -> (N, d) float32`:

- `embed_fn` given (Python only): a user callable ``embed_fn(images) -> (n, d)``
  applied to ``ctx.images`` chunk by chunk (images as the context stores
  them: uint8, or float32 in [0, 1]); it overrides `source`;
- otherwise `source` as in `AcquisitionContext.embed`: "pretrained" (the run's
  self-supervised encoder), "features" (the current model's penultimate
  features) or "auto" (pretrained when the run has one, else features).

The pool is embedded in chunks of `chunk_size` rows, so memory is one chunk of
images plus the (N, d) result. A non-finite embedding raises
`NonFiniteError` naming the first bad pool indices.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from npc_jax.inference import check_finite
from npc_jax.strategies.base import EMBEDDING_SOURCES, AcquisitionContext

__all__ = ["EMBEDDING_CHUNK", "pool_embedding"]

# Pool rows per embedding call: bounds the copy of pool images at 16k
# (≈ 50 MB at 32×32×3 uint8), as for the score-based baselines.
EMBEDDING_CHUNK = 16384


def _embed_chunk(ctx: AcquisitionContext, start: int, stop: int, source: str,
                 embed_fn: Callable | None) -> np.ndarray:
    """(stop − start, d) float32 embedding of pool rows start..stop−1."""
    if embed_fn is not None:
        out = np.asarray(embed_fn(ctx.images[start:stop]))
    else:
        out = ctx.embed(np.arange(start, stop), source)
    if out.ndim != 2 or out.shape[0] != stop - start:
        raise ValueError(f"the embedding of {stop - start} pool images must have shape "
                         f"({stop - start}, d), got {out.shape}; embed_fn must map (n, H, W, C) "
                         "images to (n, d) vectors.")
    return np.asarray(out, np.float32)


def pool_embedding(ctx: AcquisitionContext, source: str = "auto",
                   embed_fn: Callable | None = None, *,
                   chunk_size: int = EMBEDDING_CHUNK) -> np.ndarray:
    """(N, d) float32 embedding of the whole pool, checked finite.

    Args:
      ctx: the acquisition context (its images, model and optional
        pretrained `embedding`).
      source: "auto", "pretrained" or "features" (see module docstring);
        ignored when `embed_fn` is given.
      embed_fn: optional callable ``images (n, H, W, C) -> (n, d)``.
      chunk_size: pool rows per call.

    Returns:
      (N, d) float32, N = len(ctx.images).

    Raises:
      ValueError: unknown `source`, or `embed_fn` returns the wrong shape.
      NonFiniteError: the embedding holds NaN or inf.
    """
    if embed_fn is None and source not in EMBEDDING_SOURCES:
        raise ValueError(f"embedding must be one of {EMBEDDING_SOURCES}, got {source!r}.")
    if embed_fn is not None and not callable(embed_fn):
        raise ValueError(f"embed_fn must be a callable images -> (n, d), got {embed_fn!r}.")
    num = len(ctx.images)
    if num == 0:
        raise ValueError("pool_embedding needs a non-empty pool.")
    pretrained = (ctx.pretrained_embedding()
                  if embed_fn is None and source != "features" and ctx.embedding is not None
                  else None)
    if pretrained is not None and len(pretrained) == num:
        # The pretrained embedding is already in memory: one cast, no per-chunk copies.
        embedding = np.asarray(pretrained, np.float32)
        if embedding.ndim != 2:
            raise ValueError(f"the pretrained embedding must be (N, d), got {embedding.shape}.")
    else:
        chunk_size = int(chunk_size)
        embedding = np.concatenate([_embed_chunk(ctx, s, min(s + chunk_size, num), source,
                                                 embed_fn)
                                    for s in range(0, num, chunk_size)])
    check_finite(embedding, "embedding", indices=np.arange(num),
                 fix="check embed_fn / the encoder and its inputs")
    return embedding
