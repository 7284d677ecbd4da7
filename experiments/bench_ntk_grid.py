"""BENCHMARKS row "P1 grid": the empirical trace-NTK on networks that are not ours.

    .venv/bin/python experiments/bench_ntk_grid.py                   # every network, n = 64, 256
    .venv/bin/python experiments/bench_ntk_grid.py --nets mlp,maxpool --sizes 64 --repeats 5

Networks (defined here, 28×28×1 inputs, 10 logits, random weights, random
uniform images, BatchNorm in inference mode with non-trivial statistics):

* maxpool  conv3x3(32)-relu-maxpool2-conv3x3(64)-relu-maxpool2-conv3x3(64)-relu
           -global mean-dense(128)-relu-dense(10)        (the issue's held-out CNN)
* avgpool  LeNet-like: conv5x5(32)-relu-avgpool2-conv5x5(64)-relu-avgpool2
           -flatten-dense(128)-relu-dense(10)
* gelu     conv3x3(32, s2)-gelu-conv3x3(64)-gelu-conv3x3(64, s2)-gelu-mean-dense(128)-gelu-dense
* tanh     the same with tanh
* resnet   conv3x3(32)-[BN-relu-conv-BN-relu-conv + shortcut] ×3 (one strided, 1x1
           projection), BN-relu-mean-dense(10): pre-activation, BN inference mode
* mlp      flatten-dense(512)-relu-dense(256)-relu-dense(10)
* wrn      npc_jax.models' WRN-28-2 (1.47M parameters) at 32×32×3, small n (--wrn-sizes)

For each network and n: a symmetric (n, n) block, x2 = x1. Timed, interleaved
in each repeat (so load changes hit every side alike), jitted, compilation
excluded (first call reported separately):

* ours     `ntk.empirical_ntk_fn(apply_fn)` (jacobian_contraction; chunked only
           when n · `ntk.representation_bytes` would exceed --jacobian-mb), x2=None
* nt jc    `nt.empirical_ntk_fn(f, trace_axes=(-1,), vmap_axes=0,
           JACOBIAN_CONTRACTION)`, x2=None (its best call: reuses the Jacobian)
* nt nvp   NTK_VECTOR_PRODUCTS, x2=None (n ≤ --nvp-max, networks in --nvp-nets:
           its cost grows as n², and it won only on the MLP)
* nt sd    STRUCTURED_DERIVATIVES, x2=None (tried; on JAX 0.5.3 it raises, and
           the error is recorded)

"nt best" is the fastest of those that ran. Agreement: every float32 kernel
(ours, C·nt) against a float64 reference computed once per (network, n) in a
subprocess with ``jax_enable_x64`` (--phase=reference): our structured
Jacobian on the float64 network, checked on its first --ref-check points
against plain float64 vmap(jacrev) (``structured=False``): relative Frobenius error ‖K − K64‖_F / ‖K64‖_F, and ours vs C·nt the
same way. Raw numbers go to --out (JSON); the references are cached in
--ref-dir.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from npc_jax import infinite, ntk  # noqa: E402
from npc_jax.models import CLASSIFIER, count_params, get_model  # noqa: E402

NUM_CLASSES = 10


class PoolCNN(nn.Module):
    """Three convs with max- or average-pooling; global mean or flatten before the head."""

    pool: str = "max"
    kernel: int = 3
    widths: tuple = (32, 64, 64)
    flatten: bool = False

    @nn.compact
    def __call__(self, x, *, train=False, return_features=False):
        pool = nn.max_pool if self.pool == "max" else nn.avg_pool
        for i, width in enumerate(self.widths):
            x = nn.relu(nn.Conv(width, (self.kernel, self.kernel))(x))
            if i < 2:
                x = pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1) if self.flatten else jnp.mean(x, axis=(1, 2))
        h = nn.relu(nn.Dense(128)(x))
        logits = nn.Dense(NUM_CLASSES, name=CLASSIFIER)(h)
        return (logits, h) if return_features else logits


class ActCNN(nn.Module):
    """Strided convs (with biases) and a smooth activation."""

    act: str = "gelu"

    @nn.compact
    def __call__(self, x, *, train=False, return_features=False):
        act = {"gelu": nn.gelu, "tanh": jnp.tanh}[self.act]
        for width, stride in ((32, 2), (64, 1), (64, 2)):
            x = act(nn.Conv(width, (3, 3), (stride, stride))(x))
        h = act(nn.Dense(128)(jnp.mean(x, axis=(1, 2))))
        logits = nn.Dense(NUM_CLASSES, name=CLASSIFIER)(h)
        return (logits, h) if return_features else logits


class ResNetBN(nn.Module):
    """A stem and three pre-activation residual blocks with BatchNorm (inference mode)."""

    @nn.compact
    def __call__(self, x, *, train=False, return_features=False):
        bn = functools.partial(nn.BatchNorm, use_running_average=not train)
        x = nn.Conv(32, (3, 3), use_bias=False)(x)
        for width, stride in ((32, 2), (64, 2), (64, 1)):
            y = nn.relu(bn()(x))
            shortcut = x if (stride == 1 and width == x.shape[-1]) else nn.Conv(
                width, (1, 1), (stride, stride), use_bias=False)(y)
            y = nn.Conv(width, (3, 3), (stride, stride), use_bias=False)(y)
            y = nn.Conv(width, (3, 3), use_bias=False)(nn.relu(bn()(y)))
            x = shortcut + y
        h = jnp.mean(nn.relu(bn()(x)), axis=(1, 2))
        logits = nn.Dense(NUM_CLASSES, name=CLASSIFIER)(h)
        return (logits, h) if return_features else logits


class MLP(nn.Module):
    widths: tuple = (512, 256)

    @nn.compact
    def __call__(self, x, *, train=False, return_features=False):
        x = x.reshape(x.shape[0], -1)
        for width in self.widths:
            x = nn.relu(nn.Dense(width)(x))
        logits = nn.Dense(NUM_CLASSES, name=CLASSIFIER)(x)
        return (logits, x) if return_features else logits


NETWORKS = {
    "maxpool": lambda: (PoolCNN(pool="max"), (28, 28, 1)),
    "avgpool": lambda: (PoolCNN(pool="avg", kernel=5, widths=(32, 64), flatten=True),
                        (28, 28, 1)),
    "gelu": lambda: (ActCNN(act="gelu"), (28, 28, 1)),
    "tanh": lambda: (ActCNN(act="tanh"), (28, 28, 1)),
    "resnet": lambda: (ResNetBN(), (28, 28, 1)),
    "mlp": lambda: (MLP(), (28, 28, 1)),
    "wrn": lambda: (get_model("wrn28_2", NUM_CLASSES, (32, 32, 3)).module, (32, 32, 3)),
}


class _Float64Numpy:
    """jax.numpy with float32 read as float64, for npc_jax.models in the reference."""

    def __getattr__(self, attr):
        return jnp.float64 if attr == "float32" else getattr(jnp, attr)


def network(name):
    """(apply_fn, variables, input shape) with BatchNorm statistics shifted off init.

    Under jax_enable_x64 (the reference), WRN is built with dtype=float64 and
    npc_jax.models' ``.astype(jnp.float32)`` of its features reads float64: it
    computes in its ``dtype`` and casts the features, so x64 alone leaves it float32.
    """
    if name == "wrn" and jax.config.jax_enable_x64:
        import npc_jax.models as models
        models.jnp = _Float64Numpy()
        module = get_model("wrn28_2", NUM_CLASSES, (32, 32, 3), dtype=jnp.float64).module
        return _wrap(module, (32, 32, 3))
    return _wrap(*NETWORKS[name]())


def _wrap(module, shape):
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
    variables = {"params": variables["params"],
                 "batch_stats": jax.tree_util.tree_map(lambda a: a + 0.1,
                                                       variables.get("batch_stats", {}))}
    apply_fn = lambda v, x: module.apply(v, x, train=False)
    return apply_fn, variables, shape


def inputs(shape, n):
    """(n, *shape) float32 uniform images, the same with or without jax_enable_x64."""
    return np.random.default_rng(1).random((n, *shape), dtype=np.float32)


def fingerprint(variables, x):
    """Sums that tell whether two processes built the same weights and images."""
    leaves = jax.tree_util.tree_leaves(variables)
    return [float(sum(np.abs(np.asarray(a, np.float64)).sum() for a in leaves)),
            float(np.abs(np.asarray(x, np.float64)).sum())]


def _chunk(n, per_sample_bytes, jacobian_mb):
    """None (one jitted call) when n samples' representation fits --jacobian-mb."""
    per_sample = per_sample_bytes / 2 ** 20
    return None if n * per_sample <= jacobian_mb else int(max(1, jacobian_mb // per_sample))


def _ref_path(ref_dir, name, n):
    return Path(ref_dir) / f"{name}_n{n}.npy"


def reference(args):
    """float64 kernels (x64 must be on in this process), each with its check.

    The kernel is `ntk.empirical_ntk_fn` (structured Jacobian) on float64 weights;
    on the first --ref-check points it is compared with plain vmap(jacrev) in
    float64 (structured=False, no structure shared with the fast path), and
    that relative Frobenius difference is stored with it. (Plain float64
    vmap(jacrev) of the CNNs for every point took 25-50 s per 8 points here.)
    """
    assert jax.config.jax_enable_x64, "run with JAX_ENABLE_X64=1"
    for name in args.nets.split(","):
        for n in _sizes(name, args):
            path = _ref_path(args.ref_dir, name, n)
            if path.exists():
                continue
            apply_fn, variables, shape = network(name)
            x = inputs(shape, n)
            meta = {"fingerprint": fingerprint(variables, x)}
            variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
            chunk = _chunk(n, ntk.representation_bytes(apply_fn, variables, x),
                           args.jacobian_mb / 2)
            # empirical_ntk_fn feeds float32 inputs (x is float32); the weights are
            # float64, so every op is promoted to float64.
            start = time.perf_counter()
            k = np.asarray(ntk.empirical_ntk_fn(apply_fn, chunk_size=chunk)(variables, x))
            meta["seconds"] = time.perf_counter() - start
            assert k.dtype == np.float64, k.dtype
            m = min(n, args.ref_check)
            plain = np.asarray(ntk.empirical_ntk_fn(apply_fn, structured=False)(
                variables, x[:m]))
            meta["check_points"] = m
            meta["check_vs_plain_f64"] = _frob(k[:m, :m], plain)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, k)
            path.with_suffix(".json").write_text(json.dumps(meta))
            print(f"  reference {name} n={n}: {json.dumps(meta)}", flush=True)


def _sizes(name, args):
    return [int(s) for s in (args.wrn_sizes if name == "wrn" else args.sizes).split(",")]


def _frob(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def _kernel_path(ref_dir, name, n, label):
    return Path(ref_dir) / "float32" / f"{name}_n{n}_{label.replace(' ', '_')}.npy"


def _errors(result, args):
    """Fills err64 (each float32 kernel vs the float64 reference) and ours_vs_nt."""
    name, n = result["net"], result["n"]
    kernels = {label: np.load(_kernel_path(args.ref_dir, name, n, label))
               for label in result["rows"] if _kernel_path(args.ref_dir, name, n, label).exists()}
    if "ours" in kernels and "nt jc" in kernels:
        result["ours_vs_nt"] = _frob(kernels["ours"], kernels["nt jc"].astype(np.float64))
    ref_file = _ref_path(args.ref_dir, name, n)
    if ref_file.exists():
        meta = json.loads(ref_file.with_suffix(".json").read_text())
        if not np.allclose(meta["fingerprint"], result["fingerprint"], rtol=1e-12):
            raise RuntimeError(f"{ref_file} was built from other weights or images; delete it.")
        k64 = np.load(ref_file)
        result["ref"] = meta
        result["err64"] = {label: _frob(k, k64) for label, k in kernels.items()}


def bench(name, n, args, nt):
    apply_fn, variables, shape = network(name)
    x = inputs(shape, n)
    num_params = count_params(variables["params"])
    # Ours holds what ntk.representation_bytes says (factored Dense layers are small).
    chunk = _chunk(n, ntk.representation_bytes(apply_fn, variables, x), args.jacobian_mb)
    calls = {"ours": functools.partial(ntk.empirical_ntk_fn(apply_fn, chunk_size=chunk),
                                       variables, x)}
    if nt is not None:
        f = lambda params, xs: apply_fn({**variables, "params": params}, xs)
        kw = dict(trace_axes=(-1,), vmap_axes=0)
        impls = {"nt jc": nt.NtkImplementation.JACOBIAN_CONTRACTION,
                 "nt nvp": nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
                 "nt sd": nt.NtkImplementation.STRUCTURED_DERIVATIVES}
        for label, impl in impls.items():
            if label == "nt nvp" and (n > args.nvp_max or name not in args.nvp_nets.split(",")):
                continue
            fn = jax.jit(nt.empirical_ntk_fn(f, implementation=impl, **kw))
            calls[label] = functools.partial(
                lambda fn: NUM_CLASSES * np.asarray(fn(x, None, variables["params"])), fn)
    rows, kernels = {}, {}
    for label, call in list(calls.items()):            # first calls: compile + check
        start = time.perf_counter()
        try:
            kernels[label] = np.asarray(jax.block_until_ready(call()))
        except Exception as err:                       # noqa: BLE001 (a peer that fails)
            rows[label] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            print(f"  {name} n={n:4d} {label:7s} failed: {rows[label]['error'][:120]}",
                  flush=True)
            del calls[label]
            continue
        rows[label] = {"first_call_seconds": time.perf_counter() - start, "times": []}
    reps = {label: (1 if label == "nt nvp" else args.repeats) for label in calls}
    for r in range(args.repeats):                       # interleaved warm calls
        for label, call in calls.items():
            if r >= reps[label]:
                continue
            start = time.perf_counter()
            jax.block_until_ready(call())
            rows[label]["times"].append(time.perf_counter() - start)
    for label in calls:
        rows[label]["seconds"] = statistics.median(rows[label]["times"])
        print(f"  {name} n={n:4d} {label:7s} {rows[label]['seconds']:8.3f} s "
              f"(first {rows[label]['first_call_seconds']:7.2f} s)", flush=True)
    result = {"net": name, "n": n, "input_shape": list(shape), "num_params": int(num_params),
              "chunk": chunk, "rows": rows, "load": os.getloadavg()}
    result["fingerprint"] = fingerprint(variables, x)
    for label, k in kernels.items():       # kept for --phase=errors
        path = _kernel_path(args.ref_dir, name, n, label)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, k)
    peers = [label for label in calls if label.startswith("nt")]
    if peers:
        best = min(peers, key=lambda label: rows[label]["seconds"])
        result["nt_best"] = best
        result["ratio"] = rows[best]["seconds"] / rows["ours"]["seconds"]
    _errors(result, args)
    print(f"  -> {json.dumps({k: v for k, v in result.items() if k != 'rows'})}", flush=True)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default=",".join(NETWORKS))
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--wrn-sizes", default="16,64", help="block sizes for WRN (slow on CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nvp-max", type=int, default=64)
    parser.add_argument("--nvp-nets", default=",".join(NETWORKS),
                        help="networks on which NTK_VECTOR_PRODUCTS is timed (it was 7-14x "
                             "slower than jc on the CNNs and WRN at n = 8-64 here)")
    parser.add_argument("--jacobian-mb", type=float, default=3072,
                        help="ours: chunk when n · representation_bytes exceeds this")
    parser.add_argument("--phase", choices=("all", "reference", "time", "errors"), default="all",
                        help="reference: only the float64 kernels (needs JAX_ENABLE_X64=1); "
                             "time: only the timings (errors where references exist); "
                             "errors: recompute the errors of --out from the saved kernels; "
                             "all: the references in a subprocess first, then the timings")
    parser.add_argument("--ref-check", type=int, default=8,
                        help="points on which the float64 reference is checked against "
                             "plain float64 vmap(jacrev)")
    parser.add_argument("--ref-dir", default="runs/bench_ntk_grid_ref")
    parser.add_argument("--out", default="runs/bench_ntk_grid.json")
    args = parser.parse_args(argv)
    if args.phase == "reference":
        return reference(args)
    if args.phase == "errors":      # fill in errors of an earlier --out from the references
        data = json.loads(Path(args.out).read_text())
        for result in data["results"]:
            _errors(result, args)
            print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
        Path(args.out).write_text(json.dumps(data, indent=1))
        return None
    if args.phase == "all":
        argv_ref = [a for a in (argv if argv is not None else sys.argv[1:])
                    if not a.startswith("--phase")]
        subprocess.run([sys.executable, __file__, *argv_ref, "--phase=reference"], check=True,
                       env={**os.environ, "JAX_ENABLE_X64": "1"})
    try:   # through npc_jax.infinite, the one module that imports neural-tangents
        nt, _ = infinite.import_neural_tangents()
    except ImportError as err:  # the core runs without it (DESIGN.md §6)
        print(f"neural-tangents unavailable ({err}); peer rows skipped.")
        nt = None
    results = []
    for name in args.nets.split(","):
        for n in _sizes(name, args):
            results.append(bench(name, n, args, nt))
    meta = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "command": " ".join(sys.argv), "load_end": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
