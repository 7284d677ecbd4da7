"""Multi-host on localhost: 2 processes joined by `npc_jax.distributed` against 1 process.

tests/multihost.py runs in 2 processes (NPC_JAX_COORDINATOR=localhost:PORT,
gloo CPU collectives) with D fake CPU devices each, and in one reference
process with 2·D devices, all three at once: D = 2 on JAX >= 0.6, D = 1 on
JAX 0.5.3, whose gloo collectives abort a FixMatch step with more than one CPU
device per process (`distributed.initialize` refuses that setting there).

Measured (2026-11-30, 2 CPU cores shared with other jobs, load 10-11):
JAX 0.5.3 (2 × 1 vs 1 × 2 devices): every output bit for bit equal, 53 s for
the three processes; JAX 0.10.2 (2 × 2 vs 1 × 4): pool passes and λ_min bit
for bit, the weights after the 4 training steps within 1.0e-6 of their change
(float32 all-reduce order), losses within 1e-7, the same picks; 67 s. The
run's mode is ASL (supervised: the shortest compile); MULTIHOST_MODE=assl runs
FixMatch-DARP instead (0.5.3: bit for bit too, 77 s).
Asserted: pool outputs within 1e-6 (absolute), weights within 1e-4 of their
change, identical NPC and margin picks, and of the 2-process `loop.run`: the
same records in both processes, each round once in results.jsonl, and no
write of process 1 under the workdir (an audit hook saw process 0's).
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from npc_jax import distributed, records
from npc_jax.data import save_npy_dataset

import toy_config

SCRIPT = Path(__file__).with_name("multihost.py")
# Fake CPU devices per process (see the module docstring for JAX 0.5.3).
DEVICES = 2 if jax.__version_info__ >= (0, 6) else 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NPC_JAX_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                                "JAX_PROCESS_ID"))}
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env.update(JAX_PLATFORMS="cpu", MULTIHOST_MODE="asl", **extra,
               XLA_FLAGS=" ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]))
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"multi": [process 0, process 1], "single": reference}: (json info, npz arrays)."""
    root = tmp_path_factory.mktemp("multihost")
    data = toy_config.write_bar_dataset(root / "toy.npz")
    with np.load(data) as arrays:   # the same data as a memory-mapped npy: folder
        save_npy_dataset(root / "toy_npy", arrays["x"], arrays["y"], arrays["x_test"],
                         arrays["y_test"])
    (root / "multi").mkdir()
    (root / "single").mkdir()
    port = _free_port()
    launched = [subprocess.Popen(
        [sys.executable, str(SCRIPT), str(data), str(root / "multi"), str(root / "workdir")],
        env=_env(DEVICES, NPC_JAX_COORDINATOR=f"localhost:{port}", NPC_JAX_NUM_PROCESSES="2",
                 NPC_JAX_PROCESS_ID=str(i)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    launched.append(subprocess.Popen([sys.executable, str(SCRIPT), str(data), str(root / "single")],
                                     env=_env(2 * DEVICES), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=300)[0] for p in launched]
    finally:
        for p in launched:
            p.kill()
    for p, out in zip(launched, outputs):
        assert p.returncode == 0, out[-5000:]

    def load(stem):
        return json.loads(stem.with_suffix(".json").read_text()), np.load(stem.with_suffix(".npz"))

    return {"multi": [load(root / "multi" / f"process-{i}") for i in (0, 1)],
            "single": load(root / "single" / "process-0"), "workdir": root / "workdir"}


def test_two_processes_compute_what_one_process_does(runs):
    (info0, arrays0), (info1, arrays1) = runs["multi"]
    single, reference = runs["single"]
    assert [info0["setup"][1:], info1["setup"][1:]] == [[0, 2], [1, 2]]
    assert info0["devices"] == [DEVICES, 2 * DEVICES] and single["devices"] == [2 * DEVICES] * 2
    assert info0["train_mesh"] == 2 * DEVICES and info0["replicated"]
    for arrays in (arrays0, arrays1):
        for name in ("logits", "features", "min_eigenvalue"):   # pool passes
            np.testing.assert_allclose(arrays[name], reference[name], rtol=0, atol=1e-6,
                                       err_msg=name)
        for name in ("params", "ema_params"):   # 4 steps over every device of both processes
            change = np.linalg.norm(reference[name] - reference["init"])
            assert np.linalg.norm(arrays[name] - reference[name]) <= 1e-4 * change, name
    np.testing.assert_allclose(info0["losses"], single["losses"], rtol=1e-5)
    for name in ("npc", "margin"):   # the same key, the same picks, in every process
        assert info0["picks"][name]["indices"] == info1["picks"][name]["indices"] == \
            single["picks"][name]["indices"], name
    assert info0["picks"]["npc"]["objective"]["lambda_min"] == pytest.approx(
        single["picks"]["npc"]["objective"]["lambda_min"], rel=1e-5)


def test_each_process_reads_only_its_block_of_a_sharded_pool(runs):
    """pool_layout="sharded" from an npy: folder: process p reads the rows of its
    devices' block (and the labeled rows, 0..7), trains as one process does."""
    (info0, arrays0), (info1, arrays1) = runs["multi"]
    single, reference = runs["single"]
    n = info0["sharded"]["num_pool"]
    half = -(-n // 2)   # 2 processes with as many devices each: 2 equal blocks of rows
    labeled = set(range(8))
    for process, info in enumerate((info0, info1)):
        assert info["sharded"]["memory_mapped"]
        block = set(range(process * half, min(n, (process + 1) * half)))
        read = set(info["sharded"]["rows_read"])
        assert block <= read and read <= block | labeled, (process, sorted(read - block))
    assert len(set(single["sharded"]["rows_read"])) == n   # one process reads them all
    change = np.linalg.norm(reference["sharded_params"] - reference["init"])
    for arrays in (arrays0, arrays1):   # the same draws from the same blocks
        assert np.linalg.norm(arrays["sharded_params"] - reference["sharded_params"]) \
            <= 1e-4 * change
    np.testing.assert_allclose(info0["sharded"]["losses"], single["sharded"]["losses"],
                               rtol=1e-5)


def test_only_process_0_writes_the_run(runs):
    (info0, _), (info1, _) = runs["multi"]
    assert info0["records"] == info1["records"]   # both ran every round
    keys = [(r["strategy"], r["round"]) for r in info0["records"]]
    assert keys == [("margin", 0), ("margin", 1), ("npc", 0), ("npc", 1)]
    assert info1["writes"] == []
    workdir = runs["workdir"]
    written = {Path(w.split(" ", 1)[1]).name for w in info0["writes"]}
    assert {"results.jsonl", "seed0_round0.msgpack.tmp", "summary.md"} <= written
    on_file = records.read_records([workdir])
    assert sorted((r.strategy, r.round) for r in on_file) == keys   # each round once


@pytest.mark.parametrize("environ, message", [
    ({"NPC_JAX_COORDINATOR": "localhost:1234"},
     "half set up: NPC_JAX_COORDINATOR=localhost:1234 but NPC_JAX_NUM_PROCESSES and "
     "NPC_JAX_PROCESS_ID unset"),
    ({"NPC_JAX_NUM_PROCESSES": "2", "NPC_JAX_PROCESS_ID": "1"},
     "half set up: .*NPC_JAX_COORDINATOR unset"),
    ({"NPC_JAX_COORDINATOR": "localhost", "NPC_JAX_NUM_PROCESSES": "2",
      "NPC_JAX_PROCESS_ID": "0"}, "must be host:port of process 0"),
    ({"NPC_JAX_COORDINATOR": "h:1", "NPC_JAX_NUM_PROCESSES": "two", "NPC_JAX_PROCESS_ID": "0"},
     "NPC_JAX_NUM_PROCESSES must be an integer"),
    ({"NPC_JAX_COORDINATOR": "h:1", "NPC_JAX_NUM_PROCESSES": "2", "NPC_JAX_PROCESS_ID": "2"},
     r"NPC_JAX_PROCESS_ID must be in 0..1 \(NPC_JAX_NUM_PROCESSES = 2\), got 2"),
    ({"NPC_JAX_COORDINATOR": "auto", "JAX_PROCESS_ID": "0"}, "=auto lets JAX detect"),
])
def test_bad_settings_are_refused_naming_the_variable(environ, message):
    with pytest.raises(distributed.DistributedError, match=message):
        distributed.resolve(environ=environ)


def test_settings_come_from_arguments_then_our_variables_then_jax_s():
    assert distributed.resolve(environ={}).single
    assert distributed.resolve(environ={"NPC_JAX_NUM_PROCESSES": "1"}).single
    jax_own = {"JAX_COORDINATOR_ADDRESS": "a:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed.resolve(environ=jax_own) == distributed.Setup("a:1", 4, 3)
    ours = {**jax_own, "NPC_JAX_COORDINATOR": "b:2", "NPC_JAX_PROCESS_ID": "1"}
    assert distributed.resolve(environ=ours) == distributed.Setup("b:2", 4, 1)
    assert distributed.resolve(process_id=2, environ=ours) == distributed.Setup("b:2", 4, 2)
    assert distributed.resolve(environ={"NPC_JAX_COORDINATOR": "auto"}).coordinator == "auto"
    # A single process: initialize does nothing, this process writes.
    assert distributed.initialize(environ={}).single and distributed.is_writer()
