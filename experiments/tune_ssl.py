"""Validation-split comparison of training recipes (never the test split).

    python experiments/tune_ssl.py --workdir runs/tune --labels 50 --seeds 0 \
        --variants asl,base,warmup
    python experiments/tune_ssl.py --base fmnist_pretrained --workdir runs/tune_l2 \
        --labels 50 --seeds 0 --variants l2_asl,l2_base,l2_freematch

Each variant is a set of overrides of the --base config (L1's fmnist_assl.py, or
L2's fmnist_pretrained.py for the l2_* variants); every run trains once on the
passive (class-balanced) labels of a seed, with 5 000 pool samples held out
for validation, and reports validation accuracy and the training diagnostics
(mask rate, accuracy of accepted pseudo-labels).
"""
import json
import sys
from pathlib import Path

from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
from configs import fmnist_assl, fmnist_pretrained  # noqa: E402

# Fully explicit on the tuned fields, so each row stays reproducible when the
# config's defaults move.
_FIXMATCH_600 = {"train_steps": 600, "train.threshold": 0.95, "train.supervised_warmup": 0.0,
                 "train.lr": 0.03, "train.mu": 7, "train.weak_forward": "separate"}
VARIANTS = {
    "asl": {"mode": "asl", "train_steps": 1000},
    "base": _FIXMATCH_600,
    "joint": {**_FIXMATCH_600, "train.weak_forward": "joint"},
    "warmup": {**_FIXMATCH_600, "train.supervised_warmup": 0.3},
    "warmup_t80": {**_FIXMATCH_600, "train.supervised_warmup": 0.3, "train.threshold": 0.8},
    "warmup_t80_lr10": {**_FIXMATCH_600, "train.supervised_warmup": 0.3,
                        "train.threshold": 0.8, "train.lr": 0.1},
    "warmup_t70_lr10": {**_FIXMATCH_600, "train.supervised_warmup": 0.3,
                        "train.threshold": 0.7, "train.lr": 0.1},
    "warmup_t80_s1000": {**_FIXMATCH_600, "train.supervised_warmup": 0.3,
                         "train.threshold": 0.8, "train_steps": 1000},
    "warmup_t80_mu3_s1200": {**_FIXMATCH_600, "train.supervised_warmup": 0.3,
                             "train.threshold": 0.8, "train.mu": 3, "train_steps": 1200},
    "no_darp": {"train.darp": False},
    # L2: fine-tuning from the pretraining (base: experiments/configs/fmnist_pretrained.py).
    "l2_asl": {"mode": "asl"},
    "l2_base": {},
    "l2_freematch": {"train.threshold_mode": "freematch"},
    "l2_lr01": {"train.lr": 0.01},
    "l2_s800": {"train_steps": 800},
    "l2_lpft": {"train.freeze_encoder_fraction": 0.25, "train.encoder_lr_scale": 0.1},
    "l2_frozen": {"train.encoder_lr_scale": 0.0},
    "l2_lpft_s800": {"train.freeze_encoder_fraction": 0.25, "train.encoder_lr_scale": 0.1,
                     "train_steps": 800},
    "l2_lpft_freematch": {"train.freeze_encoder_fraction": 0.25,
                          "train.encoder_lr_scale": 0.1, "train.threshold_mode": "freematch"},
    "l2_lpft_asl": {"mode": "asl", "train.freeze_encoder_fraction": 0.25,
                    "train.encoder_lr_scale": 0.1},
    # On the cnn_grid pretraining (the config's LP-FT recipe as the base).
    "l2_t95": {"train.threshold": 0.95},
    "l2_s1600": {"train_steps": 1600},
    "l2_s1600_asl": {"mode": "asl", "train_steps": 1600},
    # Label propagation over the pretrained embedding as the unlabeled targets.
    "l2_propagated": {"train.pseudo_labels": "propagated"},
    "l2_product": {"train.pseudo_labels": "product"},
    # The config before propagation (FixMatch's own pseudo-labels, lambda_u 1).
    "l2_fixmatch": {"train.pseudo_labels": "model", "train.lambda_u": 1.0},
    "l2_propagated_s1200": {"train.pseudo_labels": "propagated", "train_steps": 1200},
    "l2_propagated_k20": {"train.pseudo_labels": "propagated",
                          "train.propagation_neighbours": 20},
    "l2_propagated_lu2": {"train.pseudo_labels": "propagated", "train.lambda_u": 2.0},
    "l2_propagated_lu4": {"train.pseudo_labels": "propagated", "train.lambda_u": 4.0},
    "l2_propagated_lu8": {"train.pseudo_labels": "propagated", "train.lambda_u": 8.0},
}
BASES = {"fmnist_assl": fmnist_assl, "fmnist_pretrained": fmnist_pretrained}

_WORKDIR = flags.DEFINE_string("workdir", "runs/tune", "Parent directory of the runs.")
_LABELS = flags.DEFINE_integer("labels", 50, "Number of (class-balanced) labels.")
_SEEDS = flags.DEFINE_string("seeds", "0", "Comma-separated seeds.")
_VARIANTS = flags.DEFINE_list("variants", ["asl", "base"], f"Of: {', '.join(VARIANTS)}")
_BASE = flags.DEFINE_enum("base", "fmnist_assl", list(BASES), "The config the variants change.")


def make_config(variant: str, labels: int, seeds: str, base: str = "fmnist_assl"):
    config = BASES[base].get_config()
    config.update({"strategies": "passive", "seeds": seeds, "initial_labels": labels,
                   "rounds": 0, "validation_size": 5000})
    for field, value in VARIANTS[variant].items():
        node = config
        *parents, leaf = field.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from npc_jax import loop
    rows = []
    for variant in _VARIANTS.value:
        workdir = Path(_WORKDIR.value) / f"{variant}_l{_LABELS.value}"
        records = loop.run(make_config(variant, _LABELS.value, _SEEDS.value, _BASE.value),
                           workdir, on_record=lambda r: print(loop.describe_record(r), flush=True))
        for r in records:
            rows.append({"variant": variant, "seed": r.seed, "labels": r.num_labels,
                         "validation_accuracy": r.validation_accuracy,
                         "train_seconds": r.train_seconds,
                         **{k: r.train_metrics.get(k) for k in
                            ("mask_rate", "pseudo_label_accuracy")}})
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    app.run(main)
