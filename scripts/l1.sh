#!/usr/bin/env bash
# The L1 benchmark (BENCHMARKS.md) in one command: ASSL for every strategy, ASL
# for passive and npc, then the report. Resumable: re-run the same command after
# any interruption; a subset runs alone with STRATEGIES=... / SEEDS=....
#
#   bash scripts/l1.sh                                  # everything, 5 seeds (~9 h on 2 cores)
#   STRATEGIES=npc,passive SEEDS=0 bash scripts/l1.sh   # a subset
#   STRATEGIES=npc_full ASL_STRATEGIES= bash scripts/l1.sh   # ASSL only
#   FROM=records/l1 bash scripts/l1.sh                  # continue the committed records
#
# WORKDIR/{assl,asl}/results.jsonl hold the records, WORKDIR/report the tables and
# figures. With FROM, a workdir that has no records yet starts from FROM's, so
# only missing rounds run (strategies new to a seed retrain its round-0 model).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORKDIR=${WORKDIR:-runs/l1}
SEEDS=${SEEDS:-0,1,2,3,4}
STRATEGIES=${STRATEGIES:-passive,npc,margin,badge,albl,coreset,entropy,least_confidence,npc_probs,npc_search,npc_full,npc_norm}
ASL_STRATEGIES=${ASL_STRATEGIES-passive,npc}   # set and empty: no ASL part
CONFIG=experiments/configs/fmnist_assl.py
for mode in assl asl; do
  mkdir -p "$WORKDIR/$mode"
  if [[ -n "${FROM:-}" && ! -s "$WORKDIR/$mode/results.jsonl" && -s "$FROM/$mode.jsonl" ]]; then
    cp "$FROM/$mode.jsonl" "$WORKDIR/$mode/results.jsonl"
  fi
done
$PY experiments/assl.py --config "$CONFIG" --workdir "$WORKDIR/assl" \
    --config.seeds="$SEEDS" --config.strategies="$STRATEGIES"
if [[ -n "$ASL_STRATEGIES" ]]; then
  $PY experiments/assl.py --config "$CONFIG:asl" --workdir "$WORKDIR/asl" \
      --config.seeds="$SEEDS" --config.strategies="$ASL_STRATEGIES"
fi
runs=("$WORKDIR/assl")
[[ -s "$WORKDIR/asl/results.jsonl" ]] && runs+=("$WORKDIR/asl")
$PY experiments/report.py "${runs[@]}" --out "$WORKDIR/report"
