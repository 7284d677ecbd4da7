"""BENCHMARKS rows P3 / P4: BADGE and Coreset selection, ours vs scikit-activeml.

    .venv/bin/python experiments/bench_strategies.py --peer-python /tmp/peer-venv/bin/python

Both run on the same pool: 60k × 128 penultimate features (ReLU of a
Gaussian) and C = 10 softmax probabilities, 50 labeled samples, Q = 20 and
200. Each (implementation, strategy, Q) runs in its own subprocess, which
loads the shared inputs, runs the selection `--repeats` times and reports
its wall times and peak RSS (ru_maxrss: imports and inputs included; also
the peak before the first call, so that the selection's own share shows). Ours
is JIT-compiled, so its first call includes compilation: the table gives
that cold time and the median of the later (warm) calls; the peer has no
compilation, its figure is the median of all its calls. Ratios are peer /
ours from the same run.

The peer (scikit-activeml, not a project dependency) is installed in a
throwaway environment:

    python3.11 -m venv /tmp/peer-venv && /tmp/peer-venv/bin/pip install scikit-activeml

Without `--peer-python` (or if that python cannot import skactiveml) the
peer columns are skipped with a message. Raw numbers go to `--out` (JSON).
Expected on the reference machine (2-core AMD EPYC, 24 GiB): see the P3 / P4
table in BENCHMARKS.md.

The worker code imports only numpy at top level, so the peer's python can
run this same file (`--worker peer`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NUM_SAMPLES, NUM_FEATURES, NUM_CLASSES, NUM_LABELED = 60_000, 128, 10, 50


def make_inputs(path: Path, seed: int = 0) -> None:
    """Writes the shared pool: features (N, D) f32, probs (N, C) f64, labeled (L,)."""
    rng = np.random.default_rng(seed)
    features = np.maximum(rng.normal(size=(NUM_SAMPLES, NUM_FEATURES)), 0).astype(np.float32)
    logits = 3.0 * rng.normal(size=(NUM_SAMPLES, NUM_CLASSES))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labeled = rng.choice(NUM_SAMPLES, NUM_LABELED, replace=False)
    np.savez(path, features=features, probs=probs, labeled=labeled)


# --------------------------------------------------------------------------- #
# Workers (one subprocess each)
# --------------------------------------------------------------------------- #

def _ours(method: str, data, q: int):
    import jax
    from npc_jax.strategies.badge import gradient_factor, kmeans_pp_gradient
    from npc_jax.strategies.coreset import k_center_greedy

    features, labeled = data["features"], np.zeros(NUM_SAMPLES, bool)
    labeled[data["labeled"]] = True
    logits = np.log(data["probs"]).astype(np.float32)

    def run(repeat):
        if method == "coreset":
            return k_center_greedy(features, labeled, ~labeled, q)[0]
        factors = gradient_factor(logits)   # softmax and p − onehot(ŷ) are timed too
        return kmeans_pp_gradient(factors, features, ~labeled, q, jax.random.PRNGKey(repeat))[0]
    return run


def _peer(method: str, data, q: int):
    from skactiveml.base import SkactivemlClassifier
    from skactiveml.pool import Badge, CoreSet

    features, probs = data["features"].astype(np.float64), data["probs"]
    y = np.full(NUM_SAMPLES, np.nan)
    y[data["labeled"]] = 0.0   # label values do not matter to either strategy

    if method == "coreset":
        return lambda repeat: np.asarray(
            CoreSet(random_state=repeat).query(X=features, y=y, batch_size=q))

    class FixedModel(SkactivemlClassifier):
        """predict_proba -> (the table's probabilities, the table's features).

        The pool row index travels as an extra last column of X, so that the
        rows Badge passes in can be mapped back to the table."""

        def fit(self, X, y, sample_weight=None):
            return self

        def predict_proba(self, X, return_embeddings=False):
            rows = X[:, -1].astype(np.int64)
            return (probs[rows], X[:, :-1]) if return_embeddings else probs[rows]

    model = FixedModel(classes=np.arange(NUM_CLASSES), missing_label=np.nan)
    x_with_rows = np.concatenate([features, np.arange(NUM_SAMPLES)[:, None]], 1)
    return lambda repeat: np.asarray(Badge(
        clf_embedding_flag_name="return_embeddings", random_state=repeat).query(
            X=x_with_rows, y=y, clf=model, fit_clf=False, batch_size=q))


def worker(args) -> None:
    data = dict(np.load(args.data))
    run = (_ours if args.worker == "ours" else _peer)(args.method, data, args.q)
    # Peak RSS so far: interpreter, imports and inputs, before any selection.
    base_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times, first_picks = [], None
    for repeat in range(args.repeats):
        start = time.perf_counter()
        picks = run(repeat)
        times.append(time.perf_counter() - start)
        if first_picks is None:
            first_picks = [int(i) for i in picks]
        assert len(set(int(i) for i in picks)) == args.q
    print(json.dumps({"times": times, "picks": first_picks, "base_rss_mb": base_rss_mb,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #

def _spawn(python: str, impl: str, method: str, q: int, repeats: int, data: Path) -> dict:
    cmd = [python, __file__, "--worker", impl, "--method", method, "--q", str(q),
           "--repeats", str(repeats), "--data", str(data)]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"{impl} {method} q={q} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peer_available(python: str | None) -> bool:
    if not python:
        print("peer skipped: pass --peer-python (a python with scikit-activeml installed).")
        return False
    probe = subprocess.run([python, "-c", "import skactiveml"], capture_output=True, text=True)
    if probe.returncode:
        print(f"peer skipped: {python} cannot import skactiveml "
              f"({probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'error'}).")
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=None, help="python with scikit-activeml")
    parser.add_argument("--qs", default="20,200")
    parser.add_argument("--methods", default="badge,coreset")
    parser.add_argument("--repeats", type=int, default=5, help="calls per subprocess")
    parser.add_argument("--peer-repeats-q200-badge", type=int, default=3,
                        help="the peer's BADGE at Q=200 takes ≈20 s per call")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_strategies.json"))
    parser.add_argument("--worker", choices=("ours", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--q", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    with_peer = _peer_available(args.peer_python)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pool.npz"
        make_inputs(data)
        for method in args.methods.split(","):
            for q in (int(v) for v in args.qs.split(",")):
                ours = _spawn(sys.executable, "ours", method, q, args.repeats, data)
                row = {"method": method, "q": q,
                       "ours_cold_s": ours["times"][0],
                       "ours_warm_s": statistics.median(ours["times"][1:]),
                       "ours_times": ours["times"], "ours_rss_mb": ours["peak_rss_mb"],
                       "ours_base_rss_mb": ours["base_rss_mb"]}
                if with_peer:
                    repeats = (args.peer_repeats_q200_badge if (method, q) == ("badge", 200)
                               else args.repeats)
                    peer = _spawn(args.peer_python, "peer", method, q, repeats, data)
                    row.update({
                        "peer_s": statistics.median(peer["times"]), "peer_times": peer["times"],
                        "peer_rss_mb": peer["peak_rss_mb"], "peer_base_rss_mb": peer["base_rss_mb"],
                        "ratio_warm": statistics.median(peer["times"]) / row["ours_warm_s"],
                        "ratio_cold": statistics.median(peer["times"]) / row["ours_cold_s"],
                        "rss_ratio": row["ours_rss_mb"] / peer["peak_rss_mb"],
                        # Memory the selection itself adds above imports + inputs.
                        "rss_increment_ratio": (row["ours_rss_mb"] - ours["base_rss_mb"])
                        / (peer["peak_rss_mb"] - peer["base_rss_mb"]),
                        # Coreset is deterministic: both must pick the same samples.
                        "same_picks": (ours["picks"] == peer["picks"]) if method == "coreset"
                        else ours["picks"][0] == peer["picks"][0],
                    })
                rows.append(row)
                print(_format_row(row), flush=True)
    record = {"rows": rows, "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
              "command": " ".join([Path(sys.executable).name] + sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"raw numbers: {args.out}")


def _format_row(row: dict) -> str:
    text = (f"{row['method']:>8s} Q={row['q']:<4d} ours {row['ours_warm_s']:.3f} s warm "
            f"({row['ours_cold_s']:.3f} s cold), {row['ours_rss_mb']:.0f} MB")
    if "peer_s" in row:
        text += (f" | peer {row['peer_s']:.3f} s, {row['peer_rss_mb']:.0f} MB"
                 f" | ×{row['ratio_warm']:.1f} warm, ×{row['ratio_cold']:.1f} cold,"
                 f" memory {row['rss_ratio']:.2f} (above imports+inputs"
                 f" {row['rss_increment_ratio']:.2f}), same picks: {row['same_picks']}")
    return text


if __name__ == "__main__":
    main()
