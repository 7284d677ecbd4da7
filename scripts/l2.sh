#!/usr/bin/env bash
# The L2 benchmark (BENCHMARKS.md "L2", issue 18) in one command: the learner
# fine-tuned from the self-supervised pretraining (experiments/configs/
# fmnist_pretrained.py); warm start (Q0 = 10, one per class) for every strategy
# in ASSL, ASL for passive and npc, and the cold start (the first 10 labels
# chosen with no label: from the pretrained network, and for npc and badge
# also from the random initialisation, the paper's zero-shot rows), then the report. Resumable: re-run the same command
# after any interruption; subsets with STRATEGIES= / COLD_STRATEGIES= / SEEDS=,
# and PARTS= (any of warm,asl,cold,cold_random) to run only some parts.
#
#   bash scripts/l2.sh                                   # everything, 10 seeds (CPU: days)
#   STRATEGIES=passive,npc SEEDS=0,1 PARTS=warm bash scripts/l2.sh
#   FROM=records/l2 bash scripts/l2.sh                   # continue the committed records
#   SHARD=0/2 bash scripts/l2.sh & SHARD=1/2 bash scripts/l2.sh   # two workers, one workdir
#
# The pretraining (P8, ~22 min on 2 cores) is made on first use and cached under
# runs/pretrain_cache. WORKDIR/{assl,asl,cold,cold_random}/results*.jsonl hold the records,
# WORKDIR/report the tables and figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORKDIR=${WORKDIR:-runs/l2}
SEEDS=${SEEDS:-0,1,2,3,4,5,6,7,8,9}
PARTS=${PARTS:-warm,asl,cold,cold_random}
SHARD=${SHARD:-}
STRATEGIES=${STRATEGIES:-passive,margin,entropy,least_confidence,coreset,badge,albl,npc,npc_probs,npc_full,npc_embed,npc_typical,typiclust,probcover,maxherding}
ASL_STRATEGIES=${ASL_STRATEGIES:-passive,npc}
COLD_STRATEGIES=${COLD_STRATEGIES:-passive,npc,npc_infinite,typiclust,probcover,maxherding,npc_embed}
COLD_RANDOM_STRATEGIES=${COLD_RANDOM_STRATEGIES:-npc,badge}
CONFIG=experiments/configs/fmnist_pretrained.py
declare -A ARG=([warm]=assl [asl]=asl [cold]=cold [cold_random]=cold_random)
declare -A DIR=([warm]=assl [asl]=asl [cold]=cold [cold_random]=cold_random)
declare -A NAMES=([warm]="$STRATEGIES" [asl]="$ASL_STRATEGIES" [cold]="$COLD_STRATEGIES"
                  [cold_random]="$COLD_RANDOM_STRATEGIES")
runs=()
for part in warm asl cold cold_random; do
  [[ ",$PARTS," == *",$part,"* ]] || continue
  dir="$WORKDIR/${DIR[$part]}"
  mkdir -p "$dir"
  if [[ -n "${FROM:-}" && ! -s "$dir/results.jsonl" && -s "$FROM/${DIR[$part]}.jsonl" ]]; then
    cp "$FROM/${DIR[$part]}.jsonl" "$dir/results.jsonl"
  fi
  $PY experiments/assl.py --config "$CONFIG:${ARG[$part]}" --workdir "$dir" \
      --config.seeds="$SEEDS" --config.strategies="${NAMES[$part]}" --config.shard="$SHARD"
  runs+=("$dir")
done
if [[ -z "$SHARD" ]]; then
  $PY experiments/report.py "${runs[@]}" --out "$WORKDIR/report"
fi
