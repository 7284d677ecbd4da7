import jax
import jax.numpy as jnp
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
