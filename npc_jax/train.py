"""Training from scratch on a labeled set: FixMatch-DARP (ASSL) or supervised (ASL).

Steps are pure, ``(state, data, key) -> (state, metrics)``, and sample their
own mini-batches on device from `TrainData` (the whole pool's images plus the
labeled indices), so a training is a sequence of asynchronously dispatched
jit-compiled steps; the host reads metrics once per chunk of steps. Shapes do not depend on the number
of labels (the labeled index list is padded to a fixed capacity), so one
compilation serves every round of an ASSL run.

The randomness of step k is ``fold_in(key, k)``.

Data parallel. With ``TrainConfig.devices`` resolving to D > 1 local devices
(0, the default: all of them) the steps run over the 1-D mesh ``("batch",)``
of those devices: the state (parameters, EMA, optimiser state, BatchNorm
statistics, DARP buffer, thresholds) and `TrainData` (the pool) are
replicated, each step's sampled batch is sharded ``P("batch")`` (B / D
labeled and B·μ / D unlabeled rows per device, as contiguous blocks) by
sharding constraints inside the jitted step, and XLA's partitioner inserts
the all-reduces. The model sees the whole global batch, so BatchNorm's
statistics are over the global batch (SyncBN) and the losses and gradients
are global means: the same computation as on one device up to the float32
reduction order. DARP's buffer is replicated and refined over the whole pool
(every device solves the same C-dimensional dual). With one device nothing
is sharded and the step is the single-device one, bit for bit. In a
multi-process run (`npc_jax.distributed`) ``devices = 0`` is every device of
every process: the same step, its batch sharded over all hosts' devices.

The pool's layout (``TrainConfig.pool_layout``). "replicated" (default):
every device holds the whole pool and the unlabeled batch is drawn from all
of it, as above. "sharded": the pool's rows are split into D equal blocks,
one per device of the mesh (`place_pool`: each process reads and transfers
only its own devices' blocks, e.g. of a memory-mapped ``npy:`` dataset), and
each device draws its B·μ / D unlabeled rows from its own block
(`sample_pool`), as data loaders of large data sets do; the labeled images
travel in `TrainData.labeled_images`. Every pool row is drawn with the same
probability up to the last block's padding (that block may hold fewer real
rows, which are then drawn more often by at most ceil(N/D) / its real rows).
The draws differ from the replicated layout's, so the layout is part of a
run's identity. With one device both layouts are the same computation.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax.sharding import Mesh, NamedSharding, PartitionSpec

from npc_jax.data import images_to_float
from npc_jax.inference import device_mesh, local_mesh, shard_map
from npc_jax.models import Model
from npc_jax.ssl import augment, darp, fixmatch, thresholds

__all__ = [
    "TrainConfig",
    "TrainData",
    "TrainState",
    "cosine_7_16",
    "data_parallel_mesh",
    "fixmatch_step",
    "init_state",
    "make_optimizer",
    "make_train_data",
    "place_pool",
    "recalibrate_batch_stats",
    "sample_pool",
    "start_from",
    "supervised_step",
    "timed_train",
    "train",
    "train_step",
]


POOL_LAYOUTS = ("replicated", "sharded")
PSEUDO_LABEL_SOURCES = ("model", "propagated", "product")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training (defaults: FixMatch's, DESIGN.md §1).

    method: "fixmatch" (ASSL: FixMatch + DARP) or "supervised" (ASL).
    steps: K, the number of optimiser steps (the cosine schedule spans them).
    batch_size: B labeled images per step; mu: unlabeled/labeled ratio μ.
    lr, momentum, nesterov, weight_decay: SGD; decay on kernels only.
    ema_decay: decay of the weight average used for evaluation (0 disables).
    encoder_lr_scale, freeze_encoder_fraction: for fine-tuning a pretrained
      encoder: every layer but the classifier is frozen for that fraction of
      the steps, then updated at `encoder_lr_scale` × the learning rate.
    threshold: τ, pseudo-label confidence; lambda_u: weight of the unlabeled loss.
    threshold_mode: "fixed" (FixMatch: τ) or "freematch" (FreeMatch's
      self-adaptive class thresholds, `npc_jax.ssl.thresholds`, with EMA decay
      `threshold_ema`; `threshold` is then unused).
    darp: refine pseudo-labels toward a uniform class distribution;
      darp_warmup: fraction of the steps before refinement starts;
      darp_every: steps between refinements; darp_iters: solver iterations.
    flip: horizontal flips in the augmentations.
    weak_forward: "joint" runs weak(labeled), weak(unlabeled) and
      strong(unlabeled) as one BatchNorm batch, as FixMatch does; "separate"
      runs the weak unlabeled views in a pass of their own without gradient.
    supervised_warmup: fraction of the steps, at the start, that train on the
      labeled batch alone (cheap steps; FixMatch's pseudo-labels start from a
      model that already fits the labels).
    recalibrate_batches: after training, the BatchNorm statistics used with
      the EMA weights are recomputed for those weights from this many batches
      of `eval_batch_size` clean pool images (0: keep the running averages of
      the raw weights, which on short schedules lag far behind).
    chunk_steps: steps between metric reads (progress/metrics granularity).
    eval_batch_size: batch of the (padded) evaluation forward passes.
    pseudo_labels: where the unlabeled loss's targets come from: "model"
      (FixMatch: the weak view's prediction, refined by DARP, thresholded at
      τ); "propagated" (the label propagation over the pretrained embedding
      in `TrainData.propagated`, each sample weighted by its certainty
      1 − H/log C, as Iscen et al. 2019; no weak pass, threshold or DARP);
      "product" (the weak prediction times the propagated distribution,
      renormalised, then DARP and τ as in FixMatch).
    propagation_neighbours, propagation_alpha, propagation_balance: the kNN
      graph's k, the propagation's α and its class mass normalisation
      (`npc_jax.ssl.propagation.propagate`) when `pseudo_labels` uses them.
    pool_layout: "replicated" (every device holds the whole pool) or "sharded"
      (each device holds one block of its rows and draws its unlabeled rows
      from it: the module docstring); on one device they are the same.
    devices: local devices to train data-parallel over (`data_parallel_mesh`):
      0 = all of this process's devices (in a multi-process run,
      `npc_jax.distributed`: every device of every process), 1 = one device
      (no sharding), D = the first D. `batch_size` must be a multiple of the
      device count.
    """

    method: str = "fixmatch"
    steps: int = 1000
    batch_size: int = 64
    mu: int = 7
    lr: float = 0.03
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    ema_decay: float = 0.999
    encoder_lr_scale: float = 1.0
    freeze_encoder_fraction: float = 0.0
    threshold: float = 0.95
    threshold_mode: str = "fixed"
    threshold_ema: float = 0.999
    lambda_u: float = 1.0
    darp: bool = True
    darp_warmup: float = 0.4
    darp_every: int = 10
    darp_iters: int = 10
    flip: bool = True
    weak_forward: str = "joint"
    supervised_warmup: float = 0.0
    recalibrate_batches: int = 8
    chunk_steps: int = 50
    eval_batch_size: int = 1000
    pseudo_labels: str = "model"
    propagation_neighbours: int = 10
    propagation_alpha: float = 0.99
    propagation_balance: bool = True
    pool_layout: str = "replicated"
    devices: int = 0

    def __post_init__(self):
        if self.method not in ("fixmatch", "supervised"):
            raise ValueError(f"TrainConfig.method must be 'fixmatch' or 'supervised', "
                             f"got {self.method!r}.")
        for name in ("steps", "batch_size", "mu", "chunk_steps", "eval_batch_size",
                     "darp_every", "darp_iters", "propagation_neighbours"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, "
                                 f"got {getattr(self, name)!r}.")
        if int(self.devices) != self.devices or self.devices < 0:
            raise ValueError(f"TrainConfig.devices must be 0 (all local devices) or a "
                             f"positive device count, got {self.devices!r}.")
        if self.devices > 1:
            _check_divides(self.batch_size, self.devices, self.devices)
        if self.pool_layout not in POOL_LAYOUTS:
            raise ValueError(f"TrainConfig.pool_layout must be one of {POOL_LAYOUTS}, got "
                             f"{self.pool_layout!r}.")
        if self.pseudo_labels not in PSEUDO_LABEL_SOURCES:
            raise ValueError(f"TrainConfig.pseudo_labels must be one of "
                             f"{PSEUDO_LABEL_SOURCES}, got {self.pseudo_labels!r}.")
        if self.weak_forward not in ("joint", "separate"):
            raise ValueError(f"TrainConfig.weak_forward must be 'joint' or 'separate', "
                             f"got {self.weak_forward!r}.")
        if not 0.0 <= self.supervised_warmup <= 1.0:
            raise ValueError(f"TrainConfig.supervised_warmup is a fraction of the steps in "
                             f"[0, 1], got {self.supervised_warmup}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}.")
        if self.threshold_mode not in ("fixed", "freematch"):
            raise ValueError(f"TrainConfig.threshold_mode must be 'fixed' or 'freematch', got "
                             f"{self.threshold_mode!r}.")
        if not 0.0 <= self.threshold_ema < 1.0:
            raise ValueError(f"TrainConfig.threshold_ema must be in [0, 1), got "
                             f"{self.threshold_ema}.")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(
                f"TrainConfig.threshold is a confidence in [0, 1] (FixMatch: 0.95), got "
                f"{self.threshold}; above 1 no pseudo-label passes and the unlabeled "
                "loss is silently off.")
        ranges = (  # a NaN fails every comparison, so it is refused too
            ("lr", self.lr > 0, "> 0"),
            ("lambda_u", self.lambda_u >= 0, ">= 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("darp_warmup", 0 <= self.darp_warmup <= 1, "a fraction of the steps in [0, 1]"),
            ("encoder_lr_scale", self.encoder_lr_scale >= 0, ">= 0"),
            ("propagation_alpha", 0 <= self.propagation_alpha < 1, "in [0, 1)"),
            ("freeze_encoder_fraction", 0 <= self.freeze_encoder_fraction <= 1,
             "a fraction of the steps in [0, 1]"),
        )
        for name, in_range, wanted in ranges:
            if not in_range:
                raise ValueError(f"TrainConfig.{name} must be {wanted}, got "
                                 f"{getattr(self, name)!r}.")


def _check_divides(batch_size: int, num_devices: int, devices: int) -> None:
    if batch_size % num_devices:
        raise ValueError(
            f"TrainConfig.batch_size = {batch_size} does not divide evenly over "
            f"{num_devices} devices (TrainConfig.devices = {devices}"
            f"{', all local devices' if devices == 0 else ''}): each device takes "
            f"batch_size / devices rows. Use a batch_size that is a multiple of "
            f"{num_devices}, or set TrainConfig.devices to a divisor of {batch_size} "
            "(1: one device).")


def data_parallel_mesh(config: TrainConfig) -> Mesh | None:
    """The mesh ``("batch",)`` that `config` trains over, or None for one device.

    Args:
      config: its `devices` field (0: all local devices; every process's in a
        multi-process run) picks the devices (`inference.device_mesh`).

    Returns:
      A 1-D `jax.sharding.Mesh` of D > 1 devices, or None (train on the
      default device, unsharded).

    Raises:
      ValueError: more devices asked for than this process has, or a
        `batch_size` that is not a multiple of D (naming both).
    """
    mesh = device_mesh(config.devices, "batch")
    if mesh is not None:
        _check_divides(config.batch_size, mesh.devices.size, config.devices)
    return mesh


def _shard_batch(x: jax.Array, config: TrainConfig) -> jax.Array:
    """(B, ...) `x` constrained to rows sharded over the training mesh (no-op on one)."""
    mesh = data_parallel_mesh(config)
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec("batch")))


