"""A run's settings: the config of `experiments/configs/*.py`, parsed and validated once.

    settings = RunSettings.from_config(get_config())        # raises ValueError naming the fix
    settings.final_num_labels, settings.train, settings.config_hash

Every later layer reads typed fields, never the raw config. Values that follow
from others are derived here, not copied into every config: ALBL's horizon
is the run's number of rounds unless a config sets it, so an override such as
``--config.rounds=5`` cannot leave it stale.

`config_hash` identifies the run a workdir holds: records of another hash are
refused on resume, and `config_difference` names the fields that changed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from npc_jax import strategies
from npc_jax.train import TrainConfig

__all__ = ["RunSettings", "config_difference", "run_identity"]

# Config fields outside the run-wide hash: which subset of a benchmark a command
# runs (its strategies, seeds, and which worker of a grid it is), and the
# strategies' options (checked per strategy: each record carries its own
# strategy's options), so that later commands can add strategies and variants
# to the same workdir.
_SUBSET_FIELDS = ("strategies", "seeds", "shard", "strategy_options")
# Which worker ran a job is not what the job computed: left out of the
# recorded config, so a grid's records equal those of one unsharded run.
_WORKER_FIELDS = ("shard",)
# Fields added to the configs after records were made with their default
# behaviour: at these values they stay out of the hash, so that older
# workdirs (the committed L1 records) resume under the configs of today.
_HASH_NEUTRAL_DEFAULTS = {"model_dtype": "float32", "initial_trainings": 1, "init": "scratch",
                          "first_query_size": 0, "continue_with": "",
                          "cold_start_network": "pretrained"}
# How many devices a training is spread over is how it is computed, not what:
# results agree across device counts to round-off (tests/test_multidevice.py),
# so a run resumes on a machine with another device count.
_HOW_COMPUTED_TRAIN_FIELDS = {"devices"}
# TrainConfig fields added after records were made: out of the hash at these values.
_HASH_NEUTRAL_TRAIN_DEFAULTS = {"pool_layout": "replicated", "pseudo_labels": "model",
                                "propagation_neighbours": 10, "propagation_alpha": 0.99,
                                "propagation_balance": True}
# Where things are kept, not what is computed: outside the hash.
_LOCATION_FIELDS = ("pretrain_cache",)
# Strategy options that default to a run setting: {strategy: {option: setting}}.
_RUN_DERIVED_OPTIONS = {"albl": {"horizon": "rounds"}}   # EXP4.P plays one arm per round


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The validated, typed view of a run's config (fields as in `fmnist_quick.py`)."""

    dataset: str
    data_dir: str | None
    model: str
    model_dtype: str          # "float32" | "bfloat16" (wrn28_2 only)
    mode: str                 # "assl" (FixMatch-DARP) | "asl" (supervised)
    labels: str               # "oracle" | "human"
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    shard: tuple[int, int]    # (i, N): worker i of N runs every N-th job of `grid()`
    initial_labels: int
    query_size: int
    first_query_size: int     # labels of round 0's query (cold start: the first batch)
    continue_with: str        # "": each strategy queries every round; else rounds >= 1 use it
    cold_start_network: str   # zero-shot round 0 of a pretrained run: "pretrained" | "random"
    rounds: int
    validation_size: int
    initial_trainings: int    # odd k: the round-0 model is the median of k trainings
    train: TrainConfig
    strategy_options: dict    # {strategy: {option: value}}, run-derived options filled in
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
        _check_labels_mode(cfg, labels)
        mode = cfg["mode"]
        if mode not in ("assl", "asl"):
            raise ValueError(f"config.mode must be 'assl' (FixMatch-DARP) or 'asl' "
                             f"(supervised), got {mode!r}.")
        names = _strategy_names(cfg["strategies"])
        seeds = _seeds(cfg["seeds"])
        shard = _shard(cfg.get("shard", ""), num_jobs=len(names) * len(seeds))
        if labels == "human" and shard[1] > 1:
            raise ValueError(f"config.shard={cfg['shard']!r} splits an oracle run's grid over "
                             "workers; a human-labelled run has one labeller and one queue: "
                             "leave config.shard empty.")
        _check_budget_fields(cfg)
        model_dtype = _model_dtype(cfg)
        initial_trainings = int(cfg.get("initial_trainings", 1))
        if initial_trainings < 1 or initial_trainings % 2 == 0:
            raise ValueError("config.initial_trainings must be a positive odd number (the "
                             f"round-0 model is the median of that many), got {initial_trainings}.")
        init, pretrain = _initialisation(cfg)
        train_fields = dict(cfg.get("train", {}))
        train_fields["steps"] = int(cfg["train_steps"])
        train_fields["method"] = "fixmatch" if mode == "assl" else "supervised"
        relevant = run_identity(cfg)
        if labels == "human":   # only then: oracle workdirs keep their hash
            relevant["labels"] = labels
        digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
        return cls(dataset=cfg["dataset"], data_dir=cfg.get("data_dir") or None,
                   model=cfg["model"], model_dtype=model_dtype, mode=mode, labels=labels,
                   strategies=names, seeds=seeds, shard=shard,
                   initial_labels=int(cfg["initial_labels"]),
                   query_size=int(cfg["query_size"]),
                   first_query_size=int(cfg.get("first_query_size") or cfg["query_size"]),
                   continue_with=_continuation(cfg),
                   cold_start_network=_cold_start_network(cfg),
                   rounds=int(cfg["rounds"]),
                   validation_size=int(cfg.get("validation_size", 0)),
                   initial_trainings=initial_trainings,
                   train=TrainConfig(**train_fields),
                   strategy_options=_strategy_options(cfg, names),
                   init=init, pretrain=pretrain,
                   pretrain_seed=int(cfg.get("pretrain_seed", 0)),
                   pretrain_cache=str(cfg.get("pretrain_cache") or "runs/pretrain_cache"),
                   config={k: v for k, v in cfg.items() if k not in _WORKER_FIELDS},
                   config_hash=digest)

    @property
    def final_num_labels(self) -> int:
        return self.initial_labels + sum(self.query_size_of(r) for r in range(self.rounds))

    def query_size_of(self, round_index: int) -> int:
        """Labels acquired at the end of round `round_index` (the first query may differ:
        a cold start's first batch of 10, then rounds of 20)."""
        return self.first_query_size if round_index == 0 else self.query_size

    def grid(self) -> list[tuple[int, str]]:
        """Every (seed, strategy) job of the run, in the order the loop runs them."""
        return [(seed, name) for seed in self.seeds for name in self.strategies]

    def jobs(self) -> list[tuple[int, str]]:
        """This worker's jobs: every N-th of `grid()` from the i-th (all of it unsharded)."""
        index, count = self.shard
        return self.grid()[index::count]

    def options_of(self, strategy: str) -> dict:
        """The options `strategy` is built with (as recorded in its records)."""
        return self.strategy_options.get(strategy, {})


