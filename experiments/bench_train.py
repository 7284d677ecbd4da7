"""P5 / P5b: one FixMatch step, ours vs the same network's step in PyTorch.

    # P5b: the small CNN (28x28x1, B = 32, mu = 7: 480 images per step)
    python experiments/bench_train.py --torch_python /tmp/torch-venv/bin/python \
        --out runs/bench_train.json
    # P5: WRN-28-2 (32x32x3, B = 64, mu = 7: 64 + 2 x 448 = 960 images per step)
    python experiments/bench_train.py --model wrn28_2 --steps 3 \
        --torch_python /tmp/torch-venv/bin/python --out runs/bench_train_wrn.json
    # On a GPU (no peer; bf16 compute):
    python experiments/bench_train.py --model wrn28_2 --dtype bfloat16 --steps 50

P5 (WRN-28-2): ours is the jitted FixMatch-DARP step on random 32x32x3 images
(augmentation, sampling and DARP bookkeeping included) with FixMatch's joint
BatchNorm batch and with the weak views in a separate no-gradient pass; the
peer is the same network and FixMatch loss in PyTorch on pre-made views
(augmentation not timed for it). The table adds img/s and the share of this
machine's float32 matmul peak (measured here with a 2048^3 jnp.dot) reached by
our step's FLOPs (XLA's cost analysis of the compiled step).

Ours: the jitted FixMatch(-DARP) step (B = 32, μ = 7: 480 images of 28x28x1
per step, weak + strong augmentation, sampling and DARP bookkeeping included),
with the weak views in the joint BatchNorm batch (FixMatch) or in a separate
no-gradient pass; and our bare supervised step on 480 images for reference.
Peer: PyTorch (CPU, 2 threads) bare supervised step of the same architecture
on 480 pre-made images, run in its own interpreter (`--torch_python`, a
throwaway venv with `pip install torch==2.13.0`); skipped with a message if
absent. Medians over `--steps` timed steps after warm-up, same run.
"""
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from absl import app, flags, logging

_TORCH_PYTHON = flags.DEFINE_string("torch_python", "", "Python with torch installed.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per measurement.")
_OUT = flags.DEFINE_string("out", "", "Write the raw numbers here as JSON.")
_MODEL = flags.DEFINE_enum("model", "cnn", ["cnn", "wrn28_2"], "P5b (cnn) or P5 (wrn28_2).")
_CASES = flags.DEFINE_list("cases", [], "Only these of our steps (default: all), e.g. "
                           "fixmatch_joint.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "WRN compute dtype (bfloat16 for GPUs).")

TORCH_WRN_BENCH = textwrap.dedent("""
    import json, statistics, sys, time, torch
    from torch import nn
    import torch.nn.functional as F
    torch.set_num_threads(2)
    steps = int(sys.argv[1])
    class Block(nn.Module):
        def __init__(self, cin, cout, stride, activate_before_residual):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(cin, momentum=0.001)
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout, momentum=0.001)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.project = cin != cout or stride != 1
            self.abr = activate_before_residual
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if self.project else None
        def forward(self, x):
            a = F.leaky_relu(self.bn1(x), 0.1)
            if self.project or self.abr:
                x = a
            y = self.conv2(F.leaky_relu(self.bn2(self.conv1(a)), 0.1))
            return (self.shortcut(x) if self.project else x) + y
    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)]
    cin = 16
    for g, (w, s) in enumerate(zip((32, 64, 128), (1, 2, 2))):
        for i in range(4):
            layers.append(Block(cin, w, s if i == 0 else 1, g == 0 and i == 0)); cin = w
    layers += [nn.BatchNorm2d(128, momentum=0.001), nn.LeakyReLU(0.1),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10)]
    net = nn.Sequential(*layers)
    opt = torch.optim.SGD(net.parameters(), lr=0.03, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    x_l = torch.rand(64, 3, 32, 32); y_l = torch.randint(0, 10, (64,))
    weak = torch.rand(448, 3, 32, 32); strong = torch.rand(448, 3, 32, 32)
    def step():
        opt.zero_grad()
        logits = net(torch.cat([x_l, weak, strong]))
        logits_l, logits_w, logits_s = logits[:64], logits[64:512], logits[512:]
        probs = torch.softmax(logits_w.detach(), -1)
        confidence, pseudo = probs.max(-1)
        mask = (confidence >= 0.95).float()
        loss = F.cross_entropy(logits_l, y_l) + (
            F.cross_entropy(logits_s, pseudo, reduction="none") * mask).mean()
        loss.backward(); opt.step()
    for _ in range(2): step()
    times = []
    for _ in range(steps):
        t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
    print(json.dumps({"torch": torch.__version__, "median_s": statistics.median(times),
                      "params": sum(p.numel() for p in net.parameters())}))
""")

TORCH_BENCH = textwrap.dedent("""
    import json, statistics, sys, time, torch
    from torch import nn
    torch.set_num_threads(2)
    steps = int(sys.argv[1])
    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    net = nn.Sequential(*block(1, 32, 2), *block(32, 64, 1), *block(64, 64, 2), *block(64, 64, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 128), nn.ReLU(),
                        nn.Linear(128, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.03, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    x = torch.rand(480, 1, 28, 28); y = torch.randint(0, 10, (480,))
    loss_fn = nn.CrossEntropyLoss()
    def step():
        opt.zero_grad(); loss = loss_fn(net(x), y); loss.backward(); opt.step()
    for _ in range(3): step()
    times = []
    for _ in range(steps):
        t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
    print(json.dumps({"torch": torch.__version__, "median_s": statistics.median(times),
                      "params": sum(p.numel() for p in net.parameters())}))
""")


def _time_jax_steps(step, state, steps):
    import jax
    for _ in range(3):
        state, metrics = step(state)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _matmul_peak_flops(size=2048):
    """This machine's float32 matmul rate (FLOP/s), median of 5 products."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size))
    matmul = jax.jit(jnp.dot)
    matmul(a, a).block_until_ready()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times)


def measure_ours(steps, model_name="cnn", dtype="float32"):
    """Median s/step of our steps; returns ({case: seconds}, params, {case: flops})."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from npc_jax import data, train
    from npc_jax.models import count_params, get_model

    if model_name == "cnn":
        dataset = data.load_dataset("fashion_mnist")
        images, labels, batch_size = dataset.x_train, dataset.y_train, 32
        model = get_model("cnn", 10)
        cases = [("fixmatch_joint", train.fixmatch_step, dict(weak_forward="joint")),
                 ("fixmatch_separate", train.fixmatch_step, dict(weak_forward="separate")),
                 ("supervised_480", train.supervised_step,
                  dict(method="supervised", batch_size=480))]
    else:   # CIFAR-shaped random pool: the step's cost does not depend on the pixels
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (10_000, 32, 32, 3), dtype=np.uint8)
        labels, batch_size = rng.integers(0, 10, 10_000).astype(np.int32), 64
        model = get_model("wrn28_2", 10, (32, 32, 3), dtype=jnp.dtype(dtype))
        cases = [("fixmatch_joint", train.fixmatch_step, dict(weak_forward="joint")),
                 ("fixmatch_separate", train.fixmatch_step, dict(weak_forward="separate"))]
    pool = data.Pool.initial(labels, 250 if model_name == "wrn28_2" else 50, seed=0)
    labeled = pool.labeled_indices
    train_data = train.make_train_data(images, labeled, labels[labeled],
                                       diagnostic_labels=labels)
    rows, flops = {}, {}
    only = set(_CASES.value)
    for name, step_fn, overrides in cases:
        if only and name not in only:
            continue
        config = train.TrainConfig(**{"steps": 1000, "batch_size": batch_size, "mu": 7,
                                      "darp_warmup": 0.0, **overrides})
        state = train.init_state(model, config, jax.random.PRNGKey(0), len(images))
        key = jax.random.PRNGKey(1)
        step = lambda s: train.train_step(s, train_data, key, step_fn=step_fn, model=model,
                                          config=config)
        try:
            cost = train.train_step.lower(state, train_data, key, step_fn=step_fn, model=model,
                                          config=config).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            flops[name] = float(cost.get("flops", 0.0))
        except Exception:   # cost analysis is best-effort across JAX versions
            flops[name] = 0.0
        rows[name] = _time_jax_steps(step, state, steps)
    return rows, count_params(model.init(jax.random.PRNGKey(0))["params"]), flops


