#!/usr/bin/env bash
# Run ON THE GPU MACHINE after stage.sh calls: resume from the committed checkpoint (training/smollm2-default) unless
# this machine already holds a newer one, train with the given arguments, then return the checkpoint and the
# log through $OUT. Example:
#   bash tools/gpu/train.sh --steps 3000 --lr 3e-4 --warmup-steps 30 --curriculum 100:1,300:2,1000000000:4 \
#        --families passkey:0.5,user_behaviour:0.2,agent_trajectory:0.15,conversation:0.15 --max-minutes 8
set -uo pipefail
source tools/gpu/env.sh
run=/root/run
mkdir -p $run
ckpt=training/smollm2-default/checkpoint
if [ -f $ckpt/trainer_state.json ] && [ ! -f $run/checkpoint/trainer_state.json ]; then cp -r $ckpt $run/checkpoint; fi
python3 -m comet_agents.cli train --output-dir $run --save-every 50 --log-every 10 --num-workers 12 "$@" 2>&1 \
  | tr '\r' '\n' | sed -E 's/^.*(\{"step")/\1/' | grep -v 'it/s' | tee $OUT/train.log
cp $run/checkpoint/* $OUT/
