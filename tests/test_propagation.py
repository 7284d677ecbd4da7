"""Label propagation (npc_jax.ssl.propagation) against dense references, hand cases,
and the training's use of it (TrainConfig.pseudo_labels)."""
import dataclasses

import jax
import numpy as np
import pytest

from npc_jax import train
from npc_jax.models import get_model
from npc_jax.ssl import fixmatch, propagation


def _dense_propagation(graph, labeled, labels, num_classes, alpha, balance):
    """The closed form on a dense matrix: Z = (I − αS)⁻¹ Y, clipped, columns
    scaled to equal mass (balance), rows normalised."""
    n = len(graph.indices)
    w = np.zeros((n, n))
    for i in range(n):
        for j, weight in zip(graph.indices[i], graph.weights[i]):
            w[i, j] += weight
    w = w + w.T
    d = w.sum(1)
    s = w / np.sqrt(np.outer(d, d))
    y = np.zeros((n, num_classes))
    y[labeled, labels] = 1.0
    z = np.maximum(np.linalg.solve(np.eye(n) - alpha * s, y), 0.0)
    if balance:
        z = z / z.sum(0, keepdims=True)
    z = z / z.sum(1, keepdims=True)
    z[labeled] = np.eye(num_classes)[labels]
    return z


def test_knn_graph_is_the_brute_force_cosine_neighbourhood():
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    graph = propagation.knn_graph(x, k=4, gamma=3.0, block_rows=16)   # blocks cut rows
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    for i in range(50):
        expected = np.argsort(-sim[i])[:4]
        assert set(graph.indices[i]) == set(expected)
        np.testing.assert_allclose(graph.weights[i], np.maximum(sim[i, graph.indices[i]], 0) ** 3,
                                   rtol=1e-5, atol=1e-7)
    assert (graph.indices != np.arange(50)[:, None]).all()


@pytest.mark.parametrize("balance", [False, True])
def test_propagate_solves_the_linear_system_of_zhou_et_al(balance):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    graph = propagation.knn_graph(x, k=5, gamma=1.0)
    labeled = np.array([3, 17, 29, 41, 50, 8])
    labels = np.array([0, 1, 2, 1, 0, 0])   # unequal class counts: balance matters
    got = propagation.propagate(graph, labeled, labels, 3, alpha=0.9, iterations=200,
                                balance=balance)
    expected = _dense_propagation(graph, labeled, labels, 3, 0.9, balance)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_two_separate_clusters_take_the_label_of_their_own_seed():
    rng = np.random.default_rng(2)
    centres = np.array([[1.0, 0, 0], [0, 0, 1.0]])
    x = np.concatenate([centres[0] + 0.05 * rng.normal(size=(20, 3)),
                        centres[1] + 0.05 * rng.normal(size=(20, 3))])
    graph = propagation.knn_graph(x, k=5)
    out = propagation.propagate(graph, [0, 25], [1, 0], 2)
    np.testing.assert_array_equal(out.argmax(1), [1] * 20 + [0] * 20)
    # No edge joins the clusters (cosine < 0 weighs 0), so each row is certain.
    np.testing.assert_allclose(propagation.certainty(out), 1.0, atol=1e-5)


def test_class_mass_normalisation_stops_a_class_with_more_labels_swamping_the_rest():
    """A chain of 20 points, class 0 labeled at 3 points of its half, class 1 at one
    point of its half: without balancing class 0 claims points of class 1's half."""
    x = np.stack([np.cos(np.linspace(0, 1.2, 20)), np.sin(np.linspace(0, 1.2, 20))], 1)
    graph = propagation.knn_graph(x, k=2, gamma=1.0)
    labeled, labels = [0, 1, 2, 19], [0, 0, 0, 1]
    raw = propagation.propagate(graph, labeled, labels, 2, alpha=0.99, balance=False)
    balanced = propagation.propagate(graph, labeled, labels, 2, alpha=0.99)
    assert (balanced.argmax(1) == 1).sum() > (raw.argmax(1) == 1).sum()


def test_certainty_is_one_for_one_hot_and_zero_for_uniform():
    p = np.array([[1.0, 0, 0, 0], [0.25] * 4, [0.5, 0.5, 0, 0]])
    np.testing.assert_allclose(propagation.certainty(p), [1.0, 0.0, 0.5], atol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda g: propagation.knn_graph(np.full((5, 2), np.nan), 2), "NaN"),
    (lambda g: propagation.knn_graph(np.ones((5, 2)), 5), "k = 5"),
    (lambda g: propagation.propagate(g, [0], [3], 3), r"\[0, 3\)"),
    (lambda g: propagation.propagate(g, [], [], 3), "at least one"),
    (lambda g: propagation.propagate(g, [0], [0], 3, alpha=1.0), "singular"),
])
def test_bad_input_is_refused_with_the_fix(call, message):
    graph = propagation.knn_graph(np.random.default_rng(0).normal(size=(10, 3)), 3)
    with pytest.raises(ValueError, match=message):
        call(graph)


def test_weighted_pseudo_label_loss_matches_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    p = rng.dirichlet(np.ones(4) * 0.5, size=6).astype(np.float32)
    p[0] = [1, 0, 0, 0]
    loss, info = fixmatch.weighted_pseudo_label_loss(logits, p)
    weight = propagation.certainty(p)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = np.mean(-weight * log_softmax[np.arange(6), p.argmax(1)])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(info.mask), weight, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(info.pseudo_labels), p.argmax(1))


def _toy(n=64):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n).astype(np.int32)
    images = rng.uniform(0, 0.3, (n, 28, 28, 1)).astype(np.float32)
    for i, y in enumerate(labels):
        images[i, (slice(4, 10) if y == 0 else slice(18, 24)), 4:24] = 1.0
    return images, labels


@pytest.mark.parametrize("source", ["propagated", "product"])
def test_training_on_propagated_targets_learns(source):
    images, labels = _toy()
    labeled = np.array([i for c in (0, 1) for i in np.flatnonzero(labels == c)[:2]])
    graph = propagation.knn_graph(images.reshape(len(images), -1), 5)
    propagated = propagation.propagate(graph, labeled, labels[labeled], 2)
    assert (propagated.argmax(1) == labels).mean() > 0.9   # the toy's bars are easy
    config = train.TrainConfig(steps=30, batch_size=8, mu=2, ema_decay=0.9, threshold=0.7,
                               chunk_steps=10, eval_batch_size=64, pseudo_labels=source)
    data = train.make_train_data(images, labeled, labels[labeled], diagnostic_labels=labels,
                                 propagated=propagated)
    state, history = train.train(get_model("cnn", 2), config, data, jax.random.PRNGKey(0))
    assert np.isfinite(history[-1]["loss"]) and history[-1]["loss_unlabeled"] > 0
    if source == "propagated":   # the targets are the propagated labels: right on this toy
        assert history[-1]["pseudo_label_accuracy"] > 0.9


def test_propagated_pseudo_labels_need_the_propagation():
    images, labels = _toy(16)
    data = train.make_train_data(images, np.arange(4), labels[:4])
    config = train.TrainConfig(steps=2, batch_size=4, mu=1, pseudo_labels="propagated")
    with pytest.raises(ValueError, match="TrainData.propagated"):
        train.train(get_model("cnn", 2), config, data, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="pseudo_labels must be one of"):
        dataclasses.replace(config, pseudo_labels="labels")
