"""Inference over many samples, in fixed-size chunks: pad, jit once, slice.

Every pass of a model (or of any per-sample function) over a pool, a test
split or a set of candidate batches goes through `chunked_map`: the last
chunk is padded with copies of its last row so that one compilation serves
every chunk, outputs are moved to the host and sliced back to the real rows.
Memory: one chunk on the device, the (reduced) outputs on the host.

    logits = inference.batched_apply(model.apply_fn, variables, images)   # (N, C)
    accuracy = inference.evaluate(model, variables, images, labels)

Also here, because every layer above needs them: `check_finite` (the one
NaN/inf guard, naming the rows and the fix) and `numpy_rng` (a numpy
Generator from a JAX key, for host-side sampling).
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

import jax
import numpy as np

from npc_jax.data import images_to_float

if TYPE_CHECKING:   # the type only: inference stays free of flax
    from npc_jax.models import Model

__all__ = ["NonFiniteError", "batched_apply", "check_finite", "chunked_map", "evaluate",
           "numpy_rng", "pad_rows", "predict"]


class NonFiniteError(FloatingPointError, ValueError):
    """A model output, gradient or kernel holds NaN or inf."""


def numpy_rng(key: jax.Array) -> np.random.Generator:
    """A numpy Generator seeded from a JAX key: deterministic per key.

    Host-side sampling (q of N without replacement) is O(q) in numpy where a
    JAX permutation costs O(N).
    """
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def check_finite(values, what: str, *, indices=None,
                 fix: str = "check the training loss, the learning rate and the inputs") -> None:
    """Raises `NonFiniteError` if `values` holds NaN or inf.

    Args:
      values: (n, ...) array (numpy or jax).
      what: what the values are, for the message ("logits", "the NTK").
      indices: (n,) the pool indices of the rows, named in the message.
      fix: what to check, for the message.
    """
    values = np.asarray(values)
    if values.size == 0 or np.all(np.isfinite(values)):
        return
    where = ""
    if indices is not None and values.ndim >= 1:
        bad_rows = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        bad = np.asarray(indices)[bad_rows]
        where = f" for {bad.size} pool samples (e.g. indices {bad[:5].tolist()})"
    raise NonFiniteError(f"Non-finite {what}{where}: the model diverged or the inputs hold "
                         f"NaN/inf; {fix}.")


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    """`x` (n, ...) padded to (size, ...) with copies of its last row (n ≥ 1)."""
    missing = size - len(x)
    return x if missing <= 0 else np.concatenate([x, np.repeat(x[-1:], missing, 0)])


def chunked_map(fn: Callable[..., Any], *arrays, chunk_size: int):
    """``fn(*chunks) -> pytree of (chunk_size, ...)`` over arrays of N rows.

    Args:
      fn: a function of `len(arrays)` arrays sharing their leading axis,
        returning a pytree of arrays with that leading axis; called with
        exactly `chunk_size` rows each time (so a jitted `fn` compiles once).
      *arrays: (N, ...) arrays, indexed on the host chunk by chunk.
      chunk_size: rows per call.

    Returns:
      The pytree of `fn`'s outputs, as numpy arrays of N rows.
    """
    if int(chunk_size) != chunk_size or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"chunked_map needs arrays of one length, got "
                         f"{[len(a) for a in arrays]}.")
    if n == 0:   # e.g. the labeled set of a zero-shot round
        probe = [jax.ShapeDtypeStruct((chunk_size, *np.shape(a)[1:]), np.asarray(a).dtype)
                 for a in arrays]
        shapes = jax.eval_shape(fn, *probe)
        return jax.tree_util.tree_map(lambda s: np.zeros((0, *s.shape[1:]), s.dtype), shapes)
    outputs = []
    for start in range(0, n, chunk_size):
        chunks = [np.asarray(a[start:start + chunk_size]) for a in arrays]
        real = len(chunks[0])
        out = fn(*[pad_rows(c, chunk_size) for c in chunks])
        outputs.append(jax.tree_util.tree_map(lambda o: np.asarray(o)[:real], out))
    if len(outputs) == 1:
        return outputs[0]
    return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *outputs)


def batched_apply(fn: Callable, variables, images, *, batch_size: int = 1000):
    """``fn(variables, float_images) -> pytree of (B, ...)`` over N images.

    `fn` should be a stable callable (a module-level function or a bound
    method of a hashable object, e.g. ``model.apply_with_features``): its
    jitted version is cached by identity. Images are uint8 or floats in
    [0, 1], converted on the device.

    Returns:
      The pytree of outputs, numpy, N rows.
    """
    jitted = _jit_apply(fn)
    return chunked_map(functools.partial(jitted, variables), np.asarray(images),
                       chunk_size=batch_size)


@functools.lru_cache(maxsize=64)
def _jit_apply(fn):
    return jax.jit(lambda variables, x: fn(variables, images_to_float(x)))


def predict(model: "Model", variables, images, *, batch_size: int = 1000) -> np.ndarray:
    """Inference-mode class predictions: (N,) int."""
    logits = batched_apply(model.apply_fn, variables, images, batch_size=batch_size)
    return np.argmax(logits, axis=-1)


def evaluate(model: "Model", variables, images, labels, *, batch_size: int = 1000) -> float:
    """Top-1 accuracy in [0, 1] of the inference-mode model on (images (N, ...), labels (N,))."""
    predictions = predict(model, variables, images, batch_size=batch_size)
    return float(np.mean(predictions == np.asarray(labels)))
