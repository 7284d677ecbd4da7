"""FixMatch-DARP and supervised training on tiny problems."""
import dataclasses

import jax
import numpy as np
import pytest

from npc_jax import inference, train
from npc_jax.models import get_model


def _toy_images(n, seed=0):
    """Two classes told apart by where a bright bar is: top (0) or bottom (1) half."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.uniform(0, 0.3, (n, 28, 28, 1)).astype(np.float32)
    for i, y in enumerate(labels):
        rows = slice(4, 10) if y == 0 else slice(18, 24)
        images[i, rows, 4:24] = 1.0
    return images, labels.astype(np.int32)


TINY = train.TrainConfig(steps=40, batch_size=8, mu=2, lr=0.03, ema_decay=0.9,
                         threshold=0.7, darp_warmup=0.25, darp_every=5, chunk_steps=10,
                         eval_batch_size=64)


@pytest.mark.parametrize("method", ["fixmatch", "supervised"])
def test_training_lowers_the_loss_and_learns(method):
    images, labels = _toy_images(96)
    labeled = np.array([i for c in (0, 1) for i in np.flatnonzero(labels == c)[:4]])
    data = train.make_train_data(images, labeled, labels[labeled], diagnostic_labels=labels)
    config = dataclasses.replace(TINY, method=method)
    model = get_model("cnn", 2)
    state, history = train.train(model, config, data, jax.random.PRNGKey(0))
    assert len(history) == 4 and history[-1]["step"] == 40
    assert history[-1]["loss_labeled"] < history[0]["loss_labeled"]
    accuracy = inference.evaluate(model, state.eval_variables, images, labels)
    assert accuracy > 0.8
    # What the unlabeled loss and DARP contribute is tested in test_fixmatch.py.


def test_a_training_compiles_its_step_once_and_is_deterministic():
    images, labels = _toy_images(32)
    data = train.make_train_data(images, np.arange(6), labels[:6])
    model = get_model("cnn", 2)
    config = dataclasses.replace(TINY, steps=6, chunk_steps=2)
    compiled_before = train.train_step._cache_size()
    a, _ = train.train(model, config, data, jax.random.PRNGKey(1))
    assert train.train_step._cache_size() == compiled_before + 1
    b, _ = train.train(model, config, data, jax.random.PRNGKey(1))
    assert train.train_step._cache_size() == compiled_before + 1
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_weight_decay_applies_to_kernels_only():
    model = get_model("cnn", 3)
    params = model.init(jax.random.PRNGKey(0))["params"]
    config = train.TrainConfig(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.5)
    tx = train.make_optimizer(config)
    zero = jax.tree_util.tree_map(np.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    originals = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, update in flat:
        if path[-1].key == "kernel":
            np.testing.assert_allclose(update, -0.1 * 0.5 * originals[path], rtol=1e-6)
        else:
            assert not np.any(update)


def test_cosine_schedule_and_config_errors():
    schedule = train.cosine_7_16(0.03, 100)
    assert float(schedule(0)) == pytest.approx(0.03)
    assert float(schedule(100)) == pytest.approx(0.03 * np.cos(7 * np.pi / 16), rel=1e-5)
    with pytest.raises(ValueError, match="method"):
        train.TrainConfig(method="mixmatch")
    with pytest.raises(ValueError, match="steps"):
        train.TrainConfig(steps=0)
    for field, value in (("threshold", 1.5), ("threshold", -0.1), ("lr", 0.0),
                         ("lambda_u", -1.0), ("momentum", 1.5), ("darp_warmup", 2.0),
                         ("weight_decay", float("nan"))):
        with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
            train.TrainConfig(**{field: value})
    with pytest.raises(ValueError, match="at least one labeled"):
        train.make_train_data(np.zeros((4, 28, 28, 1)), [], [])


def test_batched_apply_pads_the_last_batch():
    model = get_model("cnn", 2)
    variables = model.init(jax.random.PRNGKey(0))
    images, _ = _toy_images(23)
    whole = np.asarray(model.apply_fn(variables, images))
    chunked = inference.batched_apply(model.apply_fn, variables, images, batch_size=10)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)


def test_recalibrated_statistics_make_inference_match_train_mode_on_that_batch():
    model = get_model("cnn", 2)
    variables = model.init(jax.random.PRNGKey(0))
    images, _ = _toy_images(16)
    stats = train.recalibrate_batch_stats(model, variables, images, jax.random.PRNGKey(1),
                                          num_batches=1, batch_size=16)
    recalibrated = {**variables, "batch_stats": stats}
    train_mode_logits, _ = model.apply_train(variables, images)
    np.testing.assert_allclose(model.apply_fn(recalibrated, images), train_mode_logits,
                               rtol=1e-4, atol=1e-4)
    assert not np.allclose(model.apply_fn(variables, images), train_mode_logits, atol=1e-3)


def test_encoder_is_frozen_then_scaled_while_the_classifier_learns():
    from npc_jax.models import CLASSIFIER

    model = get_model("cnn", 3)
    params = model.init(jax.random.PRNGKey(0))["params"]
    config = train.TrainConfig(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0,
                               steps=10, freeze_encoder_fraction=0.3, encoder_lr_scale=0.5)
    tx = train.make_optimizer(config)
    ones = jax.tree_util.tree_map(np.ones_like, params)
    state = tx.init(params)
    for step in range(5):
        updates, state = tx.update(ones, state, params)
        lr = 0.1 * np.cos(7 * np.pi * step / (16 * 10))
        for name, subtree in updates.items():
            want = -lr * (1.0 if name == CLASSIFIER else (0.0 if step < 3 else 0.5))
            for leaf in jax.tree_util.tree_leaves(subtree):
                np.testing.assert_allclose(np.asarray(leaf), want, rtol=1e-5, atol=1e-8)
