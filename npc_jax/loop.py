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
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

from npc_jax import inference, labelling, records, results, strategies, train
from npc_jax.data import DataError, Dataset, Pool, carve_validation, load_dataset
from npc_jax.models import Model, get_model
from npc_jax.strategies import AcquisitionContext

# Config fields outside the run-wide hash: which subset of a benchmark a command
# runs, and the strategies' options (checked per strategy: each record carries
# its own strategy's options), so that later commands can add strategies and
# variants to the same workdir.
_SUBSET_FIELDS = ("strategies", "seeds", "strategy_options")
# Fields added to the configs after records were made with their default
# behaviour: at these values they stay out of the hash, so that older
# workdirs (the committed L1 records) resume under the configs of today.
_HASH_NEUTRAL_DEFAULTS = {"model_dtype": "float32", "initial_trainings": 1, "init": "scratch"}
# Where things are kept, not what is computed: outside the hash.
_LOCATION_FIELDS = ("pretrain_cache",)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The validated, typed view of a run's config."""

    dataset: str
    data_dir: str | None
    model: str
    model_dtype: str
    mode: str
    labels: str
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    initial_labels: int
    query_size: int
    rounds: int
    validation_size: int
    initial_trainings: int
    train: train.TrainConfig
    strategy_options: dict
    init: str                 # "scratch" | "pretrained"
    pretrain: Any             # ssl.pretrain.PretrainConfig when init == "pretrained"
    pretrain_seed: int
    pretrain_cache: str
    config: dict
    config_hash: str

    @classmethod
    def from_config(cls, config, labels: str = "oracle") -> "RunSettings":
        """`labels`: "oracle" (the dataset's labels) or "human" (`npc_jax.labelling`)."""
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        if labels not in ("oracle", "human"):
            raise ValueError(f"labels must be 'oracle' (the dataset's true labels) or 'human' "
                             f"(labelled by hand through CSV files), got {labels!r}.")
        if labels == "human" and int(cfg.get("validation_size", 0)):
            raise ValueError("config.validation_size needs the pool's true labels, which a "
                             "human-labelled run does not have; set --config.validation_size=0.")
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
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"config.seeds must be distinct non-negative integers, got "
                             f"{cfg['seeds']!r}.")
        if int(cfg["query_size"]) <= 0:
            raise ValueError(f"config.query_size must be positive, got {cfg['query_size']}.")
        if int(cfg["initial_labels"]) < 0:
            raise ValueError("config.initial_labels must be >= 0 (0: zero-shot, the first "
                             f"query from a randomly initialised model), got {cfg['initial_labels']}.")
        if int(cfg["rounds"]) < 0:
            raise ValueError(f"config.rounds must be >= 0, got {cfg['rounds']}.")
        model_dtype = str(cfg.get("model_dtype", "float32"))
        if model_dtype not in ("float32", "bfloat16"):
            raise ValueError("config.model_dtype (the compute dtype) must be 'float32' or "
                             f"'bfloat16' (GPUs), got {model_dtype!r}.")
        if model_dtype != "float32" and cfg["model"] != "wrn28_2":
            raise ValueError(f"config.model_dtype={model_dtype!r} is offered for wrn28_2 only; "
                             f"model {cfg['model']!r} computes in float32.")
        initial_trainings = int(cfg.get("initial_trainings", 1))
        if initial_trainings < 1 or initial_trainings % 2 == 0:
            raise ValueError("config.initial_trainings must be a positive odd number (the "
                             f"round-0 model is the median of that many), got {initial_trainings}.")
        init = str(cfg.get("init", "scratch"))
        if init not in ("scratch", "pretrained"):
            raise ValueError("config.init must be 'scratch' (every training from a random "
                             "initialisation) or 'pretrained' (fine-tune from the "
                             f"self-supervised pretraining of config.pretrain), got {init!r}.")
        pretrain = None
        if init == "pretrained":
            from npc_jax import pretraining
            if not cfg.get("pretrain"):
                raise ValueError("config.init='pretrained' needs a config.pretrain section (the "
                                 "recipe, e.g. experiments/configs/pretrain_fmnist.py's).")
            pretrain = pretraining.config_from_dict(cfg["pretrain"])
        train_fields = dict(cfg.get("train", {}))
        train_fields["steps"] = int(cfg["train_steps"])
        train_fields["method"] = "fixmatch" if mode == "assl" else "supervised"
        options = {k: dict(v) for k, v in dict(cfg.get("strategy_options", {})).items()}
        for name in options:
            if name not in strategies.available():
                raise ValueError(f"config.strategy_options names unknown strategy {name!r}.")
        relevant = _run_identity(cfg)
        if labels == "human":   # only then: oracle workdirs keep their hash
            relevant["labels"] = labels
        digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
        return cls(dataset=cfg["dataset"], data_dir=cfg.get("data_dir") or None,
                   model=cfg["model"], model_dtype=model_dtype, mode=mode, labels=labels,
                   strategies=names, seeds=seeds,
                   initial_labels=int(cfg["initial_labels"]),
                   query_size=int(cfg["query_size"]), rounds=int(cfg["rounds"]),
                   validation_size=int(cfg.get("validation_size", 0)),
                   initial_trainings=initial_trainings,
                   train=train.TrainConfig(**train_fields), strategy_options=options,
                   init=init, pretrain=pretrain,
                   pretrain_seed=int(cfg.get("pretrain_seed", 0)),
                   pretrain_cache=str(cfg.get("pretrain_cache") or "runs/pretrain_cache"),
                   config=cfg, config_hash=digest)

    @property
    def final_num_labels(self) -> int:
        return self.initial_labels + self.rounds * self.query_size


