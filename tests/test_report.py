import dataclasses
import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from npc_jax import records as records_lib
from npc_jax import report
from npc_jax.records import NPCObjective, NPCSearchObjective, RandomBatches

ROOT = Path(__file__).resolve().parents[1]
COMMITTED_REPORT = ROOT / "records" / "l1" / "report"


def make_record(**fields) -> records_lib.RoundRecord:
    """A `RoundRecord` with plausible values for every field a test does not set."""
    n = fields.get("num_labels", 10)
    defaults = dict(
        dataset="toy", dataset_fingerprint=None, mode="assl", strategy="passive", seed=0,
        round=0, num_labels=n, test_accuracy=0.5, validation_accuracy=None,
        labeled_indices=list(range(n)), acquired_indices=[], class_counts=[0, 0, 0],
        objective=None, acquisition_seconds=0.0, train_seconds=1.0,
        train_metrics={"loss": 0.1, "step": 10}, strategy_options={}, pretraining=None,
        shared_initial_model=fields.get("round", 0) == 0, initial_trainings=None,
        strategy_state=None, config={"dataset": "toy"}, config_hash="0123456789abcdef")
    return records_lib.RoundRecord(**{**defaults, **fields})


def _run(mode, strategy, seed, accuracies, acquired=None, class_counts=None, objectives=None):
    """Records of one (mode, strategy, seed): round r has 10 + 20 r labels."""
    return [make_record(mode=mode, strategy=strategy, seed=seed, round=r, num_labels=10 + 20 * r,
                        test_accuracy=accuracy,
                        acquired_indices=acquired[r] if acquired else [],
                        class_counts=class_counts[r] if class_counts else [0, 0, 0],
                        objective=objectives[r] if objectives else None)
            for r, accuracy in enumerate(accuracies)]


def _random_batches(median):
    return RandomBatches(num=4, mean=median, std=0.1,
                         quantiles={"0.0": median / 2, "0.25": 0.8 * median, "0.5": median,
                                    "0.75": 1.2 * median, "1.0": 1.5 * median})


def _npc(lambda_min, median):
    return NPCObjective(lambda_min=lambda_min, random_batches=_random_batches(median),
                        kernel="last", output="logits", normalize=False)


def _records():
    """A: three seeds, two points; B: two seeds; C: seed 0 stopped after round 0."""
    return (_run("assl", "A", 0, [0.5, 0.7, 0.75], [[1, 2], [3, 4], []],
                 [[1, 1, 1], [2, 2, 1], [3, 2, 1]])
            + _run("assl", "A", 1, [0.6, 0.9, 0.95], [[7, 8], [9, 10], []],
                   [[1, 1, 1], [1, 1, 2], [1, 1, 4]])
            + _run("assl", "A", 2, [0.7, 0.8, 0.85], None,
                   [[1, 1, 1], [1, 2, 1], [1, 3, 1]])
            + _run("assl", "B", 0, [0.5, 0.6, 0.65], [[2, 3], [5, 6], []],
                   objectives=[_npc(2.0, 1.0), _npc(8.0, 4.0), None])
            + _run("assl", "B", 1, [0.5, 0.6, 0.65], [[7, 8], [9, 11], []],
                   objectives=[_npc(6.0, 2.0),
                               NPCSearchObjective(lambda_min=4.0, start_lambda_min=3.0,
                                                  swaps_accepted=2, kernel="last",
                                                  output="logits", normalize=False,
                                                  greedy_lambda_min=3.0), None])
            + _run("assl", "C", 0, [0.5], [[1, 9]], [[1, 1, 1]])
            + _run("asl", "A", 0, [0.3, 0.4, 0.5], [[1, 2], [3, 4], []]))


def test_mean_and_sample_std():
    assert report.mean_std([50.0, 60.0, 70.0]) == (60.0, 10.0, 3)  # ddof=1; ddof=0: 8.16
    single = report.mean_std([42.0])
    assert single.mean == 42.0 and math.isnan(single.std) and single.n == 1
    assert report.mean_std([]).n == 0


def test_auc_is_the_mean_over_the_points():
    assert report.auc({10: 50.0, 30: 70.0, 50: 90.0, 70: 0.0}, [10, 30, 50]) == 70.0
    with pytest.raises(ValueError, match=r"\[50\]"):
        report.auc({10: 50.0, 30: 70.0}, [10, 30, 50])


