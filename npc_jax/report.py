"""Benchmark reports: tables and figures from the records of several runs.

`write_report(paths, out_dir)` reads the round records (`npc_jax.records.RoundRecord`,
through `npc_jax.records.read_records`) of any number of runs, ASSL and ASL
mixed, and writes into ``out_dir``:

  report.md          accuracy table (the paper's layout), paired statistics (95 %
                     paired-t intervals, Wilcoxon p; per label count and of the
                     AUC, Holm-adjusted over the rows) to passive and to the best
                     peer, the cold-start table, the tables below, the cost table
  accuracy.{png,svg}      accuracy vs labels, mean ± std over seeds, a panel per mode
  label_iou.{png,svg}     pairwise IoU of the acquired label sets (the paper's Fig. 1)
  class_counts.{png,svg}  classes of the acquired labels, uniform level marked
  lambda_min.{png,svg}    NPC: the chosen batch's λ_min vs the random candidates
  typicality.{png,svg}    with an embedding: AUC vs where the picks lie in it

A row is a (mode, strategy) pair, the mode saying how the run started as well
as how it trained (`report_modes`): "assl" / "asl" for a warm start (round 0
trained on initial labels), "assl-cold" / "asl-cold" for a cold start (round 0
has no label: the strategy picks the first batch, config.first_query_size
labels, with no label), "assl-cold-random" / "asl-cold-random" for a cold start
whose first batch comes from the randomly initialised network
(config.cold_start_network == "random"). Statistics are over seeds; std is the
sample std (ddof=1) everywhere, undefined (nan) for a single seed. Accuracies
are in percent. Everything but the plotting is a pure function of a list of records
(`Sequence[RoundRecord]`).
"""
from __future__ import annotations

import collections
import math
import os
import warnings
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import scipy.stats

from npc_jax.records import LambdaMinObjective, RoundRecord, read_records
from npc_jax.storage import HUMAN_LABELS_FILE

__all__ = [
    "MODE_ORDER",
    "MODE_TITLES",
    "PairedStat",
    "Row",
    "Stat",
    "accuracy_markdown",
    "acquired_class_counts",
    "auc",
    "best_peers",
    "cold_start_summary",
    "cost_summary",
    "holm",
    "label_set_iou",
    "lambda_min_rounds",
    "mean_std",
    "mode_label",
    "paired_differences",
    "paired_statistics",
    "paired_test",
    "peer_statistics",
    "plot_accuracy_curves",
    "plot_class_counts",
    "plot_label_iou",
    "plot_lambda_min",
    "plot_typicality",
    "report_markdown",
    "report_modes",
    "row_name",
    "summarize",
    "write_report",
]

Row = tuple[str, str]  # (mode, strategy)

# Warm start, then cold start, then cold start from the random network.
MODE_ORDER = ("assl", "asl", "assl-cold", "asl-cold", "assl-cold-random", "asl-cold-random")
MODE_TITLES = {"assl": "ASSL (FixMatch-DARP)", "asl": "ASL (supervised)",
               "assl-cold": "ASSL, cold start",
               "asl-cold": "ASL, cold start",
               "assl-cold-random": "ASSL, cold start from the random network",
               "asl-cold-random": "ASL, cold start from the random network"}
_COLD, _RANDOM = "-cold", "-random"


class Stat(NamedTuple):
    """Mean and sample std (ddof=1; nan when n < 2) of n values."""
    mean: float
    std: float
    n: int


def mean_std(values: Iterable[float]) -> Stat:
    """`Stat` of a 1-D sequence (mean nan when empty)."""
    values = np.asarray(list(values), dtype=float)
    if values.size == 0:
        return Stat(math.nan, math.nan, 0)
    std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return Stat(float(values.mean()), std, int(values.size))


def mode_label(mode: str) -> str:
    """A report mode as the tables write it: "ASSL", "ASL", "ASSL-cold", "ASSL-cold-random"."""
    base, _, start = mode.partition("-")
    return base.upper() + (f"-{start}" if start else "")


def row_name(row: Row) -> str:
    mode, strategy = row
    return f"{strategy} ({mode_label(mode)})"


# -- grouping ------------------------------------------------------------------------


def report_modes(records: Sequence[RoundRecord]) -> list[str]:
    """The report mode of each record: its mode, + "-cold" or "-cold-random" by its start.

    A run (mode, strategy, seed, config_hash) is a cold start when its round-0
    record has num_labels == 0 (or, with no round 0 among the records, when its
    config has initial_labels == 0); a cold start from the random network when
    also its config has cold_start_network == "random". Records without those
    config fields (L1) keep their mode.

    Returns: one mode per record, in the records' order.
    """
    run = lambda r: (r.mode, r.strategy, r.seed, r.config_hash)
    cold = {run(r): r.num_labels == 0 for r in records if r.round == 0}
    modes = []
    for r in records:
        if not cold.get(run(r), r.config.get("initial_labels") == 0):
            modes.append(r.mode)
        elif r.config.get("cold_start_network") == "random":
            modes.append(r.mode + _COLD + _RANDOM)
        else:
            modes.append(r.mode + _COLD)
    return modes


def _with_modes(records: Sequence[RoundRecord]) -> list[tuple[str, RoundRecord]]:
    return list(zip(report_modes(records), records))


def _rows(records: Sequence[RoundRecord]) -> list[Row]:
    """Rows by the strategies' first appearance (a config's order), modes in MODE_ORDER."""
    strategies = list(dict.fromkeys(r.strategy for r in records))
    present = {(m, r.strategy) for m, r in _with_modes(records)}
    return [(m, s) for s in strategies for m in _modes(records) if (m, s) in present]


def _modes(records: Sequence[RoundRecord]) -> list[str]:
    return sorted(set(report_modes(records)),
                  key=lambda m: (MODE_ORDER.index(m) if m in MODE_ORDER else len(MODE_ORDER), m))


def _by_row_seed(records: Sequence[RoundRecord]
                 ) -> dict[Row, dict[int, dict[int, RoundRecord]]]:
    """{row: {seed: {round: record}}}."""
    grouped = collections.defaultdict(lambda: collections.defaultdict(dict))
    for mode, r in _with_modes(records):
        grouped[(mode, r.strategy)][r.seed][r.round] = r
    return grouped


# -- accuracy ------------------------------------------------------------------------


def auc(curve: Mapping[int, float], label_counts: Sequence[int]) -> float:
    """Area under one accuracy-vs-labels curve: its mean over `label_counts`.

    The mean over the points (BENCHMARKS L1), i.e. the trapezoid area only for
    equally spaced counts. Raises ValueError if the curve misses a count.
    """
    missing = [n for n in label_counts if n not in curve]
    if missing:
        raise ValueError(f"The curve has no accuracy at {missing} labels; its AUC would not "
                         "compare with complete curves.")
    return float(np.mean([curve[n] for n in label_counts]))