class _Runner:
    def __init__(self, settings: RunSettings, workdir: Path, dataset: Dataset,
                 labeller: labelling.Labeller, progress: bool):
        self.s = settings
        self.fingerprint = dataset.fingerprint()   # of the data as loaded, before carving
        dtype = {} if settings.model_dtype == "float32" else {"dtype": settings.model_dtype}
        self.model: Model = get_model(settings.model, dataset.num_classes, dataset.image_shape,
                                      **dtype)
        self.log = records.JsonlLog(workdir / "results.jsonl")
        self.done = {}
        for record in self.log.read():
            if record.get("config_hash") != settings.config_hash:
                raise ValueError(
                    f"{self.log.path} holds records of a different config: "
                    f"{_config_difference(record.get('config', {}), settings.config)}. Use a new "
                    "--workdir, or the original config, to resume.")
            recorded = record.get("dataset_fingerprint")
            if recorded is not None and recorded != self.fingerprint:
                raise ValueError(
                    f"{self.log.path} holds records of other data: {settings.dataset} now has "
                    f"content fingerprint {self.fingerprint}, the records {recorded} (the file "
                    "was replaced or the dataset changed). Use a new --workdir for the new data.")
            self.done[(record["strategy"], record["seed"], record["round"])] = record
        # After the records are checked: a refused resume costs no pretraining.
        self.init_variables, self.pretraining = None, None
        if settings.init == "pretrained":   # the whole pool, before any validation carve
            from npc_jax import pretraining
            result = pretraining.pretrain(self.model, settings.pretrain, dataset,
                                          settings.pretrain_cache, seed=settings.pretrain_seed,
                                          progress=progress)
            self.init_variables = result.variables
            self.pretraining = {"key": result.path.name, "method": settings.pretrain.method,
                                "steps": settings.pretrain.steps, "seed": settings.pretrain_seed}
        self.validation = None
        if settings.validation_size:
            dataset, x_val, y_val = carve_validation(dataset, settings.validation_size)
            self.validation = (x_val, y_val)
            # The oracle's labels must index the carved pool, not the loaded one
            # (human mode refuses validation_size: a person's labels are never carved).
            labeller = labelling.TrueLabels(dataset.y_train, dataset.num_classes)
        self.workdir = workdir
        self.data = dataset
        self.labeller = labeller
        # A human-labelled run evaluates on the dataset's test split where it has
        # one; an unlabelled npz has none, and its records hold null accuracy.
        self.test = (dataset.x_test, dataset.y_test) if len(dataset.y_test) else None
        self.progress = progress

    # -- training ------------------------------------------------------------

    def _evaluation(self, variables) -> dict:
        """Test accuracy (None without a labelled test split), and validation accuracy."""
        evaluate = lambda x, y: inference.evaluate(self.model, variables, x, y,
                                               batch_size=self.s.train.eval_batch_size)
        out = {"test_accuracy": evaluate(*self.test) if self.test is not None else None}
        if self.validation is not None:
            out["validation_accuracy"] = evaluate(*self.validation)
        return out

    def _train_and_evaluate(self, pool: Pool, key: jax.Array, description: str):
        labeled = pool.labeled_indices
        diagnostic_labels = self.labeller.diagnostic_labels
        data = train.make_train_data(
            self.data.x_train, labeled, self.labeller.labels[labeled],
            capacity=self.s.final_num_labels, diagnostic_labels=diagnostic_labels)
        state, history, seconds = train.timed_train(
            self.model, self.s.train, data, key, progress=self.progress,
            description=description, init_variables=self.init_variables)
        variables = jax.device_get(state.eval_variables)
        metrics = dict(history[-1]) if history else {}
        if diagnostic_labels is None:   # computed against unknown labels: meaningless
            metrics.pop("pseudo_label_accuracy", None)
        summary = {**self._evaluation(variables), "train_seconds": seconds,
                   "train_metrics": metrics}
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
            summary = _read_checkpoint_meta(meta)
            if (summary.get("labeled_indices") == pool.labeled_indices.tolist()
                    and summary.get("dataset_fingerprint", self.fingerprint) == self.fingerprint):
                return records.read_flax(weights, template, fix=(
                    f"delete it and {meta.name} to retrain the round-0 model.")), summary
        k = self.s.initial_trainings
        if not len(pool.labeled_indices):   # zero-shot: nothing to train on
            variables = self.model.init(key)
            if self.init_variables is not None:
                variables = train.start_from(variables, self.init_variables)
            variables = jax.device_get(variables)
            summary = {**self._evaluation(variables), "train_seconds": 0.0, "train_metrics": {}}
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
        summary["dataset_fingerprint"] = self.fingerprint
        stem.parent.mkdir(parents=True, exist_ok=True)
        records.write_atomically(weights, flax.serialization.to_bytes(variables))
        records.write_atomically(meta, json.dumps(summary).encode())
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

    def _missing_labels(self, strategy: str, seed: int, r: int,
                        pool: Pool) -> labelling.LabelRequest | None:
        """What round r of (strategy, seed) must have labelled before it trains and
        the labeller does not know; None when nothing is missing (always, for the oracle)."""
        labeled = pool.labeled_indices
        missing = self.labeller.labels[labeled] < 0
        if not missing.any():
            return None
        # Ranks count from the first index this round added, in pick order.
        first = self.done[(strategy, seed, r - 1)]["num_labels"] if r > 0 else 0
        positions = np.flatnonzero(missing)
        if r == 0:
            what = f"the initial labels of seed {seed} (drawn at random)"
            objective = None
        else:
            what = f"{strategy}'s query in round {r - 1} (seed {seed})"
            objective = self.done[(strategy, seed, r - 1)]["objective"]
        return labelling.LabelRequest(indices=labeled[positions], ranks=positions - first + 1,
                                      strategy=strategy, seed=seed, round=r, what=what,
                                      objective=objective)

    def run_one(self, strategy_name: str, seed: int) -> labelling.LabelRequest | None:
        """Runs the rounds of (strategy, seed) not yet recorded.

        Returns:
          None when all its rounds are recorded; a `LabelRequest` when the next
          round needs labels the labeller lacks (human mode), after recording
          every round before it.
        """
        s = self.s
        strategy = strategies.make_strategy(strategy_name,
                                            **s.strategy_options.get(strategy_name, {}))
        train_key, acquire_key = jax.random.split(jax.random.PRNGKey(seed))
        try:
            initial = self.labeller.initial_pool(s.initial_labels, seed)
        except DataError as error:
            raise DataError(f"config.initial_labels={s.initial_labels}: {error}") from None
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
            request = self._missing_labels(strategy_name, seed, r, pool)
            if request is not None:
                return request
            round_train_key = jax.random.fold_in(train_key, r)
            if r == 0:
                variables, summary = self._initial_model(seed, pool, round_train_key)
            else:
                variables, summary = self._train_and_evaluate(
                    pool, round_train_key, f"{strategy_name} seed {seed} round {r}")
            acquired, objective, acquisition_seconds = np.zeros((0,), np.int64), None, 0.0
            if r < s.rounds:
                visible_labels = np.where(pool.labeled_mask, self.labeller.labels, -1)
                ctx = AcquisitionContext(self.model, variables, self.data.x_train,
                                         visible_labels, batch_size=s.train.eval_batch_size)
                start_time = time.perf_counter()
                acquisition = strategy.select(jax.random.fold_in(acquire_key, r), ctx, pool,
                                              s.query_size)
                acquisition_seconds = time.perf_counter() - start_time
                acquired, objective = acquisition.indices, acquisition.objective
            labeled = pool.labeled_indices
            record = {
                "dataset": s.dataset, "dataset_fingerprint": self.fingerprint,
                "mode": s.mode, "strategy": strategy_name,
                "seed": seed, "round": r, "num_labels": int(len(labeled)),
                "test_accuracy": summary["test_accuracy"],
                "validation_accuracy": summary.get("validation_accuracy"),
                "labeled_indices": labeled.tolist(),
                "acquired_indices": np.asarray(acquired).tolist(),
                "class_counts": np.bincount(self.labeller.labels[labeled],
                                            minlength=self.data.num_classes).tolist(),
                "objective": objective,
                "acquisition_seconds": acquisition_seconds,
                "train_seconds": summary["train_seconds"],
                "train_metrics": summary["train_metrics"],
                "strategy_options": options,
                "pretraining": self.pretraining,
                "shared_initial_model": r == 0,
                "initial_trainings": summary.get("initial_trainings") if r == 0 else None,
                # Stateful strategies (e.g. a bandit) carry state across rounds.
                "strategy_state": (strategy.state_dict() if hasattr(strategy, "state_dict")
                                   else None),
                "config": s.config, "config_hash": s.config_hash,
            }
            if self.labeller.source == "human":
                record.update({
                    "labels_from": "human",
                    # the person's labels of labeled_indices, in the same order
                    "labeled_labels": self.labeller.labels[labeled].tolist(),
                    "test_split": self.data.notes.get("test_split") if self.test else None})
            self.log.append(record)
            self.done[(strategy_name, seed, r)] = record
            metrics = summary["train_metrics"]
            extra = "".join(f" {k}={metrics[k]:.2f}" for k in ("mask_rate", "pseudo_label_accuracy")
                            if k in metrics)
            lam = f" λ_min={objective['lambda_min']:.4g}" if objective and "lambda_min" in objective else ""
            accuracy = summary["test_accuracy"]
            accuracy = "n/a" if accuracy is None else f"{100 * accuracy:.2f}%"
            print(f"[{s.mode}] {strategy_name:>10s} seed={seed} round={r} labels={len(labeled):4d} "
                  f"acc={accuracy} train={summary['train_seconds']:.0f}s "
                  f"acquire={acquisition_seconds:.1f}s{lam}{extra}", flush=True)
            if len(acquired):
                pool = pool.reveal(acquired)
        return None


