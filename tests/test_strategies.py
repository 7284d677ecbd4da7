"""The paper's baselines against hand computations and brute-force references.

margin / entropy / least_confidence on a hand-made probability table;
coreset against a plain k-center greedy; BADGE's factored distances against
explicit embeddings and its k-means++ draw against D²; ALBL's EXP4.P update
and IW-ACC by hand, and its state surviving a JSON round trip; which
strategies can pick duplicates; the errors.
"""
import json
import math

import jax
import numpy as np
import pytest

from npc_jax.data import DataError, Pool
from npc_jax.models import get_model
from npc_jax.strategies import AcquisitionContext, make_strategy
from npc_jax.strategies import albl as albl_lib
from npc_jax.strategies.badge import (factored_sq_distances, gradient_embeddings,
                                      gradient_factor, kmeans_pp_gradient)
from npc_jax.strategies.coreset import _min_sq_distances, k_center_greedy, min_sq_distances
from npc_jax.strategies.pool_outputs import top_q


class TableContext(AcquisitionContext):
    """A context whose logits and features come from tables (one row per pool index)."""

    def __init__(self, logits, features=None, labels=None):
        self.logits = np.asarray(logits, np.float32)
        n = len(self.logits)
        self.features = (np.eye(n, dtype=np.float32) if features is None
                         else np.asarray(features, np.float32))
        self.labels = np.full(n, -1) if labels is None else np.asarray(labels)
        self.batch_size = 8

    @property
    def num_classes(self):
        return self.logits.shape[1]

    def logits_and_features(self, indices):
        indices = np.asarray(indices)
        return self.logits[indices], self.features[indices]


KEY = jax.random.PRNGKey(0)

# Hand-made softmax table (C = 4); row 0 is labeled in the tests below.
#   row  p                          1 − max p   p(1) − p(2)   entropy (nats)
#   0    .25 .25 .25 .25            .75         0             1.3863 (labeled)
#   1    .97 .01 .01 .01            .03         .96           .1677
#   2    .40 .40 .10 .10            .60         0             1.1935
#   3    .34 .33 .32 .01            .66         .01           1.1434
#   4    .35 .25 .20 .20            .65         .10           1.3578
PROBS = np.array([[.25, .25, .25, .25], [.97, .01, .01, .01], [.40, .40, .10, .10],
                  [.34, .33, .32, .01], [.35, .25, .20, .20]])


# The same scores, written out from the table's probabilities (rows 1-4).
TABLE_SCORES = {
    "least_confidence": 1.0 - PROBS[1:].max(1),
    "margin": -(np.sort(PROBS[1:], 1)[:, -1] - np.sort(PROBS[1:], 1)[:, -2]),
    "entropy": -(PROBS[1:] * np.log(PROBS[1:])).sum(1),
}


@pytest.mark.parametrize("name, expected", [
    ("least_confidence", [3, 4]),
    ("margin", [2, 3]),
    ("entropy", [4, 2]),
])
def test_uncertainty_scores_pick_the_known_rows(name, expected):
    ctx = TableContext(np.log(PROBS))
    pool = Pool(num_samples=5, labeled=(0,))
    acquisition = make_strategy(name).select(KEY, ctx, pool, 2)
    assert acquisition.indices.tolist() == expected
    scores = TABLE_SCORES[name]                      # of rows 1..4
    picked = scores[np.asarray(expected) - 1]
    objective = acquisition.objective
    assert objective["score"] == name
    assert objective["mean_score"] == pytest.approx(picked.mean(), abs=1e-6)
    assert objective["min_score"] == pytest.approx(picked.min(), abs=1e-6)
    assert objective["pool_mean_score"] == pytest.approx(scores.mean(), abs=1e-6)


def test_exact_ties_are_broken_at_random_per_key():
    ctx = TableContext(np.zeros((40, 3)))                   # every score equal
    pool = Pool(num_samples=40, labeled=(0, 1))
    strategy = make_strategy("margin")
    a = strategy.select(jax.random.PRNGKey(1), ctx, pool, 5).indices
    b = strategy.select(jax.random.PRNGKey(1), ctx, pool, 5).indices
    c = strategy.select(jax.random.PRNGKey(2), ctx, pool, 5).indices
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 5 and not {0, 1} & set(a.tolist())
    scores = np.array([3.0, 1.0, 2.0, 2.0, 2.0, 0.0])
    picks = top_q(scores, 3, KEY)
    assert picks[0] == 0 and set(picks[1:]) <= {2, 3, 4}


