"""P8: self-supervised pretraining of the small CNN on the Fashion-MNIST pool.

The network is `cnn_grid` (the small CNN with a 3x3 spatial grid before its
dense layer), the one L2 (fmnist_pretrained.py) fine-tunes.

SimCLR (NT-Xent, τ 0.5) on two views per image (random resized crop of 50-100 %
of the area, flip, brightness/contrast jitter, then one RandAugment op on half
of the views), AdamW 2e-3 with warm-up and cosine decay, batch 256 (512
views), 6000 steps, projection head 128 -> 256 -> 64. Method and settings
chosen on the validation split (BENCHMARKS.md P8). No label is used: the
pool's labels are read only by the evaluation, on labeled subsets of 1, 5 and
10 per class (and all), against a 5k validation split of the pool and the
test split.

Command:
    python experiments/pretrain.py --config experiments/configs/pretrain_fmnist.py \
        --workdir runs/pretrain_cache

Runtime and expected result: ~22 min on 2 quiet cores (≈ 2 400 views/s; 45 min
measured beside other jobs); test kNN 75.8 % with 10 labels per class, 58.9 %
with 1, 87.0 % with all (cache key 8cab7ca4cdb8900c; BENCHMARKS.md P8, with
the method, network and view comparisons on the validation split). `:plain`
is the recipe without RandAugment (key c862597226580b82: test kNN 72.7 / 55.4,
the first L2 records, records/l2_v1). `:quick` is a 200-step smoke version
(~1 min).
"""
import ml_collections


def get_config(arg: str = ""):
    config = ml_collections.ConfigDict()
    config.dataset = "fashion_mnist"
    config.data_dir = ""
    config.model = "cnn_grid"   # spatial grid before the dense layer (P8: +4 kNN points)
    config.seed = 0

    config.pretrain = ml_collections.ConfigDict()
    config.pretrain.method = "simclr"
    config.pretrain.steps = 6000
    config.pretrain.batch_size = 256
    config.pretrain.lr = 2e-3
    config.pretrain.weight_decay = 1e-4
    config.pretrain.warmup_steps = 100
    config.pretrain.temperature = 0.5
    config.pretrain.projection_dim = 64
    config.pretrain.hidden_dim = 256
    config.pretrain.crop_scale = (0.5, 1.0)
    config.pretrain.flip = True
    config.pretrain.jitter = 0.4
    # One RandAugment op on half the views (P8: test kNN 75.8 vs 72.7 at 10 per class).
    config.pretrain.randaugment_ops = 1
    config.pretrain.randaugment_probability = 0.5

    config.checkpoint_every = 200
    config.evaluation = ml_collections.ConfigDict()
    config.evaluation.per_class = (1, 5, 10)   # plus all labels
    config.evaluation.draws = 5
    config.evaluation.validation_size = 5000
    if arg == "plain":   # SimCLR's views alone (the first L2 pretraining)
        config.pretrain.randaugment_ops = 0
    elif arg == "quick":
        config.pretrain.steps = 200
        config.pretrain.warmup_steps = 20
        config.evaluation.draws = 2
    return config