def _replicated(tree, mesh: Mesh | None, *, traced: bool = False):
    """`tree` replicated over `mesh`: a transfer, or inside jit (`traced`) a constraint."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec())
    if traced:
        return jax.lax.with_sharding_constraint(tree, sharding)
    return jax.device_put(tree, sharding)


class TrainData(NamedTuple):
    """Inputs of a training; its shapes fix the compilation.

    images: (N, H, W, C) uint8 or float32 in [0, 1], the whole pool (the
      unlabeled set of FixMatch is the whole pool, as in the paper). A memory
      map stays on the host until `train` places it (replicated, or in
      `place_pool` blocks: (D·ceil(N/D), H, W, C)).
    labeled_images: (L_cap, H, W, C) the labeled images, padded like
      labeled_indices.
    labeled_indices: (L_cap,) int32 pool indices of the labeled set, padded.
    labeled_labels: (L_cap,) int32 their labels, padded.
    num_labeled: () int32, how many entries of the two above are real.
    diagnostic_labels: (N,) int32 true labels of the pool, used only to report
      the accuracy of accepted pseudo-labels (never by a loss); -1 if unknown.
    propagated: (N, C) float32 class distribution of every pool row from label
      propagation (`npc_jax.ssl.propagation`), or None; needed by
      `TrainConfig.pseudo_labels` "propagated" and "product".
    """

    images: Any
    labeled_images: jax.Array
    labeled_indices: jax.Array
    labeled_labels: jax.Array
    num_labeled: jax.Array
    diagnostic_labels: jax.Array
    propagated: Any = None

    @property
    def num_pool(self) -> int:
        """N, the pool's real rows (`images` may carry padding rows)."""
        return int(self.diagnostic_labels.shape[0])


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any
    darp: darp.DarpState | None
    ema_batch_stats: Any = None  # BN statistics recomputed for ema_params
    thresholds: thresholds.FreeMatchState | None = None  # threshold_mode="freematch"

    @property
    def eval_variables(self):
        """Variables for evaluation: the EMA weights with BN statistics for them
        (recomputed after training; the raw weights' running stats before)."""
        stats = self.batch_stats if self.ema_batch_stats is None else self.ema_batch_stats
        return {"params": self.ema_params, "batch_stats": stats}


