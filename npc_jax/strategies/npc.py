"""NPC, Neural Pre-Conditioning (Kong et al., NeurIPS 2022): a kernel × a search.

Choose the batch X_u of q unlabeled points maximising λ_min of a kernel's Gram
over X_L ∪ X_u (Eq. 3). A `KernelSearch` strategy builds the round's kernel
from the `AcquisitionContext` (`npc_jax.strategies.kernels`) and runs a search
with it (`npc_jax.strategies.search`); the registry composes:

* ``npc``: random search (Algorithm 1) × the empirical NTK of the trained
  network, last layer on logits by default (the paper, Sec. 3.4; options
  `kernel`, `output`, `normalize`);
* ``npc_probs``, ``npc_full``, ``npc_norm``: the same with output="probs",
  kernel="full" or normalize=True;
* ``npc_typical``: the same, its random batches drawn from the typical
  points only (`candidates="typical"`: the densest fraction of the pool
  embedding, by TypiClust's typicality), so that λ_min chooses among
  typical points;
* ``npc_search`` (`npc_search.NPCSearch`): swap search × the last-layer kernel;
* ``npc_infinite`` (`npc_infinite.NPCInfinite`): random search × the analytic
  infinite-width NTK of an architecture;
* ``npc_embed`` (`NPCEmbed`): random search × the cosine kernel of the pool
  embedding the low-budget peers use (`kernels.embedding_kernel`).

Every strategy here has ``score(ctx, pool, batches) -> (m,) λ_min`` and
``select(key, ctx, pool, q)``; the objective records the search's result
(`lambda_min`, `random_batches`, ...) and what was searched (`kernel`, ...).
A test or a user injects any kernel with ``kernel_fn(ctx) -> Kernel``.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import numpy as np

from npc_jax.data import Pool
from npc_jax.strategies import kernels
from npc_jax.strategies.base import EMBEDDING_SOURCES, Acquisition, AcquisitionContext
from npc_jax.strategies.embedding import pool_embedding
from npc_jax.strategies.kernels import KERNELS, Kernel
from npc_jax.strategies.neighbours import knn_mean_distance
from npc_jax.strategies.search import (SearchResult, candidate_batches, check_num_candidates,
                                       random_search, sample_batches, score_batches)

__all__ = ["KERNELS", "KernelSearch", "NPC", "NPCEmbed", "candidate_batches", "npc_variant",
           "sample_batches"]


class KernelSearch:
    """A strategy that is a kernel × a search.

    Args:
      make_kernel: ``make_kernel(ctx) -> Kernel``, the round's kernel.
      search: ``search(key, kernel, pool, q) -> SearchResult`` (e.g.
        `search.random_search` with its options bound).
      description: fields appended to every objective (what was searched).
      chunk_size: batches per scoring call of `score`.
      kernel_fn: replaces `make_kernel` if given (inject a kernel: tests,
        precomputed embeddings, a custom kernel); the objective's "kernel" is
        then "custom".
    """

    name = "kernel_search"

    def __init__(self, make_kernel: Callable[[AcquisitionContext], Kernel],
                 search: Callable[..., SearchResult], description: dict, *,
                 chunk_size: int = 128,
                 kernel_fn: Callable[[AcquisitionContext], Kernel] | None = None):
        self.make_kernel = kernel_fn or make_kernel
        self.search = search
        self.description = {**description, **({"kernel": "custom"} if kernel_fn else {})}
        self.chunk_size = int(chunk_size)

    def score(self, ctx: AcquisitionContext, pool: Pool, batches: np.ndarray) -> np.ndarray:
        """λ_min of K(X_L ∪ batch) for each row of `batches` (m, q) of pool indices: (m,)."""
        return score_batches(self.make_kernel(ctx), pool.labeled_indices, batches,
                             chunk_size=self.chunk_size)

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition:
        result = self.search(key, self.make_kernel(ctx), pool, q)
        return Acquisition(result.indices, {**result.objective, **self.description})


class NPC(KernelSearch):
    """NPC by random search over m batches, with a finite network's empirical NTK.

    Args:
      num_candidates: m, the number of random batches scored (paper: 1000), or
        "pool" for m = the number of unlabeled samples.
      kernel: "last" (last layer, closed form; the paper's choice) or "full"
        (every parameter; per-sample Jacobians, `kernels.full_kernel`).
      output: "logits" (the paper) or "probs" (softmax outputs).
      normalize: score the cosine-normalised kernel K_ij / √(K_ii K_jj).
      chunk_size: candidate batches per scoring call.
      jacobian_chunk: samples per per-sample-Jacobian call (kernel="full").
      memory_mb: bound on the candidates' Jacobians held at once (kernel="full");
        the labeled points' Jacobians are kept for the whole round.
      float64: form the Gram matrices and solve the eigenproblems in float64;
        None (default): True for kernel="last", False for "full". Why: the
        last-layer Gram of a trained net is ill-conditioned (λ_min/λ_max ≈
        1e-6 for the small CNN after 300 steps, 1e-9 at init), below float32's
        round-off tolerance n·eps ≈ 8e-6 at n = 70, so in float32 every batch
        would score 0 and NPC would pick the first one; float64 resolves it
        for a few ms more per 1000 batches.
      full_exact: kernel="full" only: score every batch with the full kernel;
        False (default): screen with a cheaper partial kernel ⪯ the full one and
        score the `screen_top` best exactly (`kernels.full_kernel`; the pick's
        λ_min is exact, the other scores are lower bounds).
      screen_top: kernel="full": batches scored exactly after screening.
      candidates: "pool" (the paper: batches of any unlabeled points) or
        "typical": batches of the unlabeled points among the `typical_fraction`
        densest of the pool embedding (sparsity = mean distance to the
        `typicality_k` nearest pool points on unit-norm rows, TypiClust's
        inverse typicality; computed once per embedding).
      typical_fraction: the share of the pool that is typical, in (0, 1].
      typicality_k: neighbours of the sparsity.
      embedding: "auto", "pretrained" or "features" (`pool_embedding`), for
        candidates="typical".
      kernel_fn: inject a kernel, see `KernelSearch`.
    """

    name = "npc"

    def __init__(self, num_candidates: int | str = 1000, kernel: str = "last",
                 output: str = "logits", normalize: bool = False, chunk_size: int = 128,
                 jacobian_chunk: int = 32, memory_mb: float = 1024,
                 float64: bool | None = None, full_exact: bool = False,
                 screen_top: int = kernels.SCREEN_TOP, candidates: str = "pool",
                 typical_fraction: float = 0.2, typicality_k: int = 20,
                 embedding: str = "auto",
                 kernel_fn: Callable[[AcquisitionContext], Kernel] | None = None):
        check_num_candidates(num_candidates)
        kernels.check_options(kernel, output)
        if candidates not in ("pool", "typical"):
            raise ValueError(f"npc: candidates must be 'pool' or 'typical', got {candidates!r}.")
        if not 0 < typical_fraction <= 1:
            raise ValueError(f"npc: typical_fraction must lie in (0, 1], got "
                             f"{typical_fraction!r}.")
        if isinstance(typicality_k, bool) or not (isinstance(typicality_k, int)
                                                  and typicality_k >= 1):
            raise ValueError(f"npc: typicality_k must be an int >= 1, got {typicality_k!r}.")
        if embedding not in EMBEDDING_SOURCES:
            raise ValueError(f"npc: embedding must be one of {EMBEDDING_SOURCES}, got "
                             f"{embedding!r}.")
        self.candidates, self.typical_fraction = candidates, float(typical_fraction)
        self.typicality_k, self.embedding = typicality_k, embedding
        self._sparsity = None   # (the embedding it was computed on, (N,) sparsity)
        make_kernel = functools.partial(
            kernels.empirical_kernel, kernel=kernel, output=output, normalize=bool(normalize),
            jacobian_chunk=int(jacobian_chunk), memory_mb=float(memory_mb), float64=float64,
            full_exact=bool(full_exact), screen_top=int(screen_top))
        self.num_candidates = num_candidates
        self.kernel, self.output, self.normalize = kernel, output, bool(normalize)
        super().__init__(make_kernel,
                         functools.partial(random_search, num_candidates=num_candidates,
                                           chunk_size=int(chunk_size)),
                         {"kernel": kernel, "output": output, "normalize": bool(normalize)},
                         chunk_size=chunk_size, kernel_fn=kernel_fn)

    def typical_candidates(self, ctx: AcquisitionContext, pool: Pool) -> np.ndarray:
        """The unlabeled pool indices among the `typical_fraction` densest of the pool
        embedding, ascending."""
        z = pool_embedding(ctx, self.embedding)
        if self._sparsity is None or self._sparsity[0] is not z:
            unit = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True),
                                  np.finfo(np.float32).tiny)
            self._sparsity = (z, knn_mean_distance(unit, self.typicality_k))
        sparsity = self._sparsity[1]
        count = max(1, int(round(self.typical_fraction * len(sparsity))))
        typical = np.zeros(len(sparsity), bool)
        typical[np.argsort(sparsity, kind="stable")[:count]] = True
        return np.flatnonzero(typical & ~pool.labeled_mask).astype(np.int64)

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition:
        if self.candidates == "pool":
            return super().select(key, ctx, pool, q)
        candidates = self.typical_candidates(ctx, pool)
        if len(candidates) < q:
            raise ValueError(f"npc: only {len(candidates)} unlabeled typical points for a batch "
                             f"of {q}; raise typical_fraction (now {self.typical_fraction}).")
        result = self.search(key, self.make_kernel(ctx), pool, q, candidates=candidates)
        return Acquisition(result.indices, {
            **result.objective, **self.description, "candidates": "typical",
            "typical_fraction": self.typical_fraction, "typicality_k": self.typicality_k,
            "embedding": self.embedding, "typical_points": int(len(candidates))})


class NPCEmbed(KernelSearch):
    """NPC's rule on the low-budget peers' embedding: random search × the cosine kernel.

    The kernel is `kernels.embedding_kernel`: K = ẑ·ẑ' on the unit-normalised
    pool embedding that TypiClust, ProbCover and MaxHerding use
    (`embedding.pool_embedding`), so NPC's selection rule (Eq. 3, Algorithm 1)
    and the peers' are compared on one representation. The Gram over
    L + q points has rank ≤ d (the embedding's width): with L + q > d every
    batch scores 0 and the first random batch is returned.

    Args:
      num_candidates: m, the random batches scored (paper: 1000), or "pool".
      embedding: "auto", "pretrained" or "features" (`pool_embedding`); recorded.
      embed_fn: optional callable images (n, H, W, C) -> (n, d) (Python only);
        overrides `embedding` (recorded as "embed_fn").
      chunk_size: candidate batches per scoring call.
      float64: Grams and eigenproblems in float64 (as NPC's last-layer kernel:
        clustered embeddings give ill-conditioned Grams).
      kernel_fn: inject a kernel, see `KernelSearch`.
    """

    name = "npc_embed"

    def __init__(self, num_candidates: int | str = 1000, embedding: str = "auto",
                 embed_fn: Callable | None = None, chunk_size: int = 128,
                 float64: bool = True,
                 kernel_fn: Callable[[AcquisitionContext], Kernel] | None = None):
        check_num_candidates(num_candidates)
        if embed_fn is None and embedding not in EMBEDDING_SOURCES:
            raise ValueError(f"npc_embed: embedding must be one of {EMBEDDING_SOURCES}, got "
                             f"{embedding!r} (config field strategy_options.npc_embed.embedding).")
        if embed_fn is not None and not callable(embed_fn):
            raise ValueError(f"npc_embed: embed_fn must be a callable images -> (n, d), got "
                             f"{embed_fn!r}.")
        self.num_candidates, self.embedding, self.embed_fn = num_candidates, embedding, embed_fn
        make_kernel = functools.partial(kernels.embedding_kernel, source=embedding,
                                        embed_fn=embed_fn, float64=bool(float64))
        super().__init__(make_kernel,
                         functools.partial(random_search, num_candidates=num_candidates,
                                           chunk_size=int(chunk_size)),
                         {"kernel": "embedding",
                          "embedding": "embed_fn" if embed_fn else embedding,
                          "normalize": True},
                         chunk_size=chunk_size, kernel_fn=kernel_fn)


def npc_variant(name: str, **fixed) -> Callable[..., NPC]:
    """A registry factory: NPC with some options fixed, e.g. npc_variant("npc_full", kernel="full")."""
    def factory(**options) -> NPC:
        strategy = NPC(**{**fixed, **options})
        strategy.name = name
        return strategy
    return factory
