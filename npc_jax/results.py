"""Run records (results.jsonl): reading them, summary tables and plots.

One JSON object per (mode, strategy, seed, round); see DESIGN.md §5. The file
rules (whole fsync'd lines, readers that never modify, repairs only when a
log is opened to append) live in `npc_jax.records`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from npc_jax.records import read_jsonl

__all__ = ["format_table", "plot_accuracy", "read_records"]


def read_records(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Records of several run directories or results.jsonl files."""
    records = []
    for path in paths:
        path = Path(path)
        records += read_jsonl(path / "results.jsonl" if path.is_dir() else path)
    return records


def format_table(records: list[dict]) -> str:
    """Markdown accuracy table of `records` (npc_jax.report's layout: mean ± sample std, AUC)."""
    from npc_jax import report
    return report.accuracy_markdown(report.summarize(records))


def plot_accuracy(records: list[dict], path: str | os.PathLike) -> None:
    """Accuracy vs labels (mean ± sample std over seeds), a panel per mode, PNG at `path`."""
    from npc_jax import report
    path = Path(path)
    report.plot_accuracy_curves(report.summarize(records), path.with_suffix(""), formats=("png",))
