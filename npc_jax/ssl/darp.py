"""DARP: Distribution Aligning Refinery of Pseudo-labels (Kim et al., NeurIPS 2020).

DARP keeps the latest weak-view class probabilities of every unlabeled sample
and, every few steps after a warm-up, replaces them by the closest (in
weighted KL) set of distributions whose class totals match a target. Here the
target is uniform, ``N_U / C`` per class (`uniform_target`).

The problem. Given ``P`` (N, C) with rows on the simplex, per-row weights
``w`` (N,) > 0 and a target ``t`` (C,) with ``sum(t) = N``::

    min_X  sum_i w_i KL(x_i || p_i)
    s.t.   X >= 0,  X 1 = 1 (rows on the simplex),  X^T 1 = t (column sums).

Why the solution has the form used here. With multipliers ``beta_j`` for the
column constraints (the row constraints are kept explicit), the Lagrangian
separates over rows; minimising ``w_i KL(x || p_i) + beta . x`` over the simplex
gives a Gibbs distribution::

    x_ij(beta) = p_ij exp(-beta_j / w_i) / Z_i(beta)     (softmax over j)

(``w_i (log x_ij - log p_ij + 1) + beta_j + alpha_i = 0``). Non-negativity is
automatic and ``p_ij = 0`` gives ``x_ij = 0``. The dual function
``g(beta) = -sum_i w_i log Z_i(beta) - beta . t`` is concave, its gradient is
the column-sum residual ``r(beta) = X(beta)^T 1 - t`` and its Hessian is
``-M`` with::

    M = sum_i s_i (diag(x_i) - x_i x_i^T),    s_i = 1 / w_i,

a C x C matrix, positive semi-definite with ``1`` in its null space (adding a
constant to ``beta`` changes nothing). So the whole problem reduces to finding
the root of a C-dimensional residual, whatever N is.

The solver. The reference implementation does block coordinate ascent
(closed-form row normalisers, then a scalar Newton solve per class, repeated).
Here the row normalisers are eliminated analytically (the softmax) and the
reduced dual is solved by Newton's method on ``beta`` (C <= a few hundred, so
the C x C system is free next to the O(N C^2) pass that forms ``M``):
``beta <- beta + a M^+ r``, with the gauge fixed by adding ``mean(diag M) 11^T``
(the step then stays orthogonal to ``1``) and a tiny Levenberg-Marquardt
ridge. Globalisation: backtracking on the scaled residual
``||r / max(t, 1)||^2``, for which the Newton step is a descent direction.
Convergence is quadratic, typically 3-10 iterations, against many sweeps for
coordinate ascent. Everything runs in log space (``log p - s_i beta``), so
exact zeros, near one-hot rows and very large or small ``s_i`` stay finite.
Memory is O(N C); nothing N x N is formed.

The buffer (`DarpState`) is a pytree updated inside a jit-compiled training
step: `darp_update` scatters each batch's probabilities into it,
`darp_refresh` re-solves, `darp_pseudo_labels` reads the refined rows once
DARP is active.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DarpSolution",
    "DarpState",
    "darp_init",
    "darp_pseudo_labels",
    "darp_refine",
    "darp_refresh",
    "darp_solve",
    "darp_update",
    "entropy_weights",
    "uniform_target",
]

_MAX_BACKTRACKS = 30   # step sizes down to 2**-30 before declaring a stall
_ARMIJO = 1e-4         # sufficient-decrease constant of the line search
_RIDGE = 1e-6          # Levenberg-Marquardt ridge, relative to mean(diag M)


def uniform_target(num_samples: int, num_classes: int) -> jnp.ndarray:
    """The uniform class-count target, ``num_samples / num_classes`` per class.

    Args:
      num_samples: N, the number of unlabeled samples (> 0).
      num_classes: C (> 0).

    Returns:
      (C,) float32, every entry ``N / C``; sums to N (up to float rounding).
    """
    num_samples, num_classes = int(num_samples), int(num_classes)
    if num_samples <= 0 or num_classes <= 0:
        raise ValueError(
            f"uniform_target needs num_samples > 0 and num_classes > 0, got "
            f"num_samples={num_samples}, num_classes={num_classes}.")
    return jnp.full((num_classes,), num_samples / num_classes, jnp.float32)


def entropy_weights(probs: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
    """DARP's per-sample weights, ``w_i = 1 / max(H(p_i), eps)``.

    Confident (low-entropy) rows get large weights, so the refinement moves
    them little; uncertain rows absorb most of the correction. The entropy is
    clipped at `eps` so that one-hot rows get a large but finite weight.

    Args:
      probs: (N, C) float, rows on the simplex (zeros allowed: 0 log 0 = 0).
      eps: lower clip of the entropy (nats).

    Returns:
      (N,) weights, the dtype of `probs` (at least float32), in
      ``(0, 1 / eps]``.
    """
    probs = _as_float(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {probs.shape}.")
    ent = -jnp.sum(jax.scipy.special.xlogy(probs, probs), axis=-1)
    return 1.0 / jnp.maximum(ent, eps)


class DarpSolution(NamedTuple):
    """What `darp_solve` returns (all arrays, so it is usable under jit)."""
    refined: jnp.ndarray     # (N, C) float32: rows on the simplex, column sums ~ target
    dual: jnp.ndarray        # (C,) float32: beta, x_ij ∝ p_ij exp(-beta_j / w_i)
    num_iters: jnp.ndarray   # () int32: Newton iterations taken
    error: jnp.ndarray       # () float32: max_j |colsum_j - t_j| / max(t_j, 1)
    converged: jnp.ndarray   # () bool: error <= tol


def darp_solve(probs: jnp.ndarray, target: jnp.ndarray, *,
               weights: Optional[jnp.ndarray] = None, max_iters: int = 100,
               tol: float = 1e-4) -> DarpSolution:
    """Solves the DARP problem and reports how well it converged.

    See `darp_refine` (which returns only ``.refined``) and the module
    docstring for the problem and the method.

    Args:
      probs: (N, C) float, rows on the simplex.
      target: (C,) float, the wanted column sums; must sum to N.
      weights: optional (N,) positive float; default `entropy_weights(probs)`.
      max_iters: the most Newton iterations (each one O(N C^2) work).
      tol: stop once ``max_j |colsum_j - t_j| / max(t_j, 1) <= tol``.

    Returns:
      A `DarpSolution`.
    """
    probs = _as_float(probs)
    if probs.ndim != 2:
        raise ValueError(
            f"darp: probs must be a 2-D (N, C) array of probabilities, got shape "
            f"{probs.shape}.")
    n, c = probs.shape
    target = jnp.asarray(target, probs.dtype)
    if target.shape != (c,):
        raise ValueError(
            f"darp: target must have shape (C,) = ({c},) to match probs {probs.shape}, "
            f"got {target.shape}; use uniform_target(N, C).")
    _check_target_sum(target, n)
    if weights is None:
        weights = entropy_weights(probs)
    weights = jnp.asarray(weights, probs.dtype)
    if weights.shape != (n,):
        raise ValueError(
            f"darp: weights must have shape (N,) = ({n},), got {weights.shape}.")
    return _solve(probs, target, weights, jnp.asarray(max_iters, jnp.int32),
                  jnp.asarray(tol, probs.dtype))


def darp_refine(probs: jnp.ndarray, target: jnp.ndarray, *,
                weights: Optional[jnp.ndarray] = None, max_iters: int = 100,
                tol: float = 1e-4) -> jnp.ndarray:
    """Refines pseudo-label distributions so their class totals match `target`.

    Solves ``min_X sum_i w_i KL(x_i || p_i)`` over row-stochastic ``X`` with
    column sums ``target``; the solution is ``x_ij ∝ p_ij exp(-beta_j / w_i)``
    with the dual ``beta`` found by damped Newton (module docstring).

    Tolerance: iteration stops when every column sum is within
    ``tol * max(t_j, 1)`` of its target (so `tol` is a relative error per class
    for targets of at least one sample, e.g. 1e-4 of N/C), or after
    `max_iters` Newton steps, or when float32 rounding stops the residual from
    decreasing. Rows are on the simplex to float rounding in every case. If
    the target is unreachable (a class with positive target whose
    probabilities are all exactly zero, or every row one-hot) the result is
    the best found, not an error; use `darp_solve` to see the residual.

    Args:
      probs: (N, C) float32, rows on the simplex; zeros allowed, but every row
        needs a positive entry.
      target: (C,) float32, wanted column sums, non-negative and summing to N
        (e.g. `uniform_target(N, C)`).
      weights: optional (N,) float32, positive; default
        ``entropy_weights(probs)`` (``1 / entropy``).
      max_iters: the most Newton iterations.
      tol: relative column-sum tolerance, as above.

    Returns:
      (N, C) float32 (float64 for float64 input with x64 enabled): rows
      summing to 1, entries >= 0, zero where `probs` is zero, column sums
      ``≈ target``.

    Example:
      >>> logits = jax.random.normal(jax.random.key(0), (100, 4))
      >>> p = jax.nn.softmax(logits + jnp.array([2.0, 0.0, 0.0, 0.0]))
      >>> x = darp_refine(p, uniform_target(100, 4))
      >>> x.sum(0)  # ≈ [25, 25, 25, 25]
    """
    return darp_solve(probs, target, weights=weights, max_iters=max_iters,
                      tol=tol).refined


# ----------------------------------------------------------------------------
# The solver.


def _as_float(x) -> jnp.ndarray:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_target_sum(target: jnp.ndarray, n: int) -> None:
    """Checks sum(target) == N when the target is concrete (skipped under jit)."""
    try:
        total = float(np.sum(np.asarray(target, np.float64)))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if not np.isfinite(total) or abs(total - n) > 1e-3 * max(n, 1):
        raise ValueError(
            f"darp: target must sum to the number of rows N = {n} (each row carries "
            f"one unit of probability), but it sums to {total}; rescale it, e.g. "
            f"uniform_target(N, C).")


def _gibbs(logp: jnp.ndarray, s: jnp.ndarray, beta: jnp.ndarray) -> jnp.ndarray:
    """x_ij ∝ p_ij exp(-s_i beta_j), in log space; -inf stays -inf (p_ij = 0)."""
    logits = jnp.where(jnp.isneginf(logp), -jnp.inf, logp - s[:, None] * beta[None, :])
    return jax.nn.softmax(logits, axis=-1)


def _residual_and_newton_matrix(logp, s, beta, target):
    """r = X(beta)^T 1 - t (C,) and M = sum_i s_i (diag x_i - x_i x_i^T) (C, C)."""
    x = _gibbs(logp, s, beta)
    r = jnp.sum(x, axis=0) - target
    sx = s[:, None] * x
    outer = jnp.matmul(sx.T, x, precision=jax.lax.Precision.HIGHEST)
    m = jnp.diag(jnp.sum(sx, axis=0)) - outer
    return r, 0.5 * (m + m.T)


@jax.jit
def _solve(probs, target, weights, max_iters, tol):
    # One function on purpose (~60 lines): the closures below (error, merit,
    # the Newton step) share the log-probabilities and scales of one solve
    # inside a lax.while_loop; as module functions they would take them all
    # as arguments.
    dtype = probs.dtype
    _, c = probs.shape
    logp = jnp.log(probs)               # exact zeros -> -inf, handled by _gibbs
    s = 1.0 / weights                   # "temperature" of each row
    scale = jnp.maximum(target, 1.0)

    def error(r):
        return jnp.max(jnp.abs(r) / scale)

    def merit(r):
        return jnp.sum(jnp.square(r / scale))

    def newton_direction(r, m):
        mean_diag = jnp.trace(m) / c
        tiny = jnp.finfo(dtype).tiny
        # Gauge: M has 1 in its null space and r ⊥ 1 (rows sum to 1, sum(t) = N),
        # so adding mean_diag * 11^T / C makes M invertible and keeps d ⊥ 1.
        a = (m + (mean_diag / c) * jnp.ones((c, c), dtype)
             + (_RIDGE * mean_diag + tiny) * jnp.eye(c, dtype=dtype))
        return jnp.linalg.solve(a, r)

    def line_search(beta, d, phi0):
        # Backtracking on ||r / scale||^2: its derivative along the Newton step is
        # -2 phi0, so accept step a once phi(a) <= (1 - 2 c a) phi0.
        def cond(ls):
            _, k, accepted, _, _, _ = ls
            return (~accepted) & (k < _MAX_BACKTRACKS)

        def body(ls):
            step, k, _, _, _, _ = ls
            beta_new = beta + step * d
            r_new, m_new = _residual_and_newton_matrix(logp, s, beta_new, target)
            phi = merit(r_new)
            ok = (jnp.all(jnp.isfinite(beta_new)) & jnp.all(jnp.isfinite(r_new))
                  & jnp.all(jnp.isfinite(m_new))
                  & (phi <= (1.0 - 2.0 * _ARMIJO * step) * phi0))
            return step * jnp.where(ok, 1.0, 0.5).astype(dtype), k + 1, ok, beta_new, r_new, m_new

        init = (jnp.asarray(1.0, dtype), jnp.asarray(0, jnp.int32), jnp.asarray(False),
                beta, jnp.zeros((c,), dtype), jnp.zeros((c, c), dtype))
        _, _, accepted, beta_new, r_new, m_new = jax.lax.while_loop(cond, body, init)
        return accepted, beta_new, r_new, m_new

    def cond(state):
        _, r, _, it, stalled = state
        return (it < max_iters) & (error(r) > tol) & (~stalled)

    def body(state):
        beta, r, m, it, _ = state
        d = newton_direction(r, m)
        accepted, beta_new, r_new, m_new = line_search(beta, d, merit(r))
        # A failed line search means float rounding dominates: keep the last iterate.
        beta, r, m = jax.tree_util.tree_map(
            lambda new, old: jnp.where(accepted, new, old), (beta_new, r_new, m_new), (beta, r, m))
        return beta, r, m, it + 1, ~accepted

    beta0 = jnp.zeros((c,), dtype)
    r0, m0 = _residual_and_newton_matrix(logp, s, beta0, target)
    beta, r, _, it, _ = jax.lax.while_loop(
        cond, body, (beta0, r0, m0, jnp.asarray(0, jnp.int32), jnp.asarray(False)))
    err = error(r)
    return DarpSolution(refined=_gibbs(logp, s, beta), dual=beta, num_iters=it,
                        error=err, converged=err <= tol)


# ----------------------------------------------------------------------------
# The pseudo-label buffer carried through training.


class DarpState(NamedTuple):
    """DARP's buffer, a pytree carried inside the jit-compiled training step."""
    probs: jnp.ndarray     # (N_U, C) float32: latest weak-view probs of every unlabeled sample
    refined: jnp.ndarray   # (N_U, C) float32: refined pseudo-labels from the last refresh


