"""The paper's Table 1 protocol on CIFAR-10 (WRN-28-2, FixMatch-DARP, 2^20 steps). GPU.

Q0 = 10 labels (1 per class), Q = 20 per round, evaluated at 10, 30, 50, 70
labels, 3 seeds; each round trains WRN-28-2 from scratch with FixMatch-DARP
(FixMatch's hyperparameters: B = 64, μ = 7, τ = 0.95, lr 0.03 cos(7πk/16K),
Nesterov 0.9, WD 5e-4, EMA 0.999; DARP toward a uniform target). As in the
paper, the first acquisition uses the median-accuracy model of 5 trainings on
the initial labels (`initial_trainings = 5`). CIFAR-10 comes from tfds
(`pip install -e .[tfds]`; download once with network access, see README).

Command:
    python experiments/assl.py --config experiments/configs/cifar10_paper.py \
        --workdir runs/cifar10_paper
    # a subset at a time, into the same workdir:
    python experiments/assl.py --config experiments/configs/cifar10_paper.py \
        --workdir runs/cifar10_paper --config.strategies=npc --config.seeds=0
    # or split the 15 (strategy, seed) jobs over 4 GPUs, worker i on GPU i:
    CUDA_VISIBLE_DEVICES=$i python experiments/assl.py \
        --config experiments/configs/cifar10_paper.py --workdir runs/cifar10_paper \
        --config.shard=$i/4          # for i in 0 1 2 3

Runtime: one training is 2^20 FixMatch steps; the WRN-28-2 step measured on
one H200 (experiments/bench_train.py --model wrn28_2, BENCHMARKS.md P5) is
0.023 s in float32 and 0.012 s with --config.model_dtype=bfloat16, so 6.7 h
(3.5 h) per training. A (strategy, seed) needs 3 trainings after the shared
round 0 (5 trainings per seed): 5 x 3 x 3 + 3 x 5 = 60 trainings, ~17 days
float32 (~9 days bf16) on one GPU; the (strategy, seed) jobs run in parallel
workers (config.shard), one per GPU. (Evaluation and acquisition add minutes per round.)

Expected result (the paper's Table 1, test accuracy %, 3 trials, at 30/50/70):
    Passive 78.08 / 91.82 / 91.00      Margin 87.36 / 90.85 / 90.85
    ALBL    80.61 / 89.62 / 94.45      BADGE  80.60 / 86.43 / 80.32
    NPC     85.09 / 94.63 / 94.85
"""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.dataset = "cifar10"
    config.data_dir = ""
    config.model = "wrn28_2"
    # "bfloat16": compute in bf16 (parameters, BN statistics, logits in float32);
    # the WRN step is 1.9x faster on an H200 (BENCHMARKS.md P5).
    config.model_dtype = "float32"
    config.mode = "assl"
    config.strategies = "passive,margin,albl,badge,npc"
    config.seeds = "0,1,2"
    config.shard = ""                   # "i/N": worker i of N runs every N-th (seed, strategy)
    config.initial_labels = 10
    config.query_size = 20
    config.first_query_size = 0       # round 0's query; 0: query_size (cold start: e.g. 10)
    config.continue_with = ""         # "": each strategy queries every round; else rounds >= 1 use it
    config.rounds = 3
    config.validation_size = 0
    config.initial_trainings = 5
    config.train_steps = 2 ** 20

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64
    config.train.mu = 7
    config.train.lr = 0.03
    config.train.weight_decay = 5e-4
    config.train.ema_decay = 0.999
    config.train.threshold = 0.95
    config.train.lambda_u = 1.0
    config.train.darp = True
    config.train.darp_warmup = 0.4
    config.train.darp_every = 10
    config.train.weak_forward = "joint"    # FixMatch's BatchNorm batch
    config.train.supervised_warmup = 0.0
    config.train.chunk_steps = 1024
    config.train.devices = 0            # data-parallel over this many local devices (0: all); not hashed
    config.train.pool_layout = "replicated"   # "sharded": each device a block of the pool
    config.train.eval_batch_size = 1000

    config.strategy_options = ml_collections.ConfigDict()
    config.strategy_options.npc = ml_collections.ConfigDict({"num_candidates": 1000})
    # ALBL's horizon is derived from config.rounds (npc_jax.config).
    return config
