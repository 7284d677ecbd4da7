"""The empirical NTK's fast paths for networks that are not the project's own (issue #17).

Each is checked against the plain reference, vmap(jacrev) of the whole
network (``structured=False``), on small random inputs:

* Dense layers applied to one vector per sample are left factored, K =
  (a1 a2ᵀ) ⊙ (g1 g2ᵀ), never forming their weight Jacobians;
* non-overlapping max-pools are differentiated as reshape + max (no
  select_and_scatter in the compiled Jacobian); overlapping ones are left alone;
* a float64 network gets a float64 kernel (the benchmark's reference).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from npc_jax import ntk, spectral
from npc_jax.models import CLASSIFIER

C = 3


class PoolNet(nn.Module):
    """conv-relu-pool, conv-pool, then flatten or global mean, dense, classifier."""

    pool: str = "max"
    window: int = 2
    stride: int = 2
    flatten: bool = True
    bias: bool = True

    @nn.compact
    def __call__(self, x, *, train=False, return_features=False):
        pool = {"max": nn.max_pool, "avg": nn.avg_pool}[self.pool]
        win, st = (self.window,) * 2, (self.stride,) * 2
        x = pool(nn.relu(nn.Conv(4, (3, 3))(x)), win, st)
        x = pool(nn.gelu(nn.Conv(5, (3, 3), use_bias=False)(x)), win, st)  # no ReLU zeros
        x = x.reshape(x.shape[0], -1) if self.flatten else jnp.mean(x, axis=(1, 2))
        h = jnp.tanh(nn.Dense(6, use_bias=self.bias)(x))
        logits = nn.Dense(C, name=CLASSIFIER)(h)
        return (logits, h) if return_features else logits


class PerPositionDense(nn.Module):
    """A Dense applied at every pixel (S > 1: not factored) and one without bias."""

    @nn.compact
    def __call__(self, x, *, train=False, return_features=False):
        x = nn.relu(nn.Dense(4)(x))                          # (n, H, W, 4)
        x = nn.Dense(5, use_bias=False)(x.reshape(x.shape[0], -1))
        return nn.Dense(C, name=CLASSIFIER)(jnp.tanh(x))


class MLP(nn.Module):
    """Dense layers only, the first fed the images themselves."""

    @nn.compact
    def __call__(self, x, *, train=False, return_features=False):
        x = nn.gelu(nn.Dense(7)(x.reshape(x.shape[0], -1)))
        return nn.Dense(C, name=CLASSIFIER)(nn.Dense(5, use_bias=False)(x))


NETS = {
    "mlp": (MLP(), (4, 4, 1)),
    "maxpool_flatten": (PoolNet(), (9, 9, 2)),      # 9 -> 4 -> 2: remainders dropped
    "maxpool_mean_nobias": (PoolNet(flatten=False, bias=False), (8, 8, 1)),
    "maxpool_overlapping": (PoolNet(window=3, stride=2), (9, 9, 1)),
    "avgpool": (PoolNet(pool="avg"), (8, 8, 1)),
    "per_position_dense": (PerPositionDense(), (3, 3, 2)),
}


def _net(name):
    module, shape = NETS[name]
    variables = {"params": module.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))["params"]}
    return (lambda v, x: module.apply(v, x)), variables, shape


def _x(shape, n, seed):
    return np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (n, *shape)))


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("output", ["logits", "probs"])
def test_fast_kernel_equals_plain_vmap_of_jacrev(name, output):
    apply_fn, variables, shape = _net(name)
    x1, x2 = _x(shape, 5, 1), _x(shape, 3, 2)
    plain = ntk.ntk_fn(apply_fn, output=output, structured=False)
    fast = ntk.ntk_fn(apply_fn, output=output)
    assert _rel(jax.jit(fast)(variables, x1, x2), np.asarray(plain(variables, x1, x2))) < 1e-5
    assert _rel(jax.jit(fast)(variables, x1), np.asarray(plain(variables, x1))) < 1e-5
    chunked = ntk.empirical_ntk_fn(apply_fn, output=output, chunk_size=2)
    assert _rel(chunked(variables, x1), np.asarray(plain(variables, x1))) < 1e-5


def test_dense_layers_are_factored_and_jacobian_fn_still_materialises():
    apply_fn, variables, shape = _net("per_position_dense")
    x = _x(shape, 4, 3)
    blocks, factors = ntk._structured_jacobian_fn(apply_fn, "all", "logits", CLASSIFIER,
                                                  factor_dense=True)(variables, x)
    # The per-pixel Dense (S = 9) is materialised: kernel + bias; the two others factored.
    assert len(blocks) == 2 and len(factors) == 2
    assert factors[0][0].shape == (4, 9 * 4) and factors[1][0].shape == (4, 5 + 1)
    jac = ntk.jacobian_fn(apply_fn)(variables, x)
    num_params = sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))
    assert jac.shape == (4, C * num_params)


def _primitives(jaxpr, names):
    """Every primitive's name in jaxpr and the jaxprs in its equations' params."""
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                sub = item if hasattr(item, "eqns") else getattr(item, "jaxpr", None)
                if hasattr(sub, "eqns"):
                    _primitives(sub, names)
    return names


@pytest.mark.parametrize("name,rewritten", [("maxpool_flatten", True),
                                            ("maxpool_overlapping", False)])
def test_non_overlapping_max_pools_have_no_select_and_scatter(name, rewritten):
    apply_fn, variables, shape = _net(name)
    jaxpr = jax.make_jaxpr(ntk.ntk_fn(apply_fn))(variables, _x(shape, 2, 0)).jaxpr
    names = _primitives(jaxpr, set())
    assert ("select_and_scatter_add" in names) is not rewritten
    assert ("reduce_window_max" in names) is not rewritten


@pytest.mark.parametrize("name", ["maxpool_flatten", "mlp"])
def test_float64_network_gives_a_float64_kernel(name):
    apply_fn, variables, shape = _net(name)
    x = _x(shape, 4, 4)          # float32 images: the first layer's input stays float32
    with spectral.enable_x64():
        v64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
        fast = ntk.empirical_ntk_fn(apply_fn)(v64, x)
        chunked = ntk.empirical_ntk_fn(apply_fn, chunk_size=3)(v64, x)
        plain = ntk.empirical_ntk_fn(apply_fn, structured=False)(v64, x)
    assert fast.dtype == chunked.dtype == plain.dtype == np.float64
    assert _rel(fast, plain) < 1e-12 and _rel(chunked, plain) < 1e-12


@pytest.mark.parametrize("implementation", ["jacobian_contraction", "ntk_vector_products"])
def test_symmetric_gram_in_blocks_equals_the_full_product(monkeypatch, implementation):
    apply_fn, variables, shape = _net("maxpool_mean_nobias")
    x = _x(shape, 7, 5)
    kernel = jax.jit(ntk.ntk_fn(apply_fn, implementation=implementation))
    full = np.asarray(kernel(variables, x, x))
    monkeypatch.setattr(ntk, "_SYMMETRIC_BLOCK", 2)    # 3 blocks of 2-3 rows: 6 of 9
    sym = np.asarray(jax.jit(ntk.ntk_fn(apply_fn, implementation=implementation))(variables, x))
    np.testing.assert_allclose(sym, sym.T, rtol=1e-6)
    assert _rel(sym, full) < 1e-6
