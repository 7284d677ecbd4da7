"""Data-parallel training and sharded pool work: 8 fake CPU devices against 1.

The test process has one device (XLA fixes the device count at start-up), so
the 8-device runs happen in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (tests/multidevice.py).

Tolerances (measured, seeds 0-3, JAX 0.5.3 on XLA:CPU, tests/multidevice.py's
6-step runs): the change of the weights on 8 devices differs from that on 1
device by 3e-4 to 3e-3 of its norm for FixMatch-DARP and 2e-6 to 2.1e-2 for
supervised training; BatchNorm statistics by at most 2.2e-5 (relative),
losses 8.9e-5 (relative), the DARP buffer 2.5e-5 (absolute). The cause is
float32 reduction order, amplified by the ReLU kinks: on ONE device, the
same step's gradient with the batch's rows permuted differs from the
unpermuted one by 1.1e-3 of its norm (seed 1), exactly as much as the
8-device gradient does; momentum then carries it through the steps.
Asserted, with margin: 5e-2 (weights), 1e-3 (losses, BN statistics, DARP).

The strategies' own pool loops (NPC's candidate scoring with the last-layer,
full and embedding kernels and the swap search; BADGE, coreset, TypiClust,
ProbCover, MaxHerding) pick the same points on 8 devices as on 1 with the same
key; their float objectives agree within 1e-4 relative (measured, JAX 0.5.3
and 0.10.2: at most 1.1e-5, the float32 sums of the full kernel's λ_min and,
on 0.10.2, of MaxHerding's gains; 7e-8 for BADGE's distances, 1e-12 for the
float64 Grams of the embedding kernel; the rest equal bit for bit).
k-means sharded over row blocks gives the same labels and iterations, its
centres and inertia within 1e-5 relative (measured: 1 ulp, 4.8e-7, on 5003
points after 82 Lloyd steps; equal on the test's 2100).
"""
import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from npc_jax import inference, train
from npc_jax.strategies import pool_mesh

SCRIPT = Path(__file__).with_name("multidevice.py")


@functools.lru_cache(maxsize=None)   # the pool runs serve two tests
def _run(what: str, devices: int, seed: int = 0) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    done = subprocess.run([sys.executable, str(SCRIPT), what, str(seed)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_training_on_8_devices_agrees_with_1_device():
    result = _run("train", 8)
    for method in ("fixmatch", "supervised"):
        r = result[method]
        assert r["num_devices"] == 8 and r["replicated"], r
        assert r["params"] < 5e-2 and r["ema_params"] < 5e-2, r
        assert r["batch_stats"] < 1e-3 and r["loss"] < 1e-3, r
    assert result["fixmatch"]["darp"] < 1e-3


def test_sharded_pool_blocks_draws_and_training_on_8_devices():
    r = _run("sharded_pool", 8)
    assert r["shape"] == [64, 28, 28, 1] and r["devices"] == 8, r
    assert r["blocks_hold_their_rows"] and r["padding_is_zero"], r
    assert r["draws_match_rows"] and r["draws_in_own_block"], r
    assert r["max_index"] < 61 and r["rows_drawn"] == 61, r   # every real row, no padding
    assert r["one_device_same"], r      # on one device the layouts are one computation
    assert r["eight_finite"] and r["eight_replicated"] and r["eight_differs"], r


def test_pool_work_on_8_devices_matches_1_device():
    eight, one = _run("pool", 8), _run("pool", 1)
    assert eight["num_devices"] == 8 and one["num_devices"] == 1
    # Inside the 8-device process: sharded chunks vs one device, bit for bit.
    assert eight["batched_apply"] == [0.0, 0.0]
    assert eight["min_eigenvalue"] == 0.0 and eight["min_eigenvalue_zero"] == 0.0
    # Across processes: the same picks with the same key.
    for name in ("npc", "margin"):
        assert eight[name]["indices"] == one[name]["indices"], name
    assert eight["npc"]["objective"]["lambda_min"] == pytest.approx(
        one["npc"]["objective"]["lambda_min"], rel=1e-4)


def _leaves(tree, path=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{path}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _leaves(value, f"{path}[{i}]")
    else:
        yield path, tree


def test_strategies_pool_loops_on_8_devices_pick_as_on_1_device():
    eight, one = _run("pool", 8)["strategies"], _run("pool", 1)["strategies"]
    assert sorted(eight) == sorted(one) and len(one) == 10
    for name in one:
        assert eight[name]["indices"] == one[name]["indices"], name
        assert len(set(one[name]["indices"])) == 5, name
        expected = dict(_leaves(one[name]["objective"]))
        for path, value in _leaves(eight[name]["objective"]):
            if isinstance(value, float):
                assert value == pytest.approx(expected[path], rel=1e-4, abs=1e-12), (name, path)
            else:
                assert value == expected[path], (name, path)
    # k-means sharded over row blocks: the same labels, centres to float32 round-off.
    eight, one = _run("pool", 8)["kmeans"], _run("pool", 1)["kmeans"]
    assert eight["labels"] == one["labels"] and eight["iterations"] == one["iterations"]
    assert np.allclose(eight["centers"], one["centers"], rtol=1e-5, atol=1e-6)
    assert eight["inertia"] == pytest.approx(one["inertia"], rel=1e-5)


def test_batch_size_that_does_not_divide_the_devices_is_refused():
    with pytest.raises(ValueError, match=r"batch_size = 12 does not divide evenly over 8 "
                                         r"devices.*multiple of 8"):
        train.TrainConfig(batch_size=12, devices=8)
    with pytest.raises(ValueError, match="devices must be 0"):
        train.TrainConfig(devices=-1)


def test_more_devices_than_the_process_has_are_refused():
    config = train.TrainConfig(batch_size=8, devices=jax.local_device_count() + 1)
    with pytest.raises(ValueError, match="Asked for .* devices but this process has"):
        train.data_parallel_mesh(config)


def test_one_device_keeps_the_single_device_path():
    assert jax.local_device_count() == 1
    assert train.data_parallel_mesh(train.TrainConfig()) is None   # default: all (= 1)
    assert inference.local_mesh() is None
    assert pool_mesh.mesh() is None   # the strategies' loops keep their single-device code
    assert dataclasses.replace(train.TrainConfig(), devices=1).devices == 1
