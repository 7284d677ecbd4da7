"""Tests of npc_jax.ssl.augment: FixMatch's weak/strong views in JAX.

Small shapes; every jitted function is compiled once per shape and reused.
Fast paths are checked against plain numpy references (and against PIL, which
FixMatch's reference code uses, where Pillow is installed).
"""
from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from npc_jax.ssl import augment

OP = {name: index for index, name in enumerate(augment.FIXMATCH_OPS)}
GREY_SHAPE, RGB_SHAPE = (8, 28, 28, 1), (4, 32, 32, 3)
SHAPES = [GREY_SHAPE, RGB_SHAPE]

weak = jax.jit(augment.weak_augment, static_argnames=("flip", "pad_fraction"))
strong = jax.jit(augment.strong_augment, static_argnames=(
    "flip", "pad_fraction", "num_ops", "cutout_fraction"))
randaugment = jax.jit(augment.randaugment, static_argnames=("num_ops",))
cutout = jax.jit(augment.cutout, static_argnames=("size_fraction",))
apply_op = jax.jit(augment.apply_op)
AUGMENTS = {"weak": weak, "strong": strong, "randaugment": randaugment,
            "cutout": cutout}


@pytest.fixture(autouse=True)
def _no_implicit_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


def random_images(shape, seed=0):
    return jax.random.uniform(jax.random.PRNGKey(seed), shape, jnp.float32)


def uint8_images(shape, seed=0):
    """Float images on the 256 levels k/255, as decoded uint8 data is."""
    levels = np.random.default_rng(seed).integers(0, 256, shape)
    return (levels / 255.0).astype(np.float32)


def key(seed):
    return jax.random.PRNGKey(seed)


# --------------------------------------------------------------------------
# All views: shapes, ranges, randomness, compilation.


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_shape_dtype_range(name, shape):
    images = random_images(shape)
    out = AUGMENTS[name](key(1), images)
    assert out.shape == images.shape and out.dtype == images.dtype
    out = np.asarray(out)
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_non_square_images():
    images = random_images((3, 20, 24, 3))
    out = np.asarray(strong(key(0), images))
    assert out.shape == images.shape
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_same_key_same_output_different_key_different(name):
    images = random_images(GREY_SHAPE)
    first = AUGMENTS[name](key(3), images)
    np.testing.assert_array_equal(first, AUGMENTS[name](key(3), images))
    assert not np.array_equal(first, AUGMENTS[name](key(4), images))


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_samples_get_independent_draws(name):
    one = random_images((1,) + GREY_SHAPE[1:])
    copies = jnp.broadcast_to(one, GREY_SHAPE)
    out = np.asarray(AUGMENTS[name](key(5), copies)).reshape(GREY_SHAPE[0], -1)
    distinct = np.unique(out, axis=0).shape[0]
    assert distinct >= GREY_SHAPE[0] - 1, distinct


def test_compiles_once_for_repeated_calls():
    traces = {"weak": 0, "strong": 0}

    def weak_and_strong(rng, images):
        traces["weak"] += 1
        weak_rng, strong_rng = jax.random.split(rng)
        weak_view = augment.weak_augment(weak_rng, images)
        traces["strong"] += 1
        return weak_view, augment.strong_augment(strong_rng, images)

    step = jax.jit(weak_and_strong)
    images = random_images(GREY_SHAPE)
    for seed in range(3):
        jax.block_until_ready(step(key(seed), images + 0.001 * seed))
    assert traces == {"weak": 1, "strong": 1}


def test_strong_is_cutout_of_randaugment_of_weak():
    images = random_images(GREY_SHAPE, seed=2)
    weak_key, randaugment_key, cutout_key = jax.random.split(key(7), 3)
    composed = cutout(cutout_key,
                      randaugment(randaugment_key, weak(weak_key, images)))
    np.testing.assert_array_equal(strong(key(7), images), composed)


