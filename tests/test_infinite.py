"""Infinite-width kernels (npc_jax.infinite) and zero-shot NPC with them (npc_infinite)."""
import itertools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from npc_jax import infinite
from npc_jax.data import Pool
from npc_jax.strategies import AcquisitionContext, available, make_strategy
from npc_jax.strategies.search import sample_batches

SHAPE = (6, 6, 1)


@pytest.fixture
def nt():
    try:   # not importorskip: on jax >= 0.6 neural-tangents fails with AttributeError
        return infinite.import_neural_tangents()[0]
    except ImportError as e:
        pytest.skip(str(e))


def _inputs(n, seed, shape=SHAPE):
    return np.asarray(jax.random.uniform(jax.random.PRNGKey(seed), (n, *shape)))


def _dense_lambda_min(k, rows):
    return np.linalg.eigvalsh(k[np.ix_(rows, rows)].astype(np.float64))[0]


# -- without neural-tangents -------------------------------------------------------------


def test_missing_neural_tangents_names_the_pins(monkeypatch):
    monkeypatch.setitem(sys.modules, "neural_tangents", None)
    monkeypatch.setitem(sys.modules, "neural_tangents.stax", None)
    with pytest.raises(ImportError, match=r"jax<0\.6.*jax==0\.5\.3.*pip install -e \.\[infinite\]"):
        infinite.import_neural_tangents()
    with pytest.raises(ImportError, match=r"neural-tangents 0\.6\.5"):
        infinite.mlp()
    with pytest.raises(ImportError, match=r"pip install -e \.\[infinite\]"):
        make_strategy("npc_infinite")


