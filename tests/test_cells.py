"""The cell-pruned δ-ball graph (large pools) against the every-pair path and
float64 brute force; the tiled purity pass and its sampled estimate."""
import jax
import numpy as np
import pytest

from npc_jax.data import Pool
from npc_jax.strategies import cells, neighbours
from npc_jax.strategies.base import AcquisitionContext
from npc_jax.strategies.probcover import ProbCover, normalize_rows


def _graph_edges(graph):
    rows = np.repeat(np.arange(len(graph.indptr) - 1), np.diff(graph.indptr))
    return set(zip(rows.tolist(), graph.indices.tolist()))


def _clustered(n, dim, seed=0):
    """Points around 12 centres with unequal spreads (cells of varied radii)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, dim)) * 3
    ids = rng.integers(0, 12, n)
    return (centres[ids] + rng.normal(size=(n, dim)) * (0.3 + ids[:, None] / 12)
            ).astype(np.float32)


@pytest.mark.parametrize("n,dim,delta,cell_size", [(2500, 6, 0.8, 16), (1777, 3, 0.25, 50),
                                                   (3001, 20, 4.0, 128), (900, 5, 0.0, 7)])
def test_cells_graph_equals_every_pair_graph(n, dim, delta, cell_size, monkeypatch):
    """Same CSR arrays as the row-block path: tiles and cells cut the pool
    unevenly (n not a multiple of any tile; small cells)."""
    x = _clustered(n, dim)
    blocks = neighbours.ball_graph(x, delta, max_edges=10 ** 8, method="blocks")
    indptr, indices = cells.ball_graph_cells(neighbours._centred(x), delta, max_edges=10 ** 8,
                                             cell_size=cell_size, rows_tile=64, cols_tile=96)
    np.testing.assert_array_equal(indptr, blocks.indptr)
    np.testing.assert_array_equal(indices, blocks.indices)


def test_cells_graph_matches_float64_brute_force():
    """Every pair within δ is found (none pruned wrongly), away from δ's rounding band."""
    x = _clustered(1500, 8, seed=1)
    delta = 2.5
    graph = neighbours.ball_graph(x, delta, max_edges=10 ** 8, method="cells")
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    sure_in = set(zip(*map(lambda a: a.tolist(), np.nonzero(d <= delta - 1e-4))))
    sure_out = set(zip(*map(lambda a: a.tolist(), np.nonzero(d > delta + 1e-4))))
    got = _graph_edges(graph)
    assert sure_in <= got and not (got & sure_out)
    assert 20 * len(x) < len(sure_in) < len(x) ** 2 / 4    # a graph neither empty nor full
    for i in range(len(x)):       # ascending lists, self loops included
        row = graph.indices[graph.indptr[i]:graph.indptr[i + 1]]
        assert i in row and np.all(np.diff(row) > 0)


def test_cells_prune_most_pairs_and_partition_the_pool():
    x = neighbours._centred(_clustered(4000, 4, seed=2))
    part = cells.make_cells(x, 40)
    assert np.array_equal(np.sort(part.order), np.arange(len(x)))
    sizes = np.diff(part.starts)
    assert sizes.sum() == len(x) and sizes.min() >= 1 and len(sizes) == len(part.radii)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    dist = np.linalg.norm(x[part.order] - part.centres[owner], axis=1)
    assert np.all(dist <= part.radii[owner] + 1e-5)
    # Tiles of consecutive points reach few cells: the pruning's premise.
    reached = np.asarray(cells._reach(x[part.order[:256]], np.ones(256, bool), part.centres,
                                      (part.centres ** 2).sum(1), part.radii,
                                      np.float32(0.3)))
    assert reached.sum() < len(sizes) / 4


def test_tree_order_keeps_neighbours_together():
    values = np.random.default_rng(0).permutation(64).astype(np.float64)
    order = cells.tree_order(values[:, None])
    assert sorted(order.tolist()) == list(range(64))
    for start in range(0, 64, 8):     # each 8-block of the order is 8 consecutive values
        block = np.sort(values[order[start:start + 8]])
        assert np.array_equal(block, np.arange(block[0], block[0] + 8))


def test_cells_graph_over_the_edge_bound_is_refused():
    x = _clustered(1200, 4)
    with pytest.raises(ValueError, match="more than 500 edges.*lower delta"):
        neighbours.ball_graph(x, 1.0, max_edges=500, method="cells")
    with pytest.raises(ValueError, match="method must be"):
        neighbours.ball_graph(x, 1.0, max_edges=500, method="kdtree")


def test_auto_uses_cells_on_large_pools(monkeypatch):
    calls = []
    real = cells.ball_graph_cells

    def spy(*args, **kwargs):
        calls.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(neighbours, "ball_graph_cells", spy)
    monkeypatch.setattr(neighbours, "CELLS_FROM", 1000)
    x = _clustered(1200, 4)
    big = neighbours.ball_graph(x, 0.5, max_edges=10 ** 7)
    small = neighbours.ball_graph(x[:999], 0.5, max_edges=10 ** 7)
    assert calls == [1200]
    assert _graph_edges(small) == {(i, j) for i, j in _graph_edges(big) if i < 999 and j < 999}


