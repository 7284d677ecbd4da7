"""The strategies' own pool loops over this process's devices: pad, place, reduce.

The greedy loops of coreset (k-center) and BADGE (k-means++ seeding) and the
row blocks of the neighbourhood passes (`neighbours`) keep the pool on the
devices and loop on them. With D > 1 local devices (`inference.local_mesh`:
several GPUs, or fake CPU devices under
``XLA_FLAGS=--xla_force_host_platform_device_count=8``) they shard the pool
axis ``P("rows")`` under ``shard_map``: the N rows padded to a multiple of D
(`padded_length`, padding rows that can never be picked), one contiguous slice
per device, and each step's selection reduced across the devices with
`first_max` / `first_min` (the first extreme in pool order, as ``jnp.argmax``
on one device) and `owner_row` (the chosen row sent to every device). Each
process shards over its own devices: every process holds the pool's features
(all-gathered by the pool pass) and computes the same picks. With one device
(`mesh()` is None) every caller keeps its single-device code unchanged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from npc_jax import inference
from npc_jax.inference import local_mesh

__all__ = ["first_max", "first_min", "mask_row", "mesh", "owner_row", "pad_to", "padded_length", "place",
           "rows_spec", "shard_map"]


def mesh() -> Mesh | None:
    """The 1-D mesh ``("rows",)`` of this process's devices, or None with one device."""
    return local_mesh()


def rows_spec(mesh_: Mesh) -> PartitionSpec:
    """``P("rows")``: the leading axis split over the mesh."""
    return PartitionSpec(mesh_.axis_names[0])


def padded_length(n: int, mesh_: Mesh) -> int:
    """n rounded up to a multiple of the mesh's device count."""
    size = mesh_.devices.size
    return -(-int(n) // size) * size


def pad_to(x: np.ndarray, length: int, value=0) -> np.ndarray:
    """`x` (n, ...) padded to (length, ...) with `value`."""
    x = np.asarray(x)
    widths = [(0, length - len(x))] + [(0, 0)] * (x.ndim - 1)
    return np.pad(x, widths, constant_values=value)


def place(x, mesh_: Mesh) -> jax.Array:
    """`x` (n, ...) on the mesh, rows split ``P("rows")`` (n a multiple of the devices)."""
    return jax.device_put(x, NamedSharding(mesh_, rows_spec(mesh_)))


def shard_map(fn, mesh_: Mesh, in_specs, out_specs):
    """`fn` mapped per device (`inference.shard_map`), the replication check off: the
    bodies here make their replicated outputs with collectives (`first_max`,
    `owner_row`), which the check cannot always see through a loop on older JAX."""
    return inference.shard_map(fn, mesh_, in_specs, out_specs, check_replication=False)


def _offset(local_rows: int, axis: str):
    return jax.lax.axis_index(axis) * local_rows


def _first_extreme(local: jax.Array, axis: str, *, largest: bool):
    """(global index, value) of the first maximum (`largest`) or minimum of a (n,) vector
    whose rows are split over `axis`, the same on every device."""
    i = jnp.argmax(local) if largest else jnp.argmin(local)
    value = local[i]
    best = (jax.lax.pmax if largest else jax.lax.pmin)(value, axis)
    index = _offset(local.shape[0], axis) + i
    return jax.lax.pmin(jnp.where(value == best, index, jnp.iinfo(jnp.int32).max), axis), best


def first_max(local: jax.Array, axis: str) -> tuple[jax.Array, jax.Array]:
    """Inside `shard_map`: (global index, value) of the first maximum of a (n,) vector whose
    rows are split over `axis`, the same on every device (= ``jnp.argmax`` of the whole)."""
    return _first_extreme(local, axis, largest=True)


def first_min(local: jax.Array, axis: str) -> tuple[jax.Array, jax.Array]:
    """Inside `shard_map`: (global index, value) of the first minimum (= ``jnp.argmin``)."""
    return _first_extreme(local, axis, largest=False)


def owner_row(local: jax.Array, index, axis: str) -> jax.Array:
    """Inside `shard_map`: row `index` (global) of an (n, ...) array whose rows are split over
    `axis`, on every device (the owner's row, zeros elsewhere, summed: exact)."""
    rows = local.shape[0]
    position = index - _offset(rows, axis)
    owned = (position >= 0) & (position < rows)
    row = local[jnp.clip(position, 0, rows - 1)]
    return jax.lax.psum(jnp.where(owned, row, jnp.zeros_like(row)), axis)


def mask_row(local: jax.Array, index, value, axis: str) -> jax.Array:
    """Inside `shard_map`: the local (n,) slice with global row `index` set to `value`."""
    rows = local.shape[0]
    positions = _offset(rows, axis) + jnp.arange(rows)
    return jnp.where(positions == index, value, local)
