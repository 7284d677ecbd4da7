"""TypiClust and ProbCover: cross-checked with scikit-activeml 1.0.1, hand cases, bad inputs.

The scikit-activeml tests give it the same embedding and the same clustering
(a fixed-labels cluster_algo), and ProbCover the same tie-breaking draws, so
the picks must be identical; TypiClust's typicality values must agree.
"""
import warnings

import jax
import numpy as np
import pytest

from npc_jax.data import DataError, Pool
from npc_jax.inference import NonFiniteError
from npc_jax.strategies import neighbours
from npc_jax.strategies.base import AcquisitionContext
from npc_jax.strategies.embedding import pool_embedding
from npc_jax.strategies.kmeans import kmeans
from npc_jax.strategies.probcover import (DEFAULT_DELTAS, ProbCover, greedy_coverage,
                                          normalize_rows, purity_delta)
from npc_jax.strategies.typiclust import TypiClust, typiclust_picks


def _ctx(z):
    z = np.asarray(z, np.float32)
    return AcquisitionContext(model=None, variables=None,
                              images=np.zeros((len(z), 2, 2, 1), np.uint8),
                              labels=np.zeros(len(z), np.int64), embedding=z)


def _blobs(sizes, dim=8, spread=0.3, seed=0):
    """Gaussian blobs of the given sizes, well apart: (z (N, dim) float32, blob ids (N,))."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim)) * 4
    ids = np.repeat(np.arange(len(sizes)), sizes)
    z = centres[ids] + spread * rng.normal(size=(len(ids), dim))
    perm = rng.permutation(len(ids))
    return z[perm].astype(np.float32), ids[perm]


class FixedClusters:
    """A scikit-learn-style cluster_algo returning given labels (the same clustering)."""
    labels = None

    def __init__(self, n_clusters):
        self.n_clusters = n_clusters

    def fit_predict(self, x):
        assert len(np.unique(self.labels)) == self.n_clusters
        return self.labels


def _y(n, labeled, classes=None):
    y = np.full(n, np.nan)
    y[list(labeled)] = 0 if classes is None else classes[list(labeled)]
    return y


# ---------------------------------------------------------------- building blocks

def test_neighbours_match_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    labels = rng.integers(0, 3, 300)
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    np.testing.assert_allclose(neighbours.knn_mean_distance(x, 4),
                               np.sort(d, 1)[:, :5].sum(1) / 4, rtol=1e-5)
    other = np.where(labels[:, None] != labels[None], d, np.inf).min(1)
    np.testing.assert_allclose(neighbours.nearest_other_label_distance(x, labels), other,
                               rtol=1e-5)
    graph = neighbours.ball_graph(x, 2.0, max_edges=10 ** 6)
    rows, cols = np.nonzero(d <= 2.0)
    np.testing.assert_array_equal(graph.indices, cols)
    np.testing.assert_array_equal(np.diff(graph.indptr), np.bincount(rows, minlength=300))
    np.testing.assert_array_equal(neighbours.ball_counts(x, 2.0), (d <= 2.0).sum(1))


def _knn_brute_force(x, k):
    """Σ of the k + 1 smallest float64 distances (self included) / k, in row chunks."""
    x = x.astype(np.float64)
    out = []
    for start in range(0, len(x), 500):
        d = np.sqrt(((x[start:start + 500, None] - x[None]) ** 2).sum(-1))
        out.append(np.sort(d, 1)[:, :k + 1].sum(1) / k)
    return np.concatenate(out)


@pytest.mark.parametrize("n,k", [(22, 20), (300, 1), (1023, 5), (1024, 20), (1025, 20),
                                 (1600, 7)])
def test_knn_partition_path_matches_the_top_k_reference(n, k):
    """The single-device path (XLA distance tiles, numpy partition) against the plain
    reference (`_knn_mean`: one XLA top_k per block) and float64 brute force, on random
    rows with exact duplicates (ties at distance 0)."""
    rng = np.random.default_rng(n + k)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[n // 2:n // 2 + 3] = x[0]
    got = neighbours.knn_mean_distance(x, k)
    centred = neighbours._centred(x)
    n_pad = neighbours._bucket(n)
    padded = np.zeros((n_pad, 6), np.float32)
    padded[:n] = centred
    reference = np.asarray(neighbours._knn_mean(jax.numpy.asarray(padded), n, k, n_pad))[:n]
    # atol (the 4 copies only): a copy's squared distance to another is 0 only up to the
    # expanded form's cancellation, ≈ ε‖x‖² (≈ 1e-6 here), whose root is ≈ 1e-3 in both
    # paths; 3 such neighbours in a sum divided by k.
    np.testing.assert_allclose(got, reference, rtol=2e-6, atol=6e-3 / k)
    np.testing.assert_allclose(got, _knn_brute_force(x, k), rtol=1e-5, atol=6e-3 / k)
    plain = np.ones(n, bool)
    plain[[0, n // 2, n // 2 + 1, n // 2 + 2]] = False
    np.testing.assert_allclose(got[plain], reference[plain], rtol=2e-6)


def test_knn_partition_path_wide_tiles(monkeypatch):
    """The wide-column tiles (clusters of more than 16384 points) on a small set."""
    monkeypatch.setattr(neighbours, "KNN_WIDE_FROM", 1000)
    x = np.random.default_rng(5).normal(size=(1500, 6)).astype(np.float32)
    np.testing.assert_allclose(neighbours.knn_mean_distance(x, 20), _knn_brute_force(x, 20),
                               rtol=1e-5)


def test_knn_sharded_path_with_a_partial_last_block(monkeypatch):
    """4500 rows pad to 5120 with 2048-row blocks: the last block used to run past the
    padding and be clamped (by dynamic_slice) onto other rows; on a 1-device mesh."""
    from jax.sharding import Mesh
    monkeypatch.setattr(neighbours.pool_mesh, "mesh",
                        lambda: Mesh(np.array(jax.devices()[:1]), ("rows",)))
    x = np.random.default_rng(0).normal(size=(4500, 4)).astype(np.float32)
    np.testing.assert_allclose(neighbours.knn_mean_distance(x, 20), _knn_brute_force(x, 20),
                               rtol=1e-5)


def test_kmeans_matches_sklearn():
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    z, _ = _blobs([40, 50, 60, 70, 80], spread=1.0)
    ours = kmeans(jax.random.key(0), z, 5)
    ref = sklearn_cluster.KMeans(5, random_state=0, n_init=1).fit(z)
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-4)
    assert np.bincount(ours.labels).tolist() == sorted(np.bincount(ref.labels_).tolist()) or \
        sorted(np.bincount(ours.labels)) == sorted(np.bincount(ref.labels_))
    again = kmeans(jax.random.key(0), z, 5)
    np.testing.assert_array_equal(ours.labels, again.labels)


def test_kmeans_result_does_not_depend_on_the_bucket():
    """k = 5 in 8 slots (its bucket) or 32 masked slots: the same clustering."""
    from npc_jax.strategies import kmeans as kmeans_module
    z, _ = _blobs([40, 50, 60, 70, 80], spread=1.0)
    runs = [kmeans_module._kmeans(jax.random.key(3), z, 5, 3, slots, 2 + int(np.log(slots)),
                                  256, 300, 1e-4) for slots in (8, 32)]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_allclose(runs[0][0][:5], runs[1][0][:5], rtol=1e-5)
    assert kmeans_module.bucket(5) == 8 and kmeans_module.bucket(32) == 32


# ---------------------------------------------------------------- hand-computed cases

def test_typiclust_hand_computed():
    # Cluster B = {10, 10.5, 11.5, 13} (largest): with k = 2 the mean 2-NN
    # distances are 1, 0.75, 1.25, 2, so 10.5 is the most typical (1/0.75);
    # cluster A = {0, 1, 2}: 1 has mean distance 1 (typicality 1).
    z = np.array([[0.0], [1.0], [2.0], [10.0], [10.5], [11.5], [13.0]], np.float32)
    clusters = np.array([0, 0, 0, 1, 1, 1, 1])
    picks, info = typiclust_picks(z, clusters, np.zeros(7, bool), 2, k=2, min_cluster_size=0,
                                  rng=np.random.default_rng(0))
    assert picks.tolist() == [4, 1]
    np.testing.assert_allclose(info["typicality"], [1 / 0.75, 1.0], rtol=1e-6)
    assert info["cluster_sizes"] == [4, 3]
    # B holds a labeled point: A comes first; a third pick cycles back to A.
    labeled = np.zeros(7, bool)
    labeled[6] = True
    picks, _ = typiclust_picks(z, clusters, labeled, 3, k=2, min_cluster_size=0,
                               rng=np.random.default_rng(0))
    assert picks[0] == 1 and picks[1] in (3, 4, 5) and picks[2] in (0, 2)


def test_probcover_hand_computed():
    # δ = 0.6 balls: 0.5 covers {0, 0.5, 1} (3), then 5 / 5.4 cover 2, then 10 covers 1.
    z = np.array([[0.0], [0.5], [1.0], [5.0], [5.4], [10.0]], np.float32)
    strategy = ProbCover(delta=0.6, normalize=False)
    got = strategy.select(jax.random.key(0), _ctx(z), Pool(6), 3)
    assert got.indices[0] == 1 and got.indices[1] in (3, 4) and got.indices[2] == 5
    assert got.objective["gains"] == [3, 2, 1]
    assert got.objective["coverage_after"] == 1.0 and got.objective["degenerate"] is None
    assert got.objective["num_edges"] == 2 + 3 + 2 + 2 + 2 + 1
    warm = strategy.select(jax.random.key(0), _ctx(z), Pool(6, (3,)), 2)
    assert warm.indices.tolist() == [1, 5]
    assert warm.objective["coverage_before"] == pytest.approx(2 / 6)


def test_cold_start_both():
    z, _ = _blobs([30, 40, 50])
    for strategy in (TypiClust(typicality_k=5), ProbCover(num_clusters=3)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = strategy.select(jax.random.key(1), _ctx(z), Pool(len(z)), 3)
        assert len(np.unique(got.indices)) == 3
        again = strategy.select(jax.random.key(1), _ctx(z), Pool(len(z)), 3)
        np.testing.assert_array_equal(got.indices, again.indices)


def test_typiclust_cold_start_one_pick_per_blob():
    z, blobs = _blobs([30, 40, 50])
    got = TypiClust(typicality_k=5).select(jax.random.key(0), _ctx(z), Pool(len(z)), 3)
    assert sorted(blobs[got.indices]) == [0, 1, 2]
    assert got.objective["cluster_sizes"] == [50, 40, 30]


def test_embed_fn_overrides_embedding():
    z, blobs = _blobs([30, 40, 50])
    images = z.reshape(len(z), 2, 2, 2)
    ctx = AcquisitionContext(model=None, variables=None, images=images,
                             labels=np.zeros(len(z), np.int64),
                             embedding=np.zeros_like(z))   # would make every point alike
    seen = []

    def embed_fn(batch):
        seen.append(len(batch))
        return batch.reshape(len(batch), -1)

    np.testing.assert_array_equal(pool_embedding(ctx, "auto", embed_fn, chunk_size=50), z)
    assert seen == [50, 50, 20]
    got = TypiClust(embed_fn=embed_fn, typicality_k=5).select(jax.random.key(0), ctx,
                                                              Pool(len(z)), 3)
    assert sorted(blobs[got.indices]) == [0, 1, 2]
    assert got.objective["embedding"] == "embed_fn"


# ---------------------------------------------------------------- scikit-activeml

def _skactiveml_rng(seed, n_unlabeled):
    # skactiveml.utils.check_random_state(seed, seed_multiplier) as its query() calls it.
    seed = (np.random.RandomState(seed).randint(1, 2 ** 31) * (n_unlabeled + 1)) % (2 ** 31)
    return np.random.RandomState(seed)


@pytest.mark.parametrize("labeled", [(), (0, 1, 2, 3, 4)])
def test_typiclust_identical_to_skactiveml(labeled):
    pool_module = pytest.importorskip("skactiveml.pool")
    q, k = 5, 20
    sizes = [20 + 3 * i for i in range(len(labeled) + q)]    # distinct: no size ties
    z, blobs = _blobs(sizes)
    FixedClusters.labels = blobs
    ref = pool_module.TypiClust(cluster_algo=FixedClusters, k=k, random_state=0)
    ref_picks, utilities = ref.query(z.astype(np.float64), _y(len(z), labeled), batch_size=q,
                                     return_utilities=True)
    mask = np.zeros(len(z), bool)
    mask[list(labeled)] = True
    picks, info = typiclust_picks(z, blobs, mask, q, k=k, min_cluster_size=0,
                                  rng=np.random.default_rng(0))
    np.testing.assert_array_equal(picks, ref_picks)
    np.testing.assert_allclose(info["typicality"], utilities[np.arange(q), ref_picks],
                               rtol=1e-5)


@pytest.mark.parametrize("labeled", [(), (3, 50, 120)])
def test_typiclust_strategy_matches_skactiveml_kmeans(labeled):
    """End to end, each with its own k-means: on well-separated blobs of
    distinct sizes both clusterings are the blobs, so the picks agree."""
    pool_module = pytest.importorskip("skactiveml.pool")
    q = 4
    z, blobs = _blobs([20 + 7 * i for i in range(len(labeled) + q)], spread=0.1)
    ref = pool_module.TypiClust(k=20, random_state=0)
    ref_picks = ref.query(z.astype(np.float64), _y(len(z), labeled), batch_size=q)
    got = TypiClust().select(jax.random.key(0), _ctx(z), Pool(len(z), labeled), q)
    np.testing.assert_array_equal(got.indices, ref_picks)


@pytest.mark.parametrize("labeled", [(), (0, 7, 100, 200)])
def test_probcover_identical_to_skactiveml(labeled):
    pool_module = pytest.importorskip("skactiveml.pool")
    utils = pytest.importorskip("skactiveml.utils")
    q, num_classes, seed = 6, 4, 3
    z, _ = _blobs([60, 70, 80, 90], spread=2.0)
    z = normalize_rows(z)
    clusters = kmeans(jax.random.key(0), z, num_classes).labels
    FixedClusters.labels = clusters
    y = _y(len(z), labeled)
    ref = pool_module.ProbCover(n_classes=num_classes, deltas=DEFAULT_DELTAS,
                                cluster_algo=FixedClusters, random_state=seed)
    ref_picks, utilities = ref.query(z.astype(np.float64), y, batch_size=q,
                                     return_utilities=True)

    delta, purity, reached = purity_delta(z, clusters, DEFAULT_DELTAS, 0.95)
    assert reached and delta == pytest.approx(ref.delta_max_)
    mask = np.zeros(len(z), bool)
    mask[list(labeled)] = True
    graph = neighbours.ball_graph(z, delta, max_edges=10 ** 7)
    draws = _skactiveml_rng(seed, int((~mask).sum()))
    picks, info = greedy_coverage(graph, mask, q, lambda g: int(utils.rand_argmax(g, draws)[0]),
                                  np.random.default_rng(0))
    np.testing.assert_array_equal(picks, ref_picks)
    assert info["gains"] == utilities[np.arange(q), ref_picks].astype(int).tolist()
    assert info["random_fill"] == 0


def test_probcover_strategy_objective_matches_skactiveml():
    """The strategy (own k-means, own tie draws): same δ, and the first pick's
    gain is the largest ball, as scikit-activeml's first utility row says.
    Blobs apart enough that both k-means find them (δ depends on the clusters)."""
    pool_module = pytest.importorskip("skactiveml.pool")
    z, _ = _blobs([60, 70, 80, 90], spread=1.0)
    got = ProbCover(num_clusters=4).select(jax.random.key(0), _ctx(z), Pool(len(z)), 3)
    ref = pool_module.ProbCover(n_classes=4, deltas=DEFAULT_DELTAS, random_state=0)
    _, utilities = ref.query(normalize_rows(z).astype(np.float64), _y(len(z), ()),
                             batch_size=3, return_utilities=True)
    assert got.objective["delta"] == pytest.approx(ref.delta_max_)
    assert got.objective["gains"][0] == int(np.nanmax(utilities[0]))


# ---------------------------------------------------------------- bad inputs

def test_nan_embedding_is_refused():
    z, _ = _blobs([30, 40])
    z[7, 2] = np.nan
    for strategy in (TypiClust(typicality_k=3), ProbCover(delta=0.5)):
        with pytest.raises(NonFiniteError, match="embedding.*indices \\[7\\]"):
            strategy.select(jax.random.key(0), _ctx(z), Pool(len(z)), 2)


def test_query_larger_than_unlabeled_is_refused():
    z, _ = _blobs([10, 10])
    for strategy in (TypiClust(typicality_k=3), ProbCover(delta=0.5)):
        with pytest.raises(DataError, match="exceeds the 15 unlabeled"):
            strategy.select(jax.random.key(0), _ctx(z), Pool(20, (0, 1, 2, 3, 4)), 16)


def test_k_larger_than_pool_is_refused():
    z, _ = _blobs([10, 10])
    with pytest.raises(ValueError, match="typicality_k=20 .* pool of more than 20"):
        TypiClust().select(jax.random.key(0), _ctx(z), Pool(20), 2)
    with pytest.raises(ValueError, match="k=25 clusters must lie in 1..20"):
        ProbCover(num_clusters=25).select(jax.random.key(0), _ctx(z), Pool(20), 2)
    with pytest.raises(ValueError, match="typicality_k must be an int >= 1"):
        TypiClust(typicality_k=0)


@pytest.mark.parametrize("delta,kind", [(0.0, "covers_nothing"), (2.0, "covers_everything"),
                                        (1.5, "covers_everything")])
def test_degenerate_delta_warns_records_and_fills(delta, kind):
    z, _ = _blobs([30, 40, 50])
    with pytest.warns(UserWarning, match="degenerate"):
        got = ProbCover(delta=delta).select(jax.random.key(0), _ctx(z), Pool(120, (5,)), 10)
    assert got.objective["degenerate"] == kind
    assert len(np.unique(got.indices)) == 10 and 5 not in got.indices
    if kind == "covers_everything":
        assert got.objective["random_fill"] >= 9 and got.objective["coverage_after"] == 1.0


def test_graph_over_the_edge_bound_is_refused():
    z, _ = _blobs([100, 100])
    with pytest.raises(ValueError, match="more than 1000 edges.*lower delta"):
        ProbCover(delta=0.3, max_edges=1000).select(jax.random.key(0), _ctx(z), Pool(200), 2)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="delta must be a finite float >= 0"):
        ProbCover(delta=-1.0)
    with pytest.raises(ValueError, match="alpha must lie in"):
        ProbCover(alpha=1.0)
    z, _ = _blobs([10, 10])
    with pytest.raises(ValueError, match="embedding must be one of"):
        TypiClust(embedding="pixels", typicality_k=3).select(jax.random.key(0), _ctx(z),
                                                              Pool(20), 2)
    with pytest.raises(ValueError, match="embed_fn must map"):
        TypiClust(embed_fn=lambda x: x, typicality_k=3).select(jax.random.key(0), _ctx(z),
                                                                Pool(20), 2)


def test_registered_by_name():
    from npc_jax.strategies import make_strategy
    assert isinstance(make_strategy("typiclust", typicality_k=5), TypiClust)
    assert isinstance(make_strategy("probcover", delta=0.5), ProbCover)
