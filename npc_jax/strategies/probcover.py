"""ProbCover (Yehuda, Dekel, Hacohen & Weinshall, NeurIPS 2022, "Active Learning
Through a Covering Lens").

On an embedding z (N, d) of the pool (`pool_embedding`), rows scaled to unit
L2 norm as the paper's code does (`normalize=True`):

1. δ: given (`delta`), or the paper's purity rule: cluster z with k-means into
   C clusters (C = `num_clusters`, default the number of classes); a point is
   δ-pure when its δ-ball holds no point of another cluster; δ is the largest
   value of the grid `deltas` whose purity (fraction of δ-pure points) is
   >= α = 0.95. Purity for every δ comes from one pass:
   δ-pure ⇔ distance to the nearest point of another cluster > δ. Pools
   larger than `purity_sample` estimate it on that many random points (each
   against the whole pool; standard error ≤ 0.001 at 50 000 points, where the
   exact pass is O(N² d): hours at 1M).
   (When no δ reaches α, the smallest is used with a warning, as
   scikit-activeml does.)
2. The δ-ball graph: x → y iff ‖z_x − z_y‖ <= δ (self loops included),
   stored as CSR neighbour lists (`neighbours.ball_graph`; on large pools
   only the pairs a cell partition cannot rule out are computed,
   `cells.ball_graph_cells`).
3. Greedy max coverage: points in a labeled point's ball are covered; each
   pick is the unlabeled point whose ball holds the most uncovered points
   (exact ties uniform at random with the key); its ball becomes covered.

Degenerate δ (a warning and `objective["degenerate"]`, and still q valid
picks): "covers_nothing" when every ball holds only its centre (no pick
covers more than itself: the picks are uniformly random); "covers_everything"
when one ball covers the pool, or the pool is covered before q picks (the
remaining picks are uniformly random, counted in `random_fill`).

Memory bound: the graph holds at most `max_edges` edges (default 10⁸: 400 MB
of int32 neighbour ids + (N+1) int64 offsets); a δ that would exceed it is
refused with an error before the memory is spent, except when a single ball
covers the pool (detected in O(N d), no graph built). The distance passes
work on fixed tiles (never N×N): the purity pass O(min(N, purity_sample) N d),
the graph O(N² d) on small pools and the reachable pairs only on large ones
(23.5 % of N² on BENCHMARKS P7's embedding at 200k points, δ = 0.2).

Same picks as scikit-activeml's `ProbCover` given the same embedding,
clustering, δ grid and tie-breaking draws (tested, via `tie_break`).
"""
from __future__ import annotations

import warnings
from typing import Callable

import jax
import numpy as np

from npc_jax.data import Pool
from npc_jax.inference import numpy_rng
from npc_jax.strategies.base import Acquisition, AcquisitionContext, check_query
from npc_jax.strategies.cells import concat_ranges
from npc_jax.strategies.coreset import min_sq_distances
from npc_jax.strategies.embedding import pool_embedding
from npc_jax.strategies.kmeans import kmeans
from npc_jax.strategies.neighbours import BallGraph, ball_graph, nearest_other_label_distance

__all__ = [
    "DEFAULT_DELTAS",
    "DEFAULT_MAX_EDGES",
    "DEFAULT_PURITY_SAMPLE",
    "ProbCover",
    "greedy_coverage",
    "normalize_rows",
    "purity_delta",
    "uniform_tie_break",
]

# δ grid for unit-norm embeddings (distances in [0, 2]); finer than
# scikit-activeml's 0.2 steps (the paper's δ are e.g. 0.75 on CIFAR-10).
DEFAULT_DELTAS = tuple(np.round(np.arange(0.05, 2.0 + 1e-9, 0.05), 2).tolist())
DEFAULT_MAX_EDGES = 100_000_000
DEFAULT_PURITY_SAMPLE = 50_000