def summarize(records: Sequence[RoundRecord]) -> dict:
    """Accuracy statistics per row and label count, and the AUC, over seeds.

    Returns a dict:
      label_counts: {mode: sorted label counts of the mode}
      auc_counts: {mode: the AUC's points: the mode's label counts but 0 (a cold
        start's round 0, the network before any label; L1: = label_counts)}
      max_seeds: the most seeds of any cell
      rows: {row: {"cells": {num_labels: Stat of accuracy in %},
                   "auc": Stat over the seeds with every point of the mode,
                   "seeds": sorted seeds, "auc_seeds": the seeds counted in "auc",
                   "incomplete": {seed: the mode's AUC points it misses}}}, in report order.
    """
    grouped = _by_row_seed(records)
    label_counts = _label_counts(records)
    auc_counts = _auc_counts(label_counts)
    rows = {}
    for row in _rows(records):
        # Rounds without a test accuracy (data with no labelled test split) are skipped.
        curves = {seed: {r.num_labels: 100.0 * r.test_accuracy for r in by_round.values()
                         if r.test_accuracy is not None}
                  for seed, by_round in sorted(grouped[row].items())}
        counts = auc_counts[row[0]]
        cells = {n: mean_std(c[n] for c in curves.values() if n in c)
                 for n in label_counts[row[0]] if any(n in c for c in curves.values())}
        incomplete = {seed: [n for n in counts if n not in c] for seed, c in curves.items()
                      if any(n not in c for n in counts)}
        auc_seeds = [seed for seed in curves if seed not in incomplete] if counts else []
        rows[row] = {"cells": cells, "auc": mean_std(auc(curves[s], counts) for s in auc_seeds),
                     "seeds": list(curves), "auc_seeds": auc_seeds, "incomplete": incomplete}
    max_seeds = max((c.n for r in rows.values() for c in r["cells"].values()), default=0)
    return {"label_counts": label_counts, "auc_counts": auc_counts, "max_seeds": max_seeds,
            "rows": rows}


def _label_counts(records: Sequence[RoundRecord]) -> dict[str, list[int]]:
    """{mode: the sorted label counts of its records}, modes in report order."""
    counts = collections.defaultdict(set)
    for mode, r in _with_modes(records):
        counts[mode].add(r.num_labels)
    return {mode: sorted(counts[mode]) for mode in _modes(records)}


def _auc_counts(label_counts: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """{mode: the AUC's points}: its label counts but 0 (a cold start's round 0)."""
    return {mode: [n for n in counts if n > 0] for mode, counts in label_counts.items()}


def _accuracies(by_round: Mapping[int, RoundRecord]) -> dict[int, float]:
    """{num_labels: test accuracy in %} of one seed's rounds (those with an accuracy)."""
    return {r.num_labels: 100.0 * r.test_accuracy for r in by_round.values()
            if r.test_accuracy is not None}


def _common_curves(grouped, row: Row, base: Row):
    """(row's, base's) {num_labels: accuracy in %} for each seed both have, by seed."""
    mine, theirs = grouped[row], grouped[base]
    for seed in sorted(set(mine) & set(theirs)):
        yield _accuracies(mine[seed]), _accuracies(theirs[seed])


def _differences(grouped, row: Row, base: Row, above: int) -> dict[int, list[float]]:
    """{num_labels > above: [row's accuracy - base's, per common seed, by seed]}."""
    per_count = collections.defaultdict(list)
    for a, b in _common_curves(grouped, row, base):
        for n in sorted(set(a) & set(b)):
            per_count[n].append(a[n] - b[n])
    return {n: d for n, d in sorted(per_count.items()) if n > above}


def _smallest_counts(label_counts: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """{mode: its smallest label count} (where a mode's rows share the round-0 model)."""
    return {mode: counts[0] for mode, counts in label_counts.items()}


def _baseline_row(grouped, mode: str, baseline: str) -> Row | None:
    """The row a mode's rows are paired with: (mode, baseline), else for a cold start
    from the random network the cold start's (passive picks without looking at the
    network: the same labels and trainings, seed for seed)."""
    for candidate in (mode, mode.removesuffix(_RANDOM) if mode.endswith(_COLD + _RANDOM)
                      else None):
        if candidate and grouped.get((candidate, baseline)):
            return candidate, baseline
    return None


def paired_differences(records: Sequence[RoundRecord], baseline: str = "passive") -> dict:
    """Accuracy minus the baseline's on the same seed (same initial labels), per label count.

    Strategies of one seed share their initial labels and round-0 model, so the
    per-seed difference removes the seed-to-seed spread that dominates the
    std of the accuracy table.

    Returns:
      {row: {num_labels: {"diff": Stat of (accuracy - baseline) in points over the
      common seeds, "wins": how many of them beat the baseline}}} for every row
      of a mode that has the baseline (the baseline's own row left out), label
      counts above the mode's smallest (where all rows share the model).
    """
    grouped = _by_row_seed(records)
    smallest = _smallest_counts(_label_counts(records))
    out = {}
    for mode, strategy in _rows(records):
        base = grouped.get((mode, baseline))
        if strategy == baseline or not base:
            continue
        per_count = _differences(grouped, (mode, strategy), (mode, baseline), smallest[mode])
        out[(mode, strategy)] = {n: {"diff": mean_std(d), "wins": sum(x > 0 for x in d)}
                                 for n, d in per_count.items()}
    return out


class PairedStat(NamedTuple):
    """Paired differences of one label count (or of the AUC): mean, sample std and n
    over the common seeds, the `confidence` paired-t interval [low, high] of the mean
    (nan when n < 2), the two-sided Wilcoxon signed-rank p-value (nan when n < 2 or
    every difference is 0), and the two-sided paired t-test's p-value t_p (nan when
    n < 2): the interval excludes 0 exactly when t_p < 1 - confidence."""
    mean: float
    std: float
    n: int
    low: float
    high: float
    p: float
    t_p: float = math.nan


def paired_test(differences: Iterable[float], confidence: float = 0.95) -> PairedStat:
    """The paired-t interval and Wilcoxon p-value of per-seed differences.

    Interval: mean ± t_{(1 + confidence) / 2, n - 1} · s / √n (scipy.stats.t; s the
    sample std). p: scipy.stats.wilcoxon(differences), two-sided, zeros dropped
    (its default zero_method), exact for small n without ties; the differences
    rounded to 1e-9 first, so that equal accuracy gaps tie despite float noise.
    """
    d = np.asarray(list(differences), dtype=float)
    stat = mean_std(d)
    low = high = p = t_p = math.nan
    if stat.n >= 2:
        half = float(scipy.stats.t.ppf(0.5 + confidence / 2, stat.n - 1)) * stat.std
        half /= math.sqrt(stat.n)
        low, high = stat.mean - half, stat.mean + half
        if stat.std > 0:
            t_p = float(2.0 * scipy.stats.t.sf(abs(stat.mean) / (stat.std / math.sqrt(stat.n)),
                                               stat.n - 1))
        else:   # equal differences: the interval is the point itself
            t_p = 1.0 if stat.mean == 0 else 0.0
        if np.any(np.round(d, 9) != 0):
            with warnings.catch_warnings():   # ties: the normal approximation, said once
                warnings.simplefilter("ignore")
                p = float(scipy.stats.wilcoxon(np.round(d, 9), alternative="two-sided").pvalue)
    return PairedStat(stat.mean, stat.std, stat.n, low, high, p, t_p)


def holm(p_values: Mapping) -> dict:
    """Holm's step-down adjustment of a family of p-values: {key: adjusted p}.

    The m finite p-values sorted ascending, p_(i) becomes max_{j <= i} min(1,
    (m - j + 1) p_(j)); rejecting where the adjusted p < alpha keeps the
    family-wise error rate at alpha. Non-finite p-values stay nan and do not
    count in m.
    """
    finite = sorted(((p, key) for key, p in p_values.items() if math.isfinite(p)),
                    key=lambda pair: pair[0])
    adjusted, running = {key: math.nan for key in p_values}, 0.0
    for i, (p, key) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - i) * p))
        adjusted[key] = running
    return adjusted


