"""BENCHMARKS row P9: one acquisition each on a 1,000,000-image pool, time and peak RSS.

    .venv/bin/python experiments/bench_scale.py                      # P9, records/p9/
    .venv/bin/python experiments/bench_scale.py --n 60000 --out /tmp/p9small --cache /tmp/p9small
                                                                     # a quick check, ≈ 1.5 min

Runtime (measured 2026-11-30, 2 shared cores at load 4-11, JAX 0.5.3): 8 s to
generate and cache the pool, < 1 min to train the CNN, then ≈ 15 min for the
five acquisitions: passive 1.3 s, npc (last layer, m = 1000) 7 s, margin /
badge / coreset 230-340 s each (one forward pass over the 1M images); extra
rows: typiclust 631 s. Expected result: every strategy under the 8 GB goal,
peak RSS 1.1-1.2 GiB for passive / margin / npc and 2.5-3.1 GiB for badge /
coreset / typiclust (the uint8 pool is 0.73 GiB of each). BENCHMARKS.md, P9.

The pool (`make_pool`): `--n` 28×28×1 uint8 images generated in chunks of
65 536, deterministically from `--seed` (chunk c draws from
``default_rng([seed, c])``): each is a source image shifted by up to ±2
pixels in x and y (zero fill), its contrast scaled by U(0.8, 1.2) and uniform
integer noise in [−12, 12] added, clipped to 0..255; its label is the
source's. Sources (`--source`): "fashion_mnist" (default: the 60 000 training
images of the local Debian package, nothing downloaded) or "synthetic" (1 000
procedural images, 100 per class: a class template of smooth random blobs,
upsampled from 7×7, times a per-image random variation; no data file
needed). The pool is written once to `--cache` (runs/p9_cache/, .npy, 784 MB
at 1M; not committed) and each worker loads it whole into memory (uint8, as
`Dataset.x_train` holds it): 784 MB of every worker's peak is the pool.

The model: `get_model("cnn", 10)`; `--init trained` (default) trains it for
`--train-steps` supervised Adam steps (batch 64) on 2 000 random pool images
first (as bench_npc.py: at initialisation the penultimate features are nearly
collinear); `--init random` keeps the initialisation. Cached in `--cache`.

Each strategy runs in its own fresh subprocess (`--worker NAME`), which
builds the `AcquisitionContext` as the loop does (npc_jax/loop.py: the model,
its variables, the pool's uint8 images, the labels at labeled indices only,
batch_size = TrainConfig.eval_batch_size = 1000), draws `--labeled` random
labeled indices with ``default_rng(seed)``, makes the strategy from the
registry with its default options (npc: last layer, logits, m = 1000, the
paper's) and times one `strategy.select(PRNGKey(seed + 7), ctx, pool, q)`:
a cold call, XLA compilation included, as the first round of a run. Peak
RSS: the worker's VmHWM, polled by the parent every 0.2 s (known even for a
killed worker) and read by the worker at the end (not ru_maxrss: Linux
carries the forking parent's peak into it across exec); the worker also
reports VmRSS at stages (imports, pool loaded, context built = "idle"
before the selection), so peak − idle is the selection's own memory.

Records: one JSON line per strategy in `<out>/results.jsonl` with the
setting (n, seed, q, labeled, init, source); with `--trace`, each step of
the selection (TRACED: the strategy module's pool pass, its greedy /
k-means++ / scoring call) with its seconds and VmRSS before, after and at
its peak (sampled every 20 ms). A rerun skips every strategy
already recorded with the same setting (resumable), `--force` reruns.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

DEFAULT_STRATEGIES = "passive,margin,badge,coreset,npc"
GEN_CHUNK = 65536
NUM_CLASSES = 10


# -- the pool ----------------------------------------------------------------------------


def synthetic_sources(seed: int, per_class: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(10·per_class, 28, 28) uint8 procedural images and their labels.

    Class c's template: a 7×7 uniform random field thresholded into blobs,
    upsampled ×4 and smoothed; each image = template × (1 + 0.3 · its own
    upsampled 7×7 random field), so images of a class vary around one shape.
    """
    rng = np.random.default_rng([seed, 10**6])
    images, labels = [], []
    kernel = np.array([1.0, 2.0, 1.0]) / 4.0

    def smooth(a):
        for axis in (1, 2):
            a = (np.roll(a, 1, axis) * kernel[0] + a * kernel[1] + np.roll(a, -1, axis) * kernel[2])
        return a

    for c in range(NUM_CLASSES):
        template = (rng.uniform(size=(7, 7)) > 0.5).astype(np.float64)
        template = smooth(np.kron(template, np.ones((4, 4)))[None])[0]
        variation = np.kron(rng.uniform(size=(per_class, 7, 7)), np.ones((1, 4, 4)))
        batch = template[None] * (0.7 + 0.6 * smooth(variation))
        images.append(np.clip(batch * 220.0, 0, 255).astype(np.uint8))
        labels.append(np.full(per_class, c, np.int32))
    return np.concatenate(images), np.concatenate(labels)


