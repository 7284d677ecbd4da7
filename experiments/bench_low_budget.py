"""P7: the low-budget strategies against scikit-activeml 1.0.1, time and peak memory.

    .venv/bin/python experiments/bench_low_budget.py                  # 60k vs the peer
    .venv/bin/python experiments/bench_low_budget.py --sizes=1000000 --peer=false

One acquisition (Q = `--q`, |L| = `--labeled` uniformly drawn labels) per
(strategy, implementation, pool size), each in a fresh subprocess, on a
synthetic embedding: 10 Gaussian blobs in an 8-d latent space (unit spread,
centres ~ N(0, 2²)), mapped to `--dim` dimensions by a fixed random linear map
plus N(0, 0.05²) noise (a low intrinsic dimension, as learned embeddings
have). Reports the wall time of the selection call (our first call includes
JAX compilation; generating the embedding is excluded) and the process's
peak RSS (VmHWM, polled from /proc, so it is known for a run that is killed
too; it includes the embedding itself and the imported libraries); and, per
implementation and N, the peak RSS of the same process stopped before the
selection call (libraries imported, JAX's CPU runtime started, embedding
built): the "idle" baseline, so that peak − idle is the selection's own. The peer
runs under a `--peer_timeout` limit (10 min) and an address-space cap of
`--peer_memory_gb` (a MemoryError instead of the machine's OOM killer): a row
says when it did not finish and why.

Both sides get the same embedding (the peer's ProbCover the unit-normalised
one, as ours normalises internally), C = 10 clusters for ProbCover's purity
rule over the same δ grid, TypiClust's k = 20.

STRATEGIES maps a name to (ours, the peer) factories; add a strategy there.

Measured 2026-12 on the 2-core AMD EPYC, 23 GiB machine, shared (load
average ≈ 8 during the runs), N = 60k, d = 128, Q = 20, |L| = 10:
  typiclust   ours 6.6 s, peak 397 MB   scikit-activeml 14.7 s, peak 319 MB
              (after k-means' compile-once / one-hot Lloyd change: ours 4.6 s,
              peak 359 MB, idle process 199 MB; the peer's idle 230 MB)
  probcover   ours 110 s, peak 537 MB   scikit-activeml: MemoryError at once
              (its 60k × 60k float32 distance matrix alone is 13.4 GiB, over
              the 12 GiB cap; on this 23 GiB machine it cannot run either)
N = 1M (ours only): typiclust 305 s, peak 2.8 GB. probcover was O(N² d) by
construction (exact ball graph): ≈ 280× the 60k time, hours here; not run.
Since its graph is built by cells (2026-11-30, `--strategies=probcover_1m`,
the L2 grid sharing the cores): 821 s, peak 3.46 GB; 60k 32 s (was 62 s).
Our peak RSS includes JAX's runtime (≈ 200-250 MB after import).
MaxHerding (its module docstring): 60k ours 58 s / 372 MB, the peer cannot
allocate its 60k × 60k kernel; 1M with num_candidates=20000: 214 s / 2.4 GB.
2026-11-30, after the typicality change (partition path), interleaved
(`--repeats=4`, load 2.2-3.9): typiclust ours 3.32-3.82 s, peak 359 MB (idle
199); the peer at its default threads 22.4-22.6 s in 7 of 10 runs, 9.7-10.7 s
in 3 (OpenMP + two OpenBLAS pools oversubscribing 2 shared cores); with
`--peer_threads=1` 3.45-3.57 s, ours 0.95x of it.
Tables and goals: BENCHMARKS.md, P7.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["60000"], "Pool sizes N.")
flags.DEFINE_list("strategies", ["typiclust", "probcover"], "Keys of STRATEGIES.")
flags.DEFINE_integer("dim", 128, "Embedding dimension.")
flags.DEFINE_integer("q", 20, "Query size Q.")
flags.DEFINE_integer("labeled", 10, "Labeled points |L| (drawn uniformly).")
flags.DEFINE_boolean("peer", True, "Also run scikit-activeml.")
flags.DEFINE_integer("peer_timeout", 600, "Seconds before a peer run is killed.")
flags.DEFINE_float("peer_memory_gb", 12.0, "Address-space cap of a peer run (GiB).")
flags.DEFINE_integer("peer_threads", 0,
                     "If > 0, OMP_NUM_THREADS and OPENBLAS_NUM_THREADS for the peer's process "
                     "(0: the libraries' defaults, 2 OpenMP + 2 per OpenBLAS here). On the "
                     "shared 2-core machine the defaults oversubscribe: TypiClust 60k took "
                     "21.5 s with them, 2.6 s with 1 thread (2026-11-30).")
flags.DEFINE_integer("timeout", 3600, "Seconds before one of our runs is killed.")
flags.DEFINE_string("out", "", "Optional JSON file for the rows.")
flags.DEFINE_integer("repeats", 1, "Runs per (strategy, N), ours and the peer interleaved "
                     "(ours, peer, ours, peer, ...) so that both see the same load; the "
                     "summary line gives the medians and the median of the paired ratios.")
flags.DEFINE_string("worker", "", "Internal: 'strategy:impl:N' runs one job here.")

NUM_CLASSES = 10


def synthetic_embedding(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 blobs of low intrinsic dimension (see the module docstring)."""
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.normal(size=(NUM_CLASSES, 8))
    lift = rng.normal(size=(8, dim)) / np.sqrt(8)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):   # chunks: no float64 (n, dim) temporary
        m = min(100_000, n - start)
        latent = centres[rng.integers(0, NUM_CLASSES, m)] + rng.normal(size=(m, 8))
        out[start:start + m] = latent @ lift + 0.05 * rng.normal(size=(m, dim))
    return out


