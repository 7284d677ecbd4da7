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

Labels come from a labeller (`npc_jax.labelling`): the dataset's true labels
(``labels="oracle"``, experiments) or a person (``labels="human"``). One loop
serves both: before training a round it asks the labeller for the labels of
the labeled set; the oracle always has them, a person's store may not, and
then the loop exports the query and stops with `labelling.LabelsNeeded`.
Re-running after the labels are imported resumes exactly there.

A grid (strategies × seeds) can be split over N workers, processes on one
machine or on hosts that share the workdir: ``config.shard = "i/N"`` makes
worker i run every N-th (seed, strategy) job of `RunSettings.grid` from the
i-th and append to its own ``results.shard-i-of-N.jsonl``. Each worker reads
every records file of the workdir (to resume, and to refuse other configs);
the first worker to reach a seed trains its round-0 model while the others
wait for it; `records.read_records([workdir])` and the report read all files.
Locks (`storage.WorkdirLock`, released by the kernel when a process dies)
make a second process on the same records file fail at once, as well as an
unsharded run beside a grid and grids of different N on one workdir.

A run can also span several processes, one per host (`npc_jax.distributed`:
``NPC_JAX_COORDINATOR``, ``NPC_JAX_NUM_PROCESSES``, ``NPC_JAX_PROCESS_ID``,
read by `run`): every process runs the same rounds, training and pool passes
sharded over every process's devices, and only process 0 writes (records,
checkpoints, summary, locks). The others read the workdir to resume, so it is
one directory shared by all hosts; `run` refuses processes that see different
records or checkpoints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from absl import logging

from npc_jax import (checkpoint, distributed, inference, labelling, records, representation,
                     results, storage, strategies, train)
from npc_jax.config import RunSettings, config_difference
from npc_jax.data import DataError, Dataset, Pool, carve_validation, initial_pool, load_dataset
from npc_jax.models import Model, get_model
from npc_jax.strategies.base import AcquisitionContext, StatefulStrategy, Strategy
from npc_jax.ssl import propagation

__all__ = ["RESULTS_FILE", "Experiment", "RoundKeys", "RunSettings", "describe_record",
           "initial_model", "prepare", "records_file", "run", "run_round", "train_and_evaluate"]

OnRecord = Callable[[records.RoundRecord], None]

RESULTS_FILE = "results.jsonl"   # an unsharded run's records
_SHARED_FIX = ("every process of a multi-process run reads the workdir to resume, so give them "
               "one --workdir on a file system shared by all hosts (process 0 alone writes it)")


class RoundKeys(NamedTuple):
    """The keys of round r of a seed: the same for every strategy of that seed."""

    train: jax.Array
    acquire: jax.Array

    @classmethod
    def of(cls, seed: int, round_index: int) -> "RoundKeys":
        train_key, acquire_key = jax.random.split(jax.random.PRNGKey(seed))
        return cls(jax.random.fold_in(train_key, round_index),
                   jax.random.fold_in(acquire_key, round_index))


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """What every round of a run shares; built once by `prepare`.

    Attributes:
      settings: the run's `RunSettings`.
      model: the network every round trains.
      data: the pool (validation rows carved out when the config asks).
      labeller: who answers queries (`npc_jax.labelling`), indexed like `data`.
      test: (images, labels) of the test split, or None (an unlabelled npz).
      validation: (images, labels) carved from the pool, or None.
      fingerprint: the content hash of the data as loaded, before carving.
      init_variables: the pretrained variables every training starts from, or None.
      pretraining: what the records say of the pretraining (None: from scratch).
      progress: show tqdm bars.
      embedding: () -> (N, d) the pool embedded by the pretrained encoder,
        computed on first call and kept (None: no pretraining), for the
        embedding-based strategies.
      neighbour_graph: () -> the kNN graph of that embedding
        (`npc_jax.ssl.propagation`), built on first call and kept, for
        propagated pseudo-labels (None: no pretraining).
    """

    settings: RunSettings
    model: Model
    data: Dataset
    labeller: Any
    test: tuple[np.ndarray, np.ndarray] | None
    validation: tuple[np.ndarray, np.ndarray] | None
    fingerprint: str
    init_variables: Any = None
    pretraining: dict | None = None
    progress: bool = False
    embedding: Callable[[], np.ndarray] | None = None
    neighbour_graph: Callable[[], propagation.NeighbourGraph] | None = None


