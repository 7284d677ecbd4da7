"""Who answers the loop's queries: the dataset's true labels, or a person.

The ASSL loop (`npc_jax.loop`) asks a *labeller* for the labels of the pool
indices it has revealed. Two labellers share one interface:

* `TrueLabels(y_train)`: the oracle of experiments; every label is known.
* `HumanLabels(workdir)`: the labels a person gave, read from the workdir's
  append-only store; every other label is unknown (-1).

In human mode the loop runs until it needs labels the store lacks, then
`export_query` writes the query to ``workdir/queries/``, a CSV to fill in
and a PNG contact sheet of its images, and the loop stops with `LabelsNeeded`.
`import_labels` checks a filled CSV against the pending query and appends its
labels to the store in one fsync'd line; re-running the loop then trains on
every label given so far. Example (what ``experiments/label.py`` does)::

  try:
      loop.run(config, workdir, labels="human")   # finished: all rounds labelled
  except labelling.LabelsNeeded as stop:
      print(stop)        # the CSV and PNG to look at
  # ... the person fills workdir/queries/query_000.csv ...
  labelling.import_labels(workdir, "workdir/queries/query_000.csv")
  loop.run(config, workdir, labels="human")       # continues where it stopped

Files in a human-labelled workdir:

* ``human_labels.jsonl``: one line per import ``{"query", "indices", "labels",
  "csv", "csv_sha256", "imported_at"}``; only ever appended to, one whole
  fsync'd line per import, so an import is all or nothing and a killed
  process loses nothing already stored.
* ``queries/query_KKK.csv`` / ``.png``: the K-th query (K = imports so far).
* ``queries/pending.json``: the last export; it is pending until its query
  number appears in the store.

Nothing in human mode reads the pool's true labels: `load_for_labelling`
replaces them with -1 before the loop sees the dataset.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import hashlib
import io
import json
import math
import os
import re
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from npc_jax import storage
from npc_jax.data import DataError, Dataset, load_dataset, validate_arrays

__all__ = [
    "LABELS_FILE",
    "Export",
    "HumanLabels",
    "LabelRequest",
    "Labeller",
    "LabelsNeeded",
    "SheetLayout",
    "TrueLabels",
    "class_names",
    "contact_sheet",
    "export_query",
    "import_labels",
    "is_human_workdir",
    "load_for_labelling",
    "read_pending",
    "read_store",
    "sheet_layout",
]

LABELS_FILE = storage.HUMAN_LABELS_FILE
QUERIES_DIR = "queries"
PENDING_FILE = "pending.json"
_LOCK_FILE = ".labelling.lock"

# The Fashion-MNIST label names, in class-id order (the dataset's documentation).
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


# --------------------------------------------------------------------------- #
# Labellers
# --------------------------------------------------------------------------- #


class Labeller(Protocol):
    """Where the loop's labels come from.

    Attributes:
      source: ``"oracle"`` or ``"human"`` (recorded in human-mode records).
      labels: ``(N,)`` int32, the label of every pool index known now, -1 where
        unknown. The loop reads it only at revealed indices.
      diagnostic_labels: ``(N,)`` int32 true labels for training diagnostics
        (accuracy of accepted pseudo-labels), or None when there are none.
    """

    source: str
    labels: np.ndarray
    diagnostic_labels: np.ndarray | None


@dataclasses.dataclass(frozen=True, eq=False)
class TrueLabels:
    """The oracle: the dataset's own labels, all known from the start.

    Attributes:
      labels: ``(N,)`` int32 true labels of the pool (``Dataset.y_train``).
      num_classes: C.
    """

    labels: np.ndarray
    num_classes: int
    source = "oracle"

    @property
    def diagnostic_labels(self) -> np.ndarray:
        return self.labels


class HumanLabels:
    """The labels a person gave so far, from ``workdir/human_labels.jsonl``.

    Args:
      workdir: the run's directory.
      num_samples: pool size N.
      num_classes: C.
    """

    source = "human"
    diagnostic_labels = None  # a person's pool has no true labels to compare with

    def __init__(self, workdir: str | os.PathLike, num_samples: int, num_classes: int):
        self.workdir = Path(workdir)
        self.num_samples = int(num_samples)
        self.num_classes = int(num_classes)
        labels = np.full(self.num_samples, -1, np.int32)
        for entry in read_store(self.workdir):
            indices = np.asarray(entry["indices"], np.int64)
            given = np.asarray(entry["labels"], np.int64)
            bad = (indices < 0) | (indices >= self.num_samples)
            if bad.any() or given.min(initial=0) < 0 or given.max(initial=0) >= self.num_classes:
                raise DataError(
                    f"{self.workdir / LABELS_FILE} (query {entry['query']}) holds ids or labels "
                    f"outside a pool of {self.num_samples} samples and {self.num_classes} "
                    "classes: the workdir belongs to another dataset; use the original config "
                    "or a new --workdir.")
            labels[indices] = given
        self.labels = labels


# --------------------------------------------------------------------------- #
# Datasets with hidden pool labels
# --------------------------------------------------------------------------- #


def _npz_path(name: str) -> Path | None:
    return Path(name[len("npz:"):]).expanduser() if name.startswith("npz:") else None


def _check_class_names(names, num_classes: int | None, *, source: str) -> tuple[str, ...]:
    names = tuple(str(n).strip() for n in np.asarray(names).reshape(-1).tolist())
    if num_classes is not None and len(names) != num_classes:
        raise DataError(f"{source}: {len(names)} class names for {num_classes} classes; give "
                        "one name per class id, in id order.")
    folded = [n.casefold() for n in names]
    if any(not n for n in names) or len(set(folded)) != len(folded):
        raise DataError(f"{source}: class names must be non-empty and distinct (ignoring case), "
                        f"got {list(names)}.")
    return names


def class_names(name: str, num_classes: int, *, data_dir=None) -> tuple[str, ...] | None:
    """The class names of dataset `name` in id order, or None where unknown.

    Fashion-MNIST: its documented names; ``npz:PATH``: the optional array
    ``class_names`` (C,) str; tfds: the label feature's names when tfds knows them.
    """
    if name.strip() in ("fashion_mnist", "fashion-mnist"):
        return FASHION_MNIST_CLASSES
    path = _npz_path(name.strip())
    if path is not None:
        with np.load(path, allow_pickle=False) as archive:
            if "class_names" not in archive.files:
                return None
            return _check_class_names(archive["class_names"], num_classes, source=str(path))
    try:  # Best effort: a tfds builder that cannot tell just leaves ids.
        from npc_jax.data import import_tfds
        tfds = import_tfds()
        tfds_name = name[len("tfds:"):] if name.startswith("tfds:") else name
        info = tfds.builder(tfds_name, data_dir=data_dir or None).info
        names = info.features[info.supervised_keys[1]].names
        return _check_class_names(names, num_classes, source=name)
    except Exception:  # noqa: BLE001 - any failure means "no names", never a failed run
        return None


def _load_unlabelled_npz(name: str, path: Path) -> tuple[Dataset, tuple[str, ...] | None]:
    """An ``.npz`` of images without ``y``: ``x``, ``class_names`` or ``num_classes``,
    optional labelled ``x_test`` / ``y_test``."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    if "x" not in arrays:
        raise DataError(f"{path} lacks the images x (found {sorted(arrays)}); save them with "
                        "np.savez(path, x=images, class_names=np.array(['cat', 'dog', ...])).")
    names = None
    if "class_names" in arrays:
        names = _check_class_names(arrays["class_names"], None, source=str(path))
    num_classes = int(arrays["num_classes"]) if "num_classes" in arrays else None
    if names is None and num_classes is None:
        raise DataError(f"{path} has images x but no labels y, so it must say what the classes "
                        "are: add class_names (C,) str, e.g. np.savez(path, x=images, "
                        "class_names=np.array(['cat', 'dog'])), or num_classes.")
    if names is not None and num_classes not in (None, len(names)):
        raise DataError(f"{path}: num_classes={num_classes} but {len(names)} class_names; "
                        "make them agree (or drop num_classes).")
    num_classes = len(names) if names is not None else num_classes
    if num_classes < 1:
        raise DataError(f"{path}: num_classes must be >= 1, got {num_classes}.")
    x, _ = validate_arrays(arrays["x"], np.zeros(len(arrays["x"]), np.int32), name="x")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path} has only one of x_test / y_test; save both, or neither.")
    if "x_test" in arrays:
        x_test, y_test = validate_arrays(arrays["x_test"], arrays["y_test"],
                                         num_classes=num_classes, name="x_test")
        test_split = "given"
    else:  # no labelled images anywhere: accuracy cannot be measured
        x_test, y_test = np.zeros((0, *x.shape[1:]), x.dtype), np.zeros((0,), np.int32)
        test_split = "none"
    dataset = Dataset(name, x, np.full(len(x), -1, np.int32), x_test, y_test, num_classes,
                      {"source": str(path), "test_split": test_split})
    return dataset, names


