"""JSON-lines logs that never lose a line that parses, the workdir lock, the typed round record."""
import copy
import dataclasses
import json
import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from npc_jax import records, storage


def _write(path, text):
    path.write_bytes(text.encode())
    return path


def test_a_complete_last_line_without_newline_is_read_and_kept(tmp_path):
    # An editor that saves without a final newline.
    path = _write(tmp_path / "log.jsonl", '{"a": 1}\n{"a": 2}')
    before = path.read_bytes()
    assert storage.read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes() == before                     # reading never writes
    log = storage.JsonlLog(path)
    log.append({"a": 3})
    assert [r["a"] for r in log.read()] == [1, 2, 3]
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n{"a": 3}\n'


def test_a_torn_last_line_is_skipped_on_read_and_cut_on_append(tmp_path):
    path = _write(tmp_path / "log.jsonl", '{"a": 1}\n{"a": 2}\n{"a": 3, "tru')
    before = path.read_bytes()
    assert storage.read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes() == before
    log = storage.JsonlLog(path)
    log.append({"a": 4})
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n{"a": 4}\n'


def test_a_damaged_line_before_the_last_names_file_and_line(tmp_path):
    path = _write(tmp_path / "log.jsonl", '{"a": 1}\ngarbage\n{"a": 2}\n')
    with pytest.raises(storage.RecordsError, match=r"log.jsonl:2 is not a JSON object"):
        storage.read_jsonl(path)
    assert path.read_bytes() == b'{"a": 1}\ngarbage\n{"a": 2}\n'


def test_missing_and_empty_files_read_as_empty(tmp_path):
    assert storage.read_jsonl(tmp_path / "none.jsonl") == []
    assert storage.read_jsonl(_write(tmp_path / "empty.jsonl", "")) == []
    log = storage.JsonlLog(tmp_path / "sub" / "new.jsonl")
    log.append({"x": 1})
    assert log.read() == [{"x": 1}]


def test_write_atomically_replaces_whole_files(tmp_path):
    path = tmp_path / "f.json"
    storage.write_atomically(path, b"one")
    storage.write_atomically(path, b"two")
    assert path.read_bytes() == b"two" and sorted(os.listdir(tmp_path)) == ["f.json"]


@pytest.mark.parametrize("value, match", [("", "is empty"), ("   ", "is empty")])
def test_check_writable_dir_refuses_an_empty_path(value, match):
    with pytest.raises(storage.RecordsError, match=match):
        storage.check_writable_dir(value)


def test_check_writable_dir_refuses_a_file_and_a_read_only_dir(tmp_path):
    file = _write(tmp_path / "file", "x")
    with pytest.raises(storage.RecordsError, match="is a file, not a directory"):
        storage.check_writable_dir(file)


def _read_only(monkeypatch):
    """Every file creation fails as on a read-only mount (root ignores chmod)."""
    import errno
    import pathlib

    def refuse(self, data):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", refuse)


def test_check_writable_dir_refuses_a_read_only_dir(tmp_path, monkeypatch):
    _read_only(monkeypatch)
    with pytest.raises(storage.RecordsError, match="not writable .Read-only file system"):
        storage.check_writable_dir(tmp_path)


def _hold_lock(workdir, ready, release):
    with storage.WorkdirLock(workdir):
        ready.set()
        release.wait(30)


def test_a_second_process_on_a_locked_workdir_fails_at_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(storage.WorkdirBusy, match=f"in use by pid {holder.pid}"):
            with storage.WorkdirLock(tmp_path):
                pass
    finally:
        release.set()
        holder.join(30)
    with storage.WorkdirLock(tmp_path):   # free again once the holder is gone
        pass


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(60)
    holder.kill()
    holder.join(30)
    with storage.WorkdirLock(tmp_path):
        pass


# -- the typed round record ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
def _is_round_record_file(path) -> bool:
    """Round records (L1, L2 …), not a benchmark's own JSON lines (e.g. records/p9)."""
    with open(path) as f:
        first = json.loads(f.readline() or "{}")
    return {"strategy", "round", "test_accuracy"} <= set(first)


COMMITTED = sorted(p for p in (ROOT / "records").rglob("*.jsonl") if _is_round_record_file(p))


