"""Smallest eigenvalues of Gram matrices.

A Gram matrix is positive semi-definite; `eigvalsh` can still return tiny
negative values from round-off. They are clipped at 0 here, so a degenerate
matrix (duplicate points, rank deficiency) scores exactly 0 and compares
equal to any other degenerate one.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _min_eig(stack):
    return jnp.maximum(jnp.linalg.eigvalsh(stack)[..., 0], 0.0)


def min_eigenvalue(gram, *, chunk_size: int = 256) -> np.ndarray:
    """λ_min of one (n, n) or a stack (b, n, n) of symmetric PSD matrices.

    Args:
      gram: (n, n) or (b, n, n) float array; must be finite.
      chunk_size: matrices per eigvalsh call (bounds memory for large b).

    Returns:
      () or (b,) float32 numpy array, clipped below at 0.
    """
    gram = np.asarray(gram, np.float32)
    if gram.ndim not in (2, 3) or gram.shape[-1] != gram.shape[-2]:
        raise ValueError(f"Expected (n, n) or (b, n, n) Gram matrices, got shape {gram.shape}.")
    if not np.all(np.isfinite(gram)):
        raise FloatingPointError(
            "Gram matrix has NaN/inf entries: the model or its features are not finite "
            "(check the training loss and the inputs).")
    if gram.ndim == 2:
        return np.asarray(_min_eig(gram))
    out = [np.asarray(_min_eig(_pad_stack(gram[i:i + chunk_size], chunk_size)))
           [:len(gram[i:i + chunk_size])] for i in range(0, len(gram), chunk_size)]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def _pad_stack(stack, size):
    # Pad with identity matrices so every call has the same shape (one compile).
    missing = size - len(stack)
    if missing <= 0:
        return stack
    eye = np.broadcast_to(np.eye(stack.shape[-1], dtype=stack.dtype), (missing, *stack.shape[1:]))
    return np.concatenate([stack, eye])
