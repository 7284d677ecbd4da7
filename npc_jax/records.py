"""Run records: the typed round record of ``results.jsonl``, and its one reader.

The files themselves (JSON lines, atomic writes, the workdir lock) are
`npc_jax.storage`'s.

The round record (schema version 1)
-----------------------------------
A run appends one `RoundRecord` per (mode, strategy, seed, round) to
``workdir/results.jsonl`` (``JsonlLog(path).append(record.to_json())``);
`read_records` reads any number of such files back as `RoundRecord`s, and is
the only reader of them. Round r trains on the labeled set of round r, then
acquires the batch that round r + 1 adds. Fields (JSON key = attribute):

====================  =============================  ==============================================
field                 type                           meaning
====================  =============================  ==============================================
schema_version        int                            `SCHEMA_VERSION` (1); absent in a file =
                                                     version 0
dataset               str                            dataset name (``fashion_mnist``,
                                                     ``npz:<path>``)
dataset_fingerprint   str | None                     content hash of the data (v0: None)
mode                  str                            ``"assl"`` (FixMatch-DARP) or ``"asl"``
                                                     (supervised)
strategy              str                            registry name of the strategy (``npc``,
                                                     ``passive``, …)
seed                  int                            the seed (initial labels, training,
                                                     acquisition)
round                 int                            0 … config.rounds
num_labels            int                            len(labeled_indices)
test_accuracy         float | None                   accuracy in [0, 1] on the test split; None: no
                                                     test labels
validation_accuracy   float | None                   accuracy on the carved validation split (v0:
                                                     None)
labeled_indices       tuple[int, ...]                pool indices trained on this round
acquired_indices      tuple[int, ...]                the batch acquired after training; () in the
                                                     last round
class_counts          tuple[int, ...]                (C,) labels per class of labeled_indices
objective             Objective | FrozenDict | None  the strategy's score of its batch (below);
                                                     None: none
acquisition_seconds   float                          wall time of the strategy's select
train_seconds         float                          wall time of training (0.0 when round 0 is
                                                     reused)
train_metrics         FrozenDict                     last training metrics: name → float | int
                                                     (loss, step, …)
strategy_options      FrozenDict                     the strategy's options from the config (v0:
                                                     {})
pretraining           Pretraining | None             the self-supervised encoder started from (v0:
                                                     None)
shared_initial_model  bool                           round 0: the model every strategy of the seed
                                                     shares
initial_trainings     InitialTrainings | None        round 0 as the median of k > 1 trainings (v0:
                                                     None)
strategy_state        frozen JSON | None             a stateful strategy's state after select (v0:
                                                     None)
config                FrozenDict                     the run's whole config
config_hash           str                            hash of the run-identifying config fields
labels_from           str | None                     ``"human"`` in human mode; None (not written)
                                                     otherwise
labeled_labels        tuple[int, ...] | None         human mode: the person's labels of
                                                     labeled_indices
test_split            str | None                     human mode: ``"given"`` | ``"held_out"`` |
                                                     None
====================  =============================  ==============================================

The three human-mode fields are written only when ``labels_from`` is set.
Typed parts: `RandomBatches` (num, mean, std, quantiles {"0.0" … "1.0"} of
the m random candidate batches' λ_min); `Pretraining` (key, method, steps,
seed); `InitialTrainings` (criterion, chosen, test_accuracies,
train_seconds). Objectives, matched by their exact key set
(`parse_objective`); an objective of any other shape stays a `FrozenDict`
(a field marked ? is written only when not None):

* `NPCObjective` (npc, npc_probs, npc_full, npc_norm, npc_typical):
  lambda_min, random_batches, kernel, output, normalize, candidates?,
  typical_fraction?, typicality_k?, embedding?, typical_points?.
* `NPCSearchObjective` (npc_search): lambda_min, start_lambda_min,
  swaps_accepted, kernel, output, normalize, random_batches?,
  greedy_lambda_min?.
* `NPCInfiniteObjective` (npc_infinite): lambda_min, random_batches, kernel,
  architecture, normalize, score_seconds.
* `NPCEmbedObjective` (npc_embed): lambda_min, random_batches, kernel,
  embedding, normalize.
* `UncertaintyObjective` (margin, entropy, least_confidence): score,
  mean_score, min_score, pool_mean_score.
* `CoresetObjective`: distance, radius_before, radius_after.
* `BadgeObjective`: first_sq_norm, mean_sq_distance_drawn.
* `ALBLObjective`: arm, arm_probabilities, reward, overlap_least_confidence_coreset.

The four NPC objectives are `LambdaMinObjective`s (lambda_min: float,
random_batches: RandomBatches | None).

Versions and checks. Records without ``schema_version`` are version 0 (the
committed L1 records): they migrate on reading by taking the defaults marked
"v0" above. A key the schema does not know is refused, naming it and the
nearest field (a misspelt field is never silently dropped); so is a missing
field, a value of the wrong type, and a version newer than this code's.
Records are frozen: nested JSON objects are `FrozenDict`s and lists are
tuples; `thaw` gives a plain, mutable JSON copy (e.g. to restore a strategy's
state).
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from npc_jax.storage import HUMAN_LABELS_FILE, RecordsError, numbered_objects

__all__ = [
    "OBJECTIVE_TYPES",
    "SCHEMA_VERSION",
    "ALBLObjective",
    "BadgeObjective",
    "CoresetObjective",
    "FrozenDict",
    "InitialTrainings",
    "LambdaMinObjective",
    "NPCEmbedObjective",
    "NPCInfiniteObjective",
    "NPCObjective",
    "NPCSearchObjective",
    "Objective",
    "Pretraining",
    "RandomBatches",
    "RecordsError",
    "RoundRecord",
    "UncertaintyObjective",
    "V0_DEFAULTS",
    "freeze",
    "parse_objective",
    "read_records",
    "thaw",
]

# -- the typed round record -------------------------------------------------------------

SCHEMA_VERSION = 1

JsonValue = Any   # None | bool | int | float | str | tuple[JsonValue, ...] | FrozenDict


class FrozenDict(Mapping):
    """An immutable JSON object inside a record; equal to a dict with the same items."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping | Iterable = ()):
        object.__setattr__(self, "_items", dict(items))

    def __getitem__(self, key):
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"FrozenDict({self._items!r})"

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __setattr__(self, name, value):
        raise AttributeError("FrozenDict is immutable; thaw() gives a mutable copy")

    def __reduce__(self):   # pickle and deepcopy (the default would call __setattr__)
        return FrozenDict, (self._items,)