def _loop_dict(**overrides):
    """A record as npc_jax.loop writes it today (before schema_version), numpy values included."""
    labeled = np.array([3, 1, 4, 5], np.int64)
    return {
        "dataset": "npz:toy.npz", "dataset_fingerprint": "a1b2c3d4e5f60718",
        "mode": "assl", "strategy": "npc", "seed": 0, "round": 1, "num_labels": 4,
        "test_accuracy": 0.6125, "validation_accuracy": None,
        "labeled_indices": labeled.tolist(), "acquired_indices": [7, 9],
        "class_counts": [2, 2],
        "objective": {"lambda_min": 0.25, "kernel": "last", "output": "logits",
                      "normalize": False,
                      "random_batches": {"num": 3, "mean": 0.1, "std": 0.05,
                                         "quantiles": {"0.0": 0.01, "0.25": 0.05, "0.5": 0.1,
                                                       "0.75": 0.15, "1.0": 0.25}}},
        "acquisition_seconds": 0.5, "train_seconds": 2.25,
        "train_metrics": {"loss": 0.5, "mask_rate": 0.75, "step": 10},
        "strategy_options": {"num_candidates": 3},
        "pretraining": {"key": "simclr_abc.msgpack", "method": "simclr", "steps": 100, "seed": 0},
        "shared_initial_model": False,
        "initial_trainings": None,
        "strategy_state": None,
        "config": {"dataset": "npz:toy.npz", "train": {"steps": 10}, "seeds": "0"},
        "config_hash": "0123456789abcdef", **overrides}


def test_a_new_record_writes_todays_keys_and_values_plus_schema_version():
    today = _loop_dict()
    record = records.RoundRecord(**{**today, "labeled_indices": np.array(today["labeled_indices"]),
                                    "seed": np.int64(0), "acquired_indices": np.array([7, 9])})
    assert record.to_json() == {**today, "schema_version": records.SCHEMA_VERSION}
    assert isinstance(record.objective, records.NPCObjective)
    assert record.objective.random_batches.median == 0.1
    assert isinstance(record.pretraining, records.Pretraining)
    assert record.labeled_indices == (3, 1, 4, 5) and record.key == ("assl", "npc", 0, 1)


def _human(**overrides):
    """A human-mode ALBL record of round 0 (k = 3 initial trainings)."""
    return _loop_dict(**{
        "labels_from": "human", "labeled_labels": [0, 1, 1, 0], "test_split": None,
        "strategy": "albl", "round": 0, "shared_initial_model": True,
        "objective": {"arm": "coreset", "reward": None, "overlap_least_confidence_coreset": 1,
                      "arm_probabilities": {"coreset": 0.5, "least_confidence": 0.5}},
        "strategy_state": {"queried": [[1, 2.0]], "pending": None, "rewards": []},
        "initial_trainings": {"criterion": "test_accuracy", "chosen": 1,
                              "test_accuracies": [0.5, 0.6, None],
                              "train_seconds": [1.0, 1.0, 1.5]}, **overrides})


@pytest.mark.parametrize("objective", [
    None,
    {"lambda_min": 0.5, "start_lambda_min": 0.25, "swaps_accepted": 3, "kernel": "last",
     "output": "probs", "normalize": True, "greedy_lambda_min": 0.25},
    {"lambda_min": 0.5, "random_batches": {"num": 1, "mean": 0.5, "std": 0.0,
                                           "quantiles": {"0.5": 0.5}},
     "kernel": "analytic", "architecture": "mlp", "normalize": False, "score_seconds": 1.5},
    {"lambda_min": 0.5, "random_batches": {"num": 1, "mean": 0.5, "std": 0.0,
                                           "quantiles": {"0.5": 0.5}},
     "kernel": "embedding", "embedding": "pretrained", "normalize": True},
    {"lambda_min": 0.5, "random_batches": {"num": 1, "mean": 0.5, "std": 0.0,
                                           "quantiles": {"0.5": 0.5}},
     "kernel": "last", "output": "logits", "normalize": False, "candidates": "typical",
     "typical_fraction": 0.2, "typicality_k": 20, "embedding": "auto", "typical_points": 99},
    {"score": "margin", "mean_score": 0.5, "min_score": 0.25, "pool_mean_score": 0.125},
    {"distance": "euclidean", "radius_before": 2.0, "radius_after": 1.0},
    {"first_sq_norm": 4.0, "mean_sq_distance_drawn": None},
    {"my_score": [1, 2], "note": "a strategy the schema does not know"},
])
def test_round_trip_of_every_objective_and_human_mode(objective):
    today = _human(objective=objective)
    record = records.RoundRecord.from_json(today)
    assert record.to_json() == {**today, "schema_version": records.SCHEMA_VERSION}
    again = records.RoundRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record
    assert pickle.loads(pickle.dumps(record)) == record == copy.deepcopy(record)
    assert dataclasses.replace(record, seed=3).seed == 3