def run(config, workdir: str | os.PathLike, *, progress: bool | None = None,
        labels: str = "oracle") -> list[dict]:
    """Runs every (seed, strategy) of `config`; returns all records of `workdir`.

    Args:
      config: an ml_collections.ConfigDict (or dict) with the fields of
        `experiments/configs/fmnist_quick.py`.
      workdir: directory of results.jsonl, checkpoints/, summary.md, accuracy.png.
      progress: tqdm bars (default: when stderr is a terminal).
      labels: who answers the queries. "oracle": the dataset's true labels.
        "human": a person, through CSV files in `workdir` (`npc_jax.labelling`):
        the pool's true labels are never read, Q0 is drawn uniformly at random,
        accuracy is measured on the dataset's test split if it has one (else
        null), and the run stops at the first labels it lacks.

    Raises:
      labelling.LabelsNeeded: human mode only, after exporting the query to
        label; import it with `labelling.import_labels` and run again.
    """
    settings = RunSettings.from_config(config, labels=labels)
    created = bool(str(workdir).strip()) and not Path(workdir).exists()
    try:
        workdir = records.check_writable_dir(workdir)
    except records.RecordsError:
        # A finished run can still be read where it cannot be written (an
        # archive, a read-only mount): return its records, train nothing.
        if workdir and Path(workdir).is_dir() and _is_finished(settings, Path(workdir)):
            print(f"{workdir} is read-only and complete: nothing to run, summary not rewritten.")
            return records.read_jsonl(Path(workdir) / "results.jsonl")
        raise
    try:
        with records.WorkdirLock(workdir):
            return _run_locked(settings, workdir, progress=progress, labels=labels)
    finally:
        # A run refused before it wrote anything leaves no empty workdir behind.
        if created and {p.name for p in workdir.iterdir()} <= {records.LOCK_FILE}:
            (workdir / records.LOCK_FILE).unlink(missing_ok=True)
            workdir.rmdir()


