"""npc_jax: active semi-supervised learning in JAX (NPC, baselines, FixMatch-DARP).

Modules, from the bottom of the import graph up (the walls between them are
import-linter contracts in pyproject.toml):

- `data`: datasets as arrays (IDX, tfds, npz), the immutable `Pool`, the
  validation split.
- `models`: small CNN, WRN-28-2; `Model` views `apply_fn` / `apply_with_features`.
- `inference`: the one chunked map; batched apply / predict / evaluate; `check_finite`.
- `ntk`: empirical trace-NTKs (Jacobian contraction, last-layer closed forms).
- `spectral`: λ_min of one or many Gram matrices.
- `infinite`: analytic NTKs via neural-tangents (its only importer).
- `representation`: frozen-feature evaluation of an encoder.
- `ssl`: augment, FixMatch, DARP, thresholds, self-supervised pretraining.
- `train`: `TrainConfig`, pure jitted steps, training loops.
- `strategies`: acquisition strategies, by name (`make_strategy`).
- `pretraining`: the cached self-supervised encoder of a run.
- `storage`: the files of a run: JSON-lines logs (readers never write), atomic
  writes, flax checkpoints, the workdir lock.
- `records`: the typed round record of `results.jsonl` and its one reader.
- `checkpoint`: the round-0 model(s) of a run.
- `config`: a run's settings, parsed and validated once.
- `labelling`: human in the loop (query CSV + contact sheet, label import).
- `labelstudio`: the queries as tasks of a Label Studio project (optional server).
- `loop`: ASSL / ASL rounds, resume.
- `results`, `report`: tables, figures and reports from records.

`import npc_jax` and `import npc_jax.data` stay light (numpy only): every
submodule and re-exported name is imported on first attribute access
(PEP 562), so the training stack (flax, optax) loads only when used.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Submodules reachable as `npc_jax.<name>` without importing them explicitly.
_SUBMODULES = ("data", "models", "inference", "ntk", "spectral", "infinite", "representation",
               "ssl", "train", "strategies", "pretraining", "storage", "records", "checkpoint",
               "config",
               "labelling", "labelstudio", "loop", "results", "report")

# Re-exported names: name -> the submodule that defines it.
_EXPORTS = {
    "DataError": "data",
    "Dataset": "data",
    "Pool": "data",
    "load_dataset": "data",
    "Model": "models",
    "get_model": "models",
    "make_strategy": "strategies",
    "TrainConfig": "train",
    "RoundRecord": "records",
    "read_records": "records",
    "RunSettings": "config",
}

__all__ = sorted([*_SUBMODULES, *_EXPORTS])

if TYPE_CHECKING:  # for type checkers and IDEs; never run
    from npc_jax import (checkpoint, config, data, inference, infinite, labelling, labelstudio,
                         loop, models, ntk, pretraining, records, report, representation,
                         results, spectral, ssl, storage, strategies, train)
    from npc_jax.data import DataError, Dataset, Pool, load_dataset
    from npc_jax.config import RunSettings
    from npc_jax.models import Model, get_model
    from npc_jax.records import RoundRecord, read_records
    from npc_jax.strategies import make_strategy
    from npc_jax.train import TrainConfig


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