# ---- coreset -----------------------------------------------------------------

def brute_force_k_center(features, labeled, q):
    """Plain k-center greedy in float64 with explicit distances."""
    features = np.asarray(features, np.float64)
    centers, picks = list(labeled), []
    for _ in range(q):
        dist = ((features[:, None, :] - features[None, centers, :]) ** 2).sum(-1).min(1)
        dist[centers] = -np.inf
        best = int(np.argmax(dist))
        picks.append(best)
        centers.append(best)
    return picks


@pytest.mark.parametrize("seed", range(4))
def test_coreset_matches_brute_force_k_center_greedy(seed):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(60, 5)).astype(np.float32) * rng.uniform(0.5, 3, (60, 1))
    labeled = rng.choice(60, 4, replace=False).tolist()
    mask = np.zeros(60, bool)
    mask[labeled] = True
    picks, radii = k_center_greedy(features, mask, ~mask, 8)
    assert picks.tolist() == brute_force_k_center(features, labeled, 8)
    assert radii["radius_after"] < radii["radius_before"]
    # Through the strategy and a context: the same picks.
    acquisition = make_strategy("coreset").select(
        KEY, TableContext(np.zeros((60, 3)), features), Pool(60, tuple(labeled)), 8)
    assert acquisition.indices.tolist() == picks.tolist()


def test_coreset_without_labels_starts_at_a_random_point():
    rng = np.random.default_rng(5)
    features = rng.normal(size=(30, 4)).astype(np.float32)
    none = np.zeros(30, bool)
    picks, _ = k_center_greedy(features, none, ~none, 5, jax.random.PRNGKey(3))
    assert picks[1:].tolist() == brute_force_k_center(features, [int(picks[0])], 4)
    other, _ = k_center_greedy(features, none, ~none, 5, jax.random.PRNGKey(4))
    assert other[0] != picks[0]  # (keys 3 and 4 draw different starts)


def test_min_distances_in_blocks_match_the_explicit_matrix():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(300, 6)).astype(np.float32)
    centers = rng.normal(size=(5, 6)).astype(np.float32)
    explicit = ((features[:, None].astype(np.float64) - centers[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(min_sq_distances(features, centers), explicit, rtol=1e-5)
    # Several row blocks with a ragged last block; a copy of a center is exactly 0.
    features[7] = centers[2]
    blocked = np.asarray(_min_sq_distances(features, centers, block_rows=64))
    explicit[7] = 0.0
    np.testing.assert_allclose(blocked, explicit, rtol=1e-5)
    assert blocked[7] == 0.0


# ---- BADGE -------------------------------------------------------------------

def test_gradient_factor_is_p_minus_onehot_of_the_prediction():
    logits = np.log(np.array([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]]))
    np.testing.assert_allclose(gradient_factor(logits),
                               [[0.2, -0.3, 0.1], [-0.5, 0.25, 0.25]], atol=1e-6)


def test_factored_distances_match_explicit_embeddings():
    rng = np.random.default_rng(0)
    factors = gradient_factor(rng.normal(size=(50, 10)) * 2)
    features = np.maximum(rng.normal(size=(50, 16)), 0).astype(np.float32)
    explicit = gradient_embeddings(factors.astype(np.float64), features.astype(np.float64))
    for center in (0, 17, 49):
        expected = ((explicit - explicit[center]) ** 2).sum(1)
        got = np.asarray(factored_sq_distances(factors, features, center))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.max())
        assert got[center] == 0.0


def test_kmeans_pp_first_is_largest_norm_then_samples_proportional_to_d2():
    # Four unlabeled samples, C = 2, D = 2: explicit embeddings g = a ⊗ h.
    factors = np.array([[-0.5, 0.5], [-0.2, 0.2], [0.3, -0.3], [-0.1, 0.1]], np.float32)
    features = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 1.5], [3.0, 1.0]], np.float32)
    g = gradient_embeddings(factors.astype(np.float64), features.astype(np.float64))
    first = int(np.argmax((g ** 2).sum(1)))
    d2 = ((g - g[first]) ** 2).sum(1)
    expected = d2 / d2.sum()
    draws = 1500
    counts = np.zeros(4)
    for seed in range(draws):
        picks, drawn = kmeans_pp_gradient(factors, features, np.ones(4, bool), 2,
                                          jax.random.PRNGKey(seed))
        assert picks[0] == first
        counts[picks[1]] += 1
    assert counts[first] == 0
    freq = counts / draws
    tolerance = 4 * np.sqrt(expected * (1 - expected) / draws) + 1e-9
    assert np.all(np.abs(freq - expected) <= tolerance), (freq, expected)
    assert drawn[0] == pytest.approx((g[first] ** 2).sum(), rel=1e-5)


