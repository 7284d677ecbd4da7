"""Skip markers for tests that need data this machine may lack (one rule each)."""
import os
from pathlib import Path

import pytest

from npc_jax.data import FASHION_MNIST_DEFAULT_DIR, FASHION_MNIST_ENV


def fashion_mnist_dir() -> Path:
    """Where `load_dataset("fashion_mnist")` looks when no data_dir is given."""
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_DIR)


requires_fashion_mnist = pytest.mark.skipif(
    not (fashion_mnist_dir() / "train-images-idx3-ubyte.gz").exists(),
    reason=f"Fashion-MNIST not in {fashion_mnist_dir()}: install Debian's "
           f"dataset-fashion-mnist (scripts/setup.sh does) or set {FASHION_MNIST_ENV}")
