"""Bad inputs and faults, tried as a new user would: each gets a one-line error
that names the problem and the fix, or the right behaviour, and nothing in the
workdir is lost or changed (issue: "nothing lost, nothing mixed")."""
import errno
import json
import pathlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import toy_config
from npc_jax import config as config_lib
from npc_jax import labelling, loop, report, storage

ROOT = Path(__file__).resolve().parents[1]


_write_dataset = toy_config.write_bar_dataset


def _config(dataset, **overrides):
    config = toy_config.get_config()
    config.update({"dataset": f"npz:{dataset}", "strategies": "passive", "rounds": 1,
                   **overrides})
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished toy run (passive, rounds 0-1) and its dataset, as templates."""
    base = tmp_path_factory.mktemp("template")
    dataset = _write_dataset(base / "toy.npz")
    loop.run(_config(dataset), base / "run", progress=False)
    return dataset, base / "run"


@pytest.fixture
def copy(tmp_path):
    """A finished run of this test's own (a copy would change the dataset path,
    which is part of the config)."""
    dataset = _write_dataset(tmp_path / "toy.npz")
    loop.run(_config(dataset), tmp_path / "run", progress=False)
    return dataset, tmp_path / "run"


def _snapshot(workdir: Path) -> dict:
    if not workdir.exists():
        return {}
    return {p.relative_to(workdir).as_posix(): p.read_bytes() for p in sorted(workdir.rglob("*"))
            if p.is_file() and p.name != storage.LOCK_FILE}


def _count_trainings(monkeypatch):
    calls = []
    real = loop.train.timed_train
    monkeypatch.setattr(loop.train, "timed_train",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _refuses(config, workdir, match, **kwargs):
    """Runs the loop, expecting one error line that matches; returns its message."""
    with pytest.raises(ValueError, match=match) as info:
        loop.run(config, workdir, progress=False, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- #
# Config and data errors: refused before anything is written.
# --------------------------------------------------------------------------- #

def _npz_bytes(shape, dtype="<u1", payload=b""):
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue() + payload


def _damaged_npz(path):
    path.write_bytes(np.random.default_rng(0).bytes(3000))


def _huge_shape_npz(path):   # declares 71 TiB of images
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", _npz_bytes((10 ** 7, 28, 28, 100_000)))
        archive.writestr("y.npy", _npz_bytes((10,), "<i8", b"\0" * 80))


def _deflate_bomb_npz(path):   # a small declared shape over 200 MB of zeros
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", _npz_bytes((10, 28, 28), "<u1", b"\0" * (200 * 2 ** 20)))
        archive.writestr("y.npy", _npz_bytes((10,), "<i8", b"\0" * 80))


def _unseen_test_class_npz(path):
    rng = np.random.default_rng(0)
    x, y = toy_config.bar_images(40, 2, rng)
    np.savez(path, x=x, y=y, x_test=x[:4], y_test=np.array([0, 1, 2, 1]))


@pytest.mark.parametrize("make_data, overrides, match", [
    (None, {"seeds": "-1"}, r"config.seeds must be distinct non-negative integers"),
    (None, {"train": {**toy_config.get_config().train.to_dict(), "threshold": 2.0}},
     r"TrainConfig.threshold is a confidence in \[0, 1\]"),
    (None, {"initial_labels": 1000}, r"config.initial_labels \(1000\) \+ config.rounds"),
    (None, {"initial_labels": 6}, r"config.initial_labels=6: .*multiple of num_classes"),
    (None, {"strategy_options": {"passive": {"sede": 1}}},
     r"Strategy 'passive' does not take the options \['sede'\]"),
    (_damaged_npz, {}, r"is not an .npz archive \(not a zip file"),
    (_huge_shape_npz, {}, r"array 'x' declares shape \(10000000, 28, 28, 100000\)"),
    (_deflate_bomb_npz, {}, r"array 'x' declares shape \(10, 28, 28\) .* holds 0.195 GiB"),
    (_unseen_test_class_npz, {}, r"y_test \(the test split\) holds class\(es\) \[2\]"),
], ids=["seeds", "threshold", "initial_labels_budget", "initial_labels_balance",
        "strategy_option", "damaged_npz", "huge_shape_npz", "deflate_bomb", "unseen_test_class"])
def test_refused_before_any_write(finished, tmp_path, make_data, overrides, match):
    dataset = finished[0]
    if make_data is not None:
        dataset = tmp_path / "bad.npz"
        make_data(dataset)
    workdir = tmp_path / "new"
    message = _refuses(_config(dataset, **overrides), workdir, match)
    assert "allow_pickle" not in message          # never advise unsafe loading
    assert not workdir.exists(), "a refused run leaves no empty workdir behind"


@pytest.mark.parametrize("workdir_kind, match", [
    ("empty", r"--workdir is empty \(an unset shell variable\?\)"),
    ("file", r"is a file, not a directory"),
])
def test_unusable_workdirs(finished, tmp_path, monkeypatch, workdir_kind, match):
    monkeypatch.chdir(tmp_path)
    workdir = "" if workdir_kind == "empty" else tmp_path / "a_file"
    if workdir_kind == "file":
        workdir.write_text("x")
    _refuses(_config(finished[0]), workdir, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if workdir_kind == "empty"
                                                          else ["a_file"])


def _read_only(monkeypatch):
    """File creation fails as on a read-only mount (root would ignore chmod)."""
    def refuse(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", refuse)


def test_a_read_only_workdir_fails_before_training(finished, tmp_path, monkeypatch):
    trainings = _count_trainings(monkeypatch)
    (tmp_path / "ro").mkdir()
    _read_only(monkeypatch)
    _refuses(_config(finished[0]), tmp_path / "ro", r"ro is not writable \(Read-only file system\)")
    assert trainings == []


def test_a_finished_read_only_workdir_returns_its_records(copy, monkeypatch):
    dataset, run = copy
    before = _snapshot(run)
    _read_only(monkeypatch)
    got = loop.run(_config(dataset), run, progress=False)
    assert len(got) == 2 and _snapshot(run) == before


# --------------------------------------------------------------------------- #
# Resuming: nothing that parses is lost, nothing of other data is mixed in.
# --------------------------------------------------------------------------- #

def test_a_last_record_without_newline_is_kept_not_recomputed(copy, monkeypatch):
    dataset, run = copy
    log = run / "results.jsonl"
    log.write_bytes(log.read_bytes().rstrip(b"\n"))
    before = _snapshot(run)
    trainings = _count_trainings(monkeypatch)
    got = loop.run(_config(dataset), run, progress=False)
    assert trainings == [] and len(got) == 2
    assert _snapshot(run)["results.jsonl"] == before["results.jsonl"]


def test_a_garbage_line_is_named_by_file_and_line(copy):
    dataset, run = copy
    log = run / "results.jsonl"
    first, second = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(first + b"not json\n" + second)
    before = _snapshot(run)
    _refuses(_config(dataset), run, r"results.jsonl:2 is not a JSON object")
    assert _snapshot(run) == before


def test_a_config_change_names_the_fields(copy):
    dataset, run = copy
    before = _snapshot(run)
    _refuses(_config(dataset, train_steps=7), run,
             r"different config: train_steps: 6 -> 7\. Use a new --workdir")
    assert _snapshot(run) == before


def test_replaced_data_under_the_same_path_is_refused(copy):
    dataset, run = copy
    _write_dataset(dataset, seed=1)                   # other images, same file name
    before = _snapshot(run)
    _refuses(_config(dataset), run, r"holds records of other data: .* content fingerprint")
    assert _snapshot(run) == before


def test_a_checkpoint_of_other_data_is_not_reused(copy, monkeypatch):
    """Killed after the round-0 checkpoint but before any record; then the data changes."""
    dataset, run = copy
    (run / "results.jsonl").unlink()
    _write_dataset(dataset, seed=1)
    trainings = _count_trainings(monkeypatch)
    got = loop.run(_config(dataset), run, progress=False)
    assert len(trainings) == 2 and len(got) == 2      # round 0 retrained, then round 1
    meta = json.loads((run / "checkpoints" / "seed0_round0.json").read_text())
    assert meta["dataset_fingerprint"] == got[0].dataset_fingerprint


def test_a_truncated_checkpoint_is_named(copy):
    dataset, run = copy
    (run / "results.jsonl").unlink()
    weights = run / "checkpoints" / "seed0_round0.msgpack"
    weights.write_bytes(weights.read_bytes()[:100])
    before = _snapshot(run)
    _refuses(_config(dataset), run, r"seed0_round0.msgpack is damaged or truncated .* delete it")
    assert _snapshot(run) == before


def test_a_second_process_on_the_workdir_fails_at_once(copy, monkeypatch):
    dataset, run = copy
    trainings = _count_trainings(monkeypatch)
    (run / "results.jsonl").unlink()
    with storage.WorkdirLock(run):      # another process would hold it the same way
        _refuses(_config(dataset), run, r"is in use by pid \d+; wait for it to finish")
    assert trainings == [] and not (run / "results.jsonl").exists()


# --------------------------------------------------------------------------- #
# Human labels and reports.
# --------------------------------------------------------------------------- #

def _human_workdir(dataset, workdir):
    """Query 0 exported, its labels imported from a CSV saved without a final newline."""
    config = _config(dataset, initial_labels=4)
    with pytest.raises(labelling.LabelsNeeded) as stop:
        loop.run(config, workdir, progress=False, labels="human")
    csv_path = stop.value.export.csv
    y = np.load(dataset)["y"]
    lines = csv_path.read_text().splitlines()
    header = lines[0].split(",")
    id_col, label_col = header.index("id"), header.index("label")
    filled = [lines[0]]
    for line in lines[1:]:
        cells = line.split(",")
        cells[label_col] = str(y[int(cells[id_col])])
        filled.append(",".join(cells))
    csv_path.write_text("\n".join(filled) + "\n")
    labelling.import_labels(workdir, csv_path)
    return config


def test_a_label_store_saved_without_final_newline_keeps_every_label(finished, tmp_path):
    dataset = finished[0]
    workdir = tmp_path / "human"
    config = _human_workdir(dataset, workdir)
    store = workdir / labelling.LABELS_FILE
    store.write_bytes(store.read_bytes().rstrip(b"\n"))     # an editor's save
    with pytest.raises(labelling.LabelsNeeded) as stop:      # trains round 0, asks query 1
        loop.run(config, workdir, progress=False, labels="human")
    assert stop.value.export.query == 1
    assert len(labelling.read_store(workdir)) == 1 and store.read_bytes().count(b"\n") == 0


def test_a_corrupt_pending_query_is_named(finished, tmp_path):
    workdir = tmp_path / "human"
    config = _config(finished[0], initial_labels=4)
    with pytest.raises(labelling.LabelsNeeded):
        loop.run(config, workdir, progress=False, labels="human")
    pending = workdir / "queries" / "pending.json"
    pending.write_text("{not json")
    with pytest.raises(ValueError, match=r"pending.json is damaged .* delete it and run "
                                         r"experiments/label.py again"):
        labelling.read_pending(workdir)


def test_report_of_a_human_labelled_run_without_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x, _ = toy_config.bar_images(80, 4, rng)
    unlabelled = tmp_path / "pool.npz"
    np.savez(unlabelled, x=x, class_names=np.array(["a", "b", "c", "d"]))  # no labels, no test
    workdir = tmp_path / "human"
    config = _config(unlabelled, initial_labels=4, rounds=0)
    with pytest.raises(labelling.LabelsNeeded) as stop:
        loop.run(config, workdir, progress=False, labels="human")
    csv_path = stop.value.export.csv
    lines = csv_path.read_text().splitlines()
    label_col = lines[0].split(",").index("label")
    rows = [lines[0]] + [",".join(c if i != label_col else str(j % 4)
                                  for i, c in enumerate(line.split(",")))
                         for j, line in enumerate(lines[1:])]
    csv_path.write_text("\n".join(rows) + "\n")
    labelling.import_labels(workdir, csv_path)
    got = loop.run(config, workdir, progress=False, labels="human")
    assert got[0].test_accuracy is None
    written = report.write_report([workdir], tmp_path / "report")   # no crash, no refusal
    assert (tmp_path / "report" / "report.md") in written
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match=r"--out .*a_file is a file; give a directory"):
        report.write_report([workdir], tmp_path / "a_file")


# --------------------------------------------------------------------------- #
# The command line prints one line, not a traceback.
# --------------------------------------------------------------------------- #

def test_assl_command_prints_one_error_line(finished, tmp_path):
    command = [sys.executable, str(ROOT / "experiments" / "assl.py"),
               f"--config={ROOT / 'tests' / 'toy_config.py'}", f"--workdir={tmp_path / 'w'}",
               f"--config.dataset=npz:{finished[0]}", "--config.seeds=-1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "error: config.seeds must be distinct non-negative integers")


def test_fashion_mnist_configs_carry_the_documented_fields():
    sys.path.insert(0, str(ROOT / "experiments"))
    from configs import fmnist_assl, fmnist_long, fmnist_quick

    for module in (fmnist_assl, fmnist_long, fmnist_quick):
        config = module.get_config()
        config.lock()
        config.model_dtype = "float32"          # settable as --config.model_dtype=...
        config.initial_trainings = 3
        assert config_lib.RunSettings.from_config(config).initial_trainings == 3
