import numpy as np

from npc_jax import results


def _record(strategy, seed, n, acc, mode="assl"):
    return {"mode": mode, "strategy": strategy, "seed": seed, "num_labels": n,
            "round": (n - 10) // 20, "test_accuracy": acc}


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
