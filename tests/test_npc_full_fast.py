"""npc_full's fast path (issue #17): fused Grams, the screening kernel, compile-once guards.

The fused scorer (images -> Grams in one compiled call per group of batches)
is checked against `ntk.empirical_ntk_fn`; the screening kernel (a subset of
layers, patches projected on their principal directions) against the same
thing computed by hand from the full Jacobian blocks, and as a lower bound of
the full kernel; the screened search against the exact one; and the scoring
steps are traced once per round, not once per chunk (STYLE.md habit 12).
"""
import collections

import jax
import numpy as np
import pytest

from npc_jax import ntk, spectral
from npc_jax.data import Pool, images_to_float
from npc_jax.strategies import AcquisitionContext, kernels
from npc_jax.strategies.npc import NPC, candidate_batches

import toy_config

C = 4


@pytest.fixture(scope="module")
def setup():
    return toy_config.tiny_cnn_context(C, 40, widths=(4, 8, 8, 16))


def _lambda_min(k, labeled, batches):
    return np.array([np.linalg.eigvalsh(k[np.ix_(s, s)])[0] for s in
                     (np.concatenate([labeled, b]) for b in batches)])


@pytest.mark.parametrize("output,normalize", [("logits", False), ("probs", True)])
def test_fused_scores_equal_the_empirical_ntk(setup, output, normalize):
    model, variables, images, ctx = setup
    pool = Pool(num_samples=40, labeled=(0, 7, 11))
    batches = candidate_batches(jax.random.PRNGKey(0), pool, 7, 3)
    with spectral.enable_x64():
        variables64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
        k = np.asarray(ntk.empirical_ntk_fn(model.apply_fn, output=output)(
            variables64, np.asarray(images, np.float64)))
    if normalize:
        d = np.sqrt(np.diag(k))
        k = k / np.outer(d, d)
    expected = _lambda_min(k, pool.labeled_indices, batches)
    # memory_mb for 12 points: groups of 2 batches of 3 (6 points), the last one padded.
    width = C * sum(np.size(a) for a in jax.tree_util.tree_leaves(variables["params"]))
    kernel = kernels.full_kernel(ctx, output=output, exact=True,
                                 memory_mb=12.5 * width * 4 / 2 ** 20)
    if normalize:
        kernel = kernels.normalized(kernel)
    scores = kernel.score(pool.labeled_indices, batches)
    lam = np.linalg.eigvalsh(k)
    np.testing.assert_allclose(scores, expected, atol=3e-5 * lam[-1], rtol=1e-4)


def test_partial_and_projected_jacobians(setup):
    """params_subset=names: the kernel is the sum of those layers' kernels (all
    layers: the full one); bases=V: a layer's weight block contracted with V on
    its input-patch axis (its kernel J P Jᵀ)."""
    model, variables, images, _ = setup
    x = images_to_float(images[:5])

    def gram(subset, bases=None):
        blocks = ntk.jacobian_fn(model.apply_fn, params_subset=subset, flatten=False)(
            variables, x, bases=bases)
        return sum(np.asarray(b, np.float64) @ np.asarray(b, np.float64).T for b in blocks)

    names = tuple(variables["params"])
    full = gram("all")
    single = {name: gram((name,)) for name in names}
    np.testing.assert_allclose(sum(single.values()), full, rtol=1e-5)
    head = ("conv2", "bn2", "conv3", "bn3", "hidden", "classifier")
    np.testing.assert_allclose(gram(head), sum(single[n] for n in head), rtol=1e-5)

    basis, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(72, 5)))  # 3·3·8 entries
    kernel_block = np.asarray(ntk.jacobian_fn(model.apply_fn, params_subset=("conv2",),
                                              flatten=False)(variables, x)[0], np.float64)
    projected = np.einsum("nkf,kr->nrf", kernel_block.reshape(5, 72, -1), basis).reshape(5, -1)
    got = gram(("conv2",), {"conv2": np.asarray(basis, np.float32)})
    np.testing.assert_allclose(got, projected @ projected.T, rtol=1e-4,
                               atol=1e-6 * np.abs(got).max())
    assert np.linalg.eigvalsh(single["conv2"] - got)[0] > -1e-5 * np.abs(got).max()  # ⪯


def test_screen_scores_are_lower_bounds_and_the_pick_is_exact(setup):
    model, variables, images, ctx = setup
    pool = Pool(num_samples=40, labeled=(0, 7, 11))
    batches = candidate_batches(jax.random.PRNGKey(3), pool, 12, 3)
    exact = kernels.full_kernel(ctx, exact=True).score(pool.labeled_indices, batches)
    screened = kernels.full_kernel(ctx, screen_top=4, screen_energy=0.3).score(
        pool.labeled_indices, batches)
    tol = 1e-4 * np.abs(exact).max()
    assert np.all(screened <= exact + tol)              # K_S ⪯ K
    assert np.sum(np.isclose(screened, exact, rtol=1e-4, atol=tol)) >= 4
    best = int(np.argmax(screened))
    np.testing.assert_allclose(screened[best], exact[best], rtol=1e-4, atol=tol)


