"""Runs an active (semi-)supervised learning experiment from a config file.

    python experiments/assl.py --config experiments/configs/fmnist_quick.py --workdir runs/quick
    python experiments/assl.py --config experiments/configs/fmnist_quick.py \
        --config.strategies=passive --config.seeds=0,1 --workdir runs/quick
    # the grid over 2 workers (processes or hosts sharing the workdir):
    python experiments/assl.py --config experiments/configs/fmnist_quick.py \
        --config.seeds=0,1 --config.shard=0/2 --workdir runs/quick    # and shard=1/2
    # one run over N hosts (process i on host i; the workdir shared by all):
    NPC_JAX_COORDINATOR=host0:1234 NPC_JAX_NUM_PROCESSES=N NPC_JAX_PROCESS_ID=i \
        python experiments/assl.py --config experiments/configs/fmnist_quick.py --workdir /shared/x

Re-running the same command resumes after the last finished round.
"""
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for records, checkpoints, plots.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "Multi-process run: host:port of process 0 (else NPC_JAX_COORDINATOR).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-process run: the number of processes (else "
    "NPC_JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-process run: this process, 0..N-1 (else NPC_JAX_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])


def _print(record):
    from npc_jax import distributed, loop   # imported in main, after the flags are parsed
    if distributed.is_writer():   # process 0 of a multi-process run speaks for all
        print(loop.describe_record(record), flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # silence JAX's backend probing
    # No persistent XLA compilation cache: executables loaded from it were seen
    # to compute slightly different numbers than fresh ones on CPU, which would
    # break "same seed, same labels, bit for bit" across a resumed run.
    from npc_jax import distributed, loop, results
    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        records = loop.run(_CONFIG.value, _WORKDIR.value, on_record=_print)
    except ValueError as error:   # config, data, workdir and process errors name their fix
        sys.exit(f"error: {error}")
    if not distributed.is_writer():
        return
    print()
    print(results.format_table(records))
    settings = loop.RunSettings.from_config(_CONFIG.value)
    print(f"\nrecords: {loop.records_file(Path(_WORKDIR.value), settings.shard)}   "
          f"plot: {_WORKDIR.value}/accuracy.png")


if __name__ == "__main__":
    app.run(main)
