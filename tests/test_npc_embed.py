"""npc_embed: NPC's rule (λ_min over labeled ∪ batch, Algorithm 1) on the cosine kernel
of the peers' pool embedding, against a plain numpy reference; Proposition 1; records.
"""
import dataclasses
import functools
import json

import jax
import numpy as np
import pytest

from npc_jax.data import Pool
from npc_jax.models import get_model
from npc_jax.records import LambdaMinObjective, NPCEmbedObjective, parse_objective
from npc_jax.strategies import AcquisitionContext, kernels, make_strategy
from npc_jax.strategies.search import candidate_batches

KEY = jax.random.PRNGKey(3)


def _ctx(z, images=None):
    z = None if z is None else np.asarray(z, np.float32)
    n = len(z) if images is None else len(images)
    images = np.zeros((n, 2, 2, 1), np.uint8) if images is None else images
    return AcquisitionContext(model=None, variables=None, images=images,
                              labels=np.zeros(n, np.int64), embedding=z)


def _reference(z, labeled, batches):
    """λ_min of the cosine Gram over labeled ∪ batch, float64 eigvalsh, per batch."""
    unit = np.asarray(z, np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    return np.array([np.linalg.eigvalsh(unit[idx] @ unit[idx].T)[0]
                     for idx in (np.concatenate([labeled, b]).astype(int) for b in batches)])


@pytest.mark.parametrize("seed,num_labeled,q", [(0, 0, 3), (1, 4, 3), (2, 10, 6), (3, 1, 1)])
def test_picks_equal_the_numpy_reference(seed, num_labeled, q):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(80, 24)) * rng.uniform(0.5, 3, (80, 1))   # norms vary: cosine matters
    labeled = rng.choice(80, num_labeled, replace=False)
    pool = Pool(80, tuple(labeled.tolist()))
    acq = make_strategy("npc_embed", num_candidates=200).select(KEY, _ctx(z), pool, q)
    batches = candidate_batches(KEY, pool, 200, q)      # Algorithm 1's draws for this key
    reference = _reference(z, labeled, batches)
    best = int(np.argmax(reference))
    np.testing.assert_array_equal(acq.indices, batches[best])
    # The embedding is float32 (`pool_embedding`), the reference float64 throughout.
    assert acq.objective["lambda_min"] == pytest.approx(reference[best], rel=1e-5)
    assert acq.objective["random_batches"]["num"] == 200
    assert acq.objective["random_batches"]["mean"] == pytest.approx(reference.mean(), rel=1e-5)


def test_proposition_1_a_duplicate_scores_zero():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(30, 16))
    z[7] = 2.5 * z[3]          # the same direction: a duplicate under the cosine kernel
    z[12] = z[0]               # a duplicate of a labeled point
    pool = Pool(30, (0, 1))
    strategy = make_strategy("npc_embed")
    scores = strategy.score(_ctx(z), pool, np.array([[3, 7, 9], [12, 5, 6], [4, 5, 6]]))
    assert scores[0] == 0 and scores[1] == 0 and scores[2] > 1e-3
    # Every batch that holds 3 and 7 loses to any non-degenerate one.
    acq = strategy.select(KEY, _ctx(z), pool, 4)
    assert not {3, 7} <= set(acq.indices.tolist()) and 12 not in acq.indices


def test_the_embedding_sources_are_those_of_the_peers():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(40, 8)).astype(np.float32)
    images = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1)
    pool = Pool(40, (0, 1, 2))
    pretrained = make_strategy("npc_embed", num_candidates=50).select(
        KEY, _ctx(z, images), pool, 3)
    embed_fn = lambda x: z[x[:, 0, 0, 0].astype(int)] * 7.0   # scale: the kernel is cosine
    custom = make_strategy("npc_embed", num_candidates=50, embed_fn=embed_fn).select(
        KEY, _ctx(None, images), pool, 3)
    np.testing.assert_array_equal(custom.indices, pretrained.indices)
    assert custom.objective["lambda_min"] == pytest.approx(pretrained.objective["lambda_min"],
                                                           rel=1e-6)
    assert pretrained.objective["embedding"] == "auto"
    assert custom.objective["embedding"] == "embed_fn"
    # "features": the current model's penultimate features, unit-normalised.
    model = get_model("cnn", 3, (8, 8, 1), widths=(4, 4, 8, 8), feature_dim=6)
    variables = model.init(jax.random.PRNGKey(0))
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (12, 8, 8, 1)))
    ctx = AcquisitionContext(model, variables, x, np.full(12, -1), batch_size=5, embedding=z[:12])
    _, h = model.apply_with_features(variables, x)
    (rep,) = kernels.embedding_kernel(ctx, "features").represent(np.arange(12))
    np.testing.assert_allclose(rep, kernels.unit_rows(np.asarray(h)), rtol=1e-5, atol=1e-6)
    (rep,) = kernels.embedding_kernel(ctx).represent(np.arange(12))      # auto: pretrained
    np.testing.assert_allclose(rep, kernels.unit_rows(z[:12]), rtol=1e-6)


def test_objective_is_json_and_typed():
    z = np.random.default_rng(0).normal(size=(30, 8))
    acq = make_strategy("npc_embed", num_candidates=20).select(KEY, _ctx(z), Pool(30, (4,)), 2)
    objective = json.loads(json.dumps(acq.objective))
    assert objective["kernel"] == "embedding" and objective["normalize"] is True
    parsed = parse_objective(objective)
    # Typed, so the report's λ_min table compares it with the other NPC kernels.
    assert isinstance(parsed, NPCEmbedObjective) and isinstance(parsed, LambdaMinObjective)
    assert parsed.embedding == "auto" and parsed.lambda_min > 0
    assert parsed.lambda_min == parsed.random_batches.quantile(1.0)
    assert parsed.to_json() == objective


def test_bad_inputs():
    with pytest.raises(ValueError, match="embedding"):
        make_strategy("npc_embed", embedding="pixels")
    with pytest.raises(ValueError, match="num_candidates"):
        make_strategy("npc_embed", num_candidates=0)
    z = np.random.default_rng(0).normal(size=(30, 8))
    z[3, 2] = np.nan
    with pytest.raises(ValueError, match="Non-finite"):
        make_strategy("npc_embed").select(KEY, _ctx(z), Pool(30), 2)


def test_a_lazy_pretrained_embedding_is_made_on_first_use_only():
    """The loop passes the pretrained embedding as a function: strategies that never
    ask for it never compute it, and those that do get the same picks as with
    the array."""
    calls = []
    z = np.random.default_rng(7).normal(size=(40, 8)).astype(np.float32)
    ctx_array = _ctx(z)

    def lazy():
        calls.append(1)
        return z

    ctx_lazy = dataclasses.replace(ctx_array, embedding=functools.cache(lazy))
    make_strategy("passive").select(jax.random.PRNGKey(0), ctx_lazy, Pool(len(z)), 3)
    assert calls == []
    for name in ("typiclust", "npc_embed"):
        a = make_strategy(name).select(jax.random.PRNGKey(0), ctx_array, Pool(len(z)), 3)
        b = make_strategy(name).select(jax.random.PRNGKey(0), ctx_lazy, Pool(len(z)), 3)
        np.testing.assert_array_equal(a.indices, b.indices)
    assert calls == [1]
