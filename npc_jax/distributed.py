"""Multi-host runs on JAX's own engine (`jax.distributed`): one process per host.

    # on each of N hosts, process i (0 <= i < N), all with the same config and workdir:
    NPC_JAX_COORDINATOR=host0:1234 NPC_JAX_NUM_PROCESSES=N NPC_JAX_PROCESS_ID=i \
        python experiments/assl.py --config ... --workdir /shared/runs/x

`initialize` reads the coordinator address (``host:port`` of process 0, or
``auto`` for JAX's cluster detection: SLURM, Open MPI, ...), the process count
and this process's id from its arguments, else from ``NPC_JAX_COORDINATOR``,
``NPC_JAX_NUM_PROCESSES``, ``NPC_JAX_PROCESS_ID``, else from JAX's own
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; none
set is a single-process run (nothing to do). A partial or malformed setting
raises `DistributedError` naming the variable and the fix. On CPU it selects
gloo collectives (JAX 0.5.3 has none by default), so N processes on one
machine can test the whole path.

What a multi-process run does (SPMD: every process runs the same program on
the same config and data, `npc_jax.loop`):

- Training (`TrainConfig.devices = 0`) and pool passes (`inference.chunked_map`)
  run over the mesh of every device of every process (`global_mesh`, the
  processes' devices in process order). A training step's batch is sharded
  over all of them, the state and the pool replicated, as on one host.
- A pool pass transfers to the devices only this process's rows of each chunk
  (`process_rows`, `place_rows`: ``jax.make_array_from_process_local_data``),
  and all-gathers the outputs (`to_host`), so every process holds the same
  scores and makes the same picks from the same key.
- Only process 0 (`is_writer`) writes records, checkpoints and summaries; the
  others compute the same thing and write nothing. They read the workdir to
  resume, so it must be one directory shared by all hosts (`check_same`
  refuses a run whose processes see different records or checkpoints).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, Sharding

__all__ = ["ENVIRONMENT", "DistributedError", "Setup", "barrier", "check_same", "global_mesh",
           "initialize", "is_multiprocess", "is_writer", "place_rows", "process_rows",
           "resolve", "to_host"]

# Setting -> the environment variables read for it, in order (ours, then JAX's).
ENVIRONMENT = {
    "coordinator": ("NPC_JAX_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("NPC_JAX_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("NPC_JAX_PROCESS_ID", "JAX_PROCESS_ID"),
}
_FIX = ("set NPC_JAX_COORDINATOR (host:port of process 0), NPC_JAX_NUM_PROCESSES (N) and "
        "NPC_JAX_PROCESS_ID (0..N-1, one per process) on every process, or none of them for "
        "a single process")


class DistributedError(ValueError):
    """A multi-process setting that cannot work; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """Where this process stands in the run.

    coordinator: ``host:port`` of process 0, "auto" (JAX's cluster detection
      fills in all three), or None for a single process.
    num_processes: N (1: a single process; None with "auto").
    process_id: this process, 0..N-1 (None with "auto").
    """

    coordinator: str | None = None
    num_processes: int | None = 1
    process_id: int | None = 0

    @property
    def single(self) -> bool:
        return self.coordinator is None


def _lookup(name: str, given, environ: Mapping[str, str]) -> tuple[Any, str]:
    """(value, where it came from) of one setting: the argument, else the first env var set."""
    if given is not None:
        return given, f"the {name} argument"
    for variable in ENVIRONMENT[name]:
        value = environ.get(variable, "").strip()
        if value:
            return value, variable
    return None, ENVIRONMENT[name][0]