def _check_labels_mode(cfg: dict, labels: str) -> None:
    if labels not in ("oracle", "human"):
        raise ValueError(f"labels must be 'oracle' (the dataset's true labels) or 'human' "
                         f"(labelled by hand through CSV files), got {labels!r}.")
    if labels == "human" and int(cfg.get("validation_size", 0)):
        raise ValueError("config.validation_size needs the pool's true labels, which a "
                         "human-labelled run does not have; set --config.validation_size=0.")


def _strategy_names(field) -> tuple[str, ...]:
    names = tuple(s.strip() for s in str(field).split(",") if s.strip())
    if not names:
        raise ValueError("config.strategies is empty; e.g. --config.strategies=passive,npc")
    for name in names:
        if name not in strategies.available():
            raise ValueError(f"Unknown strategy {name!r} in config.strategies; "
                             f"available: {', '.join(strategies.available())}.")
    return names


def _seeds(field) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in str(field).split(",") if s.strip())
    except ValueError:
        raise ValueError(f"config.seeds must be comma-separated integers, "
                         f"got {field!r}.") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"config.seeds must be distinct non-negative integers, got {field!r}.")
    return seeds


def _shard(field, *, num_jobs: int) -> tuple[int, int]:
    """(i, N) of config.shard = "i/N" (worker i of N); "" is (0, 1), the whole grid."""
    text = str(field or "").strip()
    if not text:
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise ValueError(f"config.shard must be 'i/N', worker i of N workers with 0 <= i < N "
                         f"(e.g. --config.shard=0/2 and --config.shard=1/2), or '' for the "
                         f"whole grid; got {field!r}.")
    if count > num_jobs:
        raise ValueError(f"config.shard={field!r} splits {num_jobs} (strategy, seed) jobs over "
                         f"{count} workers; use at most {num_jobs} workers.")
    return index, count


def _check_budget_fields(cfg: dict) -> None:
    if int(cfg["query_size"]) <= 0:
        raise ValueError(f"config.query_size must be positive, got {cfg['query_size']}.")
    if int(cfg["initial_labels"]) < 0:
        raise ValueError("config.initial_labels must be >= 0 (0: zero-shot, the first "
                         f"query from a randomly initialised model), got {cfg['initial_labels']}.")
    if int(cfg["rounds"]) < 0:
        raise ValueError(f"config.rounds must be >= 0, got {cfg['rounds']}.")
    if int(cfg.get("first_query_size") or 0) < 0:
        raise ValueError("config.first_query_size must be >= 0 (0: the same as "
                         f"config.query_size), got {cfg['first_query_size']}.")