def load_sources(source: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, 28, 28) uint8 source images and (S,) int32 labels."""
    if source == "synthetic":
        return synthetic_sources(seed)
    from npc_jax.data import load_dataset
    data = load_dataset("fashion_mnist")
    return data.x_train[..., 0], data.y_train.astype(np.int32)


def make_pool(n: int, seed: int, source: str = "fashion_mnist",
              chunk: int = GEN_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28, 1) uint8 images and (n,) int32 labels, generated chunk by chunk.

    Deterministic in (n, seed, source): chunk c uses ``default_rng([seed, c])``.
    Temporary memory: one chunk
    in int16 (≈ 100 MB), besides the output.
    """
    base, base_labels = load_sources(source, seed)
    padded = np.pad(base, ((0, 0), (2, 2), (2, 2)))          # shifts of ±2 with zero fill
    x = np.empty((n, 28, 28, 1), np.uint8)
    y = np.empty((n,), np.int32)
    for c, start in enumerate(range(0, n, chunk)):
        size = min(chunk, n - start)
        rng = np.random.default_rng([seed, c])
        src = rng.integers(0, len(base), size)
        dy, dx = rng.integers(-2, 3, size), rng.integers(-2, 3, size)
        shifted = np.empty((size, 28, 28), np.uint8)
        for sy in range(-2, 3):
            for sx in range(-2, 3):
                rows = np.flatnonzero((dy == sy) & (dx == sx))
                shifted[rows] = padded[src[rows], 2 + sy:30 + sy, 2 + sx:30 + sx]
        contrast = rng.uniform(0.8, 1.2, (size, 1, 1)).astype(np.float32)
        noise = rng.integers(-12, 13, (size, 28, 28), dtype=np.int16)
        out = (shifted * contrast).astype(np.int16) + noise
        x[start:start + size, :, :, 0] = np.clip(out, 0, 255).astype(np.uint8)
        y[start:start + size] = base_labels[src]
    return x, y


def _cache_paths(args) -> dict:
    cache = Path(args.cache)
    stem = f"{args.source}-{args.n}-seed{args.seed}"
    return {"x": cache / f"pool-{stem}-x.npy", "y": cache / f"pool-{stem}-y.npy",
            "weights": cache / f"cnn-{stem}-{args.init}{args.train_steps}.msgpack"}


def prepare(args) -> dict:
    """Generates and caches the pool and the model's weights; returns timings."""
    paths = _cache_paths(args)
    paths["x"].parent.mkdir(parents=True, exist_ok=True)
    info = {}
    x = y = None
    if not (paths["x"].exists() and paths["y"].exists()):
        start = time.perf_counter()
        x, y = make_pool(args.n, args.seed, args.source)
        info["generate_seconds"] = round(time.perf_counter() - start, 1)
        for key, array in (("x", x), ("y", y)):
            tmp = paths[key].with_suffix(".tmp.npy")
            np.save(tmp, array)
            os.replace(tmp, paths[key])
        print(f"pool: {args.n} images generated in {info['generate_seconds']} s -> "
              f"{paths['x']}", flush=True)
    if args.init == "trained" and not paths["weights"].exists():
        if x is None:
            x, y = np.load(paths["x"]), np.load(paths["y"])
        start = time.perf_counter()
        train_weights(args, x, y, paths["weights"])
        info["train_seconds"] = round(time.perf_counter() - start, 1)
    return info


