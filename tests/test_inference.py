"""npc_jax.inference: the one chunked map, checked against plain numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from npc_jax import inference


def test_chunked_map_equals_the_unchunked_function_and_compiles_once():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(23, 3)).astype(np.float32), rng.normal(size=(23,)).astype(np.float32)
    traces = []

    @jax.jit
    def fn(x, y):
        traces.append(x.shape)
        return {"sum": x.sum(1) + y, "twice": 2 * x}

    out = inference.chunked_map(fn, a, b, chunk_size=5)
    np.testing.assert_allclose(out["sum"], a.sum(1) + b, rtol=1e-6)
    np.testing.assert_allclose(out["twice"], 2 * a)
    assert isinstance(out["sum"], np.ndarray) and out["twice"].shape == (23, 3)
    assert traces == [(5, 3)]   # the last chunk (3 rows) was padded, not recompiled


def test_chunked_map_on_no_rows_keeps_the_output_shapes():
    out = inference.chunked_map(lambda x: (x[:, :2], x.sum(1)), np.zeros((0, 4), np.float32),
                                chunk_size=8)
    assert out[0].shape == (0, 2) and out[1].shape == (0,)


def test_chunked_map_rejects_ragged_inputs_and_bad_chunks():
    with pytest.raises(ValueError, match="one length"):
        inference.chunked_map(lambda x, y: x, np.zeros((3, 1)), np.zeros((4, 1)), chunk_size=2)
    with pytest.raises(ValueError, match="positive int"):
        inference.chunked_map(lambda x: x, np.zeros((3, 1)), chunk_size=0)


def test_pad_rows_repeats_the_last_row():
    x = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(inference.pad_rows(x, 5)[3:], [[4, 5], [4, 5]])
    assert inference.pad_rows(x, 2) is x


def test_check_finite_names_the_rows_and_passes_finite_values():
    inference.check_finite(np.ones((3, 2)), "logits", indices=np.array([7, 8, 9]))
    bad = np.ones((3, 2))
    bad[1, 0] = np.nan
    with pytest.raises(inference.NonFiniteError, match=r"Non-finite logits for 1 pool samples "
                       r"\(e.g. indices \[8\]\)"):
        inference.check_finite(bad, "logits", indices=np.array([7, 8, 9]))
    # One error for every caller: a ValueError to input checks, a FloatingPointError to math.
    assert issubclass(inference.NonFiniteError, ValueError)
    assert issubclass(inference.NonFiniteError, FloatingPointError)
    with pytest.raises(FloatingPointError, match="inf"):
        inference.check_finite(jnp.array([np.inf]), "the kernel")


def test_numpy_rng_is_deterministic_per_key():
    key = jax.random.PRNGKey(3)
    draw = lambda k: inference.numpy_rng(k).choice(1000, 5, replace=False)
    np.testing.assert_array_equal(draw(key), draw(key))
    assert not np.array_equal(draw(key), draw(jax.random.PRNGKey(4)))
