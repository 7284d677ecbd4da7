"""Checks run in a subprocess with 8 fake CPU devices (tests/test_multidevice.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice.py train
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice.py pool

`sharded_pool`: a pool split into 8 device blocks (`train.place_pool`),
per-device draws (`train.sample_pool`) and trainings with
``pool_layout="sharded"`` on 1 and 8 devices.
`train`: N steps of FixMatch-DARP and of supervised training on 1 device
and on 8 (`TrainConfig.devices`), same key; prints the relative differences
as one JSON line. `pool`: `batched_apply`, `min_eigenvalue(backend="device")`
and the picks of NPC and margin on 1 device and on 8, and (`strategies`)
the picks, objectives and seconds of every strategy whose own loops shard
(NPC's candidate scoring with the last-layer, full and embedding kernels, the
swap search, BADGE, coreset, TypiClust, ProbCover, MaxHerding) on a tiny CNN,
and a k-means over several blocks (`kmeans`); prints them as JSON. `bench N`: seconds of NPC's candidate scoring and of
coreset on a pool of N (README "Scaling out").
Not collected by pytest (no test_ prefix): the test process has 1 device.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402


def _toy_images(n, seed=0):
    """Two classes told apart by a bright bar in the top (0) or bottom (1) half."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.uniform(0, 0.3, (n, 28, 28, 1)).astype(np.float32)
    for i, y in enumerate(labels):
        images[i, slice(4, 10) if y == 0 else slice(18, 24), 4:24] = 1.0
    return images, labels.astype(np.int32)


def _flat(tree):
    leaves = [np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(tree)]
    return np.concatenate(leaves) if leaves else np.zeros(0)


def _relative(a, b, reference):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(reference), 1e-30))


def train_check(seed: int = 0) -> dict:
    from npc_jax import train
    from npc_jax.models import get_model

    images, labels = _toy_images(64, seed)
    labeled = np.arange(16)
    data = train.make_train_data(images, labeled, labels[labeled], diagnostic_labels=labels)
    model = get_model("cnn", 2)
    base = train.TrainConfig(steps=6, batch_size=16, mu=2, ema_decay=0.9, threshold=0.6,
                             darp_warmup=0.5, darp_every=2, chunk_steps=3,
                             recalibrate_batches=0)
    key = jax.random.PRNGKey(seed)
    init = _flat(model.init(jax.random.split(key, 3)[0])["params"])
    out = {}
    for method in ("fixmatch", "supervised"):
        runs = {}
        for devices in (1, 8):
            config = dataclasses.replace(base, method=method, devices=devices)
            start = time.perf_counter()
            state, history = train.train(model, config, data, key)
            jax.block_until_ready(state.params)
            runs[devices] = (state, history, time.perf_counter() - start)
        (one, h1, t1), (eight, h8, t8) = runs[1], runs[8]
        p1, p8 = _flat(one.params), _flat(eight.params)
        result = {
            "seconds": [t1, t8],
            "replicated": all(x.sharding.is_fully_replicated
                              for x in jax.tree_util.tree_leaves(eight.params)),
            "num_devices": len(jax.tree_util.tree_leaves(eight.params)[0].devices()),
            # the change of the weights over the N steps, 8 devices vs 1
            "params": _relative(p1, p8, p1 - init),
            "ema_params": _relative(_flat(one.ema_params), _flat(eight.ema_params),
                                    _flat(one.ema_params) - init),
            "batch_stats": _relative(_flat(one.batch_stats), _flat(eight.batch_stats),
                                     _flat(one.batch_stats)),
            "loss": max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(h1, h8)),
        }
        if one.darp is not None:
            result["darp"] = float(np.max(np.abs(_flat(one.darp) - _flat(eight.darp))))
        out[method] = result
    return out


