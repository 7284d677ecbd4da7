"""npc_typical: NPC's random search restricted to the typical points of the pool embedding."""
import functools
import json

import jax
import numpy as np
import pytest

from npc_jax.data import Pool
from npc_jax.records import NPCObjective, parse_objective
from npc_jax.strategies import AcquisitionContext, kernels, make_strategy
from npc_jax.strategies.neighbours import knn_mean_distance
from npc_jax.strategies.search import candidate_batches

KEY = jax.random.PRNGKey(4)
KERNEL = functools.partial(kernels.embedding_kernel, source="auto", embed_fn=None, float64=True)


def _ctx(z):
    z = np.asarray(z, np.float32)
    return AcquisitionContext(model=None, variables=None,
                              images=np.zeros((len(z), 2, 2, 1), np.uint8),
                              labels=np.zeros(len(z), np.int64), embedding=z)


def _dense_and_sparse(seed=0):
    """300 points: 100 in four tight groups, 200 scattered (unit-norm geometry)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 12))
    tight = centres[np.arange(100) % 4] + 0.02 * rng.normal(size=(100, 12))
    loose = rng.normal(size=(200, 12)) * 2
    z = np.concatenate([tight, loose])
    perm = rng.permutation(300)
    return z[perm].astype(np.float32), perm < 100   # ... and which points are tight


def test_batches_come_from_the_densest_fraction():
    z, tight = _dense_and_sparse()
    pool = Pool(300, (0, 5))
    strategy = make_strategy("npc_typical", typical_fraction=0.3, kernel_fn=KERNEL,
                             num_candidates=50)
    got = strategy.select(KEY, _ctx(z), pool, 6)
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    densest = np.argsort(knn_mean_distance(unit, 20), kind="stable")[:90]
    expected = np.setdiff1d(densest, [0, 5])
    assert set(got.indices) <= set(expected)
    assert got.objective["typical_points"] == len(expected)
    assert got.objective["candidates"] == "typical" and got.objective["typical_fraction"] == 0.3
    assert got.objective["typicality_k"] == 20 and got.objective["embedding"] == "auto"
    assert tight[got.indices].mean() > 0.9          # the tight groups are the typical ones
    parsed = parse_objective(json.loads(json.dumps(got.objective)))
    assert isinstance(parsed, NPCObjective) and parsed.candidates == "typical"
    assert parsed.typical_points == len(expected) and parsed.to_json() == got.objective
    # The same search as NPC's over those candidates, the same draws.
    batches = candidate_batches(KEY, pool, 50, 6, expected)
    assert any(np.array_equal(got.indices, b) for b in batches)


def test_all_points_typical_is_npc():
    z, _ = _dense_and_sparse(1)
    pool = Pool(300, (3, 4, 7))
    everything = make_strategy("npc_typical", typical_fraction=1.0, kernel_fn=KERNEL,
                               num_candidates=40).select(KEY, _ctx(z), pool, 5)
    plain = make_strategy("npc", kernel_fn=KERNEL, num_candidates=40).select(KEY, _ctx(z),
                                                                             pool, 5)
    np.testing.assert_array_equal(everything.indices, plain.indices)
    assert everything.objective["lambda_min"] == plain.objective["lambda_min"]
    plain_parsed = parse_objective(plain.objective)   # the typical fields are not written
    assert plain_parsed.candidates is None and "candidates" not in plain_parsed.to_json()


def test_bad_options_and_too_few_typical_points():
    z, _ = _dense_and_sparse()
    with pytest.raises(ValueError, match="candidates must be 'pool' or 'typical'"):
        make_strategy("npc", candidates="dense")
    with pytest.raises(ValueError, match="typical_fraction must lie in"):
        make_strategy("npc_typical", typical_fraction=0.0)
    with pytest.raises(ValueError, match="typicality_k must be an int >= 1"):
        make_strategy("npc_typical", typicality_k=0)
    with pytest.raises(ValueError, match="typicality_k must be an int >= 1"):
        make_strategy("npc_typical", typicality_k=True)
    with pytest.raises(ValueError, match="only 2 unlabeled typical points for a batch of 3"):
        make_strategy("npc_typical", typical_fraction=0.007, kernel_fn=KERNEL).select(
            KEY, _ctx(z), Pool(300, ()), 3)
    with pytest.raises(ValueError, match="must be unlabeled pool points"):
        candidate_batches(KEY, Pool(300, (1,)), 10, 2, np.array([1, 2, 3]))
