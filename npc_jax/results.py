"""A run's summary: the accuracy table and plot of its round records.

The records are `npc_jax.records.RoundRecord`s, read with
`npc_jax.records.read_records` (the one reader; it never modifies a file).
The layout is `npc_jax.report`'s (mean ± sample std over seeds, AUC).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Iterable

from npc_jax.records import RoundRecord

__all__ = ["as_records", "format_table", "plot_accuracy"]


def as_records(records: Iterable[RoundRecord | Mapping]) -> list[RoundRecord]:
    """`RoundRecord`s of typed records or their JSON dicts (``RoundRecord.from_json``).

    Raises:
      RecordsError: a dict that is not a round record (the field named).
    """
    return [r if isinstance(r, RoundRecord) else RoundRecord.from_json(r, where=f"record {i}")
            for i, r in enumerate(records)]


def format_table(records: Iterable[RoundRecord | Mapping]) -> str:
    """Markdown accuracy table of `records` (npc_jax.report's layout: mean ± sample std, AUC)."""
    from npc_jax import report
    return report.accuracy_markdown(report.summarize(as_records(records)))


def plot_accuracy(records: Iterable[RoundRecord | Mapping], path: str | os.PathLike) -> None:
    """Accuracy vs labels (mean ± sample std over seeds), a panel per mode, PNG at `path`."""
    from npc_jax import report
    path = Path(path)
    report.plot_accuracy_curves(report.summarize(as_records(records)), path.with_suffix(""),
                                formats=("png",))
