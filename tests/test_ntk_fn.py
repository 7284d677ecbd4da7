"""The pure kernel `ntk.ntk_fn` under jax.jit and jax.vmap equals the chunked host driver."""
import jax
import numpy as np
import pytest

from npc_jax import ntk
from npc_jax.models import get_model

C = 3


@pytest.fixture(scope="module")
def cnn():
    model = get_model("cnn", C, (8, 8, 1), widths=(4, 4, 8, 8), feature_dim=6)
    return model, model.init(jax.random.PRNGKey(0))


def _inputs(n, seed, batch=()):
    return np.asarray(jax.random.uniform(jax.random.PRNGKey(seed), (*batch, n, 8, 8, 1)))


@pytest.mark.parametrize("implementation,subset,output", [
    ("jacobian_contraction", "all", "logits"), ("jacobian_contraction", "all", "probs"),
    ("ntk_vector_products", "all", "logits"), ("jacobian_contraction", "last", "probs"),
    ("closed_form", "last", "logits"), ("closed_form", "last", "probs")])
def test_jit_and_vmap_of_the_pure_kernel_equal_the_host_driver(cnn, implementation, subset,
                                                               output):
    model, variables = cnn
    kw = dict(implementation=implementation, params_subset=subset, output=output,
              features_fn=model.apply_with_features)
    host = ntk.empirical_ntk_fn(model.apply_fn, chunk_size=2, **kw)   # chunked, padded
    pure = ntk.ntk_fn(model.apply_fn, **kw)
    x1, x2 = _inputs(5, 1), _inputs(3, 2)
    expected, expected_sym = host(variables, x1, x2), host(variables, x1)
    scale = np.abs(expected_sym).max()
    np.testing.assert_allclose(jax.jit(pure)(variables, x1, x2), expected, rtol=1e-5,
                               atol=1e-6 * scale)
    np.testing.assert_allclose(jax.jit(pure)(variables, x1), expected_sym, rtol=1e-5,
                               atol=1e-6 * scale)
    # A stack of 2 pairs of sets: vmap (inside jit) over the leading axis.
    xs1, xs2 = _inputs(4, 3, (2,)), _inputs(3, 4, (2,))
    stacked = jax.jit(jax.vmap(pure, in_axes=(None, 0, 0)))(variables, xs1, xs2)
    assert stacked.shape == (2, 4, 3)
    for b in range(2):
        np.testing.assert_allclose(stacked[b], host(variables, xs1[b], xs2[b]), rtol=1e-5,
                                   atol=1e-6 * scale)


def test_pure_kernel_is_differentiable_in_the_inputs(cnn):
    # A traceable kernel composes with grad as well (e.g. a λ_min objective).
    model, variables = cnn
    pure = ntk.ntk_fn(model.apply_fn, params_subset="last")
    x = _inputs(2, 5)
    g = jax.grad(lambda x: pure(variables, x).sum())(x)
    assert g.shape == x.shape and np.all(np.isfinite(g))