def test_summarize_cells_auc_and_incomplete_seeds():
    summary = report.summarize(_records())
    assert summary["label_counts"] == {"assl": [10, 30, 50], "asl": [10, 30, 50]}
    assert summary["max_seeds"] == 3
    assert list(summary["rows"]) == [("assl", "A"), ("asl", "A"), ("assl", "B"), ("assl", "C")]
    a = summary["rows"][("assl", "A")]
    assert a["cells"][10] == pytest.approx((60.0, 10.0, 3))
    assert a["cells"][30] == pytest.approx((80.0, 10.0, 3))
    # Per-seed AUCs 65, 81.67, 78.33: mean 75, std √(10² + 6.67² + 3.33²) / √2.
    assert a["auc"] == pytest.approx((75.0, math.sqrt(100 + 400 / 9 + 100 / 9) / math.sqrt(2), 3))
    c = summary["rows"][("assl", "C")]
    assert c["incomplete"] == {0: [30, 50]} and c["auc"].n == 0


def test_accuracy_markdown_flags_few_seeds_and_notes_missing_points():
    text = report.accuracy_markdown(report.summarize(_records()))
    a = next(line for line in text.splitlines() if line.startswith("| A | ASSL"))
    assert "**60.00 ± 10.00**" in a and "**75.00 ± 8.82**" in a and a.endswith("| 3 |")
    b = next(line for line in text.splitlines() if line.startswith("| B | ASSL"))
    assert "50.00 ± 0.00 ⚠n=2" in b
    c = next(line for line in text.splitlines() if line.startswith("| C | ASSL"))
    assert "50.00 ⚠n=1" in c and c.count("—") == 3  # 30, 50 and AUC
    assert "C (ASSL) seed 0 has no accuracy at 30, 50 labels" in text
    assert "ddof=1" in text


def test_label_set_iou_by_hand():
    names, iou = report.label_set_iou(_records())
    assert names == [("assl", "A"), ("asl", "A"), ("assl", "B"), ("assl", "C")]
    a, asl_a, b, c = range(4)
    # Seed 0: {1,2,3,4} vs {2,3,5,6} = 2/6; seed 1: {7,8,9,10} vs {7,8,9,11} = 3/5.
    assert iou[a, b] == iou[b, a] == pytest.approx((2 / 6 + 3 / 5) / 2)
    # C stopped after round 0: A's round-0 labels {1,2} vs C's {1,9}, seed 0 only.
    assert iou[a, c] == pytest.approx(1 / 3)
    assert iou[a, asl_a] == 1.0 and np.all(np.diag(iou) == 1.0)
    assert iou[b, c] == 0.0  # round 0, seed 0: {2,3} vs {1,9}
    assert np.allclose(iou, iou.T)


def test_acquired_class_counts_by_hand():
    names, counts, num_seeds = report.acquired_class_counts(_records())
    # A: seeds 0, 1, 2 acquired classes [2,1,0], [0,0,3], [0,2,0].
    assert names == [("assl", "A"), ("asl", "A"), ("assl", "B"), ("assl", "C")]
    assert counts[0] == pytest.approx([2 / 3, 1.0, 1.0]) and num_seeds[0] == 3
    assert counts[3] == pytest.approx([0.0, 0.0, 0.0])  # C reached only round 0
    assert counts.shape == (4, 3)


def test_lambda_min_rounds_by_hand():
    rounds = report.lambda_min_rounds(_records())
    assert list(rounds) == [("assl", "B")]
    first, second = rounds[("assl", "B")]
    assert (first["round"], first["num_labels"]) == (0, 10)
    assert first["chosen"] == pytest.approx((4.0, math.sqrt(8.0), 2))
    assert first["random"]["median"] == 1.5 and first["random"]["max"] == 2.25
    assert first["chosen_over_median"].mean == 2.5  # mean of 2/1 and 6/2
    # Seed 1 recorded no random batches at round 1: the random stats use seed 0's.
    assert second["chosen"].mean == 6.0 and second["random"]["median"] == 4.0


def _write(path, records, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r.to_json() if hasattr(r, "to_json") else r) + "\n"
                            for r in records) + tail)
    return path


