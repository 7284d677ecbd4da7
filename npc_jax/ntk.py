"""Empirical neural tangent kernels (trace over the output axis).

K(x, x') = Σ_c ∇_θ f_c(x) · ∇_θ f_c(x'): the paper's multi-class kernel, each
C×C block replaced by its trace (neural-tangents' ``trace_axes=(-1,)`` returns
this divided by C, the mean over the axis). f is either the logits or the
softmax probabilities (``output=``); θ is every parameter or only the last
layer's (``params_subset=``). Models are differentiated in inference mode:
``apply_fn(variables, x)`` with ``variables = {"params", "batch_stats"}``, and
only ``variables["params"]`` is differentiated (BatchNorm statistics are
constants of the kernel).

    kernel_fn = empirical_ntk_fn(model.apply_fn, chunk_size=64)   # host driver, chunked
    k = kernel_fn(variables, x1)          # (n1, n1) numpy, reuses x1's Jacobian
    k = kernel_fn(variables, x1, x2)      # (n1, n2)
    pure = ntk_fn(model.apply_fn)         # the same kernel as a traceable jnp function
    k = jax.jit(pure)(variables, x1, x2)  # (n1, n2); jax.vmap over stacks of x1, x2 too

How "jacobian_contraction" is fast (``structured=True``; each checked against
plain vmap(jacrev) in tests/test_ntk.py and tests/test_ntk_fast_paths.py):
Dense/Conv weight Jacobians are formed from each layer's input patches and
its output cotangents (`jacobian_fn`); Dense layers on one vector per sample
stay factored in `ntk_fn`, K = (a1 a2ᵀ) ⊙ (g1 g2ᵀ); non-overlapping max-pools
are differentiated as reshape + max (`_fast_pooling`); a symmetric kernel
computes only its Gram blocks on and below the diagonal (`_symmetric_gram`).
Measured against neural-tangents on seven networks: BENCHMARKS.md, P1 grid.

Closed forms for the last layer f = Wᵀh + b (W: D×C), from the penultimate
features h (``implementation="closed_form"``, needs ``features_fn``):

* logits: ∇f_c = e_c ⊗ [h, 1], so K(x, x') = C · (h·h' + 1). It is the Gram
  matrix of the explicit feature map φ(x) = √C · [h, 1].
* probs: p = softmax(z) has ∂p/∂z = J_p = diag(p) − ppᵀ (symmetric), so
  ∇p_a = Σ_c (J_p)_ac ∇z_c and K(x, x') = ⟨J_p, J_p'⟩_F · (h·h' + 1). With
  s = p·p', ⟨J_p, J_p'⟩_F = s − p·p'² − p²·p' + s², computed from (n, C)
  probabilities, never from C×C matrices.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from npc_jax.inference import check_finite, chunked_map, pad_rows

__all__ = ["CLASSIFIER", "IMPLEMENTATIONS", "OUTPUTS", "SUBSETS", "empirical_ntk_fn",
           "gram_of_blocks", "jacobian_fn", "last_layer_feature_map", "last_layer_ntk",
           "last_layer_probs_ntk", "ntk_fn", "patch_moments", "representation_bytes",
           "softmax_jacobian_inner"]

CLASSIFIER = "classifier"  # the name of the last Dense in npc_jax.models

IMPLEMENTATIONS = ("jacobian_contraction", "ntk_vector_products", "closed_form")
OUTPUTS = ("logits", "probs")
SUBSETS = ("all", "last")


# -- closed forms for the last layer ---------------------------------------------


def last_layer_feature_map(features: jax.Array, num_classes: int) -> jax.Array:
    """φ with φ(x)·φ(x') = the last-layer trace-NTK on logits.

    Args:
      features: (n, D) penultimate features h.
      num_classes: C.

    Returns:
      (n, D + 1) float32: √C · [h, 1].
    """
    features = jnp.asarray(features, jnp.float32)
    ones = jnp.ones((features.shape[0], 1), features.dtype)
    return jnp.sqrt(float(num_classes)) * jnp.concatenate([features, ones], axis=1)


def last_layer_ntk(features1: jax.Array, features2: jax.Array,
                   num_classes: int) -> jax.Array:
    """Closed-form last-layer trace-NTK on logits: (n1, D), (n2, D) -> (n1, n2)."""
    return num_classes * (features1 @ features2.T + 1.0)


def softmax_jacobian_inner(probs1: jax.Array, probs2: jax.Array) -> jax.Array:
    """⟨J_p(x), J_p(x')⟩_F for J_p = diag(p) − ppᵀ, batched over leading axes.

    Args:
      probs1: (..., n1, C) softmax probabilities.
      probs2: (..., n2, C).

    Returns:
      (..., n1, n2): s − p·p'² − p²·p' + s² with s = p·p'.
    """
    s = jnp.einsum("...ic,...jc->...ij", probs1, probs2)
    cross = (jnp.einsum("...ic,...jc->...ij", probs1, probs2 * probs2)
             + jnp.einsum("...ic,...jc->...ij", probs1 * probs1, probs2))
    return s - cross + s * s


def last_layer_probs_ntk(features1, probs1, features2, probs2) -> jax.Array:
    """Closed-form last-layer trace-NTK on softmax outputs.

    Args:
      features1: (n1, D) penultimate features; probs1: (n1, C) probabilities.
      features2: (n2, D); probs2: (n2, C).

    Returns:
      (n1, n2) = ⟨J_p, J_p'⟩_F · (h·h' + 1).
    """
    return softmax_jacobian_inner(probs1, probs2) * (features1 @ features2.T + 1.0)


# -- autodiff kernels ------------------------------------------------------------


def _check(implementation, params_subset, output):
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"Unknown implementation {implementation!r}; choose one of "
                         f"{IMPLEMENTATIONS}.")
    names = isinstance(params_subset, tuple) and all(isinstance(n, str) for n in params_subset)
    if not (names or params_subset in SUBSETS):
        raise ValueError(f"params_subset must be 'all', 'last' or a tuple of layer names, got "
                         f"{params_subset!r}.")
    if output not in OUTPUTS:
        raise ValueError(f"output must be 'logits' or 'probs', got {output!r}.")
    if implementation == "closed_form" and params_subset != "last":
        raise ValueError("implementation='closed_form' exists only for params_subset='last' "
                         "(the full network's kernel needs 'jacobian_contraction' or "
                         "'ntk_vector_products').")


def _split_params(variables, params_subset: str, last_layer: str):
    """(the differentiated parameters, a function rebuilding `variables` from them)."""
    params = variables["params"]
    if params_subset == "all":
        return params, lambda diff: {**variables, "params": diff}
    if isinstance(params_subset, tuple):   # top-level parameter collections by name
        missing = sorted(set(params_subset) - set(params))
        if missing:
            raise ValueError(f"No layers named {missing} among the model's parameters "
                             f"{sorted(params)}.")
        diff = {name: params[name] for name in params_subset}
        return diff, lambda d: {**variables, "params": {**params, **d}}
    if last_layer not in params:
        raise ValueError(f"No layer named {last_layer!r} among the model's parameters "
                         f"{sorted(params)}; pass last_layer=<name of the last Dense>.")
    return params[last_layer], lambda diff: {**variables, "params": {**params, last_layer: diff}}


def _single_output_fn(apply_fn, output):
    """g(variables, x) -> (C,) for one unbatched input x."""
    def g(variables, x):
        out = apply_fn(variables, x[None])[0]
        return jax.nn.softmax(out) if output == "probs" else out
    return g


def jacobian_fn(apply_fn: Callable, *, params_subset: str = "all", output: str = "logits",
                last_layer: str = CLASSIFIER, structured: bool = True,
                flatten: bool = True) -> Callable:
    """Per-sample Jacobians, flattened so that the trace-NTK is J1 @ J2ᵀ.

    Args:
      apply_fn: ``apply_fn(variables, x) -> (n, C)`` logits, inference mode.
      params_subset: "all", "last" (only ``variables["params"][last_layer]``), or
        a tuple of top-level layer names (only those layers' parameters: a
        partial kernel, ⪯ the full one; the backward pass stops at the
        earliest of them).
      output: "logits" or "probs" (softmax of the logits).
      structured: form Dense/Conv weight Jacobians from layer inputs and
        output cotangents (fast, see below); False: plain vmap of jacrev.
      flatten: return one (n, C·P) array; False returns a list of (n, C·p_l)
        blocks, one per parameter array, whose Gram matrices sum to the
        kernel (saves the concatenation copy).

    Returns:
      ``jac(variables, x) -> (n, C·P)`` float32 (or the list of blocks) for x
      (n, ...), P the number of differentiated parameters. The order of the
      C·P entries is fixed but unspecified. Not jitted (jit the caller).
    """
    _check("jacobian_contraction", params_subset, output)
    if structured:
        # Needs Flax modules and dict params; anything else takes the plain path.
        blocks_fn = _structured_jacobian_fn(apply_fn, params_subset, output, last_layer)
    else:
        blocks_fn = _plain_jacobian_fn(apply_fn, params_subset, output, last_layer)
    if not flatten:
        return blocks_fn
    return lambda variables, x: jnp.concatenate(blocks_fn(variables, x), axis=1)


def _plain_jacobian_fn(apply_fn, params_subset, output, last_layer):
    g = _single_output_fn(apply_fn, output)

    def jac(variables, x):
        diff, rebuild = _split_params(variables, params_subset, last_layer)
        tree = jax.vmap(jax.jacrev(lambda d, x1: g(rebuild(d), x1)), in_axes=(None, 0))(diff, x)
        return [leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree_util.tree_leaves(tree)]

    return jac


def gram_of_blocks(blocks1, blocks2) -> jax.Array:
    """Σ_l B1_l B2_lᵀ: the kernel from two lists of (n, p_l) Jacobian blocks."""
    return functools.reduce(jnp.add, [b1 @ b2.T for b1, b2 in zip(blocks1, blocks2)])


# -- structured per-sample Jacobians -------------------------------------------------
#
# vmap(jacrev) of a conv net w.r.t. shared weights asks XLA for per-example
# weight gradients, which it lowers to grouped convolutions and layout
# copies that are slow on CPU. A Dense or Conv layer y = a ⊛ W + b has
# ∂f_c/∂W = Σ_s patch(a)(s) ⊗ ∂f_c/∂y(s): so we differentiate w.r.t. a zero
# perturbation added to each layer's *output* (an ordinary batched backward
# pass, no weight gradients), record each layer's input, and form the
# per-sample weight Jacobians with one batched matmul per layer. Parameters
# of any other module (BatchNorm scales, layers called twice, grouped or
# dilated convs) are differentiated directly.


def _conv_supported(mod, x):
    padding = mod.padding
    pairs = (isinstance(padding, (tuple, list))
             and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in padding))
    return (x.ndim == 4 and mod.feature_group_count == 1 and mod.mask is None
            and all(d in (None, 1) or (isinstance(d, (tuple, list)) and set(d) == {1})
                    for d in (mod.input_dilation, mod.kernel_dilation))
            and (padding in ("SAME", "VALID") or pairs))


def _structured_layers(apply_fn, variables, x, diff_paths):
    """{module path: (kind "dense" | "conv", module, output shape/dtype)} of the layers the
    structured path handles: differentiated, supported, called once."""
    import flax.linen as nn

    found, calls = {}, {}

    def interceptor(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        mod = context.module
        if context.method_name == "__call__" and type(mod) in (nn.Dense, nn.Conv):
            path = tuple(mod.scope.path)
            calls[path] = calls.get(path, 0) + 1
            kind = "dense" if type(mod) is nn.Dense else "conv"
            if path in diff_paths and (kind == "dense" or _conv_supported(mod, args[0])):
                found[path] = (kind, mod, jax.ShapeDtypeStruct(y.shape, y.dtype))
        return y

    with nn.intercept_methods(interceptor):
        # A fresh callable: eval_shape caches traces by function, and a cached
        # trace would not run the interceptor.
        # Shapes only (x and variables may be tracers of an enclosing jit or vmap).
        spec = lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))
        jax.eval_shape(lambda v, xs: apply_fn(v, xs), jax.tree_util.tree_map(spec, variables),
                       jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype))
    return {p: v for p, v in found.items() if calls[p] == 1}


def _patches(kind, mod, a):
    """A Dense/Conv layer's input a (n, 1, *in) as (n, S, k): S positions × k inputs each."""
    n = a.shape[0]
    if kind == "conv":
        kh_kw = tuple(mod.kernel_size) if not isinstance(mod.kernel_size, int) else (
            mod.kernel_size,) * 2
        strides = mod.strides or 1
        strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
        patches = jax.lax.conv_general_dilated_patches(
            a.reshape(a.shape[0], *a.shape[2:]), kh_kw, strides, mod.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return patches.reshape(n, -1, patches.shape[-1])        # (n, S, kh·kw·Cin)
    return a.reshape(n, -1, a.shape[-1])                        # (n, S, F_in)


def _layer_weight_jacobian(kind, mod, a, g, basis=None):
    """Per-sample Jacobian blocks of one layer's parameters.

    a: (n, 1, *in) the layer's input; g: (n, C, 1, *out) ∂f/∂(layer output);
    basis: None, or (k, r) orthonormal columns: the kernel's Jacobian is then
    taken w.r.t. W = basis·Z (Z: r × out), i.e. the patches are projected on
    the basis first (a partial kernel: J P Jᵀ ⪯ J Jᵀ, P the projection).
    Returns a list of (n, C·p) arrays (kernel, then bias).
    """
    n, c = g.shape[:2]
    a = _patches(kind, mod, a)
    if basis is not None:
        a = a @ basis                                           # (n, S, r)
    g = g.reshape(n, c, a.shape[1], g.shape[-1])                # (n, C, S, F_out)
    # Natural dot_general layout (n, k, C, o): the trace kernel is a full inner
    # product per sample, so any fixed order of the entries will do.
    blocks = [jnp.einsum("nsk,ncso->nkco", a, g).reshape(n, -1)]
    if mod.use_bias:
        blocks.append(g.sum(2).reshape(n, -1))
    return blocks


def _recording_interceptor(layers: dict, inputs: dict, eps: dict | None = None):
    """A flax method interceptor: records the input of every structured Dense/Conv
    layer of `layers` in `inputs` and, with `eps`, adds ``eps[path]`` to its output
    (the zero handle through which the output cotangents are differentiated)."""
    import flax.linen as nn

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        path = tuple(mod.scope.path) if context.method_name == "__call__" else None
        if path in layers and type(mod) in (nn.Dense, nn.Conv):
            inputs[path] = args[0]
            out = next_fun(*args, **kwargs)
            return out if eps is None else out + eps[path]
        return next_fun(*args, **kwargs)

    return interceptor


def _structured_jacobian_fn(apply_fn, params_subset, output, last_layer, factor_dense=False):
    """jac(variables, x) -> list of (n, C·p_l) blocks whose Gram sum is the kernel.

    factor_dense=True: jac returns ``(blocks, factors)`` instead, where each
    Dense layer applied to one vector per sample (S = 1) is left factored as
    ``(a (n, F_in [+ 1 for the bias]), g (n, C·F_out))``, its weight (and bias)
    Jacobian being [a, 1] ⊗ g_c per class: its kernel is (a1 a2ᵀ) ⊙ (g1 g2ᵀ)
    (`_factor_gram`), n1·n2·(F_in + C·F_out) products instead of forming
    n·C·F_in·F_out Jacobian entries and n1·n2·C·F_in·F_out products.
    """
    import flax.linen as nn
    from flax.traverse_util import flatten_dict, unflatten_dict

    softmax = output == "probs"

    def jac(variables, x, bases=None):
        diff, rebuild = _split_params(variables, params_subset, last_layer)
        if not hasattr(diff, "items"):
            if bases:
                raise ValueError("bases need the structured Jacobian (Flax Dense/Conv layers).")
            blocks = _plain_jacobian_fn(apply_fn, params_subset, output, last_layer)(
                variables, x)
            return (blocks, []) if factor_dense else blocks
        prefix = (last_layer,) if params_subset == "last" else ()
        flat = flatten_dict(diff)
        diff_paths = {prefix + k[:-1] for k in flat}
        layers = _structured_layers(apply_fn, variables, x, diff_paths)
        # Parameters of structured layers are constants; the rest is differentiated.
        other = {k: v for k, v in flat.items() if prefix + k[:-1] not in layers}

        def single(eps, other_params, x1, variables):
            # Closes over no array (all are arguments), for _fast_pooling's retrace.
            inputs = {}
            interceptor = _recording_interceptor(layers, inputs, eps)
            diff, rebuild = _split_params(variables, params_subset, last_layer)
            params = unflatten_dict({**flatten_dict(diff), **other_params})
            with nn.intercept_methods(interceptor):
                out = apply_fn(rebuild(params), x1[None])[0]
            out = jax.nn.softmax(out) if softmax else out
            return out, {p: jax.lax.stop_gradient(v) for p, v in inputs.items()}

        # In the outputs' dtype, so that a float64 network gets float64 cotangents.
        eps0 = {p: jnp.zeros(layers[p][2].shape, layers[p][2].dtype) for p in layers}
        jacobian = jax.vmap(jax.jacrev(_fast_pooling(single), argnums=(0, 1), has_aux=True),
                            in_axes=(None, None, 0, None))
        (d_eps, d_other), inputs = jacobian(eps0, other, x, variables)
        blocks, factors = [], []
        for path in sorted(layers):
            kind, mod, _ = layers[path]
            a, g = inputs[path], d_eps[path]
            basis = (bases or {}).get("/".join(path))
            if factor_dense and kind == "dense" and np.prod(a.shape[1:-1]) == 1:
                # (n, F_in), in g's dtype: float32 images into a float64 network stay exact.
                a = a.reshape(a.shape[0], -1).astype(jnp.result_type(a, g))
                if basis is not None:
                    a = a @ basis
                if mod.use_bias:       # [a, 1]: a1·a2 + 1 carries the bias's kernel
                    a = jnp.concatenate([a, jnp.ones((a.shape[0], 1), a.dtype)], axis=1)
                factors.append((a, g.reshape(g.shape[0], -1)))
                continue
            blocks += _layer_weight_jacobian(kind, mod, a, g, basis)
        for key in sorted(d_other):
            leaf = d_other[key]                                 # (n, C, *shape)
            blocks.append(leaf.reshape(leaf.shape[0], -1))
        return (blocks, factors) if factor_dense else blocks

    return jac


def _factor_gram(factors1, factors2):
    """Σ over factored Dense layers of (a1 a2ᵀ) ⊙ (g1 g2ᵀ): (n1, n2)."""
    return functools.reduce(jnp.add, [(a1 @ a2.T) * (g1 @ g2.T)
                                      for (a1, g1), (a2, g2) in zip(factors1, factors2)])


# -- max-pooling with a cheap backward pass --------------------------------------
#
# XLA:CPU lowers the gradient of a max-pool (reduce_window_max, whose
# transpose is select_and_scatter_add) to a slow scalar loop, and the
# structured Jacobian runs it for n·C cotangents. When the windows do not
# overlap (strides = window, no padding or dilation: nn.max_pool(x, (2, 2),
# (2, 2)) and the like), the same max is a reshape and a reduce_max, whose
# gradient is a mask multiply. The values are identical; the gradients too,
# except at exact ties inside a window, where select_and_scatter gives the
# whole cotangent to the first maximum and reduce_max splits it equally
# (both are subgradients; ties of ReLU zeros meet a zero ReLU derivative
# upstream, so they do not change the kernel). Measured on the bench's
# max-pooling CNN, n = 64: the Jacobian step 2.43 s -> 1.48 s at load ~10.

_POOLS = ("reduce_window_max",)


def _non_overlapping(params) -> bool:
    return (tuple(params["window_dimensions"]) == tuple(params["window_strides"])
            and all(tuple(p) == (0, 0) for p in params["padding"])
            and set(params["base_dilation"]) == {1} and set(params["window_dilation"]) == {1})


def _pool_as_reshape(x, window):
    """max over non-overlapping windows (a trailing remainder dropped, as VALID does)."""
    x = x[tuple(slice(0, d // w * w) for d, w in zip(x.shape, window))]
    shape = [s for d, w in zip(x.shape, window) for s in (d // w, w)]
    return jnp.max(x.reshape(shape), axis=tuple(range(1, 2 * x.ndim, 2)))


def _sub_jaxpr(eqn):
    """The closed jaxpr of a jit (pjit) equation, else None."""
    inner = eqn.params.get("jaxpr")
    return inner if eqn.primitive.name in ("pjit", "jit") and hasattr(inner, "consts") else None


def _has_pool(jaxpr) -> bool:
    return any((eqn.primitive.name in _POOLS and _non_overlapping(eqn.params))
               or (_sub_jaxpr(eqn) is not None and _has_pool(_sub_jaxpr(eqn).jaxpr))
               for eqn in jaxpr.eqns)


def _eval_with_fast_pools(jaxpr, consts, *args):
    """jax.core.eval_jaxpr, with non-overlapping max-pools as reshape + max."""
    from jax.extend.core import Literal

    env = {}
    read = lambda v: v.val if isinstance(v, Literal) else env[v]
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        inner = _sub_jaxpr(eqn)
        if eqn.primitive.name in _POOLS and _non_overlapping(eqn.params):
            outvals = [_pool_as_reshape(invals[0], eqn.params["window_dimensions"])]
        elif inner is not None and _has_pool(inner.jaxpr):
            outvals = _eval_with_fast_pools(inner.jaxpr, inner.consts, *invals)
        else:
            bind = eqn.primitive.get_bind_params(eqn.params)
            # (subfuns, params) on JAX 0.5; params alone on current JAX.
            subfuns, params = bind if isinstance(bind, tuple) else ((), bind)
            outvals = eqn.primitive.bind(*subfuns, *invals, **params)
            outvals = outvals if eqn.primitive.multiple_results else [outvals]
        env.update(zip(eqn.outvars, outvals))
    return [read(v) for v in jaxpr.outvars]


def _fast_pooling(fn):
    """fn with its non-overlapping max-pools rewritten (see above); fn itself when it
    has none. fn must close over no traced array (take every array as an argument)."""

    def wrapped(*args):
        closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
        if not _has_pool(closed.jaxpr):
            return fn(*args)
        outs = _eval_with_fast_pools(closed.jaxpr, closed.consts,
                                     *jax.tree_util.tree_leaves(args))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), outs)

    return wrapped


def patch_moments(apply_fn: Callable, variables, x, weights=None, *, params_subset="all",
                  last_layer: str = CLASSIFIER) -> dict:
    """Second moments of the inputs of the Dense/Conv layers the structured Jacobian forms.

    Args:
      apply_fn, params_subset, last_layer: as in `jacobian_fn`.
      x: (n, ...) float inputs.
      weights: (n,) a weight per sample (e.g. 0 for padding); None: ones.

    Returns:
      {"/".join(layer path): (k, k) Σ over samples (weighted) and positions of a aᵀ}, a
      the layer's input patch (k = kh·kw·C_in for a Conv, F_in for a Dense):
      its leading eigenvectors are the `bases` a `jacobian_fn` Jacobian may
      project on. Traceable (jit it).
    """
    import flax.linen as nn
    from flax.traverse_util import flatten_dict

    diff, _ = _split_params(variables, params_subset, last_layer)
    prefix = (last_layer,) if params_subset == "last" else ()
    paths = {prefix + k[:-1] for k in flatten_dict(diff)}
    layers = _structured_layers(apply_fn, variables, x, paths)
    inputs = {}
    with nn.intercept_methods(_recording_interceptor(layers, inputs)):
        apply_fn(variables, x)
    moments = {}
    for path, (kind, mod, _) in layers.items():
        a = _patches(kind, mod, inputs[path][:, None])                  # (n, S, k)
        w = jnp.ones(a.shape[0], a.dtype) if weights is None else weights
        moments["/".join(path)] = jnp.einsum("n,nsk,nsl->kl", w, a, a)
    return moments


def _nvp_block_fn(apply_fn, params_subset, output, last_layer):
    """block(variables, x1, x2) -> (n1, n2) by jvp ∘ vjp, never storing x1's Jacobian."""
    g = _single_output_fn(apply_fn, output)

    def block(variables, x1, x2):
        diff, rebuild = _split_params(variables, params_subset, last_layer)
        outputs1 = lambda d: jax.vmap(lambda x: g(rebuild(d), x))(x1)  # (n1, C)

        def column(x2_j):
            # All C cotangent vectors of sample j: ∇f_c(x2_j), c = 1..C.
            out, vjp = jax.vjp(lambda d: g(rebuild(d), x2_j), diff)
            num_classes = out.shape[0]

            def one_class(c):
                (v,) = vjp(jax.nn.one_hot(c, num_classes, dtype=out.dtype))
                _, tangent = jax.jvp(outputs1, (diff,), (v,))   # (n1, C)
                return tangent[:, c]

            return jax.vmap(one_class)(jnp.arange(num_classes)).sum(0)  # (n1,)

        return jax.vmap(column, out_axes=1)(x2)

    return block


def _factored(apply_fn, implementation, params_subset, output, last_layer, features_fn,
              structured):
    """(rep_fn, gram_fn): ``rep_fn(variables, x) -> per-point pytree`` and
    ``gram_fn(variables, rep1, rep2) -> (n1, n2)``, both traceable, whose
    composition is the kernel. jacobian_contraction: rep = the Jacobian blocks;
    ntk_vector_products: rep = x itself (the gram does the work); closed_form:
    rep = (h (n, D), logits or probs (n, C))."""
    if implementation == "jacobian_contraction" and structured:
        # rep = (Jacobian blocks, factored Dense layers); the Gram sums both.
        parts = _structured_jacobian_fn(apply_fn, params_subset, output, last_layer,
                                        factor_dense=True)

        def gram(variables, rep1, rep2):
            (blocks1, factors1), (blocks2, factors2) = rep1, rep2
            terms = ([gram_of_blocks(blocks1, blocks2)] if blocks1 else []) + (
                [_factor_gram(factors1, factors2)] if factors1 else [])
            return functools.reduce(jnp.add, terms)

        return parts, gram
    if implementation == "jacobian_contraction":
        blocks = jacobian_fn(apply_fn, params_subset=params_subset, output=output,
                             last_layer=last_layer, structured=structured, flatten=False)
        return blocks, lambda variables, j1, j2: gram_of_blocks(j1, j2)
    if implementation == "ntk_vector_products":
        return (lambda variables, x: x), _nvp_block_fn(apply_fn, params_subset, output,
                                                        last_layer)
    if features_fn is None:
        raise ValueError("implementation='closed_form' needs features_fn(variables, x) -> "
                         "(logits, features), e.g. Model.apply_with_features.")

    def rep_fn(variables, x):
        logits, h = features_fn(variables, x)
        return h, (jax.nn.softmax(logits) if output == "probs" else logits)

    def gram_fn(variables, rep1, rep2):
        (h1, p1), (h2, p2) = rep1, rep2
        if output == "logits":
            return last_layer_ntk(h1, h2, p1.shape[-1])
        return last_layer_probs_ntk(h1, p1, h2, p2)

    return rep_fn, gram_fn


def ntk_fn(apply_fn: Callable, *, implementation: str = "jacobian_contraction",
           params_subset: str = "all", output: str = "logits", last_layer: str = CLASSIFIER,
           features_fn: Callable | None = None, structured: bool = True) -> Callable:
    """The empirical trace-NTK as a pure, traceable JAX function (no chunks, no host).

    Use it inside `jax.jit`, `jax.vmap` or another transformation, as
    neural-tangents' ``empirical_ntk_fn``; `empirical_ntk_fn` is the chunked,
    bounded-memory host driver built on it. Arguments as in `empirical_ntk_fn`.

    Returns:
      ``ntk(variables, x1, x2=None) -> (n1, n2)`` jax array, x1 (n1, ...) and
      x2 (n2, ...) float inputs, the sum over classes of ∇f_c(x1)·∇f_c(x2);
      x2=None reuses x1's per-point representation (Jacobian, features).

          k = jax.jit(ntk_fn(model.apply_fn))(variables, x1, x2)          # (n1, n2)
          ks = jax.vmap(ntk_fn(model.apply_fn), (None, 0, 0))(variables, xs1, xs2)  # (b, n1, n2)
    """
    _check(implementation, params_subset, output)
    rep_fn, gram_fn = _factored(apply_fn, implementation, params_subset, output, last_layer,
                                features_fn, structured)

    def ntk(variables, x1, x2=None):
        rep1 = rep_fn(variables, x1)
        if x2 is None:
            return _symmetric_gram(functools.partial(gram_fn, variables), rep1)
        return gram_fn(variables, rep1, rep_fn(variables, x2))

    return ntk


_SYMMETRIC_BLOCK = 64  # rows per block of a symmetric Gram (see _symmetric_gram)


def _symmetric_gram(gram, rep):
    """gram(rep, rep) for a symmetric kernel, computing only the blocks on and below
    the diagonal: b(b+1)/2 of the b² blocks of ~_SYMMETRIC_BLOCK rows (b = 4 at
    n = 256: 10 of 16 products, 37.5 % fewer Gram FLOPs), mirrored."""
    n = jax.tree_util.tree_leaves(rep)[0].shape[0]
    b = n // _SYMMETRIC_BLOCK
    if b < 2:
        return gram(rep, rep)
    edges = [round(i * n / b) for i in range(b + 1)]
    parts = [jax.tree_util.tree_map(lambda a, i=i: a[edges[i]:edges[i + 1]], rep)
             for i in range(b)]
    below = {(i, j): gram(parts[i], parts[j]) for i in range(b) for j in range(i + 1)}
    return jnp.block([[below[i, j] if j <= i else below[j, i].T for j in range(b)]
                      for i in range(b)])


def representation_bytes(apply_fn: Callable, variables, x, **kwargs) -> int:
    """Bytes per sample that `ntk_fn` holds for x (its Jacobian blocks and factors):
    what to divide a memory budget by to choose `empirical_ntk_fn`'s chunk_size.

    Args:
      apply_fn, kwargs: as in `ntk_fn`; x: (n, ...) inputs (only shapes are used).
    """
    rep_fn, _ = _factored(apply_fn, kwargs.pop("implementation", "jacobian_contraction"),
                          kwargs.pop("params_subset", "all"), kwargs.pop("output", "logits"),
                          kwargs.pop("last_layer", CLASSIFIER), kwargs.pop("features_fn", None),
                          kwargs.pop("structured", True))
    if kwargs:
        raise TypeError(f"Unexpected arguments {sorted(kwargs)}.")
    spec = lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))
    shapes = jax.eval_shape(rep_fn, jax.tree_util.tree_map(spec, variables),
                            jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), jnp.float32))
    return int(sum(np.prod(a.shape) * a.dtype.itemsize
                   for a in jax.tree_util.tree_leaves(shapes)))


def empirical_ntk_fn(apply_fn: Callable, *, implementation: str = "jacobian_contraction",
                     params_subset: str = "all", output: str = "logits",
                     chunk_size: int | None = None, last_layer: str = CLASSIFIER,
                     features_fn: Callable | None = None,
                     structured: bool = True) -> Callable:
    """The empirical trace-NTK of a model, as a host function of its variables, chunked.

    Built on the pure `ntk_fn`: one jitted call when every input fits one
    chunk, else blocks of chunk × chunk points (each row chunk's
    representation computed once), assembled on the host.

    Args:
      apply_fn: ``apply_fn(variables, x) -> (n, C)`` logits in inference mode.
      implementation: "jacobian_contraction" (vmap of per-sample jacrev, then
        one matmul per block; fastest when C·P·chunk fits memory),
        "ntk_vector_products" (jvp ∘ vjp; memory of one Jacobian per chunk
        sample, more FLOPs), or "closed_form" (params_subset="last" only; needs
        `features_fn`).
      params_subset: "all" parameters or the "last" layer's (`last_layer`).
      output: "logits", or "probs" for the softmax outputs.
      chunk_size: samples per Jacobian (memory ≈ chunk·C·P·4 bytes per
        operand); None puts all samples in one chunk.
      last_layer: the name of the last Dense in ``variables["params"]``.
      features_fn: ``features_fn(variables, x) -> (logits, penultimate
        features)``, for implementation="closed_form".
      structured: for "jacobian_contraction", build Dense/Conv weight
        Jacobians from layer inputs and output cotangents (`jacobian_fn`).

    Returns:
      ``ntk(variables, x1, x2=None) -> (n1, n2)`` float32 numpy array, the sum
      over classes of ∇f_c(x1)·∇f_c(x2). With x2=None the symmetric block of
      x1 is computed once per pair of chunks and mirrored.
    """
    _check(implementation, params_subset, output)
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}.")
    rep_fn, gram_fn = _factored(apply_fn, implementation, params_subset, output, last_layer,
                                features_fn, structured)
    whole = jax.jit(ntk_fn(apply_fn, implementation=implementation, params_subset=params_subset,
                           output=output, last_layer=last_layer, features_fn=features_fn,
                           structured=structured))
    rep, gram = jax.jit(rep_fn), jax.jit(gram_fn)
    # The closed form's representation is a few floats per point: hold all of it.
    hold_all = implementation == "closed_form"

    def ntk(variables, x1, x2=None):
        x1 = np.asarray(x1, np.float32)
        symmetric = x2 is None
        x2 = x1 if symmetric else np.asarray(x2, np.float32)
        size = chunk_size or max(len(x1), len(x2), 1)
        if len(x1) <= size and len(x2) <= size:  # one block: one compiled call
            return _finite(whole(variables, x1) if symmetric else whole(variables, x1, x2))
        if hold_all:
            rep1 = chunked_map(functools.partial(rep, variables), x1, chunk_size=size)
            rep2 = rep1 if symmetric else chunked_map(functools.partial(rep, variables), x2,
                                                      chunk_size=size)
            return _finite(gram(variables, rep1, rep2))
        return _finite(_blocks(rep, gram, variables, x1, None if symmetric else x2, size))

    return ntk


def _blocks(rep, gram, variables, x1, x2, size) -> np.ndarray:
    """(n1, n2) from row chunks of x1 against column chunks of x2 (x2=None: x1, and
    only the blocks on and below the diagonal, mirrored). Each row chunk's
    representation is computed once; columns go through `chunked_map`."""
    symmetric = x2 is None
    n1 = len(x1)
    out = None
    for i in range(0, n1, size):
        rows = min(size, n1 - i)
        rep_i = rep(variables, pad_rows(x1[i:i + size], size))
        columns = x1[:i + rows] if symmetric else x2
        # (len(columns), size): K(column, row) for every column, one chunk at a time.
        block = chunked_map(lambda xj: gram(variables, rep(variables, xj), rep_i), columns,
                            chunk_size=size)[:, :rows]
        if out is None:   # float32, or float64 for a float64 network
            out = np.zeros((n1, n1 if symmetric else len(x2)), block.dtype)
        out[i:i + rows, :len(columns)] = block.T
        if symmetric:
            out[:len(columns), i:i + rows] = block
    return out


def _finite(k) -> np.ndarray:
    k = np.asarray(k)
    check_finite(k, "NTK entries (the model's outputs or gradients)")
    return k
