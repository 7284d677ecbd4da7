"""The README demo: passive vs NPC on Fashion-MNIST, 1 seed, ASSL, CPU.

Command:
    python experiments/assl.py --config experiments/configs/fmnist_quick.py --workdir runs/fmnist_quick

Runtime and result: see the README (measured on 2 CPU cores).
"""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.dataset = "fashion_mnist"
    config.data_dir = ""
    config.model = "cnn"
    config.mode = "assl"
    config.strategies = "passive,npc"
    config.seeds = "0"
    config.initial_labels = 10
    config.query_size = 20
    config.rounds = 2
    config.train_steps = 300

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
    config.train.chunk_steps = 50

    config.strategy_options = ml_collections.ConfigDict()
    config.strategy_options.npc = ml_collections.ConfigDict({"num_candidates": 1000})
    return config
