"""The tiny config of tests/test_loop.py, as a file for the command-line entry point."""
import ml_collections
import numpy as np


def bar_images(n: int, num_classes: int, rng: np.random.Generator):
    """(n, 28, 28) uint8 noise with a bright bar whose row is the class; (n,) labels."""
    y = np.arange(n) % num_classes
    x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, 3 + 6 * c: 7 + 6 * c, 4:24] = 255
    return x, y


def write_bar_dataset(path, *, n_train=160, n_test=40, classes=4, seed=0):
    """An npz of `bar_images` (x, y, x_test, y_test) at `path`; returns `path`."""
    rng = np.random.default_rng(seed)
    x, y = bar_images(n_train, classes, rng)
    x_test, y_test = bar_images(n_test, classes, rng)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


def tiny_cnn_context(num_classes: int, num_images: int, widths: tuple[int, ...]):
    """(model, variables, images, ctx): a randomly initialised small CNN on (num_images,
    10, 10, 1) binary images of varied density, no label visible, for strategy tests."""
    import jax   # imported here: the command line reads this file as a config

    from npc_jax.models import get_model
    from npc_jax.strategies import AcquisitionContext

    model = get_model("cnn", num_classes, (10, 10, 1), widths=widths, feature_dim=24)
    variables = model.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    images = (rng.uniform(size=(num_images, 10, 10, 1))
              < rng.uniform(0.05, 0.95, (num_images, 1, 1, 1))).astype(np.float32)
    ctx = AcquisitionContext(model, variables, images, np.full(num_images, -1), batch_size=16)
    return model, variables, images, ctx


def get_config():
    return ml_collections.ConfigDict({
        "dataset": "npz:REPLACE_ME", "data_dir": "", "model": "cnn", "mode": "assl",
        "strategies": "passive,npc", "seeds": "0", "shard": "", "initial_labels": 4,
        "query_size": 4, "rounds": 2, "train_steps": 6,
        "train": {"batch_size": 4, "mu": 2, "chunk_steps": 3, "eval_batch_size": 64,
                  "ema_decay": 0.5, "darp_every": 2},
        "strategy_options": {"npc": {"num_candidates": 16}},
    })
