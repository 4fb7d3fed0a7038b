#!/usr/bin/env bash
# Run ON THE GPU MACHINE after a plain train.sh call: try other arguments for a few minutes and keep whichever of
# the two trains faster for the rest of the call, since the device time between two sessions' reads is too short
# to decide by hand. Speeds are chunk-tokens/s of the steady log lines (tools/gpu/rate.py); the baseline is the
# previous train.sh call on this machine.
#   bash tools/gpu/train_ab.sh TRIAL_MIN REST_MIN "CANDIDATE ARGS" COMMON ARGS...
# e.g. bash tools/gpu/train_ab.sh 2 5.5 "--sequences-per-micro-batch 48 --checkpoint-from-chunks 1 --log-every 5" \
#        --steps 4000 ...
# A candidate with fewer than three log lines in the trial (tools/gpu/rate.py) counts as slower.
# The candidate's arguments come after the common ones, so they win. Prints the decision; everything is in train.log.
set -uo pipefail
trial=$1 rest=$2 candidate=$3
shift 3
base=$(cat /root/run/last_rate 2>/dev/null || echo 0)
# shellcheck disable=SC2086  # the candidate arguments are meant to split
bash tools/gpu/train.sh "$@" $candidate --max-minutes "$trial"
cand=$(cat /root/run/last_rate 2>/dev/null || echo 0)
# The choice is kept in /root/run/ab_choice for later calls: bash tools/gpu/train.sh ... $(cat /root/run/ab_choice)
if [ "$cand" -gt "$base" ]; then
  echo "$candidate" > /root/run/ab_choice
  echo "== train_ab: candidate [$candidate] ${cand} > baseline ${base} chunk-tokens/s: keeping it" | tee -a $OUT/train.log
  # shellcheck disable=SC2086
  bash tools/gpu/train.sh "$@" $candidate --max-minutes "$rest"
else
  : > /root/run/ab_choice
  echo "== train_ab: candidate [$candidate] ${cand} <= baseline ${base} chunk-tokens/s: back to the baseline" \
    | tee -a $OUT/train.log
  bash tools/gpu/train.sh "$@" --max-minutes "$rest"
fi