def make_train_data(images, labeled_indices, labels_of_labeled, *, capacity=None,
                    diagnostic_labels=None, propagated=None) -> TrainData:
    """Packs host arrays into a `TrainData`, padding the labeled set to `capacity`.

    A memory-mapped pool (`np.memmap`, e.g. an ``npy:`` dataset) stays on the
    host, only its labeled rows read here, and `train` places it (whole, or
    each process its own blocks with ``pool_layout="sharded"``); any other
    array goes to the default device as a jax array."""
    labeled_indices = np.asarray(labeled_indices, np.int32)
    labels_of_labeled = np.asarray(labels_of_labeled, np.int32)
    num_labeled = len(labeled_indices)
    if num_labeled == 0:
        raise ValueError("Training needs at least one labeled example.")
    if len(labels_of_labeled) != num_labeled:
        raise ValueError(f"{num_labeled} labeled indices but {len(labels_of_labeled)} labels.")
    capacity = capacity or int(2 ** np.ceil(np.log2(num_labeled)))
    if capacity < num_labeled:
        raise ValueError(f"capacity {capacity} < {num_labeled} labeled examples.")
    pad = capacity - num_labeled
    if diagnostic_labels is None:
        diagnostic_labels = np.full(len(images), -1, np.int32)
    order = np.argsort(labeled_indices, kind="stable")   # a memory map is read in order
    labeled_rows = np.asarray(images[labeled_indices[order]])
    labeled_images = np.zeros((capacity, *labeled_rows.shape[1:]), labeled_rows.dtype)
    labeled_images[order] = labeled_rows
    return TrainData(
        images=images if isinstance(images, np.memmap) else jnp.asarray(images),
        labeled_images=jnp.asarray(labeled_images),
        labeled_indices=jnp.asarray(np.pad(labeled_indices, (0, pad))),
        labeled_labels=jnp.asarray(np.pad(labels_of_labeled, (0, pad))),
        num_labeled=jnp.asarray(num_labeled, jnp.int32),
        diagnostic_labels=jnp.asarray(diagnostic_labels, jnp.int32),
        propagated=None if propagated is None else jnp.asarray(propagated, jnp.float32))