def load_for_labelling(name: str, *, data_dir=None) -> tuple[Dataset, tuple[str, ...] | None]:
    """The dataset of a human-labelled run, with its pool labels hidden.

    Besides every `load_dataset` source, accepts an ``npz:PATH`` without ``y``
    (real unlabelled data): ``x`` (N,H,W[,C]), ``class_names`` (C,) str (or
    ``num_classes``), optionally a labelled ``x_test`` / ``y_test``.

    Returns:
      ``(dataset, class_names)``: `dataset` with ``y_train`` all -1 (so no code
      path can use the pool's true labels by mistake) and its test split kept for
      evaluation (``notes["test_split"]``: "given", "held_out" or "none", the
      latter with 0 test images); `class_names` in id order, or None.
    """
    path = _npz_path(name.strip()) if isinstance(name, str) else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as archive:
                unlabelled = "y" not in archive.files
        except Exception:  # noqa: BLE001 - load_dataset below names the problem
            unlabelled = False
        if unlabelled:
            return _load_unlabelled_npz(name, path)
    dataset = load_dataset(name, data_dir=data_dir)
    names = class_names(name, dataset.num_classes, data_dir=data_dir)
    hidden = dataclasses.replace(dataset, y_train=np.full(dataset.num_train, -1, np.int32),
                                 notes={**dataset.notes, "pool_labels": "hidden"})
    return hidden, names