def _as_int(value, source: str, what: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise DistributedError(f"{source} must be an integer ({what}), got {value!r}; "
                               f"{_FIX}.") from None


def resolve(coordinator: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, *,
            environ: Mapping[str, str] | None = None) -> Setup:
    """The `Setup` the arguments and the environment ask for (pure: initialises nothing).

    Args:
      coordinator, num_processes, process_id: explicit settings; each None
        falls back to `ENVIRONMENT`'s variables (ours first, then JAX's).
      environ: the environment (default ``os.environ``).

    Raises:
      DistributedError: some settings given and others missing, a count or id
        that is not an integer in range, or an address without a port.
    """
    environ = os.environ if environ is None else environ
    (address, address_from), (count, count_from), (index, index_from) = (
        _lookup(name, given, environ) for name, given in
        (("coordinator", coordinator), ("num_processes", num_processes),
         ("process_id", process_id)))
    if address is not None and str(address).strip() == "auto":
        if count is not None or index is not None:
            extra = count_from if count is not None else index_from
            raise DistributedError(
                f"{address_from}=auto lets JAX detect the cluster (SLURM, Open MPI, ...), "
                f"which sets the process count and id itself, but {extra} is set too; "
                "unset it, or give a host:port address.")
        return Setup("auto", None, None)
    if count is not None:
        count = _as_int(count, count_from, "the number of processes, one per host")
        if count < 1:
            raise DistributedError(f"{count_from} must be >= 1 (the number of processes), "
                                   f"got {count}; {_FIX}.")
    if index is not None:
        index = _as_int(index, index_from, "this process's id, 0..N-1")
    if address is None and (count in (None, 1)) and index in (None, 0):
        return Setup()   # a single process
    missing = [source for value, source in ((address, address_from), (count, count_from),
                                            (index, index_from)) if value is None]
    if missing:
        given = [f"{source}={value}" for value, source in
                 ((address, address_from), (count, count_from), (index, index_from))
                 if value is not None]
        raise DistributedError(f"A multi-process run is half set up: {', '.join(given)} but "
                               f"{' and '.join(missing)} unset; {_FIX}.")
    address = str(address).strip()
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"{address_from} must be host:port of process 0 (e.g. "
                               f"10.0.0.1:1234, a free port on that host), got {address!r}.")
    if not 0 <= index < count:
        raise DistributedError(f"{index_from} must be in 0..{count - 1} ({count_from} = {count}), "
                               f"got {index}; give each process its own id.")
    return Setup(address, count, index)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, environ: Mapping[str, str] | None = None,
               timeout_s: int = 300) -> Setup:
    """Joins the multi-process run that the arguments or the environment describe (once).

    Call it before any JAX computation (`npc_jax.loop.run` calls it first
    thing). Without settings it does nothing (a single process); called again
    with the settings it was initialised with, it does nothing either. On CPU
    it selects gloo collectives unless ``jax_cpu_collectives_implementation``
    is already set.

    Args:
      coordinator, num_processes, process_id, environ: as in `resolve`.
      timeout_s: how long to wait for every process to join.

    Returns:
      The `Setup` (for "auto": with the detected count and id).

    Raises:
      DistributedError: a bad setting (`resolve`), JAX already computing in
        this process, or JAX already initialised with other settings.
    """
    setup = resolve(coordinator, num_processes, process_id, environ=environ)
    if jax.distributed.is_initialized():
        current = (jax.process_count(), jax.process_index())
        if setup.single or setup.coordinator == "auto" or \
                (setup.num_processes, setup.process_id) == current:
            return Setup(setup.coordinator or "initialized", *current)
        raise DistributedError(f"jax.distributed is already initialised as process "
                               f"{current[1]} of {current[0]}, but now asked for process "
                               f"{setup.process_id} of {setup.num_processes}; initialise once.")
    if setup.single:
        return setup
    if jax.config.jax_cpu_collectives_implementation is None:   # JAX < 0.6: no CPU collectives
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        if setup.coordinator == "auto":
            jax.distributed.initialize(initialization_timeout=timeout_s)
        else:
            jax.distributed.initialize(setup.coordinator, setup.num_processes, setup.process_id,
                                       initialization_timeout=timeout_s)
    except RuntimeError as error:
        if "before" in str(error):   # "must be called before any JAX computations"
            raise DistributedError(
                "jax.distributed must be initialised before this process computes anything "
                "with JAX; call npc_jax.distributed.initialize() (or npc_jax.loop.run, with "
                "the NPC_JAX_* variables set) before any other JAX call.") from None
        raise
    if (jax.__version_info__ < (0, 6) and jax.local_device_count() > 1
            and jax.local_devices()[0].platform == "cpu"):
        raise DistributedError(
            f"JAX {jax.__version__}'s gloo CPU collectives fail with more than one CPU device "
            f"per process (this one has {jax.local_device_count()}: a FixMatch step aborted "
            "with 'gloo::EnforceNotMet ... op.preamble.length <= op.nbytes'); give each "
            "process one CPU device (drop --xla_force_host_platform_device_count), or use "
            "JAX >= 0.6 (scripts/setup_current_jax.sh), where that works.")
    return Setup(setup.coordinator, jax.process_count(), jax.process_index())