def _cli():
    spec = importlib.util.spec_from_file_location("report_cli", ROOT / "experiments/report.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_the_committed_l1_report_is_reproduced_bit_for_bit(tmp_path, monkeypatch):
    """`experiments/report.py records/l1` gives the committed records/l1/report byte for byte.

    report.md always; the SVGs when this matplotlib is the one that drew them
    (another version draws the same data with other bytes).
    """
    matplotlib = pytest.importorskip("matplotlib")
    monkeypatch.chdir(ROOT)                      # report.md names its sources as given
    _cli().main(["records/l1", "--out", str(tmp_path)])
    drawn = (tmp_path / "report.md").read_text(encoding="utf-8")
    committed = (COMMITTED_REPORT / "report.md").read_text(encoding="utf-8")
    # The sections added since (issue 18) may be absent from the committed copy;
    # every other section is the same, byte for byte, in the same place.
    assert _without_sections(drawn, set(NEW_SECTIONS) - set(_headings(committed))) == committed
    assert set(_headings(drawn)) - set(_headings(committed)) <= set(NEW_SECTIONS)
    assert "## Cold start" not in drawn     # L1 has no cold start
    for committed in sorted(COMMITTED_REPORT.glob("*.svg")):
        drawn_by = re.search(rb"Matplotlib v([0-9][^ ]*) ", committed.read_bytes())
        if drawn_by and drawn_by.group(1).decode() == matplotlib.__version__:
            assert (tmp_path / committed.name).read_bytes() == committed.read_bytes(), committed


NEW_SECTIONS = ("## Paired statistics: 95 % intervals and Wilcoxon tests",
                "## Cold start: the first batch", "## Cost per round")


def _headings(text):
    return re.findall(r"(?m)^## .*$", text)


def _without_sections(text, headings):
    """`text` less the sections (a "## " heading up to the next one) with these headings."""
    parts = re.split(r"(?m)^(?=## )", text)
    return "".join(p for p in parts if p.split("\n", 1)[0] not in headings)


def test_write_report_refuses_records_of_several_datasets(tmp_path):
    _write(tmp_path / "a" / "results.jsonl", _run("assl", "A", 0, [0.5]))
    _write(tmp_path / "b" / "results.jsonl",
           [make_record(dataset="other", strategy="B", num_labels=10)])
    with pytest.raises(ValueError, match=r"several datasets \(other, toy\)"):
        report.write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out")


def test_cli_writes_the_report_and_all_figures(tmp_path):
    records = _records()
    _write(tmp_path / "assl" / "results.jsonl", [r for r in records if r.mode == "assl"])
    _write(tmp_path / "asl" / "results.jsonl", [r for r in records if r.mode == "asl"])
    cli = _cli()
    out = tmp_path / "out"
    cli.main([str(tmp_path / "assl"), str(tmp_path / "asl" / "results.jsonl"), "--out", str(out)])
    for stem in ("accuracy", "label_iou", "class_counts", "lambda_min"):
        assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    text = (out / "report.md").read_text()
    for section in ("## Accuracy", "## Overlap", "## Classes", "## NPC", "![lambda_min]"):
        assert section in text
    assert "| A | ASL |" in text and "| B (ASSL) | 0 | 10 | 2 | 4 |" in text
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main([str(tmp_path / "nowhere"), "--out", str(out)])
    _write(tmp_path / "bench.jsonl", [{"step": 1}])
    with pytest.raises(SystemExit, match=r"bench.jsonl:1 is not a RoundRecord: unknown field "
                                         r"'step'; missing fields"):
        cli.main([str(tmp_path / "bench.jsonl"), "--out", str(out)])


def test_paired_differences_to_passive_by_hand():
    records = (_run("assl", "passive", 0, [0.5, 0.6, 0.7])
               + _run("assl", "passive", 1, [0.4, 0.5, 0.8])
               + _run("assl", "npc", 0, [0.5, 0.7, 0.65]) + _run("assl", "npc", 1, [0.4, 0.6, 0.9])
               + _run("assl", "npc", 2, [0.3, 0.9, 0.9])   # no passive seed 2: left out
               + _run("asl", "npc", 0, [0.2, 0.3, 0.4]))   # no ASL passive: no row
    paired = report.paired_differences(records)
    assert list(paired) == [("assl", "npc")]
    at_30, at_50 = paired[("assl", "npc")][30], paired[("assl", "npc")][50]
    assert 10 not in paired[("assl", "npc")]   # the shared round-0 model: no difference
    np.testing.assert_allclose([at_30["diff"].mean, at_30["diff"].n], [10.0, 2])
    assert at_30["wins"] == 2 and at_50["wins"] == 1
    np.testing.assert_allclose(at_50["diff"].mean, 2.5)        # (-5 + 10) / 2
    np.testing.assert_allclose(at_50["diff"].std, np.std([-5, 10], ddof=1))
    text = report.report_markdown(records)
    assert "## Paired differences to passive" in text and "+10.00 ± 0.00 (2/2)" in text


# -- issue 18: starts as part of the row, paired statistics, cold start, cost ---------

T_975 = {2: 4.302652729749464, 3: 3.1824463052837078}   # t(0.975, df), from tables


def _cold_run(mode, strategy, seed, accuracies, network="pretrained", first_batch=(4, 0, 6),
              acquisition_seconds=(0.0,), train_seconds=(0.0,)):
    """A cold start: round 0 has no label and picks 10, then rounds of 20 (0, 10, 30, ...)."""
    config = {"dataset": "toy", "initial_labels": 0, "first_query_size": 10,
              "cold_start_network": network}
    at = lambda values, r: values[min(r, len(values) - 1)]   # the last for later rounds
    counts = [[0, 0, 0]] + [[first_batch[0] + 20 * (r - 1), *first_batch[1:]]
                            for r in range(1, len(accuracies))]
    return [make_record(mode=mode, strategy=strategy, seed=seed, round=r,
                        num_labels=0 if r == 0 else 10 + 20 * (r - 1), test_accuracy=accuracy,
                        acquired_indices=[100 + r] if r < len(accuracies) - 1 else [],
                        class_counts=counts[r], config=config,
                        config_hash=f"cold-{network}".ljust(16, "0"),
                        acquisition_seconds=at(acquisition_seconds, r),
                        train_seconds=at(train_seconds, r))
            for r, accuracy in enumerate(accuracies)]


def _starts():
    """passive and npc warm (ASSL), cold from the pretrained network, and npc cold from
    the random network; one seed each."""
    warm = {"dataset": "toy", "initial_labels": 10, "cold_start_network": "pretrained"}
    return ([dataclasses.replace(r, config=warm) for r in _run("assl", "passive", 0, [0.5, 0.6])
             + _run("assl", "npc", 0, [0.5, 0.7])]
            + _cold_run("assl", "passive", 0, [0.1, 0.4, 0.6])
            + _cold_run("assl", "npc", 0, [0.1, 0.5, 0.8])
            + _cold_run("assl", "npc", 0, [0.12, 0.45, 0.7], network="random"))


def test_cold_starts_are_rows_of_their_own():
    records = _starts()
    assert report.report_modes(records) == ["assl"] * 4 + ["assl-cold"] * 6 + \
        ["assl-cold-random"] * 3
    summary = report.summarize(records)
    assert list(summary["rows"]) == [("assl", "passive"), ("assl-cold", "passive"),
                                     ("assl", "npc"), ("assl-cold", "npc"),
                                     ("assl-cold-random", "npc")]
    assert summary["label_counts"]["assl-cold"] == [0, 10, 30]
    assert summary["auc_counts"]["assl-cold"] == [10, 30]      # 0: no label, not in the AUC
    cold_npc = summary["rows"][("assl-cold", "npc")]
    assert cold_npc["cells"][0].mean == pytest.approx(10.0)
    assert cold_npc["auc"].mean == pytest.approx(65.0)          # (50 + 80) / 2
    assert summary["rows"][("assl", "npc")]["auc"].mean == pytest.approx(60.0)
    text = report.accuracy_markdown(summary)
    assert "| npc | ASSL-cold-random | 12.00 |" in text and "not in the AUC" in text
    assert "label counts (10, 30)" in text
    # Warm paired differences stay within the warm rows; the cold ones start at 10.
    paired = report.paired_differences(records)
    assert set(paired) == {("assl", "npc"), ("assl-cold", "npc")}
    assert paired[("assl", "npc")][30]["diff"].mean == pytest.approx(10.0)
    assert paired[("assl-cold", "npc")][10]["diff"].mean == pytest.approx(10.0)
    assert report.MODE_ORDER.index("assl-cold-random") > report.MODE_ORDER.index("assl-cold") \
        > report.MODE_ORDER.index("asl") > report.MODE_ORDER.index("assl")
    assert set(report.MODE_ORDER) <= set(report.MODE_TITLES)


def test_a_run_without_round_0_is_placed_by_its_config():
    cold = _cold_run("asl", "npc", 3, [0.1, 0.5, 0.8])[1:]      # round 0 not among these
    assert report.report_modes(cold) == ["asl-cold", "asl-cold"]
    assert report.report_modes(_records()) == [r.mode for r in _records()]   # L1: unchanged


def test_paired_test_by_hand():
    d = [1.0, 2.0, 3.0, 6.0]                  # mean 3, s = √(14/3)
    stat = report.paired_test(d)
    half = T_975[3] * math.sqrt(14 / 3) / 2
    assert (stat.mean, stat.n) == (3.0, 4) and stat.std == pytest.approx(math.sqrt(14 / 3))
    assert (stat.low, stat.high) == pytest.approx((3.0 - half, 3.0 + half))
    assert stat.p == pytest.approx(2 / 16)    # exact: all 4 signs positive, two-sided
    assert stat.p == pytest.approx(scipy.stats.wilcoxon(d).pvalue)
    mixed = [2.0, -1.0, 3.0, 0.5, -4.0]
    assert report.paired_test(mixed).p == pytest.approx(scipy.stats.wilcoxon(mixed).pvalue)
    zeros = report.paired_test([0.0, 0.0, 0.0])
    assert math.isnan(zeros.p) and (zeros.low, zeros.high) == (0.0, 0.0)
    single = report.paired_test([5.0])
    assert math.isnan(single.low) and math.isnan(single.high) and math.isnan(single.p)
    assert report.paired_test([]).n == 0
    assert stat.t_p == pytest.approx(scipy.stats.ttest_1samp(d, 0.0).pvalue)
    assert math.isnan(single.t_p)
    assert zeros.t_p == 1.0 and report.paired_test([2.0, 2.0]).t_p == 0.0


def test_paired_t_p_value_agrees_with_the_interval():
    rng = np.random.default_rng(0)
    for _ in range(200):
        d = rng.normal(rng.uniform(-2, 2), rng.uniform(0.1, 3), size=rng.integers(2, 12))
        stat = report.paired_test(d)
        assert stat.t_p == pytest.approx(scipy.stats.ttest_1samp(d, 0.0).pvalue)
        assert (stat.t_p < 0.05) == (stat.low > 0 or stat.high < 0)
        at_90 = report.paired_test(d, confidence=0.9)
        assert (at_90.t_p < 0.1) == (at_90.low > 0 or at_90.high < 0)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04: 3 × 0.01, max(0.03, 2 × 0.03), max(0.06, 1 × 0.04)
    adjusted = report.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": math.nan})
    assert adjusted["a"] == pytest.approx(0.03)
    assert adjusted["c"] == pytest.approx(0.06) and adjusted["b"] == pytest.approx(0.06)
    assert math.isnan(adjusted["d"])                       # not in the family: m = 3
    assert report.holm({"a": 0.4, "b": 0.5}) == {"a": 0.8, "b": 0.8}   # capped monotone
    assert report.holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}   # capped at 1
    assert report.holm({"only": 0.02}) == {"only": 0.02}
    assert report.holm({}) == {}


