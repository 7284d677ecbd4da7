"""The ASSL / ASL loop: train from scratch → evaluate → acquire → reveal.

`run(config, workdir)` runs every (seed, strategy) of a config for
``rounds`` acquisitions, writing one record per round to
``workdir/results.jsonl``. Round r of a (strategy, seed) trains on the labels
of round r, evaluates on the test split, then acquires ``query_size`` labels
(none after the last round); the record is written when all of that is done,
so a killed run restarts at the first unfinished round. The round-0 model of a
seed depends only on the seed's initial labels: it is trained once, saved in
``workdir/checkpoints/`` and shared by every strategy of that seed.

Keys: the seed's key is split once into ``train`` and ``acquire``; round r
uses ``fold_in(train, r)`` and ``fold_in(acquire, r)``, the same for every
strategy, so strategies differ only in the labels they choose.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import flax.serialization
import jax
import numpy as np

from npc_jax import results, strategies, train
from npc_jax.data import DataError, Dataset, Pool, carve_validation, load_dataset
from npc_jax.models import Model, get_model
from npc_jax.strategies import AcquisitionContext

# Config fields outside the run-wide hash: which subset of a benchmark a command
# runs, and the strategies' options (checked per strategy: each record carries
# its own strategy's options), so that later commands can add strategies and
# variants to the same workdir.
_SUBSET_FIELDS = ("strategies", "seeds", "strategy_options")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The validated, typed view of a run's config."""

    dataset: str
    data_dir: str | None
    model: str
    mode: str
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    initial_labels: int
    query_size: int
    rounds: int
    validation_size: int
    initial_trainings: int
    train: train.TrainConfig
    strategy_options: dict
    config: dict
    config_hash: str

    @classmethod
    def from_config(cls, config) -> "RunSettings":
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        mode = cfg["mode"]
        if mode not in ("assl", "asl"):
            raise ValueError(f"config.mode must be 'assl' (FixMatch-DARP) or 'asl' "
                             f"(supervised), got {mode!r}.")
        names = tuple(s.strip() for s in str(cfg["strategies"]).split(",") if s.strip())
        if not names:
            raise ValueError("config.strategies is empty; e.g. --config.strategies=passive,npc")
        for name in names:
            if name not in strategies.available():
                raise ValueError(f"Unknown strategy {name!r} in config.strategies; "
                                 f"available: {', '.join(strategies.available())}.")
        try:
            seeds = tuple(int(s) for s in str(cfg["seeds"]).split(",") if s.strip())
        except ValueError:
            raise ValueError(f"config.seeds must be comma-separated integers, "
                             f"got {cfg['seeds']!r}.") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"config.seeds must be distinct integers, got {cfg['seeds']!r}.")
        if int(cfg["query_size"]) <= 0:
            raise ValueError(f"config.query_size must be positive, got {cfg['query_size']}.")
        if int(cfg["initial_labels"]) < 0:
            raise ValueError("config.initial_labels must be >= 0 (0: zero-shot, the first "
                             f"query from a randomly initialised model), got {cfg['initial_labels']}.")
        if int(cfg["rounds"]) < 0:
            raise ValueError(f"config.rounds must be >= 0, got {cfg['rounds']}.")
        initial_trainings = int(cfg.get("initial_trainings", 1))
        if initial_trainings < 1 or initial_trainings % 2 == 0:
            raise ValueError("config.initial_trainings must be a positive odd number (the "
                             f"round-0 model is the median of that many), got {initial_trainings}.")
        train_fields = dict(cfg.get("train", {}))
        train_fields["steps"] = int(cfg["train_steps"])
        train_fields["method"] = "fixmatch" if mode == "assl" else "supervised"
        options = {k: dict(v) for k, v in dict(cfg.get("strategy_options", {})).items()}
        for name in options:
            if name not in strategies.available():
                raise ValueError(f"config.strategy_options names unknown strategy {name!r}.")
        relevant = {k: v for k, v in cfg.items() if k not in _SUBSET_FIELDS}
        digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
        return cls(dataset=cfg["dataset"], data_dir=cfg.get("data_dir") or None,
                   model=cfg["model"], mode=mode, strategies=names, seeds=seeds,
                   initial_labels=int(cfg["initial_labels"]),
                   query_size=int(cfg["query_size"]), rounds=int(cfg["rounds"]),
                   validation_size=int(cfg.get("validation_size", 0)),
                   initial_trainings=initial_trainings,
                   train=train.TrainConfig(**train_fields), strategy_options=options,
                   config=cfg, config_hash=digest)

    @property
    def final_num_labels(self) -> int:
        return self.initial_labels + self.rounds * self.query_size


