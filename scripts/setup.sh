#!/usr/bin/env bash
# Set up npc_jax: a .venv at the repository root with the pinned stack, and the
# Fashion-MNIST data from Debian's dataset-fashion-mnist where apt is usable.
# Idempotent: a second run checks stamps and returns in seconds.
#
#   bash scripts/setup.sh          # package + dev extras (tests, tfds, neural-tangents)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
fmnist_dir=/usr/share/datasets/fashion-mnist

# 1. Data.
if [ -f "$fmnist_dir/train-images-idx3-ubyte.gz" ]; then
  echo "[setup] Fashion-MNIST present in $fmnist_dir"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing Debian package dataset-fashion-mnist"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
else
  cat >&2 <<MSG
[setup] Fashion-MNIST not found in $fmnist_dir and apt is not usable here.
        Get it one of these ways, then re-run:
          - Debian/Ubuntu:  sudo apt-get install dataset-fashion-mnist
          - anywhere: download the four *-ubyte.gz files of Fashion-MNIST into a
            folder and set NPC_JAX_FASHION_MNIST_DIR=/that/folder
        (tfds datasets and npz:PATH datasets work without it.)
MSG
fi

# 2. Python environment.
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.npc_jax-installed
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] .venv up to date"
else
  echo "[setup] installing npc_jax[dev] and its pins into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi

# 3. Label Studio (tests/test_labelstudio.py): the server in its own venv (its
#    pins hold numpy < 2.3, see pyproject's labelstudio extra), a migrated
#    template database (~90 s once, then each test server starts in ~10 s), and
#    Debian's chromium for the labelling-view check. Skip with NPC_JAX_NO_LABEL_STUDIO=1.
if [ -z "${NPC_JAX_NO_LABEL_STUDIO:-}" ]; then
  ls_pin="$(grep -o '"label-studio==[^"]*"' pyproject.toml | tr -d '"')"
  if ! .venv-labelstudio/bin/python -m pip show -q label-studio >/dev/null 2>&1 \
      || [ "label-studio==$(.venv-labelstudio/bin/python -c 'import label_studio; print(label_studio.__version__)')" != "$ls_pin" ]; then
    echo "[setup] installing $ls_pin into .venv-labelstudio (first time: a few minutes)"
    [ -x .venv-labelstudio/bin/python ] || "$python" -m venv .venv-labelstudio
    .venv-labelstudio/bin/python -m pip install -q --upgrade pip
    .venv-labelstudio/bin/python -m pip install -q "$ls_pin"
  fi
  echo '*' > .venv-labelstudio/.gitignore   # never committed

  .venv/bin/python tests/labelstudio_server.py
  if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      echo "[setup] installing Debian package chromium"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || true
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || true
    fi
  fi
fi
