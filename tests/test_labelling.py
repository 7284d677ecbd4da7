"""Human-in-the-loop labelling: export → fill the CSV → import → continue, and each refusal."""
import csv
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npc_jax import labelling, loop, records, results, storage
from npc_jax.data import DataError

import toy_config

ROOT = Path(__file__).resolve().parents[1]
CLASS_NAMES = ("zero", "one", "two", "three")
# Fields that differ between an oracle run and a human run of the same labels.
# dataset_fingerprint: a human run's pool has no labels (hidden), an oracle's has
# them, so the two fingerprint different data by design.
VOLATILE = ("acquisition_seconds", "train_seconds", "train_metrics", "config_hash",
            "labels_from", "labeled_labels", "test_split", "dataset_fingerprint")


def _write_dataset(path, *, with_pool_labels=True, n_train=160, n_test=40, seed=0):
    """The toy images of test_loop.py (a bright bar whose row is the class), 4 named classes."""
    rng = np.random.default_rng(seed)
    x, y = toy_config.bar_images(n_train, len(CLASS_NAMES), rng)
    x_test, y_test = toy_config.bar_images(n_test, len(CLASS_NAMES), rng)
    arrays = dict(x=x, x_test=x_test, y_test=y_test, class_names=np.array(CLASS_NAMES))
    if with_pool_labels:
        arrays["y"] = y
    np.savez(path, **arrays)
    return path, y


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _write_dataset(tmp_path_factory.mktemp("data") / "toy.npz")


def _config(path, **overrides):
    config = toy_config.get_config()
    config.update({"dataset": f"npz:{path}", "strategies": "passive", **overrides})
    return config


