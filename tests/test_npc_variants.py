"""NPC's kernel variants: scores equal λ_min of the reference kernel; registry names."""
import jax
import numpy as np
import pytest

from npc_jax import ntk, spectral
from npc_jax.data import Pool
from npc_jax.models import get_model
from npc_jax.strategies import AcquisitionContext, available, make_strategy
from npc_jax.strategies.npc import NPC

import toy_config

C = 4


@pytest.fixture(scope="module")
def setup():
    # 32 channels into the pooling and binary images of varied density: the
    # last-layer kernels' λ_min are then >= 9e-5·max|K| (a random-init net on
    # uniform noise gives 1e-7, below float32's resolution of the features).
    return toy_config.tiny_cnn_context(C, 30, widths=(4, 8, 8, 32))


def _reference(model, variables, images, kernel, output, normalize):
    """The kernel in float64 from end to end (parameters, images, Jacobians)."""
    with spectral.enable_x64():
        variables64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
        k = np.asarray(ntk.empirical_ntk_fn(
            model.apply_fn, params_subset="all" if kernel == "full" else "last",
            output=output)(variables64, np.asarray(images, np.float64)))
    assert k.dtype == np.float64
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
    eigenvalues = np.array([np.linalg.eigvalsh(k[np.ix_(s, s)]) for s in
                            (np.concatenate([pool.labeled_indices, b]) for b in batches)])
    expected, lambda_max = eigenvalues[:, 0], eigenvalues[:, -1]
    # The scores come from the float32 network, whose outputs carry relative
    # errors of a few eps32: λ_min is then known to within n·eps32·λ_max
    # (Weyl). Measured here: at most 0.08 of that; every λ_min is >= 28 times it.
    n = eigenvalues.shape[1]
    tolerance = spectral.roundoff_tolerance(n, lambda_max, np.float32)
    assert np.all(expected > 10 * tolerance)       # the check resolves every score
    np.testing.assert_array_less(np.abs(scores - expected), tolerance)
    scale = np.abs(k).max()
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


def test_float64_default_resolves_the_last_layer_kernel_of_a_trained_network():
    """After training, the last-layer Gram is so ill-conditioned (λ_min/λ_max
    ≈ 4e-8 to 9e-8 here, measured) that float32 scoring reports every batch as
    singular (0) and NPC would take the first batch; the float64 default (on
    for kernel="last") resolves every batch and ranks them as an explicit
    float64 Gram of the same features does."""
    from toy_config import bar_images

    from npc_jax import train
    from npc_jax.strategies.npc import candidate_batches

    images, labels = bar_images(400, 4, np.random.default_rng(0))
    images = images[..., None]
    model = get_model("cnn", 4)
    config = train.TrainConfig(method="supervised", steps=100, batch_size=16, chunk_steps=100,
                               ema_decay=0.0, recalibrate_batches=0)
    labeled = np.arange(40)
    state, _ = train.train(model, config, train.make_train_data(images, labeled, labels[labeled]),
                           jax.random.PRNGKey(0))
    ctx = AcquisitionContext(model, state.eval_variables, images, np.full(400, -1),
                             batch_size=200)
    pool = Pool(num_samples=400, labeled=tuple(labeled))
    batches = candidate_batches(jax.random.PRNGKey(1), pool, 50, 10)

    default = NPC(num_candidates=50)
    scores = default.score(ctx, pool, batches)
    in_float32 = NPC(float64=False).score(ctx, pool, batches)
    assert np.mean(in_float32 == 0.0) > 0.9          # why the default exists

    _, features = ctx.logits_and_features(np.arange(400))
    phi = np.sqrt(4.0) * np.concatenate([np.asarray(features, np.float64),
                                         np.ones((400, 1))], 1)
    eigenvalues = np.array([np.linalg.eigvalsh(phi[s] @ phi[s].T) for s in
                            (np.concatenate([labeled, b]) for b in batches)])
    expected = eigenvalues[:, 0]
    assert np.all(expected / eigenvalues[:, -1] < 1e-6)   # beyond float32's n·eps
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert len(np.unique(scores)) == len(scores)
    acquisition = default.select(jax.random.PRNGKey(1), ctx, pool, 10)
    np.testing.assert_array_equal(acquisition.indices, batches[np.argmax(expected)])
