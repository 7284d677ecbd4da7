"""Searches for NPC's batch (Eq. 3), each a plain function of a `kernels.Kernel`.

max over X_u ⊂ X_U, |X_u| = q, of λ_min(K(X_L ∪ X_u)) is combinatorial:

* `random_search` (the paper's Algorithm 1): draw m batches uniformly
  (distinct points within a batch), score each, keep the best.
* `swap_search` (beyond the paper): start from the better of the best random
  batch and a greedy one, then improve it by exact swaps (see its docstring).

Both score candidates with `score_batches`: the labeled block K(X_L, X_L) is
computed once and reused by every candidate, which adds only its (L, q) and
(q, q) blocks; the Grams (b, L+q, L+q) are solved by
`spectral.min_eigenvalue`. With D > 1 devices the blocks are computed sharded
over the candidate axis (`kernels`: the candidates' rows of K_UL, the b sets'
K_bb) and the λ_min per device where solved on the device; the scores, and so
the picks, are those of one device (tested on 8 fake CPU devices). Proposition 1: a batch holding a duplicate (of
itself or of a labeled point) has λ_min = 0 (to working precision), so it
never wins while a non-degenerate batch exists.

    kernel = kernels.last_layer_kernel(ctx)
    result = random_search(key, kernel, pool, q=20, num_candidates=1000)
    result.indices      # (20,) pool indices
    result.objective    # {"lambda_min": ..., "random_batches": {...}}
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from npc_jax import spectral
from npc_jax.data import Pool
from npc_jax.inference import chunked_map, numpy_rng
from npc_jax.strategies.base import check_query
from npc_jax.strategies.kernels import Kernel, assemble_grams, precomputed

__all__ = ["SearchResult", "candidate_batches", "check_num_candidates",
           "random_search", "residuals", "sample_batches", "score_batches", "score_summary",
           "swap_search"]


class SearchResult(NamedTuple):
    indices: np.ndarray   # (q,) int64 pool indices, distinct, unlabeled
    objective: dict       # "lambda_min" reached, and how (JSON-able)


def check_num_candidates(num_candidates, *, allow_zero: bool = False) -> None:
    """Raises ValueError unless m is a positive int (≥ 0 with allow_zero) or "pool"."""
    if num_candidates == "pool":
        return
    if (isinstance(num_candidates, str) or int(num_candidates) != num_candidates
            or num_candidates < (0 if allow_zero else 1)):
        raise ValueError(f"num_candidates must be a {'non-negative' if allow_zero else 'positive'}"
                         f" int or 'pool', got {num_candidates!r}.")


# -- candidate batches -------------------------------------------------------------------


def sample_batches(key: jax.Array, candidates: np.ndarray, num_batches: int,
                   q: int) -> np.ndarray:
    """(num_batches, q) int64 positions in `candidates`, distinct within a batch, uniform.

    Deterministic per key; drawn on the host (`inference.numpy_rng`).
    """
    rng = numpy_rng(key)
    return np.stack([rng.choice(len(candidates), q, replace=False)
                     for _ in range(num_batches)]).astype(np.int64)


def candidate_batches(key: jax.Array, pool: Pool, num_candidates: int | str,
                      q: int, candidates: np.ndarray | None = None) -> np.ndarray:
    """Algorithm 1's m random candidate batches: (m, q) int64 unlabeled pool indices.

    `num_candidates` is m, or "pool" for m = the number of unlabeled samples.
    `candidates` (optional unlabeled pool indices, at least q) restricts the
    batches to them; None: every unlabeled point.
    """
    check_query(pool, q)
    unlabeled = pool.unlabeled_indices
    if candidates is not None:
        unlabeled = np.asarray(candidates, np.int64)
        if len(unlabeled) < q or pool.labeled_mask[unlabeled].any():
            raise ValueError(f"candidate_batches: the {len(unlabeled)} candidates must be "
                             f"unlabeled pool points, at least q = {q}.")
    m = len(unlabeled) if num_candidates == "pool" else int(num_candidates)
    return unlabeled[sample_batches(key, unlabeled, m, q)]


def score_summary(scores: np.ndarray) -> dict:
    """The distribution of (m,) scores, for the records: num, mean, std, quantiles."""
    return {"num": int(len(scores)), "mean": float(scores.mean()), "std": float(scores.std()),
            "quantiles": {str(p): float(np.quantile(scores, p))
                          for p in (0.0, 0.25, 0.5, 0.75, 1.0)}}


# -- scoring -----------------------------------------------------------------------------


def score_batches(kernel: Kernel, labeled, batches, *, chunk_size: int = 128) -> np.ndarray:
    """λ_min of K(X_L ∪ batch) for every batch, the labeled block computed once.

    Args:
      kernel: a `kernels.Kernel` (its `float64` sets the eigen-solver's precision).
      labeled: (L,) int the labeled points, as the kernel's `represent` takes them.
      batches: (m, q) int the candidate batches.
      chunk_size: batches per Gram assembly and eigen-solver call (memory:
        chunk·(L+q)² floats).

    Returns:
      (m,) λ_min (float64 if kernel.float64, else float32), exactly 0 where
      singular to working precision (`npc_jax.spectral`).

    Memory: the distinct points of all batches are represented at once, or,
    when the kernel sets `max_points`, those of one group of batches at a
    time, the group sized so that its points plus one chunk's gathered copies
    fit max_points. The labeled points are represented once.
    """
    labeled = np.asarray(labeled, np.int64)
    batches = np.asarray(batches, np.int64)
    m, q = batches.shape
    if m == 0:
        return np.zeros((0,), np.float64 if kernel.float64 else np.float32)
    if kernel.score is not None:   # the kernel scores batches itself (kernels.full_kernel)
        return kernel.score(labeled, batches)
    group = m if kernel.max_points is None else max(
        1, min(chunk_size, kernel.max_points // (2 * q)))
    chunk = min(chunk_size, group)
    rep_l = kernel.represent(labeled)
    k_ll = kernel.cross(rep_l)                                           # (L, L)
    scores = []
    for start in range(0, m, group):
        part = batches[start:start + group]
        used, inverse = np.unique(part, return_inverse=True)
        inverse = inverse.reshape(part.shape)
        rep_u = kernel.represent(used)
        k_ul = kernel.cross(rep_u, rep_l)                                # (|U|, L)

        def within(rows, rep_u=rep_u):   # (chunk, q) positions in `used` -> (chunk, q, q)
            return kernel.within(tuple(r[rows] for r in rep_u))

        for s in range(0, len(part), chunk):
            rows = inverse[s:s + chunk]
            # devices=1: only pads the last chunk (the kernel's `within` shards the sets).
            grams = assemble_grams(k_ll, k_ul[rows], chunked_map(within, rows, chunk_size=chunk,
                                                                 devices=1))
            scores.append(spectral.min_eigenvalue(grams, chunk_size=chunk,
                                                  float64=kernel.float64))
    return np.concatenate(scores)


# -- the searches ------------------------------------------------------------------------


def random_search(key: jax.Array, kernel: Kernel, pool: Pool, q: int, *,
                  num_candidates: int | str = 1000, chunk_size: int = 128,
                  candidates: np.ndarray | None = None) -> SearchResult:
    """Algorithm 1: the best of m random batches of q unlabeled points.

    Args:
      key: draws the batches (`candidate_batches`).
      kernel: represents pool indices.
      pool: which points are labeled.
      q: batch size.
      num_candidates: m, or "pool" for m = the number of unlabeled points.
      chunk_size: as in `score_batches`.
      candidates: optional unlabeled indices the batches are drawn from.

    Returns:
      The best batch; objective {"lambda_min": its λ_min, "random_batches":
      `score_summary` of all m scores}.
    """
    check_num_candidates(num_candidates)
    batches = candidate_batches(key, pool, num_candidates, q, candidates)
    scores = score_batches(kernel, pool.labeled_indices, batches, chunk_size=chunk_size)
    best = int(np.argmax(scores))
    return SearchResult(batches[best].astype(np.int64),
                        {"lambda_min": float(scores[best]),
                         "random_batches": score_summary(scores)})


def swap_search(key: jax.Array, kernel: Kernel, pool: Pool, q: int, *,
                num_candidates: int | str = 200, max_swaps: int = 60,
                swap_candidates: int = 64, greedy: bool = True,
                chunk_size: int = 128) -> SearchResult:
    """Random search, then greedy residual selection, then exact swaps.

    1. Random search: the best of m random batches (skipped if m = 0).
    2. Greedy (if `greedy`): q points chosen one at a time, each maximising its
       residual r(x) = K(x, x) − k_S(x)ᵀ K_S⁻¹ k_S(x) given the set S chosen so
       far (X_L first). Why this proxy: for any point i of a set,
       λ_min(K) ≤ 1 / (K⁻¹)_ii = the residual of i given the others, so λ_min
       is at most the smallest residual, and greedy keeps every residual large.
    3. Swaps from the better start: take the batch point with the largest
       weight in the eigenvector of λ_min (the most redundant one); rank every
       pool point by its residual given the set without it; score the
       `swap_candidates` best replacements exactly and accept the best if it
       raises λ_min; else try the next point of the eigenvector. Stops after
       `max_swaps` evaluation rounds or when no point improves.

    Needs the kernel's columns over the whole pool: every point is
    represented once (`kernels.precomputed`), so the kernel must not bound
    `max_points` below the pool (the full-network kernel does).

    Returns:
      The batch; objective {"random_batches" (if m > 0), "greedy_lambda_min"
      (if greedy), "start_lambda_min", "lambda_min", "swaps_accepted"}.
    """
    check_query(pool, q)
    check_num_candidates(num_candidates, allow_zero=True)
    if kernel.max_points is not None and kernel.max_points < pool.num_samples:
        raise ValueError("swap_search needs every pool point's representation at once, and "
                         f"this kernel holds at most {kernel.max_points} points; use a "
                         "last-layer kernel or random_search.")
    labeled, unlabeled = pool.labeled_indices, pool.unlabeled_indices
    num_l = len(labeled)
    everything = np.concatenate([labeled, unlabeled])     # rows: labeled first, then the pool
    rows = precomputed(kernel, everything)
    rep_all = rows.represent(np.arange(len(everything)))
    diag = np.asarray(rows.diagonal(rep_all), np.float64)

    def columns(cols):   # K(every row, cols): (N, len(cols)) float64
        return np.asarray(rows.cross(rep_all, rows.represent(cols)), np.float64)

    def score_rows(batch_rows):   # (b, q) rows -> (b,) λ_min
        return score_batches(rows, np.arange(num_l), batch_rows, chunk_size=chunk_size)

    starts, info = [], {}
    if num_candidates != 0:
        m = len(unlabeled) if num_candidates == "pool" else int(num_candidates)
        batches = num_l + sample_batches(key, unlabeled, m, q)
        scores = score_rows(batches)
        best = int(np.argmax(scores))
        starts.append((float(scores[best]), batches[best]))
        info["random_batches"] = score_summary(scores)
    if greedy:
        greedy_rows = _greedy(columns, diag, num_l, q)
        greedy_score = float(score_rows(greedy_rows[None])[0])
        starts.append((greedy_score, greedy_rows))
        info["greedy_lambda_min"] = greedy_score
    if not starts:
        raise ValueError("swap_search needs num_candidates > 0 or greedy=True.")
    score, batch = max(starts, key=lambda t: t[0])
    info["start_lambda_min"] = score
    batch, score, accepted = _swaps(columns, diag, num_l, batch.copy(), score, score_rows,
                                    max_swaps=max_swaps, swap_candidates=swap_candidates)
    info.update({"lambda_min": float(score), "swaps_accepted": accepted})
    return SearchResult(everything[batch].astype(np.int64), info)


def residuals(k_cols: np.ndarray, k_set: np.ndarray, d_self: np.ndarray) -> np.ndarray:
    """r(x) = d(x) − k(x)ᵀ K_S⁻¹ k(x) for every row x.

    Args:
      k_cols: (N, s) K(x, S) for every point x.
      k_set: (s, s) K(S, S) (a relative jitter of 1e-10 keeps its Cholesky defined).
      d_self: (N,) K(x, x).

    Returns:
      (N,) float64 residuals.
    """
    jitter = 1e-10 * np.trace(k_set) / len(k_set)
    chol = np.linalg.cholesky(k_set + jitter * np.eye(len(k_set)))
    w = np.linalg.solve(chol, k_cols.T)                    # (s, N)
    return d_self - np.einsum("sn,sn->n", w, w)


def _greedy(columns, diag, num_l, q):
    """q rows (of the unlabeled part) by largest residual, the labeled rows given."""
    chosen = list(range(num_l))
    k_cols = columns(np.array(chosen)) if num_l else None
    picks = []
    for _ in range(q):
        r = residuals(k_cols, k_cols[chosen], diag) if chosen else diag.copy()
        r[chosen] = -np.inf
        pick = int(np.argmax(r))
        chosen.append(pick)
        picks.append(pick)
        col = columns(np.array([pick]))
        k_cols = col if k_cols is None else np.concatenate([k_cols, col], 1)
    return np.array(picks)


def _swaps(columns, diag, num_l, batch, score, score_rows, *, max_swaps, swap_candidates):
    """Exact swaps from `batch` (q rows): (batch, λ_min, swaps accepted); see `swap_search`."""
    lab_rows = np.arange(num_l)
    accepted = rounds = 0
    while rounds < max_swaps:
        members = np.concatenate([lab_rows, batch])
        k_cols = columns(members)                                       # (N, L+q)
        k_set = k_cols[members]
        _, vecs = np.linalg.eigh(k_set)
        order = np.argsort(-np.abs(vecs[num_l:, 0]))  # batch positions, most redundant first
        improved = False
        for position in order:
            if rounds >= max_swaps:
                break
            rounds += 1
            keep = np.delete(np.arange(len(members)), num_l + position)
            r = residuals(k_cols[:, keep], k_set[np.ix_(keep, keep)], diag)
            r[members] = -np.inf
            r[:num_l] = -np.inf
            top = np.argsort(-r)[:swap_candidates]
            candidates = np.repeat(batch[None], len(top), 0)
            candidates[:, position] = top
            scores = score_rows(candidates)
            best = int(np.argmax(scores))
            if scores[best] > score:
                batch, score = candidates[best], float(scores[best])
                accepted += 1
                improved = True
                break
        if not improved:
            break
    return batch, score, accepted