def _auc_differences(grouped, row: Row, base: Row, counts: Sequence[int]) -> list[float]:
    """[row's AUC - base's, per common seed whose two curves have every count]."""
    return [auc(a, counts) - auc(b, counts) for a, b in _common_curves(grouped, row, base)
            if counts and all(n in a and n in b for n in counts)]


def _paired_row(grouped, row: Row, base: Row, above: int, auc_counts: Sequence[int],
                confidence: float) -> dict:
    counts = {n: paired_test(d, confidence)
              for n, d in _differences(grouped, row, base, above).items()}
    return {"baseline": base, "counts": counts,
            "auc": paired_test(_auc_differences(grouped, row, base, auc_counts), confidence),
            "wins": sum(s.low > 0 for s in counts.values()),
            "losses": sum(s.high < 0 for s in counts.values())}


def _with_holm(rows: dict) -> dict:
    """Adds "auc_holm" to every row: its AUC t-test p Holm-adjusted over its mode's rows."""
    for mode in {m for m, _ in rows}:
        family = {row: out["auc"].t_p for row, out in rows.items() if row[0] == mode}
        for row, adjusted in holm(family).items():
            rows[row]["auc_holm"] = adjusted
    return rows


def paired_statistics(records: Sequence[RoundRecord], baseline: str = "passive",
                      confidence: float = 0.95) -> dict:
    """Paired intervals, Wilcoxon p-values, wins and losses against the baseline.

    For every row of a mode that has the baseline (a cold start from the random
    network without its own uses the cold start's: passive does not look at
    the network), label counts above the mode's smallest, as
    `paired_differences`.

    Returns:
      {row: {"baseline": the row compared with,
             "counts": {num_labels: `PairedStat` of accuracy - baseline, in points},
             "auc": `PairedStat` of the AUC's difference (`summarize`'s AUC points,
               the seeds where both curves have all of them),
             "auc_holm": its t-test p Holm-adjusted over the mode's rows (`holm`:
               the family of the mode's comparisons to the baseline),
             "wins" / "losses": label counts whose interval lies above / below 0}}.
    """
    grouped = _by_row_seed(records)
    label_counts = _label_counts(records)
    smallest = _smallest_counts(label_counts)
    auc_counts = _auc_counts(label_counts)
    out = {}
    for mode, strategy in _rows(records):
        base = _baseline_row(grouped, mode, baseline)
        if strategy == baseline or base is None:
            continue
        out[(mode, strategy)] = _paired_row(grouped, (mode, strategy), base, smallest[mode],
                                            auc_counts[mode], confidence)
    return _with_holm(out)


def _is_npc(strategy: str) -> bool:
    return strategy.startswith("npc")


def best_peers(records: Sequence[RoundRecord], baseline: str = "passive") -> dict[str, Row]:
    """{mode: its best peer}: the row of highest mean AUC (`summarize`) among the
    mode's strategies that are neither NPC (a name starting with "npc") nor the
    baseline; modes without such a row (or without an AUC) are left out."""
    best = {}
    for (mode, strategy), row in summarize(records)["rows"].items():
        if _is_npc(strategy) or strategy == baseline or row["auc"].n == 0:
            continue
        if mode not in best or row["auc"].mean > best[mode][0]:
            best[mode] = (row["auc"].mean, (mode, strategy))
    return {mode: row for mode, (_, row) in best.items()}


def peer_statistics(records: Sequence[RoundRecord], baseline: str = "passive",
                    confidence: float = 0.95) -> dict:
    """`paired_statistics` of every NPC row against its mode's best peer (`best_peers`).

    Returns: {npc row: {"baseline": the peer row, "counts", "auc", "auc_holm" (over
    the mode's NPC rows), "wins", "losses"}}.
    """
    grouped = _by_row_seed(records)
    label_counts = _label_counts(records)
    smallest = _smallest_counts(label_counts)
    auc_counts = _auc_counts(label_counts)
    peers = best_peers(records, baseline)
    return _with_holm({(mode, strategy): _paired_row(grouped, (mode, strategy), peers[mode],
                                                     smallest[mode], auc_counts[mode],
                                                     confidence)
                       for mode, strategy in _rows(records)
                       if _is_npc(strategy) and mode in peers})


# -- cold start and cost -----------------------------------------------------------------


def cold_start_summary(records: Sequence[RoundRecord]) -> dict:
    """The first batch of every cold-start row: its accuracy and its class coverage.

    A seed counts when it has rounds 0 and 1. The first batch is round 0's
    acquired labels; its classes are round 1's class_counts minus round 0's.

    Returns:
      {row: {"labels": Stat of round 1's num_labels,
             "accuracy": Stat of round 1's test accuracy in % (the model trained
               on the first batch),
             "zero_shot": Stat of round 0's test accuracy in % (no label),
             "coverage": Stat of the first batch's distinct classes,
             "num_classes": len(class_counts), "seeds": the seeds counted}}
      for the rows of cold modes, in report order.
    """
    grouped = _by_row_seed(records)
    out = {}
    for row in _rows(records):
        if _COLD not in row[0]:
            continue
        seeds = {seed: b for seed, b in sorted(grouped[row].items()) if 0 in b and 1 in b}
        if not seeds:
            continue
        batches = [np.subtract(b[1].class_counts, b[0].class_counts) for b in seeds.values()]
        accuracy = lambda rounds: [100.0 * r.test_accuracy for r in rounds
                                   if r.test_accuracy is not None]
        out[row] = {"labels": mean_std(b[1].num_labels for b in seeds.values()),
                    "accuracy": mean_std(accuracy(b[1] for b in seeds.values())),
                    "zero_shot": mean_std(accuracy(b[0] for b in seeds.values())),
                    "coverage": mean_std(int(np.count_nonzero(c > 0)) for c in batches),
                    "num_classes": max(len(c) for c in batches), "seeds": list(seeds)}
    return out


def cost_summary(records: Sequence[RoundRecord]) -> dict:
    """Seconds per round of every row: acquisition and training.

    Per seed, the mean acquisition_seconds over its rounds that acquired
    (non-empty acquired_indices, round 0 included) and the mean train_seconds
    over rounds >= 1 (round 0's model is shared by the mode's strategies, or
    untrained in a cold start); then mean ± std over the seeds.

    Returns:
      {row: {"acquisition": Stat of s per acquiring round, "acquisitions": Stat
             of acquiring rounds per seed, "training": Stat of s per training
             (n = 0 when no round >= 1), "seeds": the seeds}}, in report order.
    """
    grouped = _by_row_seed(records)
    out = {}
    for row in _rows(records):
        acquiring = {seed: [r.acquisition_seconds for r in b.values() if r.acquired_indices]
                     for seed, b in sorted(grouped[row].items())}
        trained = {seed: [r.train_seconds for r in b.values() if r.round >= 1]
                   for seed, b in sorted(grouped[row].items())}
        out[row] = {"acquisition": mean_std(np.mean(a) for a in acquiring.values() if a),
                    "acquisitions": mean_std(len(a) for a in acquiring.values()),
                    "training": mean_std(np.mean(t) for t in trained.values() if t),
                    "seeds": list(acquiring)}
    return out


