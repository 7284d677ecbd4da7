"""Kernels over the pool's points, for NPC's searches and the kernel-based strategies.

A `Kernel` is k(x, x') split into a per-point representation and Grams of it:

* ``represent(indices)``: (n,) int pool indices -> ``rep``, a tuple of arrays
  with n rows each, (n, ...);
* ``cross(rep_a, rep_b=None)``: (n_a, n_b) numpy, K between two sets of
  points (rep_b=None: rep_a with itself, symmetric);
* ``within(rep)``: (b, q, q) numpy for reps with leading axes (b, q, ...):
  the kernel inside each of b sets of q points (NPC's candidate batches);
* ``diagonal(rep)``: (n,) numpy, K(x, x);
* ``float64``: Grams (and the eigenproblems of the searches) in float64;
* ``max_points``: how many points' representations fit the memory budget
  (None: unbounded; the searches then represent every point they need at once).

Implementations, for C classes and D penultimate features:

* `last_layer_kernel` output="logits" (the paper, Sec. 3.4): rep = (φ (n, D+1),),
  φ = √C·[h, 1], K = φ·φ'.
* `last_layer_kernel` output="probs": rep = ([h, 1] (n, D+1), p (n, C)),
  K = (h·h' + 1)·⟨J_p, J_p'⟩_F, J_p the softmax Jacobian (`npc_jax.ntk`).
* `full_kernel`: rep = the per-sample Jacobian blocks (n, C·p_l), one per
  parameter array, K = Σ_l J_l J_l'ᵀ (every parameter; `ntk.jacobian_fn`);
  it scores NPC's batches itself (``score``: images to Grams in one compiled
  call per group of batches, after screening with a partial kernel).
* `infinite_kernel`: the analytic NTK of an architecture (`npc_jax.infinite`,
  neural-tangents imported on first use only); rep = (images (n, H, W, C),
  content ids (n,), K(x, x) (n,)).
* `embedding_kernel`: rep = (ẑ (n, d),), ẑ = z / |z|: K = ẑ·ẑ', the cosine
  similarity of the pool embedding the low-budget peers (TypiClust, ProbCover,
  MaxHerding) work on (`embedding.pool_embedding`: pretrained encoder,
  penultimate features or a user's embed_fn).
* `feature_kernel`: rep = (table[indices] (n, F),), K = φ·φ' of a fixed table
  of features (precomputed embeddings; tests inject kernels with it).

Devices: with D > 1 devices (`inference.device_mesh`) NPC's candidate scoring
is sharded over the candidate axis: `cross` and `diagonal` shard their rows
(`chunked_map`), `within` shards the b candidate sets of a call, and the
full kernel's fused Gram call shards its group of batches; the Grams' λ_min
are then solved by `spectral.min_eigenvalue` (on the host with float64 or on
the CPU; on an accelerator per device under shard_map). One device keeps the
single-device calls unchanged.

Combinators: `normalized` (the one place the cosine normalisation
K_ij / √(K_ii K_jj) is done) and `precomputed` (represent a set once, look it
up afterwards). `empirical_kernel` builds NPC's finite-network kernels from
the strategies' options.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from npc_jax import ntk, spectral
from npc_jax.data import images_to_float
from npc_jax.inference import check_finite, chunked_map, device_mesh, pad_rows
from npc_jax.strategies.base import AcquisitionContext
from npc_jax.strategies.embedding import pool_embedding

__all__ = ["KERNELS", "Kernel", "assemble_grams", "SCREEN_TOP", "check_options", "cosine_grams",
           "default_screen_layers", "dot_gram", "embedding_kernel", "empirical_kernel",
           "feature_kernel", "full_kernel", "gram_kernel", "infinite_kernel",
           "last_layer_kernel", "normalized", "precomputed", "probs_gram", "unit_rows"]

KERNELS = ("last", "full")   # NPC's finite-network kernels (option `kernel`)


class Kernel(NamedTuple):
    represent: Callable   # (n,) int pool indices -> tuple of (n, ...) arrays
    cross: Callable       # (rep_a, rep_b=None) -> (n_a, n_b) numpy
    within: Callable      # rep with leading (b, q) -> (b, q, q) numpy
    diagonal: Callable    # rep -> (n,) numpy, K(x, x)
    float64: bool = False
    max_points: int | None = None
    # score(labeled (L,), batches (m, q), *, normalize=False) -> (m,) λ_min: a kernel
    # that scores NPC's candidate batches itself (`full_kernel`); None: searches
    # assemble the Grams from represent / cross / within.
    score: Callable | None = None


def check_options(kernel: str, output: str) -> None:
    """Raises ValueError (naming the config field) unless kernel ∈ KERNELS, output ∈ OUTPUTS."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be 'last' or 'full', got {kernel!r} "
                         "(config field strategy_options.<npc>.kernel).")
    if output not in ntk.OUTPUTS:
        raise ValueError(f"output must be 'logits' or 'probs', got {output!r} "
                         "(config field strategy_options.<npc>.output).")