def test_other_label_distance_of_query_rows():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2100, 5)).astype(np.float32)
    labels = rng.integers(0, 4, 2100)
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    other = np.where(labels[:, None] != labels[None], d, np.inf).min(1)
    query = np.array([5, 2099, 0, 1024, 1023, 700])
    np.testing.assert_allclose(neighbours.nearest_other_label_distance(x, labels, query),
                               other[query], rtol=1e-5)
    np.testing.assert_allclose(neighbours.nearest_other_label_distance(x, labels), other,
                               rtol=1e-5)
    same = neighbours.nearest_other_label_distance(x, np.zeros(2100, int), query)
    assert np.all(np.isinf(same))


def _ctx(z):
    return AcquisitionContext(model=None, variables=None,
                              images=np.zeros((len(z), 2, 2, 1), np.uint8),
                              labels=np.zeros(len(z), np.int64), embedding=z)


def test_probcover_sampled_purity_picks_the_same_delta():
    """On 4 separated blobs the purity curve crosses α far from any grid δ, so a
    600-point estimate chooses the exact rule's δ; the record says how many."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 4
    z = (centres[rng.integers(0, 4, 3000)] + rng.normal(size=(3000, 8))).astype(np.float32)
    exact = ProbCover(num_clusters=4, purity_sample=None).select(
        jax.random.key(0), _ctx(z), Pool(len(z)), 3).objective
    sampled = ProbCover(num_clusters=4, purity_sample=600).select(
        jax.random.key(0), _ctx(z), Pool(len(z)), 3).objective
    assert exact["purity_points"] == 3000 and sampled["purity_points"] == 600
    assert sampled["delta"] == exact["delta"]
    assert abs(sampled["purity"] - exact["purity"]) < 0.03
    with pytest.raises(ValueError, match="purity_sample must be an int >= 1 or None"):
        ProbCover(purity_sample=0)


def test_probcover_same_picks_through_either_graph_path(monkeypatch):
    z = normalize_rows(_clustered(2000, 16, seed=4))
    picks = {}
    for cells_from in (10 ** 9, 1000):
        monkeypatch.setattr(neighbours, "CELLS_FROM", cells_from)
        got = ProbCover(delta=0.25).select(jax.random.key(1), _ctx(z), Pool(len(z), (3, 9)), 8)
        picks[cells_from] = got.indices.tolist()
    assert picks[10 ** 9] == picks[1000]


def test_cells_graph_is_symmetric_where_norms_round_differently():
    """d = 64: a row's squared norm computed twice (host, device) differed by an ulp and
    kept the pair (1420, 282) one way only at this δ (found in review)."""
    rng = np.random.default_rng(1)
    x = neighbours._centred(normalize_rows(rng.normal(size=(1500, 64)).astype(np.float32)))
    for delta in (0.9781000469303305, 1.0, 1.05):
        graph = neighbours.ball_graph(x, delta, max_edges=10 ** 8, method="cells")
        edges = _graph_edges(graph)
        assert all((j, i) in edges for i, j in edges), delta
        blocks = neighbours.ball_graph(x, delta, max_edges=10 ** 8, method="blocks")
        assert edges == _graph_edges(blocks), delta


def test_cells_graph_bad_arguments():
    x = neighbours._centred(_clustered(300, 4))
    with pytest.raises(ValueError, match="delta must be >= 0"):
        neighbours.ball_graph(x, -0.5, max_edges=10 ** 6)
    with pytest.raises(ValueError, match="cols_tile must be a multiple of 32"):
        cells.ball_graph_cells(x, 0.5, max_edges=10 ** 6, cols_tile=100)
    # The edge bound is checked per tile: at δ covering everything, far fewer edges
    # than a row tile's (512 × 300) are built before the refusal.
    with pytest.raises(ValueError, match=r"more than 10 edges \(already \d+ before row 300"):
        cells.ball_graph_cells(x, 100.0, max_edges=10, rows_tile=512, cols_tile=32)


def test_other_label_distance_negative_labels_and_query_forms():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    labels = rng.integers(-2, 2, 50)          # negative labels are labels like any other
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    other = np.where(labels[:, None] != labels[None], d, np.inf).min(1)
    got = neighbours.nearest_other_label_distance
    np.testing.assert_allclose(got(x, labels), other, rtol=1e-5)
    np.testing.assert_allclose(got(x, labels, [-1, 0]), other[[49, 0]], rtol=1e-5)
    mask = np.zeros(50, bool)
    mask[[3, 30]] = True
    np.testing.assert_allclose(got(x, labels, mask), other[[3, 30]], rtol=1e-5)


def test_purity_sample_types():
    assert ProbCover(purity_sample=np.int64(7)).purity_sample == 7
    for bad in (True, 2.5, -3):
        with pytest.raises(ValueError, match="purity_sample must be an int >= 1 or None"):
            ProbCover(purity_sample=bad)
