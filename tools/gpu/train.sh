#!/usr/bin/env bash
# Run ON THE GPU MACHINE after the stage.sh calls: resume from /root/run/checkpoint (staged from .gpu/ckpt, or left
# by an earlier call on this machine), else from a committed training/smollm2-default/checkpoint, else start
# fresh; train with the given arguments; return the checkpoint (5 files) and train.log through $OUT. The device
# tool brings back at most 8 files a call: eval.sh and bench.sh add one JSON each.
#   bash tools/gpu/train.sh --steps 4000 --lr 1e-3 ... --max-minutes 7
set -uo pipefail
source tools/gpu/env.sh
run=/root/run
mkdir -p $run
ckpt=training/smollm2-default/checkpoint
if [ -f $ckpt/trainer_state.json ] && [ ! -f $run/checkpoint/trainer_state.json ]; then cp -r $ckpt $run/checkpoint; fi
python3 -m comet_agents.cli train --output-dir $run --save-every 50 --log-every 10 --num-workers 12 "$@" 2>&1 \
  | tr '\r' '\n' | sed -E 's/^.*(\{"step")/\1/' | grep -v 'it/s' | tee $OUT/train.log
cp $run/checkpoint/* $OUT/
