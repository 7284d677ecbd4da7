"""Self-supervised pretraining on a dataset's unlabeled pool, cached, and its quality.

    python experiments/pretrain.py --config experiments/configs/pretrain_fmnist.py \
        --workdir runs/pretrain_cache

--workdir is the pretraining cache: the result lands in WORKDIR/<key>/ (the
key hashes the dataset's content, the model and the recipe), a second call
with the same config is a cache hit, and a killed call resumes from the last
checkpoint. Then the representation is measured (kNN and linear probe with 1,
5, 10 labels per class and all, against the random initialisation and a
raw-pixel PCA baseline) and written to WORKDIR/<key>/quality.json.
--export_embedding writes the pretrained features of the training split to a
.npy (for `experiments/report.py --embedding`).
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pretraining config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The pretraining cache directory.")
_EVALUATE = flags.DEFINE_bool("evaluate", True, "Measure the representation afterwards.")
_EXPORT = flags.DEFINE_string("export_embedding", None,
                              "Optional .npy path for the features of the training split.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    from npc_jax import pretraining
    try:
        result, quality = pretraining.run_from_config(
            _CONFIG.value, _WORKDIR.value, progress=sys.stderr.isatty(),
            evaluate=_EVALUATE.value)
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(f"pretrained variables: {result.path}")
    if _EXPORT.value:
        import numpy as np
        np.save(_EXPORT.value, pretraining.embed_pool(_CONFIG.value, result))
        print(f"embedding of the training split: {_EXPORT.value}")
    if quality:
        print(pretraining.quality_markdown(quality))


if __name__ == "__main__":
    app.run(main)
