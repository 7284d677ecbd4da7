import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from npc_jax.models import CLASSIFIER, count_params, get_model


def test_small_cnn_shapes_and_views():
    model = get_model("cnn", 10)
    variables = model.init(jax.random.PRNGKey(0))
    assert 90_000 <= count_params(variables["params"]) <= 110_000
    assert CLASSIFIER in variables["params"]
    x = jax.random.uniform(jax.random.PRNGKey(1), (5, 28, 28, 1))
    logits = model.apply_fn(variables, x)
    logits2, features = model.apply_with_features(variables, x)
    assert logits.shape == (5, 10) and features.shape == (5, 128)
    np.testing.assert_array_equal(logits, logits2)
    # The classifier is the last layer: logits = features @ W + b.
    head = variables["params"][CLASSIFIER]
    np.testing.assert_allclose(features @ head["kernel"] + head["bias"], logits, rtol=1e-5,
                               atol=1e-5)


def test_inference_mode_is_per_sample_and_train_mode_updates_statistics():
    model = get_model("cnn", 3)
    variables = model.init(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, 28, 28, 1))
    # Inference mode: a sample's logits do not depend on the rest of the batch.
    np.testing.assert_allclose(model.apply_fn(variables, x)[:2], model.apply_fn(variables, x[:2]),
                               rtol=1e-5, atol=1e-6)
    _, new_stats = model.apply_train(variables, x)
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                     variables["batch_stats"], new_stats)
    assert all(jax.tree_util.tree_leaves(changed))


def test_other_input_shapes_and_errors():
    model = get_model("cnn", 100, input_shape=(32, 32, 3))
    variables = model.init(jax.random.PRNGKey(0))
    assert model.apply_fn(variables, jnp.zeros((2, 32, 32, 3))).shape == (2, 100)
    with pytest.raises(ValueError, match="Unknown model 'resnet'"):
        get_model("resnet", 10)
    with pytest.raises(ValueError, match="num_classes"):
        get_model("cnn", 1)


def test_grid_pooling_keeps_layout_where_global_pooling_does_not():
    """cnn_grid's dense layer reads a 3x3 grid of 3x3 window means (stride 2) of
    the last (7, 7, 64) activation, checked against numpy; a mirrored image
    moves the grid features."""
    model = get_model("cnn_grid", 10)
    variables = model.init(jax.random.PRNGKey(0))
    assert variables["params"]["hidden"]["kernel"].shape[0] == 3 * 3 * 64
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 28, 28, 1))
    seen = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.module.name in ("bn3", "hidden") and context.method_name == "__call__":
            seen[context.module.name] = (args[0], out)
        return out

    with nn.intercept_methods(record):
        model.apply_fn(variables, x)
    last_map = np.maximum(np.asarray(seen["bn3"][1]), 0.0)          # (2, 7, 7, 64)
    assert last_map.shape == (2, 7, 7, 64)
    reference = np.stack([last_map[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].mean((1, 2))
                          for i in range(3) for j in range(3)], axis=1)   # (2, 9, 64)
    np.testing.assert_allclose(np.asarray(seen["hidden"][0]), reference.reshape(2, -1),
                               rtol=1e-5, atol=1e-6)
    mirrored = model.apply_with_features(variables, x[:1, :, ::-1])[1]
    original = model.apply_with_features(variables, x[:1])[1]
    assert float(jnp.abs(mirrored - original).max()) > 1e-3
    with pytest.raises(ValueError, match="pooling must be 'global' or 'grid'"):
        get_model("cnn", 10, pooling="max").init(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def wrn():
    model = get_model("wrn28_2", 10, input_shape=(32, 32, 3))
    return model, model.init(jax.random.PRNGKey(0))


def test_wrn28_2_matches_fixmatch_architecture(wrn):
    model, variables = wrn
    params = variables["params"]
    # FixMatch's WRN-28-2 (no conv biases): 1,467,610 parameters for 10 classes.
    assert count_params(params) == 1_467_610
    assert count_params(get_model("wrn28_2", 100, (32, 32, 3)).init(
        jax.random.PRNGKey(0))["params"]) == 1_467_610 + 90 * 128 + 90
    blocks = sorted(k for k in params if k.startswith("group"))
    assert len(blocks) == 12   # 3 groups of (28 - 4) / 6 = 4 blocks
    # 1x1 projections exactly where the width or resolution changes.
    assert sorted(k for k in blocks if "shortcut" in params[k]) == [
        "group0_block0", "group1_block0", "group2_block0"]
    assert params["group2_block3"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    assert params[CLASSIFIER]["kernel"].shape == (128, 10)
    assert model.module.bn_momentum == 0.999
    # He-normal on fan-out for leaky ReLU(0.1): std = sqrt(2 / (1.01 * 9 * 128)).
    kernel = np.asarray(params["group2_block3"]["conv1"]["kernel"])
    np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (1.01 * 9 * 128)), rtol=0.05)


def test_wrn_views_and_bfloat16_compute_agree(wrn):
    model, variables = wrn
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 32, 32, 3))
    logits, features = model.apply_with_features(variables, x)
    assert logits.shape == (4, 10) and features.shape == (4, 128)
    assert logits.dtype == jnp.float32
    _, stats = model.apply_train(variables, x)
    variables = {"params": variables["params"], "batch_stats": stats}
    half = get_model("wrn28_2", 10, input_shape=(32, 32, 3), dtype=jnp.bfloat16)
    full_logits = model.apply_fn(variables, x)
    half_logits = half.apply_fn(variables, x)
    assert half_logits.dtype == jnp.float32
    scale = float(jnp.abs(full_logits).max())
    np.testing.assert_allclose(half_logits, full_logits, atol=0.05 * scale)
    assert not np.array_equal(half_logits, full_logits)   # bf16 really ran