def cosine_7_16(lr: float, steps: int) -> optax.Schedule:
    """FixMatch's schedule: lr · cos(7πk / 16K)."""
    return lambda k: lr * jnp.cos(7.0 * jnp.pi * k / (16.0 * steps))


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """SGD (Nesterov) with L2 weight decay added to the gradient of kernels only.

    With ``encoder_lr_scale != 1`` or ``freeze_encoder_fraction > 0`` (fine-tuning
    a pretrained encoder) every layer but the classifier gets its updates
    scaled: by 0 for the first `freeze_encoder_fraction` of the steps (the
    classifier alone learns: a linear probe), then by `encoder_lr_scale`.
    """
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: path[-1].key == "kernel", params)
    base = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
        optax.sgd(cosine_7_16(config.lr, config.steps), momentum=config.momentum,
                  nesterov=config.nesterov))
    if config.encoder_lr_scale == 1.0 and config.freeze_encoder_fraction == 0.0:
        return base
    from npc_jax.models import CLASSIFIER

    frozen_steps = int(config.freeze_encoder_fraction * config.steps)
    encoder_scale = lambda step: jnp.where(step < frozen_steps, 0.0, config.encoder_lr_scale)
    label = lambda params: {name: jax.tree_util.tree_map(
        lambda _: "classifier" if name == CLASSIFIER else "encoder", subtree)
        for name, subtree in params.items()}
    return optax.multi_transform(
        {"classifier": base,
         "encoder": optax.chain(base, optax.scale_by_schedule(encoder_scale))}, label)


def start_from(fresh, pretrained):
    """`fresh` variables with every layer but the classifier taken from `pretrained`.

    Fine-tuning from a self-supervised pretraining: the encoder (and its
    BatchNorm statistics) start from the pretrained weights, the classifier
    layer from `fresh` (its pretrained weights were never trained).

    Args:
      fresh: ``{"params", "batch_stats"}`` of a newly initialised network.
      pretrained: the same tree for the same architecture.

    Returns:
      A new tree like `fresh`.
    """
    from npc_jax.models import CLASSIFIER

    def merge(new, old):
        shapes = lambda tree: jax.tree_util.tree_map(jnp.shape, tree)
        if shapes(new) != shapes(old):
            raise ValueError("The pretrained variables do not fit this network (another "
                             "architecture or width); pretrain this model.")
        return {name: (new[name] if name == CLASSIFIER else
                       jax.tree_util.tree_map(jnp.asarray, old[name])) for name in new}

    return {"params": merge(fresh["params"], pretrained["params"]),
            "batch_stats": merge(fresh["batch_stats"], pretrained["batch_stats"])}


