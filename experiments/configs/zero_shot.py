"""The paper's Table 3, zero-shot: one query of Q = 30 (or 50) labels from a random network.

No initial labels: the round-0 model is WRN-28-2 at its random initialisation
(nothing is trained), each strategy makes one query of Q labels from it, and
FixMatch-DARP trains on those Q labels (the cifar10_paper recipe), 3 seeds.
NPC's zero-shot query maximises λ_min of the initial network's NTK; with
`npc_infinite` (npc_jax/infinite.py, needs neural-tangents) the analytic NTK.

Command (Q = 30; append `:50` to the config path for Q = 50):
    python experiments/assl.py --config experiments/configs/zero_shot.py \
        --workdir runs/zero_shot_30
    python experiments/assl.py --config experiments/configs/zero_shot.py:50 \
        --workdir runs/zero_shot_50

Runtime: one training of 2^20 steps per (strategy, seed): 3 x 3 = 9 trainings;
6.7 h (float32) or 3.5 h (bf16) each on one H200 (BENCHMARKS.md P5):
~2.5 days (~1.3 days bf16) on one GPU.

Expected result: the paper's Table 3 reports NPC ahead of passive sampling
for zero- and single-shot queries; its figures are not in DESIGN.md and were
not reproduced here, so compare against the paper itself.
"""
from configs import cifar10_paper


def get_config(query_size: str = "30"):
    config = cifar10_paper.get_config()
    config.strategies = "passive,coreset,npc"
    config.initial_labels = 0
    config.initial_trainings = 1
    config.query_size = int(query_size)
    config.rounds = 1
    return config
