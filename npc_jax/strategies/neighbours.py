"""Exact neighbourhoods over an embedding, in row blocks or tiles: never N×N in memory.

- `knn_mean_distance(x, k)`: (n,) mean Euclidean distance of each row to its
  k nearest other rows (TypiClust's typicality is its inverse). On one device
  XLA computes fixed-shape (512, 1024) squared-distance tiles (one executable
  for every cluster size) and numpy's `partition` picks each row's k + 1
  smallest: on 60k × 128, TypiClust's 20 clusters of ≈ 2000 points took 0.35-0.4 s
  instead of 0.86-1.0 s (XLA:CPU's top_k, 3× the distance block's time, and a
  compilation per 1024-row size bucket). `_knn_mean` (top_k per block) is the
  reference and the multi-device path.
- `nearest_other_label_distance(x, labels, query)`: distance of each row (or
  of the `query` rows) to the nearest row with a different label (ProbCover's
  purity for every δ at once); on one device in fixed (512, 8192) tiles.
- `ball_counts(x, delta)`: (N,) number of rows within δ of each row.
- `ball_graph(x, delta, max_edges)`: the δ-ball graph as CSR neighbour lists
  (`BallGraph`), self loops included; on one device from CELLS_FROM rows by
  `cells.ball_graph_cells` (only the pairs a cell partition cannot rule out).

The row-block paths process `block_rows` rows against all n at a time, so the
working memory is one (block_rows, n) block (≈ 64 MB of float32 by default) plus the
output; the time is O(n² d), as exact neighbourhoods need. Squared distances
use the expanded form ‖x‖² + ‖y‖² − 2 x·y in float32 on mean-centred rows,
clipped at 0 (rounding ≈ 1e-7 of ‖x‖² + ‖y‖²; a row's distance to itself is
set to 0).

Devices: with D > 1 local devices the row blocks are spread over them
(`pool_mesh`): the points replicated on every device, each device computes
its blocks (D blocks per call; blocks shrunk so that each device gets one when
there are fewer rows), the outputs gathered in row order. One device keeps
the single-device loop. The results equal one device's up to the float32
rounding of the differently sized blocks' matmuls (tested on 8 fake CPU
devices: the same picks, tests/test_multidevice.py).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from npc_jax.strategies import pool_mesh
from npc_jax.strategies.cells import ball_graph_cells

__all__ = [
    "BallGraph",
    "ball_counts",
    "ball_graph",
    "block_rows_for",
    "knn_mean_distance",
    "nearest_other_label_distance",
]

# Floats per (rows, n) distance block: 16M (64 MB).
BLOCK_FLOATS = 1 << 24
# Pools from this size build their δ-ball graph by cells on one device.
CELLS_FROM = 32_768


def block_rows_for(n: int) -> int:
    """Rows per (rows, n) block: a power of two with rows × n ≈ BLOCK_FLOATS."""
    rows = max(16, min(8192, BLOCK_FLOATS // max(n, 1)))
    return 1 << (rows.bit_length() - 1)


def _bucket(n: int) -> int:
    # Pads the column count to a multiple of 1024 (≥ 2 rows of slack) so that
    # clusters of similar sizes share one compilation.
    return -(-n // 1024) * 1024


def _sq_block(block, block_start, x, x_sq):
    """(rows, n) squared distances of a row block to all rows; exactly 0 to itself."""
    rows = block.shape[0]
    dist = jnp.maximum(jnp.sum(block ** 2, 1)[:, None] + x_sq[None, :] - 2.0 * (block @ x.T), 0.0)
    self_col = block_start + jnp.arange(rows)
    return jnp.where(jnp.arange(x.shape[0])[None, :] == self_col[:, None], 0.0, dist)


def _knn_block(x, x_sq, invalid, start, k, rows):
    """(rows,) Σ of the k+1 smallest distances / k of the row block at `start`."""
    block = jax.lax.dynamic_slice_in_dim(x, start, rows)
    dist = jnp.where(invalid[None, :], jnp.inf, _sq_block(block, start, x, x_sq))
    smallest = -jax.lax.top_k(-dist, k + 1)[0]
    return jnp.sum(jnp.sqrt(smallest), 1) / k


@functools.partial(jax.jit, static_argnames=("k", "rows"))
def _knn_mean(x, n_valid, k, rows):
    """(n_pad,) Σ of the k+1 smallest distances (self included) / k, by row blocks
    (rows must divide n_pad)."""
    n_pad = x.shape[0]
    x_sq = jnp.sum(x ** 2, 1)
    invalid = jnp.arange(n_pad) >= n_valid
    starts = jnp.arange(0, n_pad, rows)
    return jax.lax.map(lambda start: _knn_block(x, x_sq, invalid, start, k, rows),
                       starts).reshape(-1)


@functools.partial(jax.jit, static_argnames=("k", "rows", "mesh"))
def _knn_mean_sharded(x, n_valid, starts, k, rows, mesh):
    """`_knn_mean` with the block `starts` (a multiple of D of them) split over `mesh`."""
    x_sq = jnp.sum(x ** 2, 1)
    invalid = jnp.arange(x.shape[0]) >= n_valid
    replicated, spec = PartitionSpec(), pool_mesh.rows_spec(mesh)

    def local(x, x_sq, invalid, starts):
        return jax.lax.map(lambda start: _knn_block(x, x_sq, invalid, start, k, rows), starts)

    return pool_mesh.shard_map(local, mesh, (replicated,) * 3 + (spec,), spec)(
        x, x_sq, invalid, starts).reshape(-1)


def _device_rows(rows: int, n: int, mesh) -> int:
    """Rows per block with D devices: at most a power of two ≥ ceil(n / D) (≥ 16), so that
    a small set still gives every device a block."""
    if mesh is None:
        return rows
    return min(rows, max(16, 1 << max(-(-n // mesh.devices.size) - 1, 0).bit_length()))


def _grouped_starts(starts, mesh) -> np.ndarray:
    """Block starts padded (with the last one) to a multiple of the device count."""
    starts = np.asarray(list(starts), np.int32)
    return pool_mesh.pad_to(starts, pool_mesh.padded_length(len(starts), mesh), starts[-1])


# The single-device path's distance tile: (rows, cols) float32 (2 MB, cache-sized),
# one executable for every cluster size up to 16384 points; larger sets (1M pools)
# use 8192 columns (fewer dispatches) and at most BLOCK_FLOATS per row block.
KNN_TILE_ROWS, KNN_TILE_COLS, KNN_WIDE_COLS, KNN_WIDE_FROM = 512, 1024, 8192, 16385


@jax.jit
def _sq_tile(rows, rows_sq, cols, cols_sq):
    """(r, c) squared distances ‖a‖² + ‖b‖² − 2 a·b, clipped at 0, of a row and a column tile."""
    return jnp.maximum(rows_sq[:, None] + cols_sq[None, :] - 2.0 * (rows @ cols.T), 0.0)


def _knn_mean_partition(x: np.ndarray, k: int) -> np.ndarray:
    """`_knn_mean`'s result for the rows of x (n, d) float32, one device: XLA computes the
    squared distances tile by tile (`_sq_tile`: one executable of fixed shape, so no
    compilation per cluster size), numpy selects each row's k + 1 smallest (itself, set
    to 0, included) by `np.partition` (O(n) per row: XLA:CPU's top_k took 3× the distance
    block's time), sorts them and sums their roots in ascending order, as `_knn_mean`
    (float32)."""
    n, d = x.shape
    cols_tile = KNN_TILE_COLS if n < KNN_WIDE_FROM else KNN_WIDE_COLS
    n_pad = -(-n // cols_tile) * cols_tile
    rows_tile = min(KNN_TILE_ROWS, block_rows_for(n_pad))
    padded = np.zeros((n_pad, d), np.float32)
    padded[:n] = x
    sq = np.einsum("ij,ij->i", padded, padded)
    # Tiles cut on the host (a jnp slice would compile per offset), the columns put on
    # the device once.
    tiles = [(jnp.asarray(padded[c:c + cols_tile]), jnp.asarray(sq[c:c + cols_tile]))
             for c in range(0, n_pad, cols_tile)]
    out = np.empty(n, np.float32)
    dist = np.empty((rows_tile, n_pad), np.float32)
    for start in range(0, n, rows_tile):
        rows, rows_sq = padded[start:start + rows_tile], sq[start:start + rows_tile]
        for c, (cols, cols_sq) in zip(range(0, n_pad, cols_tile), tiles):
            dist[:, c:c + cols_tile] = np.asarray(_sq_tile(rows, rows_sq, cols, cols_sq))
        m = min(rows_tile, n - start)
        block = dist[:m, :n]
        block[np.arange(m), start + np.arange(m)] = 0.0   # exactly 0 to itself
        smallest = np.partition(block, k, axis=1)[:, :k + 1]
        smallest.sort(axis=1)
        out[start:start + m] = np.sqrt(smallest).sum(1, dtype=np.float32) / np.float32(k)
    return out


def knn_mean_distance(x, k: int) -> np.ndarray:
    """(n,) mean Euclidean distance of each row of `x` to its k nearest other rows.

    As scikit-activeml's `_typicality`: the k + 1 nearest rows (the row itself
    at distance 0 included) summed and divided by k, so a duplicate of a row
    counts as a neighbour at distance 0.

    Args:
      x: (n, d) float32, n >= k + 1.
      k: neighbours, >= 1.
    """
    x = _centred(x)
    n = len(x)
    if not 1 <= k <= n - 1:
        raise ValueError(f"k={k} nearest neighbours need 1 <= k <= n - 1 = {n - 1}; lower k "
                         "(the strategy's typicality_k) or use a larger pool.")
    n_pad = _bucket(n)
    mesh = pool_mesh.mesh()
    rows = _device_rows(min(block_rows_for(n_pad), n_pad), n_pad, mesh)
    # Whole blocks only: a last block past n_pad would be clamped by dynamic_slice
    # to other rows (it was, for clusters of 4097-5120 and 6145-7168 points).
    n_pad = -(-n_pad // rows) * rows
    if mesh is None:
        return _knn_mean_partition(x, int(k))
    padded = np.zeros((n_pad, x.shape[1]), np.float32)
    padded[:n] = x
    starts = _grouped_starts(range(0, n_pad, rows), mesh)
    return np.asarray(_knn_mean_sharded(_replicated(padded, mesh), n, starts, int(k), rows,
                                        mesh))[:n]


def _replicated(x: np.ndarray, mesh):
    """`x` copied once to every device of `mesh`."""
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))


def _centred(x) -> np.ndarray:
    """x − mean(x) in float32: distances unchanged, the expanded form's rounding
    (relative to ‖x‖² + ‖y‖²) much smaller for data far from the origin."""
    x = np.asarray(x, np.float32)
    return (x - x.mean(0, dtype=np.float64)).astype(np.float32)


def _row_blocks(x: np.ndarray, mesh=None):
    """(padded centred x on device(s), its squared norms, rows per block, block starts)."""
    x = _centred(x)
    n = len(x)
    rows = _device_rows(min(block_rows_for(n), 1 << max(n - 1, 0).bit_length()), n, mesh)
    padded = np.zeros((-(-n // rows) * rows, x.shape[1]), np.float32)
    padded[:n] = x
    device = jnp.asarray(padded) if mesh is None else _replicated(padded, mesh)
    return device, jnp.sum(device ** 2, 1), rows, range(0, n, rows)


def _other_label_rows(x, x_sq, labels, start, rows, n):
    """(rows,) distance of each row of the block at `start` to the nearest other label."""
    block = jax.lax.dynamic_slice_in_dim(x, start, rows)
    block_labels = jax.lax.dynamic_slice_in_dim(labels, start, rows)
    dist = _sq_block(block, start, x, x_sq)[:, :n]
    other = block_labels[:, None] != labels[None, :n]
    return jnp.sqrt(jnp.min(jnp.where(other, dist, jnp.inf), 1))


def _ball_rows(x, x_sq, sq_delta, start, rows, n):
    """(rows, n) bool: row block's δ-ball membership (distance <= δ)."""
    block = jax.lax.dynamic_slice_in_dim(x, start, rows)
    return _sq_block(block, start, x, x_sq)[:, :n] <= sq_delta


