"""Datasets as arrays, and the `Pool` of which training indices are labeled.

Three sources end in the same `Dataset` record (DESIGN.md section 4):

* ``"fashion_mnist"``: the IDX files of Debian's ``dataset-fashion-mnist``
  (the embedded default; no TensorFlow needed);
* ``"npz:PATH"``: a user's own arrays;
* ``"npy:DIR"``: a user's own arrays as ``.npy`` files with a manifest
  (`save_npy_dataset`), memory-mapped: nothing is read until used, so each
  process of a multi-host run reads only its own rows (the pool in
  ``TrainConfig.pool_layout="sharded"`` blocks, its share of each pool pass);
* any other name: a tensorflow-datasets image-classification dataset
  (``cifar10``, ``cifar100``, ``svhn_cropped``, ``mnist``, ...). TensorFlow is
  imported only here, inside `load_dataset`, so the core imports without it.
  ``"tfds:NAME"`` forces tfds for a name that is otherwise routed elsewhere.

Every loader ends in `validate_arrays`, so all datasets obey one contract:
images ``(N, H, W, C)`` uint8 (or float32 in [0, 1]), labels ``(N,)`` int32 in
``[0, num_classes)``. Every bad input raises `DataError`, whose message names
the problem and the fix.

Example::

  data = load_dataset("fashion_mnist")        # x_train (60000, 28, 28, 1) uint8
  pool = Pool.initial(data.y_train, 10, seed=0)   # 1 label per class
  pool = pool.reveal([17, 4242])              # a new Pool; the old one is unchanged
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import gzip
import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "DataError",
    "Dataset",
    "Pool",
    "carve_validation",
    "initial_pool",
    "images_to_float",
    "import_tfds",
    "load_dataset",
    "read_idx",
    "save_npy_dataset",
    "validate_arrays",
    "write_npy_manifest",
]

FASHION_MNIST_ENV = "NPC_JAX_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
HELD_OUT_FRACTION = 0.1
NPY_MANIFEST = "manifest.json"
_NPY_ARRAYS = ("x", "y", "x_test", "y_test")   # file stems in an npy: folder
_HASH_CHUNK_BYTES = 64 << 20
# tfds split -> numpy streaming chunk (see `_tfds_split_to_numpy` for why not batch_size=-1).
_TFDS_CHUNK = 8192


class DataError(ValueError):
    """Bad input data or arguments; the message names the problem and the fix."""


# --------------------------------------------------------------------------- #
# Dataset record
# --------------------------------------------------------------------------- #


def _is_int(value) -> bool:
    """A Python or numpy integer, but not a bool (True would silently mean 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# eq=False: the generated __eq__ would compare arrays with `==` and fail.
@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labeled image-classification dataset held in memory.

    Attributes:
      name: what was passed to `load_dataset` (e.g. ``"fashion_mnist"``).
      x_train: ``(N, H, W, C)`` uint8, or float32 in [0, 1]; grey images have C = 1.
      y_train: ``(N,)`` int32 in ``[0, num_classes)``.
      x_test: ``(M, H, W, C)``, same dtype and image shape as `x_train`.
      y_test: ``(M,)`` int32 in ``[0, num_classes)``.
      num_classes: number of classes C.
      notes: provenance, e.g. ``{"source": ..., "test_split": "given" | "held_out",
        "held_out_fraction": 0.1, "held_out_seed": 0}``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    notes: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # Structural checks only (cheap); value checks live in `validate_arrays`.
        for x_key, y_key in (("x_train", "y_train"), ("x_test", "y_test")):
            x, y = getattr(self, x_key), getattr(self, y_key)
            if np.ndim(x) != 4:
                raise DataError(f"Dataset {self.name!r}: {x_key} must be 4-D (N, H, W, C), got "
                                f"shape {np.shape(x)}; build datasets with `validate_arrays`.")
            if np.ndim(y) != 1 or np.shape(y)[0] != np.shape(x)[0]:
                raise DataError(f"Dataset {self.name!r}: {y_key} must have shape "
                                f"({np.shape(x)[0]},) to match {x_key}, got {np.shape(y)}.")
        if tuple(np.shape(self.x_test)[1:]) != tuple(np.shape(self.x_train)[1:]):
            raise DataError(f"Dataset {self.name!r}: test images {np.shape(self.x_test)[1:]} and "
                            f"train images {np.shape(self.x_train)[1:]} differ in shape; "
                            "resize one split to match the other.")
        if not _is_int(self.num_classes) or self.num_classes < 1:
            raise DataError(f"Dataset {self.name!r}: num_classes must be a positive int, "
                            f"got {self.num_classes!r}.")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        """Number of training (pool) samples N."""
        return int(self.x_train.shape[0])

    def fingerprint(self) -> str:
        """A content hash of the four arrays (shapes, dtypes and bytes) and the
        class count: 16 hex digits, computed once (~0.1 s for Fashion-MNIST).

        It identifies the data itself, not its name: a file overwritten with
        other images under the same path gets another fingerprint.
        """
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            cached = _content_fingerprint(self.num_classes, (self.x_train, self.y_train,
                                                             self.x_test, self.y_test))
            object.__setattr__(self, "_fingerprint", cached)
        return cached

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, x_train={self.x_train.shape} {self.x_train.dtype}, "
                f"x_test={self.x_test.shape}, num_classes={self.num_classes}, notes={self.notes})")


