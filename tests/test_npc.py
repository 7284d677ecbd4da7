"""NPC against the paper's hand-computable cases (Sec. 3.3, Proposition 1)."""
import jax
import numpy as np
import pytest

from npc_jax.data import Pool
from npc_jax.models import get_model
from npc_jax.strategies import AcquisitionContext, make_strategy
from npc_jax.strategies.kernels import feature_kernel
from npc_jax.strategies.npc import NPC
from npc_jax.strategies.search import sample_batches, score_batches


def TableNPC(table, **kw):
    """NPC whose gradient features come from a fixed table (one row per pool index)."""
    kernel = feature_kernel(np.asarray(table, np.float32), float64=True)
    return NPC(kernel_fn=lambda ctx: kernel, **kw)


def _score(labeled_features, batch_features):
    """score_batches on explicit features: (L, F) labeled, (m, q, F) batches."""
    m, q, f = batch_features.shape
    table = np.concatenate([labeled_features, batch_features.reshape(m * q, f)])
    batches = len(labeled_features) + np.arange(m * q).reshape(m, q)
    return score_batches(feature_kernel(table), np.arange(len(labeled_features)), batches)


def _unit(angle):
    return [np.cos(angle), np.sin(angle)]


def test_section_3_3_example_lambda_is_one_minus_a():
    # Unit-norm gradients; labeled g_l = e1; |<g_l, g_u>| = a  =>  λ_min = 1 - a.
    a = np.array([0.8, 0.3, 0.55])
    g_l = np.array([[1.0, 0.0]])
    candidates = np.array([[[ai, np.sqrt(1 - ai ** 2)]] for ai in a])
    np.testing.assert_allclose(_score(g_l, candidates), 1 - a, rtol=1e-5)


def test_section_3_3_example_npc_picks_the_smaller_overlap():
    a = [0.9, 0.2, 0.6]
    table = [[1.0, 0.0]] + [[ai, np.sqrt(1 - ai ** 2)] for ai in a]
    pool = Pool(num_samples=4, labeled=(0,))
    strategy = TableNPC(table, num_candidates=50)
    acquisition = strategy.select(jax.random.PRNGKey(0), None, pool, 1)
    assert acquisition.indices.tolist() == [2]
    assert acquisition.objective["lambda_min"] == pytest.approx(0.8, rel=1e-5)


def test_proposition_1_duplicate_batch_scores_zero():
    g = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    duplicate_of_labeled = np.array([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    duplicate_within = np.array([[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    fine = np.array([[[0.0, 0.0, 1.0], [0.5, 0.5, 0.7]]])
    scores = _score(g[:1], np.concatenate([duplicate_of_labeled, duplicate_within, fine]))
    assert scores[0] == 0.0 and scores[1] == 0.0 and scores[2] > 0.05


def test_proposition_1_npc_avoids_duplicates_while_distinct_points_exist():
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(6, 12))
    # Pool: the 6 distinct points, each repeated 3 times (the paper's "repeated" pool).
    table = np.repeat(distinct, 3, axis=0)
    pool = Pool(num_samples=18, labeled=(0,))  # a copy of point 0 is labeled
    acquisition = TableNPC(table, num_candidates=300).select(
        jax.random.PRNGKey(1), None, pool, 4)
    chosen_points = acquisition.indices // 3
    assert len(set(chosen_points.tolist())) == 4 and 0 not in chosen_points
    assert acquisition.objective["lambda_min"] > 0
    assert acquisition.objective["random_batches"]["quantiles"]["0.0"] == 0.0


def test_repeated_image_pool_yields_no_duplicate_labels_with_a_real_model():
    model = get_model("cnn", 10)
    variables = model.init(jax.random.PRNGKey(0))
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(3), (12, 28, 28, 1)))
    pool_images = np.repeat(images, 3, axis=0)
    ctx = AcquisitionContext(model, variables, pool_images, np.full(36, -1), batch_size=16)
    pool = Pool(num_samples=36, labeled=(0, 3))
    acquisition = make_strategy("npc", num_candidates=200).select(
        jax.random.PRNGKey(2), ctx, pool, 5)
    originals = (acquisition.indices // 3).tolist()
    assert len(set(originals)) == 5 and not {0, 1} & set(originals)


def test_sampling_is_deterministic_and_without_repeats():
    candidates = np.arange(50)
    b1 = sample_batches(jax.random.PRNGKey(7), candidates, 30, 10)
    b2 = sample_batches(jax.random.PRNGKey(7), candidates, 30, 10)
    b3 = sample_batches(jax.random.PRNGKey(8), candidates, 30, 10)
    np.testing.assert_array_equal(b1, b2)
    assert not np.array_equal(b1, b3)
    assert all(len(set(row)) == 10 for row in b1)


def test_npc_errors():
    with pytest.raises(ValueError, match="num_candidates"):
        NPC(num_candidates=0)
    pool = Pool(num_samples=4, labeled=(0, 1))
    with pytest.raises(ValueError, match="exceeds"):
        TableNPC(np.eye(4)).select(jax.random.PRNGKey(0), None, pool, 3)
    with pytest.raises(ValueError, match="Unknown strategy"):
        make_strategy("npcc")