def measure_torch(python, steps, script=TORCH_BENCH):
    if not python:
        return None
    result = subprocess.run([python, "-c", script, str(steps)], capture_output=True,
                            text=True, timeout=1800)
    if result.returncode:
        print(f"PyTorch peer failed:\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import jax
    wrn = _MODEL.value == "wrn28_2"
    images_per_step = 960 if wrn else 480
    ours, params, flops = measure_ours(_STEPS.value, _MODEL.value, _DTYPE.value)
    peer = measure_torch(_TORCH_PYTHON.value, _STEPS.value,
                         TORCH_WRN_BENCH if wrn else TORCH_BENCH)
    peak = _matmul_peak_flops()
    if peer is None:
        print("PyTorch peer skipped: pass --torch_python=/path/to/python-with-torch "
              "(python -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch==2.13.0)")
    peer_name = "FixMatch step" if wrn else "bare supervised step"
    print(f"\njax {jax.__version__} on {jax.devices()[0].device_kind}, {_MODEL.value} "
          f"({_DTYPE.value}), {params} params, {images_per_step} images/step, medians of "
          f"{_STEPS.value} steps; float32 matmul peak {peak / 1e9:.1f} GFLOP/s\n")
    print(f"| step | s/step | img/s | GFLOP/step | share of matmul peak | vs PyTorch {peer_name} |")
    print("|---|---|---|---|---|---|")
    for name, seconds in ours.items():
        ratio = f"{peer['median_s'] / seconds:.2f}x" if peer else "—"
        share = f"{flops[name] / seconds / peak:.0%}" if flops.get(name) else "—"
        gflop = f"{flops[name] / 1e9:.0f}" if flops.get(name) else "—"
        print(f"| ours: {name} | {seconds:.3f} | {images_per_step / seconds:.0f} | {gflop} | "
              f"{share} | {ratio} |")
    if peer:
        print(f"| PyTorch {peer['torch']}: {peer_name} | {peer['median_s']:.3f} | "
              f"{images_per_step / peer['median_s']:.0f} | | | 1.00x |")
    if _OUT.value:
        Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
        Path(_OUT.value).write_text(json.dumps({
            "model": _MODEL.value, "dtype": _DTYPE.value, "device": jax.devices()[0].device_kind,
            "ours": ours, "flops": flops, "matmul_peak_flops": peak, "peer": peer,
            "params": params}, indent=1))


if __name__ == "__main__":
    app.run(main)
