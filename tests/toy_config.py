"""The tiny config of tests/test_loop.py, as a file for the command-line entry point."""
import ml_collections


def get_config():
    return ml_collections.ConfigDict({
        "dataset": "npz:REPLACE_ME", "data_dir": "", "model": "cnn", "mode": "assl",
        "strategies": "passive,npc", "seeds": "0", "initial_labels": 4,
        "query_size": 4, "rounds": 2, "train_steps": 6,
        "train": {"batch_size": 4, "mu": 2, "chunk_steps": 3, "eval_batch_size": 64,
                  "ema_decay": 0.5, "darp_every": 2},
        "strategy_options": {"npc": {"num_candidates": 16}},
    })