def _is_finished(settings: RunSettings, workdir: Path) -> bool:
    """Whether `workdir` records every (strategy, seed, round) of `settings`."""
    done = {(r.get("strategy"), r.get("seed"), r.get("round"))
            for r in records.read_jsonl(workdir / "results.jsonl")
            if r.get("config_hash") == settings.config_hash}
    return all((name, seed, r) in done for name in settings.strategies
               for seed in settings.seeds for r in range(settings.rounds + 1))


def _run_locked(settings: RunSettings, workdir: Path, *, progress, labels) -> list[dict]:
    """`run` once the workdir is known writable and this process holds its lock."""
    if labels == "human":
        dataset, class_names = labelling.load_for_labelling(settings.dataset,
                                                            data_dir=settings.data_dir)
        labeller = labelling.HumanLabels(workdir, dataset.num_train, dataset.num_classes)
        if settings.initial_trainings > 1 and not len(dataset.y_test):
            raise ValueError(f"config.initial_trainings={settings.initial_trainings} picks the "
                             f"median by test accuracy, but {settings.dataset} has no labelled "
                             "test split; set --config.initial_trainings=1.")
    else:
        if labelling.is_human_workdir(workdir):
            raise ValueError(f"{workdir} holds a human-labelled run (human_labels.jsonl or "
                             "queries/); continue it with experiments/label.py, or use a new "
                             "--workdir for an oracle run.")
        dataset = load_dataset(settings.dataset, data_dir=settings.data_dir)
        labeller = labelling.TrueLabels(dataset.y_train, dataset.num_classes)
        class_names = None   # names are for exports, and the oracle never exports
    if settings.final_num_labels + settings.validation_size > dataset.num_train:
        raise DataError(
            f"The run needs config.initial_labels ({settings.initial_labels}) + config.rounds "
            f"({settings.rounds}) × config.query_size ({settings.query_size}) = "
            f"{settings.final_num_labels} labels, but the pool holds {dataset.num_train} samples "
            f"(config.validation_size = {settings.validation_size} of them held out); lower "
            "one of those fields.")
    runner = _Runner(settings, workdir, dataset, labeller,
                     progress=sys.stderr.isatty() if progress is None else progress)
    for seed in settings.seeds:
        for name in settings.strategies:
            request = runner.run_one(name, seed)
            if request is not None:
                _write_summary(runner.log.read(), workdir)
                raise labelling.LabelsNeeded(labelling.export_query(
                    workdir, request, dataset.x_train, num_classes=dataset.num_classes,
                    class_names=class_names, dataset=settings.dataset))
    all_records = runner.log.read()
    _write_summary(all_records, workdir)
    return all_records


