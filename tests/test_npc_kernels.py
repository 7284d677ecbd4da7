"""Each kernel of strategies.kernels against a plain reference; the searches on toy kernels."""
import itertools

import jax
import numpy as np
import pytest

from npc_jax import ntk
from npc_jax.data import Pool
from npc_jax.models import get_model
from npc_jax.strategies import AcquisitionContext, kernels, make_strategy, search

C = 3


@pytest.fixture(scope="module")
def setup():
    model = get_model("cnn", C, (8, 8, 1), widths=(4, 4, 8, 8), feature_dim=6)
    variables = model.init(jax.random.PRNGKey(0))
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (12, 8, 8, 1)))
    ctx = AcquisitionContext(model, variables, images, np.full(12, -1), batch_size=5)
    return model, variables, images, ctx


@pytest.fixture(scope="module")
def well_conditioned():
    """As in test_npc_variants: 32 channels into the pooling and binary images of varied
    density, so that the last-layer kernels of a random-init net resolve λ_min."""
    model = get_model("cnn", 4, (10, 10, 1), widths=(4, 8, 8, 32), feature_dim=24)
    variables = model.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    images = (rng.uniform(size=(12, 10, 10, 1))
              < rng.uniform(0.05, 0.95, (12, 1, 1, 1))).astype(np.float32)
    return model, variables, images


def _all_entries(kernel, n, rows=(0, 3, 7, 11), cols=(1, 2, 5)):
    """cross (rows × cols), cross (rows with itself), within (2 sets) and diagonal of `kernel`."""
    rows, cols = np.array(rows), np.array(cols)
    rep_r, rep_c = kernel.represent(rows), kernel.represent(cols)
    sets = np.array([[0, 4, 9], [2, 6, 10]])
    rep_s = tuple(r.reshape(2, 3, *r.shape[1:]) for r in kernel.represent(sets.ravel()))
    return (kernel.cross(rep_r, rep_c), kernel.cross(rep_r), kernel.within(rep_s),
            kernel.diagonal(kernel.represent(np.arange(n))), rows, cols, sets)


def _check_against(kernel, reference, n, rtol=1e-5):
    """`kernel`'s four views equal the blocks of the dense (n, n) `reference`."""
    cross, sym, within, diag, rows, cols, sets = _all_entries(kernel, n)
    scale = np.abs(reference).max()
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)
    close(cross, reference[np.ix_(rows, cols)])
    close(sym, reference[np.ix_(rows, rows)])
    close(within, np.stack([reference[np.ix_(s, s)] for s in sets]))
    close(diag, np.diag(reference))


@pytest.mark.parametrize("output", ["logits", "probs"])
def test_last_layer_kernel_equals_jacobian_contraction_of_the_last_layer(setup, output):
    model, variables, images, ctx = setup
    reference = ntk.empirical_ntk_fn(model.apply_fn, params_subset="last", output=output,
                                     structured=False)(variables, images)   # plain vmap(jacrev)
    _check_against(kernels.last_layer_kernel(ctx, output=output), reference, 12)
    # float64=False computes the same kernel in float32.
    _check_against(kernels.last_layer_kernel(ctx, output=output, float64=False), reference, 12)


@pytest.mark.parametrize("output", ["logits", "probs"])
def test_full_kernel_equals_the_plain_empirical_ntk(setup, output):
    model, variables, images, ctx = setup
    reference = ntk.empirical_ntk_fn(model.apply_fn, output=output,
                                     structured=False)(variables, images)
    kernel = kernels.full_kernel(ctx, output=output, jacobian_chunk=5)
    _check_against(kernel, reference, 12)
    num_params = sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))
    # max_points: the memory budget over C·P float32 per point.
    assert kernels.full_kernel(ctx, memory_mb=1).max_points == 2 ** 20 // (C * num_params * 4)


def test_embedding_kernel_is_the_cosine_of_penultimate_features(setup):
    model, variables, images, ctx = setup
    _, h = model.apply_with_features(variables, images)
    h = np.asarray(h, np.float64)
    unit = h / np.linalg.norm(h, axis=1, keepdims=True)
    reference = unit @ unit.T
    kernel = kernels.embedding_kernel(ctx)
    _check_against(kernel, reference, 12)
    (embedding,) = kernel.represent(np.arange(12))
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1, rtol=1e-6)
    # It is the normalised feature kernel of h.
    _check_against(kernels.normalized(kernels.feature_kernel(h)), reference, 12)
    assert np.all(kernels.unit_rows(np.zeros((2, 3))) == 0)


def test_normalized_divides_once_and_only_once():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(12, 5)) * rng.uniform(0.1, 10, (12, 1))
    k = table @ table.T
    d = np.sqrt(np.diag(k))
    cosine = k / np.outer(d, d)
    once = kernels.normalized(kernels.feature_kernel(table, float64=True))
    _check_against(once, cosine, 12, rtol=1e-12)
    assert np.all(once.diagonal(once.represent(np.arange(12))) == 1.0)
    # Normalising a normalised kernel changes nothing (its diagonal is 1).
    _check_against(kernels.normalized(once), cosine, 12, rtol=1e-12)
    # The searches see it: the λ_min of a normalised batch is that of the cosine Gram.
    score = search.score_batches(once, [0, 1], np.array([[2, 3, 4]]))[0]
    assert score == pytest.approx(np.linalg.eigvalsh(cosine[np.ix_(range(5), range(5))])[0],
                                  rel=1e-10)


def test_precomputed_looks_up_positions():
    table = np.arange(20.0).reshape(10, 2)
    kernel = kernels.precomputed(kernels.feature_kernel(table), [7, 2, 5])
    (rep,) = kernel.represent(np.array([2, 0]))
    np.testing.assert_array_equal(rep, table[[5, 7]])