def _offset_runs(mode, strategy, base, offsets):
    """Seeds 0.. of a strategy whose accuracy is base + offsets[seed][k] points at round k+1."""
    return [r for seed, offs in enumerate(offsets)
            for r in _run(mode, strategy, seed,
                          [base[0]] + [b + o / 100 for b, o in zip(base[1:], offs)])]


BASE = [0.5, 0.6, 0.7, 0.8]     # passive, every seed: 50, 60, 70, 80 % at 10, 30, 50, 70


def test_paired_statistics_intervals_wins_and_losses():
    npc = [[10, -5, -4], [12, 5, -6], [14, 3, -5]]   # seeds 0-2 at 30, 50, 70 labels
    records = (_offset_runs("assl", "passive", BASE, [[0, 0, 0]] * 3)
               + _offset_runs("assl", "npc", BASE, npc))
    stats = report.paired_statistics(records)
    assert list(stats) == [("assl", "npc")]
    row = stats[("assl", "npc")]
    assert row["baseline"] == ("assl", "passive") and sorted(row["counts"]) == [30, 50, 70]
    at_30, at_50, at_70 = (row["counts"][n] for n in (30, 50, 70))
    half = T_975[2] * 2 / math.sqrt(3)              # s = 2 at 30, 1 at 70
    assert (at_30.low, at_30.high) == pytest.approx((12 - half, 12 + half))
    assert (at_70.low, at_70.high) == pytest.approx((-5 - half / 2, -5 + half / 2))
    assert at_50.low < 0 < at_50.high
    assert at_30.p == pytest.approx(0.25)           # exact: 3 positive signs of 3
    assert at_50.p == pytest.approx(scipy.stats.wilcoxon([-5, 5, 3]).pvalue, rel=1e-6)
    assert (row["wins"], row["losses"]) == (1, 1)   # 30 above 0, 70 below, 50 neither
    # AUC over 10/30/50/70 (10 shared: difference 0): per seed 0.25, 2.75, 3.0
    auc_diffs = [(0 + 10 - 5 - 4) / 4, (0 + 12 + 5 - 6) / 4, (0 + 14 + 3 - 5) / 4]
    assert row["auc"].n == 3 and row["auc"].mean == pytest.approx(np.mean(auc_diffs))
    assert row["auc"].t_p == pytest.approx(scipy.stats.ttest_1samp(auc_diffs, 0).pvalue)
    assert row["auc_holm"] == pytest.approx(row["auc"].t_p)   # a family of one
    text = report.report_markdown(records)
    assert "### To passive" in text and "t(0.975, n − 1)" in text
    assert f"**+12.00 [{12 - half:+.2f}, {12 + half:+.2f}]** p=0.250" in text
    assert "| npc | ASSL | **+12.00" in text and "| 1 | 1 | 3 |" in text
    assert "| AUC | Holm p | wins |" in text
    assert f"+2.00 [{row['auc'].low:+.2f}, {row['auc'].high:+.2f}]" in text