def train_weights(args, x, y, path: Path) -> None:
    """`--train-steps` supervised Adam steps on 2 000 random pool images."""
    import flax.serialization

    from bench_npc import fit_quickly
    from npc_jax.models import get_model

    variables, loss = fit_quickly(get_model("cnn", NUM_CLASSES), x, y, steps=args.train_steps,
                                  seed=args.seed, sort_batches=True)
    path.write_bytes(flax.serialization.to_bytes(variables))
    print(f"cnn: {args.train_steps} steps, last loss {loss:.3f} -> {path}", flush=True)


# -- one acquisition per process -------------------------------------------------------------


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# Functions timed and memory-traced under --trace (module, global names): the steps of
# each strategy's select, wrapped where the strategy looks them up.
TRACED = {
    "npc_jax.strategies.uncertainty": ("map_pool", "top_q"),
    "npc_jax.strategies.badge": ("map_pool", "kmeans_pp_gradient", "_kmeans_pp"),
    "npc_jax.strategies.coreset": ("map_pool", "k_center_greedy", "min_sq_distances",
                                   "_min_sq_distances", "_greedy"),
    "npc_jax.strategies.search": ("candidate_batches", "score_batches"),
}


class MemoryTrace:
    """VmRSS sampled every 20 ms, and per traced call: seconds, RSS before/after, peak."""

    def __init__(self):
        import importlib
        self.samples, self.calls, self.done = [], [], threading.Event()
        for module_name, names in TRACED.items():
            module = importlib.import_module(module_name)
            for name in names:
                setattr(module, name, self._wrap(f"{module_name.rsplit('.', 1)[1]}.{name}",
                                                 getattr(module, name)))
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self.done.is_set():
            self.samples.append((time.perf_counter(), _status_mb("VmRSS")))
            self.done.wait(0.02)

    def _wrap(self, label, fn):
        def traced(*a, **k):
            entry = {"call": label, "rss_before_mb": _status_mb("VmRSS")}
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                end = time.perf_counter()
                during = [rss for t, rss in list(self.samples) if start <= t <= end]
                entry.update(seconds=round(end - start, 2), rss_after_mb=_status_mb("VmRSS"),
                             rss_peak_mb=max(during + [entry["rss_before_mb"]]))
                self.calls.append({k: round(v, 1) if isinstance(v, float) else v
                                   for k, v in entry.items()})
        return traced


def worker(args) -> None:
    stages = {"start": _status_mb("VmRSS")}
    import flax.serialization
    import jax

    from npc_jax.data import Pool
    from npc_jax.models import get_model
    from npc_jax.strategies import AcquisitionContext, make_strategy
    jax.numpy.zeros(1).block_until_ready()            # start JAX's CPU runtime
    stages["imports"] = _status_mb("VmRSS")

    paths = _cache_paths(args)
    x, y = np.load(paths["x"]), np.load(paths["y"])
    stages["pool_loaded"] = _status_mb("VmRSS")
    model = get_model("cnn", NUM_CLASSES, tuple(x.shape[1:]))
    variables = model.init(jax.random.PRNGKey(args.seed))
    if args.init == "trained":
        variables = flax.serialization.from_bytes(variables, paths["weights"].read_bytes())
    labeled = np.random.default_rng(args.seed).choice(len(x), args.labeled, replace=False)
    pool = Pool(num_samples=len(x), labeled=tuple(int(i) for i in labeled))
    # As loop.py: labels visible at labeled indices only, the pool's images as stored.
    ctx = AcquisitionContext(model, variables, x, np.where(pool.labeled_mask, y, -1),
                             batch_size=1000)
    strategy = make_strategy(args.worker)
    trace = MemoryTrace() if args.trace else None
    stages["idle"] = _status_mb("VmRSS")
    idle_hwm = _status_mb("VmHWM")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        acquisition = strategy.select(jax.random.PRNGKey(args.seed + 7), ctx, pool, args.q)
        times.append(time.perf_counter() - start)
    stages["after"] = _status_mb("VmRSS")
    indices = np.asarray(acquisition.indices)
    assert len(set(indices.tolist())) == args.q and not pool.labeled_mask[indices].any()
    result = {"seconds": times[0], "seconds_warm": times[1:],
              # VmHWM, not ru_maxrss: Linux carries the forking parent's peak into a
              # child's ru_maxrss across exec, VmHWM is this process's own.
              "peak_rss_mb": _status_mb("VmHWM"),
              "idle_peak_mb": idle_hwm, "rss_stages_mb": {k: round(v, 1) for k, v in stages.items()},
              "indices": indices.tolist(),
              "picked_classes": np.bincount(y[indices], minlength=NUM_CLASSES).tolist(),
              "objective": acquisition.objective}
    if trace is not None:
        trace.done.set()
        result["trace"] = trace.calls
    print("RESULT " + json.dumps(result, default=float), flush=True)