# -- acquired label sets ---------------------------------------------------------------


def _acquired_upto(by_round: Mapping[int, RoundRecord], last_round: int) -> set[int]:
    return {i for r, record in by_round.items() if r <= last_round
            for i in record.acquired_indices}


def label_set_iou(records: Sequence[RoundRecord]) -> tuple[list[Row], np.ndarray]:
    """Pairwise IoU |A∩B| / |A∪B| of the labels two rows acquired, mean over seeds.

    A row's set for a seed is the union of its acquired_indices over rounds,
    i.e. its final labeled set minus the seed's shared initial labels. Two rows
    are compared on their common seeds, each up to the last round both reached,
    so a run in progress is compared fairly with a finished one.

    Returns:
      names: the K rows.
      iou: (K, K) float, symmetric, nan where two rows share no seed (or
        acquired nothing).
    """
    grouped = _by_row_seed(records)
    names = _rows(records)
    iou = np.full((len(names), len(names)), math.nan)
    for a, row_a in enumerate(names):
        for b, row_b in enumerate(names[a:], a):
            values = []
            for seed in sorted(set(grouped[row_a]) & set(grouped[row_b])):
                last = min(max(grouped[row_a][seed]), max(grouped[row_b][seed]))
                set_a = _acquired_upto(grouped[row_a][seed], last)
                set_b = _acquired_upto(grouped[row_b][seed], last)
                if set_a | set_b:
                    values.append(len(set_a & set_b) / len(set_a | set_b))
            if values:
                iou[a, b] = iou[b, a] = float(np.mean(values))
    return names, iou


def acquired_class_counts(records: Sequence[RoundRecord]
                          ) -> tuple[list[Row], np.ndarray, list[int]]:
    """Classes of the acquired labels per row, mean over seeds.

    A seed's counts are class_counts at the row's last round reached by all its
    seeds minus those at round 0 (the shared initial labels), so every seed
    contributes the same number of labels.

    Returns:
      names: the K rows (those with a round-0 record).
      counts: (K, C) float, mean acquired labels per class; a row sums to the
        labels acquired per seed.
      num_seeds: (K,) seeds averaged per row.
    """
    grouped = _by_row_seed(records)
    names, counts, num_seeds = [], [], []
    for row in _rows(records):
        seeds = {seed: by_round for seed, by_round in grouped[row].items() if 0 in by_round}
        if not seeds:
            continue
        last = min(max(by_round) for by_round in seeds.values())
        per_seed = [np.subtract(b[last].class_counts, b[0].class_counts)
                    for b in seeds.values()]
        if len({len(c) for c in per_seed} | {len(c) for c in counts[-1:]}) > 1:
            raise ValueError(f"{row_name(row)}: class_counts of different lengths; the records "
                             "mix datasets with different numbers of classes.")
        names.append(row)
        counts.append(np.mean(per_seed, axis=0))
        num_seeds.append(len(per_seed))
    if not names:   # no row has a round 0
        return names, np.zeros((0, 0)), num_seeds
    return names, np.array(counts, dtype=float), num_seeds


def knn_sparsity(z: np.ndarray, k: int, block_rows: int = 512) -> np.ndarray:
    """(N,) the sum of each row's k + 1 smallest Euclidean distances to the rows of z
    (N, d), itself included at 0, over k: TypiClust's inverse typicality, in numpy row
    blocks ((block_rows, N) at a time; the report stays below the strategies' layer)."""
    z = np.asarray(z, np.float32)
    if not 1 <= k < len(z):
        raise ValueError(f"knn_sparsity: k = {k} needs 1 <= k < N = {len(z)}.")
    sq = np.einsum("ij,ij->i", z, z)
    out = np.empty(len(z), np.float32)
    for start in range(0, len(z), block_rows):
        block = z[start:start + block_rows]
        dist = np.maximum(sq[start:start + block_rows, None] + sq[None, :] - 2.0 * block @ z.T,
                          0.0)
        dist[np.arange(len(block)), start + np.arange(len(block))] = 0.0
        smallest = np.sort(np.partition(dist, k, axis=1)[:, :k + 1], axis=1)
        out[start:start + len(block)] = np.sqrt(smallest).sum(1) / k
    return out


def acquired_typicality(records: Sequence[RoundRecord], embedding: np.ndarray,
                        k: int = 20) -> dict[Row, dict]:
    """Where each row's acquired points lie in a pool embedding (e.g. the pretraining's).

    Rows of the embedding are scaled to unit norm; a point's sparsity is its mean
    distance to its k nearest pool points (`knn_sparsity`, TypiClust's inverse
    typicality), ranked over the pool as a percentile: 0 = the densest pool point,
    1 = the sparsest. A seed's acquired points are its labels at the row's last
    round reached by all its seeds minus round 0's (as `acquired_class_counts`).

    Args:
      records: round records whose indices are rows of `embedding`.
      embedding: (N, d) float, the pool in the records' index order.
      k: neighbours of the sparsity.

    Returns:
      {row: {"percentile": Stat over seeds of the acquired points' median
             percentile, "sparsest": Stat of the share in the sparsest 10 %,
             "spread": Stat of the mean distance from an acquired point to the
             nearest other acquired one, "acquired": points per seed}}, rows with
      a round 0 and at least two acquired points, in report order.

    Raises:
      ValueError: an index outside the embedding, or a non-finite embedding.
    """
    z = np.asarray(embedding, np.float32)
    if z.ndim != 2 or not np.all(np.isfinite(z)):
        raise ValueError(f"The embedding must be a finite (N, d) array, got shape {z.shape}"
                         f"{'' if np.all(np.isfinite(z)) else ' with NaN or inf'}.")
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    sparsity = knn_sparsity(z, k)
    percentile = np.argsort(np.argsort(sparsity, kind="stable"), kind="stable") / (len(z) - 1)
    grouped = _by_row_seed(records)
    out = {}
    for row in _rows(records):
        seeds = {seed: b for seed, b in grouped[row].items() if 0 in b}
        if not seeds:
            continue
        last = min(max(b) for b in seeds.values())
        per_seed = []
        for b in seeds.values():
            shared = set(b[0].labeled_indices)
            acquired = np.array([i for i in b[last].labeled_indices if i not in shared])
            if len(acquired) < 2:
                continue
            if acquired.max() >= len(z):
                raise ValueError(f"{row_name(row)}: index {int(acquired.max())} outside the "
                                 f"embedding's {len(z)} rows; pass the embedding of the "
                                 "records' pool.")
            picked = z[acquired]
            gaps = np.sqrt(np.maximum(2.0 - 2.0 * picked @ picked.T, 0.0))
            np.fill_diagonal(gaps, np.inf)
            per_seed.append((np.median(percentile[acquired]),
                             np.mean(percentile[acquired] >= 0.9), gaps.min(1).mean(),
                             len(acquired)))
        if per_seed:
            values = np.array(per_seed)
            out[row] = {"percentile": mean_std(values[:, 0]), "sparsest": mean_std(values[:, 1]),
                        "spread": mean_std(values[:, 2]), "acquired": int(values[0, 3])}
    return out


