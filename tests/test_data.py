"""Tests for npc_jax.data: IDX parsing, the three dataset sources, and the Pool."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from needs import requires_fashion_mnist

from npc_jax.data import (DataError, Dataset, Pool, images_to_float, load_dataset, read_idx,
                          validate_arrays)

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def idx_bytes(array: np.ndarray, *, magic: bytes | None = None, dims=None) -> bytes:
    """An IDX file written by hand: 0, 0, type code, ndim, big-endian uint32 dims, data."""
    dims = array.shape if dims is None else dims
    if magic is None:
        magic = bytes([0, 0, IDX_CODES[array.dtype], len(dims)])
    header = magic + struct.pack(f">{len(dims)}I", *dims)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, payload: bytes, *, gzipped: bool) -> Path:
    path.write_bytes(gzip.compress(payload) if gzipped else payload)
    return path


def write_fake_fashion_mnist(directory: Path, *, num_train=30, num_test=10) -> None:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", num_train), ("t10k", num_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write(directory / f"{split}-images-idx3-ubyte.gz", idx_bytes(images), gzipped=True)
        write(directory / f"{split}-labels-idx1-ubyte.gz", idx_bytes(labels), gzipped=True)


def save_npz(tmp_path: Path, **arrays) -> str:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"


def toy_images(n=40, shape=(6, 5), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


# --------------------------------------------------------------------------- #
# IDX
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trip(tmp_path, gzipped, dtype):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    path = write(tmp_path / "a.idx", idx_bytes(array), gzipped=gzipped)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


def test_read_idx_image_and_label_magic(tmp_path):
    images = toy_images(3, (28, 28))
    labels = np.array([3, 1, 4], np.uint8)
    image_file = write(tmp_path / "img", idx_bytes(images), gzipped=True)
    label_file = write(tmp_path / "lab", idx_bytes(labels), gzipped=False)
    assert image_file.read_bytes()[:2] == b"\x1f\x8b"  # gzip detected by content
    assert label_file.read_bytes()[:4] == bytes.fromhex("00000801")
    np.testing.assert_array_equal(read_idx(image_file, expected_ndim=3), images)
    np.testing.assert_array_equal(read_idx(label_file, expected_ndim=1), labels)


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("payload, match", [
    (b"\x00\x01\x08\x01" + struct.pack(">I", 2) + b"ab", "not an IDX file"),
    (b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"ab", "not an IDX file"),   # unknown type code
    (b"\x1f\x00", "too short for the 4-byte magic"),
    (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "ends inside its header"),  # 3 dims, 1 given
    (b"\x00\x00\x08\x00", "declares 0 dimensions"),
    (b"\x00\x00\x08\x02" + struct.pack(">2I", 2, 3) + bytes(5), "truncated"),
    (b"\x00\x00\x08\x02" + struct.pack(">2I", 2, 3) + bytes(7), "longer than its header"),
    (b"\x00\x00\x0c\x01" + struct.pack(">I", 2) + bytes(6), "truncated"),     # int32: 8 bytes
])
def test_read_idx_rejects_bad_files(tmp_path, gzipped, payload, match):
    path = write(tmp_path / "bad.idx", payload, gzipped=gzipped)
    with pytest.raises(DataError, match=match):
        read_idx(path)


def test_read_idx_checks_expected_ndim(tmp_path):
    path = write(tmp_path / "labels", idx_bytes(np.zeros(4, np.uint8)), gzipped=True)
    with pytest.raises(DataError, match="declares 1 dimensions, expected 3"):
        read_idx(path, expected_ndim=3)


def test_read_idx_missing_and_damaged(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope.gz")
    damaged = gzip.compress(idx_bytes(toy_images(4)))[:-12]
    path = write(tmp_path / "damaged.gz", damaged, gzipped=False)
    with pytest.raises(DataError, match="damaged gzip"):
        read_idx(path)


# --------------------------------------------------------------------------- #
# Fashion-MNIST
# --------------------------------------------------------------------------- #


@requires_fashion_mnist
def test_real_fashion_mnist():  # ~1 s: 60k + 10k images.
    data = load_dataset("fashion_mnist")
    assert data.x_train.shape == (60000, 28, 28, 1) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (10000, 28, 28, 1) and data.x_test.dtype == np.uint8
    assert data.y_train.shape == (60000,) and data.y_train.dtype == np.int32
    assert data.y_test.shape == (10000,) and data.y_test.dtype == np.int32
    assert data.num_classes == 10 and data.image_shape == (28, 28, 1) and data.num_train == 60000
    np.testing.assert_array_equal(np.bincount(data.y_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(data.y_test), np.full(10, 1000))
    assert data.notes["test_split"] == "given"


def test_fashion_mnist_from_env_dir_and_data_dir(tmp_path, monkeypatch):
    write_fake_fashion_mnist(tmp_path / "env", num_train=30, num_test=10)
    write_fake_fashion_mnist(tmp_path / "arg", num_train=20, num_test=10)
    monkeypatch.setenv("NPC_JAX_FASHION_MNIST_DIR", str(tmp_path / "env"))
    data = load_dataset("fashion_mnist")
    assert data.x_train.shape == (30, 28, 28, 1) and data.x_test.shape == (10, 28, 28, 1)
    assert data.notes["source"] == str(tmp_path / "env")
    assert load_dataset("fashion_mnist", data_dir=str(tmp_path / "arg")).num_train == 20


def test_fashion_mnist_missing_dir_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("NPC_JAX_FASHION_MNIST_DIR", raising=False)
    with pytest.raises(DataError, match="dataset-fashion-mnist") as info:
        load_dataset("fashion_mnist", data_dir=str(tmp_path / "absent"))
    assert "NPC_JAX_FASHION_MNIST_DIR" in str(info.value)
    assert "train-images-idx3-ubyte.gz" in str(info.value)


def test_fashion_mnist_swapped_files(tmp_path):
    write_fake_fashion_mnist(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(labels.read_bytes())
    with pytest.raises(DataError, match="declares 1 dimensions, expected 3"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


# --------------------------------------------------------------------------- #
# npz
# --------------------------------------------------------------------------- #


def test_npz_uint8_grey_with_test_split(tmp_path):
    x, y = toy_images(40), np.arange(40) % 4
    x_test, y_test = toy_images(8, seed=1), np.arange(8) % 4
    data = load_dataset(save_npz(tmp_path, x=x, y=y, x_test=x_test, y_test=y_test))
    assert data.x_train.shape == (40, 6, 5, 1) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (8, 6, 5, 1)
    assert data.y_train.dtype == np.int32 and data.y_test.dtype == np.int32
    np.testing.assert_array_equal(data.x_train[..., 0], x)
    np.testing.assert_array_equal(data.y_test, y_test)
    assert data.num_classes == 4 and data.image_shape == (6, 5, 1)
    assert data.notes["test_split"] == "given"


def test_npz_float_colour_and_integral_float_labels(tmp_path):
    x = np.random.default_rng(0).random((30, 4, 4, 3))  # float64 in [0, 1)
    x[0] = 1.0
    y = (np.arange(30) % 3).astype(np.float32)
    data = load_dataset(save_npz(tmp_path, x=x, y=y))
    assert data.x_train.dtype == np.float32 and data.x_train.shape[1:] == (4, 4, 3)
    assert data.y_train.dtype == np.int32 and data.num_classes == 3
    np.testing.assert_array_equal(images_to_float(data.x_train), data.x_train)


def test_npz_held_out_split_is_stratified_and_seeded(tmp_path):
    counts = np.array([50, 30, 20, 11])
    y = np.repeat(np.arange(4), counts)
    x = toy_images(len(y))
    x[:, 0, 0] = np.arange(len(y))  # tag images so the split can be traced back
    name = save_npz(tmp_path, x=x, y=y)

    data = load_dataset(name, seed=3)
    assert data.notes == {"source": name[4:], "test_split": "held_out",
                          "held_out_fraction": 0.1, "held_out_seed": 3}
    np.testing.assert_array_equal(np.bincount(data.y_test, minlength=4), [5, 3, 2, 1])
    np.testing.assert_array_equal(np.bincount(data.y_train, minlength=4), counts - [5, 3, 2, 1])
    train_tags, test_tags = data.x_train[:, 0, 0, 0], data.x_test[:, 0, 0, 0]
    assert not set(train_tags) & set(test_tags)
    assert sorted(np.concatenate([train_tags, test_tags])) == list(range(len(y)))
    np.testing.assert_array_equal(y[test_tags], data.y_test)  # labels follow their images

    again = load_dataset(name, seed=3)
    np.testing.assert_array_equal(again.x_test, data.x_test)
    other = load_dataset(name, seed=4)
    assert not np.array_equal(other.x_test[:, 0, 0, 0], test_tags)


def test_npz_held_out_needs_enough_samples(tmp_path):
    with pytest.raises(DataError, match="Too few samples"):
        load_dataset(save_npz(tmp_path, x=toy_images(3), y=np.array([0, 1, 2])))


X_OK, Y_OK = toy_images(20), np.arange(20) % 2


def _nan_images():
    x = np.full((20, 3, 3), 0.5)
    x[4, 1, 1] = np.nan
    return x


def _inf_images():
    x = np.full((20, 3, 3), 0.5, np.float32)
    x[2, 0, 0] = np.inf
    return x


def _ragged_images():
    x = np.empty(20, dtype=object)
    for i in range(20):
        x[i] = np.zeros((2 + i % 2, 2))
    return x


@pytest.mark.parametrize("arrays, match", [
    (dict(y=Y_OK), r"lacks key\(s\) \['x'\]"),
    (dict(x=X_OK), r"lacks key\(s\) \['y'\]"),
    (dict(x=X_OK[:, 0], y=Y_OK), r"must have shape \(N, H, W, C\) or \(N, H, W\)"),
    (dict(x=X_OK[..., None, None], y=Y_OK), r"got \(20, 6, 5, 1, 1\) \(5-D\)"),
    (dict(x=X_OK, y=Y_OK[:-1]), "has 19 labels but there are 20 images"),
    (dict(x=X_OK, y=Y_OK[:, None]), r"must be 1-D \(N,\)"),
    (dict(x=X_OK, y=Y_OK + 0.5), "not integers"),
    (dict(x=X_OK, y=np.where(Y_OK == 0, np.nan, 1.0)), "not integers"),
    (dict(x=X_OK, y=Y_OK - 1), "negative labels"),
    (dict(x=_nan_images(), y=Y_OK), r"non-finite pixels \(1 NaN, 0 inf\)"),
    (dict(x=_inf_images(), y=Y_OK), r"non-finite pixels \(0 NaN, 1 inf\)"),
    (dict(x=X_OK.astype(np.float32), y=Y_OK), r"outside \[0, 1\]"),
    (dict(x=X_OK.astype(np.int16), y=Y_OK), "dtype int16; images must be uint8"),
    (dict(x=_ragged_images(), y=Y_OK), "cannot be loaded without pickle"),
    (dict(x=X_OK, y=Y_OK * 2), r"class\(es\) \[1\] have no training example"),
    (dict(x=X_OK, y=Y_OK, x_test=X_OK, y_test=Y_OK + 1),
     r"y_test \(the test split\) holds class\(es\) \[2\] that y \(the pool\) never has"),
    (dict(x=X_OK, y=Y_OK, x_test=X_OK), "only one of x_test / y_test"),
    (dict(x=X_OK, y=Y_OK, x_test=X_OK[:, :3], y_test=Y_OK), "same image shape and dtype"),
    (dict(x=X_OK, y=Y_OK, x_test=X_OK, y_test=Y_OK[:5]), "y_test has 5 labels"),
])
def test_npz_errors(tmp_path, arrays, match):
    with pytest.raises(DataError, match=match):
        load_dataset(save_npz(tmp_path, **arrays))


def test_npz_missing_or_not_an_archive(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")
    np.save(tmp_path / "one.npy", X_OK)
    with pytest.raises(DataError, match=r"single array \(.npy\), not an .npz"):
        load_dataset(f"npz:{tmp_path / 'one.npy'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match=r"is not an .npz archive \(not a zip file"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


# --------------------------------------------------------------------------- #
# validate_arrays, images_to_float, Dataset
# --------------------------------------------------------------------------- #


def test_validate_arrays_layout_and_names():
    x, y = validate_arrays(X_OK, Y_OK.astype(np.uint8), num_classes=2)
    assert x.shape == (20, 6, 5, 1) and x.dtype == np.uint8 and y.dtype == np.int32
    with pytest.raises(DataError, match="y_test holds label 1 but num_classes is 1"):
        validate_arrays(X_OK, Y_OK, num_classes=1, name="x_test")
    with pytest.raises(DataError, match="x_test is an object array"):
        validate_arrays(_ragged_images(), Y_OK, name="x_test")
    with pytest.raises(DataError, match="holds no images"):
        validate_arrays(X_OK[:0], Y_OK[:0])


def test_images_to_float_numpy_and_jax():
    x = np.array([[0, 51, 255]], np.uint8)
    out = images_to_float(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.2, 1.0]], rtol=1e-7)
    floats = np.array([0.25, 0.5], np.float32)
    assert images_to_float(floats) is floats
    assert images_to_float(floats.astype(np.float64)).dtype == np.float32
    with pytest.raises(DataError, match="uint8 images or floats"):
        images_to_float(np.array([1, 2], np.int64))

    jax = pytest.importorskip("jax")
    jitted = jax.jit(images_to_float)(jax.numpy.asarray(x))
    assert jitted.dtype == jax.numpy.float32
    np.testing.assert_allclose(np.asarray(jitted), out)


def test_dataset_record_checks_structure():
    x, y = validate_arrays(X_OK, Y_OK)
    data = Dataset("toy", x, y, x[:4], y[:4], 2, {})
    assert data.image_shape == (6, 5, 1) and data.num_train == 20
    with pytest.raises(DataError, match="x_train must be 4-D"):
        Dataset("toy", X_OK, Y_OK, x, y, 2, {})
    with pytest.raises(DataError, match="differ in shape"):
        Dataset("toy", x, y, x[:, :3], y, 2, {})


# --------------------------------------------------------------------------- #
# tfds (mocked: no download)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name, image_shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_mock(name, image_shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        data = load_dataset(name)
    assert data.x_train.shape == (24, *image_shape) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (24, *image_shape) and data.x_test.dtype == np.uint8
    assert data.y_train.shape == (24,) and data.y_train.dtype == np.int32
    assert data.num_classes == 10
    assert 0 <= data.y_train.min() and data.y_train.max() < 10
    assert data.notes["source"] == f"tfds:{name}" and data.notes["test_split"] == "given"


def test_tfds_unknown_name():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match="'no_such_dataset_xyz'.*not found.*npz:PATH"):
        load_dataset("no_such_dataset_xyz")


# --------------------------------------------------------------------------- #
# Pool
# --------------------------------------------------------------------------- #

POOL_LABELS = np.repeat(np.arange(5), [30, 12, 25, 8, 20])


def test_pool_initial_is_class_balanced_and_seeded():
    pool = Pool.initial(POOL_LABELS, 15, seed=0)
    assert pool.num_samples == len(POOL_LABELS) and pool.num_labeled == 15
    np.testing.assert_array_equal(np.bincount(POOL_LABELS[pool.labeled_indices]), [3] * 5)
    assert len(set(pool.labeled)) == 15
    assert all(type(i) is int for i in pool.labeled)  # JSON-ready
    assert Pool.initial(POOL_LABELS, 15, seed=0) == pool  # bit for bit
    draws = {Pool.initial(POOL_LABELS, 15, seed=s).labeled for s in range(5)}
    assert len(draws) == 5
    assert Pool.initial(POOL_LABELS, 0, seed=0).num_labeled == 0


@pytest.mark.parametrize("num_initial, kwargs, match", [
    (12, {}, "not a multiple of num_classes=5"),
    (45, {}, "class 3 has only 8 samples"),
    (200, {}, "exceeds the pool of 95"),
    (12, {"num_classes": 6}, "class 5 has only 0 samples"),
    (10, {"num_classes": 4}, "holds label 4 but num_classes is 4"),
    (-5, {}, "non-negative int"),
])
def test_pool_initial_errors(num_initial, kwargs, match):
    with pytest.raises(DataError, match=match):
        Pool.initial(POOL_LABELS, num_initial, seed=0, **kwargs)


def test_pool_reveal_returns_new_pool():
    pool = Pool.initial(POOL_LABELS, 5, seed=1)
    before_labeled, before_mask = pool.labeled, pool.labeled_mask.copy()
    new_indices = pool.unlabeled_indices[[0, 7, 3]]
    grown = pool.reveal(new_indices)
    assert grown is not pool and grown.num_labeled == 8 and grown.num_unlabeled == 87
    assert grown.labeled == before_labeled + tuple(new_indices.tolist())  # reveal order kept
    assert pool.labeled == before_labeled
    np.testing.assert_array_equal(pool.labeled_mask, before_mask)
    assert grown.reveal([int(grown.unlabeled_indices[0])]).num_labeled == 9  # lists work


def test_pool_reveal_accepts_jax_indices():
    jnp = pytest.importorskip("jax.numpy")
    pool = Pool(10).reveal(jnp.array([4, 2], dtype=jnp.int32))
    assert pool.labeled == (4, 2)


@pytest.mark.parametrize("indices, match", [
    ([3, 9, 3], r"repeat \[3\]"),
    ([0, 1], r"\[0\] are already labeled"),
    ([5, 10], r"out of range \[10\]"),
    ([-1], r"out of range \[-1\]"),
    (np.array([2.0, 3.0]), "must be integers, got dtype float64"),
    (np.zeros(10, bool), "boolean array"),
    ([], "got no indices"),
    (np.array([[2, 3]]), "must be a 1-D sequence"),
    (4, "must be a 1-D sequence"),
])
def test_pool_reveal_errors(indices, match):
    pool = Pool(10, (0,))
    with pytest.raises(DataError, match=match):
        pool.reveal(indices)
    assert pool.labeled == (0,)


def test_pool_constructor_validates():
    assert Pool(5, [np.int64(3), 1]).labeled == (3, 1)
    with pytest.raises(DataError, match="repeats indices"):
        Pool(5, (1, 1))
    with pytest.raises(DataError, match="out of range"):
        Pool(5, (5,))
    with pytest.raises(DataError, match="non-negative int"):
        Pool(-1)


def test_pool_check_budget():
    pool = Pool(10, (0, 1))
    pool.check_budget(4, 2)
    pool.check_budget(8)
    pool.check_budget(3, 0)
    with pytest.raises(DataError, match="= 9 labels exceeds the 8 unlabeled"):
        pool.check_budget(3, 3)
    with pytest.raises(DataError, match="query_size must be an int >= 1"):
        pool.check_budget(0)
    with pytest.raises(DataError, match="rounds must be an int >= 0"):
        pool.check_budget(1, -1)


def test_pool_partition_and_views():
    pool = Pool.initial(POOL_LABELS, 10, seed=2).reveal([94, 50])
    labeled, unlabeled, mask = pool.labeled_indices, pool.unlabeled_indices, pool.labeled_mask
    assert labeled.dtype == np.int64 and unlabeled.dtype == np.int64 and mask.dtype == bool
    assert mask.shape == (95,) and mask.sum() == pool.num_labeled == 12
    np.testing.assert_array_equal(np.sort(np.concatenate([labeled, unlabeled])), np.arange(95))
    np.testing.assert_array_equal(unlabeled, np.flatnonzero(~mask))
    assert np.all(np.diff(unlabeled) > 0)
    np.testing.assert_array_equal(labeled[-2:], [94, 50])
    with pytest.raises(ValueError, match="read-only"):
        unlabeled[0] = 1  # a Pool never changes, nor do its views


def test_pool_scales_to_a_million_samples():
    # Its wall time is a benchmark: experiments/bench_darp.py.
    n = 1_000_000
    pool = Pool(n, tuple(range(0, n, 1000)))
    pool = pool.reveal(np.arange(1, n, 998))  # odd indices: none labeled yet
    assert pool.num_unlabeled == n - 1000 - len(range(1, n, 998))
    unlabeled = pool.unlabeled_indices
    assert unlabeled.shape == (pool.num_unlabeled,)
    assert not pool.labeled_mask[unlabeled].any()
    np.testing.assert_array_equal(np.sort(np.concatenate([unlabeled, pool.labeled_indices])),
                                  np.arange(n))


# --------------------------------------------------------------------------- #
# npy: memory-mapped folders
# --------------------------------------------------------------------------- #


def _npy_arrays(n=40, n_test=12, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 6, 5), dtype=np.uint8), np.arange(n) % classes,
            rng.integers(0, 256, (n_test, 6, 5), dtype=np.uint8), np.arange(n_test) % classes)


def test_npy_folder_is_memory_mapped_and_fingerprinted_as_in_memory(tmp_path):
    from npc_jax.data import save_npy_dataset
    x, y, x_test, y_test = _npy_arrays()
    save_npy_dataset(tmp_path / "pool", x, y, x_test, y_test)
    data = load_dataset(f"npy:{tmp_path / 'pool'}")
    assert isinstance(data.x_train, np.memmap) and isinstance(data.x_test, np.memmap)
    assert data.x_train.shape == (40, 6, 5, 1) and data.num_classes == 4
    np.testing.assert_array_equal(data.x_train[..., 0], x)
    np.testing.assert_array_equal(data.y_test, y_test)
    # the manifest's fingerprint is the one the arrays in memory get
    in_memory = Dataset("same", *validate_arrays(x, y), *validate_arrays(x_test, y_test), 4)
    assert data.fingerprint() == in_memory.fingerprint()
    other = Dataset("other", *validate_arrays(x[::-1], y), *validate_arrays(x_test, y_test), 4)
    assert data.fingerprint() != other.fingerprint()


def test_npy_folder_changed_after_its_manifest_is_refused_until_rewritten(tmp_path):
    from npc_jax.data import save_npy_dataset, write_npy_manifest
    x, y, x_test, y_test = _npy_arrays()
    folder = save_npy_dataset(tmp_path / "pool", x, y, x_test, y_test)
    before = load_dataset(f"npy:{folder}").fingerprint()
    np.save(folder / "x.npy", x[::-1, :, :, None])   # same size, other content
    with pytest.raises(DataError, match=r"x\.npy .* changed since manifest\.json"):
        load_dataset(f"npy:{folder}")
    write_npy_manifest(folder)
    assert load_dataset(f"npy:{folder}").fingerprint() != before


@pytest.mark.parametrize("change, message", [
    (lambda d: (d / "manifest.json").unlink(), r"no manifest\.json .*write_npy_manifest"),
    (lambda d: (d / "x_test.npy").unlink(), r"lacks x_test\.npy"),
    (lambda d: (d / "manifest.json").write_text("{"), "not a readable manifest"),
])
def test_npy_folder_problems_name_the_fix(tmp_path, change, message):
    from npc_jax.data import save_npy_dataset
    folder = save_npy_dataset(tmp_path / "pool", *_npy_arrays())
    change(folder)
    with pytest.raises(DataError, match=message):
        load_dataset(f"npy:{folder}")
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"npy:{tmp_path / 'nowhere'}")


def test_npy_folder_refuses_float_images_and_bad_labels(tmp_path):
    from npc_jax.data import write_npy_manifest
    x, y, x_test, y_test = _npy_arrays()
    folder = tmp_path / "pool"
    folder.mkdir()
    for stem, array in (("x", x[..., None] / 255.0), ("y", y), ("x_test", x_test[..., None]),
                        ("y_test", y_test)):
        np.save(folder / f"{stem}.npy", array)
    with pytest.raises(DataError, match=r"float64 .* uint8 images"):
        write_npy_manifest(folder)
    np.save(folder / "x.npy", x[..., None])
    with pytest.raises(DataError, match="num_classes is 3"):
        write_npy_manifest(folder, num_classes=3)
    np.save(folder / "y.npy", np.where(y == 2, 1, y))   # class 2 has no pool example
    with pytest.raises(DataError, match=r"class\(es\) \[2\] have no training example"):
        write_npy_manifest(folder)


def test_a_memory_mapped_pool_stays_on_the_host_until_training_places_it(tmp_path):
    import jax

    from npc_jax import train
    from npc_jax.data import save_npy_dataset
    x, y, x_test, y_test = _npy_arrays(n=40, classes=2)
    data = load_dataset(f"npy:{save_npy_dataset(tmp_path / 'pool', x, y, x_test, y_test)}")
    labeled = np.array([5, 0, 3])
    packed = train.make_train_data(data.x_train, labeled, data.y_train[labeled], capacity=4)
    assert isinstance(packed.images, np.memmap)
    np.testing.assert_array_equal(np.asarray(packed.labeled_images[:3]), x[labeled][..., None])
    in_memory = train.make_train_data(np.array(data.x_train), labeled, data.y_train[labeled],
                                      capacity=4)
    assert isinstance(in_memory.images, jax.Array)
    np.testing.assert_array_equal(np.asarray(in_memory.labeled_images),
                                  np.asarray(packed.labeled_images))