def test_bad_inputs_raise_with_the_fix():
    with pytest.raises(ValueError, match="images\\[None\\]"):
        augment.weak_augment(key(0), jnp.zeros((28, 28, 1)))
    with pytest.raises(ValueError, match="C = 1 .* or C = 3"):
        augment.strong_augment(key(0), jnp.zeros((2, 28, 28, 2)))
    with pytest.raises(TypeError, match="/ 255"):
        augment.randaugment(key(0), jnp.zeros((2, 28, 28, 1), jnp.uint8))
    with pytest.raises(ValueError, match="pad_fraction"):
        augment.weak_augment(key(0), jnp.zeros((2, 8, 8, 1)), pad_fraction=1.0)
    with pytest.raises(ValueError, match="size_fraction"):
        augment.cutout(key(0), jnp.zeros((2, 8, 8, 1)), size_fraction=1.5)


# --------------------------------------------------------------------------
# Weak view: flip + reflect-pad + crop.


def test_weak_without_flip_and_pad_is_identity():
    images = random_images(GREY_SHAPE)
    out = weak(key(0), images, flip=False, pad_fraction=0.0)
    np.testing.assert_array_equal(out, images)


def test_weak_flip_only_gives_the_image_or_its_mirror():
    images = random_images(GREY_SHAPE)
    out = np.asarray(weak(key(2), images, pad_fraction=0.0))
    image, mirror = np.asarray(images), np.asarray(images)[:, :, ::-1]
    is_image = np.all(out == image, axis=(1, 2, 3))
    is_mirror = np.all(out == mirror, axis=(1, 2, 3))
    assert np.all(is_image | is_mirror)
    assert is_image.any() and is_mirror.any()  # both occur among 8 samples


def test_crop_hand_checked():
    image = jnp.arange(20, dtype=jnp.float32).reshape(1, 4, 5, 1)
    # Reflect-padding by 2 maps padded rows -2..5 to rows 2 1 0 1 2 3 2 1 and
    # padded columns -2..6 to columns 2 1 0 1 2 3 4 3 2.
    top_left = [[12, 11, 10, 11, 12], [7, 6, 5, 6, 7], [2, 1, 0, 1, 2],
                [7, 6, 5, 6, 7]]
    bottom_right = [[12, 13, 14, 13, 12], [17, 18, 19, 18, 17],
                    [12, 13, 14, 13, 12], [7, 8, 9, 8, 7]]
    for offset, expected in [((0, 0), top_left), ((4, 4), bottom_right)]:
        out = augment._resample(image, flips=jnp.array([False]),
                                offsets=jnp.array([offset]), pad=2)
        np.testing.assert_array_equal(out[0, :, :, 0], expected)
    centred_flip = augment._resample(image, flips=jnp.array([True]),
                                     offsets=jnp.array([(2, 2)]), pad=2)
    np.testing.assert_array_equal(centred_flip, image[:, :, ::-1])


@pytest.mark.parametrize("shape", [(2, 7, 9, 1), (2, 6, 6, 3)])
def test_crop_matches_numpy_reflect_pad(shape):
    pad = 3
    images = random_images(shape)
    for flip in (False, True):
        for oy in range(2 * pad + 1):
            for ox in (0, 2, 2 * pad):
                out = augment._resample(
                    images, flips=jnp.full((shape[0],), flip),
                    offsets=jnp.tile(jnp.array([[oy, ox]]), (shape[0], 1)),
                    pad=pad)
                source = np.asarray(images)[:, :, ::-1] if flip else np.asarray(images)
                padded = np.pad(source, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                                mode="reflect")
                expected = padded[:, oy:oy + shape[1], ox:ox + shape[2]]
                np.testing.assert_array_equal(out, expected)


# --------------------------------------------------------------------------
# RandAugment ops, one at a time through `apply_op`.


def test_op_values_span_the_table():
    for index, (low, high) in enumerate(augment.FIXMATCH_OP_RANGES):
        np.testing.assert_allclose(augment.op_value(index, 0.0), low)
        np.testing.assert_allclose(augment.op_value(index, 1.0), high, rtol=1e-6)
    bits = np.floor(augment.op_value(OP["Posterize"], np.linspace(0, 0.999, 1000)))
    np.testing.assert_array_equal(np.bincount(bits.astype(int))[4:], [200] * 5)