def _next_export(config, workdir) -> labelling.Export:
    with pytest.raises(labelling.LabelsNeeded) as stop:
        loop.run(config, workdir, progress=False, labels="human")
    return stop.value.export


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path, rows, columns=("query", "rank", "id", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _fill(csv_path, label_of) -> list[str]:
    """Fills the exported CSV in place with ``label_of(id)``; returns the labels written."""
    rows = _read(csv_path)
    for row in rows:
        row["label"] = str(label_of(int(row["id"])))
    _write(csv_path, rows)
    return [row["label"] for row in rows]


def _stored(workdir) -> bytes:
    path = Path(workdir) / labelling.LABELS_FILE
    return path.read_bytes() if path.exists() else b""


def _strip(records):
    return [{k: v for k, v in r.to_json().items() if k not in VOLATILE} for r in records]


# --------------------------------------------------------------------------- #
# Round trips
# --------------------------------------------------------------------------- #


def test_true_labels_typed_in_by_hand_give_the_oracle_records(dataset, tmp_path):
    # Zero-shot (Q0 = 0): both modes start from the same (empty) labeled set, so
    # with the true labels typed in, the human run must reproduce the oracle's.
    path, y = dataset
    config = _config(path, strategies="margin", initial_labels=0, rounds=2)
    oracle = loop.run(config, tmp_path / "oracle", progress=False)
    workdir = tmp_path / "human"
    exports = []
    for query in range(2):
        export = _next_export(config, workdir)
        assert export.query == query and len(export.indices) == 4
        _fill(export.csv, lambda i: y[i])
        stored = labelling.import_labels(workdir, export.csv)
        assert stored["indices"] == list(export.indices)
        assert stored["labels"] == y[list(export.indices)].tolist()
        exports.append(export)
    human = loop.run(config, workdir, progress=False, labels="human")
    assert _strip(human) == _strip(oracle)
    by_round = {r.round: r for r in oracle}
    assert [tuple(e.indices) for e in exports] == [by_round[0].acquired_indices,
                                                    by_round[1].acquired_indices]
    for record in human:
        assert record.labels_from == "human" and record.test_split == "given"
        assert record.labeled_labels == tuple(y[list(record.labeled_indices)])
        assert "pseudo_label_accuracy" not in record.train_metrics
    assert labelling.read_pending(workdir) is None
    # Finished: running again trains nothing and asks for nothing.
    assert _strip(loop.run(config, workdir, progress=False, labels="human")) == _strip(human)


def test_records_carry_the_human_labels_never_the_true_ones(dataset, tmp_path):
    path, y = dataset
    config = _config(path, initial_labels=4, rounds=1)
    export = _next_export(config, tmp_path)
    # Q0: uniform at random from the seed (labels are unknown, so not class-balanced).
    expected = np.random.default_rng(0).choice(len(y), 4, replace=False).tolist()
    assert list(export.indices) == expected
    assert not (tmp_path / "results.jsonl").exists()   # nothing trained before Q0 is labelled

    # Deliberately wrong labels: the records must follow the person, not y_train.
    wrong = {i: (int(y[i]) + 1) % 4 for i in export.indices}
    rows = _read(export.csv)
    rows[0]["label"] = CLASS_NAMES[wrong[int(rows[0]["id"])]].upper()   # names, any case
    _write(export.csv, rows)
    # Running again before the import re-exports query 0 and keeps the half-filled CSV.
    again = _next_export(config, tmp_path)
    assert again.query == 0 and again.indices == export.indices
    assert _read(export.csv)[0]["label"] == rows[0]["label"]
    for row in rows[1:]:
        row["label"] = str(wrong[int(row["id"])])
    _write(export.csv, rows)
    labelling.import_labels(tmp_path, export.csv)

    second = _next_export(config, tmp_path)
    assert second.query == 1 and not set(second.indices) & set(export.indices)
    [record] = records.read_records([tmp_path / "results.jsonl"])
    given = [wrong[i] for i in record.labeled_indices]
    assert record.labeled_labels == tuple(given)
    assert record.class_counts == tuple(np.bincount(given, minlength=4))
    assert record.acquired_indices == tuple(second.indices)

    _fill(second.csv, lambda i: CLASS_NAMES[int(y[i])])
    labelling.import_labels(tmp_path, second.csv)
    run_records = loop.run(config, tmp_path, progress=False, labels="human")
    last = max(run_records, key=lambda r: r.round)
    assert last.num_labels == 8
    assert last.labeled_labels == tuple(given + y[list(second.indices)].tolist())
    assert [e["query"] for e in labelling.read_store(tmp_path)] == [0, 1]


def test_unlabelled_npz_runs_without_a_test_split(tmp_path):
    path, y = _write_dataset(tmp_path / "unlabelled.npz", with_pool_labels=False)
    data = np.load(path)
    np.savez(path, x=data["x"], class_names=data["class_names"])   # no y, no test split
    dataset, names = labelling.load_for_labelling(f"npz:{path}")
    assert names == CLASS_NAMES and (dataset.y_train == -1).all() and len(dataset.y_test) == 0
    config = _config(path, initial_labels=4, rounds=0)
    export = _next_export(config, tmp_path / "run")
    _fill(export.csv, lambda i: y[i])
    labelling.import_labels(tmp_path / "run", export.csv)
    [record] = loop.run(config, tmp_path / "run", progress=False, labels="human")
    assert record.test_accuracy is None and record.test_split is None
    assert not (tmp_path / "run" / "summary.md").exists()
    with pytest.raises(DataError, match="lacks key"):   # the oracle needs y
        loop.run(config, tmp_path / "oracle", progress=False)
    np.savez(path, x=data["x"])
    with pytest.raises(DataError, match="class_names"):
        labelling.load_for_labelling(f"npz:{path}")


def test_an_oracle_run_refuses_a_human_workdir(dataset, tmp_path):
    config = _config(dataset[0], initial_labels=4, rounds=0)
    _next_export(config, tmp_path)
    with pytest.raises(ValueError, match="human-labelled run"):
        loop.run(config, tmp_path, progress=False)
    with pytest.raises(ValueError, match="validation_size"):
        loop.run(_config(dataset[0], validation_size=8), tmp_path / "v", labels="human")


# --------------------------------------------------------------------------- #
# Refusals: each names the problem, and stores nothing
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def pending_workdir(dataset, tmp_path_factory):
    """A workdir whose query 0 (4 random ids, nothing trained yet) is pending."""
    workdir = tmp_path_factory.mktemp("pending")
    _next_export(_config(dataset[0], initial_labels=4, rounds=1), workdir)
    return workdir


@pytest.fixture
def workdir(pending_workdir, tmp_path):
    copy = tmp_path / "work"
    shutil.copytree(pending_workdir, copy)
    pending = labelling.read_pending(copy)
    pending["csv"] = str(copy / "queries" / "query_000.csv")
    storage.write_atomically(copy / "queries" / "pending.json", json.dumps(pending).encode())
    return copy


def _good_rows(workdir, y):
    rows = _read(workdir / "queries" / "query_000.csv")
    for row in rows:
        row["label"] = str(y[int(row["id"])])
    return rows


def _unqueried(rows):
    queried = {int(r["id"]) for r in rows}
    extra = next(i for i in range(1000) if i not in queried)
    return rows + [{**rows[0], "id": str(extra)}]


BAD_CSVS = {
    "unqueried id": (_unqueried, "did not ask for"),
    "unknown class id": (lambda rows: [{**rows[0], "label": "4"}] + rows[1:], "unknown classes"),
    "negative class": (lambda rows: [{**rows[0], "label": "-1"}] + rows[1:], "unknown classes"),
    "unknown class name": (lambda rows: [{**rows[0], "label": "shoe"}] + rows[1:],
                           "unknown classes"),
    "duplicate row": (lambda rows: rows + [rows[0]], "several rows"),
    "conflicting duplicate": (lambda rows: rows + [{**rows[0], "label": "3"}], "several rows"),
    "missing row": (lambda rows: rows[1:], "without a label"),
    "empty label": (lambda rows: [{**rows[0], "label": ""}] + rows[1:], "without a label"),
    "non-integer label": (lambda rows: [{**rows[0], "label": "2.5"}] + rows[1:],
                          "not a class"),
    "garbage id": (lambda rows: [{**rows[0], "id": "abc"}] + rows[1:],
                   "not an integer pool index"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_a_bad_csv_is_refused_and_changes_nothing(dataset, workdir, case):
    spoil, message = BAD_CSVS[case]
    bad = workdir / "bad.csv"
    _write(bad, spoil(_good_rows(workdir, dataset[1])))
    with pytest.raises(DataError, match=message) as refusal:
        labelling.import_labels(workdir, bad)
    assert "nothing was stored" in str(refusal.value)
    assert _stored(workdir) == b""
    assert labelling.read_pending(workdir)["query"] == 0
    good = workdir / "good.csv"   # the fixed file then imports
    _write(good, _good_rows(workdir, dataset[1]))
    assert labelling.import_labels(workdir, good)["query"] == 0


def test_every_problem_is_reported_at_once(dataset, workdir):
    rows = _good_rows(workdir, dataset[1])
    rows = _unqueried([{**rows[0], "label": "dog"}, {**rows[1], "label": "1.0"}] + rows[3:])
    _write(workdir / "bad.csv", rows)
    with pytest.raises(DataError) as refusal:
        labelling.import_labels(workdir, workdir / "bad.csv")
    for message in ("did not ask for", "unknown classes", "not a class", "without a label"):
        assert message in str(refusal.value)


def test_a_query_imported_once_is_stale(dataset, workdir):
    good = workdir / "queries" / "query_000.csv"
    _write(good, _good_rows(workdir, dataset[1]))
    labelling.import_labels(workdir, good)
    stored = _stored(workdir)
    with pytest.raises(DataError, match="already imported"):
        labelling.import_labels(workdir, good)
    # Without the query column the ids alone tell that it was imported.
    _write(workdir / "ids.csv", _good_rows(workdir, dataset[1]), columns=("id", "label"))
    with pytest.raises(DataError, match="already imported"):
        labelling.import_labels(workdir, workdir / "ids.csv")
    # A query number this workdir never exported.
    _write(workdir / "future.csv", [{**r, "query": "7"} for r in _good_rows(workdir, dataset[1])])
    with pytest.raises(DataError, match="never exported"):
        labelling.import_labels(workdir, workdir / "future.csv")
    assert _stored(workdir) == stored
    assert labelling.read_pending(workdir) is None


def test_spreadsheet_dialects_are_read(dataset, workdir):
    # Semicolons and a byte-order mark (spreadsheets in some locales), spaces, names.
    rows = _good_rows(workdir, dataset[1])
    lines = ["query;rank;id;label"] + [
        f"{r['query']};{r['rank']}; {r['id']} ; {CLASS_NAMES[int(r['label'])].title()}"
        for r in rows]
    (workdir / "excel.csv").write_text("\ufeff" + "\r\n".join(lines) + "\r\n\r\n")
    entry = labelling.import_labels(workdir, workdir / "excel.csv")
    assert entry["labels"] == [int(r["label"]) for r in rows]


def test_nothing_pending_is_refused(tmp_path):
    _write(tmp_path / "labels.csv", [{"query": "0", "rank": "1", "id": "3", "label": "1"}])
    with pytest.raises(DataError, match="No query is pending"):
        labelling.import_labels(tmp_path / "empty", tmp_path / "labels.csv")


# --------------------------------------------------------------------------- #
# Contact sheet and command line
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("count, shape, columns, rows", [
    (23, (28, 28, 1), 10, 3), (4, (28, 28, 1), 4, 1), (10, (32, 32, 3), 10, 1)])
def test_contact_sheet_has_one_tile_per_image(count, shape, columns, rows):
    rng = np.random.default_rng(0)
    images = rng.random((count, *shape)).astype(np.float32)   # floats in [0, 1] too
    sheet = labelling.contact_sheet(images, [f"id {i}" for i in range(count)], title="t")
    layout = labelling.sheet_layout(count, shape, title_lines=1)
    assert (layout.columns, layout.rows) == (columns, rows)
    tile = max(shape[:2]) * layout.scale
    assert tile >= 96
    assert sheet.size == (columns * (tile + 8) + 8,
                          layout.header + rows * (tile + 22 + 8) + 8) == (layout.width,
                                                                           layout.height)
    # Every tile shows its own image, upscaled by nearest neighbour, in order,
    # with its caption written below it.
    pixels = np.asarray(sheet)
    expected_tiles = np.round(images * 255).astype(np.uint8)
    for i, image in enumerate(expected_tiles):
        row, column = divmod(i, columns)
        left = 8 + column * (layout.tile_width + 8)
        top = layout.header + 8 + row * (layout.tile_height + 8)
        shown = pixels[top:top + tile, left:left + tile]
        upscaled = np.repeat(np.repeat(image, layout.scale, 0), layout.scale, 1)
        np.testing.assert_array_equal(shown, np.broadcast_to(upscaled, shown.shape))
        caption_band = pixels[top + tile + 2:top + tile + 22, left:left + tile]
        assert (caption_band.min(-1) < 100).sum() > 20, f"no caption under tile {i}"
    assert (pixels[:layout.header].min(-1) < 100).any(), "no title"


def test_contact_sheet_writes_the_class_legend():
    images = np.zeros((3, 28, 28, 1), np.uint8)
    plain = np.asarray(labelling.contact_sheet(images, ["a", "b", "c"]))
    named = labelling.contact_sheet(images, ["a", "b", "c"], class_names=["cat", "dog"])
    legend = np.asarray(named)[plain.shape[0]:]
    assert legend.shape[0] > 0 and (legend.min(-1) < 100).sum() > 20


def test_exported_sheet_and_csv(dataset, pending_workdir):
    pending = labelling.read_pending(pending_workdir)
    png = Image.open(pending_workdir / "queries" / "query_000.png")
    layout = labelling.sheet_layout(4, (28, 28, 1))
    assert png.size[0] == layout.width   # 4 tiles in one row
    assert layout.header + layout.tile_height < png.size[1] < layout.header + 2 * layout.tile_height
    rows = _read(pending_workdir / "queries" / "query_000.csv")
    assert [int(r["id"]) for r in rows] == pending["indices"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert {r["label"] for r in rows} == {""} and {r["query"] for r in rows} == {"0"}
    assert pending["class_names"] == list(CLASS_NAMES)


def test_command_line_round_trip(dataset, tmp_path):
    path, y = dataset
    workdir = tmp_path / "cli"
    command = [sys.executable, str(ROOT / "experiments" / "label.py"),
               f"--config={ROOT / 'tests' / 'toy_config.py'}", f"--workdir={workdir}",
               f"--config.dataset=npz:{path}", "--config.strategies=passive",
               "--config.rounds=0"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Waiting for labels: query 0 asks for 4 labels" in first.stdout
    printed = shlex.split(first.stdout.strip().splitlines()[-1])
    assert printed[0] == "python" and printed[-1].startswith("--labels=")
    csv_path = printed[-1][len("--labels="):]
    bad = subprocess.run(command + [f"--labels={csv_path}", "--import_only"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "without a label" in bad.stderr
    _fill(csv_path, lambda i: y[i])
    done = subprocess.run([sys.executable] + printed[1:], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Imported 4 labels (query 0)" in done.stdout and "All rounds" in done.stdout