def _typicality_section(typicality: Mapping[Row, dict] | None, summary: dict) -> list[str]:
    if not typicality:
        return []
    lines = ["## Where the acquired points lie in the embedding", "",
             "Per seed, the acquired points' median sparsity percentile in the pool "
             "embedding (mean distance to the 20 nearest pool points, ranked: 0 = the "
             "densest point, 1 = the sparsest; uniform draws: ≈ 0.5), their share in the "
             "sparsest 10 % (uniform: 0.10), and the mean distance from each to the "
             "nearest other acquired point (unit-norm rows); mean ± std over seeds. AUC: "
             "the accuracy table's, for comparison.", ""]
    def cell(stat: Stat, digits: int) -> str:   # no std from one seed
        if stat.n == 0:
            return "—"
        spread = f"{stat.std:.{digits}f}" if stat.n > 1 else "—"
        return f"{stat.mean:.{digits}f} ± {spread}"

    no_auc = Stat(math.nan, math.nan, 0)
    lines += _table(["", "median percentile", "in the sparsest 10 %", "distance to the "
                     "nearest other pick", "AUC", "acquired", "seeds"],
                    ([row_name(row), cell(t["percentile"], 2), cell(t["sparsest"], 2),
                      cell(t["spread"], 3),
                      cell(summary["rows"].get(row, {}).get("auc", no_auc), 2),
                      str(t["acquired"]), str(t["percentile"].n)]
                     for row, t in typicality.items()), 1)
    return lines + [""]


# -- NPC's objective -----------------------------------------------------------------


# The random batches' statistics in the report: name -> its value (None if not recorded).
_RANDOM_STATS = {"mean": lambda b: b.mean, "q25": lambda b: b.quantile(0.25),
                 "median": lambda b: b.quantile(0.5), "q75": lambda b: b.quantile(0.75),
                 "max": lambda b: b.quantile(1.0)}


def lambda_min_rounds(records: Sequence[RoundRecord]) -> dict[Row, list[dict]]:
    """Per round, the chosen batch's λ_min against the random candidate batches'.

    Only rows whose records carry a `LambdaMinObjective` (NPC strategies).

    Returns:
      {row: [one dict per acquisition round, by round:
             round, num_labels (labeled when choosing),
             chosen: Stat of λ_min over seeds,
             random: {mean, q25, median, q75, max: mean over seeds} of the
               objective.random_batches summaries (empty when none recorded),
             chosen_over_median: Stat over seeds of λ_min / random median]}.
    """
    per_round = collections.defaultdict(lambda: collections.defaultdict(list))
    for mode, r in _with_modes(records):
        if isinstance(r.objective, LambdaMinObjective):
            per_round[(mode, r.strategy)][(r.round, r.num_labels)].append(r.objective)
    result = {}
    for row in _rows(records):
        if row not in per_round:
            continue
        result[row] = []
        for (round_, num_labels), objectives in sorted(per_round[row].items()):
            randoms = [o.random_batches for o in objectives if o.random_batches]
            random = {name: float(np.mean([stat(b) for b in randoms]))
                      for name, stat in _RANDOM_STATS.items()
                      if randoms and all(stat(b) is not None for b in randoms)}
            ratios = [o.lambda_min / o.random_batches.median for o in objectives
                      if o.random_batches and o.random_batches.median]
            result[row].append({"round": round_, "num_labels": num_labels,
                                "chosen": mean_std(o.lambda_min for o in objectives),
                                "random": random, "chosen_over_median": mean_std(ratios)})
    return result


# -- markdown --------------------------------------------------------------------------


def _cell(stat: Stat, max_seeds: int, bold: bool = False) -> str:
    if stat.n == 0:
        return "—"
    text = f"{stat.mean:.2f}" + (f" ± {stat.std:.2f}" if stat.n > 1 else "")
    text = f"**{text}**" if bold else text
    return text + (f" ⚠n={stat.n}" if stat.n < max_seeds else "")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align_from: int) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "".join("---|" if i < align_from else "---:|" for i in range(len(header)))]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def accuracy_markdown(summary: dict) -> str:
    """The paper's Table 1 layout: a row per strategy and mode, a column per label count."""
    counts = sorted({n for c in summary["label_counts"].values() for n in c})
    max_seeds = summary["max_seeds"]
    best = {}  # (mode, column) -> best mean, bolded when the mode has several rows
    for (mode, _), row in summary["rows"].items():
        for column, stat in [*row["cells"].items(), ("auc", row["auc"])]:
            if stat.n and stat.mean > best.get((mode, column), -math.inf):
                best[(mode, column)] = stat.mean
    rows_per_mode = collections.Counter(mode for mode, _ in summary["rows"])
    table, notes = [], []
    for (mode, strategy), row in summary["rows"].items():
        stats = {n: row["cells"].get(n, Stat(math.nan, math.nan, 0)) for n in counts}
        stats["auc"] = row["auc"]
        table.append([strategy, mode_label(mode)]
                     + [_cell(stat, max_seeds, rows_per_mode[mode] > 1 and stat.n > 0
                              and stat.mean == best[(mode, column)])
                        for column, stat in stats.items()]
                     + [str(len(row["seeds"]))])
        for seed, missing in row["incomplete"].items():
            notes.append(f"- {strategy} ({mode_label(mode)}) seed {seed} has no accuracy at "
                         f"{', '.join(map(str, missing))} labels: its AUC leaves the seed out "
                         f"(AUC over seeds {', '.join(map(str, row['auc_seeds'])) or 'none'}).")
    schedules = {tuple(c) for c in summary["auc_counts"].values()}
    points = (", ".join(map(str, *schedules)) if len(schedules) == 1 else
              "; ".join(f"{mode_label(mode)}: {', '.join(map(str, c))}"
                        for mode, c in summary["auc_counts"].items()))
    zero_shot = (" 0 labels: a cold start's network before any label (the model the first "
                 "batch is chosen with), not in the AUC." if 0 in counts else "")
    lines = [f"Test accuracy (%), mean ± sample std (ddof=1) over seeds, {max_seeds} seeds per "
             "cell unless marked ⚠n=k (fewer seeds). AUC: a seed's mean accuracy over its "
             f"mode's label counts ({points}), then mean ± std over the seeds that reached "
             "all of them. Bold: the best mean of a column within a mode." + zero_shot, ""]
    lines += _table(["strategy", "mode", *map(str, counts), "AUC", "seeds"], table, 2)
    return "\n".join(lines + ([""] + notes if notes else []))


def _number(value: float) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3g}"