# -- Grams of representations --------------------------------------------------------


def dot_gram(rep_a, rep_b) -> jax.Array:
    """Σ_l A_l B_lᵀ over the arrays of two reps, (..., n, F_l) and (..., m, F_l) -> (..., n, m).

    One array: an explicit feature map; several: per-layer Jacobian blocks.
    """
    return functools.reduce(jnp.add, [jnp.einsum("...if,...jf->...ij", a, b)
                                      for a, b in zip(rep_a, rep_b)])


def probs_gram(rep_a, rep_b) -> jax.Array:
    """The last-layer softmax kernel of reps ([h, 1] (..., n, D+1), p (..., n, C)): (..., n, m)."""
    (ha, pa), (hb, pb) = rep_a, rep_b
    return jnp.einsum("...if,...jf->...ij", ha, hb) * ntk.softmax_jacobian_inner(pa, pb)


@functools.lru_cache(maxsize=16)
def _jitted(gram):
    """(cross(rep_b, *rep_a), within(*rep), diagonal(*rep)), jitted once per gram function."""
    cross = jax.jit(lambda rep_b, *rep_a: gram(rep_a, rep_b))
    within = jax.jit(lambda *rep: gram(rep, rep))
    def diagonal(*rep):   # (n, 1, F) against itself: n Grams of 1 × 1
        singles = tuple(r[:, None] for r in rep)
        return gram(singles, singles)[:, 0, 0]

    diagonal = jax.jit(diagonal)
    return cross, within, diagonal


def _bucket(n: int, limit: int) -> int:
    """Rows per compiled call: the next power of two ≥ n, at most `limit`.

    Few compiled shapes (log2 of the largest), and at most 2× padding.
    """
    return int(min(limit, 1 << max(0, int(n) - 1).bit_length()))