# --------------------------------------------------------------------------- #
# The store and the pending query
# --------------------------------------------------------------------------- #


def read_store(workdir: str | os.PathLike) -> list[dict]:
    """Every import so far, oldest first (a torn last line is dropped)."""
    return storage.read_jsonl(Path(workdir) / LABELS_FILE)


def read_pending(workdir: str | os.PathLike) -> dict | None:
    """The pending query of `workdir` (`export_query`'s record), or None if none.

    A query stops being pending once its labels are imported.
    """
    path = Path(workdir) / QUERIES_DIR / PENDING_FILE
    if not path.exists():
        return None
    try:
        pending = json.loads(path.read_text())
        pending["query"]
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError) as error:
        raise DataError(f"{path} is damaged ({type(error).__name__}: {error}); delete it and "
                        "run experiments/label.py again to re-export the pending query "
                        "(imported labels are kept).") from None
    if any(entry["query"] == pending["query"] for entry in read_store(workdir)):
        return None
    return pending


def is_human_workdir(workdir: str | os.PathLike) -> bool:
    """Whether `workdir` was started in human mode (it has labels or a query)."""
    workdir = Path(workdir)
    return (workdir / LABELS_FILE).exists() or (workdir / QUERIES_DIR / PENDING_FILE).exists()


@contextlib.contextmanager
def _locked(workdir: Path):
    """Serialises exports and imports of one workdir (two terminals, one person)."""
    import fcntl  # POSIX only; imported here so the module imports everywhere

    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / _LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- #
# Export: CSV + contact sheet
# --------------------------------------------------------------------------- #


class LabelRequest(NamedTuple):
    """Labels the loop needs and the labeller lacks.

    indices: ``(q,)`` int64 pool indices, in the strategy's pick order.
    ranks: ``(q,)`` int64, 1 = picked first within its round's query.
    strategy, seed: the run that needs them.
    round: the round that will train on them.
    what: a phrase for people, e.g. "npc's query in round 0 (seed 0)".
    objective: the strategy's score of the whole batch (e.g. NPC's λ_min), or None.
    """

    indices: np.ndarray
    ranks: np.ndarray
    strategy: str
    seed: int
    round: int
    what: str
    objective: dict | None = None


