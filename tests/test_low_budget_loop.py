"""TypiClust, ProbCover, MaxHerding, npc_embed and npc_typical in the ASSL loop, warm and cold.

The toy bar-image pool of toy_config (120 images, 4 classes); the embedding
is "auto": the model's penultimate features (no pretraining in this config).
Cold start: initial_labels = 0, the first query chosen with no label at all.
"""
import json
import warnings

import numpy as np
import pytest

from npc_jax import loop

import toy_config

LOW_BUDGET = "typiclust,probcover,maxherding,npc_embed,npc_typical"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return toy_config.write_bar_dataset(tmp_path_factory.mktemp("data") / "toy.npz",
                                        n_train=120)


def _run(dataset, path, **overrides):
    config = toy_config.get_config()
    config.update({"dataset": f"npz:{dataset}", "strategies": LOW_BUDGET, "rounds": 1,
                   "strategy_options": {}, **overrides})
    with warnings.catch_warnings():
        # A toy model's features may make ProbCover's δ degenerate: warned, still a batch.
        warnings.simplefilter("ignore")
        records = loop.run(config, path, progress=False)
    by_strategy = {}
    for record in records:
        by_strategy.setdefault(record.strategy, []).append(record)
    assert sorted(by_strategy) == sorted(LOW_BUDGET.split(","))
    return {name: sorted(rounds, key=lambda r: r.round) for name, rounds in by_strategy.items()}


@pytest.mark.parametrize("initial_labels", [4, 0], ids=["warm", "cold"])
def test_low_budget_strategies_run_in_the_loop(dataset, tmp_path, initial_labels):
    q = 4
    for name, (first, second) in _run(dataset, tmp_path, initial_labels=initial_labels,
                                      query_size=q).items():
        assert first.num_labels == initial_labels, name
        acquired = first.acquired_indices
        assert len(set(acquired)) == q and not set(acquired) & set(first.labeled_indices), name
        assert second.num_labels == initial_labels + q, name
        assert sorted(second.labeled_indices) == sorted(first.labeled_indices + acquired), name
        json.dumps(first.to_json())   # the objective as recorded: JSON all through
        assert np.all(np.asarray(acquired) < 120), name