def is_multiprocess() -> bool:
    """Whether this process is one of several (`jax.distributed` initialised with N > 1)."""
    return jax.process_count() > 1


def is_writer() -> bool:
    """Whether this process writes the run's files: process 0 (always, alone)."""
    return jax.process_index() == 0


def global_mesh(axis: str = "rows") -> Mesh:
    """The 1-D mesh ``(axis,)`` of every device of every process, in process order.

    A ``P(axis)``-sharded array then holds one contiguous block of rows per
    process (`process_rows`).
    """
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (axis,))


def process_rows(sharding: Sharding, num_rows: int) -> tuple[int, int]:
    """[start, stop) of the rows of a (num_rows, ...) array that this process's devices
    hold under `sharding` (rows split over a mesh axis, `global_mesh`)."""
    blocks = sharding.addressable_devices_indices_map((num_rows,)).values()
    starts = [block[0].start or 0 for block in blocks]
    stops = [num_rows if block[0].stop is None else block[0].stop for block in blocks]
    start, stop = min(starts), max(stops)
    if stop - start != sum(b - a for a, b in sorted(set(zip(starts, stops)))):
        raise ValueError(f"This process's rows under {sharding} are not one contiguous block; "
                         "build the mesh with distributed.global_mesh (devices in process order).")
    return start, stop


def place_rows(local: np.ndarray, sharding: Sharding, num_rows: int) -> jax.Array:
    """The global (num_rows, ...) array whose rows `process_rows` are `local`.

    Each process passes only its own rows (``jax.make_array_from_process_local_data``):
    no process needs the others' data.
    """
    return jax.make_array_from_process_local_data(sharding, np.asarray(local),
                                                  (num_rows, *np.shape(local)[1:]))


def to_host(tree):
    """`tree`'s leaves as numpy arrays; leaves spread over other processes' devices are
    all-gathered first (a collective: every process must call it)."""
    def host(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)

    return jax.tree_util.tree_map(host, tree)


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (no-op in a single process).

    After process 0 writes a file that the others read, so they find it."""
    if is_multiprocess():
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def check_same(value: str, what: str, fix: str) -> None:
    """Raises `DistributedError` on every process unless all processes pass an equal `value`.

    Args:
      value: this process's view of something every process must agree on
        (e.g. a digest of the records it read).
      what: what it is, for the message ("the records of runs/x").
      fix: what to do, for the message.
    """
    if not is_multiprocess():
        return
    from jax.experimental import multihost_utils
    digest = np.frombuffer(hashlib.sha256(value.encode()).digest()[:8], np.int32)
    views = np.asarray(multihost_utils.process_allgather(digest)).reshape(jax.process_count(), -1)
    differ = [i for i in range(len(views)) if not np.array_equal(views[i], views[0])]
    if differ:
        raise DistributedError(f"Processes {differ} see other {what} than process 0; {fix}.")
