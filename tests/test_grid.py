"""A grid (strategies × seeds) split over workers with config.shard = "i/N".

Two workers of a 2-strategy × 2-seed toy grid give exactly the records of one
unsharded run; a second process on a worker's records file, an unsharded run
beside a grid and a grid of another size fail at once and write nothing.
"""
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest

from npc_jax import loop, records, storage
from npc_jax.config import RunSettings

import toy_config

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("acquisition_seconds", "train_seconds", "train_metrics")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return toy_config.write_bar_dataset(tmp_path_factory.mktemp("data") / "toy.npz")


def _config(dataset, **overrides):
    config = toy_config.get_config()
    config.update({"dataset": f"npz:{dataset}", "seeds": "0,1", "rounds": 1, **overrides})
    return config


def _values(run_records):
    """Records without timings, in a fixed order."""
    return sorted(({k: v for k, v in r.to_json().items() if k not in TIMING}
                   for r in run_records), key=lambda r: (r["strategy"], r["seed"], r["round"]))


def test_shard_takes_every_nth_job_and_is_validated(dataset):
    grid = [(0, "passive"), (0, "npc"), (1, "passive"), (1, "npc")]
    assert RunSettings.from_config(_config(dataset)).jobs() == grid
    assert RunSettings.from_config(_config(dataset, shard="0/2")).jobs() == grid[0::2]
    assert RunSettings.from_config(_config(dataset, shard="1/3")).jobs() == [grid[1]]
    a, b = (RunSettings.from_config(_config(dataset, shard=s)) for s in ("0/2", "1/2"))
    assert a.config_hash == b.config_hash == RunSettings.from_config(_config(dataset)).config_hash
    assert "shard" not in a.config   # who ran a job is not what it computed
    for bad in ("2/2", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ValueError, match="config.shard must be 'i/N'"):
            RunSettings.from_config(_config(dataset, shard=bad))
    with pytest.raises(ValueError, match="splits 4 .strategy, seed. jobs over 5 workers"):
        RunSettings.from_config(_config(dataset, shard="0/5"))
    with pytest.raises(ValueError, match="human-labelled run has one labeller"):
        RunSettings.from_config(_config(dataset, shard="0/2", validation_size=0), labels="human")


def test_two_workers_give_the_records_of_one_unsharded_run(dataset, tmp_path):
    whole = loop.run(_config(dataset), tmp_path / "whole", progress=False)
    grid = tmp_path / "grid"
    first = loop.run(_config(dataset, shard="0/2"), grid, progress=False)
    assert sorted({(r.seed, r.strategy) for r in first}) == [(0, "passive"), (1, "passive")]
    merged = loop.run(_config(dataset, shard="1/2"), grid, progress=False)
    assert sorted(p.name for p in grid.glob("*.jsonl")) == [
        "results.shard-0-of-2.jsonl", "results.shard-1-of-2.jsonl"]
    assert len(whole) == 8 and _values(merged) == _values(whole)
    assert _values(records.read_records([grid])) == _values(whole)
    assert "| npc" in (grid / "summary.md").read_text()   # the last worker's: every record
    # Finished: re-running a worker, or the whole grid unsharded, trains nothing.
    again = loop.run(_config(dataset), grid, progress=False)
    assert _values(again) == _values(whole)
    assert not (grid / loop.RESULTS_FILE).exists()


def _worker(dataset, workdir, shard, started, release):
    """A grid worker that pauses after its first record (spawned process)."""
    def hold(record):
        started.set()
        release.wait(120)

    loop.run(_config(dataset, shard=shard), workdir, progress=False, on_record=hold)


def test_a_second_process_on_a_worker_file_fails_at_once(dataset, tmp_path):
    context = multiprocessing.get_context("spawn")
    started, release = context.Event(), context.Event()
    holder = context.Process(target=_worker, args=(dataset, tmp_path, "0/2", started, release))
    holder.start()
    try:
        assert started.wait(120), "the first worker wrote no record"
        written = (tmp_path / "results.shard-0-of-2.jsonl").read_bytes()
        for shard, match in [
                ("0/2", f"results.shard-0-of-2.jsonl is in use by worker 0/2 .pid {holder.pid}.; "
                        "worker 0/2 is already running"),
                ("", f"is in use by worker 0/2 .pid {holder.pid}.; wait for it to finish"),
                ("1/3", "it runs a grid of 2 workers: give every worker --config.shard=i/2")]:
            start = time.perf_counter()
            with pytest.raises(storage.WorkdirBusy, match=match):
                loop.run(_config(dataset, shard=shard), tmp_path, progress=False)
            assert time.perf_counter() - start < 5   # at once: before any data or JAX work
        assert (tmp_path / "results.shard-0-of-2.jsonl").read_bytes() == written
        assert sorted(p.name for p in tmp_path.glob("results*")) == ["results.shard-0-of-2.jsonl"]
    finally:
        release.set()
        holder.join(120)
    assert holder.exitcode == 0
    assert len(records.read_records([tmp_path])) == 4   # its 2 jobs × 2 rounds, once each


def test_command_line_worker_refuses_a_duplicate(dataset, tmp_path):
    """The entry point: a second `assl.py --config.shard=0/2` exits with the message."""
    holding = storage.WorkdirLock(tmp_path, ".npc_jax.shard-0-of-2.lock",
                                  holder="worker 0/2 (pid 1)")
    command = [sys.executable, str(ROOT / "experiments" / "assl.py"),
               "--config", str(ROOT / "tests" / "toy_config.py"), "--workdir", str(tmp_path),
               f"--config.dataset=npz:{dataset}", "--config.shard=0/2"]
    with holding:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode != 0
    assert "worker 0/2 is already running" in done.stderr, done.stderr[-2000:]
    assert not list(tmp_path.glob("results*"))