def normalize_rows(z: np.ndarray) -> np.ndarray:
    """(N, d) rows scaled to unit L2 norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return (z / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32)


def purity_delta(z: np.ndarray, clusters: np.ndarray, deltas, alpha: float,
                 query: np.ndarray | None = None) -> tuple[float, float, bool]:
    """The largest δ in `deltas` whose purity is >= alpha (else the smallest).

    Args:
      z: (N, d) float32 embedding.
      clusters: (N,) int cluster ids.
      deltas: candidate radii (sorted here).
      alpha: purity threshold in (0, 1).
      query: optional row indices: purity estimated on those rows (each
        against all N) instead of all N.

    Returns:
      (δ, its purity, whether any δ reached alpha).
    """
    deltas = np.sort(np.asarray(deltas, np.float64))
    other = nearest_other_label_distance(z, clusters, query)
    purities = [(other > d).mean() for d in deltas]
    good = [i for i, p in enumerate(purities) if p >= alpha]
    # Purity never increases with δ, so the good δ are a prefix of the grid.
    best = good[-1] if good else 0
    return float(deltas[best]), float(purities[best]), bool(good)


def _gather(graph: BallGraph, rows: np.ndarray) -> np.ndarray:
    """The concatenated neighbour lists of `rows` (int64)."""
    return graph.indices[concat_ranges(graph.indptr[rows], graph.indptr[rows + 1])
                         ].astype(np.int64)


def _cover(graph: BallGraph, rows, uncovered: np.ndarray, gains: np.ndarray) -> int:
    """Marks the balls of `rows` covered and lowers `gains` (in place). Returns how many."""
    reached = _gather(graph, np.atleast_1d(np.asarray(rows, np.int64)))
    newly = np.unique(reached[uncovered[reached]])
    uncovered[newly] = False
    # Each newly covered y leaves the ball of every x with y ∈ ball(x) (symmetric graph).
    gains -= np.bincount(_gather(graph, newly), minlength=len(gains))
    return len(newly)


def uniform_tie_break(rng: np.random.Generator) -> Callable[[np.ndarray], int]:
    """A chooser: uniform among the maxima of gains (NaN where not a candidate)."""
    def choose(gains: np.ndarray) -> int:
        return int(rng.choice(np.flatnonzero(gains == np.nanmax(gains))))
    return choose


def greedy_coverage(graph: BallGraph, labeled_mask: np.ndarray, q: int,
                    tie_break: Callable[[np.ndarray], int],
                    rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Greedy max coverage on the δ-ball graph, the labeled balls covered first.

    Args:
      graph: symmetric CSR δ-ball graph over the N pool points.
      labeled_mask: (N,) bool.
      q: picks, <= the unlabeled points.
      tie_break: gains (N,) float, NaN at non-candidates -> the chosen index.
      rng: draws the random fill once everything is covered.

    Returns:
      (q,) int64 picks, and coverage before / after, the gain of each pick
      and `random_fill` (picks made after the pool was covered).
    """
    n = len(labeled_mask)
    uncovered = np.ones(n, bool)
    gains = np.diff(graph.indptr).astype(np.int64)
    _cover(graph, np.flatnonzero(labeled_mask), uncovered, gains)
    candidate = ~np.asarray(labeled_mask, bool)
    before = 1.0 - uncovered.mean()
    picks, pick_gains = [], []
    while len(picks) < q:
        scores = np.where(candidate, gains, np.nan)
        if np.nanmax(scores) <= 0:
            break
        pick = tie_break(scores)
        pick_gains.append(int(gains[pick]))
        _cover(graph, pick, uncovered, gains)
        candidate[pick] = False
        picks.append(pick)
    fill = q - len(picks)
    if fill:
        picks += rng.choice(np.flatnonzero(candidate), fill, replace=False).tolist()
    return np.asarray(picks, np.int64), {
        "coverage_before": float(before), "coverage_after": float(1.0 - uncovered.mean()),
        "gains": pick_gains, "random_fill": fill}


def _single_ball_centre(z: np.ndarray, delta: float) -> int | None:
    """A point whose δ-ball holds the whole pool, found in O(N d), or None.

    Tries the point nearest the mean: if any ball covers the pool, a δ that
    large is degenerate, and building its N² edges would be waste.
    """
    centre = int(np.argmin(((z - z.mean(0)) ** 2).sum(1)))
    radius = np.sqrt(((z - z[centre]) ** 2).sum(1).max())
    return centre if radius <= delta else None