def _poll_hwm(pid: int, peak: list, done: threading.Event) -> None:
    status = Path(f"/proc/{pid}/status")
    while not done.is_set():
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]) / 1024)
        except (FileNotFoundError, ProcessLookupError):
            return
        done.wait(0.2)


def run_worker(args, name: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", name]
    for flag in ("n", "seed", "q", "labeled", "init", "train_steps", "source", "out", "cache",
                 "repeats"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    cmd += ["--trace"] if args.trace else []
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    peak, done = [0.0], threading.Event()
    poller = threading.Thread(target=_poll_hwm, args=(proc.pid, peak, done), daemon=True)
    poller.start()
    try:
        stdout, stderr = proc.communicate(timeout=args.timeout)
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        status = f"timeout after {args.timeout} s"
    done.set()
    poller.join()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(lines[-1][len("RESULT "):]) if lines and status == "ok" else {}
    if not result:
        status = status if status != "ok" else "no result"
        print(stderr[-3000:], file=sys.stderr)
    result.update(status=status, process_seconds=round(time.perf_counter() - start, 1),
                  polled_peak_rss_mb=round(peak[0], 1),
                  load_before=[round(v, 2) for v in load_before],
                  load_after=[round(v, 2) for v in os.getloadavg()])
    return result


def _setting(args) -> dict:
    return {"n": args.n, "seed": args.seed, "q": args.q, "labeled": args.labeled,
            "init": args.init, "train_steps": args.train_steps if args.init == "trained" else 0,
            "source": args.source}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                        help="registry names, comma-separated (default options each)")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--q", type=int, default=20)
    parser.add_argument("--labeled", type=int, default=50)
    parser.add_argument("--init", default="trained", choices=("trained", "random"))
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--source", default="fashion_mnist", choices=("fashion_mnist", "synthetic"))
    parser.add_argument("--repeats", type=int, default=1,
                        help="select calls per worker; the first (cold) is the row's time")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
    parser.add_argument("--out", default="records/p9", help="results.jsonl goes here")
    parser.add_argument("--cache", default="runs/p9_cache",
                        help="the generated pool and the trained weights (not committed)")
    parser.add_argument("--force", action="store_true", help="rerun recorded strategies")
    parser.add_argument("--trace", action="store_true",
                        help="per-step time and RSS of each select (TRACED); recorded as 'trace'")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = out / "results.jsonl"
    setting = _setting(args)
    done = set()
    if records.exists() and not args.force:
        for line in records.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("setting") == setting and rec.get("status") == "ok":
                done.add(rec["strategy"])
    todo = [s for s in args.strategies.split(",") if s and s not in done]
    for name in sorted(done & set(args.strategies.split(","))):
        print(f"{name}: already recorded in {records}, skipped")
    if not todo:
        return
    info = prepare(args)
    import jax
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "jax": jax.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "command": " ".join(sys.argv), **info}
    for name in todo:
        result = run_worker(args, name)
        record = {"strategy": name, "setting": setting, **result, "meta": meta}
        with open(records, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        print(f"{name:10s} {result['status']:8s} select {result.get('seconds', float('nan')):8.1f} s"
              f"  peak RSS {result.get('peak_rss_mb', float('nan')):7.0f} MB (polled "
              f"{result['polled_peak_rss_mb']:.0f}, idle "
              f"{result.get('idle_peak_mb', float('nan')):.0f})  load "
              f"{result['load_before'][0]:.1f} -> {result['load_after'][0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