def _ball_count_rows(x, x_sq, sq_delta, start, rows, n):
    return jnp.sum(_ball_rows(x, x_sq, sq_delta, start, rows, n), 1)


@functools.partial(jax.jit, static_argnames=("body", "rows", "n", "mesh"))
def _device_blocks(body, x, x_sq, extra, starts, rows, n, mesh):
    """``body(x, x_sq, extra, start, rows, n)`` of D block starts, one per device of `mesh`
    (x, x_sq, extra replicated): the outputs stacked (D, ...)."""
    replicated, spec = PartitionSpec(), pool_mesh.rows_spec(mesh)

    def local(x, x_sq, extra, starts):
        return jax.lax.map(lambda start: body(x, x_sq, extra, start, rows, n), starts)

    return pool_mesh.shard_map(local, mesh, (replicated,) * 3 + (spec,), spec)(
        x, x_sq, extra, starts)


def _blocks(body, single, x, x_sq, extra, rows, n, starts, mesh):
    """(start, numpy output) of every row block in order: `single(x, x_sq, extra, start)`
    block by block on one device, `body` on D blocks at a time with a mesh."""
    if mesh is None:
        for start in starts:
            yield start, np.asarray(single(x, x_sq, extra, start))
        return
    starts = list(starts)
    grouped = _grouped_starts(starts, mesh)
    size = mesh.devices.size
    for g in range(0, len(grouped), size):
        out = np.asarray(_device_blocks(body, x, x_sq, extra, grouped[g:g + size], rows, n,
                                        mesh))
        for start, part in zip(starts[g:g + size], out):
            yield start, part


