"""Inference over many samples, in fixed-size chunks: pad, jit once, slice.

Every pass of a model (or of any per-sample function) over a pool, a test
split or a set of candidate batches goes through `chunked_map`: the last
chunk is padded with copies of its last row so that one compilation serves
every chunk, outputs are moved to the host and sliced back to the real rows.
Memory: one chunk on the device, the (reduced) outputs on the host.

    logits = inference.batched_apply(model.apply_fn, variables, images)   # (N, C)
    accuracy = inference.evaluate(model, variables, images, labels)

Devices. With more than one local device (several GPUs, or fake CPU devices
under ``XLA_FLAGS=--xla_force_host_platform_device_count=8``) each chunk's
rows are sharded over all of them: the chunk size is rounded up to a multiple
of the device count, each padded chunk is placed with
``NamedSharding(local_mesh(), P("rows"))`` (rows split, one contiguous block
per device) and a jitted `fn` runs data-parallel under XLA's partitioner; the
outputs are gathered to the host. Every pool pass (inference, the baselines'
scores, the embeddings, kernel blocks) therefore uses every device. With one
device nothing changes: same chunk size, plain numpy chunks.

Processes. In a multi-process run (`npc_jax.distributed`, one process per
host) `device_mesh` is the mesh of every device of every process: each
process places only its own rows of each chunk
(``jax.make_array_from_process_local_data``, reading only those rows of the
input arrays) and the outputs are all-gathered, so every process gets the
same outputs.

Also here, because every layer above needs them: `check_finite` (the one
NaN/inf guard, naming the rows and the fix), `numpy_rng` (a numpy
Generator from a JAX key, for host-side sampling) and `local_mesh` (the 1-D
device mesh of this process, shared with data-parallel training).
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from npc_jax import distributed
from npc_jax.data import images_to_float

if TYPE_CHECKING:   # the type only: inference stays free of flax
    from npc_jax.models import Model

__all__ = ["NonFiniteError", "batched_apply", "check_finite", "chunked_map", "device_mesh",
           "evaluate", "local_mesh", "numpy_rng", "pad_rows", "predict", "shard_map"]


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


def shard_map(fn, mesh: Mesh, in_specs, out_specs, *, check_replication: bool = True):
    """`fn` mapped per device of `mesh`: ``jax.shard_map`` on current JAX,
    ``jax.experimental.shard_map.shard_map`` before JAX 0.6.

    `check_replication=False` turns off the check of replicated outputs (for
    bodies that make them with collectives inside a loop, which older JAX's
    check cannot see through).
    """
    if hasattr(jax, "shard_map"):
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                             **({} if check_replication else {"check_vma": False}))
    from jax.experimental.shard_map import shard_map as experimental
    return experimental(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                        **({} if check_replication else {"check_rep": False}))


@functools.lru_cache(maxsize=None)
def local_mesh(devices: int = 0, axis: str = "rows") -> Mesh | None:
    """The 1-D mesh ``(axis,)`` over the first `devices` local devices, or None for one.

    Args:
      devices: how many of this process's devices (``jax.local_devices()``,
        in their order); 0 means all of them.
      axis: the mesh axis name ("rows" for pool chunks, "batch" for training).

    Returns:
      A `jax.sharding.Mesh` of shape ``(devices,)``, or None when that is a
      single device (callers then keep their single-device path unchanged).
    """
    available = jax.local_devices()
    devices = int(devices)
    if devices < 0 or devices > len(available):
        raise ValueError(f"Asked for {devices} devices but this process has "
                         f"{len(available)} ({available[0].platform}); use 0 (all) or "
                         f"1..{len(available)}.")
    chosen = available[:devices or len(available)]
    return None if len(chosen) == 1 else Mesh(np.array(chosen), (axis,))


def device_mesh(devices: int = 0, axis: str = "rows") -> Mesh | None:
    """The mesh that pool passes and training shard over.

    `local_mesh(devices, axis)`, except in a multi-process run
    (`npc_jax.distributed`) with ``devices = 0``: then the 1-D mesh ``(axis,)``
    of every device of every process (`distributed.global_mesh`). A positive
    `devices` keeps to this process's first `devices` devices (each process
    then computes the whole thing itself).
    """
    if int(devices) == 0 and distributed.is_multiprocess():
        return distributed.global_mesh(axis)
    return local_mesh(devices, axis)


def _stays_on_host(chunk: np.ndarray) -> bool:
    """Whether a device copy would change `chunk` (a dtype JAX would narrow: float64 or
    int64 without x64), so it is passed on as numpy."""
    return chunk.dtype == object or jax.dtypes.canonicalize_dtype(chunk.dtype) != chunk.dtype


def _placed(chunk: np.ndarray, sharding):
    """`chunk` on the devices with its rows sharded, or unchanged on the host where a
    device copy would change it (`_stays_on_host`)."""
    if sharding is None or _stays_on_host(chunk):
        return chunk
    return jax.device_put(chunk, sharding)


def chunked_map(fn: Callable[..., Any], *arrays, chunk_size: int, devices: int = 0):
    """``fn(*chunks) -> pytree of (chunk_size, ...)`` over arrays of N rows.

    Args:
      fn: a function of `len(arrays)` arrays sharing their leading axis,
        returning a pytree of arrays with that leading axis; called with
        exactly the same number of rows each time (so a jitted `fn` compiles
        once). Rows must be independent: row i of the output depends on row
        i of the inputs only.
      *arrays: (N, ...) arrays, indexed on the host chunk by chunk.
      chunk_size: rows per call (with D > 1 devices: rounded up to a
        multiple of D).
      devices: local devices to shard each chunk's rows over (0: all,
        1: none, `device_mesh`; 0 in a multi-process run: every device of
        every process). With D > 1 each chunk (chunk_size, ...) is passed as a jax.Array sharded ``P("rows")`` over the D devices
        (chunk_size / D rows each); chunks of a dtype JAX would narrow
        (float64/int64 without x64) stay numpy. With one device chunks are
        numpy arrays, as before.

    Returns:
      The pytree of `fn`'s outputs, as numpy arrays of N rows (gathered from
      the devices).
    """
    if int(chunk_size) != chunk_size or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    mesh = device_mesh(devices)
    sharding = None
    if mesh is not None:
        num = mesh.devices.size
        chunk_size = -(-int(chunk_size) // num) * num
        sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"chunked_map needs arrays of one length, got "
                         f"{[len(a) for a in arrays]}.")
    if n == 0:   # e.g. the labeled set of a zero-shot round
        probe = [jax.ShapeDtypeStruct((chunk_size, *np.shape(a)[1:]), np.asarray(a).dtype)
                 for a in arrays]
        shapes = jax.eval_shape(fn, *probe)
        return jax.tree_util.tree_map(lambda s: np.zeros((0, *s.shape[1:]), s.dtype), shapes)
    if sharding is not None and not sharding.is_fully_addressable:
        return _chunked_map_processes(fn, arrays, n, chunk_size, sharding)
    outputs = []
    for start in range(0, n, chunk_size):
        chunks = [np.asarray(a[start:start + chunk_size]) for a in arrays]
        real = len(chunks[0])
        out = fn(*[_placed(pad_rows(c, chunk_size), sharding) for c in chunks])
        outputs.append(jax.tree_util.tree_map(lambda o: np.asarray(o)[:real], out))
    if len(outputs) == 1:
        return outputs[0]
    return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *outputs)


def _chunked_map_processes(fn, arrays, n: int, chunk_size: int, sharding):
    """`chunked_map` over the devices of several processes: each process reads and places
    its own rows of each padded chunk; the outputs are all-gathered."""
    start_row, stop_row = distributed.process_rows(sharding, chunk_size)
    outputs = []
    for start in range(0, n, chunk_size):
        real = min(chunk_size, n - start)
        # This process's rows of the chunk padded with copies of its last real row.
        rows = start + np.minimum(np.arange(start_row, stop_row), real - 1)
        chunks = [np.asarray(a[rows]) for a in arrays]
        if any(_stays_on_host(c) for c in chunks):   # every process maps the whole chunk
            placed = [pad_rows(np.asarray(a[start:start + chunk_size]), chunk_size)
                      for a in arrays]
        else:
            placed = [distributed.place_rows(c, sharding, chunk_size) for c in chunks]
        out = distributed.to_host(fn(*placed))
        outputs.append(jax.tree_util.tree_map(lambda o: o[:real], out))
    if len(outputs) == 1:
        return outputs[0]
    return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *outputs)


def batched_apply(fn: Callable, variables, images, *, batch_size: int = 1000,
                  devices: int = 0):
    """``fn(variables, float_images) -> pytree of (B, ...)`` over N images.

    `fn` should be a stable callable (a module-level function or a bound
    method of a hashable object, e.g. ``model.apply_with_features``): its
    jitted version is cached by identity. Images (N, H, W, C) are uint8 or
    floats in [0, 1], converted on the device. With D > 1 local devices each
    batch is sharded over them (`chunked_map`: `batch_size` rounded up to a
    multiple of D, rows ``P("rows")``, `variables` replicated); `devices`
    as in `chunked_map` (0: all local devices, 1: one).

    Returns:
      The pytree of outputs, numpy, N rows.
    """
    jitted = _jit_apply(fn)
    return chunked_map(functools.partial(jitted, variables), np.asarray(images),
                       chunk_size=batch_size, devices=devices)


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
