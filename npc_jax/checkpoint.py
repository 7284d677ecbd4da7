"""The round-0 model of a seed, kept in ``workdir/checkpoints/`` and shared by its strategies.

Two files per seed: ``seed{S}_round0.msgpack`` (the flax variables) and
``seed{S}_round0.json`` (its evaluation summary, the labeled indices it was
trained on and the data's fingerprint). The JSON is written last, both
atomically, so a checkpoint is either whole or absent. A checkpoint counts
only for the same labeled set and data; otherwise the model is retrained.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flax.serialization
import numpy as np

from npc_jax import storage
from npc_jax.data import DataError

__all__ = ["load_round0", "round0_stem", "save_round0"]


def round0_stem(workdir: Path, seed: int) -> Path:
    """``workdir/checkpoints/seed{seed}_round0`` (without suffix)."""
    return Path(workdir) / "checkpoints" / f"seed{seed}_round0"


def load_round0(stem: Path, template: Any, labeled: np.ndarray,
                fingerprint: str) -> tuple[Any, dict] | None:
    """(variables, summary) of the checkpoint at `stem`, or None if absent or stale.

    Args:
      stem: from `round0_stem`.
      template: variables of the model's structure (``model.init(key)``).
      labeled: (L,) the labeled indices the model must have been trained on.
      fingerprint: the data's `Dataset.fingerprint()`.

    Raises:
      DataError: a checkpoint file is damaged (the message says what to delete).
    """
    weights, meta = stem.with_suffix(".msgpack"), stem.with_suffix(".json")
    if not (weights.exists() and meta.exists()):
        return None
    summary = _read_meta(meta)
    if (summary.get("labeled_indices") != np.asarray(labeled).tolist()
            or summary.get("dataset_fingerprint", fingerprint) != fingerprint):
        return None
    variables = storage.read_flax(weights, template, fix=(
        f"delete it and {meta.name} to retrain the round-0 model."))
    return variables, summary


def save_round0(stem: Path, variables: Any, summary: dict) -> None:
    """Writes the variables, then the summary (the JSON marks the checkpoint complete)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    storage.write_atomically(stem.with_suffix(".msgpack"), flax.serialization.to_bytes(variables))
    storage.write_atomically(stem.with_suffix(".json"), json.dumps(summary).encode())


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"Checkpoint metadata {path} is damaged ({error}); delete it and "
                        f"{path.with_suffix('.msgpack').name} to retrain the round-0 model.") from None
