import pytest

from npc_jax import records, results, storage


def _record(strategy, seed, n, acc, mode="assl"):
    return records.RoundRecord(
        dataset="toy", dataset_fingerprint=None, mode=mode, strategy=strategy, seed=seed,
        round=(n - 10) // 20, num_labels=n, test_accuracy=acc, validation_accuracy=None,
        labeled_indices=list(range(n)), acquired_indices=[], class_counts=[n // 2, n - n // 2],
        objective=None, acquisition_seconds=0.0, train_seconds=1.0, train_metrics={},
        strategy_options={}, pretraining=None, shared_initial_model=n == 10,
        initial_trainings=None, strategy_state=None, config={}, config_hash="0")


def test_table_mean_std_and_auc(tmp_path):
    records = [_record("passive", 0, 10, 0.5), _record("passive", 1, 10, 0.7),
               _record("passive", 0, 30, 0.8), _record("passive", 1, 30, 0.8),
               _record("npc", 0, 10, 0.5)]
    text = results.format_table(records)
    passive = next(line for line in text.splitlines() if "passive" in line)
    # Sample std (ddof=1): 50 and 70 give 14.14.
    assert "60.00 ± 14.14" in passive and "80.00 ± 0.00" in passive
    assert "70.00 ± 7.07" in passive  # AUC per seed (50+80)/2, (70+80)/2 -> mean 70
    npc = next(line for line in text.splitlines() if "| npc" in line)
    assert "—" in npc  # missing 30-label point: no AUC
    results.plot_accuracy(records, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_json_dicts_are_read_as_records():
    """The loop's dicts (JSON lines) give the same table as typed records."""
    typed = [_record("passive", 0, 10, 0.5), _record("passive", 0, 30, 0.8)]
    assert results.as_records([r.to_json() for r in typed]) == typed
    assert results.format_table([r.to_json() for r in typed]) == results.format_table(typed)
    with pytest.raises(storage.RecordsError, match=r"record 0 is not a RoundRecord: unknown "
                                                   r"field 'acuracy' \(did you mean"):
        results.format_table([{**typed[0].to_json(), "acuracy": 0.5}])