def _ours(name, **options):
    def run(z, labeled, q):
        import jax
        from npc_jax.data import Pool
        from npc_jax.strategies import AcquisitionContext, make_strategy
        ctx = AcquisitionContext(model=None, variables=None,
                                 images=np.zeros((len(z), 1, 1, 1), np.uint8),
                                 labels=np.zeros(len(z), np.int64), embedding=z)
        strategy = make_strategy(name, **options)
        got = strategy.select(jax.random.key(0), ctx, Pool(len(z), tuple(labeled)), q)
        return got.indices, got.objective
    return run


def _peer(class_name, normalise=False, **options):
    def run(z, labeled, q):
        from skactiveml import pool
        x = z / np.linalg.norm(z, axis=1, keepdims=True) if normalise else z
        y = np.full(len(z), np.nan)
        y[labeled] = 0
        picks = getattr(pool, class_name)(random_state=0, **options).query(x, y, batch_size=q)
        return np.asarray(picks), None
    return run


def _deltas():
    from npc_jax.strategies.probcover import DEFAULT_DELTAS
    return DEFAULT_DELTAS


STRATEGIES = {
    "typiclust": (lambda: _ours("typiclust"), lambda: _peer("TypiClust", k=20)),
    "probcover": (lambda: _ours("probcover", num_clusters=NUM_CLASSES),
                  lambda: _peer("ProbCover", normalise=True, n_classes=NUM_CLASSES,
                                deltas=_deltas())),
    "maxherding": (lambda: _ours("maxherding"),
                   lambda: _peer("MaxHerding", normalise=True, metric_dict={"gamma": 1.0})),
    "maxherding_20k": (lambda: _ours("maxherding", num_candidates=20_000), None),
    # At 1M the purity rule's δ-ball graph holds ≈ 3e8 edges (1.2 GB), over the default bound.
    "probcover_1m": (lambda: _ours("probcover", num_clusters=NUM_CLASSES,
                                   max_edges=600_000_000), None),
}


