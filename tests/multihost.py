"""Checks run by tests/test_multihost.py: 2 processes on localhost, or 1 reference process.

    # process i of 2, 2 fake CPU devices each (the test starts both):
    NPC_JAX_COORDINATOR=localhost:PORT NPC_JAX_NUM_PROCESSES=2 NPC_JAX_PROCESS_ID=i \
        XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python tests/multihost.py DATA.npz OUT_DIR WORKDIR
    # the reference: one process, as many devices in all
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/multihost.py DATA.npz OUT_DIR

Each process writes ``OUT_DIR/process-<i>.npz`` (arrays) and ``.json`` (the
rest): `batched_apply` (logits, features) and `min_eigenvalue(backend="device")`
over the pool, the picks of NPC and margin from one key with fixed weights,
the 4 training steps of the run's `TrainConfig` (``MULTIHOST_MODE``: asl =
supervised, the test's; assl = FixMatch-DARP, the default) over every device
of every process (``devices = 0``), the same training with the pool split
into per-device blocks (``pool_layout="sharded"``) read from a memory-mapped
copy of the data (``DATA_npy/``, `npc_jax.data.save_npy_dataset`, when it
exists) with the pool rows this process read, and, with a WORKDIR (from that
copy with the sharded layout, when it exists), the records of a `loop.run` plus every write
this process made under WORKDIR (an audit hook: opens for writing, renames,
removals, mkdirs). Not collected by pytest (no test_ prefix).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")

MODE = os.environ.get("MULTIHOST_MODE", "assl")   # the run's config.mode (the test: asl)
TIMING = ("acquisition_seconds", "train_seconds", "train_metrics")


def _audit_writes(root: Path) -> list:
    """Starts recording this process's writes under `root`; returns the list it fills."""
    root, seen = str(root.resolve()), []

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1] or "r", args[2] or 0
            writing = any(c in str(mode) for c in "wax+") or flags & (
                os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC)
            paths = [args[0]] if writing else []
        elif event in ("os.rename", "os.replace", "os.remove", "os.unlink", "os.mkdir",
                       "os.rmdir", "os.truncate"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for path in paths:
            path = os.path.abspath(os.fsdecode(path))
            if path.startswith(root):
                seen.append(f"{event} {path}")

    sys.addaudithook(hook)
    return seen


class _RowsRead:
    """Mixed into a view of a memory map: records the rows each indexing reads."""

    def __getitem__(self, index):
        rows = index[0] if isinstance(index, tuple) else index
        if isinstance(rows, slice):
            self.reads.update(range(*rows.indices(len(self))))
        elif not isinstance(rows, type(Ellipsis)):
            self.reads.update(int(i) for i in np.ravel(rows))
        return np.asarray(super().__getitem__(index))


def sharded_training(npy_dir: Path, settings, model, arrays: dict, info: dict) -> None:
    """The run's training with the pool in per-device blocks (pool_layout="sharded") from
    a memory-mapped npy: dataset: its weights, and which pool rows this process read."""
    import dataclasses

    import jax

    from npc_jax import train
    from npc_jax.data import load_dataset

    data = load_dataset(f"npy:{npy_dir}")
    images = data.x_train.view(type("Recorded", (_RowsRead, np.memmap), {}))
    images.reads = set()
    labeled = np.arange(8)
    config = dataclasses.replace(settings.train, pool_layout="sharded")
    state, history = train.train(model, config, train.make_train_data(
        images, labeled, data.y_train[labeled], capacity=settings.final_num_labels,
        diagnostic_labels=data.y_train), jax.random.PRNGKey(2))
    arrays["sharded_params"] = np.concatenate(
        [np.ravel(x) for x in jax.tree_util.tree_leaves(jax.device_get(state.params))])
    info["sharded"] = {"memory_mapped": isinstance(data.x_train, np.memmap),
                       "rows_read": sorted(images.reads), "num_pool": len(images),
                       "losses": [h["loss"] for h in history]}


def main(data_path: str, out_dir: str, workdir: str | None = None) -> None:
    import jax
    import numpy as np

    import toy_config
    from npc_jax import distributed, inference, loop, spectral, train
    from npc_jax.config import RunSettings
    from npc_jax.data import Pool, load_dataset
    from npc_jax.models import get_model
    from npc_jax.strategies import AcquisitionContext, make_strategy

    setup = distributed.initialize()
    start = time.perf_counter()
    # The run's config; the checks use its shapes and TrainConfig, so the loop
    # below reuses their compilations.
    cfg = toy_config.get_config()
    cfg.update({"dataset": f"npz:{data_path}", "strategies": "margin,npc", "rounds": 1,
                "mode": MODE, "train_steps": 4})
    settings = RunSettings.from_config(cfg)
    data = load_dataset(settings.dataset)
    images, labels = data.x_train, data.y_train
    n, batch = len(images), settings.train.eval_batch_size
    info = {"setup": [setup.coordinator, jax.process_index(), jax.process_count()],
            "devices": [jax.local_device_count(), jax.device_count()]}
    arrays, seconds = {}, {}
    mark = lambda what: seconds.setdefault(what, time.perf_counter() - start)

    # Pool passes with fixed weights (160 rows, chunks of 64: the last one padded).
    model = get_model(settings.model, data.num_classes, data.image_shape)
    variables = jax.device_get(model.init(jax.random.PRNGKey(0)))
    arrays["logits"], arrays["features"] = inference.batched_apply(
        model.apply_with_features, variables, images, batch_size=batch)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 9, 9)).astype(np.float32)
    arrays["min_eigenvalue"] = spectral.min_eigenvalue(a @ np.swapaxes(a, 1, 2),
                                                       backend="device", chunk_size=16)
    mark("pool")
    ctx = AcquisitionContext(model, variables, images, np.where(np.arange(n) < 4, labels, -1),
                             batch_size=batch)
    pool = Pool(num_samples=n, labeled=(0, 1, 2, 3))
    info["picks"] = {}
    for name in settings.strategies:
        pick = make_strategy(name, **settings.options_of(name)).select(
            jax.random.PRNGKey(1), ctx, pool, settings.query_size)
        info["picks"][name] = {"indices": np.asarray(pick.indices).tolist(),
                               "objective": pick.objective}

    mark("picks")
    # The run's training (FixMatch-DARP, 4 steps) over every device of every process.
    labeled = np.arange(8)
    state, history = train.train(model, settings.train, train.make_train_data(
        images, labeled, labels[labeled], capacity=settings.final_num_labels,
        diagnostic_labels=labels), jax.random.PRNGKey(2))
    info["train_mesh"] = int(train.data_parallel_mesh(settings.train).devices.size)
    info["replicated"] = all(x.sharding.is_fully_replicated
                             for x in jax.tree_util.tree_leaves(state.params))
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])
    arrays["params"] = flat(jax.device_get(state.params))
    arrays["ema_params"] = flat(jax.device_get(state.ema_params))
    arrays["init"] = flat(jax.device_get(model.init(jax.random.split(
        jax.random.PRNGKey(2), 3)[0]))["params"])
    info["losses"] = [h["loss"] for h in history]
    mark("train")
    npy_dir = Path(data_path).with_name(Path(data_path).stem + "_npy")
    if npy_dir.is_dir():
        sharded_training(npy_dir, settings, model, arrays, info)
        mark("sharded")
    info["seconds"] = seconds

    if workdir:   # the whole run: every process runs it, process 0 alone writes
        if npy_dir.is_dir():   # each process holding only its block of the pool
            cfg.dataset = f"npy:{npy_dir}"
            cfg.train.pool_layout = "sharded"
        writes = _audit_writes(Path(workdir))
        start = time.perf_counter()
        run_records = loop.run(cfg, workdir, progress=False, on_record=lambda r: None)
        info["seconds"]["loop"] = time.perf_counter() - start
        info["records"] = sorted(({k: v for k, v in r.to_json().items() if k not in TIMING}
                                  for r in run_records),
                                 key=lambda r: (r["strategy"], r["seed"], r["round"]))
        info["writes"] = list(writes)

    out = Path(out_dir) / f"process-{jax.process_index()}"
    np.savez(out.with_suffix(".npz"), **arrays)
    out.with_suffix(".json").write_text(json.dumps(info, sort_keys=True))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))   # toy_config
    main(*sys.argv[1:])
