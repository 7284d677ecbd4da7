"""The paper's Table 2 protocol on CIFAR-100 (WRN-28-2, FixMatch-DARP, 2^20 steps). GPU.

Q0 = 100 labels (1 per class), Q = 200 per round, evaluated at 100, 300, 500,
700, 900 labels, 3 seeds; otherwise as cifar10_paper.py (the same FixMatch-DARP
recipe and median-of-5 initial model; WRN-28-2 as in the paper, not FixMatch's
WRN-28-8 for CIFAR-100, so FixMatch's weight decay 5e-4 for this width).

Command:
    python experiments/assl.py --config experiments/configs/cifar100_paper.py \
        --workdir runs/cifar100_paper

Runtime: 2 strategies x 3 seeds x 4 + 3 x 5 = 39 trainings of 2^20 steps, at
6.7 h (float32) or 3.5 h (bf16) each on one H200 (BENCHMARKS.md P5; the
100-class head changes the step's cost by < 1 %): ~11 days (~6 days bf16).

Expected result (the paper's Table 2, test accuracy %, at 300/500/700/900):
    Passive 37.98 / 47.11 / 52.69 / 57.97
    NPC     40.92 / 48.16 / 55.76 / 58.58
"""
from configs import cifar10_paper


def get_config():
    config = cifar10_paper.get_config()
    config.dataset = "cifar100"
    config.strategies = "passive,npc"
    config.initial_labels = 100
    config.query_size = 200
    config.first_query_size = 0       # round 0's query; 0: query_size (cold start: e.g. 10)
    config.continue_with = ""         # "": each strategy queries every round; else rounds >= 1 use it
    config.rounds = 4
    return config