def test_holm_family_is_a_mode_s_rows():
    records = (_offset_runs("assl", "passive", BASE, [[0, 0, 0]] * 3)
               + _offset_runs("assl", "npc", BASE, [[4, 4, 4], [5, 4, 6], [4, 5, 5]])
               + _offset_runs("assl", "margin", BASE, [[1, -1, 2], [-2, 1, 0], [0, 3, -1]])
               + _offset_runs("asl", "passive", BASE, [[0, 0, 0]] * 3)
               + _offset_runs("asl", "npc", BASE, [[1, 2, 3], [3, 1, 1], [2, 2, 2]]))
    stats = report.paired_statistics(records)
    assl = {row: stats[row]["auc"].t_p for row in (("assl", "npc"), ("assl", "margin"))}
    expected = report.holm(assl)
    for row in assl:
        assert stats[row]["auc_holm"] == pytest.approx(expected[row])
    assert stats[("assl", "npc")]["auc_holm"] > stats[("assl", "npc")]["auc"].t_p
    # ASL is its own family of one: unadjusted
    assert stats[("asl", "npc")]["auc_holm"] == pytest.approx(stats[("asl", "npc")]["auc"].t_p)


def test_best_peer_is_the_best_non_npc_non_passive_by_auc():
    records = (_offset_runs("assl", "passive", BASE, [[20, 20, 20]] * 2)     # best, excluded
               + _offset_runs("assl", "npc", BASE, [[3, 4, 5], [5, 4, 3]])
               + _offset_runs("assl", "npc_full", BASE, [[30, 30, 30]] * 2)  # NPC: excluded
               + _offset_runs("assl", "margin", BASE, [[2, 2, 2], [0, 0, 0]])  # AUC 65.75
               + _offset_runs("assl", "badge", BASE, [[1, 1, 1], [0, 0, 0]])   # AUC 65.375
               + _offset_runs("asl", "passive", BASE, [[0, 0, 0]] * 2)
               + _offset_runs("asl", "npc", BASE, [[1, 1, 1]] * 2))           # no ASL peer
    assert report.best_peers(records) == {"assl": ("assl", "margin")}
    peer = report.peer_statistics(records)
    assert list(peer) == [("assl", "npc"), ("assl", "npc_full")]
    npc = peer[("assl", "npc")]
    assert npc["baseline"] == ("assl", "margin")
    assert npc["counts"][30].mean == pytest.approx(3.0)   # (3 - 2 + 5 - 0) / 2
    assert npc["counts"][70].mean == pytest.approx(3.0)   # (5 - 2 + 3 - 0) / 2
    assert peer[("assl", "npc_full")]["counts"][50].mean == pytest.approx(29.0)
    text = report.report_markdown(records)
    assert "### NPC to the best peer" in text and "ASSL: margin (AUC 65.75)" in text
    assert "| npc | ASSL | margin | +3.00" in text