def init_state(model: Model, config: TrainConfig, key: jax.Array,
               num_pool: int, init_variables=None) -> TrainState:
    """A fresh training state; with `init_variables` (a pretraining), every layer
    but the classifier starts from them (`start_from`)."""
    variables = model.init(key)
    if init_variables is not None:
        variables = start_from(variables, init_variables)
    params = variables["params"]
    use_darp = config.method == "fixmatch" and config.darp
    # Distinct buffers for every leaf: each step donates the whole state.
    copy = lambda tree: jax.tree_util.tree_map(jnp.array, tree)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=make_optimizer(config).init(params),
        ema_params=copy(params),
        darp=copy(darp.darp_init(num_pool, model.num_classes)) if use_darp else None,
        thresholds=(thresholds.freematch_init(model.num_classes)
                    if config.threshold_mode == "freematch" else None))


def _pool_sharded(config: TrainConfig) -> Mesh | None:
    """The training mesh if `config` splits the pool over it (`pool_layout`), else None."""
    return data_parallel_mesh(config) if config.pool_layout == "sharded" else None


def _block_rows(num_pool: int, num_devices: int) -> int:
    """Rows per device block of a sharded pool, ceil(N / D); every block needs a real row."""
    rows = -(-num_pool // num_devices)
    if num_pool - (num_devices - 1) * rows < 1:
        raise ValueError(
            f"A pool of {num_pool} rows cannot be split into {num_devices} blocks of "
            f"ceil({num_pool}/{num_devices}) = {rows} rows with a real row in each; use "
            "TrainConfig.pool_layout='replicated' for so small a pool, or fewer devices.")
    return rows


def place_pool(images, mesh: Mesh) -> jax.Array:
    """The pool's rows in D equal blocks over `mesh`'s devices, zero rows padding the last.

    Only the blocks of this process's devices are read (a memory-mapped pool is
    read there and nowhere else) and transferred
    (``jax.make_array_from_callback``).

    Args:
      images: (N, H, W, C) host array (numpy or memory map) of the pool.
      mesh: the 1-D training mesh ``("batch",)`` of D devices.

    Returns:
      (D·ceil(N/D), H, W, C) jax.Array sharded ``P("batch")``.
    """
    num_pool, shape = len(images), tuple(np.shape(images)[1:])
    rows = _block_rows(num_pool, mesh.devices.size)
    dtype = np.asarray(images[:1]).dtype

    def block(index):
        start, stop = index[0].start or 0, index[0].stop
        real = np.asarray(images[start:min(stop, num_pool)])
        if len(real) == stop - start:
            return real
        return np.concatenate([real, np.zeros((stop - start - len(real), *shape), dtype)])

    return jax.make_array_from_callback((rows * mesh.devices.size, *shape),
                                        NamedSharding(mesh, PartitionSpec("batch")), block)


@functools.partial(jax.jit, static_argnames=("num_pool", "count", "mesh"))
def sample_pool(key: jax.Array, images: jax.Array, num_pool: int, count: int,
                mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    """`count` pool rows, each device drawing count / D uniformly from its own block.

    Args:
      key: a PRNG key; device d draws with ``fold_in(key, d)``.
      images: the pool from `place_pool` (D blocks of ceil(N/D) rows).
      num_pool: N, the real rows (the last block's padding is never drawn).
      count: rows to draw, a multiple of D.
      mesh: the mesh `images` is sharded over.

    Returns:
      (count, H, W, C) rows and their (count,) int32 pool indices, both
      sharded ``P("batch")`` (device d's draws are its contiguous rows). Jitted,
      so the recalibration's batches compile it once.
    """
    num_devices = mesh.devices.size
    rows = images.shape[0] // num_devices

    def local(block, key):
        device = jax.lax.axis_index("batch")
        real = jnp.clip(num_pool - device * rows, 1, rows)
        index = jax.random.randint(jax.random.fold_in(key, device), (count // num_devices,),
                                   0, real)
        return block[index], (index + device * rows).astype(jnp.int32)

    return shard_map(local, mesh, in_specs=(PartitionSpec("batch"), PartitionSpec()),
                     out_specs=(PartitionSpec("batch"), PartitionSpec("batch")))(images, key)


def _sample_unlabeled(key, data: TrainData, config: TrainConfig):
    """(B·μ, H, W, C) uint8/float pool rows and their (B·μ,) indices: from the whole
    pool, or with a sharded pool from each device's block (`sample_pool`)."""
    count = config.batch_size * config.mu
    mesh = _pool_sharded(config)
    if mesh is not None:
        return sample_pool(key, data.images, data.num_pool, count, mesh)
    index = jax.random.randint(key, (count,), 0, data.num_pool)
    return data.images[index], index


def _sample_labeled(key, data: TrainData, config: TrainConfig):
    """(B, H, W, C) float images and (B,) labels drawn from the labeled set, rows
    sharded over the training mesh."""
    position = jax.random.randint(key, (config.batch_size,), 0, data.num_labeled)
    return (_shard_batch(images_to_float(data.labeled_images[position]), config),
            _shard_batch(data.labeled_labels[position], config))


def _apply_updates(state: TrainState, config: TrainConfig, grads, batch_stats,
                   **replace) -> TrainState:
    tx = make_optimizer(config)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = optax.incremental_update(params, state.ema_params,
                                          1.0 - config.ema_decay)
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state, ema_params=ema_params, **replace)


def supervised_step(state: TrainState, data: TrainData, key: jax.Array, *,
                    model: Model, config: TrainConfig):
    """One step of cross-entropy on weakly augmented labeled images."""
    sample_key, augment_key = jax.random.split(key)
    x, y = _sample_labeled(sample_key, data, config)
    x = augment.weak_augment(augment_key, x, flip=config.flip)

    def loss_fn(params):
        logits, batch_stats = model.apply_train(
            {"params": params, "batch_stats": state.batch_stats}, x)
        loss = fixmatch.cross_entropy(logits, y)
        return loss, (batch_stats, logits)

    (loss, (batch_stats, logits)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, "loss_labeled": loss,
               "train_accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
    return _apply_updates(state, config, grads, batch_stats), metrics


def fixmatch_step(state: TrainState, data: TrainData, key: jax.Array, *,
                  model: Model, config: TrainConfig):
    """One FixMatch(-DARP) step; the unlabeled batch is drawn from the whole pool.

    Longer than ~60 lines on purpose: sampling, the three augmentations, the
    DARP refinement, the thresholds and the joint or separate forward passes
    share traced values inside one jitted step; split into helpers, each
    would pass most of them back and forth.
    """
    keys = dict(zip(("labeled", "unlabeled", "weak_l", "weak_u", "strong_u"),
                    jax.random.split(key, 5)))
    batch_l = config.batch_size
    x_l, y_l = _sample_labeled(keys["labeled"], data, config)
    x_u, u_index = _sample_unlabeled(keys["unlabeled"], data, config)
    x_u = _shard_batch(images_to_float(x_u), config)
    weak_l = augment.weak_augment(keys["weak_l"], x_l, flip=config.flip)
    strong_u = augment.strong_augment(keys["strong_u"], x_u, flip=config.flip)
    darp_active = state.step >= int(config.darp_warmup * config.steps)
    propagated_only = config.pseudo_labels == "propagated"
    if not propagated_only:
        weak_u = augment.weak_augment(keys["weak_u"], x_u, flip=config.flip)

    if propagated_only:   # the targets are given: no weak view at all
        logits_weak = None
        inputs = _shard_batch(jnp.concatenate([weak_l, strong_u]), config)
    elif config.weak_forward == "separate":
        # The weak views only produce pseudo-labels (no gradient): a forward
        # pass of their own saves their backward pass, ~30% of the step.
        logits_weak, _ = model.apply_train(
            {"params": state.params, "batch_stats": state.batch_stats}, weak_u)
        inputs = _shard_batch(jnp.concatenate([weak_l, strong_u]), config)
    else:
        logits_weak = None   # the weak views go through the joint pass
        inputs = _shard_batch(jnp.concatenate([weak_l, weak_u, strong_u]), config)

    def loss_fn(params):
        logits, batch_stats = model.apply_train(
            {"params": params, "batch_stats": state.batch_stats}, inputs)
        logits_l = logits[:batch_l]
        loss_l = fixmatch.cross_entropy(logits_l, y_l)
        if propagated_only:
            loss_u, info = fixmatch.weighted_pseudo_label_loss(
                logits[batch_l:], data.propagated[u_index])
            return (loss_l + config.lambda_u * loss_u,
                    (batch_stats, None, info, loss_l, loss_u, state.thresholds))
        if logits_weak is not None:
            logits_w, logits_strong = logits_weak, logits[batch_l:]
        else:
            logits_w, logits_strong = jnp.split(logits[batch_l:], 2)
        weak_probs = jax.nn.softmax(jax.lax.stop_gradient(logits_w))
        unrefined = weak_probs   # what DARP's buffer holds
        if config.pseudo_labels == "product":
            product = weak_probs * data.propagated[u_index]
            unrefined = product / jnp.maximum(product.sum(-1, keepdims=True), 1e-12)
        pseudo = unrefined
        if state.darp is not None:
            pseudo = darp.darp_pseudo_labels(state.darp, u_index, unrefined,
                                             active=darp_active)
        threshold_state = state.thresholds
        if threshold_state is None:
            threshold = config.threshold
        else:
            threshold_state = thresholds.freematch_update(threshold_state, pseudo,
                                                          config.threshold_ema)
            threshold = thresholds.class_thresholds(threshold_state)
        loss_u, info = fixmatch.pseudo_label_loss(logits_strong, pseudo, threshold)
        loss = loss_l + config.lambda_u * loss_u
        return loss, (batch_stats, unrefined, info, loss_l, loss_u, threshold_state)

    (loss, (batch_stats, unrefined, info, loss_l, loss_u, threshold_state)), grads = (
        jax.value_and_grad(loss_fn, has_aux=True)(state.params))

    new_darp = state.darp
    if new_darp is not None and not propagated_only:
        new_darp = darp.darp_update(new_darp, u_index, unrefined)
        refresh = darp_active & (state.step % config.darp_every == 0)
        target = darp.uniform_target(data.num_pool, model.num_classes)
        new_darp = jax.lax.cond(
            refresh,
            lambda s: darp.darp_refresh(s, target, max_iters=config.darp_iters),
            lambda s: s, new_darp)

    true_u = data.diagnostic_labels[u_index]
    accepted = info.mask * (true_u >= 0)
    metrics = {
        "loss": loss, "loss_labeled": loss_l, "loss_unlabeled": loss_u,
        "mask_rate": jnp.mean(info.mask),
        # Diagnostics only: how many accepted pseudo-labels are right.
        "pseudo_label_accuracy": jnp.sum(accepted * (info.pseudo_labels == true_u))
        / jnp.maximum(jnp.sum(accepted), 1.0),
    }
    if threshold_state is not None:
        metrics["mean_threshold"] = jnp.mean(thresholds.class_thresholds(threshold_state))
    return _apply_updates(state, config, grads, batch_stats, darp=new_darp,
                          thresholds=threshold_state), metrics


@functools.partial(jax.jit, static_argnames=("step_fn", "model", "config"),
                   donate_argnums=(0,))
def train_step(state: TrainState, data: TrainData, key: jax.Array, *,
               step_fn, model: Model, config: TrainConfig):
    """One jitted training step, as `train` runs it: `step_fn` (`supervised_step`
    or `fixmatch_step`) with the step's key folded in from `key` and
    `state.step`. `state` is donated. Returns (state, metrics).

    On D > 1 devices (`data_parallel_mesh`) `state` and `data` should be
    replicated over the mesh (`train` places them); the batch is sharded
    inside, and the new state and metrics come back replicated."""
    # One jitted step per call, not a lax.scan of steps: XLA:CPU compiles
    # convolutions inside loops without its fast (Eigen/oneDNN) kernels, which
    # measured 20-40x slower here. Dispatch is asynchronous, so the host does
    # not wait on the device between steps.
    out = step_fn(state, data, jax.random.fold_in(key, state.step), model=model,
                  config=config)
    return _replicated(out, data_parallel_mesh(config), traced=True)


def train(model: Model, config: TrainConfig, data: TrainData, key: jax.Array, *,
          progress: bool = False, description: str = "train", init_variables=None):
    """Trains a fresh network; returns (TrainState, history).

    Args:
      model: the network to train (from scratch, or from `init_variables`).
      config: hyperparameters.
      data: from `make_train_data`.
      key: the training's key; split here into ``init``, ``steps`` and
        ``recalibrate`` keys.
      progress: show a tqdm bar over the steps.
      init_variables: a pretraining's variables to fine-tune from (the
        classifier layer is initialised afresh from the key); None: scratch.

    Returns:
      The final state (evaluate ``state.eval_variables``) and a list of
      per-chunk metric dicts (means over the chunk, with the last step index).
      On D > 1 devices the state's arrays are replicated over all local
      devices (ready for `npc_jax.inference`, which shards pool chunks over
      them).
    """
    mesh = data_parallel_mesh(config)   # raises early on a batch that does not divide
    if config.method == "fixmatch" and config.pseudo_labels != "model" and (
            data.propagated is None):
        raise ValueError(f"TrainConfig.pseudo_labels={config.pseudo_labels!r} needs "
                         "TrainData.propagated (make_train_data(..., propagated=...)); "
                         "in a run, config.init='pretrained' provides it.")
    init_key, steps_key, recalibrate_key = jax.random.split(key, 3)
    state = init_state(model, config, init_key, data.num_pool, init_variables)
    pool_mesh = _pool_sharded(config)
    if pool_mesh is not None:   # the pool in blocks; everything else replicated
        images = place_pool(data.images, pool_mesh)
        state, data = _replicated((state, data._replace(images=None)), mesh)
        data = data._replace(images=images)
    elif mesh is not None:
        state, data = _replicated((state, data), mesh)
    else:
        data = jax.device_put(data)   # the pool on the device once, not per step
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.steps, desc=description, leave=False, unit="step")
    done = 0
    warmup_steps = int(config.supervised_warmup * config.steps)
    while done < config.steps:
        num_steps = min(config.chunk_steps, config.steps - done)
        chunk = []
        for step in range(done, done + num_steps):
            step_fn = (supervised_step if config.method == "supervised" or step < warmup_steps
                       else fixmatch_step)
            state, step_metrics = train_step(state, data, steps_key, step_fn=step_fn,
                                             model=model, config=config)
            chunk.append(step_metrics)
        done += num_steps
        metrics = {k: float(np.mean([m[k] for m in jax.device_get(chunk) if k in m]))
                   for k in chunk[-1]}
        if not np.isfinite(metrics["loss"]):
            raise FloatingPointError(
                f"Training diverged at step {done}: loss = {metrics['loss']}. "
                "Lower TrainConfig.lr or check the inputs for NaN.")
        history.append({"step": done, **metrics})
        if bar is not None:
            bar.update(num_steps)
            bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items()
                             if k in ("loss", "mask_rate", "pseudo_label_accuracy")})
    if bar is not None:
        bar.close()
    if config.recalibrate_batches:
        variables = {"params": state.ema_params, "batch_stats": state.batch_stats}
        if pool_mesh is not None:
            stats = _recalibrate_from_blocks(model, variables, data, recalibrate_key,
                                             config=config, mesh=pool_mesh)
        else:
            stats = recalibrate_batch_stats(
                model, variables, data.images, recalibrate_key,
                num_batches=config.recalibrate_batches, batch_size=config.eval_batch_size,
                mesh=mesh)
        state = state.replace(ema_batch_stats=stats)
    if mesh is not None and mesh.devices.size < jax.local_device_count():
        state = _replicated(state, local_mesh())   # a sub-mesh: onto every device
    return state, history