def gram_kernel(represent: Callable, gram: Callable = dot_gram, *, float64: bool = False,
                max_points: int | None = None, row_chunk: int = 1024,
                what: str = "features") -> Kernel:
    """A `Kernel` from a per-point representation and a traceable Gram of two reps.

    Args:
      represent: ``represent(indices (n,)) -> tuple of (n, F_l) arrays``.
      gram: ``gram(rep_a, rep_b) -> (..., n, m)`` on tuples of arrays with
        leading batch axes (`dot_gram`, `probs_gram`); a module-level function,
        so that its jitted versions are cached.
      float64: compute the Grams in float64 (representations are cast).
      max_points: see `Kernel`.
      row_chunk: rows of rep_a per compiled `cross` / `diagonal` call (memory:
        row_chunk rows of the representation, copied).
      what: what the representations are, for the NaN message.
    """
    cross_jit, within_jit, diagonal_jit = _jitted(gram)
    dtype = np.float64 if float64 else np.float32

    def precision():
        return spectral.enable_x64() if float64 else contextlib.nullcontext()

    def cast(rep):
        return tuple(np.asarray(r, dtype) for r in rep)

    def checked(indices):
        indices = np.asarray(indices, np.int64)
        rep = tuple(np.asarray(r) for r in represent(indices))
        for r in rep:
            check_finite(r, what, indices=indices)
        return rep

    def cross(rep_a, rep_b=None):
        with precision():
            rep_a = cast(rep_a)
            rep_b = rep_a if rep_b is None else cast(rep_b)
            return chunked_map(functools.partial(cross_jit, rep_b), *rep_a,
                               chunk_size=_bucket(len(rep_a[0]), row_chunk))

    def within(rep):
        with precision():
            rep = cast(rep)
            if device_mesh() is None or len(rep[0]) == 0:
                return np.asarray(within_jit(*rep))
            # D > 1 devices: the b sets split over them (b rounded up to a multiple of D).
            return chunked_map(within_jit, *rep, chunk_size=len(rep[0]))

    def diagonal(rep):
        with precision():
            return chunked_map(diagonal_jit, *cast(rep),
                               chunk_size=_bucket(len(rep[0]), row_chunk))

    return Kernel(checked, cross, within, diagonal, bool(float64), max_points)


# -- finite networks ---------------------------------------------------------------------


def last_layer_kernel(ctx: AcquisitionContext, *, output: str = "logits",
                      float64: bool = True) -> Kernel:
    """The last layer's trace-NTK of ctx's model (closed form, one forward pass per point).

    Args:
      ctx: the model, its variables and the pool's images (N, H, W, C).
      output: "logits" (the paper: φ = √C·[h, 1]) or "probs" (softmax outputs).
      float64: Grams in float64 (see `npc_jax.strategies.npc.NPC` for why).
    """
    check_options("last", output)
    num_classes = ctx.num_classes

    def represent(indices):
        logits, features = ctx.logits_and_features(indices)
        if output == "logits":
            return (np.asarray(ntk.last_layer_feature_map(features, num_classes), np.float32),)
        ones = np.ones((len(features), 1), features.dtype)
        return (np.concatenate([features, ones], 1).astype(np.float32),
                np.asarray(jax.nn.softmax(logits), np.float32))

    return gram_kernel(represent, dot_gram if output == "logits" else probs_gram,
                       float64=float64, what="features (the model's penultimate layer)")


SCREEN_TOP = 50          # full_kernel: batches scored exactly after screening
SCREEN_FRACTION = 0.99   # default_screen_layers: share of the parameters in the screen
SCREEN_ENERGY = 0.10     # full_kernel: patch energy the screen's projections may drop


def default_screen_layers(params, fraction: float = SCREEN_FRACTION) -> tuple[str, ...]:
    """The screening kernel's layers: the shortest run of last layers holding ≥ `fraction`.

    Layers are the top-level parameter collections, in the order Flax creates
    them (the call order of a compact module). The first layers hold few
    parameters and need the longest backward pass: for the small CNN at 0.99
    the screen drops conv0 and bn0 (0.3 % of the parameters, 6 % of the
    kernel's trace, half of the backward pass).
    """
    names = list(params)
    sizes = [sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(params[n])) for n in names]
    total, held = sum(sizes), 0
    for i in range(len(names) - 1, -1, -1):
        held += sizes[i]
        if held >= fraction * total:
            return tuple(names[i:])
    return tuple(names)


@functools.lru_cache(maxsize=16)
def _jacobian_jit(apply_fn, output, params_subset="all"):
    jac = ntk.jacobian_fn(apply_fn, output=output, params_subset=params_subset, flatten=False)
    return jax.jit(lambda variables, x, bases=None: jac(variables, images_to_float(x),
                                                        bases=bases))


@functools.lru_cache(maxsize=16)
def _moments_jit(apply_fn, params_subset):
    return jax.jit(lambda variables, x, weights: ntk.patch_moments(
        apply_fn, variables, images_to_float(x), weights, params_subset=params_subset))


