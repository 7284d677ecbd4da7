"""Exact δ-ball graphs of large pools, pruned by cells (one device).

`neighbours.ball_graph`'s row blocks compare every pair: N² d work, and at
N = 1M its (rows, N) blocks are 16 rows wide, so each block re-reads the whole
pool (memory-bound; ≈ 8 h on 2 cores, BENCHMARKS P7). Here:

1. Cells: the (centred) pool is split into K = ⌈N / cell_size⌉ cells, each
   point in the cell of its nearest centre (K random pool points; Lloyd steps
   are optional: on 200k points one step cut the pairs computed from 23.5 to
   22.6 % of N² for twice the partition's time). Cell b has centre c_b and
   radius r_b (its farthest member).
2. Pruning: by the triangle inequality a point x has no δ-neighbour in cell b
   when ‖x − c_b‖ − r_b > δ; a margin covers float32 rounding, so no pair
   within δ is ever skipped.
3. Order: cells sorted along a principal-axis tree of their centres (each
   node split at the median of its centres' projection on their top principal
   axis), points sorted by cell, so that a tile of consecutive points is
   compact and reaches few cells.
4. Tiles: each (rows_tile,) block of sorted points is compared, in fixed
   (rows_tile, cols_tile) tiles gathered on the device (one executable for
   every tile), with the points of the cells any of its rows can reach.

The result is the row-block path's graph (the same squared-distance formula
on the same centred float32 rows and norms, self loops exactly 0; neighbour
lists ascending in the original order), symmetric, up to pairs whose distance
lies within float32 rounding of δ (e.g. distinct duplicates at δ = 0), which
either path may keep or drop as its products' shapes round. The work is the reachable pairs
only: on the synthetic 128-d embedding of BENCHMARKS P7 at δ = 0.2, 23.5 % of
N² at 200k points (a 1M pool: its graph 490 s instead of ≈ 4 h). Memory: the pool once on the device, (K, d) centres,
one tile, and the edges (4 bytes each, twice while the lists are put in the
original order).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Cells", "ball_graph_cells", "concat_ranges", "make_cells", "tree_order"]

# Rows per assignment / reach call: (8192, K) float32 distances at a time.
ASSIGN_ROWS = 8192
# Full float32 products: a GPU's default TF32 dots would round distances by ≈ 2⁻¹¹ of
# the squared norms, beyond the pruning margin (the CPU's default is this already).
HIGHEST = jax.lax.Precision.HIGHEST


class Cells(NamedTuple):
    """A partition of N points into K cells, points sorted by cell.

    order: (N,) int64, point ids sorted by cell (cells in tree order).
    starts: (K + 1,) int64, cell b holds ``order[starts[b]:starts[b + 1]]``.
    centres: (K, d) float32.
    radii: (K,) float32, the largest member distance to the centre.
    """

    order: np.ndarray
    starts: np.ndarray
    centres: np.ndarray
    radii: np.ndarray


def _pad_rows(x: np.ndarray, multiple: int, fill: float = 0.0) -> np.ndarray:
    n = len(x)
    out = np.full((-(-max(n, 1) // multiple) * multiple,) + x.shape[1:], fill, x.dtype)
    out[:n] = x
    return out


@jax.jit
def _nearest(rows, centres, half_centres_sq):
    """(r,) index and Euclidean distance of each row's nearest centre: the argmin of
    ‖c‖²/2 − x·c (one pass over the (r, K) block; padded centres carry +inf)."""
    score = half_centres_sq[None, :] - jnp.dot(rows, centres.T, precision=HIGHEST)
    best = jnp.argmin(score, 1)
    low = jnp.take_along_axis(score, best[:, None], 1)[:, 0]
    return best, jnp.sqrt(jnp.maximum(jnp.sum(rows ** 2, 1) + 2.0 * low, 0.0))


def _assign(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) nearest-centre ids and distances, in (ASSIGN_ROWS, K) blocks."""
    k_pad = 1 << max(len(centres) - 1, 0).bit_length()
    padded = _pad_rows(centres, k_pad)
    half_sq = 0.5 * np.einsum("ij,ij->i", padded, padded)
    half_sq[len(centres):] = np.inf
    padded, half_sq = jnp.asarray(padded), jnp.asarray(half_sq)
    ids, dists = np.empty(len(x), np.int64), np.empty(len(x), np.float32)
    for start in range(0, len(x), ASSIGN_ROWS):
        stop = min(start + ASSIGN_ROWS, len(x))
        got_ids, got_dists = _nearest(_pad_rows(x[start:stop], ASSIGN_ROWS), padded, half_sq)
        ids[start:stop] = np.asarray(got_ids)[:stop - start]
        dists[start:stop] = np.asarray(got_dists)[:stop - start]
    return ids, dists


