"""Every baseline by name in the ASSL loop, and ALBL's bandit resumed from the records."""
import json

import numpy as np
import pytest

from npc_jax import loop

import toy_config

BASELINES = "margin,entropy,least_confidence,coreset,badge,albl"
# Timings, and the config (its `strategies` field names the subset a command ran).
VOLATILE = ("acquisition_seconds", "train_seconds", "train_metrics", "config")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)

    def make(n, classes=4):
        y = np.arange(n) % classes
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 3 + 6 * c: 7 + 6 * c, 4:24] = 255
        return x, y

    path = tmp_path_factory.mktemp("data") / "toy.npz"
    (x, y), (x_test, y_test) = make(120), make(40)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


def _config(dataset, **overrides):
    config = toy_config.get_config()
    config.update({"dataset": f"npz:{dataset}", "strategies": BASELINES,
                   "strategy_options": {"albl": {"horizon": 2}}, **overrides})
    return config


def _strip(records):
    return [{k: v for k, v in r.to_json().items() if k not in VOLATILE} for r in records]


def test_every_baseline_runs_in_the_loop_and_albl_resumes(dataset, tmp_path):
    records = loop.run(_config(dataset), tmp_path / "all", progress=False)
    by_strategy = {}
    for record in records:
        by_strategy.setdefault(record.strategy, []).append(record)
    assert sorted(by_strategy) == sorted(BASELINES.split(","))
    for name, rounds in by_strategy.items():
        assert [r.round for r in rounds] == [0, 1, 2]
        for r in rounds[:2]:
            acquired = r.acquired_indices
            assert len(set(acquired)) == 4 and not set(acquired) & set(r.labeled_indices)
            json.dumps(r.to_json())   # the record as written: JSON all through
    albl = by_strategy["albl"]
    assert albl[1].objective.reward is not None
    assert albl[0].strategy_state["round"] == 1 and albl[1].strategy_state["round"] == 2

    # A run killed after ALBL's round 0: its records hold the bandit's state;
    # resuming gives the same later rounds as the uninterrupted run.
    workdir = tmp_path / "resumed"
    workdir.mkdir()
    (workdir / "results.jsonl").write_text(json.dumps(albl[0].to_json()) + "\n")
    resumed = loop.run(_config(dataset, strategies="albl"), workdir, progress=False)
    assert _strip(resumed) == _strip(albl)