def patch_bases(ctx: AcquisitionContext, indices, params_subset, *,
                energy: float) -> dict:
    """{layer: (k, r) orthonormal} the leading eigenvectors of each Dense/Conv layer's input
    patches over the points `indices`, r the fewest keeping ≥ 1 − energy of their trace."""
    moments_fn, size, total = _moments_jit(ctx.model.apply_fn, params_subset), 64, {}
    indices = np.asarray(indices, np.int64)
    for start in range(0, len(indices), size):   # padded chunks, padding weighted 0
        part = indices[start:start + size]
        weights = (np.arange(size) < len(part)).astype(np.float32)
        chunk = moments_fn(ctx.variables, ctx.images[pad_rows(part, size)], weights)
        for name, m in chunk.items():
            total[name] = total.get(name, 0) + np.asarray(m, np.float64)
    bases = {}
    for name, m in total.items():
        values, vectors = np.linalg.eigh(m)
        values, vectors = values[::-1], vectors[:, ::-1]
        kept = np.cumsum(values) >= (1 - energy) * values.sum()
        rank = int(np.argmax(kept)) + 1 if energy > 0 and kept.any() else len(values)
        if rank < len(values):
            bases[name] = jnp.asarray(vectors[:, :rank], jnp.float32)
    return bases


@functools.lru_cache(maxsize=16)
def _batch_grams_jit(apply_fn, output, params_subset, float64):
    """jit of ``(variables, jac_l, x (b, q, H, W, C)) -> (K_bL (b, q, L), K_bb (b, q, q))``.

    One compiled call per group of b candidate batches: the b·q points'
    Jacobian blocks and their Grams against the labeled points' blocks jac_l
    [(L, C·p_l), ...] and within each batch. Fused, no Jacobian leaves the
    call: no host copies, gathers or padding of C·P floats per point (measured
    on the small CNN, 2 cores: 15 ms per point vs 58 ms as Jacobians, then
    `cross` and `within` of them; runs/prof, BENCHMARKS.md P2).
    """
    jac = ntk.jacobian_fn(apply_fn, output=output, params_subset=params_subset, flatten=False)

    def grams(variables, jac_l, x, bases):
        b, q = x.shape[:2]
        blocks = jac(variables, images_to_float(x.reshape(b * q, *x.shape[2:])), bases=bases)
        if float64:
            blocks = [u.astype(jnp.float64) for u in blocks]
        per_batch = [u.reshape(b, q, -1) for u in blocks]
        return dot_gram(blocks, jac_l).reshape(b, q, -1), dot_gram(per_batch, per_batch)

    return jax.jit(grams)


def cosine_grams(grams: np.ndarray) -> np.ndarray:
    """(..., n, n) Grams K -> K_ij / √(K_ii K_jj), K_ii clamped at 1e-30 as in `normalized`."""
    d = np.sqrt(np.maximum(np.diagonal(grams, axis1=-2, axis2=-1), 1e-30))
    return grams / (d[..., :, None] * d[..., None, :])


def assemble_grams(k_ll: np.ndarray, k_bl: np.ndarray, k_bb: np.ndarray) -> np.ndarray:
    """(b, L+q, L+q) Grams [[K_LL, K_Lb], [K_bL, K_bb]].

    Args:
      k_ll: (L, L) the labeled block, shared by every batch.
      k_bl: (b, q, L) each batch against the labeled points.
      k_bb: (b, q, q) each batch with itself.
    """
    b, q, n_l = k_bl.shape
    grams = np.empty((b, n_l + q, n_l + q), np.result_type(k_ll, k_bl, k_bb))
    grams[:, :n_l, :n_l] = k_ll
    grams[:, n_l:, :n_l] = k_bl
    grams[:, :n_l, n_l:] = np.swapaxes(k_bl, 1, 2)
    grams[:, n_l:, n_l:] = k_bb
    return grams