def _top_axis(points: np.ndarray, iterations: int = 12) -> np.ndarray:
    """(d,) the top principal axis of centred points (n, d), by power iteration
    from the longest point (O(n d) per step, where an eigh of every node's d×d
    covariance took seconds at K ≈ 8000)."""
    axis = points[np.argmax(np.einsum("ij,ij->i", points, points))]
    for _ in range(iterations):
        axis = points.T @ (points @ axis)
        axis /= max(np.linalg.norm(axis), np.finfo(np.float64).tiny)
    return axis


def tree_order(centres: np.ndarray) -> np.ndarray:
    """(K,) a permutation of the centres along a principal-axis tree.

    Each node's centres are split at the median of their projection on the
    node's top principal axis (lower half first), recursively, so that
    consecutive centres in the result are near each other.
    """
    out: list[np.ndarray] = []
    stack = [np.arange(len(centres))]
    while stack:
        ids = stack.pop()
        if len(ids) <= 2:
            out.append(ids)
            continue
        points = centres[ids].astype(np.float64)
        points -= points.mean(0)
        ranked = ids[np.argsort(points @ _top_axis(points), kind="stable")]
        half = len(ranked) // 2
        stack += [ranked[half:], ranked[:half]]   # the lower half is popped first
    return np.concatenate(out)


