"""MaxHerding (Bae, Noh & Sutherland, ECCV 2024, "Generalized Coverage for More
Robust Low-Budget Active Learning").

On an embedding z (N, d) of the pool (`pool_embedding`), rows scaled to unit L2
norm as the paper's code does (`normalize=True`), the generalised coverage of
a set S is

    C(S) = (1/N) Σ_x max_{s ∈ S} k(x, s),   k(x, x') = exp(−‖z_x − z_x'‖² / h²),

the sum over every pool point x, h the `bandwidth` (the paper's default h = 1
on unit-norm features; scikit-activeml's `MaxHerding` with
``metric_dict={"gamma": 1 / h**2}`` is the same kernel). MaxHerding adds the q
unlabeled points one at a time, each maximising the gain

    g(c | S) = Σ_x max(k(x, c) − m_S(x), 0),   m_S(x) = max_{s ∈ S} k(x, s),

starting from S = the labeled set (m = 0 when there is none: cold start, the
first pick is then the densest point). Ties go to the smallest pool index.

Exact greedy without N×N: the gains of all C candidates are one pass over
(candidate chunk × point block) kernel blocks in JAX, O(C·N·d) time and
memory of one block. Because C(S) is monotone submodular (a facility-location
function), a candidate's gain only shrinks as S grows, so the later picks use
lazy greedy (Minoux 1978): keep the last gains as upper bounds, re-score only
the top stale candidates, and pick the first maximum once it is fresh. The
picks are those of the plain greedy (up to float32 round-off in near-ties);
the cost after the first pass is typically a few re-scored chunks per pick.

At 1M points the first pass over all candidates is O(N²·d) (≈ 1 h on 2 CPU
cores at the measured ≈ 3.8 ms per candidate): `num_candidates` scores only a
uniform random subset of the unlabeled points as candidates (as the authors'
code can), still covering all N points; the number used is recorded.

Measured (2 shared cores, `experiments/bench_low_budget.py` blobs, d = 128,
|L| = 10, Q = 20): 20k exact 9.5 s / 0.3 GB peak RSS (scikit-activeml 63.5 s /
4.8 GB, the same picks); 60k exact 58 s / 0.37 GB (scikit-activeml cannot
allocate its 60k × 60k kernel); 1M with num_candidates=20000 214 s / 2.4 GB.

Memory: the (N, d) float32 embedding, its normalised and blocked copies, and
one (chunk, `POINT_BLOCK`) kernel block.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from npc_jax.data import Pool
from npc_jax.inference import check_finite, chunked_map, numpy_rng, pad_rows
from npc_jax.strategies.base import Acquisition, AcquisitionContext, check_query
from npc_jax.strategies.embedding import pool_embedding
from npc_jax.strategies.kernels import unit_rows

__all__ = ["CANDIDATE_CHUNK", "POINT_BLOCK", "REFRESH_CHUNK", "CoverageState", "MaxHerding",
           "check_bandwidth", "coverage_gains", "coverage_state", "max_herding"]

# Coverage points per scan step: a (chunk, 4096) float32 kernel block is ≤ 8 MB.
POINT_BLOCK = 4096
# Candidates per gains call (first pass and lazy refreshes): 256 × 4096 blocks ran
# fastest on 2 cores (≈ 0.23 ms per candidate on 60k × 128, against 0.38 for 64 and
# 0.39 for 512 or 1024).
CANDIDATE_CHUNK = 256
# Stale candidates re-scored per lazy step (one gains call).
REFRESH_CHUNK = CANDIDATE_CHUNK
# Cover of the padding rows: above any kernel value (k ≤ 1), so they never gain.
_PAD_COVER = 2.0


def check_bandwidth(bandwidth) -> float:
    """The bandwidth h as a float; ValueError unless it is a finite real > 0."""
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float, np.floating,
                                                                 np.integer)) \
            or not math.isfinite(bandwidth) or bandwidth <= 0:
        raise ValueError(f"maxherding: bandwidth must be a finite number > 0 (the Gaussian "
                         f"kernel's h; the paper uses 1.0 on unit-norm embeddings), got "
                         f"{bandwidth!r}.")
    return float(bandwidth)


# -- kernel blocks (jitted, fixed shapes) ------------------------------------------------


def _gaussian(rows, rows_sq, points, points_sq, inv_h2):
    """k between rows (r, d) and points (b, d): (r, b) exp(−‖x − y‖² / h²)."""
    sq = rows_sq[:, None] + points_sq[None, :] - 2.0 * rows @ points.T
    return jnp.exp(-jnp.maximum(sq, 0.0) * inv_h2)


@jax.jit
def _gains_chunk(rows, points, points_sq, cover, inv_h2):
    """g(c | S) of each row c (r, d) over point blocks (nb, B, d) with cover (nb, B): (r,)."""
    rows_sq = jnp.sum(rows * rows, axis=1)

    def block(total, xs):
        pts, pts_sq, cov = xs
        k = _gaussian(rows, rows_sq, pts, pts_sq, inv_h2)
        return total + jnp.sum(jnp.maximum(k - cov[None, :], 0.0), axis=1), None

    total, _ = jax.lax.scan(block, jnp.zeros(rows.shape[0], rows.dtype),
                            (points, points_sq, cover))
    return total


@jax.jit
def _raise_cover(cover, rows, points, points_sq, inv_h2):
    """max(cover, max_r k(x, r)) for point blocks (nb, B, d) and rows (r, d): (nb, B)."""
    rows_sq = jnp.sum(rows * rows, axis=1)

    def block(xs):
        pts, pts_sq, cov = xs
        return jnp.maximum(cov, jnp.max(_gaussian(rows, rows_sq, pts, pts_sq, inv_h2).T, axis=1))

    return jax.lax.map(block, (points, points_sq, cover))


# -- coverage state ------------------------------------------------------------------------


class CoverageState:
    """The pool's points in fixed blocks and their cover m_S(x).

    Attributes:
      points: (nb, B, d) float32 device array, the N points padded with zeros.
      points_sq: (nb, B) their squared norms.
      cover: (nb, B) m_S(x) for S the points added so far (padding: 2, never gains).
      num: N.
      inv_h2: 1 / h².
    """

    def __init__(self, z: np.ndarray, bandwidth: float, block: int = POINT_BLOCK):
        z = np.asarray(z, np.float32)
        self.num, dim = z.shape
        block = int(min(block, self.num))
        num_blocks = -(-self.num // block)
        padded = np.zeros((num_blocks * block, dim), np.float32)
        padded[:self.num] = z
        self.points = jnp.asarray(padded.reshape(num_blocks, block, dim))
        self.points_sq = jnp.sum(self.points * self.points, axis=2)
        valid = (np.arange(num_blocks * block) < self.num).reshape(num_blocks, block)
        self.cover = jnp.asarray(np.where(valid, 0.0, _PAD_COVER), jnp.float32)
        self.inv_h2 = jnp.float32(1.0 / bandwidth ** 2)

    def add(self, rows: np.ndarray, chunk: int = 256) -> None:
        """Adds the points `rows` (r, d) to S: m_S(x) ← max(m_S(x), max_r k(x, r))."""
        rows = np.asarray(rows, np.float32)
        for start in range(0, len(rows), chunk):
            # Padding repeats the last row: the maximum is unchanged.
            part = pad_rows(rows[start:start + chunk], chunk)
            self.cover = _raise_cover(self.cover, part, self.points, self.points_sq,
                                      self.inv_h2)

    def gains(self, rows: np.ndarray, chunk: int = CANDIDATE_CHUNK) -> np.ndarray:
        """g(c | S) for each row (r, d): (r,) float64 (sums over the N points)."""
        fn = lambda part: _gains_chunk(part, self.points, self.points_sq, self.cover,
                                       self.inv_h2)
        # A fixed chunk (the last one padded): one compilation per pool size.
        return np.asarray(chunked_map(fn, np.asarray(rows, np.float32), chunk_size=chunk),
                          np.float64)

    def coverage(self) -> float:
        """C(S) = the mean of m_S over the N points."""
        cover = np.asarray(self.cover).ravel()[:self.num]
        return float(np.mean(cover, dtype=np.float64))


def coverage_state(z: np.ndarray, labeled, bandwidth: float = 1.0) -> CoverageState:
    """A `CoverageState` over z (N, d) with S = the `labeled` (L,) indices."""
    state = CoverageState(z, check_bandwidth(bandwidth))
    labeled = np.asarray(labeled, np.int64)
    if len(labeled):
        state.add(np.asarray(z)[labeled])
    return state


def coverage_gains(z: np.ndarray, labeled, candidates, bandwidth: float = 1.0) -> np.ndarray:
    """g(c | L) for every candidate index c (C,) over the pool z (N, d): (C,) float64."""
    return coverage_state(z, labeled, bandwidth).gains(np.asarray(z)[np.asarray(candidates)])


# -- the greedy ------------------------------------------------------------------------------


def _lazy_greedy(score: Callable[[np.ndarray], np.ndarray], commit: Callable[[int], None],
                 upper: np.ndarray, q: int, refresh: int) -> tuple[list, list, int]:
    """Lazy greedy over candidate positions 0..C−1.

    Args:
      score: positions (r,) -> their current gains (r,).
      commit: adds the candidate at a position to S.
      upper: (C,) the gains given the starting S (fresh for the first pick).
      q: picks.
      refresh: stale candidates re-scored at a time.

    Returns:
      (positions picked, their gains, how many gains were re-scored).
    """
    upper = np.array(upper, np.float64)
    fresh = np.ones(len(upper), bool)
    picks, gains, rescored = [], [], 0
    for _ in range(q):
        while True:
            # np.argmax takes the first maximum: exact ties go to the smallest position.
            best = int(np.argmax(upper))
            if fresh[best]:
                break
            # The largest stale bounds (fresh ones excluded, so that a crowd of exact
            # ties cannot stall the loop: every pass refreshes at least one).
            pending = np.where(fresh, -np.inf, upper)
            top = np.argpartition(-pending, min(refresh, len(upper) - 1))[:refresh]
            top = top[np.isfinite(pending[top])]
            upper[top] = score(top)
            fresh[top] = True
            rescored += len(top)
        picks.append(best)
        gains.append(float(upper[best]))
        upper[best] = -np.inf
        commit(best)
        fresh[:] = False   # every other gain may have shrunk: an upper bound now
    return picks, gains, rescored


def max_herding(z: np.ndarray, labeled, candidates, q: int, *, bandwidth: float = 1.0,
                refresh: int = REFRESH_CHUNK) -> tuple[np.ndarray, dict]:
    """MaxHerding's greedy on an embedding (see the module docstring).

    Args:
      z: (N, d) float32 embedding (already normalised if wanted).
      labeled: (L,) int the starting set S (may be empty: cold start).
      candidates: (C,) int sorted pool indices that may be picked (C ≥ q).
      q: picks.
      bandwidth: the Gaussian kernel's h.
      refresh: stale candidates re-scored per lazy step.

    Returns:
      (q,) int64 picks in pick order, and {"coverage_before", "coverage_after"
      (C(L), C(L ∪ picks)), "gains" (each pick's gain / N), "gain_evaluations"
      (gains computed, the first pass included)}.
    """
    z = np.asarray(z, np.float32)
    candidates = np.asarray(candidates, np.int64)
    if len(candidates) < q:
        raise ValueError(f"maxherding: {len(candidates)} candidates cannot give {q} picks; "
                         "raise num_candidates.")
    state = coverage_state(z, labeled, bandwidth)
    before = state.coverage()
    first = state.gains(z[candidates])
    positions, gains, rescored = _lazy_greedy(
        lambda top: state.gains(z[candidates[top]], chunk=refresh),
        lambda position: state.add(z[candidates[position]][None], chunk=1), first, q,
        int(refresh))
    return candidates[positions], {
        "coverage_before": before, "coverage_after": state.coverage(),
        "gains": [g / len(z) for g in gains], "gain_evaluations": len(candidates) + rescored}


class MaxHerding:
    """MaxHerding on a pool embedding (see the module docstring).

    Args:
      embedding: "auto", "pretrained" or "features" (`pool_embedding`); recorded.
      embed_fn: optional callable images (n, H, W, C) -> (n, d) (Python only);
        overrides `embedding`.
      bandwidth: h of k(x, x') = exp(−‖x − x'‖² / h²); the paper's 1.0.
      normalize: scale the embedding's rows to unit norm first (the paper).
      num_candidates: None scores every unlabeled point (exact greedy); an int
        scores that many, drawn uniformly without replacement with the key
        (for 1M pools; the paper's code uses 35 000).
      refresh: stale candidates re-scored per lazy step.
    """

    name = "maxherding"

    def __init__(self, embedding: str = "auto", embed_fn: Callable | None = None,
                 bandwidth: float = 1.0, normalize: bool = True,
                 num_candidates: int | None = None, refresh: int = REFRESH_CHUNK):
        self.bandwidth = check_bandwidth(bandwidth)
        if num_candidates is not None and (isinstance(num_candidates, bool) or
                                           int(num_candidates) != num_candidates or
                                           num_candidates < 1):
            raise ValueError(f"maxherding: num_candidates must be None (every unlabeled point) "
                             f"or a positive int, got {num_candidates!r}.")
        if int(refresh) != refresh or refresh < 1:
            raise ValueError(f"maxherding: refresh must be a positive int, got {refresh!r}.")
        self.embedding, self.embed_fn = embedding, embed_fn
        self.normalize, self.refresh = bool(normalize), int(refresh)
        self.num_candidates = None if num_candidates is None else int(num_candidates)

    def candidates(self, key: jax.Array, pool: Pool, q: int) -> np.ndarray:
        """The sorted unlabeled indices scored this round (all, or a uniform subset)."""
        unlabeled = pool.unlabeled_indices
        if self.num_candidates is None or self.num_candidates >= len(unlabeled):
            return unlabeled
        if self.num_candidates < q:
            raise ValueError(f"maxherding: num_candidates={self.num_candidates} is below the "
                             f"query size q={q}; raise it or pass None.")
        chosen = numpy_rng(key).choice(len(unlabeled), self.num_candidates, replace=False)
        return np.sort(unlabeled[chosen])

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition:
        check_query(pool, q)
        z = pool_embedding(ctx, self.embedding, self.embed_fn)
        if len(z) != pool.num_samples:
            raise ValueError(f"maxherding: the embedding has {len(z)} rows for a pool of "
                             f"{pool.num_samples}.")
        z = unit_rows(z) if self.normalize else z
        check_finite(z, "embedding", indices=np.arange(len(z)),
                     fix="check the embedding's scale (normalize=True avoids overflow)")
        candidates = self.candidates(key, pool, q)
        picks, info = max_herding(z, pool.labeled_indices, candidates, q,
                                  bandwidth=self.bandwidth, refresh=self.refresh)
        objective = {"embedding": "embed_fn" if self.embed_fn else self.embedding,
                     "bandwidth": self.bandwidth, "normalize": self.normalize,
                     "num_candidates": int(len(candidates)), **info}
        return Acquisition(picks.astype(np.int64), objective)