@pytest.mark.parametrize("key", [0, 1, 2, 3])
def test_screened_npc_full_picks_the_exact_batch(setup, key):
    _, _, _, ctx = setup
    pool = Pool(num_samples=40, labeled=(0, 7, 11, 20))
    fast = NPC(kernel="full", num_candidates=16, screen_top=4).select(
        jax.random.PRNGKey(key), ctx, pool, 3)
    exact = NPC(kernel="full", num_candidates=16, full_exact=True).select(
        jax.random.PRNGKey(key), ctx, pool, 3)
    np.testing.assert_array_equal(fast.indices, exact.indices)
    np.testing.assert_allclose(fast.objective["lambda_min"], exact.objective["lambda_min"],
                               rtol=1e-5)
    assert set(fast.objective) == set(exact.objective)   # NPCObjective's keys, unchanged


def test_screened_npc_full_never_picks_a_duplicate(setup):
    """Proposition 1 through the screen: a batch with a copy scores 0 in any kernel."""
    model, variables, images, _ = setup
    pool_images = np.repeat(images[:10], 3, axis=0)
    ctx = AcquisitionContext(model, variables, pool_images, np.full(30, -1), batch_size=16)
    pool = Pool(num_samples=30, labeled=(0, 3))
    acquisition = NPC(kernel="full", num_candidates=30, screen_top=3).select(
        jax.random.PRNGKey(2), ctx, pool, 4)
    originals = (acquisition.indices // 3).tolist()
    assert len(set(originals)) == 4 and not {0, 1} & set(originals)
    assert acquisition.objective["lambda_min"] > 0
    assert acquisition.objective["random_batches"]["quantiles"]["0.0"] == 0.0


# -- compile-once guards (STYLE.md habit 12) -------------------------------------------


@pytest.fixture
def jacobian_traces(monkeypatch):
    """Counts how often a Jacobian function is traced (called inside jit's tracing)."""
    counts = collections.Counter()
    real = ntk.jacobian_fn

    def counting(*args, **kwargs):
        jac = real(*args, **kwargs)

        def traced(variables, x, bases=None):
            counts[str(kwargs.get("params_subset", "all"))] += 1
            return jac(variables, x, bases=bases)
        return traced

    monkeypatch.setattr(ntk, "jacobian_fn", counting)
    for cached in (kernels._batch_grams_jit, kernels._jacobian_jit):
        cached.cache_clear()
    yield counts
    for cached in (kernels._batch_grams_jit, kernels._jacobian_jit):
        cached.cache_clear()


@pytest.mark.parametrize("full_exact", [True, False])
def test_npc_full_scoring_compiles_once_per_round(setup, jacobian_traces, full_exact):
    _, variables, _, ctx = setup
    screen = str(kernels.default_screen_layers(variables["params"]))
    pool = Pool(num_samples=40, labeled=(0, 7, 11))
    # A 1-batch budget: every batch is its own group (m groups per select).
    strategy = NPC(kernel="full", num_candidates=12, memory_mb=1e-6, full_exact=full_exact,
                   screen_top=3)
    strategy.select(jax.random.PRNGKey(0), ctx, pool, 3)
    first = dict(jacobian_traces)
    # Labeled Jacobians + fused groups (+ the screen's two): traced once each.
    assert first == ({"all": 2} if full_exact else {"all": 2, screen: 2}), first
    jacobian_traces.clear()
    NPC(kernel="full", num_candidates=30, memory_mb=1e-6, full_exact=full_exact,
        screen_top=3).select(jax.random.PRNGKey(2), ctx, pool, 3)  # 2.5× the groups
    # The exact shapes are the same: no retrace. The screen's projections are
    # chosen per round (their ranks follow the data): at most one trace each.
    assert dict(jacobian_traces) == ({} if full_exact else {screen: 2}), dict(jacobian_traces)


def test_npc_last_layer_scoring_compiles_once_per_round(setup, monkeypatch):
    _, _, _, ctx = setup
    traces = []

    def counting_gram(rep_a, rep_b):
        traces.append(rep_a[0].shape)
        return kernels.dot_gram.__wrapped__(rep_a, rep_b)

    counting_gram.__wrapped__ = kernels.dot_gram
    monkeypatch.setattr(kernels, "dot_gram", counting_gram)
    pool = Pool(num_samples=40, labeled=(0, 7, 11))
    NPC(num_candidates=8, chunk_size=4).select(jax.random.PRNGKey(0), ctx, pool, 3)
    few = len(traces)
    assert few <= 3, traces   # K_LL, K_UL, within: once each
    traces.clear()
    NPC(num_candidates=8, chunk_size=4).select(jax.random.PRNGKey(1), ctx, pool, 3)
    NPC(num_candidates=24, chunk_size=4).select(jax.random.PRNGKey(2), ctx, pool, 3)
    # 3× the chunks: only the (|U|, L) cross block may meet a new bucket size.
    assert len(traces) <= 1, traces
