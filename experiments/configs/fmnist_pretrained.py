"""L2 `fmnist-pretrained` (BENCHMARKS.md): L1's schedule, every training fine-tuned
from the self-supervised pretraining of the small CNN on the pool.

Q0 = 10 (one per class), Q = 20, evaluated at 10, 30, 50, 70 labels, exactly
as L1 (fmnist_assl.py); the difference is `init = "pretrained"`: each training
(round 0 included) starts from the SimCLR encoder of
experiments/configs/pretrain_fmnist.py (made once, cached under
`pretrain_cache`, a cache hit for every later run) with a fresh classifier,
then FixMatch with a shorter schedule (the encoder is already good) whose
unlabeled targets are the labels propagated over the pretrained embedding's
kNN graph (class-balanced, certainty-weighted, λ_u = 8).

Command:
    python experiments/assl.py --config experiments/configs/fmnist_pretrained.py \
        --workdir runs/fmnist_pretrained --config.strategies=passive,npc --config.seeds=0,1,2

Runtime: the pretraining once (P8, BENCHMARKS.md: ~22 min on 2 quiet cores),
then the pool's kNN graph once per process (~30 s) and about 55 s per
training on 2 cores (800 steps, the first 25 % a linear probe; ASL ~20 s).
Expected result (BENCHMARKS.md "L2 v3"; records/l2, passive, 5 seeds, test
accuracy at 10 / 30 / 50 / 70 labels): ASSL 62.4 / 70.9 / 76.1 / 77.1 %
(AUC 71.6), ASL 58.4 / 66.2 / 72.4 / 73.0 %. Before the propagated targets
(records/l2_v2): ASSL 58.7 / 67.6 / 73.7 / 75.7 %; with the first, plain
pretraining (`pretrain_fmnist.py:plain`, records/l2_v1): ASSL 57.6 / 65.5 /
71.5 / 73.7 % (L1 ASSL from scratch: 49.5 / 56.9 / 65.1 / 69.8).
"""
from configs import fmnist_assl, pretrain_fmnist


def get_config(arg: str = "assl"):
    """`arg`: "assl" | "asl" (warm start, Q0 = 10 one per class); "cold" |
    "cold_asl": no initial label, the strategy picks the first 10 from the
    pretrained network (its head untrained), then three rounds of 20;
    "cold_random": the same, the first 10 picked from the randomly initialised
    network (the paper's zero-shot rows), every training fine-tuned as above."""
    starts = {"assl": ("assl", ""), "asl": ("asl", ""), "cold": ("assl", "pretrained"),
              "cold_asl": ("asl", "pretrained"), "cold_random": ("assl", "random")}
    if arg not in starts:
        raise ValueError(f"fmnist_pretrained takes one of {sorted(starts)}, got {arg!r}.")
    mode, cold_start_network = starts[arg]
    config = fmnist_assl.get_config(mode)
    if cold_start_network:
        config.initial_labels = 0
        config.first_query_size = 10
        config.rounds = 4
    config.cold_start_network = cold_start_network or "pretrained"
    config.init = "pretrained"
    config.model = "cnn_grid"           # the pretrained network (pretrain_fmnist.py)
    config.pretrain = pretrain_fmnist.get_config().pretrain
    config.pretrain_seed = 0
    config.pretrain_cache = "runs/pretrain_cache"
    config.train_steps = 800
    config.train.supervised_warmup = 0.25
    # Linear probe first (encoder frozen during the supervised warm-up), then
    # the encoder at a tenth of the learning rate (validation: +7 points).
    config.train.freeze_encoder_fraction = 0.25
    config.train.encoder_lr_scale = 0.1
    config.train.ema_decay = 0.99
    if mode == "assl":
        # FixMatch's unlabeled targets: the labels propagated over the pretrained
        # embedding's kNN graph, weighted by certainty, at 8x the weight
        # (validation, 3 seeds: 69.1 vs 61.9 % at 10 labels, 74.2 vs 73.5 % at
        # 70, ~15 % cheaper steps; BENCHMARKS.md P8 "Label propagation").
        config.train.pseudo_labels = "propagated"
        config.train.lambda_u = 8.0
    return config
