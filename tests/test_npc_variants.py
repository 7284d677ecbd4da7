"""NPC's kernel variants: scores equal λ_min of the reference kernel; registry names."""
import jax
import numpy as np
import pytest

from npc_jax import ntk, spectral
from npc_jax.data import Pool
from npc_jax.models import get_model
from npc_jax.strategies import AcquisitionContext, available, make_strategy
from npc_jax.strategies.npc import NPC

C = 4


@pytest.fixture(scope="module")
def setup():
    model = get_model("cnn", C, (10, 10, 1), widths=(4, 6, 6, 6), feature_dim=24)
    variables = model.init(jax.random.PRNGKey(0))
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (30, 10, 10, 1)))
    ctx = AcquisitionContext(model, variables, images, np.full(30, -1), batch_size=16)
    return model, variables, images, ctx


def _reference(model, variables, images, kernel, output, normalize):
    k = ntk.empirical_ntk_fn(model.apply_fn, params_subset="all" if kernel == "full" else "last",
                             output=output)(variables, images)
    if normalize:
        d = np.sqrt(np.diag(k))
        k = k / np.outer(d, d)
    return k


@pytest.mark.parametrize("kernel,output,normalize", [
    ("last", "logits", True), ("last", "probs", False), ("last", "probs", True),
    ("full", "logits", False), ("full", "probs", True)])
def test_scores_equal_lambda_min_of_the_reference_kernel(setup, kernel, output, normalize):
    model, variables, images, ctx = setup
    pool = Pool(num_samples=30, labeled=(0, 5, 9))
    strategy = NPC(num_candidates=6, kernel=kernel, output=output, normalize=normalize,
                   chunk_size=4, jacobian_chunk=5)
    batches = pool.unlabeled_indices[np.random.default_rng(0).permutation(27)[:18].reshape(6, 3)]
    scores = strategy.score(ctx, pool, batches)
    k = _reference(model, variables, images, kernel, output, normalize)
    expected = np.array([np.linalg.eigvalsh(k[np.ix_(s, s)].astype(np.float64))[0] for s in
                         (np.concatenate([pool.labeled_indices, b]) for b in batches)])
    scale = np.abs(k).max()
    np.testing.assert_allclose(scores, expected, rtol=2e-3, atol=1e-5 * scale)
    if kernel == "full":  # a 1-batch memory budget gives the same scores
        tiny = NPC(kernel=kernel, output=output, normalize=normalize, memory_mb=1e-6,
                   jacobian_chunk=5)
        # Equal up to float32 summation order (different block shapes).
        np.testing.assert_allclose(tiny.score(ctx, pool, batches), scores, rtol=1e-3,
                                   atol=1e-6 * scale)


@pytest.mark.parametrize("name,options", [
    ("npc_probs", {}), ("npc_full", {"num_candidates": 20}), ("npc_norm", {}),
    ("npc", {"kernel": "full", "output": "probs", "normalize": True, "num_candidates": 20})])
def test_variants_avoid_duplicates_in_a_repeated_pool(setup, name, options):
    model, variables, images, _ = setup
    pool_images = np.repeat(images[:8], 3, axis=0)
    ctx = AcquisitionContext(model, variables, pool_images, np.full(24, -1), batch_size=16)
    pool = Pool(num_samples=24, labeled=(0, 3))
    acquisition = make_strategy(name, **options).select(jax.random.PRNGKey(2), ctx, pool, 4)
    originals = (acquisition.indices // 3).tolist()
    assert len(set(originals)) == 4 and not {0, 1} & set(originals)
    assert acquisition.objective["lambda_min"] > 0
    assert acquisition.objective["random_batches"]["quantiles"]["0.0"] == 0.0
    assert acquisition.objective["kernel"] == make_strategy(name, **options).kernel


def test_registry_and_option_errors():
    assert {"npc", "npc_probs", "npc_full", "npc_norm"} <= set(available())
    assert make_strategy("npc_full").kernel == "full"
    assert make_strategy("npc_norm").normalize and not make_strategy("npc").normalize
    assert make_strategy("npc_probs", normalize=True).output == "probs"
    with pytest.raises(ValueError, match="kernel"):
        NPC(kernel="middle")
    with pytest.raises(ValueError, match="output"):
        NPC(output="softmax")
    with pytest.raises(ValueError, match="num_candidates"):
        NPC(num_candidates="all")
