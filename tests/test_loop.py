"""The ASSL loop end to end on a tiny npz dataset: records, determinism, resume, errors."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from npc_jax import loop, records
from npc_jax.data import DataError

import toy_config

ROOT = Path(__file__).resolve().parents[1]
TIMING_FIELDS = ("acquisition_seconds", "train_seconds")


_write_dataset = toy_config.write_bar_dataset


def _config(dataset, **overrides):
    config = toy_config.get_config()
    config.update({"dataset": f"npz:{dataset}", **overrides})
    return config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _write_dataset(tmp_path_factory.mktemp("data") / "toy.npz")


def _strip(records):
    return [{k: v for k, v in r.to_json().items() if k not in TIMING_FIELDS + ("train_metrics",)}
            for r in records]


def _count_trainings(monkeypatch):
    calls = []
    real = loop.train.timed_train

    def counting(*args, **kwargs):
        calls.append(kwargs.get("description"))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop.train, "timed_train", counting)
    return calls


def _round0_lambda_min(workdir, record):
    """λ_min of the last-layer logits kernel over labeled ∪ acquired, recomputed
    in float64 from the round-0 checkpoint on disk (independent of the strategy)."""
    import flax.serialization
    import jax

    from npc_jax.models import get_model

    model = get_model("cnn", 4)
    template = jax.device_get(model.init(jax.random.PRNGKey(0)))
    variables = flax.serialization.from_bytes(
        template, (workdir / "checkpoints" / "seed0_round0.msgpack").read_bytes())
    x = np.load(record.config["dataset"].removeprefix("npz:"))["x"]
    points = list(record.labeled_indices + record.acquired_indices)
    images = x[points][..., None].astype(np.float32) / 255.0
    _, features = model.apply_with_features(variables, images)
    phi = np.concatenate([np.asarray(features, np.float64), np.ones((len(points), 1))], 1)
    return float(np.linalg.eigvalsh(4.0 * phi @ phi.T)[0])


def test_records_are_complete_shared_and_deterministic(dataset, tmp_path, monkeypatch):
    trainings = _count_trainings(monkeypatch)
    first = loop.run(_config(dataset), tmp_path / "a", progress=False)
    # One round-0 training shared by both strategies, then 2 rounds each.
    assert len(trainings) == 1 + 2 * 2, trainings
    assert len(first) == 6  # 2 strategies x 3 rounds
    for r in first:
        assert r.num_labels == 4 + 4 * r.round
        assert len(set(r.labeled_indices)) == r.num_labels
        assert sum(r.class_counts) == r.num_labels
        assert not set(r.acquired_indices) & set(r.labeled_indices)
        assert len(r.acquired_indices) == (4 if r.round < 2 else 0)
    by = {(r.strategy, r.round): r for r in first}
    assert by[("passive", 0)].test_accuracy == by[("npc", 0)].test_accuracy
    # The summary of the one round-0 training, loaded from its checkpoint.
    assert by[("passive", 0)].train_seconds == by[("npc", 0)].train_seconds
    objective = by[("npc", 0)].objective
    assert objective.lambda_min == objective.random_batches.quantile(1.0)
    assert objective.lambda_min > objective.random_batches.quantile(0.0)
    assert objective.lambda_min == pytest.approx(
        _round0_lambda_min(tmp_path / "a", by[("npc", 0)]), rel=1e-4)
    assert by[("passive", 1)].labeled_indices == (
        by[("passive", 0)].labeled_indices + by[("passive", 0)].acquired_indices)
    assert (tmp_path / "a" / "summary.md").exists() and (tmp_path / "a" / "accuracy.png").exists()
    second = loop.run(_config(dataset), tmp_path / "b", progress=False)
    assert _strip(first) == _strip(second)
    # Re-running a finished workdir trains nothing and adds nothing.
    del trainings[:]
    again = loop.run(_config(dataset), tmp_path / "a", progress=False)
    assert _strip(again) == _strip(first) and trainings == []


def test_asl_mode_and_a_different_seed_gives_other_labels(dataset, tmp_path):
    records = loop.run(_config(dataset, mode="asl", strategies="passive", seeds="0,1",
                               rounds=1), tmp_path, progress=False)
    assert {r.mode for r in records} == {"asl"} and len(records) == 4
    initial = {r.seed: r.labeled_indices for r in records if r.round == 0}
    assert initial[0] != initial[1]


def test_resume_after_kill_gives_the_same_records(dataset, tmp_path):
    """Killed after passive's first round: the resumed process finishes passive
    and runs npc, whose round 0 must come from the checkpoint on disk."""
    reference = loop.run(_config(dataset), tmp_path / "ref", progress=False)
    workdir = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "experiments" / "assl.py"),
           f"--config={ROOT / 'tests' / 'toy_config.py'}", f"--workdir={workdir}",
           f"--config.dataset=npz:{dataset}"]
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = workdir / "results.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = log.read_text().count("\n")
    assert 1 <= written < 4, "the kill should land before npc's round 0"
    checkpoint = workdir / "checkpoints" / "seed0_round0.msgpack"
    checkpoint_before = (checkpoint.stat().st_mtime_ns, checkpoint.read_bytes())
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = records.read_records([log])
    assert _strip(resumed) == _strip(reference)
    # Loaded, not retrained: the file is untouched and npc's round 0 carries the
    # summary (wall time included) of the training before the kill.
    assert (checkpoint.stat().st_mtime_ns, checkpoint.read_bytes()) == checkpoint_before
    by = {(r.strategy, r.round): r for r in resumed}
    assert by[("npc", 0)].train_seconds == by[("passive", 0)].train_seconds


def test_bad_configs_are_refused_with_the_fix(dataset, tmp_path):
    with pytest.raises(ValueError, match="Unknown strategy 'nope'"):
        loop.run(_config(dataset, strategies="passive,nope"), tmp_path)
    with pytest.raises(ValueError, match="mode"):
        loop.run(_config(dataset, mode="semi"), tmp_path)
    with pytest.raises(ValueError, match="seeds"):
        loop.run(_config(dataset, seeds="0,x"), tmp_path)
    with pytest.raises(DataError, match="rounds"):
        loop.run(_config(dataset, query_size=100, rounds=5), tmp_path)
    loop.run(_config(dataset, strategies="passive", rounds=0), tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="different config"):
        loop.run(_config(dataset, strategies="passive", rounds=0, train_steps=3),
                 tmp_path / "c", progress=False)


def test_strategy_options_are_checked_per_strategy(dataset, tmp_path):
    loop.run(_config(dataset, strategies="npc", rounds=0), tmp_path, progress=False)
    # Options of another strategy do not conflict with finished npc records...
    other = _config(dataset, strategies="passive", rounds=0)
    other.strategy_options.margin = {"chunk_size": 8}
    assert len(loop.run(other, tmp_path, progress=False)) == 2
    # ...but changing npc's own options in the same workdir is refused.
    changed = _config(dataset, strategies="npc", rounds=0)
    changed.strategy_options.npc.num_candidates = 32
    with pytest.raises(ValueError, match="new strategy name"):
        loop.run(changed, tmp_path, progress=False)


def test_initial_model_is_the_median_of_k_trainings(dataset, tmp_path):
    records = loop.run(_config(dataset, strategies="passive", rounds=0, initial_trainings=3),
                       tmp_path, progress=False)
    info = records[0].initial_trainings
    assert info.criterion == "test_accuracy" and len(info.test_accuracies) == 3
    accuracies = info.test_accuracies
    assert accuracies[info.chosen] == sorted(accuracies)[1]
    assert records[0].test_accuracy == accuracies[info.chosen]
    with pytest.raises(ValueError, match="odd"):
        loop.run(_config(dataset, initial_trainings=2), tmp_path / "even")


@pytest.mark.parametrize("strategy", ["passive", "npc", "margin", "coreset", "badge"])
def test_zero_shot_queries_from_the_random_initialisation(dataset, tmp_path, strategy):
    records = loop.run(_config(dataset, strategies=strategy, initial_labels=0, rounds=1,
                               query_size=8), tmp_path, progress=False)
    first, second = sorted(records, key=lambda r: r.round)
    assert first.num_labels == 0 and first.train_seconds == 0.0
    assert len(set(first.acquired_indices)) == 8
    assert second.num_labels == 8 and second.labeled_indices == first.acquired_indices


def test_cold_start_first_query_then_a_continuation_strategy(dataset, tmp_path, monkeypatch):
    """initial_labels=0, first_query_size=4 chosen by the job's strategy from the
    untrained network, then rounds of query_size=6 made by continue_with; the
    records stay the job's; the hash moves with the new fields only when set."""
    calls = []
    real_select = loop.strategies.make_strategy

    def recording(name, **options):
        strategy = real_select(name, **options)
        select = strategy.select

        def select_and_note(key, ctx, pool, query_size):
            calls.append((name, int(pool.num_labeled), query_size))
            return select(key, ctx, pool, query_size)

        object.__setattr__(strategy, "select", select_and_note)
        return strategy

    monkeypatch.setattr(loop.strategies, "make_strategy", recording)
    config = _config(dataset, strategies="coreset", initial_labels=0, rounds=2, query_size=6,
                     first_query_size=4, continue_with="margin", train_steps=20)
    got = sorted(loop.run(config, tmp_path, progress=False), key=lambda r: r.round)
    assert [r.num_labels for r in got] == [0, 4, 10]
    assert {r.strategy for r in got} == {"coreset"}
    assert calls == [("coreset", 0, 4), ("margin", 4, 6)]
    assert len(set(got[0].acquired_indices)) == 4 and len(set(got[1].acquired_indices)) == 6
    from npc_jax.config import RunSettings
    plain = RunSettings.from_config(_config(dataset))
    neutral = RunSettings.from_config(_config(dataset, first_query_size=0, continue_with=""))
    assert plain.config_hash == neutral.config_hash
    assert RunSettings.from_config(config).config_hash != plain.config_hash
    with pytest.raises(ValueError, match="continue_with"):
        RunSettings.from_config(_config(dataset, continue_with="nope"))
    with pytest.raises(ValueError, match="stateless"):
        RunSettings.from_config(_config(dataset, continue_with="albl"))


def test_with_a_validation_split_the_labels_are_those_of_the_carved_pool(dataset, tmp_path):
    """Indices of the pool after the validation carve get that pool's labels (a
    labeller built on the uncarved pool paired images with other images' labels)."""
    from npc_jax.data import carve_validation, load_dataset

    config = _config(dataset, strategies="passive", rounds=1, validation_size=40,
                     train_steps=30)
    got = loop.run(config, tmp_path, progress=False)
    carved, _, _ = carve_validation(load_dataset(f"npz:{dataset}"), 40)
    for record in got:
        labels = carved.y_train[list(record.labeled_indices)]
        assert record.class_counts == tuple(np.bincount(labels, minlength=4))
    # Bars are trivially learnable: right labels give a clearly better than chance model.
    assert got[-1].validation_accuracy > 0.5