def prepare(settings: RunSettings, dataset: Dataset, labeller, *,
            progress: bool = False) -> Experiment:
    """The model, the pretraining (cached) and the carved pool of a run."""
    fingerprint = dataset.fingerprint()   # of the data as loaded, before carving
    dtype = {} if settings.model_dtype == "float32" else {"dtype": settings.model_dtype}
    model = get_model(settings.model, dataset.num_classes, dataset.image_shape, **dtype)
    init_variables, pretraining = None, None
    if settings.init == "pretrained":   # the whole pool, before any validation carve
        from npc_jax import pretraining as pretraining_lib
        result = pretraining_lib.pretrain(model, settings.pretrain, dataset,
                                          settings.pretrain_cache, seed=settings.pretrain_seed,
                                          progress=progress)
        init_variables = result.variables
        pretraining = {"key": result.path.name, "method": settings.pretrain.method,
                       "steps": settings.pretrain.steps, "seed": settings.pretrain_seed}
    validation = None
    if settings.validation_size:
        dataset, x_val, y_val = carve_validation(dataset, settings.validation_size)
        validation = (x_val, y_val)
        # The oracle's labels must index the carved pool, not the loaded one
        # (human mode refuses validation_size: a person's labels are never carved).
        labeller = labelling.TrueLabels(dataset.y_train, dataset.num_classes)
    test = (dataset.x_test, dataset.y_test) if len(dataset.y_test) else None
    embedding, neighbour_graph = None, None
    if init_variables is not None:
        pool_images = dataset.x_train

        @functools.cache
        def embedding() -> np.ndarray:   # one pass of the encoder, on a strategy's first ask
            return representation.embed(model, init_variables, pool_images,
                                        batch_size=settings.train.eval_batch_size)

        @functools.cache
        def neighbour_graph() -> propagation.NeighbourGraph:   # label-free: once per run
            return propagation.knn_graph(embedding(), settings.train.propagation_neighbours)
    elif settings.mode == "assl" and settings.train.pseudo_labels != "model":
        raise ValueError(f"config.train.pseudo_labels={settings.train.pseudo_labels!r} "
                         "propagates labels over the pretrained embedding; set "
                         "config.init='pretrained' (or pseudo_labels='model').")
    return Experiment(settings, model, dataset, labeller, test, validation, fingerprint,
                      init_variables, pretraining, progress, embedding, neighbour_graph)


# -- training -------------------------------------------------------------------------


def evaluate(exp: Experiment, variables) -> dict:
    """Test accuracy (None without a labelled test split), and validation accuracy."""
    def accuracy(images, labels):
        return inference.evaluate(exp.model, variables, images, labels,
                                  batch_size=exp.settings.train.eval_batch_size)

    out = {"test_accuracy": accuracy(*exp.test) if exp.test is not None else None}
    if exp.validation is not None:
        out["validation_accuracy"] = accuracy(*exp.validation)
    return out


def train_and_evaluate(exp: Experiment, pool: Pool, key: jax.Array, description: str):
    """Trains on the labeled set of `pool` (from scratch or the pretraining).

    Returns:
      (variables, summary): the trained inference variables (host) and
      {test_accuracy, [validation_accuracy], train_seconds, train_metrics}.
    """
    labeled = pool.labeled_indices
    diagnostic_labels = exp.labeller.diagnostic_labels
    config = exp.settings.train
    propagated = None
    if config.method == "fixmatch" and config.pseudo_labels != "model":
        propagated = propagation.propagate(
            exp.neighbour_graph(), labeled, exp.labeller.labels[labeled],
            exp.data.num_classes, alpha=config.propagation_alpha,
            balance=config.propagation_balance)
    data = train.make_train_data(
        exp.data.x_train, labeled, exp.labeller.labels[labeled],
        capacity=exp.settings.final_num_labels, diagnostic_labels=diagnostic_labels,
        propagated=propagated)
    state, history, seconds = train.timed_train(
        exp.model, exp.settings.train, data, key, progress=exp.progress,
        description=description, init_variables=exp.init_variables)
    variables = jax.device_get(state.eval_variables)
    metrics = dict(history[-1]) if history else {}
    if diagnostic_labels is None:   # computed against unknown labels: meaningless
        metrics.pop("pseudo_label_accuracy", None)
    return variables, {**evaluate(exp, variables), "train_seconds": seconds,
                       "train_metrics": metrics}


