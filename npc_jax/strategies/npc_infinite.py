"""Zero-shot NPC with the analytic (infinite-width) NTK: no network, no training.

The paper's Table 3 zero-shot query uses a randomly initialised network; in
the infinite-width limit its NTK is the analytic kernel Θ of the
architecture, a fixed function of the inputs (`npc_jax.infinite`).
`NPCInfinite` = `search.random_search` (Algorithm 1) × `kernels.infinite_kernel`
(C·Θ, the trace convention of `npc_jax.ntk`; λ_min's ranking is scale-free;
identical images get one value per image, so that copies score exactly 0).

Only the blocks the scores need are computed, never the (|L| + m·q)² matrix:
K(X_L, X_L) once, K(U, X_L) for the distinct candidate points U (|U| ≤ m·q),
and K(batch, batch) for each batch, vmapped over batches. For m = 1000,
q = 20, |L| = 70 that is ≈ 1.8·10⁶ pairs instead of 4·10⁸. ``float64=True``
(default) computes the kernel and the eigenvalues in float64 (≈ +15% time for
the convnet).

Cost on the Fashion-MNIST pool (60k, 28×28), m = 1000, q = 20, float64,
measured on 2 CPU cores shared with other jobs: MLP 2.5-8 s per query for
|L| = 10..70, of which the kernel is < 1 s and the 1000 eigenvalue problems
the rest; convnet (flatten readout) 24-43 s. Per-pair costs of every
architecture are in `npc_jax.infinite`; global-average-pooling readouts
(hours per query) are not offered here.

neural-tangents is imported when the strategy is built, never by importing
this module or `npc_jax.strategies`.
"""
from __future__ import annotations

import functools
import time

import jax

from npc_jax.data import Pool
from npc_jax.strategies import kernels
from npc_jax.strategies.base import Acquisition, AcquisitionContext
from npc_jax.strategies.kernels import Kernel
from npc_jax.strategies.npc import KernelSearch
from npc_jax.strategies.search import check_num_candidates, random_search

__all__ = ["NPCInfinite"]


class NPCInfinite(KernelSearch):
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
        check_num_candidates(num_candidates)
        if architecture not in infinite.ARCHITECTURES:
            raise ValueError(f"architecture must be one of {infinite.ARCHITECTURES}, got "
                             f"{architecture!r} (config field "
                             "strategy_options.npc_infinite.architecture).")
        self.num_candidates = num_candidates
        self.architecture = architecture
        self.normalize = bool(normalize)
        self.options = dict(architecture=architecture, depth=int(depth), W_std=float(W_std),
                            b_std=float(b_std), chunk_size=int(chunk_size),
                            kernel_chunk=int(kernel_chunk), float64=bool(float64))
        super().__init__(self._kernel,
                         functools.partial(random_search, num_candidates=num_candidates,
                                           chunk_size=int(chunk_size)),
                         {"kernel": "analytic", "architecture": architecture,
                          "normalize": self.normalize},
                         chunk_size=chunk_size)

    def _kernel(self, ctx: AcquisitionContext) -> Kernel:
        """The analytic kernel on ctx's images (ctx.model only sets the scale C, if any)."""
        num_classes = getattr(ctx.model, "num_classes", 1)
        kernel = kernels.infinite_kernel(ctx.images, num_classes=num_classes, **self.options)
        return kernels.normalized(kernel) if self.normalize else kernel

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition:
        """The best of m random batches by λ_min of the analytic NTK; objective + score_seconds."""
        start = time.perf_counter()
        acquisition = super().select(key, ctx, pool, q)
        acquisition.objective["score_seconds"] = float(time.perf_counter() - start)
        return acquisition