def test_infinite_kernel_ties_copies_and_matches_the_analytic_kernel():
    from npc_jax import infinite

    try:
        infinite.import_neural_tangents()
    except ImportError as e:
        pytest.skip(str(e))
    fresh = np.asarray(jax.random.uniform(jax.random.PRNGKey(2), (8, 6, 6, 1)))
    images = np.concatenate([fresh, fresh[:4]])             # 8..11 are copies of 0..3
    kernel = kernels.infinite_kernel(images, num_classes=2, chunk_size=2, kernel_chunk=3)
    dense = infinite.analytic_ntk_fn(infinite.mlp(num_classes=2), float64=True)(images)
    _check_against(kernel, dense, 12, rtol=1e-6)
    rep = kernel.represent(np.array([0, 8, 1]))             # a point and its copy
    k = kernel.cross(rep)
    np.testing.assert_array_equal(k[0], k[1])               # identical rows: exactly singular
    assert rep[1][0] == rep[1][1] != rep[1][2]


def test_searches_find_the_hand_computable_best_batch():
    # Unit vectors at angles θ; the labeled point at θ = 0. For q = 1 the Gram of
    # {labeled, x} is [[1, cos θ], [cos θ, 1]]: λ_min = 1 − |cos θ|, best at θ = 90°.
    angles = np.deg2rad([0, 10, 45, 80, 95, 130, 170])
    table = np.stack([np.cos(angles), np.sin(angles)], 1)
    kernel = kernels.feature_kernel(table, float64=True)
    pool = Pool(num_samples=7, labeled=(0,))
    scores = search.score_batches(kernel, [0], np.arange(1, 7)[:, None])
    np.testing.assert_allclose(scores, 1 - np.abs(np.cos(angles[1:])), rtol=1e-12)
    for result in (search.random_search(jax.random.PRNGKey(0), kernel, pool, 1,
                                        num_candidates=60),
                   search.swap_search(jax.random.PRNGKey(0), kernel, pool, 1, num_candidates=0)):
        assert result.indices.tolist() == [4]               # 95°: |cos| = 0.087, the least
        assert result.objective["lambda_min"] == pytest.approx(1 - abs(np.cos(angles[4])))
    # q = 2 in 3-D: three labeled axes' complement. The batch {e1 + e2, e1 − e2}/√2 spans
    # the plane orthogonally; with labeled e3 every pair is scored, the best is that pair.
    table = np.array([[0, 0, 1], [1, 1, 0], [1, -1, 0], [1, 0.9, 0.1], [1, 0, 1]]) / 1.0
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    kernel = kernels.feature_kernel(table, float64=True)
    pool = Pool(num_samples=5, labeled=(0,))
    pairs = np.array(list(itertools.combinations(range(1, 5), 2)))
    scores = search.score_batches(kernel, [0], pairs)
    expected = [np.linalg.eigvalsh(table[[0, *p]] @ table[[0, *p]].T)[0] for p in pairs]
    np.testing.assert_allclose(scores, expected, rtol=1e-10, atol=1e-15)
    assert pairs[np.argmax(scores)].tolist() == [1, 2] and scores.max() == pytest.approx(1.0)
    for result in (search.random_search(jax.random.PRNGKey(1), kernel, pool, 2,
                                        num_candidates=40),
                   search.swap_search(jax.random.PRNGKey(1), kernel, pool, 2, num_candidates=0)):
        assert sorted(result.indices.tolist()) == [1, 2]


@pytest.mark.parametrize("name,options", [
    ("npc", {}), ("npc_probs", {}), ("npc_norm", {}), ("npc_full", {}),
    ("npc_search", {"max_swaps": 5, "swap_candidates": 4}), ("npc_infinite", {})])
def test_proposition_1_through_the_registry(well_conditioned, name, options):
    """A batch holding a copy (of a labeled point or of itself) scores exactly 0."""
    model, variables, images = well_conditioned
    if name == "npc_infinite":
        from npc_jax import infinite
        try:
            infinite.import_neural_tangents()
        except ImportError as e:
            pytest.skip(str(e))
    pool_images = np.concatenate([images, images[:3]])     # 12..14 copy 0..2
    ctx = AcquisitionContext(model, variables, pool_images, np.full(15, -1), batch_size=8)
    pool = Pool(num_samples=15, labeled=(0, 5))
    strategy = make_strategy(name, **options)
    batches = np.array([[12, 3, 4],      # 12 is a copy of labeled 0
                        [1, 13, 4],      # 13 is a copy of 1, in the same batch
                        [1, 3, 4]])      # distinct
    scores = strategy.score(ctx, pool, batches)
    assert scores[0] == 0.0 and scores[1] == 0.0 and scores[2] > 0
    acquisition = strategy.select(jax.random.PRNGKey(0), ctx, pool, 3)
    originals = set((acquisition.indices % 12).tolist())
    assert len(originals) == 3 and 0 not in originals and acquisition.objective["lambda_min"] > 0


def test_injected_kernel_goes_through_the_registry():
    table = np.eye(6)
    table[5] = table[1]                                     # point 5 duplicates point 1
    kernel = kernels.feature_kernel(table, float64=True)
    strategy = make_strategy("npc", num_candidates=30, kernel_fn=lambda ctx: kernel)
    acquisition = strategy.select(jax.random.PRNGKey(0), None, Pool(6, (0,)), 4)
    assert sorted(acquisition.indices.tolist()) in ([1, 2, 3, 4], [2, 3, 4, 5])
    assert acquisition.objective["kernel"] == "custom"
    assert acquisition.objective["lambda_min"] == pytest.approx(1.0)