def darp_init(num_unlabeled: int, num_classes: int) -> DarpState:
    """An empty buffer: every row uniform ``1 / C``, refined = probs.

    Args:
      num_unlabeled: N_U (> 0).
      num_classes: C (> 0).

    Returns:
      A `DarpState` with two (N_U, C) float32 arrays.
    """
    num_unlabeled, num_classes = int(num_unlabeled), int(num_classes)
    if num_unlabeled <= 0 or num_classes <= 0:
        raise ValueError(
            f"darp_init needs num_unlabeled > 0 and num_classes > 0, got "
            f"{num_unlabeled} and {num_classes}.")
    probs = jnp.full((num_unlabeled, num_classes), 1.0 / num_classes, jnp.float32)
    return DarpState(probs=probs, refined=probs)


def darp_update(state: DarpState, indices: jnp.ndarray, probs: jnp.ndarray) -> DarpState:
    """Writes a batch's weak-view probabilities into the buffer.

    `refined` is left alone; it changes only at `darp_refresh`.

    Args:
      state: the buffer.
      indices: (B,) int, rows of the unlabeled set (0 <= index < N_U). With
        repeated indices, which row wins is unspecified.
      probs: (B, C) float, the batch's probabilities (rows on the simplex);
        typically ``jax.lax.stop_gradient`` of the weak-view softmax.

    Returns:
      The updated `DarpState` (probs cast to the buffer's dtype).
    """
    indices = jnp.asarray(indices)
    probs = jnp.asarray(probs)
    _check_batch(state, indices, probs, "darp_update")
    return state._replace(probs=state.probs.at[indices].set(probs.astype(state.probs.dtype)))


