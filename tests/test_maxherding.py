"""MaxHerding: a hand-computed case, the chunked gains and the lazy greedy against a
plain numpy greedy, scikit-activeml 1.0.1's MaxHerding (identical picks: the greedy
is deterministic), cold start, exact ties, candidate subsampling and bad inputs.
"""
import json
import math

import jax
import numpy as np
import pytest

from npc_jax.data import DataError, Pool
from npc_jax.inference import NonFiniteError
from npc_jax.records import parse_objective
from npc_jax.strategies import make_strategy
from npc_jax.strategies.base import AcquisitionContext
from npc_jax.strategies.kernels import unit_rows
from npc_jax.strategies.maxherding import MaxHerding, coverage_gains, max_herding

KEY = jax.random.PRNGKey(0)


def _ctx(z):
    z = np.asarray(z, np.float32)
    return AcquisitionContext(model=None, variables=None,
                              images=np.zeros((len(z), 2, 2, 1), np.uint8),
                              labels=np.zeros(len(z), np.int64), embedding=z)


def _blobs(n=300, dim=8, centres=5, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim)) * 3
    return (means[rng.integers(0, centres, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def _kernel(a, b, h):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / h ** 2)


def _greedy_reference(z, labeled, candidates, q, h):
    """The plain greedy on the dense N × N kernel, float64."""
    k = _kernel(z, z, h)
    cover = k[:, labeled].max(1) if len(labeled) else np.zeros(len(z))
    picks = []
    for _ in range(q):
        gains = np.maximum(k[:, candidates] - cover[:, None], 0).sum(0)
        gains[np.isin(candidates, picks)] = -np.inf
        pick = int(candidates[np.argmax(gains)])
        picks.append(pick)
        cover = np.maximum(cover, k[:, pick])
    return np.array(picks)


# ---------------------------------------------------------------- hand and reference

def test_hand_computed_three_points():
    # 1-D points 0, 1, 3, h = 1: k(0,1) = e^-1, k(1,3) = e^-4, k(0,3) = e^-9.
    e = math.exp
    z = np.array([[0.0], [1.0], [3.0]])
    # Cold start: gains are the densities; 1 + e^-1 + e^-4 (point 1) is the largest.
    # Then g(0 | {1}) = 1 − e^-1 = .632 < g(2 | {1}) = 1 − e^-4 = .982: point 2.
    acq = MaxHerding(normalize=False).select(KEY, _ctx(z), Pool(3), 2)
    np.testing.assert_array_equal(acq.indices, [1, 2])
    np.testing.assert_allclose(acq.objective["gains"],
                               [(1 + e(-1) + e(-4)) / 3, (1 - e(-4)) / 3], rtol=1e-6)
    assert acq.objective["coverage_before"] == 0.0
    np.testing.assert_allclose(acq.objective["coverage_after"], (e(-1) + 2) / 3, rtol=1e-6)
    # Warm: with 1 labeled, the same second pick, and coverage starts at (e^-1 + 1 + e^-4) / 3.
    acq = MaxHerding(normalize=False).select(KEY, _ctx(z), Pool(3, (1,)), 1)
    np.testing.assert_array_equal(acq.indices, [2])
    np.testing.assert_allclose(acq.objective["coverage_before"], (e(-1) + 1 + e(-4)) / 3,
                               rtol=1e-6)


def test_chunked_gains_equal_brute_force():
    rng = np.random.default_rng(1)
    z = unit_rows(rng.normal(size=(700, 6)))
    labeled = rng.choice(700, 9, replace=False)
    candidates = np.setdiff1d(np.arange(700), labeled)
    for h in (0.3, 1.0, 2.5):
        k = _kernel(z, z, h)
        reference = np.maximum(k[:, candidates] - k[:, labeled].max(1)[:, None], 0).sum(0)
        np.testing.assert_allclose(coverage_gains(z, labeled, candidates, h), reference,
                                   rtol=2e-5)
    np.testing.assert_allclose(coverage_gains(z, [], [0, 5]), _kernel(z, z[[0, 5]], 1).sum(0),
                               rtol=2e-5)


@pytest.mark.parametrize("seed,num_labeled,h", [(0, 0, 1.0), (1, 5, 1.0), (2, 12, 0.4),
                                                (3, 0, 0.25), (4, 30, 2.0)])
def test_lazy_greedy_equals_plain_greedy(seed, num_labeled, h):
    rng = np.random.default_rng(seed)
    z = unit_rows(rng.normal(size=(600, 5)))
    labeled = np.sort(rng.choice(600, num_labeled, replace=False))
    candidates = np.setdiff1d(np.arange(600), labeled)
    # A small refresh chunk exercises many lazy passes.
    picks, info = max_herding(z, labeled, candidates, 15, bandwidth=h, refresh=8)
    np.testing.assert_array_equal(picks, _greedy_reference(z, labeled, candidates, 15, h))
    assert info["gain_evaluations"] >= len(candidates)
    k = _kernel(z, z, h)
    members = np.concatenate([labeled, picks]).astype(int)
    np.testing.assert_allclose(info["coverage_after"], k[:, members].max(1).mean(), rtol=1e-5)
    # The gains shrink (submodularity) and sum to the coverage gained.
    assert np.all(np.diff(info["gains"]) <= 1e-6)
    np.testing.assert_allclose(sum(info["gains"]),
                               info["coverage_after"] - info["coverage_before"], rtol=1e-4)


def test_exact_ties_go_to_the_smallest_index_and_terminate():
    # 600 copies of one point (two labeled, so all covered) and 3 of another: the
    # other point first (gain 3·(1 − e^-2)), then 599 candidates tie at gain 0, a crowd
    # larger than the refresh chunk: the smallest unlabeled indices, never a labeled one.
    z = np.concatenate([np.zeros((600, 2)), np.ones((3, 2))]).astype(np.float32)
    acq = MaxHerding(normalize=False, refresh=16).select(KEY, _ctx(z), Pool(603, (0, 2)), 4)
    np.testing.assert_array_equal(acq.indices, [600, 1, 3, 4])
    np.testing.assert_allclose(acq.objective["gains"][0], 3 * (1 - math.exp(-2)) / 603,
                               rtol=1e-5)
    assert acq.objective["gains"][1:] == [0.0, 0.0, 0.0]
    # Cold: the 600 copies are the densest; then the other point; then ties at 0.
    acq = MaxHerding(normalize=False, refresh=16).select(KEY, _ctx(z), Pool(603), 3)
    np.testing.assert_array_equal(acq.indices, [0, 600, 1])


# ---------------------------------------------------------------- scikit-activeml

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_labeled", [0, 1, 8])
@pytest.mark.parametrize("h", [1.0, 0.5])
def test_same_picks_as_scikit_activeml(seed, num_labeled, h):
    skactiveml_pool = pytest.importorskip("skactiveml.pool")
    z = _blobs(seed=seed)
    labeled = np.random.default_rng(seed).choice(300, num_labeled, replace=False)
    y = np.full(300, np.nan)
    y[labeled] = 0
    # Same kernel: rbf with gamma = 1/h², on unit-normalised samples (both defaults).
    theirs = skactiveml_pool.MaxHerding(metric="rbf", metric_dict={"gamma": 1 / h ** 2},
                                        random_state=0).query(z, y, batch_size=10)
    ours = MaxHerding(bandwidth=h).select(KEY, _ctx(z), Pool(300, tuple(labeled.tolist())), 10)
    np.testing.assert_array_equal(ours.indices, theirs)


def test_same_picks_as_scikit_activeml_without_normalising():
    skactiveml_pool = pytest.importorskip("skactiveml.pool")
    z = _blobs(seed=7) / 4
    y = np.full(300, np.nan)
    y[[3, 50]] = 1
    theirs = skactiveml_pool.MaxHerding(normalize_samples=False, metric_dict={"gamma": 1.0},
                                        random_state=0).query(z, y, batch_size=12)
    ours = MaxHerding(normalize=False).select(KEY, _ctx(z), Pool(300, (3, 50)), 12)
    np.testing.assert_array_equal(ours.indices, theirs)


# ---------------------------------------------------------------- options and records

def test_candidate_subsampling_is_recorded_and_deterministic():
    z = _blobs(n=400, seed=3)
    pool = Pool(400, (0, 1, 2))
    strategy = make_strategy("maxherding", num_candidates=50)
    acq = strategy.select(KEY, _ctx(z), pool, 6)
    again = strategy.select(KEY, _ctx(z), pool, 6)
    np.testing.assert_array_equal(acq.indices, again.indices)
    assert acq.objective["num_candidates"] == 50
    candidates = strategy.candidates(KEY, pool, 6)
    assert len(candidates) == 50 and not np.isin(candidates, pool.labeled_indices).any()
    assert np.isin(acq.indices, candidates).all()
    # The greedy over those candidates, coverage still over all 400 points.
    np.testing.assert_array_equal(
        acq.indices, _greedy_reference(unit_rows(z), [0, 1, 2], candidates, 6, 1.0))
    # More candidates than unlabeled points: all of them, the exact greedy.
    assert make_strategy("maxherding", num_candidates=10 ** 6).select(
        KEY, _ctx(z), pool, 6).objective["num_candidates"] == 397


def test_objective_is_json_and_embed_fn_is_used():
    z = _blobs(n=120, seed=4)
    images = np.arange(120, dtype=np.float32).reshape(120, 1, 1, 1)
    ctx = AcquisitionContext(None, None, images, np.zeros(120, np.int64))
    acq = MaxHerding(embed_fn=lambda x: z[x[:, 0, 0, 0].astype(int)]).select(
        KEY, ctx, Pool(120), 5)
    np.testing.assert_array_equal(acq.indices, MaxHerding().select(KEY, _ctx(z), Pool(120),
                                                                   5).indices)
    assert acq.indices.dtype == np.int64 and acq.indices.shape == (5,)
    objective = json.loads(json.dumps(acq.objective))
    assert objective["embedding"] == "embed_fn" and objective["bandwidth"] == 1.0
    assert objective["normalize"] is True and objective["num_candidates"] == 120
    assert parse_objective(objective)["gains"] == tuple(objective["gains"])


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("bandwidth", [0, -1.0, float("nan"), float("inf"), "1", True, None])
def test_bad_bandwidth(bandwidth):
    with pytest.raises(ValueError, match="bandwidth"):
        make_strategy("maxherding", bandwidth=bandwidth)


def test_bad_inputs():
    z = _blobs(n=30)
    with pytest.raises(DataError):
        MaxHerding().select(KEY, _ctx(z), Pool(30, tuple(range(25))), 6)   # q > unlabeled
    bad = z.copy()
    bad[4, 1] = np.nan
    with pytest.raises(NonFiniteError, match=r"indices \[4\]"):
        MaxHerding().select(KEY, _ctx(bad), Pool(30), 3)
    with pytest.raises(ValueError, match="num_candidates"):
        MaxHerding(num_candidates=2).select(KEY, _ctx(z), Pool(30), 3)
    for value in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_candidates"):
            MaxHerding(num_candidates=value)
    with pytest.raises(ValueError, match="embedding"):
        MaxHerding(embedding="pixels").select(KEY, _ctx(z), Pool(30), 3)
