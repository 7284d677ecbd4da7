"""The empirical trace-NTK against neural-tangents and against plain autodiff."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from npc_jax import ntk
from npc_jax.models import CLASSIFIER, get_model

C = 4  # classes of the test models: small, but > 2 so the trace is not trivial


class MLP(nn.Module):
    num_classes: int = C

    @nn.compact
    def __call__(self, x, *, train=False, return_features=False):
        x = x.reshape(x.shape[0], -1)
        h = nn.tanh(nn.Dense(16)(nn.relu(nn.Dense(24)(x))))
        logits = nn.Dense(self.num_classes, name=CLASSIFIER)(h)
        return (logits, h) if return_features else logits


class TinyWRN(nn.Module):
    """Two pre-activation residual blocks with BatchNorm (one strided, 1x1 shortcut)."""

    num_classes: int = C

    @nn.compact
    def __call__(self, x, *, train=False, return_features=False):
        bn = functools.partial(nn.BatchNorm, use_running_average=not train)
        x = nn.Conv(8, (3, 3), use_bias=False)(x)
        for width, stride in ((8, 1), (16, 2)):
            y = nn.relu(bn()(x))
            shortcut = x if stride == 1 else nn.Conv(width, (1, 1), (stride, stride),
                                                     use_bias=False)(y)
            y = nn.Conv(width, (3, 3), (stride, stride), use_bias=False)(y)
            y = nn.Conv(width, (3, 3), use_bias=False)(nn.relu(bn()(y)))
            x = shortcut + y
        h = jnp.mean(nn.relu(bn()(x)), axis=(1, 2))
        logits = nn.Dense(self.num_classes, name=CLASSIFIER)(h)
        return (logits, h) if return_features else logits


def _wrap(module, shape):
    """(apply_fn, features_fn, variables) with non-trivial BatchNorm statistics."""
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
    variables = {"params": variables["params"],
                 "batch_stats": jax.tree_util.tree_map(
                     lambda a: a + 0.3, variables.get("batch_stats", {}))}
    apply_fn = lambda v, x: module.apply(v, x, train=False)
    features_fn = lambda v, x: module.apply(v, x, train=False, return_features=True)
    return apply_fn, features_fn, variables


def _models():
    cnn = get_model("cnn", C, (12, 12, 1))
    return {
        "mlp": (*_wrap(MLP(), (6, 6, 1)), (6, 6, 1)),
        "cnn": (*_wrap(cnn.module, (12, 12, 1)), (12, 12, 1)),
        "wrn": (*_wrap(TinyWRN(), (8, 8, 3)), (8, 8, 3)),
    }


MODELS = _models()


def _inputs(shape, n, seed):
    return np.asarray(jax.random.uniform(jax.random.PRNGKey(seed), (n, *shape)))


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


@pytest.mark.parametrize("name", ["mlp", "cnn", "wrn"])
def test_equals_c_times_neural_tangents(name):
    nt = pytest.importorskip("neural_tangents")
    apply_fn, _, variables, shape = MODELS[name]
    x1, x2 = _inputs(shape, 5, 1), _inputs(shape, 3, 2)
    f = lambda params, x: apply_fn({**variables, "params": params}, x)
    reference = jax.jit(nt.empirical_ntk_fn(
        f, trace_axes=(-1,), vmap_axes=0,
        implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION))
    expected = C * np.asarray(reference(x1, x2, variables["params"]))
    expected_sym = C * np.asarray(reference(x1, None, variables["params"]))
    for implementation in ("jacobian_contraction", "ntk_vector_products"):
        ours = ntk.empirical_ntk_fn(apply_fn, implementation=implementation)
        assert _rel(ours(variables, x1, x2), expected) < 1e-5, implementation
        assert _rel(ours(variables, x1), expected_sym) < 1e-5, implementation


def test_neural_tangents_vector_products_agrees_too():
    nt = pytest.importorskip("neural_tangents")
    apply_fn, _, variables, shape = MODELS["cnn"]
    x1 = _inputs(shape, 4, 3)
    f = lambda params, x: apply_fn({**variables, "params": params}, x)
    reference = jax.jit(nt.empirical_ntk_fn(
        f, trace_axes=(-1,), vmap_axes=0,
        implementation=nt.NtkImplementation.NTK_VECTOR_PRODUCTS))
    ours = ntk.empirical_ntk_fn(apply_fn)
    assert _rel(ours(variables, x1), C * np.asarray(reference(x1, None, variables["params"]))) < 1e-5


@pytest.mark.parametrize("output", ["logits", "probs"])
def test_symmetric_psd_and_chunked_equals_unchunked(output):
    apply_fn, _, variables, shape = MODELS["cnn"]
    x = _inputs(shape, 7, 4)
    full = ntk.empirical_ntk_fn(apply_fn, output=output)(variables, x)
    np.testing.assert_allclose(full, full.T, rtol=1e-6, atol=1e-6 * np.abs(full).max())
    assert np.linalg.eigvalsh(full.astype(np.float64))[0] > -1e-5 * np.abs(full).max()
    for implementation in ("jacobian_contraction", "ntk_vector_products"):
        chunked = ntk.empirical_ntk_fn(apply_fn, output=output, chunk_size=3,
                                       implementation=implementation)
        assert _rel(chunked(variables, x), full) < 1e-5      # 3 chunks, the last padded
        assert _rel(chunked(variables, x, x[:4]), full[:, :4]) < 1e-5


def _autodiff_reference(apply_fn, variables, x1, x2, *, output, last):
    """Σ_c ∇f_c(x1)·∇f_c(x2) from jax.jacrev of the whole batch (no vmap, no chunks)."""
    params = variables["params"]

    def f(diff, x):
        p = {**params, CLASSIFIER: diff} if last else diff
        out = apply_fn({**variables, "params": p}, x)
        return jax.nn.softmax(out) if output == "probs" else out

    diff = params[CLASSIFIER] if last else params
    flat = lambda x: jnp.concatenate(
        [j.reshape(x.shape[0], C, -1) for j in jax.tree_util.tree_leaves(jax.jacrev(f)(diff, x))],
        -1)
    return np.asarray(jnp.einsum("icp,jcp->ij", flat(x1), flat(x2)))


@pytest.mark.parametrize("output", ["logits", "probs"])
def test_full_kernel_equals_batch_autodiff(output):
    apply_fn, _, variables, shape = MODELS["mlp"]
    x1, x2 = _inputs(shape, 4, 5), _inputs(shape, 3, 6)
    expected = _autodiff_reference(apply_fn, variables, x1, x2, output=output, last=False)
    for implementation in ("jacobian_contraction", "ntk_vector_products"):
        got = ntk.empirical_ntk_fn(apply_fn, output=output,
                                   implementation=implementation)(variables, x1, x2)
        assert _rel(got, expected) < 1e-5


@pytest.mark.parametrize("name,output", [("mlp", "probs"), ("cnn", "probs"), ("wrn", "logits")])
def test_last_layer_closed_form_equals_autodiff_on_the_classifier(name, output):
    apply_fn, features_fn, variables, shape = MODELS[name]
    x1, x2 = _inputs(shape, 5, 7), _inputs(shape, 3, 8)
    expected = _autodiff_reference(apply_fn, variables, x1, x2, output=output, last=True)
    for implementation in ("closed_form", "jacobian_contraction", "ntk_vector_products"):
        kernel = ntk.empirical_ntk_fn(apply_fn, implementation=implementation,
                                      params_subset="last", output=output,
                                      features_fn=features_fn, chunk_size=2)
        assert _rel(kernel(variables, x1, x2), expected) < 1e-5, implementation
        assert _rel(kernel(variables, x1), _autodiff_reference(
            apply_fn, variables, x1, x1, output=output, last=True)) < 1e-5


def test_softmax_jacobian_inner_product():
    p = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (5, 6)))
    jp = jax.vmap(lambda v: jnp.diag(v) - jnp.outer(v, v))(p)
    np.testing.assert_allclose(ntk.softmax_jacobian_inner(p, p[:3]),
                               jnp.einsum("iab,jab->ij", jp, jp[:3]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name,subset,output", [
    ("mlp", "all", "probs"), ("cnn", "all", "logits"), ("wrn", "all", "logits"),
    ("wrn", "last", "probs")])
def test_structured_jacobian_equals_plain_vmap_of_jacrev(name, subset, output):
    apply_fn, _, variables, shape = MODELS[name]
    x = _inputs(shape, 3, 10)
    kw = dict(params_subset=subset, output=output)
    plain = ntk.jacobian_fn(apply_fn, structured=False, **kw)(variables, x)
    fast = ntk.jacobian_fn(apply_fn, **kw)(variables, x)
    assert fast.shape == plain.shape
    assert _rel(fast @ fast.T, plain @ plain.T) < 1e-5
    blocks = ntk.jacobian_fn(apply_fn, flatten=False, **kw)(variables, x)
    assert _rel(ntk.gram_of_blocks(blocks, blocks), plain @ plain.T) < 1e-5


def test_jacobian_fn_gram_is_the_kernel():
    apply_fn, _, variables, shape = MODELS["mlp"]
    x = _inputs(shape, 3, 9)
    jac = ntk.jacobian_fn(apply_fn)(variables, x)
    num_params = sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))
    assert jac.shape == (3, C * num_params)
    assert _rel(jac @ jac.T, ntk.empirical_ntk_fn(apply_fn)(variables, x)) < 1e-5


def test_errors_name_the_fix():
    apply_fn, _, variables, shape = MODELS["mlp"]
    with pytest.raises(ValueError, match="closed_form"):
        ntk.empirical_ntk_fn(apply_fn, implementation="closed_form")
    with pytest.raises(ValueError, match="params_subset='last'"):
        ntk.empirical_ntk_fn(apply_fn, implementation="closed_form", features_fn=apply_fn)
    with pytest.raises(ValueError, match="Unknown implementation"):
        ntk.empirical_ntk_fn(apply_fn, implementation="structured")
    with pytest.raises(ValueError, match="last_layer"):
        ntk.empirical_ntk_fn(apply_fn, params_subset="last", last_layer="head")(
            variables, _inputs(shape, 2, 0))
    bad = jax.tree_util.tree_map(lambda a: a * np.nan, variables)
    with pytest.raises(FloatingPointError, match="Non-finite NTK entries"):
        ntk.empirical_ntk_fn(apply_fn)(bad, _inputs(shape, 2, 0))