def _write_summary(run_records: list[dict], workdir: Path) -> None:
    """summary.md and accuracy.png of the records that have a test accuracy."""
    measured = [r for r in run_records if r["test_accuracy"] is not None]
    if measured:
        (workdir / "summary.md").write_text(results.format_table(measured) + "\n")
        results.plot_accuracy(measured, workdir / "accuracy.png")


def _run_identity(cfg: dict) -> dict:
    """The config fields that identify a workdir's run (what `config_hash` hashes)."""
    return {k: v for k, v in cfg.items() if k not in _SUBSET_FIELDS + _LOCATION_FIELDS
            and not (k in _HASH_NEUTRAL_DEFAULTS and v == _HASH_NEUTRAL_DEFAULTS[k])}


def _config_difference(recorded: dict, current: dict) -> str:
    """Which run-identifying config fields differ, e.g. "train_steps: 1000 -> 600"."""
    def flat(tree, prefix=""):
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    old, new = flat(_run_identity(recorded or {})), flat(_run_identity(current))
    changed = [f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}"
               for key in sorted(set(old) | set(new)) if old.get(key, None) != new.get(key, None)]
    return "; ".join(changed) if changed else "the same fields, another labels mode"


def _read_checkpoint_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"Checkpoint metadata {path} is damaged ({error}); delete it and "
                        f"{path.with_suffix('.msgpack').name} to retrain the round-0 model.") from None