def _content_fingerprint(num_classes: int, arrays) -> str:
    """`Dataset.fingerprint` of (x_train, y_train, x_test, y_test), read in chunks of
    rows (a memory map is streamed, never held whole)."""
    digest = hashlib.sha256(f"classes={num_classes}".encode())
    for array in arrays:
        digest.update(f"|{array.dtype.str}{array.shape}|".encode())
        row_bytes = max(1, array[:1].nbytes)
        step = max(1, _HASH_CHUNK_BYTES // row_bytes)
        for start in range(0, len(array), step):
            rows = np.ascontiguousarray(array[start:start + step])
            digest.update(rows.reshape(-1).view(np.uint8))
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- #
# Validation shared by every loader
# --------------------------------------------------------------------------- #


def images_to_float(x):
    """Images to float32 in [0, 1]: uint8 is divided by 255, floats pass through.

    Works on numpy arrays, jax arrays and jax tracers (it only uses ``.dtype``
    and ``.astype``), so it can sit inside a jitted step.

    Args:
      x: ``(..., H, W, C)`` uint8, or float already in [0, 1].

    Returns:
      The same shape, float32 (numpy in, numpy out; jax in, jax out).
    """
    if not hasattr(x, "dtype") or not hasattr(x, "astype"):
        x = np.asarray(x)
    dtype = np.dtype(x.dtype)
    if dtype == np.uint8:
        # A Python float is weakly typed (NumPy 2 / JAX), so the result stays float32.
        return x.astype("float32") / 255.0
    if dtype.kind == "f" or dtype.name == "bfloat16":
        return x if dtype == np.float32 else x.astype("float32")
    raise DataError(f"images_to_float expects uint8 images or floats in [0, 1], got dtype "
                    f"{dtype}; convert with x.astype(np.uint8) (values 0..255) first.")


def _label_name(name: str) -> str:
    """``"x"`` -> ``"y"``, ``"x_test"`` -> ``"y_test"``: messages name the label array."""
    return "y" + name[1:] if name.startswith("x") else f"labels of {name}"


def _validate_images(x, name: str) -> np.ndarray:
    """Images to ``(N, H, W, C)`` uint8 or float32 in [0, 1]; DataError otherwise."""
    x = np.asarray(x)
    if x.dtype == object:
        raise DataError(f"{name} is an object array (ragged images or Python objects); "
                        "stack the images into one numeric array of shape (N, H, W[, C]).")
    if x.ndim == 3:
        x = x[..., None]  # grey images: add the channel axis.
    if x.ndim != 4:
        raise DataError(f"{name} must have shape (N, H, W, C) or (N, H, W), got {x.shape} "
                        f"({x.ndim}-D); reshape the images to one of those layouts.")
    if x.shape[0] == 0:
        raise DataError(f"{name} holds no images (shape {x.shape}); pass at least one sample.")
    if min(x.shape[1:]) == 0:
        raise DataError(f"{name} has an empty image dimension (shape {x.shape}); "
                        "images need H, W, C >= 1.")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise DataError(f"{name} has dtype {x.dtype}; images must be uint8 (0..255) or float in "
                        f"[0, 1]: convert with x.astype(np.uint8) or x.astype(np.float32) / 255.")
    # min/max reductions propagate NaN and expose +-inf without an N-sized temporary.
    lo, hi = float(x.min()), float(x.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        num_nan = int(np.isnan(x).sum())
        num_inf = int(np.isinf(x).sum())
        raise DataError(f"{name} holds non-finite pixels ({num_nan} NaN, {num_inf} inf); "
                        "replace or drop those images (e.g. np.nan_to_num) before loading.")
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{name} is float with values in [{lo:g}, {hi:g}], outside [0, 1]; "
                        "rescale (e.g. x / 255) or pass uint8 images.")
    return x.astype(np.float32, copy=False)


def _validate_labels(y, *, num_samples: int | None, num_classes: int | None,
                     name: str) -> np.ndarray:
    """Labels to ``(N,)`` int32 in ``[0, num_classes)``; DataError otherwise."""
    y = np.asarray(y)
    if y.dtype == object:
        raise DataError(f"{name} is an object array; pass integer class ids 0..C-1 as an "
                        "int array of shape (N,).")
    if y.ndim != 1:
        raise DataError(f"{name} must be 1-D (N,), got shape {y.shape}; "
                        "flatten it with y.reshape(-1) if it holds one label per sample.")
    if num_samples is not None and y.shape[0] != num_samples:
        raise DataError(f"{name} has {y.shape[0]} labels but there are {num_samples} images; "
                        "pass exactly one label per image.")
    if y.dtype.kind == "f":
        # Integral floats (e.g. labels saved as float32) are accepted; NaN/inf never are.
        bad = y[~np.isfinite(y) | (np.round(y) != y)]
        if bad.size:
            raise DataError(f"{name} holds labels that are not integers (e.g. {bad[:3].tolist()}); "
                            "labels must be integer class ids 0..C-1.")
    elif y.dtype.kind not in "iu":
        raise DataError(f"{name} has dtype {y.dtype}; labels must be integer class ids 0..C-1 "
                        "(convert with y.astype(np.int64)).")
    if y.size:
        lo, hi = y.min(), y.max()
        if lo < 0:
            raise DataError(f"{name} holds negative labels (min {lo:g}); labels must be class ids "
                            "0..C-1: remap them, e.g. with np.unique(y, return_inverse=True).")
        if num_classes is not None and hi >= num_classes:
            raise DataError(f"{name} holds label {hi:g} but num_classes is {num_classes}; labels "
                            f"must lie in 0..{num_classes - 1} (or raise num_classes).")
        if hi > np.iinfo(np.int32).max:
            raise DataError(f"{name} holds label {hi:g}, too large for int32; remap the labels "
                            "to 0..C-1 with np.unique(y, return_inverse=True).")
    return y.astype(np.int32)


def validate_arrays(x, y, *, num_classes: int | None = None,
                    name: str = "x") -> tuple[np.ndarray, np.ndarray]:
    """Checks images and labels and brings them to the `Dataset` layout.

    Checks: numeric (not object) arrays; x 3-D or 4-D with at least one image;
    x uint8, or float that is finite and within [0, 1]; y 1-D, one label per
    image, integer-valued (integral floats are accepted), non-negative, and
    below `num_classes` when given.

    Args:
      x: ``(N, H, W, C)`` or ``(N, H, W)`` images, uint8 or float in [0, 1].
      y: ``(N,)`` integer class ids.
      num_classes: if given, labels must be ``< num_classes``.
      name: name of the image array in error messages (labels are named after
        it: ``"x_test"`` -> ``"y_test"``).

    Returns:
      ``(x4d, y)``: x4d ``(N, H, W, C)`` uint8 (unchanged) or float32; y
      ``(N,)`` int32.

    Raises:
      DataError: naming the first problem found and its fix.
    """
    x = _validate_images(x, name)
    y = _validate_labels(y, num_samples=x.shape[0], num_classes=num_classes,
                         name=_label_name(name))
    return x, y


def _require_all_classes(y: np.ndarray, num_classes: int, *, source: str) -> None:
    counts = np.bincount(y, minlength=num_classes)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise DataError(f"{source}: class(es) {missing[:10].tolist()} have no training example "
                        f"(labels run 0..{num_classes - 1}); relabel to contiguous ids 0..C-1 "
                        "(np.unique(y, return_inverse=True)) or add examples of those classes.")


def _held_out_split(y: np.ndarray, num_classes: int, *, fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified train/test split of indices ``0..N-1``, deterministic per seed.

    Each class gives ``round(fraction * n_c)`` samples to the test split, but
    always keeps one for training (so every class stays learnable).

    Returns:
      ``(train_idx, test_idx)``: sorted int64 arrays, disjoint, covering ``0..N-1``.
    """
    rng = np.random.default_rng(seed)
    by_class = np.argsort(y, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(y, minlength=num_classes))])
    test_parts = []
    for c in range(num_classes):  # fixed class order: the split is bit-for-bit per seed.
        members = by_class[bounds[c]:bounds[c + 1]]
        num_test = min(int(np.floor(fraction * members.size + 0.5)), max(members.size - 1, 0))
        test_parts.append(rng.permutation(members)[:num_test])
    test_idx = np.sort(np.concatenate(test_parts)).astype(np.int64)
    if test_idx.size == 0:
        raise DataError(f"Too few samples ({y.size}) to hold out a {fraction:.0%} test split; "
                        "provide x_test and y_test explicitly, or more training samples.")
    is_test = np.zeros(y.size, bool)
    is_test[test_idx] = True
    return np.flatnonzero(~is_test).astype(np.int64), test_idx


def _held_out_dataset(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, *,
                      seed: int, notes: dict) -> Dataset:
    train_idx, test_idx = _held_out_split(y, num_classes, fraction=HELD_OUT_FRACTION, seed=seed)
    notes = {**notes, "test_split": "held_out", "held_out_fraction": HELD_OUT_FRACTION,
             "held_out_seed": int(seed)}
    return Dataset(name, x[train_idx], y[train_idx], x[test_idx], y[test_idx],
                   num_classes, notes)


def carve_validation(dataset: Dataset, size: int, *, seed: int = 0
                     ) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """Takes a stratified validation split of about `size` samples out of the pool.

    Used for tuning: the validation samples leave the pool altogether (no
    strategy can label them, no learner trains on them), and the test split
    stays untouched.

    Returns:
      (dataset with the reduced train split, x_val (V, H, W, C), y_val (V,)).
    """
    if not 0 < size < dataset.num_train:
        raise DataError(f"validation_size must be in (0, {dataset.num_train}), got {size}.")
    keep, held = _held_out_split(dataset.y_train, dataset.num_classes,
                                 fraction=size / dataset.num_train, seed=seed)
    notes = {**dataset.notes, "validation_size": int(held.size), "validation_seed": int(seed)}
    reduced = dataclasses.replace(dataset, x_train=dataset.x_train[keep],
                                  y_train=dataset.y_train[keep], notes=notes)
    return reduced, dataset.x_train[held], dataset.y_train[held]


# --------------------------------------------------------------------------- #
# IDX files (Fashion-MNIST)
# --------------------------------------------------------------------------- #

# IDX type codes (third magic byte) -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped if the file starts with the gzip magic (not by suffix)."""
    try:
        with open(path, "rb") as f:
            is_gzip = f.read(2) == b"\x1f\x8b"
        if not is_gzip:
            return path.read_bytes()
        with gzip.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        raise DataError(f"IDX file {path} does not exist; check the path.") from err
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataError(f"IDX file {path} is a damaged gzip file ({err}); "
                        "download or reinstall it.") from err


def read_idx(path: str | os.PathLike, *, expected_ndim: int | None = None) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzipped or plain.

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then
    one big-endian uint32 per dimension, then the data, big-endian, row-major.
    Images are ``0x00000803`` (uint8, 3-D), labels ``0x00000801`` (uint8, 1-D).

    Args:
      path: the file; gzip is detected from its first bytes.
      expected_ndim: if given, the header must declare this many dimensions
        (3 for images, 1 for labels).

    Returns:
      An array with the header's shape and the type code's dtype, in native
      byte order (uint8 for Fashion-MNIST: ``(N, 28, 28)`` images, ``(N,)`` labels).

    Raises:
      DataError: missing file, bad gzip, bad magic, unexpected number of
        dimensions, or a data size that disagrees with the header.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"IDX file {path} is {len(raw)} bytes, too short for the 4-byte magic; "
                        "the file is truncated: download it again.")
    zero0, zero1, type_code, ndim = raw[:4]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file: magic 0x{raw[:4].hex()} (expected "
                        "0x00000803 for images, 0x00000801 for labels, or another IDX type "
                        "code); check that the path points at an (un)gzipped *-ubyte file.")
    if ndim == 0 or (expected_ndim is not None and ndim != expected_ndim):
        want = f"{expected_ndim}" if expected_ndim is not None else "at least 1"
        raise DataError(f"IDX file {path} declares {ndim} dimensions, expected {want} "
                        "(3 for images, 1 for labels); is it the right file?")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"IDX file {path} ends inside its header ({len(raw)} bytes, header "
                        f"needs {header_size}); the file is truncated: download it again.")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header_size
    if found != expected:
        problem = "truncated" if found < expected else "longer than its header says"
        raise DataError(f"IDX file {path} is {problem}: dimensions {shape} of {dtype.name} "
                        f"need {expected} data bytes, found {found}; download the file again.")
    data = np.frombuffer(raw, dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a writable, native-endian copy.


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _load_fashion_mnist(name: str, data_dir: str | None) -> Dataset:
    directory = Path(data_dir or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_DIR)
    paths = {key: _find_idx_file(directory, stem) for key, stem in _FASHION_MNIST_FILES.items()}
    missing = [f"{_FASHION_MNIST_FILES[k]}.gz" for k, p in paths.items() if p is None]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}). Install it "
            "with `sudo apt-get install dataset-fashion-mnist` (files land in "
            f"{FASHION_MNIST_DEFAULT_DIR}), or put the four *-ubyte.gz files in a folder and set "
            f"{FASHION_MNIST_ENV}=/that/folder (or pass data_dir=...).")
    arrays = {key: read_idx(path, expected_ndim=3 if key.startswith("x") else 1)
              for key, path in paths.items()}
    x_train, y_train = validate_arrays(arrays["x_train"], arrays["y_train"], num_classes=10,
                                       name="x_train")
    x_test, y_test = validate_arrays(arrays["x_test"], arrays["y_test"], num_classes=10,
                                     name="x_test")
    return Dataset(name, x_train, y_train, x_test, y_test, 10,
                   {"source": str(directory), "test_split": "given"})