@jax.jit
def _other_label_tile(rows, rows_sq, row_labels, cols, cols_sq, col_labels):
    """(r,) smallest squared distance of each row to a column of another label (padded
    columns carry +inf squared norms, so they are never the nearest)."""
    sq = jnp.maximum(rows_sq[:, None] + cols_sq[None, :] - 2.0 * (rows @ cols.T), 0.0)
    other = row_labels[:, None] != col_labels[None, :]
    return jnp.min(jnp.where(other, sq, jnp.inf), 1)


def _other_label_tiles(x: np.ndarray, labels: np.ndarray, query: np.ndarray) -> np.ndarray:
    """`nearest_other_label_distance` of the rows `query` on one device, in fixed
    (KNN_TILE_ROWS, KNN_WIDE_COLS) tiles: every query row against every column tile
    (compute-bound: a (16, 1M) row block re-read the pool per 16 rows)."""
    n, d = x.shape
    cols_tile = KNN_WIDE_COLS if n >= KNN_WIDE_FROM else KNN_TILE_COLS
    n_pad = -(-n // cols_tile) * cols_tile
    padded = np.zeros((n_pad, d), np.float32)
    padded[:n] = x
    sq = np.einsum("ij,ij->i", padded, padded)
    sq[n:] = np.inf
    col_labels = np.zeros(n_pad, np.int32)
    col_labels[:n] = labels
    tiles = [(jnp.asarray(padded[c:c + cols_tile]), jnp.asarray(sq[c:c + cols_tile]),
              jnp.asarray(col_labels[c:c + cols_tile])) for c in range(0, n_pad, cols_tile)]
    out = np.empty(len(query), np.float32)
    for start in range(0, len(query), KNN_TILE_ROWS):
        ids = query[start:start + KNN_TILE_ROWS]
        m = len(ids)
        ids = np.pad(ids, (0, KNN_TILE_ROWS - m))
        rows, rows_sq, row_labels = padded[ids], sq[ids], col_labels[ids]
        best = np.full(KNN_TILE_ROWS, np.inf, np.float32)
        for cols, cols_sq, labels_tile in tiles:
            np.minimum(best, np.asarray(_other_label_tile(rows, rows_sq, row_labels, cols,
                                                          cols_sq, labels_tile)), out=best)
        out[start:start + m] = np.sqrt(best[:m])
    return out


def nearest_other_label_distance(x, labels, query=None) -> np.ndarray:
    """Euclidean distance of rows to the nearest row of another label.

    inf where every row shares the label. A row is δ-pure (its δ-ball holds
    only its own label) iff this distance exceeds δ.

    Args:
      x: (N, d) float32.
      labels: (N,) int (e.g. k-means cluster ids).
      query: optional (m,) row indices (negative ones count from the end) or an
        (N,) bool mask: the distances of those rows only (to all N rows); None:
        every row.

    Returns:
      (m,) or (N,) float32.

    One device computes the query rows only; with D > 1 devices every row is
    computed (row blocks) and the query rows taken from them.
    """
    x = np.asarray(x, np.float32)
    labels = np.asarray(labels, np.int32)
    n = len(x)
    query = np.arange(n) if query is None else np.arange(n)[np.asarray(query)]
    mesh = pool_mesh.mesh()
    if mesh is None:
        return _other_label_tiles(_centred(x), labels, query)
    device, sq, rows, starts = _row_blocks(x, mesh)
    padded_labels = _replicated(np.pad(labels, (0, len(device) - n)), mesh)
    out = [part for _, part in _blocks(_other_label_rows, None, device, sq, padded_labels,
                                       rows, n, starts, mesh)]
    return np.concatenate(out)[:n][query]


@functools.partial(jax.jit, static_argnames=("rows", "n"))
def _ball_block(x, x_sq, start, sq_delta, rows, n):
    """(rows, n) bool: row block's δ-ball membership (distance <= δ)."""
    return _ball_rows(x, x_sq, sq_delta, start, rows, n)


@functools.partial(jax.jit, static_argnames=("rows", "n"))
def _ball_count_block(x, x_sq, start, sq_delta, rows, n):
    return _ball_count_rows(x, x_sq, sq_delta, start, rows, n)


def ball_counts(x, delta: float) -> np.ndarray:
    """(N,) int64: rows within distance δ of each row (itself included)."""
    x = np.asarray(x, np.float32)
    n = len(x)
    mesh = pool_mesh.mesh()
    device, sq, rows, starts = _row_blocks(x, mesh)
    single = lambda x, x_sq, sq_delta, start: _ball_count_block(x, x_sq, start, sq_delta,
                                                                rows, n)
    out = [part for _, part in _blocks(_ball_count_rows, single, device, sq,
                                       float(delta) ** 2, rows, n, starts, mesh)]
    return np.concatenate(out)[:n].astype(np.int64)


class BallGraph(NamedTuple):
    """The δ-ball graph in CSR form: the neighbours of row i (itself included,
    ascending) are ``indices[indptr[i]:indptr[i + 1]]``. Symmetric."""

    indptr: np.ndarray    # (N + 1,) int64
    indices: np.ndarray   # (E,) int32, E = Σ ball sizes <= max_edges


def ball_graph(x, delta: float, *, max_edges: int, method: str = "auto") -> BallGraph:
    """The δ-ball graph of the rows of `x` as neighbour lists.

    Args:
      x: (N, d) float32.
      delta: the ball radius.
      max_edges: bound on the edges (4 bytes each).
      method: "blocks" (every pair, in (rows, N) blocks; spread over the
        local devices), "cells" (one device: only the pairs a cell partition
        cannot rule out, `cells.ball_graph_cells`: the same graph at a
        fraction of the work on large pools), or "auto": cells on one device
        from CELLS_FROM rows, blocks otherwise.

    Memory: 4 bytes per edge (E <= max_edges) plus one (block_rows, N) bool
    block at a time (blocks), or one tile and a second copy of the edges
    (cells).

    Raises:
      ValueError: the graph would hold more than `max_edges` edges (δ too
        large for the pool); it is refused before that memory is spent; or
        an unknown method.
    """
    if method not in ("auto", "blocks", "cells"):
        raise ValueError(f"ball_graph: method must be 'auto', 'blocks' or 'cells', got "
                         f"{method!r}.")
    if not delta >= 0:
        raise ValueError(f"ball_graph: delta must be >= 0, got {delta!r}.")
    mesh = pool_mesh.mesh()
    if method == "cells" or (method == "auto" and mesh is None and len(x) >= CELLS_FROM):
        return BallGraph(*ball_graph_cells(_centred(x), delta, max_edges=max_edges))
    x = np.asarray(x, np.float32)
    n = len(x)
    device, sq, rows, starts = _row_blocks(x, mesh)
    single = lambda x, x_sq, sq_delta, start: _ball_block(x, x_sq, start, sq_delta, rows, n)
    counts, lists, total = [], [], 0
    for start, mask in _blocks(_ball_rows, single, device, sq, float(delta) ** 2,
                               rows, n, starts, mesh):
        mask = mask[:min(rows, n - start)]
        total += int(mask.sum())
        if total > max_edges:
            raise ValueError(f"The δ-ball graph at delta={delta:g} has more than {max_edges} "
                             f"edges (already {total} from {start + len(mask)} of {n} rows); "
                             "lower delta or raise max_edges (4 bytes per edge).")
        counts.append(mask.sum(1))
        lists.append(np.nonzero(mask)[1].astype(np.int32))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    return BallGraph(indptr, np.concatenate(lists))
