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


def test_float64_path_and_roundoff_tolerance():
    rng = np.random.default_rng(2)
    stack = np.stack([_random_gram(rng, 8, 12) for _ in range(5)])
    expected = np.linalg.eigvalsh(stack.astype(np.float64))[:, 0]
    got = min_eigenvalue(stack, float64=True)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # Singular matrices (rank 3 of 8) come back as exactly 0 in both precisions,
    # never as round-off of either sign.
    singular = np.stack([_random_gram(rng, 8, 3) for _ in range(6)])
    assert np.all(min_eigenvalue(singular) == 0.0)
    assert np.all(min_eigenvalue(singular, float64=True) == 0.0)


@pytest.mark.parametrize("float64", [False, True])
def test_lobpcg_matches_eigvalsh(float64):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 400))
    gram = (a @ a.T / 400 + 0.5 * np.eye(300)).astype(np.float32)
    expected = np.linalg.eigvalsh(gram.astype(np.float64))[0]
    got = min_eigenvalue(gram, method="lobpcg", float64=float64)
    # The shift σ ≈ λ_max costs eps·σ of absolute accuracy (module docstring).
    sigma = float(np.abs(gram).sum(1).max())
    np.testing.assert_allclose(got, expected, atol=(1e-9 if float64 else 1e-4) * sigma)
    assert min_eigenvalue(gram, lobpcg_above=100) == pytest.approx(expected, abs=1e-4 * sigma)


def test_lobpcg_only_for_single_matrices():
    with pytest.raises(ValueError, match="one"):
        min_eigenvalue(np.stack([np.eye(10)] * 2), method="lobpcg")


def test_enable_x64_is_a_scoped_switch_on_old_and_new_jax():
    # jax.experimental.enable_x64 (JAX < 0.6-ish) was replaced by jax.enable_x64;
    # spectral.enable_x64 works on both and leaves the global setting alone.
    import jax.numpy as jnp

    from npc_jax.spectral import enable_x64

    assert jnp.ones(1).dtype == jnp.float32
    with enable_x64():
        assert jnp.ones(1).dtype == jnp.float64
        assert jnp.asarray(np.ones(1)).dtype == jnp.float64
    assert jnp.ones(1).dtype == jnp.float32


# -- the accelerator path (jit-compiled eigvalsh on padded chunks), forced on the CPU --

def test_device_path_matches_float64_numpy_with_padding_and_one_compile():
    from npc_jax import spectral

    rng = np.random.default_rng(3)
    n = 7
    stack = np.stack([_random_gram(rng, n, 10) for _ in range(11)])
    expected = np.linalg.eigvalsh(stack.astype(np.float64))
    compiled_before = spectral._min_eigenvalue_device._cache_size()
    got = min_eigenvalue(stack, chunk_size=4, backend="device")  # 3 chunks, the last padded
    assert spectral._min_eigenvalue_device._cache_size() == compiled_before + 1
    assert got.shape == (11,) and got.dtype == np.float32
    # float32 eigenvalues carry an absolute error of about n·eps·λ_max.
    tolerance = 4 * spectral.roundoff_tolerance(n, expected[:, -1], np.float32)
    assert np.all(expected[:, 0] > 10 * tolerance)       # resolvable in float32
    np.testing.assert_array_less(np.abs(got - expected[:, 0]), tolerance)
    # The identity matrices that pad the last chunk never leak into the result.
    single = min_eigenvalue(stack[:1], chunk_size=4, backend="device")
    np.testing.assert_array_less(np.abs(single - expected[0, 0]), tolerance[0])


def test_device_path_reports_singular_matrices_as_exact_zeros():
    rng = np.random.default_rng(4)
    singular = np.stack([_random_gram(rng, 8, 3) for _ in range(5)])
    duplicate = _random_gram(rng, 8, 12)
    duplicate[:, 1], duplicate[1, :] = duplicate[:, 0], duplicate[0, :]   # a repeated point
    got = min_eigenvalue(np.concatenate([singular, duplicate[None]]), backend="device")
    np.testing.assert_array_equal(got, 0.0)


def test_min_eigenvalue_jax_is_traceable_and_agrees_with_the_host_path():
    import jax
    import jax.numpy as jnp

    from npc_jax.spectral import min_eigenvalue_jax

    rng = np.random.default_rng(5)
    stack = np.stack([_random_gram(rng, 6, 9) for _ in range(4)] + [_random_gram(rng, 6, 2)])
    got = jax.jit(jax.vmap(min_eigenvalue_jax))(jnp.asarray(stack))
    host = min_eigenvalue(stack, backend="host")
    np.testing.assert_allclose(np.asarray(got), host, rtol=1e-4)
    assert float(got[-1]) == 0.0 and float(host[-1]) == 0.0


def test_backend_errors():
    with pytest.raises(ValueError, match="backend"):
        min_eigenvalue(np.eye(3), backend="gpu")
    with pytest.raises(ValueError, match="float32"):
        min_eigenvalue(np.eye(3), backend="device", float64=True)