# --------------------------------------------------------------------------- #
# User data (.npz)
# --------------------------------------------------------------------------- #


def _load_npz(name: str, path_text: str, seed: int) -> Dataset:
    path = Path(path_text).expanduser()
    if not path_text or not path.is_file():
        raise DataError(f"npz file {str(path)!r} not found; pass npz:PATH with PATH an existing "
                        ".npz holding x (N,H,W[,C]) and y (N,) (optionally x_test, y_test).")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                raise DataError(f"{path} holds a single array (.npy), not an .npz archive; "
                                "save it with np.savez(path, x=..., y=...).")
        # np.load would take it for a pickle and advise unsafe loading.
        raise DataError(f"{path} is not an .npz archive (not a zip file: damaged, or another "
                        "format); save it with np.savez(path, x=..., y=...).")
    _check_npz_sizes(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"Could not read {path} as .npz ({err}); save it with "
                        "np.savez(path, x=..., y=...).") from err
    with archive:
        keys = set(archive.files)
        missing = [k for k in ("x", "y") if k not in keys]
        if missing:
            raise DataError(f"{path} lacks key(s) {missing} (found {sorted(keys)}); save the "
                            "images as x (N,H,W[,C]) and labels as y (N,): "
                            "np.savez(path, x=..., y=...).")
        if ("x_test" in keys) != ("y_test" in keys):
            raise DataError(f"{path} has only one of x_test / y_test (found {sorted(keys)}); "
                            "save both, or neither to hold out a test split.")
        arrays = {}
        for key in ("x", "y", "x_test", "y_test"):
            if key not in keys:
                continue
            try:
                arrays[key] = archive[key]
            except ValueError as err:  # object arrays: refused by allow_pickle=False.
                raise DataError(f"{path}: array {key!r} cannot be loaded without pickle ({err}); "
                                "save numeric arrays (uint8/float images, int labels), not "
                                "object arrays.") from err

    x, y = validate_arrays(arrays["x"], arrays["y"], name="x")
    notes = {"source": str(path)}
    if "x_test" not in arrays:
        num_classes = int(y.max()) + 1
        _require_all_classes(y, num_classes, source=str(path))
        return _held_out_dataset(name, x, y, num_classes, seed=seed, notes=notes)

    x_test, y_test = validate_arrays(arrays["x_test"], arrays["y_test"], name="x_test")
    if x_test.shape[1:] != x.shape[1:] or x_test.dtype != x.dtype:
        raise DataError(f"{path}: x_test is {x_test.shape[1:]} {x_test.dtype} but x is "
                        f"{x.shape[1:]} {x.dtype}; store both splits with the same image shape "
                        "and dtype.")
    num_classes = int(max(y.max(), y_test.max())) + 1
    if y_test.max() > y.max():
        unseen = np.unique(y_test[y_test > y.max()])
        raise DataError(f"{path}: y_test (the test split) holds class(es) {unseen[:10].tolist()} "
                        f"that y (the pool) never has (pool classes 0..{int(y.max())}); drop "
                        "those test samples or add pool examples of those classes.")
    _require_all_classes(y, num_classes, source=str(path))
    return Dataset(name, x, y, x_test, y_test, num_classes, {**notes, "test_split": "given"})


