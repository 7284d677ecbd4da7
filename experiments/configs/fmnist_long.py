"""Fashion-MNIST L1 protocol with the small CNN and a long FixMatch schedule. GPU.

The L1 schedule (Q0 = 10, Q = 20, to 70 labels; the Table 1 strategies + NPC
variants) with FixMatch's own long-run settings instead of the CPU recipe of
fmnist_assl.py: 2^16 steps, B = 64, τ = 0.95, EMA 0.999, joint BatchNorm
batch, no supervised warm-up; 3 seeds.

Command:
    python experiments/assl.py --config experiments/configs/fmnist_long.py \
        --workdir runs/fmnist_long

Runtime: 8 strategies x 3 seeds x 3 + 3 = 75 trainings of 2^16 steps; on 2 CPU
cores the step takes ~0.3 s (BENCHMARKS.md P5b: 5.5 h per training, so use a
GPU), on a GPU the small CNN step is launch-bound (a few ms).

Expected result: above the CPU recipe's L1 numbers (BENCHMARKS.md L1); not
yet measured.
"""
from configs import fmnist_assl


def get_config():
    config = fmnist_assl.get_config()
    config.strategies = "passive,margin,entropy,least_confidence,coreset,badge,albl,npc"
    config.train_steps = 2 ** 16
    config.train.batch_size = 64
    config.train.threshold = 0.95
    config.train.ema_decay = 0.999
    config.train.weak_forward = "joint"
    config.train.supervised_warmup = 0.0
    config.train.chunk_steps = 1024
    return config
