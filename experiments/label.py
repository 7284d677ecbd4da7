"""Active learning with a person as the oracle: label each query, the loop does the rest.

    # 1. Export the first query (Q0, drawn at random from the pool) and stop:
    python experiments/label.py --config experiments/configs/fmnist_assl.py \
        --config.strategies=npc --config.seeds=0 --workdir runs/mine
    # 2. Look at runs/mine/queries/query_000.png, fill the `label` column of
    #    runs/mine/queries/query_000.csv (class ids or names), then import it and
    #    continue: train, evaluate, acquire, export query 1, stop. The command
    #    prints this line with your own flags:
    python experiments/label.py --config experiments/configs/fmnist_assl.py \
        --config.strategies=npc --config.seeds=0 --workdir runs/mine \
        --labels=runs/mine/queries/query_000.csv

Without --labels the command continues as far as the stored labels allow and
(re-)exports the pending query; a CSV being filled in is kept. --import_only
stores the labels without training (then only --workdir and --labels are
needed). A refused import names each problem of the CSV and stores nothing.

In Label Studio instead of CSV files (npc_jax/labelstudio.py; the API key comes
from the environment only, never a flag or a file):

    export LABEL_STUDIO_API_KEY=...      # Account & Settings -> Access token
    python experiments/label.py --config experiments/configs/fmnist_assl.py \
        --config.strategies=npc --config.seeds=0 --workdir runs/mine \
        --backend=labelstudio --ls-url=http://localhost:8080 --ls-project=new

Each call imports the annotations of the pending query once all its tasks are
labelled, trains and acquires, and creates the next query's tasks; the first
call with --ls-project=new creates the project (later calls may drop the flag).
"""
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run: labels, queries, records.")
_LABELS = flags.DEFINE_string("labels", None, "A filled query CSV to import before continuing.")
_IMPORT_ONLY = flags.DEFINE_bool("import_only", False, "Import --labels, then stop.")
_BACKEND = flags.DEFINE_enum("backend", "csv", ["csv", "labelstudio"],
                             "Where people label: CSV files in the workdir, or Label Studio.")
_LS_URL = flags.DEFINE_string("ls_url", None, "Label Studio server (--backend=labelstudio).")
_LS_PROJECT = flags.DEFINE_string("ls_project", None,
                                  "Label Studio project id, or 'new' to create one (first "
                                  "call); later calls may omit it.")
flags.DEFINE_alias("ls-url", "ls_url")
flags.DEFINE_alias("ls-project", "ls_project")
flags.mark_flags_as_required(["workdir"])


def _import_command(csv_path) -> str:
    """This command line with --labels pointing at `csv_path` (and no --import_only)."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg in ("--labels", "-labels"):
            skip = True   # its value is the next argument
        elif not arg.lstrip("-").startswith(("labels=", "import_only", "noimport_only")):
            args.append(arg)
    return shlex.join(["python", sys.argv[0], *args, f"--labels={csv_path}"])


def _print(record):
    from npc_jax import loop   # imported in main, after the flags are parsed
    print(loop.describe_record(record), flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _IMPORT_ONLY.value and not _LABELS.value:
        raise app.UsageError("--import_only needs --labels=CSV.")
    if not _IMPORT_ONLY.value and _CONFIG.value is None:
        raise app.UsageError("--config is required (the config that started --workdir).")
    logging.set_verbosity(logging.WARNING)
    from npc_jax import labelling, loop, results
    from npc_jax.data import DataError

    if _BACKEND.value == "labelstudio":
        _label_studio()
        return

    if _LABELS.value:
        try:
            entry = labelling.import_labels(_WORKDIR.value, _LABELS.value)
        except DataError as err:
            sys.exit(f"error: {err}")
        print(f"Imported {len(entry['labels'])} labels (query {entry['query']}) into "
              f"{_WORKDIR.value}/{labelling.LABELS_FILE}.")
        if _IMPORT_ONLY.value:
            return
    try:
        records = loop.run(_CONFIG.value, _WORKDIR.value, labels="human", on_record=_print)
    except labelling.LabelsNeeded as stop:
        print()
        print(stop.instructions(_import_command(stop.export.csv)))
        return
    except ValueError as error:   # config, data and workdir errors name their fix
        sys.exit(f"error: {error}")
    measured = [r for r in records if r.test_accuracy is not None]
    print()
    if measured:
        print(results.format_table(measured))
    print(f"\nAll rounds are labelled and trained. records: {_WORKDIR.value}/results.jsonl")


def _label_studio():
    """One step against Label Studio: import what is labelled, train, create the next tasks."""
    import os

    from npc_jax import labelstudio

    if _LABELS.value or _IMPORT_ONLY.value:
        raise app.UsageError("--labels / --import_only belong to --backend=csv.")
    if not _LS_URL.value:
        raise app.UsageError("--backend=labelstudio needs --ls-url (e.g. http://localhost:8080).")
    try:
        client = labelstudio.Client(_LS_URL.value, os.environ.get(labelstudio.API_KEY_ENV, ""))
        labelstudio.sync(_CONFIG.value, _WORKDIR.value, client, _LS_PROJECT.value,
                         on_record=_print)
    except ValueError as error:   # LabelStudioError is a DataError; config errors too
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    app.run(main)