def test_cold_random_rows_are_paired_with_the_cold_passive():
    records = (_cold_run("assl", "passive", 0, [0.1, 0.4, 0.6])
               + _cold_run("assl", "passive", 1, [0.1, 0.3, 0.5])
               + _cold_run("assl", "npc", 0, [0.1, 0.5, 0.8], network="random")
               + _cold_run("assl", "npc", 1, [0.1, 0.4, 0.6], network="random")
               + _cold_run("assl", "badge", 0, [0.1, 0.45, 0.7], network="random")
               + _cold_run("assl", "badge", 1, [0.1, 0.35, 0.5], network="random"))
    stats = report.paired_statistics(records)
    assert stats[("assl-cold-random", "npc")]["baseline"] == ("assl-cold", "passive")
    assert stats[("assl-cold-random", "npc")]["counts"][10].mean == pytest.approx(10.0)
    assert report.paired_differences(records) == {}     # the plain table: own passive only
    assert report.best_peers(records) == {"assl-cold-random": ("assl-cold-random", "badge")}
    peer = report.peer_statistics(records)[("assl-cold-random", "npc")]
    assert peer["counts"][30].mean == pytest.approx(10.0)   # (80 - 70 + 60 - 50) / 2
    text = report.report_markdown(records)
    assert "The rows of ASSL-cold-random are paired with passive of ASSL-cold" in text


