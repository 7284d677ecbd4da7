#!/usr/bin/env bash
# The L1 benchmark (all strategies, seeds 0-2, ASSL + ASL for passive/npc) and
# the WRN-28-2 step timing, on one GPU machine, within one time-boxed command.
#
#   L1_SECONDS=420 OUT=/some/dir bash scripts/gpu_l1.sh
#
# Needs: python3 with jax (CUDA), flax, optax, absl; ml_collections as a wheel
# in .whl/ when missing; the Fashion-MNIST IDX files in $NPC_JAX_FASHION_MNIST_DIR
# (default .gpudata/). The ASSL grid (strategies x seeds) runs as WORKERS
# processes on one workdir, worker i with --config.shard=i/WORKERS (each takes
# every WORKERS-th (seed, strategy) job and appends to its own
# results.shard-i-of-N.jsonl; a worker started twice fails at once); ASL is one
# more process. The records files are copied into $OUT every 20 s (l1_assl/, one
# file per worker, and l1_asl.jsonl), so a run cut short still returns every
# finished round, and the CPU can resume from them (the config, and so its
# hash, is unchanged): copy them into a workdir and run the same command.
set -u
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
L1_SECONDS=${L1_SECONDS:-420}
EXTRA=${EXTRA:-}
STRATEGIES=${STRATEGIES:-npc,passive,margin,badge,albl,coreset,entropy,least_confidence,npc_search,npc_probs,npc_full}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export NPC_JAX_FASHION_MNIST_DIR=${NPC_JAX_FASHION_MNIST_DIR:-$PWD/.gpudata}
if ! $PY -c "import ml_collections" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 | tee "$OUT/versions.txt"
W=${W:-/tmp/l1}; mkdir -p $W "$OUT/l1_assl"
SEEDS=$(echo ${SEEDS:-0 1 2} | tr ' ' ',')     # "3 4" or 3,4
WORKERS=${WORKERS:-3}
gather() {
  cp $W/assl/results*.jsonl "$OUT/l1_assl/" 2>/dev/null
  cp $W/asl/results.jsonl "$OUT/l1_asl.jsonl" 2>/dev/null
  tail -n 400 $W/*.log > "$OUT/l1_logs.txt" 2>/dev/null
}
pids=()
for ((i = 0; i < WORKERS; i++)); do
  timeout $L1_SECONDS $PY experiments/assl.py --config experiments/configs/fmnist_assl.py \
    --workdir $W/assl --config.seeds=$SEEDS --config.strategies=$STRATEGIES \
    --config.shard=$i/$WORKERS $EXTRA > $W/assl_worker$i.log 2>&1 &
  pids+=($!)
done
timeout $L1_SECONDS $PY experiments/assl.py --config experiments/configs/fmnist_assl.py:asl \
  --workdir $W/asl --config.seeds=${ASL_SEEDS:-0,1,2} --config.strategies=passive,npc $EXTRA \
  > $W/asl.log 2>&1 &
pids+=($!)
while kill -0 "${pids[@]}" 2>/dev/null; do sleep 20; gather; done
wait; gather
nvidia-smi --query-gpu=name,memory.used --format=csv 2>/dev/null | tee -a "$OUT/versions.txt"
# WRN-28-2 FixMatch step (P5 on a GPU): float32 and bfloat16 compute.
for dtype in ${BENCH_DTYPES-float32 bfloat16}; do
  timeout ${BENCH_SECONDS:-120} $PY experiments/bench_train.py --model wrn28_2 --dtype $dtype \
    --cases fixmatch_joint --steps ${BENCH_STEPS:-30} --out "$OUT/p5_wrn_$dtype.json" 2>&1 \
    | grep -v "^I0000\|^W0000" | tail -n 8 | tee -a "$OUT/p5_gpu.txt"
done
