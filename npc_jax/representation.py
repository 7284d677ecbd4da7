"""How good is a representation for few labels? kNN, linear probe, PCA baseline.

The field's yardsticks for a self-supervised encoder, here with few labels:
draw L labeled examples per class from the pool (several seeded draws), fit
on their features, measure accuracy on held-out images.

* `knn_accuracy`: cosine-similarity kNN with similarity-weighted votes
  (weights exp(s/0.07), k = min(20, labeled)), as in instance discrimination
  and SimCLR's kNN monitor.
* `linear_probe_accuracy`: multinomial logistic regression on standardised
  features (mean/std of the whole pool: no label needed), L2-regularised,
  full-batch L-BFGS.
* `pca_projection` + `nearest_centroid_accuracy`: the raw-pixel baseline a
  learner must clear: a nearest class centroid on the 50-d PCA of the pool's
  pixels.

Memory: similarities are computed for chunks of query rows (chunk × labeled),
never all pairs.
"""
from __future__ import annotations

import functools

import numpy as np

from npc_jax.inference import batched_apply

__all__ = [
    "draw_labeled",
    "embed",
    "knn_accuracy",
    "linear_probe_accuracy",
    "nearest_centroid_accuracy",
    "pca_projection",
    "pixels",
]


def draw_labeled(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of `per_class` random examples of every class (all if None), sorted."""
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
              for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def embed(model, variables, images: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
    """(N, D) float32 penultimate features of the inference-mode network."""
    _, features = batched_apply(model.apply_with_features, variables, images,
                                batch_size=batch_size)
    return np.asarray(features, np.float32)


def pixels(images: np.ndarray) -> np.ndarray:
    """(N, H·W·C) float32 in [0, 1]."""
    images = np.asarray(images)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return images.reshape(len(images), -1).astype(np.float32) / scale


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray,
                 query_features: np.ndarray, query_labels: np.ndarray, *,
                 k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> float:
    """Accuracy of weighted cosine kNN (k = min(k, number of labeled examples)).

    Args:
      train_features: (L, D) features of the labeled examples; train_labels (L,) int.
      query_features: (M, D); query_labels: (M,) int.

    Returns:
      Accuracy in [0, 1].
    """
    train = _normalise(np.asarray(train_features, np.float32))
    query = _normalise(np.asarray(query_features, np.float32))
    train_labels = np.asarray(train_labels)
    num_classes = int(max(train_labels.max(), np.max(query_labels))) + 1
    k = min(k, len(train))
    correct = 0
    for start in range(0, len(query), chunk):
        sims = query[start:start + chunk] @ train.T                       # (m, L)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        weights = np.exp(np.take_along_axis(sims, top, 1) / temperature)
        votes = np.zeros((len(sims), num_classes))
        np.add.at(votes, (np.arange(len(sims))[:, None], train_labels[top]), weights)
        correct += int(np.sum(votes.argmax(1) == query_labels[start:start + chunk]))
    return correct / len(query)


def linear_probe_accuracy(train_features: np.ndarray, train_labels: np.ndarray,
                          query_features: np.ndarray, query_labels: np.ndarray, *,
                          mean: np.ndarray, std: np.ndarray, l2: float = 1e-2,
                          iterations: int = 200) -> float:
    """Accuracy of an L2-regularised softmax regression on standardised features.

    Args:
      train_features, train_labels: (L, D), (L,) the labeled examples.
      query_features, query_labels: (M, D), (M,).
      mean, std: (D,) standardisation (of the whole pool, label-free).
      l2: weight of ½‖W‖² (bias unregularised), relative to the mean loss.
      iterations: L-BFGS iterations (full batch).

    Returns:
      Accuracy in [0, 1].
    """
    scale = np.where(std > 0, std, 1.0)
    num_classes = int(max(int(np.max(train_labels)), int(np.max(query_labels)))) + 1
    w, b = _fit_softmax_regression(((train_features - mean) / scale).astype(np.float32),
                                   np.asarray(train_labels, np.int32), float(l2),
                                   num_classes=num_classes, iterations=int(iterations))
    query = (np.asarray(query_features) - mean) / scale
    predictions = np.argmax(query @ w + b, 1)
    return float(np.mean(predictions == np.asarray(query_labels)))


def pca_projection(pool_pixels: np.ndarray, *, dims: int = 50, fit_samples: int = 10_000,
                   seed: int = 0):
    """A `dims`-d PCA fitted (label-free) on `fit_samples` random pool images.

    Returns:
      ``project(pixels (M, P)) -> (M, dims)`` float64.
    """
    rng = np.random.default_rng(seed)
    fit = pool_pixels[rng.choice(len(pool_pixels), min(fit_samples, len(pool_pixels)),
                                 replace=False)].astype(np.float64)
    mean = fit.mean(0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    basis = vt[:dims].T
    return lambda pixels: (pixels - mean) @ basis


def nearest_centroid_accuracy(train_features: np.ndarray, train_labels: np.ndarray,
                              query_features: np.ndarray, query_labels: np.ndarray) -> float:
    """Accuracy of the nearest class mean (Euclidean) of the labeled examples."""
    classes = np.unique(train_labels)
    centroids = np.stack([train_features[train_labels == c].mean(0) for c in classes])
    distances = ((query_features[:, None, :] - centroids[None]) ** 2).sum(-1)
    return float(np.mean(classes[distances.argmin(1)] == query_labels))


@functools.lru_cache(maxsize=1)
def _regression_solver():
    """The jitted L-BFGS fit, built once (compiled once per input shape)."""
    import jax
    import jax.numpy as jnp
    import optax

    @functools.partial(jax.jit, static_argnames=("num_classes", "iterations"))
    def fit(x, y, l2, *, num_classes, iterations):
        params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}

        def loss(p):
            logits = x @ p["w"] + p["b"]
            return (jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
                    + 0.5 * l2 * jnp.sum(p["w"] ** 2))

        solver = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(loss)

        def step(carry, _):
            p, state = carry
            value, grad = value_and_grad(p, state=state)
            updates, state = solver.update(grad, state, p, value=value, grad=grad,
                                           value_fn=loss)
            return (optax.apply_updates(p, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, solver.init(params)), None,
                                      length=iterations)
        return params["w"], params["b"]

    return fit


def _fit_softmax_regression(x, y, l2, *, num_classes, iterations):
    w, b = _regression_solver()(x, y, l2, num_classes=num_classes, iterations=iterations)
    return np.asarray(w), np.asarray(b)