def test_cold_start_table_accuracy_and_class_coverage():
    records = (_run("assl", "passive", 0, [0.5, 0.6])                          # warm: no row
               + _cold_run("assl", "passive", 0, [0.1, 0.4, 0.6], first_batch=(10, 0, 0))
               + _cold_run("assl", "passive", 1, [0.1, 0.5, 0.6], first_batch=(5, 5, 0))
               + _cold_run("assl", "npc", 0, [0.1, 0.6, 0.8], first_batch=(4, 3, 3))
               + _cold_run("assl", "npc", 1, [0.2, 0.7, 0.8], first_batch=(2, 6, 2))
               + _cold_run("assl", "npc", 2, [0.1], first_batch=(2, 6, 2)))   # no round 1
    cold = report.cold_start_summary(records)
    assert list(cold) == [("assl-cold", "passive"), ("assl-cold", "npc")]
    passive, npc = cold[("assl-cold", "passive")], cold[("assl-cold", "npc")]
    assert passive["coverage"] == pytest.approx((1.5, math.sqrt(0.5), 2))   # 1 and 2 classes
    assert npc["coverage"] == pytest.approx((3.0, 0.0, 2)) and npc["num_classes"] == 3
    assert npc["accuracy"] == pytest.approx((65.0, math.sqrt(50), 2))
    assert npc["zero_shot"].mean == pytest.approx(15.0) and npc["seeds"] == [0, 1]
    assert npc["labels"].mean == 10
    text = report.report_markdown(records)
    assert "## Cold start: the first batch" in text
    assert "| npc | ASSL-cold | 10 | 65.00 ± 7.07 | 15.00 ± 7.07 | 3.0 ± 0.0 / 3 | 2 |" in text
    assert "| passive | ASSL-cold | 10 | 45.00 ± 7.07 | 10.00 ± 0.00 | 1.5 ± 0.7 / 3 | 2 |" \
        in text


def test_cost_per_round():
    records = (_cold_run("assl", "npc", 0, [0.1, 0.5, 0.8], acquisition_seconds=(4.0, 2.0, 0.0),
                         train_seconds=(0.0, 10.0, 20.0))
               + _cold_run("assl", "npc", 1, [0.1, 0.5, 0.8], acquisition_seconds=(6.0, 4.0, 0.0),
                           train_seconds=(0.0, 30.0, 40.0)))
    cost = report.cost_summary(records)[("assl-cold", "npc")]
    # Rounds 0 and 1 acquired: seed means 3 and 5; training over rounds 1, 2: 15 and 35.
    assert cost["acquisition"] == pytest.approx((4.0, math.sqrt(2), 2))
    assert cost["acquisitions"].mean == 2
    assert cost["training"] == pytest.approx((25.0, math.sqrt(200), 2))
    text = report.report_markdown(records)
    assert "| npc | ASSL-cold | 4 ± 1.4 | 2 | 25 ± 14 | 2 |" in text
    assert "Pretraining" not in text
    pretraining = records_lib.Pretraining(key="simclr-abc", method="simclr", steps=1000, seed=0)
    text = report.report_markdown([dataclasses.replace(r, pretraining=pretraining)
                                   for r in records])
    assert "time / 4 to each of the 4 trainings" in text and "simclr, 1000 steps" in text


def test_wilcoxon_sees_float_noise_as_ties():
    noisy = [100 * 0.573 - 100 * 0.553, -2.0, 1.0, 3.0]  # 2 - 7e-15: |d| no tie as floats
    assert report.paired_test(noisy).p == pytest.approx(
        scipy.stats.wilcoxon([2.0, -2.0, 1.0, 3.0]).pvalue)  # 0.5 (ranks 2.5, 2.5, 1, 4)
    assert scipy.stats.wilcoxon(noisy).pvalue == pytest.approx(0.625)   # the -2 ranked above
    assert math.isnan(report.paired_test([1e-13, -1e-13]).p)   # zero up to float noise


def test_warm_and_cold_runs_are_read_together_but_a_run_only_once(tmp_path):
    records, modes = _starts(), report.report_modes(_starts())
    part = lambda mode: [r for r, m in zip(records, modes) if m == mode]
    warm = part("assl")
    _write(tmp_path / "l2" / "assl.jsonl", warm)    # the layout of records/l2 (scripts/l2.sh)
    _write(tmp_path / "l2" / "cold.jsonl", part("assl-cold"))
    _write(tmp_path / "l2" / "cold_random.jsonl", part("assl-cold-random"))
    written = report.write_report([tmp_path / "l2"], tmp_path / "out")   # same (mode, strategy,
    text = written[0].read_text()                                        # seed, round): both read
    assert "| npc | ASSL-cold |" in text and "| npc | ASSL |" in text
    assert "## Cold start: the first batch" in text and "## Cost per round" in text
    assert (tmp_path / "out" / "accuracy.png").exists()
    _write(tmp_path / "copy" / "results.jsonl", warm)
    with pytest.raises(ValueError, match=r"\('assl', 'passive', 0, 0\) is recorded in .*assl"
                                         r"\.jsonl and in .*copy.*results\.jsonl"):
        report.write_report([tmp_path / "l2", tmp_path / "copy"], tmp_path / "out")
    # A file reached twice (its directory and itself) is read once.
    report.write_report([tmp_path / "l2", tmp_path / "l2" / "assl.jsonl"], tmp_path / "out")


