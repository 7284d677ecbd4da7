"""The paper's Table 3, single-shot: one query of Q = 30 (or 50) from a 1-label-per-class model.

10 initial labels (1 per class), the model trained on them (median of 5, as in
cifar10_paper.py), one query of Q labels, FixMatch-DARP on the 10 + Q labels;
3 seeds.

Command (Q = 30; append `:50` for Q = 50):
    python experiments/assl.py --config experiments/configs/single_shot.py \
        --workdir runs/single_shot_30

Runtime: 3 seeds x (5 initial + 4 strategies) = 27 trainings of 2^20 steps;
6.7 h (float32) or 3.5 h (bf16) each on one H200 (BENCHMARKS.md P5):
~7.5 days (~3.9 days bf16) on one GPU.

Expected result: the paper's Table 3 reports NPC ahead of passive sampling
for single-shot queries; its figures are not in DESIGN.md and were not
reproduced here, so compare against the paper itself.
"""
from configs import cifar10_paper


def get_config(query_size: str = "30"):
    config = cifar10_paper.get_config()
    config.strategies = "passive,margin,badge,npc"
    config.query_size = int(query_size)
    config.rounds = 1
    return config
