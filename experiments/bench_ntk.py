"""BENCHMARKS row P1: the empirical trace-NTK, ours vs neural-tangents, same run.

    .venv/bin/python experiments/bench_ntk.py                       # CNN 16/64/256, WRN 16
    .venv/bin/python experiments/bench_ntk.py --models cnn --sizes 64 --repeats 5

For each model and block size n: a symmetric (n, n) block of random images,
inference-mode BatchNorm. Rows:

* ours jc      — `ntk.empirical_ntk_fn(..., "jacobian_contraction")`, x2=None
* ours nvp     — the same with "ntk_vector_products" (n ≤ --nvp-max)
* ours last    — the last-layer closed form (params_subset="last")
* nt jc        — `neural_tangents.empirical_ntk_fn(f, trace_axes=(-1,),
                  vmap_axes=0, JACOBIAN_CONTRACTION)`, jitted, called with
                  x2=None (its best call: it reuses the Jacobian)
* nt jc x2     — the same called with x2=x1
* nt nvp       — NTK_VECTOR_PRODUCTS, x2=None (n ≤ --nvp-max)

Times are medians of --repeats warm calls (compilation excluded, reported
separately as the first call). `diff` is max |ours − C·nt jc| / max |C·nt jc|.
Ratio = best neural-tangents time / ours. Raw numbers go to --out (JSON).
WRN-28-2 is defined here (FixMatch's variant) until npc_jax.models has one.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
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


class WideResNet(nn.Module):
    """WRN-28-2 as in FixMatch: pre-activation blocks, leaky ReLU 0.1, BN."""

    num_classes: int = 10
    depth: int = 28
    widen: int = 2

    @nn.compact
    def __call__(self, x, *, train=False, return_features=False):
        n = (self.depth - 4) // 6
        bn = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.999)
        act = lambda y: nn.leaky_relu(y, 0.1)
        x = nn.Conv(16, (3, 3), use_bias=False)(x)
        for stage, width in enumerate((16 * self.widen, 32 * self.widen, 64 * self.widen)):
            for block in range(n):
                stride = 2 if stage > 0 and block == 0 else 1
                y = act(bn()(x))
                shortcut = x if x.shape[-1] == width else nn.Conv(
                    width, (1, 1), (stride, stride), use_bias=False)(y)
                y = nn.Conv(width, (3, 3), (stride, stride), use_bias=False)(y)
                y = nn.Conv(width, (3, 3), use_bias=False)(act(bn()(y)))
                x = shortcut + y
        h = jnp.mean(act(bn()(x)), axis=(1, 2))
        logits = nn.Dense(self.num_classes, name=CLASSIFIER)(h)
        return (logits, h) if return_features else logits


def _model(name):
    if name == "cnn":
        model = get_model("cnn", 10)
        return model.module, model.input_shape
    if name == "wrn":
        return WideResNet(), (32, 32, 3)
    raise ValueError(f"Unknown model {name!r}; choose cnn or wrn.")


def _timed(fn, repeats):
    start = time.perf_counter()
    out = np.asarray(jax.block_until_ready(fn()))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return out, first, statistics.median(times), times


def bench(model_name, n, args, nt):
    module, shape = _model(model_name)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
    variables = {"params": variables["params"],
                 "batch_stats": jax.tree_util.tree_map(lambda a: a + 0.1,
                                                       variables["batch_stats"])}
    apply_fn = lambda v, x: module.apply(v, x, train=False)
    features_fn = lambda v, x: module.apply(v, x, train=False, return_features=True)
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (n, *shape)))
    num_classes = 10
    num_params = count_params(variables["params"])
    # Bound the Jacobian held at once to ≈ --jacobian-mb per operand.
    per_sample = num_classes * num_params * 4 / 2**20
    chunk = int(max(1, min(n, args.jacobian_mb // per_sample)))
    rows = {}

    def run(label, fn, reps=args.repeats):
        out, first, med, times = _timed(fn, reps)
        rows[label] = {"seconds": med, "first_call_seconds": first, "times": times}
        print(f"  {model_name} n={n:4d} {label:12s} {med:8.3f} s (first {first:7.2f} s)",
              flush=True)
        return out

    ours = ntk.empirical_ntk_fn(apply_fn, chunk_size=chunk)
    k_ours = run("ours jc", lambda: ours(variables, x))
    if n <= args.nvp_max:
        nvp = ntk.empirical_ntk_fn(apply_fn, implementation="ntk_vector_products",
                                   chunk_size=min(chunk, 16))
        k_nvp = run("ours nvp", lambda: nvp(variables, x), reps=1)
    last = ntk.empirical_ntk_fn(apply_fn, implementation="closed_form", params_subset="last",
                                features_fn=features_fn)
    run("ours last", lambda: last(variables, x))
    reference = None
    if nt is not None and n * per_sample <= args.nt_max_mb:
        f = lambda params, xs: apply_fn({**variables, "params": params}, xs)
        kw = dict(trace_axes=(-1,), vmap_axes=0)
        nt_jc = jax.jit(nt.empirical_ntk_fn(
            f, implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION, **kw))
        reference = num_classes * run("nt jc", lambda: nt_jc(x, None, variables["params"]))
        run("nt jc x2", lambda: nt_jc(x, x, variables["params"]))
        if n <= args.nvp_max:
            nt_nvp = jax.jit(nt.empirical_ntk_fn(
                f, implementation=nt.NtkImplementation.NTK_VECTOR_PRODUCTS, **kw))
            run("nt nvp", lambda: nt_nvp(x, None, variables["params"]), reps=1)
    result = {"model": model_name, "n": n, "num_params": int(num_params), "chunk": chunk,
              "rows": rows}
    if reference is not None:
        scale = float(np.abs(reference).max())
        result["diff_jc"] = float(np.abs(k_ours - reference).max()) / scale
        if n <= args.nvp_max:
            result["diff_nvp"] = float(np.abs(k_nvp - reference).max()) / scale
        best_nt = min(rows[k]["seconds"] for k in rows if k.startswith("nt"))
        result["ratio_best_nt_over_ours_jc"] = best_nt / rows["ours jc"]["seconds"]
    result["ratio_full_over_last"] = rows["ours jc"]["seconds"] / rows["ours last"]["seconds"]
    print(f"  -> {json.dumps({k: v for k, v in result.items() if k != 'rows'})}", flush=True)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,wrn")
    parser.add_argument("--sizes", default="16,64,256")
    parser.add_argument("--wrn-sizes", default="16", help="block sizes for WRN (slow on CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nvp-max", type=int, default=64)
    parser.add_argument("--jacobian-mb", type=float, default=1024)
    parser.add_argument("--nt-max-mb", type=float, default=4096,
                        help="skip neural-tangents when its Jacobian would exceed this")
    parser.add_argument("--out", default="runs/bench_ntk.json")
    args = parser.parse_args(argv)
    try:   # through npc_jax.infinite, the one module that imports neural-tangents
        nt, _ = infinite.import_neural_tangents()
    except ImportError as err:  # the core runs without it (DESIGN.md §6)
        print(f"neural-tangents unavailable ({err}); peer rows skipped.")
        nt = None
    results = []
    for model_name in args.models.split(","):
        sizes = args.wrn_sizes if model_name == "wrn" else args.sizes
        for n in (int(s) for s in sizes.split(",")):
            results.append(bench(model_name, n, args, nt))
    meta = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