def test_objectives_are_typed_or_kept_as_a_frozen_dict():
    npc = records.RoundRecord.from_json(_loop_dict()).objective
    assert isinstance(npc, records.LambdaMinObjective) and npc.lambda_min == 0.25
    assert npc.random_batches.quantile(0.25) == 0.05 and npc.random_batches.quantile(0.9) is None
    search = records.parse_objective({"lambda_min": 0.5, "start_lambda_min": 0.25,
                                      "swaps_accepted": 3, "kernel": "last",
                                      "output": "logits", "normalize": False})
    assert isinstance(search, records.NPCSearchObjective) and search.random_batches is None
    assert "random_batches" not in search.to_json()        # written only when recorded
    embed = records.parse_objective({**{k: v for k, v in _loop_dict()["objective"].items()
                                        if k != "output"},
                                     "kernel": "embedding", "embedding": "auto"})
    assert isinstance(embed, records.NPCEmbedObjective) and embed.embedding == "auto"
    other = records.parse_objective({"lambda_min": 0.5})   # no known objective's key set
    assert isinstance(other, records.FrozenDict) and other == {"lambda_min": 0.5}
    with pytest.raises(storage.RecordsError, match=r"NPCObjective.lambda_min must be a number"):
        records.parse_objective({**_loop_dict()["objective"], "lambda_min": "high"})


def _first_record_line(path):
    return json.loads(path.read_text().splitlines()[0])


def test_a_version_0_record_migrates_with_defaults():
    # The first records (before dataset_fingerprint, validation_accuracy,
    # strategy_options, pretraining, initial_trainings, strategy_state existed).
    old = {k: v for k, v in _loop_dict().items() if k not in records.V0_DEFAULTS}
    record = records.RoundRecord.from_json(old)
    assert record.schema_version == records.SCHEMA_VERSION
    assert (record.dataset_fingerprint, record.validation_accuracy, record.pretraining,
            record.initial_trainings, record.strategy_state) == (None,) * 5
    assert record.strategy_options == {}
    assert record.to_json() == {**old, **records.V0_DEFAULTS, "schema_version": 1}
    # A version-1 record must carry them.
    with pytest.raises(storage.RecordsError, match="missing fields dataset_fingerprint, "):
        records.RoundRecord.from_json({**old, "schema_version": 1})


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_record_loads_and_keeps_its_values(path):
    before = path.read_bytes()
    raw = storage.read_jsonl(path)
    loaded = records.read_records([path])
    assert len(loaded) == len(raw) > 0
    for line, record in zip(raw, loaded):
        if "schema_version" in line:                       # written as version 1
            assert record.to_json() == line
        else:                                              # version 0, migrated on reading
            assert record.to_json() == {**records.V0_DEFAULTS, **line, "schema_version": 1}
        assert records.RoundRecord.from_json(record.to_json()) == record
    assert path.read_bytes() == before


def test_committed_records_exist():
    names = {str(p.relative_to(ROOT)) for p in COMMITTED}
    assert {"records/l1/assl.jsonl", "records/l1/asl.jsonl",
            "records/l1_passive/assl.jsonl", "records/l2_v1/assl.jsonl"} <= names


def test_a_misspelt_field_is_refused_naming_it():
    today = _loop_dict()
    misspelt = {**{k: v for k, v in today.items() if k != "test_accuracy"},
                "test_acuracy": today["test_accuracy"]}
    with pytest.raises(storage.RecordsError, match=(
            r"RoundRecord is not a RoundRecord: unknown field 'test_acuracy' \(did you mean "
            r"'test_accuracy'\?\); missing field test_accuracy\.")):
        records.RoundRecord.from_json(misspelt)
    with pytest.raises(TypeError, match="test_acuracy"):
        records.RoundRecord(**misspelt)


