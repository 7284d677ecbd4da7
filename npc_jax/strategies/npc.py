"""NPC, Neural Pre-Conditioning (Kong et al., NeurIPS 2022, Algorithm 1).

Choose the batch X_u of q unlabeled points maximising λ_min of the
empirical-NTK Gram matrix over X_L ∪ X_u (Eq. 3), by random search: draw m
batches uniformly (distinct points within a batch), score each, keep the best.

Kernels (see `npc_jax.ntk`), all scored from a per-point representation R
whose pairwise `gram(R_a, R_b)` is the kernel:

* kernel="last", output="logits" (the paper, Sec. 3.4): R = φ = √C·[h, 1],
  K = φφ'. One forward pass per point.
* kernel="last", output="probs": R = ([h, 1], p), K = (h·h'+1)·⟨J_p, J_p'⟩_F
  with J_p the softmax Jacobian: the classifier's uncertainty enters the kernel.
* kernel="full": R = the per-sample Jacobian of every parameter, as one
  (C·p_l) block per parameter array (`ntk.jacobian_fn(flatten=False)`). Computed only for the distinct sampled points, a
  chunk of batches at a time so that at most `memory_mb` of Jacobians are
  held; the labeled points' Jacobians are kept for the whole round.

The labeled block K(X_L, X_L) is computed once per round and reused by every
candidate; a candidate adds only its (L, q) and (q, q) blocks. With
``normalize`` the kernel is cosine-normalised, K_ij / √(K_ii K_jj).
Proposition 1: a batch holding a duplicate (of itself or of a labeled point)
has λ_min = 0 (to working precision, see `npc_jax.spectral`), so it never wins
while a non-degenerate batch exists.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from npc_jax import ntk, spectral
from npc_jax.data import Pool, images_to_float
from npc_jax.strategies.base import Acquisition, AcquisitionContext, check_query

KERNELS = ("last", "full")


def sample_batches(key: jax.Array, candidates: np.ndarray, num_batches: int,
                   q: int) -> np.ndarray:
    """(num_batches, q) positions in `candidates`, distinct within a batch, uniform.

    Deterministic per key. Uses a numpy Generator seeded from the key: drawing q
    of N without replacement is O(q) there, whereas a JAX permutation costs O(N)
    per batch.
    """
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    return np.stack([rng.choice(len(candidates), q, replace=False)
                     for _ in range(num_batches)]).astype(np.int64)


def candidate_batches(key: jax.Array, pool: Pool, num_candidates: int | str,
                      q: int) -> np.ndarray:
    """Algorithm 1's m random candidate batches: (m, q) unlabeled pool indices.

    `num_candidates` is m, or "pool" for m = the number of unlabeled samples.
    """
    check_query(pool, q)
    unlabeled = pool.unlabeled_indices
    m = len(unlabeled) if num_candidates == "pool" else int(num_candidates)
    return unlabeled[sample_batches(key, unlabeled, m, q)]


# -- kernels as Gram functions of per-point representations -------------------------


def _dot_gram(rep_a, rep_b):
    """Σ_l A_l B_lᵀ over the arrays of two representations: (..., n, F_l), (..., m, F_l)
    -> (..., n, m). One array: an explicit feature map; several: Jacobian blocks."""
    return functools.reduce(jnp.add, [jnp.einsum("...if,...jf->...ij", a, b)
                                      for a, b in zip(rep_a, rep_b)])


def _probs_gram(rep_a, rep_b):
    (ha, pa), (hb, pb) = rep_a, rep_b
    return (jnp.einsum("...if,...jf->...ij", ha, hb)
            * ntk.softmax_jacobian_inner(pa, pb))


def _assemble(gram, gram_labeled, rep_labeled, rep_batches, normalize):
    """(b, L+q, L+q) Gram matrices [[K_LL, K_Lb], [K_bL, K_bb]] of b batches."""
    b = rep_batches[0].shape[0]
    cross = gram(tuple(r[None] for r in rep_labeled), rep_batches)      # (b, L, q)
    within = gram(rep_batches, rep_batches)                              # (b, q, q)
    top = jnp.concatenate([jnp.broadcast_to(gram_labeled, (b, *gram_labeled.shape)), cross], 2)
    full = jnp.concatenate([top, jnp.concatenate([jnp.swapaxes(cross, 1, 2), within], 2)], 1)
    if normalize:
        d = jnp.sqrt(jnp.maximum(jnp.diagonal(full, axis1=1, axis2=2), 1e-30))
        full = full / (d[:, :, None] * d[:, None, :])
    return full


@functools.lru_cache(maxsize=8)
def _assemble_fn(gram, normalize):
    return jax.jit(functools.partial(_assemble, gram, normalize=normalize))


def score_batches(phi_labeled: np.ndarray, phi_batches: np.ndarray, *,
                  chunk_size: int = 128, gram: Callable = _dot_gram,
                  normalize: bool = False, float64: bool = False,
                  gram_labeled=None) -> np.ndarray:
    """λ_min for every candidate batch, the labeled block computed once.

    Args:
      phi_labeled: (L, F) representation of the labeled points, or a tuple of
        such arrays (e.g. (h, p) for the softmax kernel).
      phi_batches: (m, q, F) representations of the candidates, batch by batch,
        or a tuple of such arrays.
      chunk_size: batches per compiled call (memory: chunk·(L+q)² floats).
      gram: ``gram(rep_a, rep_b) -> (..., n, m)`` on tuples of arrays with
        leading batch axes; default the dot product of one feature array.
      normalize: cosine-normalise the kernel.
      float64: solve the eigenproblems in float64.
      gram_labeled: K(X_L, X_L) if already computed (else computed here).

    Returns:
      (m,) λ_min, exactly 0 where singular to working precision.
    """
    with (spectral.enable_x64() if float64 else contextlib.nullcontext()):
        dtype = np.float64 if float64 else np.float32
        rep_labeled = tuple(jnp.asarray(r, dtype) for r in _as_tuple(phi_labeled))
        rep_batches = _as_tuple(phi_batches)
        if gram_labeled is None:
            gram_labeled = gram(rep_labeled, rep_labeled)
        gram_labeled = jnp.asarray(gram_labeled, dtype)
        assemble = _assemble_fn(gram, normalize)
        m = len(rep_batches[0])
        scores = []
        for start in range(0, m, chunk_size):
            chunk = tuple(np.asarray(r[start:start + chunk_size], dtype) for r in rep_batches)
            real = len(chunk[0])
            if real < chunk_size:  # pad so that every call has one shape
                chunk = tuple(np.concatenate([r, np.repeat(r[:1], chunk_size - real, 0)])
                              for r in chunk)
            grams = np.asarray(assemble(gram_labeled, rep_labeled, chunk))[:real]
            scores.append(spectral.min_eigenvalue(grams, chunk_size=chunk_size,
                                                  float64=float64))
    return np.concatenate(scores) if scores else np.zeros((0,), dtype)


def _as_tuple(rep):
    return tuple(rep) if isinstance(rep, (tuple, list)) else (rep,)


@functools.lru_cache(maxsize=8)
def _jacobian_jit(apply_fn, output):
    jac = ntk.jacobian_fn(apply_fn, output=output, flatten=False)
    return jax.jit(lambda variables, x: jac(variables, images_to_float(x)))


def _score_summary(scores: np.ndarray) -> dict:
    return {"num": int(len(scores)), "mean": float(scores.mean()), "std": float(scores.std()),
            "quantiles": {str(p): float(np.quantile(scores, p))
                          for p in (0.0, 0.25, 0.5, 0.75, 1.0)}}


class NPC:
    """NPC by random search over m batches, with any kernel of `npc_jax.ntk`.

    Args:
      num_candidates: m, the number of random batches scored (paper: 1000), or
        "pool" for m = the number of unlabeled samples.
      kernel: "last" (last layer, closed form; the paper's choice) or "full"
        (every parameter; per-sample Jacobians).
      output: "logits" (the paper) or "probs" (softmax outputs).
      normalize: score the cosine-normalised kernel K_ij / √(K_ii K_jj).
      chunk_size: candidate batches per scoring call.
      jacobian_chunk: samples per per-sample-Jacobian call (kernel="full").
      memory_mb: bound on the candidates' Jacobians held at once (kernel="full").
      float64: form the Gram matrices and solve the eigenproblems in float64;
        None (default): True for kernel="last", False for "full". Why: the
        last-layer Gram of a trained net is ill-conditioned (λ_min/λ_max ≈
        1e-6 for the small CNN after 300 steps, 1e-9 at init), below float32's
        round-off tolerance n·eps ≈ 8e-6 at n = 70, so in float32 every batch
        would score 0 and NPC would pick the first one; float64 resolves it
        for a few ms more per 1000 batches.
    """

    name = "npc"

    def __init__(self, num_candidates: int | str = 1000, kernel: str = "last",
                 output: str = "logits", normalize: bool = False, chunk_size: int = 128,
                 jacobian_chunk: int = 32, memory_mb: float = 1024,
                 float64: bool | None = None):
        if num_candidates != "pool" and (isinstance(num_candidates, str)
                                         or int(num_candidates) != num_candidates
                                         or num_candidates <= 0):
            raise ValueError(f"num_candidates must be a positive int or 'pool', "
                             f"got {num_candidates!r}.")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be 'last' or 'full', got {kernel!r} "
                             "(config field strategy_options.<npc>.kernel).")
        if output not in ntk.OUTPUTS:
            raise ValueError(f"output must be 'logits' or 'probs', got {output!r} "
                             "(config field strategy_options.<npc>.output).")
        self.num_candidates = num_candidates
        self.kernel = kernel
        self.output = output
        self.normalize = bool(normalize)
        self.chunk_size = int(chunk_size)
        self.jacobian_chunk = int(jacobian_chunk)
        self.memory_mb = float(memory_mb)
        self.float64 = (kernel == "last") if float64 is None else bool(float64)

    # -- representations ---------------------------------------------------------

    def feature_map(self, ctx: AcquisitionContext, indices: np.ndarray) -> np.ndarray:
        """φ (n, D+1) of the last-layer logits kernel (a hook tests override)."""
        _, features = ctx.logits_and_features(indices)
        return np.asarray(ntk.last_layer_feature_map(features, ctx.num_classes))

    def representation(self, ctx: AcquisitionContext, indices: np.ndarray) -> tuple:
        """Per-point arrays whose `gram` is the kernel: a tuple of (n, ·) arrays."""
        indices = np.asarray(indices)
        if self.kernel == "full":
            rep = self._jacobians(ctx, indices)
        elif self.output == "logits":
            rep = (np.asarray(self.feature_map(ctx, indices), np.float32),)
        else:
            logits, features = ctx.logits_and_features(indices)
            h1 = np.concatenate([features, np.ones((len(features), 1), features.dtype)], 1)
            rep = (h1.astype(np.float32), np.asarray(jax.nn.softmax(logits), np.float32))
        if not all(np.all(np.isfinite(r)) for r in rep):
            raise FloatingPointError("Non-finite features or gradients: the trained model "
                                     "diverged (check the training loss).")
        return rep

    @property
    def gram(self) -> Callable:
        return _probs_gram if (self.kernel == "last" and self.output == "probs") else _dot_gram

    def _jacobians(self, ctx, indices):
        jac = _jacobian_jit(ctx.model.apply_fn, self.output)
        size = self.jacobian_chunk
        out = []
        for start in range(0, len(indices), size):
            chunk = ctx.images[indices[start:start + size]]
            real = len(chunk)
            if real < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - real, 0)])
            out.append([np.asarray(block)[:real] for block in jac(ctx.variables, chunk)])
        return tuple(np.concatenate(blocks) for blocks in zip(*out))  # per-layer blocks

    # -- selection ---------------------------------------------------------------

    def score(self, ctx: AcquisitionContext, pool: Pool, batches: np.ndarray,
              rep_labeled: tuple | None = None) -> np.ndarray:
        """λ_min of X_L ∪ batch for each row of `batches` (m, q) of pool indices."""
        if rep_labeled is None:
            rep_labeled = self.representation(ctx, pool.labeled_indices)
        kw = dict(gram=self.gram, normalize=self.normalize, float64=self.float64)
        if self.kernel == "last":
            used, inverse = np.unique(batches, return_inverse=True)
            rep_used = self.representation(ctx, used)
            rep_batches = tuple(r[inverse.reshape(batches.shape)] for r in rep_used)
            return score_batches(rep_labeled, rep_batches, chunk_size=self.chunk_size, **kw)
        # Full kernel: hold the Jacobians of one group of batches at a time
        # (gathered per batch, plus those of the group's distinct points).
        rep_labeled = tuple(jnp.asarray(r, jnp.float32) for r in rep_labeled)
        kw["gram_labeled"] = self.gram(rep_labeled, rep_labeled)   # once per round
        bytes_per_batch = 2 * batches.shape[1] * sum(r.shape[1] for r in rep_labeled) * 4
        group = max(1, min(self.chunk_size, int(self.memory_mb * 2**20 // bytes_per_batch)))
        scores = []
        for start in range(0, len(batches), group):
            part = batches[start:start + group]
            used, inverse = np.unique(part, return_inverse=True)
            jac_used = self.representation(ctx, used)
            scores.append(score_batches(
                rep_labeled, tuple(j[inverse.reshape(part.shape)] for j in jac_used),
                chunk_size=group, **kw))
        return np.concatenate(scores)

    def objective(self, best_score: float, scores: np.ndarray) -> dict:
        return {"lambda_min": float(best_score), "random_batches": _score_summary(scores),
                "kernel": self.kernel, "output": self.output, "normalize": self.normalize}

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition:
        batches = candidate_batches(key, pool, self.num_candidates, q)
        scores = self.score(ctx, pool, batches)
        best = int(np.argmax(scores))
        return Acquisition(batches[best].astype(np.int64),
                           self.objective(scores[best], scores))


def npc_variant(name: str, **fixed) -> Callable[..., NPC]:
    """A registry factory: NPC with some options fixed, e.g. npc_variant("npc_full", kernel="full")."""
    def factory(**options) -> NPC:
        strategy = NPC(**{**fixed, **options})
        strategy.name = name
        return strategy
    return factory
