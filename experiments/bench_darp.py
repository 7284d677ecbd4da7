"""DARP's solver and the Pool at full-pool scale: wall times (moved out of the tests).

    .venv/bin/python experiments/bench_darp.py [--repeats 5] [--out darp.json]

Times `darp_solve` (jit-compiled, compile excluded) on a 60k × 10 skewed
problem (Dirichlet rows biased 10:1 towards low classes, the shape of
Fashion-MNIST's DARP buffer) against a uniform target, and a 1M-sample
`Pool` built and revealed (its views are O(N) numpy). Prints the median and
minimum of `--repeats` runs. The correctness of both at this scale is
tested in tests/test_darp.py and tests/test_data.py; timing belongs here, not
in a test that a busy machine can fail.

Measured (2-core AMD EPYC, 23 GiB, 2026-11-30): see BENCHMARKS.md "DARP and
Pool micro-benchmarks".
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from npc_jax.data import Pool
from npc_jax.ssl import darp


def skewed_probs(rng: np.random.Generator, n: int, c: int, imbalance: float = 10.0):
    """(n, c) float32 Dirichlet rows biased towards low class indices."""
    bias = imbalance ** (-np.arange(c) / max(c - 1, 1))
    return rng.dirichlet(c * bias / bias.sum(), size=n).astype(np.float32)


def _times(fn, repeats):
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    n, c = 60_000, 10
    probs = jax.numpy.asarray(skewed_probs(np.random.default_rng(9), n, c))
    target = darp.uniform_target(n, c)
    solve = jax.jit(lambda p, t: darp.darp_solve(p, t))
    solution = jax.block_until_ready(solve(probs, target))      # compile
    darp_times = _times(lambda: jax.block_until_ready(solve(probs, target)), args.repeats)

    size = 1_000_000

    def pool_work():
        pool = Pool(size, tuple(range(0, size, 1000))).reveal(np.arange(1, size, 998))
        return pool.unlabeled_indices

    pool_times = _times(pool_work, args.repeats)
    results = {
        "darp_solve_60k_x_10": {"median_s": statistics.median(darp_times),
                                "min_s": min(darp_times),
                                "newton_iterations": int(solution.num_iters),
                                "converged": bool(solution.converged)},
        "pool_1m_build_reveal_views": {"median_s": statistics.median(pool_times),
                                       "min_s": min(pool_times)},
    }
    for name, row in results.items():
        print(f"{name:30s} median {row['median_s'] * 1e3:8.1f} ms   min {row['min_s'] * 1e3:8.1f} ms"
              + (f"   ({row['newton_iterations']} Newton iterations)"
                 if "newton_iterations" in row else ""))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