def _typicality_runs():
    """On a 1-d line, 'dense' acquires points of the tight middle, 'sparse' the far tail;
    every run shares round 0's labels (0, 1)."""
    def run(strategy, seed, picks):
        return [make_record(strategy=strategy, seed=seed, round=0, num_labels=2,
                            labeled_indices=[0, 1]),
                make_record(strategy=strategy, seed=seed, round=1, num_labels=2 + len(picks),
                            labeled_indices=[0, 1, *picks], acquired_indices=list(picks))]
    return (run("dense", 0, (50, 51, 52)) + run("dense", 1, (53, 54, 55))
            + run("sparse", 0, (97, 98, 99)) + run("sparse", 1, (96, 97, 99)))


def _line_embedding():
    """100 points: 0-89 packed in [0, 1] (denser toward the middle), 90-99 spread to 10."""
    inner = 0.5 + 0.5 * np.sign(np.linspace(-1, 1, 90)) * np.linspace(-1, 1, 90) ** 2
    outer = np.linspace(2.0, 10.0, 10)
    x = np.concatenate([inner, outer])
    # Unit-norm rows must keep the geometry: a 2-d embedding on a wide arc.
    return np.stack([np.cos(x / 20), np.sin(x / 20)], 1)


def test_acquired_typicality_by_hand():
    z = _line_embedding()
    got = report.acquired_typicality(_typicality_runs(), z, k=3)
    dense, sparse = got[("assl", "dense")], got[("assl", "sparse")]
    assert dense["percentile"].mean < 0.3 and dense["sparsest"].mean == 0.0
    assert sparse["percentile"].mean > 0.9 and sparse["sparsest"].mean == 1.0
    assert dense["percentile"].n == 2 and dense["acquired"] == 3
    # Spread: each pick's chord distance to the nearest other pick, mean over picks and seeds.
    def spread(picks):
        chords = np.linalg.norm(z[picks][:, None] - z[picks][None], axis=-1)
        np.fill_diagonal(chords, np.inf)
        return chords.min(1).mean()
    assert sparse["spread"].mean == pytest.approx(
        (spread([97, 98, 99]) + spread([96, 97, 99])) / 2, rel=1e-4)
    assert sparse["spread"].mean > 10 * dense["spread"].mean


def test_acquired_typicality_refuses_a_wrong_embedding(tmp_path):
    with pytest.raises(ValueError, match="index 99 outside the embedding's 60 rows"):
        report.acquired_typicality(_typicality_runs(), _line_embedding()[:60], k=3)
    bad = _line_embedding()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="finite .* with NaN or inf"):
        report.acquired_typicality(_typicality_runs(), bad, k=3)


def test_report_cli_with_an_embedding(tmp_path):
    _write(tmp_path / "run" / "results.jsonl", _typicality_runs())
    np.save(tmp_path / "z.npy", _line_embedding())
    _cli().main([str(tmp_path / "run"), "--out", str(tmp_path / "out"),
                 "--embedding", str(tmp_path / "z.npy")])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Where the acquired points lie in the embedding" in text
    assert re.search(r"\| sparse \(ASSL\) \| 0\.9\d ± 0\.0\d \| 1\.00 ± 0\.00 \|", text)
    auc = report.summarize(_typicality_runs())["rows"][("assl", "sparse")]["auc"]
    section = text.split("## Where the acquired points lie in the embedding")[1].split("##")[0]
    sparse_line = next(line for line in section.splitlines() if line.startswith("| sparse"))
    assert sparse_line.endswith(f"| {auc.mean:.2f} ± {auc.std:.2f} | 3 | 2 |")
    assert (tmp_path / "out" / "typicality.png").stat().st_size > 0
    assert "![typicality](typicality.png)" in text
    with pytest.raises(SystemExit, match="error: .*missing.npy"):
        _cli().main([str(tmp_path / "run"), "--out", str(tmp_path / "out"),
                     "--embedding", str(tmp_path / "missing.npy")])


def test_knn_sparsity_matches_brute_force():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(700, 6)).astype(np.float32)
    d = np.sqrt(((z[:, None].astype(np.float64) - z[None]) ** 2).sum(-1))
    expected = np.sort(d, 1)[:, :6].sum(1) / 5
    np.testing.assert_allclose(report.knn_sparsity(z, 5, block_rows=128), expected, rtol=1e-4)