def initial_model(exp: Experiment, workdir: Path, seed: int, pool: Pool, key: jax.Array):
    """The round-0 model of a seed: trained once, kept in `workdir`, shared by its strategies.

    With no initial labels (zero-shot) it is the initialisation from `key`
    (or the pretraining). With ``initial_trainings = k > 1`` (the paper's
    protocol, k = 5) it is the trainee of median accuracy among k trainings
    from keys ``fold_in(key, i)``: on the validation split when the config
    carves one, else on the test split as the paper did.

    Returns:
      (variables, summary) as `train_and_evaluate`, the summary also holding
      labeled_indices, dataset_fingerprint and, for k > 1, initial_trainings.
    """
    stem = checkpoint.round0_stem(workdir, seed)
    if exp.settings.shard[1] == 1:
        return _initial_model(exp, stem, seed, pool, key)
    # Grid workers share it: the first to reach the seed trains, the others wait.
    stem.parent.mkdir(parents=True, exist_ok=True)
    with storage.WorkdirLock(stem.parent, f".{stem.name}.lock", wait=True):
        return _initial_model(exp, stem, seed, pool, key)


def _initial_model(exp: Experiment, stem: Path, seed: int, pool: Pool, key: jax.Array):
    template = jax.device_get(exp.model.init(jax.random.PRNGKey(0)))
    kept = checkpoint.load_round0(stem, template, pool.labeled_indices, exp.fingerprint)
    distributed.check_same(f"{kept is not None}", f"round-0 checkpoints ({stem})", _SHARED_FIX)
    if kept is not None:
        return kept
    if not len(pool.labeled_indices):   # zero-shot: nothing to train on
        variables = exp.model.init(key)
        if exp.init_variables is not None and exp.settings.cold_start_network == "pretrained":
            variables = train.start_from(variables, exp.init_variables)
        variables = jax.device_get(variables)
        summary = {**evaluate(exp, variables), "train_seconds": 0.0, "train_metrics": {}}
    elif exp.settings.initial_trainings == 1:
        variables, summary = train_and_evaluate(exp, pool, key, f"seed {seed} round 0")
    else:
        variables, summary = _median_training(exp, pool, key, seed)
    summary["labeled_indices"] = pool.labeled_indices.tolist()
    summary["dataset_fingerprint"] = exp.fingerprint
    if distributed.is_writer():   # the others computed the same variables
        checkpoint.save_round0(stem, variables, summary)
    distributed.barrier(f"saved {stem}")   # every process finds it from now on
    return variables, summary


