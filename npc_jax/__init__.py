"""npc_jax: active semi-supervised learning in JAX (NPC, baselines, FixMatch-DARP).

Modules: `data` (datasets, the Pool), `models`, `ntk` (empirical NTKs),
`spectral` (λ_min), `strategies` (acquisition, by name), `ssl` (augment,
FixMatch, DARP), `train` (training loops), `loop` (ASSL/ASL rounds),
`results` (records, tables, plots).
"""
from npc_jax import data, loop, models, ntk, results, spectral, strategies, train
from npc_jax.data import DataError, Dataset, Pool, load_dataset
from npc_jax.models import Model, get_model
from npc_jax.strategies import make_strategy
from npc_jax.train import TrainConfig

__all__ = ["DataError", "Dataset", "Model", "Pool", "TrainConfig", "data", "get_model",
           "load_dataset", "loop", "make_strategy", "models", "ntk", "results", "spectral",
           "strategies", "train"]
