#!/usr/bin/env bash
# A second environment, .venv-current, with the NEWEST jax / jaxlib / flax /
# optax the package index serves (unpinned on purpose: CI thereby tests the
# core on current JAX, as GPU images ship it; DESIGN.md section 6), for the
# core tests: everything but npc_jax/infinite.py and the neural-tangents
# cross-checks (neural-tangents 0.6.5 does not import on JAX >= 0.6, so it and
# tensorflow are left out). The package itself goes in with --no-deps, as
# pyproject.toml pins the JAX 0.5.3 stack.
# Idempotent: a second run checks a stamp and returns in seconds; set
# NPC_JAX_REFRESH=1 to take newer releases into an existing .venv-current.
#
#   bash scripts/setup_current_jax.sh
#   .venv-current/bin/python -m pytest -q -m "not neural_tangents"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv=.venv-current

# The core's imports and the core tests' (pytest, scipy and scikit-activeml
# cross-checks, import-linter, the notebook runner and pandas for
# reading_a_run.ipynb). No version pins: the newest that resolve together.
deps=(jax jaxlib flax optax numpy ml_collections matplotlib tqdm absl-py threadpoolctl
      pytest pytest-timeout scipy scikit-activeml import-linter
      nbclient nbformat ipykernel pandas)

python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup_current_jax] creating $venv with $("$python" --version)"
  "$python" -m venv "$venv"
fi
stamp="$venv/.npc_jax-installed"
want="$(cat pyproject.toml "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -z "${NPC_JAX_REFRESH:-}" ]; then
  echo "[setup_current_jax] $venv up to date"
else
  echo "[setup_current_jax] installing the newest ${deps[*]} into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q --upgrade "${deps[@]}"
  "$venv/bin/python" -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
print("[setup_current_jax] " + ", ".join(
    f"{p} {md.version(p)}" for p in ("jax", "jaxlib", "flax", "optax", "numpy")))
PY