def sharded_pool_check(seed: int = 0) -> dict:
    """`pool_layout="sharded"` on 8 devices: the blocks, the draws, a training."""
    from npc_jax import train
    from npc_jax.models import get_model

    n = 61   # 8 blocks of 8 rows, the last with 5 real rows and 3 of padding
    images, labels = _toy_images(n, seed)
    mesh = train.data_parallel_mesh(train.TrainConfig(batch_size=8, devices=8))
    placed = train.place_pool(images, mesh)
    shards = sorted(placed.addressable_shards, key=lambda s: s.index[0].start)
    out = {"shape": list(placed.shape), "devices": len({s.device for s in shards}),
           "blocks_hold_their_rows": all(
               np.array_equal(np.asarray(s.data)[:max(0, min(n - 8 * d, 8))],
                              images[8 * d:8 * d + 8]) for d, s in enumerate(shards)),
           "padding_is_zero": bool(np.all(np.asarray(shards[-1].data)[5:] == 0))}
    drawn, index = jax.jit(lambda k: train.sample_pool(k, placed, n, 64, mesh))(
        jax.random.PRNGKey(seed))
    drawn, index = np.asarray(drawn), np.asarray(index)
    out["draws_match_rows"] = bool(np.array_equal(drawn, images[index]))
    # device d's draws are rows 8d..8d+7 of the batch, and lie in its own block
    out["draws_in_own_block"] = bool(np.all(index.reshape(8, 8) // 8 == np.arange(8)[:, None]))
    out["max_index"] = int(index.max())
    many = np.concatenate([np.asarray(train.sample_pool(jax.random.PRNGKey(k), placed, n, 64,
                                                        mesh)[1]) for k in range(40)])
    out["rows_drawn"] = int(len(np.unique(many)))

    labeled = np.arange(16)
    data = train.make_train_data(images, labeled, labels[labeled], diagnostic_labels=labels)
    model = get_model("cnn", 2)
    base = train.TrainConfig(steps=6, batch_size=16, mu=2, ema_decay=0.9, threshold=0.6,
                             darp_warmup=0.5, darp_every=2, chunk_steps=3,
                             recalibrate_batches=2, eval_batch_size=16)
    key = jax.random.PRNGKey(seed)
    runs = {}
    for layout, devices in (("replicated", 1), ("sharded", 1), ("sharded", 8)):
        config = dataclasses.replace(base, pool_layout=layout, devices=devices)
        state, history = train.train(model, config, data, key)
        runs[layout, devices] = (_flat(state.params), _flat(state.ema_batch_stats),
                                 [h["loss"] for h in history], state)
    (p1, s1, l1, _), (q1, t1, m1, _) = runs["replicated", 1], runs["sharded", 1]
    out["one_device_same"] = bool(np.array_equal(p1, q1) and np.array_equal(s1, t1)
                                  and l1 == m1)
    p8, s8, l8, state8 = runs["sharded", 8]
    out["eight_finite"] = bool(np.all(np.isfinite(p8)) and np.all(np.isfinite(s8))
                               and np.all(np.isfinite(l8)))
    out["eight_replicated"] = all(x.sharding.is_fully_replicated
                                  for x in jax.tree_util.tree_leaves(state8.params))
    out["eight_differs"] = bool(not np.array_equal(p1, p8))   # other draws
    return out


def pool_check(seed: int = 0) -> dict:
    from npc_jax import inference, spectral
    from npc_jax.data import Pool
    from npc_jax.models import get_model
    from npc_jax.strategies import AcquisitionContext, make_strategy

    images, labels = _toy_images(60, seed)
    model = get_model("cnn", 2)
    variables = model.init(jax.random.PRNGKey(seed))
    out = {"num_devices": jax.local_device_count()}
    apply = lambda devices: inference.batched_apply(
        model.apply_with_features, variables, images, batch_size=20, devices=devices)
    (l1, f1), (l8, f8) = apply(1), apply(0)   # 20 rows a chunk: 24 on 8 devices
    out["batched_apply"] = [float(np.max(np.abs(l1 - l8))), float(np.max(np.abs(f1 - f8)))]
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(50, 9, 9)).astype(np.float32)
    grams = a @ np.swapaxes(a, 1, 2)
    grams[3] = grams[2]
    grams[3, :, 0] = grams[3, 0, :] = 0.0   # a singular matrix: exactly 0 on both paths
    lam8 = spectral.min_eigenvalue(grams, backend="device", chunk_size=16)
    lam1 = np.asarray(jax.jit(spectral.min_eigenvalue_jax)(grams))
    out["min_eigenvalue"] = float(np.max(np.abs(lam8 - lam1)))
    out["min_eigenvalue_zero"] = float(lam8[3])
    ctx = AcquisitionContext(model, variables, images, np.where(np.arange(60) < 4, labels, -1),
                             batch_size=16)
    pool = Pool(num_samples=60, labeled=(0, 1, 2, 3))
    for name, options in (("npc", {"num_candidates": 64}), ("margin", {})):
        key = jax.random.PRNGKey(seed + 1)
        acquisition = make_strategy(name, **options).select(key, ctx, pool, 5)
        out[name] = {"indices": acquisition.indices.tolist(), "objective": acquisition.objective}
    out["strategies"] = strategies_check(seed)
    out["kmeans"] = kmeans_check(seed)
    return out


def kmeans_check(seed: int = 0) -> dict:
    """k-means of 2100 points in 7 blobs, 10 clusters, with 256-row blocks (9 blocks: the
    sharded Lloyd steps run on 8 devices): labels, centres, inertia and iterations."""
    from npc_jax.strategies import kmeans as kmeans_module

    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(c, 1.0, size=(300, 8))
                        for c in rng.normal(0, 4, size=(7, 8))]).astype(np.float32)
    block_rows = kmeans_module._block_rows
    kmeans_module._block_rows = lambda slots: 256   # several blocks on a small set
    try:
        result = kmeans_module.kmeans(jax.random.PRNGKey(seed), x, 10)
    finally:
        kmeans_module._block_rows = block_rows
    return {"labels": result.labels.tolist(), "centers": result.centers.tolist(),
            "inertia": result.inertia, "iterations": result.iterations}