def test_importing_npc_jax_does_not_import_neural_tangents():
    code = ("import sys, npc_jax, npc_jax.infinite, npc_jax.strategies.npc_infinite; "
            "assert 'npc_infinite' in npc_jax.strategies.available(); "
            "assert 'neural_tangents' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "JAX_PLATFORMS": "cpu"})


# -- the kernels -------------------------------------------------------------------------


def test_analytic_mlp_ntk_is_the_limit_of_wide_finite_ntks(nt):
    x = _inputs(8, 0)
    errors = []
    for width in (32, 256, 2048):
        net = infinite.mlp(width=width, depth=2, num_classes=2)
        analytic = infinite.analytic_ntk_fn(net)(x)
        finite = infinite.finite_ntk_fn(net)
        params = [net.init_fn(jax.random.PRNGKey(s), (-1, *SHAPE))[1] for s in range(4)]
        errors.append(np.mean([infinite.relative_frobenius(finite(p, x), analytic)
                               for p in params]))
    # O(1/√width): measured 0.34, 0.11, 0.05 (4 seeds each).
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.1 and errors[0] > 2 * errors[2], errors


def test_finite_ntk_is_num_classes_times_neural_tangents(nt):
    net = infinite.mlp(width=64, depth=2, num_classes=3)
    x1, x2 = _inputs(5, 1), _inputs(3, 2)
    _, params = net.init_fn(jax.random.PRNGKey(0), (-1, *SHAPE))
    reference = nt.empirical_ntk_fn(net.apply_fn, trace_axes=(-1,), vmap_axes=0,
                                    implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION)
    ours = infinite.finite_ntk_fn(net)
    np.testing.assert_allclose(ours(params, x1, x2), 3 * np.asarray(reference(x1, x2, params)),
                               rtol=1e-4, atol=1e-5)
    comparison = infinite.compare_finite_infinite(net, jax.random.PRNGKey(0), x1)
    np.testing.assert_allclose(comparison.empirical, ours(params, x1), rtol=1e-6)
    # float32 arc-cosines near the diagonal: jitted and eager differ by ~2e-5.
    np.testing.assert_allclose(comparison.analytic, 3 * np.asarray(net.kernel_fn(x1, None, "ntk")),
                               rtol=1e-4)
    assert comparison.relative_frobenius == pytest.approx(
        infinite.relative_frobenius(comparison.empirical, comparison.analytic))


@pytest.mark.parametrize("architecture", ["mlp", "convnet", "wrn"])
def test_kernel_symmetric_psd_and_chunked_equals_unchunked(nt, architecture):
    net = infinite.make_network(architecture, num_classes=4)
    x = _inputs(9, 3)
    _, params = net.init_fn(jax.random.PRNGKey(0), (-1, *SHAPE))
    assert net.apply_fn(params, x).shape == (9, 4)
    full = infinite.analytic_ntk_fn(net, float64=True)(x)
    assert full.shape == (9, 9) and full.dtype == np.float64
    np.testing.assert_allclose(full, full.T, rtol=1e-12, atol=0)
    eig = np.linalg.eigvalsh(full)
    assert eig[0] > 1e-6 * eig[-1]                          # distinct inputs: definite
    # Entries of identical inputs (the diagonal) carry ~√eps error from arccos at 1, and
    # differ between compiled shapes by ~1e-9 in float64: compare to 1e-7.
    chunked = infinite.analytic_ntk_fn(net, chunk_size=4, float64=True)   # 3 chunks, 1 padded
    np.testing.assert_allclose(chunked(x), full, rtol=1e-7)
    np.testing.assert_allclose(chunked(x, x[:5]), full[:, :5], rtol=1e-7)
    np.testing.assert_allclose(infinite.analytic_ntk_fn(net)(x), full, rtol=2e-4)  # float32
    within = infinite.analytic_batch_ntk_fn(net, chunk_size=2, float64=True)
    blocks = within(x.reshape(3, 3, *SHAPE))                    # 2 chunks, 1 padded
    for b in range(3):
        np.testing.assert_allclose(blocks[b], full[3 * b:3 * b + 3, 3 * b:3 * b + 3], rtol=1e-7)
    per_output = infinite.analytic_ntk_fn(net, trace=False, float64=True)(x)
    np.testing.assert_allclose(4 * per_output, full, rtol=1e-12)


def test_bad_options_raise(nt):
    with pytest.raises(ValueError, match="readout"):
        infinite.convnet(readout="max")
    with pytest.raises(ValueError, match="architecture"):
        infinite.make_network("vit")
    with pytest.raises(ValueError, match="architecture"):
        make_strategy("npc_infinite", architecture="vit")
    with pytest.raises(ValueError, match="num_candidates"):
        make_strategy("npc_infinite", num_candidates=0)


# -- npc_infinite --------------------------------------------------------------------------


def _pool_with_duplicates():
    """Labeled A, B, C; unlabeled A', B', C' (copies of labeled), D, D' (a pair), E, F.

    Non-degenerate batches of 2 are the pairs of {D or D', E, F} but not (D, D'):
    5 of the 21 pairs. Every other pair holds a duplicate (Proposition 1: λ_min = 0).
    """
    fresh = _inputs(6, 7)                                        # A B C D E F
    images = np.concatenate([fresh[:3], fresh[:3], fresh[3:4], fresh[3:]])
    #                        0-2 labeled, 3-5 = A'B'C', 6 = D, 7 = D', 8 = E, 9 = F
    pool = Pool(len(images), (0, 1, 2))
    ctx = AcquisitionContext(model=None, variables=None, images=images,
                             labels=np.zeros(len(images), np.int32))
    return images, pool, ctx


@pytest.mark.parametrize("architecture", ["mlp", "convnet"])
def test_scores_equal_dense_reference_and_duplicates_score_zero(nt, architecture):
    images, pool, ctx = _pool_with_duplicates()
    strategy = make_strategy("npc_infinite", architecture=architecture, chunk_size=4,
                             kernel_chunk=3)
    batches = np.array(list(itertools.combinations(pool.unlabeled_indices, 2)))
    scores = strategy.score(ctx, pool, batches)          # ctx.model None: C = 1
    dense = infinite.analytic_ntk_fn(infinite.make_network(architecture, 1), float64=True)(images)
    labeled = list(pool.labeled_indices)
    reference = np.array([_dense_lambda_min(dense, labeled + list(b)) for b in batches])
    source = np.array([0, 1, 2, 0, 1, 2, 3, 3, 4, 5])          # which fresh image each is
    clean = np.array([len(set(source[[0, 1, 2, *b]])) == 5 for b in batches])
    assert clean.sum() == 5
    assert np.all(scores[~clean] == 0.0)                     # singular: exactly 0
    assert np.all(scores[clean] > 0)
    # The dense reference keeps nt's own diagonal (√eps-accurate, see npc_infinite):
    # copies score ~1e-9 there instead of 0, and clean batches agree to ~1e-8.
    np.testing.assert_allclose(scores[clean], reference[clean], rtol=1e-6)
    assert np.all(np.abs(reference[~clean]) < 1e-6 * dense.max())


def test_npc_infinite_picks_the_best_batch_and_avoids_duplicates(nt):
    images, pool, ctx = _pool_with_duplicates()
    key = jax.random.PRNGKey(3)
    strategy = make_strategy("npc_infinite", num_candidates=40)
    assert strategy.name == "npc_infinite" and "npc_infinite" in available()
    acquisition = strategy.select(key, ctx, pool, 2)
    chosen = set(acquisition.indices.tolist())
    assert chosen <= {6, 7, 8, 9} and chosen != {6, 7}           # no duplicate
    # The best of the same 40 random batches, scored from the dense kernel.
    unlabeled = pool.unlabeled_indices
    batches = unlabeled[sample_batches(key, unlabeled, 40, 2)]
    dense = infinite.analytic_ntk_fn(infinite.mlp(num_classes=1), float64=True)(images)
    reference = [_dense_lambda_min(dense, [0, 1, 2] + list(b)) for b in batches]
    objective = acquisition.objective
    assert objective["lambda_min"] == pytest.approx(max(reference), rel=1e-6)
    assert objective["random_batches"]["num"] == 40
    assert objective["random_batches"]["quantiles"]["0.0"] == 0.0      # degenerate ones drawn
    assert objective["lambda_min"] > objective["random_batches"]["mean"]
    assert {"kernel", "architecture", "normalize", "score_seconds"} <= set(objective)
    again = make_strategy("npc_infinite", num_candidates=40).select(key, ctx, pool, 2)
    np.testing.assert_array_equal(again.indices, acquisition.indices)   # same key, same pick


def test_npc_infinite_without_labels_and_normalized(nt):
    images = _inputs(12, 9)
    ctx = AcquisitionContext(model=None, variables=None, images=images,
                             labels=np.zeros(12, np.int32))
    for options in ({}, {"normalize": True}, {"float64": False}):
        acquisition = make_strategy("npc_infinite", num_candidates=10, **options).select(
            jax.random.PRNGKey(0), ctx, Pool(12), 3)
        assert len(set(acquisition.indices.tolist())) == 3
        assert acquisition.objective["lambda_min"] > 0