def _median_training(exp: Experiment, pool: Pool, key: jax.Array, seed: int):
    """The trainee of median accuracy among k = initial_trainings."""
    k = exp.settings.initial_trainings
    trainees = [train_and_evaluate(exp, pool, jax.random.fold_in(key, i),
                                   f"seed {seed} round 0 ({i + 1}/{k})") for i in range(k)]
    criterion = "validation_accuracy" if exp.validation is not None else "test_accuracy"
    scores = [summary[criterion] for _, summary in trainees]
    median = int(np.argsort(scores, kind="stable")[k // 2])
    variables, summary = trainees[median]
    summary["initial_trainings"] = {
        "criterion": criterion, "chosen": median,
        "test_accuracies": [t[1]["test_accuracy"] for t in trainees],
        "train_seconds": [t[1]["train_seconds"] for t in trainees]}
    return variables, summary


# -- one round ---------------------------------------------------------------------------


def run_round(exp: Experiment, strategy: Strategy, pool: Pool, keys: RoundKeys, *,
              seed: int, round_index: int, trained: tuple | None = None,
              acquire_with: Strategy | None = None) -> tuple[records.RoundRecord, Pool]:
    """Round r of (strategy, seed): train, evaluate, acquire (none after the last round).

    Args:
      exp: the run.
      strategy: the strategy, its state restored up to this round.
      pool: the labeled set the round trains on.
      keys: `RoundKeys.of(seed, round_index)`.
      seed, round_index: which round.
      trained: (variables, summary) of a model trained elsewhere (the shared
        round-0 model), or None to train here.
      acquire_with: the strategy that makes this round's query when it is not
        `strategy` itself (``config.continue_with`` after a cold-start batch);
        the record stays `strategy`'s.

    Returns:
      (record, next_pool): the round's record (to append) and the pool with
      the acquired labels revealed.
    """
    s = exp.settings
    if trained is None:
        trained = train_and_evaluate(exp, pool, keys.train,
                                     f"{strategy.name} seed {seed} round {round_index}")
    variables, summary = trained
    acquired, objective, seconds = np.zeros((0,), np.int64), None, 0.0
    if round_index < s.rounds:
        visible_labels = np.where(pool.labeled_mask, exp.labeller.labels, -1)
        ctx = AcquisitionContext(exp.model, variables, exp.data.x_train, visible_labels,
                                 batch_size=s.train.eval_batch_size, embedding=exp.embedding)
        start = time.perf_counter()
        acquisition = (acquire_with or strategy).select(keys.acquire, ctx, pool,
                                                        s.query_size_of(round_index))
        seconds = time.perf_counter() - start
        acquired, objective = np.asarray(acquisition.indices), acquisition.objective
    record = _round_record(exp, strategy, pool, summary, seed=seed, round_index=round_index,
                           acquired=acquired, objective=objective, acquisition_seconds=seconds)
    return record, (pool.reveal(acquired) if len(acquired) else pool)


def _round_record(exp: Experiment, strategy: Strategy, pool: Pool, summary: dict, *, seed: int,
                  round_index: int, acquired: np.ndarray, objective: dict | None,
                  acquisition_seconds: float) -> records.RoundRecord:
    s, labels = exp.settings, exp.labeller.labels
    labeled = pool.labeled_indices
    human = exp.labeller.source == "human"
    return records.RoundRecord(
        dataset=s.dataset, dataset_fingerprint=exp.fingerprint, mode=s.mode,
        strategy=strategy.name, seed=seed, round=round_index, num_labels=len(labeled),
        test_accuracy=summary["test_accuracy"],
        validation_accuracy=summary.get("validation_accuracy"),
        labeled_indices=labeled, acquired_indices=acquired,
        class_counts=np.bincount(labels[labeled], minlength=exp.data.num_classes),
        objective=objective, acquisition_seconds=acquisition_seconds,
        train_seconds=summary["train_seconds"], train_metrics=summary["train_metrics"],
        strategy_options=s.options_of(strategy.name), pretraining=exp.pretraining,
        shared_initial_model=round_index == 0,
        initial_trainings=summary.get("initial_trainings") if round_index == 0 else None,
        strategy_state=(strategy.state_dict() if isinstance(strategy, StatefulStrategy)
                        else None),
        config=s.config, config_hash=s.config_hash,
        **({"labels_from": "human",
            "labeled_labels": labels[labeled],   # in labeled_indices' order
            "test_split": exp.data.notes.get("test_split") if exp.test else None}
           if human else {}))


def describe_record(record: records.RoundRecord) -> str:
    """One line of progress: strategy, seed, round, labels, accuracy, times, λ_min."""
    metrics = record.train_metrics
    extra = "".join(f" {k}={metrics[k]:.2f}" for k in ("mask_rate", "pseudo_label_accuracy")
                    if k in metrics)
    lam = (f" λ_min={record.objective.lambda_min:.4g}"
           if isinstance(record.objective, records.LambdaMinObjective) else "")
    accuracy = ("n/a" if record.test_accuracy is None
                else f"{100 * record.test_accuracy:.2f}%")
    return (f"[{record.mode}] {record.strategy:>10s} seed={record.seed} "
            f"round={record.round} labels={record.num_labels:4d} acc={accuracy} "
            f"train={record.train_seconds:.0f}s "
            f"acquire={record.acquisition_seconds:.1f}s{lam}{extra}")


def _log_record(record: records.RoundRecord) -> None:
    logging.info("%s", describe_record(record))


# -- the rounds of one (strategy, seed), resumed from the log ------------------------------


class _Ledger:
    """The records already in a workdir's logs (every worker's), checked against the run;
    new ones go to this worker's `log`."""

    def __init__(self, settings: RunSettings, log: storage.JsonlLog, fingerprint: str, *,
                 writer: bool = True):
        self.settings, self.log, self.writer = settings, log, writer
        self.done: dict[tuple[str, int, int], records.RoundRecord] = {}
        for record in records.read_records(_record_files(log.path.parent), missing_ok=True):
            if record.config_hash != settings.config_hash:
                raise ValueError(
                    f"{log.path.parent} holds records of a different config: "
                    f"{config_difference(records.thaw(record.config), settings.config)}. Use a "
                    "new --workdir, or the original config, to resume.")
            recorded = record.dataset_fingerprint
            if recorded is not None and recorded != fingerprint:
                raise ValueError(
                    f"{log.path.parent} holds records of other data: {settings.dataset} now has "
                    f"content fingerprint {fingerprint}, the records {recorded} (the file "
                    "was replaced or the dataset changed). Use a new --workdir for the new data.")
            self.done[(record.strategy, record.seed, record.round)] = record

    def check_options(self, name: str) -> None:
        options = self.settings.options_of(name)
        for (strategy, _, _), record in self.done.items():
            recorded = records.thaw(record.strategy_options)
            if strategy == name and recorded != options:
                raise ValueError(
                    f"{self.log.path.parent} holds {name!r} records made with options "
                    f"{recorded} but the config gives {options}; use a "
                    "new --workdir, or register the variant under a new strategy name.")

    def resume(self, name: str, seed: int, pool: Pool) -> tuple[Pool, int]:
        """The pool and round to start from, after the records already written."""
        start = 0
        while (name, seed, start) in self.done:
            record = self.done[(name, seed, start)]
            pool = Pool(pool.num_samples, record.labeled_indices)
            if record.acquired_indices:
                pool = pool.reveal(record.acquired_indices)
            start += 1
        return pool, start

    def add(self, record: records.RoundRecord) -> None:
        if self.writer:   # process 0 of a multi-process run, or the only one
            self.log.append(record.to_json())
        self.done[(record.strategy, record.seed, record.round)] = record

    def missing_labels(self, labeller, name: str, seed: int, r: int,
                       pool: Pool) -> labelling.LabelRequest | None:
        """What round r of (name, seed) must have labelled and the labeller lacks
        (None when nothing is missing: always, for the oracle)."""
        labeled = pool.labeled_indices
        missing = labeller.labels[labeled] < 0
        if not missing.any():
            return None
        # Ranks count from the first index this round added, in pick order.
        first = self.done[(name, seed, r - 1)].num_labels if r > 0 else 0
        positions = np.flatnonzero(missing)
        if r == 0:
            what, objective = f"the initial labels of seed {seed} (drawn at random)", None
        else:
            what = f"{name}'s query in round {r - 1} (seed {seed})"
            objective = records.thaw(self.done[(name, seed, r - 1)].objective)
        return labelling.LabelRequest(indices=labeled[positions], ranks=positions - first + 1,
                                      strategy=name, seed=seed, round=r, what=what,
                                      objective=objective)


def _run_strategy(exp: Experiment, ledger: _Ledger, workdir: Path, name: str, seed: int,
                  on_record: OnRecord) -> labelling.LabelRequest | None:
    """Runs the rounds of (name, seed) not yet recorded.

    Returns:
      None when all its rounds are recorded; a `LabelRequest` when the next
      round needs labels the labeller lacks (human mode), after recording
      every round before it.
    """
    s = exp.settings
    strategy = strategies.make_strategy(name, **s.options_of(name))
    if strategy.name != name:   # records and resumes key on the name
        raise ValueError(f"Strategy {name!r} is registered with a factory whose strategy is "
                         f"named {strategy.name!r}; name it {name!r} (see npc_variant).")
    labels = exp.labeller.diagnostic_labels   # None: unknown, Q0 drawn uniformly
    try:
        initial = initial_pool(exp.data.num_train, s.initial_labels, seed=seed, labels=labels,
                               num_classes=exp.data.num_classes)
    except DataError as error:
        raise DataError(f"config.initial_labels={s.initial_labels}: {error}") from None
    ledger.check_options(name)
    continuation = (strategies.make_strategy(s.continue_with, **s.options_of(s.continue_with))
                    if s.continue_with and s.continue_with != name else None)
    pool, start = ledger.resume(name, seed, initial)
    if start > 0 and isinstance(strategy, StatefulStrategy):
        strategy.load_state_dict(records.thaw(ledger.done[(name, seed, start - 1)].strategy_state))
    for r in range(start, s.rounds + 1):
        request = ledger.missing_labels(exp.labeller, name, seed, r, pool)
        if request is not None:
            return request
        keys = RoundKeys.of(seed, r)
        trained = initial_model(exp, workdir, seed, pool, keys.train) if r == 0 else None
        record, pool = run_round(exp, strategy, pool, keys, seed=seed, round_index=r,
                                 trained=trained,
                                 acquire_with=continuation if r >= 1 else None)
        ledger.add(record)
        on_record(record)
    return None


# -- a whole run -------------------------------------------------------------------------------


def run(config, workdir: str | os.PathLike, *, progress: bool | None = None,
        labels: str = "oracle",
        on_record: OnRecord | None = None) -> list[records.RoundRecord]:
    """Runs every (seed, strategy) of `config`; returns all records of `workdir`.

    Args:
      config: an ml_collections.ConfigDict (or dict) with the fields of
        `experiments/configs/fmnist_quick.py`.
      workdir: directory of results.jsonl (results.shard-i-of-N.jsonl for worker
        i of N, ``config.shard``), checkpoints/, summary.md, accuracy.png.
      progress: tqdm bars (default: when stderr is a terminal).
      labels: who answers the queries. "oracle": the dataset's true labels.
        "human": a person, through CSV files in `workdir` (`npc_jax.labelling`):
        the pool's true labels are never read, Q0 is drawn uniformly at random,
        accuracy is measured on the dataset's test split if it has one (else
        null), and the run stops at the first labels it lacks.
      on_record: called with each new round's record once it is written
        (default: one line through absl logging, `describe_record`).

    Multi-process (`npc_jax.distributed`): with ``NPC_JAX_COORDINATOR``,
    ``NPC_JAX_NUM_PROCESSES`` and ``NPC_JAX_PROCESS_ID`` set (or after
    `distributed.initialize`), every process calls `run` with the same config
    and a `workdir` shared by all hosts; only process 0 writes, and every
    process returns the same records.

    Raises:
      labelling.LabelsNeeded: human mode only, after exporting the query to
        label; import it with `labelling.import_labels` and run again.
      distributed.DistributedError: a bad multi-process setting, or processes
        that see different records (a workdir that is not shared).
    """
    settings = RunSettings.from_config(config, labels=labels)
    _join_processes(settings)
    progress = sys.stderr.isatty() if progress is None else progress
    if not distributed.is_writer():   # the same rounds as process 0, writing nothing
        if not str(workdir).strip():
            raise storage.RecordsError("--workdir is empty; give every process the same "
                                       "workdir, shared by all hosts.")
        return _run_locked(settings, Path(workdir), progress=progress,
                           on_record=on_record or _log_record)
    created = bool(str(workdir).strip()) and not Path(workdir).exists()
    try:
        workdir = storage.check_writable_dir(workdir)
    except storage.RecordsError:
        # A finished run can still be read where it cannot be written (an
        # archive, a read-only mount): return its records, train nothing.
        if (workdir and Path(workdir).is_dir() and not distributed.is_multiprocess()
                and _is_finished(settings, Path(workdir))):
            logging.warning("%s is read-only and complete: nothing to run, summary not "
                            "rewritten.", workdir)
            return records.read_records(_record_files(Path(workdir)))
        raise
    try:
        with _worker_locks(workdir, settings.shard):
            return _run_locked(settings, workdir, progress=progress,
                               on_record=on_record or _log_record)
    finally:
        # A run refused before it wrote anything leaves no empty workdir behind.
        if created and all(_is_lock_file(p.name) for p in workdir.iterdir()):
            for path in workdir.iterdir():
                path.unlink(missing_ok=True)
            workdir.rmdir()


def _join_processes(settings: RunSettings) -> None:
    """Joins the multi-process run of the environment (`distributed.initialize`), and
    refuses what a multi-process run does not do."""
    distributed.initialize()
    if not distributed.is_multiprocess():
        return
    if settings.shard[1] > 1:
        raise distributed.DistributedError(
            f"config.shard={settings.shard[0]}/{settings.shard[1]} makes this process one of "
            "independent grid workers, but it is also one of a multi-process run "
            "(NPC_JAX_NUM_PROCESSES); use one or the other (a grid worker runs in one process, "
            "a multi-process run is one worker spread over hosts).")
    if settings.labels == "human":
        raise distributed.DistributedError(
            "A human-labelled run has one labeller and one queue; run it in a single process "
            "(unset NPC_JAX_COORDINATOR, NPC_JAX_NUM_PROCESSES and NPC_JAX_PROCESS_ID).")
    if settings.init == "pretrained":
        raise distributed.DistributedError(
            "config.init='pretrained' in a multi-process run is not supported (the pretraining "
            "would run and write its cache in every process); run it in a single process.")


def records_file(workdir: Path, shard: tuple[int, int]) -> Path:
    """The file a worker appends to: results.jsonl, or results.shard-i-of-N.jsonl."""
    index, count = shard
    return workdir / (RESULTS_FILE if count == 1 else f"results.shard-{index}-of-{count}.jsonl")


def _record_files(workdir: Path) -> list[Path]:
    """Every worker's records file in `workdir` (results.jsonl, results.shard-*.jsonl)."""
    return sorted(workdir.glob("results*.jsonl"))


def _is_lock_file(name: str) -> bool:
    return name.startswith(".npc_jax.") and name.endswith(".lock")


@contextlib.contextmanager
def _worker_locks(workdir: Path, shard: tuple[int, int]):
    """The locks of a run on `workdir`, all taken at once, before any data is loaded.

    Unsharded: the whole workdir, exclusively. Worker i of N: the workdir
    shared with the other workers of its grid (so no unsharded run joins),
    the grid size shared (so no grid of another N joins: it would split the
    jobs differently and run some twice), and its own records file.
    """
    index, count = shard
    if count == 1:
        with storage.WorkdirLock(workdir):
            yield
        return
    name = f"worker {index}/{count} (pid {os.getpid()})"
    grid_lock = f".npc_jax.grid-of-{count}.lock"
    with contextlib.ExitStack() as stack:
        # Its own file first: a refused duplicate rewrites no shared lock's holder.
        stack.enter_context(storage.WorkdirLock(
            workdir, f".npc_jax.shard-{index}-of-{count}.lock", holder=name,
            what=str(records_file(workdir, shard)), fix=(
                f"worker {index}/{count} is already running; give each worker its own "
                f"--config.shard=i/{count} (two processes on one records file would train "
                "twice and append duplicate records)")))
        stack.enter_context(storage.WorkdirLock(workdir, grid_lock, shared=True, holder=name))
        for other in sorted(workdir.glob(".npc_jax.grid-of-*.lock")):
            if other.name != grid_lock:
                size = other.name.removeprefix(".npc_jax.grid-of-").removesuffix(".lock")
                with storage.WorkdirLock(workdir, other.name, fix=(
                        f"it runs a grid of {size} workers: give every worker "
                        f"--config.shard=i/{size}, or wait for them to finish")):
                    pass   # nobody holds it: a grid that has finished
        stack.enter_context(storage.WorkdirLock(workdir, shared=True, holder=name, fix=(
            "wait for it to finish; every process on a workdir that a grid runs must be one "
            "of its workers (--config.shard=i/N)")))
        yield


def _is_finished(settings: RunSettings, workdir: Path) -> bool:
    """Whether `workdir` records every (strategy, seed, round) of `settings`."""
    done = {(r.strategy, r.seed, r.round)
            for r in records.read_records(_record_files(workdir), missing_ok=True)
            if r.config_hash == settings.config_hash}
    return all((name, seed, r) in done for seed, name in settings.grid()
               for r in range(settings.rounds + 1))


def _load(settings: RunSettings, workdir: Path):
    """(dataset, labeller, class names or None) of the run's labels mode."""
    if settings.labels == "human":
        dataset, class_names = labelling.load_for_labelling(settings.dataset,
                                                            data_dir=settings.data_dir)
        if settings.initial_trainings > 1 and not len(dataset.y_test):
            raise ValueError(f"config.initial_trainings={settings.initial_trainings} picks the "
                             f"median by test accuracy, but {settings.dataset} has no labelled "
                             "test split; set --config.initial_trainings=1.")
        return dataset, labelling.HumanLabels(workdir, dataset.num_train,
                                              dataset.num_classes), class_names
    if labelling.is_human_workdir(workdir):
        raise ValueError(f"{workdir} holds a human-labelled run (human_labels.jsonl or "
                         "queries/); continue it with experiments/label.py, or use a new "
                         "--workdir for an oracle run.")
    dataset = load_dataset(settings.dataset, data_dir=settings.data_dir)
    # Class names are for exports, and the oracle never exports.
    return dataset, labelling.TrueLabels(dataset.y_train, dataset.num_classes), None


def _run_locked(settings: RunSettings, workdir: Path, *, progress: bool | None,
                on_record: OnRecord) -> list[records.RoundRecord]:
    """`run` once the workdir is known writable and this process holds its lock."""
    dataset, labeller, class_names = _load(settings, workdir)
    if settings.final_num_labels + settings.validation_size > dataset.num_train:
        raise DataError(
            f"The run needs config.initial_labels ({settings.initial_labels}) + config.rounds "
            f"({settings.rounds}) × config.query_size ({settings.query_size})"
            + (f" (the first query: config.first_query_size = {settings.first_query_size})"
               if settings.first_query_size != settings.query_size else "")
            + f" = {settings.final_num_labels} labels, but the pool holds "
            f"{dataset.num_train} samples (config.validation_size = "
            f"{settings.validation_size} of them held out); lower one of those fields.")
    log = storage.JsonlLog(records_file(workdir, settings.shard))
    writer = distributed.is_writer()
    ledger = _Ledger(settings, log, dataset.fingerprint(), writer=writer)
    distributed.check_same(repr(sorted(ledger.done)), f"records in {workdir}", _SHARED_FIX)
    # After the records are checked: a refused resume costs no pretraining.
    exp = prepare(settings, dataset, labeller,
                  progress=sys.stderr.isatty() if progress is None else progress)
    for seed, name in settings.jobs():
        request = _run_strategy(exp, ledger, workdir, name, seed, on_record)
        if request is not None:
            _write_summary(records.read_records([log.path], missing_ok=True), workdir)
            raise labelling.LabelsNeeded(labelling.export_query(
                workdir, request, dataset.x_train, num_classes=dataset.num_classes,
                class_names=class_names, dataset=settings.dataset))
    distributed.barrier(f"records of {workdir} written")   # process 0's last append
    if not writer:
        return records.read_records(_record_files(workdir), missing_ok=True)
    # Every worker's records so far; with workers, one at a time writes the summary.
    summary_lock = (contextlib.nullcontext() if settings.shard[1] == 1 else
                    storage.WorkdirLock(workdir, ".npc_jax.summary.lock", wait=True))
    with summary_lock:
        all_records = records.read_records(_record_files(workdir), missing_ok=True)
        _write_summary(all_records, workdir)
    return all_records


def _write_summary(run_records: list[records.RoundRecord], workdir: Path) -> None:
    """summary.md and accuracy.png of the records that have a test accuracy."""
    measured = [r for r in run_records if r.test_accuracy is not None]
    if measured:
        (workdir / "summary.md").write_text(results.format_table(measured) + "\n")
        results.plot_accuracy(measured, workdir / "accuracy.png")
