"""Tests for npc_jax.ssl.darp: constraints, optimality against scipy, the buffer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from npc_jax.ssl import darp


def _skewed_probs(rng, n, c, imbalance=10.0, concentration=1.0):
    """Dirichlet rows biased towards low class indices (head/tail imbalance)."""
    bias = imbalance ** (-np.arange(c) / max(c - 1, 1))
    return rng.dirichlet(concentration * c * bias / bias.sum(), size=n).astype(np.float32)


def _objective(x, p, w):
    """sum_i w_i KL(x_i || p_i) in float64 (0 log 0 = 0)."""
    x, p, w = (np.asarray(a, np.float64) for a in (x, p, w))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(x > 0, x * (np.log(x) - np.log(p)), 0.0)
    return float(np.sum(w[:, None] * terms))


def _check_constraints(x, target, rtol=1e-3):
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x))
    assert np.all(x >= 0)
    np.testing.assert_allclose(x.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(x.sum(0), np.asarray(target, np.float64), rtol=rtol)


def test_uniform_target():
    t = darp.uniform_target(500, 10)
    assert t.shape == (10,) and t.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(t), 50.0)
    assert float(t.sum()) == pytest.approx(500.0)
    with pytest.raises(ValueError, match="num_classes"):
        darp.uniform_target(10, 0)


def test_entropy_weights():
    p = jnp.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], jnp.float32)
    w = np.asarray(darp.entropy_weights(p, eps=1e-6))
    np.testing.assert_allclose(w, [1 / np.log(2), 1e6, 1 / np.log(3)], rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_uniform_target_on_skewed_problem(seed):
    rng = np.random.default_rng(seed)
    n, c = 500, 10
    p = _skewed_probs(rng, n, c)
    target = darp.uniform_target(n, c)
    assert np.ptp(p.sum(0)) > 0.2 * n / c  # really skewed
    sol = darp.darp_solve(p, target)
    assert bool(sol.converged) and float(sol.error) <= 1e-4
    _check_constraints(sol.refined, target)
    np.testing.assert_array_equal(np.asarray(darp.darp_refine(p, target)), np.asarray(sol.refined))


def test_non_uniform_target():
    rng = np.random.default_rng(2)
    n, c = 500, 10
    p = _skewed_probs(rng, n, c)
    ratio = np.linspace(1.0, 3.0, c)  # the reverse of p's skew
    target = jnp.asarray(n * ratio / ratio.sum(), jnp.float32)
    x = darp.darp_refine(p, target)
    _check_constraints(x, target)


def test_already_aligned_is_a_fixed_point():
    rng = np.random.default_rng(3)
    p = _skewed_probs(rng, 300, 7)
    target = jnp.asarray(p.astype(np.float64).sum(0), jnp.float32)
    x = darp.darp_refine(p, target)
    np.testing.assert_allclose(np.asarray(x), p, atol=1e-5)
    # A balanced P (each class equally often the favourite) and the uniform target.
    base = np.array([0.7, 0.2, 0.1], np.float32)
    p_bal = np.stack([np.roll(base, k) for k in range(3)] * 10)
    x = darp.darp_refine(p_bal, darp.uniform_target(30, 3))
    np.testing.assert_allclose(np.asarray(x), p_bal, atol=1e-5)


def _reference_solve(p, target, w):
    """SLSQP on the primal, in float64, from the feasible point x_i = t / N."""
    n, c = p.shape
    p = np.asarray(p, np.float64)
    logp = np.log(p)
    lo = 1e-12

    def fun(z):
        x = np.maximum(z.reshape(n, c), lo)
        f = np.sum(w[:, None] * x * (np.log(x) - logp))
        g = w[:, None] * (np.log(x) + 1.0 - logp)
        return f, g.ravel()

    rows = np.kron(np.eye(n), np.ones((1, c)))    # (n, n*c): row sums
    cols = np.kron(np.ones((1, n)), np.eye(c))    # (c, n*c): column sums
    a = np.concatenate([rows, cols[:-1]])          # one column constraint is redundant
    b = np.concatenate([np.ones(n), np.asarray(target, np.float64)[:-1]])
    x0 = np.tile(np.asarray(target, np.float64) / n, (n, 1)).ravel()
    res = optimize.minimize(
        fun, x0, jac=True, method="SLSQP", bounds=[(lo, 1.0)] * (n * c),
        constraints=[{"type": "eq", "fun": lambda z: a @ z - b, "jac": lambda z: a}],
        options={"ftol": 1e-14, "maxiter": 2000})
    assert res.success, res.message
    x = res.x.reshape(n, c)
    np.testing.assert_allclose(x.sum(1), 1.0, atol=1e-8)
    np.testing.assert_allclose(x.sum(0), target, atol=1e-8)
    return x


@pytest.mark.parametrize("n,c,seed,uniform", [
    (8, 3, 0, True), (8, 3, 1, False), (20, 4, 2, True), (20, 4, 3, False)])
def test_matches_constrained_reference_solver(n, c, seed, uniform):
    rng = np.random.default_rng(seed)
    p = _skewed_probs(rng, n, c, imbalance=8.0)
    if uniform:
        target = np.full(c, n / c)
    else:
        ratio = rng.uniform(0.5, 1.5, size=c)
        target = n * ratio / ratio.sum()
    w = np.asarray(darp.entropy_weights(p), np.float64)

    x = np.asarray(darp.darp_refine(p, jnp.asarray(target, jnp.float32), tol=1e-6),
                   np.float64)
    _check_constraints(x, target, rtol=1e-5)
    x_ref = _reference_solve(p, target, w)

    f, f_ref = _objective(x, p, w), _objective(x_ref, p, w)
    assert f_ref > 1e-3                               # a problem where the refinery has work
    assert abs(f - f_ref) <= 1e-4 * f_ref, (f, f_ref)
    assert f_ref >= f - 1e-4 * f_ref, (f, f_ref)      # the reference is never better
    np.testing.assert_allclose(x, x_ref, atol=2e-4)
    # The default weights are the entropy weights.
    x_default = darp.darp_refine(p, jnp.asarray(target, jnp.float32), tol=1e-6)
    np.testing.assert_allclose(np.asarray(x_default), x, atol=1e-6)


def test_weights_decide_who_moves():
    rng = np.random.default_rng(4)
    half, c = 200, 5
    p_half = _skewed_probs(rng, half, c)
    p = np.concatenate([p_half, p_half])               # each row twice ...
    w = np.repeat(np.float32([1.0, 10.0]), half)       # ... weighted 1 and 10
    target = darp.uniform_target(2 * half, c)
    x = np.asarray(darp.darp_refine(p, target, weights=w), np.float64)
    _check_constraints(x, target)
    moved = np.abs(x - p).sum(1)
    low_w, high_w = moved[:half], moved[half:]
    assert np.all(low_w >= high_w - 1e-6)
    assert low_w.mean() > 3 * high_w.mean()


def test_default_weights_move_uncertain_rows_more():
    rng = np.random.default_rng(5)
    n, c = 400, 5
    confident = _skewed_probs(rng, n // 2, c, concentration=0.2)   # low entropy
    uncertain = _skewed_probs(rng, n // 2, c, concentration=20.0)  # high entropy
    p = np.concatenate([confident, uncertain])
    w = np.asarray(darp.entropy_weights(p))
    assert w[: n // 2].mean() > 2 * w[n // 2:].mean()
    x = np.asarray(darp.darp_refine(p, darp.uniform_target(n, c)), np.float64)
    moved = np.abs(x - p).sum(1)
    assert moved[n // 2:].mean() > 2 * moved[: n // 2].mean()


def test_zeros_and_near_one_hot_rows_stay_finite():
    rng = np.random.default_rng(6)
    n, c = 300, 6
    p = _skewed_probs(rng, n, c, imbalance=20.0, concentration=0.3).astype(np.float64)
    p[:50, 3:] = 0.0                                    # exact zeros
    p[50:100] = np.eye(c)[rng.integers(0, c, 50)]       # exact one-hot rows
    p[100:150] = np.eye(c)[rng.integers(0, c, 50)] * (1 - 1e-7) + 1e-7 / c  # near one-hot
    p[150:160] = 1e-30                                  # tiny but positive mass ...
    p[150:160, 0] = 1.0                                 # ... around a dominant class
    p = (p / p.sum(1, keepdims=True)).astype(np.float32)
    target = darp.uniform_target(n, c)
    sol = darp.darp_solve(p, target)
    x = np.asarray(sol.refined)
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(np.asarray(sol.dual)))
    assert np.all(x[p == 0] == 0)                       # support is preserved
    _check_constraints(x, target)
    # Weights spanning many orders of magnitude.
    w = np.exp(rng.uniform(-8, 8, size=n)).astype(np.float32)
    x = np.asarray(darp.darp_refine(p, target, weights=w))
    _check_constraints(x, target)


def test_unreachable_target_returns_finite_best_effort():
    p = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]       # one-hot rows cannot move
    sol = darp.darp_solve(p, jnp.full((3,), 4 / 3, jnp.float32), max_iters=20)
    x = np.asarray(sol.refined)
    assert np.all(np.isfinite(x)) and not bool(sol.converged)
    np.testing.assert_allclose(x, p, atol=1e-6)


def test_bad_inputs_raise():
    p = jnp.full((6, 3), 1 / 3, jnp.float32)
    with pytest.raises(ValueError, match="sum to the number of rows"):
        darp.darp_refine(p, jnp.ones((3,)))
    with pytest.raises(ValueError, match="target must have shape"):
        darp.darp_refine(p, darp.uniform_target(6, 4))
    with pytest.raises(ValueError, match="weights must have shape"):
        darp.darp_refine(p, darp.uniform_target(6, 3), weights=jnp.ones((5,)))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        darp.darp_refine(jnp.ones((6,)), darp.uniform_target(6, 3))


def test_refine_under_jit_and_traced_target():
    rng = np.random.default_rng(7)
    p = _skewed_probs(rng, 100, 4)
    target = darp.uniform_target(100, 4)
    x_eager = darp.darp_refine(p, target)
    x_jit = jax.jit(lambda p, t: darp.darp_refine(p, t, max_iters=50))(p, target)
    np.testing.assert_allclose(np.asarray(x_jit), np.asarray(x_eager), atol=1e-6)


def test_darp_init_and_update():
    state = darp.darp_init(10, 4)
    assert state.probs.shape == (10, 4) and state.probs.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(state.probs), 0.25)
    np.testing.assert_array_equal(np.asarray(state.refined), np.asarray(state.probs))

    idx = jnp.array([7, 2, 5])
    batch = jax.nn.softmax(jax.random.normal(jax.random.key(0), (3, 4)))
    new = jax.jit(darp.darp_update)(state, idx, batch)
    expected = np.full((10, 4), 0.25, np.float32)
    expected[[7, 2, 5]] = np.asarray(batch)
    np.testing.assert_allclose(np.asarray(new.probs), expected, atol=0)
    np.testing.assert_array_equal(np.asarray(new.refined), np.asarray(state.refined))
    with pytest.raises(ValueError, match="probs must have shape"):
        darp.darp_update(state, idx, batch[:2])


def test_refresh_and_pseudo_labels_inside_jit():
    rng = np.random.default_rng(8)
    n, c = 64, 4
    state = darp.darp_init(n, c)
    state = darp.darp_update(state, jnp.arange(n), jnp.asarray(_skewed_probs(rng, n, c)))
    target = darp.uniform_target(n, c)

    @jax.jit
    def step(state, indices, probs, step_num):
        # Refresh every 4 steps, use refined labels after a warm-up of 5 steps.
        state = jax.lax.cond(step_num % 4 == 0,
                             lambda s: darp.darp_refresh(s, target), lambda s: s, state)
        labels = darp.darp_pseudo_labels(state, indices, probs, active=step_num >= 5)
        return state, labels

    idx = jnp.array([3, 10, 40])
    raw = jnp.asarray(_skewed_probs(rng, 3, c))
    state1, labels = step(state, idx, raw, jnp.asarray(0))
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(raw))   # warm-up: raw
    _check_constraints(state1.refined, target)
    np.testing.assert_allclose(np.asarray(state1.refined),
                               np.asarray(darp.darp_refine(state.probs, target)), atol=1e-6)
    _, labels = step(state1, idx, raw, jnp.asarray(6))
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(state1.refined)[[3, 10, 40]])


def test_converges_at_full_pool_scale_60k_by_10():
    # Its wall time is a benchmark: experiments/bench_darp.py.
    rng = np.random.default_rng(9)
    n, c = 60_000, 10
    p = jnp.asarray(_skewed_probs(rng, n, c))
    target = darp.uniform_target(n, c)
    sol = jax.jit(lambda p, t: darp.darp_solve(p, t))(p, target)
    assert bool(sol.converged) and int(sol.num_iters) <= 20
    _check_constraints(sol.refined, target)