def _cold_start_network(cfg: dict) -> str:
    """config.cold_start_network: which network a zero-shot first query (initial_labels
    = 0) is made from in a pretrained run: the pretrained encoder with an untrained
    head ("pretrained"), or the random initialisation ("random", the paper's
    zero-shot rows); every training after it fine-tunes from the pretraining."""
    network = str(cfg.get("cold_start_network") or "pretrained")
    if network not in ("pretrained", "random"):
        raise ValueError("config.cold_start_network must be 'pretrained' or 'random', got "
                         f"{network!r}.")
    if network == "random" and (cfg.get("init", "scratch") != "pretrained"
                                or int(cfg["initial_labels"]) != 0):
        raise ValueError("config.cold_start_network='random' applies to a cold start "
                         "(initial_labels=0) of a pretrained run (init='pretrained'); a run "
                         "from scratch already queries from the random initialisation.")
    return network


def _continuation(cfg: dict) -> str:
    """config.continue_with: "" (each strategy continues itself) or a stateless strategy."""
    name = str(cfg.get("continue_with") or "").strip()
    if not name:
        return ""
    if name not in strategies.available():
        raise ValueError(f"Unknown strategy {name!r} in config.continue_with; available: "
                         f"{', '.join(strategies.available())} (or '' for each strategy's own "
                         "continuation).")
    if name == "albl":
        raise ValueError("config.continue_with='albl': ALBL learns across its own rounds "
                         "(its state is recorded per strategy); continue with a stateless "
                         "strategy, or leave continue_with empty and run albl itself.")
    return name


def _model_dtype(cfg: dict) -> str:
    model_dtype = str(cfg.get("model_dtype", "float32"))
    if model_dtype not in ("float32", "bfloat16"):
        raise ValueError("config.model_dtype (the compute dtype) must be 'float32' or "
                         f"'bfloat16' (GPUs), got {model_dtype!r}.")
    if model_dtype != "float32" and cfg["model"] != "wrn28_2":
        raise ValueError(f"config.model_dtype={model_dtype!r} is offered for wrn28_2 only; "
                         f"model {cfg['model']!r} computes in float32.")
    return model_dtype


def _initialisation(cfg: dict):
    """(init, PretrainConfig or None) from config.init and config.pretrain."""
    init = str(cfg.get("init", "scratch"))
    if init not in ("scratch", "pretrained"):
        raise ValueError("config.init must be 'scratch' (every training from a random "
                         "initialisation) or 'pretrained' (fine-tune from the "
                         f"self-supervised pretraining of config.pretrain), got {init!r}.")
    if init == "scratch":
        return init, None
    from npc_jax import pretraining   # flax and the SSL stack: only when pretraining
    if not cfg.get("pretrain"):
        raise ValueError("config.init='pretrained' needs a config.pretrain section (the "
                         "recipe, e.g. experiments/configs/pretrain_fmnist.py's).")
    return init, pretraining.config_from_dict(cfg["pretrain"])


def _strategy_options(cfg: dict, names: tuple[str, ...]) -> dict:
    """{strategy: options}: the config's, with run-derived options filled in."""
    options = {k: dict(v) for k, v in dict(cfg.get("strategy_options", {})).items()}
    for name in options:
        if name not in strategies.available():
            raise ValueError(f"config.strategy_options names unknown strategy {name!r}.")
    continuation = str(cfg.get("continue_with") or "").strip()
    for name, derived in _RUN_DERIVED_OPTIONS.items():
        if name in names or name == continuation:
            for option, setting in derived.items():
                options.setdefault(name, {}).setdefault(option, int(cfg[setting]))
    return options


def run_identity(cfg: dict) -> dict:
    """The config fields that identify a workdir's run (what `config_hash` hashes)."""
    identity = {k: v for k, v in cfg.items() if k not in _SUBSET_FIELDS + _LOCATION_FIELDS
                and not (k in _HASH_NEUTRAL_DEFAULTS and v == _HASH_NEUTRAL_DEFAULTS[k])}
    if isinstance(identity.get("train"), dict):
        identity["train"] = {k: v for k, v in identity["train"].items()
                             if k not in _HOW_COMPUTED_TRAIN_FIELDS and not (
                                 k in _HASH_NEUTRAL_TRAIN_DEFAULTS
                                 and v == _HASH_NEUTRAL_TRAIN_DEFAULTS[k])}
    return identity


def config_difference(recorded: dict, current: dict) -> str:
    """Which run-identifying config fields differ, e.g. "train_steps: 1000 -> 600"."""
    def flat(tree, prefix=""):
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    old, new = flat(run_identity(recorded or {})), flat(run_identity(current))
    changed = [f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}"
               for key in sorted(set(old) | set(new)) if old.get(key, None) != new.get(key, None)]
    return "; ".join(changed) if changed else "the same fields, another labels mode"
