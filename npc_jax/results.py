"""Run records (results.jsonl), summary tables and plots.

One JSON object per (mode, strategy, seed, round); see DESIGN.md §5. Appends
write one whole line and fsync it, so a run killed at any moment leaves every
finished round on disk; a torn last line (killed mid-write) is dropped when
the log is reopened.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable



class ResultsLog:
    """Append-only JSONL file of round records."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()

    def _drop_torn_tail(self):
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to a temporary file, fsyncs it, and renames it over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_records(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Records of several run directories or results.jsonl files."""
    records = []
    for path in paths:
        path = Path(path)
        records += ResultsLog(path / "results.jsonl" if path.is_dir() else path).read()
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
