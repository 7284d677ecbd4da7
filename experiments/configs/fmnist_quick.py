"""The README demo: passive vs NPC on Fashion-MNIST, 1 seed, ASSL, CPU.

The L1 config (fmnist_assl.py) shrunk to fit ≤ 10 minutes on 2 cores: one seed,
two rounds (10, 30, 50 labels), 600 training steps instead of 1000.

Command:
    python experiments/assl.py --config experiments/configs/fmnist_quick.py --workdir runs/fmnist_quick

Runtime: 5.5-8 min on 2 CPU cores (README, "The demo": 5 trainings of 60-90 s).
Expected result (measured, seed 0, test accuracy % at 10 / 30 / 50 labels):
passive 36.27 / 54.93 / 59.27, npc 36.27 / 53.01 / 58.38.
"""
from configs import fmnist_assl


def get_config():
    config = fmnist_assl.get_config()
    config.strategies = "passive,npc"
    config.seeds = "0"
    config.rounds = 2
    config.train_steps = 600
    return config
