import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

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
    assert (tmp_path / "report.md").read_bytes() == (COMMITTED_REPORT / "report.md").read_bytes()
    for committed in sorted(COMMITTED_REPORT.glob("*.svg")):
        drawn_by = re.search(rb"Matplotlib v([0-9][^ ]*) ", committed.read_bytes())
        if drawn_by and drawn_by.group(1).decode() == matplotlib.__version__:
            assert (tmp_path / committed.name).read_bytes() == committed.read_bytes(), committed


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
    records = (_run("assl", "passive", 0, [0.5, 0.6, 0.7]) + _run("assl", "passive", 1, [0.4, 0.5, 0.8])
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