def test_badge_is_deterministic_per_key_and_skips_labeled():
    rng = np.random.default_rng(2)
    ctx = TableContext(rng.normal(size=(80, 5)), rng.normal(size=(80, 7)))
    pool = Pool(num_samples=80, labeled=tuple(range(10)))
    badge = make_strategy("badge")
    a = badge.select(jax.random.PRNGKey(1), ctx, pool, 12).indices
    b = badge.select(jax.random.PRNGKey(1), ctx, pool, 12).indices
    c = badge.select(jax.random.PRNGKey(9), ctx, pool, 12).indices
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 12 and min(a) >= 10


# ---- duplicates --------------------------------------------------------------

def test_which_strategies_can_pick_duplicates():
    """Myopic strategies (margin, entropy, least_confidence; passive by chance;
    ALBL through its least-confidence and uniform arms) score copies alike and
    pick them together. Coreset and BADGE give a copy of a center distance 0,
    so they never pick one while a distinct sample remains (NPC: Proposition
    1, see tests/test_npc.py). Coreset's centers include the labeled set;
    BADGE's k-means++ (as in its reference code) runs on the unlabeled
    samples only, so it may pick a copy of a *labeled* sample, never two
    copies of one sample within its batch."""
    rng = np.random.default_rng(0)
    distinct_logits = rng.normal(size=(8, 4)) * 2
    distinct_logits[5] = 0.0                      # point 5: the most uncertain
    distinct_features = rng.normal(size=(8, 6))
    logits = np.repeat(distinct_logits, 3, axis=0)       # pool index i is point i // 3
    features = np.repeat(distinct_features, 3, axis=0)
    ctx = TableContext(logits, features)
    pool = Pool(num_samples=24, labeled=(0,))           # a copy of point 0 is labeled
    for name in ("margin", "entropy", "least_confidence"):
        picks = make_strategy(name).select(KEY, ctx, pool, 3).indices
        assert sorted(picks // 3) == [5, 5, 5], name
    for name in ("coreset", "badge"):
        for seed in range(5):
            picks = make_strategy(name).select(jax.random.PRNGKey(seed), ctx, pool, 7).indices
            points = (picks // 3).tolist()
            assert len(set(points)) == 7, (name, points)
            assert name == "badge" or 0 not in points
        # Beyond the distinct points, copies must come (still distinct indices).
        picks = make_strategy(name).select(KEY, ctx, pool, 12).indices
        assert len(set(picks.tolist())) == 12 and set((picks // 3).tolist()) == set(range(8))


# ---- ALBL --------------------------------------------------------------------

def test_exp4p_update_and_iw_acc_by_hand():
    # K = 3, p_min = 0.1: p = (1 − 0.3)/3 + 0.1 = 1/3 each.
    p = albl_lib.arm_probabilities(np.zeros(3), 0.1)
    np.testing.assert_allclose(p, [1 / 3] * 3)
    # Arm 1 drawn, reward 0.4, δ = 0.1, T = 5:
    # r̂ = (0, 0.4 · 3, 0) = (0, 1.2, 0); v̂ = 3; √(ln(3/0.1) / (3·5)) = 0.476179;
    # log w = 0.05 (r̂ + 3 · 0.476179) = (0.071427, 0.131427, 0.071427).
    log_w = albl_lib.exp4p_update(np.zeros(3), p, 1, 0.4, p_min=0.1, delta=0.1, horizon=5)
    np.testing.assert_allclose(log_w, [0.071427, 0.131427, 0.071427], atol=1e-6)
    # New p: w ∝ (1, e^0.06, 1) → p_1 = 0.7 · e^0.06 / (2 + e^0.06) + 0.1 = 0.347999.
    p_next = albl_lib.arm_probabilities(log_w, 0.1)
    assert p_next[1] == pytest.approx(0.7 * math.exp(0.06) / (2 + math.exp(0.06)) + 0.1)
    assert p_next.sum() == pytest.approx(1.0)
    # IW-ACC: correct (1, 0, 1), weights (2, 3, 4), n = 10, T = 2 → (2 + 4) / 20.
    assert albl_lib.importance_weighted_accuracy(
        np.array([1, 0, 1]), np.array([2.0, 3.0, 4.0]), pool_size=10, horizon=2) == 0.3


def _albl_rounds(strategy, ctx, pool, rounds, start=0):
    picks = []
    for r in range(start, rounds):
        acquisition = strategy.select(jax.random.fold_in(KEY, r), ctx, pool, 4)
        picks.append((acquisition.indices.tolist(), acquisition.objective))
        pool = pool.reveal(acquisition.indices)
    return picks, pool


def test_albl_rewards_its_arm_and_resumes_from_its_state():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3))
    logits[np.arange(60), labels] += 1.5         # a fairly accurate "model"
    ctx = TableContext(logits, rng.normal(size=(60, 5)), labels)
    pool = Pool(num_samples=60, labeled=(0, 1, 2))

    reference = make_strategy("albl", horizon=4)
    picks, _ = _albl_rounds(reference, ctx, pool, 4)
    state = reference.state_dict()
    assert state["round"] == 4 and len(state["queried"]) == 16 and len(state["rewards"]) == 3

    # Reward of round 1 by hand: IW-ACC over the 4 samples queried in round 0.
    queried = np.array(state["queried"][:4])
    correct = logits[queried[:, 0].astype(int)].argmax(1) == labels[queried[:, 0].astype(int)]
    assert state["rewards"][0] == pytest.approx((queried[:, 1] * correct).sum() / (60 * 4))
    assert picks[1][1]["reward"] == pytest.approx(state["rewards"][0])
    # The chosen arm's batch is what was queried, with weights 1/π ≥ 1.
    assert all(w >= 1.0 for _, w in state["queried"])
    assert [o["arm"] for _, o in picks] == state["arm_history"]

    # Resume after round 1 from a JSON round trip of the state: the same run.
    first = make_strategy("albl", horizon=4)
    head, pool_after = _albl_rounds(first, ctx, pool, 2)
    resumed = make_strategy("albl", horizon=4)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail, _ = _albl_rounds(resumed, ctx, pool_after, 4, start=2)
    assert [p for p, _ in head + tail] == [p for p, _ in picks]
    assert resumed.state_dict() == state


def test_albl_options_are_checked():
    with pytest.raises(ValueError, match="p_min"):
        make_strategy("albl", p_min=0.5)
    with pytest.raises(ValueError, match="horizon"):
        make_strategy("albl", horizon=0)
    two_arms = make_strategy("albl", uniform_arm=False)
    with pytest.raises(ValueError, match="uniform_arm"):
        two_arms.load_state_dict(make_strategy("albl").state_dict())


# ---- errors and a real model -------------------------------------------------

ALL = ("margin", "entropy", "least_confidence", "coreset", "badge", "albl")


@pytest.mark.parametrize("name", ALL)
def test_errors_name_the_problem(name):
    pool = Pool(num_samples=6, labeled=(0, 1, 2))
    ctx = TableContext(np.zeros((6, 3)), np.ones((6, 4)))
    with pytest.raises(DataError, match="exceeds"):
        make_strategy(name).select(KEY, ctx, pool, 4)
    bad_logits = np.zeros((6, 3))
    bad_logits[4, 1] = np.nan
    with pytest.raises(ValueError, match="Non-finite logits.*indices \\[4\\]"):
        make_strategy(name).select(KEY, TableContext(bad_logits), pool, 2)
    if name in ("coreset", "badge", "albl"):
        bad_features = np.ones((6, 4))
        bad_features[5, 0] = np.inf
        with pytest.raises(ValueError, match="Non-finite penultimate features"):
            make_strategy(name).select(KEY, TableContext(np.zeros((6, 3)), bad_features),
                                       pool, 2)


def test_every_strategy_runs_on_the_small_cnn():
    model = get_model("cnn", 10)
    variables = model.init(jax.random.PRNGKey(0))
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (48, 28, 28, 1)))
    ctx = AcquisitionContext(model, variables, images, np.arange(48) % 10, batch_size=16)
    pool = Pool(num_samples=48, labeled=tuple(range(10)))
    for name in ALL:
        a = make_strategy(name).select(jax.random.PRNGKey(5), ctx, pool, 6)
        b = make_strategy(name).select(jax.random.PRNGKey(5), ctx, pool, 6)
        assert a.indices.tolist() == b.indices.tolist(), name
        assert a.indices.dtype == np.int64 and len(set(a.indices.tolist())) == 6
        assert not pool.labeled_mask[a.indices].any()
        json.dumps(a.objective)
