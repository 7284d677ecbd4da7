"""Run records (results.jsonl), summary tables and plots.

One JSON object per (mode, strategy, seed, round); see DESIGN.md §5. Appends
write one whole line and fsync it, so a run killed at any moment leaves every
finished round on disk; a torn last line (killed mid-write) is dropped when
the log is reopened.
"""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np


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


def read_records(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Records of several run directories or results.jsonl files."""
    records = []
    for path in paths:
        path = Path(path)
        records += ResultsLog(path / "results.jsonl" if path.is_dir() else path).read()
    return records


def accuracy_table(records: list[dict]) -> dict:
    """{(mode, strategy): {num_labels: [accuracy per seed]}} in percent."""
    table = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in records:
        table[(r["mode"], r["strategy"])][r["num_labels"]].append(100.0 * r["test_accuracy"])
    return table


def format_table(records: list[dict]) -> str:
    """Markdown table: rows (mode, strategy), columns label counts, mean ± std, AUC.

    AUC is the mean accuracy over the label counts of the row (the area under
    the accuracy-vs-labels curve with equally spaced counts), over seeds.
    """
    table = accuracy_table(records)
    counts = sorted({n for row in table.values() for n in row})
    header = "| mode | strategy | " + " | ".join(str(n) for n in counts) + " | AUC | seeds |"
    lines = [header, "|" + "---|" * (len(counts) + 4)]
    for (mode, strategy), row in sorted(table.items()):
        cells = []
        for n in counts:
            values = row.get(n, [])
            cells.append(f"{np.mean(values):.2f} ± {np.std(values):.2f}" if values else "—")
        complete = all(n in row for n in counts)
        auc = np.mean([np.mean(row[n]) for n in counts]) if complete else float("nan")
        num_seeds = max(len(v) for v in row.values())
        lines.append(f"| {mode} | {strategy} | " + " | ".join(cells)
                     + (f" | {auc:.2f} |" if complete else " | — |") + f" {num_seeds} |")
    return "\n".join(lines)


def plot_accuracy(records: list[dict], path: str | os.PathLike) -> None:
    """Accuracy (mean ± std over seeds) vs number of labels, one line per row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (mode, strategy), row in sorted(accuracy_table(records).items()):
        counts = sorted(row)
        means = [np.mean(row[n]) for n in counts]
        stds = [np.std(row[n]) for n in counts]
        ax.errorbar(counts, means, yerr=stds, marker="o", capsize=3,
                    label=f"{strategy} ({mode})")
    ax.set_xlabel("number of labels")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