# (strategy, options, labeled points): each strategy's own pool loop, sharded on 8 devices.
STRATEGIES = (
    ("npc", {"num_candidates": 48}, 4),
    ("npc_full", {"num_candidates": 8, "full_exact": True}, 4),
    ("npc_embed", {"num_candidates": 24}, 4),
    ("npc_search", {"num_candidates": 8, "max_swaps": 2, "swap_candidates": 8}, 4),
    ("badge", {}, 4),
    ("coreset", {}, 4),
    ("coreset", {}, 0),   # cold start: the first center drawn with the key
    ("typiclust", {"typicality_k": 5}, 4),
    ("probcover", {}, 4),
    ("maxherding", {}, 4),
)


def strategies_check(seed: int = 0) -> dict:
    """Picks, objective and seconds of each of STRATEGIES on a tiny CNN's 96-image pool."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from toy_config import tiny_cnn_context

    from npc_jax.data import Pool
    from npc_jax.strategies import make_strategy

    _, _, _, ctx = tiny_cnn_context(3, 96, widths=(4, 8, 8, 16))
    out = {}
    for name, options, num_labeled in STRATEGIES:
        pool = Pool(num_samples=96, labeled=tuple(range(num_labeled)))
        start = time.perf_counter()
        acquisition = make_strategy(name, **options).select(jax.random.PRNGKey(seed + 2), ctx,
                                                            pool, 5)
        out[f"{name}/{num_labeled}"] = {"indices": acquisition.indices.tolist(),
                                        "objective": acquisition.objective,
                                        "seconds": time.perf_counter() - start}
    return out


def bench(n: int, seed: int = 0) -> dict:
    """Seconds (best of 2 after a warm-up) of NPC's candidate scoring (m = 1000 batches of
    20, L = 20, a float64 kernel of 128-d features: the last-layer kernel's path), coreset's
    k-center greedy and BADGE's k-means++ seeding (C = 10, q = 100) on n pool points."""
    from npc_jax.strategies import badge, coreset, kernels, search

    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 128)).astype(np.float32)
    labeled = np.arange(20)
    batches = 20 + np.stack([rng.choice(n - 20, 20, replace=False) for _ in range(1000)])
    kernel = kernels.feature_kernel(features, float64=True)
    factors = badge.gradient_factor(rng.normal(size=(n, 10)).astype(np.float32))
    is_center = np.arange(n) < 20
    jobs = {"npc_scoring": lambda: search.score_batches(kernel, labeled, batches),
            "coreset": lambda: coreset.k_center_greedy(features, is_center, ~is_center, 100),
            "badge": lambda: badge.kmeans_pp_gradient(factors, features, ~is_center, 100,
                                                      jax.random.PRNGKey(seed))}
    out = {"num_devices": jax.local_device_count(), "n": n}
    for name, job in jobs.items():
        job()
        times = []
        for _ in range(2):
            start = time.perf_counter()
            job()
            times.append(time.perf_counter() - start)
        out[name] = min(times)
    return out


if __name__ == "__main__":
    what, number = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
    checks = {"train": train_check, "pool": pool_check, "strategies": strategies_check,
              "sharded_pool": sharded_pool_check,
              "bench": bench}
    print(json.dumps(checks[what](number)))