@pytest.mark.parametrize("shape", [GREY_SHAPE[1:], RGB_SHAPE[1:]])
def test_every_op_stays_in_range(shape):
    image = random_images(shape)
    for index in range(len(augment.FIXMATCH_OPS)):
        for magnitude in (0.0, 0.37, 1.0):
            out = np.asarray(apply_op(image, index,
                                      augment.op_value(index, magnitude)))
            assert out.shape == shape and np.all(np.isfinite(out))
            assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("shape", [GREY_SHAPE[1:], RGB_SHAPE[1:]])
@pytest.mark.parametrize("name, value", [
    ("Identity", 0.0), ("Brightness", 1.0), ("Color", 1.0), ("Contrast", 1.0),
    ("Sharpness", 1.0), ("Rotate", 0.0), ("ShearX", 0.0), ("ShearY", 0.0),
    ("TranslateX", 0.0), ("TranslateY", 0.0), ("Solarize", 1.01),
])
def test_neutral_values_are_identities(name, value, shape):
    image = random_images(shape)
    np.testing.assert_allclose(apply_op(image, OP[name], value), image,
                               atol=1e-6)


def test_color_is_identity_on_grey_images():
    image = random_images(GREY_SHAPE[1:])
    np.testing.assert_allclose(apply_op(image, OP["Color"], 0.2), image,
                               atol=1e-6)


@pytest.mark.parametrize("shape", [GREY_SHAPE[1:], RGB_SHAPE[1:]])
def test_autocontrast_maps_min_to_0_and_max_to_1(shape):
    image = 0.2 + 0.5 * np.asarray(random_images(shape))
    out = np.asarray(apply_op(image, OP["AutoContrast"], 0.0))
    np.testing.assert_allclose(out.min(axis=(0, 1)), 0.0, atol=1e-6)
    np.testing.assert_allclose(out.max(axis=(0, 1)), 1.0, atol=1e-6)
    low, high = image.min(axis=(0, 1)), image.max(axis=(0, 1))
    np.testing.assert_allclose(out, (image - low) / (high - low), atol=1e-5)
    constant = jnp.full(shape, 0.3)
    np.testing.assert_allclose(apply_op(constant, OP["AutoContrast"], 0.0),
                               constant)


@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.5, 0.9])
def test_solarize_inverts_pixels_at_or_above_threshold(threshold):
    image = random_images(RGB_SHAPE[1:])
    expected = np.where(image >= threshold, 1.0 - image, image)
    np.testing.assert_allclose(apply_op(image, OP["Solarize"], threshold),
                               expected, atol=1e-7)


@pytest.mark.parametrize("bits", [1, 4, 5, 7, 8])
def test_posterize_keeps_the_top_bits(bits):
    image = uint8_images(RGB_SHAPE[1:])
    levels = np.round(image * 255).astype(np.uint8)
    expected = (levels & ~np.uint8(2 ** (8 - bits) - 1)) / 255.0
    # value = bits + 0.5 checks that the value is floored to the bit count.
    np.testing.assert_allclose(apply_op(image, OP["Posterize"], bits + 0.5),
                               expected, atol=1e-6)


def test_brightness_and_contrast_formulas():
    image = random_images(RGB_SHAPE[1:])
    np.testing.assert_allclose(apply_op(image, OP["Brightness"], 0.3),
                               0.3 * image, atol=1e-6)
    grey_mean = np.mean(np.asarray(image) @ np.array([0.299, 0.587, 0.114]))
    np.testing.assert_allclose(apply_op(image, OP["Contrast"], 0.3),
                               0.3 * image + 0.7 * grey_mean, atol=1e-5)