def recalibrate_batch_stats(model: Model, variables, images, key: jax.Array, *,
                            num_batches: int, batch_size: int, mesh: Mesh | None = None):
    """BatchNorm statistics for `variables`' weights, from random pool batches.

    Averages the per-batch means and variances of `num_batches` batches of
    `batch_size` clean images drawn without replacement (fewer if the pool is
    smaller). With a `mesh` (``("batch",)``, `data_parallel_mesh`) each batch
    whose size divides over it is sharded over its devices; the statistics
    are still those of the whole batch. Returns a tree like
    ``variables["batch_stats"]``.
    """
    num = min(num_batches * batch_size, len(images))
    order = np.asarray(jax.random.permutation(key, len(images))[:num])
    size = min(batch_size, num)
    sharded = mesh is not None and size % mesh.devices.size == 0
    place = ((lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch"))))
             if sharded else (lambda x: x))
    stats = [_batch_statistics(model, variables, place(images[np.sort(order[i:i + size])]))
             for i in range(0, num - size + 1, size)]
    return _mean_of_trees(stats)


def _recalibrate_from_blocks(model: Model, variables, data: TrainData, key: jax.Array, *,
                             config: TrainConfig, mesh: Mesh):
    """`recalibrate_batch_stats` for a sharded pool: each batch drawn by `sample_pool`
    (each device from its own block, with replacement), statistics of the whole batch."""
    num_devices = mesh.devices.size
    size = min(config.eval_batch_size, data.num_pool)
    size = max(num_devices, size // num_devices * num_devices)
    stats = []
    for batch_key in jax.random.split(key, config.recalibrate_batches):
        images, _ = sample_pool(batch_key, data.images, data.num_pool, size, mesh)
        stats.append(_batch_statistics(model, variables, images))
    return _mean_of_trees(stats)


def _mean_of_trees(trees):
    """The leafwise mean of a list of like pytrees (per-batch BatchNorm statistics)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.mean(jnp.stack(xs), axis=0), *trees)


@functools.partial(jax.jit, static_argnames=("model",))
def _batch_statistics(model: Model, variables, images):
    return model.batch_statistics(variables, images_to_float(images))


def timed_train(*args, **kwargs):
    """`train` plus its wall time in seconds."""
    start = time.perf_counter()
    state, history = train(*args, **kwargs)
    jax.block_until_ready(state.params)
    return state, history, time.perf_counter() - start