def _fused_scores(ctx, output, params_subset, *, points_per_call, jacobian_chunk, float64):
    """``scores(labeled (L,), batches (m, q), normalize) -> (m,) λ_min`` of the empirical
    NTK of `params_subset`, each group of batches in one `_batch_grams_jit` call."""
    grams_fn = _batch_grams_jit(ctx.model.apply_fn, output, params_subset, bool(float64))
    jacobians = functools.partial(_jacobian_jit(ctx.model.apply_fn, output, params_subset),
                                  ctx.variables)
    dtype = np.float64 if float64 else np.float32
    what = "gradients (the model's Jacobians)"

    def scores(labeled, batches, normalize=False, bases=None):
        m, q = batches.shape
        out = []
        bases = bases or {}
        with spectral.enable_x64() if float64 else contextlib.nullcontext():
            jac_l = chunked_map(functools.partial(jacobians, bases=bases), ctx.images[labeled],
                                chunk_size=jacobian_chunk)
            for r in jac_l:
                check_finite(r, what, indices=labeled)
            jac_l = [jnp.asarray(np.asarray(r, dtype)) for r in jac_l]
            k_ll = np.asarray(dot_gram(jac_l, jac_l))
            group = max(1, min(m, points_per_call // q))
            sharded = device_mesh() is not None
            for start in range(0, m, group):
                part = batches[start:start + group]
                if sharded:   # the group's batches split over the devices
                    k_bl, k_bb = chunked_map(
                        lambda x: grams_fn(ctx.variables, jac_l, x, bases), ctx.images[part],
                        chunk_size=group)
                else:
                    k_bl, k_bb = grams_fn(ctx.variables, jac_l,
                                          ctx.images[pad_rows(part, group)], bases)
                grams = assemble_grams(k_ll, np.asarray(k_bl)[:len(part)],
                                   np.asarray(k_bb)[:len(part)])
                check_finite(grams, what, fix="check the training loss and the inputs")
                grams = cosine_grams(grams) if normalize else grams
                out.append(spectral.min_eigenvalue(grams, float64=float64))
        return np.concatenate(out) if out else np.zeros((0,), dtype)

    return scores


def full_kernel(ctx: AcquisitionContext, *, output: str = "logits", jacobian_chunk: int = 32,
                memory_mb: float = 1024, float64: bool = False, exact: bool = False,
                screen_top: int = SCREEN_TOP, screen_layers: tuple[str, ...] | None = None,
                screen_energy: float = SCREEN_ENERGY) -> Kernel:
    """The whole network's trace-NTK: reps are per-sample Jacobian blocks (n, C·p_l).

    NPC scores candidate batches through the kernel's `score`: each group of
    batches goes through one compiled call from images to Grams
    (`_batch_grams_jit`). By default it first *screens*: every batch is scored
    with a partial kernel K_S: the Jacobians of the layers `screen_layers`
    only (the backward pass stops at the earliest of them), each Dense/Conv
    weight Jacobian taken w.r.t. the leading principal directions of its
    layer's input patches (those keeping 1 − `screen_energy` of the patches'
    energy over the labeled points and the first candidates: a 288 → r
    projection costs r/288 of the weight Jacobian and its Grams). Only the
    `screen_top` best by that score are scored with the full kernel K. K_S =
    J P Jᵀ for a projection P of parameter space, so K_S ⪯ K and λ_min(K_S) ≤
    λ_min(K): the returned scores are exact for the screened-in batches and
    lower bounds for the rest, and the best score is always an exact one.
    Whether the exact best batch is screened in is measured, not guaranteed
    (BENCHMARKS.md P2 full: 5 acquisitions on the 60k pool, m = 1000: the
    exact pick 4 times, a batch at 99.49 % of its λ_min once; 49-52 s on 2
    quiet cores, vs 145 s for `exact=True` at load 2).

    Args:
      ctx: the model, its variables and the pool's images.
      output: "logits" or "probs".
      jacobian_chunk: samples per compiled Jacobian call of `represent`.
      memory_mb: the Jacobians held at once: max_points = memory_mb / (C·P·4
        bytes), P the number of parameters; a scoring call takes half as many
        points (its Jacobians and their intermediates).
      float64: Grams in float64 (the Jacobians themselves are float32).
      exact: score every batch with the full kernel (no screening).
      screen_top: batches scored exactly after screening.
      screen_layers: names of the layers (top-level parameter collections) of
        the screening kernel; None: `default_screen_layers` of the model.
      screen_energy: share of each layer's patch energy its projection may drop
        (0.10: conv1 / conv2 / conv3 of the small CNN keep 23 / 83 / 103 of
        288 / 576 / 576 directions).
    """
    check_options("full", output)
    apply_fn = ctx.model.apply_fn
    jacobians = functools.partial(_jacobian_jit(apply_fn, output), ctx.variables)
    params = ctx.variables["params"]
    width = ctx.num_classes * sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(params))
    max_points = max(1, int(memory_mb * 2 ** 20 // (width * 4)))
    options = dict(jacobian_chunk=jacobian_chunk, float64=float64)
    exact_scores = _fused_scores(ctx, output, "all", points_per_call=max(1, max_points // 2),
                                 **options)
    layers = default_screen_layers(params) if screen_layers is None else tuple(screen_layers)
    screen_width = ctx.num_classes * sum(int(np.size(a)) for name in layers
                                         for a in jax.tree_util.tree_leaves(params[name]))
    screen_points = max(1, int(memory_mb * 2 ** 20 // (max(screen_width, 1) * 8)))
    if jax.default_backend() == "cpu":
        # One batch per call: its projected Jacobians stay in cache (small CNN, 2
        # cores: 2.1 ms per point vs 2.6 with 3-6 batches per call; BENCHMARKS P2).
        screen_points = 1
    screen_scores = _fused_scores(ctx, output, layers, points_per_call=screen_points, **options)

    def represent(indices):
        return tuple(chunked_map(jacobians, ctx.images[indices], chunk_size=jacobian_chunk))

    def score(labeled, batches, *, normalize=False):
        labeled = np.asarray(labeled, np.int64)
        batches = np.asarray(batches, np.int64)
        if exact or normalize or screen_top >= len(batches):
            return exact_scores(labeled, batches, normalize)
        sample = np.unique(np.concatenate([labeled, batches.ravel()[:256]]))
        bases = patch_bases(ctx, sample, layers, energy=screen_energy)
        scores = screen_scores(labeled, batches, bases=bases)
        scores = scores.astype(np.float64 if float64 else np.float32)
        top = np.argsort(-scores, kind="stable")[:screen_top]
        scores[top] = exact_scores(labeled, batches[top])
        return scores

    base = gram_kernel(represent, dot_gram, float64=float64, max_points=max_points,
                       row_chunk=jacobian_chunk, what="gradients (the model's Jacobians)")
    return base._replace(score=score)


def empirical_kernel(ctx: AcquisitionContext, *, kernel: str = "last", output: str = "logits",
                     normalize: bool = False, jacobian_chunk: int = 32,
                     memory_mb: float = 1024, float64: bool | None = None,
                     full_exact: bool = False, screen_top: int = SCREEN_TOP) -> Kernel:
    """NPC's finite-network kernel from the strategies' options.

    kernel="last" → `last_layer_kernel`, "full" → `full_kernel` (full_exact →
    its `exact`, screen_top → its `screen_top`); `normalize` wraps it in
    `normalized`; float64=None means True for "last", False for "full" (the
    strategies' default, see `npc_jax.strategies.npc.NPC`).
    """
    check_options(kernel, output)
    float64 = (kernel == "last") if float64 is None else bool(float64)
    if kernel == "last":
        base = last_layer_kernel(ctx, output=output, float64=float64)
    else:
        base = full_kernel(ctx, output=output, jacobian_chunk=jacobian_chunk,
                           memory_mb=memory_mb, float64=float64, exact=bool(full_exact),
                           screen_top=int(screen_top))
    return normalized(base) if normalize else base


# -- embeddings and fixed features -------------------------------------------------------


def feature_kernel(features, *, float64: bool = False) -> Kernel:
    """K = φ·φ' of a fixed feature table: represent(indices) = (features[indices],).

    Args:
      features: (N, F) one row per pool index (e.g. precomputed embeddings, or
        a test's hand-made gradients).
      float64: Grams in float64.
    """
    table = np.asarray(features)
    if table.ndim != 2:
        raise ValueError(f"features must be (N, F), got shape {table.shape}.")
    return gram_kernel(lambda indices: (table[indices],), dot_gram, float64=float64)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """x (n, D) with every row scaled to unit Euclidean norm (zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def embedding_kernel(ctx: AcquisitionContext, source: str = "auto",
                     embed_fn: Callable | None = None, *, float64: bool = False) -> Kernel:
    """K(x, x') = ẑ·ẑ', ẑ = z / |z| the unit-normalised pool embedding of the peers.

    z is `embedding.pool_embedding(ctx, source, embed_fn)`: the run's
    pretrained encoder, the current model's penultimate features or a user's
    `embed_fn` (see there), computed for the whole pool (N, d) on the first
    `represent` and kept for the kernel's lifetime. The representation is
    (ẑ (n, d),); K is the cosine similarity, in [-1, 1], 1 on the diagonal.
    Its rank is at most d: a Gram over more than d points is singular.
    """
    table = []   # [ẑ (N, d)], filled on first use: one pass over the pool per kernel

    def represent(indices):
        if not table:
            table.append(unit_rows(pool_embedding(ctx, source, embed_fn)))
        return (table[0][np.asarray(indices, np.int64)],)

    return gram_kernel(represent, dot_gram, float64=float64,
                       what=f"embedding ({'embed_fn' if embed_fn else source})")


# -- combinators ---------------------------------------------------------------------------


def normalized(kernel: Kernel) -> Kernel:
    """The cosine-normalised kernel K_ij / √(K_ii K_jj) (the only implementation of it).

    Its rep is the base rep plus one array, d = √max(K(x, x), 1e-30) (n,);
    its diagonal is exactly 1 (0 where K(x, x) ≤ 1e-30). Every point
    then weighs the same: a large-norm (outlying) point no longer inflates λ_min.
    """
    def represent(indices):
        rep = kernel.represent(indices)
        return (*rep, np.sqrt(np.maximum(kernel.diagonal(rep), 1e-30)))

    def cross(rep_a, rep_b=None):
        d_a = rep_a[-1]
        d_b = d_a if rep_b is None else rep_b[-1]
        k = kernel.cross(rep_a[:-1], None if rep_b is None else rep_b[:-1])
        return k / (d_a[:, None] * d_b[None, :])

    def within(rep):
        d = rep[-1]
        return kernel.within(rep[:-1]) / (d[..., :, None] * d[..., None, :])

    def diagonal(rep):
        return np.where(rep[-1] > 1e-15, 1.0, 0.0).astype(rep[-1].dtype)

    # A kernel that scores batches itself normalises its Grams (`cosine_grams`).
    score = None if kernel.score is None else functools.partial(kernel.score, normalize=True)
    return kernel._replace(represent=represent, cross=cross, within=within, diagonal=diagonal,
                           score=score)


def precomputed(kernel: Kernel, indices) -> Kernel:
    """`kernel` on the points `indices` (n,), represented once now.

    The returned kernel's ``represent(positions)`` takes positions 0..n-1 into
    `indices` (not pool indices) and gathers the stored rows: a search that
    scores many batches of the same points (the swap search) represents each
    point once. Memory: the n points' representations.
    """
    rep = kernel.represent(np.asarray(indices, np.int64))
    return kernel._replace(   # score takes pool indices: not for positions
        represent=lambda positions: tuple(r[np.asarray(positions, np.int64)] for r in rep),
        score=None)


# -- infinite width ------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _analytic_fns(architecture, num_classes, depth, W_std, b_std, kernel_chunk, chunk_size,
                  float64):
    """(pairwise kernel(x1, x2=None), within-sets kernel(x_sets)), built once per setting."""
    from npc_jax import infinite   # neural-tangents is imported inside, on first use

    options = dict(W_std=W_std, b_std=b_std)
    if architecture == "mlp":
        options["depth"] = depth
    net = infinite.make_network(architecture, num_classes, **options)
    return (infinite.analytic_ntk_fn(net, chunk_size=kernel_chunk, float64=float64),
            infinite.analytic_batch_ntk_fn(net, chunk_size=chunk_size, float64=float64))


def infinite_kernel(images: np.ndarray, *, architecture: str = "mlp", num_classes: int = 1,
                    depth: int = 2, W_std: float = 2.0 ** 0.5, b_std: float = 0.1,
                    chunk_size: int = 64, kernel_chunk: int = 256,
                    float64: bool = True) -> Kernel:
    """The analytic (infinite-width) trace-NTK C·Θ of an architecture on the pool's images.

    Identical images get one value per image. Arc-cosine (ReLU) kernels are
    computed through arccos(⟨x, x'⟩ / (|x||x'|)), whose slope is infinite at
    1: entries of identical inputs (the diagonal, a copy with its original)
    carry an error of up to ~√eps relative (measured ~1e-4 in float32, ~1e-9
    in float64), so a copy would score λ_min ≈ 1e-9·λ_max, not 0. Here every
    entry between two images of the same content (and each diagonal entry) is
    the kernel of that image with itself, computed once per content: a copy's
    row then equals its original's and the Gram is singular to round-off
    (Proposition 1, λ_min = 0 exactly after `spectral`'s clipping).

    Args:
      images: (N, H, W, C) the pool's images, uint8 or float in [0, 1].
      architecture, depth, W_std, b_std: the network (`npc_jax.infinite`).
      num_classes: C (a scale; λ_min's ranking does not depend on it).
      chunk_size: sets per compiled `within` call.
      kernel_chunk: points per side of one `cross` call.
      float64: compute the kernel (and the searches' eigenvalues) in float64.

    Returns:
      A `Kernel` with rep = (images (n, H, W, C), content ids (n,) int64,
      K(x, x) (n,)); ids are stable for the kernel's lifetime.
    """
    pair, sets = _analytic_fns(architecture, int(num_classes), int(depth), float(W_std),
                               float(b_std), int(kernel_chunk), int(chunk_size), bool(float64))
    ids, self_values = {}, []   # image bytes -> id; id -> K(x, x)

    def represent(indices):
        x = images[np.asarray(indices, np.int64)]
        rows = np.ascontiguousarray(x).reshape(len(x), int(np.prod(x.shape[1:])))
        start = len(ids)
        content = np.array([ids.setdefault(row.tobytes(), len(ids)) for row in rows], np.int64)
        known, first = np.unique(content, return_index=True)
        first = first[known >= start]   # first occurrence of each new content, in id order
        if len(first):                  # K(x, x) of each new content, once
            self_values.extend(sets(x[first][:, None])[:, 0, 0])
        dtype = np.float64 if float64 else np.float32
        return x, content, np.asarray(self_values, dtype)[content]

    def tie(k, rep_a, rep_b):
        same = rep_a[1][..., :, None] == rep_b[1][..., None, :]
        return np.where(same, rep_a[2][..., :, None], k)

    def cross(rep_a, rep_b=None):
        k = pair(rep_a[0]) if rep_b is None else pair(rep_a[0], rep_b[0])
        return tie(k, rep_a, rep_a if rep_b is None else rep_b)

    def within(rep):
        return tie(sets(rep[0]), rep, rep)

    return Kernel(represent, cross, within, lambda rep: rep[2], bool(float64), None)
