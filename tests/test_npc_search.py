"""NPCSearch: never worse than its random start, no duplicates, deterministic."""
import jax
import numpy as np
import pytest

from npc_jax.data import Pool
from npc_jax.strategies import make_strategy
from npc_jax.strategies.kernels import feature_kernel, normalized
from npc_jax.strategies.npc_search import NPCSearch


def TableSearch(table, normalize=False, **kw):
    """NPCSearch on the kernel of a fixed feature table (one row per pool index)."""
    kernel = feature_kernel(np.asarray(table, np.float32), float64=True)
    kernel = normalized(kernel) if normalize else kernel
    return NPCSearch(kernel_fn=lambda ctx: kernel, **kw)


@pytest.mark.parametrize("normalize", [False, True])
def test_search_beats_random_and_avoids_duplicates(normalize):
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(40, 16)) * rng.uniform(0.5, 2, size=(40, 1))
    table = np.repeat(distinct, 2, axis=0)          # every point twice
    pool = Pool(num_samples=80, labeled=(0, 10))
    key = jax.random.PRNGKey(3)
    random_only = TableSearch(table, num_candidates=30, max_swaps=0, greedy=False,
                              normalize=normalize).select(key, None, pool, 6)
    searched = TableSearch(table, num_candidates=30, max_swaps=40, swap_candidates=16,
                           normalize=normalize).select(key, None, pool, 6)
    again = TableSearch(table, num_candidates=30, max_swaps=40, swap_candidates=16,
                        normalize=normalize).select(key, None, pool, 6)
    np.testing.assert_array_equal(searched.indices, again.indices)
    assert searched.objective["lambda_min"] > random_only.objective["lambda_min"]
    originals = searched.indices // 2
    assert len(set(originals.tolist())) == 6 and not {0, 5} & set(originals.tolist())
    # The reported objective is λ_min of the returned batch: an explicit float64
    # Gram of labeled ∪ batch and LAPACK, none of the strategy's own scoring.
    points = np.concatenate([pool.labeled_indices, searched.indices])
    phi = table[points].astype(np.float32).astype(np.float64)
    gram = phi @ phi.T
    if normalize:
        gram = gram / np.sqrt(np.outer(np.diag(gram), np.diag(gram)))
    assert np.linalg.eigvalsh(gram)[0] == pytest.approx(searched.objective["lambda_min"],
                                                       rel=1e-4)


def test_registered_and_rejects_full_kernel():
    assert isinstance(make_strategy("npc_search", max_swaps=3), NPCSearch)
    with pytest.raises(ValueError, match="last-layer"):
        NPCSearch(kernel="full")