def darp_refresh(state: DarpState, target: jnp.ndarray, **kw) -> DarpState:
    """Re-solves DARP on the whole buffer: ``refined = darp_refine(probs, target)``.

    Args:
      state: the buffer.
      target: (C,) float32 summing to N_U, e.g. ``uniform_target(N_U, C)``.
      **kw: forwarded to `darp_refine` (``weights``, ``max_iters``, ``tol``).

    Returns:
      The `DarpState` with a new `refined` (N_U, C).
    """
    refined = darp_refine(state.probs, target, **kw)
    return state._replace(refined=refined.astype(state.refined.dtype))


def darp_pseudo_labels(state: DarpState, indices: jnp.ndarray, probs: jnp.ndarray, *,
                       active) -> jnp.ndarray:
    """The distribution FixMatch thresholds and trains on for this batch.

    Args:
      state: the buffer.
      indices: (B,) int, the batch's rows in the unlabeled set.
      probs: (B, C) float, the batch's raw weak-view probabilities.
      active: bool scalar, Python or traced (e.g. ``step >= warmup``): whether
        DARP is on. No Python control flow depends on it.

    Returns:
      (B, C): ``state.refined[indices]`` where `active`, else `probs`, in the
      dtype of `probs`.
    """
    indices = jnp.asarray(indices)
    probs = jnp.asarray(probs)
    _check_batch(state, indices, probs, "darp_pseudo_labels")
    refined = state.refined[indices].astype(probs.dtype)
    return jnp.where(jnp.asarray(active, bool), refined, probs)


def _check_batch(state: DarpState, indices, probs, name: str) -> None:
    n, c = state.probs.shape
    if indices.ndim != 1 or not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"{name}: indices must be a 1-D integer array (B,), got "
                         f"shape {indices.shape} dtype {indices.dtype}.")
    if probs.shape != (indices.shape[0], c):
        raise ValueError(f"{name}: probs must have shape (B, C) = ({indices.shape[0]}, {c}) "
                         f"to match indices and the buffer (N_U, C) = ({n}, {c}), got "
                         f"{probs.shape}.")