# --------------------------------------------------------------------------- #
# User data as memory-mapped .npy files (npy:DIR)
# --------------------------------------------------------------------------- #


def _npy_fix(directory) -> str:
    return (f"write the folder with npc_jax.data.save_npy_dataset({str(directory)!r}, x, y, "
            "x_test, y_test), or, for .npy files already there, "
            f"npc_jax.data.write_npy_manifest({str(directory)!r})")


def _open_npy_arrays(directory: Path) -> dict:
    """{stem: array} of the folder's four .npy files, images memory-mapped, checked."""
    missing = [f"{stem}.npy" for stem in _NPY_ARRAYS if not (directory / f"{stem}.npy").is_file()]
    if missing:
        raise DataError(f"npy folder {str(directory)!r} lacks {', '.join(missing)}; it needs "
                        "x.npy (N,H,W,C) uint8, y.npy (N,), x_test.npy and y_test.npy (a "
                        "memory-mapped pool is not split into a test set here): "
                        f"{_npy_fix(directory)}.")
    arrays = {}
    for stem in _NPY_ARRAYS:
        path = directory / f"{stem}.npy"
        try:
            arrays[stem] = np.load(path, mmap_mode="r" if stem.startswith("x") else None,
                                   allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise DataError(f"Could not read {path} as .npy ({err}); "
                            f"{_npy_fix(directory)}.") from err
    for stem in ("x", "x_test"):
        x = arrays[stem]
        if x.ndim != 4 or x.dtype != np.uint8 or len(x) == 0:
            raise DataError(f"{directory / (stem + '.npy')} is {x.dtype} of shape {x.shape}; an "
                            "npy: folder holds uint8 images (N, H, W, C), N >= 1 (a memory "
                            "map is never scanned, so float pixels could not be checked for "
                            "NaN or range): convert with (x * 255).round().astype(np.uint8), "
                            "add the channel axis with x[..., None].")
    if arrays["x_test"].shape[1:] != arrays["x"].shape[1:]:
        raise DataError(f"{directory}: x_test.npy images are {arrays['x_test'].shape[1:]} but "
                        f"x.npy images are {arrays['x'].shape[1:]}; store both splits with "
                        "one image shape.")
    return arrays


def _npy_labels(directory: Path, arrays: dict, num_classes: int | None):
    """(y, y_test) of `_open_npy_arrays`' folder, validated (below `num_classes` if given)."""
    return tuple(_validate_labels(arrays[stem], num_samples=len(arrays["x" + stem[1:]]),
                                  num_classes=num_classes, name=str(directory / f"{stem}.npy"))
                 for stem in ("y", "y_test"))


def _file_stamps(directory: Path) -> dict:
    stats = {stem: (directory / f"{stem}.npy").stat() for stem in _NPY_ARRAYS}
    return {stem: [stat.st_size, stat.st_mtime_ns] for stem, stat in stats.items()}


def write_npy_manifest(directory: str | os.PathLike, *, num_classes: int | None = None) -> dict:
    """Checks the .npy files of `directory` and writes its ``manifest.json``.

    The manifest holds the class count, each file's size and modification time
    and the data's `Dataset.fingerprint` (computed once here, streaming the
    files), so that loading ``npy:DIR`` reads no image: a process reads only
    the rows it uses. Files changed afterwards are refused at load until the
    manifest is written again.

    Args:
      directory: a folder with x.npy (N, H, W, C) uint8, y.npy (N,) int,
        x_test.npy and y_test.npy.
      num_classes: C (default: 1 + the largest label).

    Returns:
      The manifest (a dict).

    Raises:
      DataError: a missing or unreadable file, float or non-4-D images,
        labels that fail `validate_arrays`' label checks, a pool without some class.
    """
    directory = Path(directory)
    arrays = _open_npy_arrays(directory)
    y, y_test = _npy_labels(directory, arrays, num_classes)
    num_classes = int(num_classes or max(y.max(), y_test.max()) + 1)
    _require_all_classes(y, num_classes, source=str(directory / "y.npy"))
    manifest = {"format": 1, "num_classes": num_classes, "files": _file_stamps(directory),
                "fingerprint": _content_fingerprint(num_classes, (arrays["x"], y,
                                                                  arrays["x_test"], y_test))}
    temporary = directory / (NPY_MANIFEST + ".tmp")   # a reader sees the old or the new one
    temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(temporary, directory / NPY_MANIFEST)
    return manifest


def save_npy_dataset(directory: str | os.PathLike, x, y, x_test, y_test, *,
                     num_classes: int | None = None) -> Path:
    """Writes arrays as an ``npy:`` folder (the four .npy files and the manifest).

    Args:
      directory: the folder (created if missing).
      x, x_test: (N, H, W[, C]) uint8 images; y, y_test: (N,) int labels.
      num_classes: C (default: 1 + the largest label).

    Returns:
      The folder: ``load_dataset(f"npy:{folder}")`` memory-maps it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stem, images, labels in (("x", x, y), ("x_test", x_test, y_test)):
        images, labels = validate_arrays(images, labels, num_classes=num_classes, name=stem)
        np.save(directory / f"{stem}.npy", images)
        np.save(directory / f"y{stem[1:]}.npy", labels)
    write_npy_manifest(directory, num_classes=num_classes)
    return directory


def _load_npy(name: str, path_text: str) -> Dataset:
    directory = Path(path_text).expanduser()
    if not path_text or not directory.is_dir():
        raise DataError(f"npy folder {str(directory)!r} not found; pass npy:DIR with DIR a "
                        f"folder made by npc_jax.data.save_npy_dataset.")
    manifest_path = directory / NPY_MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{directory} has no {NPY_MANIFEST} (it records the data's fingerprint, "
                        f"so that loading reads no image); {_npy_fix(directory)}.")
    try:
        manifest = json.loads(manifest_path.read_text())
        num_classes, fingerprint = int(manifest["num_classes"]), str(manifest["fingerprint"])
        recorded = {k: list(v) for k, v in manifest["files"].items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{manifest_path} is not a readable manifest ({err}); "
                        f"{_npy_fix(directory)}.") from err
    arrays = _open_npy_arrays(directory)
    changed = [f"{stem}.npy" for stem, stamp in _file_stamps(directory).items()
               if recorded.get(stem) != stamp]
    if changed:
        raise DataError(f"{', '.join(changed)} in {directory} changed since {NPY_MANIFEST} was "
                        "written (size or modification time), so its fingerprint may no longer "
                        "be the data's; write it again with npc_jax.data.write_npy_manifest("
                        f"{str(directory)!r}).")
    y, y_test = _npy_labels(directory, arrays, num_classes)
    dataset = Dataset(name, arrays["x"], y, arrays["x_test"], y_test, num_classes,
                      {"source": str(directory), "test_split": "given", "memory_mapped": True})
    object.__setattr__(dataset, "_fingerprint", fingerprint)
    return dataset


def _available_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _check_npz_sizes(path: Path) -> None:
    """Refuses, before inflating anything, an .npz whose arrays would not fit in
    memory or whose members disagree with the array headers they carry (a
    damaged file, or a deflate bomb)."""
    limit = _available_memory_bytes()
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".npy")]
            total = sum(m.file_size for m in members)
            if total > limit:
                raise DataError(
                    f"{path} inflates to {total / 2**30:.1f} GiB, more than this machine's "
                    f"{limit / 2**30:.1f} GiB of memory; use a smaller pool, or a machine "
                    "with more memory.")
            for member in members:
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(f)
                    header = f.tell()
                if dtype.hasobject:   # pickled payload: refused with its own message later
                    continue
                declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if declared > limit or header + declared != member.file_size:
                    raise DataError(
                        f"{path}: array {member.filename[:-4]!r} declares shape {shape} "
                        f"{dtype} ({declared / 2**30:.3g} GiB) but its member holds "
                        f"{member.file_size / 2**30:.3g} GiB; the file is damaged or was not "
                        "written by np.savez. Save it again with np.savez(path, x=..., y=...).")
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as err:
        raise DataError(f"Could not read {path} as .npz ({err}); save it with "
                        "np.savez(path, x=..., y=...).") from None


# --------------------------------------------------------------------------- #
# tensorflow-datasets
# --------------------------------------------------------------------------- #


def import_tfds():
    """Imports tensorflow-datasets quietly, keeping TensorFlow off the GPUs JAX uses."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # respects a user's own setting.
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError(f"tfds datasets need tensorflow-datasets ({err}); install them with "
                        "`pip install 'npc_jax[tfds]'`, or use fashion_mnist / npz:PATH.") from err
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already initialised its devices: nothing to do.
        pass
    tfds.disable_progress_bar()
    return tfds


def _tfds_split_to_numpy(tfds, dataset, *, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A supervised tf.data split as ``(images, labels)`` numpy arrays.

    Streams fixed-size batches instead of ``batch_size=-1``: the latter batches
    by ``info.splits.total_num_examples or sys.maxsize``, and with unknown split
    sizes (tfds.testing.mock_data without metadata, some community datasets)
    the sys.maxsize batch aborts the interpreter inside TensorFlow.
    """
    xs, ys = [], []
    for x, y in tfds.as_numpy(dataset.batch(_TFDS_CHUNK)):
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DataError(f"{what} is empty; pick a dataset whose splits hold examples, or use "
                        "npz:PATH.")
    return np.concatenate(xs), np.concatenate(ys)


def _load_tfds(name: str, tfds_name: str, data_dir: str | None, seed: int) -> Dataset:
    tfds = import_tfds()
    fix = (f"pass data_dir= a tfds data directory where {tfds_name!r} is prepared "
           f"(`tfds build {tfds_name} --data_dir=DIR` on a machine with internet), "
           "or export the arrays to an .npz and use npz:PATH")
    try:
        train, info = tfds.load(tfds_name, split="train", as_supervised=True, with_info=True,
                                data_dir=data_dir, shuffle_files=False)
        # Prepared datasets list their splits; builders without split metadata
        # (mocked, or never prepared) accept any name, so try "test" then.
        has_test = not info.splits or "test" in info.splits
        test = (tfds.load(tfds_name, split="test", as_supervised=True, data_dir=data_dir,
                          shuffle_files=False) if has_test else None)
        x, y = _tfds_split_to_numpy(tfds, train, what=f"tfds {tfds_name!r} split 'train'")
        x_test, y_test = (None, None) if test is None else _tfds_split_to_numpy(
            tfds, test, what=f"tfds {tfds_name!r} split 'test'")
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - tfds raises many types; all get the same fix.
        # Only the first line: DatasetNotFoundError goes on to list every tfds dataset.
        first_line = (str(err).strip().splitlines() or [""])[0][:300].rstrip(".")
        if type(err).__name__ == "DatasetNotFoundError":
            fix = "check the spelling (tfds.list_builders() lists the names), " + fix
        raise DataError(f"Could not load tfds dataset {tfds_name!r}: {type(err).__name__}: "
                        f"{first_line}. Fix: {fix}.") from err

    # The supervised label feature is usually a ClassLabel that knows C.
    label_key = (info.supervised_keys or (None, None))[1]
    num_classes = (getattr(info.features[label_key], "num_classes", None)
                   if isinstance(label_key, str) else None)
    x, y = validate_arrays(x, y, num_classes=num_classes, name="x_train")
    if x_test is not None:
        x_test, y_test = validate_arrays(x_test, y_test, num_classes=num_classes, name="x_test")
    if num_classes is None:  # a plain integer label feature: infer from the data.
        num_classes = int(max(y.max(), -1 if y_test is None else y_test.max())) + 1
    notes = {"source": f"tfds:{tfds_name}", "tfds_data_dir": data_dir}
    if x_test is None:
        return _held_out_dataset(name, x, y, int(num_classes), seed=seed, notes=notes)
    return Dataset(name, x, y, x_test, y_test, int(num_classes), {**notes, "test_split": "given"})


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None,
                 seed: int = 0) -> Dataset:
    """Loads a dataset by name into memory.

    Args:
      name: ``"fashion_mnist"`` (Debian IDX files), ``"npz:PATH"`` (user arrays:
        x ``(N,H,W[,C])`` uint8 or float in [0, 1], y ``(N,)`` int, optional
        x_test / y_test), ``"npy:DIR"`` (`save_npy_dataset`'s folder,
        images memory-mapped), ``"tfds:NAME"`` or a bare tfds name (``"cifar10"``,
        ``"svhn_cropped"``, ...; splits "train" and "test").
      data_dir: the IDX folder for fashion_mnist (default: env
        ``NPC_JAX_FASHION_MNIST_DIR``, else /usr/share/datasets/fashion-mnist);
        the tfds data directory for tfds datasets; ignored for npz.
      seed: seeds the stratified 10% held-out test split used when the source
        has no test split (recorded in ``notes``); otherwise unused.

    Returns:
      A `Dataset`: images ``(N, H, W, C)`` uint8 (npz floats: float32), labels
      ``(N,)`` int32.

    Raises:
      DataError: missing files, unknown names, failed downloads, or arrays that
        fail `validate_arrays`; the message says how to fix it.
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"Dataset name must be a non-empty string, got {name!r}; use "
                        "'fashion_mnist', 'npz:PATH', 'npy:DIR' or a tfds name such as "
                        "'cifar10'.")
    name = name.strip()
    data_dir = os.fspath(data_dir) if data_dir else None  # configs spell "unset" as "".
    if name in ("fashion_mnist", "fashion-mnist"):
        return _load_fashion_mnist(name, data_dir)
    if name.startswith("npz:"):
        return _load_npz(name, name[len("npz:"):], seed)
    if name.startswith("npy:"):
        return _load_npy(name, name[len("npy:"):])
    tfds_name = name[len("tfds:"):] if name.startswith("tfds:") else name
    return _load_tfds(name, tfds_name, data_dir, seed)


# --------------------------------------------------------------------------- #
# Pool
# --------------------------------------------------------------------------- #


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _as_index_array(indices, *, what: str) -> np.ndarray:
    """Indices as a 1-D int64 array; DataError for non-integer or non-1-D input."""
    array = np.asarray(indices)
    if array.ndim != 1:
        raise DataError(f"{what} must be a 1-D sequence of indices, got shape {array.shape}; "
                        "pass e.g. [i] for a single index.")
    if array.size == 0:
        return np.zeros((0,), np.int64)
    if array.dtype == bool:
        raise DataError(f"{what} is a boolean array; pass indices, e.g. np.flatnonzero(mask).")
    if array.dtype.kind not in "iu":
        raise DataError(f"{what} must be integers, got dtype {array.dtype}; cast whole-number "
                        "indices with .astype(np.int64).")
    return array.astype(np.int64, copy=False)


@dataclasses.dataclass(frozen=True)
class Pool:
    """Immutable record of which pool indices are labeled, in the order they were revealed.

    Attributes:
      num_samples: pool size N (training samples).
      labeled: labeled indices as Python ints, in reveal order (JSON-ready).

    The array views below are computed once per Pool and are read-only (a Pool
    never changes); copy them before modifying.
    """

    num_samples: int
    labeled: tuple[int, ...] = ()

    def __post_init__(self):
        if not _is_int(self.num_samples) or self.num_samples < 0:
            raise DataError(f"Pool num_samples must be a non-negative int, got "
                            f"{self.num_samples!r}; pass len(y_train).")
        labeled = _as_index_array(list(self.labeled), what="Pool.labeled")
        self._check_in_range(labeled, what="Pool.labeled")
        self._refuse_repeats(labeled, "Pool.labeled repeats indices {}; every index can be "
                             "labeled once.")
        # Normalise (lists, numpy ints) to a tuple of Python ints: hashable and JSON-ready.
        object.__setattr__(self, "num_samples", int(self.num_samples))
        object.__setattr__(self, "labeled", tuple(labeled.tolist()))

    def _refuse_repeats(self, indices: np.ndarray, message: str) -> None:
        """DataError(message with the first repeated values) if `indices` repeat; O(N + q)."""
        repeated = np.flatnonzero(np.bincount(indices, minlength=self.num_samples) > 1)
        if repeated.size:
            raise DataError(message.format(repeated[:10].tolist()))

    def _check_in_range(self, indices: np.ndarray, *, what: str) -> None:
        bad = indices[(indices < 0) | (indices >= self.num_samples)]
        if bad.size:
            raise DataError(f"{what} holds indices out of range {bad[:10].tolist()} for a pool "
                            f"of {self.num_samples} samples; valid indices are "
                            f"0..{self.num_samples - 1} (negative indices are not wrapped).")

    @classmethod
    def uniform(cls, num_samples: int, num_initial: int, *, seed: int) -> "Pool":
        """`num_initial` indices drawn uniformly without replacement (``default_rng(seed)``).

        The initial set of a pool whose labels are unknown (a person labels it
        after it is drawn): a class-balanced draw would need those labels.
        """
        if not _is_int(num_initial) or not 0 <= num_initial <= num_samples:
            raise DataError(f"initial_labels={num_initial} must lie in 0..{num_samples} "
                            "(the pool size).")
        chosen = np.random.default_rng(seed).choice(num_samples, num_initial, replace=False)
        return cls(num_samples, tuple(chosen.tolist()))

    @classmethod
    def initial(cls, labels, num_initial: int, *, seed: int,
                num_classes: int | None = None) -> "Pool":
        """A class-balanced initial labeled set: ``num_initial / C`` per class.

        Per class (in order 0..C-1) draws without replacement with
        ``np.random.default_rng(seed)``, so the same seed gives the same labels,
        bit for bit. Reveal order: class 0's draws, then class 1's, ...

        Args:
          labels: ``(N,)`` int true labels of the pool (used only to stratify).
          num_initial: total initial labels, a multiple of C (0 gives an empty set).
          seed: int seed.
          num_classes: C; default ``labels.max() + 1``.

        Returns:
          A Pool with ``num_initial`` labeled indices.

        Raises:
          DataError: num_initial negative, not a multiple of C, larger than the
            pool, or asking more of a class than it holds.
        """
        labels = _validate_labels(labels, num_samples=None, num_classes=num_classes,
                                  name="labels")
        num_samples = labels.shape[0]
        if not _is_int(num_initial) or num_initial < 0:
            raise DataError(f"num_initial must be a non-negative int, got {num_initial!r}.")
        if num_initial > num_samples:
            raise DataError(f"num_initial={num_initial} exceeds the pool of {num_samples} samples; "
                            "ask for fewer initial labels.")
        if num_classes is None:
            if num_samples == 0:
                raise DataError("labels is empty; pass the (N,) labels of a non-empty pool.")
            num_classes = int(labels.max()) + 1
        if num_initial % num_classes:
            lower = num_initial - num_initial % num_classes
            raise DataError(f"num_initial={num_initial} is not a multiple of num_classes="
                            f"{num_classes}; the initial set is class-balanced, so pick a "
                            f"multiple such as {lower or num_classes} or {lower + num_classes}.")
        per_class = num_initial // num_classes
        class_sizes = np.bincount(labels, minlength=num_classes)
        short = np.flatnonzero(class_sizes < per_class)
        if short.size:
            c = int(short[0])
            raise DataError(f"num_initial={num_initial} needs {per_class} labels per class but "
                            f"class {c} has only {class_sizes[c]} samples; lower num_initial to "
                            f"at most {num_classes * int(class_sizes.min())}.")
        rng = np.random.default_rng(seed)
        by_class = np.argsort(labels, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(class_sizes)])
        picks = [rng.choice(by_class[bounds[c]:bounds[c + 1]], per_class, replace=False)
                 for c in range(num_classes)]
        chosen = np.concatenate(picks) if picks else np.zeros((0,), np.int64)
        return cls(num_samples, tuple(chosen.tolist()))

    @functools.cached_property
    def labeled_indices(self) -> np.ndarray:
        """``(num_labeled,)`` int64, in reveal order (read-only)."""
        return _readonly(np.asarray(self.labeled, dtype=np.int64).reshape(-1))

    @functools.cached_property
    def labeled_mask(self) -> np.ndarray:
        """``(N,)`` bool, True where labeled (read-only)."""
        mask = np.zeros(self.num_samples, dtype=bool)
        mask[self.labeled_indices] = True
        return _readonly(mask)

    @functools.cached_property
    def unlabeled_indices(self) -> np.ndarray:
        """``(num_unlabeled,)`` int64, sorted (read-only). O(N) through the mask."""
        return _readonly(np.flatnonzero(~self.labeled_mask).astype(np.int64))

    @property
    def num_labeled(self) -> int:
        return len(self.labeled)

    @property
    def num_unlabeled(self) -> int:
        return self.num_samples - len(self.labeled)

    def reveal(self, indices) -> "Pool":
        """A new Pool with `indices` labeled after the current ones; self is unchanged.

        Args:
          indices: ``(q,)`` integer pool indices, q >= 1, distinct, in range and
            not yet labeled (numpy/jax array or sequence).

        Returns:
          A new Pool whose ``labeled`` is ``self.labeled + tuple(indices)``.

        Raises:
          DataError: empty, non-integer, not 1-D, out of range, repeated within
            `indices`, or already labeled. Checks cost O(N + q).
        """
        new = _as_index_array(indices, what="reveal indices")
        if new.size == 0:
            raise DataError("reveal() got no indices; a round must reveal at least one label "
                            "(check the strategy's query size).")
        self._check_in_range(new, what="reveal indices")
        self._refuse_repeats(new, "reveal indices repeat {}; each index can be revealed once: "
                             "deduplicate the query (np.unique keeps the values).")
        already = new[self.labeled_mask[new]]
        if already.size:
            raise DataError(f"reveal indices {already[:10].tolist()} are already labeled; query "
                            "only from pool.unlabeled_indices.")
        return Pool(self.num_samples, self.labeled + tuple(new.tolist()))

    def check_budget(self, query_size: int, rounds: int = 1) -> None:
        """Raises DataError unless `rounds` queries of `query_size` labels fit in the pool.

        Args:
          query_size: labels per round, a positive int.
          rounds: acquisition rounds, a non-negative int.
        """
        for arg, value, least in (("query_size", query_size, 1), ("rounds", rounds, 0)):
            if not _is_int(value) or value < least:
                raise DataError(f"{arg} must be an int >= {least}, got {value!r}.")
        needed = int(query_size) * int(rounds)
        if needed > self.num_unlabeled:
            raise DataError(f"Budget query_size={query_size} x rounds={rounds} = {needed} labels "
                            f"exceeds the {self.num_unlabeled} unlabeled samples (pool of "
                            f"{self.num_samples}, {self.num_labeled} labeled); lower query_size "
                            "or rounds, or use a larger pool.")

    def __repr__(self) -> str:
        head = ", ".join(map(str, self.labeled[:8])) + (", ..." if self.num_labeled > 8 else "")
        return (f"Pool(num_samples={self.num_samples}, num_labeled={self.num_labeled}, "
                f"labeled=({head}))")


def initial_pool(num_samples: int, num_initial: int, *, seed: int,
                 labels: np.ndarray | None = None, num_classes: int | None = None) -> Pool:
    """The initial labeled set Q0 of a seed: the one policy of every run.

    Class-balanced (`Pool.initial`, the paper's protocol) when the pool's
    labels are known; uniformly at random (`Pool.uniform`) when they are not
    (human labelling). ``num_initial = 0`` gives the empty pool of a zero-shot
    run, whose first query comes from the randomly initialised network.

    Args:
      num_samples: N.
      num_initial: |Q0|.
      seed: the run's seed.
      labels: (N,) int true labels, or None when unknown.
      num_classes: C.
    """
    if labels is None:
        return Pool.uniform(num_samples, num_initial, seed=seed)
    return Pool.initial(labels, num_initial, seed=seed, num_classes=num_classes)
