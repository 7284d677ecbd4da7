"""L1 `fmnist-assl` (BENCHMARKS.md): Fashion-MNIST ASSL, the paper's CIFAR-10 schedule.

Q0 = 10 (one per class), Q = 20, evaluated at 10, 30, 50, 70 labels; the small
CNN trained from scratch each round with FixMatch-DARP (uniform target).

Command (one subset at a time is fine; the workdir collects them):
    python experiments/assl.py --config experiments/configs/fmnist_assl.py \
        --workdir runs/fmnist_assl --config.strategies=passive,npc --config.seeds=0,1,2
    # ASL (supervised on the labeled set only) for comparison:
    python experiments/assl.py --config experiments/configs/fmnist_assl.py:asl \
        --workdir runs/fmnist_assl_asl --config.strategies=passive,npc --config.seeds=0,1,2

Runtime and expected result: see BENCHMARKS.md (L1).
"""
import ml_collections


def get_config(arg: str = "assl"):
    config = ml_collections.ConfigDict()
    config.dataset = "fashion_mnist"
    config.data_dir = ""
    config.model = "cnn"
    config.mode = arg
    config.strategies = "passive,npc"
    config.seeds = "0,1,2"
    config.initial_labels = 10
    config.query_size = 20
    config.rounds = 3
    config.validation_size = 0
    config.train_steps = 600

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 32
    config.train.mu = 7
    config.train.lr = 0.03
    config.train.weight_decay = 5e-4
    config.train.ema_decay = 0.99
    config.train.threshold = 0.95
    config.train.lambda_u = 1.0
    config.train.darp = True
    config.train.darp_warmup = 0.4
    config.train.darp_every = 10
    config.train.weak_forward = "separate"
    config.train.supervised_warmup = 0.0
    config.train.chunk_steps = 50

    config.strategy_options = ml_collections.ConfigDict()
    config.strategy_options.npc = ml_collections.ConfigDict({"num_candidates": 1000})
    return config
