"""Infinite-width NTKs through neural-tangents' stax (the only library module importing it).

A stax network is one definition that gives three functions: ``init_fn``
(random parameters of a finite-width instance), ``apply_fn(params, x)`` (its
logits) and the analytic ``kernel_fn``: the NTK Θ that the instance's
empirical NTK tends to as every width grows (NTK parameterisation), without
any training or parameters. The factories here build three such networks:

* `mlp`: Flatten → [Dense(width) → ReLU] × depth → Dense(C).
* `convnet`: the small CNN of `npc_jax.models` without BatchNorm:
  conv3x3 (32, 64, 64, 64; strides 2, 1, 2, 1) with ReLU → readout →
  Dense(hidden) → ReLU → Dense(C).
* `wrn`: a WRN-like residual net without BatchNorm: conv3x3(16k) → groups of
  pre-activation residual blocks (widths 16k, 32k, 64k; strides 1, 2, 2; a
  1×1 conv shortcut where the shape changes) → ReLU → readout → Dense(C).

Readouts and cost. An infinitely wide conv net's kernel tracks, for every
pair of inputs, the covariance between their pixels. ``readout="flatten"``
needs only the covariance of a pixel with the *same* pixel of the other
image: an (H, W) map per pair. ``readout="gap"`` (global average pooling, as
in the finite CNN) needs every pixel pair, (H·W)² per pair of images, and a
3×3 conv then costs 9·(H·W)² per pair and layer. Measured on 28×28
Fashion-MNIST (2 CPU cores shared with other jobs, jitted, per pair of
images; float32 / float64):

    mlp (depth 2)        ~0.5 µs (overheads dominate)
    convnet, flatten     22-30 µs / 22-34 µs
    wrn (k=1), flatten   60-90 µs / 75-170 µs
    convnet, gap         ~20-30 ms
    wrn (k=1), gap       ~300 ms

NPC with m = 1000, q = 20, |L| = 70 needs ≈ 1.8·10⁶ pairs (see
`npc_jax.strategies.npc_infinite`): about 1 s of kernel for the MLP, 40 s for
the flatten convnet, 2-3 min for the flatten WRN, 10-15 h for the GAP
convnet. The flatten readout is the default; with it an infinite CNN's kernel
is that of a locally connected net (weight sharing stops mattering in the
limit: Novak et al. 2019).

Convention. `npc_jax.ntk` uses the paper's multi-class kernel, the trace over
the C logits; the analytic kernel is Θ·I_C, so its trace is C·Θ. Every
kernel this module returns is C·Θ (``trace=False`` gives Θ), which is the
limit of `npc_jax.ntk.empirical_ntk_fn` on a finite instance.

    net = mlp(width=512, depth=2, num_classes=10)
    kernel = analytic_ntk_fn(net, chunk_size=256)
    k = kernel(x1)            # (n1, n1) float numpy, x1 (n1, H, W, C) in [0, 1]
    k = kernel(x1, x2)        # (n1, n2)

neural-tangents 0.6.5 (its last release) imports only with jax < 0.6; it is
imported when a function here is first called, never by ``import npc_jax``.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, NamedTuple

import jax
import numpy as np

from npc_jax.data import images_to_float
from npc_jax.inference import check_finite, chunked_map, pad_rows
from npc_jax.spectral import enable_x64   # works on old and new JAX

ARCHITECTURES = ("mlp", "convnet", "wrn")
READOUTS = ("flatten", "gap")

_MISSING = ("npc_jax.infinite needs neural-tangents 0.6.5, which needs jax<0.6 (the stack in "
            "pyproject: jax==0.5.3, jaxlib==0.5.3, tf2jax==0.3.6, tensorflow-cpu); install it "
            "with `pip install -e .[infinite]` in an environment with jax==0.5.3. "
            "The rest of npc_jax works without it.")


def import_neural_tangents():
    """(neural_tangents, neural_tangents.stax), or ImportError saying how to install them.

    neural-tangents 0.6.5 fails at import on jax >= 0.6 (`jax.core.Jaxpr` was
    removed) with an AttributeError; that is reported the same way.
    """
    try:
        import neural_tangents as nt
        from neural_tangents import stax
    except (ImportError, AttributeError) as e:
        raise ImportError(f"{_MISSING} (import failed: {type(e).__name__}: {e})") from e
    return nt, stax


class Network(NamedTuple):
    """One stax definition, three views of it.

    Attributes:
      init_fn: ``init_fn(key, input_shape) -> (output_shape, params)`` with
        ``input_shape = (-1, H, W, C)``; params a tuple pytree.
      apply_fn: ``apply_fn(params, x) -> (n, num_classes)`` logits for
        x (n, H, W, C) float32.
      kernel_fn: ``kernel_fn(x1, x2, get) -> (n1, n2)`` with get "ntk" or
        "nngp": the analytic per-output kernel Θ, x1 (n1, H, W, C), x2
        (n2, H, W, C) or None for x1 with itself (neural-tangents' kernel_fn).
      num_classes: C, the number of logits.
    """

    init_fn: Callable
    apply_fn: Callable
    kernel_fn: Callable
    num_classes: int


def _network(layers, num_classes) -> Network:
    _, stax = import_neural_tangents()
    init_fn, apply_fn, kernel_fn = stax.serial(*layers)
    return Network(init_fn, apply_fn, kernel_fn, int(num_classes))


def mlp(width: int = 512, depth: int = 2, num_classes: int = 10, *,
        W_std: float = math.sqrt(2.0), b_std: float = 0.1) -> Network:
    """Flatten → [Dense(width) → ReLU] × depth → Dense(num_classes).

    Args:
      width: hidden width of a finite instance (the analytic kernel ignores it).
      depth: number of hidden layers (≥ 1).
      num_classes: C.
      W_std, b_std: weight and bias standard deviations (NTK parameterisation;
        √2 keeps the ReLU activations' scale from layer to layer).

    Returns:
      A `Network` taking (n, H, W, C) (or (n, d)) inputs.
    """
    _, stax = import_neural_tangents()
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}.")
    layers = [stax.Flatten()]
    for _ in range(depth):
        layers += [stax.Dense(width, W_std, b_std), stax.Relu()]
    layers.append(stax.Dense(num_classes, W_std, b_std))
    return _network(layers, num_classes)


def _readout(stax, readout):
    if readout not in READOUTS:
        raise ValueError(f"readout must be 'flatten' or 'gap', got {readout!r} ('gap' is the "
                         "finite CNN's global average pooling; its analytic kernel costs "
                         "(H·W)² per pair of images).")
    return stax.Flatten() if readout == "flatten" else stax.GlobalAvgPool()


def convnet(num_classes: int = 10, *, widths=(32, 64, 64, 64), strides=(2, 1, 2, 1),
            hidden: int = 128, readout: str = "flatten", W_std: float = math.sqrt(2.0),
            b_std: float = 0.1) -> Network:
    """`npc_jax.models.SmallCNN` without BatchNorm, as a stax network.

    conv3x3(widths[i], strides[i], SAME) → ReLU for each i → readout →
    Dense(hidden) → ReLU → Dense(num_classes).

    Args:
      num_classes: C.
      widths, strides: the conv layers (widths matter only for finite instances).
      hidden: width of the penultimate Dense.
      readout: "flatten" (cheap analytic kernel, the default) or "gap" (global
        average pooling as in SmallCNN; analytic kernel ~1000× dearer on 28×28).
      W_std, b_std: weight and bias standard deviations.

    Returns:
      A `Network` taking (n, H, W, C) inputs.
    """
    _, stax = import_neural_tangents()
    layers = []
    for width, stride in zip(widths, strides):
        layers += [stax.Conv(width, (3, 3), (stride, stride), "SAME", W_std, b_std),
                   stax.Relu()]
    layers += [_readout(stax, readout), stax.Dense(hidden, W_std, b_std), stax.Relu(),
               stax.Dense(num_classes, W_std, b_std)]
    return _network(layers, num_classes)


def wrn(num_classes: int = 10, *, width_factor: int = 1, blocks_per_group: int = 1,
        readout: str = "flatten", W_std: float = math.sqrt(2.0),
        b_std: float = 0.1) -> Network:
    """A WRN-like residual net without BatchNorm, as a stax network.

    conv3x3(16k) → for (width, stride) in ((16k, 1), (32k, 2), (64k, 2)):
    `blocks_per_group` residual blocks y = shortcut(x) + conv(ReLU(conv(ReLU(x))))
    (the first of a group strided; the shortcut a 1×1 conv where the width or
    stride changes, else the identity) → ReLU → readout → Dense(num_classes).
    WRN-28-2 is width_factor=2, blocks_per_group=4 (with BatchNorm).

    Args:
      num_classes: C.
      width_factor: k (finite instances only).
      blocks_per_group: residual blocks per group.
      readout: "flatten" (default) or "gap".
      W_std, b_std: weight and bias standard deviations.

    Returns:
      A `Network` taking (n, H, W, C) inputs.
    """
    _, stax = import_neural_tangents()

    def conv(width, size, stride):
        return stax.Conv(width, (size, size), (stride, stride), "SAME", W_std, b_std)

    def block(width, stride, project):
        branch = stax.serial(stax.Relu(), conv(width, 3, stride), stax.Relu(),
                             conv(width, 3, 1))
        shortcut = conv(width, 1, stride) if project else stax.Identity()
        return stax.serial(stax.FanOut(2), stax.parallel(branch, shortcut), stax.FanInSum())

    layers = [conv(16 * width_factor, 3, 1)]
    in_width = 16 * width_factor
    for width, stride in ((16 * width_factor, 1), (32 * width_factor, 2),
                          (64 * width_factor, 2)):
        for b in range(blocks_per_group):
            s = stride if b == 0 else 1
            layers.append(block(width, s, project=(s != 1 or width != in_width)))
            in_width = width
    layers += [stax.Relu(), _readout(stax, readout), stax.Dense(num_classes, W_std, b_std)]
    net = _network(layers, num_classes)

    def kernel_fn(x1, x2=None, get=None, **kwargs):
        # neural-tangents warns that FanInSum assumes independent branches because the
        # identity shortcut has no Dense/Conv; they are independent in the limit (the
        # residual branch ends in a Conv with fresh zero-mean weights).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*FanIn.*independent inputs")
            return net.kernel_fn(x1, x2, get, **kwargs)

    return net._replace(kernel_fn=kernel_fn)


def make_network(architecture: str, num_classes: int = 10, **options) -> Network:
    """`mlp`, `convnet` or `wrn` by name, with that factory's keyword options."""
    factories = {"mlp": mlp, "convnet": convnet, "wrn": wrn}
    if architecture not in factories:
        raise ValueError(f"Unknown architecture {architecture!r}; choose one of "
                         f"{ARCHITECTURES}.")
    return factories[architecture](num_classes=num_classes, **options)


# -- analytic kernels, chunked ----------------------------------------------------------


def _x64(float64: bool):
    return enable_x64() if float64 else contextlib.nullcontext()


def _as_input(x, dtype) -> np.ndarray:
    return np.asarray(images_to_float(np.asarray(x)), dtype)


def analytic_ntk_fn(net: Network, *, chunk_size: int = 256, get: str = "ntk",
                    trace: bool = True, float64: bool = False) -> Callable:
    """The analytic kernel of `net` on any inputs, computed in bounded memory.

    Args:
      net: a `Network`.
      chunk_size: inputs per side of one kernel call: memory ≈ chunk² ×
        (the per-pair state: 1 float for the MLP, H·W for a flatten readout,
        (H·W)² for "gap").
      get: "ntk" or "nngp".
      trace: multiply by C, the trace over the logits (the convention of
        `npc_jax.ntk`); False returns the per-output kernel Θ.
      float64: compute in float64 (inputs, kernel and result).

    Returns:
      ``kernel(x1, x2=None) -> (n1, n2)`` numpy array (float32, or float64),
      x1 (n1, H, W, C) uint8 or float in [0, 1] (or (n1, d)). With x2=None the
      symmetric block is computed once per pair of chunks and mirrored.
    """
    if get not in ("ntk", "nngp"):
        raise ValueError(f"get must be 'ntk' or 'nngp', got {get!r}.")
    if int(chunk_size) != chunk_size or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    scale = float(net.num_classes) if trace else 1.0
    dtype = np.float64 if float64 else np.float32
    pair = jax.jit(lambda a, b: scale * net.kernel_fn(a, b, get))
    sym = jax.jit(lambda a: scale * net.kernel_fn(a, None, get))

    def kernel(x1, x2=None):
        symmetric = x2 is None
        x1 = _as_input(x1, dtype)
        x2 = x1 if symmetric else _as_input(x2, dtype)
        n1, n2 = len(x1), len(x2)
        out = np.zeros((n1, n2), dtype)
        if n1 == 0 or n2 == 0:
            return out
        with _x64(float64):
            if n1 <= chunk_size and n2 <= chunk_size:   # one call, exact shapes
                out[:] = np.asarray(sym(x1) if symmetric else pair(x1, x2))
                return _finite(out)
            # Row chunks against column chunks through `chunked_map` (padded: one
            # compilation for all); a thin side (e.g. |L| labeled points) is not
            # padded to the chunk. Symmetric: blocks on and below the diagonal, mirrored.
            size1, size2 = min(chunk_size, n1), min(chunk_size, n2)
            for i in range(0, n1, size1):
                rows = min(size1, n1 - i)
                xi = pad_rows(x1[i:i + size1], size1)
                columns = x1[:i + rows] if symmetric else x2
                block = chunked_map(lambda xj: pair(xj, xi), columns,
                                    chunk_size=min(size2, len(columns)))[:, :rows]
                out[i:i + rows, :len(columns)] = block.T
                if symmetric:
                    out[:len(columns), i:i + rows] = block
        return _finite(out)

    return kernel


def analytic_batch_ntk_fn(net: Network, *, chunk_size: int = 64, get: str = "ntk",
                          trace: bool = True, float64: bool = False) -> Callable:
    """The analytic kernel within each of many small sets, without the cross terms.

    Args:
      net, get, trace, float64: as in `analytic_ntk_fn`.
      chunk_size: sets per compiled (vmapped) call.

    Returns:
      ``blocks(x_sets) -> (m, q, q)`` numpy array for x_sets (m, q, H, W, C):
      the kernel of each set of q inputs (e.g. NPC's candidate batches).
    """
    scale = float(net.num_classes) if trace else 1.0
    dtype = np.float64 if float64 else np.float32
    within = jax.jit(jax.vmap(lambda a: scale * net.kernel_fn(a, None, get)))

    def blocks(x_sets):
        x_sets = np.asarray(x_sets)
        if not len(x_sets):
            return np.zeros((0, *x_sets.shape[1:2] * 2), dtype)
        with _x64(float64):
            out = chunked_map(lambda chunk: within(_as_input(chunk, dtype)), x_sets,
                              chunk_size=chunk_size)
        return _finite(np.asarray(out, dtype))

    return blocks


def _finite(k: np.ndarray) -> np.ndarray:
    check_finite(k, "analytic NTK entries", fix="check that the inputs are finite (images as "
                 "uint8 or floats in [0, 1])")
    return k


# -- finite width against infinite width ------------------------------------------------


def finite_ntk_fn(net: Network, *, chunk_size: int | None = None,
                  implementation: str = "jacobian_contraction") -> Callable:
    """The empirical trace-NTK of a finite instance of `net` (`npc_jax.ntk`).

    Args:
      net: a `Network`.
      chunk_size: samples per Jacobian (memory ≈ chunk·C·P·4 bytes, P the
        parameter count: use "ntk_vector_products" for very wide instances).
      implementation: as in `npc_jax.ntk.empirical_ntk_fn`.

    Returns:
      ``ntk(params, x1, x2=None) -> (n1, n2)`` float32 numpy array, Σ_c
      ∇f_c(x1)·∇f_c(x2), with params from ``net.init_fn``.
    """
    from npc_jax import ntk as empirical

    apply_fn = lambda variables, x: net.apply_fn(variables["params"], x)
    kernel = empirical.empirical_ntk_fn(apply_fn, implementation=implementation,
                                        chunk_size=chunk_size)
    return lambda params, x1, x2=None: kernel(
        {"params": params}, _as_input(x1, np.float32),
        None if x2 is None else _as_input(x2, np.float32))


def relative_frobenius(a, b) -> float:
    """‖a − b‖_F / ‖b‖_F."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


class Comparison(NamedTuple):
    empirical: np.ndarray      # (n, n) float32 trace-NTK of the finite instance
    analytic: np.ndarray       # (n, n) C·Θ
    relative_frobenius: float  # ‖empirical − analytic‖_F / ‖analytic‖_F


def compare_finite_infinite(net: Network, key: jax.Array, x, *,
                            chunk_size: int | None = None,
                            implementation: str = "jacobian_contraction") -> Comparison:
    """The empirical NTK of one random finite instance of `net` against the analytic NTK.

    Args:
      net: a `Network` (its widths set the finite instance).
      key: PRNG key of the instance's initialisation.
      x: (n, H, W, C) inputs (uint8 or float in [0, 1]) or (n, d).
      chunk_size, implementation: of the empirical kernel (`finite_ntk_fn`).

    Returns:
      A `Comparison`; its relative Frobenius distance shrinks like
      O(1/√width) as the width grows (Jacot et al. 2018).
    """
    x = _as_input(x, np.float32)
    _, params = net.init_fn(key, (-1, *x.shape[1:]))
    empirical = finite_ntk_fn(net, chunk_size=chunk_size,
                              implementation=implementation)(params, x)
    analytic = analytic_ntk_fn(net)(x)
    return Comparison(empirical, analytic, relative_frobenius(empirical, analytic))


__all__ = ["ARCHITECTURES", "Comparison", "Network", "READOUTS", "analytic_batch_ntk_fn",
           "analytic_ntk_fn", "compare_finite_infinite", "convnet", "finite_ntk_fn",
           "import_neural_tangents", "make_network", "mlp", "relative_frobenius", "wrn"]