def report_markdown(records: Sequence[RoundRecord], sources: Sequence[str] = (),
                    figures: Sequence[str] = (),
                    typicality: Mapping[Row, dict] | None = None) -> str:
    """The whole report.md: accuracy, paired differences and statistics, the cold start,
    label-set IoU, class counts, where the picks lie in an embedding (`typicality`, from
    `acquired_typicality`, when given), NPC's λ_min, cost."""
    summary = summarize(records)
    dataset = next((r.dataset for r in records if r.dataset), "unknown dataset")
    lines = [f"# Report: {dataset}", "",
             f"{len(records)} records from {', '.join(map(str, sources)) or 'memory'}.", "",
             "## Accuracy", "", accuracy_markdown(summary), ""]
    lines += _paired_section(records)
    lines += _paired_statistics_section(records, summary)
    lines += _cold_start_section(records)

    names, iou = label_set_iou(records)
    lines += ["## Overlap of the acquired label sets", "",
              "IoU |A∩B| / |A∪B| of the labels two rows acquired (the final labeled set minus "
              "the seed's shared initial labels), per seed up to the last round both reached, "
              "mean over common seeds; — when they share no seed.", ""]
    lines += _table(["", *map(row_name, names)],
                    ([row_name(a), *("—" if math.isnan(v) else f"{v:.2f}" for v in line)]
                     for a, line in zip(names, iou)), 1)
    lines += _class_counts_section(records)
    lines += _typicality_section(typicality, summary)
    lines += _lambda_min_section(records)
    lines += _cost_section(records)
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _paired_section(records: Sequence[RoundRecord]) -> list[str]:
    """report.md's paired differences to passive (nothing when no mode has passive)."""
    paired = paired_differences(records)
    if not paired:
        return []
    counts = sorted({n for row in paired.values() for n in row})
    lines = ["## Paired differences to passive", "",
             "Accuracy minus passive's on the same seed (same initial labels and round-0 "
             "model), in points: mean ± sample std over the common seeds, (wins / seeds).",
             ""]
    lines += _table(["strategy", "mode", *map(str, counts)],
                    ([strategy, mode_label(mode),
                      *(f"{row[n]['diff'].mean:+.2f} ± {row[n]['diff'].std:.2f} "
                        f"({row[n]['wins']}/{row[n]['diff'].n})" if n in row else "—"
                        for n in counts)]
                     for (mode, strategy), row in paired.items()), 2)
    return lines + [""]