def freeze(value: Any, where: str = "value") -> JsonValue:
    """A JSON value made immutable: objects → `FrozenDict`, lists → tuples.

    Accepts numpy scalars and arrays (as their Python values). Raises
    RecordsError naming `where` for anything JSON cannot hold.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic | np.ndarray):
        return freeze(value.tolist(), where)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise RecordsError(f"{where}: JSON object keys are strings, got {key!r}.")
        return FrozenDict({k: freeze(v, f"{where}.{k}") for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise RecordsError(f"{where}: {type(value).__name__} {value!r:.60} is not a JSON value.")


def thaw(value: Any) -> Any:
    """A plain, mutable JSON copy (dicts and lists) of a frozen value or typed record part."""
    if isinstance(value, _Schema):
        return value.to_json()
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


# Converters: (value, where) -> the field's value; RecordsError naming `where` if it does not fit.
Converter = Callable[[Any, str], Any]


def _wrong(where: str, expected: str, value: Any) -> RecordsError:
    return RecordsError(f"{where} must be {expected}, got {type(value).__name__} {value!r:.60}.")


def _int(value: Any, where: str) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise _wrong(where, "an int", value)


def _float(value: Any, where: str) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    raise _wrong(where, "a number", value)


def _str(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    raise _wrong(where, "a string", value)


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise _wrong(where, "true or false", value)


def _optional(convert: Converter) -> Converter:
    return lambda value, where: None if value is None else convert(value, where)


def _tuple_of(convert: Converter) -> Converter:
    def tuple_of(value, where):
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise _wrong(where, "a list", value)
        return tuple(convert(v, f"{where}[{i}]") for i, v in enumerate(value))
    return tuple_of


def _object_of(convert: Converter) -> Converter:
    def object_of(value, where):
        if not isinstance(value, Mapping):
            raise _wrong(where, "a JSON object", value)
        return freeze({k: convert(v, f"{where}.{k}") for k, v in value.items()}, where)
    return object_of


def _json_object(value: Any, where: str) -> FrozenDict:
    if not isinstance(value, Mapping):
        raise _wrong(where, "a JSON object", value)
    return freeze(value, where)


def _typed(cls: type) -> Converter:
    return lambda value, where: value if isinstance(value, cls) else cls.from_json(value,
                                                                                   where=where)


def _field(convert: Converter, **kwargs):
    """A dataclass field whose value `convert` checks and normalises on construction."""
    return dataclasses.field(metadata={"convert": convert}, **kwargs)


class _Schema:
    """Base of the typed record parts: fields converted on construction, JSON in and out.

    Subclasses are frozen, keyword-only dataclasses whose fields are made with
    `_field`; the JSON keys are the field names.
    """

    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset()   # not written when None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            where = f"{type(self).__name__}.{f.name}"
            object.__setattr__(self, f.name, f.metadata["convert"](getattr(self, f.name), where))

    @classmethod
    def _keys(cls) -> tuple[set[str], set[str]]:
        """(every JSON key, the required ones)."""
        fields = dataclasses.fields(cls)
        missing = dataclasses.MISSING
        required = {f.name for f in fields
                    if f.default is missing and f.default_factory is missing}
        return {f.name for f in fields}, required

    @classmethod
    def from_json(cls, value: Mapping, *, where: str | None = None):
        """The typed value of a JSON object; RecordsError naming unknown or missing keys."""
        where = where or cls.__name__
        if not isinstance(value, Mapping):
            raise _wrong(where, f"a JSON object ({cls.__name__})", value)
        known, required = cls._keys()
        problems = [f"unknown field {key!r}" + "".join(
                        f" (did you mean {m!r}?)" for m in difflib.get_close_matches(key, known, 1))
                    for key in value if key not in known]
        missing = sorted(required - set(value))
        if missing:
            problems.append("missing field" + "s" * (len(missing) > 1) + " " + ", ".join(missing))
        if problems:
            raise RecordsError(f"{where} is not a {cls.__name__}: {'; '.join(problems)}.")
        return cls(**value)

    def to_json(self) -> dict:
        """A plain JSON dict (new lists and dicts); `from_json` of it gives an equal value."""
        return {f.name: thaw(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not (f.name in self._OMIT_NONE and getattr(self, f.name) is None)}


_frozen = dataclasses.dataclass(frozen=True, kw_only=True)


@_frozen
class RandomBatches(_Schema):
    """λ_min over the m random candidate batches NPC scored.

    quantiles: {"0.0", "0.25", "0.5", "0.75", "1.0"} → float (np.quantile).
    """
    num: int = _field(_int)
    mean: float = _field(_float)
    std: float = _field(_float)
    quantiles: FrozenDict = _field(_object_of(_float))

    def quantile(self, q: float) -> float | None:
        """The recorded q-quantile (q in 0, 0.25, 0.5, 0.75, 1), None if not recorded."""
        return self.quantiles.get(str(float(q)))

    @property
    def median(self) -> float | None:
        return self.quantile(0.5)


class Objective(_Schema):
    """Base of the typed objectives (a strategy's score of its acquired batch)."""


class LambdaMinObjective(Objective):
    """NPC family: ``lambda_min`` (float, the chosen batch's λ_min) and
    ``random_batches`` (`RandomBatches` | None)."""

    lambda_min: float
    random_batches: RandomBatches | None


@_frozen
class NPCObjective(LambdaMinObjective):
    """NPC by random batches (npc, npc_probs, npc_full, npc_norm, npc_typical).

    The last five fields are written only when the candidates were the
    typical points (``candidates="typical"``, npc_typical).
    """
    _OMIT_NONE = frozenset({"candidates", "typical_fraction", "typicality_k", "embedding",
                            "typical_points"})
    lambda_min: float = _field(_float)
    random_batches: RandomBatches = _field(_typed(RandomBatches))
    kernel: str = _field(_str)             # "last" | "full"
    output: str = _field(_str)             # "logits" | "probs"
    normalize: bool = _field(_bool)
    candidates: str | None = _field(_optional(_str), default=None)          # "typical"
    typical_fraction: float | None = _field(_optional(_float), default=None)
    typicality_k: int | None = _field(_optional(_int), default=None)
    embedding: str | None = _field(_optional(_str), default=None)   # of the typicality
    typical_points: int | None = _field(_optional(_int), default=None)  # unlabeled, searched


@_frozen
class NPCEmbedObjective(LambdaMinObjective):
    """npc_embed: NPC's random search with the cosine kernel of the pool embedding."""
    lambda_min: float = _field(_float)
    random_batches: RandomBatches = _field(_typed(RandomBatches))
    kernel: str = _field(_str)             # "embedding"
    embedding: str = _field(_str)          # "auto" | "pretrained" | "features" | "embed_fn"
    normalize: bool = _field(_bool)


@_frozen
class NPCSearchObjective(LambdaMinObjective):
    """npc_search: swaps from the best start (random batches and/or greedy)."""
    _OMIT_NONE = frozenset({"random_batches", "greedy_lambda_min"})
    lambda_min: float = _field(_float)
    start_lambda_min: float = _field(_float)
    swaps_accepted: int = _field(_int)
    kernel: str = _field(_str)
    output: str = _field(_str)
    normalize: bool = _field(_bool)
    random_batches: RandomBatches | None = _field(_optional(_typed(RandomBatches)), default=None)
    greedy_lambda_min: float | None = _field(_optional(_float), default=None)


@_frozen
class NPCInfiniteObjective(LambdaMinObjective):
    """npc_infinite: the analytic NTK of `architecture`."""
    lambda_min: float = _field(_float)
    random_batches: RandomBatches = _field(_typed(RandomBatches))
    kernel: str = _field(_str)             # "analytic"
    architecture: str = _field(_str)
    normalize: bool = _field(_bool)
    score_seconds: float = _field(_float)


@_frozen
class UncertaintyObjective(Objective):
    """margin, entropy, least_confidence: the chosen and the pool's mean scores."""
    score: str = _field(_str)              # the score's name
    mean_score: float = _field(_float)
    min_score: float = _field(_float)
    pool_mean_score: float = _field(_float)


@_frozen
class CoresetObjective(Objective):
    """coreset: the covering radius before and after the batch."""
    distance: str = _field(_str)           # "euclidean"
    radius_before: float = _field(_float)
    radius_after: float = _field(_float)


@_frozen
class BadgeObjective(Objective):
    """badge: k-means++ seeding's squared distances (None for a batch of one)."""
    first_sq_norm: float = _field(_float)
    mean_sq_distance_drawn: float | None = _field(_optional(_float))


@_frozen
class ALBLObjective(Objective):
    """albl: the arm drawn, the arms' probabilities, last round's reward (None at first)."""
    arm: str = _field(_str)
    arm_probabilities: FrozenDict = _field(_object_of(_float))
    reward: float | None = _field(_optional(_float))
    overlap_least_confidence_coreset: int = _field(_int)


OBJECTIVE_TYPES = (NPCObjective, NPCSearchObjective, NPCInfiniteObjective, NPCEmbedObjective,
                   UncertaintyObjective, CoresetObjective, BadgeObjective, ALBLObjective)


def parse_objective(value: Any, where: str = "objective") -> Objective | FrozenDict | None:
    """A strategy's objective, typed when its keys are exactly one of `OBJECTIVE_TYPES`'.

    Args:
      value: None, an `Objective`, or a JSON object (a strategy's
        ``Acquisition.objective``).

    Returns:
      None, the typed objective, or (an objective of another shape: a
      strategy this schema does not know) a `FrozenDict` of it.

    Raises:
      RecordsError: keys of a known objective with a value of the wrong type.
    """
    if value is None or isinstance(value, Objective):
        return value
    if not isinstance(value, Mapping):
        raise _wrong(where, "a JSON object or null", value)
    for cls in OBJECTIVE_TYPES:
        known, required = cls._keys()
        if required <= set(value) <= known:
            return cls.from_json(value, where=where)
    return freeze(value, where)


@_frozen
class Pretraining(_Schema):
    """The cached self-supervised encoder a run started from."""
    key: str = _field(_str)                # the cache entry's file name
    method: str = _field(_str)             # "simclr" | "simsiam"
    steps: int = _field(_int)
    seed: int = _field(_int)


@_frozen
class InitialTrainings(_Schema):
    """Round 0 as the median of k trainings: k test accuracies, the chosen one."""
    criterion: str = _field(_str)          # "validation_accuracy" | "test_accuracy"
    chosen: int = _field(_int)             # index of the median training
    test_accuracies: tuple[float | None, ...] = _field(_tuple_of(_optional(_float)))
    train_seconds: tuple[float, ...] = _field(_tuple_of(_float))


_ints = _tuple_of(_int)

# The fields added after the first records, and what a version-0 record without them gets.
V0_DEFAULTS = {"dataset_fingerprint": None, "validation_accuracy": None,
                "strategy_options": {}, "pretraining": None, "initial_trainings": None,
                "strategy_state": None}
_HUMAN_FIELDS = ("labels_from", "labeled_labels", "test_split")


@_frozen
class RoundRecord(_Schema):
    """One round of one (mode, strategy, seed): the module docstring's table.

    Build it with keywords (lists and numpy arrays become tuples, JSON
    objects `FrozenDict`s, objectives typed by `parse_objective`); write it
    with ``JsonlLog.append(record)``; read files with `read_records`.
    """
    dataset: str = _field(_str)
    dataset_fingerprint: str | None = _field(_optional(_str))
    mode: str = _field(_str)
    strategy: str = _field(_str)
    seed: int = _field(_int)
    round: int = _field(_int)
    num_labels: int = _field(_int)
    test_accuracy: float | None = _field(_optional(_float))
    validation_accuracy: float | None = _field(_optional(_float))
    labeled_indices: tuple[int, ...] = _field(_ints)
    acquired_indices: tuple[int, ...] = _field(_ints)
    class_counts: tuple[int, ...] = _field(_ints)
    objective: Objective | FrozenDict | None = _field(parse_objective)
    acquisition_seconds: float = _field(_float)
    train_seconds: float = _field(_float)
    train_metrics: FrozenDict = _field(_json_object)
    strategy_options: FrozenDict = _field(_json_object)
    pretraining: Pretraining | None = _field(_optional(_typed(Pretraining)))
    shared_initial_model: bool = _field(_bool)
    initial_trainings: InitialTrainings | None = _field(_optional(_typed(InitialTrainings)))
    strategy_state: JsonValue = _field(freeze)
    config: FrozenDict = _field(_json_object)
    config_hash: str = _field(_str)
    labels_from: str | None = _field(_optional(_str), default=None)
    labeled_labels: tuple[int, ...] | None = _field(_optional(_ints), default=None)
    test_split: str | None = _field(_optional(_str), default=None)
    schema_version: int = _field(_int, default=SCHEMA_VERSION)

    def __post_init__(self):
        super().__post_init__()
        if self.schema_version != SCHEMA_VERSION:
            raise RecordsError(f"RoundRecord.schema_version is {self.schema_version}, this code "
                               f"writes {SCHEMA_VERSION}; read old records with "
                               "RoundRecord.from_json, which migrates them.")
        if self.num_labels != len(self.labeled_indices):
            raise RecordsError(f"RoundRecord.num_labels is {self.num_labels} but labeled_indices "
                               f"holds {len(self.labeled_indices)}.")
        if self.labels_from is None and (self.labeled_labels, self.test_split) != (None, None):
            raise RecordsError("RoundRecord.labeled_labels and test_split belong to human mode; "
                               "set labels_from too.")
        if self.labeled_labels is not None and len(self.labeled_labels) != self.num_labels:
            raise RecordsError(f"RoundRecord.labeled_labels holds {len(self.labeled_labels)} "
                               f"labels for {self.num_labels} labeled indices.")

    @property
    def key(self) -> tuple[str, str, int, int]:
        """(mode, strategy, seed, round): what identifies the record among a run's."""
        return self.mode, self.strategy, self.seed, self.round

    @classmethod
    def from_json(cls, value: Mapping, *, where: str | None = None) -> RoundRecord:
        """A record from its JSON object, migrated from older schema versions.

        Raises:
          RecordsError: an unknown key (named, with the nearest field), a
            missing field, a value of the wrong type, or a version newer than
            `SCHEMA_VERSION`.
        """
        where = where or cls.__name__
        if not isinstance(value, Mapping):
            raise _wrong(where, "a JSON object (a RoundRecord)", value)
        version = _int(value.get("schema_version", 0), f"{where}.schema_version")
        if version > SCHEMA_VERSION:
            raise RecordsError(f"{where} has schema_version {version}; this npc_jax reads up to "
                               f"{SCHEMA_VERSION}. Update npc_jax to read it.")
        if version < 0:
            raise RecordsError(f"{where} has schema_version {version}; versions start at 0.")
        if version == 0:
            value = {**V0_DEFAULTS, **value, "schema_version": 1}
        return super().from_json(value, where=where)

    def to_json(self) -> dict:
        """The line `JsonlLog.append` writes: every field (the human-mode ones only when set)."""
        out = super().to_json()
        if self.labels_from is None:
            for name in _HUMAN_FIELDS:
                del out[name]
        return out


# -- the one reader of round records ----------------------------------------------------


def read_records(paths: Iterable[str | os.PathLike], *,
                 missing_ok: bool = False) -> list[RoundRecord]:
    """The round records of run directories and results.jsonl files; never writes.

    Args:
      paths: run directories (every ``*.jsonl`` below one is read, except a
        labeller's ``human_labels.jsonl``) and ``.jsonl`` files, in order. A
        file reached twice (two arguments) is read once.
      missing_ok: a path that does not exist or holds no records reads as
        empty (a run not started yet) instead of raising.

    Returns:
      The records in argument, file and line order, migrated to
      `SCHEMA_VERSION`. A torn last line (a run still appending) is skipped,
      never truncated away (`read_jsonl`).

    Raises:
      RecordsError (a ValueError): a path that does not exist, holds no
        records, or is not a .jsonl file; a line that is not a round record
        (``file:line`` and the field named); the same (mode, strategy, seed,
        round) twice.
    """
    out, origin, seen = [], {}, set()
    for path in map(Path, paths):
        files = _record_files(path, missing_ok)
        fresh = [f for f in files if f.resolve() not in seen]
        seen.update(f.resolve() for f in fresh)
        found = [(f"{file}:{number}", value) for file in fresh
                 for number, value in numbered_objects(file)]
        if not found and len(fresh) == len(files) and not missing_ok:
            raise RecordsError(f"No records found at {path}; pass a run's workdir (holding "
                               "results.jsonl) or the .jsonl files of finished rounds.")
        for where, value in found:
            record = RoundRecord.from_json(value, where=where)
            if record.key in origin:
                raise RecordsError(f"(mode, strategy, seed, round) = {record.key} is recorded "
                                   f"at {origin[record.key]} and at {where}; pass each run once.")
            origin[record.key] = where
            out.append(record)
    return out


def _record_files(path: Path, missing_ok: bool) -> list[Path]:
    """The record files of one `read_records` argument."""
    if path.is_dir():
        # A human-labelled run keeps its labels beside its records.
        return sorted(f for f in path.rglob("*.jsonl") if f.name != HUMAN_LABELS_FILE)
    if path.is_file():
        if path.suffix != ".jsonl":
            raise RecordsError(f"Unknown file {path}: expected a run's results.jsonl (JSON "
                               "lines, *.jsonl) or a run directory.")
        return [path]
    if missing_ok:
        return []
    raise RecordsError(f"{path} does not exist; pass run directories or results.jsonl files.")