def reference_equalize(image):
    """PIL's ImageOps.equalize on uint8 levels, per channel, in numpy."""
    levels = np.round(np.asarray(image) * 255).astype(np.int64)
    out = np.empty_like(levels)
    for channel in range(levels.shape[-1]):
        histogram = np.bincount(levels[..., channel].ravel(), minlength=256)
        nonzero = histogram[histogram > 0]
        step = (nonzero.sum() - nonzero[-1]) // 255
        if step == 0:
            lut = np.arange(256)
        else:
            lut = np.empty(256, np.int64)
            n = step // 2
            for level in range(256):
                lut[level] = min(n // step, 255)
                n += histogram[level]
        out[..., channel] = lut[levels[..., channel]]
    return out / 255.0


@pytest.mark.parametrize("shape", [GREY_SHAPE[1:], RGB_SHAPE[1:]])
def test_equalize_matches_numpy_reference(shape):
    for seed, image in enumerate([
            uint8_images(shape),
            uint8_images(shape, seed=1) ** 3,  # skewed histogram
            np.full(shape, 0.4, np.float32),  # constant: left alone
            (np.arange(np.prod(shape)).reshape(shape) % 2).astype(np.float32)]):
        np.testing.assert_allclose(apply_op(image, OP["Equalize"], 0.0),
                                   reference_equalize(image), atol=1e-6,
                                   err_msg=f"image {seed}")


def test_equalize_flattens_the_histogram():
    image = random_images((64, 64, 1)) ** 3  # most pixels dark
    out = np.asarray(augment._equalize(image[None]))[0]
    before = np.histogram(image, bins=4, range=(0, 1))[0]
    after = np.histogram(out, bins=4, range=(0, 1))[0]
    assert before.max() > 2.5 * before.mean()
    np.testing.assert_allclose(after, after.mean(), rtol=0.1)


def reference_source(name, value, row, col, height, width):
    """The documented source pixel of output (row, col), in float64."""
    r, c = row - (height - 1) / 2, col - (width - 1) / 2
    if name == "Rotate":
        cos, sin = np.cos(np.deg2rad(value)), np.sin(np.deg2rad(value))
        r, c = cos * r + sin * c, -sin * r + cos * c
    elif name == "ShearX":
        c = c + value * r
    elif name == "ShearY":
        r = r + value * c
    elif name == "TranslateX":
        c = c + value * width
    elif name == "TranslateY":
        r = r + value * height
    return r + (height - 1) / 2, c + (width - 1) / 2


def reference_warp(image, source):
    """Nearest-neighbour resampling with grey fill, skipping near-ties.

    Returns the warped image and a mask of the pixels whose source lies within
    1e-3 of a rounding boundary (float32 may round those either way)."""
    height, width = image.shape[:2]
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    src_r, src_c = source(rows.astype(np.float64), cols.astype(np.float64))
    tie = ((np.abs(src_r - np.floor(src_r) - 0.5) < 1e-3)
           | (np.abs(src_c - np.floor(src_c) - 0.5) < 1e-3))
    near_r, near_c = np.floor(src_r + 0.5).astype(int), np.floor(src_c + 0.5).astype(int)
    inside = (near_r >= 0) & (near_r < height) & (near_c >= 0) & (near_c < width)
    out = np.full(image.shape, augment.GREY, np.float32)
    out[inside] = image[near_r[inside], near_c[inside]]
    return out, tie


@pytest.mark.parametrize("shape", [GREY_SHAPE[1:], RGB_SHAPE[1:]])
@pytest.mark.parametrize("name", ["Rotate", "ShearX", "ShearY", "TranslateX",
                                  "TranslateY"])
def test_geometric_ops_match_numpy_reference(name, shape):
    image = np.asarray(random_images(shape))
    for magnitude in (0.0, 0.13, 0.5, 0.81, 1.0):
        value = float(augment.op_value(OP[name], magnitude))
        expected, tie = reference_warp(
            image, lambda r, c: reference_source(name, value, r, c, *shape[:2]))
        out = np.asarray(apply_op(image, OP[name], value))
        assert tie.mean() < 0.05
        np.testing.assert_array_equal(out[~tie], expected[~tie],
                                      err_msg=f"{name} {value}")


@pytest.mark.parametrize("shift", [3, -5])
def test_translate_by_whole_pixels_is_a_shift_with_grey_fill(shift):
    image = np.asarray(random_images(GREY_SHAPE[1:]))
    width = image.shape[1]
    expected = np.full_like(image, augment.GREY)
    if shift > 0:
        expected[:, :width - shift] = image[:, shift:]
    else:
        expected[:, -shift:] = image[:, :width + shift]
    out = apply_op(image, OP["TranslateX"], shift / width)
    np.testing.assert_array_equal(out, expected)
    out = apply_op(np.swapaxes(image, 0, 1), OP["TranslateY"], shift / width)
    np.testing.assert_array_equal(out, np.swapaxes(expected, 0, 1))


def test_rotate_90_is_numpy_rot90():
    image = np.asarray(random_images(RGB_SHAPE[1:]))
    np.testing.assert_array_equal(apply_op(image, OP["Rotate"], 90.0),
                                  np.rot90(image))  # counter-clockwise


def test_geometric_ops_compose_into_one_warp():
    image = np.asarray(random_images(GREY_SHAPE[1:]))
    height, width = image.shape[:2]
    ops = jnp.array([[OP["Rotate"], OP["TranslateY"]]])
    values = jnp.array([[17.0, 0.1]])
    matrix = augment._compose_geometry(ops, values, height, width)
    out = augment._resample(jnp.asarray(image)[None], matrices=matrix)[0]

    def source(r, c):  # Rotate first, then TranslateY: input at S1(S2(p)).
        return reference_source("Rotate", 17.0, *reference_source(
            "TranslateY", 0.1, r, c, height, width), height, width)

    expected, tie = reference_warp(image, source)
    np.testing.assert_array_equal(np.asarray(out)[~tie], expected[~tie])


def test_colour_ops_of_a_mixed_batch_match_one_image_at_a_time():
    # Exercises the per-sample selection, including the blocks of
    # Equalize/Sharpness samples (several blocks, the last one overlapping).
    images = random_images((12, 10, 10, 3), seed=4)
    ops = jnp.array([OP[name] for name in [
        "Equalize", "Sharpness", "Equalize", "Identity", "Equalize", "Contrast",
        "Sharpness", "Equalize", "AutoContrast", "Posterize", "Solarize",
        "Equalize"]])
    values = augment.op_value(ops, jnp.linspace(0.1, 0.9, 12))
    batch = augment._colour_ops(images, ops, values)
    for i in range(12):
        np.testing.assert_allclose(batch[i], apply_op(images[i], ops[i], values[i]),
                                   atol=1e-6, err_msg=augment.FIXMATCH_OPS[ops[i]])


def test_update_selected_in_overlapping_blocks():
    out = jnp.zeros((7, 2, 2, 1))
    selected = jnp.array([True, False, True, True, False, True, True])
    result = augment._update_selected(
        out, selected,
        lambda indices: jnp.broadcast_to(
            (indices + 1.0)[:, None, None, None], (indices.shape[0], 2, 2, 1)),
        block_size=2)
    expected = np.where(selected, np.arange(1.0, 8.0), 0.0)
    np.testing.assert_array_equal(result[:, 0, 0, 0], expected)


def test_randaugment_without_ops_is_identity():
    images = random_images(GREY_SHAPE)
    np.testing.assert_array_equal(randaugment(key(0), images, num_ops=0), images)


# --------------------------------------------------------------------------
# Cross-check of the colour ops against PIL, which FixMatch's code applies.


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_colour_ops_match_pil(shape):
    pil_image_module = pytest.importorskip("PIL.Image")
    from PIL import ImageEnhance, ImageOps

    image = uint8_images(shape, seed=3)
    levels = np.round(image * 255).astype(np.uint8)
    pil = pil_image_module.fromarray(levels[..., 0] if shape[-1] == 1 else levels)

    def pil_result(transformed):
        out = np.asarray(transformed, np.float32) / 255.0
        return out.reshape(shape)

    cases = [
        ("AutoContrast", 0.0, ImageOps.autocontrast(pil), 1.0),
        ("Equalize", 0.0, ImageOps.equalize(pil), 0.0),
        ("Posterize", 5.0, ImageOps.posterize(pil, 5), 0.0),
        ("Solarize", 128 / 255, ImageOps.solarize(pil, 128), 0.0),
        ("Brightness", 0.3, ImageEnhance.Brightness(pil).enhance(0.3), 1.5),
        ("Color", 0.3, ImageEnhance.Color(pil).enhance(0.3), 1.5),
        ("Contrast", 0.3, ImageEnhance.Contrast(pil).enhance(0.3), 1.5),
        ("Sharpness", 0.3, ImageEnhance.Sharpness(pil).enhance(0.3), 1.5),
    ]
    for name, value, expected, levels_off in cases:
        out = np.asarray(apply_op(image, OP[name], value))
        # PIL rounds or truncates to uint8, the blends twice (the degenerate
        # image, then the blend; Contrast also rounds the mean); the float ops
        # here do not, so they may differ by one level, a little more for blends.
        np.testing.assert_allclose(out, pil_result(expected),
                                   atol=(levels_off + 0.01) / 255, err_msg=name)


# --------------------------------------------------------------------------
# Cutout.


def test_cutout_mask_hand_checked():
    masks = np.asarray(augment._cutout_mask(
        6, 6, jnp.array([[0, 0], [3, 3], [5, 2]]), side=4))
    expected = np.zeros((3, 6, 6), bool)
    expected[0, 0:2, 0:2] = True  # clipped at the top-left corner
    expected[1, 1:5, 1:5] = True  # the full 4x4 square
    expected[2, 3:6, 0:4] = True  # clipped at the bottom
    np.testing.assert_array_equal(masks, expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_cutout_sets_one_square_to_grey_and_nothing_else(shape):
    images = 0.4 * random_images(shape)  # no pixel is grey yet
    out = np.asarray(cutout(key(9), images))
    side = int(np.floor(0.5 * shape[1] + 0.5))
    changed = np.any(out != np.asarray(images), axis=-1)
    for sample in range(shape[0]):
        rows, cols = np.nonzero(changed[sample])
        assert rows.size > 0
        assert np.all(out[sample][changed[sample]] == augment.GREY)
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert rows.size == height * width  # a filled rectangle
        assert height <= side and width <= side
        # Clipping only happens at the image border.
        assert height == side or rows.min() == 0 or rows.max() == shape[1] - 1
        assert width == side or cols.min() == 0 or cols.max() == shape[2] - 1


def test_cutout_of_size_zero_is_identity():
    images = random_images(GREY_SHAPE)
    np.testing.assert_array_equal(cutout(key(0), images, size_fraction=0.0),
                                  images)


# -- self-supervised views --------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 28, 20, 1), (4, 32, 32, 3)])
def test_random_resized_crop_is_pils_bilinear_resize_of_the_box(shape):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.random(shape).astype(np.float32)
    key = jax.random.PRNGKey(3)
    out = np.asarray(augment.random_resized_crop(key, images, scale=(0.1, 0.9)))
    boxes = np.asarray(augment.crop_boxes(key, shape[0], shape[1], shape[2], scale=(0.1, 0.9)))
    assert out.shape == shape and out.dtype == np.float32
    for image, view, (top, left, h, w) in zip(images, out, boxes):
        assert 0 <= top and top + h <= shape[1] + 1e-4 and 0 <= left and left + w <= shape[2] + 1e-4
        for c in range(shape[3]):
            reference = Image.fromarray(image[:, :, c], mode="F").resize(
                (shape[2], shape[1]), Image.BILINEAR, box=(left, top, left + w, top + h))
            np.testing.assert_allclose(view[:, :, c], np.asarray(reference), atol=1e-5)


def test_crop_boxes_follow_the_area_and_ratio_ranges():
    boxes = np.asarray(augment.crop_boxes(jax.random.PRNGKey(0), 4000, 28, 28,
                                          scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)))
    area = boxes[:, 2] * boxes[:, 3] / 28 ** 2
    unclipped = (boxes[:, 2] < 28) & (boxes[:, 3] < 28)
    assert area.min() >= 0.2 - 1e-5 and area.max() <= 1.0 + 1e-5
    ratio = boxes[unclipped, 3] / boxes[unclipped, 2]
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    assert abs(np.median(area) - 0.6) < 0.05          # roughly uniform on [0.2, 1]


def test_contrastive_view_identity_settings_and_randomness():
    images = np.random.default_rng(1).random((8, 28, 28, 1)).astype(np.float32)
    key = jax.random.PRNGKey(0)
    # A full-image box at ratio 1 samples every pixel at its own centre.
    identity = augment.random_resized_crop(key, images, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(np.asarray(identity), images, atol=1e-6)
    views = np.asarray(augment.contrastive_view(key, images))
    again = np.asarray(augment.contrastive_view(key, images))
    other = np.asarray(augment.contrastive_view(jax.random.PRNGKey(1), images))
    assert views.shape == images.shape and views.min() >= 0 and views.max() <= 1
    np.testing.assert_array_equal(views, again)
    assert not np.allclose(views, other)