@pytest.mark.parametrize("change, match", [
    ({"seed": "0"}, r"RoundRecord.seed must be an int, got str '0'"),
    ({"seed": True}, r"RoundRecord.seed must be an int"),
    ({"labeled_indices": [1, 2]}, r"num_labels is 4 but labeled_indices holds 2"),
    ({"test_split": "given"}, r"belong to human mode"),
    ({"schema_version": 2}, r"has schema_version 2; this npc_jax reads up to 1"),
    ({"config": [1]}, r"RoundRecord.config must be a JSON object"),
    ({"pretraining": {"key": "k", "method": "simclr", "steps": 1}},
     r"RoundRecord.pretraining is not a Pretraining: missing field seed"),
])
def test_bad_values_are_refused_with_the_field_named(change, match):
    with pytest.raises(storage.RecordsError, match=match):
        records.RoundRecord.from_json(_loop_dict(**change))


def test_records_are_frozen():
    record = records.RoundRecord.from_json(_human())
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.test_accuracy = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.objective.reward = 1.0
    with pytest.raises(TypeError):
        record.config["seeds"] = "1"
    with pytest.raises(AttributeError):
        record.labeled_indices.append(9)
    state = records.thaw(record.strategy_state)            # a mutable copy, e.g. for a strategy
    state["rewards"].append(1.0)
    assert state["queried"] == [[1, 2.0]] and record.strategy_state["rewards"] == ()
    today = _loop_dict()
    built = records.RoundRecord(**today)
    today["class_counts"].append(5)                        # the caller's lists are not shared
    assert built.class_counts == (2, 2)


def test_the_appender_writes_to_json_and_the_reader_gives_it_back(tmp_path):
    record = records.RoundRecord.from_json(_human())
    log = storage.JsonlLog(tmp_path / "results.jsonl")
    log.append(record.to_json())
    line = (tmp_path / "results.jsonl").read_text()
    assert line == json.dumps(record.to_json(), sort_keys=True) + "\n"
    assert records.read_records([tmp_path]) == [record]


def _write_records(path, values, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(v) + "\n" for v in values) + tail)
    return path


def test_the_reader_never_modifies_a_file_and_skips_a_torn_tail(tmp_path):
    lines = [_loop_dict(round=r) for r in range(3)]
    run = _write_records(tmp_path / "run" / "results.jsonl", lines[:2], tail='{"mode": "as')
    other = _write_records(tmp_path / "other.jsonl", lines[2:])
    other.write_bytes(other.read_bytes().rstrip(b"\n"))    # a complete last line, no newline
    (tmp_path / "run" / storage.HUMAN_LABELS_FILE).write_text('{"index": 1, "label": 0}\n')
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (run, other)}
    loaded = records.read_records([tmp_path / "run", other, run])   # the same file twice
    assert [r.round for r in loaded] == [0, 1, 2]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (run, other)} == before


def test_the_reader_refuses_bad_paths_and_duplicates(tmp_path):
    with pytest.raises(storage.RecordsError, match="does not exist"):
        records.read_records([tmp_path / "missing"])
    assert records.read_records([tmp_path / "missing"], missing_ok=True) == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(storage.RecordsError, match="No records found"):
        records.read_records([tmp_path / "empty"])
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(storage.RecordsError, match="Unknown file"):
        records.read_records([tmp_path / "notes.txt"])
    _write_records(tmp_path / "a" / "results.jsonl", [_loop_dict()])
    _write_records(tmp_path / "b" / "results.jsonl", [_loop_dict(), _loop_dict(seed=1)])
    with pytest.raises(storage.RecordsError, match=(
            r"\('assl', 'npc', 0, 1\) is recorded at .*a/results.jsonl:1 and at "
            r".*b/results.jsonl:1")):
        records.read_records([tmp_path / "a", tmp_path / "b"])
    _write_records(tmp_path / "c.jsonl", [_loop_dict(), {**_loop_dict(seed=2), "sead": 1}])
    with pytest.raises(storage.RecordsError, match=r"c.jsonl:2 is not a RoundRecord: unknown "
                                                   r"field 'sead' \(did you mean 'seed'\?\)"):
        records.read_records([tmp_path / "c.jsonl"])
