"""Smallest eigenvalues of Gram matrices.

`min_eigenvalue` takes one (n, n) matrix or a stack (b, n, n) and returns
λ_min of each. Stacks are solved in chunks with a dense symmetric solver; a
single large matrix (n > `lobpcg_above`) by LOBPCG on a shifted matrix.

Round-off. A Gram matrix is positive semi-definite, but a computed eigenvalue
carries an absolute error of about n·eps·λ_max (eps of the working dtype), so
a singular matrix (duplicate points, rank deficiency) comes back as a tiny
number of either sign. Any λ_min ≤ n·eps·λ_max is therefore reported as
exactly 0 ("singular to working precision"): every degenerate batch then
scores 0 and compares equal to every other (Proposition 1 of the NPC paper),
and no score is negative.

Backends. On the CPU, numpy's LAPACK (syevd) solves a stack of small matrices
about twice as fast as XLA:CPU's eigvalsh (measured: 1024 matrices of 70×70,
0.45 s vs 0.88 s on 2 cores), and float64 costs the same there ("host"); on
an accelerator the stack is solved on the device by the jit-compiled
`min_eigenvalue_jax` in float32, in fixed-size chunks padded with identity
matrices so that one compilation serves every call ("device").
``float64=True`` always solves in float64 on the host. ``backend="device"``
forces the accelerator path on any backend (tests run it on the CPU).

Several devices. With D > 1 local devices the device path shards each chunk
of the stack over them (`inference.chunked_map`: chunk rounded up to a
multiple of D, stack axis ``P("rows")``) and solves each device's slice with
``shard_map``. A batched ``eigvalsh`` is a solver custom call whose
partitioning is up to each backend's lowering: jax-ml/jax#26379 reports a
sharded stack gathered and solved whole on every device. (XLA:CPU with JAX
0.5.3 did partition the plain jit, measured: 104 matrices of 12×12 on 8 fake
devices ran as 13 per device either way.) shard_map makes the per-device
solve explicit on every backend.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl
from jax.sharding import PartitionSpec

from npc_jax.inference import check_finite, chunked_map, device_mesh, shard_map

__all__ = [
    "BACKENDS",
    "enable_x64",
    "min_eigenvalue",
    "min_eigenvalue_jax",
    "roundoff_tolerance",
]


def enable_x64():
    """A context manager that turns on 64-bit JAX types inside it.

    ``jax.enable_x64(True)`` on current JAX (the config state doubles as a
    context manager); ``jax.experimental.enable_x64()`` before it existed (it was
    removed from jax.experimental in later releases).
    """
    enable = getattr(jax, "enable_x64", None)
    if enable is None:
        from jax.experimental import enable_x64 as enable
    return enable(True)


def roundoff_tolerance(n: int, lambda_max, dtype) -> np.ndarray:
    """The λ_min below which an (n, n) PSD matrix is singular to working precision."""
    return n * np.finfo(dtype).eps * np.maximum(np.asarray(lambda_max), 0.0)


def _clip(lam_min, lam_max, n, dtype):
    lam_min = np.asarray(lam_min)
    return np.where(lam_min <= roundoff_tolerance(n, lam_max, dtype), 0.0,
                    lam_min).astype(np.float32 if dtype == np.float32 else np.float64)


def _eig_extremes_host(stack, dtype):
    # numpy solves a stack one small matrix at a time; BLAS threads only add
    # synchronisation there (1000 matrices of 90x90 on 2 busy cores: 0.62 s
    # with OpenBLAS's 2 threads, 0.27 s with 1).
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        eig = np.linalg.eigvalsh(np.asarray(stack, dtype))
    return eig[..., 0], eig[..., -1]


def min_eigenvalue_jax(stack: jax.Array) -> jax.Array:
    """Traceable λ_min of (..., n, n) with the round-off treatment of this module.

    The device path of `min_eigenvalue`, and usable inside jitted code (e.g. a
    fused kernel-and-score step). Values at or below n·eps·λ_max (eps of the
    stack's dtype) are exactly 0, as on the host path.

    Args:
      stack: (..., n, n) float32 (or float64 under x64) symmetric matrices.

    Returns:
      (...,) λ_min of each, in the stack's dtype.
    """
    eig = jnp.linalg.eigvalsh(stack)
    n = stack.shape[-1]
    tol = n * jnp.finfo(stack.dtype).eps * jnp.maximum(eig[..., -1], 0.0)
    return jnp.where(eig[..., 0] <= tol, 0.0, eig[..., 0])


_min_eigenvalue_device = jax.jit(min_eigenvalue_jax)


@functools.lru_cache(maxsize=None)
def _min_eigenvalue_sharded(mesh):
    """λ_min of a (b, n, n) stack sharded ``P("rows")`` over `mesh`: each device solves
    its (b / D, n, n) slice; returns (b,) sharded the same way."""
    spec = PartitionSpec(mesh.axis_names[0])
    return jax.jit(shard_map(min_eigenvalue_jax, mesh, in_specs=spec, out_specs=spec))


def _check(gram):
    gram = np.asarray(gram)
    if gram.ndim not in (2, 3) or gram.shape[-1] != gram.shape[-2]:
        raise ValueError(f"Expected (n, n) or (b, n, n) Gram matrices, got shape {gram.shape}.")
    check_finite(gram, "Gram matrix entries", fix="check the training loss and the inputs")
    return gram


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


BACKENDS = ("auto", "host", "device")


def min_eigenvalue(gram, *, chunk_size: int = 256, float64: bool = False,
                   method: str = "auto", lobpcg_above: int = 2048,
                   key: jax.Array | None = None, backend: str = "auto") -> np.ndarray:
    """λ_min of one (n, n) or a stack (b, n, n) of symmetric PSD matrices.

    Args:
      gram: (n, n) or (b, n, n) float array; must be finite and symmetric.
      chunk_size: matrices per solver call (bounds memory for large b).
      float64: solve in float64 (on the host) instead of float32.
      method: "eigvalsh" (dense), "lobpcg" (one matrix only: iterative, on the
        shifted matrix σI − K), or "auto" (LOBPCG for one matrix with
        n > `lobpcg_above`, dense otherwise).
      key: PRNG key of LOBPCG's starting block (default PRNGKey(0)).
      backend: where dense stacks are solved: "host" (numpy LAPACK), "device"
        (`min_eigenvalue_jax`, jit-compiled, float32, padded chunks; with
        D > 1 local devices each chunk is sharded over them and solved per
        device with shard_map), or
        "auto": host on the CPU or with float64, device otherwise.

    Returns:
      () or (b,) numpy array (float32, or float64 with float64=True); values
      at or below the round-off tolerance n·eps·λ_max are exactly 0.
    """
    gram = _check(gram)
    dtype = np.float64 if float64 else np.float32
    if method not in ("auto", "eigvalsh", "lobpcg"):
        raise ValueError(f"method must be 'auto', 'eigvalsh' or 'lobpcg', got {method!r}.")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if backend == "device" and float64:
        raise ValueError("backend='device' solves in float32; use float64=False, or "
                         "backend='host' for float64.")
    n = gram.shape[-1]
    if method == "lobpcg" or (method == "auto" and gram.ndim == 2 and n > lobpcg_above):
        if gram.ndim != 2:
            raise ValueError("method='lobpcg' solves one (n, n) matrix; loop over the stack, "
                             "or use method='eigvalsh' for stacks of small matrices.")
        return _lobpcg_min(gram, dtype, key)
    stack = gram[None] if gram.ndim == 2 else gram
    on_host = backend == "host" or (backend == "auto" and (float64 or _on_cpu()))
    if on_host:   # chunks bound LAPACK's workspace; no padding needed there
        out = [_clip(*_eig_extremes_host(stack[i:i + chunk_size], dtype), n, dtype)
               for i in range(0, len(stack), chunk_size)]
        result = np.concatenate(out) if out else np.zeros((0,), dtype)
    else:   # one device: one jitted solve per chunk; D > 1: shard_map over the chunk
        mesh = device_mesh()   # chunked_map's: every process's devices in a multi-host run
        solve = _min_eigenvalue_device if mesh is None else _min_eigenvalue_sharded(mesh)
        result = chunked_map(solve, stack.astype(dtype), chunk_size=chunk_size)
    return result[0] if gram.ndim == 2 else result


def _lobpcg_min(gram, dtype, key):
    """λ_min = σ − λ_max(σI − K), σ ≥ λ_max(K) from Gershgorin's bound.

    The shift costs accuracy: the absolute error is about eps·σ, so λ_min far
    below λ_max is resolved only to that level (use float64 then).
    """
    from jax.experimental.sparse.linalg import lobpcg_standard

    n = gram.shape[0]
    k = max(1, min(4, (n - 1) // 5))  # LOBPCG needs 5·k < n
    if n <= 5:
        raise ValueError(f"LOBPCG needs n > 5, got n = {n}; use method='eigvalsh'.")
    key = jax.random.PRNGKey(0) if key is None else key

    def solve():
        k_mat = jnp.asarray(gram, dtype)
        sigma = jnp.max(jnp.sum(jnp.abs(k_mat), axis=1))  # ≥ λ_max(K)
        shifted = sigma * jnp.eye(n, dtype=dtype) - k_mat
        x0 = jax.random.normal(key, (n, k), dtype)
        theta, _, _ = lobpcg_standard(shifted, x0, m=max(200, n // 4))
        lam_min = sigma - theta[0]
        # λ_max(K) for the round-off test: a second, cheap run on K itself.
        top, _, _ = lobpcg_standard(k_mat, x0[:, :1], m=50)
        return lam_min, top[0]

    if dtype == np.float64:
        with enable_x64():
            lam_min, lam_max = solve()
    else:
        lam_min, lam_max = solve()
    return _clip(np.asarray(lam_min, dtype), np.asarray(lam_max, dtype), n, dtype)
