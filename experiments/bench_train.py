"""P5b: one FixMatch step of the small CNN vs the same CNN's bare step in PyTorch.

    python experiments/bench_train.py --torch_python /tmp/torch-venv/bin/python \
        --out runs/bench_train.json

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


def measure_ours(steps):
    import jax
    from npc_jax import data, train
    from npc_jax.models import count_params, get_model

    dataset = data.load_dataset("fashion_mnist")
    pool = data.Pool.initial(dataset.y_train, 50, seed=0)
    labeled = pool.labeled_indices
    train_data = train.make_train_data(dataset.x_train, labeled, dataset.y_train[labeled],
                                       diagnostic_labels=dataset.y_train)
    model = get_model("cnn", 10)
    rows = {}
    cases = [("fixmatch_joint", train.fixmatch_step, dict(weak_forward="joint")),
             ("fixmatch_separate", train.fixmatch_step, dict(weak_forward="separate")),
             ("supervised_480", train.supervised_step, dict(method="supervised", batch_size=480))]
    for name, step_fn, overrides in cases:
        config = train.TrainConfig(**{"steps": 1000, "batch_size": 32, "mu": 7,
                                      "darp_warmup": 0.0, **overrides})
        state = train.init_state(model, config, jax.random.PRNGKey(0), len(dataset.x_train))
        key = jax.random.PRNGKey(1)
        step = lambda s: train._train_step(s, train_data, key, step_fn=step_fn, model=model,
                                           config=config)
        rows[name] = _time_jax_steps(step, state, steps)
    return rows, count_params(model.init(jax.random.PRNGKey(0))["params"])


def measure_torch(python, steps):
    if not python:
        return None
    result = subprocess.run([python, "-c", TORCH_BENCH, str(steps)], capture_output=True,
                            text=True, timeout=600)
    if result.returncode:
        print(f"PyTorch peer failed:\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import jax
    ours, params = measure_ours(_STEPS.value)
    peer = measure_torch(_TORCH_PYTHON.value, _STEPS.value)
    if peer is None:
        print("PyTorch peer skipped: pass --torch_python=/path/to/python-with-torch "
              "(python -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch==2.13.0)")
    print(f"\njax {jax.__version__}, {params} params, 480 images/step, medians of "
          f"{_STEPS.value} steps\n")
    print("| step | s/step | img/s | vs PyTorch bare step |")
    print("|---|---|---|---|")
    for name, seconds in ours.items():
        ratio = f"{peer['median_s'] / seconds:.2f}x" if peer else "—"
        print(f"| ours: {name} | {seconds:.3f} | {480 / seconds:.0f} | {ratio} |")
    if peer:
        print(f"| PyTorch {peer['torch']}: bare supervised step | {peer['median_s']:.3f} | "
              f"{480 / peer['median_s']:.0f} | 1.00x |")
    if _OUT.value:
        Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
        Path(_OUT.value).write_text(json.dumps({"ours": ours, "peer": peer,
                                                "params": params}, indent=1))


if __name__ == "__main__":
    app.run(main)