class _Runner:
    def __init__(self, settings: RunSettings, workdir: Path, dataset: Dataset,
                 progress: bool):
        self.s = settings
        self.validation = None
        if settings.validation_size:
            dataset, x_val, y_val = carve_validation(dataset, settings.validation_size)
            self.validation = (x_val, y_val)
        self.workdir = workdir
        self.data = dataset
        self.progress = progress
        self.model: Model = get_model(settings.model, dataset.num_classes, dataset.image_shape)
        self.log = results.ResultsLog(workdir / "results.jsonl")
        self.done = {}
        for record in self.log.read():
            if record.get("config_hash") != settings.config_hash:
                raise ValueError(
                    f"{self.log.path} holds records of a different config "
                    f"(hash {record.get('config_hash')} != {settings.config_hash}); "
                    "use a new --workdir, or the original config, to resume.")
            self.done[(record["strategy"], record["seed"], record["round"])] = record

    # -- training ------------------------------------------------------------

    def _train_and_evaluate(self, pool: Pool, key: jax.Array, description: str):
        labeled = pool.labeled_indices
        data = train.make_train_data(
            self.data.x_train, labeled, self.data.y_train[labeled],
            capacity=self.s.final_num_labels, diagnostic_labels=self.data.y_train)
        state, history, seconds = train.timed_train(
            self.model, self.s.train, data, key, progress=self.progress,
            description=description)
        variables = jax.device_get(state.eval_variables)
        accuracy = train.evaluate(self.model, variables, self.data.x_test, self.data.y_test,
                                  batch_size=self.s.train.eval_batch_size)
        summary = {"test_accuracy": accuracy, "train_seconds": seconds,
                   "train_metrics": history[-1] if history else {}}
        if self.validation is not None:
            summary["validation_accuracy"] = train.evaluate(
                self.model, variables, *self.validation,
                batch_size=self.s.train.eval_batch_size)
        return variables, summary

    def _initial_model(self, seed: int, pool: Pool, key: jax.Array):
        """The round-0 model of a seed: trained once, shared by its strategies.

        With no initial labels (zero-shot) it is the random initialisation from
        `key`. With ``initial_trainings = k > 1`` (the paper's protocol, k = 5) it is
        the trainee of median accuracy among k trainings from keys
        ``fold_in(key, i)``: on the validation split when the config carves
        one, else on the test split as the paper did.
        """
        stem = self.workdir / "checkpoints" / f"seed{seed}_round0"
        weights, meta = stem.with_suffix(".msgpack"), stem.with_suffix(".json")
        template = jax.device_get(self.model.init(jax.random.PRNGKey(0)))
        if weights.exists() and meta.exists():
            summary = json.loads(meta.read_text())
            if summary.get("labeled_indices") == pool.labeled_indices.tolist():
                return flax.serialization.from_bytes(template, weights.read_bytes()), summary
        k = self.s.initial_trainings
        if not len(pool.labeled_indices):   # zero-shot: nothing to train on
            variables = jax.device_get(self.model.init(key))
            summary = {"test_accuracy": train.evaluate(
                           self.model, variables, self.data.x_test, self.data.y_test,
                           batch_size=self.s.train.eval_batch_size),
                       "train_seconds": 0.0, "train_metrics": {}}
            if self.validation is not None:
                summary["validation_accuracy"] = train.evaluate(
                    self.model, variables, *self.validation,
                    batch_size=self.s.train.eval_batch_size)
        elif k == 1:
            variables, summary = self._train_and_evaluate(pool, key, f"seed {seed} round 0")
        else:
            trainees = [self._train_and_evaluate(pool, jax.random.fold_in(key, i),
                                                 f"seed {seed} round 0 ({i + 1}/{k})")
                        for i in range(k)]
            criterion = "validation_accuracy" if self.validation is not None else "test_accuracy"
            scores = [summary[criterion] for _, summary in trainees]
            median = int(np.argsort(scores, kind="stable")[k // 2])
            variables, summary = trainees[median]
            summary["initial_trainings"] = {
                "criterion": criterion, "chosen": median,
                "test_accuracies": [t[1]["test_accuracy"] for t in trainees],
                "train_seconds": [t[1]["train_seconds"] for t in trainees]}
        summary["labeled_indices"] = pool.labeled_indices.tolist()
        stem.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(weights, flax.serialization.to_bytes(variables))
        _atomic_write(meta, json.dumps(summary).encode())
        return variables, summary

    # -- one (strategy, seed) ------------------------------------------------------

    def _resume_pool(self, strategy: str, seed: int, pool: Pool) -> tuple[Pool, int]:
        """The pool and round to start from, after the records already written."""
        start = 0
        while (strategy, seed, start) in self.done:
            record = self.done[(strategy, seed, start)]
            pool = Pool(pool.num_samples, tuple(record["labeled_indices"]))
            if record["acquired_indices"]:
                pool = pool.reveal(record["acquired_indices"])
            start += 1
        return pool, start

    def run_one(self, strategy_name: str, seed: int) -> None:
        s = self.s
        strategy = strategies.make_strategy(strategy_name,
                                            **s.strategy_options.get(strategy_name, {}))
        train_key, acquire_key = jax.random.split(jax.random.PRNGKey(seed))
        initial = Pool.initial(self.data.y_train, s.initial_labels, seed=seed,
                               num_classes=self.data.num_classes)
        initial.check_budget(s.query_size, s.rounds)
        options = s.strategy_options.get(strategy_name, {})
        for (name, _, _), record in self.done.items():
            if name == strategy_name and record.get("strategy_options", {}) != options:
                raise ValueError(
                    f"{self.log.path} holds {strategy_name!r} records made with options "
                    f"{record.get('strategy_options')} but the config gives {options}; use a "
                    "new --workdir, or register the variant under a new strategy name.")
        pool, start = self._resume_pool(strategy_name, seed, initial)
        if start > 0 and hasattr(strategy, "load_state_dict"):
            strategy.load_state_dict(self.done[(strategy_name, seed, start - 1)]["strategy_state"])
        for r in range(start, s.rounds + 1):
            round_train_key = jax.random.fold_in(train_key, r)
            if r == 0:
                variables, summary = self._initial_model(seed, pool, round_train_key)
            else:
                variables, summary = self._train_and_evaluate(
                    pool, round_train_key, f"{strategy_name} seed {seed} round {r}")
            acquired, objective, acquisition_seconds = np.zeros((0,), np.int64), None, 0.0
            if r < s.rounds:
                visible_labels = np.where(pool.labeled_mask, self.data.y_train, -1)
                ctx = AcquisitionContext(self.model, variables, self.data.x_train,
                                         visible_labels, batch_size=s.train.eval_batch_size)
                start_time = time.perf_counter()
                acquisition = strategy.select(jax.random.fold_in(acquire_key, r), ctx, pool,
                                              s.query_size)
                acquisition_seconds = time.perf_counter() - start_time
                acquired, objective = acquisition.indices, acquisition.objective
            labeled = pool.labeled_indices
            record = {
                "dataset": s.dataset, "mode": s.mode, "strategy": strategy_name,
                "seed": seed, "round": r, "num_labels": int(len(labeled)),
                "test_accuracy": summary["test_accuracy"],
                "validation_accuracy": summary.get("validation_accuracy"),
                "labeled_indices": labeled.tolist(),
                "acquired_indices": np.asarray(acquired).tolist(),
                "class_counts": np.bincount(self.data.y_train[labeled],
                                            minlength=self.data.num_classes).tolist(),
                "objective": objective,
                "acquisition_seconds": acquisition_seconds,
                "train_seconds": summary["train_seconds"],
                "train_metrics": summary["train_metrics"],
                "strategy_options": options,
                "shared_initial_model": r == 0,
                "initial_trainings": summary.get("initial_trainings") if r == 0 else None,
                # Stateful strategies (e.g. a bandit) carry state across rounds.
                "strategy_state": (strategy.state_dict() if hasattr(strategy, "state_dict")
                                   else None),
                "config": s.config, "config_hash": s.config_hash,
            }
            self.log.append(record)
            self.done[(strategy_name, seed, r)] = record
            metrics = summary["train_metrics"]
            extra = "".join(f" {k}={metrics[k]:.2f}" for k in ("mask_rate", "pseudo_label_accuracy")
                            if k in metrics)
            lam = f" λ_min={objective['lambda_min']:.4g}" if objective and "lambda_min" in objective else ""
            print(f"[{s.mode}] {strategy_name:>10s} seed={seed} round={r} labels={len(labeled):4d} "
                  f"acc={100 * summary['test_accuracy']:.2f}% train={summary['train_seconds']:.0f}s "
                  f"acquire={acquisition_seconds:.1f}s{lam}{extra}", flush=True)
            if len(acquired):
                pool = pool.reveal(acquired)


def run(config, workdir: str | os.PathLike, *, progress: bool | None = None) -> list[dict]:
    """Runs every (seed, strategy) of `config`; returns all records of `workdir`.

    Args:
      config: an ml_collections.ConfigDict (or dict) with the fields of
        `experiments/configs/fmnist_quick.py`.
      workdir: directory of results.jsonl, checkpoints/, summary.md, accuracy.png.
      progress: tqdm bars (default: when stderr is a terminal).
    """
    settings = RunSettings.from_config(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(settings.dataset, data_dir=settings.data_dir)
    if settings.final_num_labels + settings.validation_size > dataset.num_train:
        raise DataError(f"The run needs {settings.final_num_labels} labels but the pool holds "
                        f"{dataset.num_train} samples (validation_size {settings.validation_size} "
                        "of them held out); lower rounds, query_size or validation_size.")
    runner = _Runner(settings, workdir, dataset,
                     progress=sys.stderr.isatty() if progress is None else progress)
    for seed in settings.seeds:
        for name in settings.strategies:
            runner.run_one(name, seed)
    records = runner.log.read()
    (workdir / "summary.md").write_text(results.format_table(records) + "\n")
    results.plot_accuracy(records, workdir / "accuracy.png")
    return records


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