def worker(spec: str) -> None:
    """Runs one job in this process; prints one JSON line."""
    name, impl, n = spec.split(":")
    z = synthetic_embedding(int(n), FLAGS.dim)
    labeled = np.random.default_rng(1).choice(len(z), FLAGS.labeled, replace=False)
    if impl.endswith("_idle"):   # the baseline: libraries loaded, embedding built, no selection
        _load_libraries(impl)
        print(json.dumps({"seconds": 0.0, "picks": [], "objective": None,
                          "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    run = STRATEGIES[name][0 if impl == "ours" else 1]()
    start = time.perf_counter()
    picks, objective = run(z, labeled, FLAGS.q)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "picks": np.asarray(picks).tolist(),
                      "objective": objective,
                      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _load_libraries(impl: str) -> None:
    """What a run imports before selecting: JAX with its CPU runtime started, or scikit-activeml."""
    if impl.startswith("ours"):
        import jax.numpy as jnp
        import npc_jax.strategies  # noqa: F401
        jnp.zeros(1).block_until_ready()
    else:
        import skactiveml.pool  # noqa: F401


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cap_memory(gigabytes: float):
    limit = int(gigabytes * (1 << 30))
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_job(name: str, impl: str, n: int) -> dict:
    """One job in a subprocess: wall time, peak RSS, and how it ended."""
    argv = [sys.executable, os.path.abspath(__file__), f"--worker={name}:{impl}:{n}",
            f"--dim={FLAGS.dim}", f"--q={FLAGS.q}", f"--labeled={FLAGS.labeled}"]
    peer = impl.startswith("skactiveml")
    timeout = FLAGS.peer_timeout if peer else FLAGS.timeout
    env = dict(os.environ)
    if peer and FLAGS.peer_threads > 0:
        env.update(OMP_NUM_THREADS=str(FLAGS.peer_threads),
                   OPENBLAS_NUM_THREADS=str(FLAGS.peer_threads))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env,
                            preexec_fn=_cap_memory(FLAGS.peer_memory_gb) if peer else None)
    start, peak = time.monotonic(), 0.0
    while proc.poll() is None and time.monotonic() - start < timeout:
        peak = max(peak, _vm_hwm_mb(proc.pid) or 0.0)
        time.sleep(0.2)
    row = {"strategy": name, "impl": impl, "n": n, "peak_rss_mb": round(peak)}
    if proc.poll() is None:
        proc.kill()
        proc.communicate()
        return {**row, "status": f"did not finish in {timeout} s"}
    out, err = proc.communicate()
    if proc.returncode:
        last = (err.strip().splitlines() or ["?"])[-1]
        return {**row, "status": f"failed (exit {proc.returncode}): {last[:200]}"}
    result = json.loads(out.strip().splitlines()[-1])
    peak = max(peak, result["ru_maxrss_mb"])
    return {**row, "peak_rss_mb": round(peak), "seconds": round(result["seconds"], 2),
            "status": "ok", "picks": result["picks"], "objective": result["objective"]}


def _summary(name: str, n: int, pairs: list) -> None:
    """Medians over the repeats and the median of the per-pair time ratios (peer / ours)."""
    ok = [p for p in pairs if all(r["status"] == "ok" for r in p.values())]
    if not ok:
        return
    med = lambda impl, field: float(np.median([p[impl][field] for p in ok]))
    ratios = [p["skactiveml"]["seconds"] / p["ours"]["seconds"] for p in ok]
    own = {impl: [p[impl]["peak_rss_mb"] - p[impl]["baseline_rss_mb"] for p in ok]
           for impl in ("ours", "skactiveml")}
    print(f"{name} N={n}: {len(ok)} pairs; median ours {med('ours', 'seconds'):.2f} s, "
          f"peer {med('skactiveml', 'seconds'):.2f} s; ratio median {np.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}); peak RSS median ours "
          f"{med('ours', 'peak_rss_mb'):.0f} MB, peer {med('skactiveml', 'peak_rss_mb'):.0f} MB "
          f"(ratio {med('ours', 'peak_rss_mb') / med('skactiveml', 'peak_rss_mb'):.2f}); "
          f"above idle ours {np.median(own['ours']):.0f} MB, peer "
          f"{np.median(own['skactiveml']):.0f} MB", flush=True)


def main(argv):
    del argv
    if FLAGS.worker:
        return worker(FLAGS.worker)
    rows, baselines = [], {}
    for n in map(int, FLAGS.sizes):
        for name in FLAGS.strategies:
            peer = FLAGS.peer and STRATEGIES[name][1] is not None
            pairs = []
            for repeat in range(FLAGS.repeats):
                pair = {}
                for impl in ["ours"] + (["skactiveml"] if peer else []):
                    load = os.getloadavg()[0]
                    row = run_job(name, impl, n)
                    # Peak RSS of the same process without the selection call.
                    row["baseline_rss_mb"] = baselines.setdefault(
                        (impl, n), run_job(name, impl + "_idle", n)["peak_rss_mb"])
                    row.update(repeat=repeat, load_before=round(load, 2),
                               load_after=round(os.getloadavg()[0], 2))
                    rows.append(row)
                    pair[impl] = row
                    print(f"{name:14s} {impl:10s} N={n:>8d}  {row.get('seconds', '-'):>8} s  "
                          f"peak {row['peak_rss_mb']:>6d} MB (idle {row['baseline_rss_mb']:>5d})"
                          f"  load {row['load_before']:.1f}->{row['load_after']:.1f}"
                          f"  {row['status']}", flush=True)
                pairs.append(pair)
            if peer and FLAGS.repeats > 1:
                _summary(name, n, pairs)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    app.run(main)