def make_cells(x: np.ndarray, cell_size: int, seed: int = 0, lloyd_steps: int = 0) -> Cells:
    """Cells of ≈ `cell_size` points of x (N, d) float32 (see the module docstring).

    The partition only decides which pairs are computed, never the graph, so
    its random centres are drawn from a fixed seed.
    """
    n = len(x)
    rng = np.random.default_rng(seed)
    centres = x[np.sort(rng.choice(n, max(1, -(-n // cell_size)), replace=False))]
    ids, dists = _assign(x, centres)
    for _ in range(lloyd_steps):
        counts = np.bincount(ids, minlength=len(centres))
        sums = np.asarray(jax.ops.segment_sum(jnp.asarray(x), jnp.asarray(ids), len(centres)))
        centres = (sums[counts > 0] / counts[counts > 0, None]).astype(np.float32)
        ids, dists = _assign(x, centres)
    counts = np.bincount(ids, minlength=len(centres))
    keep = counts > 0
    centres, remap = centres[keep], np.cumsum(keep) - 1
    ids, counts = remap[ids], counts[keep]
    radii = np.zeros(len(centres), np.float32)
    np.maximum.at(radii, ids, dists)
    rank = np.empty(len(centres), np.int64)
    rank[tree_order(centres)] = np.arange(len(centres))
    cell_order = np.argsort(rank)
    order = np.argsort(rank[ids], kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts[cell_order])]).astype(np.int64)
    return Cells(order, starts, centres[cell_order], radii[cell_order])


@jax.jit
def _reach(rows, valid, centres, centres_sq, radii, reach):
    """(K,) bool: cells within `reach` of some valid row: ‖x − c‖ − r <= reach, compared
    squared (‖x − c‖² <= (r + reach)², no root over the (r, K) block)."""
    sq = (jnp.sum(rows ** 2, 1)[:, None] + centres_sq[None, :]
          - 2.0 * jnp.dot(rows, centres.T, precision=HIGHEST))
    near = sq <= ((radii + reach) ** 2)[None, :]
    return jnp.any(near & valid[:, None], 0)


_BIT_WEIGHTS = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))


@jax.jit
def _ball_tile(rows, rows_sq, row_ids, points, points_sq, col_ids, sq_delta):
    """(r, c / 32) uint32: bit j of word w of row i says
    ‖row_i − points[col_ids[32 w + j]]‖² <= δ² (the expanded form clipped at 0, exactly 0
    from a point to itself; ids in the sorted order; row ids < 0 and col ids >= N are
    padding). Packed because the host then reads 1/8 of a bool mask: np.nonzero over
    the sparse bool masks was a third of the time."""
    cols, cols_sq = points[col_ids], points_sq[col_ids]
    sq = jnp.maximum(rows_sq[:, None] + cols_sq[None, :]
                     - 2.0 * jnp.dot(rows, cols.T, precision=HIGHEST), 0.0)
    sq = jnp.where(row_ids[:, None] == col_ids[None, :], 0.0, sq)
    inside = ((sq <= sq_delta) & (col_ids < points.shape[0])[None, :]
              & (row_ids >= 0)[:, None])
    words = inside.reshape(rows.shape[0], -1, 32).astype(jnp.uint32) * _BIT_WEIGHTS
    return jnp.sum(words, 2, dtype=jnp.uint32)


def _set_bits(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the set bits of (r, w) uint32 words (bit j of word k: column
    32 k + j), in row-major order."""
    r, k = np.nonzero(words)
    bits = np.unpackbits(words[r, k].astype("<u4").view(np.uint8).reshape(-1, 4),
                         axis=1, bitorder="little")
    which, bit = np.nonzero(bits)
    return r[which], 32 * k[which] + bit


def concat_ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """The concatenation of arange(starts[i], stops[i]) (int64), without a Python loop:
    a cell's points in the sorted order, a row's slots in a CSR array."""
    lengths = stops - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros((0,), np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return offsets + np.arange(total)


def ball_graph_cells(x: np.ndarray, delta: float, *, max_edges: int, cell_size: int = 128,
                     rows_tile: int = 512, cols_tile: int = 1024):
    """The δ-ball graph of the rows of `x` (N, d) float32, centred, by cells.

    Returns:
      (indptr (N + 1,) int64, indices (E,) int32): CSR neighbour lists in the
      original order, ascending, self loops included.

    Raises:
      ValueError: more than `max_edges` edges (checked after every tile, so at
        most one tile's edges are held beyond the bound); delta < 0; a
        cols_tile that is not a multiple of 32.
    """
    n, _ = x.shape
    if not 0 <= delta:
        raise ValueError(f"ball_graph_cells: delta must be >= 0, got {delta!r}.")
    if cols_tile % 32:
        raise ValueError(f"ball_graph_cells: cols_tile must be a multiple of 32 (the masks "
                         f"are packed in 32-bit words), got {cols_tile}.")
    cells = make_cells(x, cell_size)
    points = x[cells.order]
    points_dev = jnp.asarray(points)
    # One squared norm per point, used as a row and as a column alike: two computations
    # (host and device) differ by an ulp, and a pair in that gap was kept one way only.
    points_sq_dev = jnp.sum(points_dev ** 2, 1)
    points_sq = np.asarray(points_sq_dev)
    centres = jnp.asarray(cells.centres)
    centres_sq = jnp.sum(centres ** 2, 1)
    radii = jnp.asarray(cells.radii)
    # The expanded distances' float32 rounding, ≈ 1e-6 × scale² on a square, is at most
    # 1e-3 × scale after the root, on ‖x − c‖ and on each radius: a margin several
    # times larger never prunes a pair within δ.
    scale = float(np.sqrt(points_sq.max())) + 1.0
    reach = np.float32(float(delta) + 5e-3 * scale)
    sq_delta = np.float32(float(delta) ** 2)
    counts = np.zeros(n, np.int64)       # degrees, in the sorted order
    lists, total = [], 0
    for start in range(0, n, rows_tile):
        stop = min(start + rows_tile, n)
        rows = jnp.asarray(_pad_rows(points[start:stop], rows_tile))
        rows_sq = jnp.asarray(_pad_rows(points_sq[start:stop], rows_tile))
        valid = np.arange(rows_tile) < stop - start
        reached = np.asarray(_reach(rows, valid, centres, centres_sq, radii, reach))
        cols = _pad_rows(concat_ranges(cells.starts[:-1][reached], cells.starts[1:][reached]),
                         cols_tile, fill=n)
        row_ids = jnp.asarray(np.where(valid, np.arange(start, start + rows_tile), -1))
        tile_rows, tile_cols = [], []
        for c in range(0, len(cols), cols_tile):
            col_ids = cols[c:c + cols_tile]
            r, k = _set_bits(np.asarray(_ball_tile(rows, rows_sq, row_ids, points_dev,
                                                   points_sq_dev, col_ids, sq_delta)))
            total += len(r)
            if total > max_edges:   # checked per tile: at most one tile's edges over
                raise ValueError(f"The δ-ball graph at delta={delta:g} has more than "
                                 f"{max_edges} edges (already {total} before row {stop} of "
                                 f"{n}); lower delta or raise max_edges (4 bytes per edge).")
            tile_rows.append(r)
            tile_cols.append(col_ids[k])
        r = np.concatenate(tile_rows)
        original_cols = cells.order[np.concatenate(tile_cols)]
        counts[start:stop] = np.bincount(r, minlength=stop - start)
        lists.append(original_cols[np.lexsort((original_cols, r))].astype(np.int32))
    # Degrees and lists are in the sorted order; CSR wants the original one.
    degrees = np.empty(n, np.int64)
    degrees[cells.order] = counts
    indptr = np.concatenate([[0], np.cumsum(degrees)]).astype(np.int64)
    indices = np.empty(int(indptr[-1]), np.int32)
    for start in range(0, n, rows_tile):
        part = lists[start // rows_tile]
        lists[start // rows_tile] = None
        stop = min(start + rows_tile, n)
        owners = cells.order[start:stop]
        indices[concat_ranges(indptr[owners], indptr[owners] + counts[start:stop])] = part
    return indptr, indices