class Export(NamedTuple):
    """An exported query: query number, files, and the classes a label may name."""

    query: int
    csv: Path
    png: Path
    indices: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...] | None
    what: str

    def classes_text(self) -> str:
        """e.g. ``0..9 or a name: 0 T-shirt/top, 1 Trouser, ...``."""
        ids = f"0..{self.num_classes - 1}"
        if not self.class_names:
            return f"a class id {ids}"
        listed = ", ".join(f"{i} {n}" for i, n in enumerate(self.class_names))
        return f"a class id {ids} or its name ({listed})"


class LabelsNeeded(Exception):
    """The human-mode loop stopped: it needs the labels of `export`.

    Not an error: the run is resumable; import the filled CSV and run again.
    """

    def __init__(self, export: Export):
        self.export = export
        super().__init__(self.instructions(
            f"npc_jax.labelling.import_labels({str(export.csv.parent.parent)!r}, "
            f"{str(export.csv)!r}), then run the loop again"))

    def instructions(self, import_command: str) -> str:
        e = self.export
        return (f"Waiting for labels: query {e.query} asks for {len(e.indices)} labels, "
                f"{e.what}.\n"
                f"  look at: {e.png}\n"
                f"  fill in: {e.csv}  (column `label`: {e.classes_text()})\n"
                f"then import the labels and continue:\n  {import_command}")


class SheetLayout(NamedTuple):
    """Geometry of a contact sheet, in pixels: tiles in row-major order."""

    columns: int
    rows: int
    scale: int          # integer upscaling of each image (nearest neighbour)
    tile_width: int     # scaled image width
    tile_height: int    # scaled image height + caption
    header: int         # title lines at the top
    footer: int         # class legend lines at the bottom
    width: int
    height: int


_PAD = 8            # between tiles and around the sheet
_CAPTION = 22       # caption band below each image
_LINE = 20          # one line of title or legend text
_FONT_SIZE = 14
_MAX_COLUMNS = 10
_MIN_TILE = 96      # images are upscaled to at least this (28 px -> 112 px)


def sheet_layout(num_images: int, image_shape: tuple[int, ...], *, title_lines: int = 1,
                 legend_lines: int = 0) -> SheetLayout:
    """The geometry `contact_sheet` uses for `num_images` images of ``(H, W, C)``."""
    height, width = int(image_shape[0]), int(image_shape[1])
    scale = max(1, math.ceil(_MIN_TILE / max(height, width)))
    columns = max(1, min(num_images, _MAX_COLUMNS))
    rows = max(1, math.ceil(num_images / columns))
    tile_w, tile_h = width * scale, height * scale + _CAPTION
    header = title_lines * _LINE + _PAD
    footer = legend_lines * _LINE + (_PAD if legend_lines else 0)
    return SheetLayout(columns, rows, scale, tile_w, tile_h, header, footer,
                       width=columns * (tile_w + _PAD) + _PAD,
                       height=header + rows * (tile_h + _PAD) + _PAD + footer)


def _wrap(pieces: list[str], separator: str, width: int, font) -> list[str]:
    """Greedy line wrap of `pieces` joined by `separator` to `width` pixels."""
    lines, line = [], ""
    for piece in pieces:
        candidate = f"{line}{separator}{piece}" if line else piece
        if line and font.getlength(candidate) > width - 2 * _PAD:
            lines.append(line)
            candidate = piece
        line = candidate
    return lines + [line] if line else lines