def _p_value(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _paired_cell(stat: PairedStat, max_seeds: int) -> str:
    """mean [low, high] p=…, bold when the interval excludes 0, ⚠n=k under max_seeds."""
    interval = (f"[{stat.low:+.2f}, {stat.high:+.2f}]" if math.isfinite(stat.low) else "[—]")
    text = f"{stat.mean:+.2f} {interval}"
    text = f"**{text}**" if stat.low > 0 or stat.high < 0 else text
    return text + f" p={_p_value(stat.p)}" + (f" ⚠n={stat.n}" if stat.n < max_seeds else "")


def _paired_table(paired: dict, with_baseline: bool) -> list[str]:
    counts = sorted({n for row in paired.values() for n in row["counts"]})
    body = []
    for (mode, strategy), row in paired.items():
        seeds = max((s.n for s in row["counts"].values()), default=0)
        body.append([strategy, mode_label(mode),
                     *([row["baseline"][1]] if with_baseline else []),
                     *(_paired_cell(row["counts"][n], seeds) if n in row["counts"] else "—"
                       for n in counts),
                     _paired_cell(row["auc"], seeds) if row["auc"].n else "—",
                     _p_value(row["auc_holm"]),
                     str(row["wins"]), str(row["losses"]), str(seeds)])
    header = ["strategy", "mode", *(["peer"] if with_baseline else []), *map(str, counts),
              "AUC", "Holm p", "wins", "losses", "seeds"]
    return _table(header, body, 3 if with_baseline else 2)


def _paired_statistics_section(records: Sequence[RoundRecord], summary: dict) -> list[str]:
    """report.md's 95 % intervals and Wilcoxon p-values, to passive and to the best peer."""
    to_passive = paired_statistics(records)
    to_peer = peer_statistics(records)
    if not to_passive and not to_peer:
        return []
    lines = ["## Paired statistics: 95 % intervals and Wilcoxon tests", "",
             "Per seed, a row's accuracy minus the compared row's on the same seed, in points, "
             "at the label counts above the mode's smallest. Cell: mean [95 % confidence "
             "interval] p. The interval is the paired t interval over the common seeds, mean ± "
             "t(0.975, n − 1) · s / √n (scipy.stats.t, s the sample std; [—] when n < 2); p is "
             "the two-sided Wilcoxon signed-rank test of the same differences "
             "(scipy.stats.wilcoxon, zero differences dropped; — when n < 2 or every "
             "difference is 0). Bold: the interval excludes 0. AUC: the same for the per-seed "
             "difference of the AUCs (one comparison per row, the seeds with every AUC point). "
             "Holm p: the AUC difference's paired t-test p-value, Holm-adjusted over the "
             "table's rows of the same mode (the family of comparisons; below 0.05 keeps the "
             "family-wise error under 5 % where the per-row intervals do not). wins / losses: "
             "the label counts whose interval lies above / below 0. ⚠n=k: fewer seeds than the "
             "row's most.", ""]
    if to_passive:
        borrowed = {mode: row["baseline"][0] for (mode, _), row in to_passive.items()
                    if row["baseline"][0] != mode}
        lines += ["### To passive", ""]
        if borrowed:
            lines += ["; ".join(f"The rows of {mode_label(mode)} are paired with passive of "
                                f"{mode_label(base)}" for mode, base in borrowed.items())
                      + " (passive picks without looking at the network: the same labels "
                      "and trainings, seed for seed).", ""]
        lines += _paired_table(to_passive, with_baseline=False) + [""]
    if to_peer:
        peers = {mode: row["baseline"] for (mode, _), row in to_peer.items()}
        lines += ["### NPC to the best peer", "",
                  "Every NPC row (a strategy name starting with npc) against the best peer of "
                  "its mode: the strategy of highest mean AUC that is neither NPC nor passive ("
                  + "; ".join(f"{mode_label(mode)}: {s} (AUC "
                              f"{summary['rows'][(mode, s)]['auc'].mean:.2f})"
                              for mode, (_, s) in peers.items()) + ").", ""]
        lines += _paired_table(to_peer, with_baseline=True) + [""]
    return lines


def _cold_start_section(records: Sequence[RoundRecord]) -> list[str]:
    """report.md's first batch of the cold starts (nothing without a cold start)."""
    cold = cold_start_summary(records)
    if not cold:
        return []
    max_seeds = max(len(row["seeds"]) for row in cold.values())
    lines = ["## Cold start: the first batch", "",
             "Runs without an initial label: the strategy picks the first batch (round 0's "
             "query) with no label. after it: test accuracy (%) of round 1, the model trained "
             "on the first batch; zero-shot: round 0's, the network the batch was chosen with "
             "(classifier untrained); both mean ± sample std over seeds. classes: distinct "
             "classes in the first batch (round 1's class_counts minus round 0's), mean ± std "
             "over seeds, out of the dataset's classes.", ""]
    body = []
    for (mode, strategy), row in cold.items():
        coverage = row["coverage"]
        body.append([strategy, mode_label(mode), f"{row['labels'].mean:g}",
                     _cell(row["accuracy"], max_seeds), _cell(row["zero_shot"], max_seeds),
                     f"{coverage.mean:.1f}" + (f" ± {coverage.std:.1f}" if coverage.n > 1
                                               else "") + f" / {row['num_classes']}",
                     str(len(row["seeds"]))])
    return lines + _table(["strategy", "mode", "first batch", "after it", "zero-shot",
                           "classes", "seeds"], body, 2) + [""]


def _seconds(stat: Stat) -> str:
    if stat.n == 0:
        return "—"
    return f"{stat.mean:.3g}" + (f" ± {stat.std:.2g}" if stat.n > 1 else "")


def _cost_section(records: Sequence[RoundRecord]) -> list[str]:
    """report.md's seconds per round of acquisition and training."""
    cost = cost_summary(records)
    lines = ["", "## Cost per round", "",
             "Seconds as recorded, on the machines that ran the records. acquisition: per seed "
             "the mean acquisition_seconds over the rounds that acquired (round 0 included), "
             "then mean ± sample std over seeds; acquisitions: acquiring rounds per seed. "
             "training: the same for train_seconds over rounds ≥ 1 (round 0's model is shared "
             "by a mode's strategies, or untrained in a cold start).", ""]
    lines += _table(["strategy", "mode", "acquisition (s / round)", "acquisitions",
                     "training (s / round)", "seeds"],
                    ([strategy, mode_label(mode), _seconds(row["acquisition"]),
                      f"{row['acquisitions'].mean:g}", _seconds(row["training"]),
                      str(len(row["seeds"]))]
                     for (mode, strategy), row in cost.items()), 2)
    pretrained = {(p.method, p.steps, p.key) for p in (r.pretraining for r in records) if p}
    if pretrained:
        trainings = sum(1 for r in records if r.pretraining and r.round >= 1)
        lines += ["", "Pretraining (its time is not in the records; amortised, it adds its "
                  f"time / {trainings} to each of the {trainings} trainings of rounds ≥ 1 "
                  "that started from it): "
                  + "; ".join(f"{method}, {steps} steps ({key})"
                              for method, steps, key in sorted(pretrained)) + "."]
    return lines


def _class_counts_section(records: Sequence[RoundRecord]) -> list[str]:
    """report.md's classes of the acquired labels."""
    names, counts, num_seeds = acquired_class_counts(records)
    lines = ["", "## Classes of the acquired labels", "",
             "Acquired labels per class (class_counts at the last round every seed of the row "
             "reached minus round 0), mean over seeds; uniform = acquired / classes. "
             "max/min: the most over the fewest acquired class.", ""]
    body = []
    for row, c, n in zip(names, counts, num_seeds):
        spread = f"{c.max() / c.min():.2f}" if c.min() > 0 else "∞"
        body.append([row_name(row), *(f"{v:.1f}" for v in c), f"{c.sum():.1f}",
                     f"{c.sum() / len(c):.1f}", spread, str(n)])
    return lines + _table(["", *map(str, range(counts.shape[1])), "acquired", "uniform",
                           "max/min", "seeds"], body, 1)


def _lambda_min_section(records: Sequence[RoundRecord]) -> list[str]:
    """report.md's NPC λ_min table (a sentence when no record has a λ_min objective)."""
    lines = ["", "## NPC: the chosen batch's λ_min vs the random candidate batches", ""]
    lam = lambda_min_rounds(records)
    if not lam:
        return lines + ["No record carries objective.lambda_min (no NPC strategy in these runs)."]
    lines += ["λ_min of the acquired batch and statistics of the m random candidate batches' "
              "λ_min (objective.random_batches), each averaged over seeds; ratio: mean over "
              "seeds of chosen / random median.", ""]
    return lines + _table(["", "round", "labels", "seeds", "chosen λ_min", "random mean",
                           "random median", "random max", "chosen / median"],
                          ([row_name(row), str(e["round"]), str(e["num_labels"]),
                            str(e["chosen"].n), _number(e["chosen"].mean),
                            *(_number(e["random"].get(k)) for k in ("mean", "median", "max")),
                            _number(e["chosen_over_median"].mean)]
                           for row, entries in lam.items() for e in entries), 1)


# -- figures ---------------------------------------------------------------------------


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, stem: Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    paths = []
    if "png" in formats:
        paths.append(stem.with_suffix(".png"))
        fig.savefig(paths[-1], dpi=150)
    if "svg" in formats:
        import matplotlib
        paths.append(stem.with_suffix(".svg"))
        with matplotlib.rc_context({"svg.hashsalt": "npc_jax"}):  # fixed ids, no date: reruns
            fig.savefig(paths[-1], metadata={"Date": None})       # give byte-equal files
    _pyplot().close(fig)
    return paths


def _strategy_colors(rows: Iterable[Row]) -> dict[str, tuple]:
    """One colour per strategy, the same in every panel and figure."""
    import matplotlib
    strategies = list(dict.fromkeys(s for _, s in rows))
    cmap = matplotlib.colormaps["tab10" if len(strategies) <= 10 else "tab20"]
    return {s: cmap(i % cmap.N) for i, s in enumerate(strategies)}


def _panels(count: int, max_columns: int, panel_size: tuple[float, float], **kwargs):
    """A grid of `count` panels, at most `max_columns` wide; the spare ones hidden."""
    columns = min(count, max_columns)
    rows = -(-count // columns)
    fig, axes = _pyplot().subplots(rows, columns, squeeze=False, **kwargs,
                                   figsize=(panel_size[0] * columns, panel_size[1] * rows))
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, axes


def plot_accuracy_curves(summary: dict, stem: Path,
                         formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Accuracy vs labels, mean ± std over seeds, a line per strategy, a panel per mode
    (the label counts of the AUC: a cold start's 0 labels left out)."""
    modes = list(dict.fromkeys(mode for mode, _ in summary["rows"]))
    colors = _strategy_colors(summary["rows"])
    fig, axes = _panels(len(modes), len(modes), (5.5, 4.2), sharey=True)
    for ax, mode in zip(axes[0], modes):
        for (row_mode, strategy), row in summary["rows"].items():
            if row_mode != mode:
                continue
            # A cold start's 0 labels (the untrained network, ~chance) would squash the axis.
            counts = [n for n in sorted(row["cells"]) if n > 0]
            if not counts:
                continue
            stats = [row["cells"][n] for n in counts]
            ax.errorbar(counts, [s.mean for s in stats], capsize=3, marker="o", ms=4,
                        yerr=[0.0 if math.isnan(s.std) else s.std for s in stats],
                        color=colors[strategy], label=f"{strategy} (n={max(s.n for s in stats)})")
        ax.set_title(MODE_TITLES.get(mode, mode))
        ax.set_xticks(summary["auc_counts"][mode])
        ax.set_xlabel("number of labels")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("test accuracy (%), mean ± std over seeds")
    fig.tight_layout()
    return _save(fig, stem, formats)


def plot_label_iou(names: Sequence[Row], iou: np.ndarray, stem: Path) -> list[Path]:
    """Heatmap of the (K, K) IoU matrix of `label_set_iou`, values written in."""
    size = max(3.0, 1.8 + 0.75 * len(names))
    fig, ax = _pyplot().subplots(figsize=(size + 1.4, size + 0.4))
    image = ax.imshow(np.ma.masked_invalid(iou), vmin=0.0, vmax=1.0, cmap="viridis")
    for (a, b), value in np.ndenumerate(iou):
        ax.text(b, a, "—" if math.isnan(value) else f"{value:.2f}", ha="center", va="center",
                fontsize=9, color="black" if value > 0.6 else "white")
    labels = [row_name(row) for row in names]
    ax.set_xticks(range(len(names)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), labels)
    ax.set_title("IoU of the acquired label sets\n(mean over seeds)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, stem)


def plot_class_counts(names: Sequence[Row], counts: np.ndarray, num_seeds: Sequence[int],
                      stem: Path) -> list[Path]:
    """Bars of the (K, C) acquired class counts, a panel per row, uniform level dashed."""
    fig, axes = _panels(len(names), 4, (3.4, 2.6), sharey=True)
    colors = _strategy_colors(names)
    for ax, row, c, n in zip(axes.flat, names, counts, num_seeds):
        ax.bar(range(len(c)), c, color=colors[row[1]])
        ax.axhline(c.sum() / len(c), color="black", ls="--", lw=1, label="uniform")
        ax.set_title(f"{row_name(row)}, {c.sum():.0f} labels, n={n}", fontsize=9)
        ax.set_xticks(range(len(c)))
        ax.set_xlabel("class", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("acquired labels\n(mean over seeds)", fontsize=8)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, stem)


def plot_lambda_min(rounds: Mapping[Row, list[dict]], stem: Path) -> list[Path]:
    """Per NPC row: chosen λ_min (mean ± std over seeds) and the random batches' spread."""
    fig, axes = _panels(len(rounds), 3, (4.6, 3.8))
    for ax, (row, entries) in zip(axes.flat, rounds.items()):
        x = [e["num_labels"] for e in entries]
        values = [e["chosen"].mean for e in entries]

        def random(name):
            return np.array([e["random"].get(name, math.nan) for e in entries])

        if all(e["random"] for e in entries):
            ax.fill_between(x, random("q25"), random("q75"), color="tab:gray", alpha=0.3,
                            label="random batches: 25–75%")
            ax.plot(x, random("median"), color="tab:gray", marker=".", label="random: median")
            ax.plot(x, random("max"), color="black", ls="--", marker=".", label="random: max")
            values += [*random("q25"), *random("max")]
        ax.errorbar(x, [e["chosen"].mean for e in entries], capsize=3, marker="o",
                    yerr=[0.0 if math.isnan(e["chosen"].std) else e["chosen"].std for e in entries],
                    color="tab:red", label="chosen batch")
        if all(v > 0 for v in values if math.isfinite(v)):
            ax.set_yscale("log")  # λ_min spans decades between rounds
        ax.set_xticks(x)
        ax.set_xlabel("labels when acquiring")
        ax.set_ylabel("λ_min")
        ax.set_title(f"{row_name(row)}, n={max(e['chosen'].n for e in entries)}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, stem)


def plot_typicality(typicality: Mapping[Row, dict], summary: dict, stem: Path) -> list[Path]:
    """AUC against the acquired points' median sparsity percentile, a point per row
    (mean ± std over seeds on both axes), a panel per mode: where in the
    embedding each strategy's labels lie, and what they were worth."""
    rows = [row for row in typicality
            if summary["rows"].get(row) and summary["rows"][row]["auc"].n]
    modes = list(dict.fromkeys(mode for mode, _ in rows))
    colors = _strategy_colors(summary["rows"])     # as in the accuracy figure
    fig, axes = _panels(max(len(modes), 1), 3, (5.5, 4.2), sharey=True)
    for ax, mode in zip(axes.flat, modes):
        for row in (r for r in rows if r[0] == mode):
            x, y = typicality[row]["percentile"], summary["rows"][row]["auc"]
            ax.errorbar(x.mean, y.mean, xerr=0.0 if math.isnan(x.std) else x.std,
                        yerr=0.0 if math.isnan(y.std) else y.std, marker="o", capsize=3,
                        color=colors[row[1]])
            ax.annotate(row[1], (x.mean, y.mean), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        ax.axvline(0.5, color="tab:gray", ls=":", lw=1)   # uniform draws' median
        ax.set_xlim(0.0, 1.0)
        ax.set_title(MODE_TITLES.get(mode, mode))
        ax.set_xlabel("median sparsity percentile of the picks (0 = densest)")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("AUC (%), mean ± std over seeds")
    fig.tight_layout()
    return _save(fig, stem)


def _read_runs(paths: Sequence[str | os.PathLike]) -> list[RoundRecord]:
    """`read_records` of `paths`, one .jsonl file at a time, duplicates refused by row.

    read_records refuses the same (mode, strategy, seed, round) twice across
    its files, a key a warm and a cold start of one strategy and seed share
    (L2: assl/ and cold/). So each file is read on its own (read_records keeps
    refusing bad paths, bad lines and repeats within a file; a file reached
    twice is read once), and a repeat is refused here by (report mode, strategy,
    seed, round): the same run passed twice still fails. Same records, in the
    same order, as read_records(paths) where that succeeds.
    """
    records, origin, seen = [], [], set()
    for path in map(Path, paths):
        files = (sorted(f for f in path.rglob("*.jsonl") if f.name != HUMAN_LABELS_FILE)
                 if path.is_dir() else [path])
        fresh = [f for f in files if f.resolve() not in seen]
        seen.update(f.resolve() for f in fresh)
        found = [(file, read_records([file], missing_ok=True)) for file in fresh]
        if not any(part for _, part in found) and len(fresh) == len(files):
            read_records([path])   # raises its error: no such path, or no records
        for file, part in found:
            records += part
            origin += [file] * len(part)
    first = {}
    for mode, record, file in zip(report_modes(records), records, origin):
        key = (mode, record.strategy, record.seed, record.round)
        if key in first:
            raise ValueError(f"(mode, strategy, seed, round) = {key} is recorded in {first[key]} "
                             f"and in {file}; pass each run once.")
        first[key] = file
    return records


def write_report(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 embedding: np.ndarray | None = None) -> list[Path]:
    """Reads the records under `paths`, writes report.md and the figures; returns their paths.

    `embedding` ((N, d), the records' pool, optional) adds where the acquired
    points lie in it (`acquired_typicality`).

    Raises:
      ValueError: `npc_jax.records.read_records`'s refusals (a records
        error is a ValueError); the same (report mode, strategy, seed, round)
        twice; records of several datasets; `out_dir` is a file.
    """
    records = _read_runs(paths)
    datasets = sorted({r.dataset for r in records if r.dataset})
    if len(datasets) > 1:
        raise ValueError(f"The records come from several datasets ({', '.join(datasets)}); "
                         "report one dataset at a time.")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a directory for report.md and the "
                         "figures.")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    # No test split: no accuracy, so neither figure that plots it.
    summary = summarize(records) if any(r.test_accuracy is not None for r in records) else None
    if summary:
        written += plot_accuracy_curves(summary, out_dir / "accuracy")
    names, iou = label_set_iou(records)
    written += plot_label_iou(names, iou, out_dir / "label_iou")
    names, counts, num_seeds = acquired_class_counts(records)
    if names:
        written += plot_class_counts(names, counts, num_seeds, out_dir / "class_counts")
    lam = lambda_min_rounds(records)
    if lam:
        written += plot_lambda_min(lam, out_dir / "lambda_min")
    markdown = out_dir / "report.md"
    typicality = None if embedding is None else acquired_typicality(records, embedding)
    if typicality and summary:
        written += plot_typicality(typicality, summary, out_dir / "typicality")
    markdown.write_text(report_markdown(records, list(map(str, paths)),
                                        [p.name for p in written if p.suffix == ".png"],
                                        typicality),
                        encoding="utf-8")
    return [markdown, *written]
