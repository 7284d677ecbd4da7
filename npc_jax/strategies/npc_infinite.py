"""Zero-shot NPC with the analytic (infinite-width) NTK: no network, no training.

The paper's Table 3 zero-shot query uses a randomly initialised network; in
the infinite-width limit its NTK is the analytic kernel Θ of the
architecture, a fixed function of the inputs (`npc_jax.infinite`). This
strategy runs NPC's random search (Algorithm 1) with that kernel: draw m
batches of q unlabeled points (`npc.candidate_batches`), score each by λ_min of
the kernel's Gram over X_L ∪ batch, keep the best.

Only the blocks the scores need are computed, never the (|L| + m·q)² matrix:

* K(X_L, X_L), |L|² pairs, once;
* K(U, X_L) for the distinct candidate points U (|U| ≤ m·q), |U|·|L| pairs;
* K(batch, batch) for each batch, m·q² pairs (vmapped over batches).

For m = 1000, q = 20, |L| = 70 that is ≈ 1.8·10⁶ pairs instead of 4·10⁸.
Each Gram [[K_LL, K_Lb], [K_bL, K_bb]] is assembled per chunk of batches and
solved by `spectral.min_eigenvalue`. The kernel is the trace over classes,
C·Θ (the convention of `npc_jax.ntk`); λ_min's ranking is scale-free.

Precision and Proposition 1. Arc-cosine (ReLU) kernels are computed through
arccos(⟨x, x'⟩ / (|x||x'|)), whose slope is infinite at 1: the entries of
*identical* inputs (the diagonal, and a copy's entries with its original)
carry an error of up to ~√eps relative (measured ~1e-4 in float32, ~1e-9 in
float64), so a copy of a point would score λ_min ≈ 1e-9·λ_max, not 0. The
strategy therefore recognises identical images by content and gives every
entry between two copies (and each diagonal entry) one value per image, the
kernel of that image with itself: a copy's row then equals its original's and
the Gram is singular to round-off, λ_min = 0 exactly (`npc_jax.spectral`).
Entries between distinct images are much more accurate (the slope is finite
away from 1). ``float64=True`` (default) computes the kernel and the
eigenvalues in float64 (≈ +15% time for the convnet).

Cost on the Fashion-MNIST pool (60k, 28×28), m = 1000, q = 20, float64,
measured on 2 CPU cores shared with other jobs: MLP 2.5-8 s per query for
|L| = 10..70, of which the kernel is < 1 s and the 1000 eigenvalue problems
the rest; convnet (flatten readout) 24-43 s. Per-pair costs of every
architecture are in `npc_jax.infinite`; global-average-pooling readouts
(hours per query) are not offered here.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from npc_jax import spectral
from npc_jax.data import Pool
from npc_jax.strategies.base import Acquisition, AcquisitionContext
from npc_jax.strategies.npc import _score_summary, candidate_batches


def _content_ids(images: np.ndarray) -> np.ndarray:
    """(n,) int64: equal for images with identical bytes, ids 0..k-1."""
    rows = np.ascontiguousarray(images).reshape(len(images), -1)
    keys = rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel()
    return np.unique(keys, return_inverse=True)[1].reshape(-1).astype(np.int64)


class NPCInfinite:
    """NPC by random search over m batches, scored with the analytic NTK of an architecture.

    Args:
      num_candidates: m, the number of random batches scored (paper: 1000), or
        "pool" for m = the number of unlabeled samples.
      architecture: "mlp" (default; cheapest), "convnet" or "wrn" (both with
        a flatten readout), see `npc_jax.infinite`.
      depth: hidden layers of the MLP (architecture="mlp" only).
      W_std, b_std: weight and bias standard deviations of the architecture.
      normalize: score the cosine-normalised kernel K_ij / √(K_ii K_jj).
      chunk_size: candidate batches per kernel / eigen-solver call.
      kernel_chunk: points per side of one rectangular kernel call.
      float64: compute the kernel and the eigenvalues in float64 (see above).
    """

    name = "npc_infinite"

    def __init__(self, num_candidates: int | str = 1000, architecture: str = "mlp",
                 depth: int = 2, W_std: float = 2.0 ** 0.5, b_std: float = 0.1,
                 normalize: bool = False, chunk_size: int = 64, kernel_chunk: int = 256,
                 float64: bool = True):
        from npc_jax import infinite

        infinite.import_neural_tangents()   # fail here, with how to install it
        if num_candidates != "pool" and (isinstance(num_candidates, str)
                                         or int(num_candidates) != num_candidates
                                         or num_candidates <= 0):
            raise ValueError(f"num_candidates must be a positive int or 'pool', "
                             f"got {num_candidates!r}.")
        if architecture not in infinite.ARCHITECTURES:
            raise ValueError(f"architecture must be one of {infinite.ARCHITECTURES}, got "
                             f"{architecture!r} (config field "
                             "strategy_options.npc_infinite.architecture).")
        self.num_candidates = num_candidates
        self.architecture = architecture
        self.depth = int(depth)
        self.W_std, self.b_std = float(W_std), float(b_std)
        self.normalize = bool(normalize)
        self.chunk_size = int(chunk_size)
        self.kernel_chunk = int(kernel_chunk)
        self.float64 = bool(float64)
        self._kernels = {}   # num_classes -> (pairwise kernel, within-batch kernel)

    def kernels(self, num_classes: int):
        """(kernel(x1, x2=None) -> (n1, n2), blocks(x_sets) -> (m, q, q)), built once."""
        if num_classes not in self._kernels:
            from npc_jax import infinite

            options = dict(W_std=self.W_std, b_std=self.b_std)
            if self.architecture == "mlp":
                options["depth"] = self.depth
            net = infinite.make_network(self.architecture, num_classes, **options)
            self._kernels[num_classes] = (
                infinite.analytic_ntk_fn(net, chunk_size=self.kernel_chunk,
                                         float64=self.float64),
                infinite.analytic_batch_ntk_fn(net, chunk_size=self.chunk_size,
                                               float64=self.float64))
        return self._kernels[num_classes]

    def score(self, images: np.ndarray, labeled: np.ndarray, batches: np.ndarray,
              num_classes: int) -> np.ndarray:
        """λ_min of K(X_L ∪ batch) for every row of `batches`.

        Args:
          images: (N, H, W, C) the pool's images (uint8 or float in [0, 1]).
          labeled: (L,) int indices of the labeled points.
          batches: (m, q) int indices of the candidate batches.
          num_classes: C (scales the kernel; λ_min's ranking does not depend on it).

        Returns:
          (m,) float64 (float32 with float64=False) λ_min, 0 where singular to
          working precision.
        """
        kernel, within = self.kernels(num_classes)
        labeled = np.asarray(labeled, np.int64)
        used, inverse = np.unique(batches, return_inverse=True)
        inverse = inverse.reshape(batches.shape)
        n_l, q = len(labeled), batches.shape[1]
        # One id per distinct image content over labeled ∪ used, and each image's
        # kernel with itself (q = 1 sets): the value of every entry between copies.
        points = np.concatenate([labeled, used])
        ids = _content_ids(images[points])
        ids_l, ids_u = ids[:n_l], ids[n_l:]
        first = np.unique(ids, return_index=True)[1]                  # one point per id
        self_kernel = within(images[points[first]][:, None])[:, 0, 0]   # (num ids,)
        k_ll = kernel(images[labeled])                                  # (L, L)
        k_ul = kernel(images[used], images[labeled])                    # (|U|, L)
        scores = []
        for start in range(0, len(batches), self.chunk_size):
            part = batches[start:start + self.chunk_size]
            b = len(part)
            k_bb = within(images[part])                                 # (b, q, q)
            k_bl = k_ul[inverse[start:start + b]]                       # (b, q, L)
            grams = np.empty((b, n_l + q, n_l + q), k_bb.dtype)
            grams[:, :n_l, :n_l] = k_ll
            grams[:, n_l:, :n_l] = k_bl
            grams[:, :n_l, n_l:] = np.swapaxes(k_bl, 1, 2)
            grams[:, n_l:, n_l:] = k_bb
            gram_ids = np.concatenate([np.broadcast_to(ids_l, (b, n_l)),
                                       ids_u[inverse[start:start + b]]], axis=1)
            same = gram_ids[:, :, None] == gram_ids[:, None, :]      # copies, and i == j
            grams = np.where(same, self_kernel[gram_ids][:, :, None], grams)
            if self.normalize:
                d = np.sqrt(np.maximum(np.diagonal(grams, axis1=1, axis2=2), 1e-30))
                grams = grams / (d[:, :, None] * d[:, None, :])
            scores.append(spectral.min_eigenvalue(grams, chunk_size=self.chunk_size,
                                                  float64=self.float64))
        return np.concatenate(scores)

    def objective(self, best_score: float, scores: np.ndarray, seconds: float) -> dict:
        return {"lambda_min": float(best_score), "random_batches": _score_summary(scores),
                "kernel": "analytic", "architecture": self.architecture,
                "normalize": self.normalize, "score_seconds": float(seconds)}

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition:
        """The best of m random batches by λ_min of the analytic NTK (ctx.model is unused)."""
        batches = candidate_batches(key, pool, self.num_candidates, q)
        num_classes = getattr(ctx.model, "num_classes", 1)   # scale only; any model
        start = time.perf_counter()
        scores = self.score(ctx.images, pool.labeled_indices, batches, num_classes)
        seconds = time.perf_counter() - start
        best = int(np.argmax(scores))
        return Acquisition(batches[best].astype(np.int64),
                           self.objective(scores[best], scores, seconds))