def contact_sheet(images: np.ndarray, captions: list[str], *, title: str = "",
                  class_names=None, num_classes: int | None = None):
    """A grid of the images, each captioned, as a PIL image.

    Args:
      images: ``(q, H, W, C)`` uint8, or float in [0, 1]; C = 1 grey, 3 RGB
        (otherwise the first channel is shown).
      captions: q strings, one under each image (e.g. ``"#3  id 4711"``).
      title: text above the grid (wrapped to the sheet's width).
      class_names: if given (or `num_classes`), a legend of the classes below.

    Returns:
      An RGB ``PIL.Image`` of size `sheet_layout` ``(width, height)``; up to 10
      tiles per row, images upscaled (nearest) to at least 96 px.
    """
    from PIL import Image, ImageDraw, ImageFont

    images = np.asarray(images)
    if images.ndim != 4 or len(images) != len(captions):
        raise ValueError(f"contact_sheet needs (q, H, W, C) images and q captions, got "
                         f"{images.shape} and {len(captions)}.")
    if images.dtype != np.uint8:
        images = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
    images = images if images.shape[-1] in (1, 3) else images[..., :1]
    font = ImageFont.load_default(size=_FONT_SIZE)
    width = sheet_layout(len(images), images.shape[1:]).width
    title = _wrap(title.split(), " ", width, font)
    if class_names:
        legend = _wrap([f"{i} = {n}" for i, n in enumerate(class_names)], "    ", width, font)
    elif num_classes:
        legend = [f"labels: class ids 0..{num_classes - 1}"]
    else:
        legend = []
    layout = sheet_layout(len(images), images.shape[1:], title_lines=len(title),
                          legend_lines=len(legend))
    sheet = Image.new("RGB", (layout.width, layout.height), "white")
    draw = ImageDraw.Draw(sheet)
    for j, line in enumerate(title):
        draw.text((_PAD, _PAD // 2 + j * _LINE), line, fill="black", font=font)
    for i, (image, caption) in enumerate(zip(images, captions)):
        row, column = divmod(i, layout.columns)
        left = _PAD + column * (layout.tile_width + _PAD)
        top = layout.header + _PAD + row * (layout.tile_height + _PAD)
        pixels = np.repeat(np.repeat(image, layout.scale, 0), layout.scale, 1)
        tile = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        sheet.paste(tile.convert("RGB"), (left, top))
        draw.rectangle([left - 1, top - 1, left + layout.tile_width, top + pixels.shape[0]],
                       outline=(160, 160, 160))
        draw.text((left + 2, top + pixels.shape[0] + 3), caption, fill="black", font=font)
    legend_top = layout.height - layout.footer
    for j, line in enumerate(legend):
        draw.text((_PAD, legend_top + j * _LINE), line, fill=(40, 40, 40), font=font)
    return sheet


def export_query(workdir: str | os.PathLike, request: LabelRequest, images: np.ndarray, *,
                 num_classes: int, class_names=None, dataset: str = "") -> Export:
    """Writes the query of `request` for a person to label; returns what was written.

    Files (in ``workdir/queries/``, K = number of imports so far):
      ``query_KKK.csv``: columns ``query, rank, id, label`` (label empty), one
        row per requested pool index in pick order;
      ``query_KKK.png``: the contact sheet, tile captions ``#rank  id``;
      ``pending.json``: the query (written last: it only names files that exist).
    Exporting the same query again (the loop re-run before an import) keeps a
    CSV the person may already be filling in.

    Args:
      request: the loop's `LabelRequest`.
      images: ``(N, H, W, C)`` the pool's images.
      num_classes, class_names: what a label may be.
      dataset: the dataset's name, recorded in pending.json.
    """
    workdir = Path(workdir)
    folder = workdir / QUERIES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    indices = [int(i) for i in request.indices]
    ranks = [int(r) for r in request.ranks]
    with _locked(workdir):
        query = len(read_store(workdir))
        stem = folder / f"query_{query:03d}"
        csv_path, png_path = stem.with_suffix(".csv"), stem.with_suffix(".png")
        previous = folder / PENDING_FILE
        previous = json.loads(previous.read_text()) if previous.exists() else None
        same_query = previous is not None and previous["query"] == query
        if csv_path.exists() and not (same_query and previous["indices"] == indices):
            # Only if a run reproduces differently (another machine): keep the old file.
            csv_path.rename(csv_path.with_name(
                f"{csv_path.stem}.replaced-{datetime.datetime.now():%Y%m%d-%H%M%S}.csv"))
        if not csv_path.exists():
            lines = [["query", "rank", "id", "label"]] + [
                [query, rank, index, ""] for rank, index in zip(ranks, indices)]
            text = _csv_text(lines)
            storage.write_atomically(csv_path, text.encode())
        title = (f"query {query}: {len(indices)} images, {request.what}; fill the label "
                 f"column of {csv_path.name}")
        sheet = contact_sheet(images[np.asarray(indices, np.int64)],
                              [f"#{r}  id {i}" for r, i in zip(ranks, indices)],
                              title=title, class_names=class_names, num_classes=num_classes)
        tmp_png = png_path.with_name(png_path.name + ".tmp.png")
        sheet.save(tmp_png)
        os.replace(tmp_png, png_path)
        pending = {"query": query, "indices": indices, "ranks": ranks,
                   "strategy": request.strategy, "seed": int(request.seed),
                   "round": int(request.round), "what": request.what,
                   "objective": request.objective, "dataset": dataset,
                   "num_classes": int(num_classes),
                   "class_names": list(class_names) if class_names else None,
                   "csv": str(csv_path), "png": str(png_path)}
        storage.write_atomically(folder / PENDING_FILE, json.dumps(pending, indent=1).encode())
    return Export(query, csv_path, png_path, tuple(indices), int(num_classes),
                  tuple(class_names) if class_names else None, request.what)


def _csv_text(rows) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


# --------------------------------------------------------------------------- #
# Import
# --------------------------------------------------------------------------- #

_INTEGER = re.compile(r"[+-]?\d+")


def _read_csv_rows(path: Path) -> list[dict]:
    """Rows of a CSV as {lower-case column: stripped text}; blank rows dropped.

    Accepts what spreadsheets write: a UTF-8 byte-order mark, and ``;`` or tab
    as the delimiter (detected from the header line).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"Labels file {path} does not exist; pass the CSV exported in "
                        "WORKDIR/queries/ after filling its label column.") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}); save it as CSV (UTF-8).") from None
    header = text.splitlines()[0] if text.strip() else ""
    delimiter = max(",;\t", key=header.count)
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    if not rows:
        raise DataError(f"{path} is empty; fill the exported CSV (columns query, rank, id, "
                        "label) rather than a new file.")
    columns = [c.strip().lower() for c in rows[0]]
    missing = [c for c in ("id", "label") if c not in columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing} (found {columns}); keep the header "
                        "of the exported CSV: query, rank, id, label.")
    out = []
    for cells in rows[1:]:
        if not any(cell.strip() for cell in cells):
            continue
        out.append({c: (cells[k].strip() if k < len(cells) else "")
                    for k, c in enumerate(columns)})
    return out


def _short(values, limit: int = 10) -> str:
    values = list(values)
    head = ", ".join(str(v) for v in values[:limit])
    return head + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _stale_problem(path: Path, workdir: Path, answered: int | None, pending: dict | None,
                   store: list[dict]) -> str:
    imported = {entry["query"]: entry for entry in store}
    now = (f"The pending query is {pending['query']}: {pending['csv']}" if pending else
           "No query is pending: run the labelling command without --labels to continue "
           "and export the next one")
    if answered in imported:
        entry = imported[answered]
        return (f"{path} answers query {answered}, which was already imported "
                f"({entry['imported_at']}, from {entry['csv']}) into "
                f"{workdir / LABELS_FILE}; nothing to import. {now}.")
    if answered is None:
        return f"{path} answers no pending query. {now}."
    return f"{path} answers query {answered}, which this workdir never exported. {now}."


def import_labels(workdir: str | os.PathLike, csv_path: str | os.PathLike) -> dict:
    """Checks a filled CSV against the pending query and stores its labels.

    The CSV needs columns ``id`` and ``label`` (the exported ``query`` column, if
    kept, must name the pending query); a label is an integer class id 0..C-1 or,
    where the dataset has class names, a name (case-insensitive). Every problem
    found is reported at once, and then nothing is stored: rows for ids the query
    did not ask for, unknown classes, values that are neither, duplicate rows
    for an id, queried ids without a row or with an empty label, and a CSV for a
    query that is not pending (already imported, or never exported).

    Args:
      workdir: the human-mode run's directory.
      csv_path: the filled CSV.

    Returns:
      The stored entry: ``{"query", "indices", "labels", "csv", "csv_sha256",
      "imported_at"}``, labels as int class ids in the order of the query.

    Raises:
      DataError: naming each problem and its fix; the store is then unchanged.
    """
    workdir, path = Path(workdir), Path(csv_path)
    rows = _read_csv_rows(path)
    with _locked(workdir):
        store = read_store(workdir)
        pending = read_pending(workdir)
        answered = {row.get("query", "") for row in rows} - {""}
        if len(answered) > 1:
            raise DataError(f"{path} mixes rows of queries {sorted(answered)}; import one "
                            "exported CSV at a time.")
        answered = answered.pop() if answered else None
        if answered is not None:
            if not _INTEGER.fullmatch(answered):
                raise DataError(f"{path}: query column holds {answered!r}, not a query number; "
                                "keep the exported query column unchanged (or delete it).")
            answered = int(answered)
        labelled_before = {int(i) for entry in store for i in entry["indices"]}
        ids_in_csv = [int(row["id"]) for row in rows if _INTEGER.fullmatch(row.get("id", ""))]
        if pending is None or (answered is not None and answered != pending["query"]) or (
                answered is None and ids_in_csv and set(ids_in_csv) <= labelled_before):
            if answered is None and ids_in_csv and set(ids_in_csv) <= labelled_before:
                answered = next(entry["query"] for entry in store
                                if set(ids_in_csv) & set(entry["indices"]))
            raise DataError(_stale_problem(path, workdir, answered, pending, store))
        entry = _check_rows(path, rows, pending, labelled_before)
        entry["csv_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        entry["imported_at"] = datetime.datetime.now().isoformat(timespec="seconds")
        storage.JsonlLog(workdir / LABELS_FILE).append(entry)
    return entry


def _parse_label(raw: str, num_classes: int, by_name: dict) -> int | str:
    """The class of a label cell, or "unknown" (a class id or name not in the
    query) or "garbage" (not a class at all)."""
    if _INTEGER.fullmatch(raw):
        value = int(raw)
        return value if 0 <= value < num_classes else "unknown"
    if raw.casefold() in by_name:
        return by_name[raw.casefold()]
    if by_name and not re.fullmatch(r"[+-]?[\d.eE+-]+", raw):
        return "unknown"
    return "garbage"


def _check_rows(path: Path, rows: list[dict], pending: dict, labelled_before: set) -> dict:
    """The store entry of valid `rows`, or DataError listing every problem."""
    num_classes = pending["num_classes"]
    names = pending.get("class_names") or []
    by_name = {name.casefold(): c for c, name in enumerate(names)}
    queried = pending["indices"]
    queried_set = set(queried)
    classes = f"a class id 0..{num_classes - 1}" + (
        f" or a class name ({', '.join(names)})" if names else "")

    bad_ids, unqueried, unknown, garbage, empty = [], [], [], [], []
    labels, counts = {}, {}
    for number, row in enumerate(rows, start=2):   # line 1 is the header
        raw_id, raw_label = row.get("id", ""), row.get("label", "")
        if not _INTEGER.fullmatch(raw_id):
            bad_ids.append(f"line {number}: {raw_id!r}")
            continue
        index = int(raw_id)
        counts[index] = counts.get(index, 0) + 1
        if index not in queried_set:
            unqueried.append(index)
            continue
        if not raw_label:
            empty.append(index)
            continue
        value = _parse_label(raw_label, num_classes, by_name)
        if value is None or value in ("unknown", "garbage"):
            (unknown if value == "unknown" else garbage).append(f"id {index}: {raw_label!r}")
            continue
        labels[index] = value

    problems = []
    if bad_ids:
        problems.append(f"rows whose id is not an integer pool index ({_short(bad_ids)}); "
                        "keep the exported id column unchanged.")
    if unqueried:
        before = sorted(set(unqueried) & labelled_before)
        note = (f" ({_short(before)} already labelled in an earlier import)" if before else "")
        problems.append(f"labels for ids that query {pending['query']} did not ask for: "
                        f"{_short(sorted(set(unqueried)))}{note}; delete those rows (the query "
                        f"asks for the ids in {pending['csv']}).")
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:
        problems.append(f"several rows for id(s) {_short(duplicates)}; keep exactly one row "
                        "per id.")
    if unknown:
        problems.append(f"unknown classes ({_short(unknown)}); a label is {classes}.")
    if garbage:
        problems.append(f"labels that are not a class ({_short(garbage)}); a label is "
                        f"{classes}.")
    unlabelled = set(empty) - set(labels)   # a duplicate row may still carry the label
    missing = [i for i in queried if i not in counts or i in unlabelled]
    if missing:
        problems.append(f"queried ids without a label: {_short(missing)} (no row, or an empty "
                        "label cell); fill the label of every row.")
    if problems:
        raise DataError(f"Cannot import {path}; nothing was stored. Fix the file and import it "
                        "again:\n  - " + "\n  - ".join(problems))
    return {"query": pending["query"], "indices": list(queried),
            "labels": [labels[i] for i in queried], "csv": str(path)}
