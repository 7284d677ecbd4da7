"""npc_full's screened pick against the exact one, on the models a run kept (issue #17).

    .venv/bin/python experiments/compare_npc_full.py --workdir runs/l1_full/assl \
        --config experiments/configs/fmnist_assl.py --seeds 0,1,2,3,4

For each seed it loads the run's round-0 model (``checkpoints/seed{S}_round0``:
the model every strategy of that seed acquires from first), rebuilds the
acquisition exactly as the loop does (the same pool, visible labels and key
``RoundKeys.of(S, 0).acquire``) and picks the batch twice: with the default
`npc_full` (a screening kernel ranks the 1000 candidate batches, the best 50
are scored exactly) and with ``full_exact=True`` (every batch exact). It
prints, per seed, both picks, whether they are the same batch, the exact
λ_min of each, their ratio, the two wall times, and whether the screened
pick is the one the run recorded. Later rounds' models are not kept by the
loop, so only round 0 is compared here.

Runtime: ≈ 3.5 min per seed on 2 quiet cores (≈ 50 s screened + ≈ 150 s exact).
Expected result (BENCHMARKS.md P2 full): the same batch, or an exact λ_min
within 1 % of the exact pick's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))


def compare_seed(settings, data, workdir: Path, seed: int) -> dict:
    import jax
    import numpy as np

    from npc_jax import checkpoint, records
    from npc_jax.data import initial_pool
    from npc_jax.loop import RoundKeys
    from npc_jax.models import get_model
    from npc_jax.strategies import AcquisitionContext, make_strategy

    model = get_model(settings.model, data.num_classes, data.image_shape)
    pool = initial_pool(data.num_train, settings.initial_labels, seed=seed, labels=data.y_train,
                        num_classes=data.num_classes)
    template = jax.device_get(model.init(jax.random.PRNGKey(0)))
    kept = checkpoint.load_round0(checkpoint.round0_stem(workdir, seed), template,
                                  pool.labeled_indices, data.fingerprint())
    if kept is None:
        raise SystemExit(f"{workdir} has no round-0 model of seed {seed} for these labels; "
                         "run the strategy there first (scripts/l1.sh).")
    variables = kept[0]
    ctx = AcquisitionContext(model, variables, data.x_train,
                             np.where(pool.labeled_mask, data.y_train, -1),
                             batch_size=settings.train.eval_batch_size)
    key = RoundKeys.of(seed, 0).acquire
    out = {"seed": seed}
    for name, extra in (("screened", {}), ("exact", {"full_exact": True})):
        strategy = make_strategy("npc_full", **{**settings.options_of("npc_full"), **extra})
        start = time.perf_counter()
        pick = strategy.select(key, ctx, pool, settings.query_size)
        out[name] = {"indices": sorted(int(i) for i in pick.indices),
                     "lambda_min": float(pick.objective["lambda_min"]),
                     "seconds": time.perf_counter() - start}
    out["same_batch"] = out["screened"]["indices"] == out["exact"]["indices"]
    out["ratio"] = out["screened"]["lambda_min"] / out["exact"]["lambda_min"]
    recorded = [r for r in records.read_records([workdir])
                if r.strategy == "npc_full" and r.seed == seed and r.round == 0]
    out["recorded_pick_is_screened"] = (
        bool(recorded) and sorted(int(i) for i in recorded[0].acquired_indices)
        == out["screened"]["indices"])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a run with npc_full records")
    parser.add_argument("--config", default="experiments/configs/fmnist_assl.py")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default=None, help="JSON lines, one per seed")
    args = parser.parse_args(argv)

    import importlib.util

    from npc_jax.config import RunSettings
    from npc_jax.data import load_dataset

    spec = importlib.util.spec_from_file_location("run_config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    settings = RunSettings.from_config(module.get_config())
    data = load_dataset(settings.dataset, data_dir=settings.data_dir)
    for seed in (int(s) for s in args.seeds.split(",")):
        result = compare_seed(settings, data, Path(args.workdir), seed)
        print(json.dumps(result), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