def _covers_everything(z: np.ndarray, centre: int, labeled_mask: np.ndarray, q: int,
                       delta: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Picks when the ball of `centre` covers the pool: the centre (if the
    labeled balls leave a point uncovered, so it gains), then uniform."""
    if labeled_mask.any():
        covered = min_sq_distances(z, z[labeled_mask]) <= delta ** 2
    else:
        covered = np.zeros(len(z), bool)
    candidate = ~labeled_mask
    first = [] if covered.all() else [centre]
    candidate[first] = False
    picks = first + rng.choice(np.flatnonzero(candidate), q - len(first), replace=False).tolist()
    return np.asarray(picks, np.int64), {
        "coverage_before": float(covered.mean()), "coverage_after": 1.0,
        "gains": [int((~covered).sum())] * len(first), "random_fill": q - len(first)}


class ProbCover:
    """ProbCover on a pool embedding (see the module docstring).

    Args:
      embedding: "auto", "pretrained" or "features" (`pool_embedding`); recorded.
      embed_fn: optional callable images (n, H, W, C) -> (n, d) (Python
        only); overrides `embedding`.
      delta: the ball radius; None chooses it by the purity rule.
      alpha: purity threshold of the rule (0.95 in the paper).
      deltas: the rule's δ grid (default `DEFAULT_DELTAS`, for unit-norm z).
      num_clusters: C of the rule's k-means; None: the number of classes.
      normalize: scale the embedding's rows to unit norm first (the paper).
      max_edges: bound on the δ-ball graph (4 bytes per edge).
      kmeans_iter: most Lloyd iterations.
      purity_sample: pools larger than this estimate the purity rule on this
        many random points (None: always every point).
    """

    name = "probcover"

    def __init__(self, embedding: str = "auto", embed_fn: Callable | None = None,
                 delta: float | None = None, alpha: float = 0.95, deltas=None,
                 num_clusters: int | None = None, normalize: bool = True,
                 max_edges: int = DEFAULT_MAX_EDGES, kmeans_iter: int = 300,
                 purity_sample: int | None = DEFAULT_PURITY_SAMPLE):
        if delta is not None and not (np.isfinite(delta) and delta >= 0):
            raise ValueError(f"probcover: delta must be a finite float >= 0, got {delta!r}.")
        if not 0 < alpha < 1:
            raise ValueError(f"probcover: alpha must lie in (0, 1), got {alpha!r}.")
        deltas = DEFAULT_DELTAS if deltas is None else tuple(float(d) for d in deltas)
        if not deltas or min(deltas) < 0:
            raise ValueError(f"probcover: deltas must be non-empty and >= 0, got {deltas!r}.")
        self.embedding, self.embed_fn, self.delta = embedding, embed_fn, delta
        self.alpha, self.deltas, self.num_clusters = float(alpha), deltas, num_clusters
        self.normalize, self.max_edges, self.kmeans_iter = bool(normalize), int(max_edges), kmeans_iter
        if purity_sample is not None and (isinstance(purity_sample, bool)
                                          or not isinstance(purity_sample, (int, np.integer))
                                          or purity_sample < 1):
            raise ValueError(f"probcover: purity_sample must be an int >= 1 or None, got "
                             f"{purity_sample!r}.")
        self.purity_sample = None if purity_sample is None else int(purity_sample)

    def choose_delta(self, key: jax.Array, z: np.ndarray, num_classes: int) -> tuple[float, dict]:
        """δ and how it was chosen (given, or the purity rule on k-means clusters)."""
        if self.delta is not None:
            return float(self.delta), {"delta_rule": "given"}
        num_clusters = int(self.num_clusters or num_classes)
        clusters = kmeans(key, z, num_clusters, max_iter=self.kmeans_iter).labels
        query = None
        if self.purity_sample is not None and len(z) > self.purity_sample:
            rng = numpy_rng(jax.random.fold_in(key, 1))
            query = np.sort(rng.choice(len(z), self.purity_sample, replace=False))
        delta, purity, reached = purity_delta(z, clusters, self.deltas, self.alpha, query)
        if not reached:
            warnings.warn(f"probcover: no δ in the grid reaches purity alpha={self.alpha} "
                          f"(best {purity:.3f} at the smallest δ={delta:g}); using it. Pass "
                          "smaller `deltas` or a `delta`.", stacklevel=3)
        return delta, {"delta_rule": "purity", "alpha": self.alpha, "purity": purity,
                       "purity_reached": reached, "num_clusters": num_clusters,
                       "purity_points": len(z) if query is None else len(query)}

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition:
        check_query(pool, q)
        z = pool_embedding(ctx, self.embedding, self.embed_fn)
        z = normalize_rows(z) if self.normalize else z
        kmeans_key, tie_key = jax.random.split(key)
        rng = numpy_rng(tie_key)
        # The classes count only matters for the purity rule's default C.
        needs_classes = self.delta is None and not self.num_clusters
        num_classes = ctx.num_classes if needs_classes else self.num_clusters
        delta, rule = self.choose_delta(kmeans_key, z, num_classes)
        labeled = np.array(pool.labeled_mask)
        centre = _single_ball_centre(z, delta)
        if centre is not None:
            picks, info = _covers_everything(z, centre, labeled, q, delta, rng)
            degenerate, info["num_edges"] = "covers_everything", None
        else:
            graph = ball_graph(z, delta, max_edges=self.max_edges)
            picks, info = greedy_coverage(graph, labeled, q, uniform_tie_break(rng), rng)
            info["num_edges"] = len(graph.indices)
            degenerate = ("covers_nothing" if info["num_edges"] == len(z) else
                          "covers_everything" if info["random_fill"] else None)
        if degenerate:
            warnings.warn(f"probcover: delta={delta:g} is degenerate ({degenerate.replace('_', ' ')}"
                          f"); {info['random_fill'] if degenerate == 'covers_everything' else q} "
                          f"of the {q} picks are uniformly random. Choose another delta.",
                          stacklevel=2)
        objective = {"embedding": "embed_fn" if self.embed_fn else self.embedding,
                     "delta": delta, **rule, "normalize": self.normalize,
                     "degenerate": degenerate, **info}
        return Acquisition(picks, objective)
