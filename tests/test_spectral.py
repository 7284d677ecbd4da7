import numpy as np
import pytest

from npc_jax.spectral import min_eigenvalue


def _random_gram(rng, n, rank):
    a = rng.normal(size=(n, rank)).astype(np.float32)
    return a @ a.T


def test_matches_numpy_on_a_stack_with_chunking():
    rng = np.random.default_rng(0)
    stack = np.stack([_random_gram(rng, 6, 8) for _ in range(11)])
    expected = np.linalg.eigvalsh(stack.astype(np.float64))[:, 0]
    got = min_eigenvalue(stack, chunk_size=4)  # 3 chunks, the last padded
    assert got.shape == (11,)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_single_matrix_and_rank_deficient_is_zero_not_negative():
    rng = np.random.default_rng(1)
    assert min_eigenvalue(_random_gram(rng, 6, 3)) == 0.0
    k = np.array([[2.0, 1.0], [1.0, 2.0]])
    np.testing.assert_allclose(min_eigenvalue(k), 1.0, rtol=1e-6)


def test_rejects_nonfinite_and_bad_shapes():
    with pytest.raises(FloatingPointError, match="NaN"):
        min_eigenvalue(np.array([[np.nan, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        min_eigenvalue(np.zeros((2, 3)))
