#!/usr/bin/env bash
# Run ON THE GPU MACHINE after the stage.sh calls: resume from /root/run/checkpoint (staged from .gpu/ckpt, or left
# by an earlier call on this machine), else from a committed training/smollm2-default/checkpoint, else start
# fresh; train with the given arguments; return the checkpoint (5 files) and train.log through $OUT. The device
# tool brings back at most 8 files a call: eval.sh and bench.sh add one JSON each. If the run dies of CUDA out of
# memory, it is resumed once with half the micro-batch (tokens and, if given, sequences; the last values given
# win).
#   bash tools/gpu/train.sh --steps 4000 --lr 1e-3 ... --tokens-per-micro-batch 65536 --max-minutes 7
set -uo pipefail
source tools/gpu/env.sh
run=/root/run
mkdir -p $run
ckpt=training/smollm2-default/checkpoint
if [ -f $ckpt/trainer_state.json ] && [ ! -f $run/checkpoint/trainer_state.json ]; then cp -r $ckpt $run/checkpoint; fi
train() {
  python3 -m comet_agents.cli train --output-dir $run --save-every 50 --log-every 10 --num-workers 12 "$@" 2>&1 \
    | tr '\r' '\n' | sed -E 's/^.*(\{"step")/\1/' | grep -v -E 'it/s|s/it' | tee $run/call.log >> $OUT/train.log
  # This call's steady speed (chunk-tokens/s), for train_ab.sh.
  python3 tools/gpu/rate.py $run/call.log > $run/last_rate
}
start=$(date +%s)
train "$@"
if grep -q "OutOfMemoryError" $run/call.log; then
  tokens=32768
  prev=$(echo " $* " | grep -oE -- '--tokens-per-micro-batch[ =][0-9]+' | tail -1 | grep -oE '[0-9]+$' || true)
  [ -n "$prev" ] && tokens=$(( prev / 2 ))
  seqs=$(echo " $* " | grep -oE -- '--sequences-per-micro-batch[ =][0-9]+' | tail -1 | grep -oE '[0-9]+$' || true)
  [ -n "$seqs" ] && [ "$seqs" -gt 1 ] && seqs=$(( seqs / 2 ))
  # Keep the call's time budget: subtract the minutes already spent from the last --max-minutes given.
  left=$(python3 -c "import re,sys; a=' '.join(sys.argv[2:]); m=re.findall(r'--max-minutes[ =]([0-9.]+)', a); \
print(max(0.5, float(m[-1]) - (int(sys.argv[1]) / 60)) if m else '')" $(( $(date +%s) - start )) "$@")
  echo "== out of memory: resuming with --tokens-per-micro-batch $tokens ${seqs:+--sequences-per-micro-batch $seqs}" \
    | tee -a $OUT/train.log
  train "$@" --tokens-per-micro-batch $tokens ${seqs:+--sequences-per-micro-batch $seqs} ${left:+--max-minutes $left}
fi
cp $run/checkpoint/* $OUT/
